"""The public functional API, used only through ``import metanas_jax as mn``: each
research move the README shows (build a network from an encoding, meta-train, adapt +
predict in one call, save / load a meta-trained learner, a meta-searcher driven ask/tell)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import metanas_jax as mn


def _tasks(t=4, ways=3, shots=2, queries=4, size=8, seed=0):
    """Tasks whose classes differ in brightness (learnable in a few steps)."""
    rng = np.random.default_rng(seed)
    sy = np.tile(np.arange(ways).repeat(shots), (t, 1)).astype(np.int32)
    qy = np.tile(np.arange(ways).repeat(queries), (t, 1)).astype(np.int32)
    img = lambda y: (rng.normal(size=(*y.shape, size, size, 1)) * 0.3 + y[..., None, None, None]).astype(np.float32)
    return mn.data.TaskBatch(img(sy), sy, img(qy), qy)


def test_build_a_network_from_an_encoding():
    space = mn.spaces.get("macro32", layers=2, widths=(4, 8), stem_width=4)
    z = space.sample(jax.random.key(0), 1)[0]            # a 32-dim-style encoding: data
    arch = space.decode(z)
    net = mn.nn.build(space, arch, num_classes=3)
    variables = net.init(jax.random.key(1), jnp.zeros((2, 8, 8, 1)), train=False)
    assert net.apply(variables, jnp.zeros((2, 8, 8, 1)), train=False).shape == (2, 3)
    assert space.from_string(str(arch)) == arch


@pytest.fixture(scope="module")
def trained():
    learner = mn.meta.conv4_learner(num_classes=3, channels=8, blocks=2)
    cfg = mn.meta.MetaConfig(algorithm="fomaml", inner_steps=1, eval_inner_steps=2, inner_lr=0.3)
    tasks = _tasks()
    state = mn.meta.init_state(learner, cfg, jax.random.key(0), jnp.asarray(tasks.support_x[0]))
    step = mn.meta.make_meta_step(learner, cfg)
    sample = lambda key: jax.tree.map(jnp.asarray, tasks)  # noqa: E731 - a fixed meta-batch
    state, history = mn.meta.meta_train(step, state, sample, num_steps=3, log=None)
    assert int(state.step) == 3 and np.isfinite(history[-1]["loss"])
    return learner, cfg, state


def test_adapt_and_predict_in_one_call(trained):
    learner, cfg, state = trained
    t = _tasks(t=1, seed=1)
    logits = mn.meta.adapt_and_predict(learner, cfg, state, t.support_x[0], t.support_y[0],
                                       t.query_x[0], query_norm="support")
    assert logits.shape == (12, 3)
    one = mn.meta.adapt_and_predict(learner, cfg, state, t.support_x[0], t.support_y[0],
                                    t.query_x[0][:1], query_norm="support")
    np.testing.assert_allclose(np.asarray(one), np.asarray(logits[:1]), atol=1e-5)


def test_save_and_load_a_meta_trained_learner(trained, tmp_path):
    learner, cfg, state = trained
    mn.meta.save_learner(tmp_path / "learner", learner, cfg, state, input_shape=(8, 8, 1))
    learner2, cfg2, state2 = mn.meta.load_learner(tmp_path / "learner")
    assert cfg2 == cfg and learner2.recipe == learner.recipe and int(state2.step) == 3
    for a, b in zip(jax.tree.leaves(jax.random.key_data(state.key)),
                    jax.tree.leaves(jax.random.key_data(state2.key))):
        np.testing.assert_array_equal(a, b)
    t = _tasks(t=1, seed=2)
    args = (t.support_x[0], t.support_y[0], t.query_x[0])
    np.testing.assert_allclose(np.asarray(mn.meta.adapt_and_predict(learner, cfg, state, *args)),
                               np.asarray(mn.meta.adapt_and_predict(learner2, cfg2, state2, *args)),
                               atol=1e-6)
    other = mn.meta.conv4_learner(num_classes=5, channels=8, blocks=2)  # another head
    mn.meta.save_learner(tmp_path / "other", other, cfg, state, input_shape=(8, 8, 1))
    with pytest.raises(ValueError, match="do not fit"):
        mn.meta.load_learner(tmp_path / "other")
    with pytest.raises(ValueError, match="learner.json"):
        mn.meta.load_learner(tmp_path / "nothing")


def test_a_supernet_learner_is_rebuilt_from_its_recipe():
    space = mn.spaces.get("macro32", layers=2, widths=(4, 8), stem_width=4)
    learner = mn.meta.supernet_learner(space, 3)
    assert learner.arch_init_center == space.encoding_center == 0.5  # no choice preferred
    again = mn.meta.learner_from_recipe(learner.recipe)
    assert again.space == space and again.recipe == learner.recipe
    arch = space.decode(space.sample(jax.random.key(0), 1)[0])
    derived = mn.meta.derived_learner(learner, arch)
    assert mn.meta.learner_from_recipe(derived.recipe).module == derived.module
    # MetaConfig's defaults move a searching learner's architecture (MetaNAS' rates)
    cfg = mn.meta.MetaConfig(algorithm="fomaml", inner_steps=1)
    assert cfg.arch_mode(True) == "alternating" and cfg.arch_mode(False) == "none"
    t = _tasks(t=1)
    small = mn.meta.supernet_learner(mn.spaces.get("macro32", layers=1, ops=("conv3x3", "identity"),
                                                   widths=(4,), stem_width=4), 3)
    params, z = small.init(jax.random.key(1), t.support_x[0])
    _, z2, _ = mn.meta.adapt(small, cfg, params, z, t.support_x[0], t.support_y[0])
    assert not np.allclose(z2, z)


def test_a_meta_searcher_driven_ask_tell():
    space = mn.spaces.get("macro32", layers=2, widths=(4, 8), stem_width=4)
    ev = mn.search.Evaluator(space)                       # image tasks by default
    t = _tasks(t=1)
    task = (t.support_x[0], t.support_y[0])
    params = ev.init(jax.random.key(0), task)
    searcher = mn.search.MetaSearcher(evaluator=ev, params=params,
                                      strategy=mn.search.StrategyParams.create(), task=task,
                                      batch_size=4, capacity=8)
    score = lambda zs: np.asarray(zs)[:, 0]              # any host function of the encodings
    state = mn.search.run_search(searcher, score, 8, jax.random.key(1))
    z, s = mn.search.best(state.history)
    assert s == max(score(state.history.zs[:8]))
    with pytest.raises(ValueError, match="meta-parameters"):
        mn.search.MetaSearcher(evaluator=ev, params={}, strategy=mn.search.StrategyParams.create(),
                               task=task)
