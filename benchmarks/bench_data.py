"""Load and task-sampling times of metanas_jax.data.

Prints: first (decode) and cached load time of Omniglot (official zips), CIFAR-10 (the
image-folder tar) and Tiny ImageNet (the 101,000-JPEG train split of the image-folder zip)
from ../shared/data, with the cache in a fresh temporary folder; for Tiny ImageNet also
images/s, the number of decode threads (``METANAS_DATA_WORKERS``, default the CPU count, at
most 8) and, for comparison, the first load with one decode thread (skipped when the
estimate exceeds ``--one-worker-limit`` seconds); the Omniglot protocol split; 5-way 1-shot
episode sampling (32 tasks) and NAS-task sampling (100 tasks x 64 train + 16 val) after the
first (compiling) call.  Writes every figure, the command, the machine, the load average
(/proc/loadavg) and the date to ``--out`` (JSON).

    python benchmarks/bench_data.py [--data-dir ../shared/data] [--repeats 20] \
        [--out benchmarks/results/bench_data.json] [--one-worker-limit 180]

Without the shared data it falls back to scikit-learn digits for the sampling figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402

from metanas_jax import data  # noqa: E402
from metanas_jax.data import decode as _decode  # noqa: E402

ROWS: list[dict] = []


def loadavg() -> list[float]:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except (OSError, ValueError):
        return [round(x, 2) for x in os.getloadavg()]


def cpu_name() -> str:
    try:
        return next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor()


def load_row(what, t_first, t_cached=None, **extra) -> None:
    print(f"{what:<55s} {t_first:6.2f} s" + ("" if t_cached is None else f" | cached {t_cached:6.2f} s")
          + "".join(f" | {k} {v}" for k, v in extra.items()))
    ROWS.append({"kind": "load", "what": what, "first_s": round(t_first, 3),
                 "cached_s": None if t_cached is None else round(t_cached, 3), **extra})


def tinyimagenet(zip_path: Path, cache: str, one_worker_limit: float) -> None:
    """Tiny ImageNet train split (101,000 32x32 JPEGs in a zip): decode with the default
    thread pool, cached reload, and the first load with one decode thread for comparison."""
    spec = f"folder:{zip_path}"
    workers = _decode._num_workers()
    ds, t1 = timed(lambda: data.load(spec, split="train", cache_dir=cache))
    n = len(ds.labels)
    _, t2 = timed(lambda: data.load(spec, split="train", cache_dir=cache))
    entry = max(Path(cache).glob("folder-tiny-imagenet-32*-train-*.npz"), key=lambda p: p.stat().st_mtime)
    shape = "x".join(str(d) for d in ds.images.shape[1:])
    load_row(f"tinyimagenet zip train ({n}, {shape}), first load", t1, t2, decode_threads=workers,
             images_per_s=round(n / t1), cache_entry_mb=round(entry.stat().st_size / 1e6))
    ROWS[-1].update(images=n, classes=len(ds.class_names))
    if workers <= 1:
        return
    # Decoding is at best `workers` times faster than one thread; the zip reading is serial.
    estimate = t1 * workers + t1
    if estimate > one_worker_limit:
        print(f"(tinyimagenet one-decode-thread comparison skipped: estimated up to {estimate:.0f} s "
              f"> --one-worker-limit {one_worker_limit:.0f} s)")
        return
    # Order default, one thread, default again (each into a fresh cache folder), so that a
    # warm page cache or a change in the machine's load does not favour one side.
    old = os.environ.get("METANAS_DATA_WORKERS")
    os.environ["METANAS_DATA_WORKERS"] = "1"
    try:
        with tempfile.TemporaryDirectory(prefix="metanas_bench_cache1_") as cache1:
            _, t3 = timed(lambda: data.load(spec, split="train", cache_dir=cache1))
    finally:
        if old is None:
            del os.environ["METANAS_DATA_WORKERS"]
        else:
            os.environ["METANAS_DATA_WORKERS"] = old
    with tempfile.TemporaryDirectory(prefix="metanas_bench_cache2_") as cache2:
        _, t4 = timed(lambda: data.load(spec, split="train", cache_dir=cache2))
    load_row(f"tinyimagenet zip train ({n}), first load, 1 decode thread", t3, decode_threads=1,
             images_per_s=round(n / t3))
    load_row(f"tinyimagenet zip train ({n}), first load again, {workers} threads", t4, decode_threads=workers,
             images_per_s=round(n / t4), speedup_vs_1_thread=round(t3 / ((t1 + t4) / 2), 2))


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    jax.block_until_ready(out) if isinstance(out, (tuple, jax.Array)) else None
    return out, time.perf_counter() - t0


def sampling(name, fn, repeats):
    _, first = timed(lambda: fn(jax.random.key(0)))
    times = []
    for i in range(repeats):
        _, t = timed(lambda: fn(jax.random.key(i + 1)))
        times.append(t)
    print(f"{name:<80s} first call {first:6.2f} s | then median {statistics.median(times) * 1e3:7.1f} ms "
          f"(min {min(times) * 1e3:.1f} ms, {repeats} calls)")
    ROWS.append({"kind": "sampling", "what": name, "first_call_s": round(first, 3),
                 "median_ms": round(statistics.median(times) * 1e3, 2), "min_ms": round(min(times) * 1e3, 2),
                 "calls": repeats})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bench_data.json"),
                    help="JSON file for the figures ('' to skip)")
    ap.add_argument("--one-worker-limit", type=float, default=180.0,
                    help="skip Tiny ImageNet's one-decode-thread comparison when its estimate exceeds this (s)")
    args = ap.parse_args()
    command = "python " + shlex.join([os.path.relpath(__file__, os.getcwd()), *sys.argv[1:]])
    load_before = loadavg()
    started = time.strftime("%Y-%m-%d %H:%M:%S")

    print(f"machine: {platform.machine()}, {os.cpu_count()} CPU cores, jax {jax.__version__} on "
          f"{jax.devices()[0].platform}; python {platform.python_version()}; load average {load_before}")
    omni_dir = args.data_dir / "omniglot"
    cifar_tar = args.data_dir / "cifar10" / "cifar10-jpg.tar"
    tin_zip = args.data_dir / "tinyimagenet" / "tiny-imagenet-32.zip"
    with tempfile.TemporaryDirectory(prefix="metanas_bench_cache_") as cache:
        pools = {}
        if (omni_dir / "images_background.zip").exists():
            spec = f"omniglot:{omni_dir}"
            ds, t1 = timed(lambda: data.load(spec, split="all", cache_dir=cache))
            _, t2 = timed(lambda: data.load(spec, split="all", cache_dir=cache))
            load_row("omniglot all (1623 x 20, 105x105), first load", t1, t2)
            _, t3 = timed(lambda: data.load(spec, split="all", cache_dir=cache, image_size=28))
            _, t4 = timed(lambda: data.load(spec, split="all", cache_dir=cache, image_size=28))
            load_row("omniglot all, image_size=28, first load", t3, t4)
            splits, t5 = timed(lambda: data.omniglot_splits(ds, image_size=28))
            load_row("omniglot_splits (resize 105->28, rotations)", t5, classes=
                     f"{splits[0].num_classes}/{splits[1].num_classes}/{splits[2].num_classes}")
            pools["omniglot train (4800 classes, 28x28)"] = splits[0]
        else:
            print(f"(no Omniglot at {omni_dir})")
        if cifar_tar.exists():
            spec = f"folder:{cifar_tar}"
            tr, t1 = timed(lambda: data.load(spec, split="train", cache_dir=cache))
            _, t2 = timed(lambda: data.load(spec, split="train", cache_dir=cache))
            te, t3 = timed(lambda: data.load(spec, split="test", cache_dir=cache))
            _, t4 = timed(lambda: data.load(spec, split="test", cache_dir=cache))
            load_row("cifar10 tar train (50000, 32x32x3), first load", t1, t2)
            load_row("cifar10 tar test (10000), first load", t3, t4)
            task, t5 = timed(lambda: data.target_task(tr, te, val_fraction=0.1))
            load_row("target_task (45000/5000/10000)", t5)
            pool, t6 = timed(lambda: data.ClassPool.from_dataset(tr))
            load_row("ClassPool.from_dataset(cifar10 train)", t6)
            pools["cifar10 train (10 classes x 5000)"] = pool
        else:
            print(f"(no CIFAR-10 tar at {cifar_tar})")
        if tin_zip.exists():
            tinyimagenet(tin_zip, cache, args.one_worker_limit)
        else:
            print(f"(no Tiny ImageNet zip at {tin_zip})")
        if not pools:
            pools["digits train (class_split, 6 classes)"] = data.class_split(data.load("digits", split="all"))[0]

        for name, pool in pools.items():
            if pool.num_classes >= 5 and pool.per_class >= 16:
                sampling(f"episodes 5-way 1-shot 15-query x32, {name}",
                         lambda k, p=pool: data.sample_episodes(k, p, n_way=5, k_shot=1, n_query=15, num_tasks=32),
                         args.repeats)
            n_cls = min(10, pool.num_classes)
            sampling(f"NAS tasks 100 x (64+16), {n_cls} cls, {name}",
                     lambda k, p=pool, n=n_cls: data.sample_nas_tasks(k, p, n_classes=n, n_train=64, n_val=16,
                                                                      num_tasks=100),
                     max(3, args.repeats // 4))
    if args.out:
        out = {"benchmark": "bench_data", "command": command,
               "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "platform": platform.platform(),
                           "python": platform.python_version(), "jax": jax.__version__,
                           "backend": jax.default_backend(),
                           "loadavg_before": load_before, "loadavg_after": loadavg()},
               "settings": {"data_dir": str(args.data_dir), "repeats": args.repeats,
                            "one_worker_limit_s": args.one_worker_limit,
                            "METANAS_DATA_WORKERS": os.environ.get("METANAS_DATA_WORKERS")},
               "date": started, "rows": ROWS}
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
        print(f"wrote {args.out}")
    print(f"load average before {load_before}, after {loadavg()}")
    print(f"reproduce: {command}")


if __name__ == "__main__":
    main()
