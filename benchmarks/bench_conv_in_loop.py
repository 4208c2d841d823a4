"""A convolution's training step alone and inside a loop: ``lax.conv`` against fastconv.

Why: on XLA:CPU the gradient of ``lax.conv`` runs many times slower inside a loop body
(``lax.scan`` over training steps, ``lax.map`` over candidates or tasks: an XLA while
loop) than in a program of its own, while the im2col form (``nn/fastconv.py``) does not.
The library trains candidates, the evaluator and the meta-learner's inner loops inside
such loops, which is why every convolution of its networks goes through fastconv on CPU.

For each shape: one step (gradient of ``sum(tanh(conv(x, w)))`` w.r.t. input and kernel,
then an SGD update of both), jitted alone, against two such steps as a ``lax.scan``,
for ``impl="xla"`` (``lax.conv``) and ``impl="matmul"`` (im2col). Prints the ratio
``scan / (2 x step)``: 1 means the loop costs nothing. Medians of ``--repeats`` calls after
one compiling call.

    python benchmarks/bench_conv_in_loop.py --out benchmarks/results/conv_in_loop.json
"""
from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from metanas_jax.nn.fastconv import conv2d  # noqa: E402
from suite import timed  # noqa: E402
from transfer_comparison import machine, write_json  # noqa: E402

# (what it stands for, images, side, in channels, out channels, kernel, stride)
SHAPES = (
    ("evaluator task encoder, 1st conv (64 images x 8 tasks, 16x16)", 512, 16, 3, 16, 3, 2),
    ("evaluator task encoder, 2nd conv", 512, 8, 16, 32, 3, 2),
    ("NB201 cell conv3x3 (suite search row: 5 support images, 8 channels, 28x28)", 5, 28, 8, 8, 3, 1),
    ("macro32 cifar_full stem-level conv3x3 (64 images, 32x32, 24->32)", 64, 32, 24, 32, 3, 1),
    ("macro32 cifar_full conv3x3 64->64 at 32x32", 64, 32, 64, 64, 3, 1),
    ("macro32 cifar_full conv3x3 128->128 at 16x16", 64, 16, 128, 128, 3, 1),
)


def measure(n, side, c, o, k, stride, impl, repeats):
    key = jax.random.key(0)
    x = jax.random.normal(key, (n, side, side, c))
    w = jax.random.normal(key, (k, k, c, o)) * (k * k * c) ** -0.5

    def step(carry, _=None):
        x, w = carry
        gw, gx = jax.grad(lambda w, x: jnp.sum(jnp.tanh(conv2d(x, w, stride, "SAME", impl))),
                          argnums=(0, 1))(w, x)
        return (x - 1e-3 * gx, w - 1e-3 * gw), None

    one, two = jax.jit(lambda c: step(c)[0]), jax.jit(lambda c: jax.lax.scan(step, c, None, length=2)[0])
    alone = statistics.median(timed(lambda: one((x, w)), repeats))
    looped = statistics.median(timed(lambda: two((x, w)), repeats))
    return {"step_s": alone, "scan2_s": looped, "loop_ratio": looped / (2 * alone)}


def evaluator_timing(steps=100):
    """The library path the encoder's convolutions sit in: ``Evaluator.meta_train`` (chunks
    of 50 steps as one ``lax.scan``) on random data of the transfer config's CPU size (24
    tasks x 32 scored candidates, 64 task images 16x16x3, 8 tasks a step). Returns (first
    call's seconds with compilation for ``steps`` steps, seconds per step after it)."""
    from bench_supernet import PRESETS
    from metanas_jax import spaces
    from metanas_jax.search.evaluator import Evaluator, MetaTasks

    space = spaces.get("macro32", **PRESETS["cifar_cpu"][0])
    key = jax.random.key(0)
    zs = space.sample(key, 24 * 32).reshape(24, 32, space.dim)
    data = MetaTasks(zs=zs, scores=jax.random.uniform(key, (24, 32)),
                     task=(jax.random.normal(key, (24, 64, 16, 16, 3)),
                           jnp.tile(jnp.arange(64) % 10, (24, 1))))
    ev = Evaluator(space)
    times = []
    for _ in range(2):
        t0 = time.perf_counter()
        ev.meta_train(jax.random.key(1), data, steps=steps, batch_tasks=8, n_support=16, n_query=16)
        times.append(time.perf_counter() - t0)
    return times[0], times[1] / steps


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="", help="JSON file for the rows (with command and machine)")
    args = ap.parse_args(argv)
    command = "python " + " ".join(shlex.quote(a) for a in ["benchmarks/bench_conv_in_loop.py", *sys.argv[1:]])
    print("command: " + command)
    print(f"devices: {jax.devices()}  cpus: {os.cpu_count()}  load average: {os.getloadavg()}")
    rows = []
    print("| shape | impl | step s | 2-step scan s | scan / (2 x step) |\n|---|---|---|---|---|")
    for what, n, side, c, o, k, stride in SHAPES:
        for impl in ("xla", "matmul"):
            r = measure(n, side, c, o, k, stride, impl, args.repeats)
            rows.append({"shape": what, "images": n, "side": side, "in": c, "out": o, "kernel": k,
                         "stride": stride, "impl": impl, **r})
            print(f"| {what} | {impl} | {r['step_s']:.4f} | {r['scan2_s']:.4f} | "
                  f"{r['loop_ratio']:.1f} |", flush=True)
    first, per_step = evaluator_timing()
    print(f"Evaluator.meta_train, 100 steps: first call {first:.2f}s (with compilation), then "
          f"{per_step * 1e3:.1f} ms a step  load {os.getloadavg()[0]:.2f}")
    if args.out:
        write_json(Path(args.out), {"command": command, "rows": rows,
                                    "evaluator_meta_train": {"first_call_s": first, "step_s": per_step}, "machine": machine(),
                                    "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())})
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
