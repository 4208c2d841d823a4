"""Inner loop: adapt weights (and optionally the architecture) to one task's support set.

Written with ``lax.scan`` over inner steps, differentiable end to end (second-order MAML
differentiates the whole scan). A supernet's scan is rolled, so its size in the compiled
program does not grow with the number of steps; a fixed network's is unrolled (faster,
and it compiles in seconds), see ``MetaConfig.scan_unroll``.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from metanas_jax.meta.config import MetaConfig, make_optimizer


def loss_and_accuracy(learner, params, z, x, y, temperature, norm_x=None):
    """Mean softmax cross-entropy and accuracy of ``learner`` on ``(x, y)`` (batch norm with
    ``norm_x``'s statistics when given, :meth:`Learner.apply`)."""
    logits = learner.apply(params, z, x, temperature, norm_x=norm_x)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    acc = jnp.mean((jnp.argmax(logits, -1) == y).astype(jnp.float32))
    return loss, acc


def query_norm_x(cfg: MetaConfig, support_x):
    """What the query set's batch norm takes its statistics from under ``cfg.query_norm``:
    ``None`` (the queries' own) for ``"batch"``, the support images for ``"support"``."""
    return support_x if cfg.query_norm == "support" else None


def query_loss_and_accuracy(learner, cfg: MetaConfig, params, z, support_x, qx, qy):
    """Loss and accuracy on the query set ``(qx, qy)`` at ``cfg.temp_end``, normalised as
    ``cfg.query_norm`` says (``support_x``: the task's support images)."""
    return loss_and_accuracy(learner, params, z, qx, qy, float(cfg.temp_end),
                             norm_x=query_norm_x(cfg, support_x))


def _select(flag, new, old):
    return jax.tree_util.tree_map(lambda a, b: jnp.where(flag, a, b), new, old)


def init_head(learner, cfg: MetaConfig, params, z, x, y, temperature=1.0):
    """``params`` with the classifier set where ``cfg.head_init`` says a task's inner loop
    starts (``"meta"``: unchanged; ``"zero"``; ``"proto"``: the prototype classifier of
    ``(x, y)``, see :class:`MetaConfig`)."""
    if cfg.head_init == "meta":
        return params
    head = params.get("head") if hasattr(params, "get") else None
    if head is None or set(head) != {"kernel", "bias"}:
        raise ValueError(f"MetaConfig.head_init={cfg.head_init!r} needs a network whose "
                         f"classifier is a Dense layer named 'head' (kernel and bias)")
    if cfg.head_init == "zero":
        new = jax.tree_util.tree_map(jnp.zeros_like, head)
    else:
        f = learner.embed(params, z, x, temperature).astype(head["kernel"].dtype)
        onehot = jax.nn.one_hot(y, head["kernel"].shape[-1], dtype=f.dtype)   # (S, N)
        protos = (onehot.T @ f) / jnp.maximum(onehot.sum(0), 1.0)[:, None]   # (N, D)
        new = {"kernel": 2.0 * protos.T, "bias": -jnp.sum(protos * protos, axis=-1)}
    return {**params, "head": new}


def scan_unroll(learner, cfg: MetaConfig, steps: int) -> int:
    """How many inner steps one iteration of the inner scan runs: ``cfg.scan_unroll``, or
    for ``"auto"`` 1 for a supernet (rolled) and all of them for a fixed network."""
    return cfg.scan_unroll if cfg.scan_unroll != "auto" else (1 if learner.searches else steps)


def checkpoints_steps(learner, cfg: MetaConfig, first_order: bool = False,
                      steps: int | None = None) -> bool:
    """Whether :func:`adapt` rematerialises each inner step: when it is differentiated to
    second order through a rolled loop, each step is recomputed in the backward pass
    instead of the loop stacking all its residuals (the DARTS supernet's second-order step
    compiles in 180 s instead of 236 s and runs 16% faster, benchmarks/LOG.md)."""
    steps = cfg.inner_steps if steps is None else int(steps)
    return not first_order and scan_unroll(learner, cfg, steps) < steps


def adapt(learner, cfg: MetaConfig, params, z, x, y, steps: int | None = None,
          arch_active=True, lrs=None, first_order: bool = False):
    """``steps`` (default ``cfg.inner_steps``) task-optimiser steps on ``(x, y)``.

    The classifier starts where ``cfg.head_init`` says (:func:`init_head`).
    Returns ``(params, z, support_losses)``; ``support_losses[k]`` is the loss before
    step ``k`` (so ``[0]`` is the pre-adaptation loss). ``arch_active`` (traced bool)
    freezes the architecture, e.g. during the meta-level warm-up. ``lrs`` (a tree of
    scalars like ``params``, the meta-learned rates) replaces ``cfg.inner_lr``'s SGD by
    ``p - lr_tensor * g``. ``first_order`` stops the gradient through the inner gradients,
    so differentiating the result gives first-order MAML's meta-gradient (identity
    Jacobian in the weights) and the rates' exact gradient.
    """
    steps = cfg.inner_steps if steps is None else int(steps)
    if steps < 1:
        raise ValueError(f"adapt: steps must be >= 1, got {steps}")
    mode = cfg.arch_mode(learner.searches)
    if lrs is None:
        w_opt = make_optimizer(cfg.inner_opt, cfg.inner_lr)
    else:  # SGD with one meta-learned rate per tensor (MetaConfig.learn_inner_lr)
        w_opt = optax.GradientTransformation(
            lambda p: optax.EmptyState(),
            lambda g, s, p=None: (jax.tree_util.tree_map(lambda lr, gi: -lr * gi, lrs, g), s))
    stop = jax.lax.stop_gradient if first_order else (lambda g: g)
    a_opt = make_optimizer(cfg.arch_inner_opt, cfg.arch_inner_lr)
    temps = jnp.asarray(cfg.temperatures(steps))
    arch_on = (jnp.arange(steps) >= cfg.arch_inner_warmup) & jnp.asarray(arch_active)

    constant_t = cfg.temp_start == cfg.temp_end  # a Python float keeps relax(z, T) exact

    def loss_fn(p, a, t):
        t = float(cfg.temp_end) if constant_t else t
        return loss_and_accuracy(learner, p, a, x, y, t)[0]

    def body(carry, inp):
        p, a, ws, as_ = carry
        t, on = inp
        if mode == "joint":
            loss, (gp, ga) = stop(jax.value_and_grad(loss_fn, argnums=(0, 1))(p, a, t))
        else:
            loss, gp = stop(jax.value_and_grad(loss_fn)(p, a, t))
        up, ws = w_opt.update(gp, ws, p)
        p = optax.apply_updates(p, up)
        if mode == "alternating":
            ga = stop(jax.grad(loss_fn, argnums=1)(p, a, t))
        if mode != "none":
            ua, new_as = a_opt.update(ga, as_, a)
            a = jnp.where(on, optax.apply_updates(a, ua), a)
            as_ = _select(on, new_as, as_)
        return (p, a, ws, as_), loss

    params = init_head(learner, cfg, params, z, x, y, float(cfg.temperatures(steps)[0]))
    carry = (params, z, w_opt.init(params), a_opt.init(z))
    if checkpoints_steps(learner, cfg, first_order, steps):
        body = jax.checkpoint(body)
    (params, z, _, _), losses = jax.lax.scan(body, carry, (temps, arch_on),
                                             unroll=scan_unroll(learner, cfg, steps))
    return params, z, losses
