"""metanas-jax: meta-learning-based neural architecture search in JAX."""

__version__ = "0.1.0"


def __getattr__(name):
    # lazy: ``metanas_jax.load_model`` without importing jax at package import
    if name == "load_model":
        from metanas_jax.export import load_model
        return load_model
    raise AttributeError(f"module 'metanas_jax' has no attribute {name!r}")
