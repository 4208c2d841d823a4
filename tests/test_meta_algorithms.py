"""MAML / first-order MAML / Reptile: exact meta-gradients, learning, determinism."""
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import flax.linen as flax_nn

from metanas_jax import data, meta, spaces
from metanas_jax.nn.fastconv import Conv


class Tasks(NamedTuple):
    support_x: jax.Array
    support_y: jax.Array
    query_x: jax.Array
    query_y: jax.Array


@functools.partial(jax.jit, static_argnums=range(1, 8))
def toy_tasks(key, num_tasks, n_way=3, k_shot=2, n_query=4, size=8, classes=12, noise=0.6):
    """Episodes of a fixed toy distribution: each class is a random prototype image, its
    examples are the prototype plus noise (prototypes from a fixed key, episodes from ``key``)."""
    protos = jax.random.normal(jax.random.PRNGKey(123), (classes, size, size, 1))
    k_cls, k_noise = jax.random.split(key)
    cls = jax.vmap(lambda k: jax.random.permutation(k, classes)[:n_way])(
        jax.random.split(k_cls, num_tasks))

    def draw(k, shots):
        y = jnp.tile(jnp.arange(n_way), (num_tasks, 1)).repeat(shots, axis=1)
        c = jnp.take_along_axis(cls, y, axis=1)
        return protos[c] + noise * jax.random.normal(k, c.shape + (size, size, 1)), y.astype(jnp.int32)

    ks, kq = jax.random.split(k_noise)
    sx, sy = draw(ks, k_shot)
    qx, qy = draw(kq, n_query)
    return Tasks(sx, sy, qx, qy)


def tiny_conv4(n_way=3, channels=4, blocks=2):
    return meta.conv4_learner(n_way, channels=channels, blocks=blocks, downsample="pool")


def _to64(tree):
    return jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), tree)


class SmoothNet(flax_nn.Module):
    """A smooth (tanh) conv net, optionally mixing candidate ops with architecture weights,
    so float64 finite differences are exact to ~1e-8 (ReLU kinks and float32 batch-norm
    statistics would not be)."""

    num_classes: int

    @flax_nn.compact
    def __call__(self, x, weights=None, train=True):
        h = jnp.tanh(Conv(3, 3, impl="matmul", name="stem")(x))
        if weights is not None:
            w = weights["normal"]  # (edges, primitives): none, skip, avg_pool, sep_conv
            for e in range(w.shape[0]):
                conv = jnp.tanh(Conv(3, 3, impl="matmul", name=f"edge{e}")(h))
                pool = flax_nn.avg_pool(h, (3, 3), padding="SAME")
                h = w[e, 1] * h + w[e, 2] * pool + w[e, 3] * conv
        return flax_nn.Dense(self.num_classes, name="head")(h.reshape(h.shape[0], -1))


def smooth_search_learner(searching=True):
    space = spaces.get("darts", nodes=1, primitives=("none", "skip_connect", "avg_pool_3x3",
                                                     "sep_conv_3x3"))
    return meta.Learner(SmoothNet(3), space if searching else None, arch_init_scale=0.5)


@pytest.mark.parametrize("searching", [False, True])
def test_maml_gradient_matches_finite_differences(searching):
    """Second-order MAML meta-gradient = central finite difference of the adapted query
    loss (float64), and differs from the first-order one by far more than the FD error;
    with a searching learner the architecture is adapted jointly with annealed temperature."""
    with jax.enable_x64(True):
        learner = smooth_search_learner(searching)
        cfg = meta.MetaConfig(algorithm="maml", inner_steps=2, inner_lr=0.5)
        if searching:
            cfg = cfg.replace(arch_update="joint", arch_inner_lr=0.5, temp_start=2.0, temp_end=0.5)
        t = toy_tasks(jax.random.PRNGKey(0), 1, size=5)
        sx, qx = (jnp.asarray(a[0], jnp.float64) for a in (t.support_x, t.query_x))
        sy, qy = t.support_y[0], t.query_y[0]
        params, z = _to64(learner.init(jax.random.PRNGKey(1), sx))

        def grads(algorithm):
            c = cfg.replace(algorithm=algorithm)
            f = jax.jit(lambda p, a: meta.task_meta_gradient(learner, c, p, a, sx, sy, qx, qy, True))
            return f(params, z)[:2]

        def meta_loss(p, a):
            p2, a2, _ = meta.adapt(learner, cfg, p, a, sx, sy)
            return meta.loss_and_accuracy(learner, p2, a2, qx, qy, cfg.temp_end)[0]

        meta_loss = jax.jit(meta_loss)
        kp, kz = jax.random.split(jax.random.PRNGKey(2))
        leaves, tdef = jax.tree_util.tree_flatten(params)
        leaves_v = [jax.random.normal(k, l.shape, jnp.float64)
                    for k, l in zip(jax.random.split(kp, len(leaves)), leaves)]
        vp = jax.tree_util.tree_unflatten(tdef, leaves_v)
        vz = jax.random.normal(kz, z.shape, jnp.float64)
        # spaces compute the relaxation in float32: a larger step keeps that rounding
        # (~1e-7) small next to the difference; the net is smooth, so O(eps^2) is tiny too
        eps, rel = (1e-3, 1e-4) if searching else (1e-5, 1e-6)
        shift = lambda s: (jax.tree_util.tree_map(lambda a, b: a + s * b, params, vp), z + s * vz)
        fd = float((meta_loss(*shift(eps)) - meta_loss(*shift(-eps))) / (2 * eps))

        def directional(g):
            gp, gz = g
            return float(sum(jnp.vdot(a, b) for a, b in zip(jax.tree_util.tree_leaves(gp), leaves_v))
                         + jnp.vdot(gz, vz))

        g2 = grads("maml")
        second, first = directional(g2), directional(grads("fomaml"))
        tol = rel * max(1.0, abs(fd))
        assert abs(second - fd) <= tol, (second, fd)
        assert abs(first - fd) > 30 * tol, (first, second, fd)
        if searching:  # the architecture really receives a meta-gradient
            assert float(jnp.linalg.norm(g2[1])) > 1e-6


def test_alternating_inner_loop_is_weight_step_then_arch_step():
    """``arch_update="alternating"`` is a weight SGD step, then an architecture step at the
    new weights: adapted weights, architecture and the second-order MAML meta-gradient
    equal a plain Python loop's (float64); with the architecture frozen only the weights
    move."""
    with jax.enable_x64(True):
        learner = smooth_search_learner()
        cfg = meta.MetaConfig(algorithm="maml", inner_steps=2, inner_lr=0.3,
                              arch_update="alternating", arch_inner_lr=0.7)
        t = toy_tasks(jax.random.PRNGKey(2), 1, size=5)
        sx, qx = (jnp.asarray(a[0], jnp.float64) for a in (t.support_x, t.query_x))
        sy, qy = t.support_y[0], t.query_y[0]
        params, z = _to64(learner.init(jax.random.PRNGKey(3), sx))
        loss = lambda x, y: lambda p, a: meta.loss_and_accuracy(learner, p, a, x, y, 1.0)[0]

        def reference(p, a):
            for _ in range(cfg.inner_steps):
                g = jax.grad(loss(sx, sy))(p, a)
                p = jax.tree_util.tree_map(lambda w, gw: w - cfg.inner_lr * gw, p, g)
                a = a - cfg.arch_inner_lr * jax.grad(loss(sx, sy), 1)(p, a)
            return p, a

        want_p, want_a = jax.jit(reference)(params, z)  # (jitted: this test took 19 s op by op, 11 s so)
        got_p, got_a, _ = jax.jit(lambda p, a: meta.adapt(learner, cfg, p, a, sx, sy))(params, z)
        for a, b in zip(jax.tree_util.tree_leaves((got_p, got_a)),
                        jax.tree_util.tree_leaves((want_p, want_a))):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9)
        assert not np.allclose(got_a, z)
        # the order matters: the joint update (both from the same weights) lands elsewhere
        _, joint_a, _ = jax.jit(lambda p, a: meta.adapt(
            learner, cfg.replace(arch_update="joint"), p, a, sx, sy))(params, z)
        assert float(jnp.abs(joint_a - want_a).max()) > 1e-4
        frozen_p, frozen_a, _ = jax.jit(lambda p, a: meta.adapt(
            learner, cfg, p, a, sx, sy, arch_active=False))(params, z)
        np.testing.assert_array_equal(frozen_a, z)
        assert not np.allclose(jax.tree_util.tree_leaves(frozen_p)[0],
                               jax.tree_util.tree_leaves(params)[0])
        want_g = jax.jit(jax.grad(lambda p, a: loss(qx, qy)(*reference(p, a)), (0, 1)))(params, z)
        got_g = jax.jit(lambda p, a: meta.task_meta_gradient(
            learner, cfg, p, a, sx, sy, qx, qy, True)[:2])(params, z)
        for a, b in zip(jax.tree_util.tree_leaves(got_g), jax.tree_util.tree_leaves(want_g)):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9)


def test_unrolled_inner_loop_gives_the_rolled_meta_gradient():
    """``scan_unroll="auto"`` unrolls a fixed network's inner loop (a speed choice): the
    second-order meta-gradient is the rolled scan's."""
    learner = tiny_conv4()
    t = toy_tasks(jax.random.PRNGKey(3), 1)
    sx, sy, qx, qy = (a[0] for a in t)
    params, z = learner.init(jax.random.PRNGKey(4), sx)
    g = {}
    for unroll, shown in (("auto", "unroll=3"), (1, "unroll=1")):
        cfg = meta.MetaConfig(algorithm="maml", inner_steps=3, inner_lr=0.1, scan_unroll=unroll)
        jaxpr = jax.make_jaxpr(lambda p: meta.adapt(learner, cfg, p, z, sx, sy))(params)
        assert shown in str(jaxpr)
        g[unroll] = jax.jit(lambda p: meta.task_meta_gradient(
            learner, cfg, p, z, sx, sy, qx, qy, True)[0])(params)
    for a, b in zip(jax.tree_util.tree_leaves(g["auto"]), jax.tree_util.tree_leaves(g[1])):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-6)


@pytest.mark.parametrize("algorithm,meta_opt,meta_lr", [("fomaml", "adam", 3e-3),
                                                       ("reptile", "sgd", 0.5)])
def test_first_order_and_reptile_reduce_meta_loss(algorithm, meta_opt, meta_lr):
    learner = tiny_conv4()
    cfg = meta.MetaConfig(algorithm=algorithm, inner_steps=2, inner_lr=0.1, meta_opt=meta_opt,
                          meta_lr=meta_lr)
    eval_tasks = toy_tasks(jax.random.PRNGKey(99), 16)
    state = meta.init_state(learner, cfg, jax.random.PRNGKey(0), eval_tasks.support_x[0])
    step = meta.make_meta_step(learner, cfg)
    score = meta.make_adapt_and_score(learner, cfg, steps=cfg.inner_steps)
    meta_loss = lambda s: float(score(s.params, s.arch, eval_tasks)[1].mean())
    before = meta_loss(state)
    state, hist = meta.meta_train(step, state, lambda k: toy_tasks(k, 2), 40, log=None, log_every=40)
    after = meta_loss(state)
    print(algorithm, before, after)
    assert int(state.step) == 40 and np.isfinite(hist[-1]["loss"])
    assert after < 0.9 * before, (before, after)


def test_same_seed_same_result_and_seed_matters():
    learner = smooth_search_learner()
    cfg = meta.MetaConfig(algorithm="maml", inner_steps=1, inner_lr=0.1, arch_update="alternating",
                          arch_inner_lr=0.1, arch_meta_lr=1e-2)
    step = meta.make_meta_step(learner, cfg)
    tasks = toy_tasks(jax.random.PRNGKey(5), 2)

    def run(seed):
        state = meta.init_state(learner, cfg, jax.random.PRNGKey(seed), tasks.support_x[0])
        state, _ = meta.meta_train(step, state, lambda k: toy_tasks(k, 2), 2, log=None)
        return state

    a, b, c = run(0), run(0), run(1)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_array_equal(x, y)
    assert not np.allclose(a.arch, c.arch)
    assert int(a.step) == 2


def test_learned_inner_rates_get_exact_meta_gradients():
    """``learn_inner_lr``: the rates' meta-gradient is the finite difference of the adapted
    query loss along the rates, for second-order MAML (2 inner steps) and first-order MAML
    (1 step, where the first-order rate gradient is exact); first-order MAML's weight
    gradient is the one without learned rates when every rate equals ``inner_lr``."""
    with jax.enable_x64(True):
        learner = smooth_search_learner(False)
        t = toy_tasks(jax.random.PRNGKey(0), 1, size=5)
        sx, qx = (jnp.asarray(a[0], jnp.float64) for a in (t.support_x, t.query_x))
        sy, qy = t.support_y[0], t.query_y[0]
        params, z = _to64(learner.init(jax.random.PRNGKey(1), sx))
        leaves, tdef = jax.tree_util.tree_flatten(params)
        lrs = jax.tree_util.tree_unflatten(
            tdef, [jnp.float64(0.3 + 0.1 * i) for i in range(len(leaves))])
        v = jax.tree_util.tree_unflatten(
            tdef, list(jax.random.normal(jax.random.PRNGKey(2), (len(leaves),), jnp.float64)))
        for algorithm, steps in (("maml", 2), ("fomaml", 1)):
            cfg = meta.MetaConfig(algorithm=algorithm, inner_steps=steps, inner_lr=0.3,
                                  learn_inner_lr=True)

            def meta_loss(r):
                p2, a2, _ = meta.adapt(learner, cfg, params, z, sx, sy, lrs=r)
                return meta.loss_and_accuracy(learner, p2, a2, qx, qy, 1.0)[0]

            eps = 1e-5
            shift = lambda s: jax.tree_util.tree_map(lambda a, b: a + s * b, lrs, v)
            fd = float((jax.jit(meta_loss)(shift(eps)) - jax.jit(meta_loss)(shift(-eps))) / (2 * eps))
            (_, g_lrs), _, _ = jax.jit(lambda r: meta.task_meta_gradient(
                learner, cfg, params, z, sx, sy, qx, qy, True, r))(lrs)
            got = float(sum(a * b for a, b in zip(jax.tree_util.tree_leaves(g_lrs),
                                                  jax.tree_util.tree_leaves(v))))
            assert abs(got - fd) <= 1e-6 * max(1.0, abs(fd)), (algorithm, got, fd)
            assert abs(fd) > 1e-4, fd  # the check is not vacuous
        cfg = meta.MetaConfig(algorithm="fomaml", inner_steps=2, inner_lr=0.3)
        same = jax.tree_util.tree_map(lambda _: jnp.float64(0.3), params)
        (gp_lr, _), _, _ = meta.task_meta_gradient(
            learner, cfg.replace(learn_inner_lr=True), params, z, sx, sy, qx, qy, True, same)
        gp, _, _ = meta.task_meta_gradient(learner, cfg, params, z, sx, sy, qx, qy, True)
        for a, b in zip(jax.tree_util.tree_leaves(gp_lr), jax.tree_util.tree_leaves(gp)):
            np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


def test_learned_inner_rates_train_and_are_used_at_meta_test():
    """First-order MAML with learned rates lowers the meta-loss, moves the rates, and the
    meta-test adapts with the state's rates (not ``inner_lr``); bad settings name the key."""
    learner = tiny_conv4()
    cfg = meta.MetaConfig(algorithm="fomaml", inner_steps=1, inner_lr=0.1, meta_lr=3e-3,
                          learn_inner_lr=True)
    eval_tasks = toy_tasks(jax.random.PRNGKey(99), 16)
    state = meta.init_state(learner, cfg, jax.random.PRNGKey(0), eval_tasks.support_x[0])
    assert all(float(r) == np.float32(0.1) for r in jax.tree_util.tree_leaves(state.inner_lrs))
    score = meta.make_adapt_and_score(learner, cfg, steps=1)
    meta_loss = lambda s, r: float(score(s.params, s.arch, eval_tasks, r)[1].mean())
    before = meta_loss(state, state.inner_lrs)
    state, hist = meta.meta_train(meta.make_meta_step(learner, cfg), state,
                                  lambda k: toy_tasks(k, 2), 40, log=None, log_every=40)
    rates = np.array([float(r) for r in jax.tree_util.tree_leaves(state.inner_lrs)])
    after = meta_loss(state, state.inner_lrs)
    assert after < 0.9 * before, (before, after)
    assert np.ptp(rates) > 1e-3 and "inner_lr_mean" in hist[-1], rates
    protos = jax.random.normal(jax.random.PRNGKey(123), (12, 1, 8, 8, 1))
    pool = data.ClassPool(images=protos + 0.6 * jax.random.normal(jax.random.PRNGKey(7),
                                                                   (12, 6, 8, 8, 1)))
    test = lambda s: meta.meta_test(learner, cfg, s, pool, 3, 2, n_query=4, num_episodes=4,
                                    batch_size=4, steps=1)["loss"]
    fixed = jax.tree_util.tree_map(lambda r: jnp.full_like(r, 0.1), state.inner_lrs)
    assert test(state) != test(state.replace(inner_lrs=fixed))
    with pytest.raises(ValueError, match="learn_inner_lr"):
        meta.MetaConfig(algorithm="reptile", learn_inner_lr=True)
    with pytest.raises(ValueError, match="learn_inner_lr"):
        meta.make_meta_step(learner, cfg.replace(learn_inner_lr=False))(state, eval_tasks)


def test_head_init_proto_is_the_prototype_classifier_with_exact_meta_gradients():
    """``head_init="proto"``: the inner loop starts from ``2 mu_c . f - |mu_c|^2`` (``embed`` is
    what the head receives), the meta-gradient through the prototypes matches finite
    differences (second-order MAML, float64), and the meta-learned head gets none; with
    ``"zero"`` the head's start is zeros whatever the meta-weights; bad settings name the key."""
    with jax.enable_x64(True):
        learner = smooth_search_learner(False)
        t = toy_tasks(jax.random.PRNGKey(0), 1, size=5, noise=2.0)  # not all classified
        sx, qx = (jnp.asarray(a[0], jnp.float64) for a in (t.support_x, t.query_x))
        sy, qy = t.support_y[0], t.query_y[0]
        params, z = _to64(learner.init(jax.random.PRNGKey(1), sx))
        f = learner.embed(params, z, sx)
        head = params["head"]
        np.testing.assert_allclose(learner.apply(params, z, sx), f @ head["kernel"] + head["bias"],
                                   rtol=1e-10, atol=1e-10)
        cfg = meta.MetaConfig(algorithm="maml", inner_steps=1, inner_lr=0.3, head_init="proto")
        start = meta.init_head(learner, cfg, params, z, sx, sy)
        mu = np.stack([np.asarray(f)[np.asarray(sy) == c].mean(0) for c in range(3)])
        want = (-((np.asarray(f)[:, None] - mu[None]) ** 2).sum(-1)
                + (np.asarray(f) ** 2).sum(-1)[:, None])
        np.testing.assert_allclose(learner.apply(start, z, sx), want, rtol=1e-9, atol=1e-9)

        def meta_loss(p):
            p2, a2, _ = meta.adapt(learner, cfg, p, z, sx, sy)
            return meta.loss_and_accuracy(learner, p2, a2, qx, qy, 1.0)[0]

        leaves, tdef = jax.tree_util.tree_flatten(params)
        v = jax.tree_util.tree_unflatten(tdef, [jax.random.normal(jax.random.PRNGKey(i), a.shape,
                                                                  jnp.float64)
                                               for i, a in enumerate(leaves)])
        eps = 1e-5
        shift = lambda s: jax.tree_util.tree_map(lambda a, b: a + s * b, params, v)
        fd = float((jax.jit(meta_loss)(shift(eps)) - jax.jit(meta_loss)(shift(-eps))) / (2 * eps))
        gp, _, _ = meta.task_meta_gradient(learner, cfg, params, z, sx, sy, qx, qy, True)
        got = float(sum(jnp.vdot(a, b) for a, b in zip(jax.tree_util.tree_leaves(gp),
                                                       jax.tree_util.tree_leaves(v))))
        assert abs(got - fd) <= 1e-6 * max(1.0, abs(fd)), (got, fd)
        assert abs(fd) > 1e-4, fd
        assert all(float(jnp.abs(a).max()) == 0 for a in jax.tree_util.tree_leaves(gp["head"]))
        zero = cfg.replace(head_init="zero")
        other = {**params, "head": jax.tree_util.tree_map(lambda a: a + 1.0, head)}
        for p in (params, other):
            np.testing.assert_array_equal(meta_loss(p), meta_loss(params))
            assert all(float(jnp.abs(a).max()) == 0 for a in jax.tree_util.tree_leaves(
                meta.init_head(learner, zero, p, z, sx, sy)["head"]))
    with pytest.raises(ValueError, match="head_init"):
        meta.MetaConfig(head_init="prototype")
    headless = {k: v for k, v in params.items() if k != "head"}
    with pytest.raises(ValueError, match="'head'"):
        meta.init_head(learner, cfg, headless, z, sx, sy)


def test_supernet_programs_compile_at_llvm_o1_on_cpu_with_the_default_result(monkeypatch):
    """A supernet's meta-step and meta-test compile with ``Learner.compiler_options()``
    (LLVM -O1 on CPU) and compute what XLA's default-compiled programs compute."""
    from metanas_jax.meta import learner as learner_module
    learner = smooth_search_learner()
    on_cpu = jax.default_backend() == "cpu"
    assert learner.compiler_options() == ({"xla_backend_optimization_level": 1} if on_cpu else None)
    assert tiny_conv4().compiler_options() is None
    cfg = meta.MetaConfig(algorithm="fomaml", inner_steps=1, eval_inner_steps=1, inner_lr=0.1,
                          arch_meta_lr=1e-2)
    tasks = toy_tasks(jax.random.PRNGKey(3), 2)
    state = meta.init_state(learner, cfg, jax.random.PRNGKey(0), tasks.support_x[0])
    fast_compile = meta.make_meta_step(learner, cfg)
    default = jax.jit(meta.make_meta_step(learner, cfg, jit=False))
    a, b = fast_compile(state, tasks)[0], default(state, tasks)[0]
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
    assert not np.allclose(a.arch, state.arch)
    fast_test = meta.make_adapt_and_score(learner, cfg)(a.params, a.arch, tasks)
    monkeypatch.setattr(learner_module, "SUPERNET_CPU_COMPILER_OPTIONS", {})  # XLA's defaults
    other = smooth_search_learner()  # the same network; a new object, so a new compile
    assert other.compiler_options() in ({}, None)
    default_test = meta.make_adapt_and_score(other, cfg)(a.params, a.arch, tasks)
    for x, y in zip(fast_test, default_test):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


def test_second_order_supernet_step_drops_the_edge_remat_with_the_same_gradient():
    """Second-order MAML through the supernet's rolled, checkpointed inner loop runs the
    network without its own edge rematerialisation (a speed choice): the same function and
    gradients, one checkpoint (the inner step's) in the program instead of one per edge
    scan too."""
    space = spaces.get("darts", nodes=2, primitives=("none", "skip_connect", "max_pool_3x3",
                                                     "sep_conv_3x3"))
    learner = meta.supernet_learner(space, 3, channels=4, cells=1)
    assert learner.module.remat and not learner.without_remat().module.remat
    fixed = tiny_conv4()
    assert fixed.without_remat() is fixed  # no remat field: unchanged
    k = jax.random.split(jax.random.PRNGKey(0), 4)
    sx, qx = jax.random.normal(k[0], (3, 8, 8, 1)), jax.random.normal(k[1], (6, 8, 8, 1))
    sy, qy = jnp.arange(3), jnp.arange(6) % 3
    params, z = learner.init(k[2], sx)
    cfg = meta.MetaConfig(algorithm="maml", inner_steps=2, inner_lr=0.1,
                          arch_update="alternating", arch_inner_lr=0.1)
    # (remat changes only what the backward pass recomputes: a first-order gradient shows
    # it; the second-order meta-gradients compiled 2 x 10 s for the same answer)
    got, want = (jax.jit(jax.value_and_grad(lambda p, a, lr=lr: jnp.sum(lr.apply(p, a, qx) ** 2),
                                            argnums=(0, 1)))(params, z)
                 for lr in (learner.without_remat(), learner))
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    batch = data.TaskBatch(sx[None], sy[None], qx[None], qy[None])
    remats = {}
    for algorithm in ("maml", "fomaml"):
        c = cfg.replace(algorithm=algorithm)
        state = meta.init_state(learner, c, k[3], sx)
        jaxpr = jax.make_jaxpr(meta.make_meta_step(learner, c, jit=False))(state, batch)
        remats[algorithm] = str(jaxpr).count("remat2[")
    assert remats["maml"] == 1 and remats["fomaml"] > 1, remats
