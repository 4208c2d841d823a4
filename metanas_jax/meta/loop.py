"""Host-side meta-training loop around a jitted ``meta_step`` (episodes sampled per step)."""
from __future__ import annotations

import time
from typing import Callable

import jax
import numpy as np


def meta_train(meta_step: Callable, state, sample_fn: Callable, num_steps: int,
               time_budget_s: float | None = None, log_every: int = 100,
               log: Callable[[str], None] | None = print,
               callback: Callable[[object, dict], None] | None = None, *,
               checkpoint: Callable[[object, list, float], None] | None = None,
               checkpoint_every_s: float = 600.0, history: list | None = None,
               elapsed_s: float = 0.0):
    """Run up to ``num_steps`` meta-steps (or until ``time_budget_s`` of wall time).

    Step ``i``'s episodes are ``sample_fn(fold_in(state.key, step))``, so a run is a pure
    function of the initial state, and a run continued from a saved state repeats an
    uninterrupted one. ``callback(state, metrics)`` runs after every step with the step's
    metrics as host floats (a driver's checks, logging and checkpoints). Returns ``(state,
    history)``: history holds the mean metrics of each ``log_every`` window plus ``wall_s``.

    ``checkpoint(state, history, elapsed_s)`` runs at the end of a ``log_every`` window once
    ``checkpoint_every_s`` seconds have passed since the last one, so a saved run holds
    whole windows; to continue it, pass its ``history`` and ``elapsed_s`` back (the time
    spent counts against ``time_budget_s``; ``num_steps`` counts the steps still to run).
    """
    if num_steps < 0:
        raise ValueError(f"meta_train: num_steps must be >= 0, got {num_steps}")
    if log_every < 1:
        raise ValueError(f"meta_train: log_every must be >= 1, got {log_every}")
    history, window = list(history or []), []
    t0 = time.time() - float(elapsed_s)
    last_saved = time.time()
    for _ in range(num_steps):
        key = jax.random.fold_in(state.key, state.step)
        state, metrics = meta_step(state, sample_fn(key))
        window.append(_host(metrics))
        if callback is not None:
            callback(state, window[-1])
        done = time_budget_s is not None and time.time() - t0 >= time_budget_s
        if len(window) == log_every or done:
            history.append(_row(window, state, t0))
            window = []
            if log is not None:
                log(" ".join(f"{k}={v:.4g}" for k, v in history[-1].items()))
            if (checkpoint is not None and not done
                    and time.time() - last_saved >= checkpoint_every_s):
                checkpoint(state, history, time.time() - t0)
                last_saved = time.time()
        if done:
            break
    if window:
        history.append(_row(window, state, t0))
    return state, history


def _row(window: list[dict], state, t0: float) -> dict:
    """One history row: the window's mean metrics, the step reached and the wall time."""
    row = {k: float(np.mean([m[k] for m in window])) for k in window[0]}
    row["step"] = int(state.step)
    row["wall_s"] = time.time() - t0
    return row


def _host(metrics) -> dict:
    """Host floats of a step's metrics: this process's copy of each (the same on every
    process for the replicated metrics of a sharded step)."""
    return {k: float(np.asarray(v.addressable_data(0) if isinstance(v, jax.Array) else v))
            for k, v in metrics.items()}
