"""macro32 candidate training on CPU: mixing supernet (one-hot weights) vs hard supernet.

Prints, for each mode and depth: compile seconds and seconds per training step (cross-entropy
gradient + Adam update of one architecture on the preset's training images), then candidate
evaluations/s through ``search.make_evaluate_fn`` (``--train-steps`` full-batch steps,
scored on ``--val`` images, compile excluded) and the training program's compilation count.
Presets: ``toy`` (the default widths 16..64, 64 images 8x8x1), ``cifar_cpu`` (the space
of ``configs/tinyimagenet_to_cifar10.py``'s CPU size: widths 8/16, seven ops, 16x16x3),
``cifar_full`` (``spaces.CIFAR_SPACE`` at 32x32x3, the ``full`` size).

    python benchmarks/bench_supernet.py                      # hard mode, 8 and 4 layers
    python benchmarks/bench_supernet.py --modes soft,hard --evals 4
    python benchmarks/bench_supernet.py --preset cifar_cpu --layers 8 --images 256 \
        --train-steps 20 --val 1000 --out benchmarks/results/bench_supernet_cifar_cpu.json
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from metanas_jax import nn as mnn
from metanas_jax import spaces
from metanas_jax.search import TrainConfig, make_evaluate_fn
from metanas_jax.search.experience import _train_eval_fn, fit_and_score

sys.path.insert(0, str(Path(__file__).resolve().parent))
from transfer_comparison import machine, write_json  # noqa: E402

CIFAR_CPU_OPS = ("conv3x3", "conv5x5", "sep_conv3x3", "sep_conv5x5", "dil_conv3x3", "max_pool3x3", "identity")
# preset -> (space keywords, image shape)
PRESETS = {
    "toy": ({}, (8, 8, 1)),
    "cifar_cpu": ({"widths": (8, 16), "stem_width": 8, "ops": CIFAR_CPU_OPS}, (16, 16, 3)),
    "cifar_full": (dict(spaces.CIFAR_SPACE), (32, 32, 3)),
}


# mode -> (hard, nn.supernet keywords)
MODES = {"soft": (False, ()), "hard": (True, ()), "hard_sliced": (True, (("slice_widths", True),)),
         "hard_unsliced": (True, (("slice_widths", False),))}


def step_timing(space, mode, steps, x, y):
    hard, kw = MODES[mode]
    net = mnn.supernet(space, 10, hard=hard, **dict(kw))
    z0 = space.sample(jax.random.key(0), 1)[0]
    v = mnn.init(net, jax.random.key(0), x, space.relax(z0, 0.0))
    opt = optax.adam(3e-3)

    @jax.jit
    def step(p, s, w):
        g = jax.grad(lambda p: optax.softmax_cross_entropy_with_integer_labels(
            net.apply({"params": p}, x, w, train=True), y).mean())(p)
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s

    p, s = v["params"], opt.init(v["params"])
    zs = space.sample(jax.random.key(1), steps + 1)
    t0 = time.perf_counter()
    p, s = jax.block_until_ready(step(p, s, space.relax(zs[0], 0.0)))
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for z in zs[1:]:  # a different architecture every step: architecture as data
        p, s = step(p, s, space.relax(z, 0.0))
    jax.block_until_ready(p)
    return compile_s, (time.perf_counter() - t0) / steps, step._cache_size()


def eval_timing(space, mode, n, x, y, steps=30, xv=None, yv=None):
    task = (x, y, x[:32] if xv is None else xv, y[:32] if yv is None else yv)
    hard, kw = MODES[mode]
    cfg = TrainConfig(steps=steps, chunk=n, hard=hard, supernet_kw=kw)
    _train_eval_fn.cache_clear()
    ev = make_evaluate_fn(space, task, jax.random.key(0), num_classes=10, train=cfg)
    zs = np.asarray(space.sample(jax.random.key(2), 2 * n))
    ev(zs[:n])  # compile + first chunk
    first = ev.stats["seconds"]
    ev(zs[n:])
    return first, n / (ev.stats["seconds"] - first), ev.stats["compilations"]


def compact_timing(space, n, x, y, steps, xv, yv):
    """The alternative to one program for all: each candidate's compact network
    (``nn.build``, batch statistics as in the supernet) trained and scored by
    ``make_evaluate_fn``'s own proxy (``experience.fit_and_score``), compiled for that
    candidate. Returns (seconds per candidate with its compilation, seconds per candidate
    once compiled)."""
    opt = optax.adam(TrainConfig().lr)
    zs = np.asarray(space.sample(jax.random.key(2), n))
    first, again = [], []
    for i, z in enumerate(zs):
        net = mnn.build(space, space.decode(z), 10, track=False)
        run = jax.jit(lambda params: fit_and_score(
            lambda p, x_: net.apply({"params": p}, x_, train=True), params, opt, steps, x, y, xv, yv))
        for out in (first, again):
            t0 = time.perf_counter()
            jax.block_until_ready(run(mnn.init(net, jax.random.key(i), x)["params"]))
            out.append(time.perf_counter() - t0)
        print(f"  compact candidate {i}: {first[-1]:.2f}s with its compilation, "
              f"{again[-1]:.2f}s again", flush=True)
    return float(np.mean(first)), float(np.mean(again))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="toy", choices=sorted(PRESETS))
    ap.add_argument("--modes", default="hard", help="comma list of " + ",".join(MODES) + " (hard: the default width slicing of nn.hard; hard_sliced / hard_unsliced: "
                    "convolutions at the layer's width / every op at the widest)")
    ap.add_argument("--layers", default="8,4")
    ap.add_argument("--images", type=int, default=64, help="training images per step")
    ap.add_argument("--val", type=int, default=32, help="validation images a candidate is scored on")
    ap.add_argument("--steps", type=int, default=5, help="timed training steps")
    ap.add_argument("--train-steps", type=int, default=30, help="training steps of an evaluated candidate")
    ap.add_argument("--evals", type=int, default=8, help="candidates per timed evaluate call (0: skip)")
    ap.add_argument("--compact", type=int, default=0,
                    help="also train this many candidates as compact networks, one compilation each")
    ap.add_argument("--out", default="", help="JSON file for the rows (with command and machine)")
    args = ap.parse_args(argv)
    command = "python " + " ".join(shlex.quote(a) for a in ["benchmarks/bench_supernet.py", *sys.argv[1:]])
    print("command: " + command)
    print(f"devices: {jax.devices()}  cpus: {os.cpu_count()}  load average: {os.getloadavg()}")
    space_kw, shape = PRESETS[args.preset]
    kx, kv = jax.random.split(jax.random.key(3))
    x = jax.random.normal(kx, (args.images, *shape))
    y = jnp.arange(args.images) % 10
    xv = jax.random.normal(kv, (args.val, *shape))
    yv = jnp.arange(args.val) % 10
    rows, t_start = [], time.time()
    for layers in (int(l) for l in args.layers.split(",")):
        space = spaces.get("macro32", **{**space_kw, "layers": layers})
        for mode in args.modes.split(","):
            c, s, n = step_timing(space, mode, args.steps, x, y)
            row = {"layers": layers, "mode": mode, "step_compile_s": c, "step_s": s, "step_programs": n}
            print(f"macro32 {args.preset} layers={layers} mode={mode}: compile {c:.1f}s, {s:.3f}s/step "
                  f"(mean of {args.steps} steps, each a different architecture; compiled "
                  f"{n} program)  load {os.getloadavg()[0]:.2f}", flush=True)
            if args.evals:
                first, rate, comp = eval_timing(space, mode, args.evals, x, y, args.train_steps, xv, yv)
                row.update(eval_first_s=first, evals_per_s=rate, eval_compilations=comp)
                print(f"  make_evaluate_fn steps={args.train_steps}: first call (compile + {args.evals} "
                      f"candidates) {first:.1f}s, then {rate:.3g} candidates/s; training-program "
                      f"compilations {comp}  load {os.getloadavg()[0]:.2f}", flush=True)
            if args.compact:
                first, again = compact_timing(space, args.compact, x, y, args.train_steps, xv, yv)
                row.update(compact_first_s=first, compact_run_s=again,
                           compact_evals_per_s=1 / first, compact_evals_per_s_compiled=1 / again)
                print(f"  compact networks, {args.compact} candidates: {first:.2f}s each with its "
                      f"compilation ({1 / first:.2f}/s), {again:.2f}s once compiled "
                      f"({1 / again:.2f}/s)  load {os.getloadavg()[0]:.2f}", flush=True)
            rows.append(row)
    if args.out:
        write_json(Path(args.out), {
            "command": command, "preset": args.preset, "space": {**space_kw}, "image_shape": list(shape),
            "images": args.images, "val": args.val, "train_steps": args.train_steps, "rows": rows,
            "machine": machine(), "seconds": time.time() - t_start,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())})
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
