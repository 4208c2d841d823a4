"""Final-training speed and time-to-accuracy on CIFAR-10, with a PyTorch peer in the same run.

Sections (each row printed as it is measured, all written to ``--out``):

* ``peak``: this machine's matmul FLOP/s, f32 and bf16 operands with f32 accumulation
  (an N x N matmul, median of repeats): the reference of every ``%peak``.
* ``step``: one SGD training step of the network (``--arch`` of the space given by
  ``--space``, default the named reference ``airbench8`` of the CIFAR space) at
  ``--batch`` images, per convolution implementation (``--impls``; ``matmul_bf16``: im2col
  with bf16 matmul operands, its rows counted as bf16 whatever the activations) and
  activation precision (``--dtypes``): compile seconds, images/s, and the useful GFLOP/s
  (images/s times the network's training FLOPs per image from XLA's cost analysis of the
  ``lax.conv`` step) as a share of the peak of the precision used.
* ``torch``: the same network, loss and optimizer in PyTorch (channels-last, f32 and bf16
  autocast, ``--threads``), run by ``--torch-python`` in a subprocess
  (``benchmarks/torch_train.py``); skipped when that interpreter has no torch. ``ratio`` =
  JAX images/s / PyTorch images/s at the same precision.
* ``train`` (``--epochs`` > 0): full final training with ``--recipe`` on CIFAR-10 from
  ``../shared/data`` (or ``--data``), ``--seeds`` seeds: test accuracy after every epoch
  (test-time augmentation as the recipe says), training seconds (evaluation excluded) and
  the time to reach 93% / 94% test accuracy.
* ``airbench`` (``--airbench-seeds`` > 0): airbench94's own recipe and network, unchanged
  but for the device, in PyTorch (``benchmarks/torch_airbench.py`` run by
  ``--torch-python``, ``--airbench-dtype``) on the same CIFAR-10 images: what the
  reference reaches on this data, the yardstick for the ``train`` figures.

    python benchmarks/bench_train.py --epochs 0                     # speed only
    python benchmarks/bench_train.py --skip step,torch --epochs 10 --seeds 3
    python benchmarks/bench_train.py --skip peak,step,torch --airbench-seeds 3
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from suite import cpu_name, flops_of, load, peak_flops, timed  # noqa: E402

from metanas_jax import data, spaces  # noqa: E402
from metanas_jax import train as T  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CIFAR10 = ROOT.parent / "shared" / "data" / "cifar10" / "cifar10-jpg.tar"
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def counted_loops(compiled) -> int:
    """Loops in the compiled step other than the random-number generator's (XLA's cost
    analysis counts a loop body once: with such loops the FLOPs would be a lower bound)."""
    return sum(1 for line in compiled.as_text().splitlines()
               if " while(" in line and "threefry" not in line and "randint" not in line)


def make_space(args):
    return spaces.get("macro32", **json.loads(args.space))


def _step(space, arch, impl, dtype, args):
    """The jitted train step of the benchmarked network, its state and a random batch."""
    cfg = T.FinalTrainConfig.recipe(args.recipe, batch_size=args.batch, conv_impl=impl,
                                    bf16="on" if dtype == "bf16" else "off", epochs=1)
    shape = (32, 32, 3)

    class _DS:  # the shapes setup() needs: a CIFAR-10-sized training split
        num_classes, image_shape = 10, shape

        def __len__(self):
            return 50_000
    net, tx, _ = T.setup(space, arch, _DS(), cfg)
    state = T.create_state(net, jax.random.key(0), shape, tx, cfg)
    step = T.make_train_step(net, tx, cfg, 10, T.make_norm(CIFAR_MEAN, CIFAR_STD))
    rng = np.random.default_rng(0)
    batch = (jnp.asarray(rng.integers(0, 256, (args.batch, *shape), dtype=np.uint8)),
             jnp.asarray(rng.integers(0, 10, args.batch), jnp.int32),
             jnp.asarray(rng.random(args.batch) < 0.5))
    return step, state, batch, jax.random.key(1)


def model_gflop_per_image(space, arch, args) -> float:
    """The network's training FLOPs per image as XLA counts them for ``lax.conv`` in f32
    (the convolutions' own arithmetic; im2col's patch copies are not work): the one figure
    every row's %peak, JAX and PyTorch alike, is computed from."""
    step, state, batch, key = _step(space, arch, "xla", "f32", args)
    compiled = step.lower(state, batch, key).compile()
    if counted_loops(compiled):
        raise RuntimeError("the train step has loops: XLA's FLOP count would be a lower bound")
    return flops_of(compiled) / args.batch / 1e9


def bench_step(space, arch, impl, dtype, args, peak, gflop_per_image):
    step, state, batch, key = _step(space, arch, impl, dtype, args)
    t0 = time.perf_counter()
    compiled = step.lower(state, batch, key).compile()
    compile_s = time.perf_counter() - t0
    holder = [state]

    def run():
        holder[0], m = compiled(holder[0], batch, key)
        return m["loss"]
    ts = timed(run, args.repeats, warmup=2)
    med = statistics.median(ts)
    ips = args.batch / med
    # the precision of the convolutions' matmuls: "matmul_bf16" multiplies bf16 operands
    # whatever the activations' dtype, so its row counts against the bf16 peak (and PyTorch bf16)
    precision = "bf16" if impl == "matmul_bf16" else dtype
    return {"name": f"step/{impl}/{dtype}", "impl": impl, "dtype": precision, "activations": dtype,
            "batch": args.batch, "compile_s": compile_s, "median_s": med, "min_s": min(ts),
            "max_s": max(ts), "images_per_s": ips, "gflops": ips * gflop_per_image,
            "pct_peak": 100.0 * ips * gflop_per_image * 1e9 / peak[precision]}


def bench_torch(space, arch, dtype, args):
    cmd = [args.torch_python, str(Path(__file__).with_name("torch_train.py")),
           "--space", args.space, "--arch", str(arch), "--batch", str(args.batch),
           "--dtype", dtype, "--repeats", str(args.repeats), "--threads", str(args.threads)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    except (OSError, subprocess.TimeoutExpired) as e:
        return {"name": f"torch/{dtype}", "note": f"skipped: {e}"}
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["no output"])[-1]
        return {"name": f"torch/{dtype}", "note": f"skipped: {last}"}
    r = json.loads(out.stdout.strip().splitlines()[-1])
    return {"name": f"torch/{dtype}", "dtype": dtype, "batch": args.batch, **r}


def load_cifar(args):
    spec = f"folder:{args.data}"
    tr = data.load(spec, split="train")
    te = data.load(spec, split="test")
    return tr, te


def time_to(history, threshold):
    """Training seconds (evaluation excluded) until the test accuracy first reaches
    ``threshold``; ``None`` if it never does."""
    for h in history:
        if h["test_acc"] >= threshold:
            return h["train_seconds"]
    return None


def bench_train(space, arch, args, seed, tr, te):
    cfg = train_config(args)
    norm = T.make_norm(CIFAR_MEAN, CIFAR_STD)
    # the whole train split trains; the test split is what is reported after each epoch
    target = data.TargetTask(tr, data.subsample(te, 1000, seed), te)
    net, _, _ = T.setup(space, arch, tr, cfg)
    eval_step = T.make_eval_step(net, norm, cfg.tta)
    curve, t_eval = [], [0.0]
    t_start = time.perf_counter()

    def on_epoch(epoch, state, history):
        t0 = time.perf_counter()
        acc = T.accuracy(eval_step, state.eval_variables(), te, cfg.eval_batch_size)
        t_eval[0] += time.perf_counter() - t0
        curve.append({"epoch": epoch, "test_acc": acc, "train_loss": history[-1]["train_loss"],
                      "train_seconds": time.perf_counter() - t_start - t_eval[0], "load": load()})
        print(f"  seed {seed} epoch {epoch}: test {acc:.4f}  train {curve[-1]['train_seconds']:.0f} s"
              f"  (load {load()})", flush=True)
    _, _, _, res = T.train(space, arch, target, cfg, jax.random.key(seed), norm=norm, on_epoch=on_epoch)
    return {"seed": seed, "test_acc": res["test_acc"], "params": res["params"],
            "train_seconds": curve[-1]["train_seconds"], "curve": curve,
            "time_to_93": time_to(curve, 0.93), "time_to_94": time_to(curve, 0.94),
            "recipe": dataclasses.asdict(cfg)}


def bench_airbench(args, tr, te, row):
    """``torch_airbench.py`` on ``tr`` / ``te`` (written to a temporary ``.npz``), its
    per-epoch lines echoed; returns the per-seed results (empty with a note if skipped)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "cifar10.npz"
        np.savez(path, images_train=tr.images, labels_train=tr.labels,
                 images_test=te.images, labels_test=te.labels)
        cmd = [args.torch_python, str(Path(__file__).with_name("torch_airbench.py")), "--data", str(path),
               "--seeds", str(args.airbench_seeds), "--dtype", args.airbench_dtype,
               "--threads", str(args.threads)]
        results = []
        with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) as proc:
            for line in proc.stdout:
                try:
                    msg = json.loads(line)
                except json.JSONDecodeError:
                    print(line, end="", flush=True)
                    continue
                if "result" in msg:
                    r = msg["result"]  # time_to_*: the final (TTA) accuracy, at the end of training
                    results.append({**r, "load": load(), **{f"time_to_{t}": r["train_seconds"]
                                    if r["test_acc"] >= t / 100 else None for t in (93, 94)}})
                    row({"name": f"airbench/{args.airbench_dtype}/seed{r['seed']}",
                         "test_acc": r["test_acc"], "train_s": r["train_seconds"]})
                else:
                    print(f"  airbench seed {msg['seed']} epoch {msg['epoch']}: test {msg['test_acc']:.4f} "
                          f"(no TTA)  train {msg['train_seconds']:.0f} s  (load {load()})", flush=True)
        if proc.returncode:
            row({"name": "airbench", "note": f"skipped: {cmd[0]} exited with {proc.returncode}"})
    return results


def resumable_seeds(args) -> list:
    """The trainings in ``--out`` that this run would repeat: seeds 0, 1, ... in order,
    kept only if the file's space, network and every recipe setting equal this run's (an
    interrupted or shorter run extended to more seeds without redoing the first ones)."""
    path = Path(args.out)
    if not path.is_file():
        return []
    old = json.loads(path.read_text())
    space = make_space(args)
    arch = space.reference(args.arch) if args.arch in spaces.REFERENCE_ARCHS else space.from_string(args.arch)
    cfg = dataclasses.asdict(train_config(args))
    if old.get("space") != json.loads(args.space) or old.get("arch") != str(arch):
        raise SystemExit(f"--resume: {path} holds another space or network; use another --out")
    kept = []
    for i, run in enumerate(old.get("train", [])):
        if run["seed"] != i or run["recipe"] != cfg:
            raise SystemExit(f"--resume: {path}'s training {i} (seed {run['seed']}) used another recipe "
                             f"or seed order; use another --out")
        kept.append(run)
    return kept


def train_config(args) -> T.FinalTrainConfig:
    return T.FinalTrainConfig.recipe(args.recipe, epochs=args.epochs, batch_size=args.batch,
                                     conv_impl=args.train_impl,
                                     bf16="on" if args.train_dtype == "bf16" else "off",
                                     eval_batch_size=1000, **json.loads(args.set))


def summary(runs):
    accs = [r["test_acc"] for r in runs]
    secs = [r["train_seconds"] for r in runs]
    return {"test_acc_mean": float(np.mean(accs)), "test_acc_std": float(np.std(accs, ddof=1)) if len(accs) > 1 else None,
            "train_seconds_mean": float(np.mean(secs)), "n": len(runs),
            "reached_93": sum(r["time_to_93"] is not None for r in runs),
            "reached_94": sum(r["time_to_94"] is not None for r in runs)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--space", default=json.dumps(spaces.CIFAR_SPACE),
                    help="macro32 keyword arguments as JSON (default: spaces.CIFAR_SPACE)")
    ap.add_argument("--arch", default="airbench8", help="a named reference or an architecture string")
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--recipe", default="fast", choices=sorted(T.RECIPES))
    ap.add_argument("--impls", default="xla,matmul,matmul_bf16")
    ap.add_argument("--dtypes", default="f32,bf16")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--peak-n", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--torch-python", default=sys.executable)
    ap.add_argument("--skip", default="", help="comma list of: peak, step, torch")
    ap.add_argument("--epochs", type=int, default=0, help="full trainings of this many epochs (0: none)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--train-impl", default="auto", choices=T.CONV_IMPLS)
    ap.add_argument("--train-dtype", default="f32", choices=("f32", "bf16"))
    ap.add_argument("--set", default="{}", help="JSON overrides of the recipe for --epochs runs")
    ap.add_argument("--airbench-seeds", type=int, default=0,
                    help="seeds of airbench94's own recipe in PyTorch on the same data (0: none)")
    ap.add_argument("--airbench-dtype", default="bf16", choices=("f32", "bf16"))
    ap.add_argument("--data", default=str(CIFAR10))
    ap.add_argument("--resume", action="store_true",
                    help="keep the --epochs trainings already in --out (same space, network and recipe), run the rest")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bench_train.json"))
    args = ap.parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))
    space = make_space(args)
    arch = space.reference(args.arch) if args.arch in spaces.REFERENCE_ARCHS else space.from_string(args.arch)
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv if argv is not None else sys.argv[1:])])
    out = {"command": command, "recipe": args.recipe, "space": json.loads(args.space), "arch": str(arch),
           "arch_name": args.arch,
           "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "jax": jax.__version__,
                       "backend": jax.default_backend()},
           "load_at_start": load(), "rows": [], "train": []}

    done = resumable_seeds(args) if args.resume else []

    def save():
        out["load_at_end"] = load()
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(args.out).with_suffix(".tmp")
        tmp.write_text(json.dumps(out, indent=1))
        tmp.replace(args.out)

    def row(r):
        out["rows"].append(r)
        keys = ("images_per_s", "pct_peak", "gflops", "compile_s", "ratio", "test_acc", "train_s")
        print(f"{r['name']:<22}" + "  ".join(f"{k} {r[k]:.4f}" if k == "test_acc" else f"{k} {r[k]:.1f}"
                                             for k in keys if isinstance(r.get(k), float))
              + (f"  {r['note']}" if r.get("note") else "") + f"  (load {load()})", flush=True)
        save()

    peak = {}
    if "peak" not in skip:
        for name, dt in (("f32", jnp.float32), ("bf16", jnp.bfloat16)):
            peak[name] = peak_flops(args.peak_n, dt, 7)[0]
            row({"name": f"peak/{name}", "gflops": peak[name] / 1e9, "pct_peak": 100.0})
    dtypes = [d for d in args.dtypes.split(",") if d]
    if "step" not in skip and peak:
        out["gflop_per_image"] = gpi = model_gflop_per_image(space, arch, args)
        print(f"# {gpi:.3f} GFLOP per training image (XLA cost analysis, lax.conv, f32)", flush=True)
        for dt in dtypes:
            for impl in args.impls.split(","):
                row(bench_step(space, arch, impl, dt, args, peak, gpi))
    if "torch" not in skip:
        for dt in dtypes:
            r = bench_torch(space, arch, dt, args)
            jax_best = max((x["images_per_s"] for x in out["rows"]
                            if x.get("dtype") == dt and x["name"].startswith("step/")), default=None)
            if "images_per_s" in r and "gflop_per_image" in out:
                r["gflops"] = r["images_per_s"] * out["gflop_per_image"]
                r["pct_peak"] = 100.0 * r["gflops"] * 1e9 / peak[dt]
            if "images_per_s" in r and jax_best:
                r["ratio"] = jax_best / r["images_per_s"]
                r["note"] = (r.get("note", "") + "; ratio = best JAX images/s / PyTorch images/s").lstrip("; ")
            row(r)
    if args.epochs > 0 or args.airbench_seeds > 0:
        tr, te = load_cifar(args)
    if args.airbench_seeds > 0:
        out["airbench"] = bench_airbench(args, tr, te, row)
        if out["airbench"]:
            out["airbench_summary"] = s = summary(out["airbench"])
            print(f"airbench94 in PyTorch ({args.airbench_dtype}), {s['n']} seeds: test "
                  f"{s['test_acc_mean']:.4f} +- {s['test_acc_std'] or 0:.4f} in {s['train_seconds_mean']:.0f} s",
                  flush=True)
        save()
    if args.epochs > 0:
        for seed in range(args.seeds):
            if seed < len(done):
                out["train"].append(done[seed])
                print(f"  seed {seed}: kept from {args.out} (test {done[seed]['test_acc']:.4f})", flush=True)
            else:
                out["train"].append(bench_train(space, arch, args, seed, tr, te))
            out["train_summary"] = summary(out["train"])
            save()
        s = out["train_summary"]
        print(f"train: {args.recipe} recipe, {args.epochs} epochs, {s['n']} seeds: test "
              f"{s['test_acc_mean']:.4f} +- {s['test_acc_std'] or 0:.4f} in {s['train_seconds_mean']:.0f} s; "
              f"reached 93%: {s['reached_93']}/{s['n']}, 94%: {s['reached_94']}/{s['n']}", flush=True)
    save()
    print(f"wrote {args.out}\nreproduce: {command}", flush=True)


if __name__ == "__main__":
    main()
