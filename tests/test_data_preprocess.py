"""Preprocessing (envs.data.preprocess): the rules and their report, user features, the temporal split."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from configs.data import PreprocessConfig
from envs.data import InteractionLog, load_logs
from envs.data.preprocess import preprocess, temporal_split, user_features

T0 = 1_600_000_000  # 2020-09-13
NOW = T0 + 10 * 86_400
OFF = {  # every rule off, so one test can switch one on
    "min_timestamp": None,
    "max_future_seconds": None,
    "rating_range": None,
    "max_dwell_seconds": None,
    "dedupe": False,
    "max_events_per_user_per_minute": None,
    "min_events_per_item": 1,
    "min_events_per_user": 1,
    "now": NOW,
}


def make_log(rows: list[tuple], items: list[str] | None = None, texts: dict[str, str] | None = None) -> InteractionLog:
    """rows: (user, item, event, timestamp, value)."""
    events = pd.DataFrame(rows, columns=["user", "item", "event", "timestamp", "value"])
    ids = items or sorted(set(events["item"]))
    texts = texts or {}
    table = pd.DataFrame({"id": ids, "text": [texts.get(i, f"item {i}") for i in ids], "category": "c"})
    return InteractionLog.from_frames(events, table)


def step(report, rule):
    return next(s for s in report.steps if s.rule == rule)


def base_rows(user="u", n=6, start=T0, gap=3600, event="click"):
    return [(user, f"i{k % 3}", event, start + k * gap, None) for k in range(n)]


# ---------------------------------------------------------------------------------------------------------------
# Rules
# ---------------------------------------------------------------------------------------------------------------


def test_missing_rating_dropped_or_filled():
    rows = [("u", "a", "rating", T0, 4.0), ("u", "b", "rating", T0 + 1, 2.0), ("u", "c", "rating", T0 + 2, None)]
    rows += [("v", "a", "rating", T0, 5.0), ("w", "b", "rating", T0 + 3, None)]
    log = make_log(rows)
    out, rep = preprocess(log, PreprocessConfig(**OFF))
    assert out.n_events == 3 and step(rep, "missing rating").dropped == 2
    out, rep = preprocess(log, PreprocessConfig(**OFF, missing_rating="user_mean"))
    assert step(rep, "missing rating").filled == 2 and out.n_events == 5
    values = dict(zip(zip(out.events["user"], out.events["item"], strict=False), out.events["value"], strict=True))
    assert values[("u", "c")] == 3.0  # u's mean
    assert values[("w", "b")] == pytest.approx((4 + 2 + 5) / 3)  # w has no rating: the global mean
    out, rep = preprocess(log, PreprocessConfig(**OFF, missing_rating="global_mean"))
    assert out.events["value"].isna().sum() == 0


def test_missing_text_filled_from_id_and_category():
    log = make_log(base_rows(), items=["i0", "i1", "i2"], texts={"i0": "a shirt", "i1": " ", "i2": ""})
    out, rep = preprocess(log, PreprocessConfig(**OFF))
    assert out.items["text"].tolist() == ["a shirt", "Item i1. Category: c.", "Item i2. Category: c."]
    assert step(rep, "missing text").filled == 2
    out, rep = preprocess(log, PreprocessConfig(**OFF, missing_text="keep"))
    assert out.items["text"].tolist()[1:] == ["", ""]  # the reader strips blanks


def test_implausible_timestamps():
    rows = [*base_rows(), ("u", "i0", "view", 500000000, None), ("u", "i1", "view", NOW + 2 * 86400, None)]
    rows += [("u", "i2", "view", NOW + 3600, None)]  # within a day of now: kept
    cfg = PreprocessConfig(**{**OFF, "min_timestamp": 631_152_000, "max_future_seconds": 86_400})
    out, rep = preprocess(make_log(rows), cfg)
    assert step(rep, "too old").dropped == 1 and "before 1990-01-01" in step(rep, "too old").reason
    assert step(rep, "future").dropped == 1 and "after now + 86400 s" in step(rep, "future").reason
    assert out.n_events == 7


def test_rating_range_and_dwell_range():
    rows = [("u", "a", "rating", T0, 4.0), ("u", "b", "rating", T0 + 1, 7.0), ("u", "c", "rating", T0 + 2, 0.0)]
    rows += [("u", "a", "view", T0 + 3, -1.0), ("u", "b", "click", T0 + 4, 90_000.0), ("u", "c", "view", T0 + 5, 30.0)]
    rows += [("u", "c", "purchase", T0 + 6, 99_999.0)]  # value on a purchase is not a dwell
    cfg = PreprocessConfig(**{**OFF, "rating_range": (0.5, 5.0), "max_dwell_seconds": 3600.0})
    out, rep = preprocess(make_log(rows), cfg)
    assert step(rep, "rating range").dropped == 2 and "[0.5, 5.0]" in step(rep, "rating range").reason
    assert step(rep, "dwell range").dropped == 2
    assert sorted(out.events["timestamp"] - T0) == [0, 5, 6]


def test_dedupe_keeps_last_row():
    rows = [("u", "a", "rating", T0, 3.0), ("u", "a", "rating", T0, 4.0), ("u", "a", "rating", T0 + 1, 2.0)]
    rows += [("u", "a", "click", T0, None)]  # another event type at the same time: not a duplicate
    out, rep = preprocess(make_log(rows), PreprocessConfig(**{**OFF, "dedupe": True}))
    assert step(rep, "dedupe").dropped == 1
    assert out.events.loc[out.events["event"] == "rating", "value"].tolist() == [4.0, 2.0]


def test_bot_rule_drops_burst_users_only():
    burst = [("bot", f"i{k % 3}", "click", T0 + k // 3, None) for k in range(150)]  # 150 clicks in 50 s
    steady = [("human", f"i{k % 3}", "click", T0 + 2 * k, None) for k in range(150)]  # 30 per minute
    edge = [("edge", "i0", "click", T0 + k, None) for k in range(100)]  # exactly 100 in 60 s: allowed
    cfg = PreprocessConfig(**{**OFF, "max_events_per_user_per_minute": 100})
    out, rep = preprocess(make_log(burst + steady + edge), cfg)
    s = step(rep, "bots")
    assert s.dropped == 150 and "1 user(s): bot" in s.detail and "> 100 events in some 60 s window" in s.reason
    assert out.user_ids.tolist() == ["edge", "human"]


def test_rare_items_then_inactive_users():
    rows = base_rows("u", 6) + base_rows("v", 2) + [("u", "rare", "click", T0 + 99, None)]
    cfg = PreprocessConfig(**{**OFF, "min_events_per_item": 2, "min_events_per_user": 5})
    out, rep = preprocess(make_log(rows), cfg)
    assert step(rep, "rare items").dropped == 1
    assert step(rep, "inactive users").dropped == 2 and step(rep, "inactive users").detail == "1 user(s)"
    assert out.user_ids.tolist() == ["u"] and out.n_items == 4  # the item table is kept
    assert rep.users_in == 2 and rep.users_out == 1 and rep.rows_in == 9 and rep.rows_out == 6


def test_report_markdown_and_nothing_left():
    log = make_log(base_rows("u", 3))
    _out, rep = preprocess(log, PreprocessConfig(now=NOW, min_events_per_user=2))
    md = rep.to_markdown()
    assert "| rule | dropped rows | filled | why |" in md and "| bots | 0 | 0 |" in md
    assert md.startswith("Events 3 -> 3 (0 dropped)")
    assert rep.as_dict()["rows_out"] == 3
    with pytest.raises(ValueError, match="preprocessing left no events") as err:
        preprocess(log, PreprocessConfig(now=NOW, min_events_per_user=4))
    assert "inactive users | 3" in str(err.value)


def test_read_skips_appear_in_the_report(tmp_path):
    (tmp_path / "items.csv").write_text("id,text\na,A\n")
    (tmp_path / "e.csv").write_text("user,item,event,timestamp\nu,a,view,1600000000\nu,a,like,1600000001\n")
    log = load_logs(f"logs:{tmp_path / 'items.csv'},{tmp_path / 'e.csv'}", on_bad_rows="skip")
    _, rep = preprocess(log, PreprocessConfig(now=NOW, min_events_per_user=1))
    md = rep.to_markdown()
    assert "Rows skipped while reading" in md and "| 1 | unknown event | 3 |" in md


# ---------------------------------------------------------------------------------------------------------------
# User features and the split
# ---------------------------------------------------------------------------------------------------------------


def test_user_features():
    rows = [
        ("a", "i0", "view", T0, 30.0),
        ("a", "i1", "click", T0 + 100, 45.0),
        ("a", "i1", "purchase", T0 + 200, None),
        ("a", "i2", "view", T0 + 86_400, None),  # no dwell: not counted in the dwell sum
        ("b", "i0", "rating", T0, 4.0),
        ("b", "i1", "rating", T0 + 600, 2.0),
        ("b", "i2", "click", T0 + 7200, None),  # a new session (gap > 30 min)
        ("b", "i0", "click", T0 + 7500, None),
    ]
    f = user_features(make_log(rows))
    assert f.index.tolist() == ["a", "b"]
    a, b = f.loc["a"], f.loc["b"]
    assert (a.n_views, a.n_clicks, a.n_purchases, a.n_ratings, a.n_events) == (2, 1, 1, 0, 4)
    assert a.browsing_seconds == 75.0 and a.browsing_source == "dwell" and np.isnan(a.mean_rating)
    assert a.active_days == 2 and a.n_sessions == 2
    assert b.browsing_source == "sessions" and b.browsing_seconds == 600 + 300 and b.n_sessions == 2
    assert b.mean_rating == 3.0 and b.n_clicks == 2 and b.n_ratings == 2
    assert (b.first_timestamp, b.last_timestamp) == (T0, T0 + 7500)


def test_temporal_split_holds_out_last_events_in_time():
    rng = np.random.default_rng(0)
    rows = [("u", f"i{k}", "click", T0 + 10 * k, None) for k in range(10)]
    rows += [("v", f"i{k}", "click", T0 + k, None) for k in range(3)]  # too few: all train
    rows += [("w", f"i{k}", "click", T0 + 5 * k, None) for k in range(7)]
    shuffled = [rows[j] for j in rng.permutation(len(rows))]  # file order is not time order
    log = make_log(shuffled)
    train, test = temporal_split(log, holdout_frac=0.2, min_events=5)
    assert train.user_ids is log.user_ids and test.items is log.items  # shared maps
    held = test.events.groupby("user")["item"].apply(sorted).to_dict()
    assert held == {"u": ["i8", "i9"], "w": ["i6"]}  # floor(0.2 * 10) = 2, max(1, floor(1.4)) = 1
    assert train.n_events + test.n_events == log.n_events
    last_train = train.events.groupby("user")["timestamp"].max()
    first_test = test.events.groupby("user")["timestamp"].min()
    assert (last_train[first_test.index] <= first_test).all()


def test_temporal_split_ties_follow_file_order():
    rows = [("u", f"i{k}", "click", T0, None) for k in range(5)]
    _, test = temporal_split(make_log(rows), holdout_frac=0.2)
    assert test.events["item"].tolist() == ["i4"]
