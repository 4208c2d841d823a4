"""End to end through the ``metanas`` command (subprocesses): every subcommand, SIGKILL
inside each stage + resume == uninterrupted run, report and export. Tiny settings; the XLA
compilation cache is shared between the runs so only the first one compiles."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

TINY = ["--no-progress", "--config.space.layers=2", "--config.space.ops=conv3x3,identity",
        "--config.space.widths=4,8",
        "--config.space.stem_width=4", "--config.data.num_tasks=4", "--config.meta.archs_per_task=4",
        "--config.meta.tasks_per_checkpoint=2", "--config.candidate.steps=4",
        "--config.meta.evaluator_steps=20", "--config.meta.cv_folds=2", "--config.search.budget=8",
        "--config.search.methods=meta,random", "--config.train.epochs=3",
        "--config.data.target_train=64", "--config.data.target_val=16"]


def _env(cache):
    # every program cached, also those under the CLI's 1-s threshold: the resumed runs
    # then compile next to nothing (the kill/resume test: 68 -> 40 s on 2 idle cores)
    return {**os.environ, "JAX_COMPILATION_CACHE_DIR": str(cache),
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", "PYTHONUNBUFFERED": "1"}


def _cli(args, cache, check=True):
    p = subprocess.run([sys.executable, "-m", "metanas_jax", *args], env=_env(cache),
                       capture_output=True, text=True, timeout=1500)
    if check and p.returncode != 0:
        raise AssertionError(f"metanas {args[0]} failed ({p.returncode}):\n{p.stderr[-3000:]}")
    return p


def _results(workdir: Path):
    s = json.loads((workdir / "search.json").read_text())
    f = json.loads((workdir / "final.json").read_text())
    return ({k: (v["choices"], v["scores"], v["zs"], v["predicted"], v["diverged"])
             for k, v in s["results"].items()},
            (f["arch"], f["val_acc"], f["test_acc"], [h["val_acc"] for h in f["history"]]))


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("xla")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, cache):
    wd = tmp_path_factory.mktemp("run") / "a"
    p = _cli(["run", "--workdir", str(wd), *TINY], cache)
    assert "best architecture" in p.stdout and "test accuracy" in p.stdout
    return wd, p.stdout


@pytest.mark.slow
def test_run_summary_report_export(uninterrupted):
    wd, out = uninterrupted
    assert (wd / "report" / "report.md").is_file()
    assert "2-fold cross-validated" in out  # the evaluator's cross-validation, in the summary
    assert "cross-validated over source tasks" in (wd / "report" / "report.md").read_text()
    for fig in ("search.png", "training.png", "arch.png", "predicted_meta.png"):
        assert (wd / "report" / fig).is_file(), fig
    for st in ("meta-train", "search", "train"):
        assert (wd / "metrics" / f"{st}.jsonl").is_file()
    from metanas_jax.export import load_model
    from metanas_jax import data
    model, variables = load_model(wd / "export")
    x = data.load("digits", split="test").images[:5]
    logits = model.apply(variables, model.preprocess(x))
    assert logits.shape == (5, 5)  # the default target: digits 5-9
    final = json.loads((wd / "final.json").read_text())
    assert model.arch_string == final["arch"]


def test_searcher_from_a_finished_workdir(uninterrupted):
    """builders.from_workdir rebuilds the run's meta-searcher and its candidate evaluation:
    the recorded candidates score as the search stage scored them."""
    import metanas_jax as mn
    wd, _ = uninterrupted
    searcher, evaluate, prep = mn.builders.from_workdir(wd, method="meta")
    rec = json.loads((wd / "search.json").read_text())["results"]["meta"]
    zs = np.asarray(rec["zs"][:3], np.float32)
    np.testing.assert_allclose(evaluate(zs), rec["scores"][:3], atol=1e-6)
    state = mn.search.run_search(searcher, evaluate, 3, jax.random.key(0))
    assert np.isfinite(mn.search.best(state.history)[1])
    with pytest.raises(ValueError, match="needs a run with meta.method='metanas'"):
        mn.builders.from_workdir(wd, method="metanas")
    with pytest.raises(ValueError, match="config.json missing"):
        mn.builders.from_workdir(wd / "nothing")


def test_search_pick_model_hands_over_the_searchers_recommendation(uninterrupted, tmp_path):
    """``search.pick="model"``: the meta-searcher's architecture is the evaluated one its
    adapted evaluator predicts best (``search.recommend`` on the search's final state)."""
    import shutil

    import jax.numpy as jnp

    import metanas_jax as mn
    from metanas_jax import builders, pipeline
    from metanas_jax.config import apply_overrides, stored_config
    wd_a, _ = uninterrupted
    wd = tmp_path / "pick"
    shutil.copytree(wd_a, wd)
    shutil.rmtree(wd / "ckpt" / "search")
    cfg = apply_overrides(stored_config(wd), ["search.pick=model"])
    r = pipeline.search(cfg, wd)["results"]["meta"]
    searcher, _, _ = mn.builders.from_workdir(wd, method="meta")
    state, b = searcher.init(builders.keys(cfg)["search"]), int(cfg.search.batch_size)
    tell = jax.jit(lambda s, st, z, y: s.tell(st, z, y))
    for i in range(0, len(r["scores"]), b):
        state = tell(searcher, state, jnp.asarray(r["zs"][i:i + b]), jnp.asarray(r["scores"][i:i + b]))
    assert r["picked_by"] == "model"
    assert r["best_index"] == int(mn.search.recommend(searcher, state))
    assert r["best_val"] == r["scores"][r["best_index"]]
    with pytest.raises(ValueError, match="search.pick must be one of"):
        builders.check_search(apply_overrides(stored_config(wd), ["search.pick=luck"]))


def test_search_finalists_trained_and_best_validation_handed_over(uninterrupted, tmp_path):
    """``search.finalists=2``: each method's two best-scored distinct candidates are
    trained with the train recipe (here 1 epoch on 32 images), the one with the best
    validation accuracy is handed over; a search killed after its first finalist resumes
    to the same record; bad values are refused by key."""
    import shutil

    from metanas_jax import builders, pipeline
    from metanas_jax import search as S
    from metanas_jax.config import apply_overrides, stored_config
    wd_a, _ = uninterrupted
    wd = tmp_path / "finalists"
    shutil.copytree(wd_a, wd)
    shutil.rmtree(wd / "ckpt" / "search")
    over = ["search.finalists=2", "search.finalist_epochs=1", "search.finalist_images=32"]
    cfg = apply_overrides(stored_config(wd), over)
    rec = pipeline.search(cfg, wd)["results"]
    for name, r in rec.items():
        fin = r["finalists"]
        assert [f["index"] for f in fin] == S.finalists(r["scores"], r["choices"], 2, r["diverged"])
        assert len({f["arch"] for f in fin}) == len(fin) == 2
        assert all(f["epochs"] == 1 and f["train_images"] == 32 and "test_acc" not in f for f in fin)
        assert r["picked_by"] == "finalists"
        assert r["best_index"] == max(fin, key=lambda f: f["val_acc"])["index"]
    from metanas_jax.report import write_report
    report = write_report(wd).read_text()
    assert "Finalists of `meta`" in report and "| trained val |" in report
    # resumed after the first finalist of the first method: the same record
    wd_b = tmp_path / "resumed"
    shutil.copytree(wd_a, wd_b)
    shutil.rmtree(wd_b / "ckpt" / "search")
    calls = []
    real = pipeline.T.train

    def killed_after_one(*a, **kw):
        if calls:
            raise KeyboardInterrupt
        calls.append(1)
        return real(*a, **kw)
    pipeline.T.train = killed_after_one
    try:
        with pytest.raises(KeyboardInterrupt):
            pipeline.search(cfg, wd_b)
    finally:
        pipeline.T.train = real
    again = pipeline.search(cfg, wd_b)["results"]
    for name in rec:
        assert [(f["index"], f["val_acc"]) for f in again[name]["finalists"]] == \
            [(f["index"], f["val_acc"]) for f in rec[name]["finalists"]]
        assert again[name]["best_index"] == rec[name]["best_index"]
    for bad, key in (("search.finalists=0", "search.finalists"),
                     ("search.finalist_images=-1", "search.finalist_images")):
        with pytest.raises(ValueError, match=key):
            builders.check_search(apply_overrides(stored_config(wd), [bad]))
    with pytest.raises(ValueError, match="search.pick"):
        builders.check_search(apply_overrides(stored_config(wd), ["search.finalists=2", "search.pick=model"]))


@pytest.mark.slow
def test_kill_in_every_stage_and_resume_equals_uninterrupted(uninterrupted, cache, tmp_path):
    """SIGKILL right after the first checkpoint of each stage in turn (meta-train mid-
    experience, search after its first round, final training after its first epoch), each
    time resumed by a rerun: the results equal the uninterrupted run's."""
    wd_a, _ = uninterrupted
    wd = tmp_path / "b"
    for stage in ("meta-train", "search", "train"):
        p = subprocess.run([sys.executable, "-m", "metanas_jax", "run", "--workdir", str(wd), *TINY],
                           env={**_env(cache), "METANAS_FAULT": f"{stage}:1"}, capture_output=True,
                           text=True, timeout=1500)
        assert p.returncode == -signal.SIGKILL, (stage, p.returncode, p.stderr[-2000:])
        assert not (wd / "final.json").exists()
    # resume stage by stage: exercises each subcommand
    _cli(["meta-train", "--workdir", str(wd), *TINY], cache)
    _cli(["search", "--workdir", str(wd), *TINY], cache)
    _cli(["train", "--workdir", str(wd), *TINY], cache)
    p = _cli(["report", "--workdir", str(wd), *TINY], cache)
    assert "report.md" in p.stdout and "incomplete" not in p.stdout
    a, b = _results(wd_a), _results(wd)
    assert a[0].keys() == b[0].keys()
    for k in a[0]:
        assert a[0][k][0] == b[0][k][0], k
        np.testing.assert_array_equal(a[0][k][1], b[0][k][1])
    assert a[1] == b[1]
    from metanas_jax.export import load_model
    wa, wb = load_model(wd_a / "export")[1], load_model(wd / "export")[1]
    for x, y in zip(jax.tree.leaves(wa), jax.tree.leaves(wb)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.slow
def test_final_training_resumes_from_its_last_checkpoint(uninterrupted, cache, tmp_path):
    """The newest final-training checkpoint lost (a kill after the last epoch's save): the
    rerun restores the previous one into a traced template and ends identically."""
    import shutil
    wd_a, _ = uninterrupted
    wd = tmp_path / "c"
    shutil.copytree(wd_a, wd)
    ck = wd / "ckpt" / "train"
    steps = sorted(int(p.name) for p in ck.iterdir() if p.name.isdigit())
    assert len(steps) >= 2
    shutil.rmtree(ck / str(steps[-1]))
    (wd / "final.json").unlink()
    _cli(["train", "--workdir", str(wd), *TINY], cache)
    assert _results(wd_a)[1] == _results(wd)[1]


@pytest.mark.slow
def test_incompatible_workdir_refused(uninterrupted, cache):
    wd, _ = uninterrupted
    p = _cli(["search", "--workdir", str(wd), *TINY, "--config.search.budget=9"], cache, check=False)
    assert p.returncode == 2 and "incompatible config" in p.stderr and "search.budget" in p.stderr


@pytest.mark.parametrize("override", ["search.budget=0", "search.methods=foo", "train.lr=nan",
                                      "train.tta=rotate", "data.target=folder:/nonexistent"])
def test_bad_config_leaves_no_workdir_record(tmp_path, override):
    """A config that fails its checks writes no config.json, so the corrected rerun is not
    refused as 'incompatible'."""
    from metanas_jax import pipeline
    from metanas_jax.config import apply_overrides, load_config
    cfg = load_config("configs/default.py")
    key = override.split("=")[0]
    with pytest.raises((ValueError, FileNotFoundError),
                       match=key.split(".")[1] if key != "data.target" else "nonexistent"):
        apply_overrides(cfg, [override])
        pipeline.run_stages(cfg, tmp_path / "wd")
    assert not (tmp_path / "wd" / "config.json").exists()


def test_second_process_on_a_workdir_is_refused(tmp_path):
    """One metanas per workdir: while the lock is held (here by this test, as a running
    job would), a run on the same workdir fails at once naming the workdir."""
    from metanas_jax.workdir import workdir_lock
    wd = tmp_path / "wd"
    with workdir_lock(wd):
        p = subprocess.run([sys.executable, "-m", "metanas_jax", "run", "--workdir", str(wd), *TINY],
                           capture_output=True, text=True, timeout=600)
        assert p.returncode == 2 and "in use by another metanas process" in p.stderr
    assert not (wd / "config.json").exists()
    with workdir_lock(wd):  # released: can be taken again
        pass


def test_distributed_flags_parsed():
    """``--coordinator/--num-processes/--process-id`` reach parallel.initialize (not overrides)."""
    from metanas_jax import cli
    args, overrides = cli.parse_args(["run", "--coordinator", "h:1", "--num-processes", "2",
                                      "--process-id", "1", "--config.runtime.mesh=auto"])
    assert (args.coordinator, args.num_processes, args.process_id) == ("h:1", 2, 1)
    assert overrides == ["runtime.mesh=auto"]


def test_compile_cache_threshold_from_the_environment(monkeypatch, tmp_path):
    """The CLI caches programs that compile in >= 1 s unless jax's own variable is set
    (the tests above set 0: resumed runs then compile next to nothing)."""
    from metanas_jax import cli
    from metanas_jax.config import load_config
    saved = (jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_compile_time_secs)
    cfg = load_config("default")
    cfg.runtime.compile_cache = str(tmp_path / "xla")
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    monkeypatch.delenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", raising=False)
    try:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.25)
        cli._compile_cache(cfg)
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / "xla")
        assert jax.config.jax_persistent_cache_min_compile_time_secs == 1.0
        monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.25")
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.25)  # as jax read it
        cli._compile_cache(cfg)
        assert jax.config.jax_persistent_cache_min_compile_time_secs == 0.25
    finally:
        jax.config.update("jax_compilation_cache_dir", saved[0])
        jax.config.update("jax_persistent_cache_min_compile_time_secs", saved[1])
