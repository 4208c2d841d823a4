"""The depthwise shift-add's weight gradient: one ``lax.map`` over taps vs one reduction per tap.

``nn.fastconv``'s depthwise convolution (every DARTS separable and dilated convolution on
CPU) has a hand-written gradient. Its weight gradient sums, per tap of the kernel, that
tap's window of the input times the output gradient. Written as one reduction per tap
(the reference here, the library's code until 2026-12-04) a 5x5 kernel puts 25 reductions
into the program, each a kernel XLA compiles on its own, and the supernet's meta-step
holds hundreds of them; ``fastconv._tap_sums`` runs one slice-multiply-reduce under
``lax.map``. This times both, compile and call of the whole gradient (input and weight)
of one depthwise convolution, on the DARTS supernet's shapes (5 support or 75 query
images; 8/16/32 channels at 28/14/7 pixels; the four DARTS kernels; stride 2 for a
reduction cell's input edges), and checks they agree.

    python benchmarks/bench_depthwise_grad.py --json benchmarks/results/depthwise_grad_2026-12-04.json
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import suite  # noqa: E402
from metanas_jax.nn import fastconv  # noqa: E402

# (images, pixels, channels, kernel, dilation, stride): the supernet's depthwise geometries
CASES = [(75, 28, 8, 5, 1, 1), (75, 28, 8, 3, 1, 1), (75, 28, 8, 5, 2, 1), (75, 28, 8, 3, 2, 1),
         (5, 28, 8, 5, 1, 1), (75, 28, 16, 5, 1, 2), (75, 14, 16, 5, 1, 1),
         (75, 14, 32, 3, 2, 2), (75, 7, 32, 5, 1, 1)]


def per_tap_sums(xp, g, kh, kw, stride, dilation):
    """The reference: one reduction per tap (a Python loop, so ``kh * kw`` of them)."""
    _, ho, wo, _ = g.shape
    return jnp.stack([jnp.sum(tap * g, (0, 1, 2))
                      for tap in fastconv._taps(xp, ho, wo, kh, kw, stride, dilation)])


def measure(case, tap_sums, repeats):
    n, size, c, k, dil, stride = case
    kx, kw_, kg = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (n, size, size, c))
    w = jax.random.normal(kw_, (k, k, 1, c))
    r = jax.random.normal(kg, (n, -(-size // stride), -(-size // stride), c))

    def loss(x, w):
        return jnp.sum(fastconv.conv2d(x, w, stride, "SAME", "matmul", dil, groups=c) * r)

    saved, fastconv._tap_sums = fastconv._tap_sums, tap_sums
    try:  # traced with the chosen weight gradient
        return suite.compile_and_time(jax.grad(loss, argnums=(0, 1)), (x, w), repeats)
    finally:
        fastconv._tap_sums = saved


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--json", default="", help="write the figures here")
    args = ap.parse_args(argv)
    command = suite.announce("bench_depthwise_grad.py", argv)
    rows = []
    for case in CASES:
        ref_c, ref_t, ref = measure(case, per_tap_sums, args.repeats)
        map_c, map_t, new = measure(case, fastconv._tap_sums, args.repeats)
        err = suite.relative_difference(ref, new)
        if err > 1e-5:
            raise SystemExit(f"{case}: the two weight gradients disagree (relative {err:.1e})")
        row = dict(zip(("images", "pixels", "channels", "kernel", "dilation", "stride"), case),
                   per_tap_compile_s=ref_c, map_compile_s=map_c, per_tap_call_ms=1e3 * ref_t,
                   map_call_ms=1e3 * map_t, relative_difference=err)
        rows.append(row)
        print(f"{n_str(case)}: compile per-tap {ref_c * 1e3:5.0f} ms, map {map_c * 1e3:5.0f} ms; "
              f"call per-tap {ref_t * 1e3:7.3f} ms, map {map_t * 1e3:7.3f} ms", flush=True)
    print(f"load average at end: {suite.load()}\nreproduce: {command}")
    if args.json:
        suite.write_result(args.json, command, repeats=args.repeats, rows=rows)


def n_str(case):
    n, size, c, k, dil, stride = case
    return f"{n:2d}x{size}x{size}x{c:2d} {k}x{k} dil {dil} stride {stride}"


if __name__ == "__main__":
    main()
