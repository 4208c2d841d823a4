"""The gradient-based branch on the embedded digits: MetaNAS (meta-weights and a
meta-architecture of the macro32 supernet, first-order MAML over the NAS tasks), then on
the target: adapt both for a few steps, project to a discrete architecture, evaluate it and
its neighbours (``search.methods[0] = "metanas"``), with random search and evolution as
baselines under the same budget; final training as in the default.

    metanas run --config configs/metanas_digits.py
"""
from pathlib import Path

from metanas_jax.config import load_config


def get_config(arg=None):
    c = load_config(str(Path(__file__).with_name("default.py")))
    c.name = "metanas_digits"
    c.meta.method = "metanas"
    c.search.methods = ("metanas", "random", "evolution")
    return c
