"""Final training: resume equality through a checkpoint, export / load_model round trip."""
import jax
import numpy as np
import pytest

from metanas_jax import data, spaces
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


def test_resume_equals_uninterrupted(setup, tmp_path):
    space, arch, target, cfg = setup
    key = jax.random.key(3)
    s_full, _, h_full, r_full = T.train(space, arch, target, cfg, key)
    ck = StageCheckpoints(tmp_path / "ck")

    def on_epoch(epoch, state, history):
        if epoch == 1:
            ck.save(epoch, {"leaves": list(jax.tree.leaves(state))}, {"history": history})

    T.train(space, arch, target, cfg, key, on_epoch=on_epoch)  # pretend it died after epoch 1
    step, st, rec = ck.latest()
    template = jax.eval_shape(lambda: s_full)
    state = jax.tree.unflatten(jax.tree.structure(template), [np.asarray(x) for x in st["leaves"]])
    s_res, _, h_res, r_res = T.train(space, arch, target, cfg, key, start=(step, state, rec["history"]))
    for a, b in zip(jax.tree.leaves(s_full.params), jax.tree.leaves(s_res.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
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


def test_load_model_bad_dir(tmp_path):
    with pytest.raises(ValueError, match="model.json"):
        load_model(tmp_path)


def test_bad_train_config():
    with pytest.raises(ValueError, match="bf16"):
        T.FinalTrainConfig(bf16="maybe")
