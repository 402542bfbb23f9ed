"""The interaction log (envs.data.interaction_log): index maps and CF weights."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from envs.data import EVENT_WEIGHTS, InteractionLog


def _log(rows: list[tuple], items=("a", "b", "c")) -> InteractionLog:
    events = pd.DataFrame(rows, columns=["user", "item", "event", "timestamp", "value"])
    return InteractionLog.from_frames(events, pd.DataFrame({"id": list(items), "text": list(items)}))


def test_index_maps_round_trip():
    log = _log([("u2", "b", "view", 1, None), ("u1", "c", "click", 2, None), ("u2", "a", "click", 3, None)])
    assert log.user_ids.tolist() == ["u1", "u2"] and log.item_ids.tolist() == ["a", "b", "c"]
    users, items = log.codes()
    assert users.tolist() == [1, 0, 1] and items.tolist() == [1, 2, 0]
    np.testing.assert_array_equal(log.user_ids[users], log.events["user"].to_numpy(dtype=object))
    np.testing.assert_array_equal(log.item_ids[items], log.events["item"].to_numpy(dtype=object))
    assert log.user_index(["u2", "nobody"]).tolist() == [1, -1]
    assert log.n_users == 2 and log.n_items == 3 and log.n_events == 3


def test_interaction_weights_order_and_ratings():
    log = _log(
        [
            ("u", "a", "view", 1, None),
            ("u", "a", "click", 2, None),  # same pair: adds up
            ("u", "b", "purchase", 3, None),
            ("v", "a", "cart", 4, None),
            ("v", "b", "rating", 5, 5.0),
            ("v", "c", "rating", 6, 3.5),  # below the threshold: left out
            ("w", "c", "rating", 7, 4.0),
        ]
    )
    assert EVENT_WEIGHTS["purchase"] > EVENT_WEIGHTS["cart"] > EVENT_WEIGHTS["click"] > EVENT_WEIGHTS["view"]
    u, i, w = log.interaction_weights()
    got = {(log.user_ids[a], log.item_ids[b]): float(c) for a, b, c in zip(u, i, w, strict=True)}
    assert got == {
        ("u", "a"): EVENT_WEIGHTS["view"] + EVENT_WEIGHTS["click"],
        ("u", "b"): EVENT_WEIGHTS["purchase"],
        ("v", "a"): EVENT_WEIGHTS["cart"],
        ("v", "b"): 2.0,
        ("w", "c"): 1.0,
    }
    u, i, w = log.interaction_weights(mode="binary")
    assert len(w) == 6 and (w == 1).all()
    with pytest.raises(ValueError, match="unknown events"):
        log.interaction_weights(event_weights={"like": 1.0})
