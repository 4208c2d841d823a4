"""The main job: meta-train -> search -> final training -> report, resumable stage by stage.

Data flow: config -> :func:`metanas_jax.builders.prepare` (space, NAS tasks, target task)
-> :func:`meta_train` (NAS experience, evaluator meta-training, strategy ES) -> :func:`search`
(every configured method on the target task's train/val split, same budget) ->
:func:`final_train` (the first method's best architecture, trained and tested, exported) ->
:mod:`metanas_jax.report`.

This module only orders the stages: :mod:`metanas_jax.builders` turns the config into the
library's objects (data, meta-learners, searchers, settings) and checks it, and
:mod:`metanas_jax.workdir` reads and writes the workdir's records (metrics, checkpointed
stage records, resume, lock, summary) that the report reads too.

Why it resumes exactly: every random choice is a pure function of ``config.seed`` and a
position (stage, chunk, round, epoch) via ``fold_in``, and each stage checkpoints its whole
state (arrays, keys, counters, results so far) with :mod:`metanas_jax.checkpoint` at the
same positions; a rerun restores the newest checkpoint and continues, so killed + resumed
runs end with the same results as uninterrupted ones.

Workdir layout: ``config.json``, ``ckpt/<stage>/`` (Orbax), ``metrics/<stage>.jsonl``,
``experience.npz``, ``search.json``, ``final.json``, ``export/`` (model), ``report/``
(:mod:`metanas_jax.workdir`).

Devices (``runtime.mesh``: "auto" = every device, or a number; 1 = the single-device
paths): NAS-experience pairs and each search round's candidates are split over the mesh
(:class:`metanas_jax.parallel.PairRunner`, the same scores as one device), and so are the
evaluator's meta-training episodes, the strategy ES's perturbations and the MetaNAS
meta-batch's tasks; final training is data-parallel (:func:`metanas_jax.train.train`).
The searchers' own ask/tell steps run unsharded on each process (they are small).
Several processes (``jax.distributed``, :func:`metanas_jax.parallel.initialize`):
every process runs every stage and calls every checkpoint (Orbax writes once); only
process 0 takes the workdir's lock and writes ``config.json``, ``data.json``, metrics,
``experience.npz``, ``search.json``, ``final.json``, the export and the report.
"""
from __future__ import annotations

import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from metanas_jax import builders as B
from metanas_jax import data, parallel
from metanas_jax import meta as M
from metanas_jax import search as S
from metanas_jax import train as T
from metanas_jax import workdir as W
from metanas_jax.builders import Prepared
from metanas_jax.checkpoint import StageCheckpoints
from metanas_jax.workdir import STAGES


def _bar(cfg, **kw):
    from tqdm.auto import tqdm
    return tqdm(disable=not cfg.runtime.progress, dynamic_ncols=True, **kw)


# -- stage 1: meta-learning -------------------------------------------------------------------
def meta_train(cfg, workdir: Path, prep: Prepared | None = None) -> dict:
    """Stage 1 for ``meta.method``: ``"evaluator"`` (NAS experience, evaluator
    meta-training, strategy ES) or ``"metanas"`` (meta-weights + meta-architecture of the
    space's supernet, MAML family). Returns the stage record."""
    B.check_meta(cfg)
    prep = prep or B.prepare(cfg)
    if cfg.meta.method == "metanas":
        return _meta_train_metanas(cfg, workdir, prep)
    ck = StageCheckpoints(workdir / "ckpt" / "meta-train")
    metrics = W.Metrics(workdir, "meta-train", cfg.runtime.tensorboard)
    keys = B.keys(cfg)
    step, state, rec, t_start = W.resume(ck, {"seconds": 0.0})
    if rec.get("done"):
        return rec
    space = prep.space
    n_tasks, per = int(cfg.data.num_tasks), int(cfg.meta.tasks_per_checkpoint)
    folds = int(cfg.meta.cv_folds)
    n_chunks = -(-n_tasks // per)
    tasks = B.nas_tasks(cfg, keys, prep)
    mesh = B.mesh(cfg)
    # the experience so far (its chunks: the flat state, no template needed)
    zs = [state[f"['zs'][{c}]"] for c in range(step)] if step <= n_chunks else None
    scores = [state[f"['scores'][{c}]"] for c in range(step)] if step <= n_chunks else None
    tcfg = B.train_config(cfg)

    # 1a. experience, chunk by chunk
    if step < n_chunks:
        bar = _bar(cfg, total=n_tasks, initial=min(step * per, n_tasks), desc="meta-train: experience", unit="task")
        for c in range(step, n_chunks):
            sl = slice(c * per, min((c + 1) * per, n_tasks))
            sub = data.TaskBatch(*(a[sl] for a in tasks))
            exp = S.collect_experience(jax.random.fold_in(keys["experience"], c), space, sub,
                                       int(cfg.meta.archs_per_task), num_classes=int(cfg.data.n_classes),
                                       train=tcfg, costs=False, mesh=mesh)
            zs.append(np.asarray(exp.zs))
            scores.append(np.asarray(exp.scores))
            metrics.log(phase="experience", chunk=c + 1, tasks=sl.stop, mean_acc=_finite_mean(exp.scores),
                        diverged=int(np.isnan(exp.scores).sum()))
            bar.update(sl.stop - sl.start)
            bar.set_postfix(mean_acc=_finite_mean(np.concatenate(scores)))
            ck.save(c + 1, {"zs": zs, "scores": scores},
                    {"phase": "experience", "seconds": time.perf_counter() - t_start})
        bar.close()
        step = n_chunks
    if step == n_chunks:
        sc, failed = _diverged_as_failures(np.concatenate(scores), "meta-train", cfg)
        # the evaluator reads the images of a task that the search will give it, no more
        n_img = int(cfg.meta.task_images)
        exp = S.Experience(space=space, zs=np.concatenate(zs), scores=sc,
                           costs=np.full((n_tasks, int(cfg.meta.archs_per_task)), np.nan, np.float32),
                           support_x=np.asarray(tasks.support_x[:, :n_img]),
                           support_y=np.asarray(tasks.support_y[:, :n_img]),
                           meta={"steps": tcfg.steps, "lr": tcfg.lr, "num_classes": int(cfg.data.n_classes),
                                 "diverged": failed})
        if parallel.is_primary():
            S.save_experience(workdir / "experience.npz", exp)
    else:
        exp = S.load_experience(workdir / "experience.npz")
    train_data = exp.meta_tasks()
    n = exp.scores.shape[1]
    ev = B.evaluator(cfg, prep)
    n_sup = min(int(cfg.meta.evaluator_support), n // 2)

    # 1b. evaluator (one checkpoint at the end: meta-training is deterministic in its key)
    if step == n_chunks:
        t0 = time.perf_counter()
        params, losses = ev.meta_train(keys["evaluator"], train_data, steps=int(cfg.meta.evaluator_steps),
                                       batch_tasks=int(cfg.meta.batch_tasks), n_support=n_sup,
                                       n_query=n - n_sup, lr=float(cfg.meta.evaluator_lr), mesh=mesh)
        bad = np.flatnonzero(~np.isfinite(np.asarray(losses)))
        if bad.size:
            raise FloatingPointError(f"stage meta-train: the evaluator's meta-training loss became "
                                     f"non-finite at step {int(bad[0]) + 1} of {len(losses)}")
        metrics.log(phase="evaluator", steps=int(cfg.meta.evaluator_steps), first_loss=float(losses[0]),
                    last_loss=float(np.mean(losses[-10:])), seconds=time.perf_counter() - t0)
        step = n_chunks + 1
        state = {"params": params}
        rec = {"phase": "evaluator", "seconds": time.perf_counter() - t_start,
               "evaluator_loss": [float(l) for l in losses[:: max(1, len(losses) // 50)]]}
        ck.save(step, state, rec)
    else:  # resumed after it: the parameters, restored into their template
        state = ck.latest({"params": B.evaluator_template(cfg, prep)})[1]
    params = state["params"]

    # 1c. cross-validated meta-evaluation over the experience tasks (k folds)
    if step == n_chunks + 1:
        cv = None
        if folds:
            t0 = time.perf_counter()
            with _bar(cfg, total=1, desc=f"meta-train: {folds}-fold cross-validation", unit="run") as bar:
                cv = S.cross_validate(ev, train_data, keys["cv"], folds=folds, n_observed=n // 2,
                                      top_k=int(cfg.meta.cv_top_k), steps=int(cfg.meta.evaluator_steps),
                                      batch_tasks=int(cfg.meta.batch_tasks), n_support=n_sup,
                                      n_query=n - n_sup, lr=float(cfg.meta.evaluator_lr), mesh=mesh)
                bar.update(1)
            cv["seconds"] = time.perf_counter() - t0
            for f, row in enumerate(cv["folds"]):
                metrics.log(phase="cv", fold=f, **row)
            metrics.log(phase="cv", summary=True, k=cv["k"], mean=cv["mean"], std=cv["std"])
        step = n_chunks + 2
        rec = {**rec, "phase": "cv", "cv": cv, "seconds": time.perf_counter() - t_start}
        ck.save(step, state, rec)

    # 1d. strategy ES on simulated searches over the experience
    t0 = time.perf_counter()
    batch = int(cfg.search.batch_size)
    meta = S.MetaSearcher(evaluator=ev, params=params, strategy=S.StrategyParams.create(),
                          task=jax.tree.map(lambda a: a[0], train_data.task), batch_size=batch,
                          capacity=batch * max(1, min(3, n // batch)), strategy_config=B.strategy_config(cfg))
    rounds = max(1, min(3, n // batch))
    n_img = int(cfg.meta.task_images)  # images per task the evaluator's task encoder reads
    with _bar(cfg, total=1, desc="meta-train: strategy ES", unit="run") as bar:
        meta_es, trace = S.meta_train_strategy(
            meta, jax.tree.map(lambda a: a[:, :n_img], train_data.task), train_data.zs, train_data.scores,
            keys["strategy"], rounds=rounds, iterations=int(cfg.meta.es_iterations),
            population=int(cfg.meta.es_population), seeds=1, mesh=mesh)
        bar.update(1)
    metrics.log(phase="strategy", trace=[float(t) for t in trace], **meta_es.strategy.describe(),
                seconds=time.perf_counter() - t0)
    record = {"phase": "strategy", "done": True, "seconds": time.perf_counter() - t_start,
              "evaluator_loss": rec.get("evaluator_loss", []), "strategy": meta_es.strategy.describe(),
              "experience_mean_acc": float(exp.scores.mean()), "chance": 1.0 / int(cfg.data.n_classes),
              "experience_diverged": [int(exp.meta.get("diverged", 0)), int(exp.scores.size)],
              "cv": rec.get("cv")}
    record["warnings"] = W.evaluator_warnings(record)
    for w in record["warnings"]:
        metrics.log(phase="warning", message=w)
    ck.save(n_chunks + 3, {"params": params, "strategy": np.asarray(meta_es.strategy.as_vector())}, record)
    return record


def _finite_mean(a) -> float | None:
    a = np.asarray(a, np.float64)
    a = a[np.isfinite(a)]
    return float(a.mean()) if a.size else None


def _diverged_as_failures(scores: np.ndarray, stage: str, cfg):
    """Candidates whose training diverged (NaN score) count as failures scored 0, below any
    real accuracy; ``(scores, how many)``. All of them diverging stops the stage."""
    bad = ~np.isfinite(scores)
    if bad.all():
        raise FloatingPointError(
            f"stage {stage}: the training of every candidate ({bad.size}) diverged (non-finite "
            f"logits) with candidate.lr={cfg.candidate.lr}, candidate.steps={cfg.candidate.steps}; "
            f"lower candidate.lr")
    return np.where(bad, 0.0, scores).astype(np.float32), int(bad.sum())


# -- stage 1, gradient-based: MetaNAS ----------------------------------------------------------
def _meta_train_metanas(cfg, workdir: Path, prep: Prepared) -> dict:
    """``meta.metanas.steps`` meta-steps over the NAS tasks (``meta_batch`` tasks each,
    support = a task's train images, query = its validation images), checkpointed every
    ``checkpoint_every`` steps; which tasks a step uses is a pure function of the seed and
    the step, so a resumed run repeats an uninterrupted one."""
    g = cfg.meta.metanas
    total, every = int(g.steps), int(g.checkpoint_every)
    n_tasks, mb = int(cfg.data.num_tasks), int(g.meta_batch)
    ck = StageCheckpoints(workdir / "ckpt" / "meta-train")
    metrics = W.Metrics(workdir, "meta-train", cfg.runtime.tensorboard)
    keys = B.keys(cfg)
    learner, mcfg = B.metanas_learner(cfg, prep)
    step, state, rec, t_start = W.resume(  # a finished stage: its record only
        ck, {"seconds": 0.0, "history": []},
        like=lambda rec: None if rec.get("done") else B.metanas_template(learner, mcfg, prep))
    if rec.get("done"):
        return rec
    tasks = B.nas_tasks(cfg, keys, prep)
    if not step:
        state = M.init_state(learner, mcfg, keys["evaluator"], jnp.asarray(tasks.support_x[0]))
    mesh = B.mesh(cfg)  # the meta-batch's tasks split over it, the state replicated
    meta_step = M.make_meta_step(learner, mcfg, mesh=mesh)
    if mesh is not None:
        state = parallel.put_replicated(state, mesh)
    history = list(rec.get("history", []))

    def sample(key):  # the tasks of a step: a pure function of the state's key and step
        idx = np.asarray(parallel.to_local(jax.random.choice(key, n_tasks, (mb,), replace=False)))
        batch = data.TaskBatch(*(np.asarray(a)[idx] for a in tasks))
        return batch if mesh is None else parallel.put_sharded(batch, mesh)

    def after_step(state, m):
        done = int(parallel.to_local(state.step))
        if not np.isfinite(m["loss"]):
            raise FloatingPointError(f"stage meta-train (MetaNAS): the meta-loss became "
                                     f"non-finite at step {done} (lower meta.metanas.meta_lr, "
                                     f"now {g.meta_lr}, or inner_lr, now {g.inner_lr})")
        history.append([m["loss"], m["accuracy"]])
        metrics.log(phase="metanas", step=done, loss=m["loss"], accuracy=m["accuracy"],
                    support_loss_before=m["support_loss_before"],
                    support_loss_last=m["support_loss_last"])
        bar.update(1)
        bar.set_postfix(query_acc=f"{m['accuracy']:.3f}")
        if done % every == 0 and done < total:
            ck.save(done, state, {"phase": "metanas", "history": history,
                                  "seconds": time.perf_counter() - t_start})

    with _bar(cfg, total=total, initial=step, desc="meta-train: MetaNAS", unit="step") as bar:
        state, _ = M.meta_train(meta_step, state, sample, total - step, log=None,
                                callback=after_step)
    record = {"phase": "metanas", "done": True, "history": history, "seconds": time.perf_counter() - t_start,
              "meta_arch": str(prep.space.decode(np.asarray(prep.space.project(parallel.to_local(state.arch)))))}
    ck.save(total + 1, state, record)
    return record


# -- stage 2: search --------------------------------------------------------------------------
def search(cfg, workdir: Path, prep: Prepared | None = None) -> dict:
    """Every method of ``search.methods`` on the target task with ``search.budget`` real
    evaluations (train split -> validation accuracy). Checkpointed after every round."""
    methods = B.check_search(cfg)
    prep = prep or B.prepare(cfg)
    _, meta_state, _ = W.require(workdir, "meta-train", "search", like=B.meta_template(cfg, prep))
    ck = StageCheckpoints(workdir / "ckpt" / "search")
    metrics = W.Metrics(workdir, "search", cfg.runtime.tensorboard)
    keys = B.keys(cfg)
    # the record only: a searcher's state is restored below, into that searcher's form
    step, _, rec, t_start = W.resume(ck, {"results": {}, "seconds": 0.0}, like=lambda rec: None)
    if rec.get("done"):
        return rec
    results = rec["results"]
    budget = int(cfg.search.budget)
    mesh = B.mesh(cfg)
    if mesh is None:
        evaluate = S.make_evaluate_fn(prep.space, prep.search_task, keys["search_eval"],
                                      num_classes=prep.num_classes, train=B.train_config(cfg))
    else:  # each round's candidates split over the devices: the same scores
        evaluate = parallel.make_sharded_evaluate_fn(prep.space, prep.search_task, keys["search_eval"],
                                                     mesh, num_classes=prep.num_classes,
                                                     train=B.train_config(cfg))
    cache: dict[tuple, float] = {}
    for r in results.values():  # evaluations are deterministic per architecture: reuse them
        bad = set(r.get("diverged", []))
        cache.update({tuple(c): float("nan") if i in bad else s
                      for i, (c, s) in enumerate(zip(r["choices"], r["scores"]))})

    def evaluate_cached(zs):
        archs = [tuple(prep.space.decode(z).choices) for z in zs]
        todo = [i for i, a in enumerate(archs) if a not in cache]
        if todo:
            for i, s in zip(todo, evaluate(np.asarray(zs)[todo])):
                cache[archs[i]] = float(s)
        sc = np.asarray([cache[a] for a in archs], np.float32)
        return np.where(np.isnan(sc), 0.0, sc).astype(np.float32), archs, np.isnan(sc)

    for name in methods:
        if name in results and results[name].get("done"):
            continue
        searcher = B.make_searcher(cfg, name, prep, meta_state)
        state = searcher.init(keys["search"])
        r = results.get(name) or {"choices": [], "zs": [], "scores": [], "predicted": [], "seconds": 0.0,
                                  "diverged": []}
        if rec.get("current") == name:  # resumed inside this method: its state, in a fresh one's form
            state = ck.latest(like=state)[1]
        predict = jax.jit(searcher.predict) if name in ("meta", "scratch") else None
        bar = _bar(cfg, total=budget, initial=len(r["scores"]), desc=f"search: {name}", unit="eval")
        round_start, seen = [time.perf_counter()], [len(r["scores"])]

        def on_ask(state, zs, r=r, predict=predict):
            # the searcher's predictions of its candidates, before it sees their scores
            r["predicted"] += (np.asarray(predict(state, jnp.asarray(zs))).tolist() if predict
                               else [None] * len(zs))

        def evaluate_round(zs, r=r):
            sc, archs, diverged = evaluate_cached(zs)
            r["diverged"] = r.get("diverged", []) + [len(r["scores"]) + int(j) for j in np.flatnonzero(diverged)]
            r["choices"] += [list(a) for a in archs]
            r["zs"] += np.asarray(zs).tolist()
            r["scores"] += sc.tolist()
            return sc

        def on_round(done, state, r=r, name=name, bar=bar):
            nonlocal step
            r["seconds"] += time.perf_counter() - round_start[0]  # ask, evaluate, tell
            step += 1
            results[name] = r
            n_round, seen[0] = done - seen[0], done
            bar.update(n_round)
            bar.set_postfix(best=f"{max(r['scores']):.3f}")
            metrics.log(method=name, evaluations=len(r["scores"]), best=max(r["scores"]),
                        round_scores=r["scores"][-n_round:])
            ck.save(step, state, {"results": results, "current": name,
                                  "seconds": time.perf_counter() - t_start})
            round_start[0] = time.perf_counter()

        state = S.run_search(searcher, evaluate_round, budget, keys["search"], state=state,
                             done=len(r["scores"]), on_ask=on_ask, callback=on_round)
        bar.close()
        if len(r["diverged"]) == len(r["scores"]):
            _diverged_as_failures(np.full(len(r["scores"]), np.nan), f"search ({name})", cfg)
        pick = cfg.search.get("pick", "score")
        i = int(np.argmax(r["scores"])) if pick == "score" else int(S.recommend(searcher, state))
        if i in set(r["diverged"]):  # a model may still rank a failed candidate first
            i = int(np.argmax(r["scores"]))
        if int(cfg.search.get("finalists", 1)) > 1:
            pick = "finalists"

            def save_finalist(r=r, state=state, name=name):
                nonlocal step
                step += 1
                results[name] = r
                ck.save(step, state, {"results": results, "current": name,
                                      "seconds": time.perf_counter() - t_start})
            i = _train_finalists(cfg, prep, r, save_finalist)
        r.update(done=True, best_index=i, best_val=r["scores"][i], picked_by=pick,
                 best_arch=str(prep.space.make_arch(r["choices"][i])), best_choices=r["choices"][i])
        results[name] = r
        rec["current"] = None
        step += 1
        ck.save(step, {}, {"results": results, "current": None, "seconds": time.perf_counter() - t_start})
    record = {"results": results, "done": True, "primary": methods[0],
              "seconds": time.perf_counter() - t_start}
    step += 1
    ck.save(step, {}, record)
    W.write_json(workdir / "search.json", record)
    return record


def _train_finalists(cfg, prep: Prepared, r: dict, save) -> int:
    """Train a method's ``search.finalists`` best-scored candidates (recorded in
    ``r["finalists"]`` one by one, ``save()`` after each: a killed run resumes with the
    next) and return the index of the one with the best validation accuracy. The test
    split is not touched."""
    fcfg, target = B.shortened_training(cfg, prep.target, cfg.search.get("finalist_epochs", 0),
                                        cfg.search.get("finalist_images", 0))
    key = B.keys(cfg)["finalists"]
    done = {f["index"]: f for f in r.get("finalists", [])}
    r["finalists"] = list(done.values())
    for i in S.finalists(r["scores"], r["choices"], int(cfg.search.finalists), r["diverged"]):
        if i in done:
            continue
        t0 = time.perf_counter()
        arch = prep.space.make_arch(r["choices"][i])
        _, _, _, res = T.train(prep.space, arch, target, fcfg, key, evaluate_test=False)
        r["finalists"].append({"index": i, "arch": str(arch), "proxy_val": r["scores"][i],
                               "val_acc": res["val_acc"], "epochs": fcfg.epochs,
                               "train_images": len(target.train), "seconds": time.perf_counter() - t0})
        save()
    return max(r["finalists"], key=lambda f: f["val_acc"])["index"]


# -- stage 3: final training ------------------------------------------------------------------
def final_train(cfg, workdir: Path, prep: Prepared | None = None) -> dict:
    """Train the primary method's best architecture on the full target train split; test
    once at the end; export architecture + weights to ``workdir/export``."""
    _, _, srec = W.require(workdir, "search", "train")
    prep = prep or B.prepare(cfg)
    fcfg = T.FinalTrainConfig.from_config(cfg.train)
    primary = srec["primary"]
    arch = prep.space.make_arch(srec["results"][primary]["best_choices"])
    ck = StageCheckpoints(workdir / "ckpt" / "train")
    metrics = W.Metrics(workdir, "train", cfg.runtime.tensorboard)
    # a finished stage: its record; else the training state, restored into its template
    latest = ck.latest(lambda rec: None if rec.get("done") else _template_state(prep, arch, fcfg))
    if latest is not None and latest[2].get("done"):
        return latest[2]
    key = B.keys(cfg)["train"]
    start, seconds0 = None, 0.0
    if latest is not None:  # resumed
        step, state, rec = latest
        start, seconds0 = (step, state, rec["history"]), float(rec["seconds"])
    t_start = time.perf_counter() - seconds0
    every = max(1, int(cfg.runtime.checkpoint_every_epochs))

    def on_epoch(epoch, state, history):
        metrics.log(**history[-1])
        if epoch % every == 0 or epoch == fcfg.epochs:
            ck.save(epoch, state, {"history": history, "seconds": time.perf_counter() - t_start})

    mesh = B.mesh(cfg)
    state, net, history, result = T.train(prep.space, arch, prep.target, fcfg, key, start=start,
                                          on_epoch=on_epoch, progress=bool(cfg.runtime.progress),
                                          mesh=mesh)
    from metanas_jax.export import save_model
    variables = state.eval_variables()
    if parallel.is_primary():
        save_model(workdir / "export", arch, variables, num_classes=prep.num_classes,
                   image_shape=prep.target.train.image_shape, class_names=prep.target.train.class_names,
                   extra={"val_acc": result["val_acc"], "test_acc": result["test_acc"]})
    record = {"done": True, "arch": str(arch), "choices": list(arch.choices), "history": history,
              **result, "epochs": fcfg.epochs, "seconds": time.perf_counter() - t_start,
              "compute_dtype": "bfloat16" if fcfg.compute_dtype() is not None else "float32"}
    ck.save(fcfg.epochs + 1, {}, record)
    W.write_json(workdir / "final.json", record)
    return record


def _template_state(prep, arch, fcfg):
    """Shapes of the final-training state (traced, nothing computed) to restore into."""
    net, tx, _ = T.setup(prep.space, arch, prep.target.train, fcfg)
    return T.state_shapes(net, prep.target.train.image_shape, tx, fcfg)


# -- all ---------------------------------------------------------------------------------------
def run_stages(cfg, workdir: Path, stages=STAGES) -> dict:
    """Run ``stages`` in order on ``workdir`` (resuming each), then the report."""
    workdir = Path(workdir)
    # everything checkable before the workdir records the config: a config that fails
    # here leaves no config.json behind to refuse its corrected rerun
    prep = B.check_config(cfg, source="meta-train" in stages)
    with W.workdir_lock(workdir):
        W.check_config_file(cfg, workdir)
        W.write_data(workdir, prep.describe(cfg))
        out = {}
        fns = {"meta-train": meta_train, "search": search, "train": final_train}
        for st in stages:
            out[st] = fns[st](cfg, workdir, prep)
    return out
