"""Which candidate-training proxy carries signal? Kendall tau against a long training.

Samples ``--archs`` architectures of the config's space, trains each one long on the
target (the final-training recipe, ``--ref-epochs`` epochs on ``--ref-train`` training
images: at least 10x the steps of the longest proxy, checked) and scores it on
``--val`` validation images; then scores the same architectures with every short proxy
(full-batch Adam, ``--proxy-steps`` x ``--proxy-images`` x ``--proxy-lrs``, by default the
config's ``candidate.lr``) on the
same validation images, and reports per proxy: Kendall tau with the long training, seconds
per architecture, tau per second, mean accuracy vs chance. The reference scores are kept in
``--workdir`` (a rerun resumes).

    python benchmarks/proxy_fidelity.py --config configs/tinyimagenet_to_cifar10.py \\
        --workdir runs/fidelity --out benchmarks/results/proxy_fidelity_cifar10_cpu.json
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
import time
from pathlib import Path

import jax
import numpy as np

from metanas_jax import builders, data
from metanas_jax import search as S
from metanas_jax import train as T
from metanas_jax.config import apply_overrides, load_config, to_dict

sys.path.insert(0, str(Path(__file__).resolve().parent))
from transfer_comparison import machine, write_json  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/tinyimagenet_to_cifar10.py")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--archs", type=int, default=32)
    ap.add_argument("--ref-epochs", type=int, default=11)
    ap.add_argument("--ref-train", type=int, default=5000)
    ap.add_argument("--val", type=int, default=1000)
    ap.add_argument("--proxy-steps", default="5,10,20,40")
    ap.add_argument("--proxy-images", default="64,256")
    ap.add_argument("--proxy-lrs", default="", help="comma list of Adam rates (default: the config's candidate.lr)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--out", default="")
    args = ap.parse_args(argv)
    command = "python " + shlex.join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])])
    cfg = load_config(args.config)
    apply_overrides(cfg, args.set)
    prep = builders.prepare(cfg)
    space, target = prep.space, prep.target
    val = data.subsample(target.val, min(args.val, len(target.val)), args.seed + 1)
    ref_train = data.subsample(target.train, min(args.ref_train, len(target.train)), args.seed)
    fcfg = dataclasses.replace(T.FinalTrainConfig.from_config(cfg.train), epochs=args.ref_epochs)
    ref_steps = args.ref_epochs * max(len(ref_train) // fcfg.batch_size, 1)
    steps = [int(s) for s in args.proxy_steps.split(",")]
    images = [int(s) for s in args.proxy_images.split(",")]
    lrs = [float(s) for s in args.proxy_lrs.split(",")] if args.proxy_lrs else [float(cfg.candidate.lr)]
    if ref_steps < 10 * max(steps):
        ap.error(f"the long training has {ref_steps} steps, fewer than 10x the longest proxy's "
                 f"{max(steps)}; raise --ref-epochs or --ref-train")
    key = jax.random.key(args.seed)
    zs = np.asarray(space.sample(jax.random.fold_in(key, 1), args.archs))

    wd = Path(args.workdir)
    wd.mkdir(parents=True, exist_ok=True)
    ref_path = wd / "reference.json"
    ref = json.loads(ref_path.read_text()) if ref_path.is_file() else {}
    t0 = time.perf_counter()
    for i, z in enumerate(zs):
        if str(i) in ref:
            continue
        arch = space.decode(z)
        t1 = time.perf_counter()
        _, _, _, res = T.train(space, arch, data.TargetTask(ref_train, val, val), fcfg,
                               jax.random.fold_in(key, 100 + i))
        ref[str(i)] = {"arch": str(arch), "val_acc": res["val_acc"], "params": res["params"],
                       "seconds": time.perf_counter() - t1}
        write_json(ref_path, ref)
        print(f"reference {i + 1}/{len(zs)}: val {res['val_acc']:.4f} ({ref[str(i)]['seconds']:.0f}s) {arch}",
              flush=True)
    ref_scores = np.asarray([ref[str(i)]["val_acc"] for i in range(len(zs))])
    ref_seconds = float(np.mean([ref[str(i)]["seconds"] for i in range(len(zs))]))

    proxies, tasks = {}, {}
    for n in images:
        sub = data.subsample(target.train, n, args.seed + 2)
        task = tuple(a[0] for a in data.task_batch_from_datasets(sub, val))
        for s in steps:
            for lr in lrs:
                name = f"{s} steps x {n} images" + (f" at lr {lr:g}" if len(lrs) > 1 else "")
                proxies[name] = S.TrainConfig(steps=s, lr=lr, chunk=int(cfg.candidate.chunk))
                tasks[name] = task
    res = S.proxy_fidelity(space, None, zs, jax.random.fold_in(key, 2), proxies, ref_scores,
                           num_classes=prep.num_classes, tasks=tasks)
    chance = 1.0 / prep.num_classes
    print(f"\nlong training: {ref_steps} SGD steps of {fcfg.batch_size} on {len(ref_train)} images "
          f"({args.ref_epochs} epochs), {ref_seconds:.1f} s/arch; val accuracy mean "
          f"{ref_scores.mean():.4f} (range {ref_scores.min():.3f}-{ref_scores.max():.3f}); chance {chance:.2f}")
    print(f"{'proxy':>22s} {'tau':>7s} {'s/arch':>8s} {'tau/s':>7s} {'mean acc':>9s}")
    for name, r in sorted(res.items(), key=lambda kv: -kv[1]["tau_per_second"]):
        print(f"{name:>22s} {r['tau']:7.3f} {r['seconds_per_arch']:8.3f} {r['tau_per_second']:7.3f} "
              f"{r['mean']:9.4f}")
    print(f"command: {command}")
    out = {"command": command, "config": to_dict(cfg), "archs": args.archs, "chance": chance,
           "reference": {"steps": ref_steps, "epochs": args.ref_epochs, "train_images": len(ref_train),
                         "val_images": len(val), "seconds_per_arch": ref_seconds,
                         "scores": ref_scores.tolist(), "archs": [ref[str(i)]["arch"] for i in range(len(zs))]},
           "proxies": res, "machine": machine(), "seconds": time.perf_counter() - t0,
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    if args.out:
        write_json(Path(args.out), out)
        print(f"wrote {args.out}")
    return out


if __name__ == "__main__":
    main()
