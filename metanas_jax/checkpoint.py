"""Stage checkpoints: a pytree of arrays plus a JSON record per step, saved with Orbax.

Why a thin wrapper: every pipeline stage saves "its whole state" (arrays, PRNG keys,
counters, small JSON-able results) at points of its own choosing and resumes from the
latest one. Orbax writes each step to a temporary folder and renames it when complete, so
a run killed at any moment (SIGKILL included) leaves either the previous or the new
checkpoint, never a torn one.

The state is stored by key path (``jax.tree_util.keystr``: a flat dict, so any registered
pytree, NamedTuple, optax state, flax struct or chex dataclass, is stored as it is) and
restored into a template of the caller's (Orbax's usual way), which gives it its
structure, shapes, dtypes and shardings back. jax Arrays go to Orbax as they are: a global
array sharded over several processes is written shard by shard by its owners. Typed PRNG
keys are stored as their key data and zero-size arrays (which Orbax refuses) only
described, both in the item's custom metadata.
"""
from __future__ import annotations

import functools
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

KEYS, EMPTY = "prng_keys", "empty"  # custom metadata: {path: impl}, {path: [shape, dtype]}
NO_ARRAYS = "_"  # what a state without arrays stores (Orbax refuses an empty item); no key path
# checkpoints written before states were stored by key path: {"tree": state} with these tags
LEGACY_KEY, LEGACY_EMPTY = "__prng_key__", "__empty_shape__"


def _is_key(x) -> bool:
    return isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def _stored(x):
    """What Orbax is given for one leaf: a typed key's key data; a jax Array as it is, except
    a process-local one in a multi-process run (Orbax refuses those: its host copy, which
    the primary process writes); anything else as numpy (Python scalars at JAX's dtype)."""
    if _is_key(x):
        x = jax.random.key_data(x)
    if isinstance(x, jax.Array):
        return np.asarray(x) if jax.process_count() > 1 and x.is_fully_addressable else x
    return np.asarray(x, jnp.result_type(x)) if isinstance(x, (bool, int, float, complex)) \
        else np.asarray(x)


def _flatten(tree) -> tuple[dict, dict]:
    """``({keystr(path): stored array}, custom metadata)`` of ``tree``."""
    arrays, meta = {}, {KEYS: {}, EMPTY: {}}
    for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]:
        k = jax.tree_util.keystr(path)
        if _is_key(x):
            meta[KEYS][k] = str(jax.random.key_impl(x))
        v = _stored(x)
        if v.size:
            arrays[k] = v
        else:
            meta[EMPTY][k] = [list(v.shape), jnp.dtype(v.dtype).name]
    return arrays, meta


@functools.lru_cache(maxsize=None)
def _key_spec(impl: str):
    """The key dtype of PRNG implementation ``impl`` and its key data's trailing shape."""
    k = jax.eval_shape(lambda: jax.random.key(0, impl=impl))
    return k.dtype, jax.eval_shape(jax.random.key_data, k).shape


def _abstract(x) -> jax.ShapeDtypeStruct:
    if isinstance(x, jax.ShapeDtypeStruct):
        return x
    if hasattr(x, "shape") and hasattr(x, "dtype"):
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None))
    return jax.ShapeDtypeStruct(np.shape(x), jnp.result_type(x))


def _specs(arrays: dict, meta: dict) -> dict:
    """``{path: (shape, dtype)}`` of a stored state as it is restored (keys as keys);
    ``arrays``' values: arrays or Orbax's array metadata."""
    out = {k: (tuple(a.shape), a.dtype) for k, a in arrays.items() if k != NO_ARRAYS}
    out.update({k: (tuple(s), jnp.dtype(d)) for k, (s, d) in meta[EMPTY].items()})
    for k, impl in meta[KEYS].items():
        dtype, tail = _key_spec(impl)
        out[k] = (out[k][0][:len(out[k][0]) - len(tail)], dtype)
    return out


def _describe(spec) -> str:
    return "nothing" if spec is None else f"{spec[1]}{list(spec[0])}"


def _check(where: Path, arrays: dict, meta: dict, like) -> None:
    """``ValueError`` naming the first key path where the stored state and ``like`` differ:
    a config or code that changed since the checkpoint was written, not damage."""
    have = _specs(arrays, meta)
    want = {jax.tree_util.keystr(p): (tuple(a.shape), a.dtype) for p, a in
            jax.tree_util.tree_flatten_with_path(jax.tree.map(_abstract, like))[0]}
    for k in [*want, *(k for k in have if k not in want)]:
        if have.get(k) != want.get(k):
            raise ValueError(f"checkpoint {where} does not fit the state it is restored into "
                             f"(was it written by another config or version?): at "
                             f"{k or '<root>'!r} it holds {_describe(have.get(k))}, expected "
                             f"{_describe(want.get(k))}")


def _legacy_tree(tree):
    """A state as checkpoints stored it before key paths, its tags undone."""
    def is_leaf(x):
        return isinstance(x, dict) and (set(x) == {LEGACY_KEY} or LEGACY_EMPTY in x)

    def restore(x):
        if not is_leaf(x):
            return x
        if LEGACY_KEY in x:
            return jax.random.wrap_key_data(x[LEGACY_KEY])
        return np.zeros(tuple(int(n) for n in x[LEGACY_EMPTY]), x["dtype"].dtype)
    tree = jax.tree.map(restore, jax.tree.map(np.asarray, tree), is_leaf=is_leaf)
    return {} if isinstance(tree, dict) and set(tree) == {"_"} else tree


def _on_default_device(x) -> bool:
    """Whether a template leaf is restored where a fresh array goes (uncommitted, this
    process's first device): a leaf without a sharding, or with that device's."""
    sharding = _abstract(x).sharding
    return sharding is None or sharding == jax.sharding.SingleDeviceSharding(jax.local_devices()[0])


class StageCheckpoints:
    """Checkpoints of one stage under ``directory`` (e.g. ``workdir/ckpt/search``).

    ``save(step, state, record)``: ``state`` a pytree of arrays (may be empty), ``record`` a
    JSON-able dict. ``latest(like)``: ``(step, state, record)`` of the newest one, or
    ``None``. Keeps the last ``keep`` steps. Saving is synchronous: when ``save`` returns the
    step is on disk. In a multi-process run every process calls both.
    """

    def __init__(self, directory: str | Path, keep: int = 2):
        self.directory = Path(directory).absolute()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.keep = keep
        self._mngr = self._manager()

    def _manager(self):
        return ocp.CheckpointManager(
            self.directory,
            item_handlers={"state": ocp.StandardCheckpointHandler(),
                           "record": ocp.JsonCheckpointHandler()},
            options=ocp.CheckpointManagerOptions(max_to_keep=self.keep, create=True,
                                                 enable_async_checkpointing=False,
                                                 cleanup_tmp_directories=True))

    def save(self, step: int, state: Any, record: dict) -> None:
        arrays, meta = _flatten(state)
        self._mngr.save(int(step), args=ocp.args.Composite(
            state=ocp.args.StandardSave(arrays or {NO_ARRAYS: np.zeros(())}, custom_metadata=meta),
            record=ocp.args.JsonSave(record)), force=True)
        self._mngr.wait_until_finished()
        if os.environ.get("METANAS_FAULT") == f"{self.directory.name}:{int(step)}":
            # fault injection for the resume tests: die like a SIGKILLed run, right here
            os.kill(os.getpid(), signal.SIGKILL)

    def latest(self, like=None):
        """The newest readable checkpoint ``(step, state, record)``, or ``None``.

        ``like`` (a pytree of arrays or ``jax.ShapeDtypeStruct``s: a fresh state, or
        ``jax.eval_shape`` of its init) gives the state its structure, shapes, dtypes and
        shardings (a leaf without one: the default device; a numpy leaf: numpy). It may
        also be a function of the step's record returning that template, or ``None`` to
        read the record alone (state ``None``): the state is then read once, in the form
        the record calls for (a finished stage's state differs from an unfinished one's). A
        checkpoint that does not fit it is a ``ValueError`` naming the first differing key
        path. Without ``like`` the state is the flat ``{keystr(path): numpy array}`` dict (typed
        keys as keys), for inspection and for states of a few arrays. Checkpoints of older
        versions (the state under ``"tree"``, a list of leaves under ``"leaves"``) are read
        too, a list of leaves into ``like`` by leaf order.

        A damaged checkpoint (truncated, emptied or missing files: a disk error, a copy cut
        short) is moved aside to ``damaged-<step>`` with a one-line warning naming it, and
        the previous step is tried; with none readable the stage starts afresh."""
        choose = like if callable(like) else None
        for step in sorted(self._mngr.all_steps(), reverse=True):
            where = self.directory / str(step)
            try:
                if choose is not None:  # the record first: it says which template, if any
                    record = _checked_record(self._mngr.restore(step, args=ocp.args.Composite(
                        record=ocp.args.JsonRestore()))["record"])
                    like = choose(record)
                    if like is None:
                        return int(step), None, record
                md = self._mngr.item_metadata(step)["state"]
                legacy = KEYS not in (md.custom_metadata or {})
                if legacy:
                    arrays, meta, record = self._restore_legacy(step, like)
                else:
                    arrays, meta = md.tree, md.custom_metadata
            except Exception as e:  # noqa: BLE001 - any read failure means "damaged"
                self._set_aside(step, e)
                continue
            if like is not None:
                _check(where, arrays, meta, like)
            if not legacy:
                try:
                    arrays, record = self._restore(step, arrays, like)
                except Exception as e:  # noqa: BLE001
                    if like is not None and self._readable(step, arrays):
                        raise  # the files are fine: placing them failed (devices, memory)
                    self._set_aside(step, e)
                    continue
            return int(step), _assemble(arrays, meta, like), record
        return None

    def _restore(self, step: int, stored: dict, like):
        """The stored arrays (Orbax restoring into ``like``'s shardings, or to the host
        without ``like``) and the record."""
        # a numpy target reads to the host; an abstract one without a sharding would take
        # the saved sharding, which another device count cannot place
        target = {k: np.empty(m.shape, m.dtype) for k, m in stored.items()}
        if like is not None:  # (a leaf for the default device: read to the host, see _assemble)
            for path, x in jax.tree_util.tree_flatten_with_path(like)[0]:
                k = jax.tree_util.keystr(path)
                if k in target and not isinstance(x, np.ndarray) and not _on_default_device(x):
                    target[k] = jax.ShapeDtypeStruct(target[k].shape, target[k].dtype,
                                                     sharding=_abstract(x).sharding)
        out = self._mngr.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target), record=ocp.args.JsonRestore()))
        return out["state"], _checked_record(out["record"])

    def _readable(self, step: int, stored: dict) -> bool:
        """Whether the step reads back to the host: a failure to restore into a template
        is damage only if this fails too."""
        try:
            self._restore(step, stored, None)
            return True
        except Exception:  # noqa: BLE001
            return False

    def _restore_legacy(self, step: int, like):
        """``(arrays, meta, record)`` of a checkpoint written before key paths (the state
        stored as ``{"tree": state}``); a state saved as ``{"leaves": [...]}`` is put into
        ``like``'s key paths by leaf order when the counts agree."""
        out = self._mngr.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(), record=ocp.args.JsonRestore()))
        tree = _legacy_tree(out["state"]["tree"])
        if like is not None and isinstance(tree, dict) and set(tree) == {"leaves"}:
            leaves, treedef = jax.tree.flatten(like)
            if len(tree["leaves"]) == len(leaves):
                log.info("checkpoint %s: state stored as a list of leaves (an older version); "
                         "restored by leaf order", self.directory / str(step))
                tree = jax.tree.unflatten(treedef, list(tree["leaves"]))
        arrays, meta = _flatten(tree)
        return arrays, meta, _checked_record(out["record"])

    def _set_aside(self, step: int, err: Exception) -> None:
        src = self.directory / str(step)
        dst = self.directory / f"damaged-{step}-{int(time.time())}"
        reason = f"{type(err).__name__}: {str(err).splitlines()[0][:160] if str(err) else ''}"
        log.warning("checkpoint %s is damaged (%s); moved to %s, falling back to the previous "
                    "one", src, reason, dst.name)
        self._mngr.close()
        if jax.process_index() == 0:  # one process moves it; the others wait for that
            src.rename(dst)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            multihost_utils.sync_global_devices(f"metanas set aside {src}")
        self._mngr = self._manager()

    def close(self):
        self._mngr.close()


def _checked_record(record) -> dict:
    if not isinstance(record, dict):
        raise ValueError(f"record is {type(record).__name__}, not a dict")
    return record


def _assemble(arrays: dict, meta: dict, like):
    """The restored state: ``like``'s structure with the stored arrays (keys re-wrapped,
    empty arrays made), each where ``like``'s leaf is; without ``like`` the flat dict."""
    def leaf(k, x=None):
        if k in meta[EMPTY]:
            shape, dtype = meta[EMPTY][k]
            v = np.zeros(shape, jnp.dtype(dtype))
        else:
            v = arrays[k]
        if k in meta[KEYS]:
            v = jax.random.wrap_key_data(v, impl=meta[KEYS][k])
        if like is None or isinstance(x, np.ndarray):
            return v if k in meta[KEYS] else np.asarray(v)
        if _on_default_device(x):
            # uncommitted, like a fresh state's arrays: committed ones lower to another
            # program, so each jitted step of a resumed run missed the persistent
            # compilation cache and compiled again (minutes for a supernet on CPU)
            return jax.device_put(v)
        return jax.device_put(v, _abstract(x).sharding)  # no-op if there
    if like is None:
        return {k: leaf(k) for k in [*arrays, *meta[EMPTY]] if k != NO_ARRAYS}
    paths, treedef = jax.tree_util.tree_flatten_with_path(like)
    return jax.tree_util.tree_unflatten(treedef, [leaf(jax.tree_util.keystr(p), x) for p, x in paths])
