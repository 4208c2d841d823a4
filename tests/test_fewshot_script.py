"""The few-shot benchmark scripts read configs as the ``metanas`` CLI does: every few-shot
config loads locked, ``--config.KEY=VALUE`` and its alias ``--set KEY=VALUE`` apply, and an
unknown key is a ``ValueError`` naming it (no training here)."""
import argparse
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import omniglot_fewshot  # noqa: E402

SPECS = ["configs/omniglot_5w1s.py", "configs/omniglot_5w1s.py:darts",
         "configs/omniglot_5w1s.py:darts_cpu", "configs/omniglot_5w1s.py:darts_derived",
         "configs/omniglot_20w1s.py", "configs/omniglot_20w1s.py:darts",
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
