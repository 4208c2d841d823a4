"""Running one function per task over a leading task axis: the one place that decides how.

Why a choice at all: per-task weights make ``jax.vmap`` over ``lax.conv`` a grouped
convolution, whose gradient is very slow on CPU; an unrolled Python loop is fast there but
compiles in time linear in the number of tasks; ``lax.map`` compiles once but runs tasks
one after another. Networks whose convolutions are matmuls (``fastconv`` ``"matmul"``)
vmap well everywhere, yet on CPU run faster one task at a time: ``lax.map`` keeps their dots
2-D and their tensors cache-sized. ``benchmarks/bench_meta.py`` measures every strategy.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

STRATEGIES = ("auto", "vmap", "map", "unroll")


def resolve_strategy(strategy: str = "auto", cpu_strategy: str = "vmap") -> str:
    """``"auto"``: ``vmap`` on GPU/TPU, ``cpu_strategy`` (the network's measured best, see
    :class:`~metanas_jax.meta.Learner`) on CPU."""
    for value in (strategy, cpu_strategy):
        if value not in STRATEGIES:
            raise ValueError(f"unknown task strategy {value!r}; known: {list(STRATEGIES)}")
    if cpu_strategy == "auto":
        raise ValueError("cpu_strategy must be a concrete strategy, got 'auto'")
    if strategy != "auto":
        return strategy
    return cpu_strategy if jax.default_backend() == "cpu" else "vmap"


def num_tasks(*args) -> int:
    """The common leading-axis length of every array leaf in ``args`` (ValueError if none)."""
    sizes = {jnp.shape(leaf)[0] if jnp.ndim(leaf) else None
             for leaf in jax.tree_util.tree_leaves(args)}
    if None in sizes:
        raise ValueError("map_tasks: every argument leaf needs a leading task axis; got a scalar")
    if len(sizes) != 1:
        raise ValueError(f"map_tasks: arguments disagree on the number of tasks: {sorted(sizes)}")
    return sizes.pop()


def map_tasks(fn: Callable, *args, strategy: str = "auto", cpu_strategy: str = "vmap"):
    """``fn`` applied to each slice ``args[i]`` along the leading axis; outputs stacked."""
    strategy = resolve_strategy(strategy, cpu_strategy)
    n = num_tasks(*args)
    if strategy == "vmap":
        return jax.vmap(fn)(*args)
    if strategy == "map":
        return jax.lax.map(lambda a: fn(*a), args)
    outs = [fn(*jax.tree_util.tree_map(lambda a: a[i], args)) for i in range(n)]
    return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *outs)
