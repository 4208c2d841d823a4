"""README.md's results blocks are generated from benchmarks/results/*.json (no figure typed
by hand). (That its test command is the one CI runs, .ci/run checks itself.)"""
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _results_table():
    spec = importlib.util.spec_from_file_location("results_table", ROOT / "benchmarks" / "results_table.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("name", ["transfer-results", "nb201-results", "fewshot-results",
                                  "fewshot-all", "benchmark-figures"])
def test_readme_results_blocks_match_the_result_files(name):
    mod = _results_table()
    assert name in mod.BLOCKS
    path, fn = mod.BLOCKS[name]
    block = mod.readme_block(path.read_text(), name)
    assert block is not None, f"{path.name} lost its {name} markers"
    assert block == fn(), "results are stale: run python benchmarks/results_table.py --write"