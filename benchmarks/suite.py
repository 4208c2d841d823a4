"""Benchmark suite: one command, one table.

    python benchmarks/suite.py            # default: hours on a 2-core CPU (the DARTS rows)
    python benchmarks/suite.py --models conv4            # minutes
    python benchmarks/suite.py --quick    # a few minutes: fewer settings and repeats
    python benchmarks/suite.py --dtype bf16 --meta-batch 16,32,64   # e.g. on a GPU

Rows:
* ``peak/matmulN/f32``, ``peak/matmulN/bf16``: the machine's measured matmul FLOP/s (an
  N x N matmul, float32 accumulation, median of repeats) in both precisions; the one of
  the run (``--dtype``, or bf16 with ``--conv-impl matmul_bf16``) is the reference for
  every ``%peak``.
* ``meta/<model>/<algorithm>/mb<T>``: one jitted meta-step (conv4 and the DARTS supernet;
  MAML, first-order MAML, Reptile; meta-batch T): compile time (lower + compile, once),
  median step time and spread (min..max over ``--repeats`` steps after one warm-up), step
  time with compile amortised over 1,000 steps, FLOPs of the compiled step from XLA's cost
  analysis, achieved FLOP/s and its share of the peak. With several devices the tasks are
  sharded over all of them (``metanas_jax.parallel``). The DARTS rows run last and, on CPU,
  map over tasks (``--darts-strategy``): one compiled copy of the inner loop instead of
  one per task.
* ``torch/conv4/maml/mb<T>``: the same second-order MAML step in PyTorch
  (``benchmarks/torch_maml.py``), under bf16 autocast when ``--conv-impl matmul_bf16``
  gives JAX's convolutions bf16 operands; ``ratio`` = PyTorch step / JAX step (compile
  amortised over 1,000 steps), i.e. how many times faster JAX is (skipped without torch).
* ``torch/darts/<algorithm>/mb<T>``: the same DARTS-supernet meta-step in PyTorch
  (``benchmarks/torch_darts.py``), one per DARTS algorithm benchmarked, ``--warmup``
  untimed steps as the JAX DARTS rows; ``ratio`` as for conv4.
* ``search/<space>``: candidate evaluations per second of ``search.make_evaluate_fn`` over
  a search of ``--search-rounds`` rounds (first round, which compiles, excluded), and the
  compilations per search.

Shapes: Omniglot-style 5-way 1-shot, 15 queries, 28x28x1, 5 inner steps (timing depends
on shapes only, so episodes are synthetic). The header gives the machine, load and command.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from metanas_jax import data, files, meta, parallel, spaces  # noqa: E402

AMORTIZE = 1000


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def announce(script: str, argv=None) -> str:
    """The command that reproduces a small benchmark script's run (printed with the machine
    and the load, returned for its results file)."""
    given = sys.argv[1:] if argv is None else list(argv)
    command = "python " + " ".join(shlex.quote(a) for a in [f"benchmarks/{script}", *given])
    print(f"command: {command}\nmachine: {cpu_name()}, {os.cpu_count()} cores; "
          f"load average at start: {load()}", flush=True)
    return command


def write_result(path: str, command: str, **figures) -> None:
    """A small benchmark's figures as JSON with its command, machine, date and load,
    written atomically (a run killed mid-write leaves the previous file)."""
    out = {"command": command, "machine": f"{cpu_name()}, {os.cpu_count()} cores",
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "load_at_end": load(),
           **figures}
    files.write_atomic(Path(path), json.dumps(out, indent=1, default=str).encode())


def timed(fn, repeats, warmup=1):
    for _ in range(warmup):
        jax.block_until_ready(fn())
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        ts.append(time.perf_counter() - t0)
    return ts


def compile_and_time(fn, args, repeats):
    """``(compile s, median call s, result)`` of ``jax.jit(fn)`` on ``args``, compiled
    ahead of time (a small benchmark script's measurement)."""
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - t0
    out = jax.block_until_ready(compiled(*args))
    return compile_s, statistics.median(timed(lambda: compiled(*args), repeats, warmup=0)), out


def relative_difference(a, b) -> float:
    """Largest ``max|a - b| / max|a|`` over the leaves of two pytrees."""
    return max(float(jnp.max(jnp.abs(p - q)) / (jnp.max(jnp.abs(p)) + 1e-30))
               for p, q in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def has_loops(compiled) -> bool:
    """Whether the compiled program keeps a loop (a rolled ``lax.scan`` / ``lax.map``):
    XLA's cost analysis counts a loop body once, so its FLOPs are then a lower bound."""
    try:
        return " while(" in compiled.as_text()
    except Exception:  # no HLO text on this backend: assume a loop, say so
        return True


def flops_of(compiled) -> float:
    try:
        ca = compiled.cost_analysis()
        if isinstance(ca, (list, tuple)):
            ca = ca[0]
        return float(ca.get("flops", float("nan")))
    except Exception:  # some backends do not report
        return float("nan")


def peak_flops(n, dtype, repeats):
    """FLOP/s of an ``n x n`` matmul with ``dtype`` operands and float32 accumulation (how
    bf16 dots run fast on CPUs with bf16 dot instructions), and the call times."""
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32).astype(dtype)
    b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32).astype(dtype)
    f = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32))
    ts = timed(lambda: f(a, b), repeats)
    return 2.0 * n ** 3 / statistics.median(ts), ts


def episodes(tasks, dtype, n_way=5, k_shot=1, n_query=15, size=28):
    ks, kq = jax.random.split(jax.random.PRNGKey(0))
    return data.TaskBatch(
        jax.random.normal(ks, (tasks, n_way * k_shot, size, size, 1), dtype),
        jnp.tile(jnp.arange(n_way, dtype=jnp.int32).repeat(k_shot), (tasks, 1)),
        jax.random.normal(kq, (tasks, n_way * n_query, size, size, 1), dtype),
        jnp.tile(jnp.arange(n_way, dtype=jnp.int32).repeat(n_query), (tasks, 1)))


def learner_for(model, args):
    if model == "conv4":
        return meta.conv4_learner(5, channels=64, conv_impl=args.conv_impl)
    if model == "darts":
        return meta.supernet_learner(spaces.get("darts"), 5, channels=args.darts_channels,
                                     cells=args.darts_cells)
    raise ValueError(f"unknown model {model!r}")


def meta_config(model, learner, algorithm, inner_steps, strategy, darts_strategy):
    """The benchmarked meta-learning setting (also used by ``profile_meta.py``)."""
    extra = ({"arch_update": "alternating", "arch_inner_lr": 0.1, "arch_meta_lr": 3e-4}
             if learner.searches else {})
    if model == "darts" and darts_strategy:  # "auto" maps the supernet over tasks on CPU
        strategy = darts_strategy
    return meta.MetaConfig(algorithm=algorithm, inner_steps=inner_steps, inner_lr=0.1,
                           strategy=strategy, **extra)


def bench_meta(model, algorithm, tasks, args, peak, dtype):
    learner = learner_for(model, args)
    cfg = meta_config(model, learner, algorithm, args.inner_steps, args.strategy, args.darts_strategy)
    batch = episodes(tasks, dtype)
    state = meta.init_state(learner, cfg, jax.random.PRNGKey(1), batch.support_x[0])
    n_dev = jax.device_count()
    if n_dev > 1 and tasks % n_dev == 0:
        mesh = parallel.make_mesh()
        step = parallel.make_sharded_meta_step(learner, cfg, mesh)
        batch = jax.device_put(batch, parallel.sharded(mesh))
        state = jax.device_put(state, parallel.replicated(mesh))
    else:
        step = meta.make_meta_step(learner, cfg)
    t0 = time.perf_counter()
    compiled = step.lower(state, batch).compile()
    compile_s = time.perf_counter() - t0
    flops, strategy = flops_of(compiled), meta.resolve_strategy(cfg.strategy, learner.cpu_strategy)
    note = ""
    if has_loops(compiled):
        vmapped = (work_of_vmapped(learner, cfg, state, batch)
                   if strategy == "map" and n_dev == 1 else None)
        flops, note = ((flops, "; loop bodies counted once: FLOPs, GFLOP/s, %peak are lower bounds")
                       if vmapped is None else
                       (vmapped, "; FLOPs counted on the same step with tasks vmapped"))
    ts = timed(lambda: compiled(state, batch)[1], args.repeats, args.warmup)
    med = statistics.median(ts)
    return {"name": f"meta/{model}/{algorithm}/mb{tasks}", "compile_s": compile_s,
            "median_s": med, "min_s": min(ts), "max_s": max(ts), "n": len(ts),
            "amortized_s": med + compile_s / AMORTIZE, "gflop": flops / 1e9,
            "gflops": flops / med / 1e9, "pct_peak": 100.0 * flops / med / peak,
            "strategy": strategy + note}


def work_of_vmapped(learner, cfg, state, batch) -> float | None:
    """The FLOPs of a step whose tasks run in a ``lax.map``, which XLA counts once: those
    of the same step with tasks vmapped (the same arithmetic), or None if that program
    keeps a loop of its own (its count would be a lower bound too)."""
    lowered = meta.make_meta_step(learner, cfg.replace(strategy="vmap")).lower(state, batch)
    return None if "while" in lowered.as_text() else flops_of(lowered.compile())


def bench_torch(tasks, args, model="conv4", algorithm="maml"):
    name = f"torch/{model}/{algorithm}/mb{tasks}"
    device = "cuda" if jax.default_backend() == "gpu" else "cpu"
    # equal precision: JAX's bf16-operand convolutions against PyTorch's bf16 autocast
    bf16 = model == "conv4" and args.conv_impl == "matmul_bf16"
    try:
        if model == "darts":
            import torch_darts
            r = torch_darts.bench(algorithm=algorithm, meta_batch=tasks,
                                  inner_steps=args.inner_steps, inner_lr=0.1,
                                  channels=args.darts_channels, cells=args.darts_cells,
                                  repeats=args.torch_repeats, warmup=args.warmup,
                                  threads=os.cpu_count(), device=device)
        else:
            import torch_maml
            r = torch_maml.bench(meta_batch=tasks, inner_steps=args.inner_steps, inner_lr=0.1,
                                 repeats=args.torch_repeats, threads=os.cpu_count(), device=device,
                                 bf16=bf16)
    except ImportError as e:
        return {"name": name, "note": f"skipped: {e}"}
    ts = r["times"]
    return {"name": name, "median_s": r["median_s"], "min_s": min(ts),
            "max_s": max(ts), "n": len(ts),
            "note": f"torch {r['torch']}, {r['threads']} threads{', bf16 autocast' if bf16 else ''}"}


def add_ratio(torch_row, jax_row):
    """``ratio`` = PyTorch step / JAX step with compile amortised: how many times faster JAX is."""
    if "median_s" in torch_row:
        torch_row["ratio"] = torch_row["median_s"] / jax_row["amortized_s"]
        torch_row["note"] += f"; ratio = torch / JAX({jax_row['name']}, compile amortised)"


def bench_search(args):
    from metanas_jax.search import TrainConfig, make_evaluate_fn

    space = spaces.get(args.search_space)
    kw = (("channels", 8), ("cells_per_stage", 1)) if args.search_space == "nb201" else \
        (("channels", 8), ("cells", 2)) if args.search_space == "darts" else ()
    train = TrainConfig(steps=args.search_train_steps, lr=3e-3, chunk=args.search_chunk,
                        supernet_kw=kw)
    b = episodes(1, jnp.float32)
    task = (b.support_x[0], b.support_y[0], b.query_x[0], b.query_y[0])
    n_dev = jax.device_count()
    key = jax.random.PRNGKey(7)
    if n_dev > 1:
        ev = parallel.make_sharded_evaluate_fn(space, task, key, num_classes=5, train=train)
    else:
        ev = make_evaluate_fn(space, task, key, num_classes=5, train=train)
    per = args.search_candidates
    t0 = time.perf_counter()
    ev(np.asarray(space.sample(jax.random.PRNGKey(0), per)))
    first = time.perf_counter() - t0
    ts = []
    for r in range(1, args.search_rounds):
        zs = np.asarray(space.sample(jax.random.PRNGKey(r), per))
        t0 = time.perf_counter()
        ev(zs)
        ts.append(time.perf_counter() - t0)
    med = statistics.median(ts)
    return {"name": f"search/{args.search_space}", "median_s": med, "min_s": min(ts),
            "max_s": max(ts), "n": len(ts), "compile_s": first - med,
            "evals_per_s": per / med, "compilations": ev.stats["compilations"],
            "note": f"{per} candidates/round x {args.search_rounds} rounds, "
                    f"{args.search_train_steps} training steps each, chunk {args.search_chunk}"
                    f"{', sharded over %d devices' % n_dev if n_dev > 1 else ''}"}


def fmt(v, spec):
    return format(v, spec) if isinstance(v, (int, float)) and np.isfinite(v) else "-"


def table(rows) -> str:
    cols = [("name", "bench", "s"), ("compile_s", "compile_s", ".2f"),
            ("median_s", "median_s", ".4f"), ("spread", "min..max_s", "s"), ("n", "n", "d"),
            ("amortized_s", "+compile/1k_s", ".4f"), ("gflop", "GFLOP", ".2f"),
            ("gflops", "GFLOP/s", ".1f"), ("pct_peak", "%peak", ".1f"),
            ("ratio", "torch/jax", ".2f"), ("evals_per_s", "evals/s", ".2f"),
            ("compilations", "compiles", "d")]
    out = []
    for r in rows:
        r = dict(r)
        if "min_s" in r:
            r["spread"] = f"{r['min_s']:.4f}..{r['max_s']:.4f}"
        out.append([fmt(r.get(k), sp) if sp != "s" else str(r.get(k, "-")) for k, _, sp in cols]
                   + [r.get("note", r.get("strategy", ""))])
    head = [h for _, h, _ in cols] + ["note"]
    widths = [max(len(h), *(len(o[i]) for o in out)) for i, h in enumerate(head)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"
    return "\n".join([line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
                     + [line(o) for o in out])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="conv4 mb16 + DARTS MAML mb16, 2 repeats, short search")
    ap.add_argument("--models", default="conv4,darts")
    ap.add_argument("--algorithms", default="maml,fomaml,reptile")
    ap.add_argument("--meta-batch", default="16,32")
    ap.add_argument("--inner-steps", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1,
                    help="untimed meta-steps before the timed ones (the step is compiled ahead "
                         "of time either way; 0 saves minutes on the CPU's DARTS rows)")
    ap.add_argument("--torch-repeats", type=int, default=2)
    ap.add_argument("--torch-meta-batch", default="16", help="'' to skip PyTorch")
    ap.add_argument("--conv-impl", default="auto",
                    help="conv4 convolutions: auto, matmul, xla, matmul_bf16 (bf16 operands; "
                         "PyTorch's conv4 step then runs under bf16 autocast)")
    ap.add_argument("--strategy", default="auto", help="task strategy: auto, vmap, map, unroll")
    ap.add_argument("--darts-strategy", default="",
                    help="task strategy of the DARTS rows (default: --strategy; auto maps the supernet over tasks on CPU)")
    ap.add_argument("--darts-channels", type=int, default=8)
    ap.add_argument("--darts-cells", type=int, default=3)
    ap.add_argument("--dtype", default="auto", choices=["auto", "f32", "bf16"],
                    help="images and peak matmul; auto: bf16 on GPU/TPU, f32 on CPU")
    ap.add_argument("--peak-n", type=int, default=0, help="peak matmul size (0: 2048 CPU, 8192 else)")
    ap.add_argument("--search-space", default="nb201")
    ap.add_argument("--search-rounds", type=int, default=5)
    ap.add_argument("--search-candidates", type=int, default=16)
    ap.add_argument("--search-train-steps", type=int, default=10)
    ap.add_argument("--search-chunk", type=int, default=8)
    ap.add_argument("--skip", default="", help="comma list of sections: peak,meta,torch,search")
    ap.add_argument("--json", default=None, help="write the rows here (rewritten after each row)")
    ap.add_argument("--show", default=None, metavar="JSON",
                    help="print the table of a JSON written by --json (also of a run stopped "
                         "part-way) and exit")
    parallel.add_distributed_flags(ap)
    args = ap.parse_args(argv)
    if args.show:
        with open(args.show) as f:
            saved = json.load(f)
        print("\n".join(saved["header"]))
        print(table(saved["rows"]))
        print(saved.get("footer", "# (stopped part-way: the rows finished by then)"))
        return saved["rows"]
    parallel.initialize(args=args)
    if args.quick:
        args.repeats, args.torch_repeats = min(args.repeats, 2), min(args.torch_repeats, 1)
        args.search_rounds, args.search_candidates = min(args.search_rounds, 3), 8
    command = "python " + " ".join([os.path.relpath(os.path.abspath(__file__))] + sys.argv[1:])
    if os.environ.get("GLIBC_TUNABLES"):  # the allocator settings change CPU times (README)
        command = f"GLIBC_TUNABLES={os.environ['GLIBC_TUNABLES']} {command}"
    backend = jax.default_backend()
    dtype = {"f32": jnp.float32, "bf16": jnp.bfloat16}.get(
        args.dtype, jnp.float32 if backend == "cpu" else jnp.bfloat16)
    skip = set(filter(None, args.skip.split(",")))
    t_start = time.time()
    header = [f"# command: {command}",
              f"# machine: {cpu_name()}, {os.cpu_count()} CPUs; backend {backend}: "
              f"{jax.device_count()} x {jax.devices()[0].device_kind}; "
              f"jax {jax.__version__}; dtype {jnp.dtype(dtype).name}",
              f"# load average at start: {load()}; "
              f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}"]
    print("\n".join(header), flush=True)
    rows = []
    n = args.peak_n or (2048 if backend == "cpu" else 8192)
    peaks = {name: peak_flops(n, precision, max(args.repeats, 5))
             for name, precision in (("f32", jnp.float32), ("bf16", jnp.bfloat16))}
    # the run's precision, the reference of every %peak: bf16 with bf16 images or operands
    reference = "bf16" if dtype == jnp.bfloat16 or args.conv_impl == "matmul_bf16" else "f32"
    peak = peaks[reference][0]
    for name, (flops, ts) in peaks.items():
        rows.append({"name": f"peak/matmul{n}/{name}", "median_s": statistics.median(ts),
                     "min_s": min(ts), "max_s": max(ts), "n": len(ts), "gflop": 2 * n ** 3 / 1e9,
                     "gflops": flops / 1e9}
                    | ({"pct_peak": 100.0, "note": "reference peak"} if name == reference
                       else {"note": "the other precision's peak"}))
        print(f"# peak {name} {flops / 1e9:.1f} GFLOP/s", flush=True)
    settings = []
    for model in args.models.split(","):
        for algorithm in args.algorithms.split(","):
            for tasks in (int(t) for t in args.meta_batch.split(",")):
                if args.quick and (tasks != 16 or (model == "darts" and algorithm != "maml")):
                    continue
                settings.append((model, algorithm, tasks))
    # cheap sections first, so a long DARTS compilation cannot hold back their rows; the
    # table keeps the order peak, meta, torch, search, and --json is rewritten after each row
    torch_rows, search_rows, meta_rows = [], [], []

    def save(footer=None):  # without a footer: a run still going (or stopped part-way)
        if args.json:
            out = {"header": header, "rows": rows + meta_rows + torch_rows + search_rows,
                   "args": vars(args)}
            out.update({"footer": footer} if footer else {"partial": True})
            with open(args.json, "w") as f:
                json.dump(out, f, indent=1, default=str)

    if "torch" not in skip:
        darts_algorithms = list(dict.fromkeys(a for m, a, _ in settings if m == "darts"))
        for tasks in (int(t) for t in filter(None, args.torch_meta_batch.split(","))):
            for model, algorithm in [("conv4", "maml")] + [("darts", a) for a in darts_algorithms]:
                torch_rows.append(bench_torch(tasks, args, model, algorithm))
                print(f"# {torch_rows[-1]['name']}: {torch_rows[-1].get('median_s', '-')} s "
                      f"(load {load()})", flush=True)
                save()
    if "search" not in skip:
        search_rows.append(bench_search(args))
        print(f"# {search_rows[-1]['name']}: {search_rows[-1]['evals_per_s']:.2f} evals/s "
              f"(load {load()})", flush=True)
        save()
    if "meta" not in skip:
        for model, algorithm, tasks in sorted(settings, key=lambda s: s[0] == "darts"):
            r = bench_meta(model, algorithm, tasks, args, peak, dtype)
            meta_rows.append(r)
            for t in torch_rows:
                if t["name"] == f"torch/{model}/{algorithm}/mb{tasks}":
                    add_ratio(t, r)
            print(f"# {r['name']}: compile {r['compile_s']:.1f}s, step {r['median_s']:.4f}s, "
                  f"{r['pct_peak']:.1f}% peak (load {load()})", flush=True)
            save()
    footer = (f"# load average at end: {load()}; total {time.time() - t_start:.0f}s; "
              f"'+compile/1k_s' = median + compile/{AMORTIZE}; torch/jax = PyTorch median / "
              f"JAX '+compile/1k_s'; GFLOP: XLA's count for the compiled program, so the "
              f"work of its formulation (fastconv's stride-1 form counts the rows it drops)")
    save(footer)
    rows += meta_rows + torch_rows + search_rows
    print()
    print("\n".join(header))
    print(table(rows))
    print(footer, flush=True)
    return rows


if __name__ == "__main__":
    main()
