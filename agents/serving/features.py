"""The observation as the simulator builds it, for one user: compiled feature and event kernels, the CF fold-in,
and the range of each context column."""

from __future__ import annotations

import math

import numba
import numpy as np

from envs.spaces import (
    CONTEXT_NAMES,
    F_CAT_CLICKS,
    F_CAT_EXPOSURE,
    F_CF,
    F_ITEM_SEEN,
    F_LLM,
    F_POP,
    F_PRICE,
)


def fold_in(gram_reg: np.ndarray, cf_a: np.ndarray, cf_b: np.ndarray) -> np.ndarray:
    """ALS user factor from the accumulators: ``(QᵀQ + λI + Σ(c−1)qqᵀ)⁻¹ Σ c q``: float32 (F',)."""
    if not cf_b.any():
        return np.zeros(len(cf_b), np.float32)
    return np.linalg.solve(gram_reg + cf_a, cf_b).astype(np.float32)


def context_bounds(max_steps: int, n_items: int, dwell_cap_s: float) -> tuple[np.ndarray, np.ndarray]:
    """The range each context column (``envs.spaces.CONTEXT_NAMES``) takes in the simulator: float64 (C,) each.

    From the simulator's rules (``envs/kernels.py``, the observation and the step): ``t_frac = t / max_steps``
    with ``t < max_steps``; ``click_ema``, ``click_rate``, ``last_click``, ``purchase_rate`` (at most one click
    and one purchase per request) and ``skip_streak`` (capped) in [0, 1]; ``last_click_rank`` (rank / K, or 1) in
    [0, 1]; ``clicked_llm_ema``, an EMA of a cosine minus the slate's mean, in [-2, 2]; ``clicked_cf_ema``, the
    same of a score standardised over the M catalog items (``|z| <= sqrt(M - 1)``), in ``±2·sqrt(M - 1)``;
    ``dwell_ema``, an EMA of dwell minutes, each at most the simulator's ``dwell_cap`` / 60.

    Args:
        max_steps: The session length of the training env.
        n_items: M.
        dwell_cap_s: The simulator's dwell cap in seconds.

    Returns:
        ``(low, high)``.
    """
    cf = 2.0 * math.sqrt(max(n_items - 1, 0))
    bounds = {"t_frac": (0.0, (max_steps - 1) / max_steps), "click_ema": (0.0, 1.0), "click_rate": (0.0, 1.0),
              "last_click": (0.0, 1.0), "last_click_rank": (0.0, 1.0), "clicked_llm_ema": (-2.0, 2.0),
              "clicked_cf_ema": (-cf, cf), "purchase_rate": (0.0, 1.0), "dwell_ema": (0.0, dwell_cap_s / 60.0),
              "skip_streak": (0.0, 1.0)}
    lo, hi = zip(*(bounds[n] for n in CONTEXT_NAMES), strict=True)
    return np.array(lo, np.float64), np.array(hi, np.float64)


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
        out[n, F_LLM] = llm
        cf = 0.0
        if cf_inv_sd != 0:
            acc64 = 0.0
            for f in range(factors.shape[1]):
                acc64 += factors[i, f] * p[f]
            cf = (acc64 - cf_mu) * cf_inv_sd
        out[n, F_CF] = cf
        out[n, F_POP] = static[i, 0]
        out[n, F_PRICE] = static[i, 1]
        c = category[i]
        out[n, F_CAT_EXPOSURE] = exposure[c]
        out[n, F_CAT_CLICKS] = cat_clicks[c]
        lo, hi = 0, n_seen
        while lo < hi:  # binary search in the sorted seen items
            mid = (lo + hi) // 2
            if seen_items[mid] < i:
                lo = mid + 1
            else:
                hi = mid
        out[n, F_ITEM_SEEN] = seen_counts[lo] if lo < n_seen and seen_items[lo] == i else np.float32(0.0)


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
