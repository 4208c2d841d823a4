"""The main job: meta-train -> search -> final training -> report, resumable stage by stage.

Data flow: config -> :func:`prepare` (space, NAS tasks, target task) -> :func:`meta_train`
(NAS experience, evaluator meta-training, strategy ES) -> :func:`search` (every configured
method on the target task's train/val split, same budget) -> :func:`final_train` (the first
method's best architecture, trained and tested, exported) -> :mod:`metanas_jax.report`.

Why it resumes exactly: every random choice is a pure function of ``config.seed`` and a
position (stage, chunk, round, epoch) via ``fold_in``, and each stage checkpoints its whole
state (arrays, keys, counters, results so far) with :mod:`metanas_jax.checkpoint` at the
same positions; a rerun restores the newest checkpoint and continues, so killed + resumed
runs end with the same results as uninterrupted ones.

Workdir layout: ``config.json``, ``ckpt/<stage>/`` (Orbax), ``metrics/<stage>.jsonl``,
``experience.npz``, ``search.json``, ``final.json``, ``export/`` (model), ``report/``.

Devices (``runtime.mesh``: "auto" = every device, or a number; 1 = the single-device
paths): NAS-experience pairs and each search round's candidates are split over the mesh
(:class:`metanas_jax.parallel.PairRunner`, the same scores as one device), final training
is data-parallel (:func:`metanas_jax.train.train`); the evaluator's meta-training, the
strategy ES, the searchers' own steps and MetaNAS meta-training run unsharded on each
process. Several processes (``jax.distributed``, :func:`metanas_jax.parallel.initialize`):
every process runs every stage and calls every checkpoint (Orbax writes once); only
process 0 takes the workdir's lock and writes ``config.json``, ``data.json``, metrics,
``experience.npz``, ``search.json``, ``final.json``, the export and the report.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from metanas_jax import data, parallel, spaces
from metanas_jax import meta as M
from metanas_jax import search as S
from metanas_jax import train as T
from metanas_jax.checkpoint import StageCheckpoints
from metanas_jax.config import check_finite, check_workdir

STAGES = ("meta-train", "search", "train")
META_METHODS = ("evaluator", "metanas")
METHODS = ("meta", "metanas", "random", "evolution", "scratch")
# search methods that need a particular meta-learner (the rest need none)
METHOD_NEEDS = {"meta": "evaluator", "metanas": "metanas"}


# -- helpers ----------------------------------------------------------------------------------
def _bar(cfg, **kw):
    from tqdm.auto import tqdm
    return tqdm(disable=not cfg.runtime.progress, dynamic_ncols=True, **kw)


class Metrics:
    """Append-only JSONL per stage (``workdir/metrics/<stage>.jsonl``), mirrored as
    TensorBoard scalars under ``workdir/tensorboard/<stage>`` when ``tensorboard`` is
    ``"on"``, or ``"auto"`` and tensorboardX is installed (``runtime.tensorboard``)."""

    STEP_KEYS = ("step", "epoch", "evaluations", "tasks")

    def __init__(self, workdir: Path, stage: str, tensorboard: str = "off"):
        self.path = workdir / "metrics" / f"{stage}.jsonl"
        self.stage, self.writer, self._count = stage, None, 0
        if tensorboard not in ("auto", "on", "off"):
            raise ValueError(f"runtime.tensorboard must be 'auto', 'on' or 'off', got {tensorboard!r}")
        self.enabled = parallel.is_primary()  # one writer in a multi-process run
        if self.enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        if tensorboard != "off":
            try:
                from tensorboardX import SummaryWriter
            except ImportError as e:
                if tensorboard == "on":
                    raise ValueError("runtime.tensorboard='on' needs tensorboardX: "
                                     "pip install 'metanas-jax[tensorboard]'") from e
            else:
                if self.enabled:
                    self.writer = SummaryWriter(str(workdir / "tensorboard" / stage))

    def log(self, **row):
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps({"time": time.time(), **row}) + "\n")
        if self.writer is None:
            return
        self._count += 1
        step = next((int(row[k]) for k in self.STEP_KEYS if isinstance(row.get(k), (int, float))),
                    self._count)
        prefix = "/".join([self.stage] + [str(row[k]) for k in ("method", "phase") if k in row])
        for k, v in row.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in self.STEP_KEYS:
                self.writer.add_scalar(f"{prefix}/{k}", float(v), step)
        self.writer.flush()


def _write_json(path: Path, obj):
    if not parallel.is_primary():
        return
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    tmp.replace(path)


def _keys(cfg):
    root = jax.random.key(int(cfg.seed))
    return {name: jax.random.fold_in(root, i) for i, name in enumerate(
        ("tasks", "experience", "evaluator", "strategy", "search_eval", "search", "train", "cv"))}


def _train_config(cfg) -> S.TrainConfig:
    return S.TrainConfig(steps=int(cfg.meta.train_steps), lr=float(cfg.meta.lr), chunk=int(cfg.meta.chunk))


def _stage_done(workdir: Path, stage: str, state: bool = False):
    """``(step, state, record)`` of the stage's newest checkpoint if it is finished. In a
    multi-process run without ``state`` (summary, report: one process reads) the record is
    read directly, as Orbax's checkpoint managers synchronise every process."""
    ck = workdir / "ckpt" / stage
    if not ck.is_dir():
        return None
    if jax.process_count() > 1 and not state:
        latest = _latest_record(ck)
    else:
        latest = StageCheckpoints(ck).latest()
    if latest is None or not latest[2].get("done"):
        return None
    return latest


def _latest_record(ck: Path):
    """``(step, None, record)`` of the newest complete checkpoint under ``ck``, read from
    Orbax's layout (``<step>/record/metadata``, JSON) without a checkpoint manager."""
    steps = sorted((int(p.name) for p in ck.iterdir() if p.name.isdigit()), reverse=True)
    for step in steps:
        try:
            rec = json.loads((ck / str(step) / "record" / "metadata").read_text())
        except (OSError, ValueError):
            continue
        if isinstance(rec, dict):
            return step, None, rec
    return None


def _mesh(cfg):
    """The mesh of ``runtime.mesh`` (None: one device, the single-device paths)."""
    return parallel.mesh_from_config(cfg.runtime.get("mesh", "auto"))


def _require(workdir: Path, stage: str, needed_by: str):
    latest = _stage_done(workdir, stage, state=True)
    if latest is None:
        raise ValueError(f"stage {needed_by!r} needs stage {stage!r} finished in workdir "
                         f"{str(workdir)!r}; run `metanas {stage}` (or `metanas run`) first")
    return latest


# -- data -------------------------------------------------------------------------------------
@dataclasses.dataclass
class Prepared:
    space: Any
    target: data.TargetTask           # full train / val / test (final training, report)
    search_task: tuple                # (sx, sy, qx, qy) of the search subsample, normalised
    num_classes: int
    source: data.Dataset | None = None  # the checked meta-training source, once loaded

    def describe(self, cfg) -> dict:
        """What the run works on, for the summary and the report (``workdir/data.json``)."""
        t = self.target
        return {"source": str(cfg.data.source), "target": str(cfg.data.target),
                "image_shape": list(t.train.image_shape), "num_classes": self.num_classes,
                "class_names": list(t.train.class_names),
                "images": {"train": len(t.train), "val": len(t.val), "test": len(t.test),
                           "search_train": int(self.search_task[0].shape[0]),
                           "search_val": int(self.search_task[2].shape[0])}}


def prepare(cfg) -> Prepared:
    """The space and the target task (loaded, split, subsampled for search)."""
    if cfg.space.name != "macro32":
        raise ValueError(f"space.name: the pipeline supports 'macro32' so far, got {cfg.space.name!r}")
    space = spaces.get(cfg.space.name, layers=int(cfg.space.layers), ops=tuple(cfg.space.ops),
                       widths=tuple(cfg.space.widths), stem_width=int(cfg.space.stem_width),
                       stem_kernel=int(cfg.space.stem_kernel))
    size = int(cfg.data.image_size) or None
    tr = data.load(cfg.data.target, split="train", image_size=size)
    te = data.load(cfg.data.target, split="test", image_size=size)
    classes = data.parse_classes(cfg.data.target_classes, tr.class_names, "data.target_classes")
    tr, te = data.select_classes(tr, classes), data.select_classes(te, classes)
    if tr.num_classes < 2:
        raise ValueError(f"data.target {str(cfg.data.target)!r} (data.target_classes="
                         f"{str(cfg.data.target_classes)!r}) has {tr.num_classes} class(es) "
                         f"{list(tr.class_names)}: a classification target needs >= 2")
    full = data.target_task(tr, te, val_fraction=float(cfg.data.val_fraction), seed=int(cfg.seed))
    s_tr = data.subsample(full.train, cfg.data.target_train, int(cfg.seed)) \
        if 0 < cfg.data.target_train < len(full.train) else full.train
    s_va = data.subsample(full.val, cfg.data.target_val, int(cfg.seed) + 1) \
        if 0 < cfg.data.target_val < len(full.val) else full.val
    tb = data.task_batch_from_datasets(s_tr, s_va)
    return Prepared(space, full, tuple(a[0] for a in tb), int(tr.num_classes))


def _evaluator(cfg, prep: Prepared) -> S.Evaluator:
    return S.Evaluator(prep.space, S.EvaluatorConfig(
        task_input="images", max_classes=max(prep.num_classes, int(cfg.data.n_classes)),
        hidden=tuple(int(h) for h in cfg.meta.hidden)))


def _strategy_config(cfg) -> S.StrategyConfig:
    return S.StrategyConfig(n_random=int(cfg.search.n_random), n_starts=int(cfg.search.n_starts))


# -- stage 1: meta-learning -------------------------------------------------------------------

def _resume(ck: StageCheckpoints, fresh: dict):
    """``(step, state, record, start_time)`` from the stage's newest checkpoint, or a fresh
    start with ``fresh`` as the record; ``start_time`` counts the seconds already spent, so
    stage times add up over resumes. A finished stage's record has ``done`` set."""
    latest = ck.latest()
    step, state, rec = latest if latest is not None else (0, {}, fresh)
    return step, state, rec, time.perf_counter() - float(rec.get("seconds", 0.0))

def source_dataset(cfg, prep: Prepared) -> data.Dataset:
    """The meta-training source, kept apart from the target by construction and by check.

    Different datasets: every source image is compared with the target's validation and
    test images. The same dataset: only with explicitly disjoint ``data.source_classes``
    and ``data.target_classes``, and the comparison covers the target's train split too.
    Any shared image is refused with an error naming both specs."""
    src_spec, tgt_spec = str(cfg.data.source), str(cfg.data.target)
    same = data.same_dataset(src_spec, tgt_spec)
    if same and not (str(cfg.data.source_classes).strip() and str(cfg.data.target_classes).strip()):
        raise ValueError(
            f"source {src_spec!r} and target {tgt_spec!r} are the same dataset: meta-training "
            f"tasks would contain the target's images; set disjoint data.source_classes and "
            f"data.target_classes (e.g. '0-4' and '5-9'), or use another source")
    src = data.load(src_spec, split=str(cfg.data.source_split),
                    image_size=int(cfg.data.image_size) or None)
    src = data.select_classes(src, data.parse_classes(cfg.data.source_classes, src.class_names,
                                                      "data.source_classes"))
    _check_source_fits(cfg, src, prep)
    if same:
        shared = sorted(set(src.class_names) & set(prep.target.train.class_names))
        if shared:
            raise ValueError(f"source {src_spec!r} and target {tgt_spec!r} are the same dataset "
                             f"and share classes {shared[:5]}; data.source_classes and "
                             f"data.target_classes must be disjoint")
    splits = {"validation": prep.target.val, "test": prep.target.test}
    if same:
        splits = {"train": prep.target.train, **splits}
    data.check_separated(src, splits, source_spec=src_spec, target_spec=tgt_spec)
    return src


def _check_source_fits(cfg, src: data.Dataset, prep: Prepared) -> None:
    """One network program serves NAS tasks and target: same image shape, and enough
    source classes for ``data.n_classes``-way tasks."""
    src_shape, tgt_shape = tuple(src.image_shape), tuple(prep.target.train.image_shape)
    if src_shape != tgt_shape:
        raise ValueError(f"source {str(cfg.data.source)!r} has images of shape {src_shape}, target "
                         f"{str(cfg.data.target)!r} {tgt_shape}: the meta-learner is trained on the "
                         f"source's shape; choose a source with the target's channels (data.source) "
                         f"or one data.image_size for both")
    if src.num_classes < int(cfg.data.n_classes):
        raise ValueError(f"source {str(cfg.data.source)!r} has {src.num_classes} classes (after "
                         f"data.source_classes), fewer than data.n_classes={cfg.data.n_classes}")


def _nas_tasks(cfg, keys, prep: Prepared) -> data.TaskBatch:
    """The ``data.num_tasks`` NAS tasks (``n_train`` / ``n_val`` images) of the source."""
    src = prep.source if prep.source is not None else source_dataset(cfg, prep)
    pool = data.ClassPool.from_dataset(src, per_class="min")
    return data.sample_nas_tasks(keys["tasks"], pool, int(cfg.data.n_classes), int(cfg.data.n_train),
                                 int(cfg.data.n_val), int(cfg.data.num_tasks))


def meta_train(cfg, workdir: Path, prep: Prepared | None = None) -> dict:
    """Stage 1 for ``meta.method``: ``"evaluator"`` (NAS experience, evaluator
    meta-training, strategy ES) or ``"metanas"`` (meta-weights + meta-architecture of the
    space's supernet, MAML family). Returns the stage record."""
    if cfg.meta.method not in META_METHODS:
        raise ValueError(f"meta.method: unknown {cfg.meta.method!r}; known: {list(META_METHODS)}")
    _check_meta(cfg)
    prep = prep or prepare(cfg)
    if cfg.meta.method == "metanas":
        return _meta_train_metanas(cfg, workdir, prep)
    ck = StageCheckpoints(workdir / "ckpt" / "meta-train")
    metrics = Metrics(workdir, "meta-train", cfg.runtime.tensorboard)
    keys = _keys(cfg)
    step, state, rec, t_start = _resume(ck, {"seconds": 0.0})
    if rec.get("done"):
        return rec
    space = prep.space
    n_tasks, per = int(cfg.data.num_tasks), int(cfg.meta.tasks_per_checkpoint)
    folds = int(cfg.meta.cv_folds)
    n_chunks = -(-n_tasks // per)
    tasks = _nas_tasks(cfg, keys, prep)
    mesh = _mesh(cfg)
    zs = list(state.get("zs", [])) if step <= n_chunks else None
    scores = list(state.get("scores", [])) if step <= n_chunks else None
    tcfg = _train_config(cfg)

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
        exp = S.Experience(space=space, zs=np.concatenate(zs), scores=sc,
                           costs=np.full((n_tasks, int(cfg.meta.archs_per_task)), np.nan, np.float32),
                           support_x=np.asarray(tasks.support_x), support_y=np.asarray(tasks.support_y),
                           meta={"steps": tcfg.steps, "lr": tcfg.lr, "num_classes": int(cfg.data.n_classes),
                                 "diverged": failed})
        if parallel.is_primary():
            S.save_experience(workdir / "experience.npz", exp)
    else:
        exp = S.load_experience(workdir / "experience.npz")
    train_data = exp.meta_tasks()
    n = exp.scores.shape[1]
    ev = _evaluator(cfg, prep)
    n_sup = min(16, n // 2)

    # 1b. evaluator (one checkpoint at the end: meta-training is deterministic in its key)
    if step == n_chunks:
        t0 = time.perf_counter()
        params, losses = ev.meta_train(keys["evaluator"], train_data, steps=int(cfg.meta.evaluator_steps),
                                       batch_tasks=int(cfg.meta.batch_tasks), n_support=n_sup,
                                       n_query=n - n_sup, lr=1e-3)
        bad = np.flatnonzero(~np.isfinite(np.asarray(losses)))
        if bad.size:
            raise FloatingPointError(f"stage meta-train: the evaluator's meta-training loss became "
                                     f"non-finite at step {int(bad[0]) + 1} of {len(losses)}")
        metrics.log(phase="evaluator", steps=int(cfg.meta.evaluator_steps), first_loss=float(losses[0]),
                    last_loss=float(np.mean(losses[-10:])), seconds=time.perf_counter() - t0)
        step = n_chunks + 1
        state = {"params": params}
        ck.save(step, state, {"phase": "evaluator", "seconds": time.perf_counter() - t_start,
                              "evaluator_loss": [float(l) for l in losses[:: max(1, len(losses) // 50)]]})
        rec = ck.latest()[2]
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
                                      n_query=n - n_sup, lr=1e-3)
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
                          capacity=batch * max(1, min(3, n // batch)), strategy_config=_strategy_config(cfg))
    rounds = max(1, min(3, n // batch))
    with _bar(cfg, total=1, desc="meta-train: strategy ES", unit="run") as bar:
        meta_es, trace = S.meta_train_strategy(
            meta, jax.tree.map(lambda a: a[:, :64], train_data.task), train_data.zs, train_data.scores,
            keys["strategy"], rounds=rounds, iterations=int(cfg.meta.es_iterations),
            population=int(cfg.meta.es_population), seeds=1)
        bar.update(1)
    metrics.log(phase="strategy", trace=[float(t) for t in trace], **meta_es.strategy.describe(),
                seconds=time.perf_counter() - t0)
    record = {"phase": "strategy", "done": True, "seconds": time.perf_counter() - t_start,
              "evaluator_loss": rec.get("evaluator_loss", []), "strategy": meta_es.strategy.describe(),
              "experience_mean_acc": float(exp.scores.mean()), "chance": 1.0 / int(cfg.data.n_classes),
              "experience_diverged": [int(exp.meta.get("diverged", 0)), int(exp.scores.size)],
              "cv": rec.get("cv")}
    record["warnings"] = evaluator_warnings(record)
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
            f"logits) with meta.lr={cfg.meta.lr}, meta.train_steps={cfg.meta.train_steps}; "
            f"lower meta.lr")
    return np.where(bad, 0.0, scores).astype(np.float32), int(bad.sum())


def _check_meta(cfg) -> None:
    """Ranges of the ``meta`` and ``data`` task keys that ``meta.method`` uses (types:
    config overrides; finiteness: config.check_finite)."""
    c, d = cfg.meta, cfg.data
    at_least = {"data.num_tasks": (d.num_tasks, 2), "data.n_classes": (d.n_classes, 2),
                "data.n_train": (d.n_train, 1), "data.n_val": (d.n_val, 1),
                "meta.tasks_per_checkpoint": (c.tasks_per_checkpoint, 1),
                "meta.archs_per_task": (c.archs_per_task, 1), "meta.train_steps": (c.train_steps, 1),
                "meta.chunk": (c.chunk, 1), "meta.evaluator_steps": (c.evaluator_steps, 1),
                "meta.batch_tasks": (c.batch_tasks, 1), "meta.cv_top_k": (c.cv_top_k, 1),
                "meta.cv_folds": (c.cv_folds, 0), "meta.es_iterations": (c.es_iterations, 1),
                "meta.es_population": (c.es_population, 1)}
    for key, (v, lo) in at_least.items():
        if int(v) < lo:
            raise ValueError(f"{key} must be >= {lo}, got {v}")
    if not float(c.lr) > 0:
        raise ValueError(f"meta.lr (the candidates' training rate) must be > 0, got {c.lr}")
    if not 0 < float(d.val_fraction) < 1:
        raise ValueError(f"data.val_fraction must be in (0, 1), got {d.val_fraction}")
    folds, n_tasks = int(c.cv_folds), int(d.num_tasks)
    if c.method == "evaluator" and folds and not (2 <= folds <= n_tasks and int(c.archs_per_task) >= 4):
        raise ValueError(f"meta.cv_folds={folds}: cross-validation needs 2 <= folds <= data.num_tasks "
                         f"({n_tasks}) and meta.archs_per_task >= 4 ({c.archs_per_task}); "
                         f"0 turns it off")
    g = c.metanas
    if c.method != "metanas":
        return
    for key in ("inner_lr", "arch_inner_lr", "meta_lr", "arch_meta_lr"):
        if not float(g[key]) >= 0:
            raise ValueError(f"meta.metanas.{key} must be >= 0, got {g[key]}")
    if int(g.steps) < 1 or int(g.checkpoint_every) < 1 or not 1 <= int(g.meta_batch) <= n_tasks:
        raise ValueError(f"meta.metanas: need steps >= 1, checkpoint_every >= 1 and "
                         f"1 <= meta_batch <= data.num_tasks ({n_tasks}); got steps={g.steps}, "
                         f"checkpoint_every={g.checkpoint_every}, meta_batch={g.meta_batch}")


def evaluator_warnings(record: dict) -> list[str]:
    """What in a meta-train record says the meta-learner cannot be trusted: experience at
    chance (the proxy carries no signal), a rising meta-training loss, a held-out rank
    correlation <= 0 or a top-k regret no better than random choice."""
    out = []
    acc, chance = record.get("experience_mean_acc"), record.get("chance")
    failed, total = record.get("experience_diverged") or (0, 0)
    if failed:
        out.append(f"{failed} of {total} NAS-experience trainings diverged (non-finite logits; "
                   f"scored 0): meta.lr may be too high")
    if acc is not None and chance and acc < 1.5 * chance:
        out.append(f"NAS-experience accuracy {acc:.3f} is near chance ({chance:.3f}): the candidate "
                   f"training proxy (meta.train_steps, data.n_train) carries little signal")
    losses = np.asarray(record.get("evaluator_loss") or [], np.float64)
    if losses.size >= 4:
        k = max(1, losses.size // 10)
        first, last = float(losses[:k].mean()), float(losses[-k:].mean())
        if not np.isfinite(last) or last > first:
            out.append(f"evaluator meta-training loss rose from {first:.3g} to {last:.3g} (diverged)")
    cv = record.get("cv")
    if cv:
        m = cv["mean"]
        if m["after"] <= 0:
            out.append(f"held-out Kendall tau after adaptation {m['after']:.3f} <= 0 "
                       f"({cv['k']}-fold cross-validation): the evaluator does not rank new tasks' "
                       f"architectures")
        if m["regret_after"] >= m["regret_random"]:
            out.append(f"held-out top-{cv['top_k']} regret after adaptation {m['regret_after']:.3f} is "
                       f"no better than random choice ({m['regret_random']:.3f})")
    return out


# -- stage 1, gradient-based: MetaNAS ----------------------------------------------------------
def _metanas(cfg, prep: Prepared):
    """The MetaNAS learner (the space's soft supernet; head sized for the NAS tasks and the
    target) and its inner/outer-loop settings from ``meta.metanas``."""
    g = cfg.meta.metanas
    # macro32 genes live in [0, 1]: start the meta-architecture in the middle of the cube
    learner = M.supernet_learner(prep.space, max(prep.num_classes, int(cfg.data.n_classes)),
                                 arch_init_scale=0.05, arch_init_center=0.5)
    try:
        mcfg = M.MetaConfig(algorithm=str(g.algorithm), inner_steps=int(g.inner_steps),
                            eval_inner_steps=int(g.adapt_steps), inner_lr=float(g.inner_lr),
                            arch_update="alternating", arch_inner_lr=float(g.arch_inner_lr),
                            meta_lr=float(g.meta_lr), arch_meta_lr=float(g.arch_meta_lr))
    except ValueError as e:
        raise ValueError(f"meta.metanas: {e}") from e
    return learner, mcfg


def _metanas_state(learner, mcfg, prep: Prepared, leaves):
    """The meta-state whose leaves were checkpointed (structure from a fresh init)."""
    fresh = M.init_state(learner, mcfg, jax.random.key(0), jnp.asarray(prep.search_task[0][:2]))
    return jax.tree.unflatten(jax.tree.structure(fresh), [jnp.asarray(x) for x in leaves])


def _meta_train_metanas(cfg, workdir: Path, prep: Prepared) -> dict:
    """``meta.metanas.steps`` meta-steps over the NAS tasks (``meta_batch`` tasks each,
    support = a task's train images, query = its validation images), checkpointed every
    ``checkpoint_every`` steps; which tasks a step uses is a pure function of the seed and
    the step, so a resumed run repeats an uninterrupted one."""
    g = cfg.meta.metanas
    total, every = int(g.steps), int(g.checkpoint_every)
    n_tasks, mb = int(cfg.data.num_tasks), int(g.meta_batch)
    ck = StageCheckpoints(workdir / "ckpt" / "meta-train")
    metrics = Metrics(workdir, "meta-train", cfg.runtime.tensorboard)
    keys = _keys(cfg)
    step, st, rec, t_start = _resume(ck, {"seconds": 0.0, "history": []})
    if rec.get("done"):
        return rec
    learner, mcfg = _metanas(cfg, prep)
    tasks = _nas_tasks(cfg, keys, prep)
    if step:
        state = _metanas_state(learner, mcfg, prep, st["leaves"])
    else:
        state = M.init_state(learner, mcfg, keys["evaluator"], jnp.asarray(tasks.support_x[0]))
    meta_step = M.make_meta_step(learner, mcfg)
    history = list(rec.get("history", []))
    with _bar(cfg, total=total, initial=step, desc="meta-train: MetaNAS", unit="step") as bar:
        while step < total:
            idx = jax.random.choice(jax.random.fold_in(keys["experience"], step), n_tasks, (mb,),
                                    replace=False)
            state, m = meta_step(state, data.TaskBatch(*(a[idx] for a in tasks)))
            step += 1
            m = {k: float(v) for k, v in jax.device_get(m).items()}
            if not np.isfinite(m["loss"]):
                raise FloatingPointError(f"stage meta-train (MetaNAS): the meta-loss became "
                                         f"non-finite at step {step} (lower meta.metanas.meta_lr, "
                                         f"now {g.meta_lr}, or inner_lr, now {g.inner_lr})")
            history.append([m["loss"], m["accuracy"]])
            metrics.log(phase="metanas", step=step, loss=m["loss"], accuracy=m["accuracy"],
                        support_loss_before=m["support_loss_before"],
                        support_loss_last=m["support_loss_last"])
            bar.update(1)
            bar.set_postfix(query_acc=f"{m['accuracy']:.3f}")
            if step % every == 0 and step < total:
                ck.save(step, {"leaves": list(jax.tree.leaves(state))},
                        {"phase": "metanas", "history": history, "seconds": time.perf_counter() - t_start})
    record = {"phase": "metanas", "done": True, "history": history, "seconds": time.perf_counter() - t_start,
              "meta_arch": str(prep.space.decode(np.asarray(prep.space.project(state.arch))))}
    ck.save(total + 1, {"leaves": list(jax.tree.leaves(state))}, record)
    return record


def _metanas_center(cfg, prep: Prepared, meta_state) -> jax.Array:
    """The meta-architecture adapted to the target: ``meta.metanas.adapt_steps`` inner
    steps (weights and architecture) on the search split's training images."""
    learner, mcfg = _metanas(cfg, prep)
    state = _metanas_state(learner, mcfg, prep, meta_state["leaves"])
    sx, sy = (jnp.asarray(a) for a in prep.search_task[:2])
    adapt = jax.jit(lambda p, z, r: M.adapt(learner, mcfg, p, z, sx, sy,
                                            steps=mcfg.eval_inner_steps, lrs=r)[1])
    return adapt(state.params, state.arch, state.inner_lrs)


# -- stage 2: search --------------------------------------------------------------------------
def _make_searcher(cfg, name, prep, meta_state):
    space, b, cap = prep.space, int(cfg.search.batch_size), int(cfg.search.budget)
    cap = max(cap, b)
    if name == "metanas":
        return S.NeighbourhoodSearch(space, center=_metanas_center(cfg, prep, meta_state),
                                     scale=float(cfg.meta.metanas.explore), batch_size=b, capacity=cap)
    if name == "meta":
        ev = _evaluator(cfg, prep)
        task = (prep.search_task[0][:64], prep.search_task[1][:64])
        return S.MetaSearcher(evaluator=ev, params=jax.tree.map(jnp.asarray, meta_state["params"]),
                              strategy=S.StrategyParams.from_vector(jnp.asarray(meta_state["strategy"])),
                              task=task, batch_size=b, capacity=cap, strategy_config=_strategy_config(cfg))
    if name == "random":
        return S.RandomSearch(space, b, cap)
    if name == "evolution":
        return S.RegularizedEvolution(space, b, cap, population_size=max(2, min(20, cap // 2)),
                                      tournament_size=max(1, min(5, cap // 4)))
    if name == "scratch":
        return S.scratch_searcher(space, batch_size=b, capacity=cap, fit_steps=100,
                                  config=S.EvaluatorConfig(task_input="none", hidden=tuple(cfg.meta.hidden)),
                                  strategy_config=_strategy_config(cfg))
    raise ValueError(f"search.methods: unknown method {name!r}; known: {list(METHODS)}")


def _check_search(cfg) -> tuple[str, ...]:
    methods = tuple(cfg.search.methods)
    if not methods:
        raise ValueError("search.methods must name at least one method")
    for m in methods:
        if m not in METHODS:
            raise ValueError(f"search.methods: unknown method {m!r}; known: {list(METHODS)}")
        if METHOD_NEEDS.get(m, cfg.meta.method) != cfg.meta.method:
            raise ValueError(f"search.methods: {m!r} needs meta.method={METHOD_NEEDS[m]!r}, "
                             f"the config has meta.method={cfg.meta.method!r}")
    for name in ("budget", "batch_size"):
        if int(cfg.search[name]) < 1:
            raise ValueError(f"search.{name} must be >= 1, got {cfg.search[name]}")
    return methods


def search(cfg, workdir: Path, prep: Prepared | None = None) -> dict:
    """Every method of ``search.methods`` on the target task with ``search.budget`` real
    evaluations (train split -> validation accuracy). Checkpointed after every round."""
    methods = _check_search(cfg)
    _, meta_state, _ = _require(workdir, "meta-train", "search")
    prep = prep or prepare(cfg)
    ck = StageCheckpoints(workdir / "ckpt" / "search")
    metrics = Metrics(workdir, "search", cfg.runtime.tensorboard)
    keys = _keys(cfg)
    step, state_leaves, rec, t_start = _resume(ck, {"results": {}, "seconds": 0.0})
    if rec.get("done"):
        return rec
    results = rec["results"]
    budget = int(cfg.search.budget)
    mesh = _mesh(cfg)
    if mesh is None:
        evaluate = S.make_evaluate_fn(prep.space, prep.search_task, keys["search_eval"],
                                      num_classes=prep.num_classes, train=_train_config(cfg))
    else:  # each round's candidates split over the devices: the same scores
        evaluate = parallel.make_sharded_evaluate_fn(prep.space, prep.search_task, keys["search_eval"],
                                                     mesh, num_classes=prep.num_classes,
                                                     train=_train_config(cfg))
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
        searcher = _make_searcher(cfg, name, prep, meta_state)
        state = searcher.init(keys["search"])
        r = results.get(name) or {"choices": [], "zs": [], "scores": [], "predicted": [], "seconds": 0.0,
                                  "diverged": []}
        if rec.get("current") == name and state_leaves:
            treedef = jax.tree.structure(state)
            state = jax.tree.unflatten(treedef, [jnp.asarray(x) if not isinstance(x, jax.Array) else x
                                                 for x in state_leaves["leaves"]])
        ask, tell = jax.jit(searcher.ask), jax.jit(searcher.tell)
        predict = jax.jit(searcher.predict) if name in ("meta", "scratch") else None
        bar = _bar(cfg, total=budget, initial=len(r["scores"]), desc=f"search: {name}", unit="eval")
        while len(r["scores"]) < budget:
            t0 = time.perf_counter()
            state, zs = ask(state)
            zs = np.asarray(zs)[: budget - len(r["scores"])]
            pred = np.asarray(predict(state, jnp.asarray(zs))).tolist() if predict else [None] * len(zs)
            sc, archs, diverged = evaluate_cached(zs)
            state = tell(state, jnp.asarray(zs), jnp.asarray(sc))
            r["diverged"] = r.get("diverged", []) + [len(r["scores"]) + int(j) for j in np.flatnonzero(diverged)]
            r["choices"] += [list(a) for a in archs]
            r["zs"] += zs.tolist()
            r["scores"] += sc.tolist()
            r["predicted"] += pred
            r["seconds"] += time.perf_counter() - t0
            step += 1
            results[name] = r
            bar.update(len(zs))
            bar.set_postfix(best=f"{max(r['scores']):.3f}")
            metrics.log(method=name, evaluations=len(r["scores"]), best=max(r["scores"]),
                        round_scores=sc.tolist())
            ck.save(step, {"leaves": list(jax.tree.leaves(state))},
                    {"results": results, "current": name, "seconds": time.perf_counter() - t_start})
        bar.close()
        if len(r["diverged"]) == len(r["scores"]):
            _diverged_as_failures(np.full(len(r["scores"]), np.nan), f"search ({name})", cfg)
        i = int(np.argmax(r["scores"]))
        r.update(done=True, best_index=i, best_val=r["scores"][i],
                 best_arch=str(prep.space.make_arch(r["choices"][i])), best_choices=r["choices"][i])
        results[name] = r
        state_leaves = {}
        rec["current"] = None
        step += 1
        ck.save(step, {}, {"results": results, "current": None, "seconds": time.perf_counter() - t_start})
    record = {"results": results, "done": True, "primary": methods[0],
              "seconds": time.perf_counter() - t_start}
    step += 1
    ck.save(step, {}, record)
    _write_json(workdir / "search.json", record)
    return record


def search_warnings(results: dict) -> list[str]:
    """Candidates of a search whose training diverged (scored 0, listed in ``diverged``)."""
    return [f"search {name}: {len(r['diverged'])} of {len(r['scores'])} candidates' training "
            f"diverged (non-finite logits; scored 0)" for name, r in results.items() if r.get("diverged")]


# -- stage 3: final training ------------------------------------------------------------------
def final_train(cfg, workdir: Path, prep: Prepared | None = None) -> dict:
    """Train the primary method's best architecture on the full target train split; test
    once at the end; export architecture + weights to ``workdir/export``."""
    _, _, srec = _require(workdir, "search", "train")
    prep = prep or prepare(cfg)
    fcfg = T.FinalTrainConfig.from_config(cfg.train)
    primary = srec["primary"]
    arch = prep.space.make_arch(srec["results"][primary]["best_choices"])
    ck = StageCheckpoints(workdir / "ckpt" / "train")
    metrics = Metrics(workdir, "train", cfg.runtime.tensorboard)
    latest = ck.latest()
    if latest is not None and latest[2].get("done"):
        return latest[2]
    key = _keys(cfg)["train"]
    start, seconds0 = None, 0.0
    if latest is not None:
        step, st, rec = latest
        template = _template_state(prep, arch, fcfg)
        state = jax.tree.unflatten(jax.tree.structure(template), [jnp.asarray(x) for x in st["leaves"]])
        start, seconds0 = (step, state, rec["history"]), float(rec["seconds"])
    t_start = time.perf_counter() - seconds0
    every = max(1, int(cfg.runtime.checkpoint_every_epochs))

    def on_epoch(epoch, state, history):
        metrics.log(**history[-1])
        if epoch % every == 0 or epoch == fcfg.epochs:
            ck.save(epoch, {"leaves": list(jax.tree.leaves(state))},
                    {"history": history, "seconds": time.perf_counter() - t_start})

    mesh = _mesh(cfg)
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
    _write_json(workdir / "final.json", record)
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
    prep = check_config(cfg, source="meta-train" in stages)
    with workdir_lock(workdir):
        if parallel.is_primary():
            check_workdir(cfg, workdir)
        else:
            _check_workdir_readonly(cfg, workdir)
        _write_json(workdir / "data.json", prep.describe(cfg))
        out = {}
        fns = {"meta-train": meta_train, "search": search, "train": final_train}
        for st in stages:
            out[st] = fns[st](cfg, workdir, prep)
    return out


def check_config(cfg, source: bool = True) -> Prepared:
    """The whole config checked before anything is written or trained: finite values, key
    ranges, method names, the target loaded (>= 2 classes) and, with ``source``, the source
    loaded, kept apart from the target and fitting its image shape. Returns the prepared
    data so it is loaded once."""
    check_finite(cfg)
    if cfg.meta.method not in META_METHODS:
        raise ValueError(f"meta.method: unknown {cfg.meta.method!r}; known: {list(META_METHODS)}")
    _check_meta(cfg)
    _check_search(cfg)
    T.check_batch_split(T.FinalTrainConfig.from_config(cfg.train), _mesh(cfg))
    prep = prepare(cfg)
    if source:
        prep.source = source_dataset(cfg, prep)
    return prep


@contextlib.contextmanager
def workdir_lock(workdir: Path):
    """Exclusive use of ``workdir`` by one process: a second ``metanas`` on the same workdir
    is refused at once instead of interleaving metrics and breaking checkpoints. The lock
    (``flock`` on ``workdir/.lock``) dies with its process, so a killed run resumes. In a
    multi-process run only process 0 takes it (the others share its workdir)."""
    workdir = Path(workdir)
    if workdir.exists() and not workdir.is_dir():
        raise NotADirectoryError(20, "the workdir is not a folder", str(workdir))
    workdir.mkdir(parents=True, exist_ok=True)
    if not parallel.is_primary():
        yield
        return
    f = open(workdir / ".lock", "w")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise ValueError(f"workdir {str(workdir)!r} is in use by another metanas process "
                         f"(lock {str(workdir / '.lock')!r}); wait for it or use another --workdir") from None
    try:
        yield
    finally:
        fcntl.flock(f, fcntl.LOCK_UN)
        f.close()


def _check_workdir_readonly(cfg, workdir: Path) -> None:
    """:func:`check_workdir`'s refusal of a workdir made by another config, without writing
    (the processes other than 0 of a multi-process run)."""
    from metanas_jax.config import _flatten, result_part, to_dict
    path = workdir / "config.json"
    if not path.is_file():
        return
    try:
        old = json.loads(path.read_text())
    except json.JSONDecodeError:
        return  # process 0 reports it
    a, b = _flatten(result_part(old)), _flatten(result_part(to_dict(cfg)))
    diff = sorted(k for k in set(a) | set(b) if a.get(k, "<missing>") != b.get(k, "<missing>"))
    if diff:
        raise ValueError(f"workdir {str(workdir)!r} was made by an incompatible config "
                         f"({len(diff)} key(s) differ, e.g. {diff[0]}); use another --workdir "
                         f"or the same config")


def summary(workdir: Path) -> dict:
    """Data, stage times, warnings and the final results, from the workdir's records;
    ``missing``: the stages not finished there."""
    workdir = Path(workdir)
    out = {"workdir": str(workdir), "missing": [], "warnings": []}
    if (workdir / "data.json").is_file():
        out["data"] = json.loads((workdir / "data.json").read_text())
    for st in STAGES:
        latest = _stage_done(workdir, st)
        if latest is None:
            out["missing"].append(st)
        else:
            out[f"{st} seconds"] = latest[2].get("seconds")
            if st == "meta-train":
                if latest[2].get("cv"):
                    cv = latest[2]["cv"]
                    out["cv"] = {"k": cv["k"], "top_k": cv["top_k"], "mean": cv["mean"], "std": cv["std"]}
                out["warnings"] += latest[2].get("warnings", [])
            if st == "search":
                res = latest[2]["results"]
                out["evaluations"] = {k: len(v["scores"]) for k, v in res.items()}
                out["warnings"] += search_warnings(res)
                out["primary"] = latest[2]["primary"]
            if st == "train":
                out.update(arch=latest[2]["arch"], val_acc=latest[2]["val_acc"],
                           test_acc=latest[2]["test_acc"])
    return out
