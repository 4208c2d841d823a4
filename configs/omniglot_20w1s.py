"""Omniglot 20-way 1-shot (Vinyals split, 28x28, rotations), MAML's Omniglot protocol.

MAML (Finn et al. 2017), Omniglot 20-way: 5 inner SGD steps of 0.1, meta-batch 16, Adam
1e-3; published 95.8%. ``get_config("conv4_lr")`` trains with one inner step of meta-learned
per-layer rates (5 at test) from a prototype head, first-order, and a cosine meta-lr;
``get_config("darts")`` meta-learns a DARTS cell as well. Everything else is the 5-way
1-shot config (``omniglot_5w1s.py``).
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
    if model == "conv4_lr":
        # one inner step in meta-training (5 at test) with per-tensor learned rates, meta-lr
        # 3e-3 on a cosine. 4-minute probes on one core (benchmarks/LOG.md, 200 test
        # episodes): MAML's setting 52.4%, learned rates 58.5%, with one inner step 76.7%,
        # and meta-lr 3e-3 79.9%. The classifier starts each task at the support set's
        # prototypes (meta.head_init): 13-minute one-core probes 89.01% vs 86.91% with the
        # meta-learned head; on 2 cores 95.50% after 10,000 steps in 61 min, against 94.43%
        # after 16,000 steps in 115 min (benchmarks/LOG.md, "Where the classifier starts").
        # From the prototypes the support set is already fit, so the second-order term adds
        # nothing: first-order MAML gave 95.43% after the same 10,000 steps in 24 min on 2
        # cores (tasks mapped; 36 min when they were vmapped, benchmarks/LOG.md).
        _base.set_lr_recipe(c, steps=10000)
        c.meta.head_init = "proto"
        c.meta.algorithm = "fomaml"
    return c
