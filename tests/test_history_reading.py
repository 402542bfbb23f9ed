"""bench.history_reading: how well a session's whole record reads the user's type, against the current request."""

from __future__ import annotations

import numpy as np

from agents.base import Feedback
from agents.tuning import diverse_ranker
from bench.history_reading import RESPONSE_COLUMNS, Record, at_request, readers, record, response_row
from configs.schema import EnvConfig
from envs.core import BatchedCore
from envs.spaces import F_CF, F_LLM, FEATURE_NAMES
from envs.world import World


def test_the_response_row_reads_the_clicked_items_signals_and_the_slates_means() -> None:
    """A click: its rank / K, the clicked item's LLM and CF signals raw and as z-scores over the request's
    candidates; no click: rank 1 and zeros; purchases, dwell in minutes and the slate's mean signals either way."""
    feats = np.zeros((2, 4, len(FEATURE_NAMES)), dtype=np.float32)
    feats[:, :, F_LLM] = [[0.1, 0.2, 0.3, 0.4], [0.0, 0.0, 1.0, 1.0]]
    feats[:, :, F_CF] = [[4.0, 3.0, 2.0, 1.0], [1.0, 2.0, 3.0, 4.0]]
    slate = np.array([[3, 0], [1, 2]])
    clicks = np.array([[False, True], [False, False]])
    fb = Feedback(clicks=clicks, purchases=np.array([[False, True], [False, False]]),
                  dwell=np.array([[0.0, 90.0], [0.0, 0.0]], dtype=np.float32), reward=np.zeros(2, np.float32))
    row = response_row({"features": feats}, slate, fb)
    assert row.shape == (2, len(RESPONSE_COLUMNS))
    got = dict(zip(RESPONSE_COLUMNS, row[0], strict=True))
    z = (0.1 - 0.25) / np.std([0.1, 0.2, 0.3, 0.4])
    assert got["clicked"] == 1 and got["click_rank"] == 0.5 and got["purchases"] == 1 and got["dwell"] == 1.5
    np.testing.assert_allclose([got["clicked_llm"], got["clicked_cf"], got["clicked_llm_z"]], [0.1, 4.0, z], rtol=1e-5)
    np.testing.assert_allclose([got["slate_llm"], got["slate_cf"]], [0.25, 2.5], rtol=1e-6)
    quiet = dict(zip(RESPONSE_COLUMNS, row[1], strict=True))
    assert quiet["clicked"] == 0 and quiet["click_rank"] == 1 and quiet["clicked_llm"] == quiet["clicked_cf_z"] == 0
    np.testing.assert_allclose([quiet["slate_llm"], quiet["slate_cf"]], [0.5, 2.5], rtol=1e-6)


def test_at_request_lines_up_each_sessions_earlier_responses_in_order() -> None:
    """Rows in any order: at request t each session that reaches it gets its request's statistics and its
    responses 1 … t−1 in order; shorter sessions are left out."""
    lengths = {0: 3, 1: 1, 2: 2}
    rows = [(s, t) for s, n in lengths.items() for t in range(n)]
    order = np.random.default_rng(0).permutation(len(rows))
    sess = np.array([rows[i][0] for i in order])
    t = np.array([rows[i][1] for i in order])
    rec = Record(session=sess, t=t, request=np.c_[sess * 10.0 + t], response=np.c_[sess * 100.0 + t, -t],
                 cf=sess == 1)
    req, hist, cf = at_request(rec, 1)
    np.testing.assert_array_equal(req[:, 0], [0.0, 10.0, 20.0])
    np.testing.assert_array_equal(hist, req)
    assert cf.tolist() == [False, True, False]
    req, hist, cf = at_request(rec, 3)
    np.testing.assert_array_equal(hist, [[2.0, 0.0, 0.0, 1.0, -1.0]])  # request 3's stats, responses 1 and 2
    assert cf.tolist() == [False]
    assert at_request(rec, 4)[0].shape == (0, 1)


def test_the_readers_on_played_sessions_score_between_0_and_1_with_intervals(small_cfg: EnvConfig,
                                                                            small_world: World) -> None:
    """Sessions played by a rule give one record row per request with finite columns; each reader's share read
    right lies in its interval and in [0, 1], and the history readers' difference from the request reader is
    paired (it is 0 where both read alike: at the first request the linear readers see the same columns)."""
    k, cat = small_cfg.slate_size, small_world.catalog.category
    rule = diverse_ranker(k, cat, {"alpha": 0.9, "cap": 2, "exposure_weight": 0.5, "seen_weight": 0.5})
    train = record(BatchedCore(small_world, small_cfg, 32, "train"), rule, 96, seed=1)
    test = record(BatchedCore(small_world, small_cfg, 32, "heldout"), rule, 64, seed=2)
    assert len(train.t) == len(train.request) == len(train.response) > 96 and np.isfinite(train.response).all()
    assert set(np.unique(train.session)) == set(range(96)) and (train.t == 0).sum() == 96
    row = readers(train, test, 1, seed=0)
    assert row["heldout_sessions"] == 64 and row["train_sessions"] == 96
    for name in ("request", "history (linear)", "history (boosted)"):
        lo, hi = row[name]["right_ci"]
        assert 0.0 <= lo <= row[name]["right"] <= hi <= 1.0 and row[name]["log_loss"] > 0
    assert row["history (linear)"]["right_minus_request"] == 0.0
