"""Tune a two-stage config's second stage without re-running the search: meta-train the
derived cell of a saved meta-architecture (fresh weights) for a short budget, then meta-test.

    python benchmarks/derived_probe.py --config configs/omniglot_5w1s.py:darts_derived \
        --arch-from benchmarks/results/omniglot_5w1s_darts_derived.json --budget 240 \
        --episodes 200 [--config.derive.meta.meta_lr=0.003 --config.derive.model.channels=16 ...]

The architecture is ``result.meta_arch_json`` of an ``omniglot_fewshot.py`` result; the
stage is the config's ``derive`` section with the ``--config.KEY=VALUE`` overrides
(type-checked on the locked config, as in ``omniglot_fewshot.py``; ``--set KEY=VALUE`` is
the same). The supernet's
weights are not in the result, so ``derive.inherit`` is ignored: the weights start fresh
(inherited ones learned hardly faster, see ``configs/omniglot_5w1s.py``). The meta-test
uses the config's test episodes (the first ``--episodes`` of them), so probes compare on
the same tasks; a short probe ranks settings, it does not predict the full stage's figure.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402

from metanas_jax.spaces import Arch  # noqa: E402
from omniglot_fewshot import (build_learner, build_pools, derived_stage, load_config,  # noqa: E402
                              meta_test, parse_args, train_stage)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", required=True, help="configs/FILE.py[:arg] with a derive section")
    ap.add_argument("--arch-from", required=True, help="result JSON of omniglot_fewshot.py")
    ap.add_argument("--budget", type=float, default=240.0,
                    help="meta-training seconds (or derive.num_steps meta-steps, if fewer)")
    ap.add_argument("--episodes", type=int, default=200, help="meta-test episodes")
    args, overrides = parse_args(ap, argv)
    c = load_config(args.config, overrides)
    if not c.get("derive"):
        raise ValueError(f"--config {args.config} has no derive section (no second stage to probe)")
    with open(args.arch_from) as f:
        result = json.load(f)["result"]
    if "meta_arch_json" not in result:
        raise ValueError(f"--arch-from {args.arch_from}: no result.meta_arch_json "
                         f"(not a searched-architecture result)")
    arch = Arch.from_json(result["meta_arch_json"])

    train_pool, _, test_pool = build_pools(c.data)
    d = c.data
    sample_x = train_pool.images[0, : d.n_way * d.k_shot]
    learner, mcfg, state = derived_stage(c, build_learner(c.model, d.n_way), arch, sample_x)
    budget = c.derive.copy_and_resolve_references()
    budget.time_budget_s = args.budget
    state, rec = train_stage("derived_probe", learner, mcfg, state, c.derive.meta_batch, budget,
                             c=c, pool=train_pool, workdir=None, key=jax.random.PRNGKey(c.train.seed))
    t = time.time()
    res = meta_test(c, learner, mcfg, state, test_pool, args.episodes)
    curve = " ".join(f"{h['step']}:{h['accuracy']:.3f}" for h in rec["history"])
    print(f"command: python {' '.join([os.path.relpath(__file__)] + sys.argv[1:])}\n"
          f"derived cell {arch}\ncompile {rec['compile_s']:.0f}s, {rec['meta_steps']} meta-steps "
          f"in {rec['train_s']:.0f}s; training query accuracy by step: {curve}\n"
          f"PROBE {' '.join(overrides) or '(config as is)'}: meta-test {100 * res['accuracy']:.2f} "
          f"+- {100 * res['ci95']:.2f}% over {res['episodes']} episodes ({time.time() - t:.0f}s)",
          flush=True)
    return res


if __name__ == "__main__":
    main()
