"""The quickstart notebook runs top to bottom (nbclient) with its Colab install cell
skipped here, and shows the meta-learner: experience, evaluator meta-training, the
meta-searcher against random search, predictions against measured accuracy."""
from pathlib import Path

import pytest

NB = Path(__file__).resolve().parent.parent / "notebooks" / "quickstart.ipynb"


@pytest.mark.slow
def test_quickstart_runs(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(NB, as_version=4)
    nbclient.NotebookClient(nb, timeout=900, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    out = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    for line in ("experience:", "evaluator meta-training loss", "meta-searcher: best val acc",
                 "random search: best val acc", "Kendall tau"):
        assert line in out, line
