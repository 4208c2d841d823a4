"""Networks of the ``macro32`` space: the compact network and the supernet.

The supernet takes the architecture as data (``space.relax(z, T)``), so one compiled
program runs every architecture, and ``jax.vmap`` over encodings runs many at once:

* ``op``: every op of a layer runs, outputs mixed by the op weights;
* ``width``: all ops run at ``max(widths)`` channels and the output is multiplied by a
  channel mask, the width weights' mixture of ``channel < width``;
* ``downsample``: the supernet keeps one feature map per resolution level (level ``v`` is
  ``2^v`` times smaller, down to 1x1) with the probability of being at that level; a layer
  moves mass ``d`` of each level one level down (its stride-2 branch, or in a
  ``reduction="pool"`` space its stride-1 output max-pooled) and keeps ``1 - d`` (stride 1).

With one-hot weights the supernet computes exactly the compact network whose variables are
the leading slices of its own (see :func:`metanas_jax.nn.extract`), because masked-out
channels are zero and every op acts on channels independently or through weights that the
slice leaves out.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from metanas_jax.nn.ops import (NORM_STATS, ConvBN, SepConv, fit_channels, max_pool, pool2, subsample,
                                zeros_as)
from metanas_jax.spaces import Arch
from metanas_jax.spaces.macro32 import Macro32

PARAM_FREE = {"max_pool3x3": max_pool, "identity": lambda x, stride=1: subsample(x, stride)}


def macro_op(name: str, features: int, module_name: str, track: bool, dtype=None, impl=None,
             act: str = "relu"):
    """The linen module for a parametric op, or ``None`` for a parameter-free one."""
    kw = dict(features=features, track=track, dtype=dtype, name=module_name, impl=impl, act=act)
    if name == "conv3x3":
        return ConvBN(kernel=3, **kw)
    if name == "conv5x5":
        return ConvBN(kernel=5, **kw)
    if name == "sep_conv3x3":
        return SepConv(kernel=3, **kw)
    if name == "sep_conv5x5":
        return SepConv(kernel=5, **kw)
    if name == "dil_conv3x3":
        return ConvBN(kernel=3, dilation=2, **kw)
    if name in PARAM_FREE:
        return None
    raise ValueError(f"macro32: unknown op {name!r}")


def _stem(space: Macro32, track: bool = False, dtype=None, impl=None) -> ConvBN:
    return ConvBN(space.stem_width, space.stem_kernel, track=track, dtype=dtype, impl=impl,
                  act=space.activation, norm=space.stem_norm, name="stem")


def _pool(space: Macro32, x):
    """Global pooling before the classifier (the space's ``head_pool``)."""
    return jnp.max(x, axis=(1, 2)) if space.head_pool == "max" else jnp.mean(x, axis=(1, 2))


def _head(space: Macro32, num_classes, x, dtype):
    logits = nn.Dense(num_classes, name="head", dtype=dtype)(x)
    return logits if space.head_scale == 1 else logits * space.head_scale


class MacroNet(nn.Module):
    """The compact network of one ``macro32`` architecture (only the chosen ops).

    ``conv_impl``: the convolution implementation (:func:`metanas_jax.nn.fastconv.conv2d`;
    ``None``: ``lax.conv`` for dense kernels, matmul / shift-add for 1x1 and depthwise);
    the variables are the same for every choice."""

    space: Macro32
    arch: Arch
    num_classes: int
    track: bool = True
    dtype: jnp.dtype | None = None
    conv_impl: str | None = None

    @nn.compact
    def __call__(self, x, train: bool = True):
        x = _stem(self.space, self.track, self.dtype, self.conv_impl)(x, 1, train)
        pool = self.space.reduction == "pool"
        for l in range(self.space.layers):
            op, width, res, down = self.space.layer(self.arch, l)
            stride = 2 if down and not pool else 1
            # pool_before_norm: the op pools its convolution's output before BN-act
            early = down and pool and self.space.pool_before_norm
            module = macro_op(op, width, f"layer{l}_{op}", self.track, self.dtype, self.conv_impl,
                              self.space.activation)
            if module is None:
                y = PARAM_FREE[op](x, stride)
                y = fit_channels(pool2(y) if early else y, width)
            else:
                y = module(x, stride, train, pool=early)
            if res:
                y = y + fit_channels(pool2(x) if early else subsample(x, stride), width)
            x = pool2(y) if down and pool and not early else y
        return _head(self.space, self.num_classes, _pool(self.space, x), self.dtype)


def level_shapes(height: int, width: int) -> list[tuple[int, int]]:
    """Spatial sizes reachable by repeated SAME stride-2 steps, down to 1x1.

    At 1x1 a stride-2 op equals its stride-1 version, so the last level absorbs further
    downsampling and the number of levels depends only on the input size.
    """
    sizes = [(height, width)]
    while sizes[-1] != (1, 1):
        h, w = sizes[-1]
        sizes.append(((h + 1) // 2, (w + 1) // 2))
    return sizes


class MacroLayer(nn.Module):
    """One supernet layer over all resolution levels: ``(feats, mass), weights -> same``."""

    space: Macro32
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, carry, w):
        sp = self.space
        feats, mass = carry
        cmax = max(sp.widths)
        channel = jnp.arange(cmax)
        mask = jnp.sum(w["width"][:, None] * (channel[None, :] < jnp.asarray(sp.widths)[:, None]), axis=0)
        modules = [macro_op(op, cmax, op, False, self.dtype, act=sp.activation) for op in sp.ops]

        def layer(inp, stride, early=False):
            """The layer's output at ``stride``; ``early``: the pool_before_norm down branch
            (every op pools before its BN; the convolution is the stay branch's, which XLA
            computes once)."""
            out = (pool2(inp) if early else subsample(inp, stride)) * w["residual"][1]
            for k, (op, module) in enumerate(zip(sp.ops, modules)):
                if module is not None:
                    y = module(inp, stride, pool=early)
                else:
                    y = PARAM_FREE[op](inp, stride)
                    y = pool2(y) if early else y
                out = out + w["op"][k] * y
            return out * mask.astype(out.dtype)

        d = w["downsample"][1]
        pool = sp.reduction == "pool"
        # "pool": a level's stride-1 output, max-pooled, is the next level's stride-2 branch
        # (pool_before_norm: its op's output pooled before BN-act)
        kept = [layer(f, 1) for f in feats] if pool else None
        new_feats, new_mass = [], []
        for v in range(len(feats)):
            last = v == len(feats) - 1
            stay = mass[v] if last else mass[v] * (1 - d)
            acc = stay * (kept[v] if pool else layer(feats[v], 1))
            total = stay
            if v > 0:
                if pool and sp.pool_before_norm:
                    down = layer(feats[v - 1], 1, early=True)
                elif pool:
                    down = pool2(kept[v - 1])
                else:
                    down = layer(feats[v - 1], 2)
                acc = acc + mass[v - 1] * d * down
                total = total + mass[v - 1] * d
            # a level nothing reaches carries zeros (and no NaN gradient)
            new_feats.append(acc / jnp.where(total > 0, total, 1.0))
            new_mass.append(total)
        return (tuple(new_feats), jnp.stack(new_mass)), None


class MacroSupernet(nn.Module):
    """All architectures of a ``macro32`` space in one program; weights from ``relax``.

    The layers are one ``nn.scan`` over a shared layer program (parameters stacked on a
    leading layer axis under ``layers``), which keeps compile time independent of depth.
    """

    space: Macro32
    num_classes: int
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x, weights, train: bool = True):
        sp = self.space
        cmax = max(sp.widths)
        h = _stem(sp, dtype=self.dtype)(x, 1, train)
        shapes = level_shapes(*x.shape[1:3])
        feats = tuple([fit_channels(h, cmax)] + [zeros_as((x.shape[0], a, b, cmax), h)
                                                  for a, b in shapes[1:]])
        mass = zeros_as((len(shapes),), h, jnp.float32).at[0].set(1.0)
        layers = nn.scan(MacroLayer, variable_axes={"params": 0, NORM_STATS: 0},
                         split_rngs={"params": True},
                         length=sp.layers)(sp, self.dtype, name="layers")
        (feats, mass), _ = layers((feats, mass), weights)
        pooled = sum(mass[v] * _pool(sp, f) for v, f in enumerate(feats))
        return _head(sp, self.num_classes, pooled, self.dtype)

    @staticmethod
    def unstack(params, space=None):
        """Supernet params renamed as the compact network names them (``layer{l}_{op}``)."""
        out = {k: v for k, v in params.items() if k != "layers"}
        for op, tree in params["layers"].items():
            n = jax.tree.leaves(tree)[0].shape[0]
            for l in range(n):
                out[f"layer{l}_{op}"] = jax.tree.map(lambda a, l=l: a[l], tree)
        return out
