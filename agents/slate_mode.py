"""The policy's deterministic slate in numpy: the mode of :class:`agents.distributions.PlackettLuceDistribution`.

One implementation for serving (one request at a time) and export (batches): top-K by logit, or, with category
repulsion, the greedy walk that picks ``argmax_j logits_j − β·(earlier picks of j's group)`` over the candidates
not yet placed, K times, in float32 with the first index on ties (the distribution's ``mode()``, tested equal).
With a soft category cap (``cap``), a group that already fills ``cap`` slots takes
:attr:`~agents.distributions.PlackettLuceDistribution.CAP_PENALTY` more.
"""

from __future__ import annotations

import numba
import numpy as np

from envs.topk import top_k

#: :attr:`agents.distributions.PlackettLuceDistribution.CAP_PENALTY` (not imported: this module needs no torch).
CAP_PENALTY = 30.0
NO_CAP = 1 << 30


@numba.njit(cache=True, nogil=True)
def _greedy_walk(logits: np.ndarray, k: int, groups: np.ndarray, beta: np.float32, out: np.ndarray,
                 cap: int = NO_CAP) -> None:
    """The greedy walk over one row: ``logits`` float32 (N,), ``groups`` int64 (N,) → ``out`` int64 (K,); groups with
    ``cap`` or more picks take ``CAP_PENALTY`` more (the distribution's ``beta·c + 30·[c >= cap]``, in float32)."""
    n = logits.shape[0]
    n_groups = 0
    for j in range(n):
        n_groups = max(n_groups, groups[j] + 1)
    counts = np.zeros(n_groups, np.float32)
    placed = np.zeros(n, np.bool_)
    for step in range(k):
        best, best_v = -1, np.float32(0.0)
        for j in range(n):
            if placed[j]:
                continue
            c = counts[groups[j]]
            v = logits[j] - (beta * c + np.float32(CAP_PENALTY)) if c >= cap else logits[j] - beta * c
            if best < 0 or v > best_v:
                best, best_v = j, v
        out[step] = best
        placed[best] = True
        counts[groups[best]] += np.float32(1.0)


@numba.njit(cache=True, nogil=True)
def _greedy_walks(logits: np.ndarray, k: int, groups: np.ndarray, beta: np.ndarray, out: np.ndarray,
                  cap: int = NO_CAP) -> None:
    """:func:`_greedy_walk` over the rows of ``logits`` (B, N), ``groups`` (B, N), ``beta`` (B,) → ``out`` (B, K)."""
    for b in range(logits.shape[0]):
        _greedy_walk(logits[b], k, groups[b], beta[b], out[b], cap)


def _top_k(logits: np.ndarray, k: int) -> np.ndarray:
    """Top-K positions along the last axis, best first: int64 (..., K) (``envs.topk.top_k``'s partition rule)."""
    flat = logits.reshape(-1, logits.shape[-1])
    out = top_k(flat, k, ties="partition" if k < logits.shape[-1] else "lowest")
    return out.reshape(*logits.shape[:-1], out.shape[-1])


def greedy_slates(logits: np.ndarray, k: int, groups: np.ndarray | None = None,
                  beta: np.ndarray | None = None, cap: int | None = None) -> np.ndarray:
    """The policy's deterministic slates: top-K by logit, or the greedy walk when any row has a repulsion β > 0 or
    a category cap is set.

    Args:
        logits: float32 (B, N).
        k: K.
        groups: int (B, N) candidate groups (categories), or None.
        beta: float32 (B,) repulsion β >= 0, or None.
        cap: Soft cap on picks per group (``None``: none).

    Returns:
        int64 (B, K) positions, best first.
    """
    walk = groups is not None and (cap is not None or (beta is not None and np.any(beta > 0)))
    if not walk:
        return _top_k(logits, k)
    assert groups is not None
    b = logits.shape[0]
    out = np.empty((b, k), np.int64)
    beta32 = np.zeros(b, np.float32) if beta is None else np.ascontiguousarray(beta, np.float32).reshape(b)
    _greedy_walks(np.ascontiguousarray(logits, np.float32), k, np.ascontiguousarray(groups, np.int64), beta32, out,
                  NO_CAP if cap is None else int(cap))
    return out


def greedy_slate(logits: np.ndarray, k: int, groups: np.ndarray | None = None, beta: float = 0.0,
                 cap: int | None = None) -> np.ndarray:
    """:func:`greedy_slates` for one request (the serving hot path, without a batch axis).

    Args:
        logits: float32 (N,).
        k: K.
        groups: int (N,) candidate groups, or None.
        beta: Repulsion β >= 0.
        cap: Soft cap on picks per group (``None``: none).

    Returns:
        int64 (K,) positions, best first.
    """
    if groups is None or not (beta > 0 or cap is not None):
        return _top_k(logits, k)
    out = np.empty(k, np.int64)
    _greedy_walk(np.ascontiguousarray(logits, np.float32), k, np.ascontiguousarray(groups, np.int64),
                 np.float32(beta), out, NO_CAP if cap is None else int(cap))
    return out


def is_greedy_path(path: np.ndarray, logits: np.ndarray, groups: np.ndarray | None, beta: float,
                   tol: float, cap: int | None = None) -> bool:
    """``path`` (K,) is a greedy walk over ``logits`` (N,) up to ties within ``tol`` (see :func:`greedy_slates`)."""
    placed = np.zeros(len(logits), bool)
    counts: dict[int, int] = {}
    for a in np.asarray(path, np.int64):
        if groups is None:
            pen = np.zeros(len(logits))
        else:
            c = np.array([counts.get(int(g), 0) for g in groups])
            pen = beta * c + (CAP_PENALTY * (c >= cap) if cap is not None else 0.0)
        eff = np.where(placed, -np.inf, logits - pen)
        if placed[a] or eff[a] < eff.max() - tol:
            return False
        placed[a] = True
        if groups is not None:
            counts[int(groups[a])] = counts.get(int(groups[a]), 0) + 1
    return True
