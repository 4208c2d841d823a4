"""Baseline searchers in the same ask/tell harness: random search, regularized evolution.

(The third baseline, the meta-searcher without meta-training, is
:func:`metanas_jax.search.meta_searcher.scratch_searcher`.)
"""
from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

from metanas_jax.search.searcher import BasicState, basic_init, basic_tell, propose_unique
from metanas_jax.spaces.base import SearchSpace


def _check(space, batch_size, capacity):
    if not isinstance(space, SearchSpace):
        raise ValueError(f"space must be a SearchSpace, got {space!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if capacity < batch_size:
        raise ValueError(f"capacity ({capacity}) must be >= batch_size ({batch_size})")


@flax.struct.dataclass
class RandomSearch:
    """Uniform samples of the space, never one evaluated before."""

    space: SearchSpace = flax.struct.field(pytree_node=False)
    batch_size: int = flax.struct.field(pytree_node=False, default=10)
    capacity: int = flax.struct.field(pytree_node=False, default=200)

    def __post_init__(self):
        _check(self.space, self.batch_size, self.capacity)

    def init(self, key) -> BasicState:
        return basic_init(self, key)

    def ask(self, state: BasicState):
        key, k_prop = jax.random.split(state.key)
        zs = propose_unique(self.space, k_prop, jnp.zeros((0, self.space.dim)), jnp.zeros((0,)),
                            state.history, self.batch_size)
        return state.replace(key=key), zs

    def tell(self, state, zs, scores):
        return basic_tell(state, zs, scores)


@flax.struct.dataclass
class RegularizedEvolution:
    """Aging evolution (Real et al., 2019) in batches.

    The population is the ``population_size`` most recent evaluations; each child is a
    one-choice mutation of the best of ``tournament_size`` members drawn at random. Until
    the population is full, candidates are uniform samples.
    """

    space: SearchSpace = flax.struct.field(pytree_node=False)
    batch_size: int = flax.struct.field(pytree_node=False, default=10)
    capacity: int = flax.struct.field(pytree_node=False, default=200)
    population_size: int = flax.struct.field(pytree_node=False, default=20)
    tournament_size: int = flax.struct.field(pytree_node=False, default=5)

    def __post_init__(self):
        _check(self.space, self.batch_size, self.capacity)
        if not 1 <= self.tournament_size <= self.population_size:
            raise ValueError(f"tournament_size must be in [1, population_size="
                             f"{self.population_size}], got {self.tournament_size}")

    def init(self, key) -> BasicState:
        return basic_init(self, key)

    def ask(self, state: BasicState):
        h = state.history
        key, k_t, k_m, k_prop = jax.random.split(state.key, 4)
        n_children = 4 * self.batch_size  # spares for children that are duplicates
        pop = jnp.minimum(h.count, self.population_size)
        first = h.count - pop
        draws = jax.random.randint(k_t, (n_children, self.tournament_size), 0, jnp.maximum(pop, 1))
        members = first + draws
        winners = jnp.take_along_axis(members, jnp.argmax(h.scores[members], axis=1)[:, None],
                                      axis=1)[:, 0]
        children = jax.vmap(self.space.mutate)(jax.random.split(k_m, n_children), h.zs[winners])
        # population not full yet: offer no children, propose_unique fills with samples
        priority = jnp.where(pop >= self.population_size, -jnp.arange(n_children, dtype=jnp.float32),
                             -jnp.inf)
        zs = propose_unique(self.space, k_prop, children, priority, h, self.batch_size)
        return state.replace(key=key), zs

    def tell(self, state, zs, scores):
        return basic_tell(state, zs, scores)


@flax.struct.dataclass
class NeighbourhoodSearch:
    """Architectures near a given encoding: its projection first, then the projections of
    Gaussian perturbations of it, nearest first, never one evaluated before.

    This is how the gradient-based (MetaNAS) branch searches a new task: the
    meta-architecture, adapted to the task by a few inner steps, is ``center``; its
    discrete projection is what MetaNAS would return, and the rest of the budget looks at
    its neighbours instead of the whole space.
    """

    space: SearchSpace = flax.struct.field(pytree_node=False)
    center: jax.Array = None
    scale: float = flax.struct.field(pytree_node=False, default=0.25)
    batch_size: int = flax.struct.field(pytree_node=False, default=10)
    capacity: int = flax.struct.field(pytree_node=False, default=200)
    pool: int = flax.struct.field(pytree_node=False, default=64)

    def __post_init__(self):
        _check(self.space, self.batch_size, self.capacity)
        if self.center is None or jnp.shape(self.center) != (self.space.dim,):
            raise ValueError(f"NeighbourhoodSearch: center must have shape ({self.space.dim},), "
                             f"got {None if self.center is None else jnp.shape(self.center)}")
        if not self.scale > 0:
            raise ValueError(f"NeighbourhoodSearch: scale must be > 0, got {self.scale}")

    def init(self, key) -> BasicState:
        return basic_init(self, key)

    def ask(self, state: BasicState):
        key, k_noise, k_prop = jax.random.split(state.key, 3)
        noise = self.scale * jax.random.normal(k_noise, (self.pool, self.space.dim))
        noise = noise.at[0].set(0.0)  # the centre itself comes first
        zs = propose_unique(self.space, k_prop, self.center + noise,
                            -jnp.sum(noise ** 2, axis=-1), state.history, self.batch_size)
        return state.replace(key=key), zs

    def tell(self, state, zs, scores):
        return basic_tell(state, zs, scores)
