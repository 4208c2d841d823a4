"""The few-shot benchmark scripts read configs as the ``metanas`` CLI does: every few-shot
config loads locked, ``--config.KEY=VALUE`` and its alias ``--set KEY=VALUE`` apply, and an
unknown key is a ``ValueError`` naming it (no training here)."""
import argparse
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import omniglot_fewshot  # noqa: E402

SPECS = ["configs/omniglot_5w1s.py", "configs/omniglot_5w1s.py:conv4_lr", "configs/omniglot_5w1s.py:darts",
         "configs/omniglot_5w1s.py:darts_cpu", "configs/omniglot_5w1s.py:darts_derived",
         "configs/omniglot_20w1s.py", "configs/omniglot_20w1s.py:conv4_lr",
         "configs/omniglot_20w1s.py:darts",
         "configs/fewshot_5w5s.py", "configs/fewshot_5w5s.py:darts"]
ROOT = Path(__file__).resolve().parent.parent


def _parse(argv):
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    return omniglot_fewshot.parse_args(ap, argv)


@pytest.mark.parametrize("spec", SPECS)
def test_config_loads_and_overrides(spec):
    spec = str(ROOT / spec)
    c = omniglot_fewshot.load_config(spec, [])
    assert c.eval.split == "test"
    for argv in (["--config", spec, "--config.eval.split=val"],
                 ["--config", spec, "--config.eval.split", "val"],
                 ["--config", spec, "--set", "eval.split=val"]):
        args, overrides = _parse(argv)
        assert overrides == ["eval.split=val"]
        assert omniglot_fewshot.load_config(args.config, overrides).eval.split == "val"
    for key, value in (("eval.inner_steps", 5), ("train.n_query_train", 2),
                       ("model.stem_stride", 2), ("model.nodes", 3),
                       ("meta.query_norm", "support")):
        c = omniglot_fewshot.load_config(spec, [f"{key}={value}"])
        section, leaf = key.split(".")
        assert c[section][leaf] == value
    with pytest.raises(ValueError, match="eval.splt"):
        omniglot_fewshot.load_config(spec, ["eval.splt=val"])
    with pytest.raises(ValueError, match="eval.inner_steps"):
        omniglot_fewshot.load_config(spec, ["eval.inner_steps=many"])


def test_unknown_argument_is_an_error():
    with pytest.raises(SystemExit):
        _parse(["--config", "x.py", "--bogus=1"])


def test_killed_stage_resumes_where_it_was_saved(tmp_path):
    """A stage saved part-way (``checkpoint_every_s``) and killed before its end continues
    from the saved step on a rerun and ends where an uninterrupted run ends."""
    import shutil

    import jax
    import numpy as np

    from metanas_jax import data, meta

    c = omniglot_fewshot.load_config(str(ROOT / "configs/omniglot_5w1s.py"), [
        "data.meta_batch=2", "train.num_steps=6", "train.log_every=2", "train.time_budget_s=600.0"])
    pool = data.ClassPool(np.random.default_rng(0).normal(size=(10, 3, 8, 8, 1)).astype(np.float32))
    learner = meta.conv4_learner(5, channels=4, blocks=2, downsample="stride")
    mcfg = meta.MetaConfig(algorithm="fomaml", inner_steps=1, inner_lr=0.4)
    key = jax.random.PRNGKey(0)

    def run(workdir):
        state = meta.init_state(learner, mcfg, key, pool.images[0, :5])
        return omniglot_fewshot.train_stage("meta_state", learner, mcfg, state, 2, c.train, c=c,
                                            pool=pool, workdir=workdir, key=key,
                                            checkpoint_every_s=0.0)

    whole, _ = run(tmp_path / "whole")
    saved = sorted(int(p.name) for p in (tmp_path / "whole" / "meta_state").iterdir()
                   if p.name.isdigit())
    assert saved == [4, 6]  # two kept: the part saved at step 4, the final one
    shutil.rmtree(tmp_path / "whole" / "meta_state" / "6")  # "killed" after step 4's save
    resumed, rec = run(tmp_path / "whole")
    assert int(resumed.step) == 6 and [h["step"] for h in rec["history"]] == [2, 4, 6]
    for a, b in zip(jax.tree.leaves(whole.params), jax.tree.leaves(resumed.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    again, _ = run(tmp_path / "whole")  # finished now: restored, not trained
    assert int(again.step) == 6
