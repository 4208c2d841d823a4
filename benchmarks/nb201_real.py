"""NAS-Bench-201 with real training: search the nb201 cell space on CIFAR-10, every
candidate trained for real with a short proxy; ground truth from the table.

Issue 23, item 6. Each candidate cell is trained from scratch (full-batch Adam, ``steps``
steps on ``--train`` images carved from CIFAR-10's *train* split, at ``image_size``) in a
small NAS-Bench-201 network (``--channels`` stem channels, ``--cells`` cells per stage;
the benchmark's skeleton: stem, 3 stages, residual reduction blocks) and scored by its
accuracy on ``--val`` other train-split images. CIFAR-10's test split is never read. The
network is a *hard* supernet written here: one compiled program for every cell, each edge a
``lax.switch`` that runs only its chosen op (the library's NB201 mixing supernet computes
all five ops of every edge and took minutes to compile on this CPU).

1. Proxy fidelity: ``--fidelity-archs`` random cells scored with each proxy of
   ``--proxies`` (``STEPSxIMAGESxSIZE``); Kendall tau against the table's 200-epoch
   CIFAR-10 test accuracy, seconds per evaluation, tau per second. The search uses the
   proxy with the highest tau per second (or ``--proxy``).
2. Search: random search, regularized evolution, the searcher without meta-training and
   the meta-searcher (evaluator meta-trained on the table's CIFAR-100 and ImageNet16-120
   columns, strategy meta-learned by ES on simulated searches over them, settings as in
   ``bench_nb201.py``), ``--seeds`` seeds x ``--budget`` real evaluations in batches of
   ``--batch``. Evaluations are deterministic per cell and cached across methods and seeds.
   Reported per method: the table CIFAR-10 accuracy of the proxy-best cell after N
   evaluations (what the search would return), and of the table-best cell among those
   evaluated (what a perfect proxy would have picked).

    python benchmarks/nb201_real.py                       # full run
    python benchmarks/nb201_real.py --smoke               # 1 seed, budget 10, tiny proxies
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import shlex
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from metanas_jax import data
from metanas_jax.nn.fastconv import conv2d
from metanas_jax.search import (Evaluator, EvaluatorConfig, MetaSearcher, MetaTasks, RandomSearch,
                                RegularizedEvolution, StrategyConfig, StrategyParams, arch_index,
                                index_to_z,
                                kendall_tau, load_nb201, meta_train_strategy, recommend,
                                run_search,
                                scratch_searcher, tau_before_after)
from metanas_jax.spaces.nb201 import NB201_EDGES

sys.path.insert(0, str(Path(__file__).resolve().parent))
from transfer_comparison import machine  # noqa: E402

CIFAR10 = "/work/shared/data/cifar10/cifar10-jpg.tar"
RESULTS = Path(__file__).resolve().parent / "results"
CHECKPOINTS = (10, 20, 50)
EPS = 1e-5


# -- the network: NAS-Bench-201's skeleton, every edge a lax.switch over its five ops ------------
def _conv_init(key, k, cin, cout):
    return jax.random.normal(key, (k, k, cin, cout), jnp.float32) * np.sqrt(1.0 / (k * k * cin))


def _bn_init(c):
    return {"scale": jnp.ones((c,), jnp.float32), "bias": jnp.zeros((c,), jnp.float32)}


def init_params(key, channels: int, cells: int, num_classes: int = 10, in_ch: int = 3) -> dict:
    """Every op of every edge of every cell (only the chosen ones are used and trained)."""
    keys = iter(jax.random.split(key, 4 + 3 * (3 * cells * 12 + 6)))
    p = {"stem": _conv_init(next(keys), 3, in_ch, channels), "stem_bn": _bn_init(channels)}
    c = channels
    for s in range(3):
        if s:
            p[f"reduce{s}"] = {"a": _conv_init(next(keys), 3, c, 2 * c), "a_bn": _bn_init(2 * c),
                               "b": _conv_init(next(keys), 3, 2 * c, 2 * c), "b_bn": _bn_init(2 * c),
                               "short": _conv_init(next(keys), 1, c, 2 * c)}
            c *= 2
        for k in range(cells):
            p[f"s{s}c{k}"] = [{"w1": _conv_init(next(keys), 1, c, c), "bn1": _bn_init(c),
                               "w3": _conv_init(next(keys), 3, c, c), "bn3": _bn_init(c)}
                              for _ in NB201_EDGES]
    p["last_bn"] = _bn_init(c)
    p["head"] = {"w": jax.random.normal(next(keys), (c, num_classes)) * np.sqrt(1.0 / c),
                 "b": jnp.zeros((num_classes,))}
    return p


def _bn(x, p):
    mean = jnp.mean(x, (0, 1, 2))
    var = jnp.maximum(jnp.mean(jnp.square(x), (0, 1, 2)) - jnp.square(mean), 0.0)
    return (x - mean) * jax.lax.rsqrt(var + EPS) * p["scale"] + p["bias"]


def _avg_pool(x):  # 3x3, stride 1, count_include_pad=False (NAS-Bench-201's)
    ones = jnp.ones((1, *x.shape[1:3], 1), x.dtype)
    win = lambda a: jax.lax.reduce_window(a, 0.0, jax.lax.add, (1, 3, 3, 1), (1, 1, 1, 1), "SAME")
    return win(x) / win(ones)


def _edge(op, h, p):
    branches = (lambda h, p: jnp.zeros_like(h),
                lambda h, p: h,
                lambda h, p: _bn(conv2d(jax.nn.relu(h), p["w1"]), p["bn1"]),
                lambda h, p: _bn(conv2d(jax.nn.relu(h), p["w3"]), p["bn3"]),
                lambda h, p: _avg_pool(h))
    return jax.lax.switch(op, branches, h, p)


def forward(p, x, ops, cells: int):
    """Logits of the cell ``ops (6,) int32`` (indices into NB201_OPS) on images ``x``."""
    x = _bn(conv2d(x, p["stem"]), p["stem_bn"])
    for s in range(3):
        if s:
            r = p[f"reduce{s}"]
            y = _bn(conv2d(jax.nn.relu(x), r["a"], stride=2), r["a_bn"])
            y = _bn(conv2d(jax.nn.relu(y), r["b"]), r["b_bn"])
            short = conv2d(jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, 2, 2, 1), (1, 2, 2, 1),
                                                 "SAME") / 4.0, r["short"])
            x = y + short
        for k in range(cells):
            ep = p[f"s{s}c{k}"]
            nodes = [x]
            for to in (1, 2, 3):
                acc = jnp.zeros_like(x)
                for e, (t, i) in enumerate(NB201_EDGES):
                    if t == to:
                        acc = acc + _edge(ops[e], nodes[i], ep[e])
                nodes.append(acc)
            x = nodes[3]
    x = jax.nn.relu(_bn(x, p["last_bn"]))
    return jnp.mean(x, (1, 2)) @ p["head"]["w"] + p["head"]["b"]


@dataclasses.dataclass(frozen=True)
class Proxy:
    """Short training of one candidate: ``steps`` full-batch Adam steps on ``images``
    training images of ``size`` x ``size`` pixels."""

    steps: int
    images: int
    size: int
    lr: float = 0.01

    @staticmethod
    def parse(text: str, lr: float = 0.01) -> "Proxy":
        try:
            steps, images, size = (int(v) for v in text.lower().split("x"))
        except ValueError:
            raise ValueError(f"a proxy is STEPSxIMAGESxSIZE (e.g. 20x256x16), got {text!r}") from None
        if min(steps, images, size) < 1:
            raise ValueError(f"proxy {text!r}: steps, images and size must be >= 1")
        return Proxy(steps, images, size, lr)

    @property
    def name(self) -> str:
        return f"{self.steps}x{self.images}x{self.size}"


@functools.lru_cache(maxsize=8)
def _train_eval(steps: int, lr: float, channels: int, cells: int, num_classes: int):
    opt = optax.adam(lr)

    def run(key, ops, sx, sy, qx, qy):
        p = init_params(key, channels, cells, num_classes, sx.shape[-1])

        def loss(p):
            logits = forward(p, sx, ops, cells)
            return optax.softmax_cross_entropy_with_integer_labels(logits, sy).mean()

        def step(carry, _):
            p, s = carry
            g = jax.grad(loss)(p)
            u, s = opt.update(g, s, p)
            return (optax.apply_updates(p, u), s), None

        (p, _), _ = jax.lax.scan(step, (p, opt.init(p)), None, length=steps)
        logits = forward(p, qx, ops, cells)
        return jnp.where(jnp.all(jnp.isfinite(logits)), jnp.mean(jnp.argmax(logits, -1) == qy), jnp.nan)

    return jax.jit(run)


# -- data -------------------------------------------------------------------------------------
def cifar_split(path: str, size: int, n_train: int, n_val: int, seed: int = 0):
    """``(train images, labels, val images, labels)``, disjoint, both stratified subsamples
    of CIFAR-10's *train* split at ``size`` x ``size``, normalized. The val images are the
    same for every proxy size (drawn first, with ``seed``); train images come from the rest."""
    ds = data.load(f"folder:{path}", split="train", image_size=size)
    val = data.subsample(ds, n_val, seed)
    # data.subsample returns indices in dataset order; recover them to carve the rest
    idx_val = _subsample_indices(ds, n_val, seed)
    assert np.array_equal(ds.images[idx_val], val.images)
    rest = ds.subset(np.setdiff1d(np.arange(len(ds)), idx_val))
    tr = data.subsample(rest, n_train, seed + 1)
    batch = data.task_batch_from_datasets(tr, val)
    return tuple(np.asarray(a[0]) for a in batch)


def _subsample_indices(ds, n, seed):
    tagged = dataclasses.replace(ds, meta={**ds.meta, "_i": np.arange(len(ds))})
    return np.asarray(data.subsample(tagged, n, seed).meta["_i"])


class CellEvaluator:
    """Scores cells with one proxy; each cell is trained once (its init key is a function
    of the seed and the cell), so results are cached across methods and seeds."""

    def __init__(self, space, proxy: Proxy, task, *, channels: int, cells: int, seed: int = 0):
        self.space, self.proxy, self.cells = space, proxy, cells
        self.sx, self.sy, self.qx, self.qy = (jnp.asarray(a) for a in task)
        self.fn = _train_eval(proxy.steps, proxy.lr, channels, cells, 10)
        self.key = jax.random.key(seed)
        self.cache: dict[int, float] = {}
        self.seconds = 0.0
        self.trained = 0
        self.compile_seconds = 0.0

    def indices(self, zs) -> np.ndarray:
        return np.asarray(arch_index(self.space, jnp.asarray(zs, jnp.float32)))

    def compile(self):
        t0 = time.perf_counter()
        jax.block_until_ready(self._one(0))
        self.compile_seconds = time.perf_counter() - t0

    def _one(self, index: int):
        ops = np.asarray(np.unravel_index(index, tuple(self.space.cardinalities)), np.int32)
        return self.fn(jax.random.fold_in(self.key, int(index)), jnp.asarray(ops), self.sx, self.sy,
                       self.qx, self.qy)

    def __call__(self, zs) -> np.ndarray:
        out = []
        for i in self.indices(zs):
            i = int(i)
            if i not in self.cache:
                t0 = time.perf_counter()
                acc = float(self._one(i))
                self.seconds += time.perf_counter() - t0
                self.trained += 1
                self.cache[i] = acc if np.isfinite(acc) else 0.0
            out.append(self.cache[i])
        return np.asarray(out, np.float32)


# -- proxy fidelity ---------------------------------------------------------------------------
def fidelity(space, table, proxies, cells: np.ndarray, *, channels: int, n_cells: int, n_val: int,
             data_path: str, seed: int = 0, log=print):
    """Per proxy: Kendall tau of its scores of ``cells`` (table indices) against the table's
    CIFAR-10 accuracy, seconds per evaluation (compilation apart), tau per second. Returns
    ``(rows, evaluators)``; each evaluator's cache keeps the cells it scored."""
    zs = np.asarray(index_to_z(space, jnp.asarray(cells, jnp.int32)))
    truth = np.asarray(table.lookup(jnp.asarray(zs), "cifar10"), np.float64)
    rows, evaluators = {}, {}
    for px in proxies:
        task = cifar_split(data_path, px.size, px.images, n_val, seed)
        ev = CellEvaluator(space, px, task, channels=channels, cells=n_cells, seed=seed)
        ev.compile()
        scores = ev(zs)
        per = ev.seconds / max(ev.trained, 1)
        tau = kendall_tau(scores, truth)
        rows[px.name] = {"steps": px.steps, "images": px.images, "size": px.size, "lr": px.lr,
                         "tau": tau, "seconds_per_eval": per, "tau_per_second": tau / per,
                         "compile_seconds": ev.compile_seconds, "mean": float(np.mean(scores)),
                         "std": float(np.std(scores)), "scores": scores.tolist()}
        evaluators[px.name] = ev
        log(f"proxy {px.name}: Kendall tau {tau:.3f} vs table CIFAR-10 over {len(cells)} cells, "
            f"{per:.2f} s/eval (compile {ev.compile_seconds:.0f} s), tau/s {tau / per:.3f}, "
            f"mean proxy accuracy {np.mean(scores):.3f} +- {np.std(scores):.3f}", flush=True)
    return {"cells": np.asarray(cells).tolist(), "table_cifar10": truth.tolist(), "proxies": rows}, evaluators


# -- the search comparison --------------------------------------------------------------------
def picked_curves(proxy_scores, table_scores):
    """Per evaluation count n (1..N): the table score of the proxy-best cell among the first
    n (first one on ties), and the best table score among the first n."""
    p = np.asarray(proxy_scores, np.float64)
    t = np.asarray(table_scores, np.float64)
    best = np.zeros(len(p), np.int64)
    for n in range(1, len(p)):
        best[n] = n if p[n] > p[best[n - 1]] else best[n - 1]
    return t[best], np.maximum.accumulate(t)


_recommend = jax.jit(recommend)


def run_method(searcher, evaluate, table, budget: int, seeds, key, log=None) -> list[dict]:
    """``budget`` evaluations per seed through ``run_search``; per seed the cells (table
    indices) in evaluation order, their proxy and table scores, the picked curves and,
    after every round, the table score of the cell the searcher recommends
    (:func:`metanas_jax.search.recommend`: its model's pick where it has one, else the
    proxy-best)."""
    out = []
    for s in seeds:
        t0 = time.perf_counter()
        rounds = []  # (evaluations done, recommended history row) after each round
        state = run_search(searcher, evaluate, budget, jax.random.fold_in(key, s),
                           callback=lambda done, st: rounds.append((done, int(_recommend(searcher, st)))))
        zs = np.asarray(state.history.zs)[:budget]
        idx = np.asarray(arch_index(searcher.space, jnp.asarray(zs))).tolist()
        proxy = np.asarray(state.history.scores)[:budget]
        truth = np.asarray(table.lookup(jnp.asarray(zs), "cifar10")) * 100
        picked, oracle = picked_curves(proxy, truth)
        out.append({"seed": int(s), "cells": idx, "proxy": proxy.tolist(), "table": truth.tolist(),
                    "picked": picked.tolist(), "best_evaluated": oracle.tolist(),
                    "recommended": {str(n): float(truth[row]) for n, row in rounds},
                    "unique": len(set(idx)), "seconds": time.perf_counter() - t0})
        if log:
            log(f"  seed {s}: picked {picked[-1]:.2f}, recommended {truth[rounds[-1][1]]:.2f} "
                f"(best evaluated {oracle[-1]:.2f}), {time.perf_counter() - t0:.0f} s", flush=True)
    return out


def summarize(runs: list[dict], checkpoints) -> dict:
    res = {}
    for key in ("picked", "best_evaluated"):
        a = np.asarray([r[key] for r in runs])
        res[key] = {n: [float(a[:, n - 1].mean()), float(a[:, n - 1].std())]
                    for n in checkpoints if n <= a.shape[1]}
    rec = [r["recommended"] for r in runs]
    res["recommended"] = {n: [float(np.mean(v)), float(np.std(v))]
                          for n in checkpoints
                          if all(str(n) in r for r in rec) for v in [[r[str(n)] for r in rec]]}
    return res


def build_methods(space, table, *, batch, budget, meta_steps, es_iterations, es_rounds,
                  scratch_fit_steps, key, log=print):
    """The four searchers. The meta-searcher's evaluator and strategy are meta-learned on
    the table's CIFAR-100 and ImageNet16-120 columns exactly as in ``bench_nb201.py``."""
    k_eval, k_es, k_tau = jax.random.split(key, 3)
    Z = table.all_encodings()
    train = MetaTasks(zs=jnp.stack([Z, Z]),
                      scores=jnp.stack([table.lookup(Z, "cifar100"), table.lookup(Z, "imagenet16-120")]),
                      task=jnp.array([0, 1]))
    held_out = MetaTasks(zs=Z[None], scores=table.lookup(Z, "cifar10")[None], task=jnp.array([-1]))
    ev = Evaluator(space, EvaluatorConfig(task_input="table", num_tables=2))
    t0 = time.perf_counter()
    params, _ = ev.meta_train(k_eval, train, steps=meta_steps, log_every=0)
    t_meta = time.perf_counter() - t0
    tau = tau_before_after(ev, params, held_out, k_tau, n_observed=20, n_eval=2000, repeats=5)
    log(f"evaluator meta-trained {meta_steps} steps on CIFAR-100 + ImageNet16-120 in {t_meta:.0f} s; "
        f"table CIFAR-10 (held out) Kendall tau {tau['before'][0]:.3f} before adaptation, "
        f"{tau['after'][0]:.3f} after 20 table observations", flush=True)
    scfg = StrategyConfig()
    meta = MetaSearcher(evaluator=ev, params=params, strategy=StrategyParams.create(),
                        task=jnp.array(-1), batch_size=batch, capacity=budget, strategy_config=scfg)
    t0 = time.perf_counter()
    meta_es, trace = meta_train_strategy(
        meta.replace(capacity=es_rounds * batch), jnp.array([-1, -1]), train.zs, train.scores, k_es,
        rounds=es_rounds, iterations=es_iterations, population=8, seeds=2)
    t_es = time.perf_counter() - t0
    learned = meta_es.strategy
    log(f"strategy ES {es_iterations} iterations in {t_es:.0f} s: "
        f"{ {k: round(v, 4) for k, v in learned.describe().items()} }", flush=True)
    methods = {
        "random search": RandomSearch(space, batch, budget),
        "regularized evolution": RegularizedEvolution(space, batch, budget, population_size=20,
                                                      tournament_size=5),
        "searcher, no meta-training": scratch_searcher(space, batch_size=batch, capacity=budget,
                                                       fit_steps=scratch_fit_steps,
                                                       strategy_config=scfg),
        "meta-searcher": meta.replace(strategy=learned),
    }
    info = {"meta_train_seconds": t_meta, "es_seconds": t_es, "strategy": learned.describe(),
            "es_trace": np.asarray(trace).tolist(),
            "evaluator_tau_cifar10_table": {"before": float(tau["before"][0]),
                                            "after_20": float(tau["after"][0])}}
    return methods, info


def plot(path: Path, results: dict, budget: int, optimum: float, title: str):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    n = np.arange(1, budget + 1)
    for name, runs in results.items():
        a = np.asarray([r["picked"] for r in runs])
        m, s = a.mean(0), a.std(0)
        line, = ax.plot(n, m, label=name)
        ax.fill_between(n, m - s, m + s, color=line.get_color(), alpha=0.12)
        rec = [r["recommended"] for r in runs]
        if any(r["recommended"][k] != r["picked"][int(k) - 1] for r in runs for k in r["recommended"]):
            ks = sorted(rec[0], key=int)
            ax.plot([int(k) for k in ks], [np.mean([r[k] for r in rec]) for k in ks], "o--",
                    color=line.get_color(), ms=3, lw=1, label=f"{name}: model's pick")
    ax.axhline(optimum, color="k", ls=":", lw=1, label=f"table optimum {optimum:.2f}")
    ax.axhline(94.0, color="gray", ls="--", lw=1, label="issue target 94.0")
    ax.set_xlabel("real evaluations")
    ax.set_ylabel("table CIFAR-10 test acc. of the picked cell (%)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--table", default=None, help="nats_bench_tss.csv (default: ../shared/data/...)")
    ap.add_argument("--data", default=CIFAR10, help="CIFAR-10 image-folder tar")
    ap.add_argument("--channels", type=int, default=8, help="stem channels (NAS-Bench-201: 16)")
    ap.add_argument("--cells", type=int, default=1, help="cells per stage (NAS-Bench-201: 5)")
    ap.add_argument("--val", type=int, default=1000, help="validation images (from the train split)")
    ap.add_argument("--lr", type=float, default=0.01, help="proxy Adam learning rate")
    ap.add_argument("--proxies", default="10x64x8,20x128x8,10x128x16",
                    help="comma-separated STEPSxIMAGESxSIZE proxies for the fidelity step")
    ap.add_argument("--proxy", default="", help="search with this proxy (default: best tau/s)")
    ap.add_argument("--fidelity-archs", type=int, default=50)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--budget", type=int, default=50)
    ap.add_argument("--batch", type=int, default=10)
    ap.add_argument("--meta-steps", type=int, default=1500)
    ap.add_argument("--es-iterations", type=int, default=10)
    ap.add_argument("--scratch-fit-steps", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="results JSON (default: benchmarks/results/"
                    "nb201_real_cifar10.json; the smoke run writes none unless given)")
    ap.add_argument("--plot", default=None, help="plot PNG (default: beside --out)")
    ap.add_argument("--smoke", action="store_true", help="1 seed, budget 10, tiny proxies")
    ap.add_argument("--fidelity-only", action="store_true",
                    help="stop after the proxy-fidelity step (its JSON has no search)")
    args = ap.parse_args(argv)
    if args.smoke:
        args.seeds, args.budget, args.fidelity_archs = 1, 10, 6
        args.proxies, args.meta_steps, args.es_iterations = "2x32x8,4x32x8", 100, 1
        args.val, args.scratch_fit_steps = 200, 20
    if args.out is None and not args.smoke:
        args.out = str(RESULTS / "nb201_real_cifar10.json")
    if args.budget % args.batch:
        ap.error(f"--budget ({args.budget}) must be a multiple of --batch ({args.batch})")
    command = "python " + shlex.join(["benchmarks/nb201_real.py", *(sys.argv[1:] if argv is None else argv)])
    t_start = time.perf_counter()
    load_start = list(os.getloadavg())
    log = print

    table = load_nb201(args.table)
    space = table.space
    key = jax.random.key(args.seed)
    proxies = [Proxy.parse(p, args.lr) for p in args.proxies.split(",")]
    if args.proxy and args.proxy not in [p.name for p in proxies]:
        proxies.append(Proxy.parse(args.proxy, args.lr))

    # 1. proxy fidelity
    rng = np.random.default_rng(args.seed)
    cells = np.sort(rng.choice(table.size, args.fidelity_archs, replace=False))
    t0 = time.perf_counter()
    fid, evaluators = fidelity(space, table, proxies, cells, channels=args.channels, n_cells=args.cells,
                               n_val=args.val, data_path=args.data, seed=args.seed, log=log)
    t_fid = time.perf_counter() - t0
    rows = fid["proxies"]
    chosen = args.proxy or max(rows, key=lambda k: rows[k]["tau_per_second"])
    log(f"chosen proxy: {chosen} ({'given' if args.proxy else 'highest tau per second'})", flush=True)
    evaluate = evaluators[chosen]
    if args.fidelity_only:
        total = time.perf_counter() - t_start
        lines = [f"| {n} | {r['tau']:.3f} | {r['seconds_per_eval']:.2f} | {r['tau_per_second']:.3f} | "
                 f"{r['mean']:.3f} |" for n, r in rows.items()]
        log("\n| proxy | tau | s / eval | tau / s | mean proxy acc |\n|---|---|---|---|---|\n"
            + "\n".join(lines) + f"\n\ntotal {total:.0f} s; load average {load_start[0]:.1f} at start, "
            f"{os.getloadavg()[0]:.1f} at end\nCommand: `{command}`", flush=True)
        if args.out:
            Path(args.out).write_text(json.dumps(
                {"command": command, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                 "settings": vars(args), "machine": machine(),
                 "load_avg": {"start": load_start, "end": list(os.getloadavg())},
                 "seconds": total, "fidelity": fid}, indent=1))
            log(f"wrote {args.out}")
        return rows

    # 2. the searchers (meta-learning on the table's other columns)
    methods, info = build_methods(space, table, batch=args.batch, budget=args.budget,
                                  meta_steps=args.meta_steps, es_iterations=args.es_iterations,
                                  es_rounds=args.budget // args.batch,
                                  scratch_fit_steps=args.scratch_fit_steps,
                                  key=jax.random.fold_in(key, 1), log=log)

    # 3. the search comparison, same seeds for every method, one cache of evaluations
    results, summary, seconds = {}, {}, {}
    for name, s in methods.items():
        log(f"{name}:", flush=True)
        t0 = time.perf_counter()
        results[name] = run_method(s, evaluate, table, args.budget, range(args.seeds),
                                   jax.random.fold_in(key, 2), log=log)
        seconds[name] = time.perf_counter() - t0
        summary[name] = summarize(results[name], CHECKPOINTS)
    total = time.perf_counter() - t_start
    load_end = list(os.getloadavg())

    opt = table.optimum("cifar10") * 100
    cols = [n for n in CHECKPOINTS if n <= args.budget]
    fmt = lambda ms: f"{ms[0]:.2f} +- {ms[1]:.2f}"
    lines = ["Proxy fidelity (Kendall tau of proxy accuracy vs table CIFAR-10 test accuracy, "
             f"{len(cells)} random cells; network: {args.channels} stem channels, {args.cells} cell(s) "
             f"per stage; {args.val} validation images):", "",
             "| proxy (steps x images x size) | tau | s / eval | tau / s | mean proxy acc |",
             "|---|---|---|---|---|"]
    for name, r in rows.items():
        lines.append(f"| {name}{' (chosen)' if name == chosen else ''} | {r['tau']:.3f} | "
                     f"{r['seconds_per_eval']:.2f} | {r['tau_per_second']:.3f} | {r['mean']:.3f} |")
    lines += ["", f"NAS-Bench-201 with real training, CIFAR-10 (table optimum {opt:.2f}%), proxy {chosen}, "
              f"{args.seeds} seeds, batch {args.batch}: table CIFAR-10 test accuracy (%) of the "
              f"proxy-best cell after N real evaluations (mean +- std over seeds); last column: "
              f"best table accuracy among the cells evaluated (a perfect proxy's pick)", "",
              "| method | " + " | ".join(f"N={n}" for n in cols)
              + f" | best evaluated, N={args.budget} | wall s |",
              "|---|" + "---|" * (len(cols) + 2)]
    for name in methods:
        sm = summary[name]
        lines.append(f"| {name} | " + " | ".join(fmt(sm["picked"][n]) for n in cols)
                     + f" | {fmt(sm['best_evaluated'][args.budget])} | {seconds[name]:.0f} |")
    lines += ["", "The searcher's own recommendation (`search.recommend`: the adapted evaluator's "
              "highest prediction among the evaluated cells for the model-based searchers, the "
              "proxy-best cell for the others), table CIFAR-10 test accuracy (%):", "",
              "| method | " + " | ".join(f"N={n}" for n in cols) + " |", "|---|" + "---|" * len(cols)]
    for name in methods:
        rec = summary[name]["recommended"]
        lines.append(f"| {name} | " + " | ".join(fmt(rec[n]) if n in rec else "-" for n in cols) + " |")
    lines += ["", f"Candidate trainings: {evaluate.trained} distinct cells trained with the chosen "
              f"proxy ({evaluate.seconds / max(evaluate.trained, 1):.2f} s each); fidelity "
              f"{t_fid:.0f} s; meta-training {info['meta_train_seconds']:.0f} s + ES "
              f"{info['es_seconds']:.0f} s; total {total:.0f} s; load average "
              f"{load_start[0]:.1f} at start, {load_end[0]:.1f} at end.",
              "", f"Command: `{command}`"]
    log("\n" + "\n".join(lines), flush=True)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        blob = {"command": command, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                "settings": {k: v for k, v in vars(args).items()}, "chosen_proxy": chosen,
                "network": {"channels": args.channels, "cells_per_stage": args.cells,
                            "skeleton": "NAS-Bench-201 (stem, 3 stages, residual reductions)"},
                "data": {"train": "stratified subsample of CIFAR-10 train split",
                         "val": f"{args.val} other train-split images", "test split": "not used"},
                "machine": machine(), "load_avg": {"start": load_start, "end": load_end},
                "seconds": {"total": total, "fidelity": t_fid, "per_method": seconds,
                            "per_eval": evaluate.seconds / max(evaluate.trained, 1)},
                "distinct_cells_trained": evaluate.trained, "fidelity": fid, "meta": info,
                "table_optimum": opt, "summary": summary, "runs": results}
        tmp = out.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(blob, indent=1))
        tmp.replace(out)
        png = Path(args.plot) if args.plot else out.with_suffix(".png")
        plot(png, results, args.budget, opt, f"NAS-Bench-201 CIFAR-10, real training (proxy {chosen}), "
             f"{args.seeds} seeds")
        log(f"wrote {out} and {png}")
    return summary


if __name__ == "__main__":
    main()
