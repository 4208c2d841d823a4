"""Hard-architecture execution of the ``macro32`` supernet: only the chosen op runs.

:class:`HardMacroSupernet` has the same variables as :class:`~metanas_jax.nn.macro.MacroSupernet`
and computes, for one-hot weights, the same function (and so the compact network of
:func:`metanas_jax.nn.extract`), but it reads the architecture as *integers* (the argmax of
each gene's weights) instead of mixing every op:

* ``op``: ``jax.lax.switch`` over the ops of a layer. Not under ``vmap`` (candidates on
  CPU run through ``lax.map``) XLA executes only the chosen branch, forward and backward;
  under ``vmap`` the switch becomes a select and every branch runs (still correct).
* ``width``: every op runs at ``max(widths)`` channels times a channel mask, as in the
  soft supernet.
* ``downsample``: one feature map at the input's resolution holds the current level's
  map in its top-left corner, zeros elsewhere, plus the level as an integer. A stride-1
  SAME op on that zero-padded map is exact on the valid corner (zeros beyond it are the
  padding SAME would add); a stride-2 op is its stride-1 output sampled at rows/columns
  ``2 i + o`` with ``o`` = 1 for an even-sized level, 0 for an odd one (where lax's SAME
  padding centres a stride-2 window), picked with a dynamic slice. Batch norm statistics
  and the final average pool count only the valid corner. In a ``reduction="pool"``
  space the layer runs at stride 1 and its output is max-pooled 2x2 over the valid corner
  (windows at rows/columns ``2 i``, ``2 i + 1``).

Every shape is static and the architecture is data: one compiled program serves every
architecture of the space, and gradients w.r.t. the variables are exact.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from metanas_jax.nn.fastconv import conv2d
from metanas_jax.nn.macro import MacroSupernet, level_shapes
from metanas_jax.nn.ops import ACTIVATIONS, EPS, pool2
from metanas_jax.spaces.macro32 import Macro32

_CONV = {"conv3x3": (3, 1), "conv5x5": (5, 1), "dil_conv3x3": (3, 2)}
_SEP = {"sep_conv3x3": 3, "sep_conv5x5": 5}


def _conv(x, k, dilation=1, groups=1):
    return _conv_remat(x, k, dilation, groups)


@functools.partial(jax.checkpoint, static_argnums=(2, 3))
def _conv_remat(x, k, dilation, groups):
    """fastconv: im2col matmuls on CPU, whose gradients stay fast inside the layer scan and
    ``lax.map`` over candidates (``lax.conv``'s weight gradient there dominated the step).
    Rematerialised: the backward pass recomputes the patches from ``x`` instead of the scan
    saving them for every layer and every branch of the switch (9-25x the activations)."""
    return conv2d(x, k.astype(x.dtype), 1, "SAME", "auto", dilation, groups)


def _norm(x, p, valid, count):
    """Batch norm with the batch's statistics over the valid positions only."""
    xf = jnp.where(valid, x.astype(jnp.float32), 0.0)
    mean = jnp.sum(xf, (0, 1, 2)) / count
    var = jnp.maximum(jnp.sum(jnp.square(xf), (0, 1, 2)) / count - jnp.square(mean), 0.0)
    y = (x - mean.astype(x.dtype)) * jax.lax.rsqrt(var + EPS).astype(x.dtype)
    return y * p["scale"].astype(x.dtype) + p["bias"].astype(x.dtype)


def _sample2(y, oh, ow):
    """``y[:, oh::2, ow::2]`` (dynamic offsets in {0, 1}) zero-padded back to y's shape."""
    n, h, w, c = y.shape
    yp = jnp.pad(y, ((0, 0), (0, 1), (0, 1), (0, 0)))
    ys = jax.lax.dynamic_slice(yp, (0, oh, ow, 0), y.shape)[:, ::2, ::2, :]
    return jnp.pad(ys, ((0, 0), (0, h - ys.shape[1]), (0, w - ys.shape[2]), (0, 0)))


def _fan_in(path, shape, stacked):
    """lecun_normal's fan-in: kernel input channels times receptive field (no layer axis)."""
    shape = shape[1:] if any(name in stacked for name in path) else shape
    return int(np.prod(shape[:-1]))


def init_params(key, shapes, stacked=("layers",), host=False):
    """Params for the flattened ``shapes`` (paths through a name in ``stacked`` have
    a leading layer/edge axis, as ``nn.scan`` stacks them) with flax's defaults (kernels lecun_normal,
    norm scales one, biases zero). All kernels come from ONE flat truncated-normal draw:
    XLA:CPU compiles a random draw of a high-rank shape very slowly (seconds each).
    ``host=True``: slice and reshape with numpy (not traceable; for hundreds of leaves,
    where compiling the slices would cost more than the draw)."""
    kernels = [(path, s) for path, s in sorted(shapes.items()) if path[-1] == "kernel"]
    total = sum(int(np.prod(s.shape)) for _, s in kernels)
    flat = jax.random.truncated_normal(key, -2.0, 2.0, (total,), jnp.float32)
    xp = np if host else jnp
    if host:
        flat = np.asarray(flat)
    out, at = {}, 0
    for path, s in sorted(shapes.items()):
        if path[-1] == "kernel":
            size = int(np.prod(s.shape))
            # flax variance_scaling(1, fan_in, truncated_normal): std of truncated N(0,1) on [-2, 2]
            std = np.sqrt(1.0 / _fan_in(path, s.shape, stacked)) / .87962566103423978
            out[path] = (flat[at:at + size] * std).reshape(s.shape).astype(s.dtype)
            at += size
        elif path[-1] == "scale":
            out[path] = xp.ones(s.shape, s.dtype)
        elif path[-1] == "bias":
            out[path] = xp.zeros(s.shape, s.dtype)
        else:
            raise ValueError(f"hard supernet: no initializer for parameter {'/'.join(path)}")
    return jax.tree.map(jnp.asarray, out) if host else out


class HardMacroSupernet:
    """``macro32`` supernet that runs only the chosen op of each layer (see module doc).

    Same calling convention as the linen supernet: ``init(key, x, weights=None)`` and
    ``apply(variables, x, weights, train=True)`` with ``weights = space.relax(z, 0)`` (or
    any weights: their per-gene argmax is the architecture). Variables are interchangeable
    with :class:`MacroSupernet`'s of the same space, classes and input channels.
    ``remat``: ``jax.checkpoint`` each layer; ``unroll``: ``lax.scan``'s unroll (neither
    made the CPU gradient faster in a quick test; kept for experiments).
    """

    def __init__(self, space: Macro32, num_classes: int, dtype=None, remat: bool = False,
                 unroll: bool | int = 1):
        if not isinstance(space, Macro32):
            raise ValueError(f"hard supernet exists for macro32 only, got space {space.name!r}")
        self.space = space
        self.num_classes = int(num_classes)
        self.dtype = dtype
        self.remat = remat
        self.unroll = unroll
        self.soft = MacroSupernet(space=space, num_classes=self.num_classes, dtype=dtype)

    def __hash__(self):
        return hash((type(self), self.space, self.num_classes, str(self.dtype)))

    def __eq__(self, other):
        return (type(other) is type(self) and other.space == self.space
                and other.num_classes == self.num_classes and str(other.dtype) == str(self.dtype))

    # -- variables ---------------------------------------------------------------------
    @functools.lru_cache(maxsize=8)
    def param_shapes(self, channels: int):
        """Shapes of the supernet's params for ``channels`` input channels (traced once)."""
        x = jax.ShapeDtypeStruct((1, 1, 1, channels), jnp.float32)
        w = self.space.relax(jnp.zeros(self.space.dim), 0.0)
        return jax.eval_shape(lambda x: self.soft.init(jax.random.key(0), x, w, train=False), x)

    def init(self, key, x, weights=None, train=False):
        """Fresh variables (flax's default initializers, drawn leaf by leaf: cheap to trace)."""
        del weights, train
        flat = traverse_util.flatten_dict(self.param_shapes(int(x.shape[-1]))["params"])
        return {"params": traverse_util.unflatten_dict(init_params(key, flat))}

    # -- forward -----------------------------------------------------------------------
    def apply(self, variables, x, weights, train: bool = True):
        del train  # batch statistics always, like the linen supernet
        sp = self.space
        p = variables["params"]
        if self.dtype is not None:
            x = x.astype(self.dtype)
        n, hgt, wid, _ = x.shape
        cmax = max(sp.widths)
        shapes = level_shapes(hgt, wid)
        top = len(shapes) - 1
        hs = jnp.asarray([a for a, _ in shapes], jnp.int32)
        ws = jnp.asarray([b for _, b in shapes], jnp.int32)
        rows, cols = jnp.arange(hgt), jnp.arange(wid)
        chan = jnp.arange(cmax)
        widths = jnp.asarray(sp.widths, jnp.int32)
        pool = sp.reduction == "pool"
        act = ACTIVATIONS[sp.activation]

        def valid_at(level):
            return ((rows[:, None] < hs[level]) & (cols[None, :] < ws[level]))[None, :, :, None]

        # stem: conv-BN-act (or conv+bias-act) at full resolution, zero-padded to cmax channels
        h = _conv(x, p["stem"]["conv"]["kernel"])
        if sp.stem_norm:
            h = act(_norm(h, p["stem"]["norm"], True, n * hgt * wid))
        else:
            h = act(h + p["stem"]["conv"]["bias"].astype(h.dtype))
        h = jnp.pad(h, ((0, 0), (0, 0), (0, 0), (0, cmax - h.shape[-1])))

        idx = {g: jnp.argmax(weights[g], axis=-1).astype(jnp.int32)
               for g in ("op", "width", "residual", "downsample")}

        def layer(carry, inp):
            feat, level = carry
            lp, op_i, width_i, res_i, down_i = inp
            down = down_i > 0
            new_level = jnp.minimum(level + down_i, top)
            v_in, v_out = valid_at(level), valid_at(new_level)
            # where the op's output lives: the new level, or with "pool" the input's level
            v_op, op_level = (v_in, level) if pool else (v_out, new_level)
            count = (n * hs[op_level] * ws[op_level]).astype(jnp.float32)
            # where lax's SAME stride-2 window is centred: odd sizes at 2i, even at 2i + 1
            oh, ow = 1 - hs[level] % 2, 1 - ws[level] % 2

            def stride(y, centred=True):
                if pool:  # the layer runs at stride 1; its output is pooled below
                    return y
                return jnp.where(down, _sample2(y, oh, ow) if centred else _sample2(y, 0, 0), y)

            def conv_branch(name):
                k, d = _CONV[name]

                def f(lp, feat):
                    q = lp[name]
                    y = stride(_conv(feat, q["conv"]["kernel"], d))
                    return act(_norm(y, q["norm"], v_op, count))
                return f

            def sep_branch(name):
                def f(lp, feat):
                    q = lp[name]
                    y = _conv(feat, q["depthwise0"]["kernel"], groups=feat.shape[-1])
                    y = stride(_conv(y, q["pointwise0"]["kernel"]))
                    return act(_norm(y, q["norm0"], v_op, count))
                return f

            def max_pool(lp, feat):
                y = jnp.where(v_in, feat, -jnp.inf)
                y = jax.lax.reduce_window(y, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 1, 1, 1), "SAME")
                return stride(y)

            def identity(lp, feat):
                return stride(feat, centred=False)

            branches = []
            for name in sp.ops:
                if name in _CONV:
                    branches.append(conv_branch(name))
                elif name in _SEP:
                    branches.append(sep_branch(name))
                elif name == "max_pool3x3":
                    branches.append(max_pool)
                elif name == "identity":
                    branches.append(identity)
                else:
                    raise ValueError(f"hard supernet: unknown op {name!r}")
            y = jax.lax.switch(op_i, branches, lp, feat)
            y = y + jnp.where(res_i > 0, stride(feat, centred=False), 0.0).astype(y.dtype)
            if pool:  # 2x2 max-pool of the valid corner: windows at rows/columns 2i, 2i + 1
                yp = pool2(jnp.where(valid_at(level), y, -jnp.inf))
                yp = jnp.pad(yp, ((0, 0), (0, hgt - yp.shape[1]), (0, wid - yp.shape[2]), (0, 0)))
                y = jnp.where(down, yp, y)
            keep = v_out & (chan < widths[width_i])[None, None, None, :]
            return (jnp.where(keep, y, 0.0).astype(feat.dtype), new_level), None

        xs = (p["layers"], idx["op"], idx["width"], idx["residual"], idx["downsample"])
        (h, level), _ = jax.lax.scan(jax.checkpoint(layer) if self.remat else layer,
                                     (h, jnp.int32(0)), xs, unroll=self.unroll)
        if sp.head_pool == "max":
            pooled = jnp.max(jnp.where(valid_at(level), h, -jnp.inf), (1, 2))
        else:
            pooled = jnp.sum(jnp.where(valid_at(level), h, 0.0), (1, 2)) / (hs[level] * ws[level]).astype(h.dtype)
        head = p["head"]
        logits = pooled @ head["kernel"].astype(pooled.dtype) + head["bias"].astype(pooled.dtype)
        return logits if sp.head_scale == 1 else logits * sp.head_scale
