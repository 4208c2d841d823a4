"""From a config to the library's objects: data, meta-learners, searchers, settings.

Why a module of its own: the main job (:mod:`metanas_jax.pipeline`) only orders stages,
and a script or notebook that wants one piece of it (the prepared target task, the
checked meta-training source, the searcher a method name stands for) builds it here from
the same config, with the same checks, instead of copying the pipeline's code.

Every function is a pure function of the config (and of what it is given): the same config
gives the same objects, the same keys and so the same results. :func:`check_config` checks
the whole config before anything is written or trained.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from metanas_jax import data, parallel, spaces
from metanas_jax import meta as M
from metanas_jax import search as S
from metanas_jax import train as T
from metanas_jax.config import check_finite

META_METHODS = ("evaluator", "metanas")
METHODS = ("meta", "metanas", "random", "evolution", "scratch")
# search methods that need a particular meta-learner (the rest need none)
METHOD_NEEDS = {"meta": "evaluator", "metanas": "metanas"}


def keys(cfg) -> dict:
    """One PRNG key per use, each a pure function of ``config.seed`` (and its position in
    this list: never reorder it, or every result changes)."""
    root = jax.random.key(int(cfg.seed))
    return {name: jax.random.fold_in(root, i) for i, name in enumerate(
        ("tasks", "experience", "evaluator", "strategy", "search_eval", "search", "train", "cv",
         "finalists"))}


def mesh(cfg):
    """The mesh of ``runtime.mesh`` (None: one device, the single-device paths)."""
    return parallel.mesh_from_config(cfg.runtime.get("mesh", "auto"))


def train_config(cfg) -> S.TrainConfig:
    """How a candidate is trained to score it (NAS experience and search): the
    ``candidate`` section, ``steps`` full-batch steps at ``lr``."""
    c = cfg.candidate
    return S.TrainConfig(steps=int(c.steps), lr=float(c.lr), chunk=int(c.chunk))


def shortened_training(cfg, target: data.TargetTask, epochs: int = 0,
                       images: int = 0) -> tuple[T.FinalTrainConfig, data.TargetTask]:
    """The ``train`` recipe for ``epochs`` epochs on ``images`` stratified training images
    (0: the train section's epochs, the whole split; the subsample drawn with
    ``config.seed``): how ``search.finalists`` are trained to choose among them, and the
    common training of benchmarks/transfer_comparison.py."""
    fcfg = T.FinalTrainConfig.from_config(cfg.train)
    if int(epochs):
        fcfg = dataclasses.replace(fcfg, epochs=int(epochs))
    if 0 < int(images) < len(target.train):
        target = target._replace(train=data.subsample(target.train, int(images), int(cfg.seed)))
    return fcfg, target


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
    # every key but the name is a field of the space (an unknown one is a clear error there);
    # sequences become tuples, so the space stays hashable
    space = spaces.get(cfg.space.name, **{k: tuple(v) if isinstance(v, (list, tuple)) else v
                                          for k, v in cfg.space.items() if k != "name"})
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


def nas_tasks(cfg, run_keys: dict, prep: Prepared) -> data.TaskBatch:
    """The ``data.num_tasks`` NAS tasks (``n_train`` / ``n_val`` images) of the source
    (``prep.source``, or loaded and checked now), drawn with ``run_keys["tasks"]``."""
    src = prep.source if prep.source is not None else source_dataset(cfg, prep)
    pool = data.ClassPool.from_dataset(src, per_class="min")
    return data.sample_nas_tasks(run_keys["tasks"], pool, int(cfg.data.n_classes), int(cfg.data.n_train),
                                 int(cfg.data.n_val), int(cfg.data.num_tasks))


# -- meta-learners ----------------------------------------------------------------------------
def evaluator(cfg, prep: Prepared) -> S.Evaluator:
    """The meta-learned evaluator (``meta.method="evaluator"``): it reads a task's images,
    and its head has room for the NAS tasks' and the target's classes."""
    return S.Evaluator(prep.space, S.EvaluatorConfig(
        task_input="images", max_classes=max(prep.num_classes, int(cfg.data.n_classes)),
        hidden=tuple(int(h) for h in cfg.meta.hidden)))


def strategy_config(cfg) -> S.StrategyConfig:
    """The meta-searchers' candidate proposal (``search.n_random``, ``search.n_starts``)."""
    return S.StrategyConfig(n_random=int(cfg.search.n_random), n_starts=int(cfg.search.n_starts))


def metanas_learner(cfg, prep: Prepared):
    """``(learner, MetaConfig)``: the MetaNAS learner (the space's soft supernet; head sized
    for the NAS tasks and the target; the meta-architecture starts at the space's encoding
    centre, spread ``meta.metanas.arch_init_scale``) and its inner/outer-loop settings."""
    g = cfg.meta.metanas
    learner = M.supernet_learner(prep.space, max(prep.num_classes, int(cfg.data.n_classes)),
                                 arch_init_scale=float(g.arch_init_scale))
    try:
        mcfg = M.MetaConfig(algorithm=str(g.algorithm), inner_steps=int(g.inner_steps),
                            eval_inner_steps=int(g.adapt_steps), inner_lr=float(g.inner_lr),
                            arch_update="alternating", arch_inner_lr=float(g.arch_inner_lr),
                            meta_lr=float(g.meta_lr), arch_meta_lr=float(g.arch_meta_lr))
    except ValueError as e:
        raise ValueError(f"meta.metanas: {e}") from e
    return learner, mcfg


def metanas_template(learner, mcfg, prep: Prepared) -> M.MetaState:
    """A fresh MetaNAS meta-state (key 0): the template its checkpoints are restored into.
    Computed, not traced: the supernet's initialisation draws on the host."""
    return M.init_state(learner, mcfg, jax.random.key(0), jnp.asarray(prep.search_task[0][:2]))


def evaluator_template(cfg, prep: Prepared):
    """The evaluator's meta-parameters' shapes (traced, nothing computed)."""
    task = (jax.ShapeDtypeStruct((2, *prep.target.train.image_shape), jnp.float32),
            jax.ShapeDtypeStruct((2,), jnp.int32))
    return jax.eval_shape(lambda t: evaluator(cfg, prep).init(jax.random.key(0), t), task)


def meta_template(cfg, prep: Prepared):
    """The shapes of what the finished meta-train stage checkpoints, which the search stage
    restores: the MetaNAS meta-state, or the evaluator's parameters and strategy vector."""
    if cfg.meta.method == "metanas":
        return metanas_template(*metanas_learner(cfg, prep), prep)
    return {"params": evaluator_template(cfg, prep),
            "strategy": jax.eval_shape(lambda: S.StrategyParams.create().as_vector())}


def metanas_center(cfg, prep: Prepared, state: M.MetaState) -> jax.Array:
    """The meta-architecture of the meta-state ``state`` adapted to the target:
    ``meta.metanas.adapt_steps`` inner steps (weights and architecture) on the search
    split's training images."""
    learner, mcfg = metanas_learner(cfg, prep)
    sx, sy = (jnp.asarray(a) for a in prep.search_task[:2])
    adapt = jax.jit(lambda p, z, r: M.adapt(learner, mcfg, p, z, sx, sy,
                                            steps=mcfg.eval_inner_steps, lrs=r)[1],
                    compiler_options=learner.compiler_options())  # the meta-step's options
    return adapt(state.params, state.arch, state.inner_lrs)


# -- searchers --------------------------------------------------------------------------------
def make_searcher(cfg, name: str, prep: Prepared, meta_state):
    """The ask/tell searcher of search method ``name`` on the target, with ``search.budget``
    capacity and ``search.batch_size`` candidates a round; ``meta_state``: the meta-train
    stage's checkpointed state (:func:`meta_template`: the evaluator's parameters and
    strategy, or the MetaNAS meta-state), used by the methods that need one (:data:`METHOD_NEEDS`)."""
    space, b, cap = prep.space, int(cfg.search.batch_size), int(cfg.search.budget)
    cap = max(cap, b)
    if name == "metanas":
        return S.NeighbourhoodSearch(space, center=metanas_center(cfg, prep, meta_state),
                                     scale=float(cfg.meta.metanas.explore), batch_size=b, capacity=cap)
    if name == "meta":
        ev = evaluator(cfg, prep)
        n_img = int(cfg.meta.task_images)
        task = (prep.search_task[0][:n_img], prep.search_task[1][:n_img])
        return S.MetaSearcher(evaluator=ev, params=meta_state["params"],
                              strategy=S.StrategyParams.from_vector(meta_state["strategy"]),
                              task=task, batch_size=b, capacity=cap, strategy_config=strategy_config(cfg))
    if name == "random":
        return S.RandomSearch(space, b, cap)
    if name == "evolution":
        return S.RegularizedEvolution(space, b, cap, population_size=max(2, min(20, cap // 2)),
                                      tournament_size=max(1, min(5, cap // 4)))
    if name == "scratch":
        return S.scratch_searcher(space, batch_size=b, capacity=cap,
                                  fit_steps=int(cfg.search.scratch_fit_steps),
                                  config=S.EvaluatorConfig(task_input="none", hidden=tuple(cfg.meta.hidden)),
                                  strategy_config=strategy_config(cfg))
    raise ValueError(f"search.methods: unknown method {name!r}; known: {list(METHODS)}")


def from_workdir(workdir, method: str = "meta", prep: Prepared | None = None):
    """``(searcher, evaluate, prep)``: search method ``method`` as the search stage of the
    run in ``workdir`` builds it (its stored config and data, its finished meta-train
    stage's evaluator and strategy), and the candidate evaluation that stage scores with
    (``evaluate(zs) -> validation accuracies``, real proxy training on the target's search
    split; a diverged candidate scores 0, as there). ``search.run_search(searcher,
    evaluate, n, key)`` then runs a new search with them."""
    from metanas_jax import workdir as W
    from metanas_jax.config import stored_config
    workdir = Path(workdir)
    cfg = stored_config(workdir)
    if method not in METHODS:
        raise ValueError(f"from_workdir: unknown method {method!r}; known: {list(METHODS)}")
    if METHOD_NEEDS.get(method, cfg.meta.method) != cfg.meta.method:
        raise ValueError(f"from_workdir: method {method!r} needs a run with meta.method="
                         f"{METHOD_NEEDS[method]!r}; the run in {str(workdir)!r} has "
                         f"meta.method={cfg.meta.method!r}")
    prep = prep or prepare(cfg)
    _, meta_state, _ = W.require(workdir, "meta-train", "from_workdir", like=meta_template(cfg, prep))
    searcher = make_searcher(cfg, method, prep, meta_state)
    proxy = S.make_evaluate_fn(prep.space, prep.search_task, keys(cfg)["search_eval"],
                               num_classes=prep.num_classes, train=train_config(cfg))
    return searcher, lambda zs: np.nan_to_num(np.asarray(proxy(zs)), nan=0.0), prep


# -- checks -----------------------------------------------------------------------------------
PICKS = ("score", "model")  # search.pick: best validation score, or the searcher's recommendation


def check_search(cfg) -> tuple[str, ...]:
    """``search.methods`` (known, each with the meta-learner it needs) and the search
    keys' ranges; returns the methods."""
    methods = tuple(cfg.search.methods)
    if not methods:
        raise ValueError("search.methods must name at least one method")
    for m in methods:
        if m not in METHODS:
            raise ValueError(f"search.methods: unknown method {m!r}; known: {list(METHODS)}")
        if METHOD_NEEDS.get(m, cfg.meta.method) != cfg.meta.method:
            raise ValueError(f"search.methods: {m!r} needs meta.method={METHOD_NEEDS[m]!r}, "
                             f"the config has meta.method={cfg.meta.method!r}")
    for name in ("budget", "batch_size", "scratch_fit_steps"):
        if int(cfg.search[name]) < 1:
            raise ValueError(f"search.{name} must be >= 1, got {cfg.search[name]}")
    if cfg.search.get("pick", "score") not in PICKS:
        raise ValueError(f"search.pick must be one of {list(PICKS)}, got {cfg.search.pick!r}")
    k = int(cfg.search.get("finalists", 1))
    if k < 1:
        raise ValueError(f"search.finalists must be >= 1 (1: off), got {cfg.search.finalists}")
    if k > 1 and cfg.search.get("pick", "score") != "score":
        raise ValueError(f"search.finalists={k} chooses among the best-scored candidates; it "
                         f"does not combine with search.pick={cfg.search.pick!r} (set one of them)")
    for name in ("finalist_epochs", "finalist_images"):
        if int(cfg.search.get(name, 0)) < 0:
            raise ValueError(f"search.{name} must be >= 0 (0: the train section's), got {cfg.search[name]}")
    return methods


def check_meta(cfg) -> None:
    """``meta.method`` and the ranges of the ``meta`` and ``data`` task keys it uses (types:
    config overrides; finiteness: config.check_finite)."""
    if cfg.meta.method not in META_METHODS:
        raise ValueError(f"meta.method: unknown {cfg.meta.method!r}; known: {list(META_METHODS)}")
    c, d = cfg.meta, cfg.data
    at_least = {"data.num_tasks": (d.num_tasks, 2), "data.n_classes": (d.n_classes, 2),
                "data.n_train": (d.n_train, 1), "data.n_val": (d.n_val, 1),
                "meta.tasks_per_checkpoint": (c.tasks_per_checkpoint, 1),
                "meta.archs_per_task": (c.archs_per_task, 1),
                "candidate.steps": (cfg.candidate.steps, 1), "candidate.chunk": (cfg.candidate.chunk, 1),
                "meta.evaluator_steps": (c.evaluator_steps, 1),
                "meta.batch_tasks": (c.batch_tasks, 1), "meta.cv_top_k": (c.cv_top_k, 1),
                "meta.cv_folds": (c.cv_folds, 0), "meta.es_iterations": (c.es_iterations, 1),
                "meta.es_population": (c.es_population, 1),
                "meta.evaluator_support": (c.evaluator_support, 1),
                "meta.task_images": (c.task_images, 1)}
    for key, (v, lo) in at_least.items():
        if int(v) < lo:
            raise ValueError(f"{key} must be >= {lo}, got {v}")
    if not float(cfg.candidate.lr) > 0:
        raise ValueError(f"candidate.lr (the candidates' training rate) must be > 0, got {cfg.candidate.lr}")
    if not float(c.evaluator_lr) > 0:
        raise ValueError(f"meta.evaluator_lr must be > 0, got {c.evaluator_lr}")
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
    for key in ("inner_lr", "arch_inner_lr", "meta_lr", "arch_meta_lr", "arch_init_scale"):
        if not float(g[key]) >= 0:
            raise ValueError(f"meta.metanas.{key} must be >= 0, got {g[key]}")
    if int(g.steps) < 1 or int(g.checkpoint_every) < 1 or not 1 <= int(g.meta_batch) <= n_tasks:
        raise ValueError(f"meta.metanas: need steps >= 1, checkpoint_every >= 1 and "
                         f"1 <= meta_batch <= data.num_tasks ({n_tasks}); got steps={g.steps}, "
                         f"checkpoint_every={g.checkpoint_every}, meta_batch={g.meta_batch}")


def check_config(cfg, source: bool = True) -> Prepared:
    """The whole config checked before anything is written or trained: finite values, key
    ranges, method names, the target loaded (>= 2 classes) and, with ``source``, the source
    loaded, kept apart from the target and fitting its image shape. Returns the prepared
    data so it is loaded once."""
    check_finite(cfg)
    check_meta(cfg)
    check_search(cfg)
    m = mesh(cfg)
    T.check_batch_split(T.FinalTrainConfig.from_config(cfg.train), m)
    if cfg.meta.method == "metanas" and m is not None and int(cfg.meta.metanas.meta_batch) % m.size:
        raise ValueError(f"meta.metanas.meta_batch={cfg.meta.metanas.meta_batch} does not split "
                         f"over the {m.size} devices of runtime.mesh={cfg.runtime.get('mesh', 'auto')}; "
                         f"make it a multiple of {m.size} (or set runtime.mesh)")
    prep = prepare(cfg)
    size = S.space_size(prep.space)
    if size is not None and int(cfg.search.budget) > size:
        raise ValueError(f"search.budget={cfg.search.budget} exceeds the {size} architectures of "
                         f"the space (space.layers, space.ops, space.widths)")
    if source:
        prep.source = source_dataset(cfg, prep)
    return prep
