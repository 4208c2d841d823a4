"""Spaces whose encoding is one scalar gene in [0, 1] per independent categorical choice.

A gene with ``K`` choices encodes choice ``k`` as ``k / (K - 1)``; ``decode`` rounds to
the nearest grid point. ``relax`` turns each gene into soft weights over its choices with a
Gaussian kernel on that grid, ``w_k ∝ exp(-(z (K-1) - k)^2 / T)``, so the encoding stays
one number per choice (the 32-dimensional reference encoding) yet gradients reach it, and
nearby values of a gene mean nearby choices in the order the space lists them.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from metanas_jax.spaces.base import Arch, GeneGroup, SearchSpace, random_other_choice


class CategoricalSpace(SearchSpace):
    """Subclasses define ``groups`` and ``gene_index``: ``(group, slot)`` for each z entry."""

    @property
    def gene_index(self) -> tuple[tuple[int, int], ...]:
        raise NotImplementedError

    @property
    def dim(self) -> int:
        return len(self.gene_index)

    @functools.cached_property
    def cardinalities(self) -> np.ndarray:
        return np.array([self.groups[g].choices for g, _ in self.gene_index], np.int32)

    @functools.cached_property
    def _positions(self) -> tuple[np.ndarray, ...]:
        """For each group, the z positions of its slots, in slot order."""
        pos = [np.zeros(g.count, np.int32) for g in self.groups]
        for i, (g, slot) in enumerate(self.gene_index):
            pos[g][slot] = i
        return tuple(pos)

    # -- discrete --------------------------------------------------------------------
    def check_arch(self, choices):
        if len(choices) != self.dim:
            raise ValueError(f"{self.name}: an architecture has {self.dim} choices, got {len(choices)}")
        for i, (c, k) in enumerate(zip(choices, self.cardinalities)):
            if not 0 <= c < k:
                g, slot = self.gene_index[i]
                raise ValueError(f"{self.name}: choice {i} ({self.groups[g].name}[{slot}]) "
                                 f"is {c}, must be in [0, {int(k) - 1}]")
        return tuple(choices)

    def decode(self, z) -> Arch:
        arr = self.validate(z)
        bad = np.flatnonzero((arr < 0.0) | (arr > 1.0))
        if bad.size:
            raise ValueError(f"{self.name}: encoding values must lie in [0, 1]; out of range at "
                             f"indices {bad.tolist()[:8]}: {arr[bad[:8]].tolist()}")
        idx = np.rint(arr * (self.cardinalities - 1)).astype(int)
        return self.make_arch(idx)

    def encode(self, arch: Arch) -> jax.Array:
        idx = np.asarray(self.own(arch).choices, np.float32)
        return jnp.asarray(idx / np.maximum(self.cardinalities - 1, 1), jnp.float32)

    def label(self, arch: Arch, i: int) -> str:
        g, _ = self.gene_index[i]
        return self.groups[g].labels[arch.choices[i]]

    # -- continuous ------------------------------------------------------------------
    def _indices(self, z: jax.Array) -> jax.Array:
        k = jnp.asarray(self.cardinalities - 1, jnp.float32)
        return jnp.clip(jnp.round(z * k), 0, k).astype(jnp.int32)

    def _encode_indices(self, idx: jax.Array) -> jax.Array:
        k = jnp.asarray(np.maximum(self.cardinalities - 1, 1), jnp.float32)
        return idx.astype(jnp.float32) / k

    def sample(self, key, n):
        u = jax.random.uniform(key, (n, self.dim))
        idx = jnp.floor(u * jnp.asarray(self.cardinalities)).astype(jnp.int32)
        return self._encode_indices(idx)

    def project(self, z):
        return self._encode_indices(self._indices(z))

    def mutate(self, key, z):
        k_gene, k_choice = jax.random.split(key)
        idx = self._indices(z)
        card = jnp.asarray(self.cardinalities)
        mutable = card >= 2
        gene = jax.random.choice(k_gene, self.dim, p=mutable / mutable.sum())
        new = random_other_choice(k_choice, idx[gene], card[gene])
        return self._encode_indices(idx.at[gene].set(new))

    def relax(self, z, temperature=1.0):
        z = jnp.asarray(z, jnp.float32)
        out = {}
        for group, pos in zip(self.groups, self._positions):
            zg = z[..., pos]
            if temperature == 0:
                idx = jnp.clip(jnp.round(zg * (group.choices - 1)), 0, group.choices - 1)
                out[group.name] = jax.nn.one_hot(idx.astype(jnp.int32), group.choices)
            else:
                grid = jnp.arange(group.choices, dtype=jnp.float32)
                dist = (zg[..., None] * (group.choices - 1) - grid) ** 2
                out[group.name] = jax.nn.softmax(-dist / temperature, axis=-1)
        return out


def layer_major(groups: tuple[GeneGroup, ...], layers: int) -> tuple[tuple[int, int], ...]:
    """Gene ``i`` of layer ``l`` sits at ``z[l * len(groups) + i]``."""
    return tuple((g, layer) for layer in range(layers) for g in range(len(groups)))
