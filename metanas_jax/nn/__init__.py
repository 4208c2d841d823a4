"""Networks: compact builders (only the chosen ops) and supernets (architecture as data).

* ``build(space, arch, num_classes, **kw)``: a linen module ``net.apply(vars, x, train)``
  of one architecture, for final training. With ``track=True`` (default) batch norm keeps
  running averages in ``batch_stats``.
* ``supernet(space, num_classes, **kw)``: a linen module
  ``net.apply(vars, x, weights, train)`` with ``weights = space.relax(z, T)``; batch norm
  uses batch statistics, so ``apply`` is pure and one compiled program serves every
  architecture, and ``jax.vmap`` over ``(vars, weights)`` runs a batch of them.
* ``supernet(space, num_classes, hard=True)`` (``macro32``): same variables and calling
  convention, one-hot weights only; runs only the chosen op of each layer (fast on CPU).
* ``extract(net, supernet_vars, x)``: the compact network's variables cut out of the
  supernet's (weight inheritance; with one-hot weights both compute the same function).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from metanas_jax.nn.cells import DartsNet, DartsSupernet, NB201Net, NB201Supernet
from metanas_jax.nn.hard import HardMacroSupernet, init_params
from metanas_jax.nn.macro import MacroNet, MacroSupernet
from metanas_jax.nn.ops import Norm
from metanas_jax.spaces import Arch, SearchSpace

_COMPACT = {"macro32": MacroNet, "darts": DartsNet, "nb201": NB201Net}
_SUPERNET = {"macro32": MacroSupernet, "darts": DartsSupernet, "nb201": NB201Supernet}
_HARD = {"macro32": HardMacroSupernet}


def _check_classes(num_classes):
    if not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")


def build(space: SearchSpace, arch: Arch, num_classes: int, *, track: bool = True, **kw):
    """Compact network of ``arch`` (extra ``kw``: ``channels``, ``cells``, ``dtype``, ...)."""
    _check_classes(num_classes)
    space.own(arch)
    return _COMPACT[space.name](space=space, arch=arch, num_classes=int(num_classes), track=track, **kw)


def supernet(space: SearchSpace, num_classes: int, *, hard: bool = False, **kw):
    """The supernet of ``space``: every architecture in one program.

    ``hard=True`` (``macro32`` only): :class:`HardMacroSupernet`, same variables and
    calling convention, for hard (one-hot) weights only: it runs just the chosen op of
    each layer (``lax.switch``), many times faster when not vmapped (CPU)."""
    _check_classes(num_classes)
    if hard:
        if space.name not in _HARD:
            raise ValueError(f"no hard supernet for space {space.name!r}; have {sorted(_HARD)}")
        return _HARD[space.name](space, int(num_classes), **kw)
    return _SUPERNET[space.name](space=space, num_classes=int(num_classes), **kw)


def init(net, key, x, weights=None):
    """Variables of ``net`` for inputs shaped like ``x`` (``weights`` for a supernet).

    Parameter shapes come from ``jax.eval_shape`` (tracing only) and values from flax's
    default initializers drawn in one flat random call (kernels lecun_normal, norm scales
    and batch-norm variances one, biases and means zero): jitting ``net.init`` of a
    supernet compiles every op and many high-rank random draws, which took minutes on CPU.
    Networks with other parameters fall back to ``jax.jit(net.init)``."""
    args = (x,) if weights is None else (x, weights)
    if isinstance(net, HardMacroSupernet):
        return jax.jit(lambda k, *a: net.init(k, *a))(key, *args)
    shapes = jax.eval_shape(lambda k, *a: net.init(k, *a, train=False), key, *args)
    stacked = ("layers",) if isinstance(net, MacroSupernet) else getattr(net, "STACKED", ())
    flat = {(col, *path): s for col, tree in shapes.items()
            for path, s in traverse_util.flatten_dict(tree).items()}
    if all(p[0] == "params" and p[-1] in ("kernel", "scale", "bias")
           or p[0] == "batch_stats" and p[-1] in ("mean", "var") for p in flat):
        return _init_from_shapes(key, shapes, stacked)
    return jax.jit(lambda k, *a: net.init(k, *a, train=False))(key, *args)


def _init_from_shapes(key, shapes, stacked):
    out = {}
    for col, tree in shapes.items():
        flat = traverse_util.flatten_dict(tree)
        if col == "params":
            vals = init_params(key, flat, stacked, host=True)
        else:  # batch_stats
            vals = {p: jnp.asarray((np.ones if p[-1] == "var" else np.zeros)(s.shape, s.dtype))
                    for p, s in flat.items()}
        out[col] = traverse_util.unflatten_dict(vals)
    return out


def extract(net, supernet_vars, x):
    """Variables for compact ``net`` sliced out of ``supernet_vars``.

    Each compact parameter is the leading slice of the supernet parameter at the same path
    (a narrower layer keeps the first channels). Running statistics start fresh.
    """
    shapes = jax.eval_shape(lambda: net.init(jax.random.key(0), x, train=False))
    params = supernet_vars["params"]
    unstack = getattr(_SUPERNET[net.space.name], "unstack", None)
    sup = traverse_util.flatten_dict(unstack(params, net.space) if unstack else params)
    out = {}
    for path, leaf in traverse_util.flatten_dict(shapes["params"]).items():
        if path not in sup:
            raise ValueError(f"supernet has no parameter {'/'.join(path)} for this architecture")
        src = sup[path]
        if any(s > t for s, t in zip(leaf.shape, src.shape)) or len(leaf.shape) != src.ndim:
            raise ValueError(f"parameter {'/'.join(path)}: compact shape {leaf.shape} does not "
                             f"fit in the supernet's {src.shape}")
        out[path] = src[tuple(slice(0, s) for s in leaf.shape)]
    variables = {"params": traverse_util.unflatten_dict(out)}
    if "batch_stats" in shapes:
        variables["batch_stats"] = jax.tree.map(
            lambda s: jnp.zeros(s.shape, s.dtype), shapes["batch_stats"])
        variables["batch_stats"] = jax.tree_util.tree_map_with_path(
            lambda p, v: jnp.ones_like(v) if p[-1].key == "var" else v, variables["batch_stats"])
    return variables


def count_params(variables) -> int:
    """Number of trainable parameters (the ``params`` collection)."""
    params = variables.get("params", variables) if isinstance(variables, dict) else variables
    return int(sum(np.prod(p.shape) for p in jax.tree.leaves(params)))


__all__ = ["build", "supernet", "init", "extract", "count_params", "Norm",
           "MacroNet", "MacroSupernet", "HardMacroSupernet", "DartsNet", "DartsSupernet", "NB201Net", "NB201Supernet"]
