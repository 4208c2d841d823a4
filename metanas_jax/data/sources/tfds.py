"""``tfds:NAME``: a TensorFlow Datasets builder (``mnist``, ``cifar10``, ``omniglot``, ...).

For the many datasets TFDS already knows how to fetch.  ``data_dir=`` and ``manual_dir=``
are arguments of :func:`metanas_jax.data.load` or spec options
(``tfds:mnist?data_dir=/data/tfds&manual_dir=/data/dl``).  Data already prepared in
``array_record`` format is read without TensorFlow; preparing (downloading and encoding)
most image builders needs TensorFlow (``pip install tensorflow``, the
``metanas-jax[tensorflow]`` extra) and is then done in ``array_record`` format so later
reads don't need it.  ``split`` is a TFDS split name or ``"all"``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .. import cache as _cache
from ..dataset import Dataset, from_arrays, to_arrays
from ..decode import as_hw, resize_images

if TYPE_CHECKING:
    from . import Request

TFDS_NAMES = ("omniglot", "cifar10", "cifar100", "imagenet_resized/32x32", "mnist")
OPTIONS = ("data_dir", "manual_dir")


def load(req: Request) -> Dataset:
    """Spec options and keyword arguments name the same folders: either, not both."""
    given = {"data_dir": req.data_dir, "manual_dir": req.manual_dir}
    for opt, value in given.items():
        if opt in req.spec.options and value is not None:
            raise ValueError(f"{opt} given twice: in the spec {req.spec.text!r} and as {opt}={value!r}")
    data_dir = req.spec.options.get("data_dir", req.data_dir)
    manual_dir = req.spec.options.get("manual_dir", req.manual_dir)
    return _load_tfds(req.arg, req.split, req.image_size, req.cache_dir, data_dir, manual_dir, req.download)


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
               fingerprint=_cache.fingerprint(files), image_size=as_hw(image_size))

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
        return to_arrays(Dataset(images, remap[labels].astype(np.int32), tuple(names[i] for i in present), meta))

    safe = name.replace("/", "_")
    return from_arrays(_cache.cached(cache_dir, f"tfds-{safe}-{split}", key, build))

