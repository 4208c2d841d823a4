"""Final training of one architecture: SGD (Nesterov), cosine schedule with warm-up,
weight decay, label smoothing, random crop + flip, bf16 compute on accelerators.

The core is pure: :func:`create_state` and the jitted :func:`make_train_step` /
:func:`make_eval_step`. :func:`train` is the host loop; every epoch's data order and
augmentation come from ``fold_in(key, epoch)``, so a run resumed from a checkpoint at any
epoch boundary ends exactly like an uninterrupted one. The test split is evaluated only
here, once, at the end (search never sees it).
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from metanas_jax import data as data_mod
from metanas_jax import nn as mnn


@dataclasses.dataclass(frozen=True)
class FinalTrainConfig:
    epochs: int = 30
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    warmup_epochs: int = 1
    crop_pad: int = 4
    flip: bool = True
    bf16: str = "auto"
    eval_batch_size: int = 1000

    def __post_init__(self):
        for name in ("epochs", "batch_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0 or self.weight_decay < 0 or not 0 <= self.label_smoothing < 1:
            raise ValueError(f"train: need lr > 0, weight_decay >= 0, 0 <= label_smoothing < 1; "
                             f"got {self.lr}, {self.weight_decay}, {self.label_smoothing}")
        if self.bf16 not in ("auto", "on", "off"):
            raise ValueError(f"train.bf16 must be 'auto', 'on' or 'off', got {self.bf16!r}")

    @staticmethod
    def from_config(c) -> "FinalTrainConfig":
        names = {f.name for f in dataclasses.fields(FinalTrainConfig)}
        return FinalTrainConfig(**{k: c[k] for k in c.keys() if k in names})

    def compute_dtype(self):
        use = self.bf16 == "on" or (self.bf16 == "auto" and jax.default_backend() != "cpu")
        return jnp.bfloat16 if use else None


@flax.struct.dataclass
class TrainState:
    """Everything training needs to continue: float32 master weights, batch norm
    statistics, optimizer state, step counter."""

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any


def make_optimizer(cfg: FinalTrainConfig, steps_per_epoch: int) -> optax.GradientTransformation:
    total = cfg.epochs * steps_per_epoch
    warm = min(cfg.warmup_epochs * steps_per_epoch, max(total - 1, 0))
    sched = optax.warmup_cosine_decay_schedule(0.0, cfg.lr, max(warm, 1), max(total, 2), 0.0) \
        if warm else optax.cosine_decay_schedule(cfg.lr, max(total, 1))
    return optax.chain(optax.add_decayed_weights(cfg.weight_decay),
                       optax.sgd(sched, momentum=cfg.momentum, nesterov=cfg.nesterov))


def create_state(net, key, image_shape, tx) -> TrainState:
    variables = mnn.init(net, key, jnp.zeros((1, *image_shape), jnp.float32))
    params = variables["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      batch_stats=variables.get("batch_stats", {}), opt_state=tx.init(params))


def make_train_step(net, tx, cfg: FinalTrainConfig, num_classes: int, norm: Callable):
    """``train_step(state, batch, key) -> (state, metrics)``: pure and jitted.
    ``batch = (uint8 images, labels)``; augmentation and normalisation happen inside."""

    def train_step(state: TrainState, batch, key):
        x, y = batch
        x = data_mod.augment(key, x, pad=cfg.crop_pad, flip=cfg.flip)
        x = norm(x)
        targets = optax.smooth_labels(jax.nn.one_hot(y, num_classes), cfg.label_smoothing)

        def loss_fn(params):
            logits, upd = net.apply({"params": params, "batch_stats": state.batch_stats}, x,
                                    train=True, mutable=["batch_stats"])
            logits = logits.astype(jnp.float32)
            return optax.softmax_cross_entropy(logits, targets).mean(), (logits, upd)

        (loss, (logits, upd)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        acc = jnp.mean(jnp.argmax(logits, -1) == y)
        new = state.replace(step=state.step + 1, params=params,
                            batch_stats=upd["batch_stats"], opt_state=opt_state)
        return new, {"loss": loss, "acc": acc}

    return jax.jit(train_step, donate_argnums=0)


def make_eval_step(net, norm: Callable):
    """``eval_step(params, batch_stats, x_uint8) -> logits`` (jitted, inference mode)."""
    def eval_step(params, batch_stats, x):
        return net.apply({"params": params, "batch_stats": batch_stats}, norm(x),
                         train=False).astype(jnp.float32)
    return jax.jit(eval_step)


def accuracy(eval_step, state: TrainState, ds, batch_size: int) -> float:
    correct = 0
    for i in range(0, len(ds), batch_size):
        logits = eval_step(state.params, state.batch_stats, jnp.asarray(ds.images[i:i + batch_size]))
        correct += int(np.sum(np.argmax(np.asarray(logits), -1) == ds.labels[i:i + batch_size]))
    return correct / max(len(ds), 1)


def epoch_order(key, epoch: int, n: int, batch_size: int) -> np.ndarray:
    """Batches of one epoch, ``(steps, batch_size)`` indices: a pure function of
    ``(key, epoch)``. The last partial batch is dropped (static shapes, one compilation)."""
    perm = np.asarray(jax.random.permutation(jax.random.fold_in(key, epoch), n))
    steps = max(n // batch_size, 1)
    if n < batch_size:
        perm = np.resize(perm, batch_size)
    return perm[: steps * batch_size].reshape(steps, batch_size)


def make_norm(mean=(), std=()):
    if mean or std:
        if len(mean) != len(std):
            raise ValueError(f"data.mean and data.std must have the same length, got {mean}, {std}")
        return lambda x: data_mod.normalize(x, mean=tuple(mean), std=tuple(std))
    return data_mod.normalize


def train(space, arch, target, cfg: FinalTrainConfig, key, *, norm=data_mod.normalize,
          start: tuple[int, TrainState, list] | None = None,
          on_epoch: Callable[[int, TrainState, list], None] | None = None,
          progress: bool = False):
    """Train ``arch`` on ``target.train``; returns ``(state, net, history, result)``.

    ``start = (epoch, state, history)`` resumes after ``epoch`` completed epochs.
    ``on_epoch(epoch, state, history)`` is called after every epoch (checkpointing).
    ``history``: one dict per epoch (train loss/acc, val acc, seconds). ``result``:
    final ``val_acc`` and ``test_acc`` (test evaluated here only).
    """
    n_cls = target.train.num_classes
    net = mnn.build(space, arch, n_cls, dtype=cfg.compute_dtype())
    ds = target.train
    steps = max(len(ds) // cfg.batch_size, 1)
    tx = make_optimizer(cfg, steps)
    k_init, k_data = jax.random.split(key)
    if start is None:
        epoch0, state, history = 0, create_state(net, k_init, ds.image_shape, tx), []
    else:
        epoch0, state, history = start
        history = list(history)
    train_step = make_train_step(net, tx, cfg, n_cls, norm)
    eval_step = make_eval_step(net, norm)
    images = jnp.asarray(ds.images)
    labels = jnp.asarray(ds.labels, jnp.int32)
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=cfg.epochs, initial=epoch0, desc="train", unit="epoch", dynamic_ncols=True)
    for epoch in range(epoch0, cfg.epochs):
        t0 = time.perf_counter()
        order = epoch_order(k_data, epoch, len(ds), cfg.batch_size)
        ek = jax.random.fold_in(jax.random.fold_in(k_data, epoch), 1)
        losses, accs = [], []
        for i, idx in enumerate(order):
            state, m = train_step(state, (images[idx], labels[idx]), jax.random.fold_in(ek, i))
            losses.append(m["loss"])
            accs.append(m["acc"])
        val_acc = accuracy(eval_step, state, target.val, cfg.eval_batch_size)
        history.append({"epoch": epoch + 1, "train_loss": float(np.mean(jax.device_get(losses))),
                        "train_acc": float(np.mean(jax.device_get(accs))), "val_acc": val_acc,
                        "seconds": time.perf_counter() - t0})
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{history[-1]['train_loss']:.3f}", val=f"{val_acc:.3f}")
        if on_epoch is not None:
            on_epoch(epoch + 1, state, history)
    if bar is not None:
        bar.close()
    result = {"val_acc": accuracy(eval_step, state, target.val, cfg.eval_batch_size),
              "test_acc": accuracy(eval_step, state, target.test, cfg.eval_batch_size),
              "params": mnn.count_params({"params": state.params})}
    return state, net, history, result
