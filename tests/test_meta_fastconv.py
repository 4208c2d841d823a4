"""fastconv: every implementation computes lax.conv, with the same first and second derivatives."""
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from metanas_jax.nn.conv4 import Conv4, max_pool_2x2
from metanas_jax.nn import fastconv
from metanas_jax.nn.fastconv import Conv, conv2d, patches, resolve_impl
from metanas_jax.nn.ops import Norm, max_pool


def _assert_matmul_equals_xla(conv, x, w, key, hvp_atol=1e-3):
    """``conv(x, w, impl)`` with impl "matmul" against "xla": value, both gradients and a
    Hessian-vector product wrt the kernel (second order, what MAML differentiates)."""
    def f(impl):
        return lambda w, x: jnp.sum(jnp.tanh(conv(x, w, impl)) ** 2)

    np.testing.assert_allclose(conv(x, w, "matmul"), conv(x, w, "xla"), rtol=1e-4, atol=1e-4)
    ga = jax.jit(jax.grad(f("matmul"), argnums=(0, 1)))(w, x)
    gb = jax.jit(jax.grad(f("xla"), argnums=(0, 1)))(w, x)
    for a, b in zip(ga, gb):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-3)
    v = jax.random.normal(key, w.shape)
    hv = lambda impl: jax.jit(jax.grad(lambda w: jnp.vdot(jax.grad(f(impl))(w, x), v)))(w)
    np.testing.assert_allclose(hv("matmul"), hv("xla"), rtol=1e-3, atol=hvp_atol)


@pytest.mark.parametrize("stride,padding,size,kernel", [
    (1, "SAME", 5, 3), (2, "SAME", 6, 3), (2, "VALID", 5, 3), (1, "SAME", 6, 2)])
def test_matmul_equals_xla_value_and_grads(stride, padding, size, kernel):
    """Including the even (2x2) kernel of a whitening stem, whose SAME padding is one-sided."""
    kx, kw, kv = jax.random.split(jax.random.PRNGKey(0), 3)
    x = jax.random.normal(kx, (2, size, size, 3))
    w = jax.random.normal(kw, (kernel, kernel, 3, 4))
    _assert_matmul_equals_xla(lambda x, w, impl: conv2d(x, w, stride, padding, impl), x, w, kv)


@pytest.mark.parametrize("size,kernel,padding,dilation", [
    (12, 3, "SAME", 1), (6, 3, "VALID", 1), (24, 3, "SAME", 2), (25, 5, "SAME", 1), (14, 2, "SAME", 1)])
def test_rows_out_equals_xla_to_second_order(size, kernel, padding, dilation):
    """The stride-1 form with the kernel rows on the output side (``_rows_out``), where
    ``conv2d`` picks it: per-task weights under vmap, odd and even kernels, dilation."""
    c, o = 6, 5
    assert fastconv._rows_out_pays(size, kernel, kernel, c, o, padding, dilation)
    # where im2col stays: dot-bound (2 dropped rows per 7 or 8 kept) or one input channel
    assert not fastconv._rows_out_pays(7, 3, 3, 64, 64, "SAME", 1)
    assert not fastconv._rows_out_pays(8, 3, 3, 256, 256, "SAME", 1)
    assert not fastconv._rows_out_pays(28, 3, 3, 1, 64, "SAME", 1)
    kx, kw, kv = jax.random.split(jax.random.PRNGKey(size + kernel), 3)
    x = jax.random.normal(kx, (2, 2, size, size - 1, c))
    w = jax.random.normal(kw, (2, kernel, kernel, c, o)) / kernel
    conv = lambda x, w, impl: jax.vmap(lambda x, w: conv2d(x, w, 1, padding, impl, dilation))(x, w)
    _assert_matmul_equals_xla(conv, x, w, kv, hvp_atol=2e-3)


@pytest.mark.parametrize("stride,padding,dilation", [(1, "SAME", 1), (2, "SAME", 1), (1, "VALID", 2)])
def test_matmul_bf16_close_to_xla_to_second_order(stride, padding, dilation):
    """bf16 operands, float32 accumulation: within bf16 rounding (~0.4% relative) of the
    float32 convolution, for the value, both gradients (its own backward pass) and a
    Hessian-vector product; activations stay float32 in and out."""
    kx, kw, kv = jax.random.split(jax.random.PRNGKey(3), 3)
    x = jax.random.normal(kx, (2, 7, 7, 16))
    w = 0.2 * jax.random.normal(kw, (3, 3, 16, 8))

    def f(impl):
        return lambda w, x: jnp.sum(jnp.tanh(conv2d(x, w, stride, padding, impl, dilation)) ** 2)

    def rel(a, b):
        return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))
    y = conv2d(x, w, stride, padding, "matmul_bf16", dilation)
    assert y.dtype == jnp.float32
    assert rel(y, conv2d(x, w, stride, padding, "xla", dilation)) < 1e-2
    ga = jax.jit(jax.grad(f("matmul_bf16"), argnums=(0, 1)))(w, x)
    gb = jax.jit(jax.grad(f("xla"), argnums=(0, 1)))(w, x)
    assert ga[1].dtype == jnp.float32 and all(rel(a, b) < 2e-2 for a, b in zip(ga, gb))
    v = jax.random.normal(kv, w.shape)
    hv = lambda impl: jax.jit(jax.grad(lambda w: jnp.vdot(jax.grad(f(impl))(w, x), v)))(w)
    assert rel(hv("matmul_bf16"), hv("xla")) < 3e-2
    # per-task weights under vmap (a meta-learner's batch of tasks)
    ws = jnp.stack([w, -w])
    gv = jax.vmap(jax.grad(f("matmul_bf16")), in_axes=(0, None))(ws, x)
    gr = jax.vmap(jax.grad(f("xla")), in_axes=(0, None))(ws, x)
    assert rel(gv, gr) < 2e-2


def test_matmul_bf16_gradient_dots_are_canonical_bf16():
    """The point of the implementation: every dot of the training step (forward, input
    gradient, weight gradient) multiplies bf16 operands in the (M, K) @ (K, N) form, the
    only one XLA:CPU runs on its fast bf16 path (otherwise it converts to float32)."""
    x = jnp.ones((4, 8, 8, 16))
    w = jnp.ones((3, 3, 16, 32))
    loss = lambda w, x: jnp.sum(conv2d(x, w, 1, "SAME", "matmul_bf16") ** 2)
    hlo = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(w, x).as_text(dialect="hlo")
    types = dict(re.findall(r"^\s*(?:ROOT )?%?([\w.-]+) = (\w+)\[", hlo, re.M))
    dots = re.findall(r"= (\w+)\[[^=]*? dot\(%?([\w.-]+), %?([\w.-]+)\), (lhs_contracting_dims=\{\d+\}, "
                      r"rhs_contracting_dims=\{\d+\})", hlo)
    assert len(dots) == 3, hlo
    for out, lhs, rhs, dims in dots:
        assert (out, types[lhs], types[rhs]) == ("f32", "bf16", "bf16")
        assert dims == "lhs_contracting_dims={1}, rhs_contracting_dims={0}"


@pytest.mark.parametrize("dilation,depthwise,stride", [(2, False, 1), (1, True, 2), (2, True, 1)])
def test_dilated_and_depthwise_match_xla(dilation, depthwise, stride):
    """What the supernets' dil_conv / sep_conv ops need, values and both gradients."""
    kx, kw = jax.random.split(jax.random.PRNGKey(4))
    c = 3
    x = jax.random.normal(kx, (2, 7, 7, c))
    w = jax.random.normal(kw, (3, 3, 1 if depthwise else c, c if depthwise else 5))
    groups = c if depthwise else 1

    def f(impl):
        return lambda w, x: jnp.sum(jnp.tanh(conv2d(x, w, stride, "SAME", impl, dilation, groups)) ** 2)

    np.testing.assert_allclose(conv2d(x, w, stride, "SAME", "matmul", dilation, groups),
                               conv2d(x, w, stride, "SAME", "xla", dilation, groups), rtol=1e-4, atol=1e-4)
    ga = jax.jit(jax.grad(f("matmul"), argnums=(0, 1)))(w, x)
    gb = jax.jit(jax.grad(f("xla"), argnums=(0, 1)))(w, x)
    for a, b in zip(ga, gb):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    if depthwise:  # its gradient is hand-written (custom VJP): check the second order too
        v = jax.random.normal(jax.random.PRNGKey(5), w.shape)
        hv = lambda impl: jax.jit(jax.grad(lambda w: jnp.vdot(jax.grad(f(impl))(w, x), v)))(w)
        np.testing.assert_allclose(hv("matmul"), hv("xla"), rtol=1e-3, atol=1e-3)
        with pytest.raises(ValueError, match="depthwise"):
            conv2d(jnp.zeros((1, 5, 5, 4)), jnp.zeros((3, 3, 2, 4)), impl="matmul", groups=2)


@pytest.mark.parametrize("size,kernel,stride,dilation,padding", [
    (8, 5, 1, 1, "SAME"), (8, 5, 2, 1, "SAME"), (7, 3, 2, 2, "SAME"), (9, 3, 2, 2, "VALID"),
    (8, 5, 1, 1, "VALID"), (4, 5, 2, 2, "SAME")])
def test_depthwise_gradients_match_autodiff_of_xla(size, kernel, stride, dilation, padding):
    """The depthwise shift-add's hand-written input and weight gradients, every geometry the
    DARTS ops use (5x5, stride 2, dilation 2) and odd ones, per-task weights under vmap."""
    kx, kw, kg = jax.random.split(jax.random.PRNGKey(size + kernel + stride + dilation), 3)
    x = jax.random.normal(kx, (2, 2, size, size, 3))  # (tasks, N, H, W, C)
    w = jax.random.normal(kw, (2, kernel, kernel, 1, 3))

    def f(impl):
        return jax.vmap(lambda x, w: conv2d(x, w, stride, padding, impl, dilation, groups=3))

    ya, yb = f("matmul")(x, w), f("xla")(x, w)
    np.testing.assert_allclose(ya, yb, rtol=1e-4, atol=1e-4)
    g = jax.random.normal(kg, ya.shape)
    ga = jax.jit(jax.grad(lambda x, w: jnp.vdot(f("matmul")(x, w), g), argnums=(0, 1)))(x, w)
    gb = jax.jit(jax.grad(lambda x, w: jnp.vdot(f("xla")(x, w), g), argnums=(0, 1)))(x, w)
    for a, b in zip(ga, gb):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("impl,stride,size,kernel", [
    ("matmul", 1, 12, 3), ("matmul", 2, 7, 3), ("matmul", 1, 8, 1), ("matmul_bf16", 1, 6, 3)])
def test_batch_chunked_conv_equals_the_whole_batch(impl, stride, size, kernel):
    """``chunk_bytes`` runs the batch in chunks (a scan, the batch padded to a multiple of
    the chunk) and computes the same convolution and gradients: im2col, the rows-out form
    (12x12, 3x3), a 1x1 and the bf16 matmuls."""
    kx, kw = jax.random.split(jax.random.PRNGKey(size), 2)
    x = jax.random.normal(kx, (5, size, size, 4))  # chunks of 2: one padding image
    w = jax.random.normal(kw, (kernel, kernel, 4, 6))
    per_image = (-(-size // stride)) ** 2 * kernel * kernel * 4 * 4
    f = lambda x, w, cb: jnp.sum(jnp.tanh(conv2d(x, w, stride, "SAME", impl, chunk_bytes=cb)) ** 2)
    assert "scan" in str(jax.make_jaxpr(f, static_argnums=2)(x, w, 2 * per_image))
    assert "scan" not in str(jax.make_jaxpr(f, static_argnums=2)(x, w, 5 * per_image))
    ya, ga = jax.value_and_grad(f, (0, 1))(x, w, 2 * per_image)
    yb, gb = jax.value_and_grad(f, (0, 1))(x, w, None)
    np.testing.assert_allclose(ya, yb, rtol=1e-5)
    for a, b in zip(ga, gb):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_vmap_over_per_task_weights_matches_loop():
    x = jax.random.normal(jax.random.PRNGKey(1), (3, 2, 5, 5, 2))
    w = jax.random.normal(jax.random.PRNGKey(2), (3, 3, 3, 2, 4))
    got = jax.jit(jax.vmap(lambda w, x: conv2d(x, w, 1, "SAME", "matmul")))(w, x)
    want = jnp.stack([conv2d(x[i], w[i], 1, "SAME", "xla") for i in range(3)])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_patches_layout_matches_hwio():
    x = jnp.arange(2 * 4 * 4 * 3, dtype=jnp.float32).reshape(2, 4, 4, 3)
    p = patches(x, (3, 3), 1, "SAME")
    assert p.shape == (2, 4, 4, 27)
    # centre tap (1, 1) of the kernel reads the pixel itself
    np.testing.assert_array_equal(p[..., 4 * 3:5 * 3], x)


def test_bad_inputs_raise():
    x, w = jnp.zeros((1, 5, 5, 2)), jnp.zeros((3, 3, 2, 4))
    with pytest.raises(ValueError, match="impl"):
        conv2d(x, w, impl="winograd")
    with pytest.raises(ValueError, match="padding"):
        conv2d(x, w, padding="FULL", impl="matmul")
    with pytest.raises(ValueError, match="channels"):
        conv2d(jnp.zeros((1, 5, 5, 3)), w)
    with pytest.raises(ValueError, match="stride"):
        conv2d(x, w, stride=0)
    assert resolve_impl("auto") in ("matmul", "xla")


def test_conv4_shapes_impls_agree_and_validation():
    x = jax.random.normal(jax.random.PRNGKey(3), (4, 12, 12, 1))
    for downsample, feat in (("pool", 8), ("stride", 8)):
        a = Conv4(5, channels=8, downsample=downsample, conv_impl="matmul")
        b = Conv4(5, channels=8, downsample=downsample, conv_impl="xla")
        v = jax.jit(a.init)(jax.random.PRNGKey(0), x)
        assert v["params"]["head"]["kernel"].shape == (feat, 5)
        np.testing.assert_allclose(jax.jit(a.apply)(v, x), jax.jit(b.apply)(v, x), rtol=1e-3,
                                   atol=1e-3)
    with pytest.raises(ValueError, match="downsample"):
        Conv4(5, downsample="avg").init(jax.random.PRNGKey(0), x)
    with pytest.raises(ValueError, match="num_classes"):
        Conv4(0).init(jax.random.PRNGKey(0), x)


def _assert_same_to_second_order(fn, reference, x, seed):
    """Gradient and a Hessian-vector product of a smooth loss of ``fn(x)`` equal those of
    ``reference(x)``."""
    v = jax.random.normal(jax.random.PRNGKey(seed), reference(x).shape)

    def loss(f):
        return lambda x: jnp.sum(jnp.sin(f(x) * v))

    np.testing.assert_allclose(jax.grad(loss(fn))(x), jax.grad(loss(reference))(x), atol=1e-6)
    hvp = lambda f: jax.jvp(jax.grad(loss(f)), (x,), (jnp.cos(x),))[1]  # noqa: E731
    np.testing.assert_allclose(hvp(fn), hvp(reference), atol=1e-5)


def test_max_pool_2x2_matches_reduce_window():
    x = jax.random.normal(jax.random.PRNGKey(4), (2, 7, 6, 3))
    want = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
    np.testing.assert_array_equal(max_pool_2x2(x), want)


def test_max_pool_2x2_gradients_match_jnp_max_with_ties():
    """The custom rule is jnp.max's: tied maxima share the tangent equally, to any order."""
    def plain(x):
        n, h, w, c = x.shape
        return jnp.max(x[:, :h // 2 * 2, :w // 2 * 2].reshape(n, h // 2, 2, w // 2, 2, c), (2, 4))

    x = jax.random.normal(jax.random.PRNGKey(5), (2, 7, 6, 3))
    x = x.at[:, :4, :4, 0].set(0.5).at[0, 2:4, 2:4, 1].set(-1.0)  # 2-, 3- and 4-way ties
    _assert_same_to_second_order(max_pool_2x2, plain, x, seed=6)
    assert max_pool_2x2(jnp.ones((1, 1, 5, 2))).shape == (1, 1, 5, 2)  # too small: identity


def test_conv4_pooled_norm_equals_norm_relu_pool_to_second_order():
    """Conv4's pool-first block (kernel flipped by sign(scale), |scale|) is the plain
    conv -> batch norm -> ReLU -> max-pool in value, gradient and MAML's second-order
    meta-gradient, with negative scales and tied activations (a constant image region)."""
    class Plain(nn.Module):
        @nn.compact
        def __call__(self, x):
            for b in range(2):
                x = Conv(6, 3, use_bias=False, impl="matmul", name=f"conv{b}")(x)
                x = max_pool_2x2(nn.relu(Norm(name=f"norm{b}")(x)))
            return nn.Dense(3, name="head")(x.reshape(x.shape[0], -1))

    with jax.enable_x64(True):
        kx, kp, ks = jax.random.split(jax.random.PRNGKey(7), 3)
        x = jax.random.normal(kx, (6, 10, 10, 1), jnp.float64).at[:, :5, :5].set(0.3)
        y = jnp.arange(6) % 3
        net = Conv4(3, channels=6, blocks=2, conv_impl="matmul")
        params = jax.tree.map(lambda a: a.astype(jnp.float64), net.init(kp, x)["params"])
        assert jax.tree.structure(params) == jax.tree.structure(Plain().init(kp, x)["params"])
        signs = jnp.where(jax.random.bernoulli(ks, 0.5, (6,)), -1.0, 1.0)
        params["norm0"]["scale"] = params["norm0"]["scale"] * signs * 0.7
        params["norm1"]["scale"] = params["norm1"]["scale"] * -1.3

        def loss(apply):
            return lambda p: jnp.mean(optax.softmax_cross_entropy_with_integer_labels(
                apply({"params": p}, x), y))

        def maml(apply):  # one inner SGD step, then the loss: second-order through it
            return lambda p: loss(apply)(jax.tree.map(lambda a, g: a - 0.3 * g, p,
                                                      jax.grad(loss(apply))(p)))

        # (jitted: op by op this test took 3x longer; jitted, batch statistics computed in
        # float32 differed by 7e-7 between the two networks: they are float64 now)
        for f in (lambda a: (lambda p: a({"params": p}, x)), loss, maml):
            np.testing.assert_allclose(jax.jit(f(net.apply))(params), jax.jit(f(Plain().apply))(params),
                                       atol=1e-10)
        for f in (loss, maml):
            for got, want in zip(jax.tree.leaves(jax.jit(jax.grad(f(net.apply)))(params)),
                                 jax.tree.leaves(jax.jit(jax.grad(f(Plain().apply)))(params))):
                np.testing.assert_allclose(got, want, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("shape,stride", [((2, 7, 6, 3), 1), ((2, 7, 6, 3), 2), ((1, 8, 9, 2), 2),
                                          ((1, 1, 1, 2), 1)])
def test_max_pool_3x3_matches_flax_with_ties_to_second_order(shape, stride):
    """Values, gradients (ties included: reduce_window's gradient sends a tie to the first
    maximum in row-major order) and a second derivative equal ``nn.max_pool``'s."""
    x = jax.random.normal(jax.random.PRNGKey(7), shape)
    x = jnp.round(x * 2) / 2  # many ties
    plain = lambda x: nn.max_pool(x, (3, 3), strides=(stride, stride), padding="SAME")  # noqa: E731
    pool = lambda x: max_pool(x, stride)  # noqa: E731
    np.testing.assert_array_equal(pool(x), plain(x))
    _assert_same_to_second_order(pool, plain, x, seed=8)
