"""The gradient-based (MetaNAS) branch of the main job, in process, on tiny settings:
meta-train -> adapt + project + neighbours -> final training; resume equality; method
and meta-learner mismatch refused; TensorBoard scalars when tensorboardX is installed."""
import shutil

import jax
import numpy as np
import pytest

from metanas_jax import builders, pipeline
from metanas_jax.checkpoint import StageCheckpoints
from metanas_jax.config import apply_overrides, load_config

TINY = ["runtime.progress=False", "space.layers=2", "space.ops=conv3x3,identity",
        "space.widths=4,8", "space.stem_width=4", "data.num_tasks=3", "meta.metanas.steps=4",
        "meta.metanas.checkpoint_every=2", "meta.metanas.meta_batch=1",
        "meta.metanas.adapt_steps=2", "candidate.steps=3", "search.budget=4",
        "search.batch_size=2", "search.methods=metanas", "train.epochs=1",
        "data.target_train=64", "data.target_val=16"]


def _cfg(*extra):
    return apply_overrides(load_config("configs/metanas_digits.py"), [*TINY, *extra])


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    wd = tmp_path_factory.mktemp("metanas")
    cfg = _cfg()
    return cfg, wd, pipeline.run_stages(cfg, wd)


def _meta_state(cfg, wd, prep=None):
    """The meta-train stage's newest meta-state, restored into its template."""
    like = builders.meta_template(cfg, prep or builders.prepare(cfg))
    return StageCheckpoints(wd / "ckpt" / "meta-train").latest(like)[1]


def _host(x):
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    return np.asarray(x)


def test_metanas_run_end_to_end(run):
    cfg, wd, out = run
    res = out["search"]["results"]
    assert out["search"]["primary"] == "metanas"
    r = res["metanas"]
    assert len(r["scores"]) == 4 and len({tuple(c) for c in r["choices"]}) == 4
    assert all(0.0 <= s <= 1.0 for s in r["scores"])
    # the first candidate is the projection of the adapted meta-architecture
    prep = builders.prepare(cfg)
    center = builders.metanas_center(cfg, prep, _meta_state(cfg, wd, prep))
    assert r["choices"][0] == list(prep.space.decode(np.asarray(prep.space.project(center))).choices)
    assert out["train"]["arch"] == r["best_arch"]
    assert 0.0 <= out["train"]["test_acc"] <= 1.0
    assert len(out["meta-train"]["history"]) == 4
    from metanas_jax.report import write_report
    assert "MetaNAS, 4 meta-steps" in write_report(wd).read_text()


def test_metanas_meta_train_resumes_exactly(run, tmp_path):
    cfg, wd, out = run
    wd2 = tmp_path / "resumed"
    shutil.copytree(wd / "ckpt" / "meta-train", wd2 / "ckpt" / "meta-train")
    for d in (wd2 / "ckpt" / "meta-train").iterdir():
        if d.name.isdigit() and int(d.name) > 2:  # as if killed after the step-2 checkpoint
            shutil.rmtree(d)
    latest = StageCheckpoints(wd2 / "ckpt" / "meta-train").latest()
    assert latest[0] == 2 and not latest[2].get("done")
    rec = pipeline.meta_train(cfg, wd2)
    assert rec["history"] == out["meta-train"]["history"]
    for a, b in zip(jax.tree.leaves(_meta_state(cfg, wd)), jax.tree.leaves(_meta_state(cfg, wd2))):
        np.testing.assert_array_equal(_host(a), _host(b))


def test_method_needs_its_meta_learner(tmp_path):
    with pytest.raises(ValueError, match="'meta' needs meta.method='evaluator'"):
        pipeline.search(_cfg("search.methods=meta"), tmp_path)
    with pytest.raises(ValueError, match="meta.method: unknown 'maml'"):
        pipeline.meta_train(_cfg("meta.method=maml"), tmp_path)
    with pytest.raises(ValueError, match="meta.metanas: need steps >= 1"):
        pipeline.meta_train(_cfg("meta.metanas.meta_batch=9"), tmp_path)


def test_tensorboard_scalars(run):
    pytest.importorskip("tensorboardX")
    _, wd, _ = run
    for stage in ("meta-train", "search", "train"):
        assert list((wd / "tensorboard" / stage).glob("events.out.tfevents.*")), stage
