"""Omniglot 20-way 1-shot (Vinyals split, 28x28, rotations), MAML's Omniglot protocol.

MAML (Finn et al. 2017), Omniglot 20-way: 5 inner SGD steps of 0.1, meta-batch 16, Adam
1e-3; published 95.8%. ``get_config("darts")`` meta-learns a DARTS cell as well. Everything
else is the 5-way 1-shot config (``omniglot_5w1s.py``).
"""
import importlib.util
from pathlib import Path

import ml_collections

_spec = importlib.util.spec_from_file_location(
    "omniglot_5w1s", Path(__file__).with_name("omniglot_5w1s.py"))
_base = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_base)


def get_config(model: str = "conv4") -> ml_collections.ConfigDict:
    c = _base.get_config(model)
    c.name = f"omniglot_20w1s_{model}"
    c.data.update(dict(n_way=20, meta_batch=16))
    c.meta.update(dict(inner_steps=5, eval_inner_steps=5, inner_lr=0.1))
    return c
