"""The standard 4-layer few-shot convolutional network (Vinyals et al.; MAML; Reptile).

``blocks`` x [conv 3x3 ``channels``, batch norm on batch statistics, ReLU, 2x2 max-pool]
then a linear classifier. ``downsample="stride"`` replaces the pool with a stride-2
convolution, the variant MAML used for Omniglot (4x fewer multiply-adds at 28x28).
Batch norm never tracks running averages, so ``apply`` is pure (the MAML convention:
support and query sets are each normalised with their own statistics).
Convolutions go through :mod:`metanas_jax.nn.fastconv` so the per-task execution stays
fast on every backend.
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from metanas_jax.nn.fastconv import Conv, resolve_impl
from metanas_jax.nn.ops import Norm


def max_pool_2x2(x):
    """2x2 stride-2 max-pool as a reshape (floor on odd sizes): its gradient is a plain
    select, which stays fast under vmap and second-order differentiation."""
    n, h, w, c = x.shape
    h2, w2 = h // 2, w // 2
    if h2 == 0 or w2 == 0:
        return x
    x = x[:, :2 * h2, :2 * w2, :].reshape(n, h2, 2, w2, 2, c)
    return jnp.max(x, axis=(2, 4))


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
            x = Conv(self.channels, 3, stride=stride, use_bias=False, impl=self.conv_impl,
                     name=f"conv{b}")(x)
            x = Norm(track=False, name=f"norm{b}")(x, train)
            x = nn.relu(x)
            if self.downsample == "pool":
                x = max_pool_2x2(x)
        x = x.reshape(x.shape[0], -1)
        return nn.Dense(self.num_classes, name="head")(x)
