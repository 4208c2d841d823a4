"""A 2-D convolution whose implementation is chosen per backend.

Why: meta-learning runs one network per task with per-task weights. Under ``jax.vmap``
XLA turns ``lax.conv`` with batched weights into a grouped convolution, and on CPU the
gradient of a grouped convolution is very slow (see ``benchmarks/bench_meta.py``). The
``"matmul"`` implementation writes the convolution as im2col patches times a weight
matrix: vmap turns it into a batched matmul and its gradients (weight gradient
``patches^T @ g``, input gradient the transpose of the patch gather) are matmuls and pads
too, at any order of differentiation (second-order MAML differentiates through it).
Where it pays, a stride-1 convolution applies its kernel rows on the output side instead
(:func:`_rows_out`: tensors a third of im2col's for 3x3).

``impl="auto"`` picks ``"xla"`` on GPU/TPU (fast grouped convolutions there) and
``"matmul"`` on CPU, also for one network's final training: there its step is faster
than with ``lax.conv``, whose weight gradient is XLA:CPU's slowest part (figures:
``benchmarks/bench_train.py``). All implementations compute the same function (tested).

``"matmul_bf16"`` is the im2col convolution with bfloat16 matmul operands, float32
accumulation and float32 input and output: mixed precision confined to the three dots of
a convolution and its gradient, everything elementwise (batch norm, activations, pooling)
left in float32. Why not bf16 activations: XLA:CPU computes most bf16 elementwise ops and
reductions by converting to float32 and back (a bf16 step was slower than float32), and
runs a bf16 dot on its fast path only in the canonical ``(M, K) @ (K, N)`` form, so the
gradient's two dots are written in that form with materialised transposes (see
:func:`_matmul_bf16`).
"""
from __future__ import annotations

import functools
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

IMPLS = ("auto", "xla", "matmul", "matmul_bf16")


def resolve_impl(impl: str) -> str:
    """``"auto"`` -> ``"matmul"`` on CPU, ``"xla"`` elsewhere; validates the name."""
    if impl not in IMPLS:
        raise ValueError(f"unknown conv impl {impl!r}; known: {list(IMPLS)}")
    if impl == "auto":
        return "matmul" if jax.default_backend() == "cpu" else "xla"
    return impl


def window_pads(size: int, k: int, stride: int, padding: str) -> tuple[int, int, int]:
    """(low, high, out) padding and output size along one axis, as lax.conv computes them."""
    if padding == "SAME":
        out = -(-size // stride)
        total = max((out - 1) * stride + k - size, 0)
        return total // 2, total - total // 2, out
    if padding == "VALID":
        return 0, 0, (size - k) // stride + 1
    raise ValueError(f"padding must be 'SAME' or 'VALID', got {padding!r}")


def _padded(x, kh, kw, stride, padding, dilation):
    """``x`` padded for a ``kh x kw`` window, with ``(low pad, output size)`` per axis."""
    lo_h, hi_h, ho = window_pads(x.shape[1], dilation * (kh - 1) + 1, stride, padding)
    lo_w, hi_w, wo = window_pads(x.shape[2], dilation * (kw - 1) + 1, stride, padding)
    return jnp.pad(x, ((0, 0), (lo_h, hi_h), (lo_w, hi_w), (0, 0))), (lo_h, ho), (lo_w, wo)


def patches(x: jax.Array, kernel: tuple[int, int], stride: int = 1, padding: str = "SAME",
            dilation: int = 1):
    """im2col: ``(N, H, W, C) -> (N, Ho, Wo, kh * kw * C)``, (kh, kw, C) order like HWIO."""
    kh, kw = kernel
    xp, (_, ho), (_, wo) = _padded(x, kh, kw, stride, padding, dilation)
    cols = _taps(xp, ho, wo, kh, kw, stride, dilation)
    if len(cols) == 1:
        return cols[0]
    return jnp.concatenate(cols, axis=-1)


def conv2d(x: jax.Array, w: jax.Array, stride: int = 1, padding: str = "SAME",
           impl: str = "auto", dilation: int = 1, groups: int = 1,
           chunk_bytes: int | None = None) -> jax.Array:
    """NHWC input, HWIO kernel ``(kh, kw, C / groups, O)``, no bias. ``groups`` is 1 or
    ``C`` (depthwise, ``O == C``) for the matmul implementation. ``chunk_bytes``: where
    the im2col patches of the whole batch would be larger, a matmul implementation runs
    over chunks of the batch one after another (:func:`batch_chunked`); meant for large
    inference batches (see there), None: the whole batch at once."""
    if x.ndim != 4 or w.ndim != 4:
        raise ValueError(f"conv2d wants x (N,H,W,C) and w (kh,kw,C,O); got {x.shape}, {w.shape}")
    if groups < 1 or x.shape[-1] % groups or x.shape[-1] // groups != w.shape[2]:
        raise ValueError(f"conv2d: input has {x.shape[-1]} channels in {groups} groups, kernel "
                         f"expects {w.shape[2]} per group")
    if stride < 1 or dilation < 1:
        raise ValueError(f"conv2d: stride and dilation must be >= 1, got {stride}, {dilation}")
    impl = resolve_impl(impl)
    kh, kw, c, o = w.shape
    if chunk_bytes is not None and impl != "xla" and groups == 1:
        ho = window_pads(x.shape[1], dilation * (kh - 1) + 1, stride, padding)[2]
        wo = window_pads(x.shape[2], dilation * (kw - 1) + 1, stride, padding)[2]
        per_image = ho * wo * kh * kw * c * jnp.dtype(x.dtype).itemsize
        conv = functools.partial(conv2d, w=w, stride=stride, padding=padding, impl=impl,
                                 dilation=dilation)
        return batch_chunked(conv, x, max(1, chunk_bytes // per_image))
    if impl == "matmul_bf16" and groups == 1:
        return _matmul_bf16(x, w, stride, padding, dilation)
    if impl == "xla":
        return jax.lax.conv_general_dilated(
            x, w.astype(x.dtype), (stride, stride), padding, rhs_dilation=(dilation, dilation),
            dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups)
    if groups > 1:
        if groups != x.shape[-1] or o != groups:
            raise ValueError(f"conv2d impl 'matmul': only plain (groups=1) or depthwise "
                             f"(groups = channels = features) convolutions, got groups={groups}, "
                             f"{x.shape[-1]} channels, {o} features")
        return _depthwise_shift_add(x, w.astype(x.dtype), stride, padding, dilation)
    if stride == 1 and _rows_out_pays(x.shape[1], kh, kw, c, o, padding, dilation):
        return _rows_out(x, w, padding, dilation)
    p = patches(x, (kh, kw), stride, padding, dilation)
    n, ho, wo, k = p.shape
    # a 2-D matmul, not an einsum over (n, h, w): then the weight gradient ``p^T g`` is a
    # 2-D dot too, and XLA:CPU no longer transposes the whole output gradient for it
    # (that copy was the largest single op of the conv4 MAML step, see benchmarks/LOG.md)
    # accumulate in at least float32: XLA:CPU runs a bf16 x bf16 -> bf16 dot several times
    # slower than the same dot with a float32 result (float64 stays float64)
    y = jnp.dot(p.reshape(n * ho * wo, k), w.reshape(k, o).astype(x.dtype),
                preferred_element_type=jnp.promote_types(x.dtype, jnp.float32))
    return y.reshape(n, ho, wo, o).astype(x.dtype)


def batch_chunked(f, x: jax.Array, chunk: int) -> jax.Array:
    """``f(x)`` for a ``f`` that treats the images of a batch independently, computed
    ``chunk`` images at a time (``lax.map``; the batch zero-padded to a multiple of
    ``chunk``, the padding's outputs dropped). Why: XLA:CPU materialises a convolution's
    im2col patches, for a query set of 1,000 CIFAR images at 256 channels gigabytes of
    freshly written memory per layer (benchmarks/LOG.md "Query scoring in inference
    mode"). Not for training steps: there the scan keeps every chunk's patches for the
    backward pass anyway, and a step of 64 images ran 6% slower chunked."""
    n = x.shape[0]
    if chunk >= n:
        return f(x)
    k = -(-n // chunk)
    xs = jnp.pad(x, ((0, k * chunk - n),) + ((0, 0),) * (x.ndim - 1))
    y = jax.lax.map(f, xs.reshape(k, chunk, *x.shape[1:]))
    return y.reshape(k * chunk, *y.shape[2:])[:n]


# what writing and reading one more value of a memory-bound tensor costs on a CPU, in
# multiply-adds of a matmul (fitted to the layer timings in benchmarks/LOG.md, rounded down)
_MACS_PER_VALUE = 75


def _rows_out_pays(h, kh, kw, c, o, padding, dilation):
    """Whether :func:`_rows_out` beats im2col for a stride-1 ``kh x kw`` convolution of
    ``h``-row images: it writes ``(kw * C + kh * O) * (1 + extra)`` values per output pixel
    instead of the patches' ``kh * kw * C``, and does ``extra`` more multiply-adds, where
    ``extra`` is the share of rows it computes and drops (``dilation * (kh - 1)`` per
    image). Measured (gradients, benchmarks/LOG.md): 1.2x faster at 14x14 and 32x32 with 64
    channels, 1.8x at 8x8 with 32, as fast at 7x7 with 64 and at 8x8 with 128, slower at 8x8
    with 256 channels and with one input channel, which this model all reproduces."""
    ho = window_pads(h, dilation * (kh - 1) + 1, 1, padding)[2]
    extra = dilation * (kh - 1) / ho
    saved = kh * kw * c - (1 + extra) * (kw * c + kh * o)
    return saved * _MACS_PER_VALUE > kh * kw * c * o * extra


def _rows_out(x, w, padding, dilation):
    """Stride-1 convolution with the kernel's columns gathered on the input side and its
    rows summed on the output side: the ``kw`` column shifts of the input, concatenated
    (``kw * C`` channels), times all ``kh`` kernel rows at once (``kh * O`` outputs), then
    the ``kh`` row-shifted slices of that product added up. Its largest tensors hold
    ``kw * C`` and ``kh * O`` values per pixel where im2col's patches hold ``kh * kw * C``
    (a third for 3x3 with ``C == O``), and so do its gradients: the patch gradient and its
    col2im, and the second-order pass over both (benchmarks/LOG.md). It computes
    ``dilation * (kh - 1)`` more output rows per image than it keeps (the padded height)."""
    kh, kw, c, o = w.shape
    xp, (_, ho), (_, wo) = _padded(x, kh, kw, 1, padding, dilation)
    n, hp = xp.shape[:2]
    cols = jnp.concatenate(_taps(xp, hp, wo, 1, kw, 1, dilation), -1)  # one row of taps
    rows = w.reshape(kh, kw * c, o).transpose(1, 0, 2).reshape(kw * c, kh * o)
    z = jnp.dot(cols.reshape(n * hp * wo, kw * c), rows.astype(x.dtype),
                preferred_element_type=jnp.promote_types(x.dtype, jnp.float32))
    z = z.reshape(n, hp, wo, kh * o)
    y = sum(z[:, i * dilation:i * dilation + ho, :, i * o:(i + 1) * o] for i in range(kh))
    return y.astype(x.dtype)


def _materialised_t(a: jax.Array) -> jax.Array:
    """``a.T`` for a 2-D ``a``, laid out row-major. A plain transpose XLA folds into the
    consuming dot as a transposed operand, which XLA:CPU's bf16 fast path does not take;
    split into three dimensions it stays a copy of its own. Its cost, one pass over ``a``
    (21-32 ms for the gradient of the CIFAR network's largest layer, beside a 50-ms bf16
    dot), is far below what it saves (the float32 dot takes 180 ms; benchmarks/LOG.md)."""
    m, n = a.shape
    s = next(f for f in (16, 8, 4, 2, 1) if n % f == 0)
    return a.reshape(m, n // s, s).transpose(1, 2, 0).reshape(n, m)


def _bf16_fwd(x, w, stride, padding, dilation):
    kh, kw, _, o = w.shape
    p = patches(x.astype(jnp.bfloat16), (kh, kw), stride, padding, dilation)
    n, ho, wo, k = p.shape
    p = p.reshape(n * ho * wo, k)
    y = jnp.dot(p, w.reshape(k, o).astype(jnp.bfloat16), preferred_element_type=jnp.float32)
    return y.reshape(n, ho, wo, o).astype(x.dtype), (x, w, p)


def _bf16_bwd(stride, padding, dilation, res, g):
    """Both gradient dots in canonical form: ``dW^T = g^T P`` and ``dP = g W^T``, with
    ``g^T`` and ``W^T`` materialised in bf16; the patch gradient goes back to the input
    grid (col2im) in float32 by the transpose of the patch gather."""
    x, w, p = res
    kh, kw, _, o = w.shape
    # the barrier keeps the cast apart from g's producer: fused with the transpose below,
    # an elementwise producer runs several times slower than the two passes apart
    gb = jax.lax.optimization_barrier(g.reshape(-1, o).astype(jnp.bfloat16))
    dw = _materialised_t(jnp.dot(_materialised_t(gb), p, preferred_element_type=jnp.float32))
    wt = _materialised_t(w.reshape(-1, o).astype(jnp.bfloat16))
    dp = jnp.dot(gb, wt, preferred_element_type=jnp.float32).astype(x.dtype)
    _, col2im = jax.vjp(lambda v: patches(v, (kh, kw), stride, padding, dilation), x)
    dx, = col2im(dp.reshape(*g.shape[:3], -1))
    return dx, dw.reshape(w.shape).astype(w.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _matmul_bf16(x, w, stride, padding, dilation):
    """im2col convolution with bf16 operands, float32 accumulation, ``x.dtype`` output.
    On the 2-core Xeon of benchmarks/LOG.md the airbench-class training step runs about
    1.3x faster than the float32 im2col one (``benchmarks/bench_train.py``)."""
    return _bf16_fwd(x, w, stride, padding, dilation)[0]


_matmul_bf16.defvjp(_bf16_fwd, _bf16_bwd)


def _taps(xp, ho, wo, kh, kw, stride, dilation):
    """The ``kh * kw`` strided windows of a padded input, in HWIO tap order."""
    return [xp[:, i * dilation:i * dilation + stride * (ho - 1) + 1:stride,
               j * dilation:j * dilation + stride * (wo - 1) + 1:stride, :]
            for i in range(kh) for j in range(kw)]


def _shift_add(xp, w, ho, wo, stride, dilation):
    kh, kw = w.shape[:2]
    y = None
    for tap, wk in zip(_taps(xp, ho, wo, kh, kw, stride, dilation), w.reshape(kh * kw, -1)):
        y = tap * wk if y is None else y + tap * wk
    return y


def _tap_sums(xp, g, kh, kw, stride, dilation):
    """``(kh * kw, C)``: each tap's window of the padded input times ``g``, summed over
    images and pixels (a depthwise kernel's gradient). One ``lax.map`` step per tap, so the
    program holds one slice-multiply-reduce instead of ``kh * kw`` of them: a 5x5 edge's
    weight gradient was 25 reductions, each a kernel of its own for XLA to compile. The
    DARTS supernet's meta-step compiles about a third faster and runs faster too
    (``benchmarks/bench_depthwise_grad.py``, ``benchmarks/LOG.md``)."""
    n, ho, wo, c = g.shape
    win_h, win_w = stride * (ho - 1) + 1, stride * (wo - 1) + 1

    def one(tap):
        i, j = tap // kw, tap % kw
        win = jax.lax.dynamic_slice(xp, (0, i * dilation, j * dilation, 0), (n, win_h, win_w, c))
        return jnp.sum(win[:, ::stride, ::stride, :] * g, (0, 1, 2))

    return jax.lax.map(one, jnp.arange(kh * kw))


def _depthwise_fwd(x, w, stride, padding, dilation):
    xp, (_, ho), (_, wo) = _padded(x, *w.shape[:2], stride, padding, dilation)
    return _shift_add(xp, w, ho, wo, stride, dilation), (x, w)


def _depthwise_bwd(stride, padding, dilation, res, g):
    """Input gradient as one more shift-add: the gradient, spread to the input grid
    (interior padding for the stride), correlated with the flipped kernel. Autodiff of the
    forward instead pads each tap's gradient to the input's shape and adds 25 of them (for
    5x5), ~25 separate XLA ops per convolution on CPU. Weight gradient: :func:`_tap_sums`."""
    x, w = res
    kh, kw = w.shape[:2]
    _, h, wd, _ = x.shape
    # padded again rather than saved: the forward's pad fuses into its shift-add
    xp, (lo_h, ho), (lo_w, wo) = _padded(x, kh, kw, stride, padding, dilation)
    dw = _tap_sums(xp, g, kh, kw, stride, dilation)

    def spread(size, lo, k, out):
        """(low, high, interior) padding of the gradient along one axis: interior
        ``stride - 1`` puts output ``o`` on input row ``o * stride``; low and high line the
        flipped kernel's taps up with the input rows each output read."""
        low = (k - 1) * dilation - lo
        return low, size + (k - 1) * dilation - low - ((out - 1) * stride + 1), stride - 1

    gp = jax.lax.pad(g, jnp.zeros((), g.dtype),
                     ((0, 0, 0), spread(h, lo_h, kh, ho), spread(wd, lo_w, kw, wo), (0, 0, 0)))
    # a depthwise convolution itself, so second-order MAML differentiates it through this
    # rule again instead of autodiff's per-tap pads and reductions of a shift-add loop
    dx = _depthwise_shift_add(gp, w[::-1, ::-1], 1, "VALID", dilation)
    return dx, dw.reshape(w.shape).astype(w.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _depthwise_shift_add(x, w, stride, padding, dilation):
    """Depthwise convolution as ``kh * kw`` shifted multiply-adds: no patch tensor, and its
    gradients are shifts and multiply-adds too (written out in ``_depthwise_bwd``, itself
    differentiable, so second-order MAML works). On CPU much faster (forward + gradient)
    than ``lax.conv``'s feature-grouped convolution (benchmarks/LOG.md, DARTS section)."""
    return _depthwise_fwd(x, w, stride, padding, dilation)[0]


_depthwise_shift_add.defvjp(_depthwise_fwd, _depthwise_bwd)


class Conv(nn.Module):
    """Linen wrapper: ``kernel x kernel`` convolution (+ optional bias) via :func:`conv2d`,
    with ``nn.Conv``'s parameter names and shapes (``groups`` as ``feature_group_count``).
    ``dtype`` casts the input (bf16 compute); parameters stay float32."""

    features: int
    kernel: int | Sequence[int] = 3
    stride: int = 1
    padding: str = "SAME"
    use_bias: bool = True
    impl: str = "auto"
    dilation: int = 1
    groups: int = 1
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x, out_scale=None):
        """``out_scale`` (optional, one factor per output channel) returns the output times
        it, folded into the kernel: a multiply on the kernel instead of the activations."""
        kh, kw = (self.kernel, self.kernel) if isinstance(self.kernel, int) else tuple(self.kernel)
        w = self.param("kernel", nn.initializers.lecun_normal(),
                       (kh, kw, x.shape[-1] // self.groups, self.features), jnp.float32)
        if out_scale is not None:
            w = w * out_scale
        if self.dtype is not None:
            x = x.astype(self.dtype)
        y = conv2d(x, w, self.stride, self.padding, self.impl, self.dilation, self.groups)
        if self.use_bias:
            b = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
            y = y + (b if out_scale is None else b * out_scale)
        return y
