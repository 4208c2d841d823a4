"""What the meta-learner adapts: a network and, when searching, an architecture encoding.

A :class:`Learner` pairs a linen module with an optional search space. Fixed-architecture
baselines (conv4) and supernets (``nn.supernet``) then share every line of the MAML /
Reptile code: the architecture encoding of a fixed network is an empty array, so its
gradient and optimiser are no-ops instead of special cases.
"""
from __future__ import annotations

import dataclasses
import functools
import json
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from metanas_jax.nn.conv4 import Conv4
from metanas_jax.nn.fastconv import resolve_impl
from metanas_jax.nn.ops import NORM_STATS


@functools.partial(jax.jit, static_argnums=0)
def _init_fixed(module: nn.Module, key: jax.Array, x: jax.Array):
    """A fixed network's params: jitted, the same draws as eager ``module.init`` in one
    compile (cached per module) instead of one per op (conv4 1.3 s against 4.0 s eager, a
    compact 3-cell DARTS network 6.6 s against 12.3 s)."""
    return module.init(key, x)["params"]


# XLA:CPU compiles with LLVM at -O3 by default. At -O1 the DARTS supernet's meta-step
# compiles 10-14% faster and its meta-test 12-24%, at the same step time (back-to-back
# pairs on two machines, benchmarks/compile_level.py; benchmarks/LOG.md, "At the suite's
# default shapes"); -O0 compiles faster still but steps 3.7x slower. Fixed networks compile
# in seconds and keep the default.
SUPERNET_CPU_COMPILER_OPTIONS = {"xla_backend_optimization_level": 1}


@dataclasses.dataclass(frozen=True, eq=False)
class Learner:
    """``module`` applied as ``module.apply({"params": p}, x)`` (fixed) or
    ``module.apply({"params": p}, x, space.relax(z, T), train=True)`` (supernet)."""

    module: nn.Module
    space: Any = None
    cpu_strategy: str = "vmap"  # what strategy "auto" runs tasks with on CPU (tasks_map)
    arch_init_scale: float = 1e-3
    arch_init_center: float = 0.0  # DARTS alphas start at 0; macro32 genes live in [0, 1]
    recipe: dict | None = None      # the factory's JSON-able arguments (meta.save_learner)

    @property
    def searches(self) -> bool:
        return self.space is not None

    def compiler_options(self) -> dict | None:
        """The XLA options its meta-step and meta-test compile with (``None``: XLA's
        defaults): :data:`SUPERNET_CPU_COMPILER_OPTIONS` for a supernet on CPU."""
        if self.searches and jax.default_backend() == "cpu":
            return dict(SUPERNET_CPU_COMPILER_OPTIONS)
        return None

    def without_remat(self) -> "Learner":
        """This learner with its module's own rematerialisation off (a module field
        ``remat``, e.g. the DARTS supernet's edges), for a program that already
        checkpoints a larger unit around the network. The same function and parameters."""
        if not getattr(self.module, "remat", False):
            return self
        return dataclasses.replace(self, module=self.module.clone(remat=False))

    def init(self, key: jax.Array, x: jax.Array):
        """``(params, z)``: network weights and the architecture encoding (DARTS-style
        small random alphas; ``(0,)``-shaped for a fixed network)."""
        k_w, k_z = jax.random.split(key)
        if not self.searches:
            return _init_fixed(self.module, k_w, x), jnp.zeros((0,), jnp.float32)
        z = self.arch_init_center + self.arch_init_scale * jax.random.normal(
            k_z, (self.space.dim,), jnp.float32)
        from metanas_jax import nn as mnn  # late: the supernet package may be absent at import

        # nn.init: shapes by tracing, values in one draw (jitting a supernet's init took
        # longer than its meta-step's compilation)
        return mnn.init(self.module, k_w, x, self.space.relax(z, 1.0))["params"], z

    def weights(self, z, temperature=1.0):
        """``space.relax(z, temperature)``; a traced temperature (annealed inside a scan)
        re-tempers the ``T = 1`` weights, ``softmax(log w / T)``, which equals
        ``relax(z, T)`` for every softmax relaxation (spaces branch on ``T == 0`` in Python)."""
        if isinstance(temperature, (int, float)):
            return self.space.relax(z, float(temperature))
        w1 = self.space.relax(z, 1.0)
        return {g: jax.nn.softmax(jnp.log(jnp.maximum(w, 1e-30)) / temperature, axis=-1)
                for g, w in w1.items()}

    def apply(self, params, z, x, temperature=1.0, norm_x=None):
        """Logits of ``x``; ``temperature`` is the relaxation's (ignored without a space).

        Batch norm normalises ``x`` with ``x``'s own statistics, so one image's logits
        depend on the other images of ``x`` (MAML's transductive convention). With
        ``norm_x`` (e.g. the task's support set) every batch-norm layer uses the statistics
        it computes on ``norm_x`` instead: a first pass over ``norm_x`` records them
        (:func:`metanas_jax.nn.ops.norm_moments`), the second applies them to ``x``, so each
        row of the result depends on that row of ``x`` and on ``norm_x`` only. Pure, and
        differentiable through both passes (second-order MAML included)."""
        if norm_x is None:
            return self._apply({"params": params}, z, x, temperature)
        self.check_norm_from_other_images()
        _, recorded = self._apply({"params": params}, z, norm_x, temperature, mutable=[NORM_STATS])
        if not recorded.get(NORM_STATS):
            raise ValueError(f"{type(self.module).__name__} recorded no batch-norm statistics "
                             f"on norm_x: it has no layer that reads them "
                             f"(metanas_jax.nn.ops.norm_moments); use query_norm='batch'")
        out, seen = self._apply({"params": params, **recorded}, z, x, temperature,
                                mutable=[NORM_STATS])
        paths = lambda t: {p for p, _ in jax.tree_util.tree_flatten_with_path(t)[0]}
        missing = paths(seen) - paths(recorded)
        if missing:  # a norm that ran on x but not on norm_x: it normalised with x's stats
            raise ValueError(f"{type(self.module).__name__}: batch norm at "
                             f"{sorted(jax.tree_util.keystr(p) for p in missing)[:3]} got no "
                             f"statistics from norm_x (a lifted transform must list the "
                             f"{NORM_STATS!r} collection)")
        return out

    def embed(self, params, z, x, temperature=1.0):
        """What the network's classifier (the Dense layer named ``head``) receives for ``x``:
        the features a prototype head (``MetaConfig.head_init="proto"``) is built from.
        Runs the network with the head's call intercepted, so any linen network with a
        ``head`` works without a second code path; differentiable like :meth:`apply`."""
        seen = []

        def grab(next_fun, args, kwargs, context):
            if context.module.name == "head" and context.method_name == "__call__":
                seen.append(args[0])
                return jnp.zeros(args[0].shape[:-1] + (context.module.features,), args[0].dtype)
            return next_fun(*args, **kwargs)

        if not isinstance(self.module, nn.Module):
            raise ValueError(f"Learner.embed needs a linen network, got {type(self.module).__name__}")
        with nn.intercept_methods(grab):
            self._apply({"params": params}, z, x, temperature)
        if len(seen) != 1:
            raise ValueError(f"{type(self.module).__name__}: expected one classifier layer named "
                             f"'head', the network called {len(seen)}")
        return seen[0]

    def _apply(self, variables, z, x, temperature, **kw):
        if not self.searches:
            return self.module.apply(variables, x, **kw)
        return self.module.apply(variables, x, self.weights(z, temperature), train=True, **kw)

    def check_norm_from_other_images(self):
        """ValueError unless :meth:`apply` can take ``norm_x`` with this network: it must be a
        linen module (whose batch norms are ``Norm``/``PooledNorm``, or other layers calling
        :func:`~metanas_jax.nn.ops.norm_moments`)."""
        if not isinstance(self.module, nn.Module):
            raise ValueError(f"query_norm='support' needs a linen network whose batch norm can "
                             f"take the support set's statistics; {type(self.module).__name__} "
                             f"computes its own (use query_norm='batch', or the soft supernet)")


def conv4_learner(num_classes: int, channels: int = 64, downsample: str = "pool",
                  conv_impl: str = "auto", blocks: int = 4) -> Learner:
    """The fixed-architecture baseline: the standard 4-layer conv net."""
    module = Conv4(num_classes, channels=channels, blocks=blocks, downsample=downsample,
                   conv_impl=conv_impl)
    # CPU: matmul convolutions run one task at a time (lax.map: 2-D dots on cache-sized
    # tensors, 25-35% faster steps than vmap's batched dots: benchmarks/LOG.md "Tasks one at
    # a time"); lax.conv ones unrolled (vmapped per-task weights make slow grouped convs)
    return Learner(module, None,
                   cpu_strategy="map" if resolve_impl(conv_impl).startswith("matmul") else "unroll",
                   recipe={"kind": "conv4", "num_classes": int(num_classes), "channels": int(channels),
                           "downsample": downsample, "conv_impl": conv_impl, "blocks": int(blocks)})


def supernet_learner(space, num_classes: int, arch_init_scale: float = 1e-3,
                     arch_init_center: float | None = None, **kw) -> Learner:
    """A searchable learner: ``nn.supernet(space, num_classes, **kw)`` plus its space. The
    meta-architecture starts near ``arch_init_center`` (default: the space's
    ``encoding_center``, the middle of its encoding, where no choice is preferred).

    Tasks run on CPU as the module's ``CPU_TASK_STRATEGY`` says, else unrolled: the
    macro32 and NAS-Bench-201 supernets have ``lax.conv`` convolutions (slow under ``vmap``
    on CPU). The DARTS supernet says ``map``: its convolutions are ``fastconv`` ones, but
    vmapping it was no faster than ``lax.map`` and compiled slower (``benchmarks/LOG.md``,
    "Where the time goes"), and unrolling compiles one supernet copy per task."""
    from metanas_jax import nn as mnn  # late: the supernet package may be absent at import

    if not hasattr(mnn, "supernet"):
        raise ValueError("metanas_jax.nn.supernet is not available in this installation")
    module = mnn.supernet(space, num_classes, **kw)
    center = space.encoding_center if arch_init_center is None else float(arch_init_center)
    recipe = {"kind": "supernet", "space": {"name": space.name, "config": space.config()},
              "num_classes": int(num_classes), "arch_init_scale": float(arch_init_scale),
              "arch_init_center": center, "kw": kw}
    return Learner(module, space, cpu_strategy=getattr(module, "CPU_TASK_STRATEGY", "unroll"),
                   arch_init_scale=arch_init_scale, arch_init_center=center,
                   recipe=recipe if _jsonable(kw) else None)


def derived_learner(learner: Learner, arch, **build_kw) -> Learner:
    """The fixed-architecture learner of ``arch`` (e.g. the meta-architecture
    ``learner.space.decode(state.arch)``): the compact network of ``nn.build`` with only the
    chosen ops, batch statistics in batch norm (pure, as in the inner loop). It keeps the
    supernet's class count and sizes (``channels``, ``cells``, ...) unless ``build_kw``
    overrides them. Meta-training its weights after the search is the MetaNAS recipe's
    second stage (DARTS' "train the derived cell"), at a fraction of the supernet's cost."""
    from metanas_jax import nn as mnn  # late: the supernet package may be absent at import

    if not learner.searches:
        raise ValueError("derived_learner: the learner has no search space to derive from")
    sup = learner.module
    fixed = {"space", "arch", "num_classes", "track", "parent", "name"}
    fields = {f.name for f in dataclasses.fields(mnn.build(learner.space, arch, sup.num_classes))}
    sizes = {k: getattr(sup, k) for k in fields - fixed if hasattr(sup, k)}
    module = mnn.build(learner.space, arch, sup.num_classes, track=False, **{**sizes, **build_kw})
    # as supernet_learner: the module's CPU strategy, else unrolled (lax.conv is slow under vmap)
    recipe = None
    if learner.recipe is not None and _jsonable(build_kw):
        recipe = {"kind": "derived", "supernet": learner.recipe,
                  "arch": json.loads(arch.to_json()), "build_kw": build_kw}
    return Learner(module, None, cpu_strategy=getattr(module, "CPU_TASK_STRATEGY", "unroll"),
                   recipe=recipe)


def learner_from_recipe(recipe: dict) -> Learner:
    """The learner a factory built from ``recipe`` (``Learner.recipe``), e.g. read back from
    a saved learner's ``learner.json``."""
    from metanas_jax import spaces
    from metanas_jax.spaces import Arch

    kind = recipe.get("kind")
    args = {k: v for k, v in recipe.items() if k != "kind"}
    if kind == "conv4":
        return conv4_learner(**args)
    if kind == "supernet":
        space = spaces.get(args["space"]["name"], **args["space"]["config"])
        return supernet_learner(space, args["num_classes"], args["arch_init_scale"],
                                args["arch_init_center"], **args["kw"])
    if kind == "derived":
        sup = learner_from_recipe(args["supernet"])
        return derived_learner(sup, Arch.from_json(json.dumps(args["arch"])), **args["build_kw"])
    raise ValueError(f"unknown learner recipe kind {kind!r}; known: conv4, supernet, derived")


def _jsonable(obj) -> bool:
    try:
        json.dumps(obj)
        return True
    except TypeError:
        return False


def inherited_params(derived: Learner, supernet_params, sample_x):
    """``derived``'s weights cut out of the supernet's meta-weights (each compact parameter
    is the leading slice of the supernet's at the same path): the second stage starts from
    the meta-learned weights instead of from scratch. With one-hot architecture weights the
    supernet and the compact network compute the same function (tested)."""
    from metanas_jax import nn as mnn

    return mnn.extract(derived.module, {"params": supernet_params}, sample_x)["params"]
