"""Stage checkpoints (metanas_jax.checkpoint): any pytree round-trips into a template
(structure, dtypes, typed keys, empty arrays); a checkpoint that does not fit the template
is refused by key path and kept; without a template the state is a flat dict; checkpoints
of the older leaves-list form still resume. (Damaged checkpoints: tests/test_reliability.py;
shardings on 8 devices and 2 processes: tests/test_parallel.py.)"""
import logging
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from metanas_jax.checkpoint import StageCheckpoints


class Pair(NamedTuple):
    w: jax.Array
    n: jax.Array


def _state():
    params = {"dense": {"kernel": jnp.arange(6.0).reshape(2, 3), "bias": jnp.zeros(3)}}
    return {"params": params, "opt": optax.adam(1e-3).init(params),
            "pair": Pair(jnp.ones(4, jnp.bfloat16), jnp.int32(7)),
            "keys": jax.random.split(jax.random.key(1), 3), "arch": jnp.zeros((0, 5)),
            "host": np.arange(3, dtype=np.int64)}


def _host(x):
    return np.asarray(jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x)


def _assert_same(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert (x.shape, x.dtype, type(x) is np.ndarray) == (y.shape, y.dtype, type(y) is np.ndarray)
        np.testing.assert_array_equal(_host(x), _host(y))


def test_round_trip_into_a_template(tmp_path):
    state = _state()
    ck = StageCheckpoints(tmp_path / "stage")
    ck.save(1, state, {"phase": "a"})
    # abstract (jax.eval_shape of the init) or concrete (a fresh state): the same state back
    like = jax.eval_shape(_state)
    like["host"] = np.zeros(3, np.int64)  # a numpy leaf comes back as numpy
    step, back, rec = ck.latest(like)
    assert (step, rec) == (1, {"phase": "a"})
    _assert_same(back, state)
    _assert_same(ck.latest(state)[1], state)
    assert back["arch"].shape == (0, 5) and isinstance(back["arch"], jax.Array)


def test_without_template_the_state_is_flat(tmp_path):
    ck = StageCheckpoints(tmp_path / "stage")
    ck.save(1, _state(), {})
    flat = ck.latest()[1]
    assert set(flat) == {jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(_state())[0]}
    assert flat["['pair'].n"] == 7 and isinstance(flat["['params']['dense']['kernel']"], np.ndarray)
    assert jnp.issubdtype(flat["['keys']"].dtype, jax.dtypes.prng_key) and flat["['arch']"].shape == (0, 5)
    ck.save(2, {}, {"done": True})
    assert ck.latest() == (2, {}, {"done": True})


@pytest.mark.parametrize("change, where, saved, expected", [
    (lambda s: s["params"]["dense"].update(kernel=jnp.zeros((2, 4))), "['params']['dense']['kernel']",
     "float32[2, 3]", "float32[2, 4]"),
    (lambda s: s.update(pair=Pair(s["pair"].w, jnp.float32(7))), "['pair'].n", "int32[]", "float32[]"),
    (lambda s: s.update(keys=jnp.zeros((3, 2), jnp.uint32)), "['keys']", "key<fry>[3]", "uint32[3, 2]"),
    (lambda s: s.pop("arch"), "['arch']", "float32[0, 5]", "nothing"),
])
def test_a_state_that_does_not_fit_is_refused_by_key_path_and_kept(tmp_path, change, where, saved, expected):
    ck = StageCheckpoints(tmp_path / "stage")
    ck.save(1, _state(), {})
    like = _state()
    change(like)
    with pytest.raises(ValueError) as e:
        ck.latest(like)
    msg = str(e.value)
    assert str(tmp_path / "stage" / "1") in msg and repr(where) in msg, msg
    assert f"holds {saved}, expected {expected}" in msg, msg
    assert (tmp_path / "stage" / "1").is_dir() and not list((tmp_path / "stage").glob("damaged-*"))


def test_older_leaves_list_checkpoint_resumes_by_leaf_order(tmp_path, caplog):
    # what the previous version wrote for state S: {"tree": {"leaves": jax.tree.leaves(S)}},
    # typed keys as {"__prng_key__": key data}, empty arrays as their shape and a dtype probe
    state = _state()
    leaves = [{"__prng_key__": np.asarray(jax.random.key_data(x))} if jnp.issubdtype(x.dtype, jax.dtypes.prng_key)
              else {"__empty_shape__": np.asarray(x.shape), "dtype": np.zeros(1, x.dtype)} if x.size == 0
              else np.asarray(x) for x in jax.tree.leaves(state)]
    mngr = ocp.CheckpointManager(tmp_path / "stage", item_names=("state", "record"),
                                 options=ocp.CheckpointManagerOptions(enable_async_checkpointing=False))
    mngr.save(3, args=ocp.args.Composite(state=ocp.args.StandardSave({"tree": {"leaves": leaves}}),
                                         record=ocp.args.JsonSave({"phase": "old"})))
    mngr.close()
    with caplog.at_level(logging.INFO, logger="metanas_jax"):
        step, back, rec = StageCheckpoints(tmp_path / "stage").latest(state)
    assert (step, rec) == (3, {"phase": "old"}) and "by leaf order" in caplog.text
    _assert_same(back, state)


def test_restored_state_runs_the_fresh_states_program(tmp_path):
    """A state restored into a template for the default device is placed as a fresh one
    is (uncommitted): a jitted step compiled for the fresh state runs it without a second
    program. (Committed arrays lowered to another program, so every step of a resumed run
    missed the persistent compilation cache and compiled again.)"""
    state = {k: v for k, v in _state().items() if k != "host"}
    step = jax.jit(lambda s: jax.tree.map(lambda a: a if jnp.issubdtype(a.dtype, jax.dtypes.prng_key)
                                          else a + 1, s))
    step(state)
    ck = StageCheckpoints(tmp_path / "ck")
    ck.save(1, state, {})
    for like in (state, jax.eval_shape(lambda: state)):
        restored = ck.latest(like)[1]
        _assert_same(step(restored), step(state))
        assert step._cache_size() == 1
