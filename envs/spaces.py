"""Observation and action layout shared by the env, the rankers, the policy and the serving runtime.

Every consumer indexes features by these names, never by bare numbers.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

#: Per-candidate features, columns of ``obs["features"]`` (…, N, F).
FEATURE_NAMES: tuple[str, ...] = (
    "llm_sim",  # cosine of the LLM-encoded user state and the item embedding, in [-1, 1]
    "cf_score",  # matrix-factorisation score, standardised over the catalog for this user
    "popularity",  # log1p(logged clicks) / log1p(max logged clicks), in [0, 1]
    "price",  # log1p(price) / log1p(max price), in [0, 1]
    "cat_exposure",  # decayed impressions of the item's category this session, / slate size
    "cat_clicks",  # decayed clicks on the item's category this session
    "item_seen",  # times this very item was already shown this session
)
F_LLM, F_CF, F_POP, F_PRICE, F_CAT_EXPOSURE, F_CAT_CLICKS, F_ITEM_SEEN = range(len(FEATURE_NAMES))

#: Session context, ``obs["context"]`` (…, C).
CONTEXT_NAMES: tuple[str, ...] = (
    "t_frac",  # step / max_steps
    "click_ema",  # EMA of "the last slate got a click"
    "click_rate",  # clicks / steps so far
    "last_click",  # 1 if the last slate got a click
    "last_click_rank",  # rank of the last click / K (1 when none)
    "clicked_llm_ema",  # EMA of the clicked item's llm_sim minus the slate's mean llm_sim
    "clicked_cf_ema",  # EMA of the clicked item's cf_score minus the slate's mean cf_score
    "purchase_rate",  # purchases / steps so far
    "dwell_ema",  # EMA of dwell minutes per step
    "skip_streak",  # consecutive slates without a click / 5, capped at 1
)
(
    C_T_FRAC,
    C_CLICK_EMA,
    C_CLICK_RATE,
    C_LAST_CLICK,
    C_LAST_CLICK_RANK,
    C_CLICKED_LLM,
    C_CLICKED_CF,
    C_PURCHASE_RATE,
    C_DWELL_EMA,
    C_SKIP_STREAK,
) = range(len(CONTEXT_NAMES))


def observation_space(
    n_items: int, n_candidates: int, dim: int, with_item_embeddings: bool = False
) -> gym.spaces.Dict:
    """The single-user observation space.

    Args:
        n_items: Catalog size M (candidate ids are in ``[0, M)``).
        n_candidates: N.
        dim: Embedding dimension D.
        with_item_embeddings: Add ``item_emb`` (N, D).

    Returns:
        ``Dict(user (D,), candidates (N,) int64, features (N, F), context (C,) [, item_emb (N, D)])``.
    """
    spaces: dict[str, gym.spaces.Space] = {
        "user": gym.spaces.Box(-1.0, 1.0, (dim,), np.float32),
        "candidates": gym.spaces.Box(0, n_items - 1, (n_candidates,), np.int64),
        "features": gym.spaces.Box(-np.inf, np.inf, (n_candidates, len(FEATURE_NAMES)), np.float32),
        "context": gym.spaces.Box(-np.inf, np.inf, (len(CONTEXT_NAMES),), np.float32),
    }
    if with_item_embeddings:
        spaces["item_emb"] = gym.spaces.Box(-1.0, 1.0, (n_candidates, dim), np.float32)
    return gym.spaces.Dict(spaces)


def action_space(n_candidates: int, slate_size: int) -> gym.spaces.MultiDiscrete:
    """A slate: K positions into the request's N candidates (distinct; checked by the env)."""
    return gym.spaces.MultiDiscrete(np.full(slate_size, n_candidates, dtype=np.int64))


def validate_slate(slate: np.ndarray, n_candidates: int, slate_size: int) -> np.ndarray:
    """Check a batched slate and return it as int64 (B, K).

    Args:
        slate: (B, K) integer positions into the N candidates.
        n_candidates: N.
        slate_size: K.

    Returns:
        The slate as a C-contiguous int64 (B, K) array.

    Raises:
        ValueError: Wrong shape, non-integer values, out-of-range entries or duplicates, naming the row.
    """
    arr = np.asarray(slate)
    if arr.ndim != 2 or arr.shape[1] != slate_size:
        raise ValueError(f"slate must have shape (B, {slate_size}), got {arr.shape}")
    if arr.dtype.kind not in "iu":
        if arr.dtype.kind == "f" and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
            arr = arr.astype(np.int64)
        else:
            raise ValueError(f"slate must hold integer candidate positions, got dtype {arr.dtype}")
    arr = np.ascontiguousarray(arr, dtype=np.int64)
    bad = (arr < 0) | (arr >= n_candidates)
    if bad.any():
        row = int(np.flatnonzero(bad.any(axis=1))[0])
        raise ValueError(
            f"slate row {row} has entries outside [0, {n_candidates}): {arr[row].tolist()}"
        )
    srt = np.sort(arr, axis=1)
    dup = (srt[:, 1:] == srt[:, :-1]).any(axis=1)
    if dup.any():
        row = int(np.flatnonzero(dup)[0])
        raise ValueError(f"slate row {row} repeats a candidate: {arr[row].tolist()}")
    return arr


def dedupe_slate(slate: np.ndarray, n_candidates: int) -> np.ndarray:
    """Replace repeated entries of each row by the lowest unused positions (``repair="dedupe"``).

    Meant for raw MultiDiscrete samples (e.g. SB3's ``check_env``), never for a policy's output.

    Args:
        slate: (B, K) integer positions.
        n_candidates: N.

    Returns:
        (B, K) int64 slate with distinct entries per row; the first occurrence of each entry is kept.
    """
    arr = np.array(slate, dtype=np.int64, copy=True)
    for row in np.flatnonzero([len(set(r)) < len(r) for r in arr.tolist()]):
        seen: set[int] = set()
        free = (c for c in range(n_candidates) if c not in set(arr[row].tolist()))
        for k, c in enumerate(arr[row].tolist()):
            if c in seen:
                arr[row, k] = next(free)
            seen.add(c)
    return arr
