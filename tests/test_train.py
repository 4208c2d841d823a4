"""Final training: both recipes resume exactly through a checkpoint, recipe options are
validated, test-time augmentation, bf16 close to f32, patch whitening, alternating flips,
export / load_model round trip, a tiny training reaching a stated accuracy."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

from metanas_jax import data, spaces
from metanas_jax import nn as mnn
from metanas_jax import train as T
from metanas_jax.checkpoint import StageCheckpoints
from metanas_jax.export import load_model, save_model


@pytest.fixture(scope="module")
def setup():
    space = spaces.get("macro32", layers=2, ops=("conv3x3", "identity"), widths=(8,), stem_width=8)
    arch = space.from_string("conv3x3-8/2 | identity-8+res")
    tr = data.load("digits", split="train")
    te = data.load("digits", split="test")
    full = data.target_task(tr, te, val_fraction=0.2, seed=0)
    target = data.TargetTask(data.subsample(full.train, 256), data.subsample(full.val, 64),
                             data.subsample(te, 100))
    cfg = T.FinalTrainConfig(epochs=2, batch_size=64, lr=0.05, crop_pad=1, flip=False,
                             eval_batch_size=128)
    return space, arch, target, cfg


FAST = dict(T.RECIPES["fast"], flip=False, tta="none", batch_size=64, lr=0.05, crop_pad=1,
            eval_batch_size=128)


@pytest.mark.parametrize("recipe", ["standard", "fast"])
def test_resume_equals_uninterrupted(setup, tmp_path, recipe):
    space, arch, target, cfg = setup
    if recipe == "fast":  # EMA, whitened frozen stem (a 2x2 one), triangle schedule
        space = dataclasses.replace(space, stem_kernel=2)
        arch = space.make_arch(arch.choices)
        cfg = dataclasses.replace(cfg, **FAST)
    key = jax.random.key(3)
    s_full, _, h_full, r_full = T.train(space, arch, target, cfg, key)
    ck = StageCheckpoints(tmp_path / "ck")

    def on_epoch(epoch, state, history):
        if epoch == 1:
            ck.save(epoch, state, {"history": history})

    T.train(space, arch, target, cfg, key, on_epoch=on_epoch)  # pretend it died after epoch 1
    # the template the main job restores into: shapes only, traced (no computation)
    net, tx, _ = T.setup(space, arch, target.train, cfg)
    template = T.state_shapes(net, target.train.image_shape, tx, cfg)
    step, state, rec = ck.latest(template)
    assert jax.tree.structure(state) == jax.tree.structure(s_full)
    s_res, _, h_res, r_res = T.train(space, arch, target, cfg, key, start=(step, state, rec["history"]))
    for a, b in zip(jax.tree.leaves(s_full), jax.tree.leaves(s_res)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    if recipe == "fast":
        first = T.create_state(net, jax.random.key(0), target.train.image_shape, tx, cfg)
        stem = ("stem", "conv", "kernel")
        k0 = T.with_whitened_stem(first, target.train.images, data.normalize).params
        np.testing.assert_array_equal(np.asarray(k0[stem[0]][stem[1]][stem[2]]),
                                      np.asarray(s_full.params["stem"]["conv"]["kernel"]))  # frozen
        assert s_full.ema is not None
    assert r_full == r_res
    assert [h["val_acc"] for h in h_full] == [h["val_acc"] for h in h_res]
    assert 0.0 <= r_full["test_acc"] <= 1.0


def test_export_round_trip(setup, tmp_path):
    space, arch, target, cfg = setup
    state, net, _, _ = T.train(space, arch, target, cfg, jax.random.key(0))
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    save_model(tmp_path / "export", arch, variables, num_classes=10, image_shape=(8, 8, 1))
    model, loaded = load_model(tmp_path / "export")
    x = target.test.images[:16]
    want = net.apply(variables, data.normalize(x), train=False)
    got = model.apply(loaded, model.preprocess(x))
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)
    assert model.arch_string == str(arch)
    with pytest.raises(ValueError, match="preprocess"):
        model.apply(loaded, x)
    labels = model.predict(loaded, x, batch_size=5)  # uint8 pixels, batched, preprocessed
    np.testing.assert_array_equal(labels, np.argmax(np.asarray(want), -1))
    assert model.predict(loaded, x[0]).shape == (1,)
    with pytest.raises(ValueError, match="uint8"):
        model.predict(loaded, model.preprocess(x))
    with pytest.raises(ValueError, match=r"\(N, 8, 8, 1\)"):
        model.predict(loaded, x[:, :4])
    with pytest.raises(ValueError, match="shape"):
        model.apply(loaded, model.preprocess(x)[:, :4])
    import json
    meta = json.loads((tmp_path / "export" / "model.json").read_text())
    meta["image_shape"] = [8, 8, 3]  # an edited model.json: no longer the weights' input
    (tmp_path / "export" / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="do not fit"):
        load_model(tmp_path / "export")


def test_load_model_bad_dir(tmp_path):
    with pytest.raises(ValueError, match="model.json"):
        load_model(tmp_path)


@pytest.mark.parametrize("bad, match", [
    (dict(bf16="maybe"), "train.bf16"), (dict(schedule="linear"), "train.schedule"),
    (dict(tta="rotate"), "train.tta"), (dict(conv_impl="fft"), "train.conv_impl"),
    (dict(ema=1.0), "train.ema"), (dict(lr=float("nan")), "train.lr"),
    (dict(weight_decay=float("inf")), "train.weight_decay"), (dict(momentum=-0.1), "train.momentum"),
    (dict(tta="flip", flip=False), "train.flip"), (dict(epochs=0), "train.epochs"),
    (dict(norm_bias_lr_scale=0.0), "train.norm_bias_lr_scale"),
    (dict(head_lr_scale=float("nan")), "train.head_lr_scale"),
    (dict(kernel_init_scale=-1.0), "train.kernel_init_scale"), (dict(crop_mode="wrap"), "train.crop_mode")])
def test_bad_train_config(bad, match):
    with pytest.raises(ValueError, match=match):
        T.FinalTrainConfig(**bad)


def test_recipes_and_config_keys():
    import ml_collections
    with pytest.raises(ValueError, match="unknown training recipe 'nope'"):
        T.FinalTrainConfig.recipe("nope")
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['lr_typo'\]"):
        T.FinalTrainConfig.from_config(ml_collections.ConfigDict({"epochs": 2, "lr_typo": 1.0}))
    assert T.FinalTrainConfig.recipe("fast", epochs=3).epochs == 3


def test_parameter_groups_scale_steps_not_decay(setup):
    """airbench's groups: frozen norm scales and whitened stem stay; a group's gradient step
    is lr x its scale, while every group shrinks by the same factor per step."""
    space, arch, target, _ = setup
    space = dataclasses.replace(space, stem_kernel=2)
    arch = space.make_arch(arch.choices)
    cfg = T.FinalTrainConfig(epochs=1, schedule="cosine", warmup_epochs=0, lr=0.1, momentum=0.0,
                             weight_decay=0.01, whiten_stem=True, freeze_norm_scale=True,
                             norm_bias_lr_scale=4.0, head_lr_scale=0.5)
    net, tx, _ = T.setup(space, arch, target.train, cfg)
    params = T.create_state(net, jax.random.key(0), target.train.image_shape, tx, cfg).params
    params = jax.tree.map(lambda a: a + 1.0, params)  # no zeros: decay shows everywhere
    groups = {k: T.param_group(k, cfg) for k in T.traverse_util.flatten_dict(params)}
    assert groups[("stem", "conv", "kernel")] == "frozen"
    assert groups[("stem", "norm", "scale")] == "frozen"
    assert groups[("stem", "norm", "bias")] == "norm_bias"
    assert groups[("head", "kernel")] == groups[("head", "bias")] == "head"
    assert "train" in groups.values()

    def step(grad_value):
        grads = jax.tree.map(lambda a: jnp.full_like(a, grad_value), params)
        upd, _ = tx.update(grads, tx.init(params), params)
        return T.traverse_util.flatten_dict(upd)
    decay, push = step(0.0), step(1.0)
    flat = T.traverse_util.flatten_dict(params)
    for k, g in groups.items():
        shrink = np.asarray(decay[k]) / np.asarray(flat[k])
        grad_step = np.asarray(push[k]) - np.asarray(decay[k])
        if g == "frozen":
            assert not np.any(decay[k]) and not np.any(push[k]), k
            continue
        np.testing.assert_allclose(shrink, -0.1 * 0.01, rtol=1e-5)  # lr x weight_decay, any group
        scale = {"train": 1.0, "norm_bias": 4.0, "head": 0.5}[g]
        np.testing.assert_allclose(grad_step, -0.1 * scale, rtol=1e-5)
    plain = T.make_optimizer(T.FinalTrainConfig(), 10)  # no groups: one plain SGD state
    assert not isinstance(plain.init(params), optax.MultiTransformState)


def test_tta_views_and_eval_step(setup):
    space, arch, target, _ = setup
    x = jnp.arange(2 * 4 * 4 * 1, dtype=jnp.float32).reshape(2, 4, 4, 1)
    views = T.tta_views(x, "flip_shift")
    assert len(views) == 4 and all(v.shape == x.shape for v in views)
    np.testing.assert_array_equal(views[1], x[:, :, ::-1])
    np.testing.assert_array_equal(views[2][:, 1:, 1:], x[:, :-1, :-1])  # moved by one pixel
    assert len(T.tta_views(x, "none")) == 1
    with pytest.raises(ValueError, match="batch"):
        T.tta_views(x[0], "flip")
    net = T.FinalTrainConfig().build(space, arch, 10)
    variables = jax.jit(lambda k: net.init(k, target.test.images[:1].astype(np.float32)))(jax.random.key(0))
    for tta in T.TTA:
        logits = T.make_eval_step(net, data.normalize, tta)(variables, target.test.images[:5])
        assert logits.shape == (5, 10) and np.all(np.isfinite(logits))


def test_bf16_close_to_f32_and_conv_impls_agree(setup):
    space, arch, target, _ = setup
    x = data.normalize(target.test.images[:32])
    nets = {name: T.FinalTrainConfig(bf16=b, conv_impl=impl).build(space, arch, 10)
            for name, b, impl in (("f32", "off", "xla"), ("bf16", "on", "xla"),
                                  ("matmul", "off", "matmul"), ("matmul_bf16", "off", "matmul_bf16"))}
    variables = jax.jit(lambda k: nets["f32"].init(k, x))(jax.random.key(1))
    out = {k: np.asarray(n.apply(variables, x, train=False), np.float32) for k, n in nets.items()}
    scale = np.abs(out["f32"]).max()
    assert np.abs(out["bf16"] - out["f32"]).max() < 0.05 * scale
    assert np.abs(out["matmul_bf16"] - out["f32"]).max() < 0.05 * scale
    np.testing.assert_allclose(out["matmul"], out["f32"], rtol=1e-4, atol=1e-4 * scale)


def test_whitening_kernel_whitens_patches():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(400, 9, 9, 1))
    imgs = np.clip(128 + 40 * (base + np.roll(base, 1, axis=1) + 0.5 * rng.normal(size=(400, 9, 9, 3))),
                   0, 255).astype(np.uint8)  # channels and neighbours correlated
    k = T.whitening_kernel(imgs, data.normalize, 2, 8, eps=1e-8)
    assert k.shape == (2, 2, 3, 8)
    np.testing.assert_allclose(k[..., :4], -k[..., 4:])
    from metanas_jax.nn.fastconv import patches
    p = np.asarray(patches(data.normalize(imgs), (2, 2), 1, "VALID"), np.float64).reshape(-1, 12)
    y = (p - p.mean(0)) @ k[..., :4].reshape(12, 4)
    np.testing.assert_allclose(np.cov(y.T, bias=True), np.eye(4), atol=0.05)
    with pytest.raises(ValueError, match="space.stem_width"):
        T.whitening_kernel(imgs, data.normalize, 2, 26)


def test_dirac_kernels_start_as_identities():
    """dirac_init: a convolution's first min(in, out) output channels copy its input
    channels (airbench's implicit residual); the stem and the rest are untouched."""
    space = spaces.get("macro32", layers=2, ops=("conv3x3",), widths=(4, 6), stem_width=4,
                       stem_kernel=2, stem_norm=False)
    net = mnn.build(space, space.from_string("conv3x3-6 | conv3x3-4"), 3)
    params = mnn.init(net, jax.random.key(0), jnp.zeros((1, 8, 8, 3)))["params"]
    new = T.dirac_kernels(params)
    np.testing.assert_array_equal(new["stem"]["conv"]["kernel"], params["stem"]["conv"]["kernel"])
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 4))
    for name, n in (("layer0_conv3x3", 4), ("layer1_conv3x3", 4)):  # 4 -> 6, then 6 -> 4
        w = new[name]["conv"]["kernel"]
        y = jax.lax.conv_general_dilated(x if w.shape[2] == 4 else jnp.pad(x, ((0, 0),) * 3 + ((0, 2),)),
                                         w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        np.testing.assert_allclose(y[..., :n], x[..., :n], atol=1e-6)
        np.testing.assert_array_equal(w[..., n:], params[name]["conv"]["kernel"][..., n:])


def test_scaled_kernels_scale_kernels_only():
    space = spaces.get("macro32", layers=2, ops=("conv3x3",), widths=(4, 6), stem_width=4)
    net = mnn.build(space, space.from_string("conv3x3-6 | conv3x3-4"), 3)
    params = mnn.init(net, jax.random.key(0), jnp.zeros((1, 8, 8, 3)))["params"]
    new = T.scaled_kernels(params, 0.5)
    for path, w in traverse_util.flatten_dict(params).items():
        got = traverse_util.flatten_dict(new)[path]
        np.testing.assert_array_equal(got, 0.5 * w if path[-1] == "kernel" else w)


def test_flip_mask_alternates():
    key = jax.random.key(0)
    m0, m1, m2 = (T.flip_mask(key, e, 1000, True) for e in range(3))
    assert np.all(m0 ^ m1) and np.array_equal(m0, m2) and 400 < m0.sum() < 600
    r0, r1 = T.flip_mask(key, 0, 1000, False), T.flip_mask(key, 1, 1000, False)
    assert not np.array_equal(r0, r1) and not np.all(r0 ^ r1)


def test_reference_architectures():
    space = spaces.get("macro32", **spaces.CIFAR_SPACE)
    for name in spaces.REFERENCE_ARCHS:
        arch = space.reference(name)
        assert space.from_string(space.to_string(arch)) == arch
    with pytest.raises(ValueError, match="unknown reference architecture 'vgg'"):
        space.reference("vgg")
    with pytest.raises(ValueError, match="does not fit this space"):
        spaces.get("macro32", layers=3).reference("resnet8")


def test_tiny_training_reaches_stated_accuracy():
    """The standard and the fast recipe learn digits: >= 0.9 test accuracy in 8 epochs."""
    space = spaces.get("macro32", layers=3, ops=("conv3x3", "identity"), widths=(16, 32),
                       stem_width=8, stem_kernel=2)
    arch = space.from_string("conv3x3-16 | conv3x3-32/2 | conv3x3-32+res")
    full = data.target_task(data.load("digits", split="train"), data.load("digits", split="test"),
                            val_fraction=0.1, seed=0)
    for recipe in ("standard", "fast"):
        cfg = T.FinalTrainConfig.recipe(recipe, epochs=8, batch_size=64, lr=0.1, crop_pad=1,
                                        flip=False, tta="none", eval_batch_size=500)
        _, _, _, res = T.train(space, arch, full, cfg, jax.random.key(0))
        assert res["test_acc"] >= 0.9, (recipe, res)
