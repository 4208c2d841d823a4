"""Search spaces: ``get(name, **config)`` returns a hashable :class:`SearchSpace`."""
from metanas_jax.spaces.base import Arch, GeneGroup, SearchSpace
from metanas_jax.spaces.darts import DARTS_PRIMITIVES, Darts
from metanas_jax.spaces.macro32 import CIFAR_SPACE, MACRO_OPS, REFERENCE_ARCHS, Macro32
from metanas_jax.spaces.nb201 import NB201_EDGES, NB201_OPS, NB201

SPACES = {"macro32": Macro32, "darts": Darts, "nb201": NB201}


def get(name: str, **config) -> SearchSpace:
    """The space called ``name`` (``macro32``, ``darts``, ``nb201``) with ``config`` overrides."""
    if name not in SPACES:
        raise ValueError(f"unknown search space {name!r}; known: {sorted(SPACES)}")
    try:
        return SPACES[name](**config)
    except TypeError as e:
        raise ValueError(f"bad configuration for space {name!r}: {e}") from e


__all__ = ["Arch", "GeneGroup", "SearchSpace", "Macro32", "Darts", "NB201", "get", "SPACES",
           "MACRO_OPS", "CIFAR_SPACE", "REFERENCE_ARCHS", "DARTS_PRIMITIVES", "NB201_OPS", "NB201_EDGES"]
