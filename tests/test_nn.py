from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metanas_jax import nn as mnn
from metanas_jax import spaces
from metanas_jax.nn import hard as hard_mod

# small settings: the networks are the real ones, only narrower and shallower
CASES = {
    "macro32": (spaces.get("macro32", widths=(4, 8, 12), stem_width=4), {}),
    # conv then 2x2 max-pool; 12x12 inputs reach odd levels (3x3 -> 2x2); and the rest of
    # the airbench shape: stem without norm, GELU, scaled max-pool head (4 of the 7 ops,
    # macro32_pool_first 2 others, macro32 all: each op costs compile time in every test)
    "macro32_pool": (spaces.get("macro32", widths=(4, 8, 12), stem_width=4, reduction="pool",
                                stem_norm=False, activation="gelu", head_pool="max",
                                head_scale=1 / 9, ops=("conv5x5", "dil_conv3x3", "max_pool3x3",
                                                       "identity")), {}),
    # airbench's order (spaces.CIFAR_SPACE): conv -> 2x2 max-pool -> BN -> act when downsampling
    "macro32_pool_first": (spaces.get("macro32", widths=(4, 8, 12), stem_width=4, reduction="pool",
                                      pool_before_norm=True, ops=("conv3x3", "sep_conv3x3",
                                                                  "max_pool3x3", "identity")), {}),
    "nb201": (spaces.get("nb201"), dict(channels=4, cells_per_stage=1)),
    "darts": (spaces.get("darts", nodes=2), dict(channels=4, cells=3, stem_multiplier=2)),
}
X = jax.random.normal(jax.random.key(1), (6, 12, 12, 3))


@pytest.fixture(scope="module", params=list(CASES))
def case(request):
    space, kw = CASES[request.param]
    sup = mnn.supernet(space, 5, **kw)
    w = space.relax(space.sample(jax.random.key(0), 1)[0], 1.0)
    variables = mnn.init(sup, jax.random.key(2), X, w)
    apply = jax.jit(lambda v, x, w: sup.apply(v, x, w, train=True))
    return space, kw, sup, variables, apply


def _jit_apply(net, variables):
    """A compact network in training mode, jitted: op by op its many small compiles took
    4x longer."""
    return jax.jit(lambda v: net.apply(v, X, train=True, mutable=["batch_stats"]))(variables)


def test_one_hot_supernet_equals_compact(case):
    space, kw, _, variables, apply = case
    for z in space.sample(jax.random.key(5), 4):
        arch = space.decode(z)
        net = mnn.build(space, arch, 5, **kw)
        compact = mnn.extract(net, variables, X)
        y_compact, _ = _jit_apply(net, compact)
        y_super = apply(variables, X, space.one_hot(arch))
        assert y_compact.shape == (6, 5)
        np.testing.assert_allclose(y_super, y_compact, rtol=1e-4, atol=1e-4)
        assert 0 < mnn.count_params(compact) < mnn.count_params(variables)
        print(f"{space.name}: {mnn.count_params(compact)} params  {arch}")


def test_compiles_once_for_50_architectures(case):
    space, _, sup, variables, apply = case  # the fixture's jit: already compiled once
    outs = [apply(variables, X, space.relax(z, 0.0)) for z in space.sample(jax.random.key(9), 50)]
    assert apply._cache_size() == 1
    assert len({np.asarray(o).tobytes() for o in outs}) > 40  # they really differ


def test_vmap_over_architectures_and_weights(case):
    space, _, sup, variables, apply = case
    if getattr(space, "reduction", "") == "pool":
        pytest.skip("vmap does not depend on the downsampling (macro32 covers it)")
    zs = space.sample(jax.random.key(3), 3)
    ws = jax.vmap(lambda z: space.relax(z, 0.0))(zs)
    stacked = jax.tree.map(lambda a: jnp.stack([a, 0.5 * a, a]), variables)
    ys = jax.jit(jax.vmap(lambda v, w: sup.apply(v, X, w, train=True)))(stacked, ws)
    for i in range(3):
        v_i = jax.tree.map(lambda a: a[i], stacked)
        np.testing.assert_allclose(ys[i], apply(v_i, X, jax.tree.map(lambda a: a[i], ws)), rtol=1e-4, atol=1e-5)


def test_soft_weights_have_architecture_gradients(case):
    space, _, sup, variables, _ = case
    z = space.sample(jax.random.key(4), 1)[0]
    if space.name != "darts":
        z = jnp.clip(z * 0.8 + 0.1, 0, 1)

    def loss(z):
        return jnp.mean(sup.apply(variables, X, space.relax(z, 0.5), train=True) ** 2)

    g = jax.jit(jax.grad(loss))(z)  # jitted: op-by-op it took ~20 s per space
    assert np.all(np.isfinite(g)) and np.any(g != 0)


def test_compact_network_trains_with_running_stats():
    space, _ = CASES["macro32"]
    arch = space.decode(space.sample(jax.random.key(0), 1)[0])
    net = mnn.build(space, arch, 5)
    v = mnn.init(net, jax.random.key(0), X)
    assert set(v) == {"params", "batch_stats"}
    _, upd = net.apply(v, X, train=True, mutable=["batch_stats"])
    assert not np.allclose(upd["batch_stats"]["stem"]["norm"]["mean"], 0)
    y = net.apply({**v, **upd}, X, train=False)
    assert y.shape == (6, 5) and np.all(np.isfinite(y))


def test_bad_inputs():
    space, _ = CASES["macro32"]
    with pytest.raises(ValueError, match="num_classes"):
        mnn.supernet(space, 0)
    other = spaces.get("nb201")
    with pytest.raises(ValueError, match="architecture of space"):
        mnn.build(space, other.decode(other.sample(jax.random.key(0), 1)[0]), 5)


@pytest.mark.parametrize("name", ["macro32", "macro32_pool", "macro32_pool_first"])
def test_hard_supernet_equals_compact_and_compiles_once(name):
    """macro32's hard mode (only the chosen op runs) == compact network, one program."""
    space, kw = CASES[name]
    sup = mnn.supernet(space, 5, **kw)
    hard = mnn.supernet(space, 5, hard=True, **kw)
    variables = mnn.init(hard, jax.random.key(2), X)
    w0 = space.relax(space.sample(jax.random.key(0), 1)[0], 0.0)
    soft_shapes = jax.eval_shape(lambda: sup.init(jax.random.key(0), X, w0, train=False))
    assert jax.tree.structure(soft_shapes) == jax.tree.structure(variables)  # same variables
    apply = jax.jit(lambda v, x, w: hard.apply(v, x, w, train=True))
    zs = space.sample(jax.random.key(5), 3)
    # and every layer downsampling: 12 -> 6 -> 3 -> 2 -> 1, then past 1x1
    down = " | ".join([f"{space.ops[0]}-4+res/2", "identity-8/2"] * (space.layers // 2))
    zs = jnp.concatenate([zs, space.encode(space.from_string(down))[None]])
    for z in zs:
        arch = space.decode(z)
        net = mnn.build(space, arch, 5, **kw)
        y_compact, _ = _jit_apply(net, mnn.extract(net, variables, X))
        np.testing.assert_allclose(apply(variables, X, space.relax(z, 0.0)), y_compact,
                                   rtol=1e-4, atol=1e-4)
    assert apply._cache_size() == 1
    if name == "macro32_pool_first":  # (gradients of another pool space: the width test below)
        g = jax.grad(lambda v: jnp.sum(apply(v, X, space.relax(zs[0], 0.0)) ** 2))(variables)
        leaves = jax.tree.leaves(g)
        assert all(np.all(np.isfinite(a)) for a in leaves) and any(np.any(a != 0) for a in leaves)
    with pytest.raises(ValueError, match="no hard supernet"):
        mnn.supernet(spaces.get("nb201"), 5, hard=True)


def test_hard_supernet_width_slices_equal_the_channel_mask():
    """Convolutions written at the layer's own width (``slice_widths``) give
    the outputs and gradients of every op at the widest width under the channel mask,
    also after a layer wider than the next and from a stem narrower than any width."""
    space = spaces.get("macro32", layers=4, widths=(4, 8), stem_width=3, reduction="pool",
                       ops=("conv3x3", "sep_conv3x3", "identity"))
    sliced = mnn.supernet(space, 5, hard=True, slice_widths=True)
    masked = mnn.supernet(space, 5, hard=True, slice_widths=False)
    assert sliced != masked
    # by default only where the widest width is large enough to pay for the branches
    assert mnn.supernet(space, 5, hard=True) == masked
    assert mnn.supernet(spaces.get("macro32", **spaces.CIFAR_SPACE), 5, hard=True).slice_widths
    variables = mnn.init(sliced, jax.random.key(2), X)
    leaves, tree = jax.tree.flatten(variables)  # every channel's parameters distinct
    keys = jax.random.split(jax.random.key(3), len(leaves))
    variables = jax.tree.unflatten(tree, [a + 0.3 * jax.random.normal(k, a.shape)
                                          for a, k in zip(leaves, keys)])
    archs = ["conv3x3-8 | sep_conv3x3-4+res | conv3x3-8/2 | identity-4",
             "sep_conv3x3-4/2 | conv3x3-8+res | conv3x3-4+res | sep_conv3x3-8"]
    # one compilation per network (X's size: at 6x6 the max-pools tie on ReLU zeros and
    # the gradient is not unique)
    fns = [jax.jit(jax.value_and_grad(lambda v, w, net=net: jnp.sum(net.apply(v, X, w) ** 2)))
           for net in (sliced, masked)]
    for arch in archs:
        w = space.relax(space.encode(space.from_string(arch)), 0.0)
        (ya, ga), (yb, gb) = (f(variables, w) for f in fns)
        np.testing.assert_allclose(ya, yb, rtol=1e-5)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), ga, gb)


def test_hard_supernet_inference_computes_the_same_logits():
    """``inference=True`` (make_evaluate_fn's query scoring) computes the same logits with
    convolutions reading only the previous layer's channels and run in chunks of the
    batch (batch norm still sees the whole batch), also where the stem is as wide as the
    widest layer (width-sliced, the CIFAR space's form)."""
    space = spaces.get("macro32", layers=4, widths=(4, 8), stem_width=8, reduction="pool",
                       pool_before_norm=True, ops=("conv3x3", "sep_conv3x3", "identity"))
    arch = "conv3x3-4 | sep_conv3x3-8+res/2 | conv3x3-4 | identity-8/2"
    w = space.relax(space.encode(space.from_string(arch)), 0.0)
    hard = mnn.supernet(space, 5, hard=True, slice_widths=True)
    variables = mnn.init(hard, jax.random.key(2), X)
    whole = lambda v, w: hard.apply(v, X, w)
    with mock.patch.object(hard_mod, "INFERENCE_CHUNK_BYTES", 12 * 12 * 9 * 8 * 4 * 2):
        scoring = lambda v, w: hard.apply(v, X, w, inference=True)
        count = lambda f, what: str(jax.make_jaxpr(f)(variables, w)).count(what)
        assert count(scoring, "scan[") > count(whole, "scan[")  # chunked
        assert count(scoring, "cond[") > count(whole, "cond[")  # a switch over input widths
        np.testing.assert_allclose(jax.jit(scoring)(variables, w), jax.jit(whole)(variables, w),
                                   rtol=1e-5, atol=1e-5)


def test_pool_before_norm_supernet_records_stats_per_resolution():
    """A pool_before_norm supernet normalises an op's output at two resolutions (its stay
    branch and its pooled down branch); recorded batch statistics (what query_norm uses)
    must keep both, so replaying them reproduces the batch's own forward pass."""
    from flax import traverse_util

    from metanas_jax.nn.ops import NORM_STATS
    space, kw = CASES["macro32_pool_first"]
    sup = mnn.supernet(space, 5, **kw)
    w = space.relax(space.sample(jax.random.key(0), 1)[0], 1.0)
    variables = mnn.init(sup, jax.random.key(2), X, w)
    y, rec = sup.apply(variables, X, w, train=True, mutable=[NORM_STATS])
    names = {path[-1] for path in traverse_util.flatten_dict(rec[NORM_STATS])}
    assert {"mean", "var", "mean_pooled", "var_pooled"} <= names
    replayed = sup.apply({**variables, NORM_STATS: rec[NORM_STATS]}, X, w, train=True)
    np.testing.assert_allclose(replayed, y, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="lax.conv is the choice on GPU/TPU")
def test_no_lax_conv_in_any_network_gradient_on_cpu(case):
    """On CPU every convolution goes through fastconv: ``lax.conv``'s gradient runs 4-100x
    slower inside the loops that train candidates, tasks and the evaluator
    (benchmarks/bench_conv_in_loop.py)."""
    from metanas_jax.search.evaluator import ImageSetEncoder

    space, kw, sup, variables, _ = case
    w = space.relax(space.sample(jax.random.key(0), 1)[0], 1.0)
    net = mnn.build(space, space.decode(space.sample(jax.random.key(3), 1)[0]), 5, track=False, **kw)
    compact = mnn.init(net, jax.random.key(4), X)
    enc = ImageSetEncoder(8)
    y = jnp.arange(6) % 3
    enc_vars = enc.init(jax.random.key(5), X, y)
    losses = {"supernet": (lambda v: jnp.sum(sup.apply(v, X, w, train=True)), variables),
              "compact": (lambda v: jnp.sum(net.apply(v, X, train=True)), compact),
              "evaluator encoder": (lambda v: jnp.sum(enc.apply(v, X, y)), enc_vars)}
    for name, (loss, v) in losses.items():
        assert "conv_general_dilated" not in str(jax.make_jaxpr(jax.grad(loss))(v)), name
