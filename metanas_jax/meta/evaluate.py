"""Meta-test protocol: adapt on each test task's support set, score its query set.

Reports the mean query accuracy with a 95% confidence interval over a fixed, seeded set
of episodes (600 by default, as in the few-shot literature), and, for searching learners,
each task's discrete architecture and how much those architectures differ across tasks.
Queries are scored as ``MetaConfig.query_norm`` says (batch-norm statistics of the query
batch, or of the support set); :func:`adapt_and_predict` gives an adapted learner's
predictions on any images under either mode.
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

from metanas_jax.meta.config import QUERY_NORMS, MetaConfig
from metanas_jax.meta.inner import adapt, query_loss_and_accuracy, query_norm_x
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
    z_adapted (T, d))``; ``inner_lrs`` are ``MetaState.inner_lrs`` when they are learned.
    Each task's queries are scored together, normalised as ``cfg.query_norm`` says."""
    steps = cfg.eval_inner_steps if steps is None else int(steps)
    if cfg.query_norm == "support":
        learner.check_norm_from_other_images()

    def run(params, z, lrs, sx, sy, qx, qy):
        def one(sx_, sy_, qx_, qy_):
            p2, a2, _ = adapt(learner, cfg, params, z, sx_, sy_, steps=steps, lrs=lrs)
            loss, acc = query_loss_and_accuracy(learner, cfg, p2, a2, sx_, qx_, qy_)
            return acc, loss, a2

        return map_tasks(one, sx, sy, qx, qy, strategy=cfg.strategy,
                         cpu_strategy=learner.cpu_strategy)

    run = jax.jit(run, compiler_options=learner.compiler_options())
    return lambda params, z, b, inner_lrs=None: run(params, z, inner_lrs, b.support_x,
                                                    b.support_y, b.query_x, b.query_y)


def predict(learner, cfg: MetaConfig, params, z, x, support_x=None,
            query_norm: str | None = None):
    """Logits ``(N, classes)`` of adapted weights ``(params, z)`` on images ``x (N, H, W, C)``
    at ``cfg.temp_end``, batch norm as ``query_norm`` (default ``cfg.query_norm``) says:
    ``"batch"`` normalises with ``x``'s own statistics, so a row's logits depend on which
    other images are in ``x`` (one image at a time scores differently from a batch);
    ``"support"`` with those of ``support_x``, the images the weights were adapted on, so
    each row depends on its image alone. Pure: jit / vmap it like any JAX function."""
    mode = cfg.query_norm if query_norm is None else query_norm
    if mode not in QUERY_NORMS:
        raise ValueError(f"predict: query_norm={mode!r} must be one of {QUERY_NORMS}")
    if mode == "support" and support_x is None:
        raise ValueError("predict: query_norm='support' needs support_x (the task's support "
                         "images)")
    norm_x = query_norm_x(cfg.replace(query_norm=mode), support_x)
    return learner.apply(params, z, x, float(cfg.temp_end), norm_x=norm_x)


@functools.lru_cache(maxsize=16)
def _adapt_and_predict_fn(learner, cfg: MetaConfig, steps: int):
    def run(params, z, lrs, sx, sy, x):
        p2, a2, _ = adapt(learner, cfg, params, z, sx, sy, steps=steps, lrs=lrs)
        return predict(learner, cfg, p2, a2, x, support_x=sx)

    return jax.jit(run, compiler_options=learner.compiler_options())


def adapt_and_predict(learner, cfg: MetaConfig, state, support_x, support_y, x,
                      query_norm: str | None = None, steps: int | None = None):
    """One task: adapt ``state``'s meta-weights (``MetaState``: its params, architecture
    and learned inner rates) to the labelled ``(support_x (S, H, W, C), support_y (S,))``
    with ``steps`` (default ``cfg.eval_inner_steps``) inner steps, as the meta-test does,
    and return the adapted network's logits ``(N, classes)`` on ``x (N, H, W, C)`` under
    ``query_norm`` (default ``cfg.query_norm``; see :func:`predict`). Under ``"support"``
    the logits of an image do not depend on the other images of ``x``. Jitted, compiled
    once per learner, config, steps and shapes."""
    mode = cfg.query_norm if query_norm is None else query_norm
    cfg = cfg.replace(query_norm=mode)  # validates the mode, naming the field
    if mode == "support":
        learner.check_norm_from_other_images()
    steps = cfg.eval_inner_steps if steps is None else int(steps)
    return _adapt_and_predict_fn(learner, cfg, steps)(
        state.params, state.arch, state.inner_lrs, jnp.asarray(support_x),
        jnp.asarray(support_y), jnp.asarray(x))


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
                           "inner_steps": cfg.eval_inner_steps if steps is None else int(steps),
                           "query_norm": cfg.query_norm}
    if learner.searches:
        out.update(architecture_report(learner.space, np.asarray(state.arch),
                                       np.concatenate(zs)[:num_episodes]))
    if save_path is not None:
        with open(save_path, "w") as f:
            json.dump(out, f, indent=1)
    return out
