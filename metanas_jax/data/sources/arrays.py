"""``idx:PATH`` and ``npz:PATH``: images that are already arrays.

``idx:`` is a folder of MNIST-family IDX files (``train-images-idx3-ubyte``,
``train-labels-idx1-ubyte``, ``t10k-...``, each may be ``.gz``); splits ``"train"``,
``"test"`` (the ``t10k-`` files) or ``"all"``; class names are the label values.
``npz:`` is a NumPy ``.npz`` of ``x_train`` / ``y_train`` / ``x_test`` / ``y_test`` (or
``train_images`` / ``train_labels`` ...; any split name), NHW or NHWC, uint8 or float;
``images`` / ``labels`` without a split take ``?test_fraction=F&seed=S``; class names
from an optional ``class_names`` array.  Parsing lives in :mod:`metanas_jax.data.formats`.

Reading arrays is as fast as reading a cache entry, so they are cached only when
``image_size`` asks for a resize.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .. import cache as _cache
from .. import formats as _formats
from ..archive import check_exists
from ..carve import Carve
from ..dataset import Dataset, from_arrays, to_arrays
from ..decode import as_hw, resize_images

if TYPE_CHECKING:
    from . import Request


def load(req: Request) -> Dataset:
    return load_arrays(req.kind, req.arg, req.split, req.image_size, req.cache_dir, req.carve)


def load_arrays(kind: str, arg: str, split: str, image_size, cache_dir, carve: Carve | None) -> Dataset:
    """``idx:`` and ``npz:`` (:mod:`metanas_jax.data.formats`); cached only when resized."""
    what = {"idx": "folder of IDX files", "npz": ".npz file"}[kind]
    if not arg:
        raise ValueError(f"spec '{kind}:' needs a path to a {what}, e.g. '{kind}:/data/mnist"
                         + (".npz'" if kind == "npz" else "'"))
    path = check_exists(Path(arg).expanduser(), what)
    files, read = _formats.open_arrays(kind, path, split, carve, f"{kind}:{arg}")

    def build() -> dict[str, np.ndarray]:
        images, labels, names = read()
        return to_arrays(Dataset(resize_images(images, image_size), labels, names, {}))

    if image_size is None:
        return from_arrays(build())
    key = dict(source=kind, path=str(path.resolve()), split=split, fingerprint=_cache.fingerprint(files),
               image_size=as_hw(image_size), carve=carve.key() if carve else None)
    return from_arrays(_cache.cached(cache_dir, f"{kind}-{path.name}-{split}", key, build))

