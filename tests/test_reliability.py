"""Failures a user meets, each with its expected outcome: damaged checkpoints fall back to
the previous step, bad configs and data fail before anything is written (naming the key
or file), diverged trainings are failures and not chance accuracies, every failure of the
command line is one line with a documented exit code, partial workdirs are reported as
incomplete. (SIGKILL inside each stage and the workdir lock: tests/test_cli.py.)"""
import glob
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from metanas_jax import builders, cli, pipeline
from metanas_jax.checkpoint import StageCheckpoints
from metanas_jax.config import apply_override, apply_overrides, load_config
from metanas_jax.workdir import search_warnings, write_data


# -- checkpoints ------------------------------------------------------------------------------
def _damage(step_dir: Path, kind: str):
    if kind == "emptied record":
        (step_dir / "record" / "metadata").write_text("")
    elif kind == "emptied metadata":
        (step_dir / "state" / "_METADATA").write_text("")
    elif kind == "missing metadata":
        (step_dir / "state" / "_METADATA").unlink()
    elif kind == "truncated data":
        for f in glob.glob(str(step_dir / "state" / "**" / "d" / "*"), recursive=True):
            b = Path(f).read_bytes()
            Path(f).write_bytes(b[: len(b) // 2])
    elif kind == "missing state":
        shutil.rmtree(step_dir / "state")


@pytest.fixture(scope="module")
def two_steps(tmp_path_factory):
    d = tmp_path_factory.mktemp("ck") / "stage"
    ck = StageCheckpoints(d)
    for step in (1, 2):
        ck.save(step, {"x": np.arange(4.0) * step}, {"step": step})
    ck.close()
    return d


@pytest.mark.parametrize("kind", ["emptied record", "emptied metadata", "missing metadata",
                                  "truncated data", "missing state"])
def test_damaged_newest_checkpoint_falls_back_to_the_previous(two_steps, tmp_path, kind, caplog):
    d = tmp_path / "stage"
    shutil.copytree(two_steps, d)
    _damage(d / "2", kind)
    with caplog.at_level(logging.WARNING, logger="metanas_jax"):
        step, state, record = StageCheckpoints(d).latest(like={"x": np.zeros(4)})
    assert (step, record) == (1, {"step": 1})
    np.testing.assert_array_equal(state["x"], np.arange(4.0))
    [msg] = [r.getMessage() for r in caplog.records if r.name == "metanas_jax"]
    assert str(d / "2") in msg and "damaged" in msg
    assert not (d / "2").exists() and len(list(d.glob("damaged-2-*"))) == 1  # kept, set aside
    ck = StageCheckpoints(d)  # the run goes on: the next save of step 2 works
    ck.save(2, {"x": np.ones(4)}, {"step": 2})
    assert ck.latest()[0] == 2


def test_all_checkpoints_damaged_restarts_the_stage(two_steps, tmp_path, caplog):
    d = tmp_path / "stage"
    shutil.copytree(two_steps, d)
    for step in ("1", "2"):
        _damage(d / step, "emptied record")
    with caplog.at_level(logging.WARNING, logger="metanas_jax"):
        assert StageCheckpoints(d).latest() is None
    assert len([r for r in caplog.records if "damaged" in r.getMessage()]) == 2


# -- the config, checked before anything is written ---------------------------------------------
def _cfg(*overrides):
    cfg = load_config("configs/default.py")
    apply_overrides(cfg, list(overrides))
    return cfg


def _rgb_folder(root: Path, size=8) -> Path:
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True)
            for i in range(12):
                Image.fromarray(rng.integers(0, 256, (size, size, 3), np.uint8)).save(root / split / c / f"{i}.png")
    return root


@pytest.mark.parametrize("overrides, match", [
    (["candidate.lr=nan"], "'candidate.lr' must be finite"),
    (["train.weight_decay=inf"], "'train.weight_decay' must be finite"),
    (["candidate.lr=0"], "candidate.lr"),
    (["meta.cv_folds=1"], "meta.cv_folds=1"),
    (["data.num_tasks=1"], "data.num_tasks"),
    (["meta.method=metanas", "meta.metanas.meta_batch=99"], "meta_batch"),
    (["data.target_classes=5"], "has 1 class"),
    (["search.methods=meta,foo"], "'foo'"),
    (["space.layers=1", "search.budget=40"], "search.budget=40 exceeds the 32 architectures"),
    (["meta.evaluator_lr=0"], "meta.evaluator_lr must be > 0"),
    (["meta.task_images=0"], "meta.task_images must be >= 1"),
    (["search.scratch_fit_steps=0"], "search.scratch_fit_steps must be >= 1"),
    (["meta.method=metanas", "search.methods=metanas", "meta.metanas.arch_init_scale=-1"],
     "meta.metanas.arch_init_scale must be >= 0"),
])
def test_bad_config_fails_before_the_workdir_is_written(tmp_path, overrides, match):
    with pytest.raises(ValueError, match=match):
        pipeline.run_stages(_cfg(*overrides), tmp_path / "wd")
    assert not (tmp_path / "wd").exists()


def test_nan_in_a_config_file_is_refused_by_name(tmp_path):
    cfg = _cfg()
    apply_override(cfg, "train.lr", float("nan"))  # as a config file would set it
    with pytest.raises(ValueError, match="'train.lr' must be finite"):
        builders.check_config(cfg)


def test_source_and_target_of_different_image_shapes_are_refused_up_front(tmp_path):
    target = _rgb_folder(tmp_path / "rgb")
    cfg = _cfg(f"data.target=folder:{target}", "data.target_classes=")
    with pytest.raises(ValueError, match=r"shape \(8, 8, 1\).*\(8, 8, 3\)"):
        pipeline.run_stages(cfg, tmp_path / "wd")
    assert not (tmp_path / "wd").exists()


def test_data_description_states_shape_classes_and_splits():
    d = builders.check_config(_cfg(), source=False).describe(_cfg())
    assert d["image_shape"] == [8, 8, 1] and d["num_classes"] == 5
    assert d["class_names"] == ["5", "6", "7", "8", "9"]
    assert d["images"]["search_train"] == 200 and d["images"]["test"] > 0


# -- divergence ---------------------------------------------------------------------------------
def test_diverged_candidates_are_failures_not_chance_accuracy():
    """(That a diverged candidate scores NaN: tests/test_search_experience.py.)"""
    cfg = _cfg()
    scores, n = pipeline._diverged_as_failures(np.array([0.5, np.nan], np.float32), "search", cfg)
    assert n == 1 and scores.tolist() == [0.5, 0.0]
    with pytest.raises(FloatingPointError, match="stage search: .*every candidate"):
        pipeline._diverged_as_failures(np.array([np.nan, np.nan]), "search", cfg)
    w = search_warnings({"random": {"scores": [0.5, 0.0], "diverged": [1]}})
    assert w == ["search random: 1 of 2 candidates' training diverged (non-finite logits; scored 0)"]


# -- the command line: one line, a documented exit code -----------------------------------------
@pytest.mark.parametrize("error, code, shown", [
    (ValueError("data.target: bad"), cli.EXIT_CONFIG, "metanas: error: data.target: bad"),
    (FloatingPointError("stage train diverged"), cli.EXIT_DIVERGED, "metanas: error: stage train diverged"),
    (PermissionError(13, "Permission denied", "/ro/wd"), cli.EXIT_ENVIRONMENT,
     "metanas: error: Permission denied: '/ro/wd'"),
    (OSError(28, "No space left on device", "/full/wd/ckpt"), cli.EXIT_ENVIRONMENT,
     "metanas: error: No space left on device: '/full/wd/ckpt'"),
    (KeyboardInterrupt(), cli.EXIT_INTERRUPTED, "metanas: interrupted"),
])
def test_failures_are_one_line_with_their_exit_code(monkeypatch, capsys, tmp_path, error, code, shown):
    def fail(*a, **k):
        raise error
    monkeypatch.setattr(pipeline, "run_stages", fail)
    monkeypatch.delenv("METANAS_DEBUG", raising=False)
    assert cli.main(["run", "--workdir", str(tmp_path / "wd"), "--no-progress"]) == code
    assert capsys.readouterr().err.strip() == shown
    with pytest.raises(type(error)):  # --debug: the traceback
        cli.main(["run", "--workdir", str(tmp_path / "wd"), "--no-progress", "--debug"])


def test_a_workdir_that_is_a_file_is_an_environment_error(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("")
    assert cli.main(["run", "--workdir", str(f), "--no-progress"]) == cli.EXIT_ENVIRONMENT
    assert capsys.readouterr().err.strip() == f"metanas: error: the workdir is not a folder: {str(f)!r}"


def test_report_of_a_partial_workdir_says_incomplete(tmp_path, capsys):
    from metanas_jax.config import check_workdir
    wd = tmp_path / "wd"
    cfg = _cfg()
    check_workdir(cfg, wd)
    write_data(wd, builders.check_config(cfg, source=False).describe(cfg))
    assert cli.main(["report", "--workdir", str(wd)]) == 0
    assert "incomplete: meta-train, search, train not finished" in capsys.readouterr().out
    text = (wd / "report" / "report.md").read_text()
    assert "(incomplete: meta-train, search, train not finished)" in text.splitlines()[0]
    assert "5 classes, images 8x8x1" in text
