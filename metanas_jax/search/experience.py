"""NAS experience: many architectures briefly trained on each of many tasks.

:func:`collect_experience` trains ``n_archs`` sampled architectures on every task of a
:class:`~metanas_jax.data.TaskBatch` (support = the task's train split) and records their
accuracy on its validation split (query) and their cost (parameters of the compact
network). Every (task, architecture) pair runs through the supernet with hard weights
``space.relax(z, 0)`` (architecture as data), vmapped (or, on CPU, ``lax.map``-ped) over a
chunk of pairs: one compiled program serves all of them. When pairs are not vmapped and the
space has a hard supernet (``macro32``), pairs run through it: only each layer's chosen op
is computed (``lax.switch``), the same function many times faster. :func:`make_evaluate_fn` is the same program for the candidates
of one search round on one task. :class:`Experience` is saved atomically to ``.npz``
(:func:`save_experience`) and reloaded with :func:`load_experience`.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
import zlib
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from metanas_jax import spaces as spaces_mod
from metanas_jax.search.evaluator import MetaTasks
from metanas_jax.spaces.base import SearchSpace

FORMAT = "metanas-experience-v1"


@dataclasses.dataclass(frozen=True, eq=False)
class Experience:
    """Scored architectures per task. ``zs (T, N, dim)``, ``scores (T, N)`` (validation
    accuracy), ``costs (T, N)`` (compact-network parameters; NaN if not measured),
    ``support_x (T, S, H, W, C)`` / ``support_y (T, S)``: a sample of each task's
    training images and labels (the evaluator's task input), ``meta``: JSON-able settings."""

    space: SearchSpace
    zs: np.ndarray
    scores: np.ndarray
    costs: np.ndarray
    support_x: np.ndarray
    support_y: np.ndarray
    meta: dict

    def __post_init__(self):
        t, n = np.shape(self.scores)[:2] if np.ndim(self.scores) == 2 else (None, None)
        if t is None or np.shape(self.zs) != (t, n, self.space.dim):
            raise ValueError(f"experience needs zs (T, N, {self.space.dim}) and scores (T, N); "
                             f"got {np.shape(self.zs)} and {np.shape(self.scores)}")
        if np.shape(self.costs) != (t, n):
            raise ValueError(f"costs must have shape {(t, n)}, got {np.shape(self.costs)}")
        if np.shape(self.support_x)[:1] != (t,) or np.shape(self.support_y) != np.shape(self.support_x)[:2]:
            raise ValueError(f"support_x (T, S, H, W, C) and support_y (T, S) must match T={t}; "
                             f"got {np.shape(self.support_x)} and {np.shape(self.support_y)}")

    @property
    def num_tasks(self) -> int:
        return self.scores.shape[0]

    def meta_tasks(self, tasks: slice | np.ndarray = slice(None)) -> MetaTasks:
        """The evaluator's meta-training data (task input: ``(images, labels)``)."""
        return MetaTasks(zs=jnp.asarray(self.zs[tasks]), scores=jnp.asarray(self.scores[tasks]),
                         task=(jnp.asarray(self.support_x[tasks]), jnp.asarray(self.support_y[tasks])))


def save_experience(path: str | os.PathLike, exp: Experience) -> Path:
    """Write ``exp`` to ``path`` (``.npz``) atomically: a temporary file, then a rename."""
    path = Path(path)
    if path.suffix != ".npz":
        raise ValueError(f"experience files end in .npz, got {str(path)!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    header = {"format": FORMAT, "space": exp.space.name, "config": exp.space.config(),
              "meta": exp.meta}
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            np.savez(f, header=np.frombuffer(json.dumps(header).encode(), np.uint8),
                     zs=np.asarray(exp.zs, np.float32), scores=np.asarray(exp.scores, np.float32),
                     costs=np.asarray(exp.costs, np.float32),
                     support_x=np.asarray(exp.support_x), support_y=np.asarray(exp.support_y, np.int32))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def load_experience(path: str | os.PathLike) -> Experience:
    """Read an :class:`Experience`; ``ValueError`` naming the file if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"experience file not found: {str(path)!r}")
    try:
        with np.load(path) as f:
            header = json.loads(bytes(f["header"]).decode())
            arrays = {k: f[k] for k in ("zs", "scores", "costs", "support_x", "support_y")}
    except (KeyError, ValueError, OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not an experience file ({e})") from e
    if header.get("format") != FORMAT:
        raise ValueError(f"{path}: format {header.get('format')!r}, expected {FORMAT!r}")
    space = spaces_mod.get(header["space"], **header.get("config", {}))
    return Experience(space=space, meta=header.get("meta", {}), **arrays)


# -- training many architectures at once -------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Short candidate training: ``steps`` full-batch Adam steps on the support set."""

    steps: int = 20
    lr: float = 3e-3
    chunk: int = 8             # (task, architecture) pairs per compiled program call
    supernet_kw: tuple = ()    # extra nn.supernet keywords, as ((name, value), ...)
    vmap: bool | None = None   # pairs of a chunk vmapped (True) or lax.map-ped (False);
    # None: vmap on accelerators, map on CPU, where vmapping convolutions over per-pair
    # weights becomes grouped convolutions that XLA:CPU runs far slower than plain ones
    hard: bool | None = None   # run pairs through the hard supernet (nn.supernet(hard=True):
    # only each layer's chosen op runs); None: when pairs are not vmapped and the space has
    # one (macro32). Same function as the mixing supernet with one-hot weights.

    def __post_init__(self):
        if self.steps < 1 or self.lr <= 0 or self.chunk < 1:
            raise ValueError(f"need steps >= 1, lr > 0, chunk >= 1; got {self.steps}, "
                             f"{self.lr}, {self.chunk}")


def fit_and_score(apply, params, opt, steps: int, sx, sy, qx, qy, score_apply=None):
    """Train ``params`` for ``steps`` full-batch steps of ``opt`` on ``(sx, sy)`` (one
    ``lax.scan``), then the accuracy of ``apply(params, qx)`` on ``qy``: the proxy every
    candidate evaluation runs (traceable; ``apply(params, x) -> logits``, batch
    statistics). ``score_apply``: the same function computed another way for the query
    set (default ``apply``). A diverged training (NaN/inf logits) scores NaN, not the
    accuracy of argmax's class 0."""
    def step(carry, _):
        p, s = carry
        g = jax.grad(lambda p: optax.softmax_cross_entropy_with_integer_labels(apply(p, sx), sy).mean())(p)
        u, s = opt.update(g, s, p)
        return (optax.apply_updates(p, u), s), None

    (params, _), _ = jax.lax.scan(step, (params, opt.init(params)), None, length=steps)
    logits = (score_apply or apply)(params, qx)
    return jnp.where(jnp.all(jnp.isfinite(logits)), jnp.mean(jnp.argmax(logits, -1) == qy), jnp.nan)


@functools.lru_cache(maxsize=32)
def _train_eval_fn(space: SearchSpace, num_classes: int, cfg: TrainConfig):
    """jit(vmap(train one architecture on one task, accuracy on its query set)), one per
    (space, classes, training settings), so every caller shares its compilations. Called
    as ``fn(valid, keys, zs, sx, sy, qx, qy)``: pairs with ``valid`` False pad a chunk."""
    from metanas_jax import nn as mnn

    use_vmap = cfg.vmap if cfg.vmap is not None else jax.default_backend() != "cpu"
    hard = cfg.hard if cfg.hard is not None else (not use_vmap and space.name in mnn._HARD)
    kw = dict(cfg.supernet_kw)
    if hard and use_vmap:  # vmapped, a switch runs every branch: no extra branches per width
        kw.setdefault("slice_widths", False)
    net = mnn.supernet(space, num_classes, hard=hard, **kw)
    opt = optax.adam(cfg.lr)
    # the query set scored by the hard supernet's inference forward (convolutions at the
    # previous layer's width, chunked over the batch): at CIFAR_SPACE's widths 1.6x more
    # candidates/s, at widths 8/16 no gain measured (benchmarks/LOG.md "Query scoring in
    # inference mode"), so where the widths are as wide as those the supernet slices
    inference = (hard and not use_vmap
                 and max(space.widths) >= mnn.hard.SLICE_WIDTHS_FROM)

    def one(key, z, sx, sy, qx, qy):
        w = space.relax(z, 0.0)
        variables = net.init(key, sx, w, train=False)
        rest = {k: v for k, v in variables.items() if k != "params"}

        def apply(p, x, **options):
            return net.apply({"params": p, **rest}, x, w, train=True, **options)

        score = functools.partial(apply, inference=True) if inference else None
        return fit_and_score(apply, variables["params"], opt, cfg.steps, sx, sy, qx, qy, score)

    if use_vmap:  # padding pairs are computed and dropped: they run in parallel anyway
        return jax.jit(lambda valid, *a: jax.vmap(one)(*a))

    def one_or_skip(b):  # padding pairs of a chunk cost nothing when run one after another
        valid, *a = b
        return jax.lax.cond(valid, lambda a: one(*a), lambda a: jnp.float32(0.0), a)

    return jax.jit(lambda valid, *a: jax.lax.map(one_or_skip, (valid, *a)))


def _compilations(jitted) -> int:
    """Programs compiled so far by a ``jax.jit`` function (-1 if jax does not say)."""
    size = getattr(jitted, "_cache_size", None)
    return int(size()) if size is not None else -1


def _arch_key(key: jax.Array, space: SearchSpace, z) -> jax.Array:
    """Initialization key of an architecture: a function of the key and the architecture
    only, so re-evaluating an architecture gives the same result wherever it appears."""
    choices = np.asarray(space.decode(z).choices, np.int64)
    return jax.random.fold_in(key, zlib.crc32(choices.tobytes()) & 0x7FFFFFFF)


def compact_params(space: SearchSpace, z, num_classes: int, image_shape, supernet_kw=()) -> int:
    """Parameters of the compact network of ``z`` (shapes only, nothing computed)."""
    from metanas_jax import nn as mnn

    net = mnn.build(space, space.decode(z), num_classes, **dict(supernet_kw))
    x = jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)
    shapes = jax.eval_shape(lambda x: net.init(jax.random.key(0), x, train=False), x)
    return mnn.count_params(shapes)


def _padded_chunks(n: int, chunk: int):
    """``(valid, idx)`` per chunk of ``n`` pairs padded to a multiple of ``chunk``: padding
    repeats pair 0 with ``valid`` False, so one compiled program serves any count."""
    pad = (-n) % chunk
    idx = np.concatenate([np.arange(n), np.zeros(pad, np.int64)])
    valid = np.arange(n + pad) < n
    return [(valid[i:i + chunk], idx[i:i + chunk]) for i in range(0, n + pad, chunk)]


def _run_pairs(fn, keys, zs, task_of, tasks, chunk):
    """``fn`` over the pairs ``(keys[i], zs[i], tasks[task_of[i]])``, ``chunk`` at a time.
    A chunk's task rows are gathered when it runs: copied for every pair at once, the
    tasks' images took as much memory as pairs times a task (GBs for the full configs)."""
    n = zs.shape[0]
    zs, task_of = np.asarray(zs, np.float32), np.asarray(task_of)
    out = []
    for v, j in _padded_chunks(n, chunk):
        rows = task_of[j]
        out.append(np.asarray(fn(v, keys[j], zs[j], *(a[rows] for a in tasks))))
    return np.concatenate(out)[:n]


def collect_experience(key: jax.Array, space: SearchSpace, tasks, n_archs: int, *,
                       num_classes: int | None = None, train: TrainConfig = TrainConfig(),
                       n_images: int | None = None, costs: bool = True,
                       log: bool = False, mesh=None) -> Experience:
    """Train ``n_archs`` uniformly sampled architectures per task (different ones on each
    task) and record validation accuracy and cost. ``tasks``: a ``data.TaskBatch``.
    ``n_images``: how many support images per task to keep as the task's input (all).
    ``mesh``: a ``jax.sharding.Mesh`` (``parallel.make_mesh``) whose devices share the
    (task, architecture) pairs (``parallel.PairRunner``; the same scores as on one device)."""
    sx, sy, qx, qy = (jnp.asarray(a) for a in tasks)
    t = sx.shape[0]
    if n_archs < 1:
        raise ValueError(f"n_archs must be >= 1, got {n_archs}")
    num_classes = int(num_classes or int(jnp.max(sy)) + 1)
    k_z, k_init = jax.random.split(key)
    zs = space.sample(k_z, t * n_archs).reshape(t, n_archs, space.dim)
    flat_z = np.asarray(zs).reshape(t * n_archs, space.dim)
    task_of = np.repeat(np.arange(t), n_archs)
    keys = jax.random.split(k_init, t * n_archs)
    t0 = time.perf_counter()
    if mesh is not None and mesh.size > 1:
        from metanas_jax import parallel
        runner = parallel.PairRunner(space, num_classes, train, (sx, sy, qx, qy), mesh)
        acc = runner(keys, flat_z, task_of)
    else:
        fn = _train_eval_fn(space, num_classes, train)
        acc = _run_pairs(fn, keys, flat_z, task_of, (sx, sy, qx, qy), train.chunk)
    seconds = time.perf_counter() - t0
    if log:
        print(f"experience: {t * n_archs} trainings in {seconds:.1f}s "
              f"({t * n_archs / seconds:.2f}/s)", flush=True)
    cost = np.full((t * n_archs,), np.nan, np.float32)
    if costs:
        cost = np.asarray([compact_params(space, z, num_classes, sx.shape[2:], train.supernet_kw)
                           for z in flat_z], np.float32)
    n_images = sx.shape[1] if n_images is None else int(n_images)
    return Experience(space=space, zs=np.asarray(zs), scores=acc.reshape(t, n_archs),
                      costs=cost.reshape(t, n_archs), support_x=np.asarray(sx[:, :n_images]),
                      support_y=np.asarray(sy[:, :n_images]),
                      meta={"steps": train.steps, "lr": train.lr, "num_classes": num_classes,
                            "n_archs": n_archs, "seconds": seconds,
                            "supernet_kw": [list(p) for p in train.supernet_kw]})


def make_evaluate_fn(space: SearchSpace, task, key: jax.Array, *, num_classes: int | None = None,
                     train: TrainConfig = TrainConfig()):
    """``evaluate(zs) -> validation accuracies`` (NaN where a candidate's training diverged)
    for one task (``(support_x, support_y, query_x, query_y)`` without a task axis): every
    candidate of a round trained in one
    compiled program. ``evaluate.stats`` counts evaluations, seconds and the compilations
    of the training program this evaluator caused (0 when an earlier caller compiled it)."""
    sx, sy, qx, qy = (jnp.asarray(a) for a in task)
    num_classes = int(num_classes or int(jnp.max(sy)) + 1)
    one_task = tuple(a[None] for a in (sx, sy, qx, qy))  # a task axis of 1: every pair's task
    fn = _train_eval_fn(space, num_classes, train)
    compiled_before = _compilations(fn)
    stats: dict[str, Any] = {"evaluations": 0, "seconds": 0.0, "compilations": 0}

    def evaluate(zs):
        zs = np.asarray(zs, np.float32)
        keys = jnp.stack([_arch_key(key, space, z) for z in zs])
        b = zs.shape[0]
        t0 = time.perf_counter()
        acc = _run_pairs(fn, keys, zs, np.zeros(b, np.int64), one_task, train.chunk)
        stats["seconds"] += time.perf_counter() - t0
        stats["evaluations"] += b
        stats["compilations"] = _compilations(fn) - compiled_before
        return acc

    evaluate.stats = stats
    return evaluate
