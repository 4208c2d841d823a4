"""Architecture search: the ask/tell harness, the meta-learned searcher and baselines.

* :mod:`~metanas_jax.search.searcher`: ``Searcher`` protocol, ``History``,
  ``run_search`` (host loop) and ``scan_search`` (one compiled program, vmappable over seeds).
* :mod:`~metanas_jax.search.evaluator`: task-conditioned performance predictor, its
  inner-loop adaptation and meta-training.
* :mod:`~metanas_jax.search.strategy`: gradient ascent with exploration; ES meta-training.
* :mod:`~metanas_jax.search.meta_searcher`: ``MetaSearcher`` (the method) and
  ``scratch_searcher`` (no meta-training).
* :mod:`~metanas_jax.search.baselines`: ``RandomSearch``, ``RegularizedEvolution``,
  ``NeighbourhoodSearch`` (around a given encoding: MetaNAS's adapted architecture).
* :mod:`~metanas_jax.search.tabular`: table benchmarks, ``load_nb201``.
* :mod:`~metanas_jax.search.experience`: NAS experience (scored architectures per task),
  collected by batched short training and stored as ``.npz``.
* :mod:`~metanas_jax.search.fidelity`: how well a short training proxy ranks architectures
  against a long training (Kendall tau, seconds, tau per second).
"""
from metanas_jax.search.baselines import NeighbourhoodSearch, RandomSearch, RegularizedEvolution
from metanas_jax.search.evaluator import (Evaluator, EvaluatorConfig, ImageSetEncoder, MetaTasks,
                                          cross_validate, kendall_tau, linear_probe_tau, random_top_k_regret,
                                          task_folds, tau_before_after, top_k_regret)
from metanas_jax.search.experience import (Experience, TrainConfig, collect_experience,
                                           load_experience, make_evaluate_fn, save_experience)
from metanas_jax.search.fidelity import proxy_fidelity
from metanas_jax.search.meta_searcher import MetaSearcher, MetaSearchState, scratch_searcher
from metanas_jax.search.searcher import (BasicState, History, Searcher, arch_index, best, finalists,
                                         best_so_far, history_add, history_init, index_to_z,
                                         propose_unique, recommend, run_search, scan_search,
                                         seen, space_size)
from metanas_jax.search.strategy import (StrategyConfig, StrategyParams, meta_train_strategy,
                                         pool_lookup, propose)
from metanas_jax.search.tabular import TabularBenchmark, load_nb201, nb201_path

__all__ = [
    "Searcher", "History", "BasicState", "run_search", "scan_search", "propose_unique",
    "history_init", "history_add", "best", "finalists", "recommend", "best_so_far", "seen", "space_size", "arch_index",
    "index_to_z", "RandomSearch", "RegularizedEvolution", "NeighbourhoodSearch", "Evaluator", "EvaluatorConfig",
    "ImageSetEncoder", "MetaTasks", "kendall_tau", "tau_before_after", "top_k_regret",
    "random_top_k_regret", "task_folds", "cross_validate", "linear_probe_tau", "StrategyConfig",
    "StrategyParams", "propose", "meta_train_strategy", "pool_lookup", "MetaSearcher",
    "MetaSearchState", "scratch_searcher", "TabularBenchmark", "load_nb201", "nb201_path",
    "Experience", "TrainConfig", "collect_experience", "make_evaluate_fn", "save_experience",
    "load_experience", "proxy_fidelity",
]
