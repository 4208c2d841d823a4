"""Hard-architecture execution of the ``macro32`` supernet: only the chosen op runs.

:class:`HardMacroSupernet` has the same variables as :class:`~metanas_jax.nn.macro.MacroSupernet`
and computes, for one-hot weights, the same function (and so the compact network of
:func:`metanas_jax.nn.extract`), but it reads the architecture as *integers* (the argmax of
each gene's weights) instead of mixing every op:

* ``op``: ``jax.lax.switch`` over the ops of a layer. Not under ``vmap`` (candidates on
  CPU run through ``lax.map``) XLA executes only the chosen branch, forward and backward;
  under ``vmap`` the switch becomes a select and every branch runs (still correct).
* ``width``: the first layer runs on its own (outside the layer scan) and its
  convolutions read only the stem's channels; the others read the map's ``max(widths)``
  channels, zero beyond the previous layer's width. With ``slice_widths`` a convolution
  op has one branch per output width: it writes the layer's own channels only, so its
  cost grows with the chosen width. Parameter-free ops
  (pool, identity) run at ``max(widths)`` under the channel mask, and so does every op
  without ``slice_widths`` (fewer branches to compile). The default slices where the
  widest width is 64 or more: at ``CIFAR_SPACE``'s widths 32-256 it evaluates candidates
  1.4x faster for 45-57 s more compilation, at widths 8/16 it gains nothing measurable. Input
  channels sliced too (a branch per width pair) compiled 21x longer (benchmarks/LOG.md
  "Width-sliced branches"). ``apply(..., inference=True)``, a forward pass alone such as
  scoring a query set, reads only the previous layer's width: there a switch over the
  input widths costs no gradient and adds only forward code (benchmarks/LOG.md "Query
  scoring in inference mode").
* ``downsample``: one feature map at the input's resolution holds the current level's
  map in its top-left corner, zeros elsewhere, plus the level as an integer. The switch
  has one branch per (op, level): a branch slices the level's corner out (a static
  shape), runs the op there at stride 1 and returns both that result and its stride-2
  sampling at rows/columns ``2 i + o`` (``o`` = 1 for an even-sized level, 0 for an odd
  one, where lax's SAME padding centres a stride-2 window), or in a ``reduction="pool"``
  space its 2x2 max-pool (``pool_before_norm``: of the op's output before its BN-act, and
  of the shortcut), zero-padded back to the full map; the layer's ``downsample`` gene
  picks one. So a layer at a low resolution costs what it costs in the compact
  network, not what it would at the input's size.

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
from metanas_jax.nn.ops import ACTIVATIONS, EPS, max_pool, pool2
from metanas_jax.spaces.macro32 import Macro32

_CONV = {"conv3x3": (3, 1), "conv5x5": (5, 1), "dil_conv3x3": (3, 2)}
_SEP = {"sep_conv3x3": 3, "sep_conv5x5": 5}
# the widest width from which convolutions run at the layer's own width by default
SLICE_WIDTHS_FROM = 64
# in inference, convolutions whose im2col patches would be larger run over chunks of the
# batch (fastconv.batch_chunked); 16 and 64 MB ran the CIFAR query forward equally fast
INFERENCE_CHUNK_BYTES = 32 << 20


def _conv(x, k, dilation=1, groups=1, chunk_bytes=None):
    """fastconv: im2col matmuls on CPU, whose gradients stay fast inside the layer scan and
    ``lax.map`` over candidates (``lax.conv``'s weight gradient there dominated the step).
    Not rematerialised on its own: the switch's backward pass recomputes the chosen
    branch from its input anyway (:func:`_recomputing_switch`)."""
    return conv2d(x, k.astype(x.dtype), 1, "SAME", "auto", dilation, groups, chunk_bytes)


def _norm(x, p):
    """Batch norm with the batch's statistics (every position of ``x`` is valid: the
    branches slice their level's corner out first)."""
    xf = x.astype(jnp.float32)
    mean = jnp.mean(xf, (0, 1, 2))
    var = jnp.maximum(jnp.mean(jnp.square(xf), (0, 1, 2)) - jnp.square(mean), 0.0)
    y = (x - mean.astype(x.dtype)) * jax.lax.rsqrt(var + EPS).astype(x.dtype)
    return y * p["scale"].astype(x.dtype) + p["bias"].astype(x.dtype)


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


def _recomputing_switch(branches):
    """``lax.switch(i, branches, lp, feat, *flags)`` whose backward pass recomputes the
    chosen branch from the inputs (``flags``: booleans and integers, not differentiated).
    Autodiff of ``lax.switch`` makes every branch return the
    union of all branches' residuals (zeros from the branches not taken): with one branch
    per (op, level), that zero-filling cost more than the chosen op itself. Here the
    residuals are the inputs; the rule is made of differentiable ops (second order works)."""
    @jax.custom_vjp
    def switch(i, lp, feat, *flags):
        return jax.lax.switch(i, branches, lp, feat, *flags)

    def fwd(i, lp, feat, *flags):
        return switch(i, lp, feat, *flags), (i, lp, feat, *flags)

    def branch_vjp(branch):
        def f(lp, feat, g, *flags):
            return jax.vjp(lambda lp, feat: branch(lp, feat, *flags), lp, feat)[1](g)
        return f

    def bwd(saved, g):
        i, lp, feat, *flags = saved
        d_lp, d_feat = jax.lax.switch(i, [branch_vjp(b) for b in branches], lp, feat, g, *flags)
        return None, d_lp, d_feat, *(None for _ in flags)

    switch.defvjp(fwd, bwd)
    return switch


class HardMacroSupernet:
    """``macro32`` supernet that runs only the chosen op of each layer (see module doc).

    Same calling convention as the linen supernet: ``init(key, x, weights=None)`` and
    ``apply(variables, x, weights, train=True)`` with ``weights = space.relax(z, 0)`` (or
    any weights: their per-gene argmax is the architecture). Variables are interchangeable
    with :class:`MacroSupernet`'s of the same space, classes and input channels.
    ``remat``: ``jax.checkpoint`` each layer; ``unroll``: ``lax.scan``'s unroll (neither
    made the CPU gradient faster in a quick test; kept for experiments). ``slice_widths``:
    convolutions write only the layer's own width; None: where ``max(widths) >= 64``
    (module doc). Under ``vmap`` every branch runs: pass False there.
    """

    def __init__(self, space: Macro32, num_classes: int, dtype=None, remat: bool = False,
                 unroll: bool | int = 1, slice_widths: bool | None = None):
        if not isinstance(space, Macro32):
            raise ValueError(f"hard supernet exists for macro32 only, got space {space.name!r}")
        self.space = space
        self.num_classes = int(num_classes)
        self.dtype = dtype
        self.remat = remat
        self.unroll = unroll
        self.slice_widths = (max(space.widths) >= SLICE_WIDTHS_FROM if slice_widths is None
                             else bool(slice_widths))
        self.soft = MacroSupernet(space=space, num_classes=self.num_classes, dtype=dtype)

    def _key(self):
        """what the computed function depends on (jit caches and the learners compare it)"""
        return (type(self), self.space, self.num_classes, str(self.dtype), self.slice_widths)

    def __hash__(self):
        return hash(self._key())

    def __eq__(self, other):
        return type(other) is type(self) and other._key() == self._key()

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

    def _branch(self, name: str, level: int, shapes, full_hw, act, c_out=None, inference=False,
                first=False):
        """The layer for op ``name`` on a map at resolution ``level`` (static): the op
        runs on the level's top-left corner at its own size, so a late low-resolution layer
        costs what it would in the compact network; ``(lp, feat, down, res, in_i) -> output``
        zero-padded back to the full map. ``down`` picks between the stride-1 result and
        its stride-2 sampling (or, in a ``reduction="pool"`` space, its 2x2 max-pool),
        both computed here (in inference only the chosen one), each batch-normed over its
        own positions. ``c_out`` (convolution
        ops): it writes that many channels, zero-padded back to the map's width (None: the
        map's width). A convolution reads as many channels as its input has: the
        map's width, or the stem's for the ``first`` layer; in ``inference`` (see
        ``apply``) only the previous layer's width, ``space.widths[in_i]`` (a switch over
        the widths), chunked over the batch."""
        sp = self.space
        hgt, wid = full_hw
        h, w = shapes[level]
        cmax = max(sp.widths)
        # lax's SAME stride-2 window is centred at 2i on an odd side, 2i + 1 on an even one
        oh, ow = 1 - h % 2, 1 - w % 2
        pool = sp.reduction == "pool"

        def full(y):
            return jnp.pad(y, ((0, 0), (0, hgt - y.shape[1]), (0, wid - y.shape[2]),
                               (0, cmax - y.shape[3])))

        def sliced(q, c_in):
            """the op's params from ``c_in`` input to ``c_out`` output channels (kernels
            HWIO, a depthwise kernel's O being its input channels; norms per channel)"""
            def cut(path, a):
                if path[-1].key != "kernel":
                    return a[:c_out]
                return a[..., :c_in] if path[0].key.startswith("depthwise") else a[..., :c_in, :c_out]
            return jax.tree_util.tree_map_with_path(cut, q)

        def shortcut(x):
            """the input as the residual of a convolution's output (``c_out`` channels or
            the map's width; zero-padded or cut)"""
            c = cmax if c_out is None else c_out
            return jnp.pad(x[..., :c], ((0, 0),) * 3 + ((0, c - min(c, x.shape[-1])),))

        def strided(y, centred=True):
            return y[:, oh::2, ow::2] if centred else y[:, ::2, ::2]

        def out(y1, x, down, res, norm=None, centred=True):
            """stride-1 op output ``y1`` of input ``x`` (before its BN-act) -> the layer's
            output (full size)."""
            def finish(y, x):
                if norm is not None:
                    y = act(_norm(y, norm))
                return y + jnp.where(res, x, 0.0).astype(y.dtype)
            if pool and sp.pool_before_norm:  # (down) op output and shortcut pooled before BN-act
                return pick(down, lambda: full(finish(pool2(y1), pool2(x))), lambda: full(finish(y1, x)))
            if pool:  # the op at stride 1, then (down) a 2x2 max-pool
                y = finish(y1, x)
                return pick(down, lambda: full(pool2(y)), lambda: full(y))
            return pick(down, lambda: full(finish(strided(y1, centred), strided(x, False))),
                        lambda: full(finish(y1, x)))

        def pick(down, downsampled, kept):
            """``downsampled()`` where ``down``, else ``kept()``: in inference only the
            chosen one is computed (a ``lax.cond``); for a gradient both are, and selected
            (with a cond the CIFAR_SPACE training step was 13% slower)"""
            if inference:
                return jax.lax.cond(down, downsampled, kept)
            return jnp.where(down, downsampled(), kept())

        chunk_bytes = INFERENCE_CHUNK_BYTES if inference else None

        def read(conv, x, in_i):
            """``conv(c)(x[..., :c])``, the op's convolutions on the input's first ``c``
            channels: all of them, or in inference the previous layer's width"""
            if not inference or first:  # (the first layer reads the stem's channels)
                return conv(x.shape[-1])(x)
            return jax.lax.switch(in_i, [lambda x, c=c: conv(c)(x[..., :c]) for c in sp.widths], x)

        if name in _CONV:
            _, d = _CONV[name]

            def f(lp, x, down, res, in_i):
                conv = lambda c: lambda x: _conv(x, sliced(lp[name], c)["conv"]["kernel"], d,
                                                 chunk_bytes=chunk_bytes)
                return out(read(conv, x, in_i), shortcut(x), down, res,
                           sliced(lp[name], x.shape[-1])["norm"])
        elif name in _SEP:
            def f(lp, x, down, res, in_i):
                def conv(c):
                    q = sliced(lp[name], c)
                    return lambda x: _conv(_conv(x, q["depthwise0"]["kernel"], groups=c),
                                           q["pointwise0"]["kernel"], chunk_bytes=chunk_bytes)
                return out(read(conv, x, in_i), shortcut(x), down, res,
                           sliced(lp[name], x.shape[-1])["norm0"])
        elif name == "max_pool3x3":
            def f(lp, x, down, res, in_i):
                return out(max_pool(x), x, down, res)
        elif name == "identity":
            def f(lp, x, down, res, in_i):
                return out(x, x, down, res, centred=False)
        else:
            raise ValueError(f"hard supernet: unknown op {name!r}")
        return lambda lp, feat, down, res, in_i: f(lp, feat[:, :h, :w], down, res, in_i)

    def _branches(self, shapes, full_hw, act, levels, inference=False, first=False):
        """The switch's branches and ``table[op, level, width]``, the branch of each
        layer configuration for input levels ``0 .. levels - 1`` (the same for every
        width where the width is a mask: parameter-free ops, or ``slice_widths=False``)."""
        sp = self.space
        table = np.zeros((len(sp.ops), levels, len(sp.widths)), np.int32)
        branches = []
        for o, name in enumerate(sp.ops):
            sliced = self.slice_widths and (name in _CONV or name in _SEP)
            for level in range(levels):
                if not sliced:
                    table[o, level, :] = len(branches)
                    branches.append(self._branch(name, level, shapes, full_hw, act,
                                                 inference=inference, first=first))
                    continue
                for j, c_out in enumerate(sp.widths):
                    table[o, level, j] = len(branches)
                    branches.append(self._branch(name, level, shapes, full_hw, act, c_out,
                                                 inference, first))
        return branches, table

    # -- forward -----------------------------------------------------------------------
    def apply(self, variables, x, weights, train: bool = True, inference: bool = False):
        """Logits, with batch statistics always (like the linen supernet). ``inference``:
        the same function computed for a forward pass alone, such as scoring a large query
        set: each convolution reads only the previous layer's width of the map's channels
        (a switch over the widths, which a gradient would pay for in every branch) and
        runs over chunks of the batch (``fastconv.batch_chunked``; a training step of 64
        images ran 6% slower chunked), and a layer computes only its chosen downsampling
        path. Not under ``vmap``, where its switches and conds run every branch."""
        del train
        chunk_bytes = INFERENCE_CHUNK_BYTES if inference else None
        sp = self.space
        p = variables["params"]
        if self.dtype is not None:
            x = x.astype(self.dtype)
        _, hgt, wid, _ = x.shape
        cmax = max(sp.widths)
        shapes = level_shapes(hgt, wid)
        top = len(shapes) - 1
        hs = jnp.asarray([a for a, _ in shapes], jnp.int32)
        ws = jnp.asarray([b for _, b in shapes], jnp.int32)
        rows, cols = jnp.arange(hgt), jnp.arange(wid)
        chan = jnp.arange(cmax)
        widths = jnp.asarray(sp.widths, jnp.int32)
        act = ACTIVATIONS[sp.activation]

        def valid_at(level):
            return ((rows[:, None] < hs[level]) & (cols[None, :] < ws[level]))[None, :, :, None]

        # stem: conv-BN-act (or conv+bias-act) at full resolution
        h = _conv(x, p["stem"]["conv"]["kernel"], chunk_bytes=chunk_bytes)
        if sp.stem_norm:
            h = act(_norm(h, p["stem"]["norm"]))
        else:
            h = act(h + p["stem"]["conv"]["bias"].astype(h.dtype))

        idx = {g: jnp.argmax(weights[g], axis=-1).astype(jnp.int32)
               for g in ("op", "width", "residual", "downsample")}

        def layer(switch, table, feat, level, in_i, lp, op_i, width_i, res_i, down_i):
            new_level = jnp.minimum(level + down_i, top)
            # one branch per (op, input level[, width]): the op runs on the level's own size
            y = switch(table[op_i, level, width_i], lp, feat, down_i > 0, res_i > 0, in_i)
            keep = valid_at(new_level) & (chan < widths[width_i])[None, None, None, :]
            # a product with the small mask, not a select: autodiff keeps the mask, not its
            # broadcast to the map's full size, for every layer
            return y * keep.astype(y.dtype), new_level, width_i

        # the first layer on its own, at level 0, reading only the stem's channels (the
        # others read the map's max(widths) channels, zero beyond the previous layer's width)
        genes = [idx[g] for g in ("op", "width", "residual", "downsample")]
        first, table0 = self._branches(shapes, (hgt, wid), act, 1, inference, first=True)
        carry = layer(_recomputing_switch(tuple(first)), jnp.asarray(table0), h, jnp.int32(0),
                      jnp.int32(0), jax.tree.map(lambda a: a[0], p["layers"]), *(g[0] for g in genes))

        branches, table = self._branches(shapes, (hgt, wid), act, len(shapes), inference)
        switch, table = _recomputing_switch(tuple(branches)), jnp.asarray(table)

        def scanned(carry, inp):
            return layer(switch, table, *carry, *inp), None

        xs = (jax.tree.map(lambda a: a[1:], p["layers"]), *(g[1:] for g in genes))
        (h, level, _), _ = jax.lax.scan(jax.checkpoint(scanned) if self.remat else scanned,
                                        carry, xs, unroll=self.unroll)
        if sp.head_pool == "max":
            pooled = jnp.max(jnp.where(valid_at(level), h, -jnp.inf), (1, 2))
        else:
            pooled = jnp.sum(jnp.where(valid_at(level), h, 0.0), (1, 2)) / (hs[level] * ws[level]).astype(h.dtype)
        head = p["head"]
        logits = pooled @ head["kernel"].astype(pooled.dtype) + head["bias"].astype(pooled.dtype)
        return logits if sp.head_scale == 1 else logits * sp.head_scale
