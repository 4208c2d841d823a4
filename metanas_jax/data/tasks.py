"""Task distributions: few-shot episodes and NAS tasks as pure functions of a PRNG key.

A :class:`ClassPool` holds a class-split dataset on the device as one fixed-shape array
``(num_classes, per_class, H, W, C)`` of normalised float32 images.  The samplers draw
from it with ``jax.random`` only, so they are deterministic in the key, have static
output shapes, and run under ``jax.jit`` / ``jax.vmap``.  They return a :class:`TaskBatch`
(a pytree whose fields all have a leading task axis).

Episodes (:func:`sample_episodes`): per task, ``n_way`` distinct classes chosen uniformly;
from each, ``k_shot + n_query`` distinct examples.  Support and query are disjoint and
ordered class by class (``support_y = [0]*k_shot + [1]*k_shot + ...``); the class -> label
mapping is random because the classes are.

NAS tasks (:func:`sample_nas_tasks`): per task, ``n_classes`` distinct classes, then
``n_train + n_val`` distinct examples drawn uniformly from all their examples (so a class
may be rarer in one task than another); labels are the class's position in the task's
class list.  ``support`` = the task's train split, ``query`` = its validation split.

Pools are built by :meth:`ClassPool.from_dataset` or by the class splits of
:mod:`metanas_jax.data.splits`; the one-task target batches are in
:mod:`metanas_jax.data.targets`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .augment import normalize
from .dataset import Dataset
from .decode import resize_images

__all__ = ["TaskBatch", "ClassPool", "sample_episodes", "sample_nas_tasks"]


class TaskBatch(NamedTuple):
    """A batch of tasks; every field has a leading task axis T.

    support_x: (T, S, H, W, C) float32, normalised.  support_y: (T, S) int32.
    query_x: (T, Q, H, W, C) float32.  query_y: (T, Q) int32.
    For NAS tasks support = the task's train split, query = its validation split.
    """

    support_x: jax.Array
    support_y: jax.Array
    query_x: jax.Array
    query_y: jax.Array


@functools.partial(jax.tree_util.register_dataclass, data_fields=["images"], meta_fields=["class_names"])
@dataclasses.dataclass(frozen=True, eq=False)
class ClassPool:
    """Images grouped by class: ``images`` (num_classes, per_class, H, W, C) float32,
    normalised with :func:`~metanas_jax.data.normalize`; ``class_names`` one per class.

    A pytree (``images`` is its only leaf), so it can be passed into jitted functions.
    """

    images: jax.Array
    class_names: tuple[str, ...] = ()

    @property
    def num_classes(self) -> int:
        return int(self.images.shape[0])

    @property
    def per_class(self) -> int:
        return int(self.images.shape[1])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.images.shape[2:])

    def __len__(self) -> int:
        return self.num_classes

    def __repr__(self) -> str:
        return (
            f"ClassPool(num_classes={self.num_classes}, per_class={self.per_class}, "
            f"image_shape={self.image_shape})"
        )

    @classmethod
    def from_uint8(cls, images: np.ndarray, class_names: Sequence[str] | None = None) -> ClassPool:
        """From uint8 (num_classes, per_class, H, W, C) pixels (normalised on the device)."""
        images = np.asarray(images)
        if images.ndim != 5:
            raise ValueError(f"ClassPool images must be (num_classes, per_class, H, W, C), got shape {images.shape}")
        if class_names is None:
            class_names = tuple(str(i) for i in range(images.shape[0]))
        class_names = tuple(str(c) for c in class_names)
        if len(class_names) != images.shape[0]:
            raise ValueError(f"{len(class_names)} class names for {images.shape[0]} classes")
        return cls(normalize(jnp.asarray(images)), class_names)

    @classmethod
    def from_dataset(
        cls,
        ds: Dataset,
        image_size: int | tuple[int, int] | None = None,
        per_class: int | str | None = None,
        classes: Sequence[int] | None = None,
    ) -> ClassPool:
        """Group ``ds`` by class into a fixed-shape pool.

        Args:
          ds: the dataset.
          image_size: resize every image to this (Pillow, Lanczos, done once); ``None``
            keeps the dataset's size.
          per_class: ``None`` requires every class to have the same number of examples;
            an int truncates every class to its first ``per_class`` examples (a class
            with fewer is an error); ``"min"`` uses the smallest class's count.
          classes: class indices to include (default: all), in that order.

        Raises ValueError naming the class for an empty class, unequal counts (without
        ``per_class``) or a class with fewer than ``per_class`` examples.
        """
        u8, names = group_by_class(ds, per_class=per_class, classes=classes)
        return cls.from_uint8(resize_grouped(u8, image_size), names)


def resize_grouped(u8: np.ndarray, image_size) -> np.ndarray:
    """Resize uint8 (num_classes, per_class, H, W, C) images once (``None``: unchanged)."""
    if image_size is None:
        return u8
    c, p = u8.shape[:2]
    return resize_images(u8.reshape((c * p,) + u8.shape[2:]), image_size).reshape(
        (c, p) + _resized_shape(u8.shape[2:], image_size)
    )


def _resized_shape(hwc, image_size) -> tuple[int, int, int]:
    if isinstance(image_size, (int, np.integer)):
        return (int(image_size), int(image_size), hwc[-1])
    h, w = image_size
    return (int(h), int(w), hwc[-1])


def group_by_class(ds: Dataset, per_class=None, classes=None) -> tuple[np.ndarray, tuple[str, ...]]:
    """uint8 (num_classes, per_class, H, W, C) and class names, with the count checks."""
    counts = ds.class_counts()
    cls_ids = np.arange(ds.num_classes) if classes is None else np.asarray(classes, np.int64)
    if cls_ids.size and (cls_ids.min() < 0 or cls_ids.max() >= ds.num_classes):
        raise ValueError(f"class indices must lie in [0, {ds.num_classes}), got {cls_ids.min()}..{cls_ids.max()}")
    names = tuple(ds.class_names[i] for i in cls_ids)
    sel_counts = counts[cls_ids]
    empty = [ds.class_names[i] for i in cls_ids if counts[i] == 0]
    if empty:
        raise ValueError(f"class {empty[0]!r} has no examples ({len(empty)} empty classes in all)")
    if isinstance(per_class, str):
        if per_class != "min":
            raise ValueError(f"per_class must be None, an int or 'min', got {per_class!r}")
        per_class = int(sel_counts.min()) if sel_counts.size else 0
    if per_class is None:
        if sel_counts.size and sel_counts.min() != sel_counts.max():
            lo, hi = int(np.argmin(sel_counts)), int(np.argmax(sel_counts))
            raise ValueError(
                f"classes have unequal numbers of examples (class {names[lo]!r} has {sel_counts[lo]}, "
                f"class {names[hi]!r} has {sel_counts[hi]}); pass per_class=N (or 'min') to keep the first N of each"
            )
        per_class = int(sel_counts[0]) if sel_counts.size else 0
    per_class = int(per_class)
    if per_class <= 0 and sel_counts.size:
        raise ValueError(f"per_class must be positive, got {per_class}")
    short = [(names[j], int(sel_counts[j])) for j in range(len(cls_ids)) if sel_counts[j] < per_class]
    if short:
        raise ValueError(
            f"class {short[0][0]!r} has only {short[0][1]} examples, fewer than per_class={per_class}"
            + (f" ({len(short)} such classes)" if len(short) > 1 else "")
        )
    # Indices grouped by class, keeping dataset order within a class.
    order = np.argsort(ds.labels, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    if cls_ids.size:
        idx = order[starts[cls_ids][:, None] + np.arange(per_class)[None, :]]
    else:
        idx = np.zeros((0, per_class), np.int64)
    u8 = ds.images[idx.reshape(-1)].reshape((len(cls_ids), per_class) + ds.image_shape)
    return u8, names


# --------------------------------------------------------------------------- sampling


def _bits_needed(n: int, m: int) -> int:
    """Random uint32 words :func:`_choose` needs per batch entry."""
    return m if m * m < n else n


def _choose(bits: jax.Array, n: int, m: int) -> jax.Array:
    """``m`` distinct indices from ``range(n)`` for every batch entry, uniformly, in random
    order (static ``n``, ``m``), from ``bits``: uint32 of shape ``batch + (_bits_needed(n, m),)``.

    The samplers draw all their random words in one ``jax.random.bits`` call and slice
    it: XLA's CPU compile time grows with every RNG call site (about 0.5 s each).
    """
    if m * m < n:
        return _choose_sequential(bits, n, m)
    # top_k of i.i.d. uniforms: a uniformly random ordered subset, O(n).  The top 23 bits
    # as float32 (exact), since XLA's CPU top_k is fast for floats but sorts integers.
    u = (bits >> 9).astype(jnp.float32)
    return jax.lax.top_k(u, m)[1]


def _choose_sequential(bits: jax.Array, n: int, m: int) -> jax.Array:
    """Sequential draws without replacement, O(m^2 log m) per entry, independent of n.

    Draw ``r_i`` uniform in ``[0, n - i)`` (an index among the values not yet chosen; a
    32-bit word modulo ``n - i``, bias below ``n / 2**32``) and map it to the value: with
    the chosen values sorted, ``s_0 < s_1 < ...``, it is ``r_i + #{k : s_k - k <= r_i}``.
    """
    r = (bits % (n - jnp.arange(m, dtype=jnp.uint32))).astype(jnp.int32)
    ar = jnp.arange(m)
    big = jnp.iinfo(jnp.int32).max // 2
    batch = bits.shape[:-1]

    def body(i, chosen):
        s = jnp.sort(chosen, axis=-1)
        ri = jax.lax.dynamic_index_in_dim(r, i, axis=-1, keepdims=True)
        val = ri[..., 0] + jnp.sum((s - ar) <= ri, axis=-1).astype(chosen.dtype)
        return jax.lax.dynamic_update_index_in_dim(chosen, val[..., None], i, axis=-1)

    return jax.lax.fori_loop(0, m, body, jnp.full(batch + (m,), big, jnp.int32))


def _check_positive(name: str, value: int, minimum: int = 1) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


@functools.partial(jax.jit, static_argnames=("n_way", "k_shot", "n_query", "num_tasks"))
def _episodes(key, images, n_way, k_shot, n_query, num_tasks):
    c, p = images.shape[:2]
    hwc = images.shape[2:]
    m = k_shot + n_query
    nc, ne = _bits_needed(c, n_way), _bits_needed(p, m)
    bits = jax.random.bits(key, (num_tasks, nc + n_way * ne), jnp.uint32)
    classes = _choose(bits[:, :nc], c, n_way)  # (T, n_way)
    ex = _choose(bits[:, nc:].reshape(num_tasks, n_way, ne), p, m)  # (T, n_way, m)
    x = images[classes[..., None], ex]  # (T, n_way, m, H, W, C)
    sx = x[:, :, :k_shot].reshape((num_tasks, n_way * k_shot) + hwc)
    qx = x[:, :, k_shot:].reshape((num_tasks, n_way * n_query) + hwc)
    labels = jnp.arange(n_way, dtype=jnp.int32)
    sy = jnp.broadcast_to(jnp.repeat(labels, k_shot), (num_tasks, n_way * k_shot))
    qy = jnp.broadcast_to(jnp.repeat(labels, n_query), (num_tasks, n_way * n_query))
    return TaskBatch(sx, sy, qx, qy)


def sample_episodes(
    key: jax.Array,
    pool: ClassPool,
    n_way: int = 5,
    k_shot: int = 1,
    n_query: int = 15,
    num_tasks: int = 32,
) -> TaskBatch:
    """``num_tasks`` N-way K-shot episodes: support (T, n_way*k_shot, ...) and query
    (T, n_way*n_query, ...), labels in ``[0, n_way)``.  Jitted; ``n_way``, ``k_shot``,
    ``n_query``, ``num_tasks`` are static.  The same key gives the same episodes.

    Raises ValueError if ``n_way`` exceeds the pool's classes or ``k_shot + n_query``
    its examples per class.
    """
    n_way = _check_positive("n_way", n_way)
    k_shot = _check_positive("k_shot", k_shot)
    n_query = _check_positive("n_query", n_query, 0)
    num_tasks = _check_positive("num_tasks", num_tasks)
    if n_way > pool.num_classes:
        raise ValueError(f"n_way={n_way} is larger than the number of classes in the pool ({pool.num_classes})")
    if k_shot + n_query > pool.per_class:
        raise ValueError(
            f"k_shot + n_query = {k_shot} + {n_query} = {k_shot + n_query} is more than the "
            f"{pool.per_class} examples per class in the pool"
        )
    return _episodes(key, pool.images, n_way, k_shot, n_query, num_tasks)


@functools.partial(jax.jit, static_argnames=("n_classes", "n_train", "n_val", "num_tasks"))
def _nas_tasks(key, images, n_classes, n_train, n_val, num_tasks):
    c, p = images.shape[:2]
    nc, ne = _bits_needed(c, n_classes), _bits_needed(n_classes * p, n_train + n_val)
    bits = jax.random.bits(key, (num_tasks, nc + ne), jnp.uint32)
    classes = _choose(bits[:, :nc], c, n_classes)  # (T, n_classes)
    flat = _choose(bits[:, nc:], n_classes * p, n_train + n_val)  # (T, n_train + n_val)
    ci, ei = flat // p, flat % p
    x = images[jnp.take_along_axis(classes, ci, axis=1), ei]
    y = ci.astype(jnp.int32)
    return TaskBatch(x[:, :n_train], y[:, :n_train], x[:, n_train:], y[:, n_train:])


def sample_nas_tasks(
    key: jax.Array,
    pool: ClassPool,
    n_classes: int = 10,
    n_train: int = 64,
    n_val: int = 16,
    num_tasks: int = 100,
) -> TaskBatch:
    """``num_tasks`` small classification tasks for meta-training a NAS model.

    Each task: ``n_classes`` distinct random classes of the pool, and ``n_train + n_val``
    distinct examples drawn uniformly from all of their examples, split into a train
    (support, (T, n_train, ...)) and validation (query, (T, n_val, ...)) part; labels are
    remapped to ``[0, n_classes)``.  The reference meta-training set is the default:
    100 tasks of 64 train + 16 validation examples.  Jitted, deterministic in ``key``.
    """
    n_classes = _check_positive("n_classes", n_classes)
    n_train = _check_positive("n_train", n_train)
    n_val = _check_positive("n_val", n_val, 0)
    num_tasks = _check_positive("num_tasks", num_tasks)
    if n_classes > pool.num_classes:
        raise ValueError(f"n_classes={n_classes} is larger than the number of classes in the pool ({pool.num_classes})")
    if n_train + n_val > n_classes * pool.per_class:
        raise ValueError(
            f"n_train + n_val = {n_train + n_val} is more than the {n_classes} x {pool.per_class} "
            f"examples of {n_classes} classes in the pool"
        )
    return _nas_tasks(key, pool.images, n_classes, n_train, n_val, num_tasks)
