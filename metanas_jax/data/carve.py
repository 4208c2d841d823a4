"""Choosing a split, and carving a seeded, stratified test split from data that has none.

Data with splits of its own (``train/`` and ``test/`` folders, ``x_train`` / ``x_test``
arrays, ``train-`` / ``t10k-`` IDX files) is read split by split.  Data without
(``<class>/`` folders, ``images`` / ``labels`` arrays) gets ``"train"`` and ``"test"`` from
the spec options ``test_fraction=F`` and ``seed=S`` (default 0): in every class, a seeded
permutation (its own generator per class: ``numpy.random.default_rng([S, class index])``)
puts ``round(F * n)`` of the class's ``n`` examples into ``"test"``, at least one and at
most ``n - 1`` when ``n >= 2``; a class of one example stays in ``"train"``.  The two parts
are disjoint, cover the data, and depend only on the labels (in the source's order), ``F``
and ``S``: the same in every run, for every ``image_size``, cached or not.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from .specs import Spec

__all__ = ["Carve", "CARVE_OPTIONS", "carve_indices", "resolve_split"]

CARVE_OPTIONS = ("test_fraction", "seed")


@dataclasses.dataclass(frozen=True)
class Carve:
    test_fraction: float
    seed: int = 0

    @classmethod
    def from_spec(cls, spec: Spec) -> Carve | None:
        """The carve a spec's options ask for, or ``None``; ``ValueError`` naming the spec
        for a bad value."""
        opts = spec.options
        if "test_fraction" not in opts:
            if "seed" in opts:
                raise ValueError(f"dataset spec {spec.text!r}: seed= needs test_fraction= (the part to carve)")
            return None
        try:
            frac = float(opts["test_fraction"])
        except ValueError:
            frac = float("nan")
        if not 0.0 < frac < 1.0:
            raise ValueError(
                f"dataset spec {spec.text!r}: test_fraction must be a number in (0, 1), got {opts['test_fraction']!r}"
            )
        try:
            seed = int(opts.get("seed", "0"))
        except ValueError:
            seed = -1
        if seed < 0:
            raise ValueError(
                f"dataset spec {spec.text!r}: seed must be a non-negative integer, got {opts.get('seed')!r}"
            )
        return cls(frac, seed)

    def key(self) -> list:
        return [self.test_fraction, self.seed]


def carve_indices(labels, test_fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Sorted ``(train, test)`` indices into ``labels``: a stratified, seeded split (see the
    module docstring)."""
    labels = np.asarray(labels)
    test: list[np.ndarray] = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        n = len(members)
        k = 0 if n < 2 else min(n - 1, max(1, int(round(test_fraction * n))))
        perm = np.random.default_rng([int(seed), int(c) & 0xFFFFFFFF]).permutation(n)
        test.append(members[perm[:k]])
    test_idx = np.sort(np.concatenate(test)) if test else np.zeros(0, np.int64)
    mask = np.ones(len(labels), bool)
    mask[test_idx] = False
    return np.flatnonzero(mask), test_idx


def resolve_split(available: Sequence[str], split: str, carve: Carve | None, where: str, spec: str,
                  unsplit_layout: str = "") -> tuple[list[str], str | None]:
    """Which stored splits to read for ``split``, and which carved part to keep.

    ``available``: the data's own splits, ``[""]`` for data without any.  Returns
    ``(stored splits to merge, "train" / "test" / None)``; with a part, the caller keeps
    that part of :func:`carve_indices` of the merged labels.  ``ValueError`` naming
    ``where`` for an unknown split, a carve of data that has splits, or a split asked of
    data that has none and no carve.
    """
    available = sorted(available)
    unsplit = available == [""]
    if carve is not None:
        if not unsplit:
            raise ValueError(
                f"{where} already has splits {available}; test_fraction= carves a test split only from data "
                f"without one: drop it from the spec {spec!r}"
            )
        if split == "all":
            return [""], None
        if split not in ("train", "test"):
            raise ValueError(f"unknown split {split!r} for {spec!r}: a carved dataset has 'train', 'test' and 'all'")
        return [""], split
    if unsplit:
        if split == "all":
            return [""], None
        layout = f" ({unsplit_layout})" if unsplit_layout else ""
        raise ValueError(
            f"{where} has no train/test split{layout}; carve one with the spec "
            f"'{spec}?test_fraction=0.2' (add &seed=N for another draw), or load it with split='all' "
            f"(got split={split!r})"
        )
    if split == "all":
        return list(available), None
    if split not in available:
        raise ValueError(f"split {split!r} not found in {where}; available splits: {available} (or 'all')")
    return [split], None
