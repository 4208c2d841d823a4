"""Does meta-learning on source tasks make search on a new dataset better? Several seeds.

For every seed: the main job's stages ``meta-train`` and ``search`` (every method of
``search.methods`` with the same budget of real evaluations on the target) in
``WORKDIR/seed<S>``; then every method's best architecture, and the config's hand-designed
reference architecture, trained with one common recipe (the config's ``train`` section,
``--epochs`` to override) on the target train split (a stratified subsample of
``--common-train`` images, if given) and tested once. Prints and writes
(``--out``) mean +- std over seeds of: the best proxy validation accuracy after 10 / 20 /
50 evaluations, the common training's validation and test accuracy, the evaluator's
cross-validated rank correlation and regret, and the run's warnings; plus a plot of the
best validation accuracy vs evaluations (``--plot``).

    python benchmarks/transfer_comparison.py --config configs/tinyimagenet_to_cifar10.py \\
        --seeds 0,1,2 --common-train 10000 --workdir runs/t2c \\
        --out benchmarks/results/tinyimagenet_to_cifar10_cpu.json --plot benchmarks/results/tinyimagenet_to_cifar10_cpu.png

Workdirs resume like ``metanas run``: a killed benchmark rerun with the same arguments
continues; common trainings already done are read from ``WORKDIR/common.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import jax
import numpy as np

from metanas_jax import builders, pipeline, workdir
from metanas_jax import search as S
from metanas_jax import train as T
from metanas_jax.config import apply_overrides, check_workdir, load_config, to_dict


def machine() -> dict:
    cpu = ""
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu or platform.processor(), "cores": os.cpu_count(), "jax": jax.__version__,
            "backend": jax.default_backend(), "load_avg": list(os.getloadavg())}


def best_after(scores, k):
    return float(np.max(scores[:k])) if len(scores) else float("nan")


def mean_std(xs):
    xs = np.asarray([x for x in xs if x is not None and np.isfinite(x)], np.float64)
    return {"mean": float(xs.mean()) if xs.size else None,
            "std": float(xs.std(ddof=1)) if xs.size > 1 else None, "n": int(xs.size)}


def write_json(path: Path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    tmp.replace(path)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/tinyimagenet_to_cifar10.py")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--epochs", type=int, default=0, help="common training epochs (0: the config's)")
    ap.add_argument("--common-train", type=int, default=0,
                    help="training images of the common training (stratified subsample; 0: all)")
    ap.add_argument("--reference", default="", help="hand-designed architecture string "
                    "(default: the config module's REFERENCE_ARCH for its size, if any)")
    ap.add_argument("--checkpoints", default="10,20,50", help="evaluation counts to report")
    ap.add_argument("--finalists", type=int, default=1,
                    help="> 1: also train each method's k best-scored candidates with the common "
                         "recipe and report the test accuracy of the one with the best validation "
                         "accuracy (search.finalists, applied to the stored searches)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="config override (repeatable), as metanas's --config.KEY=VALUE")
    ap.add_argument("--out", default="")
    ap.add_argument("--plot", default="")
    args = ap.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    if not seeds:
        ap.error("--seeds: give at least one seed")
    ks = [int(k) for k in args.checkpoints.split(",") if k.strip()]
    root = Path(args.workdir)
    root.mkdir(parents=True, exist_ok=True)
    command = "python " + shlex.join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])])
    t_all = time.perf_counter()

    base = load_config(args.config)
    apply_overrides(base, args.set)
    reference = args.reference
    if not reference:
        import importlib.util
        path = Path(args.config.partition(":")[0])
        spec = importlib.util.spec_from_file_location("cfgmod", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        size = args.config.partition(":")[2] or "cpu"
        reference = getattr(mod, "REFERENCE_ARCH", {}).get(size, "")

    runs, prep = {}, None
    for seed in seeds:
        cfg = load_config(args.config)
        # the search stage hands over its proxy winner: --finalists applies the config's
        # search.finalists here, with the common training, to the stored searches
        apply_overrides(cfg, ["search.finalists=1", "search.finalist_images=0", *args.set, f"seed={seed}"])
        cfg.runtime.progress = False
        wd = root / f"seed{seed}"
        t0 = time.perf_counter()
        check_workdir(cfg, wd)
        prep = builders.prepare(cfg)
        meta = pipeline.meta_train(cfg, wd, prep)
        srch = pipeline.search(cfg, wd, prep)
        runs[seed] = {"cfg": cfg, "prep": prep, "meta": meta, "search": srch,
                      "seconds": {"meta-train": meta.get("seconds"), "search": srch.get("seconds")}}
        print(f"seed {seed}: stages done in {time.perf_counter() - t0:.0f}s "
              f"(meta-train {meta.get('seconds', 0):.0f}s, search {srch.get('seconds', 0):.0f}s)", flush=True)
        # (recomputed from the record: a resumed stage keeps the warnings of its own code)
        meta["warnings"] = workdir.evaluator_warnings(meta)
        for w in meta["warnings"]:
            print(f"  warning: {w}", flush=True)

    # one common training of every method's best (and the reference) per seed
    common_path = root / "common.json"
    common = json.loads(common_path.read_text()) if common_path.is_file() else {}
    methods = list(runs[seeds[0]]["search"]["results"])
    for seed in seeds:
        r = runs[seed]
        cfg, prep = r["cfg"], r["prep"]
        fcfg, target = builders.shortened_training(cfg, prep.target, args.epochs, args.common_train)
        done = lambda v: (v.get("epochs") == fcfg.epochs and v.get("train_images") == len(target.train))

        def common_train(key, choices, seed=seed, fcfg=fcfg, target=target, prep=prep, done=done):
            """The common training of ``choices`` (cached in common.json under ``key``; an
            architecture trained before for this seed is not trained again)."""
            if key in common and done(common[key]):
                return common[key]
            same = next((v for k, v in common.items()
                         if k.startswith(f"{seed}/") and v["choices"] == choices and done(v)), None)
            if same is None:
                t0 = time.perf_counter()
                arch = prep.space.make_arch(choices)
                _, _, hist, res = T.train(prep.space, arch, target, fcfg,
                                          jax.random.fold_in(jax.random.key(seed), 7))
                same = {"choices": list(choices), "arch": str(arch), "val_acc": res["val_acc"],
                        "test_acc": res["test_acc"], "params": res["params"], "epochs": fcfg.epochs,
                        "train_images": len(target.train),
                        "seconds": time.perf_counter() - t0}
            common[key] = same
            write_json(common_path, common)
            return same

        todo = {m: r["search"]["results"][m]["best_choices"] for m in methods}
        if reference:
            todo["reference"] = list(prep.space.from_string(reference).choices)
        for name, choices in todo.items():
            v = common_train(f"{seed}/{name}", choices)
            print(f"seed {seed} {name:10s} test {v['test_acc']:.4f} val {v['val_acc']:.4f} "
                  f"params {v['params']}  {v['arch']}", flush=True)
        # finalists: each method's k best-scored candidates through the same training, the one
        # with the best validation accuracy kept (search.finalists, applied to the stored search)
        for name in methods if args.finalists > 1 else ():
            res = r["search"]["results"][name]
            idx = S.finalists(res["scores"], res["choices"], args.finalists, res.get("diverged", []))
            trained = [common_train(f"{seed}/{name}/finalist{j}", res["choices"][i]) for j, i in enumerate(idx)]
            best = max(trained, key=lambda v: v["val_acc"])
            common[f"{seed}/{name}/finalists"] = {**best, "finalists": [v["arch"] for v in trained],
                                                   "finalist_val": [v["val_acc"] for v in trained]}
            write_json(common_path, common)
            print(f"seed {seed} {name:10s} finalists val {[round(v['val_acc'], 4) for v in trained]} -> "
                  f"test {best['test_acc']:.4f}  {best['arch']}", flush=True)

    # aggregate
    per_method = {}
    for m in methods + (["reference"] if reference else []):
        row = {}
        if m != "reference":
            curves = [np.maximum.accumulate(np.asarray(runs[s]["search"]["results"][m]["scores"])) for s in seeds]
            for k in ks:
                row[f"best_val_after_{k}"] = mean_std([best_after(c, k) for c in curves])
            row["curves"] = [c.tolist() for c in curves]
            taus = []
            for s_ in seeds:
                res = runs[s_]["search"]["results"][m]
                pairs = [(p, y) for p, y in zip(res["predicted"], res["scores"]) if p is not None]
                if len(pairs) > 2:
                    taus.append(S.kendall_tau(*zip(*pairs)))
            if taus:  # how well the searcher's evaluator ranked its candidates on the target
                row["target_tau"] = mean_std(taus)
        row["common_test_acc"] = mean_std([common[f"{s}/{m}"]["test_acc"] for s in seeds])
        row["common_val_acc"] = mean_std([common[f"{s}/{m}"]["val_acc"] for s in seeds])
        if args.finalists > 1 and m != "reference":
            row["finalists_test_acc"] = mean_std([common[f"{s}/{m}/finalists"]["test_acc"] for s in seeds])
            row["finalists_archs"] = [common[f"{s}/{m}/finalists"]["arch"] for s in seeds]
        row["archs"] = [common[f"{s}/{m}"]["arch"] for s in seeds]
        per_method[m] = row
    cv = [runs[s]["meta"].get("cv") for s in seeds]
    cv_keys = ("before", "after", "regret_before", "regret_after", "regret_random", "linear_tau")
    evaluator = {k: mean_std([c["mean"][k] for c in cv if c and k in c["mean"]]) for k in cv_keys}
    evaluator["experience_mean_acc"] = mean_std([runs[s]["meta"].get("experience_mean_acc") for s in seeds])
    warnings = {str(s): runs[s]["meta"]["warnings"] for s in seeds}

    print("\n== transfer comparison ==")
    fin = args.finalists > 1
    print(f"{'method':10s} " + " ".join(f"{'val@' + str(k):>15s}" for k in ks) + f" {'common test':>15s}"
          + (f" {f'top-{args.finalists} test':>15s}" if fin else ""))
    fmt = lambda d: f"{d['mean']:.4f}+-{(d['std'] or 0):.4f}" if d["mean"] is not None else "-"
    for m, row in per_method.items():
        cols = [fmt(row[f"best_val_after_{k}"]) if f"best_val_after_{k}" in row else "-" for k in ks]
        print(f"{m:10s} " + " ".join(f"{c:>15s}" for c in cols) + f" {fmt(row['common_test_acc']):>15s}"
              + (f" {fmt(row['finalists_test_acc']) if 'finalists_test_acc' in row else '-':>15s}" if fin else ""))
    for m, row in per_method.items():
        if "target_tau" in row:
            print(f"{m}: Kendall tau of predicted vs measured proxy accuracy of its candidates on the "
                  f"target {fmt(row['target_tau'])}")
    print("evaluator (cross-validated over source tasks): "
          + ", ".join(f"{k} {fmt(v)}" for k, v in evaluator.items()))
    print(f"command: {command}")

    out = {"command": command, "config": to_dict(base), "seeds": seeds, "reference_arch": reference,
           "common_epochs": int(args.epochs) or int(base.train.epochs),
           "common_train_images": int(args.common_train) or "all", "finalists": args.finalists,
           "methods": per_method,
           "evaluator": evaluator, "warnings": warnings, "cv": {str(s): c for s, c in zip(seeds, cv)},
           "stage_seconds": {str(s): runs[s]["seconds"] for s in seeds}, "common": common,
           "machine": machine(), "wall_seconds": time.perf_counter() - t_all,
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    if args.out:
        write_json(Path(args.out), out)
        print(f"wrote {args.out}")
    if args.plot:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(5.5, 3.8))
        for m in methods:
            c = np.asarray(per_method[m]["curves"])
            mu, sd = c.mean(0), c.std(0)
            x = np.arange(1, c.shape[1] + 1)
            ax.plot(x, mu, label=m)
            ax.fill_between(x, mu - sd, mu + sd, alpha=0.15)
        ax.set_xlabel("evaluations on the target")
        ax.set_ylabel("best proxy validation accuracy")
        ax.set_title(f"mean +- std over {len(seeds)} seeds")
        ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)
        print(f"wrote {args.plot}")
    return out


if __name__ == "__main__":
    main()
