"""``folder:PATH``: an image folder ``PATH/<split>/<class>/*.{png,jpg,jpeg}``.

The layout most people's own data already has.  ``PATH`` is unpacked or a ``.tar``
(optionally compressed) with that layout (one wrapping top-level folder is allowed).
``split`` is the split subfolder's name, or ``"all"`` for every split merged.  A folder
without split subfolders (``PATH/<class>/*.png``) is read with ``split="all"``, or with
``"train"`` / ``"test"`` carved by ``?test_fraction=F&seed=S`` (see
:mod:`metanas_jax.data.carve`).  A folder holding IDX files is read as ``idx:PATH``.
Classes are sorted by name.  Hidden files are skipped; other non-image files inside a
class folder are an error.  Grayscale images give C=1, colour ones C=3 (a mix is
converted to RGB); all images must share one size unless ``image_size`` is given.
"""

from __future__ import annotations

import collections
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

import numpy as np

from .. import cache as _cache
from .. import formats as _formats
from ..archive import IMAGE_EXTS, Tree, check_exists, is_hidden, is_image, wrapped
from ..carve import Carve, carve_indices, resolve_split
from ..dataset import Dataset, from_arrays, to_arrays
from ..decode import as_hw, decode_images
from .arrays import load_arrays

if TYPE_CHECKING:
    from . import Request

_JUNK_FILES = {"thumbs.db", "desktop.ini"}


def load(req: Request) -> Dataset:
    return _load_folder(req.arg, req.split, req.image_size, req.cache_dir, req.carve)


def _folder_select(tree: Tree, split: str, carve: Carve | None = None,
                   spec: str = "folder:PATH") -> tuple[tuple[str, ...], list[str], np.ndarray]:
    """Pick the image files of ``split`` from an image-folder tree (``carve``: the test
    split carved from a folder without split folders; ``spec`` for error messages).

    Returns (class names, relative file paths, labels)."""
    root = tree.path
    visible = [f for f in tree.files if not is_hidden(f.split("/"))]
    images = [f for f in visible if is_image(f)]
    if not images:
        raise ValueError(
            f"no {'/'.join(IMAGE_EXTS)} images found in {root}; expected the layout "
            f"{root}/<split>/<class>/<image>.png"
        )
    # Strip wrapping folders (e.g. a tar of 'cifar10/train/<class>/x.png').
    prefix: list[str] = []
    parts_list = [f.split("/") for f in images]
    while wrapped(parts_list):
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
    empty = sorted(d for d in class_dirs if d not in with_images and not is_hidden(d.split("/")))
    if empty:
        raise ValueError(
            f"empty class folder {tree.display(pre + empty[0])}: it contains no {'/'.join(IMAGE_EXTS)} images"
        )
    # Non-image files inside class folders.
    class_dir_full = {pre + d for d in with_images}
    for f in visible:
        if not is_image(f) and str(PurePosixPath(f).parent) in class_dir_full:
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
    path = check_exists(Path(arg).expanduser(), "image folder or tar")
    if path.is_dir() and _formats.has_idx(path):
        return load_arrays("idx", arg, split, image_size, cache_dir, carve)
    key = dict(source="folder", path=str(path.resolve()), split=split, fingerprint=_cache.fingerprint([path]),
               image_size=as_hw(image_size))
    if carve is not None:
        key["carve"] = carve.key()

    def build() -> dict[str, np.ndarray]:
        tree = Tree(path)
        class_names, rels, labels = _folder_select(tree, split, carve, f"folder:{arg}")
        images = decode_images(tree.read_many(rels), image_size)
        return to_arrays(Dataset(images, labels, class_names, {}))

    return from_arrays(_cache.cached(cache_dir, f"folder-{path.name}-{split}", key, build))

