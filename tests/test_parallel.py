"""Scale-out (metanas_jax.parallel): sharded meta-step and candidate evaluation agree with
one device, the replicated-gradient trap is caught, checkpoints round-trip with their
shardings, and two processes joined by jax.distributed agree with one.

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
from pathlib import Path

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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _processes(commands, env, cwd):
    """Run the commands as concurrent processes; ``[(stdout, stderr)]``, each exit 0."""
    procs = [subprocess.Popen(c, env=env, cwd=str(cwd), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for c in commands]
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
    return [(o, e) for _, o, e in outs]


def test_two_processes_equal_one(tmp_path):
    port = _free_port()
    outs = _processes([[sys.executable, HERE, "multi", str(port), str(i), str(tmp_path)]
                       for i in range(2)], _env(2), tmp_path)
    for i, (o, _) in enumerate(outs):
        assert f"OK multi {i}" in o, o


def test_job_on_8_devices_equals_one_device(tmp_path):
    """The main job (meta-train -> search -> train, tiny) with ``runtime.mesh=8`` gives the
    architecture, search scores and accuracies of ``runtime.mesh=1``; one data-parallel
    final-training step equals the single-device step (batch norm over the global batch)."""
    out = _run(["job", str(tmp_path)], 8, tmp_path)
    assert "OK job" in out, out


def _killed(commands, env, cwd, grace=60):
    """Run the commands as concurrent processes that are expected to die (fault
    injection); once the first has ended the others get ``grace`` seconds, then SIGKILL
    (a process whose peer died can wait long in a collective). Their return codes."""
    procs = [subprocess.Popen(c, env=env, cwd=str(cwd), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL) for c in commands]
    t0, first = time.time(), None
    while any(p.poll() is None for p in procs) and time.time() - t0 < TIMEOUT:
        if first is None and any(p.poll() is not None for p in procs):
            first = time.time()
        if first is not None and time.time() - first > grace:
            break
        time.sleep(1)
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()
    return [p.returncode for p in procs]


@pytest.mark.skipif(os.environ.get("METANAS_TEST_MULTIPROCESS_JOB") != "1",
                    reason="minutes on 2 cores: set METANAS_TEST_MULTIPROCESS_JOB=1")
def test_job_on_two_processes_killed_and_resumed(tmp_path):
    """``metanas run`` (tiny) as 2 processes x 2 devices joined by --coordinator flags,
    both SIGKILLed right after the search stage's first checkpoint, then started again:
    it resumes and completes in one workdir, written once (process 0 prints the summary),
    with the search results, architecture and accuracies of a one-process, one-device run
    (train losses up to float summation order)."""
    wd, ref = tmp_path / "wd", tmp_path / "ref"
    env = {**_env(2), "PYTHONPATH": os.path.dirname(os.path.dirname(HERE))}

    def commands():
        args = ["run", "--workdir", str(wd), "--no-progress", "--coordinator",
                f"127.0.0.1:{_free_port()}", "--num-processes", "2", *[f"--config.{o}" for o in JOB]]
        return [[sys.executable, "-m", "metanas_jax", *args, "--process-id", str(i)] for i in range(2)]

    codes = _killed(commands(), {**env, "METANAS_FAULT": "search:1"}, tmp_path)
    assert codes[0] == -9, codes  # process 0 died at the fault, not of an error
    assert (wd / "ckpt" / "search").is_dir() and not (wd / "search.json").exists()
    outs = _processes(commands(), env, tmp_path)
    assert "best architecture" in outs[0][0] and "metanas summary" not in outs[1][0]
    assert (wd / "report" / "report.md").is_file() and (wd / "export").is_dir()
    _processes([[sys.executable, "-m", "metanas_jax", "run", "--workdir", str(ref), "--no-progress",
                 *[f"--config.{o}" for o in JOB], "--config.runtime.mesh=1"]],
               {**_env(1), "PYTHONPATH": env["PYTHONPATH"]}, tmp_path)
    (s2, f2, l2), (s1, f1, l1) = _job_results(wd), _job_results(ref)
    assert s2 == s1, (s2, s1)
    assert f2 == f1, (f2, f1)
    import numpy as np
    np.testing.assert_allclose(l2, l1, rtol=1e-4)


def test_runtime_mesh_validation(monkeypatch):
    import types

    from metanas_jax import parallel
    from metanas_jax import train as T

    assert parallel.mesh_size("auto") == 1 and parallel.mesh_from_config("auto") is None
    assert parallel.mesh_from_config(1) is None and parallel.mesh_from_config("1") is None
    for bad, msg in (("foo", "runtime.mesh must be"), (0, "runtime.mesh must be"),
                     (1.5, "runtime.mesh must be"), (2, "only 1 device")):
        with pytest.raises(ValueError, match=msg):
            parallel.mesh_size(bad)
    cfg = T.FinalTrainConfig(batch_size=60)
    T.check_batch_split(cfg, types.SimpleNamespace(size=4))
    with pytest.raises(ValueError, match=r"train.batch_size=60 does not split over the 8 devices"):
        T.check_batch_split(cfg, types.SimpleNamespace(size=8))


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
    # a replicated meta-state and a row-sharded array round-trip, restored into an abstract
    # template with their shardings
    from metanas_jax.checkpoint import StageCheckpoints
    tree = {"meta": jax.device_put(state, parallel.replicated(mesh)),
            "rows": jax.device_put(jnp.arange(24.0).reshape(8, 3), parallel.sharded(mesh))}
    ck = StageCheckpoints(ckpt_dir)
    ck.save(3, tree, {"step": 3})
    like = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), tree)
    step, back, rec = ck.latest(like)
    assert (step, rec) == (3, {"step": 3})
    _close(back, tree, "restored", rtol=0, atol=0)
    for a, b in zip(jax.tree_util.tree_leaves(back), jax.tree_util.tree_leaves(tree)):
        assert a.sharding == b.sharding, (a.sharding, b.sharding)
    print("OK eight", flush=True)


# tiny job settings (cf. tests/test_cli.py's TINY, smaller still): every stage, sharded
# experience and search rounds, data-parallel final training (no cross-validation: it is
# not sharded and costs compilations)
JOB = ["space.layers=2", "space.ops=conv3x3,identity", "space.widths=4,8", "space.stem_width=4",
       "data.num_tasks=4", "meta.archs_per_task=4", "meta.tasks_per_checkpoint=2",
       "candidate.steps=4", "meta.evaluator_steps=10", "meta.cv_folds=0", "search.budget=8",
       "search.methods=meta,random", "train.epochs=2", "train.batch_size=32",
       "data.target_train=64", "data.target_val=16", "runtime.progress=False",
       "runtime.tensorboard=off", "runtime.compile_cache="]


METANAS = ["space.layers=2", "space.ops=conv3x3,identity", "space.widths=4,8", "space.stem_width=4",
           "data.num_tasks=4", "meta.metanas.steps=2", "meta.metanas.checkpoint_every=1",
           "meta.metanas.meta_batch=2", "data.target_train=64", "data.target_val=16",
           "runtime.progress=False", "runtime.tensorboard=off", "runtime.compile_cache="]


def _job_results(wd):
    from pathlib import Path

    wd = Path(wd)
    s = json.loads((wd / "search.json").read_text())
    f = json.loads((wd / "final.json").read_text())
    return ({k: (v["choices"], v["scores"]) for k, v in s["results"].items()},
            (f["arch"], f["val_acc"], f["test_acc"], [h["val_acc"] for h in f["history"]]),
            [h["train_loss"] for h in f["history"]])


def worker_job(tmp):
    import jax
    import numpy as np

    from metanas_jax import builders, data, parallel, pipeline, spaces
    from metanas_jax import train as T
    from metanas_jax.config import apply_overrides, load_config

    assert jax.device_count() == 8
    # programs both runs share (final-training evaluation, searchers) compile once
    jax.config.update("jax_compilation_cache_dir", os.path.join(tmp, "xla"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    t0 = time.time()
    # one data-parallel step == one single-device step (params, batch-norm statistics, loss)
    space = spaces.get("macro32", layers=2, ops=("conv3x3", "identity"), widths=(4, 8),
                       stem_width=4)
    arch = space.decode(np.asarray(space.sample(jax.random.PRNGKey(0), 1))[0])
    cfg = T.FinalTrainConfig(batch_size=32, epochs=1, crop_pad=1, ema=0.9)
    net, tx, _ = T.setup(space, arch, types_ds(10, (8, 8, 1), 64), cfg)
    state = T.create_state(net, jax.random.key(0), (8, 8, 1), tx, cfg)
    rng = np.random.default_rng(0)
    batch = (rng.integers(0, 256, (32, 8, 8, 1), dtype=np.uint8),
             rng.integers(0, 10, 32).astype(np.int32), rng.random(32) < 0.5)
    key = jax.random.key(1)
    ref, m_ref = T.make_train_step(net, tx, cfg, 10, data.normalize)(
        jax.tree.map(np.copy, parallel.to_local(state)), tuple(jax.numpy.asarray(b) for b in batch), key)
    mesh = parallel.make_mesh(8)
    got, m = T.make_train_step(net, tx, cfg, 10, data.normalize, mesh=mesh)(state, batch, key)
    assert jax.tree.leaves(got.params)[0].sharding == parallel.replicated(mesh)
    got = parallel.to_local(got)
    # tolerance: float32 summation order of the partitioned reductions
    _close(got.params, ref.params, "dp params", rtol=1e-5, atol=1e-6)
    _close(got.batch_stats, ref.batch_stats, "dp batch_stats", rtol=1e-5, atol=1e-6)
    _close(got.ema, ref.ema, "dp ema", rtol=1e-5, atol=1e-6)
    _close(parallel.to_local(m), m_ref, "dp metrics", rtol=1e-5, atol=1e-6)
    print("step", f"{time.time() - t0:.1f}s", flush=True)

    def run(mesh_value, name):
        c = load_config("default")
        apply_overrides(c, JOB + [f"runtime.mesh={mesh_value}"])
        pipeline.run_stages(c, os.path.join(tmp, name))
        return _job_results(os.path.join(tmp, name))

    one = run(1, "one")
    print("one", f"{time.time() - t0:.1f}s", flush=True)
    eight = run("auto", "eight")
    print("eight", f"{time.time() - t0:.1f}s", flush=True)
    # exact: on XLA:CPU the sharded evaluator and ES training happen to give the same
    # floats as one device here; elsewhere a reduction order may change a last bit
    assert one[0] == eight[0], (one[0], eight[0])  # search: same candidates and scores
    assert one[1] == eight[1], (one[1], eight[1])  # final: same arch and accuracies
    np.testing.assert_allclose(eight[2], one[2], rtol=1e-4)  # train loss: summation order
    # the MetaNAS meta-train stage: the meta-batch's 2 tasks split over 2 devices (one device
    # compiles one supernet copy per task: a larger meta-batch costs minutes here)
    def metanas(mesh_value, name):
        c = load_config("metanas_digits")
        apply_overrides(c, METANAS + [f"runtime.mesh={mesh_value}"])
        return pipeline.meta_train(c, Path(tmp) / name)

    m1, m2 = metanas(1, "metanas-one"), metanas(2, "metanas-two")
    assert m1["meta_arch"] == m2["meta_arch"], (m1["meta_arch"], m2["meta_arch"])
    np.testing.assert_allclose(m2["history"], m1["history"], rtol=1e-4, atol=1e-6)
    print("metanas", f"{time.time() - t0:.1f}s", flush=True)
    c = load_config("metanas_digits")
    apply_overrides(c, METANAS + ["runtime.mesh=auto"])  # 2 tasks on 8 devices
    try:
        builders.check_config(c, source=False)
        raise AssertionError("expected ValueError")
    except ValueError as e:
        assert "meta.metanas.meta_batch=2" in str(e), e
    c = load_config("default")
    apply_overrides(c, JOB + ["train.batch_size=36"])
    try:
        builders.check_config(c, source=False)
        raise AssertionError("expected ValueError")
    except ValueError as e:
        assert "train.batch_size=36" in str(e), e
    print("OK job", flush=True)


def types_ds(num_classes, image_shape, n):
    class _DS:
        pass
    ds = _DS()
    ds.num_classes, ds.image_shape = num_classes, image_shape
    ds.__class__.__len__ = lambda self: n
    return ds


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

    from metanas_jax.checkpoint import StageCheckpoints
    ck = StageCheckpoints(os.path.join(tmp, "ckpt"))  # every process saves its shards
    ck.save(2, got, {"step": 2})
    back = ck.latest(g_state)[1]  # into the global, replicated layout
    _close(_local(back.params), _local(got.params), "2-process restore", rtol=0, atol=0)
    assert back.params["conv0"]["kernel"].sharding == g_state.params["conv0"]["kernel"].sharding
    # into a template without shardings (the main job's way): each process's first device
    back = ck.latest(jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), state))[1]
    _close(back.params, _local(got.params), "2-process restore to one device", rtol=0, atol=0)
    assert back.params["conv0"]["kernel"].sharding.device_set == {jax.local_devices()[0]}
    print(f"OK multi {pid} ({time.time() - t0:.1f}s)", flush=True)
    jax.distributed.shutdown()


if __name__ == "__main__":
    sys.path.insert(0, os.path.join(os.path.dirname(HERE), ".."))
    mode, rest = sys.argv[1], sys.argv[2:]
    {"eight": worker_eight, "multi": worker_multi, "job": worker_job}[mode](*rest)
