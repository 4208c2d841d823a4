"""Config loading, type-checked overrides, workdir compatibility (fast, no training)."""
import json

import pytest

from metanas_jax import cli
from metanas_jax.config import apply_overrides, check_workdir, load_config


def test_default_and_overrides():
    cfg = load_config()
    apply_overrides(cfg, ["search.budget=50", "space.widths=(8,16,32)", "train.lr=1", "data.target=folder:x"])
    assert cfg.search.budget == 50 and cfg.space.widths == (8, 16, 32)
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert cfg.data.target == "folder:x"


@pytest.mark.parametrize("item,msg", [("search.budgett=5", "search.budgett"),
                                      ("nosuch.key=1", "nosuch"),
                                      ("search.budget=abc", "search.budget"),
                                      ("search.budget=1.5", "search.budget"),
                                      ("train.nesterov=3", "train.nesterov"),
                                      ("search=3", "section")])
def test_bad_override(item, msg):
    cfg = load_config()
    with pytest.raises(ValueError, match=msg):
        apply_overrides(cfg, [item])


def test_cli_rejects_unknown_key(tmp_path, capsys):
    rc = cli.main(["search", "--workdir", str(tmp_path), "--config.search.nope=1"])
    assert rc == 2
    assert "search.nope" in capsys.readouterr().err


def test_missing_config_file():
    with pytest.raises(ValueError, match="not found"):
        load_config("configs/does_not_exist.py")


def test_incompatible_workdir(tmp_path, capsys):
    cfg = load_config()
    check_workdir(cfg, tmp_path)
    stored = json.loads((tmp_path / "config.json").read_text())
    assert stored["search"]["budget"] == cfg.search.budget
    cfg.runtime.progress = False          # non-result key: accepted
    check_workdir(cfg, tmp_path)
    apply_overrides(cfg, ["search.budget=99"])
    with pytest.raises(ValueError, match="incompatible config.*search.budget"):
        check_workdir(cfg, tmp_path)
    rc = cli.main(["run", "--workdir", str(tmp_path), "--config.search.budget=99"])
    assert rc == 2 and "incompatible" in capsys.readouterr().err


def test_workdir_of_an_older_version_resumes_when_new_keys_hold_their_defaults(tmp_path):
    cfg = load_config()
    check_workdir(cfg, tmp_path)
    stored = json.loads((tmp_path / "config.json").read_text())
    del stored["meta"]["evaluator_lr"]  # as written before the key existed
    (tmp_path / "config.json").write_text(json.dumps(stored))
    check_workdir(cfg, tmp_path)        # the default value: what the old code used
    apply_overrides(cfg, ["meta.evaluator_lr=0.01"])
    with pytest.raises(ValueError, match="meta.evaluator_lr"):
        check_workdir(cfg, tmp_path)


def test_workdir_made_before_a_key_moved_resumes(tmp_path):
    """meta.train_steps / lr / chunk became the candidate section: an old workdir agrees
    with the same values under the new names, and its stored config reads back moved."""
    from metanas_jax.config import stored_config
    cfg = load_config()
    check_workdir(cfg, tmp_path)
    stored = json.loads((tmp_path / "config.json").read_text())
    cand = stored.pop("candidate")
    stored["meta"].update(train_steps=cand["steps"], lr=cand["lr"], chunk=cand["chunk"])
    (tmp_path / "config.json").write_text(json.dumps(stored))
    check_workdir(cfg, tmp_path)
    assert stored_config(tmp_path).candidate.steps == cfg.candidate.steps
    apply_overrides(cfg, ["candidate.lr=0.5"])
    with pytest.raises(ValueError, match="candidate.lr"):
        check_workdir(cfg, tmp_path)
    # the old names are refused with the new one, in an override and in a config file
    with pytest.raises(ValueError, match="'meta.lr' moved to 'candidate.lr'"):
        apply_overrides(cfg, ["meta.lr=0.1"])
    old_file = tmp_path / "old_config.py"
    old_file.write_text("from metanas_jax.config import load_config\n"
                        "def get_config():\n"
                        "    c = load_config()\n"
                        "    with c.unlocked():\n"
                        "        c.meta.train_steps = 20\n"
                        "    return c\n")
    with pytest.raises(ValueError, match="sets 'meta.train_steps', which moved to 'candidate.steps'"):
        load_config(str(old_file))


def test_stage_order(tmp_path, capsys):
    rc = cli.main(["train", "--workdir", str(tmp_path), "--no-progress"])
    assert rc == 2 and "needs stage" in capsys.readouterr().err


def test_shipped_configs_load():
    for name in ("default", "tinyimagenet_to_cifar10", "configs/tinyimagenet_to_cifar10.py:full",
                 "cifar10_reference", "metanas_digits"):
        cfg = load_config(name)
        assert cfg.search.budget >= 1
    with pytest.raises(ValueError, match="'cpu' or 'full'"):
        load_config("configs/tinyimagenet_to_cifar10.py:huge")
