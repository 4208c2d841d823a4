"""How much a few-shot model's query accuracy depends on which queries are classified together.

Meta-trains one model of an ``omniglot_fewshot.py`` config (its ``meta.query_norm``,
``"batch"`` by default) for a short budget, then scores the same test episodes (the
config's seeded ones, the first ``--episodes``) four ways:

* ``batch_together``: batch norm on the statistics of all the task's queries together
  (MAML's transductive protocol, what published figures report; ``meta.meta_test``);
* ``batch_alone``: the same adapted weights, each query classified on its own (a batch of
  one: what a deployed model that sees one image at a time gets);
* ``support_together`` / ``support_alone``: batch norm on the support set's statistics
  (``MetaConfig.query_norm="support"``), queries together / one at a time (equal by
  construction: each prediction depends on its query alone).

    nice -n 19 python benchmarks/query_norm.py --config configs/omniglot_5w1s.py \
        --budget 360 --episodes 200 --out benchmarks/results/omniglot_5w1s_conv4_query_norm.json \
        [--config.meta.query_norm=support ...]

Config overrides ``--config.SECTION.KEY=VALUE`` (or ``--set KEY=VALUE``) are type-checked on
the locked config, as in ``omniglot_fewshot.py``; ``--budget`` sets ``train.time_budget_s``.

Writes a JSON with the four accuracies (95% intervals), the command, the machine and its
load (``/proc/loadavg`` before and after).
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from metanas_jax import data, meta  # noqa: E402
from omniglot_fewshot import (build_learner, build_pools, load_config, parse_args,  # noqa: E402
                              train_stage, write_result)


def loadavg() -> str:
    try:
        with open("/proc/loadavg") as f:
            return f.read().strip()
    except OSError:
        return "unknown"


def make_alone_scorer(learner, cfg, steps):
    """Jitted ``(params, z, lrs, batch) -> {mode: per-task accuracy}`` with every query
    classified alone (a batch of one), after the meta-test's adaptation."""
    def run(params, z, lrs, sx, sy, qx, qy):
        def one(sx_, sy_, qx_, qy_):
            p2, a2, _ = meta.adapt(learner, cfg, params, z, sx_, sy_, steps=steps, lrs=lrs)
            out = {}
            for mode in ("batch", "support"):
                logits = jax.vmap(lambda x, m=mode: meta.predict(
                    learner, cfg, p2, a2, x[None], sx_, m)[0])(qx_)
                out[mode] = jnp.mean((jnp.argmax(logits, -1) == qy_).astype(jnp.float32))
            return out

        return meta.map_tasks(one, sx, sy, qx, qy, strategy=cfg.strategy,
                              cpu_strategy=learner.cpu_strategy)

    return jax.jit(run)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="configs/omniglot_5w1s.py", help="configs/FILE.py[:arg]")
    ap.add_argument("--budget", type=float, default=300.0, help="meta-training seconds")
    ap.add_argument("--episodes", type=int, default=200, help="meta-test episodes")
    ap.add_argument("--out", default=None, help="result JSON path")
    args, overrides = parse_args(ap, argv)
    c = load_config(args.config, overrides + [f"train.time_budget_s={args.budget}"])
    if c.model.name != "conv4":
        raise ValueError(f"query_norm.py measures conv4 configs, got model {c.model.name!r}")
    command = "python " + " ".join([os.path.relpath(__file__, os.getcwd())] + sys.argv[1:])
    load_before = loadavg()
    d = c.data
    train_pool, _, test_pool = build_pools(d)
    learner = build_learner(c.model, d.n_way)
    mcfg = meta.MetaConfig.from_dict(c.meta.to_dict())
    key = jax.random.PRNGKey(c.train.seed)
    state = meta.init_state(learner, mcfg, key, train_pool.images[0, : d.n_way * d.k_shot])
    state, rec = train_stage("meta_state", learner, mcfg, state, d.meta_batch, c.train, c=c,
                             pool=train_pool, workdir=None, key=key)

    t0 = time.time()
    kw = dict(n_way=d.n_way, k_shot=d.k_shot, n_query=d.n_query_test,
              num_episodes=args.episodes, seed=c.eval.seed, batch_size=c.eval.batch_size)
    results = {}
    for mode in ("batch", "support"):
        r = meta.meta_test(learner, mcfg.replace(query_norm=mode), state, test_pool, **kw)
        results[f"{mode}_together"] = {"accuracy": r["accuracy"], "ci95": r["ci95"]}
    steps = mcfg.eval_inner_steps
    alone = make_alone_scorer(learner, mcfg, steps)
    accs = {"batch": [], "support": []}
    base = jax.random.PRNGKey(c.eval.seed)
    for i in range(-(-args.episodes // c.eval.batch_size)):  # meta_test's episodes, in order
        b = data.sample_episodes(jax.random.fold_in(base, i), test_pool, d.n_way, d.k_shot,
                                 d.n_query_test, c.eval.batch_size)
        out = alone(state.params, state.arch, state.inner_lrs, b.support_x, b.support_y,
                    b.query_x, b.query_y)
        for mode in accs:
            accs[mode].append(np.asarray(out[mode]))
    for mode, v in accs.items():
        mean, ci = meta.confidence_interval(np.concatenate(v)[: args.episodes])
        results[f"{mode}_alone"] = {"accuracy": mean, "ci95": ci}
    eval_s = time.time() - t0
    for name, r in results.items():
        print(f"{name:18s} {100 * r['accuracy']:.2f} +- {100 * r['ci95']:.2f}%", flush=True)
    out = {"results": results, "trained_query_norm": mcfg.query_norm,
           "meta_steps": rec["meta_steps"], "train_s": rec["train_s"],
           "compile_s": rec["compile_s"], "eval_s": eval_s, "episodes": args.episodes,
           "n_query_test": d.n_query_test, "eval_inner_steps": steps, "config": c.to_dict(),
           "command": command, "machine": {"platform": platform.platform(),
                                           "processor": platform.processor(),
                                           "cpu_count": os.cpu_count(),
                                           "backend": jax.default_backend(),
                                           "jax": jax.__version__},
           "loadavg_before": load_before, "loadavg_after": loadavg()}
    write_result(args.out, out)
    return out


if __name__ == "__main__":
    main()
