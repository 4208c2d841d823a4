"""The reference experiment at full size with public data through TFDS (for a GPU/TPU
machine with internet): the sizes of ``tinyimagenet_to_cifar10.py:full``, meta-learning on
NAS tasks from CIFAR-100 via TFDS by default (pass ``:tfds:imagenet_resized/32x32`` for
downsampled ImageNet), search on ``tfds:cifar10``; the found architecture trained 300 epochs
with the standard recipe (SGD-Nesterov, warm-up + cosine).

    metanas run --config configs/cifar10_reference.py
    metanas run --config 'configs/cifar10_reference.py:tfds:imagenet_resized/32x32'
"""

from pathlib import Path

from metanas_jax import train as T
from metanas_jax.config import load_config


def get_config(arg=None):
    c = load_config(str(Path(__file__).with_name("tinyimagenet_to_cifar10.py")) + ":full")
    c.name = "cifar10_reference"
    c.data.source = arg or "tfds:cifar100"
    c.data.target = "tfds:cifar10"
    c.train.update(T.RECIPES["standard"])
    c.train.update(dict(epochs=300, warmup_epochs=5))
    return c
