"""Small file helpers shared by the on-disk formats (exported models, saved learners):
atomic writes, and reading a ``(description JSON, data file)`` pair with errors that name
the file."""
from __future__ import annotations

import json
import os
from pathlib import Path


def write_atomic(path: Path, payload: bytes) -> None:
    """``path`` holds either its old content or ``payload``, never a torn file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(payload)
    tmp.replace(path)


def read_described(directory, description: str, data: str, fmt: str, what: str) -> tuple[dict, Path]:
    """``(description JSON, path of the data file)`` of a saved ``what`` in ``directory``;
    ``ValueError`` naming the file when one is missing, not JSON or of another format."""
    d = Path(directory)
    meta_path, data_path = d / description, d / data
    for p in (meta_path, data_path):
        if not p.is_file():
            raise ValueError(f"not {what}: {str(p)!r} is missing")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{meta_path}: not JSON ({e})") from e
    if meta.get("format") != fmt:
        raise ValueError(f"{meta_path}: format {meta.get('format')!r}, expected {fmt!r}")
    return meta, data_path
