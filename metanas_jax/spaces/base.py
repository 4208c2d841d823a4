"""The search-space interface shared by every space.

A space maps between three views of an architecture:

* ``z``: a flat float32 encoding of length ``space.dim``. It is what search strategies,
  evaluators and gradient-based meta-learners move around, so it must be differentiable.
* weights: ``space.relax(z, temperature)``, a dict ``{group: (count, choices)}`` of
  per-choice mixing weights, the input of a supernet ("architecture as data").
* :class:`Arch`: the discrete architecture, hashable and JSON-serialisable, which the
  compact builder instantiates for final training.

Spaces are frozen dataclasses, hence hashable, so a space can be a static argument of
``jax.jit``. Everything that takes ``z`` is a pure jnp function (jit / vmap-safe) except
``decode`` / ``validate``, which run on the host and raise ``ValueError`` on bad input.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class GeneGroup:
    """``count`` genes that each pick one of ``choices`` (named by ``labels``)."""

    name: str
    count: int
    labels: tuple[str, ...]

    @property
    def choices(self) -> int:
        return len(self.labels)


@dataclasses.dataclass(frozen=True)
class Arch:
    """A discrete architecture: the space it belongs to and one integer per choice.

    ``choices`` is laid out as the space documents (for ``macro32``: layer-major, four
    genes per layer). ``str(arch)`` is the space's readable form.
    """

    space: "SearchSpace"
    choices: tuple[int, ...]

    def __str__(self) -> str:
        return self.space.to_string(self)

    def to_json(self) -> str:
        return json.dumps({"space": self.space.name, "config": self.space.config(),
                           "choices": list(self.choices), "string": str(self)})

    @staticmethod
    def from_json(text: str) -> "Arch":
        from metanas_jax.spaces import get  # late import: registry imports this module

        try:
            obj = json.loads(text)
            space = get(obj["space"], **obj.get("config", {}))
            choices = tuple(int(c) for c in obj["choices"])
        except (KeyError, TypeError, json.JSONDecodeError) as e:
            raise ValueError(f"not an architecture JSON ({e!r}): {text[:200]!r}") from e
        return space.make_arch(choices)


class SearchSpace:
    """Base class. Subclasses are frozen dataclasses and define the abstract methods."""

    name: str = "base"
    # the middle of the encoding, where no choice is preferred: a relaxed architecture
    # (a meta-architecture, a DARTS alpha) starts there (0 for softmax logits)
    encoding_center = 0.0

    # -- description -------------------------------------------------------------------
    @property
    def groups(self) -> tuple[GeneGroup, ...]:
        raise NotImplementedError

    @property
    def dim(self) -> int:
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        """The constructor arguments, JSON-friendly (used by ``Arch.to_json``)."""
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = list(v) if isinstance(v, tuple) else v
        return out

    # -- discrete side (host) ------------------------------------------------------------
    def check_arch(self, choices: Sequence[int]) -> tuple[int, ...]:
        """Validate discrete choices; return them canonical. Raises ``ValueError``."""
        raise NotImplementedError

    def make_arch(self, choices: Sequence[int]) -> Arch:
        return Arch(self, self.check_arch(tuple(int(c) for c in choices)))

    def decode(self, z) -> Arch:
        raise NotImplementedError

    def encode(self, arch: Arch) -> jax.Array:
        raise NotImplementedError

    def to_string(self, arch: Arch) -> str:
        raise NotImplementedError

    def from_string(self, text: str) -> Arch:
        raise NotImplementedError

    def own(self, arch: Arch) -> Arch:
        """Check that ``arch`` belongs to this space (same name and configuration)."""
        if not isinstance(arch, Arch):
            raise ValueError(f"expected an Arch, got {type(arch).__name__}: {arch!r}")
        if arch.space != self:
            raise ValueError(f"architecture of space {arch.space!r} given to space {self!r}")
        return arch

    def validate(self, z) -> np.ndarray:
        """Host-side check of a user-supplied encoding: shape ``(dim,)``, finite values."""
        try:
            arr = np.asarray(z, dtype=np.float64)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{self.name}: encoding is not numeric: {z!r}") from e
        if arr.shape != (self.dim,):
            raise ValueError(f"{self.name}: encoding must have shape ({self.dim},), got {arr.shape}")
        bad = np.flatnonzero(~np.isfinite(arr))
        if bad.size:
            raise ValueError(f"{self.name}: encoding has non-finite values at indices "
                             f"{bad.tolist()[:8]}: {arr[bad[:8]].tolist()}")
        return arr

    # -- continuous side (pure jnp) ------------------------------------------------------
    def sample(self, key: jax.Array, n: int) -> jax.Array:
        """``n`` valid encodings of uniformly random architectures, shape ``(n, dim)``."""
        raise NotImplementedError

    def relax(self, z: jax.Array, temperature: float = 1.0) -> dict[str, jax.Array]:
        """Per-choice weights ``{group: (count, choices)}``; each row sums to one.

        ``temperature > 0`` is differentiable in ``z``; ``temperature == 0`` gives the
        hard one-hot weights of ``decode(z)`` (no gradient), what a supernet needs to
        compute exactly the compact network of that architecture.
        """
        raise NotImplementedError

    def project(self, z: jax.Array) -> jax.Array:
        """Snap an encoding to the nearest valid discrete encoding (jit-able)."""
        raise NotImplementedError

    def mutate(self, key: jax.Array, z: jax.Array) -> jax.Array:
        """A valid encoding that differs from ``project(z)`` in exactly one choice."""
        raise NotImplementedError

    def one_hot(self, arch: Arch) -> dict[str, jax.Array]:
        """The exact supernet weights that select ``arch``."""
        return self.relax(self.encode(self.own(arch)), 0.0)

    def decode_batch(self, zs) -> list[Arch]:
        return [self.decode(z) for z in np.asarray(zs)]


def random_other_choice(key: jax.Array, current: jax.Array, choices: jax.Array) -> jax.Array:
    """Uniform over ``range(choices)`` minus ``current`` (``choices >= 2``), jit-able."""
    offset = jax.random.randint(key, (), 1, jnp.maximum(choices, 2))
    return (current + offset) % choices
