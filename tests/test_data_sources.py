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
from metanas_jax.data import archive, decode
from metanas_jax.data import cache as data_cache

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
    idx = archive._fast_tar_index(t)
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
        idx = archive._fast_tar_index(t2)
        with tarfile.open(t2) as tf:
            ref = [(m.name, m.offset_data, m.size) for m in tf]
        assert [(n.rstrip("/"), o, s) for n, _, o, s in idx] == ref
        ds = data.load(f"folder:{t2}", split="train", cache_dir=False)
        assert "c" * 120 in ds.class_names and len(ds) == 7
    # compressed archives go through tarfile
    t3 = make_tar(root, tmp_path / "z.tar.gz", mode="w:gz")
    assert archive._fast_tar_index(t3) is None
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
        m.setattr(decode, "_decode_one", boom)
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
        m.setattr(decode, "_decode_one", boom)
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
    # data_dir / manual_dir as spec options: the config's data.target can carry them
    via_spec = data.load(f"tfds:metanas_tiny_png?data_dir={ddir}", split="train", cache_dir=False)
    np.testing.assert_array_equal(via_spec.images, tr.images)
    with pytest.raises(ValueError, match="data_dir given twice"):
        data.load(f"tfds:metanas_tiny_png?data_dir={ddir}", data_dir=ddir, cache_dir=False)
    with pytest.raises(ValueError, match=r"unknown option 'dir'.*takes only data_dir=, manual_dir="):
        data.load(f"tfds:metanas_tiny_png?dir={ddir}", cache_dir=False)


def test_tfds_prepare_without_tensorflow_is_a_clear_error(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    try:
        import tensorflow  # noqa: F401

        pytest.skip("TensorFlow is installed")
    except ImportError:
        pass
    _tiny_tfds_builders()
    with pytest.raises(ImportError, match=r"needs TensorFlow to prepare.*metanas-jax\[tensorflow\]") as e:
        data.load(f"tfds:metanas_tiny_array?data_dir={tmp_path / 'tfds'}", split="train", cache_dir=False)
    assert "\n" not in str(e.value) and "pip install" in str(e.value)


# --------------------------------------------------------------------------- IDX, npz, carve


def _idx_bytes(arr: np.ndarray, code: int = 0x08) -> bytes:
    dtype = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}[code]
    head = bytes([0, 0, code, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return head + np.ascontiguousarray(arr, dtype=dtype).tobytes()


def _mnist_like(seed=0, n_train=12, n_test=6, hw=(7, 5), classes=3):
    rng = np.random.default_rng(seed)
    xs = {s: rng.integers(0, 256, (n,) + hw, dtype=np.uint8) for s, n in (("train", n_train), ("test", n_test))}
    ys = {s: (np.arange(len(x)) % classes).astype(np.uint8) for s, x in xs.items()}
    return xs, ys


def make_idx(root: Path, gz=False, seed=0, **kw) -> tuple[Path, dict, dict]:
    import gzip

    root.mkdir(parents=True, exist_ok=True)
    xs, ys = _mnist_like(seed, **kw)
    for split, prefix in (("train", "train"), ("test", "t10k")):
        for name, blob in ((f"{prefix}-images-idx3-ubyte", _idx_bytes(xs[split])),
                           (f"{prefix}-labels-idx1-ubyte", _idx_bytes(ys[split]))):
            if gz:
                (root / f"{name}.gz").write_bytes(gzip.compress(blob))
            else:
                (root / name).write_bytes(blob)
    return root, xs, ys


def test_idx_round_trip_and_folder_detection(tmp_path):
    plain, xs, ys = make_idx(tmp_path / "mnist")
    gz, _, _ = make_idx(tmp_path / "mnist_gz", gz=True)
    for spec in (f"idx:{plain}", f"idx:{gz}", f"folder:{plain}", f"folder:{gz}"):
        tr = data.load(spec, split="train", cache_dir=False)
        te = data.load(spec, split="test", cache_dir=False)
        assert tr.images.shape == (12, 7, 5, 1) and te.images.shape == (6, 7, 5, 1), spec
        np.testing.assert_array_equal(tr.images[..., 0], xs["train"])
        np.testing.assert_array_equal(te.labels, ys["test"])
        assert tr.class_names == te.class_names == ("0", "1", "2") and tr.meta == {}
    assert len(data.load(f"idx:{plain}", split="all", cache_dir=False)) == 18
    # resized loads go through the cache; the folder and idx specs name the same data
    cdir = tmp_path / "cache"
    small = data.load(f"idx:{gz}", split="test", cache_dir=cdir, image_size=4)
    assert small.images.shape == (6, 4, 4, 1) and len(list(cdir.glob("idx-*.npz"))) == 1
    assert data.same_dataset(f"folder:{plain}", f"idx:{plain}/")
    assert not data.same_dataset(f"idx:{plain}", f"idx:{gz}")
    # a gzipped copy next to the unpacked file is fine (the unpacked one is read)
    import gzip
    (plain / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"not even idx"))
    assert len(data.load(f"idx:{plain}", split="train", cache_dir=False)) == 12
    # EMNIST-style prefixes and a split-less pair (carved)
    em = tmp_path / "emnist"
    em.mkdir()
    (em / "emnist-letters-train-images-idx3-ubyte").write_bytes(_idx_bytes(xs["train"]))
    (em / "emnist-letters-train-labels-idx1-ubyte").write_bytes(_idx_bytes(ys["train"] + 1))
    assert data.load(f"idx:{em}", split="train", cache_dir=False).class_names == ("1", "2", "3")
    one = tmp_path / "one"
    one.mkdir()
    (one / "images-idx3-ubyte").write_bytes(_idx_bytes(xs["train"]))
    (one / "labels-idx1-ubyte").write_bytes(_idx_bytes(ys["train"]))
    te = data.load(f"idx:{one}?test_fraction=0.25", split="test", cache_dir=False)
    assert len(te) == 3 and te.class_counts().tolist() == [1, 1, 1]


def test_idx_errors_name_the_file(tmp_path):

    def fresh(name):
        return make_idx(tmp_path / name)[0]

    root = fresh("magic")
    (root / "train-images-idx3-ubyte").write_bytes(b"\x01\x02\x08\x03" + b"\0" * 20)
    with pytest.raises(ValueError, match=r"magic.*train-images-idx3-ubyte is not an IDX file"):
        data.load(f"idx:{root}", split="train", cache_dir=False)
    root = fresh("code")
    (root / "t10k-images-idx3-ubyte").write_bytes(b"\0\0\x07\x03" + b"\0" * 20)
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte: unknown IDX type code 0x07"):
        data.load(f"idx:{root}", split="test", cache_dir=False)
    root = fresh("trunc")
    p = root / "train-images-idx3-ubyte"
    p.write_bytes(p.read_bytes()[:-10])
    with pytest.raises(ValueError, match=r"idx3-ubyte is truncated: .*12x7x5 uint8 .*420 bytes.* 410 bytes"):
        data.load(f"folder:{root}", split="train", cache_dir=False)
    p.write_bytes(p.read_bytes()[:9])
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte is truncated or not an IDX file"):
        data.load(f"idx:{root}", split="train", cache_dir=False)
    root = fresh("extra")
    p = root / "t10k-labels-idx1-ubyte"
    p.write_bytes(p.read_bytes() + b"\0\0")
    with pytest.raises(ValueError, match=r"t10k-labels-idx1-ubyte has 2 bytes too many"):
        data.load(f"idx:{root}", split="train", cache_dir=False)  # every label file is read
    root = fresh("count")
    (root / "train-labels-idx1-ubyte").write_bytes(_idx_bytes(np.zeros(11, np.uint8)))
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte holds 12 images but .*labels-idx1-ubyte holds 11"):
        data.load(f"idx:{root}", split="train", cache_dir=False)
    root = fresh("swapped")
    (root / "train-labels-idx1-ubyte").write_bytes((root / "train-images-idx3-ubyte").read_bytes())
    with pytest.raises(ValueError, match=r"train-labels-idx1-ubyte is not an IDX label file"):
        data.load(f"idx:{root}", split="train", cache_dir=False)
    root = fresh("partner")
    (root / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte has no labels file.*t10k-labels-idx1-ubyte\[\.gz\]"):
        data.load(f"idx:{root}", split="train", cache_dir=False)
    root = make_idx(tmp_path / "badgz", gz=True)[0]
    p = root / "train-images-idx3-ubyte.gz"
    p.write_bytes(p.read_bytes()[:20])
    with pytest.raises(ValueError, match=r"cannot read IDX file .*train-images-idx3-ubyte\.gz"):
        data.load(f"idx:{root}", split="train", cache_dir=False)
    root = fresh("two")
    (root / "emnist-train-images-idx3-ubyte").write_bytes(b"x")
    with pytest.raises(ValueError, match=r"two IDX images files for split 'train'.*folder of its own"):
        data.load(f"idx:{root}", split="train", cache_dir=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=r"no IDX files found in .*empty.*train-images-idx3-ubyte"):
        data.load(f"idx:{empty}", cache_dir=False)
    with pytest.raises(FileNotFoundError, match="folder of IDX files not found"):
        data.load(f"idx:{tmp_path / 'nowhere'}", cache_dir=False)
    with pytest.raises(ValueError, match=r"already has splits \['test', 'train'\]"):
        data.load(f"idx:{fresh('carve')}?test_fraction=0.2", cache_dir=False)


def test_npz_round_trip(tmp_path):
    xs, ys = _mnist_like(1)
    keras = tmp_path / "keras.npz"  # NHW uint8, (N, 1) labels
    np.savez(keras, x_train=xs["train"], y_train=ys["train"][:, None], x_test=xs["test"], y_test=ys["test"])
    tr = data.load(f"npz:{keras}", split="train", cache_dir=False)
    assert tr.images.shape == (12, 7, 5, 1) and tr.class_names == ("0", "1", "2")
    np.testing.assert_array_equal(tr.images[..., 0], xs["train"])
    np.testing.assert_array_equal(tr.labels, ys["train"])
    assert len(data.load(f"npz:{keras}", split="all", cache_dir=False)) == 18
    # NHWC floats in 0..1, one-hot labels, named classes, other key names
    rgb = np.random.default_rng(2).integers(0, 256, (4, 3, 3, 3), dtype=np.uint8)
    named = tmp_path / "named.npz"
    np.savez(named, train_images=rgb.astype(np.float32) / 255, train_labels=np.eye(2, dtype=np.int64)[[0, 1, 1, 0]],
             test_images=rgb[:2].astype(np.float64), test_labels=np.array([1, 1]), class_names=np.array(["ant", "bee"]),
             extra=np.arange(3))
    tr = data.load(f"npz:{named}", split="train", cache_dir=False)
    np.testing.assert_array_equal(tr.images, rgb)
    assert tr.labels.tolist() == [0, 1, 1, 0] and tr.class_names == ("ant", "bee")
    te = data.load(f"npz:{named}", split="test", cache_dir=False, image_size=2)
    assert te.images.shape == (2, 2, 2, 3) and te.labels.tolist() == [1, 1] and te.class_names == ("ant", "bee")
    # images / labels without a split: carved; classes are the label values (sorted)
    flat = tmp_path / "flat.npz"
    np.savez(flat, images=np.concatenate([xs["train"], xs["test"]]), labels=np.r_[ys["train"], ys["test"]] * 10)
    tr = data.load(f"npz:{flat}?test_fraction=0.5&seed=3", split="train", cache_dir=False)
    te = data.load(f"npz:{flat}?test_fraction=0.5&seed=3", split="test", cache_dir=False)
    assert (len(tr), len(te)) == (9, 9) and tr.class_names == ("0", "10", "20")
    assert te.class_counts().tolist() == [3, 3, 3]
    with pytest.raises(ValueError, match=r"no train/test split; carve one .*'npz:.*flat\.npz\?test_fraction=0\.2'"):
        data.load(f"npz:{flat}", split="train", cache_dir=False)


def test_npz_errors_name_the_file_and_key(tmp_path):
    xs, ys = _mnist_like(1)

    def npz(name, **arrays):
        p = tmp_path / f"{name}.npz"
        np.savez(p, **arrays)
        return f"npz:{p}"

    with pytest.raises(ValueError, match=r"missing\.npz: key 'x_test' has no matching labels key \(expected 'y_test'"):
        data.load(npz("missing", x_train=xs["train"], y_train=ys["train"], x_test=xs["test"]), cache_dir=False)
    with pytest.raises(ValueError, match=r"upper\.npz: key 'Y_test' has no matching images key \(expected 'X_test'\)"):
        data.load(npz("upper", X_train=xs["train"], Y_train=ys["train"], Y_test=ys["test"]), cache_dir=False)
    with pytest.raises(ValueError, match=r"noimg\.npz has no image array.*x_train.*found keys \['a', 'b'\]"):
        data.load(npz("noimg", a=xs["train"], b=ys["train"]), cache_dir=False)
    nchw = np.zeros((12, 3, 8, 8), np.uint8)
    with pytest.raises(ValueError, match=r"nchw\.npz key 'x_train'.*\(12, 3, 8, 8\).*channels-first"):
        data.load(npz("nchw", x_train=nchw, y_train=ys["train"]), split="train", cache_dir=False)
    with pytest.raises(ValueError, match=r"shape\.npz key 'x_train': images must be .*got shape \(12,\)"):
        data.load(npz("shape", x_train=np.zeros(12), y_train=ys["train"]), split="train", cache_dir=False)
    with pytest.raises(ValueError, match=r"range\.npz key 'images'.*0\.\.255.*got -1\.0\.\.2\.0"):
        data.load(npz("range", images=np.full((12, 2, 2), 2.0) - np.eye(2)[None] * 3, labels=ys["train"]) +
                  "?test_fraction=0.2", split="train", cache_dir=False)
    with pytest.raises(ValueError, match=r"count\.npz key 'x_train' holds 12 images but key 'y_train' holds 5"):
        data.load(npz("count", x_train=xs["train"], y_train=ys["train"][:5]), split="train", cache_dir=False)
    with pytest.raises(ValueError, match=r"onehot\.npz key 'y_train': labels of shape \(12, 3\) must be one-hot"):
        data.load(npz("onehot", x_train=xs["train"], y_train=np.ones((12, 3))), split="train", cache_dir=False)
    with pytest.raises(ValueError, match=r"mixed\.npz mixes arrays without a split \('images'\) and split ones"):
        data.load(npz("mixed", images=xs["train"], labels=ys["train"], x_test=xs["test"], y_test=ys["test"]),
                  cache_dir=False)
    with pytest.raises(ValueError, match=r"names\.npz key 'y_train': labels must lie in \[0, 2\).*'class_names'"):
        data.load(npz("names", x_train=xs["train"], y_train=ys["train"], class_names=np.array(["a", "b"])),
                  split="train", cache_dir=False)
    with pytest.raises(ValueError, match=r"twice\.npz: keys 'train_images' and 'x_train' both hold the images"):
        data.load(npz("twice", train_images=xs["train"], x_train=xs["train"], y_train=ys["train"]), cache_dir=False)
    obj = tmp_path / "obj.npz"
    np.savez(obj, x_train=np.array([xs["train"][0], None], dtype=object), y_train=ys["train"][:2])
    with pytest.raises(ValueError, match=r"cannot read key 'x_train' of .*obj\.npz"):
        data.load(f"npz:{obj}", split="train", cache_dir=False)
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match=r"cannot read .*junk\.npz as a NumPy \.npz archive"):
        data.load(f"npz:{junk}", cache_dir=False)
    npy = tmp_path / "one.npz"
    with open(npy, "wb") as f:
        np.save(f, xs["train"])
    with pytest.raises(ValueError, match=r"one\.npz is a single \.npy array"):
        data.load(f"npz:{npy}", cache_dir=False)
    with pytest.raises(FileNotFoundError, match=r"\.npz file not found: .*gone\.npz"):
        data.load(f"npz:{tmp_path / 'gone.npz'}", cache_dir=False)
    with pytest.raises(ValueError, match=r"spec 'npz:' needs a path"):
        data.load("npz:", cache_dir=False)


def test_carve_indices_stratified_deterministic_disjoint():
    from metanas_jax.data.carve import carve_indices

    labels = np.repeat(np.arange(5), [1, 2, 10, 37, 100])
    tr, te = carve_indices(labels, 0.2, seed=0)
    assert np.intersect1d(tr, te).size == 0 and np.array_equal(np.union1d(tr, te), np.arange(len(labels)))
    assert np.bincount(labels[te], minlength=5).tolist() == [0, 1, 2, 7, 20]  # >= 1 test, >= 1 train per class
    again = carve_indices(labels, 0.2, seed=0)
    assert np.array_equal(again[1], te) and not np.array_equal(carve_indices(labels, 0.2, seed=1)[1], te)
    # a class's draw depends on its own members only
    more = np.r_[labels, np.full(7, 9)]
    assert np.array_equal(carve_indices(more, 0.2, seed=0)[1][:len(te)], te)


def test_folder_carve(tmp_path, monkeypatch):
    flat = tmp_path / "flat"
    for c_i, (cls, n) in enumerate((("ant", 10), ("bee", 5), ("cow", 1))):
        (flat / cls).mkdir(parents=True)
        for i in range(n):
            _img(100 * c_i + i, mode="L").save(flat / cls / f"{i:02d}.png")
    spec = f"folder:{flat}?test_fraction=0.2&seed=0"
    # the config string carries the options (no comma: it would become a tuple)
    from metanas_jax.config import apply_overrides, load_config

    cfg = apply_overrides(load_config(), [f"data.target={spec}"])
    assert cfg.data.target == spec
    cdir = tmp_path / "cache"
    tr = data.load(cfg.data.target, split="train", cache_dir=cdir)
    te = data.load(spec, split="test", cache_dir=cdir)
    al = data.load(f"folder:{flat}", split="all", cache_dir=False)
    assert tr.class_names == te.class_names == al.class_names == ("ant", "bee", "cow")
    assert te.class_counts().tolist() == [2, 1, 0] and tr.class_counts().tolist() == [8, 4, 1]
    dtr, dte = set(data.image_digests(tr.images)), set(data.image_digests(te.images))
    assert not dtr & dte and dtr | dte == set(data.image_digests(al.images))
    # deterministic: uncached, cached and resized loads agree on which images are test
    with monkeypatch.context() as m:
        m.setattr(decode, "_decode_one", lambda *a, **k: (_ for _ in ()).throw(AssertionError("decoded")))
        np.testing.assert_array_equal(data.load(spec, split="test", cache_dir=cdir).images, te.images)
    np.testing.assert_array_equal(data.load(spec, split="test", cache_dir=False).images, te.images)
    small = data.load(spec, split="test", cache_dir=cdir, image_size=4)
    np.testing.assert_array_equal(small.images, data.resize_images(te.images, 4))
    other = data.load(f"folder:{flat}?seed=1&test_fraction=0.2", split="test", cache_dir=cdir)
    assert set(data.image_digests(other.images)) != dte
    tar = make_tar(flat, tmp_path / "flat.tar")
    np.testing.assert_array_equal(
        data.load(f"folder:{tar}?test_fraction=0.2", split="test", cache_dir=False).images, te.images)
    assert len(data.load(spec, split="all", cache_dir=False)) == 16
    assert data.same_dataset(spec, f"folder:{flat}/") and not data.same_dataset(spec, f"folder:{tar}")
    # bad options
    with pytest.raises(ValueError, match=r"carved dataset has 'train', 'test' and 'all'"):
        data.load(spec, split="val", cache_dir=False)
    for bad, msg in [
        (f"folder:{flat}?test_fraction=1.5", r"test_fraction must be a number in \(0, 1\), got '1.5'"),
        (f"folder:{flat}?test_fraction=0.2&seed=x", r"seed must be a non-negative integer, got 'x'"),
        (f"folder:{flat}?seed=1", r"seed= needs test_fraction="),
        (f"folder:{flat}?test_frac=0.2", r"unknown option 'test_frac'.*takes only test_fraction=, seed="),
        (f"folder:{flat}?seed=1&seed=2", r"option 'seed' given twice"),
        ("digits?test_fraction=0.2", r"'digits:' takes no options"),
    ]:
        with pytest.raises(ValueError, match=msg):
            data.load(bad, cache_dir=False)
    split_root = make_folder(tmp_path / "split", per_class=1)
    with pytest.raises(ValueError, match=r"already has splits \['test', 'train'\].*drop it"):
        data.load(f"folder:{split_root}?test_fraction=0.2", cache_dir=False)


def test_spec_parsing():
    from metanas_jax.data.specs import parse_spec

    s = parse_spec("Folder:/data/a?b/c ?test_fraction=0.2&seed=%31")
    assert (s.kind, s.arg, s.options, s.base) == ("folder", "/data/a?b/c", {"test_fraction": "0.2", "seed": "1"},
                                                  "folder:/data/a?b/c")
    assert parse_spec("folder:/what?").arg == "/what?" and parse_spec("folder:/x?y").options == {}
    assert parse_spec("tfds:mnist?data_dir=/a%26b").options == {"data_dir": "/a&b"}
    assert data.same_dataset("tfds:mnist?data_dir=/a", "tfds:mnist") and not data.same_dataset("digits", "tfds:mnist")


# --------------------------------------------------------------------------- shared data


def _no_decoding(monkeypatch):
    """Make any image decoding fail: a load that passes read the cache (no timing needed)."""

    def boom(*a, **k):
        raise AssertionError("decoded images although the cache holds them")
    monkeypatch.setattr(decode, "_decode_one", boom)


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
