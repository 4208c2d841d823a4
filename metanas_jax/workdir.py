"""A run's workdir: its records, read and written (no training here).

Why a module of its own: the stages write these records and resume from them, and the
summary and :mod:`metanas_jax.report` only read them, so both sides share one reader
(:func:`stage_record`) and the report needs nothing of the pipeline.

Layout: ``config.json`` (:func:`check_config_file`), ``data.json`` (:func:`write_data`),
``ckpt/<stage>/`` (Orbax, :class:`metanas_jax.checkpoint.StageCheckpoints`; a finished
stage's record has ``done`` set), ``metrics/<stage>.jsonl`` (:class:`Metrics`),
``experience.npz``, ``search.json``, ``final.json``, ``export/``, ``report/``, ``.lock``
(:func:`workdir_lock`). In a multi-process run only process 0 writes.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import time
from pathlib import Path

import numpy as np

from metanas_jax import parallel
from metanas_jax.checkpoint import StageCheckpoints
from metanas_jax.config import check_workdir

# the stages a workdir records, in the order they run (``ckpt/<stage>``)
STAGES = ("meta-train", "search", "train")


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


def write_json(path: Path, obj) -> None:
    """``obj`` as JSON at ``path``, replaced atomically (a killed run leaves the old file or
    the new one, never half of one); only process 0 writes."""
    if not parallel.is_primary():
        return
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    tmp.replace(path)


def write_data(workdir: Path, description: dict) -> None:
    """``workdir/data.json``: what the run works on (:meth:`metanas_jax.builders.Prepared.describe`),
    for the summary and the report."""
    write_json(Path(workdir) / "data.json", description)


# -- stage records ------------------------------------------------------------------------------
def stage_record(workdir: Path, stage: str, like=None):
    """``(step, state, record)`` of the stage's newest checkpoint if it is finished, its
    state restored into the template ``like`` (:meth:`StageCheckpoints.latest`). Without
    ``like`` (summary, report: they read the record) the state is ``None`` and the record
    is read directly from its file: no arrays are read, and one process may read alone
    (Orbax's checkpoint managers synchronise every process)."""
    ck = Path(workdir) / "ckpt" / stage
    if not ck.is_dir():
        return None
    if like is None:
        latest = _latest_record(ck)
    else:  # the state only of a finished stage (an unfinished one's has another form)
        latest = StageCheckpoints(ck).latest(lambda rec: like if rec.get("done") else None)
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


def require(workdir: Path, stage: str, needed_by: str, like=None):
    """:func:`stage_record` of ``stage`` (its state restored into ``like``), which stage
    ``needed_by`` builds on; ``ValueError`` saying which command to run first if it is not
    finished."""
    latest = stage_record(workdir, stage, like)
    if latest is None:
        raise ValueError(f"stage {needed_by!r} needs stage {stage!r} finished in workdir "
                         f"{str(workdir)!r}; run `metanas {stage}` (or `metanas run`) first")
    return latest


def resume(ck: StageCheckpoints, fresh: dict, like=None):
    """``(step, state, record, start_time)`` from the stage's newest checkpoint (its state
    restored into ``like``), or a fresh start (step 0, state ``None``) with ``fresh`` as
    the record; ``start_time`` counts the seconds already spent, so stage times add up over
    resumes. A finished stage's record has ``done`` set."""
    latest = ck.latest(like)
    step, state, rec = latest if latest is not None else (0, None, fresh)
    return step, state, rec, time.perf_counter() - float(rec.get("seconds", 0.0))


# -- the workdir's use and config ---------------------------------------------------------------
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


def check_config_file(cfg, workdir: Path) -> None:
    """``workdir/config.json``: process 0 stores ``cfg`` there or refuses a workdir made by
    an incompatible config (:func:`metanas_jax.config.check_workdir`); the other processes
    of a multi-process run only refuse, without writing."""
    if parallel.is_primary():
        check_workdir(cfg, workdir)
    else:
        _check_workdir_readonly(cfg, workdir)


def _check_workdir_readonly(cfg, workdir: Path) -> None:
    """:func:`check_workdir`'s refusal of a workdir made by another config, without writing
    (the processes other than 0 of a multi-process run)."""
    from metanas_jax.config import config_diff, migrate, to_dict
    path = workdir / "config.json"
    if not path.is_file():
        return
    try:
        old = migrate(json.loads(path.read_text()))
    except json.JSONDecodeError:
        return  # process 0 reports it
    _, _, diff = config_diff(old, to_dict(cfg))
    if diff:
        raise ValueError(f"workdir {str(workdir)!r} was made by an incompatible config "
                         f"({len(diff)} key(s) differ, e.g. {diff[0]}); use another --workdir "
                         f"or the same config")


# -- what the records say -----------------------------------------------------------------------
def summary(workdir: Path) -> dict:
    """Data, stage times, warnings and the final results, from the workdir's records;
    ``missing``: the stages not finished there."""
    workdir = Path(workdir)
    out = {"workdir": str(workdir), "missing": [], "warnings": []}
    if (workdir / "data.json").is_file():
        out["data"] = json.loads((workdir / "data.json").read_text())
    for st in STAGES:
        latest = stage_record(workdir, st)
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


def search_warnings(results: dict) -> list[str]:
    """Candidates of a search whose training diverged (scored 0, listed in ``diverged``)."""
    return [f"search {name}: {len(r['diverged'])} of {len(r['scores'])} candidates' training "
            f"diverged (non-finite logits; scored 0)" for name, r in results.items() if r.get("diverged")]


LOSS_RISE = 1.2  # the evaluator's meta-training loss "rose": last tenth > 1.2 x first tenth


def evaluator_warnings(record: dict) -> list[str]:
    """What in a meta-train record says the meta-learner cannot be trusted: experience at
    chance (the proxy carries no signal), a rising meta-training loss, a held-out rank
    correlation <= 0 or below half a linear probe's, or a top-k regret no better than random
    choice."""
    out = []
    acc, chance = record.get("experience_mean_acc"), record.get("chance")
    failed, total = record.get("experience_diverged") or (0, 0)
    if failed:
        out.append(f"{failed} of {total} NAS-experience trainings diverged (non-finite logits; "
                   f"scored 0): candidate.lr may be too high")
    if acc is not None and chance and acc < 1.5 * chance:
        out.append(f"NAS-experience accuracy {acc:.3f} is near chance ({chance:.3f}): the candidate "
                   f"training proxy (candidate.steps, data.n_train) carries little signal")
    losses = np.asarray(record.get("evaluator_loss") or [], np.float64)
    if losses.size >= 4:
        k = max(1, losses.size // 10)
        first, last = float(losses[:k].mean()), float(losses[-k:].mean())
        # by a fifth at least: the per-step losses are noisy episode draws
        if not np.isfinite(last) or last > LOSS_RISE * first:
            out.append(f"evaluator meta-training loss rose from {first:.3g} to {last:.3g} (diverged)")
    cv = record.get("cv")
    if cv:
        m = cv["mean"]
        if m["after"] <= 0:
            out.append(f"held-out Kendall tau after adaptation {m['after']:.3f} <= 0 "
                       f"({cv['k']}-fold cross-validation): the evaluator does not rank new tasks' "
                       f"architectures")
        if m.get("linear_tau", 0.0) > 0 and m["after"] < 0.5 * m["linear_tau"]:
            out.append(f"held-out Kendall tau after adaptation {m['after']:.3f} is below half a linear "
                       f"probe's {m['linear_tau']:.3f} on the same folds: the evaluator underfits its "
                       f"experience (meta.evaluator_steps, meta.hidden)")
        if m["regret_after"] >= m["regret_random"]:
            out.append(f"held-out top-{cv['top_k']} regret after adaptation {m['regret_after']:.3f} is "
                       f"no better than random choice ({m['regret_random']:.3f})")
    return out
