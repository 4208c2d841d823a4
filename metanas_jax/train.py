"""Final training of one architecture: pure, jitted train/eval steps and a resumable loop.

Two recipes share one code path, selected by the config's ``train`` keys (all validated):

* the standard one: SGD (Nesterov), warm-up + cosine schedule, weight decay, label
  smoothing, random crop + flip; the 300-epoch reference recipe of the design is this one
  with ``epochs=300`` (GPU/TPU);
* a fast one, :data:`RECIPES` ``["fast"]``, after airbench (Jordan 2024): a triangular
  schedule, heavy label smoothing, an exponential moving average of the weights evaluated
  instead of them, alternating flips (every image is mirrored in exactly one of two
  consecutive epochs), a frozen patch-whitening first layer (the space's stem, when it is
  a 2x2 convolution: ``space.stem_kernel = 2``), convolutions initialised as identities
  (``dirac_init``) and test-time flip averaging.

The core is pure: :func:`create_state` and the jitted :func:`make_train_step` /
:func:`make_eval_step`. :func:`train` is the host loop; every epoch's data order and
augmentation come from ``fold_in(key, epoch)``, so a run resumed from a checkpoint at any
epoch boundary ends exactly like an uninterrupted one. The test split is evaluated only
here, once, at the end (search never sees it).
"""
from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from metanas_jax import data as data_mod
from metanas_jax import nn as mnn
from metanas_jax.data.augment import CROP_MODES
from metanas_jax.nn import fastconv
from metanas_jax.nn.fastconv import patches

SCHEDULES = ("cosine", "triangle")
TTA = ("none", "flip", "flip_shift")
CONV_IMPLS = fastconv.IMPLS
STEM_KERNEL = ("stem", "conv", "kernel")

# Named recipes: overrides of the ``train`` config keys. "fast" is airbench's recipe
# (Jordan 2024) as far as it applies to any architecture of a space; lr and batch size are
# for SGD on the mean loss (airbench's 11.5 is per summed-loss, scaled by its batch 1024).
RECIPES = {
    "standard": dict(schedule="cosine", warmup_epochs=1, lr=0.1, momentum=0.9, nesterov=True,
                     weight_decay=5e-4, label_smoothing=0.1, batch_size=128, crop_pad=4, flip=True,
                     alternate_flip=False, ema=0.0, tta="none", whiten_stem=False),
    # airbench's rates per example at batch 512: lr 11.5 / (1024 (1 + 1 / (1 - 0.85))) per
    # summed-loss example = 0.75 on the mean loss; its decay per step (0.0153 x 512 / 7850 =
    # 0.001 of the weights, times the schedule) = lr x weight_decay; batch-norm scales frozen
    # at one, their biases stepped 64x; the head at the common rate (airbench scales its
    # logits by 1/9: a property of the space, ``head_scale``, as in ``spaces.CIFAR_SPACE``).
    "fast": dict(schedule="triangle", warmup_epochs=2, lr=0.75, momentum=0.85, nesterov=True,
                 weight_decay=0.001 / 0.75, label_smoothing=0.2, batch_size=512, crop_pad=2,
                 flip=True, alternate_flip=True, ema=0.99, tta="flip_shift", whiten_stem=True,
                 freeze_norm_scale=True, norm_bias_lr_scale=64.0, dirac_init=True),
}


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
    crop_mode: str = "zeros"         # the crop's padding: "zeros" (black) or "reflect" (airbench)
    flip: bool = True
    bf16: str = "auto"
    eval_batch_size: int = 1000
    schedule: str = "cosine"         # "cosine": warm-up + cosine; "triangle": 0.2 lr -> lr -> 0, linear
    ema: float = 0.0                 # decay of a moving average of the weights used at evaluation (0: off)
    alternate_flip: bool = False     # mirror each image in every other epoch instead of at random
    tta: str = "none"                # test-time augmentation: "none", "flip", "flip_shift"
    whiten_stem: bool = False        # stem conv = frozen patch whitening of the training images
    dirac_init: bool = False         # each conv's first min(in, out) filters start as identities
    kernel_init_scale: float = 1.0   # every kernel's initial values times this (1/sqrt(3): PyTorch's default init)
    conv_impl: str = "auto"          # convolutions (nn.fastconv): "auto" = "matmul" on CPU, "xla" elsewhere
    # per-group steps (airbench): a group's lr x scale, its decay per step unchanged
    freeze_norm_scale: bool = False  # batch-norm scales stay one (only their biases train)
    norm_bias_lr_scale: float = 1.0  # batch-norm biases
    head_lr_scale: float = 1.0       # the classifier (head/kernel, head/bias)

    def __post_init__(self):
        for name in ("epochs", "batch_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("lr", "momentum", "weight_decay", "label_smoothing", "ema",
                     "norm_bias_lr_scale", "head_lr_scale", "kernel_init_scale"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"train.{name} must be a finite number, got {getattr(self, name)}")
        if self.lr <= 0 or self.weight_decay < 0 or not 0 <= self.label_smoothing < 1:
            raise ValueError(f"train: need lr > 0, weight_decay >= 0, 0 <= label_smoothing < 1; "
                             f"got {self.lr}, {self.weight_decay}, {self.label_smoothing}")
        if self.norm_bias_lr_scale <= 0 or self.head_lr_scale <= 0 or self.kernel_init_scale <= 0:
            raise ValueError(f"train.norm_bias_lr_scale, train.head_lr_scale and "
                             f"train.kernel_init_scale must be > 0, got {self.norm_bias_lr_scale}, "
                             f"{self.head_lr_scale}, {self.kernel_init_scale}")
        if not 0 <= self.momentum < 1 or not 0 <= self.ema < 1:
            raise ValueError(f"train.momentum and train.ema must be in [0, 1), got "
                             f"{self.momentum}, {self.ema}")
        if self.warmup_epochs < 0 or self.crop_pad < 0:
            raise ValueError(f"train.warmup_epochs and train.crop_pad must be >= 0, got "
                             f"{self.warmup_epochs}, {self.crop_pad}")
        for name, allowed in (("bf16", ("auto", "on", "off")), ("schedule", SCHEDULES),
                              ("crop_mode", CROP_MODES),
                              ("tta", TTA), ("conv_impl", CONV_IMPLS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"train.{name} must be one of {list(allowed)}, got {getattr(self, name)!r}")
        if self.tta != "none" and not self.flip:
            raise ValueError(f"train.tta={self.tta!r} averages over mirrored images, but "
                             f"train.flip is off (the network never saw one); set train.tta='none'")

    @staticmethod
    def from_config(c) -> "FinalTrainConfig":
        names = {f.name for f in dataclasses.fields(FinalTrainConfig)}
        unknown = sorted(set(c.keys()) - names)
        if unknown:
            raise ValueError(f"train: unknown key(s) {unknown}; known: {sorted(names)}")
        return FinalTrainConfig(**{k: c[k] for k in c.keys()})

    @staticmethod
    def recipe(name: str, **overrides) -> "FinalTrainConfig":
        """A named recipe of :data:`RECIPES` with ``overrides`` (e.g. ``epochs``)."""
        if name not in RECIPES:
            raise ValueError(f"unknown training recipe {name!r}; known: {sorted(RECIPES)}")
        return FinalTrainConfig(**{**RECIPES[name], **overrides})

    def compute_dtype(self):
        use = self.bf16 == "on" or (self.bf16 == "auto" and jax.default_backend() != "cpu")
        return jnp.bfloat16 if use else None

    def build(self, space, arch, num_classes: int):
        """The compact network this recipe trains (compute dtype, convolution implementation)."""
        impl = self.conv_impl
        if impl == "auto":
            # im2col matmuls on CPU (2x lax.conv's training step there); lax.conv elsewhere
            impl = "matmul" if jax.default_backend() == "cpu" else None
        if space.name != "macro32":
            if self.conv_impl != "auto":
                raise ValueError(f"train.conv_impl={self.conv_impl!r} is for macro32 networks; "
                                 f"space {space.name!r} takes 'auto' only")
            impl = None
        kw = {} if impl is None else {"conv_impl": impl}
        return mnn.build(space, arch, num_classes, dtype=self.compute_dtype(), **kw)


@flax.struct.dataclass
class TrainState:
    """Everything training needs to continue: float32 master weights, batch norm
    statistics, optimizer state, step counter, and (``train.ema > 0``) the moving average
    ``{"params", "batch_stats"}`` that evaluation uses."""

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    ema: Any = None

    def eval_variables(self):
        """The variables evaluated and exported: the moving average when there is one."""
        if self.ema is not None:
            return self.ema
        return {"params": self.params, "batch_stats": self.batch_stats}


def make_schedule(cfg: FinalTrainConfig, steps_per_epoch: int):
    total = max(cfg.epochs * steps_per_epoch, 2)
    warm = min(cfg.warmup_epochs * steps_per_epoch, total - 1)
    if cfg.schedule == "triangle":
        peak = max(warm, 1)
        return optax.join_schedules([optax.linear_schedule(0.2 * cfg.lr, cfg.lr, peak),
                                     optax.linear_schedule(cfg.lr, 0.0, total - peak)], [peak])
    if warm:
        return optax.warmup_cosine_decay_schedule(0.0, cfg.lr, warm, total, 0.0)
    return optax.cosine_decay_schedule(cfg.lr, total)


def param_group(path: tuple, cfg: FinalTrainConfig) -> str:
    """The optimizer group of a parameter: ``frozen`` (the whitened stem kernel, and
    batch-norm scales with ``freeze_norm_scale``), ``norm_bias``, ``head`` or ``train``."""
    if cfg.whiten_stem and path == STEM_KERNEL:
        return "frozen"
    if any("norm" in p for p in path[:-1]):  # norm, norm0, stem_norm, ...
        if path[-1] == "scale":
            return "frozen" if cfg.freeze_norm_scale else "train"
        return "norm_bias" if cfg.norm_bias_lr_scale != 1 else "train"
    return "head" if path[0] == "head" and cfg.head_lr_scale != 1 else "train"


def make_optimizer(cfg: FinalTrainConfig, steps_per_epoch: int) -> optax.GradientTransformation:
    """SGD with L2 weight decay on the scheduled rate, per parameter group
    (:func:`param_group`): a group's gradient step is ``lr`` times its scale, its weight
    decay divided by it (the same shrinking per step for every group, as airbench);
    frozen parameters neither move nor decay."""
    schedule = make_schedule(cfg, steps_per_epoch)

    def sgd(scale):
        return optax.chain(optax.add_decayed_weights(cfg.weight_decay / scale),
                           optax.sgd(lambda t: scale * schedule(t), momentum=cfg.momentum or None,
                                     nesterov=cfg.nesterov and cfg.momentum > 0))
    groups = {"train": sgd(1.0)}  # only the groups in use: the state's structure is stable
    if cfg.whiten_stem or cfg.freeze_norm_scale:
        groups["frozen"] = optax.set_to_zero()
    if cfg.norm_bias_lr_scale != 1:
        groups["norm_bias"] = sgd(cfg.norm_bias_lr_scale)
    if cfg.head_lr_scale != 1:
        groups["head"] = sgd(cfg.head_lr_scale)
    if len(groups) == 1:
        return groups["train"]

    def labels(params):
        flat = traverse_util.flatten_dict(params)
        return traverse_util.unflatten_dict({k: param_group(k, cfg) for k in flat})
    return optax.multi_transform(groups, labels)


def create_state(net, key, image_shape, tx, cfg: FinalTrainConfig | None = None) -> TrainState:
    variables = mnn.init(net, key, jnp.zeros((1, *image_shape), jnp.float32))
    return _state(variables, tx, cfg)


def state_shapes(net, image_shape, tx, cfg: FinalTrainConfig | None = None) -> TrainState:
    """Shapes and dtypes of :func:`create_state`'s result, without computing it (the
    template a checkpoint is restored into)."""
    x = jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)
    variables = jax.eval_shape(lambda x: net.init(jax.random.key(0), x, train=False), x)
    return jax.eval_shape(lambda v: _state(v, tx, cfg), variables)


def _state(variables, tx, cfg):
    params, stats = variables["params"], variables.get("batch_stats", {})
    # a copy: the train step donates the state, and one buffer cannot be donated twice
    ema = jax.tree.map(jnp.copy, {"params": params, "batch_stats": stats}) \
        if cfg is not None and cfg.ema else None
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=stats,
                      opt_state=tx.init(params), ema=ema)


def whitening_kernel(images, norm: Callable, kernel: int, width: int, eps: float = 5e-4,
                     max_images: int = 5000) -> np.ndarray:
    """A ``kernel x kernel`` convolution to ``width`` channels that whitens image patches:
    the ``width / 2`` leading eigenvectors of the patch covariance, scaled by
    ``1 / sqrt(eigenvalue + eps)``, and their negatives (so a following ReLU keeps both
    signs). airbench's first layer; frozen, it gives a well-conditioned input for free."""
    x = np.asarray(norm(jnp.asarray(images[:max_images])), np.float64)
    c = x.shape[-1]
    if width % 2 or width // 2 > kernel * kernel * c:
        raise ValueError(f"train.whiten_stem: the stem's width ({width}) must be even and at "
                         f"most 2 x {kernel}x{kernel}x{c} = {2 * kernel * kernel * c} "
                         f"(space.stem_width, space.stem_kernel)")
    p = np.asarray(patches(jnp.asarray(x, jnp.float32), (kernel, kernel), 1, "VALID"), np.float64)
    p = p.reshape(-1, p.shape[-1])
    p = p - p.mean(0)
    eigval, eigvec = np.linalg.eigh(p.T @ p / len(p))
    top = np.argsort(eigval)[::-1][: width // 2]
    w = eigvec[:, top] / np.sqrt(eigval[top] + eps)
    w = np.concatenate([w, -w], axis=1)
    return w.reshape(kernel, kernel, c, width).astype(np.float32)


def scaled_kernels(params, scale: float):
    """``params`` with every kernel (convolutions and the classifier) times ``scale``.
    Why: flax initialises kernels with std ``1/sqrt(fan_in)``, PyTorch with ``1/sqrt(3
    fan_in)``; before batch norm a kernel's scale sets its effective step size (lr over
    the squared norm), so rates tuned in PyTorch (airbench's) need PyTorch's scale."""
    flat = traverse_util.flatten_dict(params)
    return traverse_util.unflatten_dict({p: w * scale if p[-1] == "kernel" else w
                                         for p, w in flat.items()})


def dirac_kernels(params):
    """``params`` with every dense convolution's (not the stem's, not a depthwise one's)
    first ``min(in, out)`` filters set to the identity (a one at the centre tap of its own
    channel): airbench's implicit residual, which lets a deep plain network train fast
    from the first step. Other filters keep their random initialisation."""
    flat = traverse_util.flatten_dict(params)
    for path, w in flat.items():
        if path[-1] != "kernel" or path[0] == "stem" or w.ndim != 4 or w.shape[2] == 1:
            continue
        kh, kw, cin, cout = w.shape
        n = min(cin, cout)
        eye = jnp.zeros((kh, kw, n, n), w.dtype).at[kh // 2, kw // 2].set(jnp.eye(n, dtype=w.dtype))
        flat[path] = w.at[:, :, :n, :n].set(eye).at[:, :, n:, :n].set(0)
    return traverse_util.unflatten_dict(flat)


def _with_params(state: TrainState, params) -> TrainState:
    ema = None if state.ema is None else {**state.ema, "params": jax.tree.map(jnp.copy, params)}
    return state.replace(params=params, ema=ema)


def with_whitened_stem(state: TrainState, images, norm: Callable) -> TrainState:
    """``state`` with its stem kernel (and the moving average's) replaced by
    :func:`whitening_kernel` of ``images``."""
    flat = traverse_util.flatten_dict(state.params)
    if STEM_KERNEL not in flat:
        raise ValueError("train.whiten_stem: this network has no stem convolution "
                         f"({'/'.join(STEM_KERNEL)}); use it with macro32 spaces")
    kh, kw, _, width = flat[STEM_KERNEL].shape
    if kh != kw:
        raise ValueError(f"train.whiten_stem: stem kernel {kh}x{kw} is not square")
    flat[STEM_KERNEL] = jnp.asarray(whitening_kernel(images, norm, kh, width))
    return _with_params(state, traverse_util.unflatten_dict(flat))


def make_train_step(net, tx, cfg: FinalTrainConfig, num_classes: int, norm: Callable, mesh=None):
    """``train_step(state, batch, key) -> (state, metrics)``: pure and jitted.
    ``batch = (uint8 images, labels, flip mask)``; crop, flip and normalisation happen
    inside; the flip mask comes from :func:`flip_mask` (alternating or random flips).

    ``mesh`` (``parallel.make_mesh``): data-parallel. The batch is split over the mesh's
    ``data`` axis, state replicated; XLA's partitioner inserts the gradient all-reduce and
    reduces batch-norm statistics over the global batch (the network's reductions span the
    sharded axis), so the step is the single-device one up to summation order. The
    returned function takes host arrays (the same on every process) or global arrays for
    ``state`` and ``batch``, and a typed key or its raw key data."""
    check_batch_split(cfg, mesh)

    def train_step(state: TrainState, batch, key):
        if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
            key = jax.random.wrap_key_data(key)
        x, y, flips = batch
        if cfg.crop_pad:
            x = data_mod.random_crop(key, x, pad=cfg.crop_pad, mode=cfg.crop_mode)
        if cfg.flip:
            x = jnp.where(flips[:, None, None, None], x[:, :, ::-1], x)
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
        ema = state.ema
        if ema is not None:
            # the average starts fast (TF's num_updates rule): short runs need no warm-up
            decay = jnp.minimum(cfg.ema, (1.0 + state.step) / (10.0 + state.step))
            ema = jax.tree.map(lambda e, v: decay * e + (1 - decay) * v, ema,
                               {"params": params, "batch_stats": upd["batch_stats"]})
        acc = jnp.mean(jnp.argmax(logits, -1) == y)
        new = state.replace(step=state.step + 1, params=params,
                            batch_stats=upd["batch_stats"], opt_state=opt_state, ema=ema)
        return new, {"loss": loss, "acc": acc}

    if mesh is None:
        return jax.jit(train_step, donate_argnums=0)
    from metanas_jax import parallel
    rep, sh = parallel.replicated(mesh), parallel.sharded(mesh)
    step = jax.jit(train_step, donate_argnums=0, in_shardings=(rep, (sh, sh, sh), rep),
                   out_shardings=(rep, rep))

    def global_step(state, batch, key):
        if not _on(state, mesh):
            state = parallel.put_replicated(parallel.to_local(state), mesh)
        if not all(_on(b, mesh) for b in batch):
            batch = parallel.put_sharded(tuple(np.asarray(b) for b in batch), mesh)
        if not _on(key, mesh):
            if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
                key = jax.random.key_data(key)
            key = parallel.put_replicated(np.asarray(key), mesh)
        return step(state, batch, key)

    global_step.jitted = step
    return global_step


def _on(tree, mesh) -> bool:
    """Whether every leaf is a global array placed on ``mesh``."""
    return all(isinstance(a, jax.Array) and isinstance(a.sharding, jax.sharding.NamedSharding)
               and a.sharding.mesh == mesh for a in jax.tree.leaves(tree))


def check_batch_split(cfg: FinalTrainConfig, mesh) -> None:
    """``train.batch_size`` must split evenly over a data-parallel mesh."""
    n = 1 if mesh is None else int(mesh.size)
    if cfg.batch_size % n:
        raise ValueError(f"train.batch_size={cfg.batch_size} does not split over the {n} devices "
                         f"of runtime.mesh (data-parallel final training puts batch_size / "
                         f"devices images on each); use a multiple of {n}")


def tta_views(x, tta: str) -> list:
    """The views whose logits are averaged: the image; its mirror (``flip``); and for
    ``flip_shift`` both again translated by one pixel (edge-padded), as airbench does."""
    if tta not in TTA:
        raise ValueError(f"tta must be one of {list(TTA)}, got {tta!r}")
    if x.ndim != 4:
        raise ValueError(f"tta_views wants a batch (N, H, W, C), got shape {x.shape}")
    views = [x]
    if tta in ("flip", "flip_shift"):
        views.append(x[:, :, ::-1])
    if tta == "flip_shift":
        shifted = jnp.pad(x, ((0, 0), (1, 0), (1, 0), (0, 0)), mode="edge")[:, :-1, :-1]
        views += [shifted, shifted[:, :, ::-1]]
    return views


def make_eval_step(net, norm: Callable, tta: str = "none"):
    """``eval_step(variables, x_uint8) -> logits`` (jitted, inference mode); with ``tta``
    the mean logits over :func:`tta_views`."""
    tta_views(jnp.zeros((1, 1, 1, 1)), tta)  # validate now, not at the first call

    def eval_step(variables, x):
        views = tta_views(norm(x), tta)
        logits = [net.apply(variables, v, train=False).astype(jnp.float32) for v in views]
        return sum(logits) / len(logits)
    return jax.jit(eval_step)


def accuracy(eval_step, variables, ds, batch_size: int) -> float:
    correct = 0
    for i in range(0, len(ds), batch_size):
        logits = eval_step(variables, jnp.asarray(ds.images[i:i + batch_size]))
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


def flip_mask(key, epoch: int, n: int, alternate: bool) -> np.ndarray:
    """Which of the ``n`` training images are mirrored in ``epoch``: at random, or
    (``alternate``) a random half in even epochs and the other half in odd ones, so every
    image is seen both ways every two epochs (airbench's alternating flip)."""
    k = jax.random.fold_in(key, 0 if alternate else epoch)
    bits = np.asarray(jax.random.bernoulli(k, 0.5, (n,)))
    return bits ^ bool(alternate and epoch % 2)


def make_norm(mean=(), std=()):
    if mean or std:
        if len(mean) != len(std):
            raise ValueError(f"data.mean and data.std must have the same length, got {mean}, {std}")
        return lambda x: data_mod.normalize(x, mean=tuple(mean), std=tuple(std))
    return data_mod.normalize


def setup(space, arch, train_ds, cfg: FinalTrainConfig):
    """``(net, tx, steps_per_epoch)`` of a final training: what :func:`train` and a
    checkpoint template (:func:`state_shapes`) must agree on."""
    net = cfg.build(space, arch, train_ds.num_classes)
    steps = max(len(train_ds) // cfg.batch_size, 1)
    return net, make_optimizer(cfg, steps), steps


def train(space, arch, target, cfg: FinalTrainConfig, key, *, norm=data_mod.normalize,
          start: tuple[int, TrainState, list] | None = None,
          on_epoch: Callable[[int, TrainState, list], None] | None = None,
          progress: bool = False, mesh=None, evaluate_test: bool = True):
    """Train ``arch`` on ``target.train``; returns ``(state, net, history, result)``.

    ``start = (epoch, state, history)`` resumes after ``epoch`` completed epochs.
    ``on_epoch(epoch, state, history)`` is called after every epoch (checkpointing).
    ``mesh`` (``parallel.make_mesh``, more than one device): data-parallel training (see
    :func:`make_train_step`; ``batch_size`` must divide by the device count); the same
    batches, augmentation and keys as on one device. Evaluation then runs on a host copy
    of the variables on each process's first device, and the state passed to
    ``on_epoch`` and returned is that host copy (numpy).
    ``history``: one dict per epoch (train loss/acc, val acc, seconds). ``result``:
    final ``val_acc`` and ``test_acc`` (test evaluated here only; not at all with
    ``evaluate_test=False``, when the training only serves to choose), of the evaluated
    variables (:meth:`TrainState.eval_variables`).
    """
    ds = target.train
    n_cls = ds.num_classes
    net, tx, _ = setup(space, arch, ds, cfg)
    k_init, k_data = jax.random.split(key)
    k_flip = jax.random.fold_in(k_data, 2)
    if start is None:
        epoch0, history = 0, []
        state = create_state(net, k_init, ds.image_shape, tx, cfg)
        if cfg.kernel_init_scale != 1:
            state = _with_params(state, scaled_kernels(state.params, cfg.kernel_init_scale))
        if cfg.dirac_init:
            state = _with_params(state, dirac_kernels(state.params))
        if cfg.whiten_stem:
            state = with_whitened_stem(state, ds.images, norm)
    else:
        epoch0, state, history = start
        history = list(history)
    if mesh is not None and mesh.size == 1:
        mesh = None
    train_step = make_train_step(net, tx, cfg, n_cls, norm, mesh=mesh)
    eval_step = make_eval_step(net, norm, cfg.tta)
    if mesh is None:
        images = jnp.asarray(ds.images)
        labels = jnp.asarray(ds.labels, jnp.int32)
        local = lambda t: t  # noqa: E731
    else:
        from metanas_jax import parallel
        images, labels = np.asarray(ds.images), np.asarray(ds.labels, np.int32)
        state = parallel.put_replicated(parallel.to_local(state), mesh)
        local = parallel.to_local
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=cfg.epochs, initial=epoch0, desc="train", unit="epoch", dynamic_ncols=True)
    for epoch in range(epoch0, cfg.epochs):
        t0 = time.perf_counter()
        order = epoch_order(k_data, epoch, len(ds), cfg.batch_size)
        flips = jnp.asarray(flip_mask(k_flip, epoch, len(ds), cfg.alternate_flip))
        ek = jax.random.fold_in(jax.random.fold_in(k_data, epoch), 1)
        losses, accs = [], []
        if mesh is None:
            for i, idx in enumerate(order):
                state, m = train_step(state, (images[idx], labels[idx], flips[idx]),
                                      jax.random.fold_in(ek, i))
                losses.append(m["loss"])
                accs.append(m["acc"])
        else:
            # the same per-step keys, as raw key data fetched once per epoch
            kds = np.asarray(jax.random.key_data(jax.vmap(lambda i: jax.random.fold_in(ek, i))(
                jnp.arange(len(order)))))
            flips_np = np.asarray(flips)
            for i, idx in enumerate(order):
                state, m = train_step(state, (images[idx], labels[idx], flips_np[idx]), kds[i])
                losses.append(m["loss"].addressable_data(0))
                accs.append(m["acc"].addressable_data(0))
        val_acc = accuracy(eval_step, local(state.eval_variables()), target.val, cfg.eval_batch_size)
        history.append({"epoch": epoch + 1, "train_loss": float(np.mean(jax.device_get(losses))),
                        "train_acc": float(np.mean(jax.device_get(accs))), "val_acc": val_acc,
                        "seconds": time.perf_counter() - t0})
        if not math.isfinite(history[-1]["train_loss"]):
            raise FloatingPointError(f"final training diverged: train loss {history[-1]['train_loss']} "
                                     f"in epoch {epoch + 1} (lower train.lr, now {cfg.lr})")
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{history[-1]['train_loss']:.3f}", val=f"{val_acc:.3f}")
        if on_epoch is not None:
            on_epoch(epoch + 1, local(state), history)
    if bar is not None:
        bar.close()
    state = local(state)
    variables = state.eval_variables()
    result = {"val_acc": accuracy(eval_step, variables, target.val, cfg.eval_batch_size),
              "params": mnn.count_params({"params": state.params})}
    if evaluate_test:
        result["test_acc"] = accuracy(eval_step, variables, target.test, cfg.eval_batch_size)
    return state, net, history, result
