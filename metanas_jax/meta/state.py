"""The meta-learner's state: one pytree, so ``meta_step`` is a pure function of it."""
from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import optax

from metanas_jax.meta.config import MetaConfig, make_optimizer


@chex.dataclass
class MetaState:
    """Meta-weights, meta-architecture (empty for fixed networks), their optimiser states,
    the meta-step counter, the PRNG key the training loop derives episodes from, and the
    meta-learned inner learning rates (one per weight tensor, ``params``' tree of scalars;
    ``None`` unless ``MetaConfig.learn_inner_lr``). With rates, ``opt_state`` is the meta-
    optimiser's state of the pair ``(params, inner_lrs)``."""

    params: chex.ArrayTree
    arch: chex.Array
    opt_state: chex.ArrayTree
    arch_opt_state: chex.ArrayTree
    step: chex.Array
    key: chex.PRNGKey
    inner_lrs: chex.ArrayTree = None


def meta_optimizer(cfg: MetaConfig) -> optax.GradientTransformation:
    opt = make_optimizer(cfg.meta_opt, cfg.meta_lr_or_schedule())
    return optax.chain(optax.clip_by_global_norm(cfg.grad_clip), opt) if cfg.grad_clip else opt


def arch_optimizer(cfg: MetaConfig) -> optax.GradientTransformation:
    """DARTS' architecture optimiser: Adam(beta1=0.5) with L2 weight decay on the logits."""
    return optax.chain(optax.add_decayed_weights(cfg.arch_weight_decay),
                       optax.adam(cfg.arch_meta_lr, b1=0.5, b2=0.999))


def init_inner_lrs(cfg: MetaConfig, params):
    """One rate per tensor of ``params``, at ``cfg.inner_lr``; ``None`` unless
    ``cfg.learn_inner_lr``."""
    if not cfg.learn_inner_lr:
        return None
    return jax.tree_util.tree_map(lambda _: jnp.float32(cfg.inner_lr), params)


def meta_trained(cfg: MetaConfig, params, inner_lrs):
    """What the meta-optimiser updates: ``params``, or ``(params, inner_lrs)`` when the
    rates are learned."""
    return (params, inner_lrs) if cfg.learn_inner_lr else params


def init_meta_opt_state(cfg: MetaConfig, params, inner_lrs=None):
    """The meta-optimiser's state for ``params`` (and the rates, when they are learned)."""
    return meta_optimizer(cfg).init(meta_trained(cfg, params, inner_lrs))


def init_state(learner, cfg: MetaConfig, key: jax.Array, sample_x: jax.Array) -> MetaState:
    """Fresh state: ``learner.init`` on ``sample_x`` (one task's images, (N, H, W, C))."""
    k_init, k_state = jax.random.split(key)
    params, arch = learner.init(k_init, sample_x)
    lrs = init_inner_lrs(cfg, params)
    return MetaState(params=params, arch=arch, opt_state=init_meta_opt_state(cfg, params, lrs),
                     arch_opt_state=arch_optimizer(cfg).init(arch),
                     step=jnp.zeros((), jnp.int32), key=k_state, inner_lrs=lrs)
