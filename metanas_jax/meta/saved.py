"""Save and load a meta-trained learner: weights, architecture encoding, learned inner
rates, optimiser states and everything needed to rebuild it.

Why a format of its own: a ``Learner`` holds a Flax module, which is code, not data. Each
learner factory records a JSON *recipe* of its arguments (``Learner.recipe``), so
``learner.json`` (format, recipe, ``MetaConfig``, input shape) plus ``state.npz`` (the
``MetaState`` leaves) rebuild the same learner and state with no script of the user's.
Restoring goes into the traced shapes of a fresh state (nothing computed), and both files
are written atomically (temporary file + rename).
"""
from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from metanas_jax.files import read_described, write_atomic
from metanas_jax.meta.config import MetaConfig
from metanas_jax.meta.learner import Learner, learner_from_recipe
from metanas_jax.meta.state import MetaState, init_state

FORMAT = "metanas-learner-v1"


def save_learner(directory, learner: Learner, cfg: MetaConfig, state: MetaState, *,
                 input_shape, extra: dict | None = None) -> Path:
    """Write ``directory/learner.json`` and ``directory/state.npz``. ``input_shape``: one
    image's ``(H, W, C)``; ``extra``: JSON-able notes kept in ``learner.json``."""
    if learner.recipe is None:
        raise ValueError("save_learner: this learner has no recipe (build it with conv4_learner, "
                         "supernet_learner or derived_learner with JSON-able arguments)")
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    leaves = [np.asarray(x) for x in jax.tree.leaves(_plain(state))]
    meta = {"format": FORMAT, "learner": learner.recipe, "meta_config": dataclasses.asdict(cfg),
            "input_shape": [int(s) for s in input_shape], "leaves": len(leaves), **(extra or {})}
    buf = io.BytesIO()
    np.savez(buf, *leaves)
    write_atomic(d / "state.npz", buf.getvalue())
    write_atomic(d / "learner.json", json.dumps(meta, indent=1).encode())
    return d


def load_learner(directory) -> tuple[Learner, MetaConfig, MetaState]:
    """``(learner, cfg, state)`` saved by :func:`save_learner`: meta-training continues from
    ``state``, or ``meta.adapt_and_predict(learner, cfg, state, ...)`` uses it. A missing,
    foreign or mismatched file is a ``ValueError`` naming it."""
    meta, state_path = read_described(directory, "learner.json", "state.npz", FORMAT, "a saved learner")
    meta_path = Path(directory) / "learner.json"
    learner = learner_from_recipe(meta["learner"])
    cfg = MetaConfig.from_dict(_tuples(meta["meta_config"]))
    x = jnp.zeros((1, *meta["input_shape"]), jnp.float32)
    fresh = lambda: init_state(learner, cfg, jax.random.key(0), x)  # noqa: E731
    typed, plain = jax.eval_shape(fresh), jax.eval_shape(lambda: _plain(fresh()))
    with np.load(state_path) as z:
        leaves = [z[f"arr_{i}"] for i in range(len(z.files))]
    want = jax.tree.leaves(plain)
    if len(leaves) != len(want) or any(a.shape != w.shape for a, w in zip(leaves, want)):
        raise ValueError(f"{state_path}: the arrays do not fit the learner and config of "
                         f"{meta_path} (edited or mismatched files)")
    state = jax.tree.map(lambda a, t: jax.random.wrap_key_data(jnp.asarray(a)) if _is_key(t)
                         else jnp.asarray(a, t.dtype),
                         jax.tree.unflatten(jax.tree.structure(plain), leaves), typed)
    return learner, cfg, state


def _is_key(x) -> bool:
    return jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def _plain(state: MetaState) -> Any:
    """Typed PRNG keys as their raw key data: every leaf an ordinary array."""
    return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, state)


def _tuples(d: dict) -> dict:
    """JSON lists back to the tuples a frozen (hashable) config holds."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
