"""Experiment configuration: ``ml_collections`` files, command-line overrides, workdir checks.

A config file is a Python module with ``get_config(arg=None)`` returning a
``ConfigDict`` (``configs/NAME.py``, or ``path:arg`` to pass ``arg``). Overrides
``--config.search.budget=50`` are parsed as Python literals (else kept as strings) and
applied to the *locked* config, so an unknown key or a value of the wrong type fails at
once with a ``ValueError`` naming the key.

Why compare configs: a workdir holds checkpoints whose meaning depends on the config; the
config is stored in ``workdir/config.json`` and a later command on the same workdir must
agree on every result-affecting key (all but :data:`NON_RESULT_KEYS`).
"""
from __future__ import annotations

import ast
import importlib.util
import json
import math
from pathlib import Path
from typing import Sequence

import ml_collections

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
# Keys that change how a run is shown or saved, never its results.
NON_RESULT_KEYS = ("runtime", "report", "name")


def _default_config_path() -> Path:
    here = CONFIG_DIR / "default.py"
    if not here.is_file():
        raise FileNotFoundError(
            f"default config {here} not found: the configs live in the repository, so install "
            "from a clone (pip install -e .) or pass --config PATH.py")
    return here


def load_config(spec: str | None = None) -> ml_collections.ConfigDict:
    """The config of ``spec`` (``path.py`` or ``path.py:arg``; ``None``: the default).

    A bare name like ``default`` or ``tinyimagenet_to_cifar10`` is looked up in ``configs/``.
    """
    if spec is None:
        path, arg = _default_config_path(), None
    else:
        path_s, sep, arg = str(spec).partition(":")
        arg = arg if sep else None
        path = Path(path_s)
        if not path.suffix and not path.exists():
            path = CONFIG_DIR / f"{path_s}.py"
    if not path.is_file():
        raise ValueError(f"config file not found: {str(path)!r}")
    mod_spec = importlib.util.spec_from_file_location(f"metanas_config_{path.stem}", path)
    module = importlib.util.module_from_spec(mod_spec)
    try:
        mod_spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001 - report which file is broken
        raise ValueError(f"config file {str(path)!r} failed to load: {e!r}") from e
    if not hasattr(module, "get_config"):
        raise ValueError(f"config file {str(path)!r} has no get_config()")
    cfg = module.get_config(arg) if arg is not None else module.get_config()
    if not isinstance(cfg, ml_collections.ConfigDict):
        raise ValueError(f"{str(path)!r}: get_config() must return an ml_collections.ConfigDict")
    if "name" not in cfg:
        with cfg.unlocked():
            cfg.name = path.stem
    for old, new in RENAMED.items():
        sec, key = old.split(".")
        if sec in cfg and isinstance(cfg[sec], ml_collections.ConfigDict) and key in cfg[sec]:
            raise ValueError(f"config file {str(path)!r} sets {old!r}, which moved to {new!r}")
    cfg.lock()
    return cfg


def parse_value(text: str):
    """A Python literal if ``text`` is one (``50``, ``0.1``, ``(8, 16)``, ``True``), else the
    string itself; ``a,b`` without brackets is a tuple."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        if text.strip().lower().lstrip("+-") in ("nan", "inf", "infinity"):
            return float(text)  # typed as a float, then refused by check_finite by name
        if "," in text:
            return tuple(parse_value(t.strip()) for t in text.split(",") if t.strip())
        return text


def apply_override(cfg: ml_collections.ConfigDict, key: str, value) -> None:
    """Set dotted ``key`` on the locked ``cfg``; ``ValueError`` naming the key on failure."""
    parts = key.split(".")
    node = cfg
    for i, p in enumerate(parts[:-1]):
        if not isinstance(node, ml_collections.ConfigDict) or p not in node:
            raise ValueError(f"unknown config key {'.'.join(parts[:i + 1])!r} (in override {key!r})")
        node = node[p]
    leaf = parts[-1]
    if key in RENAMED:
        raise ValueError(f"config key {key!r} moved to {RENAMED[key]!r}")
    if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
        known = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
        raise ValueError(f"unknown config key {key!r}; known keys here: {known}")
    old = node[leaf]
    if isinstance(old, ml_collections.ConfigDict):
        raise ValueError(f"config key {key!r} is a section; set one of its keys: {sorted(old.keys())}")
    if isinstance(old, tuple) and not isinstance(value, (tuple, list)):
        value = (value,)
    if isinstance(old, tuple) and isinstance(value, list):
        value = tuple(value)
    if isinstance(old, str) and isinstance(value, (int, float, bool)) and not isinstance(old, bool):
        value = str(value)
    if isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(old, bool) != isinstance(value, bool) or (
            isinstance(old, int) and not isinstance(old, bool) and isinstance(value, float)):
        raise ValueError(f"config key {key!r} expects {type(old).__name__}, got {value!r}")
    try:
        node[leaf] = value
    except (TypeError, KeyError, AttributeError) as e:
        raise ValueError(f"config key {key!r} expects {type(old).__name__}, got {value!r} ({e})") from e


def apply_overrides(cfg: ml_collections.ConfigDict, overrides: Sequence[str]) -> ml_collections.ConfigDict:
    """Apply ``["search.budget=50", ...]`` (the ``--config.`` prefix already removed)."""
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ValueError(f"override {item!r} must look like --config.KEY=VALUE")
        apply_override(cfg, key.strip(), parse_value(text.strip()))
    return cfg


def check_finite(cfg: ml_collections.ConfigDict) -> None:
    """``ValueError`` naming the first key holding NaN or +-inf: no setting of this library
    means anything with them, and a NaN rate trains silently to chance accuracy."""
    for key, v in _flatten(cfg.to_dict()).items():
        for x in (v if isinstance(v, (tuple, list)) else (v,)):
            if isinstance(x, float) and not math.isfinite(x):
                raise ValueError(f"config key {key!r} must be finite, got {v!r}")


def to_dict(cfg: ml_collections.ConfigDict) -> dict:
    """JSON-able plain dict (tuples become lists)."""
    return json.loads(json.dumps(cfg.to_dict(), default=list))


# keys moved since a workdir may have been made: old dotted name -> new one
RENAMED = {"meta.train_steps": "candidate.steps", "meta.lr": "candidate.lr",
           "meta.chunk": "candidate.chunk"}


def migrate(d: dict) -> dict:
    """A stored config dict with :data:`RENAMED` keys moved to their new names (a workdir
    made before a rename resumes)."""
    for old, new in RENAMED.items():
        (osec, okey), (nsec, nkey) = old.split("."), new.split(".")
        if isinstance(d.get(osec), dict) and okey in d[osec]:
            d.setdefault(nsec, {}).setdefault(nkey, d[osec].pop(okey))
    return d


def result_part(d: dict) -> dict:
    return {k: v for k, v in d.items() if k not in NON_RESULT_KEYS}


def config_diff(old: dict, new: dict) -> tuple[dict, dict, list[str]]:
    """``(old flat, new flat, differing keys)`` of a stored config dict (after
    :func:`migrate`) and a current one (result keys only). A key added to the library since
    the workdir was made agrees when it holds the default config's value (what the old code
    did before it became a key)."""
    a, b = _flatten(result_part(old)), _flatten(result_part(new))
    try:
        defaults = _flatten(result_part(to_dict(load_config())))
    except (FileNotFoundError, ValueError):  # no configs/ next to an installed package
        defaults = {}
    a.update({k: b[k] for k in set(b) - set(a) if k in defaults and defaults[k] == b[k]})
    return a, b, sorted(k for k in set(a) | set(b) if a.get(k, "<missing>") != b.get(k, "<missing>"))


def check_workdir(cfg: ml_collections.ConfigDict, workdir: Path) -> None:
    """Store ``cfg`` in ``workdir/config.json``, or refuse a workdir of another config."""
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "config.json"
    new = to_dict(cfg)
    if path.is_file():
        try:
            old = migrate(json.loads(path.read_text()))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: unreadable stored config ({e})") from e
        a, b, diff = config_diff(old, new)
        if diff:
            shown = ", ".join(f"{k}: {a.get(k, '<missing>')!r} -> {b.get(k, '<missing>')!r}" for k in diff[:6])
            raise ValueError(f"workdir {str(workdir)!r} was made by an incompatible config "
                             f"({len(diff)} key(s) differ: {shown}); use another --workdir "
                             f"or the same config")
        # keep the stored file (first writer wins) but refresh the non-result keys
        new = {**old, **{k: v for k, v in new.items() if k in NON_RESULT_KEYS}}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(new, indent=1, sort_keys=True))
    tmp.replace(path)


def stored_config(workdir: Path) -> ml_collections.ConfigDict:
    """The config a run in ``workdir`` was made with (its ``config.json``); keys added to
    the library since then hold the default config's values, as a resume assumes."""
    path = Path(workdir) / "config.json"
    if not path.is_file():
        raise ValueError(f"no run in workdir {str(workdir)!r} (config.json missing)")
    try:
        stored = migrate(json.loads(path.read_text()))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: unreadable stored config ({e})") from e
    try:
        defaults = to_dict(load_config())
    except (FileNotFoundError, ValueError):  # no configs/ next to an installed package
        defaults = {}

    def fill(dst: dict, src: dict) -> dict:
        for k, v in src.items():
            if k not in dst:
                dst[k] = v
            elif isinstance(v, dict) and isinstance(dst[k], dict):
                fill(dst[k], v)
        return dst
    return ml_collections.ConfigDict(fill(stored, defaults))


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
