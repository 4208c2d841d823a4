"""Real-training search benchmark on the macro32 space, at a CPU-sized scale.

1. NAS experience: ``--tasks`` small tasks (``--n-classes`` classes, 64 train / 16 val
   images) drawn from the source dataset; ``--archs`` random architectures per task,
   each trained ``--train-steps`` full-batch Adam steps through the supernet (all pairs
   vmapped, one compiled program); stored as ``.npz`` (reused if ``--experience`` exists).
2. The evaluator (image-set task encoder) is meta-trained on the experience; Kendall tau on
   held-out experience tasks before / after adaptation is printed.
3. The strategy is meta-learned by ES on simulated searches over the experience.
4. Target task (train / val split of the target dataset, ``--target-train`` /
   ``--target-val`` images): every method searches with the same budget; each candidate is
   trained on the target train split and scored on its val split, all candidates of a round
   in one compiled program. The best architecture of each method is then retrained the same
   way and scored on the held-out test split.

    python benchmarks/bench_search_macro.py --quick        # minutes on 2 CPU cores
    python benchmarks/bench_search_macro.py                # defaults below
"""
from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import time
from pathlib import Path

import jax
import numpy as np

from metanas_jax import data, spaces
from metanas_jax.search import (Evaluator, EvaluatorConfig, MetaSearcher, RandomSearch,
                                RegularizedEvolution, StrategyConfig, StrategyParams,
                                TrainConfig, collect_experience, load_experience,
                                make_evaluate_fn, meta_train_strategy, run_search,
                                save_experience, scratch_searcher, tau_before_after)
from metanas_jax.search import searcher as searcher_mod
from metanas_jax.search.experience import _compilations, compact_params


def search_compilations() -> int:
    return _compilations(searcher_mod._ask) + _compilations(searcher_mod._tell)


def results_n(budget: int) -> list[int]:
    """Evaluation counts at which the best validation accuracy so far is reported."""
    return [n for n in (10, 20, 50, 100, 200) if n < budget] + [budget]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", default="digits", help="data.load spec of the meta-training source")
    ap.add_argument("--target", default="digits", help="data.load spec of the target task")
    ap.add_argument("--image-size", type=int, default=8)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--widths", default="8,16,24,32")
    ap.add_argument("--tasks", type=int, default=40)
    ap.add_argument("--n-classes", type=int, default=5)
    ap.add_argument("--archs", type=int, default=32, help="architectures per experience task")
    ap.add_argument("--train-steps", type=int, default=30)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--chunk", type=int, default=None,
                    help="(task, architecture) pairs per compiled call (default: --batch, so a "
                         "round has no padding pairs)")
    ap.add_argument("--meta-steps", type=int, default=500)
    ap.add_argument("--es-iterations", type=int, default=4)
    ap.add_argument("--budget", type=int, default=200)
    ap.add_argument("--batch", type=int, default=20)
    ap.add_argument("--target-train", type=int, default=500)
    ap.add_argument("--target-val", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--experience", default="runs/experience_macro.npz")
    ap.add_argument("--json", default=None)
    ap.add_argument("--costs", action="store_true",
                    help="record every experience architecture's parameter count (slow: host side)")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # the library's progress lines
    if args.quick:
        args.tasks, args.archs, args.train_steps, args.meta_steps = 8, 8, 10, 100
        args.es_iterations, args.budget, args.batch = 1, 40, 10
        args.target_train, args.target_val = 200, 100
    args.chunk = args.chunk or args.batch
    command = "python " + " ".join(shlex.quote(a) for a in ["benchmarks/bench_search_macro.py", *sys.argv[1:]])
    print(f"devices: {jax.devices()}", flush=True)
    widths = tuple(int(w) for w in args.widths.split(","))
    space = spaces.get("macro32", layers=args.layers, widths=widths, stem_width=widths[0])
    train_cfg = TrainConfig(steps=args.train_steps, lr=args.lr, chunk=args.chunk)
    key = jax.random.key(args.seed)
    k_tasks, k_exp, k_meta, k_tau, k_es, k_eval, k_search = jax.random.split(key, 7)

    # 1. experience
    exp_path = Path(args.experience)
    if exp_path.is_file():
        exp = load_experience(exp_path)
        print(f"experience loaded from {exp_path}: {exp.scores.shape}", flush=True)
    else:
        src = data.load(args.source, split="train")
        pool = data.ClassPool.from_dataset(src, image_size=args.image_size, per_class="min")
        tasks = data.sample_nas_tasks(k_tasks, pool, args.n_classes, 64, 16, args.tasks)
        t0 = time.perf_counter()
        exp = collect_experience(k_exp, space, tasks, args.archs, num_classes=args.n_classes,
                                 train=train_cfg, log=True, costs=args.costs)
        print(f"experience: {args.tasks} tasks x {args.archs} archs in "
              f"{time.perf_counter() - t0:.0f}s (incl. compile and costs); mean acc "
              f"{exp.scores.mean():.3f}, per-task spread {exp.scores.std(1).mean():.3f}", flush=True)
        save_experience(exp_path, exp)
    n_train_tasks = max(1, int(round(0.8 * exp.num_tasks)))
    train_data = exp.meta_tasks(slice(0, n_train_tasks))
    held_data = exp.meta_tasks(slice(n_train_tasks, None))

    # target task
    tr = data.load(args.target, split="train", image_size=args.image_size)
    te = data.load(args.target, split="test", image_size=args.image_size)
    val_fraction = min(0.5, (args.target_val + 10 * tr.num_classes) / len(tr))
    target = data.target_task(tr, te, val_fraction=val_fraction, n_train=args.target_train,
                              n_val=args.target_val, seed=args.seed)
    tb = target.as_task_batch(args.image_size)
    task = tuple(a[0] for a in tb)
    n_cls = int(tr.num_classes)
    test_task = (task[0], task[1],
                 *[a[0] for a in data.task_batch_from_datasets(target.train, target.test,
                                                               args.image_size)[2:]])

    # 2. evaluator
    ev = Evaluator(space, EvaluatorConfig(task_input="images", max_classes=max(n_cls, args.n_classes),
                                          hidden=(64, 64)))
    t0 = time.perf_counter()
    params, losses = ev.meta_train(k_meta, train_data, steps=args.meta_steps, batch_tasks=8,
                                   n_support=min(16, exp.scores.shape[1] // 2),
                                   n_query=exp.scores.shape[1] - min(16, exp.scores.shape[1] // 2),
                                   lr=1e-3, log_every=100)
    t_meta = time.perf_counter() - t0
    n_obs = min(10, exp.scores.shape[1] - 2)
    tau = tau_before_after(ev, params, held_data, k_tau, n_observed=n_obs, repeats=5)
    print(f"evaluator: meta-trained {args.meta_steps} steps in {t_meta:.0f}s; held-out tasks "
          f"Kendall tau before {tau['before'].mean():.3f}, after {n_obs} observations "
          f"{tau['after'].mean():.3f}", flush=True)

    # 3. strategy
    scfg = StrategyConfig(n_random=128, n_starts=16)
    task_input = (task[0][:64], task[1][:64])
    meta = MetaSearcher(evaluator=ev, params=params, strategy=StrategyParams.create(),
                        task=task_input, batch_size=args.batch, capacity=args.budget,
                        strategy_config=scfg)
    t0 = time.perf_counter()
    es_rounds = max(1, min(3, exp.scores.shape[1] // args.batch))
    meta_es, trace = meta_train_strategy(
        meta.replace(capacity=es_rounds * args.batch, task=jax.tree.map(lambda a: a[0], train_data.task)),
        jax.tree.map(lambda a: a[:, :64], train_data.task), train_data.zs, train_data.scores,
        k_es, rounds=es_rounds, iterations=args.es_iterations, population=4, seeds=1)
    print(f"strategy ES {time.perf_counter() - t0:.0f}s: {meta_es.strategy.describe()}", flush=True)

    # 4. search the target task
    methods = {
        "random search": RandomSearch(space, args.batch, args.budget),
        "regularized evolution": RegularizedEvolution(space, args.batch, args.budget,
                                                      population_size=min(20, args.budget // 2),
                                                      tournament_size=5),
        "searcher, no meta-training": scratch_searcher(space, batch_size=args.batch,
                                                       capacity=args.budget, fit_steps=100,
                                                       config=EvaluatorConfig(task_input="none", hidden=(64, 64)),
                                                       strategy_config=scfg),
        "meta-searcher": meta.replace(strategy=meta_es.strategy),
    }
    results = {}
    final_eval = make_evaluate_fn(space, test_task, k_eval, num_classes=n_cls, train=train_cfg)
    for name, s in methods.items():
        evaluate = make_evaluate_fn(space, task, k_eval, num_classes=n_cls, train=train_cfg)
        c0 = search_compilations()
        t0 = time.perf_counter()
        state = run_search(s, evaluate, args.budget, k_search)
        wall = time.perf_counter() - t0
        h = state.history
        i = int(np.argmax(np.asarray(h.scores)))
        z = np.asarray(h.zs[i])
        test_acc = float(final_eval(z[None])[0])
        st = evaluate.stats
        results[name] = {
            "best_val": float(h.scores[i]), "test_of_best": test_acc,
            "found_at": i + 1, "arch": str(space.decode(z)),
            "evals_per_s": st["evaluations"] / st["seconds"], "wall_s": wall,
            "train_compilations": st["compilations"],
            "search_compilations": search_compilations() - c0,
            "params_of_best": compact_params(space, z, n_cls, task[0].shape[1:]),
            "best_val_at": {n: float(np.max(np.asarray(h.scores)[:n])) for n in results_n(args.budget)},
        }
        print(f"{name}: {results[name]}", flush=True)

    lines = [f"macro32 ({args.layers} layers, widths {widths}), target {args.target} "
             f"{args.image_size}x{args.image_size}, {args.target_train} train / {args.target_val} val, "
             f"budget {args.budget} (batch {args.batch}), candidates trained {args.train_steps} steps",
             "", "| method | best val acc after " + " / ".join(str(n) for n in results_n(args.budget))
             + " evals | found at eval | test acc of best | params of best | candidate evals/s | "
             "compilations (training program / ask+tell) | search wall s |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        after = " / ".join(f"{v:.3f}" for v in r["best_val_at"].values())
        lines.append(f"| {name} | {after} | {r['found_at']} | {r['test_of_best']:.3f} | "
                     f"{r['params_of_best']} | {r['evals_per_s']:.2f} | {r['train_compilations']} / {r['search_compilations']} | "
                     f"{r['wall_s']:.0f} |")
    lines += ["", f"Experience: {exp.num_tasks} tasks x {exp.scores.shape[1]} archs from {args.source}; "
              f"evaluator Kendall tau on held-out tasks {tau['before'].mean():.3f} before, "
              f"{tau['after'].mean():.3f} after {n_obs} observations.", "", f"Command: `{command}`"]
    print("\n" + "\n".join(lines))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"command": command, "results": results,
                       "tau": {k: v.tolist() for k, v in tau.items()}, "devices": str(jax.devices())},
                      f, indent=1)


if __name__ == "__main__":
    main()
