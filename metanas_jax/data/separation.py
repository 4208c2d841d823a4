"""Source and target kept apart: class selections and a content check.

Why: meta-learning must be judged on a *new* task. If an image of the target's validation or
test split also sits in a source (meta-training) task, the meta-learner has seen the answer,
and a search that "benefits" from it proves nothing. Two ways to keep them apart:

* different datasets (e.g. Tiny ImageNet -> CIFAR-10), or
* one dataset with explicitly disjoint class sets (``select_classes`` on both sides).

Neither is assumed: :func:`check_separated` compares the pixels of every source image with
those of the target's splits (a 128-bit digest per image) and refuses any overlap, naming
both specs, the split and how many images are shared.
"""
from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

import numpy as np

from .dataset import Dataset

__all__ = ["parse_classes", "select_classes", "image_digests", "check_separated"]


def parse_classes(text: str | Sequence, class_names: Sequence[str], key: str = "classes") -> list[int]:
    """Class indices from a selection: ``""`` (all), ``"0-4,7"`` (index ranges), or class
    names (``"cat,dog"``), or a sequence of those items. ``key`` names the config key in
    errors."""
    names = [str(c) for c in class_names]
    if isinstance(text, str):
        items = [t.strip() for t in text.split(",") if t.strip()]
    else:
        items = [str(t).strip() for t in text]
    if not items:
        return list(range(len(names)))
    out: list[int] = []
    for item in items:
        if item in names:
            out.append(names.index(item))
            continue
        lo, sep, hi = item.partition("-")
        try:
            a, b = (int(lo), int(hi)) if sep else (int(item), int(item))
        except ValueError:
            raise ValueError(f"{key}: {item!r} is neither a class name nor an index or range "
                             f"'a-b'; first classes: {names[:5]}") from None
        if not 0 <= a <= b < len(names):
            raise ValueError(f"{key}: {item!r} is outside the {len(names)} classes [0, {len(names) - 1}]")
        out.extend(range(a, b + 1))
    if len(set(out)) != len(out):
        raise ValueError(f"{key}: a class is selected twice in {text!r}")
    return out


def select_classes(ds: Dataset, classes: Sequence[int]) -> Dataset:
    """The examples of ``classes`` (indices into ``ds.class_names``), relabelled
    ``0..len(classes)-1`` in that order; the class names follow."""
    classes = [int(c) for c in classes]
    if list(classes) == list(range(ds.num_classes)):
        return ds
    remap = np.full(ds.num_classes, -1, np.int64)
    remap[classes] = np.arange(len(classes))
    keep = np.flatnonzero(remap[ds.labels] >= 0)
    sub = ds.subset(keep)
    return Dataset(sub.images, remap[sub.labels].astype(np.int32),
                   tuple(ds.class_names[c] for c in classes), sub.meta)


def image_digests(images: np.ndarray) -> np.ndarray:
    """One 16-byte BLAKE2 digest of every image's pixels and shape, as an ``(N,)`` array of
    ``bytes`` (equal images give equal digests; different ones collide with probability
    ~2^-128)."""
    images = np.ascontiguousarray(images)
    shape = repr(images.shape[1:]).encode()
    return np.asarray([hashlib.blake2b(a.tobytes() + shape, digest_size=16).digest()
                       for a in images], dtype=object)


def check_separated(source: Dataset, target_splits: Mapping[str, Dataset], *,
                    source_spec: str, target_spec: str) -> dict[str, int]:
    """Refuse (``ValueError`` naming both specs) if any image of ``source`` equals an image
    of one of ``target_splits`` (e.g. ``{"validation": ..., "test": ...}``); images of
    other sizes cannot be equal and are compared only when the shapes agree. Returns the
    number of target images checked per split."""
    src = set(image_digests(source.images)) if len(source) else set()
    checked = {}
    for name, ds in target_splits.items():
        checked[name] = len(ds)
        if not len(ds) or not src or ds.image_shape != source.image_shape:
            continue
        shared = [i for i, d in enumerate(image_digests(ds.images)) if d in src]
        if shared:
            raise ValueError(
                f"source {source_spec!r} and target {target_spec!r} are not kept apart: "
                f"{len(shared)} of the target's {len(ds)} {name} images also appear in the "
                f"source tasks (first at {name} index {shared[0]}); use another source, or "
                f"disjoint class sets (data.source_classes / data.target_classes)")
    return checked
