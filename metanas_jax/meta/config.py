"""Hyper-parameters of gradient-based meta-learning, validated once, hashable (static)."""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import numpy as np
import optax

ALGORITHMS = ("maml", "fomaml", "reptile")
ARCH_UPDATES = ("auto", "none", "joint", "alternating")
OPTIMIZERS = ("sgd", "momentum", "adam")
SCHEDULES = ("constant", "cosine")
QUERY_NORMS = ("batch", "support")
HEAD_INITS = ("meta", "zero", "proto")


@dataclasses.dataclass(frozen=True)
class MetaConfig:
    """Inner loop (per task) and outer loop (across tasks) settings.

    Inner: ``inner_steps`` steps of ``inner_opt`` on the support set; a searching
    learner's architecture encoding moves too when ``arch_update`` is ``joint`` (one
    gradient for both) or ``alternating`` (weights step, then architecture step at the new
    weights; what ``"auto"``, the default, picks for a searching learner), with its
    own ``arch_inner_lr``, frozen for the first ``arch_inner_warmup`` inner steps. The
    relaxation temperature goes geometrically from ``temp_start`` to ``temp_end`` over the
    inner steps; the query set is scored at ``temp_end``.
    Outer: ``algorithm`` gives the meta-gradient (second-order MAML, first-order MAML, or
    Reptile's ``theta - phi``), applied with ``meta_opt``/``meta_lr`` to the weights and
    Adam (``arch_meta_lr``, DARTS' beta1 = 0.5 and weight decay) to the architecture, which
    stays frozen for the first ``arch_warmup_steps`` meta-steps. ``meta_lr_schedule``
    ``cosine`` decays the weights' ``meta_lr`` to zero over ``meta_lr_decay_steps``
    meta-steps (then holds it there), for runs whose length is known in steps.
    ``learn_inner_lr`` meta-learns one inner learning rate per weight tensor (MAML++'s
    per-layer rates, shared across inner steps so a meta-test may run more steps than
    training; Meta-SGD learns one per weight), started at ``inner_lr`` and updated with the
    weights by ``meta_opt``: how fast each layer should adapt is learned across tasks, not
    set by hand. Needs ``inner_opt="sgd"`` and a gradient-based ``algorithm`` (MAML's
    gradient wrt a rate flows through the inner loop; first-order MAML's is exact in the
    rates, ``-<query gradient, sum of support gradients>``; Reptile's update has none).
    ``scan_unroll`` is ``lax.scan``'s unroll of the inner loop; ``"auto"`` unrolls every
    step of a fixed network (faster steps on CPU for a little more compile:
    ``benchmarks/bench_meta.py --scan-unroll``) and none of a supernet, whose copies cost
    minutes of compile each.
    ``query_norm`` is the batch-norm statistics the (adapted) network scores query images
    with, in meta-training's query loss and at meta-test: ``"batch"`` (default) those of
    the query batch itself, MAML's transductive convention and the published protocol,
    under which one query's prediction depends on the other queries classified with it;
    ``"support"`` those of the task's support set at the adapted weights, so each query's
    prediction depends on the support set and on that query alone (``Learner.apply(...,
    norm_x=support_x)``). The support set is always normalised with its own statistics.
    How much the mode changes accuracy: ``benchmarks/query_norm.py``;
    ``meta.adapt_and_predict`` scores new images either way.
    ``head_init`` is where the classifier (the Dense layer named ``head``) starts each
    task's inner loop: ``"meta"`` (default, MAML) its meta-learned weights, although a
    task's labels are a random permutation of its classes, so no meta-learned row can
    belong to a class; ``"zero"`` zeros (the zeroing trick of Kao et al. 2022: every class
    starts equal); ``"proto"`` the prototype classifier of the support set (Proto-MAML,
    Triantafillou et al. 2020): row ``c`` is ``2 mu_c`` and bias ``-|mu_c|^2`` for the mean
    embedding ``mu_c`` of class ``c``'s support images, so the inner loop starts from
    a prototypical network's prediction; the meta-gradient flows through the prototypes.
    """

    algorithm: str = "maml"
    inner_steps: int = 5
    eval_inner_steps: int = 10
    inner_lr: float = 0.4
    inner_opt: str = "sgd"
    learn_inner_lr: bool = False
    arch_update: str = "auto"        # "auto": "alternating" for a searching learner
    arch_inner_lr: float = 0.1
    arch_inner_opt: str = "sgd"
    arch_inner_warmup: int = 0
    temp_start: float = 1.0
    temp_end: float = 1.0
    meta_lr: float = 1e-3
    meta_opt: str = "adam"
    meta_lr_schedule: str = "constant"
    meta_lr_decay_steps: int = 0
    arch_meta_lr: float = 3e-4       # MetaNAS/DARTS' architecture rates (inner 0.1, meta 3e-4)
    arch_weight_decay: float = 1e-3
    arch_warmup_steps: int = 0
    grad_clip: float = 0.0
    strategy: str = "auto"
    scan_unroll: int | str = "auto"
    query_norm: str = "batch"
    head_init: str = "meta"

    def arch_mode(self, searching: bool) -> str:
        """The inner loop's architecture update for a learner that does (not) search."""
        if not searching:
            return "none"
        return "alternating" if self.arch_update == "auto" else self.arch_update

    def __post_init__(self):
        def bad(name, why):
            raise ValueError(f"MetaConfig.{name}={getattr(self, name)!r}: {why}")

        if self.algorithm not in ALGORITHMS:
            bad("algorithm", f"must be one of {ALGORITHMS}")
        if self.arch_update not in ARCH_UPDATES:
            bad("arch_update", f"must be one of {ARCH_UPDATES}")
        for name in ("inner_opt", "arch_inner_opt", "meta_opt"):
            if getattr(self, name) not in OPTIMIZERS:
                bad(name, f"must be one of {OPTIMIZERS}")
        if self.query_norm not in QUERY_NORMS:
            bad("query_norm", f"must be one of {QUERY_NORMS}")
        if self.head_init not in HEAD_INITS:
            bad("head_init", f"must be one of {HEAD_INITS}")
        if self.meta_lr_schedule not in SCHEDULES:
            bad("meta_lr_schedule", f"must be one of {SCHEDULES}")
        if self.meta_lr_schedule != "constant" and int(self.meta_lr_decay_steps) < 1:
            bad("meta_lr_decay_steps", f"must be >= 1 with meta_lr_schedule="
                                       f"{self.meta_lr_schedule!r}")
        if self.learn_inner_lr and (self.inner_opt != "sgd" or self.algorithm == "reptile"):
            bad("learn_inner_lr", f"needs inner_opt='sgd' and algorithm 'maml' or 'fomaml', "
                                  f"got inner_opt={self.inner_opt!r}, algorithm={self.algorithm!r}")
        for name in ("inner_steps", "eval_inner_steps"):
            if int(getattr(self, name)) < 1:
                bad(name, "must be >= 1")
        if isinstance(self.scan_unroll, str) and self.scan_unroll.isdigit():
            # a config override of the "auto" string key arrives as text: "2" means 2
            object.__setattr__(self, "scan_unroll", int(self.scan_unroll))
        if self.scan_unroll != "auto" and (isinstance(self.scan_unroll, (bool, str))
                                           or int(self.scan_unroll) < 1):
            bad("scan_unroll", "must be 'auto' or an int >= 1")
        for name in ("arch_inner_warmup", "arch_warmup_steps", "meta_lr_decay_steps"):
            if int(getattr(self, name)) < 0:
                bad(name, "must be >= 0")
        for name in ("inner_lr", "arch_inner_lr", "meta_lr", "arch_meta_lr", "arch_weight_decay",
                     "grad_clip"):
            v = getattr(self, name)
            if not np.isfinite(v) or v < 0:
                bad(name, "must be a finite number >= 0")
        for name in ("temp_start", "temp_end"):
            v = getattr(self, name)
            if not np.isfinite(v) or v <= 0:
                bad(name, "must be a finite number > 0")
        from metanas_jax.meta.tasks_map import resolve_strategy

        resolve_strategy(self.strategy)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "MetaConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"MetaConfig: unknown field(s) {unknown}; known: {sorted(names)}")
        return cls(**dict(d))

    def replace(self, **kw) -> "MetaConfig":
        return dataclasses.replace(self, **kw)

    def meta_lr_or_schedule(self) -> float | optax.Schedule:
        """The weights' outer learning rate: ``meta_lr``, or its schedule over meta-steps."""
        if self.meta_lr_schedule == "cosine":
            return optax.cosine_decay_schedule(self.meta_lr, int(self.meta_lr_decay_steps))
        return self.meta_lr

    def temperatures(self, steps: int) -> np.ndarray:
        """Per-inner-step temperature: geometric from ``temp_start`` to ``temp_end``."""
        if steps == 1:
            return np.array([self.temp_end], np.float32)
        return np.geomspace(self.temp_start, self.temp_end, steps).astype(np.float32)


def make_optimizer(name: str, lr: float | optax.Schedule, **kw) -> optax.GradientTransformation:
    """SGD / SGD+momentum / Adam. Adam gets ``eps_root`` so second-order MAML through it
    never differentiates ``sqrt`` at zero."""
    if name == "sgd":
        return optax.sgd(lr)
    if name == "momentum":
        return optax.sgd(lr, momentum=0.9)
    if name == "adam":
        return optax.adam(lr, eps_root=1e-16, **kw)
    raise ValueError(f"unknown optimizer {name!r}; known: {OPTIMIZERS}")
