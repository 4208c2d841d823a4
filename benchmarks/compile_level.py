"""XLA:CPU compile time of the DARTS supernet's meta-step or meta-test at LLVM -O1 (what
``Learner.compiler_options()`` asks for on CPU) against XLA's default (-O3).

Each measurement is a fresh process (nothing cached between them), the two levels run back
to back in pairs, the order alternating from pair to pair so that a drifting machine
favours neither. A process builds the suite's DARTS learner and Omniglot-style episodes
(``benchmarks/suite.py``: 5-way 1-shot, 15 queries, 28x28x1), then calls the program twice:
XLA's own compile time (``jax_log_compiles``), the first call (trace + compile + run) and the
second (run).

    python benchmarks/compile_level.py --program metatest --pairs 2
    python benchmarks/compile_level.py --program metastep --meta-batch 16 --inner-steps 5 --pairs 1
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)

LEVELS = ("default", "O1")
PROGRAM_NAMES = {"metastep": "jit(meta_step)", "metatest": "jit(run)"}


def measure(args) -> dict:
    """One process's figures (run in a child: the level, ``args.child``, is fixed per process)."""
    import jax

    compiles = []

    class Grab(logging.Handler):
        def emit(self, record):
            m = re.search(r"Finished XLA compilation of (\S+) in ([\d.]+) sec", record.getMessage())
            if m:
                compiles.append((m.group(1), float(m.group(2))))

    logging.getLogger("jax").addHandler(Grab())
    jax.config.update("jax_log_compiles", True)
    import suite
    from metanas_jax import meta
    from metanas_jax.meta import learner as learner_module
    if args.child == "default":  # XLA's own options instead of the library's -O1
        learner_module.SUPERNET_CPU_COMPILER_OPTIONS = {}
    learner = suite.learner_for("darts", args)
    cfg = suite.meta_config("darts", learner, args.algorithm, args.inner_steps, "auto", "auto").replace(
        eval_inner_steps=args.inner_steps)
    batch = suite.episodes(args.meta_batch, jax.numpy.float32)
    state = meta.init_state(learner, cfg, jax.random.PRNGKey(1), batch.support_x[0])
    program = args.program
    if program == "metastep":
        step = meta.make_meta_step(learner, cfg)
        call = lambda: step(state, batch)[1]  # noqa: E731
    else:
        score = meta.make_adapt_and_score(learner, cfg)
        call = lambda: score(state.params, state.arch, batch)  # noqa: E731
    times = []
    for _ in range(2):
        t0 = time.perf_counter()
        jax.block_until_ready(call())
        times.append(time.perf_counter() - t0)
    xla = [s for name, s in compiles if name == PROGRAM_NAMES[program]]
    if len(xla) != 1:
        raise RuntimeError(f"expected one compilation of {PROGRAM_NAMES[program]}, saw {compiles}")
    return {"level": args.child, "options": learner.compiler_options(), "xla_compile_s": xla[0],
            "first_call_s": times[0], "second_call_s": times[1]}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--program", choices=sorted(PROGRAM_NAMES), default="metatest")
    ap.add_argument("--meta-batch", type=int, default=16)
    ap.add_argument("--inner-steps", type=int, default=10,
                    help="inner steps (the meta-step's) or adaptation steps (the meta-test's)")
    ap.add_argument("--algorithm", default="fomaml")
    ap.add_argument("--darts-channels", type=int, default=8)
    ap.add_argument("--darts-cells", type=int, default=3)
    ap.add_argument("--pairs", type=int, default=2)
    ap.add_argument("--json", default="", help="write the figures here")
    ap.add_argument("--child", choices=LEVELS, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(measure(args)))
        return
    if args.pairs < 1:
        raise SystemExit(f"--pairs must be >= 1, got {args.pairs}")
    given = sys.argv[1:] if argv is None else list(argv)
    import suite
    command = suite.announce("compile_level.py", argv)
    rows = []
    for pair in range(args.pairs):
        for level in (LEVELS if pair % 2 == 0 else LEVELS[::-1]):
            p = subprocess.run([sys.executable, os.path.abspath(__file__), *given,
                                "--child", level], capture_output=True, text=True)
            if p.returncode != 0:
                raise SystemExit(f"{level} process failed:\n{p.stderr[-3000:]}")
            row = {"pair": pair, **json.loads(p.stdout.strip().splitlines()[-1]), "load": suite.load()}
            rows.append(row)
            print(f"pair {pair} {level:7s}: XLA compile {row['xla_compile_s']:6.1f} s, first call "
                  f"{row['first_call_s']:6.1f} s, second {row['second_call_s']:6.1f} s", flush=True)
    summary = {}
    for level in LEVELS:
        mine = [r for r in rows if r["level"] == level]
        summary[level] = {k: statistics.mean(r[k] for r in mine)
                          for k in ("xla_compile_s", "first_call_s", "second_call_s")}
    ratio = summary["O1"]["xla_compile_s"] / summary["default"]["xla_compile_s"]
    print(f"mean XLA compile: default {summary['default']['xla_compile_s']:.1f} s, -O1 "
          f"{summary['O1']['xla_compile_s']:.1f} s (x{ratio:.2f}); second call: default "
          f"{summary['default']['second_call_s']:.1f} s, -O1 {summary['O1']['second_call_s']:.1f} s")
    print(f"reproduce: {command}")
    if args.json:
        suite.write_result(args.json, command, program=args.program, meta_batch=args.meta_batch,
                           inner_steps=args.inner_steps, algorithm=args.algorithm,
                           darts_channels=args.darts_channels, darts_cells=args.darts_cells,
                           rows=rows, summary=summary, o1_over_default_compile=ratio)


if __name__ == "__main__":
    main()
