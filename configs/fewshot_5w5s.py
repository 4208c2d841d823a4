"""MiniImageNet-style 5-way 5-shot on any class-split source (``data.class_split``).

MAML's MiniImageNet protocol: conv4 with 32 channels and 2x2 max-pool, 5 inner SGD steps
of 0.01 (10 at test), meta-batch 4 (published 63.1% on MiniImageNet). The source defaults
to CIFAR-10 image folders unpacked from ``../shared/data/cifar10`` (set ``METANAS_FEWSHOT``
to any ``data.load`` spec, e.g. ``folder:/path/miniimagenet`` or ``tfds:...``); CIFAR-10
has only 10 classes, so ``data.fractions`` defaults to 5 meta-train / 0 / 5 meta-test
classes there (a working smoke setting; use a richer source, e.g. MiniImageNet image folders
with fractions 0.64/0.16/0.2, for real figures). Unpack CIFAR-10 first:
``mkdir -p /tmp/cifar10 && tar -xf ../shared/data/cifar10/cifar10-jpg.tar -C /tmp/cifar10``. ``get_config("darts")``
searches a DARTS cell too (MetaNAS' MiniImageNet setting, reduced in width).
"""
import os

import ml_collections
from ml_collections.config_dict import placeholder


def get_config(model: str = "conv4") -> ml_collections.ConfigDict:
    if model not in ("conv4", "darts"):
        raise ValueError(f"fewshot_5w5s: model must be 'conv4' or 'darts', got {model!r}")
    c = ml_collections.ConfigDict()
    c.name = f"fewshot_5w5s_{model}"
    c.data = ml_collections.ConfigDict(dict(
        source=os.environ.get("METANAS_FEWSHOT", "folder:/tmp/cifar10/train"),
        fractions=(0.5, 0.0, 0.5) if "cifar10" in os.environ.get("METANAS_FEWSHOT", "cifar10")
        else (0.64, 0.16, 0.2),
        image_size=32, n_way=5, k_shot=5, n_query_train=15, n_query_test=15, meta_batch=4,
        split_seed=0))
    c.model = ml_collections.ConfigDict(dict(name=model, channels=32, downsample="pool",
                                             cells=3, nodes=4, stem_stride=1, conv_impl="auto"))
    c.meta = ml_collections.ConfigDict(dict(
        algorithm="maml", inner_steps=5, eval_inner_steps=10, inner_lr=0.01, inner_opt="sgd",
        meta_lr=1e-3, meta_opt="adam", strategy="auto"))
    if model == "darts":
        c.model.channels = 16
        c.meta.update(dict(algorithm="fomaml", arch_update="alternating", arch_inner_lr=0.1,
                           arch_meta_lr=3e-4, arch_weight_decay=1e-3, arch_warmup_steps=500))
    c.train = ml_collections.ConfigDict(dict(num_steps=60000, time_budget_s=55 * 60.0,
                                             log_every=100, seed=0,
                                             n_query_train=placeholder(int)))
    c.eval = ml_collections.ConfigDict(dict(episodes=600, seed=1234, batch_size=20, split="test",
                                            inner_steps=placeholder(int)))
    return c
