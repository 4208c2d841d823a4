"""metanas-jax: meta-learning-based neural architecture search in JAX.

``import metanas_jax as mn`` gives the subpackages (imported on first use, so importing the
package does not import JAX): ``mn.spaces`` (search spaces, encodings), ``mn.nn``
(networks from encodings, supernets), ``mn.data`` (datasets, tasks), ``mn.meta`` (MAML /
Reptile, adapt + predict, save / load a meta-trained learner), ``mn.search`` (ask/tell
searchers, the meta-learned evaluator), ``mn.train`` (final training), ``mn.export``
(``load_model``), ``mn.parallel`` (meshes, several hosts), ``mn.pipeline`` (the main job; its parts:
``mn.builders``, config -> objects, and ``mn.workdir``, a run's records).
"""
import importlib

__version__ = "0.1.0"

SUBPACKAGES = ("spaces", "nn", "data", "meta", "search", "train", "export", "parallel",
               "pipeline", "builders", "workdir", "config", "checkpoint", "report")
__all__ = [*SUBPACKAGES, "load_model"]


def __getattr__(name):
    if name in SUBPACKAGES:
        return importlib.import_module(f"metanas_jax.{name}")
    if name == "load_model":
        from metanas_jax.export import load_model
        return load_model
    raise AttributeError(f"module 'metanas_jax' has no attribute {name!r}")
