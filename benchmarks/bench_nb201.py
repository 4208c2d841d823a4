"""NAS-Bench-201 tabular benchmark: every search method, many seeds, one table.

Meta-train the evaluator on the CIFAR-100 and ImageNet16-120 columns, meta-learn the
strategy by evolution strategies on simulated searches over those two tables (as a new,
unknown table), then search CIFAR-10 with every method over ``--seeds`` seeds (all seeds of
a method are one compiled, vmapped program). A candidate's score is its table accuracy
(the table holds test accuracy only, so search and report use the same number, as in
tabular-NAS comparisons). Prints a markdown table and the command that produced it.

    python benchmarks/bench_nb201.py            # full run (50 seeds, budget 200)
    python benchmarks/bench_nb201.py --quick    # smoke run
"""
from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from metanas_jax.search import (Evaluator, EvaluatorConfig, MetaSearcher, MetaTasks,
                                RandomSearch, RegularizedEvolution, StrategyConfig,
                                StrategyParams, best_so_far, load_nb201, meta_train_strategy,
                                scan_search, scratch_searcher, tau_before_after)

CHECKPOINTS = (10, 20, 50, 200)


def run_method(searcher, table, target, rounds, seeds, key):
    run = jax.jit(jax.vmap(lambda k: scan_search(searcher, lambda z: table.lookup(z, target),
                                                 rounds, k)))
    t0 = time.perf_counter()
    state = jax.block_until_ready(run(jax.random.split(key, seeds)))
    seconds = time.perf_counter() - t0
    bsf = np.asarray(best_so_far(state.history))
    opt = table.optimum(target)
    hit = bsf >= opt - 1e-6
    first = np.where(hit.any(1), hit.argmax(1) + 1, np.nan)
    return {"best_at": {n: float(bsf[:, n - 1].mean() * 100) for n in CHECKPOINTS if n <= bsf.shape[1]},
            "std_at_end": float(bsf[:, -1].std() * 100),
            "hits": int(hit[:, -1].sum()), "seeds": seeds,
            "evals_to_opt": float(np.nanmean(first)) if hit.any() else None,
            "seconds": seconds}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--table", default=None, help="nats_bench_tss.csv (default: ../shared/data/...)")
    ap.add_argument("--seeds", type=int, default=50)
    ap.add_argument("--budget", type=int, default=200)
    ap.add_argument("--batch", type=int, default=10)
    ap.add_argument("--meta-steps", type=int, default=1500)
    ap.add_argument("--es-iterations", type=int, default=10)
    ap.add_argument("--es-rounds", type=int, default=5)
    ap.add_argument("--scratch-fit-steps", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--quick", action="store_true", help="tiny settings (smoke test)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # the library's progress lines
    if args.quick:
        args.seeds, args.budget, args.meta_steps, args.es_iterations = 4, 50, 100, 2
    if args.budget % args.batch:
        raise SystemExit(f"--budget ({args.budget}) must be a multiple of --batch ({args.batch})")
    command = "python " + " ".join(shlex.quote(a) for a in ["benchmarks/bench_nb201.py", *sys.argv[1:]])
    key = jax.random.key(args.seed)
    k_eval, k_es, k_tau, k_search = jax.random.split(key, 4)
    rounds = args.budget // args.batch

    table = load_nb201(args.table)
    sp = table.space
    Z = table.all_encodings()
    train = MetaTasks(zs=jnp.stack([Z, Z]),
                      scores=jnp.stack([table.lookup(Z, "cifar100"), table.lookup(Z, "imagenet16-120")]),
                      task=jnp.array([0, 1]))
    held_out = MetaTasks(zs=Z[None], scores=table.lookup(Z, "cifar10")[None], task=jnp.array([-1]))

    # 1. the evaluator, meta-trained on the two source tables
    ev = Evaluator(sp, EvaluatorConfig(task_input="table", num_tables=2))
    t0 = time.perf_counter()
    params, losses = ev.meta_train(k_eval, train, steps=args.meta_steps, log_every=500)
    t_meta = time.perf_counter() - t0
    tau = tau_before_after(ev, params, held_out, k_tau, n_observed=20, n_eval=2000, repeats=5)
    print(f"evaluator meta-training: {args.meta_steps} steps in {t_meta:.0f}s; CIFAR-10 "
          f"(held out) Kendall tau before adaptation {tau['before'][0]:.3f}, after 20 "
          f"observations {tau['after'][0]:.3f}; MSE {tau['mse_before'][0]:.4f} -> "
          f"{tau['mse_after'][0]:.4f}", flush=True)

    # 2. the strategy, meta-learned on simulated searches over the source tables
    scfg = StrategyConfig()
    meta = MetaSearcher(evaluator=ev, params=params, strategy=StrategyParams.create(),
                        task=jnp.array(-1), batch_size=args.batch, capacity=args.budget,
                        strategy_config=scfg)
    t0 = time.perf_counter()
    meta_es, trace = meta_train_strategy(
        meta.replace(capacity=args.es_rounds * args.batch), jnp.array([-1, -1]), train.zs,
        train.scores, k_es, rounds=args.es_rounds, iterations=args.es_iterations,
        population=8, seeds=2, log_every=5)
    t_es = time.perf_counter() - t0
    learned = meta_es.strategy
    print(f"strategy ES: {args.es_iterations} iterations in {t_es:.0f}s: {learned.describe()} "
          f"(outcome {trace[0]:.3f} -> {trace[-1]:.3f})", flush=True)

    # 3. every method on CIFAR-10, same seeds
    methods = {
        "random search": RandomSearch(sp, args.batch, args.budget),
        "regularized evolution": RegularizedEvolution(sp, args.batch, args.budget,
                                                      population_size=20, tournament_size=5),
        "searcher, no meta-training": scratch_searcher(sp, batch_size=args.batch,
                                                       capacity=args.budget,
                                                       fit_steps=args.scratch_fit_steps,
                                                       strategy_config=scfg),
        "meta-searcher, default strategy": meta,
        "meta-searcher (meta-trained evaluator + strategy)": meta.replace(strategy=learned),
    }
    results = {}
    for name, s in methods.items():
        results[name] = r = run_method(s, table, "cifar10", rounds, args.seeds, k_search)
        print(f"{name}: {r}", flush=True)

    opt = table.optimum("cifar10") * 100
    cols = [n for n in CHECKPOINTS if n <= args.budget]
    lines = [f"NAS-Bench-201, CIFAR-10 (optimum {opt:.2f}%), {args.seeds} seeds, batch {args.batch}, "
             f"budget {args.budget}: mean best test accuracy (%) after N evaluations",
             "",
             "| method | " + " | ".join(f"N={n}" for n in cols) + " | reached optimum | mean evals to optimum (seeds that reached it) | wall s (all seeds, incl. compile) |",
             "|---|" + "---|" * (len(cols) + 3)]
    for name, r in results.items():
        e2o = f"{r['evals_to_opt']:.1f}" if r["evals_to_opt"] is not None else "-"
        lines.append(f"| {name} | " + " | ".join(f"{r['best_at'][n]:.2f}" for n in cols)
                     + f" | {r['hits']}/{r['seeds']} | {e2o} | {r['seconds']:.1f} |")
    lines += ["", f"Evaluator: meta-trained {args.meta_steps} steps on CIFAR-100 + ImageNet16-120 "
              f"({t_meta:.0f}s); Kendall tau on CIFAR-10 (held out) {tau['before'][0]:.3f} before "
              f"adaptation, {tau['after'][0]:.3f} after 20 observations. Strategy ES "
              f"({t_es:.0f}s): {', '.join(f'{k} {v:.3g}' for k, v in learned.describe().items())}.",
              "", f"Command: `{command}`"]
    print("\n" + "\n".join(lines))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"command": command, "results": results, "tau": {k: v.tolist() for k, v in tau.items()},
                       "strategy": learned.describe(), "es_trace": trace.tolist(),
                       "meta_train_seconds": t_meta, "es_seconds": t_es}, f, indent=1)


if __name__ == "__main__":
    main()
