"""Primitive operations shared by the compact networks and the supernets.

Every op is a linen module ``op(x, stride, train)`` producing ``features`` channels (or, for
parameter-free ops, the input's channels). A compact network and a supernet name their op
modules the same way, so the compact network's variables are slices of the supernet's
(see :func:`metanas_jax.nn.extract`).
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from metanas_jax.nn.fastconv import Conv, window_pads

EPS = 1e-5
# The activations an op may use (a space's ``activation``): GELU as PyTorch's default, exact.
ACTIVATIONS = {"relu": nn.relu, "gelu": lambda x: nn.gelu(x, approximate=False)}
# A variable collection that makes batch norm normalise with statistics computed on other
# images (see norm_moments); Learner.apply(..., norm_x=...) drives it.
NORM_STATS = "norm_stats"


def batch_moments(x):
    """Per-channel mean and (biased) variance over every axis but the last, in at least
    float32 (float64 stays float64), from one pass (``E[x^2] - E[x]^2``, clipped at 0)."""
    xf = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    axes = tuple(range(x.ndim - 1))
    mean = jnp.mean(xf, axes)
    return mean, jnp.maximum(jnp.mean(jnp.square(xf), axes) - jnp.square(mean), 0.0)


def norm_moments(module: nn.Module, x, record: str = ""):
    """The ``(mean, var)`` batch-norm layer ``module`` normalises ``x`` with: ``x``'s own
    (:func:`batch_moments`), unless the :data:`NORM_STATS` collection says otherwise.

    Applied with ``mutable=[NORM_STATS]`` the layer records the moments it computed; applied
    with those records in the variables (``{"params": ..., NORM_STATS: records}``) it uses
    them instead of ``x``'s. Two passes thus normalise a query batch with a reference
    batch's statistics (the task's support set, ``MetaConfig.query_norm="support"``): each
    query's output then depends on that query alone, not on the batch it came in. A
    network whose norms sit in a lifted transform must list the collection there
    (``nn.scan(..., variable_axes={NORM_STATS: 0})``), and a layer called twice in one
    apply reuses its first call's record, unless the calls name different ``record``s (a
    supernet normalising one op's output at two resolutions).
    """
    mean_key, var_key = "mean" + record, "var" + record
    if module.has_variable(NORM_STATS, mean_key):
        return module.get_variable(NORM_STATS, mean_key), module.get_variable(NORM_STATS, var_key)
    mean, var = batch_moments(x)
    if module.is_mutable_collection(NORM_STATS) and not module.is_initializing():
        module.put_variable(NORM_STATS, mean_key, mean)
        module.put_variable(NORM_STATS, var_key, var)
    return mean, var


class Norm(nn.Module):
    """Batch normalisation.

    ``track=True`` keeps running averages in the ``batch_stats`` collection (final
    training; ``train=False`` then uses them). ``track=False`` always normalises with the
    batch's own statistics, so ``apply`` is a pure function with no mutable state: what
    supernets and meta-learning inner loops want (as in MAML and DARTS search); the
    statistics may also come from other images (:func:`norm_moments`).
    """

    track: bool = False
    momentum: float = 0.9

    @nn.compact
    def __call__(self, x, train: bool = True, record: str = ""):
        c = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
        if self.track:
            ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (c,), jnp.float32)
            ra_var = self.variable("batch_stats", "var", jnp.ones, (c,), jnp.float32)
        if self.track and not train:
            mean, var = ra_mean.value, ra_var.value
        else:
            mean, var = norm_moments(self, x, record)
            if self.track and not self.is_initializing():
                m = self.momentum
                ra_mean.value = m * ra_mean.value + (1 - m) * mean
                ra_var.value = m * ra_var.value + (1 - m) * var
        y = (x - mean.astype(x.dtype)) * jax.lax.rsqrt(var + EPS).astype(x.dtype)
        return y * scale.astype(x.dtype) + bias.astype(x.dtype)


def conv(features, kernel, stride=1, dilation=1, groups=1, name=None, dtype=None, impl=None,
         bias=False):
    """A SAME convolution (without bias unless ``bias``) with ``nn.Conv``'s parameters:
    :class:`~metanas_jax.nn.fastconv.Conv`, whose ``impl`` (default ``"auto"``) is
    ``lax.conv`` on GPU/TPU and im2col matmuls, shifted multiply-adds for depthwise, on
    CPU. Why not ``lax.conv`` on CPU: its gradient is slow there, 4-100x slower again inside
    a loop (a ``lax.scan`` of training steps, ``lax.map`` over candidates or tasks;
    ``benchmarks/bench_conv_in_loop.py``), and under ``vmap`` over per-task weights it
    becomes a slow grouped convolution. Grouped convolutions other than depthwise keep
    ``nn.Conv`` unless ``impl`` is given."""
    if impl is not None or groups == 1 or groups == features:
        return Conv(features, kernel, stride, use_bias=bias, dilation=dilation, groups=groups,
                    dtype=dtype, name=name, impl=impl or "auto")
    return nn.Conv(features, (kernel, kernel), strides=stride, kernel_dilation=dilation,
                   feature_group_count=groups, padding="SAME", use_bias=bias, name=name,
                   dtype=dtype)


class ConvBN(nn.Module):
    """``conv kxk (dilated) -> BN -> act``, or ``ReLU -> conv -> BN`` with ``pre_relu``;
    ``norm=False``: ``conv (with bias) -> act`` (a stem that whitens its input needs no
    normalisation after it, and batch norm would undo the whitening's damping of noise
    directions). Called with ``pool=True``: ``conv -> 2x2 max-pool -> BN -> act``
    (airbench's order: the normalisation and activation run on a quarter of the pixels)."""

    features: int
    kernel: int
    dilation: int = 1
    pre_relu: bool = False
    track: bool = False
    dtype: jnp.dtype | None = None
    impl: str | None = None
    act: str = "relu"
    norm: bool = True

    @nn.compact
    def __call__(self, x, stride=1, train=True, pool=False):
        if self.pre_relu:
            x = nn.relu(x)
        x = conv(self.features, self.kernel, stride, self.dilation, name="conv", dtype=self.dtype,
                 impl=self.impl, bias=not self.norm)(x)
        if pool:
            x = pool2(x)
        if self.norm:
            x = Norm(self.track, name="norm")(x, train, "_pooled" if pool else "")
        return x if self.pre_relu else ACTIVATIONS[self.act](x)


class SepConv(nn.Module):
    """Depthwise ``kxk`` then pointwise ``1x1`` convolution, BN.

    ``repeats=2`` is DARTS' ``sep_conv`` (the block applied twice, stride on the first);
    ``dilation=2, repeats=1`` is DARTS' ``dil_conv``. ``pre_relu`` selects the
    ReLU-conv-BN order of cell spaces instead of conv-BN-ReLU. ``pool=True``: the first
    block's output is 2x2 max-pooled before its BN (as :class:`ConvBN`).
    """

    features: int
    kernel: int
    dilation: int = 1
    repeats: int = 1
    pre_relu: bool = False
    track: bool = False
    dtype: jnp.dtype | None = None
    impl: str | None = None
    act: str = "relu"

    @nn.compact
    def __call__(self, x, stride=1, train=True, pool=False):
        for r in range(self.repeats):
            c_in = x.shape[-1]
            c_out = self.features if r == self.repeats - 1 else c_in
            if self.pre_relu:
                x = nn.relu(x)
            x = conv(c_in, self.kernel, stride if r == 0 else 1, self.dilation, groups=c_in,
                     name=f"depthwise{r}", dtype=self.dtype, impl=self.impl)(x)
            x = conv(c_out, 1, name=f"pointwise{r}", dtype=self.dtype, impl=self.impl)(x)
            pooled = pool and r == 0
            if pooled:
                x = pool2(x)
            x = Norm(self.track, name=f"norm{r}")(x, train, "_pooled" if pooled else "")
            if not self.pre_relu:
                x = ACTIVATIONS[self.act](x)
        return x


def subsample(x, stride):
    """Spatial stride without parameters: the shape a SAME stride-``s`` conv gives."""
    return x if stride == 1 else x[:, ::stride, ::stride, :]


@jax.custom_jvp
def _max3(a, b, c):
    return jnp.maximum(jnp.maximum(a, b), c)


@_max3.defjvp
def _max3_jvp(primals, tangents):
    """The tangent of the first maximum among ``a, b, c``: one select per pair, where
    ``jnp.maximum``'s rule splits ties in halves with extra compares and multiplies."""
    (a, b, c), (ta, tb, tc) = primals, tangents
    ab = jnp.maximum(a, b)
    return jnp.maximum(ab, c), jnp.where(ab >= c, jnp.where(a >= b, ta, tb), tc)


def _max3_along(x, axis, stride):
    """Max over a SAME size-3 window along ``axis`` at ``stride`` (padding ``-inf``)."""
    lo, hi, out = window_pads(x.shape[axis], 3, stride, "SAME")
    pad = [(0, 0)] * x.ndim
    pad[axis] = (lo, hi)
    xp = jnp.pad(x, pad, constant_values=-jnp.inf)
    span = (out - 1) * stride + 1
    return _max3(*(jax.lax.slice_in_dim(xp, k, k + span, stride, axis) for k in range(3)))


def max_pool(x, stride=1):
    """3x3 max-pool, SAME, as ``nn.max_pool``: the max of three column-shifted slices,
    then of three row-shifted ones. Why: ``reduce_window``'s gradient (select-and-scatter;
    under a second derivative, select-and-gather over packed pairs) is slow on XLA:CPU.
    Here the gradient is selects and pads: 1.9-3.4x faster on the supernet's shapes, a
    second derivative 1.2-2.6x (``benchmarks/bench_pool.py``), the DARTS first-order
    meta-step about a fifth faster (``benchmarks/LOG.md``). Columns first, so a tie goes
    to the first maximum in row-major order, where ``reduce_window``'s gradient sends it
    (tested)."""
    return _max3_along(_max3_along(x, 2, stride), 1, stride)


def pool2(x):
    """2x2 max-pool, stride 2 (SAME: an odd side keeps its last row/column alone), the
    downsampling of a ``reduction="pool"`` macro32 space. Written as a reshape and a max:
    its gradient is elementwise, where ``reduce_window``'s (select-and-scatter) is slow
    on CPU."""
    n, h, w, c = x.shape
    if h % 2 or w % 2:
        x = jnp.pad(x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), constant_values=-jnp.inf)
    return jnp.max(x.reshape(n, (h + 1) // 2, 2, (w + 1) // 2, 2, c), axis=(2, 4))


def avg_pool(x, stride=1):
    # count_include_pad=False, as NAS-Bench-201 and DARTS use
    return nn.avg_pool(x, (3, 3), strides=(stride, stride), padding="SAME",
                       count_include_pad=False)


def zeros_as(shape, like, dtype=None):
    """Zeros of ``shape`` computed from ``like`` (a zero selected next to ``like``'s first
    element), not a constant. Why: inside ``shard_map`` (a sharded meta-step) a scan carry
    must vary over the devices exactly as the carry its body returns, which depends on the
    sharded weights; a constant initial carry does not, and scan refuses it. The values
    are exact zeros, whatever ``like`` holds (NaN included)."""
    first = like[(slice(0, 1),) * like.ndim].reshape(())
    zero = jnp.where(True, jnp.zeros((), first.dtype), first)
    return jnp.zeros(shape, dtype or like.dtype) + zero.astype(dtype or like.dtype)


def fit_channels(x, channels: int):
    """Zero-pad or truncate the channel axis to ``channels`` (parameter-free width change)."""
    c = x.shape[-1]
    if c == channels:
        return x
    if c > channels:
        return x[..., :channels]
    return jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, channels - c)])


class FactorizedReduce(nn.Module):
    """DARTS' parameter-light stride-2 skip: two offset 1x1 stride-2 convs, concatenated."""

    features: int
    track: bool = False
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x, train=True):
        x = nn.relu(x)
        half = self.features // 2
        a = conv(half, 1, 2, name="conv_a", dtype=self.dtype)(x)
        b = conv(self.features - half, 1, 2, name="conv_b", dtype=self.dtype)(
            jnp.pad(x[:, 1:, 1:, :], ((0, 0), (0, 1), (0, 1), (0, 0))))
        return Norm(self.track, name="norm")(jnp.concatenate([a, b], -1), train)

