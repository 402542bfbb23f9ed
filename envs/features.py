"""The observable user state, stated once: its accumulators, their updates, and the observation built from them.

The simulator's kernels (``envs/kernels.py``) and the serving runtime (``agents/serving``) both call these compiled
row functions, so a feature or context column means the same thing in training and in production; the column
names live in ``envs/spaces.py``. ``tests/reference_core.py`` stays an independent numpy reading of the same rules.

The updates come in the order a service sees them: :func:`on_slate` when a slate is shown (exposure, the decays,
"no click yet"), then :func:`on_click`, :func:`on_purchase`, :func:`on_dwell` as feedback arrives. Applied in
that order they give the simulator's one-pass step bit for bit (the EMAs are ``decay·x`` at the slate, plus
``(1 − decay)·value`` at the event).
"""

from __future__ import annotations

import math

import numba
import numpy as np

from envs.spaces import (
    C_CLICK_EMA,
    C_CLICK_RATE,
    C_CLICKED_CF,
    C_CLICKED_LLM,
    C_DWELL_EMA,
    C_LAST_CLICK,
    C_LAST_CLICK_RANK,
    C_PURCHASE_RATE,
    C_SKIP_STREAK,
    C_T_FRAC,
    CONTEXT_NAMES,
    F_CAT_CLICKS,
    F_CAT_EXPOSURE,
    F_CF,
    F_ITEM_SEEN,
    F_LLM,
    F_POP,
    F_PRICE,
)

#: Per-session accumulators behind the context row, columns of ``acc`` (…, A) float32.
ACC_NAMES: tuple[str, ...] = (
    "n_clicks",  # slates with a click this session
    "n_purchases",  # purchases this session
    "click_ema",  # EMA of "the slate got a click"
    "last_click",  # 1 if the last slate got a click
    "last_rank",  # rank of the last slate's click / K (1 when none)
    "llm_ema",  # EMA over clicks of the clicked item's llm_sim minus the slate's mean
    "cf_ema",  # EMA over clicks of the clicked item's cf_score minus the slate's mean
    "dwell_ema",  # EMA of dwell minutes per slate
    "skip_streak",  # slates in a row without a click
)
(
    A_N_CLICKS,
    A_N_PURCHASES,
    A_CLICK_EMA,
    A_LAST_CLICK,
    A_LAST_RANK,
    A_LLM_EMA,
    A_CF_EMA,
    A_DWELL_EMA,
    A_SKIP_STREAK,
) = range(len(ACC_NAMES))

#: The context's skip streak is ``min(skip_streak / SKIP_STREAK_SCALE, 1)``.
SKIP_STREAK_SCALE = 5.0


def context_bounds(max_steps: int, n_items: int, dwell_cap_s: float) -> tuple[np.ndarray, np.ndarray]:
    """The range each context column (``envs.spaces.CONTEXT_NAMES``) takes in the simulator: float64 (C,) each.

    From the rules below and the step: ``t_frac = t / max_steps`` with ``t < max_steps`` when a request is
    answered; ``click_ema``, ``click_rate``, ``last_click``, ``purchase_rate`` (at most one click and one purchase
    per request) and ``skip_streak`` (capped) in [0, 1]; ``last_click_rank`` (rank / K, or 1) in [0, 1];
    ``clicked_llm_ema``, an EMA of a cosine minus the slate's mean, in [-2, 2]; ``clicked_cf_ema``, the same of a
    score standardised over the M catalog items (``|z| <= sqrt(M - 1)``), in ``±2·sqrt(M - 1)``; ``dwell_ema``, an
    EMA of dwell minutes, each at most the simulator's ``dwell_cap`` / 60.

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


def new_accumulators(rows: int) -> np.ndarray:
    """Fresh accumulators: float32 (rows, A), zeros but ``last_rank`` = 1 (no click yet)."""
    acc = np.zeros((rows, len(ACC_NAMES)), np.float32)
    acc[:, A_LAST_RANK] = 1.0
    return acc


@numba.njit(cache=True, nogil=True, inline="always")
def reset_session(acc: np.ndarray, exposure: np.ndarray, cat_clicks: np.ndarray) -> None:
    """A new session: accumulators (A,), category exposure and clicks (G,) back to their start values."""
    for a in range(acc.shape[0]):
        acc[a] = 0.0
    acc[A_LAST_RANK] = 1.0
    for c in range(exposure.shape[0]):
        exposure[c] = 0.0
        cat_clicks[c] = 0.0


@numba.njit(cache=True, nogil=True, inline="always")
def on_slate(acc: np.ndarray, exposure: np.ndarray, cat_clicks: np.ndarray, cats: np.ndarray, decay: float) -> None:
    """A slate was shown (before any feedback): the request-level update, in place.

    Args:
        acc: float32 (A,) the session's accumulators.
        exposure: float32 (G,) decayed impressions per category, / K per impression.
        cat_clicks: float32 (G,) decayed clicks per category.
        cats: int (K,) the categories of the slate's items.
        decay: ``env.obs_decay`` (the arithmetic is float32: ``float32(decay)``).
    """
    od = np.float32(decay)
    for c in range(exposure.shape[0]):
        exposure[c] *= od
        cat_clicks[c] *= od
    k = cats.shape[0]
    share = np.float32(1.0 / k)
    for j in range(k):
        exposure[cats[j]] += share
    acc[A_CLICK_EMA] *= od
    acc[A_DWELL_EMA] *= od
    acc[A_LAST_CLICK] = 0.0
    acc[A_LAST_RANK] = 1.0
    acc[A_SKIP_STREAK] += 1.0


@numba.njit(cache=True, nogil=True, inline="always")
def on_click(acc: np.ndarray, cat_clicks: np.ndarray, cat: int, rank: int, k: int, d_llm: np.float32,
             d_cf: np.float32, decay: float) -> None:
    """A click, in place (after :func:`on_slate`): the slate's first click at ``rank`` of ``k``, or with ``rank``
    < 0 a click on an item shown earlier this session (then only the category's click count moves).

    Args:
        acc: float32 (A,) the session's accumulators.
        cat_clicks: float32 (G,) decayed clicks per category.
        cat: The clicked item's category.
        rank: Its position in the current slate, or -1.
        k: Slate size K.
        d_llm: float32 the clicked item's llm_sim minus the slate's mean llm_sim.
        d_cf: float32 the same for cf_score.
        decay: ``env.obs_decay`` (float32 arithmetic with ``float32(decay)`` and ``float32(1 - decay)``).
    """
    od = np.float32(decay)
    oa = np.float32(1.0 - decay)
    cat_clicks[cat] += 1.0
    if rank < 0:
        return
    acc[A_N_CLICKS] += 1.0
    acc[A_CLICK_EMA] += oa
    acc[A_LAST_CLICK] = 1.0
    acc[A_LAST_RANK] = rank / k
    acc[A_SKIP_STREAK] = 0.0
    acc[A_LLM_EMA] = od * acc[A_LLM_EMA] + oa * d_llm
    acc[A_CF_EMA] = od * acc[A_CF_EMA] + oa * d_cf


@numba.njit(cache=True, nogil=True, inline="always")
def on_purchase(acc: np.ndarray) -> None:
    """A purchase (in place)."""
    acc[A_N_PURCHASES] += 1.0


@numba.njit(cache=True, nogil=True, inline="always")
def on_dwell(acc: np.ndarray, minutes: np.float32, decay: float) -> None:
    """``minutes`` (float32) of dwell on the slate's items (in place; after :func:`on_slate`)."""
    acc[A_DWELL_EMA] += np.float32(1.0 - decay) * np.float32(minutes)


@numba.njit(cache=True, nogil=True, inline="always")
def write_context(acc: np.ndarray, t: int, max_steps: int, t_cap: int, out: np.ndarray) -> None:
    """The context row (columns of ``envs.spaces.CONTEXT_NAMES``) of a session at request ``t``.

    Args:
        acc: float32 (A,) the session's accumulators.
        t: Requests answered so far this session.
        max_steps: T (the first column is ``min(t, t_cap) / T``).
        t_cap: The largest ``t`` the first column shows (the simulator: T; a service, whose sessions may run
            longer than training's, T − 1).
        out: float32 (C,) written.
    """
    steps = np.float32(max(t, 1))
    out[C_T_FRAC] = min(t, t_cap) / max_steps
    out[C_CLICK_EMA] = acc[A_CLICK_EMA]
    out[C_CLICK_RATE] = acc[A_N_CLICKS] / steps
    out[C_LAST_CLICK] = acc[A_LAST_CLICK]
    out[C_LAST_CLICK_RANK] = acc[A_LAST_RANK]
    out[C_CLICKED_LLM] = acc[A_LLM_EMA]
    out[C_CLICKED_CF] = acc[A_CF_EMA]
    out[C_PURCHASE_RATE] = acc[A_N_PURCHASES] / steps
    out[C_DWELL_EMA] = acc[A_DWELL_EMA]
    out[C_SKIP_STREAK] = min(acc[A_SKIP_STREAK] / np.float32(SKIP_STREAK_SCALE), np.float32(1.0))


@numba.njit(cache=True, nogil=True, inline="always")
def write_candidate(out: np.ndarray, llm: np.float32, cf: np.float32, popularity: np.float32, price: np.float32,
                    exposure: np.float32, cat_clicks: np.float32, seen: np.float32) -> None:
    """One candidate's feature row (columns of ``envs.spaces.FEATURE_NAMES``) into ``out`` float32 (F,).

    Args:
        out: float32 (F,) written.
        llm: Cosine of the normalised user state and the item embedding (0 without a state).
        cf: The CF score, standardised over the catalog for this user.
        popularity: Normalised log popularity, in [0, 1].
        price: Normalised log price, in [0, 1].
        exposure: The item's category's decayed exposure this session.
        cat_clicks: The item's category's decayed clicks this session.
        seen: Times this item was shown this session.
    """
    out[F_LLM] = llm
    out[F_CF] = cf
    out[F_POP] = popularity
    out[F_PRICE] = price
    out[F_CAT_EXPOSURE] = exposure
    out[F_CAT_CLICKS] = cat_clicks
    out[F_ITEM_SEEN] = seen


def text_llm_sim(item_emb: np.ndarray, candidates: np.ndarray, prompt_state: np.ndarray) -> np.ndarray:
    """Text mode's ``llm_sim`` column: each candidate's embedding against the encoded prompt (numpy, not compiled).

    In ``obs_mode="text"`` the user state is the encoding of a prompt built from the recent history, so the
    column is computed after the compiled gather, from embeddings rather than the cached per-slot similarities.

    Args:
        item_emb: float32 (M, D) unit item embeddings.
        candidates: int (r, N) catalog indices of the rows' candidates.
        prompt_state: float32 (r, D) the rows' encoded prompts (unit vectors, or zeros).

    Returns:
        float32 (r, N) cosine similarities.
    """
    return np.einsum("bnd,bd->bn", item_emb[candidates], prompt_state)
