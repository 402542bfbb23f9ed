"""The observation as the simulator builds it, for one user: the candidate features from embeddings and the CF
fold-in (the columns and the context's rules are ``envs.features``'s)."""

from __future__ import annotations

import numba
import numpy as np

from envs.features import write_candidate


def fold_in(gram_reg: np.ndarray, cf_a: np.ndarray, cf_b: np.ndarray) -> np.ndarray:
    """ALS user factor from the accumulators: ``(QᵀQ + λI + Σ(c−1)qqᵀ)⁻¹ Σ c q``: float32 (F',)."""
    if not cf_b.any():
        return np.zeros(len(cf_b), np.float32)
    return np.linalg.solve(gram_reg + cf_a, cf_b).astype(np.float32)


@numba.njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})  # reassociation lets the dot use SIMD
def candidate_features(cand: np.ndarray, emb: np.ndarray, state: np.ndarray, inv_norm: np.float32,
                       factors: np.ndarray, p: np.ndarray, cf_mu: float, cf_inv_sd: float,
                       static: np.ndarray, category: np.ndarray, exposure: np.ndarray, cat_clicks: np.ndarray,
                       seen_items: np.ndarray, seen_counts: np.ndarray, out: np.ndarray) -> None:
    """Write the (N, F) features of ``cand`` into ``out`` in one pass (columns of ``envs.spaces.FEATURE_NAMES``).

    The numpy reading: ``llm = emb[cand] @ state · inv_norm`` (0 when ``inv_norm`` is 0),
    ``cf = (factors[cand] @ p − cf_mu) · cf_inv_sd`` (0 when ``cf_inv_sd`` is 0), ``static[cand]`` (popularity,
    price), ``exposure[category[cand]]``, ``cat_clicks[category[cand]]``, and the count of ``cand`` in the sorted
    ``seen_items`` (0 if absent). ``tests/test_serving.py`` checks it against the simulator's observations.
    """
    n_seen = seen_items.shape[0]
    for n in range(cand.shape[0]):
        i = cand[n]
        llm = np.float32(0.0)
        if inv_norm != 0:
            acc = np.float32(0.0)
            for d in range(emb.shape[1]):
                acc += emb[i, d] * state[d]
            llm = acc * inv_norm
        cf = 0.0
        if cf_inv_sd != 0:
            acc64 = 0.0
            for f in range(factors.shape[1]):
                acc64 += factors[i, f] * p[f]
            cf = (acc64 - cf_mu) * cf_inv_sd
        c = category[i]
        lo, hi = 0, n_seen
        while lo < hi:  # binary search in the sorted seen items
            mid = (lo + hi) // 2
            if seen_items[mid] < i:
                lo = mid + 1
            else:
                hi = mid
        seen = seen_counts[lo] if lo < n_seen and seen_items[lo] == i else np.float32(0.0)
        write_candidate(out[n], llm, cf, static[i, 0], static[i, 1], exposure[c], cat_clicks[c], seen)


def session_similarity(cand: np.ndarray, emb: np.ndarray, sess_sum: np.ndarray) -> np.ndarray:
    """``session_sim`` (``env.obs_session_sim``): each candidate's cosine with this session's click sum.

    Args:
        cand: int (N,) catalog rows.
        emb: float32 (M, D) the catalog's unit embeddings.
        sess_sum: float32 (D,) the sum of the embeddings of the items clicked this session.

    Returns:
        float32 (N,): ``emb[cand] · s / ‖s‖``, 0 before the session's first click (as ``BatchedCore``).
    """
    norm = float(np.sqrt(np.dot(sess_sum.astype(np.float64), sess_sum)))
    if norm <= 0.0:
        return np.zeros(len(cand), np.float32)
    return (np.take(emb, cand, axis=0) @ sess_sum / np.float32(norm)).astype(np.float32)


@numba.njit(cache=True, nogil=True)
def consume(state: np.ndarray, emb: np.ndarray, keep: float, weight: float, fold_in: bool, cf_a: np.ndarray,
            cf_b: np.ndarray, q: np.ndarray, cf_items: np.ndarray, item: int, c: float) -> bool:
    """A click or purchase of ``item``, in place, in one compiled call (a feedback event's whole O(D + F'²) cost).

    ``state ← keep·state + weight·emb`` (float32, as the simulator's pooled-state update); then, when
    ``fold_in``, the fold-in's normal equations: ``cf_a += wa·q qᵀ``, ``cf_b += c·q`` with ``wa = c − 1`` for an
    item not yet in ``cf_items`` (implicit ALS: its zero-preference term is replaced) and ``wa = c`` after.

    Returns:
        Whether ``item`` was new to ``cf_items`` (the caller appends it).
    """
    k32, w32 = np.float32(keep), np.float32(weight)
    for d in range(state.shape[0]):
        state[d] = k32 * state[d] + w32 * emb[d]
    if not fold_in:
        return False
    first = True
    for x in cf_items:
        if x == item:
            first = False
            break
    wa = c - 1.0 if first else c
    for i in range(q.shape[0]):
        cf_b[i] += c * q[i]
        for j in range(q.shape[0]):
            cf_a[i, j] += wa * q[i] * q[j]
    return first
