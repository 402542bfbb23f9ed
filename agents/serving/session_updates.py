"""One user's state updates, as ``BatchedCore.step`` makes them for a simulated user: the request-level update when
a slate is shown, and the response-level update of each feedback event (``agents/serving/runtime.py`` calls them
inside its store transaction; the rules of the context and counters are ``envs.features``'s)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from agents.serving.artifact import ObsConstants
from agents.serving.messages import Event
from agents.serving.state import UserState
from envs import features as obs_state
from envs.spaces import F_CF, F_LLM

#: ``consume(st, item, keep, weight)``: pool ``item`` into the user's state and fold it into the CF factor.
Consume = Callable[[UserState, int, float, float], None]


def record_slate(st: UserState, items: np.ndarray, feats: np.ndarray, category: np.ndarray,
                 obs_decay: float) -> None:
    """The request-level update of a shown slate (``BatchedCore.step`` before the response is known).

    Args:
        st: The user's state (updated in place).
        items: int (K,) catalog rows of the slate, in rank order (distinct).
        feats: float32 (K, F) their features as served.
        category: int (M,) the catalog's category per row.
        obs_decay: Decay per request of the counters and EMAs.
    """
    obs_state.on_slate(st.ctx, st.exposure, st.cat_clicks, category[items], obs_decay)
    items32 = items.astype(np.int32)
    seen = st.seen_items
    if len(seen):
        pos = np.minimum(np.searchsorted(seen, items32), len(seen) - 1)
        hit = seen[pos] == items32
        st.seen_counts[pos[hit]] += 1.0  # a slate's items are distinct: no repeated index
        new = items32[~hit]
    else:
        new = items32
    if len(new):
        merged = np.concatenate([seen, new])
        order = np.argsort(merged, kind="stable")
        st.seen_items = merged[order]
        st.seen_counts = np.concatenate([st.seen_counts, np.ones(len(new), np.float32)])[order]
    st.slate_id = st.n_requests
    st.slate_items = items.astype(np.int32)
    llm, cf = feats[:, F_LLM], feats[:, F_CF]
    st.slate_llm = llm - llm.mean()  # float32, as the simulator's clicked-minus-mean evidence
    st.slate_cf = cf - cf.mean()
    st.slate_clicked = False
    st.t += 1
    st.n_requests += 1


def apply_event(st: UserState, e: Event, item: int, dwell_s: float, category: np.ndarray, const: ObsConstants,
                consume: Consume, emb: np.ndarray) -> bool:
    """One event (``BatchedCore.step``'s response-dependent part, for this user), with its dwell clipped.

    Args:
        st: The user's state (updated in place).
        e: The event (its type and request id are read; ``item`` and ``dwell_s`` are given resolved).
        item: The event's catalog row.
        dwell_s: Its dwell, already clipped to the simulator's cap.
        category: int (M,) the catalog's category per row.
        const: The simulator's observation constants.
        consume: Pools a clicked or bought item into the state (the runtime's, which knows the item tables).
        emb: float32 (M, D) the catalog's unit embeddings (a click adds its item's to ``st.sess_sum``).

    Returns:
        Whether it was applied (not: the item was not shown this session).
    """
    seen = st.seen_items
    pos = int(np.searchsorted(seen, item))
    if pos >= len(seen) or seen[pos] != item:
        return False
    d = const.obs_decay
    st.n_events += 1
    in_slate = -1
    if st.slate_id >= 0 and (e.request_id is None or e.request_id == st.slate_id):
        hits = np.flatnonzero(st.slate_items == item)
        in_slate = int(hits[0]) if len(hits) else -1
    if e.type == "click":
        consume(st, item, const.state_decay, const.click_weight)
        st.sess_sum += emb[item]  # every click of the session (the simulator's one click per slate included)
        first = in_slate >= 0 and not st.slate_clicked  # the slate's click (a later one moves only the counts)
        rank = in_slate if first else -1
        st.slate_clicked = st.slate_clicked or first
        d_llm, d_cf = (float(st.slate_llm[rank]), float(st.slate_cf[rank])) if first else (0.0, 0.0)
        obs_state.on_click(st.ctx, st.cat_clicks, int(category[item]), rank, len(st.slate_items), d_llm, d_cf, d)
        if dwell_s > 0:
            obs_state.on_dwell(st.ctx, np.float32(dwell_s / 60.0), d)
    elif e.type == "purchase":
        consume(st, item, 1.0, const.purchase_weight)
        obs_state.on_purchase(st.ctx)
    else:  # dwell
        obs_state.on_dwell(st.ctx, np.float32(dwell_s / 60.0), d)
    return True
