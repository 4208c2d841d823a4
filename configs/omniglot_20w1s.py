"""Omniglot 20-way 1-shot (Vinyals split, 28x28, rotations), MAML's Omniglot protocol.

MAML (Finn et al. 2017), Omniglot 20-way: 5 inner SGD steps of 0.1, meta-batch 16, Adam
1e-3; published 95.8%. ``get_config("darts")`` meta-learns a DARTS cell as well.
"""
import os

import ml_collections


def get_config(model: str = "conv4") -> ml_collections.ConfigDict:
    if model not in ("conv4", "darts"):
        raise ValueError(f"omniglot_20w1s: model must be 'conv4' or 'darts', got {model!r}")
    c = ml_collections.ConfigDict()
    c.name = f"omniglot_20w1s_{model}"
    c.data = ml_collections.ConfigDict(dict(
        source="omniglot:" + os.environ.get("METANAS_OMNIGLOT", "/work/shared/data/omniglot"),
        image_size=28, n_way=20, k_shot=1, n_query_train=1, n_query_test=15, meta_batch=16,
        split_seed=0))
    c.model = ml_collections.ConfigDict(dict(name=model, channels=64, downsample="stride",
                                             cells=3, conv_impl="auto"))
    c.meta = ml_collections.ConfigDict(dict(
        algorithm="maml", inner_steps=5, eval_inner_steps=5, inner_lr=0.1, inner_opt="sgd",
        meta_lr=1e-3, meta_opt="adam", strategy="auto"))
    if model == "darts":
        c.model.channels = 16
        c.meta.update(dict(arch_update="alternating", arch_inner_lr=0.1, arch_meta_lr=3e-4,
                           arch_weight_decay=1e-3, arch_warmup_steps=200))
    c.train = ml_collections.ConfigDict(dict(num_steps=60000, time_budget_s=55 * 60.0,
                                             log_every=100, seed=0))
    c.eval = ml_collections.ConfigDict(dict(episodes=600, seed=1234, batch_size=50))
    return c
