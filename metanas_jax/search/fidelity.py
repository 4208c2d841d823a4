"""How much a cheap candidate-training proxy says about a long training.

A search is only as good as the scores it ranks. :func:`proxy_fidelity` trains the same
architectures with several short proxies (:class:`~metanas_jax.search.TrainConfig`) and
reports, per proxy, Kendall tau against reference scores from a much longer training, the
seconds per architecture (compilation excluded) and tau per second; the proxy to use is the
one that ranks best for what it costs, and one whose mean accuracy sits at chance carries
no signal at all.
"""
from __future__ import annotations

import time
from collections.abc import Mapping

import jax
import numpy as np

from metanas_jax.search.evaluator import kendall_tau
from metanas_jax.search.experience import TrainConfig, make_evaluate_fn
from metanas_jax.spaces.base import SearchSpace


def proxy_fidelity(space: SearchSpace, task, zs, key: jax.Array, proxies: Mapping[str, TrainConfig],
                   reference_scores, *, num_classes: int | None = None,
                   tasks: Mapping[str, tuple] | None = None) -> dict[str, dict]:
    """Score ``zs (N, dim)`` with every proxy of ``proxies`` on ``task`` (``(support_x,
    support_y, query_x, query_y)``; ``tasks[name]`` overrides it per proxy, e.g. to give a
    proxy more images) and compare with ``reference_scores (N,)``. Returns per proxy:
    ``tau``, ``seconds_per_arch`` (after one compiling call), ``tau_per_second``,
    ``mean`` and ``std`` of its scores, and the ``scores``."""
    zs = np.asarray(zs, np.float32)
    ref = np.asarray(reference_scores, np.float64)
    if zs.ndim != 2 or zs.shape[1] != space.dim or ref.shape != (zs.shape[0],) or len(ref) < 3:
        raise ValueError(f"need zs (N, {space.dim}) and reference_scores (N,) with N >= 3; "
                         f"got {zs.shape} and {ref.shape}")
    out = {}
    for name, cfg in proxies.items():
        evaluate = make_evaluate_fn(space, (tasks or {}).get(name, task), key,
                                    num_classes=num_classes, train=cfg)
        evaluate(zs[:1])  # compile
        t0 = time.perf_counter()
        scores = np.asarray(evaluate(zs), np.float64)
        per_arch = (time.perf_counter() - t0) / len(zs)
        tau = kendall_tau(scores, ref)
        out[name] = {"tau": tau, "seconds_per_arch": per_arch, "tau_per_second": tau / per_arch,
                     "mean": float(scores.mean()), "std": float(scores.std()),
                     "steps": cfg.steps, "lr": cfg.lr, "scores": scores.tolist()}
    return out
