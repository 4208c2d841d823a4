"""The meta-learned searcher: evaluator + strategy, driven ask/tell on a new task.

Each round: ``ask`` proposes ``batch_size`` novel architectures with the strategy, using
the evaluator as adapted so far; the caller evaluates them for real; ``tell`` records the
scores and re-adapts the evaluator (from its meta-learned initialization, on every pair
observed on the task). :func:`scratch_searcher` is the same searcher without
meta-training: a randomly initialized evaluator trained with Adam on the task's pairs only,
and the default strategy parameters.
"""
from __future__ import annotations

from typing import Any

import chex
import flax.struct
import jax
import jax.numpy as jnp

from metanas_jax.search.evaluator import Evaluator, EvaluatorConfig
from metanas_jax.search.searcher import History, history_add, history_init
from metanas_jax.search.strategy import StrategyConfig, StrategyParams, propose
from metanas_jax.spaces.base import SearchSpace


@chex.dataclass(frozen=True)
class MetaSearchState:
    key: jax.Array
    round: jax.Array
    history: History
    ctx: jax.Array      # the task's context vector
    fast: dict          # the evaluator adapted to the history


@flax.struct.dataclass
class MetaSearcher:
    """Ask/tell searcher. ``params``: evaluator meta-parameters; ``task``: the new task's
    evaluator input (table id, ``(images, labels)`` or ``None``); ``fit_steps > 0`` turns
    off meta-learning (see :func:`scratch_searcher`)."""

    evaluator: Evaluator = flax.struct.field(pytree_node=False)
    params: dict
    strategy: StrategyParams
    task: Any
    batch_size: int = flax.struct.field(pytree_node=False, default=10)
    capacity: int = flax.struct.field(pytree_node=False, default=200)
    strategy_config: StrategyConfig = flax.struct.field(pytree_node=False, default=StrategyConfig())
    fit_steps: int = flax.struct.field(pytree_node=False, default=0)
    fit_lr: float = flax.struct.field(pytree_node=False, default=3e-3)

    def __post_init__(self):
        if self.batch_size < 1 or self.capacity < self.batch_size:
            raise ValueError(f"need 1 <= batch_size <= capacity, got {self.batch_size}, {self.capacity}")
        if self.fit_steps < 0:
            raise ValueError(f"fit_steps must be >= 0, got {self.fit_steps}")
        need = {"context", "predictor", "log_lr", "prior"}
        if not self.fit_steps and isinstance(self.params, dict) and not need <= set(self.params):
            raise ValueError(f"MetaSearcher: params must be the evaluator's meta-parameters "
                             f"(Evaluator.init or Evaluator.meta_train: keys {sorted(need)}), "
                             f"got keys {sorted(self.params)}")

    @property
    def space(self) -> SearchSpace:
        return self.evaluator.space

    def init(self, key: jax.Array) -> MetaSearchState:
        k_init, key = jax.random.split(key)
        params = self.params
        if self.fit_steps:  # no meta-learning: a fresh evaluator per search
            params = self.evaluator.init(k_init, self.task)
        ctx = self.evaluator.context(params, self.task)
        return MetaSearchState(key=key, round=jnp.zeros((), jnp.int32),
                               history=history_init(self.capacity, self.space.dim),
                               ctx=ctx, fast=self.evaluator.fast_init(params))

    def predict(self, state: MetaSearchState, zs: jax.Array) -> jax.Array:
        """The adapted evaluator's predicted scores of ``zs``."""
        return self.evaluator.predict(state.fast, state.ctx, zs)

    def recommend(self, state: MetaSearchState) -> jax.Array:
        """Row of the history with the highest *predicted* score among those evaluated.

        Why not the best observed score: a cheap proxy's score is noisy, and with many
        evaluations its argmax is increasingly a lucky draw. The adapted evaluator pools
        the meta-learned prior with every observation on the task (a posterior-mean
        recommendation, as in Bayesian optimisation)."""
        h = state.history
        ok = h.valid & jnp.isfinite(h.scores)
        return jnp.argmax(jnp.where(ok, self.predict(state, h.zs), -jnp.inf))

    def ask(self, state: MetaSearchState):
        key, k_prop = jax.random.split(state.key)
        zs = propose(self.space, lambda z: self.predict(state, z), self.strategy,
                     self.strategy_config, state.history, k_prop, self.batch_size)
        return state.replace(key=key), zs

    def tell(self, state: MetaSearchState, zs, scores) -> MetaSearchState:
        h = history_add(state.history, zs, scores, state.round)
        valid = h.valid & jnp.isfinite(h.scores)
        ys = jnp.where(valid, h.scores, 0.0)
        if self.fit_steps:
            fast = self.evaluator.fit(state.fast, state.ctx, h.zs, ys, valid, self.fit_steps,
                                      self.fit_lr)
        else:
            fast = self.evaluator.adapt(self.params, state.ctx, h.zs, ys, valid)
        return state.replace(history=h, round=state.round + 1, fast=fast)


def scratch_searcher(space: SearchSpace, *, batch_size: int = 10, capacity: int = 200,
                     config: EvaluatorConfig | None = None, fit_steps: int = 100,
                     fit_lr: float = 3e-3, strategy: StrategyParams | None = None,
                     strategy_config: StrategyConfig = StrategyConfig()) -> MetaSearcher:
    """The searcher without meta-training: same evaluator and strategy, evaluator
    initialized at random on each search and trained on the task's observations only."""
    if fit_steps < 1:
        raise ValueError(f"fit_steps must be >= 1, got {fit_steps}")
    config = config or EvaluatorConfig(task_input="none")
    if config.task_input != "none":
        raise ValueError(f"scratch_searcher has no task input to encode: need task_input="
                         f"'none', got {config.task_input!r}")
    return MetaSearcher(evaluator=Evaluator(space, config), params={},
                        strategy=strategy or StrategyParams.create(), task=None, batch_size=batch_size, capacity=capacity,
                        strategy_config=strategy_config, fit_steps=fit_steps, fit_lr=fit_lr)
