"""``darts``: the DARTS cell space as MetaNAS uses it for few-shot learning.

A cell has two input states (the outputs of the two previous cells) and ``nodes``
intermediate nodes; node ``j`` may read every earlier state, so there are
``E = sum_j (j + 2)`` edges, each a mixed operation over ``primitives``. The encoding is
the DARTS alphas, one logit per (cell type, edge, primitive):
``z.reshape(2, E, P)``, cell type 0 = normal, 1 = reduction; edges ordered by node, then by
input state. ``relax(z, T) = softmax(alpha / T)`` per edge.

The discrete architecture (genotype) keeps, per node, the ``k`` incoming edges with the
strongest non-``none`` operation, each with that operation (as in DARTS). ``Arch.choices``
lists, for the normal then the reduction cell, for each node, ``(input, op)`` pairs in
increasing input order. ``relax(z, 0)`` gives the genotype's hard weights: a one-hot row on
kept edges and an all-zero row on dropped edges, so a supernet computes exactly the cell.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from metanas_jax.spaces.base import Arch, GeneGroup, SearchSpace, random_other_choice

DARTS_PRIMITIVES = ("none", "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3",
                    "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5")
CELL_TYPES = ("normal", "reduce")


@dataclasses.dataclass(frozen=True)
class Darts(SearchSpace):
    nodes: int = 4
    primitives: tuple[str, ...] = DARTS_PRIMITIVES
    k: int = 2
    name: str = dataclasses.field(default="darts", init=False)

    def __post_init__(self):
        object.__setattr__(self, "primitives", tuple(self.primitives))
        unknown = [p for p in self.primitives if p not in DARTS_PRIMITIVES]
        if unknown:
            raise ValueError(f"darts: unknown primitive(s) {unknown}; known: {list(DARTS_PRIMITIVES)}")
        if len(set(self.primitives)) != len(self.primitives):
            raise ValueError(f"darts: duplicate primitives in {self.primitives}")
        if len(self.op_choices) < 2:
            raise ValueError(f"darts: need at least two primitives besides 'none', got {self.primitives}")
        if self.nodes < 1:
            raise ValueError(f"darts: nodes must be >= 1, got {self.nodes}")
        if not 1 <= self.k <= 2:
            raise ValueError(f"darts: k (inputs kept per node) must be 1 or 2, got {self.k}")

    def config(self):
        return {"nodes": self.nodes, "primitives": list(self.primitives), "k": self.k}

    # -- layout ----------------------------------------------------------------------
    @property
    def op_choices(self) -> tuple[int, ...]:
        """Indices of the primitives a genotype may use (all but ``none``)."""
        return tuple(i for i, p in enumerate(self.primitives) if p != "none")

    @functools.cached_property
    def edges(self) -> tuple[tuple[int, int], ...]:
        """``(node, input_state)`` per edge; states 0, 1 are the cell inputs."""
        return tuple((j, i) for j in range(self.nodes) for i in range(j + 2))

    @property
    def groups(self):
        return tuple(GeneGroup(c, len(self.edges), self.primitives) for c in CELL_TYPES)

    @property
    def dim(self):
        return 2 * len(self.edges) * len(self.primitives)

    def _node_slices(self):
        start = 0
        for j in range(self.nodes):
            yield j, start, start + j + 2
            start += j + 2

    # -- discrete --------------------------------------------------------------------
    def check_arch(self, choices):
        per_cell = self.nodes * self.k * 2
        if len(choices) != 2 * per_cell:
            raise ValueError(f"darts: an architecture has {2 * per_cell} choices "
                             f"(2 cells x {self.nodes} nodes x {self.k} (input, op) pairs), got {len(choices)}")
        for c, cell in enumerate(CELL_TYPES):
            for j in range(self.nodes):
                base = c * per_cell + j * 2 * self.k
                pairs = [(choices[base + 2 * s], choices[base + 2 * s + 1]) for s in range(self.k)]
                inputs = [p[0] for p in pairs]
                if any(not 0 <= i < j + 2 for i in inputs) or inputs != sorted(set(inputs)):
                    raise ValueError(f"darts: {cell} node {j} inputs {inputs} must be distinct, "
                                     f"increasing, in [0, {j + 1}]")
                for _, op in pairs:
                    if op not in self.op_choices:
                        raise ValueError(f"darts: {cell} node {j} op index {op} is not a usable "
                                         f"primitive (indices {list(self.op_choices)} of {self.primitives})")
        return tuple(choices)

    def _hard(self, alpha: jax.Array) -> jax.Array:
        """Genotype weights from alphas ``(2, E, P)``: top-k edges per node, best op each."""
        w = jax.nn.softmax(alpha, axis=-1)
        usable = np.zeros(len(self.primitives), bool)
        usable[list(self.op_choices)] = True
        w_usable = jnp.where(usable, w, -1.0)
        best = jnp.argmax(w_usable, axis=-1)
        strength = jnp.max(w_usable, axis=-1)
        keep = []
        for _, s, e in self._node_slices():
            _, top = jax.lax.top_k(strength[..., s:e], self.k)
            keep.append(jnp.sum(jax.nn.one_hot(top, e - s), axis=-2))
        keep = jnp.concatenate(keep, axis=-1)
        return jax.nn.one_hot(best, len(self.primitives)) * keep[..., None]

    def _alpha(self, z):
        return jnp.reshape(jnp.asarray(z, jnp.float32), z.shape[:-1] + (2, len(self.edges), len(self.primitives)))

    def decode(self, z) -> Arch:
        arr = self.validate(z)
        hard = np.asarray(self._hard(self._alpha(jnp.asarray(arr, jnp.float32))))
        choices = []
        for c in range(2):
            for j, s, e in self._node_slices():
                for i in range(e - s):
                    if hard[c, s + i].any():
                        choices += [i, int(hard[c, s + i].argmax())]
        return self.make_arch(choices)

    def encode(self, arch: Arch) -> jax.Array:
        ch = self.own(arch).choices
        z = np.zeros((2, len(self.edges), len(self.primitives)), np.float32)
        per_cell = self.nodes * self.k * 2
        for c in range(2):
            for j, s, _ in self._node_slices():
                base = c * per_cell + j * 2 * self.k
                for t in range(self.k):
                    z[c, s + ch[base + 2 * t], ch[base + 2 * t + 1]] = 1.0
        return jnp.asarray(z.reshape(-1))

    def genotype(self, arch: Arch) -> dict[str, list[list[tuple[str, int]]]]:
        """``{"normal": [[(op, input), ...] per node], "reduce": [...]}``."""
        ch = self.own(arch).choices
        out, per_cell = {}, self.nodes * self.k * 2
        for c, cell in enumerate(CELL_TYPES):
            out[cell] = [[(self.primitives[ch[c * per_cell + j * 2 * self.k + 2 * t + 1]],
                           ch[c * per_cell + j * 2 * self.k + 2 * t]) for t in range(self.k)]
                         for j in range(self.nodes)]
        return out

    def to_string(self, arch: Arch) -> str:
        g = self.genotype(arch)
        return " ; ".join(f"{cell}: " + " / ".join(" ".join(f"{op}~{i}" for op, i in node)
                                                   for node in g[cell]) for cell in CELL_TYPES)

    def from_string(self, text: str) -> Arch:
        cells = [c.strip() for c in str(text).split(";")]
        if len(cells) != 2:
            raise ValueError(f"darts: expected 'normal: ... ; reduce: ...', got {text!r}")
        choices = []
        for cell, part in zip(CELL_TYPES, cells):
            head, _, body = part.partition(":")
            if head.strip() != cell:
                raise ValueError(f"darts: expected the {cell!r} cell, got {head.strip()!r} in {text!r}")
            nodes = [n.split() for n in body.split("/")]
            if len(nodes) != self.nodes:
                raise ValueError(f"darts: {cell} cell needs {self.nodes} nodes separated by '/', got {len(nodes)}")
            for j, node in enumerate(nodes):
                pairs = []
                for item in node:
                    op, sep, src = item.partition("~")
                    if op not in self.primitives or not sep or not src.isdigit():
                        raise ValueError(f"darts: bad edge {item!r} in {cell} node {j}; expected "
                                         f"'op~input' with op in {list(self.primitives)}")
                    pairs.append((int(src), self.primitives.index(op)))
                if len(pairs) != self.k:
                    raise ValueError(f"darts: {cell} node {j} needs {self.k} edges, got {len(pairs)}")
                for i, op in sorted(pairs):
                    choices += [i, op]
        return self.make_arch(choices)

    # -- continuous ------------------------------------------------------------------
    def relax(self, z, temperature=1.0):
        alpha = self._alpha(z)
        w = self._hard(alpha) if temperature == 0 else jax.nn.softmax(alpha / temperature, axis=-1)
        return {cell: w[..., c, :, :] for c, cell in enumerate(CELL_TYPES)}

    def project(self, z):
        return self._hard(self._alpha(z)).reshape(z.shape)

    def sample(self, key, n):
        # i.i.d. logits are exchangeable over edges and ops, so their genotype is uniform.
        return self.project(jax.random.normal(key, (n, self.dim)))

    def mutate(self, key, z):
        """Change one kept edge's op, or move one kept edge to another input of its node."""
        k_mode, k_op_edge, k_op, k_move = jax.random.split(key, 4)
        hard = self._hard(self._alpha(z)).reshape(-1, len(self.primitives))  # (2E, P)
        kept = hard.sum(-1) > 0
        # op change
        e = jax.random.choice(k_op_edge, kept.shape[0], p=kept / kept.sum())
        usable = jnp.asarray(self.op_choices)
        slot = jnp.argmax(usable == jnp.argmax(hard[e]))
        new_op = usable[random_other_choice(k_op, slot, len(usable))]
        op_changed = hard.at[e].set(jax.nn.one_hot(new_op, len(self.primitives)))
        # input move: pairs (kept edge, dropped edge) of the same cell and node
        node = np.array([j for _ in range(2) for j, _ in self.edges]) + \
            np.repeat([0, self.nodes], len(self.edges))
        same = jnp.asarray(node[:, None] == node[None, :])
        moves = same & kept[:, None] & ~kept[None, :]
        flat = moves.reshape(-1)
        pair = jax.random.choice(k_move, flat.shape[0], p=flat / jnp.maximum(flat.sum(), 1))
        src, dst = pair // kept.shape[0], pair % kept.shape[0]
        moved = hard.at[dst].set(hard[src]).at[src].set(0.0)
        use_move = (jax.random.uniform(k_mode) < 0.5) & (flat.sum() > 0)
        return jnp.where(use_move, moved, op_changed).reshape(z.shape)
