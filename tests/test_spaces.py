import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metanas_jax import spaces
from metanas_jax.spaces import Arch

ALL = ["macro32", "darts", "nb201"]


@pytest.fixture(params=ALL)
def space(request):
    return spaces.get(request.param)


def test_dims():
    assert spaces.get("macro32").dim == 32
    assert spaces.get("nb201").dim == 6
    assert spaces.get("darts").dim == 2 * 14 * 8
    assert spaces.get("macro32", layers=4).dim == 16


def test_round_trips(space):
    zs = space.sample(jax.random.key(0), 64)
    assert zs.shape == (64, space.dim)
    for z in zs:
        a = space.decode(z)
        assert space.decode(space.encode(a)) == a
        assert space.from_string(space.to_string(a)) == a
        assert Arch.from_json(a.to_json()) == a
        assert hash(a) == hash(space.decode(space.encode(a)))
        np.testing.assert_allclose(space.project(z), space.encode(a))


def test_samples_are_diverse(space):
    archs = set(space.decode_batch(space.sample(jax.random.key(1), 50)))
    assert len(archs) >= 45


def test_same_key_same_sample(space):
    np.testing.assert_array_equal(space.sample(jax.random.key(3), 4), space.sample(jax.random.key(3), 4))


def test_space_is_hashable_static_arg(space):
    f = jax.jit(lambda s, z: s.project(z), static_argnums=0)
    z = space.sample(jax.random.key(0), 1)[0]
    np.testing.assert_allclose(f(space, z), space.project(z))
    assert spaces.get(space.name) == space and hash(spaces.get(space.name)) == hash(space)


def test_relax_gradients_finite_nonzero(space):
    z = space.sample(jax.random.key(2), 1)[0]
    if space.name != "darts":  # move off the grid so every choice has some weight
        z = jnp.clip(z * 0.8 + 0.1, 0.0, 1.0)
    target = jax.tree.map(lambda w: jnp.linspace(-1, 1, w.size).reshape(w.shape),
                          space.relax(z, 0.7))

    def loss(z):
        return sum(jnp.sum(w * t) for w, t in zip(jax.tree.leaves(space.relax(z, 0.7)), jax.tree.leaves(target)))

    g = jax.grad(loss)(z)
    assert np.all(np.isfinite(g))
    assert np.all(g != 0) if space.name != "darts" else np.mean(g != 0) > 0.9


def test_relax_rows_sum_to_one(space):
    z = space.sample(jax.random.key(4), 3)
    for w in space.relax(z, 0.5).values():
        np.testing.assert_allclose(w.sum(-1), 1.0, rtol=1e-5)


def test_hard_relax_is_one_hot_of_decode(space):
    z = space.sample(jax.random.key(6), 1)[0]
    hard = space.relax(z, 0.0)
    for w in hard.values():
        assert set(np.unique(np.asarray(w))) <= {0.0, 1.0}
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.all(a == b)), hard, space.one_hot(space.decode(z))))


def test_mutate_changes_one_choice(space):
    z = space.sample(jax.random.key(7), 1)[0]
    a = space.decode(z)
    mutate = jax.jit(space.mutate)
    for i in range(20):
        b = space.decode(mutate(jax.random.key(i), z))
        assert b != a
        if space.name != "darts":
            assert sum(x != y for x, y in zip(a.choices, b.choices)) == 1


def test_darts_mutation_keeps_k_inputs():
    sp = spaces.get("darts")
    z = sp.sample(jax.random.key(0), 1)[0]
    for i in range(30):
        z = sp.mutate(jax.random.key(i), z)
        sp.decode(z)  # validates: k distinct inputs per node, usable ops


def test_macro32_gene_layout():
    sp = spaces.get("macro32")
    a = sp.from_string(" | ".join(["conv3x3-16"] * 7 + ["identity-64+res/2"]))
    assert a.choices[:4] == (0, 0, 0, 0)
    assert a.choices[28:] == (sp.ops.index("identity"), 3, 1, 1)
    assert sp.layer(a, 7) == ("identity", 64, True, True)


def test_nb201_standard_string():
    sp = spaces.get("nb201")
    s = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"
    a = sp.from_string(s)
    assert sp.to_string(a) == s
    assert a.choices == (3, 3, 3, 1, 3, 3)


@pytest.mark.parametrize("bad, match", [
    (np.zeros(5), r"shape \(32,\)"),
    (np.full(32, np.nan), "non-finite"),
    (np.r_[np.zeros(31), np.inf], "non-finite.*31"),
    (np.r_[np.zeros(30), 1.5, 0.0], r"\[0, 1\].*30"),
    ("abc", "not numeric"),
])
def test_macro32_bad_encodings(bad, match):
    with pytest.raises(ValueError, match=match):
        spaces.get("macro32").decode(bad)


@pytest.mark.parametrize("name, text, match", [
    ("nb201", "|conv~0|+|none~0|none~1|+|none~0|none~1|none~2|", "unknown op 'conv'"),
    ("nb201", "|none~0|+|none~0|", "3 nodes"),
    ("macro32", " | ".join(["conv7x7-16"] * 8), "unknown op 'conv7x7'"),
    ("macro32", " | ".join(["conv3x3-17"] * 8), "width '17'"),
    ("macro32", "conv3x3-16", "8 layers"),
    ("darts", "normal: foo~0 skip_connect~1 / a / b / c ; reduce: x", "bad edge .foo~0."),
])
def test_bad_strings(name, text, match):
    with pytest.raises(ValueError, match=match):
        spaces.get(name).from_string(text)


def test_bad_choices_and_configs():
    with pytest.raises(ValueError, match="choice 1 .*width.*is 9"):
        spaces.get("macro32").make_arch([0, 9] + [0] * 30)
    with pytest.raises(ValueError, match="unknown search space 'foo'"):
        spaces.get("foo")
    with pytest.raises(ValueError, match="unknown op"):
        spaces.get("macro32", ops=("conv3x3", "conv9x9"))
    with pytest.raises(ValueError, match="activation must be one of .* got 'tanh'"):
        spaces.get("macro32", activation="tanh")
    with pytest.raises(ValueError, match="head_pool must be one of .* got 'sum'"):
        spaces.get("macro32", head_pool="sum")
    with pytest.raises(ValueError, match="head_scale must be a positive number, got 0"):
        spaces.get("macro32", head_scale=0)
    with pytest.raises(ValueError, match="pool_before_norm=True needs reduction='pool', got reduction='stride'"):
        spaces.get("macro32", pool_before_norm=True)
    with pytest.raises(ValueError, match="unknown primitive"):
        spaces.get("darts", primitives=("none", "conv9"))
    with pytest.raises(ValueError, match="bad configuration"):
        spaces.get("nb201", layers=3)
    darts = spaces.get("darts")
    z = darts.sample(jax.random.key(0), 1)[0]
    with pytest.raises(ValueError, match="architecture of space"):
        spaces.get("macro32").encode(darts.decode(z))
    with pytest.raises(ValueError, match="not an architecture JSON"):
        Arch.from_json(json.dumps({"choices": [1]}))
