"""Dataset sources and :func:`load`, the one entry point for every kind of image data.

Each source is a module with a ``load(request)`` function, registered once in
:data:`SOURCES` under its spec kind, so :func:`load` parses and checks a spec in one place
and a new source is one module and one line here.  The specs (details in each module):

``digits``           scikit-learn's 8x8 digits, no files (:mod:`.digits`)
``omniglot:PATH``    the official Omniglot zips or folders (:mod:`.omniglot`)
``folder:PATH``      ``<split>/<class>/*.png`` folders or tars (:mod:`.folder`)
``idx:PATH``         MNIST-family IDX files (:mod:`.arrays`)
``npz:PATH``         NumPy arrays in a ``.npz`` (:mod:`.arrays`)
``tfds:NAME``        TensorFlow Datasets builders (:mod:`.tfds`)

Options follow the path after a ``?`` (:mod:`metanas_jax.data.specs`), so one string, such
as the config key ``data.target``, carries the whole spec.

Every source returns a :class:`~metanas_jax.data.dataset.Dataset` of uint8 NHWC images
and int32 labels.  Decoded arrays are cached on disk (see :mod:`metanas_jax.data.cache`);
``cache_dir=False`` disables that.  ``image_size`` resizes every image once at load time
(Pillow, Lanczos) and is part of the cache key.  IDX and ``.npz`` data are read directly
(no cache) unless ``image_size`` asks for a resize.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path

from .. import cache as _cache
from ..carve import CARVE_OPTIONS, Carve
from ..dataset import Dataset
from ..decode import decode_images, resize_images
from ..specs import Spec, check_options, parse_spec
from . import arrays, digits, folder, omniglot, tfds
from .tfds import TFDS_NAMES

__all__ = ["Dataset", "load", "KNOWN_SPECS", "TFDS_NAMES", "SOURCES", "Source", "Request",
           "decode_images", "resize_images"]


@dataclasses.dataclass(frozen=True)
class Request:
    """One :func:`load` call, checked: what a source's ``load`` gets."""

    spec: Spec
    split: str
    image_size: int | tuple[int, int] | None
    cache_dir: Path | None  # resolved; None = no caching
    carve: Carve | None  # the test split to carve (spec options), if any
    data_dir: str | os.PathLike | None = None
    manual_dir: str | os.PathLike | None = None
    download: bool = True

    @property
    def kind(self) -> str:
        return self.spec.kind

    @property
    def arg(self) -> str:
        return self.spec.arg


@dataclasses.dataclass(frozen=True)
class Source:
    """A registered source: its loader, how its spec reads in messages, and its options."""

    load: Callable[[Request], Dataset]
    usage: str
    options: tuple[str, ...] = ()


SOURCES: dict[str, Source] = {
    "digits": Source(digits.load, "digits"),
    "omniglot": Source(omniglot.load, "omniglot:DIR_OR_ZIPS"),
    "folder": Source(folder.load, "folder:ROOT_OR_TAR", CARVE_OPTIONS),
    "idx": Source(arrays.load, "idx:DIR", CARVE_OPTIONS),
    "npz": Source(arrays.load, "npz:FILE", CARVE_OPTIONS),
    "tfds": Source(tfds.load, "tfds:NAME", tfds.OPTIONS),
}
KNOWN_SPECS = tuple(s.usage for s in SOURCES.values())


def load(
    spec: str,
    split: str = "train",
    cache_dir: str | os.PathLike | bool | None = None,
    *,
    data_dir: str | os.PathLike | None = None,
    manual_dir: str | os.PathLike | None = None,
    image_size: int | tuple[int, int] | None = None,
    download: bool = True,
) -> Dataset:
    """Load a dataset by spec; see the source modules for the specs and their splits.

    Args:
      spec: ``"digits"``, ``"omniglot:PATH"``, ``"folder:PATH"``, ``"idx:PATH"``,
        ``"npz:PATH"`` or ``"tfds:NAME"``, optionally with options after a ``?``:
        ``test_fraction=`` / ``seed=`` (``folder:``, ``idx:``, ``npz:`` data without a split)
        or ``data_dir=`` / ``manual_dir=`` (``tfds:``).
      split: which split (source specific; ``"all"`` merges every split).
      cache_dir: cache folder; ``None`` -> ``$METANAS_CACHE`` or ``~/.cache/metanas_jax``;
        ``False`` -> no caching.
      data_dir, manual_dir, download: ``tfds:`` only (TFDS's data folder, the folder of
        already downloaded archives, and whether to download/prepare when missing); the
        first two may instead be spec options.
      image_size: resize every image to this (int or ``(h, w)``) at load time.

    Raises:
      ValueError: unknown spec or split, bad layout, undecodable image, empty class.
      FileNotFoundError: a path that does not exist.
      ImportError: a TFDS step that needs TensorFlow when it is not installed.
    """
    if not isinstance(spec, str):
        raise ValueError(f"dataset spec must be a string, got {spec!r}; known specs: {', '.join(KNOWN_SPECS)}")
    parsed = parse_spec(spec)
    source = SOURCES.get(parsed.kind)
    if source is None:
        raise ValueError(
            f"unknown dataset spec {spec!r}; known specs: {', '.join(KNOWN_SPECS)} "
            f"(tfds names include {', '.join(TFDS_NAMES)})"
        )
    if (data_dir is not None and "data_dir" not in source.options) or \
            (manual_dir is not None and "manual_dir" not in source.options):
        raise ValueError(f"data_dir= and manual_dir= only apply to 'tfds:' specs, not {spec!r}")
    check_options(parsed, source.options)
    carve = Carve.from_spec(parsed)
    request = Request(parsed, split, image_size, _cache.resolve_cache_dir(cache_dir), carve,
                      data_dir, manual_dir, download)
    return source.load(request)
