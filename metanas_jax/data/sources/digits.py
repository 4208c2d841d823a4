"""``digits``: scikit-learn's 8x8 handwritten digits (1,797 images, 10 classes).

Shipped inside scikit-learn, so tests, examples and quick runs have real images with no
download and no files.  ``split``: ``"train"`` / ``"test"`` (a fixed, stratified 80/20
split with seed 0) or ``"all"``.  Pixels 0..16 are scaled to 0..255.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..dataset import Dataset
from ..decode import resize_images

if TYPE_CHECKING:
    from . import Request


def load(req: Request) -> Dataset:
    if req.arg:
        raise ValueError(f"spec 'digits' takes no argument, got {req.spec.text!r}")
    return _load_digits(req.split, req.image_size)


def _load_digits(split: str, image_size) -> Dataset:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    images = np.clip(np.round(d.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)[..., None]
    labels = d.target.astype(np.int32)
    idx = np.arange(len(labels))
    tr, te = train_test_split(idx, test_size=0.2, stratify=labels, random_state=0)
    splits = {"train": np.sort(tr), "test": np.sort(te), "all": idx}
    if split not in splits:
        raise ValueError(f"unknown split {split!r} for 'digits'; choose one of {sorted(splits)}")
    sel = splits[split]
    images = resize_images(images[sel], image_size)
    return Dataset(images, labels[sel], tuple(str(c) for c in d.target_names), {})

