"""NAS experience: batched short training through the supernet, .npz round trip."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metanas_jax import spaces
from metanas_jax.search import (Experience, TrainConfig, collect_experience, load_experience,
                                make_evaluate_fn, save_experience)

# the default config's 4 ops: all 7 compile each candidate program 2.3x slower
SPACE = spaces.get("macro32", layers=2, widths=(4, 8), stem_width=4,
                   ops=("conv3x3", "sep_conv3x3", "max_pool3x3", "identity"))
CFG = TrainConfig(steps=3, lr=1e-2, chunk=4)


def tiny_tasks(t=2, s=12, q=8, classes=3):
    """Tasks whose classes differ in mean brightness: learnable in a few steps."""
    k1, k2 = jax.random.split(jax.random.key(0))
    sy = jnp.tile(jnp.arange(s) % classes, (t, 1)).astype(jnp.int32)
    qy = jnp.tile(jnp.arange(q) % classes, (t, 1)).astype(jnp.int32)
    sx = jax.random.normal(k1, (t, s, 6, 6, 3)) * 0.3 + sy[..., None, None, None]
    qx = jax.random.normal(k2, (t, q, 6, 6, 3)) * 0.3 + qy[..., None, None, None]
    return sx, sy, qx, qy


def test_collect_save_load_round_trip(tmp_path):
    tasks = tiny_tasks()
    exp = collect_experience(jax.random.key(1), SPACE, tasks, 3, num_classes=3, train=CFG)
    assert exp.zs.shape == (2, 3, SPACE.dim) and exp.scores.shape == (2, 3)
    assert np.all((exp.scores >= 0) & (exp.scores <= 1))
    assert np.all(exp.costs > 0)
    again = collect_experience(jax.random.key(1), SPACE, tasks, 3, num_classes=3, train=CFG,
                               costs=False)
    np.testing.assert_array_equal(again.scores, exp.scores)  # same key, same experience
    path = save_experience(tmp_path / "exp.npz", exp)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp.npz"]  # no temporary left
    back = load_experience(path)
    assert back.space == SPACE and back.meta == exp.meta
    for f in ("zs", "scores", "costs", "support_x", "support_y"):
        np.testing.assert_array_equal(getattr(back, f), getattr(exp, f))
    md = back.meta_tasks()
    assert md.zs.shape == (2, 3, SPACE.dim) and md.task[0].shape == tasks[0].shape


def test_bad_experience_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_experience(tmp_path / "none.npz")
    bad = tmp_path / "bad.npz"
    np.savez(bad, zs=np.zeros(3))
    with pytest.raises(ValueError, match="not an experience file"):
        load_experience(bad)
    exp = Experience(space=SPACE, zs=np.zeros((1, 2, SPACE.dim)), scores=np.zeros((1, 2)),
                     costs=np.zeros((1, 2)), support_x=np.zeros((1, 4, 6, 6, 3)),
                     support_y=np.zeros((1, 4), np.int32), meta={})
    with pytest.raises(ValueError, match=".npz"):
        save_experience(tmp_path / "exp.txt", exp)
    with pytest.raises(ValueError, match="scores"):
        Experience(space=SPACE, zs=np.zeros((1, 2, 3)), scores=np.zeros((1, 2)),
                   costs=np.zeros((1, 2)), support_x=np.zeros((1, 4, 6, 6, 3)),
                   support_y=np.zeros((1, 4)), meta={})


def test_round_evaluation_is_one_program_and_position_independent():
    sx, sy, qx, qy = (a[0] for a in tiny_tasks())
    evaluate = make_evaluate_fn(SPACE, (sx, sy, qx, qy), jax.random.key(2), num_classes=3, train=CFG)
    zs = np.asarray(SPACE.sample(jax.random.key(3), 4))
    a = evaluate(zs)
    b = evaluate(zs[::-1])
    np.testing.assert_allclose(a, b[::-1], atol=1e-6)  # an architecture's score, not its slot's
    # a round smaller than the chunk: the padding pair is skipped, the others unchanged
    np.testing.assert_allclose(evaluate(zs[1:]), a[1:], atol=1e-6)
    assert evaluate.stats["evaluations"] == 11 and evaluate.stats["compilations"] <= 1
    # a diverged training (here: NaN inputs, so NaN logits) scores NaN, not argmax's class 0
    nan_eval = make_evaluate_fn(SPACE, (sx * jnp.nan, sy, qx, qy), jax.random.key(2), num_classes=3,
                                train=CFG)
    assert np.isnan(nan_eval(zs)).all() and nan_eval.stats["compilations"] == 0


def test_proxy_fidelity_ranks_proxies_against_a_reference():
    from metanas_jax.search import proxy_fidelity
    sx, sy, qx, qy = (a[0] for a in tiny_tasks(t=1, s=12, q=24))
    zs = np.asarray(SPACE.sample(jax.random.key(6), 6))
    key = jax.random.key(9)
    long = TrainConfig(steps=10, lr=1e-2, chunk=4)  # (30 steps: most candidates score 1.0)
    ref = make_evaluate_fn(SPACE, (sx, sy, qx, qy), key, num_classes=3, train=long)(zs)
    out = proxy_fidelity(SPACE, (sx, sy, qx, qy), zs, key, {"same": long, "short": CFG}, ref,
                         num_classes=3)
    assert out["same"]["tau"] == pytest.approx(1.0)  # the reference itself: identical ranking
    assert -1.0 <= out["short"]["tau"] <= 1.0
    for r in out.values():
        assert r["seconds_per_arch"] > 0 and len(r["scores"]) == 6
        assert r["tau_per_second"] == pytest.approx(r["tau"] / r["seconds_per_arch"])
    with pytest.raises(ValueError, match="reference_scores"):
        proxy_fidelity(SPACE, (sx, sy, qx, qy), zs, key, {"short": CFG}, ref[:2])
