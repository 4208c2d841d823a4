"""Where the time of one meta-step goes: an XLA profile, summarised per op kind.

    python benchmarks/profile_meta.py                       # conv4, MAML, meta-batch 16
    python benchmarks/profile_meta.py --algorithm fomaml --top 20
    python benchmarks/profile_meta.py --model darts --algorithm fomaml --meta-batch 2 --inner-steps 1

Same shapes as ``benchmarks/suite.py`` (Omniglot-style 5-way 1-shot, 15 queries, 28x28,
5 inner steps). Runs the compiled step once under ``jax.profiler.trace`` and sums the
duration of every XLA op (thunk) in the trace, grouped by kind (``dot`` = matmuls,
``copy``/``transpose``, ``concatenate``, elementwise ``fusion``s, ...), then lists the
largest single ops with the HLO they compute, so a slow op can be traced back to the line
of model code in its ``op_name``. On a multi-threaded CPU ops may overlap, so the sum can
exceed the step's wall time.
"""
from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from metanas_jax import meta  # noqa: E402
from suite import episodes, learner_for, load, meta_config  # noqa: E402


def kind(name: str) -> str:
    base = re.sub(r"\.\d+$", "", name)
    if base.startswith(("ynn", "dot", "xnn")):
        return "dot (matmul)"
    if "copy" in base or "transpose" in base:
        return "copy / transpose"
    return base


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="conv4", help="conv4 or darts (the suite's DARTS supernet)")
    ap.add_argument("--darts-channels", type=int, default=8)
    ap.add_argument("--darts-cells", type=int, default=3)
    ap.add_argument("--algorithm", default="maml")
    ap.add_argument("--meta-batch", type=int, default=16)
    ap.add_argument("--inner-steps", type=int, default=5)
    ap.add_argument("--conv-impl", default="auto")
    ap.add_argument("--strategy", default="auto", help="task strategy (DARTS: map on CPU if auto)")
    ap.add_argument("--top", type=int, default=12)
    args = ap.parse_args(argv)

    learner = learner_for(args.model, args)
    cfg = meta_config(args.model, learner, args.algorithm, args.inner_steps, args.strategy, "")
    batch = episodes(args.meta_batch, jnp.float32)
    state = meta.init_state(learner, cfg, jax.random.PRNGKey(1), batch.support_x[0])
    t0 = time.perf_counter()
    compiled = meta.make_meta_step(learner, cfg).lower(state, batch).compile()
    compile_s = time.perf_counter() - t0
    jax.block_until_ready(compiled(state, batch))
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(state, batch))
    step_s = time.perf_counter() - t0

    with tempfile.TemporaryDirectory() as d:
        with jax.profiler.trace(d, create_perfetto_trace=True):
            jax.block_until_ready(compiled(state, batch))
        trace = json.load(gzip.open(glob.glob(f"{d}/**/*.trace.json.gz", recursive=True)[0]))
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    per_op, per_kind = collections.Counter(), collections.Counter()
    for e in events:
        name = e.get("name", "")
        if e.get("ph") != "X" or name.startswith(("ThunkExecutor", "$", "Slinky")) or "while" in name:
            continue
        per_op[name] += e.get("dur", 0) / 1e6
        per_kind[kind(name)] += e.get("dur", 0) / 1e6
    total = sum(per_kind.values())
    hlo = compiled.as_text()

    print(f"# command: python benchmarks/profile_meta.py {' '.join(argv or sys.argv[1:])}".rstrip())
    print(f"# {args.model} {args.algorithm} mb{args.meta_batch}, {args.inner_steps} inner steps; backend "
          f"{jax.default_backend()}; load {load()}")
    print(f"# compile {compile_s:.1f} s; step {step_s:.3f} s (unprofiled); op time in trace {total:.3f} s")
    print("\n| op kind | seconds | share |\n|---|---|---|")
    for k, v in per_kind.most_common(10):
        print(f"| {k} | {v:.3f} | {100 * v / total:.1f}% |")
    print("\n| largest ops | seconds | shape and source |\n|---|---|---|")
    for k, v in per_op.most_common(args.top):
        m = re.search(r"%" + re.escape(k) + r" = (\S+) [^\n]*?op_name=\"([^\"]*)\"", hlo)
        what = f"`{m.group(1)}` {m.group(2)}" if m else ""
        print(f"| {k} | {v:.3f} | {what} |")


if __name__ == "__main__":
    main()
