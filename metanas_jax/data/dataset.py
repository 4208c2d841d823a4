"""The :class:`Dataset` type every source returns, and its round trip through plain arrays.

Sources hand the cache (:mod:`metanas_jax.data.cache`) a dict of arrays rather than a
``Dataset``, so what is stored is ``np.savez``-able and needs no pickling: images, labels,
per-example ``meta.*`` arrays, and a JSON header for the class names and per-dataset meta.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np

__all__ = ["Dataset", "to_arrays", "from_arrays"]


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """Images with integer labels.

    ``images``: (N, H, W, C) uint8 with C = 1 or 3.  ``labels``: (N,) int32 in
    ``[0, num_classes)``.  ``class_names``: one name per label.  ``meta``: extra
    information; per-example entries are ``np.ndarray`` of length N (they follow
    :meth:`subset`), everything else (e.g. tuples of names) is per-dataset.
    """

    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    meta: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        images = np.asarray(self.images)
        labels = np.asarray(self.labels)
        if images.ndim != 4 or images.shape[-1] not in (1, 3):
            raise ValueError(f"Dataset.images must be (N, H, W, C) with C in (1, 3), got shape {images.shape}")
        if images.dtype != np.uint8:
            raise ValueError(f"Dataset.images must be uint8, got {images.dtype}")
        if labels.shape != (images.shape[0],):
            raise ValueError(f"Dataset.labels must have shape ({images.shape[0]},), got {labels.shape}")
        if labels.size and not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"Dataset.labels must be integers, got {labels.dtype}")
        labels = labels.astype(np.int32, copy=False)
        names = tuple(str(c) for c in self.class_names)
        if labels.size and (labels.min() < 0 or labels.max() >= len(names)):
            raise ValueError(
                f"Dataset.labels must lie in [0, {len(names)}) (one per class name), "
                f"got range [{labels.min()}, {labels.max()}]"
            )
        object.__setattr__(self, "images", images)
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "class_names", names)
        object.__setattr__(self, "meta", dict(self.meta))

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def class_counts(self) -> np.ndarray:
        """(num_classes,) number of examples of each class."""
        return np.bincount(self.labels, minlength=self.num_classes)

    def subset(self, indices) -> Dataset:
        """The examples at ``indices`` (same classes, per-example meta follows)."""
        idx = np.asarray(indices)
        n = len(self)
        meta = {
            k: (v[idx] if isinstance(v, np.ndarray) and v.ndim >= 1 and v.shape[0] == n else v)
            for k, v in self.meta.items()
        }
        return Dataset(self.images[idx], self.labels[idx], self.class_names, meta)

    def __repr__(self) -> str:
        return (
            f"Dataset(n={len(self)}, image_shape={self.image_shape}, num_classes={self.num_classes}, "
            f"meta_keys={sorted(self.meta)})"
        )


def to_arrays(ds: Dataset) -> dict[str, np.ndarray]:
    arrays = {"images": ds.images, "labels": ds.labels}
    header: dict[str, Any] = {"class_names": list(ds.class_names), "meta_names": {}}
    for k, v in ds.meta.items():
        if isinstance(v, np.ndarray):
            arrays[f"meta.{k}"] = v
        else:
            header["meta_names"][k] = list(v) if isinstance(v, (tuple, list)) else v
    arrays["header"] = np.array(json.dumps(header))
    return arrays


def from_arrays(arrays: dict[str, np.ndarray]) -> Dataset:
    header = json.loads(str(arrays["header"]))
    meta: dict[str, Any] = {}
    for k, v in arrays.items():
        if k.startswith("meta."):
            meta[k[5:]] = v
    for k, v in header["meta_names"].items():
        meta[k] = tuple(v) if isinstance(v, list) else v
    return Dataset(arrays["images"], arrays["labels"], tuple(header["class_names"]), meta)

