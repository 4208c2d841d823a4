"""Decoding encoded images and resizing decoded ones, on a thread pool.

Pillow releases the GIL while it decodes and resizes, so threads (not processes) give
the speed-up without copying bytes between processes.  ``METANAS_DATA_WORKERS`` sets the
pool size (default: the CPU count, at most 8).
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import io
import os
from collections.abc import Iterable, Iterator

import numpy as np

__all__ = ["decode_images", "resize_images", "as_hw"]


def as_hw(image_size) -> tuple[int, int] | None:
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
    hw = as_hw(image_size)
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

    hw = as_hw(image_size)
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

