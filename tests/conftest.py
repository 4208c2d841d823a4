"""Shared test settings: exact float32 matmuls on CPU, and where the shared data lives."""
from pathlib import Path

import jax
import pytest

jax.config.update("jax_default_matmul_precision", "highest")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture
def shared_data():
    """``../shared/data`` next to the project root; skip the test when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA
