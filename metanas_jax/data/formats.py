"""Array file formats: MNIST-family IDX files and NumPy ``.npz`` archives.

Both readers scan a source cheaply (headers, label arrays) and return an
:class:`ArrayFile`: its files, its splits with their labels, and a loader of each split's
images, so only the images of the split asked for are read.  Images come out as
``(N, H, W, C)`` uint8 with C = 1 or 3; labels as int64 in the file's own values.  Every
error is a ``ValueError`` naming the file (and the key, for ``.npz``).

IDX (``idx:FOLDER``, or ``folder:FOLDER`` holding IDX files): files named
``<prefix>images-idx3-ubyte`` and ``<prefix>labels-idx1-ubyte`` (``-``, ``_`` or ``.``
between the words, optionally ``.gz``), as MNIST, Fashion-MNIST, KMNIST and EMNIST ship
them.  The prefix names the split: ``t10k`` or ``test`` in it -> ``"test"``, ``train`` ->
``"train"``, none -> no split (carve one), anything else -> a split of that name.  The
header (two zero bytes, a type code, the number of dimensions, one big-endian uint32 per
dimension) is checked against the data that follows.

``.npz`` (``npz:FILE``): images under ``x_<split>`` / ``<split>_images`` / ``images_<split>``
(``x`` / ``images`` without a split: carve one) and their labels under ``y_<split>`` /
``<split>_labels`` / ``labels_<split>`` (``y`` / ``labels``); keys are matched without
regard to case, other keys are ignored.  Images ``(N, H, W)`` or ``(N, H, W, C)``, C in
(1, 3), uint8 or any integer type in 0..255, or float in 0..1 (scaled by 255) or 0..255
(rounded).  Labels ``(N,)``, ``(N, 1)`` or one-hot ``(N, K)``.  An optional
``class_names`` (or ``classes``) array of strings names the labels ``0..K-1``.
"""

from __future__ import annotations

import dataclasses
import gzip
import re
import struct
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .carve import Carve, carve_indices, resolve_split

__all__ = ["ArrayFile", "Split", "has_idx", "scan_idx", "read_idx", "scan_npz", "open_arrays"]


@dataclasses.dataclass(frozen=True)
class Split:
    labels: np.ndarray                    # (N,) int64
    images: Callable[[], np.ndarray]      # -> (N, H, W, C) uint8, checked against labels


@dataclasses.dataclass(frozen=True)
class ArrayFile:
    path: Path
    files: tuple[Path, ...]               # for the cache fingerprint
    splits: dict                          # split name ("" = none) -> Split
    class_names: tuple[str, ...] | None   # None: the label values name the classes


def _checked(images: np.ndarray, n: int, where: str, label_where: str) -> np.ndarray:
    if images.shape[0] != n:
        raise ValueError(f"{where} holds {images.shape[0]} images but {label_where} holds {n} labels")
    return images


# --------------------------------------------------------------------------- IDX

_IDX_TYPES = {0x08: np.dtype(">u1"), 0x09: np.dtype(">i1"), 0x0B: np.dtype(">i2"),
              0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
_IDX_NAME = re.compile(r"(?P<prefix>.*?)(?P<what>images|labels)[-_.]idx\d[-_.]ubyte(?P<gz>\.gz)?", re.I)


def _idx_files(folder: Path) -> list[tuple[Path, re.Match]]:
    try:
        entries = sorted(folder.iterdir())
    except OSError:
        return []
    return [(p, m) for p in entries
            if not p.name.startswith(".") and (m := _IDX_NAME.fullmatch(p.name)) and p.is_file()]


def has_idx(folder: Path) -> bool:
    """Whether ``folder`` holds IDX files directly (``folder:`` then reads it as IDX)."""
    return bool(_idx_files(folder))


def _idx_split(prefix: str) -> str:
    words = [w for w in re.split(r"[-_.\s]+", prefix.lower()) if w]
    if "t10k" in words or "test" in words:
        return "test"
    if "train" in words:
        return "train"
    return "-".join(words)


def read_idx(path: Path) -> np.ndarray:
    """The array of one IDX file (gzipped if its name ends in ``.gz``)."""
    try:
        if path.name.lower().endswith(".gz"):
            with gzip.open(path, "rb") as f:
                buf = f.read()
        else:
            buf = path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:
        raise ValueError(f"cannot read IDX file {path}: {e}") from e
    if len(buf) < 4 or buf[0] or buf[1]:
        raise ValueError(
            f"{path} is not an IDX file: it must start with two zero bytes, a type code and the number of "
            f"dimensions (got {buf[:4].hex() or 'an empty file'})"
        )
    code, ndim = buf[2], buf[3]
    if code not in _IDX_TYPES:
        raise ValueError(f"{path}: unknown IDX type code 0x{code:02x} (known: 08, 09, 0b, 0c, 0d, 0e)")
    start = 4 + 4 * ndim
    if ndim == 0 or len(buf) < start:
        raise ValueError(f"{path} is truncated or not an IDX file: its header needs {ndim} dimension(s)")
    dims = struct.unpack(f">{ndim}I", buf[4:start])
    dtype = _IDX_TYPES[code]
    need, have = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize, len(buf) - start
    if have != need:
        what = "is truncated" if have < need else f"has {have - need} bytes too many"
        raise ValueError(
            f"{path} {what}: its header describes {'x'.join(map(str, dims))} {dtype.name} values "
            f"({need} bytes) but {have} bytes follow"
        )
    # A native-order, writable copy (the buffer is read-only bytes).
    return np.frombuffer(buf, dtype, offset=start).astype(dtype.newbyteorder("=")).reshape(dims)


def _idx_labels(path: Path) -> np.ndarray:
    a = read_idx(path)
    if a.ndim != 1 or not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"{path} is not an IDX label file: expected one dimension of integers, "
                         f"got shape {a.shape} of {a.dtype.name}")
    return a.astype(np.int64)


def _idx_images(path: Path, n: int, label_path: Path) -> np.ndarray:
    a = read_idx(path)
    if a.dtype != np.uint8:
        raise ValueError(f"{path}: IDX images must be unsigned bytes (type code 08), got {a.dtype.name}")
    if a.ndim == 3:
        a = a[..., None]
    if a.ndim != 4 or a.shape[-1] not in (1, 3):
        raise ValueError(f"{path} is not an IDX image file: expected dimensions N x H x W (or N x H x W x C, "
                         f"C = 1 or 3), got {'x'.join(map(str, a.shape))}")
    return _checked(np.ascontiguousarray(a), n, str(path), str(label_path))


def scan_idx(folder: Path) -> ArrayFile:
    """The IDX files of ``folder``: splits by file name prefix, labels read, images lazy."""
    if not folder.is_dir():
        raise ValueError(f"idx: expects a folder holding IDX files (train-images-idx3-ubyte[.gz], ...), got {folder}")
    found: dict[tuple[str, str], Path] = {}
    for p, m in _idx_files(folder):
        slot = (_idx_split(m["prefix"]), m["what"].lower())
        old = found.get(slot)
        if old is not None and old.name.lower().removesuffix(".gz") == p.name.lower().removesuffix(".gz"):
            if m["gz"]:
                continue  # the unpacked copy is read
        elif old is not None:
            raise ValueError(
                f"{folder} holds two IDX {slot[1]} files for split {slot[0] or '(none)'!r}: {old.name} and "
                f"{p.name}; put each dataset's files in a folder of its own"
            )
        found[slot] = p
    if not found:
        raise ValueError(
            f"no IDX files found in {folder}; expected train-images-idx3-ubyte, train-labels-idx1-ubyte, "
            "t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte (each may end in .gz)"
        )
    splits = {}
    for (split, what), p in sorted(found.items()):
        other = "labels" if what == "images" else "images"
        if (split, other) not in found:
            partner = f"{_IDX_NAME.fullmatch(p.name)['prefix']}{other}-idx{1 if other == 'labels' else 3}-ubyte"
            raise ValueError(f"{p} has no {other} file next to it: expected {folder / partner}[.gz]")
        if what == "labels":
            img = found[(split, "images")]
            labels = _idx_labels(p)
            splits[split] = Split(labels, lambda img=img, n=len(labels), lab=p: _idx_images(img, n, lab))
    return ArrayFile(folder, tuple(found[k] for k in sorted(found)), splits, None)


# --------------------------------------------------------------------------- npz

_NPZ_KEY = re.compile(
    r"(?:(?P<a>x|images?)(?:[_-](?P<s1>[a-z0-9]+))?|(?P<s2>[a-z0-9]+)[_-](?P<b>x|images?)"
    r"|(?P<c>y|labels?)(?:[_-](?P<s3>[a-z0-9]+))?|(?P<s4>[a-z0-9]+)[_-](?P<d>y|labels?))",
    re.I,
)
_NPZ_NAMES = ("class_names", "classes")


def _npz_role(key: str) -> tuple[str, str] | None:
    m = _NPZ_KEY.fullmatch(key)
    if not m:
        return None
    what = "images" if (m["a"] or m["b"]) else "labels"
    split = m["s1"] or m["s2"] or m["s3"] or m["s4"] or ""
    return split.lower(), what


_SWAP = {"x": "y", "image": "label", "images": "labels"}
_SWAP.update({v: k for k, v in _SWAP.items()})


def _partner(key: str) -> str:
    """The label key of an image key and back (``x_train`` <-> ``y_train``)."""
    m = _NPZ_KEY.fullmatch(key)
    g = next(g for g in "abcd" if m[g])
    new = _SWAP[m[g].lower()]
    return key[:m.start(g)] + (new.upper() if m[g].isupper() else new) + key[m.end(g):]


def _npz_array(path: Path, key: str) -> np.ndarray:
    try:
        with np.load(path, allow_pickle=False) as z:
            return z[key]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise ValueError(f"cannot read key {key!r} of {path}: {e}") from e


def _to_uint8(a: np.ndarray, where: str) -> np.ndarray:
    if a.dtype == np.uint8:
        return a
    if a.dtype == np.bool_ or not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise ValueError(f"{where}: images must be uint8, integers in 0..255 or floats, got {a.dtype}")
    if a.size == 0:
        return a.astype(np.uint8)
    if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
        raise ValueError(f"{where}: images contain NaN or infinite values")
    lo, hi = a.min(), a.max()
    if np.issubdtype(a.dtype, np.floating) and lo >= 0 and hi <= 1:
        return np.round(a * 255.0).astype(np.uint8)
    if lo < 0 or hi > 255:
        raise ValueError(f"{where}: image values must lie in 0..255 (or 0..1 for floats), got {lo}..{hi}")
    return np.round(a).astype(np.uint8)


def _npz_images(path: Path, key: str, n: int, label_key: str) -> np.ndarray:
    where = f"{path} key {key!r}"
    a = _npz_array(path, key)
    if a.ndim == 3:
        a = a[..., None]
    if a.ndim != 4 or a.shape[-1] not in (1, 3):
        hint = ("; it looks channels-first (N, C, H, W): store np.transpose(x, (0, 2, 3, 1))"
                if a.ndim == 4 and a.shape[1] in (1, 3) else "")
        raise ValueError(f"{where}: images must be (N, H, W) or (N, H, W, C) with C = 1 or 3, got shape "
                         f"{a.shape}{hint}")
    return _checked(np.ascontiguousarray(_to_uint8(a, where)), n, where, f"key {label_key!r}")


def _npz_labels(path: Path, key: str) -> np.ndarray:
    where = f"{path} key {key!r}"
    a = _npz_array(path, key)
    if a.ndim == 2 and a.shape[1] == 1:
        a = a[:, 0]
    elif a.ndim == 2 and a.shape[1] > 1:
        if not (np.isin(a, (0, 1)).all() and (a.sum(axis=1) == 1).all()):
            raise ValueError(f"{where}: labels of shape {a.shape} must be one-hot (one 1 per row)")
        a = a.argmax(axis=1)
    if a.ndim != 1:
        raise ValueError(f"{where}: labels must be (N,), (N, 1) or one-hot (N, K), got shape {a.shape}")
    if np.issubdtype(a.dtype, np.floating) and np.isfinite(a).all() and (a == np.round(a)).all():
        a = a.astype(np.int64)
    if not np.issubdtype(a.dtype, np.integer) or a.dtype == np.bool_:
        raise ValueError(f"{where}: labels must be integers, got {a.dtype}")
    return a.astype(np.int64)


def scan_npz(path: Path) -> ArrayFile:
    """The splits of an ``.npz`` file: keys matched, labels read, images lazy."""
    try:
        z = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(f"cannot read {path} as a NumPy .npz archive: {e}") from e
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise ValueError(f"{path} is a single .npy array, not an .npz archive of images and labels")
    with z:
        keys = list(z.files)
    roles: dict[tuple[str, str], str] = {}
    for key in keys:
        role = _npz_role(key)
        if role is None:
            continue
        if role in roles:
            raise ValueError(f"{path}: keys {roles[role]!r} and {key!r} both hold the {role[1]} of split "
                             f"{role[0] or '(none)'!r}; keep one")
        roles[role] = key
    expected = "x_train / y_train and x_test / y_test (or train_images / train_labels, ..., or images / labels)"
    if not any(what == "images" for _, what in roles):
        raise ValueError(f"{path} has no image array: expected keys {expected}; found keys {keys}")
    split_names = sorted({s for s, _ in roles})
    if "" in split_names and len(split_names) > 1:
        unsplit = roles.get(("", "images")) or roles[("", "labels")]
        raise ValueError(f"{path} mixes arrays without a split ({unsplit!r}) "
                         f"and split ones ({[k for (s, _), k in sorted(roles.items()) if s]}); keep one kind")
    splits = {}
    for s in split_names:
        for what, other in (("images", "labels"), ("labels", "images")):
            if (s, what) not in roles:
                have = roles[(s, other)]
                raise ValueError(f"{path}: key {have!r} has no matching {what} key (expected {_partner(have)!r}); "
                                 f"found keys {keys}")
        img_key, lab_key = roles[(s, "images")], roles[(s, "labels")]
        labels = _npz_labels(path, lab_key)
        splits[s] = Split(labels, lambda k=img_key, n=len(labels), lk=lab_key: _npz_images(path, k, n, lk))
    names = None
    name_key = next((k for k in keys if k.lower() in _NPZ_NAMES), None)
    if name_key is not None:
        arr = _npz_array(path, name_key)
        if arr.ndim != 1 or arr.dtype.kind not in "US":
            raise ValueError(f"{path} key {name_key!r}: class names must be a 1-D array of strings, "
                             f"got shape {arr.shape} of {arr.dtype}")
        names = tuple(str(a.decode() if isinstance(a, bytes) else a) for a in arr)
        for s, sp in splits.items():
            if sp.labels.size and (sp.labels.min() < 0 or sp.labels.max() >= len(names)):
                raise ValueError(f"{path} key {roles[(s, 'labels')]!r}: labels must lie in [0, {len(names)}) "
                                 f"to index key {name_key!r}, got {sp.labels.min()}..{sp.labels.max()}")
    return ArrayFile(path, (path,), splits, names)


# --------------------------------------------------------------------------- both


def open_arrays(kind: str, path: Path, split: str, carve: Carve | None, spec: str):
    """``(files, read)`` for ``split`` of an ``"idx"`` folder or ``"npz"`` file: the files to
    fingerprint, and ``read() -> (images, int32 labels, class names)``.  The class names
    cover every split, so train and test agree; the split is chosen (or carved) here, so
    errors about it come before any image is read."""
    src = scan_idx(path) if kind == "idx" else scan_npz(path)
    chosen, part = resolve_split(list(src.splits), split, carve, str(path), spec)
    values = None
    if src.class_names is None:
        values = np.unique(np.concatenate([s.labels for s in src.splits.values()]))
    names = src.class_names if values is None else tuple(str(v) for v in values)

    def read() -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
        images = [src.splits[s].images() for s in chosen]
        labels = np.concatenate([src.splits[s].labels for s in chosen])
        if values is not None:
            labels = np.searchsorted(values, labels)
        shapes = sorted({im.shape[1:] for im in images})
        if len(shapes) > 1:
            raise ValueError(f"the splits {chosen} of {path} differ in image shape: {shapes}")
        images = np.concatenate(images) if len(images) > 1 else images[0]
        if part is not None:
            keep = carve_indices(labels, carve.test_fraction, carve.seed)[part == "test"]
            images, labels = images[keep], labels[keep]
        return images, labels.astype(np.int32), names

    return src.files, read
