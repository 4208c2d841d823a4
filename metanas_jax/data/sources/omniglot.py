"""``omniglot:PATH``: the official Omniglot archives, read as shipped.

``images_background.zip`` / ``images_evaluation.zip`` (layout
``<part>/<Alphabet>/characterNN/*.png``).  ``PATH`` is a folder holding the zips and/or the
unpacked ``images_background/`` / ``images_evaluation/`` folders, or one zip / unpacked
part folder, or several such paths joined by commas.  ``split``: ``"background"`` (alias
``"train"``), ``"evaluation"`` (alias ``"test"``) or ``"all"`` (both parts merged,
background first).  Images stay 105x105x1 uint8 (black strokes, 0, on white, 255); one
class per character, class names ``"Alphabet/characterNN"``; ``meta`` holds ``alphabet``
/ ``character`` / ``part`` ids per image and ``alphabet_names`` / ``part_names``, which
the alphabet-level splits of :func:`metanas_jax.data.omniglot_splits` need.
"""

from __future__ import annotations

import collections
import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .. import cache as _cache
from ..archive import Tree, check_exists, is_hidden, is_image, wrapped
from ..dataset import Dataset, from_arrays, to_arrays
from ..decode import as_hw, decode_images

if TYPE_CHECKING:
    from . import Request


def load(req: Request) -> Dataset:
    return _load_omniglot(req.arg, req.split, req.image_size, req.cache_dir)


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
        check_exists(p, "Omniglot path")
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


def _omniglot_select(tree: Tree, part: str) -> list[tuple[str, str, str]]:
    """(alphabet, character folder, relative path) of every image of one part."""
    files = [f for f in tree.files if not is_hidden(f.split("/")) and is_image(f)]
    if not files:
        raise ValueError(f"no .png images found in Omniglot part {tree.path}")
    parts_list = [f.split("/") for f in files]
    # Optional top folder (images_background/...) in zips and wrapped folders.
    pre: list[str] = []
    while wrapped(parts_list):
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
               image_size=as_hw(image_size))

    def build() -> dict[str, np.ndarray]:
        all_images, labels, alph_ids, char_ids, part_ids = [], [], [], [], []
        class_names: list[str] = []
        alphabet_names: list[str] = []
        for part_id, part in enumerate(_OMNI_PARTS):
            if part not in wanted:
                continue
            tree = Tree(parts[part])
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
        return to_arrays(Dataset(images, np.asarray(labels, np.int32), tuple(class_names), meta))

    return from_arrays(_cache.cached(cache_dir, f"omniglot-{split}", key, build))

