"""Load and task-sampling times of metanas_jax.data.

Prints: first (decode) and cached load time of Omniglot (official zips) and CIFAR-10 (the
image-folder tar) from ../shared/data, with the cache in a fresh temporary folder; the
Omniglot protocol split; 5-way 1-shot episode sampling (32 tasks) and NAS-task sampling
(100 tasks x 64 train + 16 val) after the first (compiling) call.

    python benchmarks/bench_data.py [--data-dir ../shared/data] [--repeats 20]

Without the shared data it falls back to scikit-learn digits for the sampling figures.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402

from metanas_jax import data  # noqa: E402


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()

    print(f"machine: {platform.machine()}, {os.cpu_count()} CPU cores, jax {jax.__version__} on "
          f"{jax.devices()[0].platform}; python {platform.python_version()}")
    omni_dir = args.data_dir / "omniglot"
    cifar_tar = args.data_dir / "cifar10" / "cifar10-jpg.tar"
    with tempfile.TemporaryDirectory(prefix="metanas_bench_cache_") as cache:
        pools = {}
        if (omni_dir / "images_background.zip").exists():
            spec = f"omniglot:{omni_dir}"
            ds, t1 = timed(lambda: data.load(spec, split="all", cache_dir=cache))
            _, t2 = timed(lambda: data.load(spec, split="all", cache_dir=cache))
            print(f"{'omniglot all (1623 x 20, 105x105), first load':<55s} {t1:6.2f} s | cached {t2:6.2f} s")
            _, t3 = timed(lambda: data.load(spec, split="all", cache_dir=cache, image_size=28))
            _, t4 = timed(lambda: data.load(spec, split="all", cache_dir=cache, image_size=28))
            print(f"{'omniglot all, image_size=28, first load':<55s} {t3:6.2f} s | cached {t4:6.2f} s")
            splits, t5 = timed(lambda: data.omniglot_splits(ds, image_size=28))
            print(f"{'omniglot_splits (resize 105->28, rotations)':<55s} {t5:6.2f} s -> "
                  f"{splits[0].num_classes}/{splits[1].num_classes}/{splits[2].num_classes} classes")
            pools["omniglot train (4800 classes, 28x28)"] = splits[0]
        else:
            print(f"(no Omniglot at {omni_dir})")
        if cifar_tar.exists():
            spec = f"folder:{cifar_tar}"
            tr, t1 = timed(lambda: data.load(spec, split="train", cache_dir=cache))
            _, t2 = timed(lambda: data.load(spec, split="train", cache_dir=cache))
            te, t3 = timed(lambda: data.load(spec, split="test", cache_dir=cache))
            _, t4 = timed(lambda: data.load(spec, split="test", cache_dir=cache))
            print(f"{'cifar10 tar train (50000, 32x32x3), first load':<55s} {t1:6.2f} s | cached {t2:6.2f} s")
            print(f"{'cifar10 tar test (10000), first load':<55s} {t3:6.2f} s | cached {t4:6.2f} s")
            task, t5 = timed(lambda: data.target_task(tr, te, val_fraction=0.1))
            print(f"{'target_task (45000/5000/10000)':<55s} {t5:6.2f} s")
            pool, t6 = timed(lambda: data.ClassPool.from_dataset(tr))
            print(f"{'ClassPool.from_dataset(cifar10 train)':<55s} {t6:6.2f} s")
            pools["cifar10 train (10 classes x 5000)"] = pool
        else:
            print(f"(no CIFAR-10 tar at {cifar_tar})")
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
    print("reproduce: python benchmarks/bench_data.py")


if __name__ == "__main__":
    main()
