"""Class splits: disjoint train / validation / test pools of whole classes.

Few-shot meta-learning tests on classes never seen in training, so a dataset is split by
class, not by example: :func:`omniglot_splits` (the Vinyals et al. protocol, with
rotation-augmented classes) and :func:`class_split` (generic fractions of the classes).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .dataset import Dataset
from .tasks import ClassPool, group_by_class, resize_grouped

__all__ = ["omniglot_splits", "class_split"]


def omniglot_splits(
    ds: Dataset,
    image_size: int | None = 28,
    n_train_chars: int = 1200,
    rotations: bool = True,
    seed: int | None = 0,
    *,
    n_val_chars: int = 100,
    disjoint_val: bool = False,
    test_rotations: bool = False,
    protocol: str = "random",
) -> tuple[ClassPool, ClassPool, ClassPool]:
    """The standard Omniglot few-shot protocol (Vinyals et al. 2016).

    ``ds`` is Omniglot with both parts merged (``load("omniglot:...", split="all")``,
    1,623 characters x 20 images).  Characters are shuffled with ``seed`` (``None`` keeps
    the archive order: background alphabets, then evaluation ones); the first
    ``n_train_chars`` (1,200) are for meta-training, the remaining 423 for meta-testing.
    Images are resized to ``image_size`` (28).  With ``rotations`` each training character
    is augmented by 90/180/270-degree rotations into new classes (4,800 classes; names
    ``"<char>/rot90"`` etc.).  ``test_rotations`` does the same for the test pool
    (default off: 423 classes).

    Validation pool: the last ``n_val_chars`` (100) meta-training characters, unrotated.
    By default (``disjoint_val=False``) they stay in the training pool, so validation
    tracks meta-training fit rather than generalisation and the training pool keeps the
    full 4,800 classes; ``disjoint_val=True`` removes them from training instead.
    ``n_val_chars=0`` gives an empty but valid pool (0 classes; sampling from it raises).

    ``protocol="lake"`` (Lake et al. 2015) splits by alphabet instead: the 964 characters of
    the background alphabets are for meta-training, the 659 of the evaluation alphabets
    for meta-testing, so a model is tested on alphabets it never saw (``n_train_chars``
    and ``seed`` are not used; the validation pool is the last ``n_val_chars`` background
    characters). It needs the ``part`` of every image (``meta``, as ``omniglot:`` loads it).

    Returns ``(train_pool, val_pool, test_pool)``.
    """
    n_chars = ds.num_classes
    if protocol not in ("random", "lake"):
        raise ValueError(f"protocol must be 'random' or 'lake', got {protocol!r}")
    if protocol == "lake":
        if "part" not in ds.meta or "background" not in tuple(ds.meta.get("part_names", ())):
            raise ValueError("protocol='lake' needs Omniglot with its background/evaluation part of "
                             "every image (load('omniglot:PATH', split='all'))")
        bg = tuple(ds.meta["part_names"]).index("background")
        first = np.unique(np.asarray(ds.labels), return_index=True)[1]  # an image of each class
        is_bg = np.asarray(ds.meta["part"])[first] == bg
        n_train_chars, seed = int(is_bg.sum()), None
        order = np.concatenate([np.flatnonzero(is_bg), np.flatnonzero(~is_bg)])
    if not 0 < n_train_chars < n_chars:
        raise ValueError(
            f"n_train_chars={n_train_chars} must be between 1 and the number of characters minus 1 "
            f"({n_chars} in this dataset; load Omniglot with split='all' for the standard 1,623)"
        )
    if not 0 <= n_val_chars <= n_train_chars - (1 if disjoint_val else 0):
        raise ValueError(f"n_val_chars={n_val_chars} must be between 0 and n_train_chars={n_train_chars}")
    u8, names = group_by_class(ds)
    u8 = resize_grouped(u8, image_size)
    if (rotations or test_rotations) and u8.shape[2] != u8.shape[3]:
        raise ValueError(f"rotations need square images, got {u8.shape[2]}x{u8.shape[3]}")
    if protocol == "random":
        order = np.arange(n_chars) if seed is None else np.random.default_rng(seed).permutation(n_chars)
    train_ids, test_ids = order[:n_train_chars], order[n_train_chars:]
    val_ids = train_ids[len(train_ids) - n_val_chars:] if n_val_chars else train_ids[:0]
    if disjoint_val and n_val_chars:
        train_ids = train_ids[: len(train_ids) - n_val_chars]

    def build(ids, rotate: bool) -> ClassPool:
        imgs = u8[ids]
        nm = [names[i] for i in ids]
        if rotate:
            imgs = np.concatenate([np.rot90(imgs, k, axes=(2, 3)) for k in range(4)], axis=0)
            nm = [f"{n}/rot{90 * k}" for k in range(4) for n in nm]
        return ClassPool.from_uint8(np.ascontiguousarray(imgs), nm)

    return build(train_ids, rotations), build(val_ids, False), build(test_ids, test_rotations)


def _split_counts(fractions: Sequence[float], n: int) -> tuple[int, int, int]:
    fr = tuple(float(f) for f in fractions)
    if len(fr) != 3 or min(fr) < 0 or abs(sum(fr) - 1.0) > 1e-6:
        raise ValueError(f"fractions must be three non-negative numbers summing to 1, got {tuple(fractions)}")
    n_tr = int(round(fr[0] * n))
    n_va = int(round(fr[1] * n))
    n_va = min(n_va, n - n_tr)
    n_te = n - n_tr - n_va
    for name, f, k in zip(("train", "val", "test"), fr, (n_tr, n_va, n_te)):
        if f > 0 and k == 0:
            raise ValueError(f"fractions={tuple(fractions)} give no {name} classes out of {n} classes")
    return n_tr, n_va, n_te


def class_split(
    ds: Dataset,
    fractions: Sequence[float] = (0.64, 0.16, 0.20),
    seed: int = 0,
    image_size: int | tuple[int, int] | None = None,
    per_class: int | str | None = "min",
) -> tuple[ClassPool, ClassPool, ClassPool]:
    """Split ``ds``'s classes at random (``seed``) into train / val / test pools with the
    given fractions of classes (rounded; a non-zero fraction that rounds to no class is an
    error; a zero fraction gives an empty pool).

    ``per_class="min"`` (default) truncates every class to the smallest class's count so
    the pools have fixed shapes (e.g. scikit-learn digits: 174 per class); ``None`` demands
    equal counts, an int truncates to that many (see :meth:`ClassPool.from_dataset`).
    """
    n_tr, n_va, _ = _split_counts(fractions, ds.num_classes)
    u8, names = group_by_class(ds, per_class=per_class)
    u8 = resize_grouped(u8, image_size)
    order = np.random.default_rng(seed).permutation(ds.num_classes)
    parts = (order[:n_tr], order[n_tr : n_tr + n_va], order[n_tr + n_va :])
    return tuple(ClassPool.from_uint8(u8[ids], [names[i] for i in ids]) for ids in parts)  # type: ignore[return-value]
