"""Source and target kept apart (refused when not), cross-validated meta-evaluation over
tasks (folds partition them), regret and the meta-train warnings, and the transfer config's
code path end to end at tiny sizes."""
from itertools import combinations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metanas_jax import builders, data, pipeline, spaces
from metanas_jax import search as S
from metanas_jax.config import apply_overrides, load_config
from metanas_jax.workdir import evaluator_warnings


def _ds(images, labels, names):
    return data.Dataset(np.asarray(images, np.uint8), np.asarray(labels), names)


def test_parse_and_select_classes():
    names = ("cat", "dog", "fish", "bird", "frog")
    assert data.parse_classes("", names) == [0, 1, 2, 3, 4]
    assert data.parse_classes("0-1,4", names) == [0, 1, 4]
    assert data.parse_classes("dog,frog", names) == [1, 4]
    with pytest.raises(ValueError, match="data.x.*'7'"):
        data.parse_classes("7", names, "data.x")
    with pytest.raises(ValueError, match="neither a class name"):
        data.parse_classes("horse", names)
    with pytest.raises(ValueError, match="twice"):
        data.parse_classes("1,dog", names)
    ds = _ds(np.arange(10)[:, None, None, None] * np.ones((10, 2, 2, 1)), np.arange(10) % 5, names)
    sub = data.select_classes(ds, [4, 1])
    assert sub.class_names == ("frog", "dog")
    np.testing.assert_array_equal(sub.labels, [1, 0, 1, 0])      # dog -> 1, frog -> 0
    np.testing.assert_array_equal(sub.images[:, 0, 0, 0], [1, 4, 6, 9])


def test_check_separated_finds_a_shared_image():
    rng = np.random.default_rng(0)
    src = _ds(rng.integers(0, 256, (20, 4, 4, 3)), np.arange(20) % 2, ("a", "b"))
    val = _ds(rng.integers(0, 256, (6, 4, 4, 3)), np.arange(6) % 2, ("x", "y"))
    test = _ds(rng.integers(0, 256, (6, 4, 4, 3)), np.arange(6) % 2, ("x", "y"))
    assert data.check_separated(src, {"validation": val, "test": test},
                                source_spec="S", target_spec="T") == {"validation": 6, "test": 6}
    leaked = _ds(np.concatenate([test.images[:5], src.images[7:8]]), test.labels, test.class_names)
    with pytest.raises(ValueError, match=r"source 'S' and target 'T'.*1 of the target's 6 test images.*index 5"):
        data.check_separated(src, {"validation": val, "test": leaked}, source_spec="S", target_spec="T")
    # one pixel differs: a different image
    near = leaked.images.copy()
    near[5, 0, 0, 0] ^= 1
    data.check_separated(src, {"test": _ds(near, test.labels, test.class_names)},
                         source_spec="S", target_spec="T")


def _default(*overrides):
    cfg = load_config(None)
    return apply_overrides(cfg, list(overrides))


def test_pipeline_refuses_a_target_inside_the_source():
    # the embedded default is leak-free: digits 0-4 as source, 5-9 as target
    cfg = _default()
    prep = builders.prepare(cfg)
    src = builders.source_dataset(cfg, prep)
    assert set(src.class_names).isdisjoint(prep.target.train.class_names)
    for overrides, match in [
            (["data.source_classes=", "data.target_classes="], "same dataset.*disjoint"),
            (["data.source_classes=0-5"], r"share classes \['5'\]")]:
        cfg = _default(*overrides)
        with pytest.raises(ValueError, match=f"source 'digits' and target 'digits'.*{match}"):
            builders.source_dataset(cfg, builders.prepare(cfg))


def test_pipeline_content_check_catches_a_copy_under_another_name(tmp_path):
    """The same images in a folder dataset: different specs, refused by their pixels."""
    from PIL import Image
    digits = data.load("digits", split="test")
    for i in range(len(digits)):
        d = tmp_path / "train" / digits.class_names[digits.labels[i]]
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(digits.images[i, ..., 0]).save(d / f"{i}.png")
    cfg = _default(f"data.source=folder:{tmp_path}", "data.source_classes=",
                   "data.target_classes=", "data.n_classes=10")
    with pytest.raises(ValueError, match=r"target 'digits' are not kept apart: \d+ of the target's \d+ test"):
        builders.source_dataset(cfg, builders.prepare(cfg))


def test_folds_partition_the_tasks():
    for n, k in [(6, 5), (10, 3), (7, 7)]:
        parts = S.task_folds(n, k, jax.random.key(n))
        assert len(parts) == k and all(len(p) >= 1 for p in parts)
        assert sorted(np.concatenate(parts).tolist()) == list(range(n))
        assert max(map(len, parts)) - min(map(len, parts)) <= 1
    with pytest.raises(ValueError, match="folds=1"):
        S.task_folds(5, 1, jax.random.key(0))
    with pytest.raises(ValueError, match="folds=6"):
        S.task_folds(5, 6, jax.random.key(0))


def test_top_k_regret_and_its_random_reference():
    true = np.asarray([0.2, 0.5, 0.3, 0.9, 0.1])
    assert S.top_k_regret(true, true, 1) == 0.0
    assert S.top_k_regret(-true, true, 1) == pytest.approx(0.8)
    assert S.top_k_regret(-true, true, 2) == pytest.approx(0.7)
    for k in (1, 2, 3):  # exact expectation = mean over every k-subset
        brute = np.mean([true.max() - true[list(c)].max() for c in combinations(range(5), k)])
        assert S.random_top_k_regret(true, k) == pytest.approx(brute)


def _toy_meta_tasks(t=6, n=24, informative=True):
    """Tasks whose score is a fixed linear function of the encoding (+ a task offset)."""
    space = spaces.get("macro32", layers=2, widths=(4, 8), stem_width=4)
    k1, k2 = jax.random.split(jax.random.key(3))
    zs = jax.random.uniform(k1, (t, n, space.dim))
    w = jnp.linspace(-1.0, 1.0, space.dim)
    scores = 0.5 + 0.1 * jnp.tanh(zs @ w) + 0.05 * jnp.arange(t)[:, None] / t
    if not informative:
        scores = 0.5 + 0.1 * jax.random.uniform(k2, (t, n))
    return space, S.MetaTasks(zs=zs, scores=scores, task=jnp.zeros((t,), jnp.int32))


def test_cross_validation_reports_every_fold():
    space, mt = _toy_meta_tasks()
    ev = S.Evaluator(space, S.EvaluatorConfig(task_input="none", hidden=(32,)))
    cv = S.cross_validate(ev, mt, jax.random.key(0), folds=3, n_observed=8, top_k=2,
                          steps=150, batch_tasks=4, n_support=8, n_query=16, lr=3e-3)
    assert cv["k"] == 3 and len(cv["folds"]) == 3
    assert sorted(sum((f["held_out"] for f in cv["folds"]), [])) == list(range(6))
    for key in ("before", "after", "regret_before", "regret_after", "regret_random", "linear_tau"):
        assert np.isfinite(cv["mean"][key]) and cv["std"][key] >= 0
    # a learnable relation transfers to held-out tasks
    assert cv["mean"]["after"] > 0.3
    assert cv["mean"]["linear_tau"] > 0.3
    assert cv["mean"]["regret_after"] < cv["mean"]["regret_random"]


def test_linear_probe_finds_a_shared_linear_signal_and_not_noise():
    space, mt = _toy_meta_tasks()
    ev = S.Evaluator(space, S.EvaluatorConfig(task_input="none"))
    train, held = (S.MetaTasks(zs=mt.zs[i], scores=mt.scores[i], task=mt.task[i])
                   for i in (np.arange(4), np.arange(4, 6)))
    tau = S.linear_probe_tau(ev, train, held)
    assert tau.shape == (2,) and tau.min() > 0.5
    _, noise = _toy_meta_tasks(informative=False)
    tau = S.linear_probe_tau(ev, S.MetaTasks(zs=noise.zs[:4], scores=noise.scores[:4], task=noise.task[:4]),
                             S.MetaTasks(zs=noise.zs[4:], scores=noise.scores[4:], task=noise.task[4:]))
    assert abs(tau.mean()) < 0.3


def test_evaluator_meta_training_stays_finite_on_quantized_scores():
    """Few query scores that are all equal (16 validation images: accuracies in 1/16 steps)
    once made the query loss divide by ~0; the task's spread is used now."""
    space, mt = _toy_meta_tasks(n=6)
    scores = jnp.round(mt.scores * 4) / 4  # very coarse: most query triples are equal
    mt = S.MetaTasks(zs=mt.zs, scores=scores, task=mt.task)
    ev = S.Evaluator(space, S.EvaluatorConfig(task_input="none", hidden=(16,)))
    _, losses = ev.meta_train(jax.random.key(0), mt, steps=60, batch_tasks=4, n_support=3,
                              n_query=3, lr=1e-3)
    assert np.all(np.isfinite(losses)) and losses.max() < 1e3
    assert np.mean(losses[-10:]) <= np.mean(losses[:10])


def test_meta_train_warnings():
    ok = {"experience_mean_acc": 0.4, "chance": 0.1, "evaluator_loss": [3.0, 2.0, 1.5, 1.0],
          "cv": {"k": 5, "top_k": 1, "mean": {"after": 0.3, "regret_after": 0.01, "regret_random": 0.05}}}
    assert evaluator_warnings(ok) == []
    bad = {"experience_mean_acc": 0.12, "chance": 0.1, "evaluator_loss": [3.0, 5.0, 50.0, 228.0],
           "cv": {"k": 5, "top_k": 1, "mean": {"after": -0.05, "regret_after": 0.06, "regret_random": 0.05}}}
    w = " / ".join(evaluator_warnings(bad))
    for part in ("near chance", "rose from", "tau after adaptation -0.050 <= 0", "no better than random"):
        assert part in w, part
    under = {**ok, "cv": {"k": 5, "top_k": 1, "mean": {"after": 0.05, "linear_tau": 0.2,
                                                      "regret_after": 0.01, "regret_random": 0.05}}}
    assert "below half a linear probe's 0.200" in " / ".join(evaluator_warnings(under))


@pytest.mark.slow
def test_transfer_config_end_to_end_tiny(shared_data, tmp_path):
    """configs/tinyimagenet_to_cifar10.py through meta-train and search at tiny sizes: the
    source is Tiny ImageNet, the target CIFAR-10, the content check passes."""
    cfg = load_config("configs/tinyimagenet_to_cifar10.py")
    # the config's data, at the smallest sizes (2 layers of 2 ops: the test is about the
    # datasets and their separation, not the space); source tasks as large as the target
    # task, so experience and search share one candidate program
    apply_overrides(cfg, ["space.layers=2", "space.ops=conv3x3,identity", "space.widths=4,8",
                          "space.stem_width=4", "data.num_tasks=4", "meta.archs_per_task=4",
                          "meta.tasks_per_checkpoint=2", "candidate.steps=2", "data.n_train=64",
                          "data.n_val=50", "data.target_train=64", "data.target_val=50",
                          "meta.evaluator_steps=10", "meta.cv_folds=0", "meta.es_iterations=1",
                          "meta.es_population=2", "search.budget=5", "search.methods=meta,random",
                          "search.finalists=1", "runtime.progress=False", "runtime.tensorboard=off"])
    prep = builders.prepare(cfg)
    assert prep.target.train.num_classes == 10 and prep.target.train.image_shape == (16, 16, 3)
    meta = pipeline.meta_train(cfg, tmp_path, prep)
    # (cross-validation in the main job: tests/test_cli.py; here it would double the time)
    assert meta["done"] and isinstance(meta["warnings"], list)
    res = pipeline.search(cfg, tmp_path, prep)["results"]
    assert set(res) == {"meta", "random"} and all(len(r["scores"]) == 5 for r in res.values())
