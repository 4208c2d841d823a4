"""Data sources and task distributions.

Sources (:func:`load`): ``"digits"`` (scikit-learn, embedded), ``"omniglot:PATH"``
(official archives), ``"folder:PATH"`` (image folder or tar), ``"idx:PATH"`` (MNIST-family
IDX files), ``"npz:PATH"`` (NumPy arrays), ``"tfds:NAME"``; options after a ``?``
(``folder:PATH?test_fraction=0.2&seed=0`` carves a test split); decoded arrays are cached
on disk; :func:`same_dataset` tells whether two specs name the same data.  Tasks:
:class:`ClassPool` + :func:`sample_episodes` / :func:`sample_nas_tasks` (pure functions of
a PRNG key returning a :class:`TaskBatch`),
:func:`omniglot_splits`, :func:`class_split`, :func:`target_task`.  Preprocessing:
:func:`normalize`, :func:`resize`, :func:`random_crop`, :func:`random_flip`,
:func:`augment` (jit-able).

Example::

    from metanas_jax import data
    ds = data.load("omniglot:../shared/data/omniglot", split="all", image_size=28)
    train, val, test = data.omniglot_splits(ds, image_size=28)
    batch = data.sample_episodes(jax.random.key(0), train, n_way=5, k_shot=1, n_query=15, num_tasks=32)
"""

from .augment import augment, denormalize, normalize, random_crop, random_flip, resize
from .cache import default_cache_dir
from .dataset import Dataset
from .decode import decode_images, resize_images
from .separation import check_separated, image_digests, parse_classes, select_classes
from .sources import KNOWN_SPECS, TFDS_NAMES, load
from .specs import same_dataset
from .splits import class_split, omniglot_splits
from .targets import TargetTask, subsample, target_task, task_batch_from_datasets
from .tasks import ClassPool, TaskBatch, sample_episodes, sample_nas_tasks

__all__ = [
    "Dataset",
    "load",
    "KNOWN_SPECS",
    "TFDS_NAMES",
    "same_dataset",
    "decode_images",
    "resize_images",
    "default_cache_dir",
    "TaskBatch",
    "ClassPool",
    "TargetTask",
    "sample_episodes",
    "sample_nas_tasks",
    "omniglot_splits",
    "class_split",
    "target_task",
    "subsample",
    "task_batch_from_datasets",
    "parse_classes",
    "select_classes",
    "image_digests",
    "check_separated",
    "normalize",
    "denormalize",
    "resize",
    "random_crop",
    "random_flip",
    "augment",
]
