"""Target tasks: the one task a NAS run is finally for (e.g. CIFAR-10).

:func:`target_task` carves a stratified validation split from the training set for the
search; the test split is kept apart and never used for search, only for the final
evaluation.  :func:`task_batch_from_datasets` turns two splits into a one-task
:class:`~metanas_jax.data.tasks.TaskBatch`.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from .augment import normalize
from .dataset import Dataset
from .decode import resize_images
from .tasks import TaskBatch

__all__ = ["TargetTask", "target_task", "subsample", "task_batch_from_datasets"]


class TargetTask(NamedTuple):
    """The full target task of a NAS run: ``val`` is carved from the training data; the
    ``test`` split is for the final evaluation only, never for search."""

    train: Dataset
    val: Dataset
    test: Dataset

    def as_task_batch(self, image_size=None) -> TaskBatch:
        """A one-task :class:`TaskBatch` (T=1): support = train, query = val."""
        return task_batch_from_datasets(self.train, self.val, image_size=image_size)


def subsample(ds: Dataset, n: int, seed: int = 0) -> Dataset:
    """``n`` examples of ``ds`` drawn without replacement, stratified by class
    (largest-remainder allocation), in dataset order."""
    n = int(n)
    if n <= 0 or n > len(ds):
        raise ValueError(f"cannot subsample n={n} examples from a dataset of {len(ds)}")
    rng = np.random.default_rng(seed)
    counts = ds.class_counts()
    quota = n * counts / counts.sum()
    take = np.floor(quota).astype(np.int64)
    rest = n - int(take.sum())
    if rest:
        frac = quota - take + rng.random(len(counts)) * 1e-9
        take[np.argsort(-frac)[:rest]] += 1
    keep = []
    for c in range(ds.num_classes):
        idx = np.flatnonzero(ds.labels == c)
        keep.append(rng.choice(idx, size=int(take[c]), replace=False))
    return ds.subset(np.sort(np.concatenate(keep)))


def target_task(
    ds_train: Dataset,
    ds_test: Dataset,
    val_fraction: float = 0.1,
    seed: int = 0,
    *,
    n_train: int | None = None,
    n_val: int | None = None,
    n_test: int | None = None,
) -> TargetTask:
    """Train / validation / test for the final target task (e.g. CIFAR-10).

    The validation split is ``val_fraction`` of each class of ``ds_train`` (stratified,
    at least one example per class, shuffled with ``seed``); the rest is the training
    split.  ``ds_test`` is passed through and never used for search.  ``n_train``,
    ``n_val``, ``n_test`` optionally subsample each split (stratified) afterwards.
    """
    if ds_train.class_names != ds_test.class_names:
        raise ValueError(
            f"train and test datasets have different classes: {ds_train.num_classes} vs {ds_test.num_classes} "
            f"(first train classes {ds_train.class_names[:3]}, test {ds_test.class_names[:3]})"
        )
    if ds_train.image_shape != ds_test.image_shape:
        raise ValueError(f"train images are {ds_train.image_shape} but test images are {ds_test.image_shape}")
    if not 0.0 < float(val_fraction) < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    rng = np.random.default_rng(seed)
    counts = ds_train.class_counts()
    val_idx, train_idx = [], []
    for c in range(ds_train.num_classes):
        idx = rng.permutation(np.flatnonzero(ds_train.labels == c))
        k = max(1, int(round(val_fraction * counts[c])))
        if counts[c] - k < 1:
            raise ValueError(
                f"class {ds_train.class_names[c]!r} has {counts[c]} training examples: too few to carve "
                f"a validation split with val_fraction={val_fraction}"
            )
        val_idx.append(idx[:k])
        train_idx.append(idx[k:])
    train = ds_train.subset(np.sort(np.concatenate(train_idx)))
    val = ds_train.subset(np.sort(np.concatenate(val_idx)))
    test = ds_test
    if n_train is not None:
        train = subsample(train, n_train, seed)
    if n_val is not None:
        val = subsample(val, n_val, seed + 1)
    if n_test is not None:
        test = subsample(test, n_test, seed + 2)
    return TargetTask(train, val, test)


def task_batch_from_datasets(support: Dataset, query: Dataset, image_size=None) -> TaskBatch:
    """A one-task :class:`TaskBatch` (T=1) from two datasets (e.g. a target task's train
    and val splits), normalised, with the datasets' labels."""
    sx, qx = support.images, query.images
    if image_size is not None:
        sx, qx = resize_images(sx, image_size), resize_images(qx, image_size)
    return TaskBatch(
        normalize(jnp.asarray(sx))[None],
        jnp.asarray(support.labels, jnp.int32)[None],
        normalize(jnp.asarray(qx))[None],
        jnp.asarray(query.labels, jnp.int32)[None],
    )
