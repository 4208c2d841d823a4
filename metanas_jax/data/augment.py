"""Preprocessing and augmentation as pure, jit-able JAX functions.

Every function works on batched channels-last images ``(..., H, W, C)``; any number of
leading axes is allowed (``(N, H, W, C)`` for a batch, ``(T, S, H, W, C)`` for a batch of
tasks).  Random functions draw an independent transform for every image.

Pixel scale convention: :func:`normalize` reads its input on the 0..255 pixel scale,
whatever its dtype (``uint8`` straight from :func:`metanas_jax.data.load`, or floats such
as the output of :func:`resize` on such images), and returns ``(x / 255 - 0.5) / 0.5``,
i.e. float32 in ``[-1, 1]``.  This fixed normalisation is dataset independent, so the
same model can be meta-trained on one source and evaluated on another; per-channel
statistics can be given with ``mean=`` / ``std=`` (on the 0..1 scale) instead.

:func:`random_crop` pads with zeros: apply it to uint8 / 0..255 images *before*
:func:`normalize` for the usual black padding (``torchvision``'s ``RandomCrop(padding=4)``),
or after it for mid-grey padding.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "normalize",
    "denormalize",
    "resize",
    "random_crop",
    "random_flip",
    "augment",
]


def _check_image_rank(x, name: str) -> None:
    if x.ndim < 3:
        raise ValueError(
            f"{name}: expected channels-last images of shape (..., H, W, C), got shape {tuple(x.shape)}"
        )


def normalize(x, mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> jax.Array:
    """Map pixels on the 0..255 scale (any dtype) to float32.

    Default: ``(x / 255 - 0.5) / 0.5`` (values in ``[-1, 1]``).  With ``mean`` and ``std``
    (per channel, on the 0..1 scale, e.g. CIFAR-10's ``(0.491, 0.482, 0.447)`` /
    ``(0.247, 0.243, 0.262)``) it returns ``(x / 255 - mean) / std`` instead.
    """
    x = jnp.asarray(x).astype(jnp.float32) / 255.0
    if mean is None and std is None:
        return (x - 0.5) / 0.5
    if mean is None or std is None:
        raise ValueError("normalize: give both mean= and std=, or neither")
    mean_a = jnp.asarray(mean, jnp.float32)
    std_a = jnp.asarray(std, jnp.float32)
    return (x - mean_a) / std_a


def denormalize(x, mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> jax.Array:
    """Inverse of :func:`normalize`: float32 pixels on the 0..255 scale."""
    x = jnp.asarray(x, jnp.float32)
    if mean is None and std is None:
        return (x * 0.5 + 0.5) * 255.0
    return (x * jnp.asarray(std, jnp.float32) + jnp.asarray(mean, jnp.float32)) * 255.0


def resize(x, size: int | tuple[int, int], method: str = "linear", antialias: bool = True) -> jax.Array:
    """Resize images ``(..., H, W, C)`` to ``size`` (an int for square, or ``(h, w)``).

    Returns float32 on the input's scale (uint8 input gives 0..255 floats; feed them to
    :func:`normalize`).  Uses :func:`jax.image.resize` (antialiased when shrinking), so it
    is jit-able; the one-off resizing of whole datasets in :class:`ClassPool` and
    ``load(image_size=...)`` uses Pillow's Lanczos filter instead.
    """
    x = jnp.asarray(x)
    _check_image_rank(x, "resize")
    if isinstance(size, (int, np.integer)):
        h, w = int(size), int(size)
    else:
        h, w = (int(s) for s in size)
    if h <= 0 or w <= 0:
        raise ValueError(f"resize: size must be positive, got {size!r}")
    shape = tuple(x.shape[:-3]) + (h, w, x.shape[-1])
    return jax.image.resize(x.astype(jnp.float32), shape, method=method, antialias=antialias)


def _flatten_batch(x):
    lead = x.shape[:-3]
    n = int(np.prod(lead)) if lead else 1
    return x.reshape((n,) + tuple(x.shape[-3:])), lead


CROP_MODES = ("zeros", "reflect")


def random_crop(key: jax.Array, x, pad: int = 4, mode: str = "zeros") -> jax.Array:
    """Pad every image by ``pad`` pixels on each side (``mode``: ``"zeros"``, or
    ``"reflect"``: mirrored without repeating the edge, as airbench translates) and crop
    back to ``H x W`` at an independent uniformly random offset per image.  Keeps dtype
    and shape."""
    x = jnp.asarray(x)
    _check_image_rank(x, "random_crop")
    pad = int(pad)
    if pad < 0:
        raise ValueError(f"random_crop: pad must be >= 0, got {pad}")
    if mode not in CROP_MODES:
        raise ValueError(f"random_crop: mode must be one of {list(CROP_MODES)}, got {mode!r}")
    if pad == 0:
        return x
    flat, lead = _flatten_batch(x)
    n, h, w, c = flat.shape
    if mode == "reflect" and pad >= min(h, w):
        raise ValueError(f"random_crop: reflect padding needs pad < image size, got pad={pad} "
                         f"for {h}x{w} images")
    padded = jnp.pad(flat, ((0, 0), (pad, pad), (pad, pad), (0, 0)),
                     mode="reflect" if mode == "reflect" else "constant")
    ky, kx = jax.random.split(key)
    oy = jax.random.randint(ky, (n,), 0, 2 * pad + 1)
    ox = jax.random.randint(kx, (n,), 0, 2 * pad + 1)

    def crop(img, y0, x0):
        return jax.lax.dynamic_slice(img, (y0, x0, 0), (h, w, c))

    out = jax.vmap(crop)(padded, oy, ox)
    return out.reshape(tuple(lead) + (h, w, c))


def random_flip(key: jax.Array, x, prob: float = 0.5) -> jax.Array:
    """Flip every image horizontally (along W) with probability ``prob``, independently."""
    x = jnp.asarray(x)
    _check_image_rank(x, "random_flip")
    lead = x.shape[:-3]
    mask = jax.random.bernoulli(key, prob, tuple(lead))
    mask = mask.reshape(tuple(lead) + (1, 1, 1))
    return jnp.where(mask, jnp.flip(x, axis=-2), x)


def augment(key: jax.Array, x, pad: int = 4, flip: bool = True) -> jax.Array:
    """Standard CIFAR-style augmentation: :func:`random_crop` with ``pad`` (skipped when
    0) followed by :func:`random_flip` (when ``flip``).  Keeps dtype and shape."""
    k_crop, k_flip = jax.random.split(key)
    if pad:
        x = random_crop(k_crop, x, pad=pad)
    else:
        x = jnp.asarray(x)
    if flip:
        x = random_flip(k_flip, x)
    return x
