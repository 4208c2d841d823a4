"""Outer loop: one meta-step of MAML, first-order MAML or Reptile over a batch of tasks.

``make_meta_step(learner, cfg)`` returns the jitted pure function
``meta_step(state, task_batch) -> (state, metrics)``; ``task_batch`` is anything with
``support_x (T,S,H,W,C)``, ``support_y (T,S)``, ``query_x (T,Q,H,W,C)``, ``query_y (T,Q)``
(``data.TaskBatch``). Per-task work goes through :func:`map_tasks`, the one place that
chooses vmap / lax.map / unrolled execution.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from metanas_jax.meta.config import MetaConfig
from metanas_jax.meta.inner import adapt, checkpoints_steps, query_loss_and_accuracy
from metanas_jax.meta.state import MetaState, arch_optimizer, meta_optimizer, meta_trained
from metanas_jax.meta.tasks_map import map_tasks


def check_task_batch(batch) -> tuple:
    """``(sx, sy, qx, qy)`` after checking shapes agree (ValueError naming the field)."""
    try:
        sx, sy, qx, qy = batch.support_x, batch.support_y, batch.query_x, batch.query_y
    except AttributeError as e:
        raise ValueError(f"task batch needs support_x/support_y/query_x/query_y: {e}") from e
    for name, arr, nd in (("support_x", sx, 5), ("query_x", qx, 5), ("support_y", sy, 2),
                          ("query_y", qy, 2)):
        if jnp.ndim(arr) != nd:
            raise ValueError(f"task batch {name} must have {nd} dims (task axis first), "
                             f"got shape {jnp.shape(arr)}")
    t = sx.shape[0]
    for name, arr in (("support_y", sy), ("query_x", qx), ("query_y", qy)):
        if arr.shape[0] != t:
            raise ValueError(f"task batch {name} has {arr.shape[0]} tasks, support_x has {t}")
    if sy.shape[1] != sx.shape[1] or qy.shape[1] != qx.shape[1]:
        raise ValueError(f"task batch labels/images disagree: support {sx.shape}/{sy.shape}, "
                         f"query {qx.shape}/{qy.shape}")
    if sx.shape[2:] != qx.shape[2:]:
        raise ValueError(f"support images {sx.shape[2:]} and query images {qx.shape[2:]} differ")
    return sx, sy, qx, qy


def task_meta_gradient(learner, cfg: MetaConfig, params, z, sx, sy, qx, qy, arch_active,
                       lrs=None):
    """One task's meta-gradient wrt ``(params, z)`` and its scalar metrics; with ``lrs``
    (meta-learned inner rates) ``gp`` is the pair of gradients wrt ``(params, lrs)``."""
    def adapted_query(p, a, r, first_order=False):
        p2, a2, sl = adapt(learner, cfg, p, a, sx, sy, arch_active=arch_active, lrs=r,
                           first_order=first_order)
        loss, acc = query_loss_and_accuracy(learner, cfg, p2, a2, sx, qx, qy)
        return loss, (acc, sl)

    if cfg.algorithm == "maml" or (lrs is not None and cfg.algorithm == "fomaml"):
        # first-order MAML with learned rates: differentiate through the inner loop with
        # its gradients stopped (identity Jacobian in the weights, exact in the rates)
        (loss, (acc, sl)), (gp, ga, gr) = jax.value_and_grad(
            adapted_query, argnums=(0, 1, 2), has_aux=True)(
                params, z, lrs, first_order=cfg.algorithm == "fomaml")
        if lrs is not None:
            gp = (gp, gr)
    else:
        p2, a2, sl = adapt(learner, cfg, params, z, sx, sy, arch_active=arch_active)
        if cfg.algorithm == "fomaml":
            (loss, acc), (gp, ga) = jax.value_and_grad(
                lambda p, a: query_loss_and_accuracy(learner, cfg, p, a, sx, qx, qy),
                argnums=(0, 1), has_aux=True)(p2, a2)
        else:  # reptile: move towards the adapted solution
            loss, acc = query_loss_and_accuracy(learner, cfg, p2, a2, sx, qx, qy)
            gp = jax.tree_util.tree_map(jnp.subtract, params, p2)
            ga = z - a2
    metrics = {"loss": loss, "accuracy": acc, "support_loss_before": sl[0],
               "support_loss_last": sl[-1]}
    return gp, ga, metrics


def make_meta_step(learner, cfg: MetaConfig, jit: bool = True, mesh=None, axis: str = "data"):
    """The pure ``meta_step(state, task_batch) -> (state, metrics)`` for this learner.

    With ``mesh`` (a ``jax.sharding.Mesh`` with axis ``axis``; see
    :mod:`metanas_jax.parallel`) the task axis of the batch is split over the mesh's
    devices: each device runs its tasks through :func:`map_tasks` inside ``shard_map``, the
    meta-gradients and metrics are averaged explicitly (``pmean``), and the update is
    applied to the replicated state. The meta-batch must divide by the mesh size. The
    weights are made device-varying (``lax.pcast``) before any gradient: otherwise the
    gradient wrt a replicated input is implicitly summed over devices, which makes every
    inner step ``devices`` times too large.
    """
    if cfg.query_norm == "support":
        learner.check_norm_from_other_images()
    if checkpoints_steps(learner, cfg, first_order=cfg.algorithm != "maml"):
        # the backward pass recomputes each inner step, the whole network with it: the
        # network's own rematerialisation would recompute its parts once more (DARTS
        # supernet, second order: step 21% faster, compile 13%; benchmarks/LOG.md)
        learner = learner.without_remat()
    w_opt, a_opt = meta_optimizer(cfg), arch_optimizer(cfg)
    learn_arch = learner.searches and cfg.arch_meta_lr > 0

    def task_grads(params, arch, lrs, arch_active, sx, sy, qx, qy):
        """Mean meta-gradient and metrics over the (local) tasks."""
        if mesh is not None:  # replicated -> varying, so gradients stay per device
            params, arch, lrs = jax.tree_util.tree_map(
                lambda a: jax.lax.pcast(a, axis, to="varying"), (params, arch, lrs))

        def one(sx_, sy_, qx_, qy_):
            return task_meta_gradient(learner, cfg, params, arch, sx_, sy_, qx_, qy_,
                                      arch_active, lrs)

        gp, ga, m = map_tasks(one, sx, sy, qx, qy, strategy=cfg.strategy,
                              cpu_strategy=learner.cpu_strategy)
        gp, ga, m = jax.tree_util.tree_map(lambda g: jnp.mean(g, 0), (gp, ga, m))
        if mesh is not None:
            gp, ga, m = jax.lax.pmean((gp, ga, m), axis)
        return gp, ga, m

    if mesh is not None:
        from jax.sharding import PartitionSpec as P

        if axis not in mesh.axis_names:
            raise ValueError(f"make_meta_step: mesh has axes {mesh.axis_names}, no {axis!r}")
        n_dev = mesh.shape[axis]
        task_grads = jax.shard_map(task_grads, mesh=mesh,
                                   in_specs=(P(), P(), P(), P()) + (P(axis),) * 4,
                                   out_specs=(P(), P(), P()))

    def meta_step(state: MetaState, batch):
        sx, sy, qx, qy = check_task_batch(batch)
        if mesh is not None and sx.shape[0] % n_dev:
            raise ValueError(f"meta-batch of {sx.shape[0]} tasks does not split over "
                             f"{n_dev} devices (mesh axis {axis!r})")
        if cfg.learn_inner_lr != (state.inner_lrs is not None):
            raise ValueError(f"MetaConfig.learn_inner_lr={cfg.learn_inner_lr} but the state "
                             f"{'has no' if cfg.learn_inner_lr else 'has'} inner_lrs: make "
                             f"it with init_state under the same config")
        arch_active = state.step >= cfg.arch_warmup_steps
        gp, ga, metrics = task_grads(state.params, state.arch, state.inner_lrs, arch_active,
                                     sx, sy, qx, qy)
        learned = meta_trained(cfg, state.params, state.inner_lrs)
        up, opt_state = w_opt.update(gp, state.opt_state, learned)
        learned = optax.apply_updates(learned, up)
        if cfg.learn_inner_lr:
            (params, lrs), gp = learned, gp[0]
        else:
            params, lrs = learned, None
        arch, arch_opt_state = state.arch, state.arch_opt_state
        if learn_arch:
            ua, new_aos = a_opt.update(ga, state.arch_opt_state, state.arch)
            arch = jnp.where(arch_active, optax.apply_updates(state.arch, ua), state.arch)
            arch_opt_state = jax.tree_util.tree_map(
                lambda a, b: jnp.where(arch_active, a, b), new_aos, state.arch_opt_state)
        metrics = dict(metrics)
        if cfg.learn_inner_lr:
            metrics["inner_lr_mean"] = jnp.mean(jnp.stack(jax.tree_util.tree_leaves(lrs)))
        metrics.update(grad_norm=optax.tree.norm(gp), arch_grad_norm=optax.tree.norm(ga),
                       arch_active=arch_active.astype(jnp.float32),
                       step=state.step.astype(jnp.float32))
        new = state.replace(params=params, arch=arch, opt_state=opt_state,
                            arch_opt_state=arch_opt_state, step=state.step + 1,
                            inner_lrs=lrs)
        return new, metrics

    if not jit:
        return meta_step
    return jax.jit(meta_step, compiler_options=learner.compiler_options())
