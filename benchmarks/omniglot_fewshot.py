"""Meta-train on a few-shot benchmark within a wall-clock budget, then meta-test.

    python benchmarks/omniglot_fewshot.py --config configs/omniglot_5w1s.py[:darts] \
        [--config.train.time_budget_s=600 --config.meta.algorithm=fomaml ...] \
        --out /tmp/result.json \
        [--workdir /tmp/run]   # keeps the meta-trained state; a rerun only meta-tests,
                               # a killed run's rerun continues from its last save
    # choose evaluation settings on the validation pool, not the test classes:
    python benchmarks/omniglot_fewshot.py --config ... --workdir /tmp/run \
        --config.eval.split=val --config.eval.inner_steps=5
    # meta-batch split over 8 devices (and hosts: --coordinator H:P --num-processes N --process-id I)
    python benchmarks/omniglot_fewshot.py --config ... --mesh auto

A config with a ``derive`` section (``omniglot_5w1s.py:darts_derived``) has two stages: the
supernet's search (weights + architecture), then the derived cell's weights alone
(``meta.derived_learner``); the meta-test then scores the derived cell.

Prints training progress and the meta-test accuracy with its 95% interval over the
config's fixed test episodes; writes a JSON with the result, the config, the timings and
the command line (the README table is made from these files).

Overrides ``--config.SECTION.KEY=VALUE`` are those of the ``metanas`` CLI: applied to the
locked config (``metanas_jax.config``), so an unknown key or a value of the wrong type is a
``ValueError`` naming the key. ``--set KEY=VALUE`` (the recorded commands of older results)
is the same override; ``--set`` ones are applied first.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from pathlib import Path  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from metanas_jax import data, meta, parallel, spaces  # noqa: E402
from metanas_jax.checkpoint import StageCheckpoints  # noqa: E402
from metanas_jax.cli import config_overrides  # noqa: E402
from metanas_jax.config import apply_overrides  # noqa: E402
from metanas_jax.config import load_config as _load_locked  # noqa: E402

# (scan_unroll: "auto" or an int; an override of it arrives as text, which MetaConfig reads)
META_DEFAULTS = {f.name: f.default for f in dataclasses.fields(meta.MetaConfig)
                 if f.default is not dataclasses.MISSING}
# Keys an older config lacked, with what the script then used: a saved stage without the key
# agrees with a config holding that value (see ``train_stage``).
IMPLICIT_DEFAULTS = {"data.fractions": [0.64, 0.16, 0.2], "model.nodes": 4,
                     "model.stem_stride": 1, "train.n_query_train": None,
                     "derive.n_query_train": None, "eval.split": "test", "eval.inner_steps": None,
                     **{f"meta.{k}": v for k, v in json.loads(json.dumps(META_DEFAULTS, default=list)).items()}}


def jsonable(obj):
    """``obj`` with numpy / jax scalars and arrays as plain JSON values."""
    return json.loads(json.dumps(obj, default=lambda o: np.asarray(o).tolist()))


def load_config(spec: str, overrides: list[str]):
    """The locked config of ``spec`` (``configs/FILE.py[:arg]``) with ``overrides``
    (``["eval.split=val", ...]``) applied as the ``metanas`` CLI does: an unknown key or a
    value of the wrong type is a ``ValueError`` naming the key. ``meta`` gets every
    ``meta.MetaConfig`` field the file leaves out, at its default (what the meta-config then
    holds anyway), so ``--config.meta.query_norm=support`` is a known key."""
    cfg = _load_locked(spec)
    with cfg.unlocked():
        for k, v in META_DEFAULTS.items():
            if k not in cfg.meta:
                cfg.meta[k] = v
    return apply_overrides(cfg, overrides)


def parse_args(ap: argparse.ArgumentParser, argv=None):
    """``(args, overrides)``: ``ap`` (given a ``--set`` option here) parsed from ``argv``,
    overrides the ``--set KEY=VALUE`` ones then the ``--config.KEY=VALUE`` ones."""
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="config override, the same as --config.KEY=VALUE")
    args, rest = ap.parse_known_args(argv)
    return args, list(args.set) + config_overrides(rest, ap.error)


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def build_pools(c):
    ds = data.load(c.source, split="all")
    if c.source.startswith("omniglot:"):
        return data.omniglot_splits(ds, image_size=c.image_size, seed=c.split_seed,
                                    protocol=c.get("protocol", "random"))
    return data.class_split(ds, fractions=tuple(c.get("fractions", (0.64, 0.16, 0.2))),
                            seed=c.split_seed, image_size=c.image_size)


def build_learner(c, n_way):
    if c.name == "conv4":
        return meta.conv4_learner(n_way, channels=c.channels, downsample=c.downsample,
                                  conv_impl=c.conv_impl)
    if c.name == "darts":
        return meta.supernet_learner(spaces.get("darts", nodes=c.get("nodes", 4)), n_way,
                                     channels=c.channels, cells=c.cells,
                                     stem_stride=c.get("stem_stride", 1))
    raise ValueError(f"unknown model {c.name!r}; known: conv4, darts")


def sharded_step(learner, mcfg, mesh):
    """``parallel.make_sharded_meta_step`` (tasks split over ``mesh``) as a ``meta_step``
    for ``meta.meta_train``: episodes placed task-sharded, the state replicated; with
    several processes every step's inputs and outputs pass through host copies (each
    process samples the same episodes)."""
    step = parallel.make_sharded_meta_step(learner, mcfg, mesh)
    if jax.process_count() == 1:
        def run(state, batch):
            return step(jax.device_put(state, parallel.replicated(mesh)),
                        jax.device_put(batch, parallel.sharded(mesh)))
        run.lower = lambda state, batch: step.lower(
            jax.device_put(state, parallel.replicated(mesh)), jax.device_put(batch, parallel.sharded(mesh)))
        return run

    def run_multi(state, batch):
        s, m = step(parallel.put_replicated(parallel.to_local(state), mesh),
                    parallel.put_sharded(parallel.to_local(batch), mesh))
        return jax.tree.map(jnp.asarray, parallel.to_local((s, m)))
    run_multi.lower = lambda state, batch: step.lower(
        parallel.put_replicated(parallel.to_local(state), mesh),
        parallel.put_sharded(parallel.to_local(batch), mesh))
    return run_multi


def train_stage(name, learner, mcfg, state, meta_batch, t, *, c, pool, workdir, key,
                ignore=("eval",), mesh=None, checkpoint_every_s=600.0):
    """Meta-train ``state`` on ``meta_batch`` episodes of ``pool`` per step, for
    ``t.num_steps`` steps or ``t.time_budget_s`` seconds; with a workdir the result is
    checkpointed under ``workdir/name`` and a rerun restores it instead of training, if the
    config agrees outside the ``ignore`` sections (those this stage does not depend on).
    With a workdir the state is also saved every ``checkpoint_every_s`` seconds of training
    (at a log window's end): a killed run, rerun with the same command, continues from there
    with what is left of the step count and the time budget, and its steps are those of an
    uninterrupted run (each step's episodes come from the state's key and step).
    ``t.n_query_train``, when the stage section has it, overrides ``c.data``'s query images
    per class for this stage's training episodes.
    Returns ``(state, record)``, record with compile_s, train_s, meta_steps, history."""
    d = c.data
    n_query = t.get("n_query_train")
    n_query = d.n_query_train if n_query is None else n_query

    def sample(k):
        return data.sample_episodes(k, pool, d.n_way, d.k_shot, n_query, meta_batch)

    ck = StageCheckpoints(Path(workdir) / name) if workdir else None
    latest = ck.latest(lambda rec: None) if ck else None  # the record; the state below
    prior = {"compile_s": 0.0, "train_s": 0.0, "history": []}  # of a killed run's part
    if latest is not None:  # meta-trained before (or part of it): restore
        rec = latest[2]
        relevant = lambda cfg: {k: v for k, v in _flat(cfg).items()
                                if k.split(".")[0] not in ignore}
        old, new = relevant(rec["config"]), relevant(jsonable(c.to_dict()))
        old.update({k: new[k] for k in set(new) - set(old)  # a key added since, at its old value
                    if k in IMPLICIT_DEFAULTS and IMPLICIT_DEFAULTS[k] == new[k]})
        if old != new:
            raise ValueError(f"--workdir {workdir}: its {name} was meta-trained with another "
                             f"config (outside {', '.join(ignore)}); use a new workdir")
        state = ck.latest(like=state)[1]  # into the fresh state's structure and placement
        if not rec.get("partial"):
            print(f"{name}: restored from {workdir} (skipping training)", flush=True)
            return state, {"compile_s": rec["compile_s"], "train_s": rec["train_s"],
                           "meta_steps": int(state.step), "history": rec["history"]}
        prior = rec
        print(f"{name}: resuming from step {int(state.step)} ({rec['train_s']:.0f}s of "
              f"training saved in {workdir})", flush=True)
    step = meta.make_meta_step(learner, mcfg) if mesh is None else sharded_step(learner, mcfg, mesh)
    t1 = time.time()
    jax.block_until_ready(step.lower(state, sample(key)).compile())
    compile_s = prior["compile_s"] + time.time() - t1
    print(f"{name}: meta-step compiled in {time.time() - t1:.1f}s (strategy "
          f"{meta.resolve_strategy(mcfg.strategy, learner.cpu_strategy)})", flush=True)

    def host(s):  # the meta-test and checkpoints work on a host copy
        return s if mesh is None else jax.tree.map(jnp.asarray, parallel.to_local(s))

    def save(s, history, train_s, partial):
        ck.save(int(s.step), host(s), jsonable({"config": c.to_dict(), "compile_s": compile_s,
                                                "train_s": train_s, "history": history,
                                                "partial": partial}))

    def save_part(s, history, train_s):
        if int(s.step) < t.num_steps:  # the last step is the final save's
            save(s, history, train_s, True)

    state, history = meta.meta_train(step, state, sample, t.num_steps - int(state.step),
                                     time_budget_s=t.time_budget_s, log_every=c.train.log_every,
                                     log=lambda s: print(s, flush=True),
                                     checkpoint=save_part if ck else None,
                                     checkpoint_every_s=checkpoint_every_s,
                                     history=prior["history"], elapsed_s=prior["train_s"])
    train_s = history[-1]["wall_s"] if history else prior["train_s"]
    state = host(state)
    print(f"{name}: trained {int(state.step)} meta-steps in {train_s:.0f}s", flush=True)
    if ck:  # the meta-test can take as long as training on CPU: keep what it tests
        save(state, history, train_s, False)
    return state, {"compile_s": compile_s, "train_s": train_s, "meta_steps": int(state.step),
                   "history": history}


def derived_stage(c, learner, arch, sample_x):
    """The second stage's learner, meta-config and fresh state for ``arch``: the compact
    network of the meta-architecture (``c.derive.model`` overrides its sizes), meta-trained
    with ``c.meta`` updated by ``c.derive.meta`` (architecture fixed)."""
    spec = c.derive.to_dict()
    derived = meta.derived_learner(learner, arch, **spec.get("model", {}))
    dcfg = meta.MetaConfig.from_dict({**c.meta.to_dict(), **spec.get("meta", {}),
                                      "arch_update": "none"})
    dstate = meta.init_state(derived, dcfg, jax.random.fold_in(jax.random.PRNGKey(c.train.seed), 1),
                             sample_x)
    return derived, dcfg, dstate


def derive(c, learner, state, sample_x):
    """``derived_stage`` of the searched meta-architecture, its weights inherited from the
    supernet's meta-weights when ``c.derive.inherit`` (sizes unchanged), else fresh."""
    derived, dcfg, dstate = derived_stage(c, learner, learner.space.decode(state.arch), sample_x)
    if c.derive.inherit:
        try:
            params = meta.inherited_params(derived, state.params, sample_x)
        except ValueError as e:
            raise ValueError(f"derive.inherit=True cuts the derived cell's weights out of the "
                             f"supernet's, but {e}; set derive.inherit=False for fresh weights") from e
        dstate = dstate.replace(params=params, opt_state=meta.init_meta_opt_state(
            dcfg, params, dstate.inner_lrs))
    return derived, dcfg, dstate


def meta_test(c, learner, mcfg, state, pool, episodes=None):
    """``meta.meta_test`` on the config's seeded test episodes (the first ``episodes`` of
    them when given), so every run and probe of a config scores the same tasks.
    ``c.eval.inner_steps``, when set, overrides the meta-config's ``eval_inner_steps``."""
    d = c.data
    return meta.meta_test(learner, mcfg, state, pool, d.n_way, d.k_shot, d.n_query_test,
                          num_episodes=episodes or c.eval.episodes, seed=c.eval.seed,
                          batch_size=c.eval.batch_size, steps=c.eval.get("inner_steps"))


def eval_pool(c, val_pool, test_pool):
    """``(split, pool)``, the pool ``c.eval.split`` names: ``"test"`` (the default, what
    results report) or ``"val"``, the validation pool (Omniglot: the last 100 meta-training characters, see
    ``data.omniglot_splits``), for choosing evaluation settings without the test classes."""
    split = c.eval.get("split", "test")
    if split not in ("test", "val"):
        raise ValueError(f"eval.split must be 'test' or 'val', got {split!r}")
    return split, test_pool if split == "test" else val_pool


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", required=True, help="configs/FILE.py[:arg]")
    ap.add_argument("--out", default=None, help="result JSON path")
    ap.add_argument("--workdir", default=None,
                    help="save the meta-trained state here (Orbax, atomic) before the meta-test; "
                         "a rerun with the same workdir and config skips training")
    ap.add_argument("--checkpoint-every-s", type=float, default=600.0,
                    help="with --workdir: save the training state this often (seconds), so "
                         "a killed run continues where it was (default 600)")
    ap.add_argument("--mesh", default="1",
                    help="devices the meta-batch's tasks are split over: 'auto' (all, of every "
                         "process) or a number; 1 (default): one device, unsharded")
    parallel.add_distributed_flags(ap)
    ap.epilog = "Config overrides: --config.SECTION.KEY=VALUE (or --set KEY=VALUE), type-checked."
    args, overrides = parse_args(ap, argv)
    parallel.initialize(args=args)  # before any JAX computation
    mesh = parallel.mesh_from_config(args.mesh)
    c = load_config(args.config, overrides)
    command = "python " + " ".join([os.path.relpath(__file__, os.getcwd())] + sys.argv[1:])
    print(c, flush=True)
    load_start, started = os.getloadavg(), time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())

    t0 = time.time()
    train_pool, val_pool, test_pool = build_pools(c.data)
    split, scored_pool = eval_pool(c, val_pool, test_pool)
    print(f"pools: train {train_pool}, {split} {scored_pool} "
          f"({time.time() - t0:.1f}s)", flush=True)
    d = c.data
    learner = build_learner(c.model, d.n_way)
    mcfg = meta.MetaConfig.from_dict(c.meta.to_dict())
    key = jax.random.PRNGKey(c.train.seed)
    sample_x = train_pool.images[0, : d.n_way * d.k_shot]  # one task's images, for shapes
    state = meta.init_state(learner, mcfg, key, sample_x)
    two_stage = bool(c.get("derive"))
    if two_stage:  # a bad derive section fails now, not after the search
        derive(c, learner, state, sample_x)
    stage = functools.partial(train_stage, c=c, pool=train_pool, workdir=args.workdir, key=key,
                              mesh=mesh, checkpoint_every_s=args.checkpoint_every_s)
    # the search does not depend on the second stage: a workdir's search is reused when
    # only the derive section changed
    state, search = stage("meta_state", learner, mcfg, state, d.meta_batch, c.train,
                          ignore=("eval", "derive"))
    final = search
    if two_stage:  # second stage: meta-train the derived cell's weights alone
        learner, mcfg, state = derive(c, learner, state, sample_x)
        print(f"derived meta-architecture: {learner.module.arch}", flush=True)
        state, final = stage("derived_state", learner, mcfg, state, c.derive.meta_batch, c.derive)
    compile_s, train_s, history = final["compile_s"], final["train_s"], final["history"]
    steps_done = int(state.step)

    t3 = time.time()
    res = meta_test(c, learner, mcfg, state, scored_pool)
    eval_s = time.time() - t3
    print(f"META-TEST ({split} classes) {c.name}: accuracy "
          f"{100 * res['accuracy']:.2f} +- {100 * res['ci95']:.2f}% ({res['episodes']} episodes, {res['inner_steps']} inner steps) eval {eval_s:.0f}s", flush=True)
    if state.inner_lrs is not None:  # meta.learn_inner_lr: what each layer learned
        res["inner_lrs"] = {jax.tree_util.keystr(k): float(v) for k, v in
                            jax.tree_util.tree_flatten_with_path(state.inner_lrs)[0]}
    if two_stage:
        res["meta_arch"] = str(learner.module.arch)
        res["meta_arch_json"] = learner.module.arch.to_json()
    if "arch_unique" in res:
        print(f"meta-architecture: {res['meta_arch']}\n{res['arch_unique']} distinct task "
              f"architectures, mean pairwise distance {res['arch_mean_pairwise_distance']:.2f} "
              f"choices, mean distance to meta-architecture {res['arch_mean_distance_to_meta']:.2f}",
              flush=True)
    out = {"result": res, "config": c.to_dict(), "command": command, "compile_s": compile_s,
           "train_s": train_s, "meta_steps": steps_done, "eval_s": eval_s,
           "step_s": train_s / max(steps_done, 1), "history": history,
           "search": search if two_stage else None,
           "backend": jax.default_backend(), "jax": jax.__version__, "cpu_count": usable_cores(),
           "started": started, "load_start": load_start, "load_end": os.getloadavg(),
           "devices": 1 if mesh is None else int(mesh.size), "processes": jax.process_count()}
    if parallel.is_primary():
        write_result(args.out, out)
    return out


def usable_cores() -> int:
    """The CPU cores this process may run on (``taskset`` narrows them), not the machine's."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def write_result(path, out: dict) -> None:
    """``out`` as JSON at ``path`` (numpy / jax values as lists); nothing when ``path`` is empty."""
    if not path:
        return
    with open(path, "w") as f:
        json.dump(out, f, indent=1, default=lambda o: np.asarray(o).tolist())
    print(f"wrote {path}", flush=True)


if __name__ == "__main__":
    main()
