"""Meta-test protocol: adapt on each test task's support set, score its query set.

Reports the mean query accuracy with a 95% confidence interval over a fixed, seeded set
of episodes (600 by default, as in the few-shot literature), and, for searching learners,
each task's discrete architecture and how much those architectures differ across tasks.
"""
from __future__ import annotations

import functools
import json
import math
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from metanas_jax.meta.config import MetaConfig
from metanas_jax.meta.inner import adapt, loss_and_accuracy
from metanas_jax.meta.tasks_map import map_tasks

Z95 = 1.959963984540054  # two-sided 95% quantile of the standard normal


def confidence_interval(values, z: float = Z95) -> tuple[float, float]:
    """``(mean, half_width)``: normal-approximation interval ``z * std / sqrt(n)``."""
    v = np.asarray(values, np.float64).reshape(-1)
    if v.size < 2:
        raise ValueError(f"confidence_interval needs at least 2 values, got {v.size}")
    return float(v.mean()), float(z * v.std(ddof=1) / math.sqrt(v.size))


@functools.lru_cache(maxsize=16)
def make_adapt_and_score(learner, cfg: MetaConfig, steps: int | None = None):
    """(Cached per learner, config and steps, so repeated meta-tests compile once.) Jitted
    ``(params, z, task_batch, inner_lrs=None) -> (query_acc (T,), query_loss (T,),
    z_adapted (T, d))``; ``inner_lrs`` are ``MetaState.inner_lrs`` when they are learned."""
    steps = cfg.eval_inner_steps if steps is None else int(steps)

    def run(params, z, lrs, sx, sy, qx, qy):
        def one(sx_, sy_, qx_, qy_):
            p2, a2, _ = adapt(learner, cfg, params, z, sx_, sy_, steps=steps, lrs=lrs)
            loss, acc = loss_and_accuracy(learner, p2, a2, qx_, qy_, float(cfg.temp_end))
            return acc, loss, a2

        return map_tasks(one, sx, sy, qx, qy, strategy=cfg.strategy,
                         cpu_strategy=learner.cpu_strategy)

    run = jax.jit(run)
    return lambda params, z, b, inner_lrs=None: run(params, z, inner_lrs, b.support_x,
                                                    b.support_y, b.query_x, b.query_y)


def gene_distances(projected: np.ndarray) -> np.ndarray:
    """Pairwise number of differing choices between 0/1 (projected) encodings:
    half the L1 distance, computed as ``(|a| + |b| - 2 a.b) / 2``."""
    p = np.asarray(projected, np.float64)
    norms = p.sum(1)
    return 0.5 * (norms[:, None] + norms[None, :] - 2.0 * p @ p.T)


def architecture_report(space, meta_z, task_zs) -> dict[str, Any]:
    """Discrete architecture of every adapted task and their spread across tasks."""
    task_zs = np.asarray(task_zs)
    proj = np.asarray(jax.vmap(space.project)(jnp.asarray(task_zs)))
    meta_proj = np.asarray(space.project(jnp.asarray(meta_z)))
    meta_arch = space.decode(meta_z)
    archs = [space.decode(z) for z in task_zs]
    strings = [str(a) for a in archs]
    d = gene_distances(proj)
    iu = np.triu_indices(len(archs), 1)
    to_meta = gene_distances(np.concatenate([meta_proj[None], proj]))[0, 1:]
    counts: dict[str, int] = {}
    for s in strings:
        counts[s] = counts.get(s, 0) + 1
    return {
        "meta_arch": str(meta_arch),
        "meta_arch_json": meta_arch.to_json(),
        "task_archs": strings,
        "arch_unique": len(counts),
        "arch_most_common_fraction": max(counts.values()) / len(strings),
        "arch_mean_pairwise_distance": float(d[iu].mean()) if iu[0].size else 0.0,
        "arch_mean_distance_to_meta": float(to_meta.mean()),
        "arch_fraction_equal_to_meta": float(np.mean(to_meta == 0)),
    }


def meta_test(learner, cfg: MetaConfig, state, pool, n_way: int, k_shot: int, n_query: int = 15,
              num_episodes: int = 600, seed: int = 0, batch_size: int = 50,
              steps: int | None = None, save_path: str | os.PathLike | None = None) -> dict[str, Any]:
    """Query accuracy (mean, 95% CI) over ``num_episodes`` fixed episodes of ``pool``.

    Episode chunk ``i`` is ``sample_episodes(fold_in(PRNGKey(seed), i), ...)``, so the
    same ``(seed, batch_size)`` gives the same test episodes for every model compared.
    With ``save_path`` the result (and each task's architecture) is written as JSON.
    """
    from metanas_jax import data

    if num_episodes < 2:
        raise ValueError(f"meta_test: num_episodes must be >= 2, got {num_episodes}")
    if batch_size < 1:
        raise ValueError(f"meta_test: batch_size must be >= 1, got {batch_size}")
    score = make_adapt_and_score(learner, cfg, steps)
    base = jax.random.PRNGKey(seed)
    accs, losses, zs = [], [], []
    for i in range(-(-num_episodes // batch_size)):
        batch = data.sample_episodes(jax.random.fold_in(base, i), pool, n_way, k_shot, n_query,
                                     batch_size)
        acc, loss, z = score(state.params, state.arch, batch, state.inner_lrs)
        accs.append(np.asarray(acc)), losses.append(np.asarray(loss)), zs.append(np.asarray(z))
    accs = np.concatenate(accs)[:num_episodes]
    losses = np.concatenate(losses)[:num_episodes]
    mean, ci = confidence_interval(accs)
    out: dict[str, Any] = {"accuracy": mean, "ci95": ci, "loss": float(losses.mean()),
                           "episodes": int(num_episodes), "n_way": n_way, "k_shot": k_shot,
                           "n_query": n_query, "seed": seed, "batch_size": batch_size,
                           "inner_steps": cfg.eval_inner_steps if steps is None else int(steps)}
    if learner.searches:
        out.update(architecture_report(learner.space, np.asarray(state.arch),
                                       np.concatenate(zs)[:num_episodes]))
    if save_path is not None:
        with open(save_path, "w") as f:
            json.dump(out, f, indent=1)
    return out
