"""Cell networks of the ``darts`` and ``nb201`` spaces: compact networks and supernets.

A supernet edge is a mixed op, ``sum_k w[e, k] * op_k(x)`` with ``w = space.relax(z, T)``;
the compact network of a genotype keeps only the chosen op of each kept edge. Compact edge
op modules are named ``e{edge}_{op}``; the NAS-Bench-201 supernet names them the same way,
the DARTS supernet stacks them (see :class:`DartsSupernet`) and ``unstack`` renames them,
so compact variables are slices of the supernet's (see :func:`metanas_jax.nn.extract`),
and with one-hot weights both compute the same function.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from metanas_jax.nn.fastconv import Conv
from metanas_jax.nn.ops import (NORM_STATS, ConvBN, FactorizedReduce, Norm, SepConv, avg_pool,
                                max_pool, subsample, zeros_as)
from metanas_jax.spaces import Arch
from metanas_jax.spaces.darts import Darts
from metanas_jax.spaces.nb201 import NB201, NB201_EDGES


# --------------------------------------------------------------------------- DARTS
def darts_op(name, channels, stride, module_name, track, dtype):
    """A callable ``f(x, train)`` for DARTS primitive ``name`` (modules created here)."""
    kw = dict(track=track, dtype=dtype, name=module_name, pre_relu=True)
    if name == "none":
        return lambda x, train: jnp.zeros_like(subsample(x, stride))
    if name == "max_pool_3x3":
        return lambda x, train: max_pool(x, stride)
    if name == "avg_pool_3x3":
        return lambda x, train: avg_pool(x, stride)
    if name == "skip_connect":
        if stride == 1:
            return lambda x, train: x
        m = FactorizedReduce(channels, track=track, dtype=dtype, name=module_name)
        return lambda x, train: m(x, train)
    spec = {"sep_conv_3x3": (3, 1, 2), "sep_conv_5x5": (5, 1, 2),
            "dil_conv_3x3": (3, 2, 1), "dil_conv_5x5": (5, 2, 1)}
    if name in spec:
        k, dil, rep = spec[name]
        m = SepConv(channels, k, dilation=dil, repeats=rep, **kw)
        return lambda x, train: m(x, stride, train)
    raise ValueError(f"darts: unknown primitive {name!r}")


def edge_groups(space: Darts, reduction: bool):
    """The DARTS supernet cell's edge scans: ``(name, stride, edge ids)`` in run order.

    A normal cell scans all edges over one buffer of states (inputs then nodes). In a
    reduction cell the edges from the two inputs have stride 2 and so other shapes: they
    run first, as their own scan; the node-to-node edges follow. Edges are ordered by
    target node, so every node is complete before an edge reads it."""
    if not reduction:
        return [("edges", 1, list(range(len(space.edges))))]
    groups = [("edges_s2", 2, [e for e, (_, i) in enumerate(space.edges) if i < 2]),
              ("edges", 1, [e for e, (_, i) in enumerate(space.edges) if i >= 2])]
    return [g for g in groups if g[2]]


class MixedEdge(nn.Module):
    """One step of an edge scan: ``buf[dst] += sum_k w[k] op_k(src[i])``.

    ``src`` is the scan carry itself (``from_carry``) or a constant stack of the cell
    inputs; the index ``i`` and weights ``w`` are scanned, the op modules' parameters are
    stacked on the edge axis. XLA compiles the mixed op once per scan instead of once per
    edge, so a cell's gradient compiles many times faster
    (``benchmarks/bench_darts_compile.py``). The step is rematerialised (``nn.remat``):
    the backward pass recomputes an edge's ops from its input instead of the scan stacking
    every intermediate of every primitive (fewer ops, a faster gradient and compilation on
    CPU), unless the supernet says ``remat=False`` (a second-order meta-step, whose
    checkpointed inner steps recompute the whole network anyway)."""

    primitives: tuple[str, ...]
    channels: int
    stride: int
    from_carry: bool
    track: bool
    train: bool
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, buf, edge, src):
        w, i, dst = edge
        x = (buf if self.from_carry else src)[i]
        y = 0.0
        for k, op in enumerate(self.primitives):
            if op != "none":  # its output is zero
                y = y + w[k].astype(x.dtype) * darts_op(
                    op, self.channels, self.stride, op, self.track, self.dtype)(x, self.train)
        return buf.at[dst].add(y.astype(buf.dtype)), None


class DartsCell(nn.Module):
    """One cell. A compact cell gets ``edge_ops``, listing ``(op, None)`` for the chosen
    op of each kept edge ``e``; a supernet cell gets the cell type's weights ``(E, P)``
    and runs every edge's mixed op in :func:`edge_groups`' scans."""

    space: Darts
    channels: int
    reduction: bool
    reduction_prev: bool
    track: bool
    dtype: jnp.dtype | None = None
    remat: bool = True  # rematerialise each mixed edge (MixedEdge); supernet cells only

    @nn.compact
    def __call__(self, s0, s1, edge_ops, train=True):
        c = self.channels
        if self.reduction_prev:
            s0 = FactorizedReduce(c, self.track, self.dtype, name="pre0")(s0, train)
        else:
            s0 = ConvBN(c, 1, pre_relu=True, track=self.track, dtype=self.dtype, name="pre0")(s0, 1, train)
        s1 = ConvBN(c, 1, pre_relu=True, track=self.track, dtype=self.dtype, name="pre1")(s1, 1, train)
        if isinstance(edge_ops, list):
            return self._compact(s0, s1, edge_ops, train)
        return self._mixed(s0, s1, edge_ops, train)

    def _compact(self, s0, s1, edge_ops, train):
        states = [s0, s1]
        for j in range(self.space.nodes):
            node = 0.0
            for e, (to, i) in enumerate(self.space.edges):
                if to != j:
                    continue
                stride = 2 if self.reduction and i < 2 else 1
                for op, _ in edge_ops[e]:
                    node = node + darts_op(op, self.channels, stride, f"e{e}_{op}", self.track,
                                           self.dtype)(states[i], train)
            if isinstance(node, float):  # no kept edge (cannot happen for valid genotypes)
                node = jnp.zeros_like(subsample(s1, 2 if self.reduction else 1))
            states.append(node)
        return jnp.concatenate(states[2:], axis=-1)

    def _mixed(self, s0, s1, weights, train):
        nodes = self.space.nodes
        inputs = jnp.stack([s0, s1])
        if self.reduction:  # buffer of the nodes only; inputs are read from `inputs`
            buf, first = zeros_as((nodes,) + subsample(s1, 2).shape, s1), 2  # scan carry
        else:  # one buffer: inputs, then nodes
            buf, first = jnp.concatenate([inputs, jnp.zeros((nodes,) + s1.shape, s1.dtype)]), 0
        for name, stride, ids in edge_groups(self.space, self.reduction):
            src_i = np.array([self.space.edges[e][1] for e in ids], np.int32)
            dst = np.array([self.space.edges[e][0] for e in ids], np.int32) + 2 - first
            from_carry = stride == 1
            edge = (weights[np.array(ids)], src_i - first if from_carry else src_i, dst)
            scan = nn.scan(nn.remat(MixedEdge) if self.remat else MixedEdge,
                           variable_axes={"params": 0, "batch_stats": 0, NORM_STATS: 0},
                           split_rngs={"params": True}, in_axes=(0, nn.broadcast), length=len(ids))
            buf, _ = scan(self.space.primitives, self.channels, stride, from_carry, self.track,
                          train, self.dtype, name=name)(buf, edge, inputs)
        return jnp.concatenate(list(buf[2 - first:]), axis=-1)


class _DartsBody(nn.Module):
    space: Darts
    num_classes: int
    channels: int = 16
    cells: int = 5
    stem_multiplier: int = 3
    # 2 halves the resolution every cell sees (4x less work), as conv4's first strided
    # convolution does: on 28x28 Omniglot the cells then run at 14/7/4 instead of 28/14/7
    stem_stride: int = 1
    track: bool = False
    dtype: jnp.dtype | None = None
    # the supernet's edges are rematerialised (MixedEdge) unless a larger checkpoint
    # around the network already recomputes them (meta.Learner.without_remat)
    remat: bool = True

    def run(self, x, cell_edge_ops, train):
        """``cell_edge_ops(reduction) -> edge_ops`` for each cell."""
        if not isinstance(self.stem_stride, int) or self.stem_stride < 1:
            raise ValueError(f"darts: stem_stride must be an int >= 1, got {self.stem_stride!r}")
        c = self.channels
        # every DARTS convolution is a fastconv.Conv (im2col matmul on CPU for the stem)
        stem = Conv(c * self.stem_multiplier, 3, stride=self.stem_stride, use_bias=False,
                    dtype=self.dtype, name="stem")(x)
        s0 = s1 = Norm(self.track, name="stem_norm")(stem, train)
        reduction_prev = False
        for i in range(self.cells):
            reduction = self.cells >= 3 and i in (self.cells // 3, 2 * self.cells // 3)
            if reduction:
                c *= 2
            out = DartsCell(self.space, c, reduction, reduction_prev, self.track, self.dtype,
                            self.remat, name=f"cell{i}")(s0, s1, cell_edge_ops(reduction), train)
            s0, s1, reduction_prev = s1, out, reduction
        return nn.Dense(self.num_classes, dtype=self.dtype, name="head")(jnp.mean(s1, axis=(1, 2)))


class DartsNet(_DartsBody):
    """Compact network of a DARTS genotype ``arch``."""

    # every convolution is a fastconv one (matmuls / shifted multiply-adds on CPU); tasks
    # run one after another (lax.map) when meta-learning its weights (meta.derived_learner):
    # faster than vmapped and quicker to compile on CPU (benchmarks/LOG.md, Omniglot section)
    CPU_TASK_STRATEGY = "map"
    arch: Arch | None = None

    @nn.compact
    def __call__(self, x, train: bool = True):
        geno = self.space.genotype(self.arch)
        edge_index = {edge: e for e, edge in enumerate(self.space.edges)}

        def edge_ops(reduction):
            ops = [[] for _ in self.space.edges]
            for j, node in enumerate(geno["reduce" if reduction else "normal"]):
                for op, i in node:
                    ops[edge_index[(j, i)]].append((op, None))
            return ops

        return self.run(x, edge_ops, train)


class DartsSupernet(_DartsBody):
    """DARTS search network: every edge mixes all primitives with ``weights[cell type]``.

    Each cell runs its edges as ``lax.scan`` s of one mixed op (:func:`edge_groups`), so
    the op parameters of cell ``i`` live stacked on a leading edge axis under
    ``cell{i}/edges/{op}`` (and ``cell{i}/edges_s2/{op}`` for a reduction cell's input
    edges); :meth:`unstack` gives them the compact network's names."""

    STACKED = ("edges", "edges_s2")
    CPU_TASK_STRATEGY = "map"  # one compiled supernet copy, as fast as vmap here (meta.Learner)

    @nn.compact
    def __call__(self, x, weights, train: bool = True):
        return self.run(x, lambda reduction: weights["reduce" if reduction else "normal"], train)

    @staticmethod
    def unstack(params, space: Darts):
        """Supernet params renamed as the compact network names them (``e{edge}_{op}``)."""
        out = {}
        for name, tree in params.items():
            groups = [g for g in DartsSupernet.STACKED if isinstance(tree, dict) and g in tree]
            if not groups:
                out[name] = tree
                continue
            cell = {k: v for k, v in tree.items() if k not in groups}
            for group, _, ids in edge_groups(space, reduction="edges_s2" in groups):
                for op, op_tree in tree.get(group, {}).items():
                    for pos, e in enumerate(ids):
                        cell[f"e{e}_{op}"] = jax.tree.map(lambda a, pos=pos: a[pos], op_tree)
            out[name] = cell
        return out


# --------------------------------------------------------------------------- NAS-Bench-201
def nb201_op(name, channels, module_name, track, dtype):
    if name == "none":
        return lambda x, train: jnp.zeros_like(x)
    if name == "skip_connect":
        return lambda x, train: x
    if name == "avg_pool_3x3":
        return lambda x, train: avg_pool(x, 1)
    if name in ("nor_conv_1x1", "nor_conv_3x3"):
        m = ConvBN(channels, 1 if name.endswith("1x1") else 3, pre_relu=True, track=track,
                   dtype=dtype, name=module_name)
        return lambda x, train: m(x, 1, train)
    raise ValueError(f"nb201: unknown op {name!r}")


class NB201Cell(nn.Module):
    channels: int
    track: bool
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x, edge_ops, train=True):
        nodes = [x]
        for to in (1, 2, 3):
            acc = jnp.zeros_like(x)
            for e, (t, i) in enumerate(NB201_EDGES):
                if t != to:
                    continue
                for op, w in edge_ops[e]:
                    y = nb201_op(op, self.channels, f"e{e}_{op}", self.track, self.dtype)(nodes[i], train)
                    acc = acc + (y if w is None else w * y)
            nodes.append(acc)
        return nodes[3]


class ResidualReduce(nn.Module):
    """NAS-Bench-201's reduction block between stages (a stride-2 basic residual block)."""

    channels: int
    track: bool
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x, train=True):
        y = ConvBN(self.channels, 3, pre_relu=True, track=self.track, dtype=self.dtype, name="a")(x, 2, train)
        y = ConvBN(self.channels, 3, pre_relu=True, track=self.track, dtype=self.dtype, name="b")(y, 1, train)
        short = nn.avg_pool(x, (2, 2), strides=(2, 2), padding="SAME")
        short = Conv(self.channels, 1, use_bias=False, dtype=self.dtype, name="shortcut")(short)
        return y + short


class _NB201Body(nn.Module):
    space: NB201
    num_classes: int
    channels: int = 16
    cells_per_stage: int = 5
    track: bool = False
    dtype: jnp.dtype | None = None

    def run(self, x, edge_ops, train):
        c = self.channels
        x = Conv(c, 3, use_bias=False, dtype=self.dtype, name="stem")(x)
        x = Norm(self.track, name="stem_norm")(x, train)
        for stage in range(3):
            if stage:
                c *= 2
                x = ResidualReduce(c, self.track, self.dtype, name=f"reduce{stage}")(x, train)
            for k in range(self.cells_per_stage):
                x = NB201Cell(c, self.track, self.dtype, name=f"stage{stage}_cell{k}")(x, edge_ops, train)
        x = nn.relu(Norm(self.track, name="last_norm")(x, train))
        return nn.Dense(self.num_classes, dtype=self.dtype, name="head")(jnp.mean(x, axis=(1, 2)))


class NB201Net(_NB201Body):
    """Compact NAS-Bench-201 network of ``arch`` (edges with ``none`` are left out)."""

    arch: Arch | None = None

    @nn.compact
    def __call__(self, x, train: bool = True):
        ops = [self.space.groups[0].labels[c] for c in self.arch.choices]
        return self.run(x, [[] if op == "none" else [(op, None)] for op in ops], train)


class NB201Supernet(_NB201Body):
    """Every cell mixes the five ops on each edge with ``weights["op"]`` (shared by cells)."""

    @nn.compact
    def __call__(self, x, weights, train: bool = True):
        w = weights["op"]
        labels = self.space.groups[0].labels
        return self.run(x, [[(op, w[e, k]) for k, op in enumerate(labels)]
                            for e in range(len(NB201_EDGES))], train)
