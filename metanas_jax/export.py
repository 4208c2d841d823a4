"""Export of the final model and :func:`load_model` for inference.

``DIR/model.json``: the architecture (``Arch.to_json``), number of classes, input shape and
normalisation; ``DIR/variables.msgpack``: the trained variables (``params`` and
``batch_stats``, float32). Loading needs only the space registry and the compact network
builder, no search or meta-learning code.
"""
from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization

from metanas_jax.files import read_described, write_atomic

FORMAT = "metanas-model-v1"


def save_model(directory, arch, variables, *, num_classes: int, image_shape, class_names=(),
               mean=(), std=(), extra: dict | None = None) -> Path:
    """Write ``model.json`` and ``variables.msgpack`` atomically into ``directory``."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    meta = {"format": FORMAT, "arch": json.loads(arch.to_json()), "num_classes": int(num_classes),
            "image_shape": [int(s) for s in image_shape], "class_names": list(class_names),
            "normalize": {"mean": list(mean), "std": list(std)}, **(extra or {})}
    blob = serialization.msgpack_serialize(jax.tree.map(np.asarray, variables))
    write_atomic(d / "variables.msgpack", blob)
    write_atomic(d / "model.json", json.dumps(meta, indent=1).encode())
    return d


def load_model(directory):
    """``(model, variables)`` of an exported model: ``model.apply(variables, x, train=False)``
    gives logits for normalised float32 images ``(N, H, W, C)``; ``model.preprocess(x)``
    normalises uint8 pixels as in training. ``ValueError`` naming the file if it is not an
    export."""
    from metanas_jax import nn as mnn
    from metanas_jax.data import normalize
    from metanas_jax.spaces import Arch

    meta, var_path = read_described(directory, "model.json", "variables.msgpack", FORMAT,
                                    "an exported model")
    meta_path = Path(directory) / "model.json"
    arch = Arch.from_json(json.dumps(meta["arch"]))
    model = mnn.build(arch.space, arch, meta["num_classes"])
    try:
        variables = serialization.msgpack_restore(var_path.read_bytes())
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"{var_path}: unreadable weights ({e!r})") from e
    variables = jax.tree.map(jnp.asarray, variables)
    shape = tuple(meta["image_shape"])
    want = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, *shape)), train=False))
    got_shapes = jax.tree.map(lambda a: tuple(a.shape), variables)
    if jax.tree.map(lambda a: tuple(a.shape), want) != got_shapes:
        raise ValueError(f"{var_path}: the weights do not fit the architecture and input shape "
                         f"{list(shape)} of {meta_path} (edited or mismatched files)")
    mean, std = meta["normalize"]["mean"], meta["normalize"]["std"]
    norm = (lambda x: normalize(x, mean=mean, std=std)) if mean else normalize
    return _Loaded(model, meta, norm), variables


class _Loaded:
    """The Flax module plus the export's metadata; ``apply`` / attributes pass through."""

    def __init__(self, module, meta, norm):
        self.module, self.meta, self._norm = module, meta, norm
        self.arch_string = meta["arch"]["string"]
        self.num_classes = meta["num_classes"]
        self._predict_fn = None

    def preprocess(self, x_uint8):
        return self._norm(x_uint8)

    def __getattr__(self, name):
        return getattr(self.module, name)

    def apply(self, variables, x, train: bool = False, **kw):
        """Logits of normalised float images; uint8 pixels or another image shape than the
        model was trained on are refused (they would give silently wrong predictions)."""
        x = jnp.asarray(x)
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise ValueError(f"model.apply wants normalised float images, got {x.dtype}; "
                             f"call model.preprocess(x) on pixels first")
        shape = tuple(self.meta["image_shape"])
        if x.ndim != 4 or tuple(x.shape[1:]) != shape:
            raise ValueError(f"model.apply wants images (N, {', '.join(map(str, shape))}) as in "
                             f"training, got shape {tuple(x.shape)}")
        return self.module.apply(variables, x, train=train, **kw)

    def predict(self, variables, pixels, batch_size: int = 500) -> np.ndarray:
        """Class indices of uint8 ``pixels`` ``(N, H, W, C)`` (or one image ``(H, W, C)``),
        normalised as in training and classified in batches; ``model.meta["class_names"]``
        names them. Other dtypes or shapes are refused, naming what was expected."""
        x = np.asarray(pixels)
        if x.dtype != np.uint8:
            raise ValueError(f"model.predict takes uint8 pixels, got {x.dtype}; for normalised "
                             f"float images use model.apply")
        shape = tuple(self.meta["image_shape"])
        if x.ndim == len(shape):
            x = x[None]
        if x.ndim != 4 or tuple(x.shape[1:]) != shape:
            raise ValueError(f"model.predict wants uint8 images (N, {', '.join(map(str, shape))}) "
                             f"as in training, got shape {tuple(np.shape(pixels))}")
        if self._predict_fn is None:
            self._predict_fn = jax.jit(lambda v, b: jnp.argmax(
                self.module.apply(v, self._norm(b), train=False), -1))
        return np.concatenate([np.asarray(self._predict_fn(variables, x[i:i + batch_size]))
                               for i in range(0, len(x), batch_size)] or [np.zeros(0, np.int32)])

    def __repr__(self):
        return f"LoadedModel({self.arch_string!r}, num_classes={self.num_classes})"
