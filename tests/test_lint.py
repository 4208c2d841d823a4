"""The code passes ``ruff check`` with the rules of pyproject.toml ([tool.ruff.lint]);
skipped where ruff is not installed (it is in the ``test`` extra)."""
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_check_passes():
    ruff = shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff not installed (pip install -e '.[test]')")
    p = subprocess.run([ruff, "check", "--no-cache", "metanas_jax", "tests", "benchmarks"], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-2000:]
