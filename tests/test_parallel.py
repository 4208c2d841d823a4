"""Scale-out (metanas_jax.parallel): sharded meta-step and candidate evaluation agree with
one device, the replicated-gradient trap is caught, checkpoints round-trip, and two
processes joined by jax.distributed agree with one.

Device counts are fixed when jax starts, so every check runs in a fresh Python process
started from here (this file is also the worker: ``python test_parallel.py MODE ...``).
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

HERE = os.path.abspath(__file__)
TIMEOUT = 900


def _env(devices: int) -> dict:
    env = dict(os.environ)
    # (--xla_backend_optimization_level=0 would halve compile time but gave NaNs here)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                        f" --xla_force_host_platform_device_count={devices}").strip()
    env["JAX_PLATFORMS"] = "cpu"
    for k in ("METANAS_COORDINATOR", "METANAS_NUM_PROCESSES", "METANAS_PROCESS_ID"):
        env.pop(k, None)
    return env


def _run(args, devices, tmp_path):
    p = subprocess.run([sys.executable, HERE, *args], env=_env(devices), cwd=str(tmp_path),
                       capture_output=True, text=True, timeout=TIMEOUT)
    assert p.returncode == 0, f"worker {args} failed:\n{p.stdout}\n{p.stderr[-4000:]}"
    return p.stdout


def test_sharded_equals_single_device_on_8_devices(tmp_path):
    out = _run(["eight", str(tmp_path / "ckpt")], 8, tmp_path)
    assert "OK eight" in out, out


def test_two_processes_equal_one(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [subprocess.Popen([sys.executable, HERE, "multi", str(port), str(i), str(tmp_path)],
                              env=_env(2), cwd=str(tmp_path), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = []
    try:
        for p in procs:
            o, e = p.communicate(timeout=TIMEOUT)
            outs.append((p.returncode, o, e))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for i, (rc, o, e) in enumerate(outs):
        assert rc == 0, f"process {i} failed:\n{o}\n{e[-4000:]}"
        assert f"OK multi {i}" in o, o


def test_initialize_single_process_without_coordinator(monkeypatch):
    from metanas_jax import parallel

    for k in parallel.ENV.values():
        monkeypatch.delenv(k, raising=False)
    assert parallel.initialize() == (0, 1)
    with pytest.raises(ValueError, match="coordinator"):
        parallel.initialize(num_processes=2)
    monkeypatch.setenv("METANAS_COORDINATOR", "127.0.0.1:1")
    with pytest.raises(ValueError, match="num_processes"):
        parallel.initialize()


# ------------------------------------------------------------------------------ workers ------
def _setup(meta_batch=8):
    import jax
    import jax.numpy as jnp

    from metanas_jax import data, meta

    n_way, size = 3, 12
    learner = meta.conv4_learner(n_way, channels=8, blocks=2)
    ks, kq = jax.random.split(jax.random.PRNGKey(0))
    batch = data.TaskBatch(
        jax.random.normal(ks, (meta_batch, n_way, size, size, 1)),
        jnp.tile(jnp.arange(n_way, dtype=jnp.int32), (meta_batch, 1)),
        jax.random.normal(kq, (meta_batch, 2 * n_way, size, size, 1)),
        jnp.tile(jnp.arange(n_way, dtype=jnp.int32).repeat(2), (meta_batch, 1)))
    return learner, batch


def _cfg(algorithm):
    from metanas_jax import meta

    return meta.MetaConfig(algorithm=algorithm, inner_steps=1, inner_lr=0.4, meta_lr=1e-2)


def _two_steps(step, state, batch):
    state, _ = step(state, batch)
    state, m = step(state, batch)
    return state, m


def _local(tree):
    """Host copy of (possibly multi-process, replicated) arrays."""
    import jax
    import numpy as np

    return jax.tree_util.tree_map(lambda a: np.asarray(a.addressable_data(0))
                                  if hasattr(a, "addressable_data") else np.asarray(a), tree)


def _close(a, b, what, rtol=2e-4, atol=2e-5):
    import jax
    import numpy as np

    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert len(la) == len(lb), what
    for x, y in zip(la, lb):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol, err_msg=what)


def worker_eight(ckpt_dir):
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import PartitionSpec as P

    jax.config.update("jax_default_matmul_precision", "highest")
    from metanas_jax import meta, parallel, spaces
    from metanas_jax.search import TrainConfig, make_evaluate_fn

    assert jax.device_count() == 8, jax.devices()
    mesh = parallel.make_mesh()

    # the trap itself: gradient wrt a replicated input inside shard_map is summed
    w, x = jnp.ones(3), jnp.arange(24.0).reshape(8, 3)
    naive = jax.jit(jax.shard_map(lambda w, x: jax.grad(lambda w: jnp.sum(w * x))(w), mesh=mesh,
                                  in_specs=(P(), P("data")), out_specs=P()))
    np.testing.assert_allclose(naive(w, x), x.sum(0))  # 8 x the per-device mean

    learner, batch = _setup(8)
    t0 = time.time()
    # second-order MAML, where the trap bites (FOMAML and Reptile go through the same
    # sharded code; each extra algorithm costs minutes of compilation on a 2-core CI machine),
    # with meta-learned inner rates, which are replicated parameters too
    cfg = _cfg("maml").replace(learn_inner_lr=True)
    state = meta.init_state(learner, cfg, jax.random.PRNGKey(1), batch.support_x[0])
    ref, m_ref = _two_steps(meta.make_meta_step(learner, cfg), state, batch)
    sh_batch = jax.device_put(batch, parallel.sharded(mesh))
    sh_state = jax.device_put(state, parallel.replicated(mesh))
    got, m = _two_steps(parallel.make_sharded_meta_step(learner, cfg, mesh), sh_state, sh_batch)
    _close(got.params, ref.params, "maml params")
    _close(got.inner_lrs, ref.inner_lrs, "maml inner rates")
    _close(got.opt_state, ref.opt_state, "maml opt_state")
    _close(m, m_ref, "maml metrics")

    # without pcast (the trap) the sharded MAML step is wrong: the test above would catch it
    pcast = jax.lax.pcast
    try:
        jax.lax.pcast = lambda a, axis, to: a
        bad, _ = _two_steps(parallel.make_sharded_meta_step(learner, cfg, mesh), state, batch)
    finally:
        jax.lax.pcast = pcast
    diff = max(float(np.max(np.abs(a - b))) for a, b in
               zip(jax.tree_util.tree_leaves(bad.params), jax.tree_util.tree_leaves(ref.params)))
    assert diff > 1e-3, f"trap not visible (max diff {diff})"

    # meta-batch that does not split over the mesh
    try:
        parallel.make_sharded_meta_step(learner, cfg, mesh)(state, _setup(6)[1])
        raise AssertionError("expected ValueError")
    except ValueError as e:
        assert "does not split" in str(e)

    print("eval", f"{time.time() - t0:.1f}s", flush=True)
    # candidate evaluation: sharded == single device, one compilation for all rounds
    # (a small macro32 space: the nb201 supernet took ~100 s of compilation here)
    space = spaces.get("macro32", layers=2, ops=("conv3x3", "identity"), widths=(4, 8),
                       stem_width=4)
    tcfg = TrainConfig(steps=1, lr=1e-2, chunk=1)
    k = jax.random.PRNGKey(3)
    task = (jax.random.normal(k, (6, 8, 8, 1)), jnp.arange(6, dtype=jnp.int32) % 3,
            jax.random.normal(jax.random.fold_in(k, 1), (6, 8, 8, 1)),
            jnp.arange(6, dtype=jnp.int32) % 3)
    zs = np.asarray(space.sample(jax.random.PRNGKey(4), 11))
    ref_eval = make_evaluate_fn(space, task, jax.random.PRNGKey(5), num_classes=3, train=tcfg)
    sh_eval = parallel.make_sharded_evaluate_fn(space, task, jax.random.PRNGKey(5), mesh,
                                                num_classes=3, train=tcfg)
    np.testing.assert_allclose(sh_eval(zs), ref_eval(zs), atol=1e-6)
    np.testing.assert_allclose(sh_eval(zs[:5]), ref_eval(zs[:5]), atol=1e-6)
    assert sh_eval.stats["evaluations"] == 16 and sh_eval.stats["compilations"] == 1, sh_eval.stats

    print("ckpt", f"{time.time() - t0:.1f}s", flush=True)
    # checkpoint of a replicated state round-trips
    sh_state = jax.device_put(state, parallel.replicated(mesh))
    path = parallel.save_checkpoint(ckpt_dir, sh_state, step=3)
    back = parallel.restore_checkpoint(path, sh_state)
    _close(back.params, state.params, "restored params", rtol=0, atol=0)
    assert back.params["conv0"]["kernel"].sharding == sh_state.params["conv0"]["kernel"].sharding
    print("OK eight", flush=True)


def worker_multi(port, pid, tmp):
    import jax
    import numpy as np

    from metanas_jax import parallel

    t0 = time.time()
    assert parallel.initialize(f"127.0.0.1:{port}", 2, int(pid)) == (int(pid), 2)
    jax.config.update("jax_default_matmul_precision", "highest")
    from metanas_jax import meta

    assert jax.device_count() == 4 and jax.local_device_count() == 2
    mesh = parallel.make_mesh()
    # a sharded sum across both processes
    mine = parallel.host_slice(8, mesh)
    x = parallel.global_batch(np.arange(8.0)[mine], mesh)
    total = jax.jit(lambda a: a.sum(), out_shardings=parallel.replicated(mesh))(x)
    assert float(total.addressable_data(0)) == 28.0, total

    learner, batch = _setup(8)
    cfg = _cfg("maml")
    state = meta.init_state(learner, cfg, jax.random.PRNGKey(1), batch.support_x[0])
    ref, m_ref = _two_steps(meta.make_meta_step(learner, cfg), state, batch)  # this host alone
    local = jax.tree_util.tree_map(lambda a: np.asarray(a)[parallel.host_slice(8, mesh)], batch)
    g_batch = parallel.global_batch(local, mesh)  # each host passed only its own tasks
    g_state = parallel.replicate(state, mesh)
    got, m = _two_steps(parallel.make_sharded_meta_step(learner, cfg, mesh), g_state, g_batch)
    _close(_local(got.params), ref.params, "2-process params")
    _close(_local(m), m_ref, "2-process metrics")

    path = parallel.save_checkpoint(os.path.join(tmp, "ckpt"), got, step=2)
    back = parallel.restore_checkpoint(path, g_state)
    _close(_local(back.params), _local(got.params), "2-process restore", rtol=0, atol=0)
    print(f"OK multi {pid} ({time.time() - t0:.1f}s)", flush=True)
    jax.distributed.shutdown()


if __name__ == "__main__":
    sys.path.insert(0, os.path.join(os.path.dirname(HERE), ".."))
    mode, rest = sys.argv[1], sys.argv[2:]
    {"eight": worker_eight, "multi": worker_multi}[mode](*rest)
