"""Tests for metanas_jax.data sources (load, cache, bad input).

Every source is built from small data made inside the test (plus scikit-learn's digits).
Tests reading ../shared/data (next to the project root) skip when it is absent.
"""

from __future__ import annotations

import io
import os
import tarfile
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from metanas_jax import data
from metanas_jax.data import cache as data_cache
from metanas_jax.data import sources

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


# --------------------------------------------------------------------------- helpers


def _img(seed: int, size=(8, 8), mode="RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    shape = size + ((3,) if mode == "RGB" else ())
    return Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode)


def make_folder(root: Path, splits=("train", "test"), classes=("cat", "dog", "emu"), per_class=3,
                size=(8, 8), mode="RGB", ext="png") -> Path:
    for s_i, split in enumerate(splits):
        for c_i, cls in enumerate(classes):
            d = root / split / cls
            d.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                _img(1000 * s_i + 100 * c_i + i, size, mode).save(d / f"{i:03d}.{ext}")
    return root


def make_tar(src: Path, tar_path: Path, arcname: str = ".", mode: str = "w") -> Path:
    with tarfile.open(tar_path, mode) as tf:
        tf.add(src, arcname=arcname)
    return tar_path


def _png_bytes(arr: np.ndarray) -> bytes:
    b = io.BytesIO()
    Image.fromarray(arr).save(b, format="PNG")
    return b.getvalue()


def make_omniglot(root: Path, as_zip=True, n_alpha=(2, 2), n_char=2, n_img=3, size=12) -> Path:
    """A tiny Omniglot in the official layout: images_{part}/<Alphabet>/characterNN/*.png."""
    root.mkdir(parents=True, exist_ok=True)
    seed = 0
    for part, na in zip(("background", "evaluation"), n_alpha):
        files = {}
        for a in range(na):
            for c in range(n_char):
                for i in range(n_img):
                    seed += 1
                    arr = (np.random.default_rng(seed).random((size, size)) > 0.5).astype(np.uint8) * 255
                    files[f"images_{part}/{part[:2]}Alpha{a}/character{c + 1:02d}/{seed:04d}_{i + 1:02d}.png"] = arr
        if as_zip:
            with zipfile.ZipFile(root / f"images_{part}.zip", "w") as zf:
                for name, arr in files.items():
                    zf.writestr(name, _png_bytes(arr))
        else:
            for name, arr in files.items():
                p = root / name
                p.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(arr).convert("1").save(p)
    return root


# --------------------------------------------------------------------------- digits and spec


def test_digits_splits():
    tr = data.load("digits", split="train", cache_dir=False)
    te = data.load("digits", split="test", cache_dir=False)
    al = data.load("digits", split="all", cache_dir=False)
    assert isinstance(tr, data.Dataset)
    assert (len(tr), len(te), len(al)) == (1437, 360, 1797)
    assert tr.images.shape[1:] == (8, 8, 1) and tr.images.dtype == np.uint8
    assert tr.labels.dtype == np.int32 and tr.num_classes == 10 and tr.class_names[0] == "0"
    assert tr.images.max() == 255 and tr.images.min() == 0
    # stratified: every class ~80/20
    frac = te.class_counts() / al.class_counts()
    assert np.all(np.abs(frac - 0.2) < 0.02)
    again = data.load("digits", split="train", cache_dir=False)
    np.testing.assert_array_equal(again.images, tr.images)
    assert tr.meta == {}
    small = data.load("digits", split="test", cache_dir=False, image_size=16)
    assert small.images.shape == (360, 16, 16, 1)


def test_unknown_spec_and_split():
    with pytest.raises(ValueError, match=r"unknown dataset spec 'nope'.*digits.*omniglot:.*folder:.*tfds:"):
        data.load("nope")
    with pytest.raises(ValueError, match="split 'val'"):
        data.load("digits", split="val")
    with pytest.raises(ValueError, match="needs a path"):
        data.load("folder:")
    with pytest.raises(ValueError, match="only apply to 'tfds:'"):
        data.load("digits", data_dir="/tmp")


def test_dataset_validation():
    imgs = np.zeros((2, 4, 4, 1), np.uint8)
    with pytest.raises(ValueError, match="labels must lie"):
        data.Dataset(imgs, np.array([0, 3]), ("a", "b"))
    with pytest.raises(ValueError, match="uint8"):
        data.Dataset(imgs.astype(np.float32), np.array([0, 1]), ("a", "b"))
    ds = data.Dataset(imgs, np.array([0, 1]), ["a", "b"], {"x": np.array([5, 6])})
    sub = ds.subset([1])
    assert len(sub) == 1 and sub.meta["x"].tolist() == [6] and sub.class_names == ("a", "b")


# --------------------------------------------------------------------------- image folder


def test_folder_dir_and_tar_agree(tmp_path):
    root = make_folder(tmp_path / "imgs")
    ds = data.load(f"folder:{root}", split="train", cache_dir=False)
    assert ds.images.shape == (9, 8, 8, 3) and ds.class_names == ("cat", "dog", "emu")
    assert ds.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    np.testing.assert_array_equal(ds.images[0], np.asarray(_img(0)))
    # plain tar, tar with a wrapping folder, gzipped tar with './' prefixes
    tars = [
        make_tar(root, tmp_path / "a.tar", arcname="."),
        make_tar(root, tmp_path / "b.tar", arcname="wrapped"),
        make_tar(root, tmp_path / "c.tar.gz", arcname=".", mode="w:gz"),
    ]
    for t in tars:
        dt = data.load(f"folder:{t}", split="train", cache_dir=False)
        np.testing.assert_array_equal(dt.images, ds.images)
        np.testing.assert_array_equal(dt.labels, ds.labels)
        assert dt.class_names == ds.class_names
    al = data.load(f"folder:{tars[0]}", split="all", cache_dir=False)
    assert len(al) == 18 and al.num_classes == 3
    small = data.load(f"folder:{root}", split="test", cache_dir=False, image_size=4)
    assert small.images.shape == (9, 4, 4, 3)


def test_fast_tar_index_matches_tarfile(tmp_path):
    root = make_folder(tmp_path / "imgs", per_class=2)
    t = make_tar(root, tmp_path / "x.tar")
    idx = sources._fast_tar_index(t)
    with tarfile.open(t) as tf:
        ref = [(m.name, m.offset_data, m.size) for m in tf]
    assert [(n.rstrip("/"), o, s) for n, _, o, s in idx] == ref
    # long names (PAX and GNU headers) are read by the fast index too
    long_dir = root / "train" / ("c" * 120)
    long_dir.mkdir()
    _img(7).save(long_dir / "0.png")
    for fmt in (tarfile.PAX_FORMAT, tarfile.GNU_FORMAT):
        t2 = tmp_path / f"y{fmt}.tar"
        with tarfile.open(t2, "w", format=fmt) as tf:
            tf.add(root, arcname=".")
        idx = sources._fast_tar_index(t2)
        with tarfile.open(t2) as tf:
            ref = [(m.name, m.offset_data, m.size) for m in tf]
        assert [(n.rstrip("/"), o, s) for n, _, o, s in idx] == ref
        ds = data.load(f"folder:{t2}", split="train", cache_dir=False)
        assert "c" * 120 in ds.class_names and len(ds) == 7
    # compressed archives go through tarfile
    t3 = make_tar(root, tmp_path / "z.tar.gz", mode="w:gz")
    assert sources._fast_tar_index(t3) is None
    assert len(data.load(f"folder:{t3}", split="train", cache_dir=False)) == 7


def test_folder_gray_color_and_flat_layout(tmp_path):
    gray = make_folder(tmp_path / "g", splits=("train",), mode="L", ext="png")
    dg = data.load(f"folder:{gray}", split="train", cache_dir=False)
    assert dg.images.shape == (9, 8, 8, 1)
    # mixing grayscale and colour gives RGB
    _img(5, mode="RGB").save(gray / "train" / "cat" / "rgb.jpg")
    dm = data.load(f"folder:{gray}", split="train", cache_dir=False)
    assert dm.images.shape == (10, 8, 8, 3)
    # flat layout root/<class>/*.png: split='all' only
    flat = tmp_path / "flat"
    for c in ("a", "b"):
        (flat / c).mkdir(parents=True)
        for i in range(2):
            _img(i, mode="L").save(flat / c / f"{i}.jpeg")
    df = data.load(f"folder:{flat}", split="all", cache_dir=False)
    assert len(df) == 4 and df.class_names == ("a", "b")
    with pytest.raises(ValueError, match="no split folders.*split='all'"):
        data.load(f"folder:{flat}", split="train", cache_dir=False)
    # hidden files and files outside class folders are ignored
    (flat / ".DS_Store").write_bytes(b"junk")
    (flat / "a" / ".hidden.png").write_bytes(b"junk")
    (flat / "README.txt").write_text("hello")
    assert len(data.load(f"folder:{flat}", split="all", cache_dir=False)) == 4


# --------------------------------------------------------------------------- bad input


def test_missing_path_errors(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        data.load(f"folder:{missing}", cache_dir=False)
    with pytest.raises(FileNotFoundError, match=str(missing)):
        data.load(f"omniglot:{missing}", cache_dir=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="images_background"):
        data.load(f"omniglot:{empty}", cache_dir=False)
    with pytest.raises(ValueError, match="no .png/.jpg/.jpeg images found in"):
        data.load(f"folder:{empty}", split="all", cache_dir=False)
    _img(0).save(empty / "loose.png")
    with pytest.raises(ValueError, match=r"wrong folder layout in .*empty.*loose\.png"):
        data.load(f"folder:{empty}", split="all", cache_dir=False)
    notarchive = tmp_path / "x.bin"
    notarchive.write_bytes(b"not an archive")
    with pytest.raises(ValueError, match="neither a folder nor"):
        data.load(f"folder:{notarchive}", cache_dir=False)


def test_corrupt_image_names_file(tmp_path):
    root = make_folder(tmp_path / "imgs")
    bad = root / "train" / "dog" / "001.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nthis is not really a png")
    with pytest.raises(ValueError, match=r"cannot decode image .*dog/001\.png"):
        data.load(f"folder:{root}", split="train", cache_dir=False)
    # truncated JPEG
    root2 = make_folder(tmp_path / "imgs2", ext="jpg", size=(32, 32))
    p = root2 / "test" / "emu" / "002.jpg"
    p.write_bytes(p.read_bytes()[:200])
    with pytest.raises(ValueError, match=r"cannot decode image .*emu/002\.jpg"):
        data.load(f"folder:{root2}", split="test", cache_dir=False)
    # and from a tar
    t = make_tar(root, tmp_path / "bad.tar")
    with pytest.raises(ValueError, match=r"cannot decode image .*bad\.tar:.*dog/001\.png"):
        data.load(f"folder:{t}", split="train", cache_dir=False)


def test_layout_errors(tmp_path):
    root = make_folder(tmp_path / "imgs")
    with pytest.raises(ValueError, match=r"split 'val' not found.*\['test', 'train'\]"):
        data.load(f"folder:{root}", split="val", cache_dir=False)
    # empty class folder
    (root / "train" / "fox").mkdir()
    with pytest.raises(ValueError, match=r"empty class folder .*train/fox"):
        data.load(f"folder:{root}", split="train", cache_dir=False)
    (root / "train" / "fox").rmdir()
    # images at two depths
    _img(1).save(root / "train" / "stray.png")
    with pytest.raises(ValueError, match=r"wrong folder layout.*stray\.png"):
        data.load(f"folder:{root}", split="train", cache_dir=False)
    (root / "train" / "stray.png").unlink()
    # non-image file inside a class folder
    (root / "train" / "cat" / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match=r"unsupported file .*cat/notes\.txt"):
        data.load(f"folder:{root}", split="train", cache_dir=False)
    (root / "train" / "cat" / "notes.txt").unlink()
    # images of different sizes without image_size
    _img(3, size=(10, 8)).save(root / "train" / "dog" / "big.png")
    with pytest.raises(ValueError, match=r"dog/big\.png is 10x8 \(HxW\) .*image_size="):
        data.load(f"folder:{root}", split="train", cache_dir=False)
    ok = data.load(f"folder:{root}", split="train", cache_dir=False, image_size=8)
    assert ok.images.shape == (10, 8, 8, 3)


# --------------------------------------------------------------------------- cache


def test_cache_hit_invalidation_and_atomicity(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "imgs")
    t = make_tar(root, tmp_path / "d.tar")
    cdir = tmp_path / "cache"
    a = data.load(f"folder:{t}", split="train", cache_dir=cdir)
    entries = sorted(cdir.glob("*.npz"))
    assert len(entries) == 1 and not list(cdir.glob("*.tmp*"))

    def boom(*a, **k):
        raise AssertionError("decoded although cached")

    with monkeypatch.context() as m:
        m.setattr(sources, "decode_images", boom)
        b = data.load(f"folder:{t}", split="train", cache_dir=cdir)
        np.testing.assert_array_equal(a.images, b.images)
        assert a.class_names == b.class_names
        # preprocessing is part of the key
        with pytest.raises(AssertionError, match="decoded although cached"):
            data.load(f"folder:{t}", split="train", cache_dir=cdir, image_size=4)
    data.load(f"folder:{t}", split="train", cache_dir=cdir, image_size=4)
    assert len(list(cdir.glob("*.npz"))) == 2
    # changing the source file (size/mtime) invalidates
    st = t.stat()
    os.utime(t, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with monkeypatch.context() as m:
        m.setattr(sources, "decode_images", boom)
        with pytest.raises(AssertionError):
            data.load(f"folder:{t}", split="train", cache_dir=cdir)
    # a corrupt entry is ignored (with a warning) and rewritten
    c = data.load(f"folder:{t}", split="train", cache_dir=cdir)
    newest = max(cdir.glob("*.npz"), key=lambda p: p.stat().st_mtime_ns)
    newest.write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="unreadable cache entry"):
        d = data.load(f"folder:{t}", split="train", cache_dir=cdir)
    np.testing.assert_array_equal(c.images, d.images)
    assert data_cache.read_entry(newest) is not None


def test_cache_disabled_and_env(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "imgs", splits=("train",))
    env_dir = tmp_path / "envcache"
    monkeypatch.setenv("METANAS_CACHE", str(env_dir))
    assert data.default_cache_dir() == env_dir
    data.load(f"folder:{root}", split="train", cache_dir=False)
    assert not env_dir.exists()
    data.load(f"folder:{root}", split="train")
    assert len(list(env_dir.glob("*.npz"))) == 1
    # an unpacked folder is fingerprinted file by file
    fp1 = data_cache.fingerprint([root])
    time.sleep(0.01)
    _img(9).save(root / "train" / "cat" / "new.png")
    assert data_cache.fingerprint([root]) != fp1
    assert len(data.load(f"folder:{root}", split="train")) == 10


# --------------------------------------------------------------------------- omniglot


def test_omniglot_zip_and_folder(tmp_path):
    zroot = make_omniglot(tmp_path / "zips", as_zip=True)
    froot = make_omniglot(tmp_path / "dirs", as_zip=False)
    bg = data.load(f"omniglot:{zroot}", split="background", cache_dir=False)
    assert bg.images.shape == (12, 12, 12, 1) and bg.images.dtype == np.uint8
    assert bg.num_classes == 4 and bg.class_names[0] == "baAlpha0/character01"
    assert set(np.unique(bg.images)) <= {0, 255}
    assert bg.meta["alphabet_names"] == ("baAlpha0", "baAlpha1")
    assert bg.meta["alphabet"].tolist() == [0] * 6 + [1] * 6
    assert bg.meta["character"].tolist()[:6] == [1, 1, 1, 2, 2, 2]
    al = data.load(f"omniglot:{zroot}", split="all", cache_dir=False)
    assert al.num_classes == 8 and len(al) == 24
    assert al.meta["part"].tolist() == [0] * 12 + [1] * 12
    assert al.meta["alphabet_names"][2] == "evAlpha0"
    assert al.class_names[4] == "evAlpha0/character01"
    ev = data.load(f"omniglot:{zroot}", split="test", cache_dir=False)  # alias of evaluation
    np.testing.assert_array_equal(ev.images, al.images[12:])
    # unpacked folders give the same arrays; so do explicit zip paths
    fal = data.load(f"omniglot:{froot}", split="all", cache_dir=False)
    np.testing.assert_array_equal(fal.images, al.images)
    assert fal.class_names == al.class_names
    both = data.load(
        f"omniglot:{zroot / 'images_background.zip'},{zroot / 'images_evaluation.zip'}", split="all", cache_dir=False
    )
    np.testing.assert_array_equal(both.images, al.images)
    one = data.load(f"omniglot:{froot / 'images_background'}", split="background", cache_dir=False)
    np.testing.assert_array_equal(one.images, bg.images)
    # cached round trip keeps meta
    cdir = tmp_path / "cache"
    data.load(f"omniglot:{zroot}", split="all", cache_dir=cdir)
    cached = data.load(f"omniglot:{zroot}", split="all", cache_dir=cdir)
    assert cached.meta["alphabet_names"] == al.meta["alphabet_names"]
    np.testing.assert_array_equal(cached.meta["alphabet"], al.meta["alphabet"])
    r = data.load(f"omniglot:{zroot}", split="all", cache_dir=False, image_size=6)
    assert r.images.shape == (24, 6, 6, 1)


def test_omniglot_errors(tmp_path):
    zroot = make_omniglot(tmp_path / "zips")
    with pytest.raises(FileNotFoundError, match="images_evaluation"):
        data.load(f"omniglot:{zroot / 'images_background.zip'}", split="all", cache_dir=False)
    with pytest.raises(ValueError, match="unknown split 'val'"):
        data.load(f"omniglot:{zroot}", split="val", cache_dir=False)
    # wrong layout: an image directly in an alphabet folder
    with zipfile.ZipFile(zroot / "images_background.zip", "a") as zf:
        zf.writestr("images_background/baAlpha0/stray.png", _png_bytes(np.zeros((12, 12), np.uint8)))
    with pytest.raises(ValueError, match=r"wrong Omniglot layout.*baAlpha0/stray\.png"):
        data.load(f"omniglot:{zroot}", split="background", cache_dir=False)
    # corrupt image
    froot = make_omniglot(tmp_path / "dirs", as_zip=False)
    bad = next((froot / "images_evaluation").rglob("*.png"))
    bad.write_bytes(b"broken")
    with pytest.raises(ValueError, match=f"cannot decode image .*{bad.name}"):
        data.load(f"omniglot:{froot}", split="evaluation", cache_dir=False)
    # empty character folder
    (froot / "images_background" / "baAlpha0" / "character09").mkdir()
    with pytest.raises(ValueError, match=r"empty Omniglot character folder .*character09"):
        data.load(f"omniglot:{froot}", split="background", cache_dir=False)


# --------------------------------------------------------------------------- tfds


def _tiny_tfds_builders():
    """Two tiny TFDS builders defined lazily (registration is global, so only once)."""
    if hasattr(_tiny_tfds_builders, "cache"):
        return _tiny_tfds_builders.cache
    import tensorflow_datasets as tfds

    class MetanasTinyPng(tfds.core.GeneratorBasedBuilder):
        """Yields PNG bytes: prepared without TensorFlow."""

        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                features=tfds.features.FeaturesDict(
                    {
                        "image": tfds.features.Image(shape=(6, 6, 3)),
                        "label": tfds.features.ClassLabel(names=["a", "b", "c"]),
                    }
                ),
            )

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(9, 0), "test": self._generate_examples(6, 1)}

        def _generate_examples(self, n, seed):
            rng = np.random.default_rng(seed)
            for i in range(n):
                yield i, {"image": _png_bytes(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)), "label": i % 3}

    class MetanasTinyArray(MetanasTinyPng):
        """Yields numpy arrays: TFDS encodes them with TensorFlow."""

        def _generate_examples(self, n, seed):
            for i in range(n):
                yield i, {"image": np.zeros((6, 6, 3), np.uint8), "label": i % 3}

    _tiny_tfds_builders.cache = (MetanasTinyPng, MetanasTinyArray)
    return _tiny_tfds_builders.cache


def test_tfds_prepared_array_record_without_tensorflow(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    _tiny_tfds_builders()
    ddir = tmp_path / "tfds"
    tr = data.load("tfds:metanas_tiny_png", split="train", data_dir=ddir, cache_dir=False)
    assert tr.images.shape == (9, 6, 6, 3) and tr.class_names == ("a", "b", "c")
    assert sorted(tr.labels.tolist()) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    al = data.load("tfds:metanas_tiny_png", split="all", data_dir=ddir, cache_dir=tmp_path / "c")
    assert len(al) == 15
    with pytest.raises(ValueError, match="split 'val' not in TFDS dataset"):
        data.load("tfds:metanas_tiny_png", split="val", data_dir=ddir, cache_dir=False)
    with pytest.raises(ValueError, match="unknown TFDS dataset"):
        data.load("tfds:surely_not_a_dataset_xyz", data_dir=ddir, cache_dir=False)
    with pytest.raises(FileNotFoundError, match="not prepared"):
        data.load("tfds:mnist", data_dir=tmp_path / "empty", cache_dir=False, download=False)


def test_tfds_prepare_without_tensorflow_is_a_clear_error(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    try:
        import tensorflow  # noqa: F401

        pytest.skip("TensorFlow is installed")
    except ImportError:
        pass
    _tiny_tfds_builders()
    with pytest.raises(ImportError, match=r"needs TensorFlow to prepare.*metanas-jax\[tensorflow\]"):
        data.load("tfds:metanas_tiny_array", split="train", data_dir=tmp_path / "tfds", cache_dir=False)


# --------------------------------------------------------------------------- shared data


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory):
    # Same folder for both data test files, so the decoded Omniglot is reused.
    return tmp_path_factory.getbasetemp() / "metanas_data_cache"


def _no_decoding(monkeypatch):
    """Make any image decoding fail: a load that passes read the cache (no timing needed)."""
    from metanas_jax.data import sources

    def boom(*a, **k):
        raise AssertionError("decoded images although the cache holds them")
    monkeypatch.setattr(sources, "_decode_one", boom)


def test_shared_omniglot_full(shared_cache, monkeypatch):
    if not (SHARED / "omniglot" / "images_background.zip").exists():
        pytest.skip(f"{SHARED / 'omniglot'} not present")
    ds = data.load(f"omniglot:{SHARED / 'omniglot'}", split="all", cache_dir=shared_cache)
    with monkeypatch.context() as m:
        _no_decoding(m)
        again = data.load(f"omniglot:{SHARED / 'omniglot'}", split="all", cache_dir=shared_cache)
    assert ds.num_classes == 1623 and len(ds) == 1623 * 20
    assert np.all(ds.class_counts() == 20)
    assert ds.images.shape[1:] == (105, 105, 1)
    assert len(ds.meta["alphabet_names"]) == 50
    assert int((ds.meta["part"] == 0).sum()) == 964 * 20
    np.testing.assert_array_equal(again.labels, ds.labels)
    assert len(np.unique(ds.meta["alphabet"][ds.meta["part"] == 0])) == 30  # background alphabets


@pytest.mark.slow
def test_shared_cifar10_tar_full(tmp_path, monkeypatch):
    tar = SHARED / "cifar10" / "cifar10-jpg.tar"
    if not tar.exists():
        pytest.skip(f"{tar} not present")
    cdir = tmp_path / "cache"
    train = data.load(f"folder:{tar}", split="train", cache_dir=cdir)
    test = data.load(f"folder:{tar}", split="test", cache_dir=cdir)
    assert train.images.shape == (50000, 32, 32, 3) and test.images.shape == (10000, 32, 32, 3)
    assert train.num_classes == 10 and train.class_names == test.class_names
    assert train.class_names[0] == "airplane" and np.all(train.class_counts() == 5000)
    _no_decoding(monkeypatch)
    again = data.load(f"folder:{tar}", split="train", cache_dir=cdir)
    np.testing.assert_array_equal(again.images[:100], train.images[:100])
