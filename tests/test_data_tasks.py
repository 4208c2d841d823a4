"""Tests for metanas_jax.data task distributions and augmentation."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metanas_jax import data

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def coded_dataset(num_classes=6, per_class=10, size=4, counts=None) -> data.Dataset:
    """Images whose pixels encode (class, index): pixel[0,0] = class, pixel[0,1] = index."""
    counts = counts or [per_class] * num_classes
    imgs, labels = [], []
    for c, n in enumerate(counts):
        for i in range(n):
            im = np.zeros((size, size, 1), np.uint8)
            im[0, 0, 0], im[0, 1, 0], im[1, 1, 0] = c, i, 200
            imgs.append(im)
            labels.append(c)
    return data.Dataset(np.stack(imgs), np.array(labels), tuple(f"c{c}" for c in range(len(counts))))


def decode(x):
    """(class, index) pairs back from normalised coded images (..., H, W, 1)."""
    px = np.rint(np.asarray(data.denormalize(x))).astype(int)
    return px[..., 0, 0, 0], px[..., 0, 1, 0]


# --------------------------------------------------------------------------- ClassPool


def test_class_pool_from_dataset():
    ds = coded_dataset()
    pool = data.ClassPool.from_dataset(ds)
    assert pool.images.shape == (6, 10, 4, 4, 1) and pool.images.dtype == jnp.float32
    assert pool.num_classes == 6 and pool.per_class == 10 and pool.class_names[0] == "c0"
    assert float(pool.images.min()) == -1.0 and float(pool.images.max()) <= 1.0
    c, i = decode(pool.images)
    np.testing.assert_array_equal(c, np.repeat(np.arange(6)[:, None], 10, 1))
    np.testing.assert_array_equal(i, np.tile(np.arange(10), (6, 1)))
    big = data.ClassPool.from_dataset(ds, image_size=8)
    assert big.images.shape == (6, 10, 8, 8, 1)
    # a pytree: passes through jit
    out = jax.jit(lambda p: p.images.sum())(pool)
    assert np.isfinite(float(out))


def test_class_pool_count_errors():
    ds = coded_dataset(counts=[5, 5, 3, 5])
    with pytest.raises(ValueError, match=r"unequal.*'c2' has 3.*per_class"):
        data.ClassPool.from_dataset(ds)
    assert data.ClassPool.from_dataset(ds, per_class=3).images.shape[:2] == (4, 3)
    assert data.ClassPool.from_dataset(ds, per_class="min").per_class == 3
    with pytest.raises(ValueError, match=r"class 'c2' has only 3 examples, fewer than per_class=4"):
        data.ClassPool.from_dataset(ds, per_class=4)
    empty = data.Dataset(ds.images, ds.labels, ds.class_names + ("ghost",))
    with pytest.raises(ValueError, match="class 'ghost' has no examples"):
        data.ClassPool.from_dataset(empty, per_class=3)


# --------------------------------------------------------------------------- episodes


def test_sample_episodes_shapes_labels_and_content():
    pool = data.ClassPool.from_dataset(coded_dataset(num_classes=8, per_class=10))
    key = jax.random.key(0)
    b = data.sample_episodes(key, pool, n_way=5, k_shot=2, n_query=3, num_tasks=7)
    assert isinstance(b, data.TaskBatch)
    assert b.support_x.shape == (7, 10, 4, 4, 1) and b.query_x.shape == (7, 15, 4, 4, 1)
    assert b.support_y.shape == (7, 10) and b.query_y.shape == (7, 15)
    assert b.support_x.dtype == jnp.float32 and b.support_y.dtype == jnp.int32
    sc, si = decode(b.support_x)
    qc, qi = decode(b.query_x)
    for t in range(7):
        sy, qy = np.asarray(b.support_y[t]), np.asarray(b.query_y[t])
        assert sorted(set(sy.tolist())) == list(range(5)) and np.bincount(qy).tolist() == [3] * 5
        # each label maps to one source class; the 5 classes are distinct
        mapping = {int(y): {int(c) for c in sc[t][sy == y]} | {int(c) for c in qc[t][qy == y]} for y in range(5)}
        assert all(len(v) == 1 for v in mapping.values())
        assert len({next(iter(v)) for v in mapping.values()}) == 5
        # support and query examples are distinct
        ids = list(zip(sc[t].tolist(), si[t].tolist())) + list(zip(qc[t].tolist(), qi[t].tolist()))
        assert len(set(ids)) == 25
    # deterministic in the key, different for another key; raw uint32 keys work too
    b2 = data.sample_episodes(key, pool, n_way=5, k_shot=2, n_query=3, num_tasks=7)
    for x, y in zip(b, b2):
        np.testing.assert_array_equal(x, y)
    b3 = data.sample_episodes(jax.random.key(1), pool, n_way=5, k_shot=2, n_query=3, num_tasks=7)
    assert not np.array_equal(b3.support_x, b.support_x)
    b4 = data.sample_episodes(jax.random.PRNGKey(0), pool, n_way=5, k_shot=2, n_query=3, num_tasks=7)
    assert b4.support_x.shape == b.support_x.shape


def test_sample_episodes_uniform_classes():
    pool = data.ClassPool.from_dataset(coded_dataset(num_classes=6, per_class=4))
    b = data.sample_episodes(jax.random.key(3), pool, n_way=2, k_shot=1, n_query=1, num_tasks=3000)
    c, i = decode(b.support_x)
    freq = np.bincount(c.ravel(), minlength=6) / c.size
    assert np.all(np.abs(freq - 1 / 6) < 0.02)
    freq_i = np.bincount(i.ravel(), minlength=4) / i.size
    assert np.all(np.abs(freq_i - 1 / 4) < 0.03)


def test_sample_episodes_jit_vmap_and_errors():
    pool = data.ClassPool.from_dataset(coded_dataset(num_classes=5, per_class=6))

    @jax.jit
    def f(key, pool):
        return data.sample_episodes(key, pool, n_way=3, k_shot=1, n_query=2, num_tasks=4)

    b = f(jax.random.key(0), pool)
    assert b.query_x.shape == (4, 6, 4, 4, 1)
    keys = jax.random.split(jax.random.key(0), 3)
    bv = jax.vmap(lambda k: data.sample_episodes(k, pool, 3, 1, 2, 4))(keys)
    assert bv.support_x.shape == (3, 4, 3, 4, 4, 1)
    with pytest.raises(ValueError, match=r"n_way=6 is larger than the number of classes in the pool \(5\)"):
        data.sample_episodes(jax.random.key(0), pool, n_way=6, k_shot=1, n_query=1)
    with pytest.raises(ValueError, match=r"k_shot \+ n_query = 2 \+ 5 = 7 is more than the 6 examples"):
        data.sample_episodes(jax.random.key(0), pool, n_way=2, k_shot=2, n_query=5)
    with pytest.raises(ValueError, match="k_shot must be an integer >= 1"):
        data.sample_episodes(jax.random.key(0), pool, n_way=2, k_shot=0, n_query=1)


# --------------------------------------------------------------------------- NAS tasks


def test_sample_nas_tasks():
    pool = data.ClassPool.from_dataset(coded_dataset(num_classes=12, per_class=10))
    key = jax.random.key(0)
    b = data.sample_nas_tasks(key, pool, n_classes=4, n_train=20, n_val=8, num_tasks=6)
    assert b.support_x.shape == (6, 20, 4, 4, 1) and b.query_x.shape == (6, 8, 4, 4, 1)
    assert b.support_y.shape == (6, 20) and b.query_y.dtype == jnp.int32
    c_s, i_s = decode(b.support_x)
    c_q, i_q = decode(b.query_x)
    for t in range(6):
        ys = np.concatenate([b.support_y[t], b.query_y[t]])
        cs = np.concatenate([c_s[t], c_q[t]])
        assert ys.min() >= 0 and ys.max() < 4
        # one class per label, at most 4 classes
        assert all(len(set(cs[ys == y].tolist())) == 1 for y in np.unique(ys))
        assert len(set(cs.tolist())) <= 4
        ids = list(zip(cs.tolist(), np.concatenate([i_s[t], i_q[t]]).tolist()))
        assert len(set(ids)) == 28  # train and val disjoint, no repeats
    b2 = data.sample_nas_tasks(key, pool, n_classes=4, n_train=20, n_val=8, num_tasks=6)
    np.testing.assert_array_equal(b.query_x, b2.query_x)
    with pytest.raises(ValueError, match=r"n_classes=13 is larger"):
        data.sample_nas_tasks(key, pool, n_classes=13)
    with pytest.raises(ValueError, match=r"n_train \+ n_val = 41 is more than the 4 x 10 examples"):
        data.sample_nas_tasks(key, pool, n_classes=4, n_train=40, n_val=1)
    # reference defaults: 100 tasks of 64 train + 16 val, 10 classes
    ref = data.sample_nas_tasks(key, pool)
    assert ref.support_x.shape[:2] == (100, 64) and ref.query_x.shape[:2] == (100, 16)
    assert int(ref.support_y.max()) <= 9


# --------------------------------------------------------------------------- class splits


def test_omniglot_splits_synthetic():
    ds = coded_dataset(num_classes=30, per_class=5, size=6)
    tr, va, te = data.omniglot_splits(ds, image_size=None, n_train_chars=20, n_val_chars=4, seed=0)
    assert (tr.num_classes, va.num_classes, te.num_classes) == (80, 4, 10)
    assert tr.images.shape[1:] == (5, 6, 6, 1)
    base = tr.class_names[:20]
    assert tr.class_names[20] == base[0].replace("rot0", "rot90") and base[0].endswith("/rot0")
    np.testing.assert_array_equal(tr.images[20], jnp.rot90(tr.images[0], 1, axes=(1, 2)))
    train_chars = {n.rsplit("/", 1)[0] for n in tr.class_names}
    assert len(train_chars) == 20 and not train_chars & set(te.class_names)
    assert set(va.class_names) <= train_chars  # val: a slice of the training characters
    tr2, va2, te2 = data.omniglot_splits(ds, image_size=None, n_train_chars=20, n_val_chars=4, seed=0)
    assert tr2.class_names == tr.class_names and te2.class_names == te.class_names
    trd, vad, _ = data.omniglot_splits(ds, image_size=3, n_train_chars=20, n_val_chars=4, disjoint_val=True)
    assert trd.num_classes == 64 and trd.image_shape == (3, 3, 1)
    assert not {n.rsplit("/", 1)[0] for n in trd.class_names} & set(vad.class_names)
    _, v0, _ = data.omniglot_splits(ds, image_size=None, n_train_chars=20, n_val_chars=0)
    assert v0.num_classes == 0
    with pytest.raises(ValueError, match="n_way=5 is larger than the number of classes in the pool \\(0\\)"):
        data.sample_episodes(jax.random.key(0), v0, 5, 1, 1)
    with pytest.raises(ValueError, match=r"n_train_chars=1200 .*30 in this dataset"):
        data.omniglot_splits(ds)


def test_omniglot_splits_lake_protocol_by_alphabet_part():
    """Lake's protocol: the background part's characters train, the evaluation part's
    test, whatever the seed and n_train_chars say; data without parts is refused."""
    import dataclasses
    ds = coded_dataset(num_classes=12, per_class=4, size=6)
    bg_classes = [c for c in range(12) if c % 3]  # parts interleaved, not in label order
    part = np.where(np.isin(np.asarray(ds.labels), bg_classes), 0, 1).astype(np.int32)
    ds2 = dataclasses.replace(ds, meta={"part": part, "part_names": ("background", "evaluation")})
    tr, va, te = data.omniglot_splits(ds2, image_size=None, n_val_chars=2, protocol="lake")
    names = np.asarray(ds.class_names)
    assert {n.rsplit("/", 1)[0] for n in tr.class_names} == set(names[bg_classes])
    assert set(te.class_names) == set(names) - set(names[bg_classes]) and te.num_classes == 4
    assert tr.num_classes == 4 * 8 and va.num_classes == 2
    with pytest.raises(ValueError, match="protocol='lake' needs Omniglot"):
        data.omniglot_splits(ds, image_size=None, protocol="lake")
    with pytest.raises(ValueError, match="protocol must be"):
        data.omniglot_splits(ds2, image_size=None, protocol="vinyals2")


def test_class_split_digits():
    ds = data.load("digits", split="all", cache_dir=False)
    tr, va, te = data.class_split(ds, seed=0)
    assert (tr.num_classes, va.num_classes, te.num_classes) == (6, 2, 2)
    assert tr.per_class == int(ds.class_counts().min())
    names = tr.class_names + va.class_names + te.class_names
    assert sorted(names) == sorted(ds.class_names)
    tr2, _, _ = data.class_split(ds, seed=0)
    assert tr2.class_names == tr.class_names
    b = data.sample_episodes(jax.random.key(0), tr, n_way=5, k_shot=1, n_query=15, num_tasks=4)
    assert b.support_x.shape == (4, 5, 8, 8, 1)
    with pytest.raises(ValueError, match="summing to 1"):
        data.class_split(ds, fractions=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="give no val classes out of 10"):
        data.class_split(ds, fractions=(0.96, 0.02, 0.02))
    with pytest.raises(ValueError, match="unequal"):
        data.class_split(ds, per_class=None)
    big = data.class_split(ds, fractions=(0.5, 0.0, 0.5), image_size=12)
    assert big[1].num_classes == 0 and big[0].image_shape == (12, 12, 1)


# --------------------------------------------------------------------------- target task


def test_target_task_digits():
    tr = data.load("digits", split="train", cache_dir=False)
    te = data.load("digits", split="test", cache_dir=False)
    task = data.target_task(tr, te, val_fraction=0.1, seed=0)
    assert isinstance(task, data.TargetTask)
    assert len(task.train) + len(task.val) == len(tr) and task.test is te
    assert np.all(np.abs(task.val.class_counts() - 0.1 * tr.class_counts()) <= 1)
    # disjoint: compare raw bytes of the images
    a = {x.tobytes() + bytes([y]) for x, y in zip(task.train.images, task.train.labels)}
    dup = sum(x.tobytes() + bytes([y]) in a for x, y in zip(task.val.images, task.val.labels))
    assert dup <= 2  # digits contains a few identical images; none are shared by index
    again = data.target_task(tr, te, val_fraction=0.1, seed=0)
    np.testing.assert_array_equal(again.val.images, task.val.images)
    small = data.target_task(tr, te, n_train=64, n_val=16, n_test=50)
    assert (len(small.train), len(small.val), len(small.test)) == (64, 16, 50)
    assert small.train.num_classes == 10 and np.all(small.train.class_counts() >= 6)
    tb = small.as_task_batch()
    assert tb.support_x.shape == (1, 64, 8, 8, 1) and tb.query_y.shape == (1, 16)
    with pytest.raises(ValueError, match="different classes"):
        other = data.Dataset(te.images, te.labels, tuple(f"x{i}" for i in range(10)))
        data.target_task(tr, other)
    with pytest.raises(ValueError, match="val_fraction"):
        data.target_task(tr, te, val_fraction=1.0)
    with pytest.raises(ValueError, match="cannot subsample n=5000"):
        data.target_task(tr, te, n_train=5000)
    tiny = data.Dataset(tr.images[:11], np.r_[np.zeros(10, int), 1], ("a", "b"))
    with pytest.raises(ValueError, match="class 'b' has 1 training examples"):
        data.target_task(tiny, data.Dataset(tr.images[:2], np.array([0, 1]), ("a", "b")))


# --------------------------------------------------------------------------- augmentation


def test_normalize_and_resize():
    x = np.array([0, 255, 127.5], np.float32).reshape(1, 1, 3, 1)
    np.testing.assert_allclose(data.normalize(x.astype(np.uint8) if False else x)[0, 0, :, 0], [-1, 1, 0], atol=1e-6)
    u = np.full((2, 4, 4, 3), 255, np.uint8)
    np.testing.assert_allclose(data.normalize(u), 1.0)
    m = data.normalize(u, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    np.testing.assert_allclose(m, 2.0)
    np.testing.assert_allclose(data.denormalize(data.normalize(u)), 255.0, rtol=1e-6)
    r = data.resize(u, 8)
    assert r.shape == (2, 8, 8, 3) and r.dtype == jnp.float32
    np.testing.assert_allclose(r, 255.0, rtol=1e-5)
    assert data.resize(u, (2, 6)).shape == (2, 2, 6, 3)
    assert jax.jit(lambda v: data.resize(v, 3))(u).shape == (2, 3, 3, 3)


def test_random_crop_and_flip():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.integers(1, 255, (16, 6, 6, 2), dtype=np.uint8))
    key = jax.random.key(0)
    c = data.random_crop(key, x, pad=2)
    assert c.shape == x.shape and c.dtype == x.dtype
    padded = np.pad(np.asarray(x), ((0, 0), (2, 2), (2, 2), (0, 0)))
    shifts = set()
    for n in range(16):
        found = [(dy, dx) for dy in range(5) for dx in range(5)
                 if np.array_equal(padded[n, dy:dy + 6, dx:dx + 6], np.asarray(c[n]))]
        assert found
        shifts.add(found[0])
    assert len(shifts) > 1  # independent offsets
    np.testing.assert_array_equal(data.random_crop(key, x, pad=2), c)
    f = data.random_flip(key, x)
    flipped = [bool(np.array_equal(np.asarray(f[n]), np.asarray(x[n, :, ::-1]))) for n in range(16)]
    same = [bool(np.array_equal(np.asarray(f[n]), np.asarray(x[n]))) for n in range(16)]
    assert all(a or b for a, b in zip(flipped, same)) and 0 < sum(flipped) < 16
    # jit-able, works with leading task axes
    xt = x.reshape(4, 4, 6, 6, 2)
    a = jax.jit(lambda k, v: data.augment(k, v, pad=1, flip=True))(key, xt)
    assert a.shape == xt.shape and a.dtype == xt.dtype
    np.testing.assert_array_equal(data.augment(key, x, pad=0, flip=False), x)
    with pytest.raises(ValueError, match="pad must be >= 0"):
        data.random_crop(key, x, pad=-1)
    # reflect padding (airbench's translation): the same offsets, mirrored borders
    r = data.random_crop(key, x, pad=2, mode="reflect")
    mirrored = np.pad(np.asarray(x), ((0, 0), (2, 2), (2, 2), (0, 0)), mode="reflect")
    for n in range(16):
        dy, dx = next((dy, dx) for dy in range(5) for dx in range(5)
                      if np.array_equal(padded[n, dy:dy + 6, dx:dx + 6], np.asarray(c[n])))
        np.testing.assert_array_equal(np.asarray(r[n]), mirrored[n, dy:dy + 6, dx:dx + 6])
    with pytest.raises(ValueError, match="mode must be one of .* got 'wrap'"):
        data.random_crop(key, x, pad=2, mode="wrap")
    with pytest.raises(ValueError, match="reflect padding needs pad < image size, got pad=6"):
        data.random_crop(key, x, pad=6, mode="reflect")


def test_task_batch_is_a_pytree():
    pool = data.ClassPool.from_dataset(coded_dataset(num_classes=5, per_class=4))
    b = data.sample_episodes(jax.random.key(0), pool, 2, 1, 1, 3)
    leaves = jax.tree_util.tree_leaves(b)
    assert len(leaves) == 4 and all(leaf.shape[0] == 3 for leaf in leaves)
    first = jax.tree_util.tree_map(lambda v: v[0], b)
    assert first.support_x.shape == (2, 4, 4, 1)
    out = jax.jit(jax.vmap(lambda t: t.support_x.mean() + t.query_y.sum()))(b)
    assert out.shape == (3,)


# --------------------------------------------------------------------------- shared data


def test_shared_omniglot_protocol_and_sampling_speed(shared_cache):
    if not (SHARED / "omniglot" / "images_background.zip").exists():
        pytest.skip(f"{SHARED / 'omniglot'} not present")
    ds = data.load(f"omniglot:{SHARED / 'omniglot'}", split="all", cache_dir=shared_cache)
    tr, va, te = data.omniglot_splits(ds, image_size=28)
    assert (tr.num_classes, va.num_classes, te.num_classes) == (4800, 100, 423)
    assert tr.images.shape == (4800, 20, 28, 28, 1) and te.per_class == 20
    tr_l, _, lake = data.omniglot_splits(ds, image_size=28, protocol="lake")  # 964 / 659 characters
    assert (tr_l.num_classes, lake.num_classes) == (964 * 4, 659)
    alphabets = lambda pool: {n.split("/")[0] for n in pool.class_names}  # noqa: E731
    assert not alphabets(tr_l) & alphabets(lake)  # tested on alphabets never seen
    key = jax.random.key(0)
    jax.block_until_ready(data.sample_episodes(key, tr, n_way=5, k_shot=1, n_query=15, num_tasks=32))
    b = data.sample_episodes(jax.random.key(1), tr, n_way=5, k_shot=1, n_query=15, num_tasks=32)
    # (its speed is a benchmark figure, benchmarks/bench_data.py, not a timed test)
    assert b.support_x.shape == (32, 5, 28, 28, 1) and b.query_x.shape == (32, 75, 28, 28, 1)
