"""The 3x3 max-pool's gradient: shifted-slice maxima (``nn.ops.max_pool``) vs ``reduce_window``.

DARTS' ``max_pool_3x3`` and macro32's ``max_pool3x3`` were ``flax.linen.max_pool``, a
``reduce_window`` whose gradient XLA:CPU runs as select-and-scatter (and, for a second
derivative, select-and-gather over packed value/tangent pairs): the largest single op of
the DARTS meta-step's profile (``results/profile_darts_fomaml_mb2_tap_map_2026-12-04.txt``).
``nn.ops.max_pool`` takes the max over three row-shifted slices, then three
column-shifted ones, with a select per pair as the gradient. This times both, compile and
call of value and gradient, then of a second derivative (a Hessian-vector product, as
second-order MAML needs), on the supernet's shapes (two tasks' 75 query images, vmapped;
8/16/32 channels at 28/14/7 pixels; stride 2 for a reduction cell's input edges), and
checks they agree. The average pool stays ``reduce_window``: its gradient is a sum, fast.

    python benchmarks/bench_pool.py --json benchmarks/results/pool_grad_2026-12-04.json
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import suite  # noqa: E402
from metanas_jax.nn.ops import max_pool  # noqa: E402

# (tasks, images, pixels, channels, stride): the supernet's max-pool geometries
CASES = [(2, 75, 28, 8, 1), (2, 75, 28, 16, 2), (2, 75, 14, 16, 1), (2, 75, 14, 32, 2),
         (2, 75, 7, 32, 1)]


def reduce_window_pool(x, stride):
    """The reference: flax's max-pool (XLA ``reduce_window``)."""
    return nn.max_pool(x, (3, 3), strides=(stride, stride), padding="SAME")


def measure(case, pool, repeats):
    """(compile s, call s, result) of the gradient and of a Hessian-vector product."""
    tasks, n, size, c, stride = case
    kx, kv = jax.random.split(jax.random.key(0))
    x = jax.random.normal(kx, (tasks, n, size, size, c))
    v = jax.random.normal(kv, (tasks, n, -(-size // stride), -(-size // stride), c))

    def loss(x):  # a smooth function of the pooled values, so the Hessian is not zero
        return jnp.sum(jnp.sin(jax.vmap(lambda t: pool(t, stride))(x) * v))

    grad = jax.grad(loss)
    hvp = lambda x: jax.jvp(grad, (x,), (jnp.cos(x),))[1]  # noqa: E731
    return (suite.compile_and_time(jax.value_and_grad(loss), (x,), repeats),
            suite.compile_and_time(hvp, (x,), repeats))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--json", default="", help="write the figures here")
    args = ap.parse_args(argv)
    command = suite.announce("bench_pool.py", argv)
    rows = []
    for case in CASES:
        ref = measure(case, reduce_window_pool, args.repeats)
        new = measure(case, max_pool, args.repeats)
        row = dict(zip(("tasks", "images", "pixels", "channels", "stride"), case))
        for order, (r, m) in zip(("grad", "hvp"), zip(ref, new)):
            err = suite.relative_difference(r[2], m[2])
            if err > 1e-5:
                raise SystemExit(f"{case} {order}: the two pools disagree (relative {err:.1e})")
            row.update({f"{order}_reduce_window_compile_s": r[0], f"{order}_slices_compile_s": m[0],
                        f"{order}_reduce_window_call_ms": 1e3 * r[1],
                        f"{order}_slices_call_ms": 1e3 * m[1], f"{order}_relative_difference": err})
        rows.append(row)
        tasks, n, size, c, stride = case
        print(f"{tasks}x{n}x{size}x{size}x{c:2d} stride {stride}: "
              + "; ".join(f"{o} reduce_window {row[f'{o}_reduce_window_call_ms']:7.2f} ms, "
                          f"slices {row[f'{o}_slices_call_ms']:7.2f} ms" for o in ("grad", "hvp")),
              flush=True)
    print(f"load average at end: {suite.load()}\nreproduce: {command}")
    if args.json:
        suite.write_result(args.json, command, repeats=args.repeats, rows=rows)


if __name__ == "__main__":
    main()
