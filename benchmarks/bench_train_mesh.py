"""Data-parallel final training: images/s of ``train.make_train_step`` on 1 vs N devices.

    python benchmarks/bench_train_mesh.py                      # 1 and 8 virtual CPU devices
    python benchmarks/bench_train_mesh.py --devices 1,2,4,8 --batch 256 --repeats 10

Each device count runs in its own process (``XLA_FLAGS=--xla_force_host_platform_device_count``
is fixed when jax starts). The step is the one ``metanas run`` uses: ``runtime.mesh=1`` is
the single-device jitted step, more devices the data-parallel one (batch split over the
mesh, state replicated, host batches assembled with ``jax.make_array_from_callback`` as in
``train.train``). On a CPU, virtual devices share the same cores: the figures show the
partitioned program's overhead and correctness, not how it scales on GPUs or hosts (XLA:CPU
runs each virtual device on its own thread, so N devices can use up to N cores where the
one-device step uses fewer: a gain of at most the core count). Also reported: the largest difference of the parameters after the timed steps from
the one-device run's (float summation order). Writes ``--out`` (JSON) with the command,
machine and load.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def worker(args):
    import jax
    import numpy as np

    from metanas_jax import data, parallel, spaces
    from metanas_jax import train as T
    from suite import timed

    n = jax.device_count()
    space = spaces.get("macro32", **json.loads(args.space))
    arch = space.decode(np.asarray(space.sample(jax.random.PRNGKey(args.seed), 1))[0])
    shape = (args.image_size, args.image_size, args.channels)
    cfg = T.FinalTrainConfig(batch_size=args.batch, epochs=1, crop_pad=2)

    class _DS:
        num_classes, image_shape = 10, shape

        def __len__(self):
            return 50_000
    net, tx, _ = T.setup(space, arch, _DS(), cfg)
    state = T.create_state(net, jax.random.key(0), shape, tx, cfg)
    mesh = parallel.make_mesh(n) if n > 1 else None
    step = T.make_train_step(net, tx, cfg, 10, data.normalize, mesh=mesh)
    rng = np.random.default_rng(0)
    batches = [(rng.integers(0, 256, (args.batch, *shape), dtype=np.uint8),
                rng.integers(0, 10, args.batch).astype(np.int32), rng.random(args.batch) < 0.5)
               for _ in range(2)]
    if mesh is None:  # as train.train: the single-device loop feeds device arrays
        batches = [tuple(jax.numpy.asarray(b) for b in bt) for bt in batches]
    else:
        state = parallel.put_replicated(parallel.to_local(state), mesh)
    key = np.asarray(jax.random.key_data(jax.random.key(1)))
    holder, i = [state], [0]

    def run():
        holder[0], m = step(holder[0], batches[i[0] % 2], key)
        i[0] += 1
        return m["loss"]
    t0 = time.perf_counter()
    jax.block_until_ready(run())
    first = time.perf_counter() - t0
    ts = timed(run, args.repeats, warmup=1)
    med = statistics.median(ts)
    params = parallel.to_local(holder[0].params)
    np.savez(args.params_out, *[np.asarray(p) for p in jax.tree.leaves(params)])
    print(json.dumps({"devices": n, "per_device_batch": args.batch // n, "batch": args.batch,
                      "first_step_s": first, "median_s": med, "min_s": min(ts), "max_s": max(ts),
                      "images_per_s": args.batch / med, "steps": i[0]}), flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", default="1,8", help="comma list of device counts")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--space", default=json.dumps(dict(layers=3, widths=[8, 16], stem_width=8)),
                    help="macro32 space keywords (JSON); default: configs/default.py's")
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--channels", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0, help="which sampled architecture")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bench_train_mesh.json"))
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--params-out", default="", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker(args)
    import numpy as np
    from suite import cpu_name, load

    rows, params = [], {}
    load_before = load()
    for n in [int(d) for d in args.devices.split(",")]:
        if args.batch % n:
            raise SystemExit(f"--batch {args.batch} does not split over {n} devices")
        env = {**os.environ, "JAX_PLATFORMS": "cpu",
               "XLA_FLAGS": (os.environ.get("XLA_FLAGS", "") +
                             f" --xla_force_host_platform_device_count={n}").strip()}
        pfile = f"/tmp/bench_train_mesh_{os.getpid()}_{n}.npz"
        cmd = [sys.executable, __file__, "--worker", "--params-out", pfile, "--batch", str(args.batch),
               "--space", args.space, "--image-size", str(args.image_size), "--channels",
               str(args.channels), "--seed", str(args.seed), "--repeats", str(args.repeats)]
        p = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if p.returncode:
            raise SystemExit(f"worker for {n} devices failed:\n{p.stderr[-3000:]}")
        row = json.loads(p.stdout.strip().splitlines()[-1])
        with np.load(pfile) as f:
            params[n] = [f[k] for k in sorted(f.files, key=lambda s: int(s.split("_")[1]))]
        os.unlink(pfile)
        rows.append(row)
        print(json.dumps(row), flush=True)
    base = rows[0]
    for row in rows:
        n = row["devices"]
        row["speed_vs_first"] = row["images_per_s"] / base["images_per_s"]
        row["max_abs_param_diff_vs_first"] = float(max(
            np.max(np.abs(a - b)) for a, b in zip(params[n], params[base["devices"]])))
    command = "python " + shlex.join([os.path.relpath(__file__, os.getcwd()), *sys.argv[1:]])
    out = {"benchmark": "bench_train_mesh", "command": command,
           "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "platform": platform.platform(),
                       "load_before": load_before, "load_after": load()},
           "note": "virtual CPU devices share the machine's cores: overhead and correctness of "
                   "the data-parallel step, not GPU/multi-host scaling (each virtual device is "
                   "a thread, so the gain is capped by the core count)",
           "settings": {k: v for k, v in vars(args).items() if k not in ("worker", "params_out", "out")},
           "time": time.strftime("%Y-%m-%d %H:%M:%S"), "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
