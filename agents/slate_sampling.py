"""Stochastic slates in numpy: the policy's Plackett-Luce walk with category repulsion, at a temperature.

A slate of K out of N candidates is drawn position by position: at step j the candidate i not yet placed is
picked with probability ``softmax_i(v_i / T)``, ``v_i = logit_i − β·c_g(i) − CAP_PENALTY·[c_g(i) ≥ cap]``, where
``c_g`` counts the earlier picks of i's category (group). With β = 0 and no cap this is plain Plackett-Luce over
``logits / T`` (:func:`agents.ope.plackett_luce.pl_prefix_log_prob`, tested equal); at T = 1 it is the PPO policy's
own distribution (:class:`agents.distributions.PlackettLuceDistribution`), and as T → 0 its mode, the greedy walk
of :mod:`agents.slate_mode`. Serving samples with it (A/B arms, ``agents/serving/arms.py``) and off-policy
evaluation computes propensities, per-position conditionals and marginals with it (``agents/ope``). Everything is
float64, vectorised over rows (B), looping over the K positions.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from agents.slate_mode import CAP_PENALTY, NO_CAP


def _prep(logits: np.ndarray, groups: np.ndarray | None, beta: np.ndarray | float | None,
          cap: np.ndarray | int | None, temperature: np.ndarray | float
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim != 2:
        raise ValueError(f"logits must be (B, N), got shape {logits.shape}")
    if not np.isfinite(logits).all():
        raise ValueError("logits contain NaN or infinite values")
    b, n = logits.shape
    g = np.zeros((b, n), np.int64) if groups is None else np.asarray(groups, dtype=np.int64)
    if g.shape != (b, n):
        raise ValueError(f"groups must be (B, N) = {(b, n)}, got {g.shape}")
    if (g < 0).any():
        raise ValueError("groups must be >= 0")
    be = np.broadcast_to(np.asarray(0.0 if beta is None else beta, dtype=np.float64), (b,)).copy()
    cp = np.broadcast_to(np.asarray(NO_CAP if cap is None else cap, dtype=np.int64), (b,)).copy()
    cp[cp <= 0] = NO_CAP  # 0 / negative in a log column: no cap
    t = np.broadcast_to(np.asarray(temperature, dtype=np.float64), (b,)).copy()
    if not (np.isfinite(t).all() and (t > 0).all()):
        raise ValueError(f"temperature must be finite and > 0, got {np.unique(t)[:5].tolist()}")
    return logits, g, be, cp, t, int(g.max(initial=0)) + 1


def _step_logits(logits: np.ndarray, g: np.ndarray, counts: np.ndarray, beta: np.ndarray, cap: np.ndarray,
                 t: np.ndarray, remaining: np.ndarray) -> np.ndarray:
    """The scaled logits of one step, -inf on placed candidates: (B, N)."""
    c = np.take_along_axis(counts, g, axis=1)
    v = logits - beta[:, None] * c - CAP_PENALTY * (c >= cap[:, None])
    return np.where(remaining, v / t[:, None], -np.inf)


def _log_softmax(v: np.ndarray) -> np.ndarray:
    top = v.max(axis=1, keepdims=True)
    return v - (top + np.log(np.exp(v - top).sum(axis=1, keepdims=True)))


def _walk(logits: np.ndarray, slates: np.ndarray | None, k: int, groups: np.ndarray | None,
          beta: np.ndarray | float | None, cap: np.ndarray | int | None, temperature: np.ndarray | float,
          generator: np.random.Generator | None, want_cond: bool
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    lg, g, be, cp, t, n_groups = _prep(logits, groups, beta, cap, temperature)
    b, n = lg.shape
    if not 1 <= k <= n:
        raise ValueError(f"slate size must be in [1, N={n}], got {k}")
    if slates is not None:
        slates = np.asarray(slates, dtype=np.int64)
        if slates.shape != (b, k):
            raise ValueError(f"slates must be (B, K) = {(b, k)}, got {slates.shape}")
        if (slates < 0).any() or (slates >= n).any():
            raise ValueError(f"slate positions must be in [0, N={n})")
        srt = np.sort(slates, axis=1)
        if k > 1 and (srt[:, 1:] == srt[:, :-1]).any():
            raise ValueError("a slate repeats a position")
    out = np.empty((b, k), np.int64) if slates is None else slates
    counts = np.zeros((b, n_groups))
    remaining = np.ones((b, n), bool)
    rows = np.arange(b)
    acc = np.zeros(b)
    prefix = np.empty((b, k))
    cond = np.empty((b, k, n)) if want_cond else None
    for j in range(k):
        ls = _log_softmax(_step_logits(lg, g, counts, be, cp, t, remaining))
        if slates is None:
            assert generator is not None
            pick = np.argmax(ls + generator.gumbel(size=ls.shape), axis=1)
            out[:, j] = pick
        else:
            pick = slates[:, j]
        if cond is not None:
            cond[:, j] = np.exp(ls)
        acc = acc + ls[rows, pick]
        prefix[:, j] = acc
        remaining[rows, pick] = False
        counts[rows, g[rows, pick]] += 1.0
    return out, prefix, cond


def rpl_prefix_log_prob(logits: np.ndarray, slates: np.ndarray, groups: np.ndarray | None = None,
                        beta: np.ndarray | float | None = None, cap: np.ndarray | int | None = None,
                        temperature: np.ndarray | float = 1.0) -> np.ndarray:
    """log-probability of each slate's prefixes ``s_{1:k}``, k = 1..K (module docstring's walk).

    Args:
        logits: (B, N) per-candidate logits.
        slates: int (B, K) distinct candidate positions, ranked.
        groups: int (B, N) category of each candidate (``None``: one group; only matters with β or a cap).
        beta: (B,) or scalar repulsion β ≥ 0 (``None``: 0).
        cap: (B,) or scalar category cap (``None`` or ≤ 0: none).
        temperature: (B,) or scalar T > 0.

    Returns:
        float64 (B, K); the last column is the slate's log-propensity.

    Raises:
        ValueError: Bad shapes, non-finite logits, repeated positions, T ≤ 0.
    """
    s = np.asarray(slates)
    return _walk(logits, s, s.shape[-1] if s.ndim == 2 else 0, groups, beta, cap, temperature, None, False)[1]


def rpl_conditionals(logits: np.ndarray, slates: np.ndarray, groups: np.ndarray | None = None,
                     beta: np.ndarray | float | None = None, cap: np.ndarray | int | None = None,
                     temperature: np.ndarray | float = 1.0) -> np.ndarray:
    """The distribution of the candidate at position k given the logged prefix ``s_{1:k−1}``: float64 (B, K, N)."""
    s = np.asarray(slates)
    cond = _walk(logits, s, s.shape[-1] if s.ndim == 2 else 0, groups, beta, cap, temperature, None, True)[2]
    assert cond is not None
    return cond


def rpl_sample(logits: np.ndarray, k: int, generator: np.random.Generator, groups: np.ndarray | None = None,
               beta: np.ndarray | float | None = None, cap: np.ndarray | int | None = None,
               temperature: np.ndarray | float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Draw one slate per row (Gumbel-max at each step).

    Returns:
        ``(slates int64 (B, K), prefix log-probabilities float64 (B, K))``.
    """
    out, prefix, _ = _walk(logits, None, k, groups, beta, cap, temperature, generator, False)
    return out, prefix


def rpl_marginals(logits: np.ndarray, k: int, generator: np.random.Generator, groups: np.ndarray | None = None,
                  beta: np.ndarray | float | None = None, cap: np.ndarray | int | None = None,
                  temperature: np.ndarray | float = 1.0, n_samples: int = 256, chunk: int = 64) -> np.ndarray:
    """Per-position marginals ``P(s_k = a | x)``, Rao-Blackwellised: the mean over S sampled slates of the exact
    conditional at each position along the sampled prefix (position 1 is exact). float64 (B, K, N)."""
    lg, g, be, cp, t, _ = _prep(logits, groups, beta, cap, temperature)
    b, n = lg.shape
    out = np.zeros((b, k, n))
    for lo in range(0, b, chunk):
        sl = slice(lo, min(lo + chunk, b))
        m = sl.stop - sl.start
        rep = (np.tile(lg[sl], (n_samples, 1)), np.tile(g[sl], (n_samples, 1)), np.tile(be[sl], n_samples),
               np.tile(cp[sl], n_samples), np.tile(t[sl], n_samples))
        slates, _, _ = _walk(rep[0], None, k, rep[1], rep[2], rep[3], rep[4], generator, False)
        _, _, cond = _walk(rep[0], slates, k, rep[1], rep[2], rep[3], rep[4], None, True)
        assert cond is not None
        out[sl] = cond.reshape(n_samples, m, k, n).mean(axis=0)
    return out


def greedy_log_prob(greedy: np.ndarray, slates: np.ndarray) -> np.ndarray:
    """log-propensities of ``slates`` (B, K) under deterministic policies whose slates are ``greedy`` (B, K): 0 where
    the prefix matches, -inf from the first difference on: float64 (B, K)."""
    same = np.cumprod(np.asarray(greedy) == np.asarray(slates), axis=1).astype(bool)
    return np.where(same, 0.0, -np.inf)


# ---- one request, compiled (the serving path) ----------------------------------------------------------------------


@numba.njit(cache=True, nogil=True)
def _walk_row(logits: np.ndarray, groups: np.ndarray, beta: float, cap: int, temperature: float, k: int,
              uniforms: np.ndarray, slate: np.ndarray, prefix: np.ndarray, sample: bool) -> None:
    """One row of the walk: ``logits`` float64 (N,), ``groups`` int64 (N,); samples ``slate`` (K,) by inverse CDF
    from ``uniforms`` (K,) when ``sample``, else reads it; writes the prefix log-probabilities into ``prefix``."""
    n = logits.shape[0]
    n_groups = 0
    for j in range(n):
        n_groups = max(n_groups, groups[j] + 1)
    counts = np.zeros(n_groups)
    placed = np.zeros(n, np.bool_)
    v = np.empty(n)
    acc = 0.0
    for step in range(k):
        top = -np.inf
        for j in range(n):
            if placed[j]:
                v[j] = -np.inf
                continue
            c = counts[groups[j]]
            x = logits[j] - beta * c
            if c >= cap:
                x -= CAP_PENALTY
            x /= temperature
            v[j] = x
            top = max(top, x)
        total = 0.0
        for j in range(n):
            if not placed[j]:
                total += math.exp(v[j] - top)
        if sample:
            target = uniforms[step] * total
            pick, run = -1, 0.0
            for j in range(n):
                if placed[j]:
                    continue
                pick = j
                run += math.exp(v[j] - top)
                if run > target:
                    break
            slate[step] = pick
        pick = slate[step]
        acc += v[pick] - top - math.log(total)
        prefix[step] = acc
        placed[pick] = True
        counts[groups[pick]] += 1.0


def walk_one(logits: np.ndarray, k: int, groups: np.ndarray, beta: float, cap: int | None, temperature: float,
             generator: np.random.Generator | None = None, slate: np.ndarray | None = None,
             uniforms: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One request's walk, compiled: sample a slate (``generator``) or score a given ``slate``.

    Same distribution as :func:`rpl_sample` / :func:`rpl_prefix_log_prob` (tested equal), at a fraction of their
    per-call overhead for B = 1.

    Args:
        logits: (N,) logits.
        k: Slate size.
        groups: int (N,) categories.
        beta: Repulsion ≥ 0.
        cap: Category cap (``None``: none).
        temperature: T > 0.
        generator: Randomness (sampling).
        slate: int (K,) positions to score instead of sampling.
        uniforms: (K,) uniform draws in [0, 1) to sample with instead of ``generator``'s.

    Returns:
        ``(slate int64 (K,), prefix log-probabilities float64 (K,))``.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    lg = np.ascontiguousarray(logits, dtype=np.float64)
    g = np.ascontiguousarray(groups, dtype=np.int64)
    out = np.empty(k, np.int64) if slate is None else np.ascontiguousarray(slate, dtype=np.int64)
    if slate is None and uniforms is None:
        if generator is None:
            raise ValueError("sampling needs a generator or uniforms")
        uniforms = generator.random(k)
    u = np.zeros(k) if uniforms is None else np.ascontiguousarray(uniforms, dtype=np.float64)
    prefix = np.empty(k)
    _walk_row(lg, g, float(beta), NO_CAP if cap is None or cap <= 0 else int(cap), float(temperature), k, u, out,
              prefix, slate is None)
    return out, prefix
