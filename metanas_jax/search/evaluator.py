"""The architecture evaluator: a task-conditioned, differentiable performance predictor.

``f(z, task) = MLP([relax(z, T), context(task) + delta])`` predicts a score (accuracy as a
fraction). The task enters through a context vector whose source is pluggable
(``EvaluatorConfig.task_input``):

* ``"images"``: :class:`ImageSetEncoder`, a set encoder over a sample of the task's images
  and labels (class prototypes pooled over classes, so it ignores the order of samples and
  the numbering of classes). For real tasks.
* ``"table"``: a learned embedding per meta-training table plus one "unknown" row
  (id ``-1``) for a new table. For tabular benchmarks such as NB201, which have no images.
* ``"none"``: one learned context shared by every task.

The MLP predicts a standardized score; ``predict`` maps it to the task's scale with the
mean and standard deviation of the task's observed scores (a meta-learned prior when fewer
than two are observed). Why: accuracy levels differ wildly between tasks (NB201: ~0.45 on
ImageNet16-120, ~0.9 on CIFAR-10) while the ranking of architectures transfers; the MLP
learns the transferable part and adaptation need not relearn the level.

Adaptation (the inner loop) starts from the meta-learned predictor and ``delta = 0`` and
takes ``inner_steps`` SGD steps on the mean squared error over the task's observed
``(z, score)`` pairs, with one meta-learned learning rate per parameter tensor (Meta-SGD),
as a ``lax.scan``. Meta-training (the outer loop) samples episodes (a task, a few observed
pairs, held-out query pairs), adapts on the observed pairs and trains the initial weights,
the context source and the learning rates on the query error after adaptation (in units of
the task's score spread, so every task weighs the same), vmapped over episodes and
differentiated through the inner loop.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from metanas_jax.nn.fastconv import Conv
from metanas_jax.spaces.base import SearchSpace

log = logging.getLogger("metanas_jax")

TASK_INPUTS = ("images", "table", "none")
INNER_CLIP = 10.0  # global-norm clip of inner-loop gradients
MIN_SCALE = 0.01   # smallest score spread a meta-training loss is divided by (1 point of accuracy)


@dataclasses.dataclass(frozen=True)
class EvaluatorConfig:
    """Hyper-parameters of the evaluator (hashable: a static jit argument)."""

    hidden: tuple[int, ...] = (128, 128)
    context_dim: int = 16
    temperature: float = 0.25     # relax(z, T) of the input features; > 0 so grads reach z
    task_input: str = "images"    # "images" (image tasks) | "table" (benchmark tables) | "none"
    num_tables: int = 1           # "table": number of meta-training tables
    max_classes: int = 10         # "images": labels are in [0, max_classes)
    image_features: int = 32      # "images": per-image feature width
    inner_steps: int = 5
    inner_lr: float = 0.1         # initial value of the meta-learned learning rates
    rank_weight: float = 0.0      # pairwise ranking loss weight in meta-training

    def __post_init__(self):
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        if self.task_input not in TASK_INPUTS:
            raise ValueError(f"task_input must be one of {TASK_INPUTS}, got {self.task_input!r}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0 (gradients must reach z), got {self.temperature}")
        for name in ("context_dim", "num_tables", "max_classes", "image_features"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.inner_steps < 0 or self.inner_lr <= 0:
            raise ValueError(f"need inner_steps >= 0 and inner_lr > 0, got "
                             f"{self.inner_steps}, {self.inner_lr}")


class ImageSetEncoder(nn.Module):
    """Task embedding from a set of (image, label) pairs.

    Each image gets a small conv feature; features are averaged per class (prototypes)
    together with the class's spread, each class is embedded, and the class embeddings are
    averaged. Why per-class: a task is its classes, and which label number a class got is
    arbitrary, so the embedding must not depend on it.
    """

    out: int
    features: int = 32
    max_classes: int = 10

    @nn.compact
    def __call__(self, x, y):
        x = jnp.asarray(x, jnp.float32)
        h = nn.relu(Conv(16, 3, stride=2)(x))
        h = nn.relu(Conv(self.features, 3, stride=2)(h))
        h = nn.Dense(self.features)(jnp.mean(h, axis=(1, 2)))                # (S, F)
        onehot = jax.nn.one_hot(y, self.max_classes)                          # (S, K)
        counts = onehot.sum(0)
        present = counts > 0
        proto = onehot.T @ h / jnp.maximum(counts, 1.0)[:, None]              # (K, F)
        spread = onehot.T @ jnp.sum((h - proto[y]) ** 2, -1) / jnp.maximum(counts, 1.0)
        g = nn.relu(nn.Dense(self.out)(jnp.concatenate([proto, spread[:, None]], -1)))
        pooled = jnp.sum(g * present[:, None], 0) / jnp.maximum(present.sum(), 1)
        n_cls = jnp.log(jnp.maximum(present.sum(), 1).astype(jnp.float32))[None]
        return nn.Dense(self.out)(nn.relu(nn.Dense(self.out)(jnp.concatenate([pooled, n_cls]))))


class TableContext(nn.Module):
    """One learned context per table id; id ``-1`` (or out of range) is the "unknown" row."""

    out: int
    num_tables: int

    @nn.compact
    def __call__(self, table_id):
        table = self.param("embedding", nn.initializers.normal(0.1), (self.num_tables + 1, self.out))
        tid = jnp.asarray(table_id, jnp.int32)
        tid = jnp.where((tid < 0) | (tid >= self.num_tables), self.num_tables, tid)
        return table[tid]


class SharedContext(nn.Module):
    out: int

    @nn.compact
    def __call__(self, _=None):
        return self.param("context", nn.initializers.normal(0.1), (self.out,))


class Predictor(nn.Module):
    hidden: tuple[int, ...]

    @nn.compact
    def __call__(self, feats, ctx):
        ctx = jnp.broadcast_to(ctx, feats.shape[:-1] + ctx.shape[-1:])
        h = jnp.concatenate([feats, ctx], -1)
        for width in self.hidden:
            h = nn.relu(nn.Dense(width)(h))
        return nn.Dense(1)(h)[..., 0]


@chex.dataclass(frozen=True)
class MetaTasks:
    """Scored architectures of several tasks: the meta-training (or held-out) data.

    ``zs (T, N, dim)``, ``scores (T, N)``, ``task``: a pytree with leading axis ``T`` (table
    ids for ``"table"``, ``(images, labels)`` for ``"images"``, anything for ``"none"``).
    """

    zs: jax.Array
    scores: jax.Array
    task: Any


def check_meta_tasks(space: SearchSpace, data: MetaTasks) -> None:
    zs, sc = np.shape(data.zs), np.shape(data.scores)
    if len(zs) != 3 or zs[2] != space.dim or sc != zs[:2]:
        raise ValueError(f"MetaTasks must hold zs (T, N, {space.dim}) and scores (T, N); "
                         f"got {zs} and {sc}")
    if zs[1] < 2:
        raise ValueError(f"each task needs at least 2 scored architectures, got {zs[1]}")


@dataclasses.dataclass(frozen=True)
class Evaluator:
    """The evaluator's functions for one space and configuration (hashable, stateless)."""

    space: SearchSpace
    config: EvaluatorConfig = EvaluatorConfig()

    # -- modules ---------------------------------------------------------------------
    @property
    def context_module(self) -> nn.Module:
        c = self.config
        if c.task_input == "images":
            return ImageSetEncoder(c.context_dim, c.image_features, c.max_classes)
        if c.task_input == "table":
            return TableContext(c.context_dim, c.num_tables)
        return SharedContext(c.context_dim)

    @property
    def predictor_module(self) -> nn.Module:
        return Predictor(self.config.hidden)

    def features(self, zs: jax.Array) -> jax.Array:
        """Relaxed one-hot weights of every choice, flattened: ``(..., F)``."""
        w = self.space.relax(zs, self.config.temperature)
        return jnp.concatenate([v.reshape(v.shape[:-2] + (-1,)) for v in w.values()], -1)

    # -- parameters ------------------------------------------------------------------
    # init and context run compiled whole (the evaluator is hashable: a static argument);
    # op by op they compiled some 200 small programs, 5 s of a tiny job's 40 s
    def init(self, key: jax.Array, task: Any) -> dict:
        """Meta-parameters: ``{"context", "predictor", "log_lr", "prior"}``. ``task`` is one
        task's input (used for shapes only)."""
        return self._compiled_init(key, self._task_args(task))

    @functools.partial(jax.jit, static_argnums=0)
    def _compiled_init(self, key, task_args) -> dict:
        k_c, k_p = jax.random.split(key)
        ctx_vars = self.context_module.init(k_c, *task_args)
        feats = self.features(jnp.zeros((1, self.space.dim)))
        pred_vars = self.predictor_module.init(k_p, feats, jnp.zeros((self.config.context_dim,)))
        trainable = {"predictor": pred_vars["params"],
                     "delta": jnp.zeros((self.config.context_dim,))}
        log_lr = jax.tree.map(lambda _: jnp.log(jnp.float32(self.config.inner_lr)), trainable)
        prior = {"loc": jnp.float32(0.5), "log_scale": jnp.log(jnp.float32(0.1))}
        return {"context": ctx_vars["params"], "predictor": pred_vars["params"],
                "log_lr": log_lr, "prior": prior}

    def _task_args(self, task):
        if self.config.task_input == "images":
            x, y = task
            return (jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.int32))
        if self.config.task_input == "table":
            return (jnp.asarray(task, jnp.int32),)
        return (None,)

    def context(self, params: dict, task: Any) -> jax.Array:
        """The task's context vector ``(context_dim,)``."""
        return self._compiled_context(params["context"], self._task_args(task))

    @functools.partial(jax.jit, static_argnums=0)
    def _compiled_context(self, ctx_params, task_args) -> jax.Array:
        return self.context_module.apply({"params": ctx_params}, *task_args)

    @staticmethod
    def normalizer(params: dict, scores: jax.Array, mask: jax.Array) -> dict:
        """``{"loc", "scale"}`` of the observed scores: their mean and standard deviation;
        with one observation its value and the prior scale; with none the prior."""
        m = mask.astype(jnp.float32)
        k = m.sum()
        mean = jnp.sum(scores * m) / jnp.maximum(k, 1.0)
        std = jnp.sqrt(jnp.sum((scores - mean) ** 2 * m) / jnp.maximum(k - 1.0, 1.0))
        prior_scale = jnp.exp(params["prior"]["log_scale"])
        loc = jnp.where(k >= 1, mean, params["prior"]["loc"])
        scale = jnp.where(k >= 2, jnp.maximum(std, MIN_SCALE), prior_scale)
        return {"loc": loc, "scale": scale}

    def fast_init(self, params: dict, scores: jax.Array | None = None,
                  mask: jax.Array | None = None) -> dict:
        """The task-specific weights before adaptation: the meta-learned predictor,
        ``delta = 0`` and the normalizer of the observed ``scores`` (prior if none)."""
        if scores is None:
            scores, mask = jnp.zeros((1,)), jnp.zeros((1,), bool)
        return {"predictor": params["predictor"],
                "delta": jnp.zeros((self.config.context_dim,), jnp.float32),
                "norm": self.normalizer(params, scores, mask)}

    def predict(self, fast: dict, ctx: jax.Array, zs: jax.Array) -> jax.Array:
        """Predicted scores of encodings ``zs (..., dim)``; differentiable in ``zs``."""
        g = self.predictor_module.apply({"params": fast["predictor"]}, self.features(zs),
                                        ctx + fast["delta"])
        return fast["norm"]["loc"] + fast["norm"]["scale"] * g

    # -- adaptation --------------------------------------------------------------------
    def loss(self, fast, ctx, zs, scores, mask):
        """Mean squared error over the pairs where ``mask`` is true (0 when none)."""
        err = (self.predict(fast, ctx, zs) - scores) ** 2
        m = mask.astype(jnp.float32)
        return jnp.sum(err * m) / jnp.maximum(m.sum(), 1.0)

    def adapt(self, params: dict, ctx: jax.Array, zs: jax.Array, scores: jax.Array,
              mask: jax.Array, steps: int | None = None) -> dict:
        """Inner loop: ``steps`` Meta-SGD steps from :meth:`fast_init` on the observed pairs.

        The loss is scaled by the observed spread so the meta-learned step sizes mean the
        same on every task."""
        steps = self.config.inner_steps if steps is None else steps
        lrs = jax.tree.map(lambda l: jnp.exp(jnp.clip(l, -12.0, 0.0)), params["log_lr"])
        fast0 = self.fast_init(params, scores, mask)
        norm = fast0.pop("norm")

        def scaled_loss(train):
            return self.loss({**train, "norm": norm}, ctx, zs, scores, mask) / norm["scale"] ** 2

        def step(train, _):
            # clipped: a task whose observations hold an outlier must not blow the step up
            g = _clip(jax.grad(scaled_loss)(train), INNER_CLIP)
            return jax.tree.map(lambda p, lr, gi: p - lr * gi, train, lrs, g), None

        train, _ = jax.lax.scan(step, fast0, None, length=steps)
        return {**train, "norm": norm}

    def fit(self, fast: dict, ctx: jax.Array, zs, scores, mask, steps: int,
            lr: float = 3e-3) -> dict:
        """Plain training (Adam) of ``fast`` on the observed pairs: the no-meta-learning
        baseline's way to learn the evaluator on the task alone. The normalizer is reset to
        the observed scores' statistics first."""
        m = mask.astype(jnp.float32)
        k = m.sum()
        mean = jnp.sum(scores * m) / jnp.maximum(k, 1.0)
        std = jnp.sqrt(jnp.sum((scores - mean) ** 2 * m) / jnp.maximum(k - 1.0, 1.0))
        norm = {"loc": mean, "scale": jnp.where(k >= 2, jnp.maximum(std, MIN_SCALE), 1.0)}
        train = {"predictor": fast["predictor"], "delta": fast["delta"]}
        opt = optax.adam(lr)

        def scaled_loss(train):
            return self.loss({**train, "norm": norm}, ctx, zs, scores, mask) / norm["scale"] ** 2

        def step(carry, _):
            train, opt_state = carry
            g = jax.grad(scaled_loss)(train)
            upd, opt_state = opt.update(g, opt_state, train)
            return (optax.apply_updates(train, upd), opt_state), None

        (train, _), _ = jax.lax.scan(step, (train, opt.init(train)), None, length=steps)
        return {**train, "norm": norm}

    # -- meta-training -----------------------------------------------------------------
    def episode_loss(self, params, task, zs_s, y_s, mask_s, zs_q, y_q, scale):
        """Query error after adaptation in units of ``scale``, the task's score spread over
        all its scored architectures (not the few query scores': with a handful of
        quantized accuracies their spread is often 0 and the loss would explode)."""
        ctx = self.context(params, task)
        fast = self.adapt(params, ctx, zs_s, y_s, mask_s)
        pred = self.predict(fast, ctx, zs_q)
        loss = jnp.mean((pred - y_q) ** 2) / scale ** 2
        if self.config.rank_weight > 0:
            dp = pred[:, None] - pred[None, :]
            dy = y_q[:, None] - y_q[None, :]
            pair = jax.nn.softplus(-jnp.sign(dy) * dp / scale) * (jnp.abs(dy) > 1e-6)
            loss = loss + self.config.rank_weight * jnp.mean(pair)
        return loss

    def sample_episode(self, key, data: MetaTasks, n_support: int, n_query: int,
                       p_unknown: float):
        """One episode: a task, up to ``n_support`` observed pairs (how many is uniform in
        ``[0, n_support]``, so the prior without observations is trained too), ``n_query``
        held-out pairs, and the task's score spread (its standard deviation over all scored
        architectures, at least :data:`MIN_SCALE`)."""
        k_t, k_s, k_q, k_k, k_u = jax.random.split(key, 5)
        t = jax.random.randint(k_t, (), 0, data.scores.shape[0])
        n = data.scores.shape[1]
        if n > 4096:  # a permutation per episode is slow; collisions are then rare
            idx = jax.random.randint(k_s, (n_support + n_query,), 0, n)
        else:
            idx = jax.random.permutation(k_s, n)
        s_idx, q_idx = idx[:n_support], idx[n_support:n_support + n_query]
        k = jax.random.randint(k_k, (), 0, n_support + 1)
        task = jax.tree.map(lambda a: a[t], data.task)
        if self.config.task_input == "table":  # train the "unknown table" row as well
            task = jnp.where(jax.random.uniform(k_u) < p_unknown, -1, task)
        scale = jnp.maximum(jnp.std(data.scores[t]), MIN_SCALE)
        return (task, data.zs[t, s_idx], data.scores[t, s_idx], jnp.arange(n_support) < k,
                data.zs[t, q_idx], data.scores[t, q_idx], scale)

    def meta_train(self, key: jax.Array, data: MetaTasks, *, steps: int = 1000,
                   batch_tasks: int = 8, n_support: int = 64, n_query: int = 64,
                   lr: float = 1e-3, p_unknown: float = 0.5, params: dict | None = None,
                   log_every: int = 0, mesh=None) -> tuple[dict, np.ndarray]:
        """Outer loop: Adam on the mean query loss of ``batch_tasks`` episodes per step.

        ``mesh`` (a ``jax.sharding.Mesh`` with axis ``"data"``, see
        :mod:`metanas_jax.parallel`): each step's episodes are split over its devices
        (padded to a multiple of the mesh size with copies that weigh nothing) and the
        compiler averages their gradients; parameters and data are replicated. Returns
        the meta-parameters (host arrays when ``mesh`` is given) and the per-step training
        losses.
        """
        check_meta_tasks(self.space, data)
        n = data.scores.shape[1]
        if n_support + n_query > n:
            raise ValueError(f"n_support + n_query = {n_support + n_query} exceeds the {n} "
                             f"scored architectures per task")
        if steps < 1 or batch_tasks < 1:
            raise ValueError(f"need steps >= 1 and batch_tasks >= 1, got {steps}, {batch_tasks}")
        mesh = mesh if mesh is not None and mesh.size > 1 else None
        k_init, key = jax.random.split(key)
        if params is None:
            params = self.init(k_init, jax.tree.map(lambda a: a[0], data.task))
            params["prior"] = prior_from_scores(data.scores)
        opt = _meta_optimizer(float(lr))
        losses = []
        opt_state = opt.init(params)
        if mesh is not None:
            from metanas_jax import parallel
            params, opt_state, data = parallel.put_replicated(
                parallel.to_local((params, opt_state, data)), mesh)
        done = 0
        while done < steps:
            chunk = min(50, steps - done)
            run = _meta_train_chunk(self, float(lr), batch_tasks, n_support, n_query,
                                    float(p_unknown), chunk, mesh)
            key, sub = jax.random.split(key)
            if mesh is not None:  # a global key every process places alike
                sub = parallel.put_replicated(sub, mesh)
            params, opt_state, l = run(params, opt_state, data, sub)
            losses.append(np.asarray(l.addressable_data(0)))
            done += chunk
            if log_every and (done % log_every < chunk or done == steps):
                log.info("evaluator meta-train step %d: loss %.5f", done, float(np.mean(losses[-1])))
        if mesh is not None:  # host copies of the replicated result
            params = jax.tree.map(lambda a: np.asarray(a.addressable_data(0)), params)
        return params, np.concatenate(losses)


def prior_from_scores(scores) -> dict:
    """The prior normalizer (used while a task has fewer than two observations) at the
    training tasks' statistics: the mean score and the mean within-task spread. Why: from
    the fixed 0.5 / 0.1 start, on tasks scored ~0.16 +- 0.04 the level error of the
    unobserved episodes was ~30x the ranking error and took most of meta-training to
    unlearn (the loss rose and fell with it)."""
    sc = np.asarray(scores, np.float64)
    spread = max(float(np.mean(np.std(sc, axis=1))), MIN_SCALE)
    return {"loc": jnp.float32(np.mean(sc)), "log_scale": jnp.log(jnp.float32(spread))}


def _clip(tree, max_norm):
    """Global-norm clipping that stays differentiable at zero gradient (second order)."""
    norm = jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree)) + 1e-12)
    factor = max_norm / jnp.maximum(norm, max_norm)
    return jax.tree.map(lambda x: x * factor, tree)


def _meta_optimizer(lr: float):
    return optax.chain(optax.clip_by_global_norm(1.0), optax.adam(lr))


@functools.lru_cache(maxsize=16)
def _meta_train_chunk(ev: Evaluator, lr, batch_tasks, n_support, n_query, p_unknown, chunk,
                      mesh=None):
    """One jitted program per setting, shared by every ``meta_train`` call (the folds of
    :func:`cross_validate` reuse it instead of compiling it again). With ``mesh`` the
    episodes of a step are sharded over its ``"data"`` axis (GSPMD partitions the rest)."""
    opt = _meta_optimizer(lr)
    def one_step(carry, key):
        params, opt_state, data = carry
        eps = jax.vmap(lambda k: ev.sample_episode(k, data, n_support, n_query, p_unknown))(
            jax.random.split(key, batch_tasks))
        weight = None
        if mesh is not None:
            rows = jnp.arange(-(-batch_tasks // mesh.size) * mesh.size)
            eps = jax.tree.map(lambda a: a[rows % batch_tasks], eps)
            weight = jnp.where(rows < batch_tasks, 1.0 / batch_tasks, 0.0)
            eps = jax.lax.with_sharding_constraint(
                eps, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data")))

        def batch_loss(p):
            losses = jax.vmap(lambda *e: ev.episode_loss(p, *e))(*eps)
            return jnp.mean(losses) if weight is None else jnp.sum(weight * losses)

        l, g = jax.value_and_grad(batch_loss)(params)
        upd, opt_state = opt.update(g, opt_state, params)
        return (optax.apply_updates(params, upd), opt_state, data), l

    def run(params, opt_state, data, key):
        (params, opt_state, _), ls = jax.lax.scan(one_step, (params, opt_state, data),
                                                  jax.random.split(key, chunk))
        return params, opt_state, ls

    if mesh is None:
        return jax.jit(run)
    # outputs replicated on every device, so each process reads them whole
    return jax.jit(run, out_shardings=jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))


# -- reporting -------------------------------------------------------------------------------
def kendall_tau(pred, true) -> float:
    """Kendall's tau-b between predictions and true scores (host side)."""
    from scipy.stats import kendalltau

    pred, true = np.asarray(pred, np.float64).ravel(), np.asarray(true, np.float64).ravel()
    if pred.shape != true.shape or pred.size < 2:
        raise ValueError(f"need two equal-length vectors of >= 2 values, got {pred.shape}, {true.shape}")
    tau = kendalltau(pred, true).statistic
    return float(0.0 if np.isnan(tau) else tau)


def top_k_regret(pred, true, k: int = 1) -> float:
    """Best true score minus the best true score among the ``k`` highest predictions: what
    choosing by the prediction costs against an oracle (0 is perfect)."""
    pred, true = np.asarray(pred, np.float64).ravel(), np.asarray(true, np.float64).ravel()
    k = max(1, min(int(k), true.size))
    return float(true.max() - true[np.argsort(-pred, kind="stable")[:k]].max())


def random_top_k_regret(true, k: int = 1) -> float:
    """Expected :func:`top_k_regret` of ``k`` choices drawn at random without replacement:
    the reference an evaluator's regret must beat."""
    y = np.sort(np.asarray(true, np.float64).ravel())
    n, k = y.size, max(1, min(int(k), y.size))
    from math import comb
    p = np.asarray([comb(i, k - 1) for i in range(n)], np.float64) / comb(n, k)
    return float(y[-1] - np.sum(p * y))


def tau_before_after(ev: Evaluator, params: dict, data: MetaTasks, key: jax.Array, *,
                     n_observed: int = 20, n_eval: int = 1000, repeats: int = 5,
                     steps: int | None = None, top_k: int = 1) -> dict[str, np.ndarray]:
    """Kendall tau and top-``k`` regret of the evaluator on each task of ``data`` (held-out
    tasks) before and after adapting to ``n_observed`` random scored architectures,
    measured on ``n_eval`` other architectures of the task; averaged over ``repeats``
    draws. Returns ``{"before", "after", "mse_before", "mse_after", "regret_before",
    "regret_after", "regret_random"}``, each ``(T,)`` (tau under the first two keys)."""
    check_meta_tasks(ev.space, data)
    n_tasks, n = data.scores.shape[:2]
    n_eval = min(n_eval, n - n_observed)
    if n_eval < 2:
        raise ValueError(f"need at least {n_observed + 2} scored architectures per task, got {n}")

    @jax.jit
    def one(task, zs, ys, key):
        perm = jax.random.permutation(key, n)
        o, e = perm[:n_observed], perm[n_observed:n_observed + n_eval]
        ctx = ev.context(params, task)
        before = ev.predict(ev.fast_init(params), ctx, zs[e])  # prior normalizer
        fast = ev.adapt(params, ctx, zs[o], ys[o], jnp.ones((n_observed,), bool), steps)
        return before, ev.predict(fast, ctx, zs[e]), ys[e]

    keys = ("before", "after", "mse_before", "mse_after", "regret_before", "regret_after",
            "regret_random")
    out = {k: np.zeros((n_tasks,)) for k in keys}
    for t in range(n_tasks):
        task = jax.tree.map(lambda a: a[t], data.task)
        for r, k in enumerate(jax.random.split(jax.random.fold_in(key, t), repeats)):
            b, a, y = (np.asarray(v) for v in one(task, data.zs[t], data.scores[t], k))
            out["before"][t] += kendall_tau(b, y) / repeats
            out["after"][t] += kendall_tau(a, y) / repeats
            out["mse_before"][t] += float(np.mean((b - y) ** 2)) / repeats
            out["mse_after"][t] += float(np.mean((a - y) ** 2)) / repeats
            out["regret_before"][t] += top_k_regret(b, y, top_k) / repeats
            out["regret_after"][t] += top_k_regret(a, y, top_k) / repeats
            out["regret_random"][t] += random_top_k_regret(y, top_k) / repeats
    return out


def linear_probe_tau(ev: Evaluator, train: MetaTasks, held: MetaTasks, ridge: float = 10.0) -> np.ndarray:
    """Kendall tau, per held-out task over all its architectures, of a ridge regression from
    the evaluator's input features to the within-task centred scores of the ``train`` tasks.

    Why: a floor the evaluator should reach. It tells "the experience holds no learnable
    signal" (this tau ~ 0 too) from "the evaluator does not learn it" (this tau above the
    evaluator's)."""
    def design(zs):
        f = np.asarray(ev.features(jnp.asarray(zs)), np.float64)
        return np.concatenate([f, np.ones(f.shape[:-1] + (1,))], -1)

    x = design(train.zs)
    x = x.reshape(-1, x.shape[-1])
    sc = np.asarray(train.scores, np.float64)
    y = (sc - sc.mean(1, keepdims=True)).ravel()
    w = np.linalg.solve(x.T @ x + ridge * np.eye(x.shape[1]), x.T @ y)
    return np.asarray([kendall_tau(p, s) for p, s in zip(design(held.zs) @ w, held.scores)])


def task_folds(num_tasks: int, folds: int, key: jax.Array) -> list[np.ndarray]:
    """A random partition of ``range(num_tasks)`` into ``folds`` parts of near-equal size
    (every task in exactly one fold)."""
    if not 2 <= folds <= num_tasks:
        raise ValueError(f"cross-validation needs 2 <= folds <= number of tasks ({num_tasks}), "
                         f"got folds={folds}")
    perm = np.asarray(jax.random.permutation(key, num_tasks))
    return [np.sort(part) for part in np.array_split(perm, folds)]


def cross_validate(ev: Evaluator, data: MetaTasks, key: jax.Array, *, folds: int = 5,
                   n_observed: int, top_k: int = 1, repeats: int = 3, **meta_train_kw) -> dict:
    """k-fold meta-evaluation over tasks: per fold, meta-train on the other folds
    (``meta_train_kw`` as for :meth:`Evaluator.meta_train`) and measure, on the held-out
    tasks, Kendall tau and top-``k`` regret before and after adapting to ``n_observed``
    scored architectures (:func:`tau_before_after`), and the tau of a linear probe fitted on
    the same training tasks (``"linear_tau"``, :func:`linear_probe_tau`). Returns per-fold
    means (``"folds"``) and their mean and standard deviation over folds (``"mean"``,
    ``"std"``)."""
    check_meta_tasks(ev.space, data)
    k_split, k_train, k_eval = jax.random.split(key, 3)
    parts = task_folds(int(data.scores.shape[0]), int(folds), k_split)
    def sub(idx):
        return MetaTasks(zs=data.zs[idx], scores=data.scores[idx],
                         task=jax.tree.map(lambda a: a[idx], data.task))

    per_fold = []
    for f, held in enumerate(parts):
        rest = np.setdiff1d(np.arange(data.scores.shape[0]), held)
        params, losses = ev.meta_train(jax.random.fold_in(k_train, f), sub(rest), **meta_train_kw)
        m = tau_before_after(ev, params, sub(held), jax.random.fold_in(k_eval, f),
                             n_observed=n_observed, repeats=repeats, top_k=top_k)
        m["linear_tau"] = linear_probe_tau(ev, sub(rest), sub(held))
        per_fold.append({"held_out": held.tolist(), "train_loss_first": float(losses[0]),
                         "train_loss_last": float(np.mean(losses[-max(1, len(losses) // 10):])),
                         **{k: float(np.mean(v)) for k, v in m.items()}})
    names = [k for k in per_fold[0] if k not in ("held_out",)]
    return {"folds": per_fold, "k": len(parts), "n_observed": int(n_observed), "top_k": int(top_k),
            "mean": {k: float(np.mean([p[k] for p in per_fold])) for k in names},
            "std": {k: float(np.std([p[k] for p in per_fold])) for k in names}}
