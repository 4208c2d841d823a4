"""Compile time of DARTS mixed operations: 14 edges unrolled vs one edge under ``lax.scan``.

The DARTS supernet builds every edge's mixed operation (8 primitives) as separate HLO, so
XLA compiles 14 copies per cell, and again for every gradient of the meta-step. This
measures the alternative: the same mixed operation with the 14 edges' parameters stacked
and scanned, i.e. compiled once. The chain ``h <- h + mixed_e(h)`` stands in for a cell
(same shapes on every edge); both versions compute the same function (checked).

    python benchmarks/bench_darts_compile.py
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from metanas_jax.nn.cells import darts_op  # noqa: E402
from metanas_jax.spaces.darts import DARTS_PRIMITIVES as PRIMITIVES  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--channels", type=int, default=8)
    ap.add_argument("--edges", type=int, default=14)
    ap.add_argument("--images", type=int, default=5)
    ap.add_argument("--size", type=int, default=14)
    args = ap.parse_args(argv)
    print("command: python " + " ".join(shlex.quote(a) for a in ["benchmarks/bench_darts_compile.py", *sys.argv[1:]]))
    print(f"devices: {jax.devices()}  load average: {os.getloadavg()}")
    c, n_edges = args.channels, args.edges

    class Mixed(nn.Module):
        @nn.compact
        def __call__(self, x, w):
            return sum(w[k] * darts_op(op, c, 1, op, False, None)(x, True)
                       for k, op in enumerate(PRIMITIVES))

    x = jax.random.normal(jax.random.key(0), (args.images, args.size, args.size, c))
    ws = jax.nn.softmax(jax.random.normal(jax.random.key(1), (n_edges, len(PRIMITIVES))), -1)
    mixed = Mixed()
    one = mixed.init(jax.random.key(2), x, ws[0])
    params = jax.tree.map(lambda a: jnp.stack([a] * n_edges), one)

    def unrolled(params, ws):
        h = x
        for e in range(n_edges):
            h = h + mixed.apply(jax.tree.map(lambda a: a[e], params), h, ws[e])
        return jnp.mean(h ** 2)

    def scanned(params, ws):
        h, _ = jax.lax.scan(lambda h, pw: (h + mixed.apply(pw[0], h, pw[1]), None), x, (params, ws))
        return jnp.mean(h ** 2)

    grads = {}
    for name, f in (("scanned", scanned), ("unrolled", unrolled)):
        g = jax.jit(jax.grad(f, argnums=(0, 1)))
        t0 = time.perf_counter()
        compiled = g.lower(params, ws).compile()
        compile_s = time.perf_counter() - t0
        grads[name] = jax.block_until_ready(compiled(params, ws))
        t0 = time.perf_counter()
        for _ in range(3):
            out = compiled(params, ws)
        jax.block_until_ready(out)
        print(f"{name:9s} {n_edges} edges x {len(PRIMITIVES)} ops, gradient: compile {compile_s:.1f} s, "
              f"run {(time.perf_counter() - t0) / 3 * 1e3:.0f} ms", flush=True)
    a, b = grads["unrolled"][1], grads["scanned"][1]
    rel = float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(a)))
    print(f"architecture gradients agree: max relative difference {rel:.1e}")


if __name__ == "__main__":
    main()
