"""The search strategy: gradient ascent on the evaluator's prediction, with exploration.

Each round, :func:`propose` builds a candidate pool and keeps the best ``batch`` novel ones:

1. a uniform random pool, screened by the evaluator (the prior, useful from round 0);
2. one-choice mutations of the best observed architectures (local search);
3. gradient ascent on the prediction from the best observed points and the best-predicted
   random points: ``steps`` moves ``z += step * g / max|g| + noise * N(0, 1)`` (the
   gradient reaches ``z`` through the evaluator's relaxed input), then projected to valid
   discrete architectures;
4. candidates are ranked by predicted score (standardized over the pool) plus
   ``temperature`` times Gumbel noise (so the pick is a softmax sample: exploration), and
   :func:`~metanas_jax.search.searcher.propose_unique` takes the best novel ones.

``step``, ``noise`` and ``temperature`` (:class:`StrategyParams`) are meta-learned across
tasks by :func:`meta_train_strategy`: antithetic evolution strategies on the outcome of whole
simulated searches over meta-training tasks (the outcome passes through the discrete
projection and the best-of selection, so it has no useful gradient).
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Callable

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from metanas_jax.search.searcher import History, propose_unique
from metanas_jax.spaces.base import SearchSpace

log = logging.getLogger("metanas_jax")


@flax.struct.dataclass
class StrategyParams:
    """Meta-learned parameters of the strategy, in log space."""

    log_step: jax.Array
    log_noise: jax.Array
    log_temperature: jax.Array

    @staticmethod
    def create(step: float = 0.2, noise: float = 0.05, temperature: float = 0.3) -> "StrategyParams":
        for name, v in (("step", step), ("noise", noise), ("temperature", temperature)):
            if not v > 0:
                raise ValueError(f"strategy {name} must be > 0, got {v}")
        return StrategyParams(jnp.log(jnp.float32(step)), jnp.log(jnp.float32(noise)),
                              jnp.log(jnp.float32(temperature)))

    def as_vector(self) -> jax.Array:
        return jnp.stack([self.log_step, self.log_noise, self.log_temperature])

    @staticmethod
    def from_vector(v: jax.Array) -> "StrategyParams":
        return StrategyParams(v[..., 0], v[..., 1], v[..., 2])

    def describe(self) -> dict[str, float]:
        return {"step": float(jnp.exp(self.log_step)), "noise": float(jnp.exp(self.log_noise)),
                "temperature": float(jnp.exp(self.log_temperature))}


@dataclasses.dataclass(frozen=True)
class StrategyConfig:
    """Pool sizes of :func:`propose` (hashable, static)."""

    n_random: int = 256
    n_elite: int = 4
    n_mutants: int = 8
    n_starts: int = 16
    steps: int = 5

    def __post_init__(self):
        for f in dataclasses.fields(self):
            if getattr(self, f.name) < (0 if f.name in ("n_elite", "n_mutants", "steps") else 1):
                raise ValueError(f"StrategyConfig.{f.name} is {getattr(self, f.name)}, too small")
        if self.n_starts < self.n_elite:
            raise ValueError(f"n_starts ({self.n_starts}) must be >= n_elite ({self.n_elite})")
        if self.n_starts - self.n_elite > self.n_random:
            raise ValueError(f"n_starts - n_elite ({self.n_starts - self.n_elite}) must be <= "
                             f"n_random ({self.n_random})")


def _bounded(space: SearchSpace) -> bool:
    """Categorical encodings live in [0, 1]; others (DARTS logits) are unbounded."""
    return hasattr(space, "cardinalities")


def ascend(space: SearchSpace, predict: Callable, params: StrategyParams, starts: jax.Array,
           key: jax.Array, steps: int) -> jax.Array:
    """``steps`` noisy, max-normalized gradient-ascent moves of each row of ``starts``."""
    step, noise = jnp.exp(params.log_step), jnp.exp(params.log_noise)
    grad = jax.grad(lambda z: jnp.sum(predict(z)))

    def move(z, k):
        g = grad(z)
        g = g / (jnp.max(jnp.abs(g), axis=-1, keepdims=True) + 1e-8)
        z = z + step * g + noise * jax.random.normal(k, z.shape)
        return (jnp.clip(z, 0.0, 1.0) if _bounded(space) else z), None

    z, _ = jax.lax.scan(move, starts, jax.random.split(key, steps))
    return z


def propose(space: SearchSpace, predict: Callable[[jax.Array], jax.Array],
            params: StrategyParams, config: StrategyConfig, history: History,
            key: jax.Array, batch: int) -> jax.Array:
    """``batch`` novel, valid encodings chosen by the evaluator ``predict`` (jit-able)."""
    k_rand, k_mut, k_asc, k_gum, k_fill = jax.random.split(key, 5)
    rand = space.sample(k_rand, config.n_random)
    pr = predict(rand)

    order = jnp.argsort(-history.scores)[: config.n_elite]
    have = history.scores[order] > -jnp.inf
    elite = jnp.where(have[:, None], history.zs[order], rand[: config.n_elite])
    parts = [rand]
    if config.n_mutants and config.n_elite:
        parents = jnp.repeat(elite, config.n_mutants, axis=0)
        parts.append(jax.vmap(space.mutate)(jax.random.split(k_mut, parents.shape[0]), parents))
    top_random = rand[jnp.argsort(-pr)[: config.n_starts - config.n_elite]]
    starts = jnp.concatenate([elite, top_random])
    if config.steps:
        parts.append(ascend(space, predict, params, starts, k_asc, config.steps))
    cands = jax.vmap(space.project)(jnp.concatenate(parts))
    pred = predict(cands)
    standard = (pred - jnp.mean(pred)) / (jnp.std(pred) + 1e-8)
    priority = standard + jnp.exp(params.log_temperature) * jax.random.gumbel(k_gum, pred.shape)
    return propose_unique(space, k_fill, cands, priority, history, batch)


# -- meta-learning the strategy ------------------------------------------------------------
def pool_lookup(pool_zs: jax.Array, pool_scores: jax.Array, zs: jax.Array) -> jax.Array:
    """Score of the nearest scored architecture (exact for a full table): the simulated
    evaluation of meta-training searches."""
    d = jnp.sum((zs[:, None, :] - pool_zs[None, :, :]) ** 2, -1)
    return pool_scores[jnp.argmin(d, axis=1)]


def search_outcome(history: History, pool_scores: jax.Array) -> jax.Array:
    """Mean over the search of the best-so-far score, in standard deviations of the task's
    scores above their mean: rewards finding good architectures early."""
    bsf = jax.lax.cummax(history.scores)
    valid = history.valid
    z = (bsf - jnp.mean(pool_scores)) / (jnp.std(pool_scores) + 1e-8)
    return jnp.sum(jnp.where(valid, z, 0.0)) / jnp.maximum(valid.sum(), 1)


def meta_train_strategy(searcher, tasks, pool_zs: jax.Array, pool_scores: jax.Array,
                        key: jax.Array, *, rounds: int, iterations: int = 10,
                        population: int = 8, seeds: int = 2, sigma: float = 0.3,
                        lr: float = 0.2, log_every: int = 0, mesh=None):
    """Evolution strategies on ``searcher.strategy`` over simulated searches.

    ``searcher`` is a :class:`~metanas_jax.search.meta_searcher.MetaSearcher` (its
    ``strategy`` and ``task`` fields are replaced); ``tasks`` holds one task input per
    meta-training task (leading axis ``T``), ``pool_zs (T, N, dim)`` / ``pool_scores
    (T, N)`` their scored architectures. Each iteration scores ``2 * population``
    antithetic perturbations on ``T x seeds`` searches of ``rounds`` rounds (same seeds
    for all perturbations) and takes an Adam step on the rank-weighted estimate.
    Returns the searcher with the learned strategy and the mean outcome per iteration.
    ``mesh`` (axis ``"data"``, :mod:`metanas_jax.parallel`): the ``2 * population``
    perturbations are split over its devices (padded to a multiple of the mesh size with
    copies whose outcomes are dropped).
    """
    from metanas_jax.search.searcher import scan_search

    if iterations < 1 or population < 1 or seeds < 1 or rounds < 1:
        raise ValueError(f"need iterations, population, seeds, rounds >= 1, got "
                         f"{iterations}, {population}, {seeds}, {rounds}")
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    n_tasks = pool_scores.shape[0]

    def outcome(vec, task, pzs, psc, k):
        s = searcher.replace(strategy=StrategyParams.from_vector(vec), task=task)
        state = scan_search(s, lambda zs: pool_lookup(pzs, psc, zs), rounds, k)
        return search_outcome(state.history, psc)

    # (pop,) x (tasks,) x (seeds,)
    over_seeds = jax.vmap(outcome, in_axes=(None, None, None, None, 0))
    over_tasks = jax.vmap(over_seeds, in_axes=(None, 0, 0, 0, 0))
    over_pop = jax.vmap(over_tasks, in_axes=(0, None, None, None, None))
    mesh = mesh if mesh is not None and mesh.size > 1 else None
    if mesh is None:
        over_pop = jax.jit(over_pop)
    else:
        from metanas_jax import parallel
        rep = parallel.replicated(mesh)
        over_pop = jax.jit(over_pop, in_shardings=(parallel.sharded(mesh), rep, rep, rep, rep),
                           out_shardings=rep)
        tasks, pool_zs, pool_scores = parallel.put_replicated(
            parallel.to_local((tasks, pool_zs, pool_scores)), mesh)

    theta = searcher.strategy.as_vector()
    opt = optax.adam(lr)
    opt_state = opt.init(theta)

    # the iteration's own arithmetic as two compiled programs: op by op it compiled some
    # 30 small ones on the first iteration
    @jax.jit
    def perturb(key, theta):
        key, k_eps, k_run = jax.random.split(key, 3)
        eps = jax.random.normal(k_eps, (population, theta.shape[0]))
        cand = jnp.concatenate([theta + sigma * eps, theta - sigma * eps])
        return key, eps, cand, jax.random.split(k_run, n_tasks * seeds).reshape(n_tasks, seeds)

    @jax.jit
    def es_step(theta, opt_state, eps, fit):
        fit = fit.mean(axis=(1, 2))
        ranks = jnp.argsort(jnp.argsort(fit)).astype(jnp.float32) / (fit.shape[0] - 1) - 0.5
        grad = -(ranks[:population] - ranks[population:]) @ eps / (population * sigma)
        upd, opt_state = opt.update(grad, opt_state, theta)
        return optax.apply_updates(theta, upd), opt_state, fit.mean()

    trace = []
    for it in range(iterations):
        key, eps, cand, keys = perturb(key, theta)
        if mesh is not None:  # host values every process holds alike -> global arrays
            rows = np.arange(-(-cand.shape[0] // mesh.size) * mesh.size) % cand.shape[0]
            keys = parallel.put_replicated(keys, mesh)
            fit = over_pop(parallel.put_sharded(np.asarray(cand)[rows], mesh), tasks, pool_zs,
                           pool_scores, keys)
            fit = jnp.asarray(parallel.to_local(fit))[: cand.shape[0]]
        else:
            fit = over_pop(cand, tasks, pool_zs, pool_scores, keys)
        theta, opt_state, mean_fit = es_step(theta, opt_state, eps, fit)
        trace.append(float(mean_fit))
        if log_every and (it + 1) % log_every == 0:
            log.info("strategy ES iteration %d: mean outcome %.4f, %s", it + 1, trace[-1],
                     StrategyParams.from_vector(theta).describe())
    return searcher.replace(strategy=StrategyParams.from_vector(theta)), np.asarray(trace)
