"""Shared test settings: exact float32 matmuls on CPU, and where the shared data lives."""
import os
from pathlib import Path

import jax
import pytest

jax.config.update("jax_default_matmul_precision", "highest")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session", autouse=True)
def compile_cache(tmp_path_factory):
    """One persistent XLA cache for the session: tests that build the same program twice
    (e.g. a run and its resumption) compile it once."""
    jax.config.update("jax_compilation_cache_dir", str(tmp_path_factory.mktemp("xla_cache")))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


@pytest.fixture
def shared_data():
    """``../shared/data`` next to the project root; skip the test when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory):
    """One decoded-dataset cache for the whole run, also across pytest-xdist's workers
    (their base folders share a parent): the shared Omniglot is decoded once, not once per
    worker that loads it. Entries are written atomically, so workers may race safely."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    return root / "metanas_data_cache"
