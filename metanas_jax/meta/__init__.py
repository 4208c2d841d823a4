"""Gradient-based meta-learning and meta-NAS: MAML, first-order MAML and Reptile over
weights and (optionally) a relaxed architecture encoding, plus the meta-test protocol."""
from metanas_jax.meta.config import (ALGORITHMS, ARCH_UPDATES, HEAD_INITS, QUERY_NORMS,
                                     MetaConfig, make_optimizer)
from metanas_jax.meta.inner import adapt, init_head, loss_and_accuracy
from metanas_jax.meta.evaluate import (adapt_and_predict, architecture_report, confidence_interval,
                                       gene_distances, make_adapt_and_score, meta_test, predict)
from metanas_jax.meta.learner import (Learner, conv4_learner, derived_learner, inherited_params,
                                      learner_from_recipe, supernet_learner)
from metanas_jax.meta.saved import load_learner, save_learner
from metanas_jax.meta.loop import meta_train
from metanas_jax.meta.outer import check_task_batch, make_meta_step, task_meta_gradient
from metanas_jax.meta.state import (MetaState, arch_optimizer, init_meta_opt_state, init_state,
                                   meta_optimizer)
from metanas_jax.meta.tasks_map import STRATEGIES, map_tasks, resolve_strategy

__all__ = ["ALGORITHMS", "ARCH_UPDATES", "HEAD_INITS", "QUERY_NORMS", "MetaConfig",
           "make_optimizer", "adapt", "init_head", "loss_and_accuracy", "Learner",
           "conv4_learner", "supernet_learner", "derived_learner", "inherited_params",
           "check_task_batch", "make_meta_step", "task_meta_gradient", "MetaState",
           "arch_optimizer", "init_meta_opt_state", "init_state", "meta_optimizer",
           "STRATEGIES", "map_tasks", "resolve_strategy", "architecture_report", "confidence_interval",
           "gene_distances", "make_adapt_and_score", "meta_test", "meta_train", "predict",
           "adapt_and_predict", "save_learner", "load_learner", "learner_from_recipe"]
