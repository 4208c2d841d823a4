"""Task strategies, configuration checks, warm-up, meta-test protocol and architecture report."""
import json
import math
import statistics

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metanas_jax import data, meta, spaces
from tests.test_meta_algorithms import smooth_search_learner, tiny_conv4, toy_tasks


def test_map_tasks_strategies_agree():
    x = jax.random.normal(jax.random.PRNGKey(0), (3, 4, 5))
    w = jax.random.normal(jax.random.PRNGKey(1), (3, 5))
    fn = lambda x, w: (jnp.tanh(x @ w).sum(), {"m": x.mean()})
    outs = [jax.jit(lambda x, w, s=s: meta.map_tasks(fn, x, w, strategy=s))(x, w)
            for s in ("vmap", "map", "unroll", "auto")]
    for o in outs[1:]:
        for a, b in zip(jax.tree_util.tree_leaves(outs[0]), jax.tree_util.tree_leaves(o)):
            np.testing.assert_allclose(a, b, rtol=1e-5)
    with pytest.raises(ValueError, match="strategy"):
        meta.map_tasks(fn, x, w, strategy="pmap")
    with pytest.raises(ValueError, match="disagree"):
        meta.map_tasks(fn, x, w[:2], strategy="vmap")
    if jax.default_backend() == "cpu":
        assert meta.resolve_strategy("auto", cpu_strategy="unroll") == "unroll"
        assert meta.resolve_strategy("auto", cpu_strategy="map") == "map"
    assert meta.resolve_strategy("map", cpu_strategy="unroll") == "map"
    with pytest.raises(ValueError, match="'loop'"):
        meta.resolve_strategy("auto", cpu_strategy="loop")


@pytest.mark.parametrize("field,value", [("algorithm", "maml2"), ("inner_steps", 0),
                                         ("inner_lr", -1.0), ("temp_end", 0.0),
                                         ("arch_update", "both"), ("meta_opt", "lbfgs"),
                                         ("strategy", "pmap"), ("arch_warmup_steps", -1),
                                         ("meta_lr_schedule", "linear"), ("scan_unroll", 0),
                                         ("scan_unroll", "full"), ("query_norm", "query")])
def test_config_rejects_bad_values_naming_them(field, value):
    with pytest.raises(ValueError, match=field):
        meta.MetaConfig(**{field: value})
    with pytest.raises(ValueError, match="unknown field"):
        meta.MetaConfig.from_dict({"inner_stpes": 3})


def test_cosine_meta_lr_starts_at_meta_lr_and_stops_after_decay_steps():
    """The first meta-step is the constant-lr step; after ``meta_lr_decay_steps`` the
    weights no longer move (the learning rate has reached zero)."""
    learner = tiny_conv4()
    tasks = toy_tasks(jax.random.PRNGKey(3), 2)
    with pytest.raises(ValueError, match="meta_lr_decay_steps"):
        meta.MetaConfig(meta_lr_schedule="cosine")
    const = meta.MetaConfig(algorithm="fomaml", inner_steps=1, meta_lr=1e-2)
    cos = const.replace(meta_lr_schedule="cosine", meta_lr_decay_steps=3)
    states = {}
    for name, cfg in (("const", const), ("cos", cos)):
        state = meta.init_state(learner, cfg, jax.random.PRNGKey(0), tasks.support_x[0])
        step = meta.make_meta_step(learner, cfg)
        trace = [state.params]
        for _ in range(5):
            state, _ = step(state, tasks)
            trace.append(state.params)
        states[name] = trace
    leaves = lambda p: jax.tree_util.tree_leaves(p)
    moved = lambda a, b: max(float(jnp.abs(x - y).max()) for x, y in zip(leaves(a), leaves(b)))
    for x, y in zip(leaves(states["const"][1]), leaves(states["cos"][1])):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)
    assert moved(states["cos"][2], states["cos"][3]) > 0  # still decaying at step 3
    assert moved(states["cos"][3], states["cos"][5]) == 0  # lr 0 from step 3 on
    assert moved(states["const"][3], states["const"][5]) > 0


def test_bad_task_batch_raises():
    learner = tiny_conv4()
    cfg = meta.MetaConfig(inner_steps=1)
    t = toy_tasks(jax.random.PRNGKey(0), 2)
    state = meta.init_state(learner, cfg, jax.random.PRNGKey(0), t.support_x[0])
    step = meta.make_meta_step(learner, cfg)
    with pytest.raises(ValueError, match="query_y"):
        step(state, t._replace(query_y=t.query_y[:1]))
    with pytest.raises(ValueError, match="support_x"):
        step(state, t._replace(support_x=t.support_x[0]))


def test_arch_frozen_during_warmup_then_learned():
    learner = smooth_search_learner()
    cfg = meta.MetaConfig(algorithm="fomaml", inner_steps=1, inner_lr=0.1, arch_update="joint",
                          arch_inner_lr=0.1, arch_meta_lr=0.05, arch_warmup_steps=2)
    t = toy_tasks(jax.random.PRNGKey(3), 2, size=5)
    state = meta.init_state(learner, cfg, jax.random.PRNGKey(0), t.support_x[0])
    step = meta.make_meta_step(learner, cfg)
    z0 = np.asarray(state.arch)
    for _ in range(2):
        state, m = step(state, t)
        assert float(m["arch_active"]) == 0.0
    np.testing.assert_array_equal(state.arch, z0)
    state, m = step(state, t)
    assert float(m["arch_active"]) == 1.0 and not np.allclose(state.arch, z0)
    # inside the task, the architecture moves only when the warm-up is over
    p2, a2, _ = jax.jit(lambda p, a: meta.adapt(learner, cfg, p, a, t.support_x[0], t.support_y[0],
                                                 arch_active=False))(state.params, state.arch)
    np.testing.assert_array_equal(a2, state.arch)


def test_confidence_interval_formula():
    v = [0.8, 0.9, 1.0, 0.6, 0.7]
    mean, hw = meta.confidence_interval(v)
    want = statistics.NormalDist().inv_cdf(0.975) * statistics.stdev(v) / math.sqrt(len(v))
    assert mean == pytest.approx(statistics.fmean(v)) and hw == pytest.approx(want)
    with pytest.raises(ValueError, match="at least 2"):
        meta.confidence_interval([1.0])


def _toy_pool(classes=10, per_class=6, size=5):
    protos = jax.random.normal(jax.random.PRNGKey(7), (classes, 1, size, size, 1))
    noise = jax.random.normal(jax.random.PRNGKey(8), (classes, per_class, size, size, 1))
    return data.ClassPool(images=jnp.asarray(protos + 0.5 * noise, jnp.float32))


def test_meta_test_fixed_episodes_and_arch_report(tmp_path):
    learner = smooth_search_learner()
    cfg = meta.MetaConfig(algorithm="fomaml", inner_steps=1, eval_inner_steps=2, inner_lr=0.1,
                          arch_update="alternating", arch_inner_lr=1.0)
    pool = _toy_pool()
    state = meta.init_state(learner, cfg, jax.random.PRNGKey(0), pool.images[0, :3])
    kw = dict(n_way=3, k_shot=1, n_query=2, num_episodes=10, seed=4, batch_size=4)
    a = meta.meta_test(learner, cfg, state, pool, save_path=tmp_path / "r.json", **kw)
    b = meta.meta_test(learner, cfg, state, pool, **kw)
    assert a["accuracy"] == b["accuracy"] and a["ci95"] > 0 and 0 <= a["accuracy"] <= 1
    assert len(a["task_archs"]) == 10 and a["task_archs"] == b["task_archs"]
    assert json.loads((tmp_path / "r.json").read_text())["episodes"] == 10
    space = learner.space
    assert all(isinstance(space.from_string(s), type(space.decode(state.arch))) for s in a["task_archs"])
    assert 1 <= a["arch_unique"] <= 10
    c = meta.meta_test(learner, cfg, state, pool, **{**kw, "seed": 5})
    assert c["accuracy"] != a["accuracy"] or c["loss"] != a["loss"]


def test_architecture_report_counts_differences():
    space = spaces.get("darts")
    zs = space.sample(jax.random.PRNGKey(0), 3)
    same = meta.architecture_report(space, zs[0], jnp.stack([zs[0], zs[0]]))
    assert same["arch_unique"] == 1 and same["arch_mean_pairwise_distance"] == 0
    assert same["arch_fraction_equal_to_meta"] == 1.0
    moved = space.mutate(jax.random.PRNGKey(1), zs[0])
    rep = meta.architecture_report(space, zs[0], jnp.stack([zs[0], moved]))
    assert rep["arch_unique"] == 2 and rep["arch_mean_pairwise_distance"] > 0
    assert rep["arch_fraction_equal_to_meta"] == 0.5


def test_derived_learner_inherits_the_supernets_function():
    """Second MetaNAS stage: the compact network of the meta-architecture, with weights cut
    out of the supernet's, computes what the supernet computes with one-hot weights; size
    overrides change the network; a fixed learner has nothing to derive from. A stride-2
    stem (the Omniglot config's) is kept by the derived network and halves the resolution."""
    space = spaces.get("darts", nodes=2)
    sup = meta.supernet_learner(space, 3, channels=4, cells=3, stem_stride=2)
    x = jax.random.normal(jax.random.PRNGKey(0), (3, 8, 8, 1))
    params, _ = sup.init(jax.random.PRNGKey(1), x)
    z = jax.random.normal(jax.random.PRNGKey(2), (space.dim,))
    derived = meta.derived_learner(sup, space.decode(z))
    assert not derived.searches and (derived.module.channels, derived.module.cells) == (4, 3)
    assert derived.module.stem_stride == 2
    # (jitted: op by op the compact and soft networks took 15 s of small compiles more)
    _, seen = jax.jit(lambda p: derived.module.apply({"params": p}, x, capture_intermediates=True))(
        derived.init(jax.random.PRNGKey(3), x)[0])
    assert seen["intermediates"]["stem"]["__call__"][0].shape == (3, 4, 4, 12)
    with pytest.raises(ValueError, match="stem_stride must be an int >= 1, got 0"):
        meta.supernet_learner(space, 3, channels=4, cells=3, stem_stride=0).init(
            jax.random.PRNGKey(1), x)
    assert derived.cpu_strategy == "map"  # the compact cell's measured CPU choice
    inherited = meta.inherited_params(derived, params, x)
    want = jax.jit(lambda p: sup.module.apply({"params": p}, x, space.relax(z, 0.0), train=True))(params)
    np.testing.assert_allclose(jax.jit(derived.apply)(inherited, derived.init(jax.random.PRNGKey(3), x)[1], x),
                               want, atol=1e-5)
    assert meta.derived_learner(sup, space.decode(z), channels=2).module.channels == 2
    with pytest.raises(ValueError, match="no search space"):
        meta.derived_learner(tiny_conv4(), space.decode(z))


def test_support_query_norm_predicts_each_query_alone():
    """``query_norm="support"``: the adapted conv4's query logits are the same whether the
    queries are classified together or one at a time; under ``"batch"`` (MAML's
    transductive batch norm, the default) they are not. ``adapt_and_predict`` and the
    meta-test score with the same logits."""
    learner = tiny_conv4()
    cfg = meta.MetaConfig(inner_steps=1, eval_inner_steps=1, inner_lr=0.1)
    t = toy_tasks(jax.random.PRNGKey(3), 2)
    sx, sy, qx, qy = t.support_x[0], t.support_y[0], t.query_x[0], t.query_y[0]
    state = meta.init_state(learner, cfg, jax.random.PRNGKey(0), sx)

    @jax.jit
    def together_and_alone(p, z):
        p, z, _ = meta.adapt(learner, cfg, p, z, sx, sy, steps=1)
        out = {}
        for mode in ("batch", "support"):
            one = lambda x, m=mode: meta.predict(learner, cfg, p, z, x[None], sx, m)[0]
            out[mode] = (meta.predict(learner, cfg, p, z, qx, sx, mode), jax.vmap(one)(qx))
        return out

    out = together_and_alone(state.params, state.arch)
    np.testing.assert_allclose(*out["support"], rtol=1e-5, atol=1e-5)
    assert float(jnp.abs(out["batch"][0] - out["batch"][1]).max()) > 1e-2
    assert float(jnp.abs(out["batch"][0] - out["support"][0]).max()) > 1e-2
    support_cfg = cfg.replace(query_norm="support")
    logits = meta.adapt_and_predict(learner, support_cfg, state, sx, sy, qx)
    np.testing.assert_allclose(logits, out["support"][0], rtol=1e-5, atol=1e-5)
    acc, _, _ = meta.make_adapt_and_score(learner, support_cfg)(state.params, state.arch, t)
    assert float(acc[0]) == pytest.approx(float(jnp.mean(jnp.argmax(logits, -1) == qy)))
    with pytest.raises(ValueError, match="support_x"):
        meta.predict(learner, cfg, state.params, state.arch, qx, query_norm="support")
    with pytest.raises(ValueError, match="query_norm"):
        meta.adapt_and_predict(learner, cfg, state, sx, sy, qx, query_norm="single")


def test_meta_training_with_support_query_norm():
    """Second-order MAML meta-trains with the query loss on support statistics (its
    gradient runs through them as well): finite metrics and gradients, and the weights
    move. A network whose batch norm cannot take the support set's statistics (macro32's
    hard supernet) is refused, naming the mode."""
    learner = tiny_conv4()
    t = toy_tasks(jax.random.PRNGKey(3), 2)
    cfg = meta.MetaConfig(algorithm="maml", inner_steps=1, inner_lr=0.1, meta_lr=1e-2,
                          query_norm="support")
    state = meta.init_state(learner, cfg, jax.random.PRNGKey(0), t.support_x[0])
    new, m = meta.make_meta_step(learner, cfg)(state, t)
    assert all(np.isfinite(float(v)) for v in m.values()) and float(m["grad_norm"]) > 0
    moved = [float(jnp.abs(a - b).max()) for a, b in zip(jax.tree_util.tree_leaves(new.params),
                                                          jax.tree_util.tree_leaves(state.params))]
    assert all(np.isfinite(moved)) and max(moved) > 0
    hard = meta.supernet_learner(spaces.get("macro32", widths=(4, 8), stem_width=4), 3, hard=True)
    with pytest.raises(ValueError, match="query_norm='support'"):
        meta.make_meta_step(hard, meta.MetaConfig(query_norm="support"))
