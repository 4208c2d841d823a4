"""Dataset sources: one entry point, :func:`load`, for every kind of image data.

Specs (``load(spec, split=...)``):

``digits``
    scikit-learn's 8x8 handwritten digits (1,797 images, 10 classes), shipped inside
    scikit-learn: no download, no files.  ``split``: ``"train"`` / ``"test"`` (a fixed,
    stratified 80/20 split with seed 0) or ``"all"``.  Pixels 0..16 are scaled to 0..255.
``omniglot:PATH``
    The official Omniglot archives ``images_background.zip`` / ``images_evaluation.zip``
    (layout ``<part>/<Alphabet>/characterNN/*.png``).  ``PATH`` is a folder holding the
    zips and/or the unpacked ``images_background/`` / ``images_evaluation/`` folders, or one
    zip / unpacked part folder, or several such paths joined by commas.  ``split``:
    ``"background"`` (alias ``"train"``), ``"evaluation"`` (alias ``"test"``) or ``"all"``
    (both parts merged, background first).  Images stay 105x105x1 uint8 (black strokes,
    0, on white, 255); one class per character, class names ``"Alphabet/characterNN"``;
    ``meta`` holds ``alphabet`` / ``character`` / ``part`` ids per image and
    ``alphabet_names`` / ``part_names``.
``folder:PATH``
    An image folder ``PATH/<split>/<class>/*.{png,jpg,jpeg}``, either unpacked or a
    ``.tar`` (optionally compressed) with that layout (a single wrapping top-level folder
    in the tar is allowed).  ``split`` is the split subfolder's name, or ``"all"`` for
    every split merged.  A folder without split subfolders (``PATH/<class>/*.png``) is
    read with ``split="all"``, or with ``"train"`` / ``"test"`` carved by the options
    ``?test_fraction=F&seed=S`` (see :mod:`metanas_jax.data.carve`).  A folder holding IDX
    files (below) is read as ``idx:PATH``.  Classes are sorted by name.  Hidden files are
    skipped; other non-image files inside a class folder are an error.  Grayscale images give C=1, colour
    ones C=3 (a mix is converted to RGB); all images must share one size unless
    ``image_size`` is given.
``idx:PATH``
    A folder of MNIST-family IDX files: ``train-images-idx3-ubyte``,
    ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``
    (each may be ``.gz``); splits ``"train"`` (the ``train-`` files), ``"test"``
    (``t10k-``) or ``"all"``.  Class names are the label values (``"0"`` ...).  See
    :mod:`metanas_jax.data.formats`.
``npz:PATH``
    A NumPy ``.npz`` of ``x_train`` / ``y_train`` / ``x_test`` / ``y_test`` (or
    ``train_images`` / ``train_labels`` ...; any split name), NHW or NHWC, uint8 or float;
    ``images`` / ``labels`` without a split take ``?test_fraction=F&seed=S`` like a folder.
    Class names from an optional ``class_names`` array, else the label values.
``tfds:NAME``
    A TensorFlow Datasets builder (``mnist``, ``cifar10``, ``cifar100``, ``omniglot``,
    ``imagenet_resized/32x32``, ...) with ``data_dir=`` and ``manual_dir=`` (arguments of
    :func:`load`, or spec options: ``tfds:mnist?data_dir=/data/tfds&manual_dir=/data/dl``).
    Data already prepared in ``array_record`` format is read without TensorFlow; preparing (downloading
    and encoding) most image builders needs TensorFlow (``pip install tensorflow``, the
    ``metanas-jax[tensorflow]`` extra) and is then done in ``array_record`` format so later
    reads don't need it.  ``split`` is a TFDS split name or ``"all"``.

Options follow the path after a ``?`` (:mod:`metanas_jax.data.specs`), so one string, such
as the config key ``data.target``, carries the whole spec.

Every source returns a :class:`Dataset` of uint8 NHWC images and int32 labels.  Decoded
arrays are cached on disk (see :mod:`metanas_jax.data.cache`); ``cache_dir=False``
disables that.  ``image_size`` resizes every image once at load time (Pillow, Lanczos) and
is part of the cache key.  IDX and ``.npz`` data are read directly (no cache) unless
``image_size`` asks for a resize.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import dataclasses
import io
import json
import os
import re
import tarfile
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from . import cache as _cache
from . import formats as _formats
from .carve import CARVE_OPTIONS, Carve, carve_indices, resolve_split
from .specs import check_options, parse_spec

__all__ = ["Dataset", "load", "KNOWN_SPECS", "TFDS_NAMES"]

KNOWN_SPECS = ("digits", "omniglot:DIR_OR_ZIPS", "folder:ROOT_OR_TAR", "idx:DIR", "npz:FILE", "tfds:NAME")
TFDS_NAMES = ("omniglot", "cifar10", "cifar100", "imagenet_resized/32x32", "mnist")
IMAGE_EXTS = (".png", ".jpg", ".jpeg")
_JUNK_FILES = {"thumbs.db", "desktop.ini"}
_SPEC_OPTIONS = {"digits": (), "omniglot": (), "folder": CARVE_OPTIONS, "idx": CARVE_OPTIONS,
                 "npz": CARVE_OPTIONS, "tfds": ("data_dir", "manual_dir")}


# --------------------------------------------------------------------------- Dataset


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


def _to_arrays(ds: Dataset) -> dict[str, np.ndarray]:
    arrays = {"images": ds.images, "labels": ds.labels}
    header: dict[str, Any] = {"class_names": list(ds.class_names), "meta_names": {}}
    for k, v in ds.meta.items():
        if isinstance(v, np.ndarray):
            arrays[f"meta.{k}"] = v
        else:
            header["meta_names"][k] = list(v) if isinstance(v, (tuple, list)) else v
    arrays["header"] = np.array(json.dumps(header))
    return arrays


def _from_arrays(arrays: dict[str, np.ndarray]) -> Dataset:
    header = json.loads(str(arrays["header"]))
    meta: dict[str, Any] = {}
    for k, v in arrays.items():
        if k.startswith("meta."):
            meta[k[5:]] = v
    for k, v in header["meta_names"].items():
        meta[k] = tuple(v) if isinstance(v, list) else v
    return Dataset(arrays["images"], arrays["labels"], tuple(header["class_names"]), meta)


# --------------------------------------------------------------------------- decoding


def _as_hw(image_size) -> tuple[int, int] | None:
    if image_size is None:
        return None
    if isinstance(image_size, (int, np.integer)):
        hw = (int(image_size), int(image_size))
    else:
        hw = tuple(int(s) for s in image_size)
        if len(hw) != 2:
            raise ValueError(f"image_size must be an int or (height, width), got {image_size!r}")
    if min(hw) <= 0:
        raise ValueError(f"image_size must be positive, got {image_size!r}")
    return hw


def _decode_one(data: bytes, where: str, hw: tuple[int, int] | None) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    ext = where.rpartition(".")[2].lower()
    hint = {"png": ["PNG"], "jpg": ["JPEG"], "jpeg": ["JPEG"]}.get(ext)
    try:
        try:
            im = Image.open(io.BytesIO(data), formats=hint)
        except UnidentifiedImageError:
            if hint is None:
                raise
            im = Image.open(io.BytesIO(data))  # content does not match the extension
        with im:
            im.load()
            if im.mode in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"):
                im = im.convert("L")
            elif im.mode != "RGB":
                im = im.convert("RGB")
            if hw is not None and (im.height, im.width) != hw:
                im = im.resize((hw[1], hw[0]), Image.Resampling.LANCZOS)
            return np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"cannot decode image {where}: {e}") from e


def _decode_chunk(items: list[tuple[str, bytes]], hw) -> tuple[np.ndarray, str]:
    """Decode and stack a chunk; returns (N, H, W, C) and the first item's name."""
    arrays = [_decode_one(data, where, hw) for where, data in items]
    first_shape = arrays[0].shape[:2]
    for (where, _), a in zip(items, arrays):
        if a.shape[:2] != first_shape:
            raise ValueError(
                f"image {where} is {a.shape[0]}x{a.shape[1]} (HxW) but {items[0][0]} is "
                f"{first_shape[0]}x{first_shape[1]}; pass image_size= to load() to resize all images"
            )
    if any(a.ndim == 3 for a in arrays):
        arrays = [a if a.ndim == 3 else np.repeat(a[..., None], 3, axis=-1) for a in arrays]
        return np.stack(arrays), items[0][0]
    return np.stack(arrays)[..., None], items[0][0]


def _num_workers() -> int:
    env = os.environ.get("METANAS_DATA_WORKERS")
    if env:
        return max(1, int(env))
    return max(1, min(8, os.cpu_count() or 1))


def decode_images(
    items: Iterable[tuple[str, bytes]],
    image_size=None,
    chunk: int = 512,
    workers: int | None = None,
) -> np.ndarray:
    """Decode ``(name, encoded bytes)`` pairs into one (N, H, W, C) uint8 array, in order.

    Chunks are decoded by a thread pool (Pillow releases the GIL while decoding and
    resizing); at most ``2 * workers`` chunks are in flight so memory stays bounded.
    Raises ``ValueError`` naming the file for an undecodable image or a size mismatch.
    """
    hw = _as_hw(image_size)
    workers = workers or _num_workers()
    chunks: list[tuple[np.ndarray, str]] = []

    def batches() -> Iterator[list[tuple[str, bytes]]]:
        buf = []
        for item in items:
            buf.append(item)
            if len(buf) == chunk:
                yield buf
                buf = []
        if buf:
            yield buf

    if workers <= 1:
        chunks = [_decode_chunk(b, hw) for b in batches()]
    else:
        with cf.ThreadPoolExecutor(workers) as pool:
            pending: collections.deque = collections.deque()
            for b in batches():
                pending.append(pool.submit(_decode_chunk, b, hw))
                while len(pending) > 2 * workers:
                    chunks.append(pending.popleft().result())
            while pending:
                chunks.append(pending.popleft().result())
    if not chunks:
        raise ValueError("no images to decode")
    ref, ref_name = chunks[0]
    for arr, name in chunks[1:]:
        if arr.shape[1:3] != ref.shape[1:3]:
            raise ValueError(
                f"image {name} is {arr.shape[1]}x{arr.shape[2]} (HxW) but {ref_name} is "
                f"{ref.shape[1]}x{ref.shape[2]}; pass image_size= to load() to resize all images"
            )
    if any(a.shape[-1] == 3 for a, _ in chunks):
        arrays = [a if a.shape[-1] == 3 else np.repeat(a, 3, axis=-1) for a, _ in chunks]
    else:
        arrays = [a for a, _ in chunks]
    return np.concatenate(arrays, axis=0)


def resize_images(images: np.ndarray, image_size, workers: int | None = None) -> np.ndarray:
    """Resize (N, H, W, C) uint8 images with Pillow's Lanczos filter (thread pool)."""
    from PIL import Image

    hw = _as_hw(image_size)
    images = np.asarray(images)
    if hw is None or tuple(images.shape[1:3]) == hw:
        return images
    if images.dtype != np.uint8:
        raise ValueError(f"resize_images expects uint8 images, got {images.dtype}")
    n, c = images.shape[0], images.shape[-1]
    out = np.empty((n, hw[0], hw[1], c), np.uint8)

    def work(lo: int, hi: int) -> None:
        for i in range(lo, hi):
            src = images[i, ..., 0] if c == 1 else images[i]
            r = np.asarray(Image.fromarray(src).resize((hw[1], hw[0]), Image.Resampling.LANCZOS))
            out[i] = r[..., None] if c == 1 else r

    step = 1024
    workers = workers or _num_workers()
    if workers <= 1 or n <= step:
        work(0, n)
    else:
        with cf.ThreadPoolExecutor(workers) as pool:
            list(pool.map(lambda lo: work(lo, min(n, lo + step)), range(0, n, step)))
    return out


# --------------------------------------------------------------------------- file trees


def _is_hidden(parts: Sequence[str]) -> bool:
    return any(p.startswith(".") or p == "__MACOSX" for p in parts)


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTS)


def _parse_pax(block: bytes) -> dict[str, str] | None:
    """Records ``"<len> key=value\\n"`` of a PAX extended header; None if malformed."""
    out, i = {}, 0
    while i < len(block) and block[i:i + 1] not in (b"\0", b""):
        sp = block.find(b" ", i)
        if sp < 0:
            return None
        n = int(block[i:sp])
        rec = block[sp + 1:i + n]
        if n <= 0 or not rec.endswith(b"\n") or b"=" not in rec:
            return None
        k, v = rec[:-1].split(b"=", 1)
        out[k.decode("utf-8", "surrogateescape")] = v.decode("utf-8", "surrogateescape")
        i += n
    return out


def _fast_tar_index(path: Path) -> list[tuple[str, str, int, int]] | None:
    """(name, "file"/"dir"/"other", data offset, size) of every member of an uncompressed
    ustar / GNU / PAX tar, from a scan of its headers (several times faster than
    ``tarfile`` on archives of many small files).  PAX ``path``/``size`` records and GNU
    long names are honoured; ``None`` means "use tarfile instead" (compressed or pre-POSIX
    archive, sparse files, global PAX headers, base-256 sizes, bad checksum, ...)."""
    out = []
    try:
        with open(path, "rb") as f:
            head = f.read(512)
            if len(head) < 512 or head[257:262] != b"ustar":
                return None  # compressed, or pre-POSIX tar
            pos = 0
            override: dict[str, str] = {}
            while True:
                f.seek(pos)
                hdr = f.read(512)
                if len(hdr) < 512:
                    return None
                if hdr == b"\0" * 512:
                    break
                if hdr[257:262] != b"ustar":
                    return None
                chk = hdr[148:156].split(b"\0", 1)[0].strip()
                if not chk or int(chk, 8) != sum(hdr[:148]) + 256 + sum(hdr[156:]):
                    return None
                if hdr[124] & 0x80:
                    return None  # base-256 size
                size = int(hdr[124:136].split(b"\0", 1)[0].strip() or b"0", 8)
                typ = hdr[156:157]
                data_pos = pos + 512
                pos = data_pos + (size + 511) // 512 * 512
                if typ in (b"x", b"L"):
                    f.seek(data_pos)
                    block = f.read(size)
                    if len(block) != size:
                        return None
                    if typ == b"L":
                        override["path"] = block.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
                    else:
                        pax = _parse_pax(block)
                        if pax is None or any(k.startswith("GNU.sparse") for k in pax):
                            return None
                        override.update({k: v for k, v in pax.items() if k in ("path", "size")})
                    continue
                if typ not in (b"0", b"\0", b"5", b"1", b"2", b"3", b"4", b"6", b"7"):
                    return None  # global PAX ("g"), GNU long link ("K"), sparse ("S"), ...
                name_b = hdr[0:100].split(b"\0", 1)[0]
                prefix = hdr[345:500].split(b"\0", 1)[0]
                if prefix:
                    name_b = prefix + b"/" + name_b
                name = override.get("path", name_b.decode("utf-8", "surrogateescape"))
                if "size" in override:
                    size = int(override["size"])
                    pos = data_pos + (size + 511) // 512 * 512
                override = {}
                kind = "file" if typ in (b"0", b"\0", b"7") else "dir" if typ == b"5" else "other"
                if typ in (b"1", b"2", b"3", b"4", b"6"):
                    size = 0
                out.append((name, kind, data_pos, size))
    except (OSError, ValueError):
        return None
    return out


class _Tree:
    """A read-only file tree: an unpacked folder, a tar or a zip.

    ``files``: relative POSIX paths of regular files; ``dirs``: relative folder paths
    (explicit and implied).  ``read_many`` yields ``(display name, bytes)`` in the order
    given (a tar is read in a single sequential pass).
    """

    def __init__(self, path: Path):
        self.path = path
        self.dirs: set[str] = set()
        self.files: list[str] = []
        if path.is_dir():
            self.kind = "dir"
            for root, dirs, files in os.walk(path):
                rel_root = os.path.relpath(root, path)
                rel_root = "" if rel_root == "." else PurePosixPath(Path(rel_root)).as_posix()
                dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "__MACOSX")
                for d in dirs:
                    self.dirs.add(f"{rel_root}/{d}" if rel_root else d)
                for f in sorted(files):
                    self.files.append(f"{rel_root}/{f}" if rel_root else f)
        elif tarfile.is_tarfile(path):
            self.kind = "tar"
            # Uncompressed tars are indexed by a fast header scan and read by offset;
            # compressed ones (or unusual headers) go through tarfile.
            self._offsets: dict[str, tuple[int, int]] | None = None
            self._members: dict[str, tarfile.TarInfo] = {}
            index = _fast_tar_index(path)
            if index is not None:
                self._offsets = {}
                for name, kind, offset, size in index:
                    name = self._norm(name)
                    if not name or name == ".":
                        continue
                    if kind == "dir":
                        self.dirs.add(name)
                    elif kind == "file":
                        self.files.append(name)
                        self._offsets[name] = (offset, size)
            else:
                try:
                    with tarfile.open(path, "r:*") as tf:
                        for m in tf:
                            name = self._norm(m.name)
                            if not name or name == ".":
                                continue
                            if m.isdir():
                                self.dirs.add(name)
                            elif m.isfile():
                                self.files.append(name)
                                self._members[name] = m
                except (tarfile.TarError, OSError, EOFError) as e:
                    raise ValueError(f"cannot read tar archive {path}: {e}") from e
        elif zipfile.is_zipfile(path):
            self.kind = "zip"
            try:
                with zipfile.ZipFile(path) as zf:
                    for info in zf.infolist():
                        name = info.filename.rstrip("/")
                        if info.is_dir():
                            self.dirs.add(name)
                        else:
                            self.files.append(name)
            except (zipfile.BadZipFile, OSError) as e:
                raise ValueError(f"cannot read zip archive {path}: {e}") from e
        else:
            raise ValueError(f"{path} is neither a folder nor a readable .tar or .zip archive")
        done: set[str] = set()
        for f in self.files:  # implied folders
            d = f.rpartition("/")[0]
            while d and d not in done:
                done.add(d)
                self.dirs.add(d)
                d = d.rpartition("/")[0]

    def display(self, rel: str) -> str:
        if self.kind == "dir":
            return str(self.path / rel)
        return f"{self.path}:{rel}"

    def read_many(self, rels: Sequence[str]) -> Iterator[tuple[str, bytes]]:
        if self.kind == "dir":
            for rel in rels:
                p = self.path / rel
                try:
                    yield str(p), p.read_bytes()
                except OSError as e:
                    raise ValueError(f"cannot read {p}: {e}") from e
        elif self.kind == "tar" and self._offsets is not None:
            with open(self.path, "rb") as f:
                for rel in rels:
                    offset, size = self._offsets[rel]
                    f.seek(offset)
                    data = f.read(size)
                    if len(data) != size:
                        raise ValueError(f"cannot read {self.display(rel)}: the tar archive is truncated")
                    yield self.display(rel), data
        elif self.kind == "tar":
            # One sequential pass in archive order; items are re-emitted in the requested
            # order (buffering only those that come early in the archive).
            got: dict[str, bytes] = {}
            try:
                with tarfile.open(self.path, "r:*") as tf:
                    members = sorted((self._members[r] for r in set(rels)), key=lambda m: m.offset_data)
                    next_i = 0
                    for m in members:
                        name = self._norm(m.name)
                        f = tf.extractfile(m)
                        if f is None:
                            raise ValueError(f"cannot read {self.display(name)}")
                        got[name] = f.read()
                        while next_i < len(rels) and rels[next_i] in got:
                            r = rels[next_i]
                            yield self.display(r), got.pop(r)
                            next_i += 1
            except (tarfile.TarError, OSError, EOFError) as e:
                raise ValueError(f"cannot read tar archive {self.path}: {e}") from e
        else:
            with zipfile.ZipFile(self.path) as zf:
                for rel in rels:
                    try:
                        yield self.display(rel), zf.read(rel)
                    except (zipfile.BadZipFile, OSError, KeyError) as e:
                        raise ValueError(f"cannot read {self.display(rel)}: {e}") from e

    @staticmethod
    def _norm(name: str) -> str:
        while name.startswith("./"):
            name = name[2:]
        return name.rstrip("/")


def _check_exists(path: Path, what: str) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"{what} not found: {path}")
    return path


# --------------------------------------------------------------------------- sources


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


def _mode_depth(parts_list: list[list[str]]) -> int:
    """The most common path depth (ties -> the larger)."""
    counts = collections.Counter(len(p) for p in parts_list)
    return max(counts, key=lambda d: (counts[d], d))


def _wrapped(parts_list: list[list[str]]) -> bool:
    """All paths share one top folder that wraps the expected 3-level layout."""
    return (
        _mode_depth(parts_list) >= 4
        and min(len(p) for p in parts_list) >= 2
        and len({p[0] for p in parts_list}) == 1
    )


def _folder_select(tree: _Tree, split: str, carve: Carve | None = None,
                   spec: str = "folder:PATH") -> tuple[tuple[str, ...], list[str], np.ndarray]:
    """Pick the image files of ``split`` from an image-folder tree (``carve``: the test
    split carved from a folder without split folders; ``spec`` for error messages).

    Returns (class names, relative file paths, labels)."""
    root = tree.path
    visible = [f for f in tree.files if not _is_hidden(f.split("/"))]
    images = [f for f in visible if _is_image(f)]
    if not images:
        raise ValueError(
            f"no {'/'.join(IMAGE_EXTS)} images found in {root}; expected the layout "
            f"{root}/<split>/<class>/<image>.png"
        )
    # Strip wrapping folders (e.g. a tar of 'cifar10/train/<class>/x.png').
    prefix: list[str] = []
    parts_list = [f.split("/") for f in images]
    while _wrapped(parts_list):
        prefix.append(parts_list[0][0])
        parts_list = [p[1:] for p in parts_list]
    depths = collections.Counter(len(p) for p in parts_list)
    pre = "/".join(prefix) + "/" if prefix else ""
    if len(depths) != 1 or next(iter(depths)) not in (2, 3):
        examples = {}
        for p in parts_list:
            examples.setdefault(len(p), pre + "/".join(p))
        shown = "; ".join(f"{tree.display(v)}" for _, v in sorted(examples.items()))
        raise ValueError(
            f"wrong folder layout in {root}: expected every image at <split>/<class>/<image> "
            f"(or <class>/<image>), found {shown}"
        )
    depth = next(iter(depths))
    available = sorted({p[0] for p in parts_list}) if depth == 3 else [""]
    chosen, part = resolve_split(available, split, carve, str(root), spec, "no split folders, layout <class>/<image>")
    if depth == 3:
        sel = [p for p in parts_list if p[0] in chosen]
        class_of = [p[1] for p in sel]
        class_dirs = {
            d[len(pre):]
            for d in tree.dirs
            if d.startswith(pre) and d[len(pre):].count("/") == 1 and d[len(pre):].split("/")[0] in chosen
        }
    else:
        sel = parts_list
        class_of = [p[0] for p in sel]
        class_dirs = {d[len(pre):] for d in tree.dirs if d.startswith(pre) and "/" not in d[len(pre):]}
    class_names = tuple(sorted(set(class_of)))
    # Empty classes: a class folder without any image.
    with_images = {"/".join(p[:-1]) for p in sel}
    empty = sorted(d for d in class_dirs if d not in with_images and not _is_hidden(d.split("/")))
    if empty:
        raise ValueError(
            f"empty class folder {tree.display(pre + empty[0])}: it contains no {'/'.join(IMAGE_EXTS)} images"
        )
    # Non-image files inside class folders.
    class_dir_full = {pre + d for d in with_images}
    for f in visible:
        if not _is_image(f) and str(PurePosixPath(f).parent) in class_dir_full:
            if PurePosixPath(f).name.lower() in _JUNK_FILES:
                continue
            raise ValueError(
                f"unsupported file {tree.display(f)} in a class folder; expected only {'/'.join(IMAGE_EXTS)} images"
            )
    index = {c: i for i, c in enumerate(class_names)}
    order = sorted(range(len(sel)), key=lambda i: (index[class_of[i]], sel[i]))
    rels = [pre + "/".join(sel[i]) for i in order]
    labels = np.array([index[class_of[i]] for i in order], np.int32)
    if part is not None:
        keep = carve_indices(labels, carve.test_fraction, carve.seed)[part == "test"]
        rels, labels = [rels[i] for i in keep], labels[keep]
    return class_names, rels, labels


def _load_folder(arg: str, split: str, image_size, cache_dir, carve: Carve | None = None) -> Dataset:
    if not arg:
        raise ValueError("spec 'folder:' needs a path, e.g. 'folder:/data/my_images' or 'folder:/data/images.tar'")
    path = _check_exists(Path(arg).expanduser(), "image folder or tar")
    if path.is_dir() and _formats.has_idx(path):
        return _load_arrays("idx", arg, split, image_size, cache_dir, carve)
    key = dict(source="folder", path=str(path.resolve()), split=split, fingerprint=_cache.fingerprint([path]),
               image_size=_as_hw(image_size))
    if carve is not None:
        key["carve"] = carve.key()

    def build() -> dict[str, np.ndarray]:
        tree = _Tree(path)
        class_names, rels, labels = _folder_select(tree, split, carve, f"folder:{arg}")
        images = decode_images(tree.read_many(rels), image_size)
        return _to_arrays(Dataset(images, labels, class_names, {}))

    return _from_arrays(_cache.cached(cache_dir, f"folder-{path.name}-{split}", key, build))


def _load_arrays(kind: str, arg: str, split: str, image_size, cache_dir, carve: Carve | None) -> Dataset:
    """``idx:`` and ``npz:`` (:mod:`metanas_jax.data.formats`); cached only when resized."""
    what = {"idx": "folder of IDX files", "npz": ".npz file"}[kind]
    if not arg:
        raise ValueError(f"spec '{kind}:' needs a path to a {what}, e.g. '{kind}:/data/mnist"
                         + (".npz'" if kind == "npz" else "'"))
    path = _check_exists(Path(arg).expanduser(), what)
    files, read = _formats.open_arrays(kind, path, split, carve, f"{kind}:{arg}")

    def build() -> dict[str, np.ndarray]:
        images, labels, names = read()
        return _to_arrays(Dataset(resize_images(images, image_size), labels, names, {}))

    if image_size is None:
        return _from_arrays(build())
    key = dict(source=kind, path=str(path.resolve()), split=split, fingerprint=_cache.fingerprint(files),
               image_size=_as_hw(image_size), carve=carve.key() if carve else None)
    return _from_arrays(_cache.cached(cache_dir, f"{kind}-{path.name}-{split}", key, build))


_OMNI_PARTS = ("background", "evaluation")


def _omniglot_parts(arg: str) -> dict[str, Path]:
    """Map part name -> zip or folder for an ``omniglot:`` spec argument."""
    if not arg:
        raise ValueError(
            "spec 'omniglot:' needs a path: a folder holding images_background.zip / images_evaluation.zip "
            "(or the unpacked folders), or one of those zips"
        )
    parts: dict[str, Path] = {}
    for piece in arg.split(","):
        p = Path(piece.strip()).expanduser()
        _check_exists(p, "Omniglot path")
        found = {}
        if p.is_dir():
            for part in _OMNI_PARTS:
                z, d = p / f"images_{part}.zip", p / f"images_{part}"
                if z.is_file():
                    found[part] = z
                elif d.is_dir():
                    found[part] = d
            if not found:
                m = re.search(r"(background|evaluation)", p.name)
                if m:
                    found[m.group(1)] = p
                else:
                    raise FileNotFoundError(
                        f"no images_background(.zip) or images_evaluation(.zip) found in {p}"
                    )
        else:
            m = re.search(r"(background|evaluation)", p.name)
            if not m:
                raise ValueError(
                    f"cannot tell which Omniglot part {p} is: expected a name containing "
                    "'background' or 'evaluation' (images_background.zip / images_evaluation.zip)"
                )
            found[m.group(1)] = p
        for part, q in found.items():
            if part in parts and parts[part] != q:
                raise ValueError(f"Omniglot part {part!r} given twice: {parts[part]} and {q}")
            parts[part] = q
    return parts


def _omniglot_select(tree: _Tree, part: str) -> list[tuple[str, str, str]]:
    """(alphabet, character folder, relative path) of every image of one part."""
    files = [f for f in tree.files if not _is_hidden(f.split("/")) and _is_image(f)]
    if not files:
        raise ValueError(f"no .png images found in Omniglot part {tree.path}")
    parts_list = [f.split("/") for f in files]
    # Optional top folder (images_background/...) in zips and wrapped folders.
    pre: list[str] = []
    while _wrapped(parts_list):
        pre.append(parts_list[0][0])
        parts_list = [p[1:] for p in parts_list]
    bad = [p for p in parts_list if len(p) != 3]
    if bad:
        raise ValueError(
            f"wrong Omniglot layout in {tree.path}: expected <Alphabet>/<characterNN>/<image>.png, "
            f"found {tree.display('/'.join(pre + bad[0]))}"
        )
    prefix = "/".join(pre) + "/" if pre else ""
    char_dirs = {d[len(prefix):] for d in tree.dirs if d.startswith(prefix) and d[len(prefix):].count("/") == 1}
    with_images = {"/".join(p[:2]) for p in parts_list}
    empty = sorted(char_dirs - with_images)
    if empty:
        raise ValueError(
            f"empty Omniglot character folder {tree.display(prefix + empty[0])}: it contains no .png images"
        )
    return [(p[0], p[1], prefix + "/".join(p)) for p in parts_list]


def _char_sort_key(name: str):
    m = re.search(r"(\d+)$", name)
    return (int(m.group(1)) if m else -1, name)


def _load_omniglot(arg: str, split: str, image_size, cache_dir) -> Dataset:
    aliases = {"train": "background", "test": "evaluation"}
    split = aliases.get(split, split)
    if split not in (*_OMNI_PARTS, "all"):
        raise ValueError(
            f"unknown split {split!r} for Omniglot; choose 'background' (alias 'train'), "
            "'evaluation' (alias 'test') or 'all'"
        )
    parts = _omniglot_parts(arg)
    wanted = list(_OMNI_PARTS) if split == "all" else [split]
    missing = [p for p in wanted if p not in parts]
    if missing:
        raise FileNotFoundError(
            f"Omniglot split {split!r} needs images_{missing[0]}(.zip), which is not in {arg!r} "
            f"(found: {sorted(parts) or 'nothing'})"
        )
    key = dict(source="omniglot", split=split, fingerprint=_cache.fingerprint([parts[p] for p in wanted]),
               image_size=_as_hw(image_size))

    def build() -> dict[str, np.ndarray]:
        all_images, labels, alph_ids, char_ids, part_ids = [], [], [], [], []
        class_names: list[str] = []
        alphabet_names: list[str] = []
        for part_id, part in enumerate(_OMNI_PARTS):
            if part not in wanted:
                continue
            tree = _Tree(parts[part])
            entries = _omniglot_select(tree, part)
            by_alpha: dict[str, dict[str, list[str]]] = collections.defaultdict(lambda: collections.defaultdict(list))
            for alpha, char, rel in entries:
                by_alpha[alpha][char].append(rel)
            rels: list[str] = []
            for alpha in sorted(by_alpha):
                a_id = len(alphabet_names)
                alphabet_names.append(alpha)
                for char in sorted(by_alpha[alpha], key=_char_sort_key):
                    c_id = len(class_names)
                    class_names.append(f"{alpha}/{char}")
                    files = sorted(by_alpha[alpha][char])
                    rels.extend(files)
                    labels.extend([c_id] * len(files))
                    alph_ids.extend([a_id] * len(files))
                    char_ids.extend([_char_sort_key(char)[0]] * len(files))
                    part_ids.extend([part_id] * len(files))
            all_images.append(decode_images(tree.read_many(rels), image_size))
        meta = {
            "alphabet": np.asarray(alph_ids, np.int32),
            "character": np.asarray(char_ids, np.int32),
            "part": np.asarray(part_ids, np.int32),
            "alphabet_names": tuple(alphabet_names),
            "part_names": _OMNI_PARTS,
        }
        images = np.concatenate(all_images) if len(all_images) > 1 else all_images[0]
        if images.shape[-1] != 1:
            images = images[..., :1]  # Omniglot is grayscale; keep one channel.
        return _to_arrays(Dataset(images, np.asarray(labels, np.int32), tuple(class_names), meta))

    return _from_arrays(_cache.cached(cache_dir, f"omniglot-{split}", key, build))


def _tf_missing(e: BaseException) -> bool:
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, ImportError) and "tensorflow" in str(e).lower():
            return True
        e = e.__cause__ or e.__context__
    return False


def _tf_error(name: str, what: str, data_dir) -> ImportError:
    return ImportError(
        f"TFDS dataset '{name}' needs TensorFlow to {what} (data_dir={data_dir}). Install it with "
        "`pip install 'metanas-jax[tensorflow]'` (or `pip install tensorflow-cpu`), or prepare the data once "
        "on a machine with TensorFlow using file_format='array_record' and pass that data_dir=: reading "
        "array_record data needs no TensorFlow. For Omniglot and CIFAR-10 the 'omniglot:' and 'folder:' "
        "sources need no TensorFlow at all."
    )


def _load_tfds(name: str, split: str, image_size, cache_dir, data_dir, manual_dir, download: bool) -> Dataset:
    if not name:
        raise ValueError(f"spec 'tfds:' needs a dataset name, e.g. one of {', '.join('tfds:' + n for n in TFDS_NAMES)}")
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:  # pragma: no cover - declared dependency
        raise ImportError("the 'tfds:' source needs tensorflow-datasets: pip install tensorflow-datasets") from e

    if data_dir is not None:
        data_dir = str(Path(data_dir).expanduser())
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as e:  # DatasetNotFoundError and friends
        if _tf_missing(e):
            raise _tf_error(name, "build this dataset", data_dir) from e
        raise ValueError(
            f"unknown TFDS dataset {name!r} ({type(e).__name__}: {e}); e.g. {', '.join(TFDS_NAMES)}"
        ) from e

    data_path = Path(str(builder.data_dir))
    if not (data_path / "dataset_info.json").exists():
        if not download:
            raise FileNotFoundError(f"TFDS dataset {name!r} is not prepared in {data_path} and download=False")
        kwargs = {}
        if manual_dir is not None:
            kwargs["download_config"] = tfds.download.DownloadConfig(manual_dir=str(Path(manual_dir).expanduser()))
        try:
            builder = tfds.builder(name, data_dir=data_dir, file_format="array_record")
            builder.download_and_prepare(**kwargs)
        except Exception as e:
            if _tf_missing(e):
                raise _tf_error(name, "prepare (download and encode) its data", data_dir) from e
            raise RuntimeError(
                f"preparing TFDS dataset {name!r} in {data_path} failed: {type(e).__name__}: {e}. If the archives "
                "are already on this machine, pass manual_dir= to the folder that holds them."
            ) from e
        builder = tfds.builder(name, data_dir=data_dir)

    available = list(builder.info.splits.keys())
    if split == "all":
        splits = [s for s in available if not (name.startswith("omniglot") and s.startswith("small"))]
    else:
        if name.startswith("omniglot"):
            split = {"background": "train", "evaluation": "test"}.get(split, split)
        if split not in available:
            raise ValueError(f"split {split!r} not in TFDS dataset {name!r}; available: {available} (or 'all')")
        splits = [split]
    files = sorted(p for p in data_path.iterdir() if p.is_file())
    key = dict(source="tfds", name=name, version=str(builder.info.version), path=str(data_path), split=split,
               fingerprint=_cache.fingerprint(files), image_size=_as_hw(image_size))

    def build() -> dict[str, np.ndarray]:
        features = builder.info.features
        image_key = "image" if "image" in features else next(
            (k for k, f in features.items() if type(f).__name__ == "Image"), None
        )
        label_key = "label" if "label" in features else None
        if image_key is None or label_key is None:
            raise ValueError(f"TFDS dataset {name!r} has no 'image'/'label' features: {list(features.keys())}")
        label_feat = features[label_key]
        num = getattr(label_feat, "num_classes", None)
        names = list(getattr(label_feat, "names", None) or [str(i) for i in range(num or 0)])
        meta_keys = [k for k in ("alphabet",) if k in features]
        imgs, labs, metas = [], [], {k: [] for k in meta_keys}
        fmt = str(getattr(builder.info, "file_format", "") or "")
        for s in splits:
            if "array_record" in fmt.lower():
                src = builder.as_data_source(split=s)
                n = len(src)
                step = 1024
                for lo in range(0, n, step):
                    idx = list(range(lo, min(n, lo + step)))
                    recs = src.__getitems__(idx) if hasattr(src, "__getitems__") else [src[i] for i in idx]
                    imgs.append(np.stack([np.asarray(r[image_key], np.uint8) for r in recs]))
                    labs.append(np.asarray([r[label_key] for r in recs], np.int64))
                    for k in meta_keys:
                        metas[k].append(np.asarray([r[k] for r in recs], np.int64))
            else:
                try:
                    arr = tfds.as_numpy(builder.as_dataset(split=s, batch_size=-1))
                except Exception as e:
                    if _tf_missing(e):
                        raise _tf_error(name, f"read data prepared as {fmt or 'tfrecord'}", data_dir) from e
                    raise
                imgs.append(np.asarray(arr[image_key], np.uint8))
                labs.append(np.asarray(arr[label_key], np.int64))
                for k in meta_keys:
                    metas[k].append(np.asarray(arr[k], np.int64))
        images = np.concatenate(imgs)
        if images.ndim == 3:
            images = images[..., None]
        if name.startswith("omniglot") and images.shape[-1] == 3:
            images = images[..., :1]
        if image_size is not None:
            images = resize_images(images, image_size)
        labels = np.concatenate(labs)
        # Compact labels to the classes present in these splits.
        present = np.unique(labels)
        if not names:
            names = [str(i) for i in range(int(present.max()) + 1)]
        remap = np.full(max(len(names), int(present.max()) + 1), -1, np.int64)
        remap[present] = np.arange(len(present))
        meta = {k: np.concatenate(v).astype(np.int32) for k, v in metas.items()}
        return _to_arrays(Dataset(images, remap[labels].astype(np.int32), tuple(names[i] for i in present), meta))

    safe = name.replace("/", "_")
    return _from_arrays(_cache.cached(cache_dir, f"tfds-{safe}-{split}", key, build))


# --------------------------------------------------------------------------- load


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
    """Load a dataset by spec; see the module docstring for the specs and their splits.

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
    kind, arg = parsed.kind, parsed.arg
    if kind not in _SPEC_OPTIONS:
        raise ValueError(
            f"unknown dataset spec {spec!r}; known specs: {', '.join(KNOWN_SPECS)} "
            f"(tfds names include {', '.join(TFDS_NAMES)})"
        )
    if kind != "tfds" and (data_dir is not None or manual_dir is not None):
        raise ValueError(f"data_dir= and manual_dir= only apply to 'tfds:' specs, not {spec!r}")
    check_options(parsed, _SPEC_OPTIONS[kind])
    carve = Carve.from_spec(parsed)
    cdir = _cache.resolve_cache_dir(cache_dir)
    if kind == "digits":
        if arg:
            raise ValueError(f"spec 'digits' takes no argument, got {spec!r}")
        return _load_digits(split, image_size)
    if kind == "omniglot":
        return _load_omniglot(arg, split, image_size, cdir)
    if kind == "folder":
        return _load_folder(arg, split, image_size, cdir, carve)
    if kind in ("idx", "npz"):
        return _load_arrays(kind, arg, split, image_size, cdir, carve)
    for opt, given in (("data_dir", data_dir), ("manual_dir", manual_dir)):
        if opt in parsed.options and given is not None:
            raise ValueError(f"{opt} given twice: in the spec {spec!r} and as {opt}={given!r}")
    data_dir = parsed.options.get("data_dir", data_dir)
    manual_dir = parsed.options.get("manual_dir", manual_dir)
    return _load_tfds(arg, split, image_size, cdir, data_dir, manual_dir, download)
