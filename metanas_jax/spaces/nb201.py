"""``nb201``: the NAS-Bench-201 / NATS-Bench topology cell, 6 edges x 5 operations.

The cell has nodes 0..3; node ``j`` sums one operation applied to every earlier node.
Edges, in the order of the standard string ``|op~0|+|op~0|op~1|+|op~0|op~1|op~2|``:
``1<-0, 2<-0, 2<-1, 3<-0, 3<-1, 3<-2``. One scalar gene per edge (``dim = 6``), over the
operations ``none, skip_connect, nor_conv_1x1, nor_conv_3x3, avg_pool_3x3`` in that order.
"""
from __future__ import annotations

import dataclasses
import re

from metanas_jax.spaces.base import Arch, GeneGroup
from metanas_jax.spaces.categorical import CategoricalSpace

NB201_OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
NB201_EDGES = ((1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2))  # (to, from)
_NODE = re.compile(r"^\|(.*)\|$")


@dataclasses.dataclass(frozen=True)
class NB201(CategoricalSpace):
    name: str = dataclasses.field(default="nb201", init=False)

    def config(self):
        return {}

    @property
    def groups(self):
        return (GeneGroup("op", len(NB201_EDGES), NB201_OPS),)

    @property
    def gene_index(self):
        return tuple((0, e) for e in range(len(NB201_EDGES)))

    def to_string(self, arch: Arch) -> str:
        ops = [NB201_OPS[c] for c in self.own(arch).choices]
        nodes, e = [], 0
        for to in (1, 2, 3):
            nodes.append("|" + "|".join(f"{ops[e + i]}~{i}" for i in range(to)) + "|")
            e += to
        return "+".join(nodes)

    def from_string(self, text: str) -> Arch:
        nodes = str(text).strip().split("+")
        if len(nodes) != 3:
            raise ValueError(f"nb201: expected 3 nodes separated by '+', got {len(nodes)} in {text!r}")
        choices = []
        for to, node in enumerate(nodes, start=1):
            m = _NODE.match(node)
            items = m.group(1).split("|") if m else []
            if len(items) != to:
                raise ValueError(f"nb201: node {to} must list {to} edge(s) as '|op~i|...', got {node!r}")
            for i, item in enumerate(items):
                op, sep, src = item.partition("~")
                if not sep or src != str(i):
                    raise ValueError(f"nb201: edge {item!r} of node {to} must read 'op~{i}'")
                if op not in NB201_OPS:
                    raise ValueError(f"nb201: unknown op {op!r} in {text!r}; known: {list(NB201_OPS)}")
                choices.append(NB201_OPS.index(op))
        return self.make_arch(choices)
