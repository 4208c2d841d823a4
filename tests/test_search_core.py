"""The ask/tell harness, baselines and the meta-searcher on small synthetic table spaces."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metanas_jax import spaces
from metanas_jax.search import (Evaluator, EvaluatorConfig, MetaTasks,
                                RandomSearch, RegularizedEvolution, StrategyConfig,
                                StrategyParams, TabularBenchmark, arch_index,
                                index_to_z, propose_unique, history_init, history_add,
                                finalists, recommend, run_search, scan_search, scratch_searcher,
                                space_size)

# 16 architectures: 1 layer x (2 ops, 2 widths, residual, downsample)
TINY = spaces.get("macro32", layers=1, ops=("conv3x3", "identity"), widths=(16, 32))
# 1296 architectures: 2 layers x (3 ops, 3 widths, residual, downsample)
SMALL = spaces.get("macro32", layers=2, ops=("conv3x3", "conv5x5", "identity"), widths=(16, 32, 48))
SMALL_CFG = StrategyConfig(n_random=64, n_elite=4, n_mutants=4, n_starts=8, steps=3)


def synthetic_table(space, seed):
    """A smooth, additive-plus-interaction score over the choices (unique optimum a.s.)."""
    rng = np.random.default_rng(seed)
    card = space.cardinalities
    gene_w = [rng.normal(0, 1, k) for k in card]
    pair = rng.normal(0, 0.3, (space.dim, space.dim))

    def fn(zs):
        idx = np.asarray(space._indices(zs))
        s = sum(gene_w[i][idx[:, i]] for i in range(space.dim))
        z = np.asarray(zs)
        s = s + np.einsum("ni,ij,nj->n", z, pair, z)
        return 0.5 + 0.05 * s / np.sqrt(space.dim)

    return TabularBenchmark.from_function(space, fn, ("a",))


def test_arch_index_round_trip_and_order():
    n = space_size(SMALL)
    assert n == 1296
    zs = index_to_z(SMALL, jnp.arange(n))
    np.testing.assert_array_equal(np.asarray(arch_index(SMALL, zs)), np.arange(n))
    for i in (0, 7, 1295):
        arch = SMALL.decode(zs[i])
        assert np.ravel_multi_index(arch.choices, tuple(SMALL.cardinalities)) == i


def test_propose_unique_excludes_history_and_repeats():
    h = history_init(16, TINY.dim)
    all_z = index_to_z(TINY, jnp.arange(16))
    h = history_add(h, all_z[:12], jnp.arange(12.0), 0)
    # offer the same seen candidate many times: only the 4 unseen ones may come out
    cands = jnp.concatenate([all_z[:12], all_z[:12]])
    out = propose_unique(TINY, jax.random.key(0), cands, jnp.ones(24), h, 4)
    got = sorted(np.asarray(arch_index(TINY, out)).tolist())
    assert got == [12, 13, 14, 15]


@pytest.mark.parametrize("make", [lambda: RandomSearch(TINY, 4, 16),
                                  lambda: RegularizedEvolution(TINY, 4, 16, population_size=4,
                                                               tournament_size=2)])
def test_budget_equal_to_space_visits_every_arch_once(make):
    table = synthetic_table(TINY, 0)
    s = make()
    state = run_search(s, lambda zs: np.asarray(table.lookup(jnp.asarray(zs), "a")), 16,
                       jax.random.key(3))
    idx = np.asarray(arch_index(TINY, state.history.zs))
    assert sorted(idx.tolist()) == list(range(16))  # no duplicate, nothing missed
    assert float(state.history.scores.max()) == pytest.approx(table.optimum("a"))
    for z in np.asarray(state.history.zs):
        TINY.decode(z)  # valid


def test_meta_searcher_never_proposes_invalid_or_duplicate():
    table = synthetic_table(SMALL, 1)
    s = scratch_searcher(SMALL, batch_size=16, capacity=160, fit_steps=20,
                         config=EvaluatorConfig(task_input="none", hidden=(32,)),
                         strategy_config=SMALL_CFG)
    state = jax.jit(lambda k: scan_search(s, lambda zs: table.lookup(zs, "a"), 10, k))(
        jax.random.key(0))
    zs = np.asarray(state.history.zs)
    assert int(state.history.count) == 160
    idx = np.asarray(arch_index(SMALL, zs))
    assert len(set(idx.tolist())) == 160
    np.testing.assert_array_equal(zs, np.asarray(jax.vmap(SMALL.project)(zs)))  # on the grid
    for z in zs[::7]:
        SMALL.decode(z)


def test_ask_tell_finds_optimum_of_small_space():
    table = synthetic_table(SMALL, 2)
    opt = table.optimum("a")
    ev = Evaluator(SMALL, EvaluatorConfig(task_input="none", hidden=(32,)))
    s = scratch_searcher(SMALL, batch_size=10, capacity=100, fit_steps=30,
                         config=ev.config, strategy_config=SMALL_CFG)
    evaluate = lambda zs: np.asarray(table.lookup(jnp.asarray(zs), "a"))
    state = run_search(s, evaluate, 100, jax.random.key(0))
    # random search finds it within 100 of 1296 evaluations with probability 0.077
    assert float(state.history.scores.max()) == pytest.approx(opt)


def test_recommend_model_pick_and_best_observed():
    """A baseline hands over its best observed score; a model-based searcher the evaluated
    row its adapted evaluator predicts best, never an unevaluated or diverged row."""
    table = synthetic_table(SMALL, 3)
    evaluate = lambda zs: np.asarray(table.lookup(jnp.asarray(zs), "a"))
    rs = RandomSearch(SMALL, 8, 24)
    st = run_search(rs, evaluate, 24, jax.random.key(0))
    assert int(recommend(rs, st)) == int(np.argmax(np.asarray(st.history.scores)))
    s = scratch_searcher(SMALL, batch_size=8, capacity=32, fit_steps=20,
                         config=EvaluatorConfig(task_input="none", hidden=(32,)),
                         strategy_config=SMALL_CFG)
    noisy = lambda zs: evaluate(zs) + np.where(np.arange(len(zs)) == 0, np.nan, 0.0)
    st = run_search(s, noisy, 24, jax.random.key(1))
    pred = np.asarray(s.predict(st, st.history.zs))
    ok = np.asarray(st.history.valid & jnp.isfinite(st.history.scores))
    row = int(recommend(s, st))
    assert ok[row] and pred[row] == pred[ok].max()
    assert not ok[0] and not ok[24:].any()  # the diverged first candidate, empty rows


def test_finalists_best_distinct_first_skipping_excluded():
    scores = [0.3, 0.9, 0.5, 0.9, 0.7, 0.1]
    choices = [[0], [1], [2], [1], [3], [4]]  # evaluations 1 and 3: the same architecture
    assert finalists(scores, choices, 3) == [1, 4, 2]
    assert finalists(scores, choices, 3, exclude=[1]) == [3, 4, 2]
    assert finalists(scores, choices, 10) == [1, 4, 2, 0, 5]
    with pytest.raises(ValueError, match="k must be >= 1"):
        finalists(scores, choices, 0)


def test_same_seed_same_history_different_seed_differs():
    table = synthetic_table(SMALL, 3)
    s = scratch_searcher(SMALL, batch_size=8, capacity=24, fit_steps=5,
                         config=EvaluatorConfig(task_input="none", hidden=(16,)),
                         strategy_config=SMALL_CFG)
    evaluate = lambda zs: np.asarray(table.lookup(jnp.asarray(zs), "a"))
    a = run_search(s, evaluate, 24, jax.random.key(5)).history
    b = run_search(s, evaluate, 24, jax.random.key(5)).history
    c = run_search(s, evaluate, 24, jax.random.key(6)).history
    np.testing.assert_array_equal(np.asarray(a.zs), np.asarray(b.zs))
    np.testing.assert_array_equal(np.asarray(a.scores), np.asarray(b.scores))
    assert not np.array_equal(np.asarray(a.zs), np.asarray(c.zs))
    e = RegularizedEvolution(SMALL, 8, 24, population_size=8, tournament_size=3)
    h1 = run_search(e, evaluate, 24, jax.random.key(5)).history
    h2 = run_search(e, evaluate, 24, jax.random.key(5)).history
    np.testing.assert_array_equal(np.asarray(h1.zs), np.asarray(h2.zs))


def test_run_search_resumes_from_a_saved_state_exactly():
    """The hooks a resumable driver uses: a search stopped after a round and continued from
    that round's state (``state``, ``done``) ends as the uninterrupted one; ``on_ask`` sees
    every candidate once, before its score is told."""
    table = synthetic_table(SMALL, 4)
    evaluate = lambda zs: np.asarray(table.lookup(jnp.asarray(zs), "a"))
    e = RegularizedEvolution(SMALL, 6, 24, population_size=6, tournament_size=3)
    full = run_search(e, evaluate, 24, jax.random.key(2)).history
    saved, asked = {}, []

    def keep(done, state):
        saved.setdefault(done, state)
    on_ask = lambda state, zs: asked.append((int(state.history.count), len(zs)))
    run_search(e, evaluate, 12, jax.random.key(2), callback=keep, on_ask=on_ask)
    assert asked == [(0, 6), (6, 6)]  # told after the hook: the state has not seen them
    resumed = run_search(e, evaluate, 24, jax.random.key(99), state=saved[12], done=12).history
    np.testing.assert_array_equal(np.asarray(resumed.zs), np.asarray(full.zs))
    np.testing.assert_array_equal(np.asarray(resumed.scores), np.asarray(full.scores))


def _synthetic_meta_tasks(space, seeds, n=400):
    zs, ys = [], []
    for seed in seeds:
        t = synthetic_table(space, seed)
        idx = np.random.default_rng(seed).choice(t.size, n, replace=False)
        z = index_to_z(space, jnp.asarray(idx))
        zs.append(z)
        ys.append(t.lookup(z, "a"))
    return MetaTasks(zs=jnp.stack(zs), scores=jnp.stack(ys), task=jnp.arange(len(seeds)))


def test_adaptation_lowers_error_on_observed_pairs_and_meta_training_helps():
    data = _synthetic_meta_tasks(SMALL, [10, 11, 12])
    ev = Evaluator(SMALL, EvaluatorConfig(task_input="table", num_tables=3, hidden=(32,),
                                          inner_steps=5))
    params, losses = ev.meta_train(jax.random.key(0), data, steps=100, batch_tasks=4,
                                   n_support=32, n_query=32, lr=3e-3)
    assert np.all(np.isfinite(losses))
    assert losses[-20:].mean() < losses[:20].mean()
    # a held-out task: adapt to 30 observed pairs; the error on those pairs goes down
    held = _synthetic_meta_tasks(SMALL, [20])
    zs, ys = held.zs[0, :30], held.scores[0, :30]
    mask = jnp.ones(30, bool)
    ctx = ev.context(params, -1)
    before = ev.loss(ev.fast_init(params, ys, mask), ctx, zs, ys, mask)
    fast = ev.adapt(params, ctx, zs, ys, mask)
    after = ev.loss(fast, ctx, zs, ys, mask)
    assert float(after) < float(before)
    # masked pairs do not count: adapting on a mask of none changes nothing
    none = ev.adapt(params, ctx, zs, ys, jnp.zeros(30, bool))
    np.testing.assert_allclose(ev.predict(none, ctx, zs),
                               ev.predict(ev.fast_init(params), ctx, zs), rtol=1e-6)


def test_evaluator_is_differentiable_in_z():
    ev = Evaluator(SMALL, EvaluatorConfig(task_input="none", hidden=(16,)))
    params = ev.init(jax.random.key(0), None)
    z = SMALL.sample(jax.random.key(1), 3)
    g = jax.jit(jax.grad(lambda z: jnp.sum(ev.predict(ev.fast_init(params), ev.context(params, None), z))))(z)
    assert np.all(np.isfinite(g)) and np.any(np.abs(g) > 0)


def test_image_set_encoder_ignores_sample_order_and_label_numbering():
    ev = Evaluator(SMALL, EvaluatorConfig(task_input="images", max_classes=4, context_dim=8))
    x = jax.random.uniform(jax.random.key(0), (12, 8, 8, 3))
    y = jnp.arange(12) % 3
    params = jax.jit(ev.init)(jax.random.key(1), (x, y))
    context = jax.jit(ev.context)
    c = context(params, (x, y))
    perm = jax.random.permutation(jax.random.key(2), 12)
    np.testing.assert_allclose(context(params, (x[perm], y[perm])), c, rtol=1e-4, atol=1e-5)
    relabel = jnp.array([2, 0, 3, 1])[y]  # other class numbers, same classes
    np.testing.assert_allclose(context(params, (x, relabel)), c, rtol=1e-4, atol=1e-5)
    other = context(params, (x[::-1] * 0.5, y))
    assert not np.allclose(other, c)


def test_bad_inputs_raise_value_error():
    s = RandomSearch(TINY, 4, 8)
    with pytest.raises(ValueError, match="capacity"):
        run_search(s, lambda z: np.zeros(len(z)), 9, jax.random.key(0))
    with pytest.raises(ValueError, match="batch_size"):
        RandomSearch(TINY, 0, 8)
    with pytest.raises(ValueError, match="architectures of space"):
        run_search(RandomSearch(TINY, 4, 32), lambda z: np.zeros(len(z)), 17, jax.random.key(0))
    with pytest.raises(ValueError, match="scores"):
        run_search(s, lambda z: np.zeros(len(z) + 1), 4, jax.random.key(0))
    with pytest.raises(ValueError, match="task_input"):
        EvaluatorConfig(task_input="pictures")
    with pytest.raises(ValueError, match="shape"):
        TabularBenchmark.from_array(TINY, np.zeros(15), ("a",))
    with pytest.raises(ValueError, match="step"):
        StrategyParams.create(step=0.0)
