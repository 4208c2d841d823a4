"""Stage checkpoints: a pytree of arrays plus a JSON record per step, saved with Orbax.

Why a thin wrapper: every pipeline stage saves "its whole state" (arrays, PRNG keys,
counters, small JSON-able results) at points of its own choosing and resumes from the
latest one. Orbax writes each step to a temporary folder and renames it when complete, so
a run killed at any moment (SIGKILL included) leaves either the previous or the new
checkpoint, never a torn one. Typed PRNG keys are stored as their raw key data and
re-wrapped on restore, and empty arrays (a fixed network's ``(0,)`` architecture encoding),
which Orbax does not store, as their shape plus a one-element dtype probe
(:func:`to_saveable` / :func:`from_saveable`).
"""
from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

log = logging.getLogger("metanas_jax")

KEY_TAG = "__prng_key__"
EMPTY_TAG = "__empty_shape__"


def _is_key(x) -> bool:
    return isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def _saveable(x):
    if _is_key(x):
        return {KEY_TAG: np.asarray(jax.random.key_data(x))}
    x = np.asarray(x)
    if x.size == 0:
        return {EMPTY_TAG: np.asarray(x.shape, np.int64), "dtype": np.zeros(1, x.dtype)}
    return x


def to_saveable(tree):
    """Host numpy copy of ``tree``; typed PRNG keys become ``{KEY_TAG: key_data}``, empty
    arrays ``{EMPTY_TAG: shape, "dtype": one zero of their dtype}``."""
    return jax.tree.map(_saveable, tree)


def from_saveable(tree):
    """Inverse of :func:`to_saveable` (keys re-wrapped, arrays left on the host)."""
    def is_leaf(x):
        return isinstance(x, dict) and (set(x) == {KEY_TAG} or EMPTY_TAG in x)

    def restore(x):
        if not is_leaf(x):
            return x
        if KEY_TAG in x:
            return jax.random.wrap_key_data(jnp.asarray(x[KEY_TAG]))
        return np.zeros(tuple(int(n) for n in np.asarray(x[EMPTY_TAG])), np.asarray(x["dtype"]).dtype)
    return jax.tree.map(restore, tree, is_leaf=is_leaf)


class StageCheckpoints:
    """Checkpoints of one stage under ``directory`` (e.g. ``workdir/ckpt/search``).

    ``save(step, state, record)``: ``state`` a pytree of arrays (may be empty), ``record`` a
    JSON-able dict. ``latest()``: ``(step, state, record)`` of the newest one, or ``None``.
    Keeps the last ``keep`` steps. Saving is synchronous: when ``save`` returns the step is
    on disk.
    """

    def __init__(self, directory: str | Path, keep: int = 2):
        self.directory = Path(directory).absolute()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.keep = keep
        self._mngr = self._manager()

    def _manager(self):
        return ocp.CheckpointManager(
            self.directory, item_names=("state", "record"),
            options=ocp.CheckpointManagerOptions(max_to_keep=self.keep, create=True,
                                                 enable_async_checkpointing=False,
                                                 cleanup_tmp_directories=True))

    def save(self, step: int, state: Any, record: dict) -> None:
        state = {"tree": to_saveable(state)} if jax.tree.leaves(state) else {"tree": {"_": np.zeros(())}}
        self._mngr.save(int(step), args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), record=ocp.args.JsonSave(record)), force=True)
        self._mngr.wait_until_finished()
        if os.environ.get("METANAS_FAULT") == f"{self.directory.name}:{int(step)}":
            # fault injection for the resume tests: die like a SIGKILLed run, right here
            os.kill(os.getpid(), signal.SIGKILL)

    def latest(self):
        """The newest readable checkpoint. A damaged one (truncated, emptied or missing
        files: a disk error, a copy cut short) is moved aside to ``damaged-<step>`` with a
        one-line warning naming it, and the previous step is tried; with none readable the
        stage starts afresh (``None``)."""
        for step in sorted(self._mngr.all_steps(), reverse=True):
            try:
                out = self._mngr.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(), record=ocp.args.JsonRestore()))
                tree = out["state"]["tree"]
                record = out["record"]
                if not isinstance(record, dict):
                    raise ValueError(f"record is {type(record).__name__}, not a dict")
            except Exception as e:  # noqa: BLE001 - any read failure means "damaged"
                self._set_aside(step, e)
                continue
            if isinstance(tree, dict) and set(tree) == {"_"}:
                tree = {}
            return int(step), from_saveable(_to_numpy(tree)), record
        return None

    def _set_aside(self, step: int, err: Exception) -> None:
        src = self.directory / str(step)
        dst = self.directory / f"damaged-{step}-{int(time.time())}"
        reason = f"{type(err).__name__}: {str(err).splitlines()[0][:160] if str(err) else ''}"
        log.warning("checkpoint %s is damaged (%s); moved to %s, falling back to the previous "
                    "one", src, reason, dst.name)
        self._mngr.close()
        src.rename(dst)
        self._mngr = self._manager()

    def close(self):
        self._mngr.close()


def _to_numpy(tree):
    return jax.tree.map(lambda x: np.asarray(x), tree)
