"""Compiled (numba) loops for the two places of the hot path where numpy would make several passes over memory.

Each kernel is one pass over its rows; the numpy reading of the same computation is in the docstring and the
tests check the kernels against it (``tests/test_envs.py``).
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def gather_features(
    rows: np.ndarray,
    start: np.ndarray,
    stride: np.ndarray,
    pool_slots: np.ndarray,
    slot_items: np.ndarray,
    state_sim: np.ndarray,
    inv_norm: np.ndarray,
    cf_obs: np.ndarray,
    seen: np.ndarray,
    item_features: np.ndarray,
    category: np.ndarray,
    exposure: np.ndarray,
    cat_clicks: np.ndarray,
    out_pos: np.ndarray,
    out_slots: np.ndarray,
    out_items: np.ndarray,
    out_features: np.ndarray,
    write_llm: bool,
) -> None:
    """Draw each row's candidates by a stride walk over its pool and write their features.

    For row ``b = rows[r]`` and candidate ``n``: ``pos = (start[r] + stride[r]·n) mod P``,
    ``slot = pool_slots[b, pos]``, ``item = slot_items[b, slot]`` and the features (columns of
    ``envs.spaces.FEATURE_NAMES``): ``state_sim[b, slot]·inv_norm[b]``, ``cf_obs[b, slot]``,
    ``item_features[item, 0:2]``, ``exposure[b, category[item]]``, ``cat_clicks[b, category[item]]``,
    ``seen[b, slot]``.

    Args:
        rows: int64 (r,) rows to refresh.
        start: int64 (r,) walk start.
        stride: int64 (r,) walk stride (coprime with P).
        pool_slots: int64 (B, P).
        slot_items: int64 (B, S).
        state_sim: float32 (B, S).
        inv_norm: float32 (B,) 1 / norm of the pooled state (0 for none).
        cf_obs: float32 (B, S).
        seen: float32 (B, S).
        item_features: float32 (M, 2) popularity and price.
        category: int64 (M,).
        exposure: float32 (B, C).
        cat_clicks: float32 (B, C).
        out_pos: int64 (B, N) written: the pool positions.
        out_slots: int64 (B, N) written.
        out_items: int64 (B, N) written.
        out_features: float32 (B, N, F) written.
        write_llm: Write the llm_sim column (False in text mode, where it is computed from the encoded prompt).
    """
    n_cand = out_items.shape[1]
    p = pool_slots.shape[1]
    for r in range(rows.shape[0]):
        b = rows[r]
        pos = start[r] % p
        for n in range(n_cand):
            slot = pool_slots[b, pos]
            item = slot_items[b, slot]
            cat = category[item]
            out_pos[b, n] = pos
            out_slots[b, n] = slot
            out_items[b, n] = item
            f = out_features[b, n]
            if write_llm:
                f[0] = state_sim[b, slot] * inv_norm[b]
            f[1] = cf_obs[b, slot]
            f[2] = item_features[item, 0]
            f[3] = item_features[item, 1]
            f[4] = exposure[b, cat]
            f[5] = cat_clicks[b, cat]
            f[6] = seen[b, slot]
            pos += stride[r]
            if pos >= p:
                pos -= p


@numba.njit(cache=True, nogil=True)
def click_updates(
    rows: np.ndarray,
    clicked_items: np.ndarray,
    gram: np.ndarray,
    slot_items: np.ndarray,
    sem_aff: np.ndarray,
    sem_keep: np.ndarray,
    sem_item: np.ndarray,
    state_sim: np.ndarray,
    state_keep: float,
    state_item: np.ndarray,
) -> None:
    """Move the hidden taste and the pooled state of clicked rows, on every slot, in one pass.

    For row ``b = rows[r]`` and slot ``s`` with ``g = gram[clicked_items[r], slot_items[b, s]]``:
    ``sem_aff[b, s] = sem_keep[r]·sem_aff[b, s] + sem_item[r]·g`` and
    ``state_sim[b, s] = state_keep·state_sim[b, s] + state_item[r]·g``.

    Args:
        rows: int64 (r,) clicked rows.
        clicked_items: int64 (r,) the clicked catalog items.
        gram: float32 (M, M) item Gram matrix.
        slot_items: int64 (B, S).
        sem_aff: float32 (B, S) updated in place.
        sem_keep: float32 (r,).
        sem_item: float32 (r,).
        state_sim: float32 (B, S) updated in place.
        state_keep: The pooled state's decay.
        state_item: float32 (r,) weight of the clicked item in the pooled state.
    """
    n_slots = slot_items.shape[1]
    for r in range(rows.shape[0]):
        b = rows[r]
        g_row = gram[clicked_items[r]]
        a, c, w = sem_keep[r], sem_item[r], state_item[r]
        for s in range(n_slots):
            g = g_row[slot_items[b, s]]
            sem_aff[b, s] = a * sem_aff[b, s] + c * g
            state_sim[b, s] = state_keep * state_sim[b, s] + w * g


@numba.njit(cache=True, nogil=True)
def first_unique(candidates: np.ndarray, skip: int, need: int, n_items: int, out: np.ndarray) -> np.ndarray:
    """Per row, the first ``need`` distinct non-negative ids of ``candidates[:, skip:]`` that do not occur in
    ``candidates[:, :skip]`` (the history), in order.

    Args:
        candidates: int64 (r, W) ids in priority order; negative entries are padding.
        skip: Leading columns that are excluded, not taken (the consumed history).
        need: Ids wanted per row.
        n_items: M (ids are in ``[0, M)``).
        out: int64 (r, need) written; rows with fewer distinct ids are filled with -1.

    Returns:
        int64 (r,) how many ids each row got.
    """
    r_count, width = candidates.shape
    mark = np.zeros(n_items, np.bool_)
    got = np.zeros(r_count, np.int64)
    for r in range(r_count):
        for j in range(width):
            x = candidates[r, j]
            if x >= 0:
                if j < skip:
                    mark[x] = True
                elif not mark[x] and got[r] < need:
                    mark[x] = True
                    out[r, got[r]] = x
                    got[r] += 1
        for k in range(got[r], need):
            out[r, k] = -1
        for j in range(width):  # clear only what this row marked
            x = candidates[r, j]
            if x >= 0:
                mark[x] = False
    return got
