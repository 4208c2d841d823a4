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
    the meta-step counter and the PRNG key the training loop derives episodes from."""

    params: chex.ArrayTree
    arch: chex.Array
    opt_state: chex.ArrayTree
    arch_opt_state: chex.ArrayTree
    step: chex.Array
    key: chex.PRNGKey


def meta_optimizer(cfg: MetaConfig) -> optax.GradientTransformation:
    opt = make_optimizer(cfg.meta_opt, cfg.meta_lr_or_schedule())
    return optax.chain(optax.clip_by_global_norm(cfg.grad_clip), opt) if cfg.grad_clip else opt


def arch_optimizer(cfg: MetaConfig) -> optax.GradientTransformation:
    """DARTS' architecture optimiser: Adam(beta1=0.5) with L2 weight decay on the logits."""
    return optax.chain(optax.add_decayed_weights(cfg.arch_weight_decay),
                       optax.adam(cfg.arch_meta_lr, b1=0.5, b2=0.999))


def init_state(learner, cfg: MetaConfig, key: jax.Array, sample_x: jax.Array) -> MetaState:
    """Fresh state: ``learner.init`` on ``sample_x`` (one task's images, (N, H, W, C))."""
    k_init, k_state = jax.random.split(key)
    params, arch = learner.init(k_init, sample_x)
    return MetaState(params=params, arch=arch, opt_state=meta_optimizer(cfg).init(params),
                     arch_opt_state=arch_optimizer(cfg).init(arch),
                     step=jnp.zeros((), jnp.int32), key=k_state)
