"""The NAS-Bench-201 table loader and searches over it (skip without ../shared/data)."""
from pathlib import Path

import jax
import numpy as np
import pytest

from metanas_jax import spaces
from metanas_jax.search import (RegularizedEvolution, load_nb201, scan_search, best_so_far,
                                arch_index)

NB201_CSV = Path(__file__).resolve().parents[2] / "shared" / "data" / "nasbench201" / "nats_bench_tss.csv"
HEADER = ("CIFAR10TestAccuracy200Epochs,CIFAR100TestAccuracy200Epochs,"
          "ImageNetTestAccuracy200Epochs,ArchitectureString,UniqueString\n")


@pytest.fixture(scope="module")
def nb201():
    if not NB201_CSV.is_file():
        pytest.skip(f"NAS-Bench-201 table not found at {NB201_CSV}")
    return load_nb201(NB201_CSV)


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        load_nb201(tmp_path / "nope.csv")


def test_malformed_files_raise_value_error(tmp_path):
    p = tmp_path / "bad.csv"
    p.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="missing column"):
        load_nb201(p)
    p.write_text(HEADER + "90,70,40,|conv~0|+|x~0|x~1|+|x~0|x~1|x~2|,u\n")
    with pytest.raises(ValueError, match="line 2"):
        load_nb201(p)
    row = "90,70,40,|nor_conv_3x3~0|+|none~0|none~1|+|none~0|none~1|none~2|,u\n"
    p.write_text(HEADER + row + row)
    with pytest.raises(ValueError, match="already on line 2"):
        load_nb201(p)
    p.write_text(HEADER + row)
    with pytest.raises(ValueError, match="has 1 architectures"):
        load_nb201(p)


def test_nb201_table_values(nb201):
    sp = spaces.get("nb201")
    assert nb201.names == ("cifar10", "cifar100", "imagenet16-120")
    assert nb201.size == 15625
    # optima documented in ../shared/data/README.md
    assert round(nb201.optimum("cifar10") * 100, 2) == 94.37
    assert round(nb201.optimum("cifar100") * 100, 2) == 73.51
    assert round(nb201.optimum("imagenet16-120") * 100, 2) == 47.31
    # the table's second row
    arch = sp.from_string("|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|"
                          "+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|")
    z = sp.encode(arch)
    assert float(nb201.lookup(z, "cifar10")) == pytest.approx(0.9366, abs=1e-5)
    assert float(nb201.lookup(z, "cifar100")) == pytest.approx(0.7029333, abs=1e-5)
    with pytest.raises(ValueError, match="unknown dataset"):
        nb201.lookup(z, "mnist")


def test_seeds_vmapped_search_on_nb201(nb201):
    s = RegularizedEvolution(nb201.space, 10, 50, population_size=10, tournament_size=3)
    run = jax.jit(jax.vmap(lambda k: scan_search(s, lambda z: nb201.lookup(z, "cifar10"), 5, k)))
    st = run(jax.random.split(jax.random.key(0), 3))
    bsf = np.asarray(best_so_far(st.history))
    assert bsf.shape == (3, 50) and np.all(np.diff(bsf, axis=1) >= 0)
    for row in np.asarray(arch_index(nb201.space, st.history.zs)):
        assert len(set(row.tolist())) == 50
    # the recorded scores are the table's
    np.testing.assert_allclose(np.asarray(st.history.scores),
                               np.asarray(nb201.lookup(st.history.zs, "cifar10")))
