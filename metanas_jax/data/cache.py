"""On-disk cache of decoded datasets.

An entry is one uncompressed ``.npz`` file holding the decoded arrays of a
:class:`~metanas_jax.data.Dataset`.  Its name is a hash of everything that determines the
arrays: the source kind and resolved path, the split, a fingerprint of the input files
(size and modification time of each archive, or of every file in an unpacked folder), the
preprocessing (``image_size``) and :data:`CACHE_VERSION`.  Changing any of them makes a new
entry; stale entries are simply never read again (delete the folder to reclaim space).

Entries are written atomically: to a temporary file in the cache folder, then
``os.replace``-d into place, so concurrent loaders and interrupted runs never see a
half-written file.  An unreadable entry is treated as a miss and rewritten.

The cache folder is, in order: the ``cache_dir`` argument, ``$METANAS_CACHE``, or
``~/.cache/metanas_jax``.  ``cache_dir=False`` disables caching.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "CACHE_VERSION",
    "default_cache_dir",
    "resolve_cache_dir",
    "fingerprint",
    "cache_key",
    "read_entry",
    "write_entry",
    "cached",
]

CACHE_VERSION = 1
_ENV = "METANAS_CACHE"


def default_cache_dir() -> Path:
    """``$METANAS_CACHE`` if set, else ``~/.cache/metanas_jax``."""
    env = os.environ.get(_ENV)
    if env:
        return Path(env).expanduser()
    return Path("~/.cache/metanas_jax").expanduser()


def resolve_cache_dir(cache_dir: str | os.PathLike | bool | None) -> Path | None:
    """``None``/``True`` -> default folder, ``False`` -> ``None`` (disabled), else the path."""
    if cache_dir is False:
        return None
    if cache_dir is None or cache_dir is True:
        return default_cache_dir()
    return Path(cache_dir).expanduser()


def fingerprint(paths: Iterable[str | os.PathLike]) -> list:
    """A JSON-able fingerprint of files and folders: ``[path, size, mtime_ns]`` for each
    file; for a folder, a hash over the relative path, size and mtime of every file below
    it (hidden files excluded)."""
    out = []
    for p in paths:
        p = Path(p)
        st = p.stat()
        if p.is_dir():
            h = hashlib.sha256()
            count = 0
            for root, dirs, files in os.walk(p):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for f in sorted(files):
                    if f.startswith("."):
                        continue
                    fp = os.path.join(root, f)
                    s = os.stat(fp)
                    h.update(f"{os.path.relpath(fp, p)}\0{s.st_size}\0{s.st_mtime_ns}\n".encode())
                    count += 1
            out.append([str(p.resolve()), "dir", count, h.hexdigest()])
        else:
            out.append([str(p.resolve()), st.st_size, st.st_mtime_ns])
    return out


def cache_key(**parts: Any) -> str:
    """A stable hex digest of JSON-able ``parts`` (plus the cache format version)."""
    payload = json.dumps({"version": CACHE_VERSION, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


def _entry_path(cache_dir: Path, name: str, key: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_")[:60] or "data"
    return cache_dir / f"{safe}-{key[:20]}.npz"


def read_entry(path: Path) -> dict[str, np.ndarray] | None:
    """Arrays of a cache entry, or ``None`` if it is missing or unreadable."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as e:
        warnings.warn(f"ignoring unreadable cache entry {path} ({e}); it will be rewritten", stacklevel=3)
        return None


def write_entry(path: Path, arrays: dict[str, np.ndarray]) -> bool:
    """Atomically write ``arrays`` to ``path``; returns False (with a warning) on failure."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.stem + ".", suffix=".npz.tmp")
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; entries are ordinary shared files
        os.replace(tmp, path)
        return True
    except OSError as e:
        warnings.warn(f"could not write cache entry {path} ({e}); continuing without cache", stacklevel=3)
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        return False


def cached(
    cache_dir: Path | None,
    name: str,
    key_parts: dict,
    build: Callable[[], dict[str, np.ndarray]],
) -> dict[str, np.ndarray]:
    """Return the arrays for ``key_parts`` from the cache, or ``build()`` them and store
    them.  With ``cache_dir=None`` always builds."""
    if cache_dir is None:
        return build()
    path = _entry_path(cache_dir, name, cache_key(**key_parts))
    arrays = read_entry(path)
    if arrays is not None:
        return arrays
    arrays = build()
    write_entry(path, arrays)
    return arrays
