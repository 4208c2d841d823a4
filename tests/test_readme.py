"""README.md's results table is generated from benchmarks/results/*.json (no figure typed
by hand), and its test command is the one .ci/run runs."""
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _results_table():
    spec = importlib.util.spec_from_file_location("results_table", ROOT / "benchmarks" / "results_table.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_readme_transfer_table_matches_the_result_files():
    mod = _results_table()
    block = mod.readme_block((ROOT / "README.md").read_text())
    assert block is not None, "README.md lost its transfer-results markers"
    assert block == mod.table(), "README table is stale: run python benchmarks/results_table.py --write"
