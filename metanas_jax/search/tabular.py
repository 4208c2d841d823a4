"""Tabular benchmarks: every architecture of a small categorical space with known scores.

Evaluating a candidate is a table look-up (``TabularBenchmark.lookup``, jit-able), so a
whole search runs as one compiled program and strategies can be compared over many seeds in
seconds. :func:`load_nb201` reads the NAS-Bench-201 / NATS-Bench topology table (all
15,625 cells of the ``nb201`` space, 200-epoch test accuracy on three datasets).
"""
from __future__ import annotations

import csv
import os
from pathlib import Path

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from metanas_jax import spaces
from metanas_jax.search.searcher import MAX_ENUMERABLE, arch_index, index_to_z, space_size
from metanas_jax.spaces.base import SearchSpace

NB201_COLUMNS = {"cifar10": "CIFAR10TestAccuracy200Epochs",
                 "cifar100": "CIFAR100TestAccuracy200Epochs",
                 "imagenet16-120": "ImageNetTestAccuracy200Epochs"}
NB201_ENV = "METANAS_NB201"
NB201_RELATIVE = Path("shared") / "data" / "nasbench201" / "nats_bench_tss.csv"


@flax.struct.dataclass
class TabularBenchmark:
    """Scores of every architecture of ``space`` on each of ``names``.

    ``scores[i, j]`` is the score of the architecture with :func:`arch_index` ``i`` on
    dataset ``names[j]``, as a fraction (accuracy in [0, 1]) so it is on the scale an
    evaluator predicts.
    """

    scores: jax.Array                                   # (space size, len(names))
    space: SearchSpace = flax.struct.field(pytree_node=False)
    names: tuple[str, ...] = flax.struct.field(pytree_node=False)

    @staticmethod
    def from_array(space: SearchSpace, scores, names) -> "TabularBenchmark":
        size = space_size(space)
        if size is None or size > MAX_ENUMERABLE:
            raise ValueError(f"a tabular benchmark needs a small categorical space; "
                             f"{space.name!r} has {size} architectures")
        arr = np.asarray(scores, np.float32)
        names = tuple(str(n) for n in names)
        if arr.ndim == 1:
            arr = arr[:, None]
        if arr.shape != (size, len(names)):
            raise ValueError(f"scores must have shape ({size}, {len(names)}) for space "
                             f"{space.name!r} and datasets {names}, got {arr.shape}")
        if len(set(names)) != len(names):
            raise ValueError(f"dataset names must be distinct, got {names}")
        bad = np.argwhere(~np.isfinite(arr))
        if bad.size:
            raise ValueError(f"scores hold non-finite values at (arch, dataset) {bad[:5].tolist()}")
        return TabularBenchmark(scores=jnp.asarray(arr), space=space, names=names)

    @staticmethod
    def from_function(space: SearchSpace, fn, names=("synthetic",)) -> "TabularBenchmark":
        """Table of ``fn(zs) -> (n,) or (n, len(names))`` over every architecture."""
        size = space_size(space)
        if size is None or size > 2**22:
            raise ValueError(f"from_function enumerates the space; {space.name!r} has {size}")
        zs = index_to_z(space, jnp.arange(size))
        return TabularBenchmark.from_array(space, np.asarray(fn(zs)), names)

    @property
    def size(self) -> int:
        return self.scores.shape[0]

    def column(self, name: str) -> int:
        if name not in self.names:
            raise ValueError(f"unknown dataset {name!r}; this table has {list(self.names)}")
        return self.names.index(name)

    def lookup(self, zs: jax.Array, name: str) -> jax.Array:
        """Scores of encodings ``zs (..., dim)`` on dataset ``name`` (jit-able)."""
        return self.scores[arch_index(self.space, zs), self.column(name)]

    def all_encodings(self) -> jax.Array:
        """``(size, dim)``: every architecture, in table order."""
        return index_to_z(self.space, jnp.arange(self.size))

    def optimum(self, name: str) -> float:
        return float(jnp.max(self.scores[:, self.column(name)]))


def nb201_path(path: str | os.PathLike | None = None) -> Path:
    """Where the NB201 table is: ``path``, else ``$METANAS_NB201``, else the first
    ``shared/data/nasbench201/nats_bench_tss.csv`` found beside the working directory or a
    parent of it (the project's ``../shared/data`` layout)."""
    if path is not None:
        return Path(path)
    if os.environ.get(NB201_ENV):
        return Path(os.environ[NB201_ENV])
    here = Path.cwd().resolve()
    for base in (here, *here.parents):
        if (base / NB201_RELATIVE).is_file():
            return base / NB201_RELATIVE
    return here.parent / NB201_RELATIVE


def load_nb201(path: str | os.PathLike | None = None) -> TabularBenchmark:
    """The NAS-Bench-201 table for the ``nb201`` space; accuracies as fractions.

    Raises ``FileNotFoundError`` naming the path when the file is missing and
    ``ValueError`` naming the line when it is malformed (missing column, unparsable
    number or architecture, duplicate or missing architectures).
    """
    p = nb201_path(path)
    if not p.is_file():
        raise FileNotFoundError(f"NAS-Bench-201 table not found at {str(p)!r}; pass its path or "
                                f"set ${NB201_ENV} (expected columns: "
                                f"{list(NB201_COLUMNS.values()) + ['ArchitectureString']})")
    space = spaces.get("nb201")
    size = space_size(space)
    table = np.full((size, len(NB201_COLUMNS)), np.nan, np.float32)
    with open(p, newline="") as f:
        reader = csv.DictReader(f)
        needed = [*NB201_COLUMNS.values(), "ArchitectureString"]
        missing = [c for c in needed if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{p}: missing column(s) {missing}; header is {reader.fieldnames}")
        seen_at: dict[int, int] = {}
        for line, row in enumerate(reader, start=2):
            try:
                arch = space.from_string(row["ArchitectureString"])
                accs = [float(row[c]) for c in NB201_COLUMNS.values()]
            except (ValueError, TypeError) as e:
                raise ValueError(f"{p}, line {line}: cannot parse row {row!r}: {e}") from e
            i = int(np.ravel_multi_index(arch.choices, tuple(space.cardinalities)))
            if i in seen_at:
                raise ValueError(f"{p}, line {line}: architecture {str(arch)!r} already on "
                                 f"line {seen_at[i]}")
            seen_at[i] = line
            if not all(np.isfinite(a) and 0.0 <= a <= 100.0 for a in accs):
                raise ValueError(f"{p}, line {line}: accuracies must be percentages in "
                                 f"[0, 100], got {accs}")
            table[i] = np.asarray(accs) / 100.0
    if len(seen_at) != size:
        raise ValueError(f"{p}: has {len(seen_at)} architectures, the nb201 space has {size}")
    return TabularBenchmark.from_array(space, table, tuple(NB201_COLUMNS))
