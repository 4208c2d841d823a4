"""benchmarks/nb201_real.py's bookkeeping (NAS-Bench-201 searched with real training):
the proxy-picked curves and one search driven through its harness with a cheap stand-in
proxy (a table column). The real training is a benchmark, not a test."""
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
NB201_CSV = ROOT.parent / "shared" / "data" / "nasbench201" / "nats_bench_tss.csv"


@pytest.fixture(scope="module")
def mod():
    spec = importlib.util.spec_from_file_location("nb201_real", ROOT / "benchmarks" / "nb201_real.py")
    m = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("nb201_real", m)  # dataclasses look their module up there
    spec.loader.exec_module(m)
    return m


def test_picked_curves(mod):
    picked, oracle = mod.picked_curves([0.2, 0.5, 0.5, 0.1, 0.7], [80.0, 90.0, 93.0, 94.0, 85.0])
    # proxy-best so far: cells 0, 1, 1 (tie keeps the first), 1, 4
    assert picked.tolist() == [80.0, 90.0, 90.0, 90.0, 85.0]
    assert oracle.tolist() == [80.0, 90.0, 93.0, 94.0, 94.0]


def test_proxy_parse(mod):
    p = mod.Proxy.parse("20x128x8", lr=0.02)
    assert (p.steps, p.images, p.size, p.lr, p.name) == (20, 128, 8, 0.02, "20x128x8")
    for bad in ("20x128", "0x1x1", "ax1x1"):
        with pytest.raises(ValueError, match="proxy"):
            mod.Proxy.parse(bad)


def test_run_method_with_a_table_column_as_proxy(mod):
    if not NB201_CSV.is_file():
        pytest.skip(f"NAS-Bench-201 table not found at {NB201_CSV}")
    import jax

    from metanas_jax.search import RandomSearch, load_nb201

    table = load_nb201(NB201_CSV)
    evaluate = lambda zs: np.asarray(table.lookup(np.asarray(zs), "cifar100"))
    runs = mod.run_method(RandomSearch(table.space, 5, 10), evaluate, table, 10, [0],
                          jax.random.key(0))
    r = runs[0]
    c10 = np.asarray(table.scores[:, table.column("cifar10")]) * 100
    c100 = np.asarray(table.scores[:, table.column("cifar100")])
    assert r["unique"] == len(r["cells"]) == 10
    np.testing.assert_allclose(r["table"], c10[r["cells"]], rtol=1e-6)
    np.testing.assert_allclose(r["proxy"], c100[r["cells"]], rtol=1e-6)
    first_best = r["cells"][int(np.argmax(c100[r["cells"]]))]
    assert r["picked"][-1] == pytest.approx(c10[first_best], rel=1e-6)
    assert r["best_evaluated"][-1] == pytest.approx(c10[r["cells"]].max(), rel=1e-6)
    assert r["recommended"] == {"5": r["picked"][4], "10": r["picked"][9]}  # no model: proxy-best
    s = mod.summarize(runs, (10,))
    assert s["picked"][10][1] == 0.0 and s["recommended"][10] == s["picked"][10]
