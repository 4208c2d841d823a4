"""The ask/tell interface every search strategy implements, and the drivers that run it.

A searcher is a pytree (``flax.struct`` dataclass: configuration static, learned arrays as
leaves) with three pure methods::

    state = searcher.init(key)
    state, zs = searcher.ask(state)          # zs: (batch_size, space.dim), valid, novel
    state = searcher.tell(state, zs, scores) # scores: (k,), k <= batch_size

The state carries the PRNG key and the full :class:`History` in fixed-size arrays, so all
three methods jit, and a whole search over a table benchmark runs as one ``lax.scan`` that
vmaps over seeds (:func:`scan_search`). :func:`run_search` is the host loop for evaluations
that are not jit-able (real training), with an evaluation budget and a time limit.

Why proposals are deduplicated here, not in each strategy: "never propose an architecture
twice" is a property of the harness; :func:`propose_unique` gives it to every strategy.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Protocol

import chex
import jax
import jax.numpy as jnp
import numpy as np

from metanas_jax.spaces.base import SearchSpace

# Random draws tried per slot before the exhaustive index scan (small spaces only).
RANDOM_TRIES = 64
# Largest space whose architectures are enumerated by index when random draws fail.
MAX_ENUMERABLE = 2**31 - 1


@chex.dataclass(frozen=True)
class History:
    """Every evaluation of a search, in order. Rows ``>= count`` are empty.

    ``rounds[i]`` is the ask/tell round of row ``i`` (``-1`` when empty), ``scores`` of
    empty rows are ``-inf`` so ``argmax`` ignores them.
    """

    zs: jax.Array       # (capacity, dim) float32, projected encodings
    scores: jax.Array   # (capacity,) float32
    rounds: jax.Array   # (capacity,) int32
    count: jax.Array    # () int32

    @property
    def capacity(self) -> int:
        return self.scores.shape[-1]

    @property
    def valid(self) -> jax.Array:
        return jnp.arange(self.capacity) < self.count[..., None]


def history_init(capacity: int, dim: int) -> History:
    if capacity < 1:
        raise ValueError(f"history capacity must be >= 1, got {capacity}")
    return History(zs=jnp.zeros((capacity, dim), jnp.float32),
                   scores=jnp.full((capacity,), -jnp.inf, jnp.float32),
                   rounds=jnp.full((capacity,), -1, jnp.int32),
                   count=jnp.zeros((), jnp.int32))


def history_add(h: History, zs: jax.Array, scores: jax.Array, round_: jax.Array) -> History:
    """Append ``k`` rows. Rows beyond the capacity are dropped (drivers check the budget)."""
    zs = jnp.asarray(zs, jnp.float32)
    scores = jnp.asarray(scores, jnp.float32).reshape(-1)
    k = zs.shape[0]
    pos = h.count + jnp.arange(k)
    keep = pos < h.capacity
    idx = jnp.where(keep, pos, h.capacity)  # out of range -> dropped by mode="drop"
    return h.replace(
        zs=h.zs.at[idx].set(zs, mode="drop"),
        scores=h.scores.at[idx].set(jnp.where(jnp.isfinite(scores), scores, -jnp.inf),
                                   mode="drop"),
        rounds=h.rounds.at[idx].set(jnp.full((k,), round_, jnp.int32), mode="drop"),
        count=jnp.minimum(h.count + k, h.capacity).astype(jnp.int32))


def best(h: History) -> tuple[jax.Array, jax.Array]:
    """``(z, score)`` of the best evaluation so far."""
    i = jnp.argmax(h.scores)
    return h.zs[i], h.scores[i]


def recommend(searcher, state) -> jax.Array:
    """Row of ``state.history`` the search hands over: the searcher's own ``recommend``
    when it has one (a model that pools every observation, see
    :meth:`metanas_jax.search.MetaSearcher.recommend`), else the best observed score."""
    if hasattr(searcher, "recommend"):
        return searcher.recommend(state)
    return jnp.argmax(state.history.scores)


def finalists(scores, choices, k: int, exclude=()) -> list[int]:
    """Indices of the ``k`` best-scored distinct architectures (``choices``: one list per
    evaluation; a re-evaluated architecture counts once), best first, skipping the
    indices in ``exclude`` (diverged evaluations). A short proxy's argmax is often a fast
    learner rather than the best network; training a few finalists longer and choosing by
    validation accuracy hands over a better one (benchmarks/LOG.md, "Finalists")."""
    if k < 1:
        raise ValueError(f"finalists: k must be >= 1, got {k}")
    bad, seen, out = set(int(i) for i in exclude), set(), []
    for i in np.argsort(-np.asarray(scores, np.float64), kind="stable"):
        key = tuple(choices[i])
        if int(i) in bad or key in seen:
            continue
        seen.add(key)
        out.append(int(i))
        if len(out) == k:
            break
    return out


def best_so_far(h: History) -> jax.Array:
    """``(capacity,)``: the best score among the first ``i + 1`` evaluations."""
    return jax.lax.cummax(h.scores, axis=h.scores.ndim - 1)


# -- architecture identity ------------------------------------------------------------------
def space_size(space: SearchSpace) -> int | None:
    """Number of architectures of a categorical space (``None`` if not categorical)."""
    card = getattr(space, "cardinalities", None)
    if card is None:
        return None
    return int(np.prod(np.asarray(card, dtype=object)))


def arch_index(space: SearchSpace, zs: jax.Array) -> jax.Array:
    """Row-major index (``np.ravel_multi_index`` order) of each encoding's architecture.

    Only for categorical spaces with fewer than 2**31 architectures; jit-able.
    """
    n = space_size(space)
    if n is None or n > MAX_ENUMERABLE:
        raise ValueError(f"{space.name}: arch_index needs a categorical space with at most "
                         f"{MAX_ENUMERABLE} architectures, this one has {n}")
    strides = np.cumprod(np.asarray(space.cardinalities[::-1], np.int64))[::-1]
    strides = np.concatenate([strides[1:], [1]]).astype(np.int32)
    return jnp.sum(space._indices(zs) * jnp.asarray(strides), axis=-1)


def index_to_z(space: SearchSpace, index: jax.Array) -> jax.Array:
    """Inverse of :func:`arch_index` (jit-able)."""
    card = np.asarray(space.cardinalities, np.int32)
    digits = []
    rest = jnp.asarray(index, jnp.int32)
    for c in card[::-1]:
        digits.append(rest % int(c))
        rest = rest // int(c)
    return space._encode_indices(jnp.stack(digits[::-1], axis=-1))


def _same(a: jax.Array, b: jax.Array) -> jax.Array:
    """Whether two projected encodings are the same architecture (broadcasting)."""
    return jnp.max(jnp.abs(a - b), axis=-1) < 1e-5


def seen(h: History, zs: jax.Array) -> jax.Array:
    """``(n,)``: whether each (projected) encoding is already in the history."""
    hit = _same(zs[:, None, :], h.zs[None, :, :]) & h.valid[None, :]
    return jnp.any(hit, axis=1)


def propose_unique(space: SearchSpace, key: jax.Array, candidates: jax.Array,
                   priority: jax.Array, h: History, n: int) -> jax.Array:
    """``n`` valid encodings, none in ``h`` and no two alike, preferring high ``priority``.

    Candidates are projected, taken greedily in priority order while novel (a priority of
    ``-inf`` means "not offered"); slots left
    over are filled with uniform samples (then, for small categorical spaces, an index scan
    from a random start, so a novel architecture is always found while one exists).
    Duplicates can only come out once the space is exhausted.
    """
    cands = jax.vmap(space.project)(candidates)
    order = jnp.argsort(-priority)
    cands, offered = cands[order], priority[order] > -jnp.inf
    slots = jnp.arange(n)

    def take(carry, item):
        chosen, k = carry
        c, off = item
        dup = jnp.any(_same(c, h.zs) & h.valid) | jnp.any(_same(c, chosen) & (slots < k))
        ok = ~dup & (k < n) & off
        chosen = jnp.where(ok, chosen.at[jnp.minimum(k, n - 1)].set(c), chosen)
        return (chosen, k + ok.astype(jnp.int32)), None

    chosen0 = jnp.zeros((n, space.dim), jnp.float32)
    (chosen, k), _ = jax.lax.scan(take, (chosen0, jnp.zeros((), jnp.int32)),
                                   (cands, offered))

    size = space_size(space)
    scan_ok = size is not None and size <= MAX_ENUMERABLE
    max_tries = RANDOM_TRIES + (size if scan_ok else 0)

    def fill(i, carry):
        chosen, key = carry
        key, k_rand, k_start = jax.random.split(key, 3)
        start = (jax.random.randint(k_start, (), 0, size if scan_ok else 1)
                 if scan_ok else 0)

        def draw(t):
            rnd = space.sample(jax.random.fold_in(k_rand, t), 1)[0]
            if not scan_ok:
                return rnd
            scanned = index_to_z(space, (start + t - RANDOM_TRIES) % size)
            return jnp.where(t < RANDOM_TRIES, rnd, scanned)

        def novel(c):
            return ~(jnp.any(_same(c, h.zs) & h.valid) | jnp.any(_same(c, chosen) & (slots < i)))

        def cond(s):
            t, _, ok = s
            return ~ok & (t < max_tries)

        def body(s):
            t, _, _ = s
            c = draw(t)
            return t + 1, c, novel(c)

        _, c, _ = jax.lax.while_loop(cond, body, (jnp.zeros((), jnp.int32), chosen[i], i < k))
        return chosen.at[i].set(c), key

    chosen, _ = jax.lax.fori_loop(0, n, fill, (chosen, key))
    return chosen


# -- the protocol and the drivers ----------------------------------------------------------
class Searcher(Protocol):
    """What :func:`run_search` and :func:`scan_search` drive (see the module docstring)."""

    space: SearchSpace
    batch_size: int
    capacity: int

    def init(self, key: jax.Array) -> Any: ...

    def ask(self, state: Any) -> tuple[Any, jax.Array]: ...

    def tell(self, state: Any, zs: jax.Array, scores: jax.Array) -> Any: ...


@chex.dataclass(frozen=True)
class BasicState:
    """State of searchers that need nothing but the key, the round and the history."""

    key: jax.Array
    round: jax.Array
    history: History


def basic_init(searcher, key) -> BasicState:
    return BasicState(key=key, round=jnp.zeros((), jnp.int32),
                      history=history_init(searcher.capacity, searcher.space.dim))


def basic_tell(state, zs, scores):
    return state.replace(history=history_add(state.history, zs, scores, state.round),
                         round=state.round + 1)


def check_searcher(searcher, budget: int) -> None:
    for attr in ("space", "batch_size", "capacity", "init", "ask", "tell"):
        if not hasattr(searcher, attr):
            raise ValueError(f"{type(searcher).__name__} is not a Searcher: it lacks {attr!r}")
    if budget < 1:
        raise ValueError(f"budget must be >= 1 evaluation, got {budget}")
    if budget > searcher.capacity:
        raise ValueError(f"budget {budget} exceeds the searcher's history capacity "
                         f"{searcher.capacity}; build the searcher with capacity >= budget")
    size = space_size(searcher.space)
    if size is not None and budget > size:
        raise ValueError(f"budget {budget} exceeds the {size} architectures of space "
                         f"{searcher.space.name!r}")


@jax.jit
def _ask(searcher, state):
    return searcher.ask(state)


@jax.jit
def _tell(searcher, state, zs, scores):
    return searcher.tell(state, zs, scores)


def run_search(searcher, evaluate_fn: Callable[[np.ndarray], Any], budget: int,
               key: jax.Array, *, time_limit: float | None = None,
               callback: Callable[[int, Any], None] | None = None,
               state: Any = None, done: int = 0,
               on_ask: Callable[[Any, np.ndarray], None] | None = None):
    """Ask, evaluate on the host, tell, until ``budget`` evaluations or ``time_limit`` s.

    ``evaluate_fn(zs)`` gets a ``(k, dim)`` array of valid encodings and returns ``k``
    scores (higher is better). The last round is cut to fit the budget. Returns the final
    state; its ``history`` holds every evaluation in order.

    Hooks for a resumable driver (the main job's search stage): ``state`` and ``done``
    continue a search from a restored state that has seen ``done`` evaluations (instead
    of ``searcher.init(key)``); ``on_ask(state, zs)`` sees each round's candidates before
    they are evaluated (a searcher's predictions of them); ``callback(done, state)`` runs
    after each round's tell (a checkpoint).
    """
    check_searcher(searcher, budget)
    if time_limit is not None and time_limit <= 0:
        raise ValueError(f"time_limit must be positive seconds, got {time_limit}")
    t0 = time.perf_counter()
    state = searcher.init(key) if state is None else state
    while done < budget:
        if time_limit is not None and time.perf_counter() - t0 > time_limit:
            break
        state, zs = _ask(searcher, state)
        zs = np.asarray(zs)[: budget - done]
        if on_ask is not None:
            on_ask(state, zs)
        scores = np.asarray(evaluate_fn(zs), np.float32).reshape(-1)
        if scores.shape != (zs.shape[0],):
            raise ValueError(f"evaluate_fn returned {scores.shape[0]} scores for "
                             f"{zs.shape[0]} architectures")
        state = _tell(searcher, state, jnp.asarray(zs), jnp.asarray(scores))
        done += zs.shape[0]
        if callback is not None:
            callback(done, state)
    return state


def scan_search(searcher, evaluate: Callable[[jax.Array], jax.Array], rounds: int,
                key: jax.Array):
    """``rounds`` ask/evaluate/tell rounds as one ``lax.scan`` (``evaluate`` jit-able).

    Wrap in ``jax.jit`` / ``jax.vmap`` over keys to run many seeds as one program.
    Returns the final state.
    """
    state = searcher.init(key)

    def body(state, _):
        state, zs = searcher.ask(state)
        return searcher.tell(state, zs, evaluate(zs)), None

    state, _ = jax.lax.scan(body, state, None, length=rounds)
    return state
