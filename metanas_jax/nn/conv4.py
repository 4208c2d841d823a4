"""The standard 4-layer few-shot convolutional network (Vinyals et al.; MAML; Reptile).

``blocks`` x [conv 3x3 ``channels``, batch norm on batch statistics, ReLU, 2x2 max-pool]
then a linear classifier; norm, ReLU and pool are computed pool-first (:class:`PooledNorm`).
``downsample="stride"`` replaces the pool with a stride-2 convolution, the variant MAML
used for Omniglot (4x fewer multiply-adds at 28x28).
Batch norm never tracks running averages, so ``apply`` is pure (the MAML convention:
support and query sets are each normalised with their own statistics); the statistics
can come from other images instead (:func:`metanas_jax.nn.ops.norm_moments`, e.g. the
support set's for ``MetaConfig.query_norm="support"``).
Convolutions go through :mod:`metanas_jax.nn.fastconv` so the per-task execution stays
fast on every backend.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from metanas_jax.nn.fastconv import Conv, resolve_impl
from metanas_jax.nn.ops import EPS, Norm, norm_moments


def _windows(x):
    """``(N, H, W, C) -> (N, H/2, 2, W/2, 2, C)``: the 2x2 windows (floor on odd sizes)."""
    n, h, w, c = x.shape
    return x[:, :2 * (h // 2), :2 * (w // 2)].reshape(n, h // 2, 2, w // 2, 2, c)


@jax.custom_jvp
def max_pool_2x2(x):
    """2x2 stride-2 max-pool as a reshape and a max (floor on odd sizes); its gradient is a
    select, which stays fast under vmap and second-order differentiation."""
    if x.shape[1] < 2 or x.shape[2] < 2:
        return x
    return jnp.max(_windows(x), axis=(2, 4))


@max_pool_2x2.defjvp
def _max_pool_2x2_jvp(primals, tangents):
    """``jnp.max``'s own rule (tied maxima share the tangent equally), with the ties counted
    in int32: XLA:CPU then fuses the count with the comparison, where ``jnp.max``'s float
    count wrote a float indicator as large as the input first (the largest elementwise op of
    the conv4 MAML step, benchmarks/LOG.md)."""
    (x,), (t,) = primals, tangents
    y = max_pool_2x2(x)
    if y.shape == x.shape:  # too small to pool: the identity
        return y, t
    hit = _windows(x) == y[:, :, None, :, None, :]
    ties = jnp.sum(hit, axis=(2, 4), dtype=jnp.int32).astype(t.dtype)
    return y, jnp.sum(jnp.where(hit, _windows(t), 0), axis=(2, 4)) / ties


class PooledNorm(nn.Module):
    """Batch norm (batch statistics), ReLU and 2x2 max-pool, pooled first.

    ``relu(scale * (x - mean) / std + bias)`` is monotone in ``x`` per channel, increasing
    where ``scale >= 0`` and decreasing elsewhere, so max-pooling commutes with it once the
    decreasing channels are negated: then only the pooled quarter is normalised and
    rectified, and the forward and backward passes over the full-resolution activation
    shrink to the statistics and the pool. The negation costs nothing: the convolution
    before multiplies its kernel by :meth:`flip` (``Conv(...)(x, out_scale=flip)``) and
    this module normalises with ``|scale|``. Same function and gradients as
    ``max_pool_2x2(relu(Norm()(x)))`` up to rounding (tested), same parameters.
    """

    features: int

    def setup(self):
        self.scale = self.param("scale", nn.initializers.ones, (self.features,), jnp.float32)
        self.bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)

    def flip(self):
        """``sign(scale)`` per channel (+1 at 0), to fold into the preceding kernel."""
        return jnp.where(self.scale >= 0, 1.0, -1.0)

    def __call__(self, x_flipped):
        mean, var = norm_moments(self, x_flipped)
        a = jnp.abs(self.scale) * jax.lax.rsqrt(var + EPS)
        y = (max_pool_2x2(x_flipped) - mean.astype(x_flipped.dtype)) * a.astype(x_flipped.dtype)
        return nn.relu(y + self.bias.astype(x_flipped.dtype))


class Conv4(nn.Module):
    num_classes: int
    channels: int = 64
    blocks: int = 4
    downsample: str = "pool"
    conv_impl: str = "auto"

    def setup_check(self):
        if self.num_classes < 1:
            raise ValueError(f"Conv4: num_classes must be >= 1, got {self.num_classes}")
        if self.channels < 1 or self.blocks < 1:
            raise ValueError(f"Conv4: channels and blocks must be >= 1, got {self.channels}, {self.blocks}")
        if self.downsample not in ("pool", "stride"):
            raise ValueError(f"Conv4: downsample must be 'pool' or 'stride', got {self.downsample!r}")
        resolve_impl(self.conv_impl)

    @nn.compact
    def __call__(self, x, train: bool = True):
        self.setup_check()
        if x.ndim != 4:
            raise ValueError(f"Conv4 wants images (N, H, W, C), got shape {x.shape}")
        stride = 2 if self.downsample == "stride" else 1
        for b in range(self.blocks):
            conv = Conv(self.channels, 3, stride=stride, use_bias=False, impl=self.conv_impl,
                        name=f"conv{b}")
            if self.downsample == "pool":
                norm = PooledNorm(self.channels, name=f"norm{b}")
                x = norm(conv(x, out_scale=norm.flip()))
            else:
                x = nn.relu(Norm(track=False, name=f"norm{b}")(conv(x), train))
        x = x.reshape(x.shape[0], -1)
        return nn.Dense(self.num_classes, name="head")(x)
