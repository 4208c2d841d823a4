"""Meta-step and compile time per model, algorithm, meta-batch and execution strategy.

    python benchmarks/bench_meta.py --models conv4 --algorithms maml,fomaml,reptile \
        --meta-batch 16,32 --variants matmul:vmap,xla:vmap,xla:unroll,xla:map \
        [--scan-unroll auto,1]

A variant is ``conv_impl:task_strategy`` (conv_impl only affects conv4; the DARTS
supernet uses flax convolutions). Times are wall-clock on synthetic episodes of the
configured shape (timing depends on shapes only): compile = lower + compile of the jitted
meta-step; step = mean of ``--repeats`` steps after one warm-up step. ``--scan-unroll``
values are ``MetaConfig.scan_unroll``'s (the inner loop's unroll; ``auto`` is the default).
Prints one row per setting and the command that reproduces it; ``--json`` saves the rows.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from metanas_jax import data, meta, spaces  # noqa: E402


def episodes(key, tasks, n_way, k_shot, n_query, size, channels):
    ks, kq = jax.random.split(key)
    s, q = n_way * k_shot, n_way * n_query
    return data.TaskBatch(
        jax.random.normal(ks, (tasks, s, size, size, channels)),
        jnp.tile(jnp.arange(n_way, dtype=jnp.int32).repeat(k_shot), (tasks, 1)),
        jax.random.normal(kq, (tasks, q, size, size, channels)),
        jnp.tile(jnp.arange(n_way, dtype=jnp.int32).repeat(n_query), (tasks, 1)))


def learner_for(args, model, impl):
    if model == "conv4":
        return meta.conv4_learner(args.n_way, channels=args.channels, downsample=args.downsample,
                                  conv_impl=impl)
    if model == "darts":
        return meta.supernet_learner(spaces.get("darts"), args.n_way, channels=args.darts_channels,
                                     cells=args.darts_cells)
    raise ValueError(f"unknown model {model!r}; known: conv4, darts")


def bench_one(args, model, algorithm, tasks, impl, strategy, unroll="auto"):
    learner = learner_for(args, model, impl)
    cfg = meta.MetaConfig(algorithm=algorithm, inner_steps=args.inner_steps, inner_lr=0.1,
                          strategy=strategy, scan_unroll=unroll,
                          **({"arch_update": "alternating", "arch_inner_lr": 0.1,
                              "arch_meta_lr": 3e-4} if learner.searches else {}))
    batch = episodes(jax.random.PRNGKey(0), tasks, args.n_way, args.k_shot, args.n_query,
                     args.image_size, args.image_channels)
    state = meta.init_state(learner, cfg, jax.random.PRNGKey(1), batch.support_x[0])
    step = meta.make_meta_step(learner, cfg)
    t0 = time.perf_counter()
    compiled = step.lower(state, batch).compile()
    compile_s = time.perf_counter() - t0
    state, m = compiled(state, batch)
    jax.block_until_ready(m)
    t0 = time.perf_counter()
    for _ in range(args.repeats):
        state, m = compiled(state, batch)
        jax.block_until_ready(m)
    step_s = (time.perf_counter() - t0) / args.repeats
    return {"model": model, "algorithm": algorithm, "meta_batch": tasks,
            "conv_impl": impl if model == "conv4" else "flax",
            "strategy": meta.resolve_strategy(strategy, learner.cpu_strategy),
            "scan_unroll": unroll, "compile_s": round(compile_s, 2), "step_s": round(step_s, 4),
            "loss": float(m["loss"])}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="conv4")
    ap.add_argument("--algorithms", default="maml,fomaml,reptile")
    ap.add_argument("--meta-batch", default="16,32")
    ap.add_argument("--variants", default="matmul:vmap,xla:vmap,xla:unroll,xla:map")
    ap.add_argument("--inner-steps", type=int, default=5)
    ap.add_argument("--n-way", type=int, default=5)
    ap.add_argument("--k-shot", type=int, default=1)
    ap.add_argument("--n-query", type=int, default=15)
    ap.add_argument("--image-size", type=int, default=28)
    ap.add_argument("--image-channels", type=int, default=1)
    ap.add_argument("--channels", type=int, default=64)
    ap.add_argument("--downsample", default="pool")
    ap.add_argument("--darts-channels", type=int, default=8)
    ap.add_argument("--darts-cells", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--scan-unroll", default="auto", help="comma list of auto or ints >= 1")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    try:
        unrolls = [u if u == "auto" else int(u) for u in args.scan_unroll.split(",")]
    except ValueError:
        ap.error(f"--scan-unroll wants 'auto' or ints >= 1, got {args.scan_unroll!r}")
    command = "python " + " ".join([os.path.relpath(__file__, os.getcwd())] + sys.argv[1:])
    print(f"# {command}\n# backend {jax.default_backend()}, jax {jax.__version__}, "
          f"{os.cpu_count()} CPUs", flush=True)
    print("model  algorithm  meta_batch  conv_impl  strategy  scan_unroll  compile_s  step_s",
          flush=True)
    rows = []
    for model in args.models.split(","):
        variants = args.variants.split(",")
        if model != "conv4":  # conv_impl does not apply: keep each strategy once
            variants = list(dict.fromkeys("xla:" + v.split(":")[1] for v in variants))
        for algorithm in args.algorithms.split(","):
            for tasks in (int(t) for t in args.meta_batch.split(",")):
                for v in variants:
                    impl, _, strategy = v.partition(":")
                    for unroll in unrolls:
                        r = bench_one(args, model, algorithm, tasks, impl, strategy, unroll)
                        rows.append(r)
                        print(f"{r['model']}  {r['algorithm']}  {r['meta_batch']}  "
                              f"{r['conv_impl']}  {r['strategy']}  {r['scan_unroll']}  "
                              f"{r['compile_s']}  {r['step_s']}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"command": command, "backend": jax.default_backend(), "rows": rows,
                       "args": vars(args)}, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
