"""``metanas``: the command line of the whole job.

    metanas run                                   # embedded default (8x8 digits), all stages
    metanas run --config configs/tinyimagenet_to_cifar10.py --workdir runs/t2c --config.search.budget=20
    metanas meta-train | search | train | report  [same options]

Rerunning a command on the same workdir resumes it; a workdir made by an incompatible
config is refused.

Devices: every stage uses ``runtime.mesh`` devices ("auto": all of them). Several hosts or
processes: start the same command on each with ``--coordinator HOST:PORT --num-processes N
--process-id I`` (or ``METANAS_COORDINATOR`` / ``METANAS_NUM_PROCESSES`` /
``METANAS_PROCESS_ID``; under SLURM ``METANAS_AUTO_DISTRIBUTED=1``) and one shared
``--workdir``; process 0 writes the workdir's records and prints the summary.

Exit codes: 0 done; 1 an internal error (a bug: the traceback is shown); 2 a bad config,
input data or workdir (one line naming the key, file or workdir); 3 a training diverged
(non-finite loss; the stage and step are named); 4 the environment failed (permissions,
disk full, a path that is a file: one line naming the path); 130 interrupted (Ctrl-C).
``--debug`` (or ``METANAS_DEBUG=1``) shows the traceback of every failure.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

COMMANDS = ("meta-train", "search", "train", "run", "report")
EXIT_CONFIG, EXIT_DIVERGED, EXIT_ENVIRONMENT, EXIT_INTERRUPTED = 2, 3, 4, 130


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="metanas", description=__doc__.splitlines()[0],
                                 epilog="Config overrides: --config.SECTION.KEY=VALUE (e.g. "
                                        "--config.search.budget=50), type-checked.")
    ap.add_argument("command", choices=COMMANDS)
    ap.add_argument("--config", default=None,
                    help="config file (path.py or path.py:arg, or a name in configs/); default: configs/default.py")
    ap.add_argument("--workdir", default=None, help="default: runs/<config name>")
    ap.add_argument("--no-progress", action="store_true", help="no progress bars")
    ap.add_argument("--debug", action="store_true",
                    help="show the traceback of a failure (also METANAS_DEBUG=1)")
    from metanas_jax.parallel import add_distributed_flags
    add_distributed_flags(ap)
    args, rest = ap.parse_known_args(argv)
    return args, config_overrides(rest, ap.error)


def config_overrides(rest, error):
    """``["search.budget=50", ...]`` from the arguments ``rest`` that argparse left
    (``--config.SECTION.KEY=VALUE`` or ``--config.SECTION.KEY VALUE``), for
    :func:`metanas_jax.config.apply_overrides`; anything else goes to ``error(message)``
    (``ArgumentParser.error``, which exits)."""
    overrides = []
    it = iter(rest)
    for item in it:
        if item.startswith("--config."):
            body = item[len("--config."):]
            if "=" not in body:
                try:
                    body = f"{body}={next(it)}"
                except StopIteration:
                    error(f"override {item} has no value")
            overrides.append(body)
        else:
            error(f"unrecognized argument {item!r}")
    return overrides


def main(argv=None) -> int:
    args, overrides = parse_args(sys.argv[1:] if argv is None else argv)
    debug = args.debug or os.environ.get("METANAS_DEBUG", "") not in ("", "0")
    _log_to_stderr()
    try:
        return _main(args, overrides)
    except BaseException as e:  # noqa: BLE001 - mapped to one line and an exit code
        code = _exit_code(e)
        if debug or code is None:
            raise
        print(f"metanas: {'interrupted' if code == EXIT_INTERRUPTED else 'error'}"
              f"{': ' + _describe(e) if code != EXIT_INTERRUPTED else ''}", file=sys.stderr)
        return code


def _exit_code(e: BaseException):
    """The documented exit code of a failure, or None for an internal error (a bug)."""
    if isinstance(e, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    if isinstance(e, FloatingPointError):
        return EXIT_DIVERGED
    if isinstance(e, (ValueError, FileNotFoundError)):
        return EXIT_CONFIG
    if isinstance(e, OSError):
        return EXIT_ENVIRONMENT
    return None


def _describe(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:  # "[Errno 13] ..." -> what and where
        return f"{e.strerror}: {e.filename!r}" if e.filename else e.strerror
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0] if isinstance(e, OSError) else text


def _log_to_stderr() -> None:
    """The library's warnings (``logging.getLogger("metanas_jax")``) as one line each."""
    import logging
    log = logging.getLogger("metanas_jax")
    if not log.handlers:
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter("metanas: %(levelname)s: %(message)s"))
        log.addHandler(h)
        log.setLevel(logging.INFO)
        log.propagate = False


def _main(args, overrides) -> int:
    from metanas_jax import parallel
    # joins a multi-process run (flags or environment); before any JAX computation
    process, _ = parallel.initialize(args=args)
    from metanas_jax.config import apply_overrides, load_config
    cfg = load_config(args.config)
    apply_overrides(cfg, overrides)
    if args.no_progress:
        cfg.runtime.progress = False
    workdir = Path(args.workdir or Path("runs") / cfg.name)
    _compile_cache(cfg)
    from metanas_jax import report
    from metanas_jax.workdir import summary
    if args.command == "report":
        if process != 0:
            return 0
        if not (workdir / "config.json").is_file():
            raise ValueError(f"no run in workdir {str(workdir)!r} (config.json missing)")
        # the report reads only the workdir's records: any config may be given
        path = report.write_report(workdir)
        missing = summary(workdir)["missing"]
        print(f"report: {path}" + (f" (incomplete: {', '.join(missing)} not finished)" if missing else ""))
        return 0
    from metanas_jax import pipeline
    stages = pipeline.STAGES if args.command == "run" else (args.command,)
    t0 = time.perf_counter()
    pipeline.run_stages(cfg, workdir, stages)
    if process != 0:  # process 0 writes the report and prints the summary
        return 0
    path = report.write_report(workdir) if args.command in ("run", "train") and cfg.report.enabled else None
    print(_format_summary(summary(workdir), path, time.perf_counter() - t0))
    return 0


def _compile_cache(cfg) -> None:
    """Persistent XLA compilation cache (``runtime.compile_cache``; "" = off): on CPU the
    supernet training program takes minutes to compile, and resumed or repeated runs reuse it."""
    path = os.environ.get("JAX_COMPILATION_CACHE_DIR") or cfg.runtime.compile_cache
    if not path:
        return
    import jax
    jax.config.update("jax_compilation_cache_dir", os.path.expanduser(path))
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:  # jax's own variable wins
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def _format_summary(s: dict, report_path, wall: float) -> str:
    lines = ["", "== metanas summary =="]
    if "data" in s:
        d = s["data"]
        lines.append(f"data: source {d['source']!r} -> target {d['target']!r}, {d['num_classes']} classes, "
                     f"images {'x'.join(map(str, d['image_shape']))}, {d['images']['train']} train / "
                     f"{d['images']['val']} val / {d['images']['test']} test")
    if "arch" in s:
        lines.append(f"best architecture ({s.get('primary')}): {s['arch']}")
        lines.append(f"validation accuracy {s['val_acc']:.4f}, test accuracy {s['test_acc']:.4f}")
    if "evaluations" in s:
        lines.append("evaluations used: " + ", ".join(f"{k} {v}" for k, v in s["evaluations"].items()))
    if "cv" in s:
        m, d = s["cv"]["mean"], s["cv"]["std"]
        lines.append(f"evaluator, {s['cv']['k']}-fold cross-validated on held-out source tasks: "
                     f"Kendall tau {m['before']:.3f} -> {m['after']:.3f} (+-{d['after']:.3f}) after "
                     f"adaptation; top-{s['cv']['top_k']} regret {m['regret_after']:.3f} "
                     f"(random choice {m['regret_random']:.3f})")
    for w in s.get("warnings", []):
        lines.append(f"WARNING: {w}")
    times = [f"{st} {s[f'{st} seconds']:.1f}s" for st in ("meta-train", "search", "train")
             if s.get(f"{st} seconds") is not None]
    if times:
        lines.append("time per stage (cumulative over resumes): " + ", ".join(times))
    if s.get("missing"):
        lines.append(f"not finished in this workdir: {', '.join(s['missing'])}")
    lines.append(f"this command: {wall:.1f}s; workdir: {s['workdir']}")
    if report_path:
        lines.append(f"report: {report_path}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
