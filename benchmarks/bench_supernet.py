"""macro32 candidate training on CPU: mixing supernet (one-hot weights) vs hard supernet.

Prints, for each mode and depth: compile seconds and seconds per training step (cross-entropy
gradient + Adam update of one architecture on 64 8x8x1 images), then candidate evaluations/s
through ``search.make_evaluate_fn`` (``TrainConfig(steps=30)``, compile excluded) and the
training program's compilation count.

    python benchmarks/bench_supernet.py                      # hard mode, 8 and 4 layers
    python benchmarks/bench_supernet.py --modes soft,hard --evals 4
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from metanas_jax import nn as mnn
from metanas_jax import spaces
from metanas_jax.search import TrainConfig, make_evaluate_fn
from metanas_jax.search.experience import _train_eval_fn


def step_timing(space, hard, steps, x, y):
    net = mnn.supernet(space, 10, hard=hard)
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


def eval_timing(space, hard, n, x, y):
    task = (x, y, x[:32], y[:32])
    cfg = TrainConfig(steps=30, chunk=n, hard=hard)
    _train_eval_fn.cache_clear()
    ev = make_evaluate_fn(space, task, jax.random.key(0), num_classes=10, train=cfg)
    zs = np.asarray(space.sample(jax.random.key(2), 2 * n))
    ev(zs[:n])  # compile + first chunk
    first = ev.stats["seconds"]
    ev(zs[n:])
    return first, n / (ev.stats["seconds"] - first), ev.stats["compilations"]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--modes", default="hard", help="comma list of soft,hard")
    ap.add_argument("--layers", default="8,4")
    ap.add_argument("--steps", type=int, default=5, help="timed training steps")
    ap.add_argument("--evals", type=int, default=8, help="candidates per timed evaluate call (0: skip)")
    args = ap.parse_args(argv)
    print("command: python " + " ".join(shlex.quote(a) for a in ["benchmarks/bench_supernet.py", *sys.argv[1:]]))
    print(f"devices: {jax.devices()}  cpus: {os.cpu_count()}  load average: {os.getloadavg()}")
    x = jax.random.normal(jax.random.key(3), (64, 8, 8, 1))
    y = jnp.arange(64) % 10
    for layers in (int(l) for l in args.layers.split(",")):
        space = spaces.get("macro32", layers=layers)  # default widths 16..64, stem 16
        for mode in args.modes.split(","):
            hard = mode == "hard"
            c, s, n = step_timing(space, hard, args.steps, x, y)
            print(f"macro32 layers={layers} mode={mode}: compile {c:.1f}s, {s:.3f}s/step "
                  f"(mean of {args.steps} steps, each a different architecture; compiled "
                  f"{n} program)  load {os.getloadavg()[0]:.2f}", flush=True)
            if args.evals:
                first, rate, comp = eval_timing(space, hard, args.evals, x, y)
                print(f"  make_evaluate_fn steps=30: first call (compile + {args.evals} "
                      f"candidates) {first:.1f}s, then {rate:.2f} candidates/s; training-program "
                      f"compilations {comp}  load {os.getloadavg()[0]:.2f}", flush=True)


if __name__ == "__main__":
    main()
