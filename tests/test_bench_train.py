"""benchmarks/bench_train.py's bookkeeping: ``--resume`` keeps the finished seeds of a result
file only when they used this run's space, network and recipe. The trainings themselves are
a benchmark, not a test."""
import argparse
import dataclasses
import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def mod():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location("bench_train", ROOT / "benchmarks" / "bench_train.py")
    m = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(m)
    return m


def test_resume_keeps_matching_seeds_only(mod, tmp_path):
    from metanas_jax import spaces
    out = tmp_path / "r.json"
    args = argparse.Namespace(out=str(out), space=json.dumps(spaces.CIFAR_SPACE), arch="airbench8",
                              recipe="fast", epochs=10, batch=512, train_impl="matmul_bf16",
                              train_dtype="f32", set='{"crop_mode": "reflect"}')
    assert mod.resumable_seeds(args) == []  # no file yet
    space = spaces.get("macro32", **spaces.CIFAR_SPACE)
    recipe = dataclasses.asdict(mod.train_config(args))
    runs = [{"seed": i, "recipe": recipe, "test_acc": 0.9} for i in range(2)]
    out.write_text(json.dumps({"space": spaces.CIFAR_SPACE, "arch": str(space.reference("airbench8")),
                               "train": runs}))
    assert [r["seed"] for r in mod.resumable_seeds(args)] == [0, 1]
    with pytest.raises(SystemExit, match="another recipe"):
        mod.resumable_seeds(argparse.Namespace(**{**vars(args), "set": "{}"}))
    with pytest.raises(SystemExit, match="another space or network"):
        mod.resumable_seeds(argparse.Namespace(**{**vars(args), "arch": "resnet8"}))
