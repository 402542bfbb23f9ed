"""Held-out ranking metrics and baselines (envs.data.cf_eval), by hand and on the real ml-latest-small (skips
without it, fails without it under CI)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import require_movielens

from envs.data import InteractionLog, load_logs
from envs.data.cf_eval import evaluate_scores, interaction_matrix, mf_scorer, popularity_scorer
from envs.data.preprocess import preprocess, temporal_split

T0 = 1_600_000_000  # 2020-09-13


def make_log(rows: list[tuple], items: list[str] | None = None, texts: dict[str, str] | None = None) -> InteractionLog:
    """rows: (user, item, event, timestamp, value)."""
    events = pd.DataFrame(rows, columns=["user", "item", "event", "timestamp", "value"])
    ids = items or sorted(set(events["item"]))
    texts = texts or {}
    table = pd.DataFrame({"id": ids, "text": [texts.get(i, f"item {i}") for i in ids], "category": "c"})
    return InteractionLog.from_frames(events, table)


# ---------------------------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------------------------


def tiny_split():
    """Two users, six items; user u trains on i0, holds out i1 and i2; user v trains on i3, holds out i4."""
    items = [f"i{k}" for k in range(6)]
    train = make_log([("u", "i0", "click", T0, None), ("v", "i3", "click", T0, None)], items=items)
    test_events = pd.DataFrame(
        [("u", "i1", "click", T0 + 1, None), ("u", "i2", "click", T0 + 2, None), ("v", "i4", "click", T0 + 1, None)],
        columns=["user", "item", "event", "timestamp", "value"],
    )
    test = train.with_events(InteractionLog.from_frames(test_events, train.items).events)
    return train, test


def test_metrics_perfect_constant_and_reversed():
    train, test = tiny_split()
    truth = interaction_matrix(test).toarray().astype(float)  # (U, M)

    def perfect(users):
        return truth[users]

    def constant(users):
        return np.zeros((len(users), train.n_items))

    def reversed_(users):
        return -truth[users]

    r = evaluate_scores(perfect, train, test, k=2)
    assert r == {"auc": 1.0, "ndcg@2": 1.0, "recall@2": 1.0, "users": 2}
    assert evaluate_scores(constant, train, test, k=2)["auc"] == 0.5
    assert evaluate_scores(reversed_, train, test, k=2)["auc"] == 0.0


def test_ndcg_recall_auc_hand_computed():
    train, test = tiny_split()
    # u: candidates i1..i5 (i0 is in train). Scores put i3 first, i1 second, i2 last; train item i0 highest
    su = np.array([100.0, 4.0, 0.0, 5.0, 3.0, 2.0])
    # v: candidates i0, i1, i2, i4, i5; the positive i4 is ranked third
    sv = np.array([9.0, 8.0, 1.0, 50.0, 7.0, 0.0])
    scores = np.stack([su, sv])

    def fn(users):
        return scores[users]

    r = evaluate_scores(fn, train, test, k=3)
    # u: top 3 = i3, i1, i4 -> gains 0, 1, 0; DCG = 1/log2(3); IDCG (2 positives) = 1 + 1/log2(3)
    ndcg_u = (1 / np.log2(3)) / (1 + 1 / np.log2(3))
    # v: top 3 = i0, i1, i4 -> DCG = 1/log2(4) = 0.5; IDCG = 1
    ndcg_v = 0.5
    assert r["ndcg@3"] == pytest.approx((ndcg_u + ndcg_v) / 2)
    assert r["recall@3"] == pytest.approx((1 / 2 + 1) / 2)
    # AUC u: positives i1 (4.0), i2 (0.0) vs negatives i3 (5), i4 (3), i5 (2): i1 beats 2 of 3, i2 beats 0 -> 2/6
    # AUC v: positive i4 (7) vs negatives i0 (9), i1 (8), i2 (1), i5 (0): beats 2 of 4
    assert r["auc"] == pytest.approx((2 / 6 + 2 / 4) / 2)


def test_a_subset_of_users_is_the_same_metric_on_those_users():
    rows = [(f"u{k}", f"i{(3 * k + j) % 11}", "click", T0 + j, None) for k in range(9) for j in range(7)]
    train, test = temporal_split(make_log(rows))
    scores = np.random.default_rng(0).normal(size=(train.n_users, train.n_items))

    def fn(users):
        return scores[users]

    whole = evaluate_scores(fn, train, test, k=3)
    first = evaluate_scores(fn, train, test, k=3, users=np.array([4, 0, 2, 2]))  # any order, repeats ignored
    rest = evaluate_scores(fn, train, test, k=3, users=np.setdiff1d(np.arange(train.n_users), [0, 2, 4]))
    assert first["users"] == 3 and first["users"] + rest["users"] == whole["users"] == train.n_users
    for metric in ("auc", "ndcg@3", "recall@3"):  # per-user means: the two parts weigh by their users
        assert (3 * first[metric] + rest["users"] * rest[metric]) / whole["users"] == pytest.approx(whole[metric])
    assert evaluate_scores(fn, train, test, users=np.zeros(0, np.int64))["users"] == 0
    with pytest.raises(ValueError, match="users must be codes"):
        evaluate_scores(fn, train, test, users=np.array([0, train.n_users]))


def test_rank_sums_and_top_k_equal_the_full_sorts_they_replace():
    """The metrics' two kernels against scipy's average ranks and numpy's stable argsort, with many ties and the
    excluded items' -inf."""
    from scipy.stats import rankdata

    from envs.data.cf_eval import _positive_rank_sums, _top_k

    gen = np.random.default_rng(1)
    for _ in range(200):
        b, m = int(gen.integers(1, 9)), int(gen.integers(1, 60))
        scores = np.round(gen.normal(size=(b, m)) * gen.choice([1, 3, 100]))
        excluded = gen.random((b, m)) < 0.3
        scores = np.where(excluded, -np.inf, scores)
        pos = (gen.random((b, m)) < 0.2) & ~excluded
        np.testing.assert_array_equal(_positive_rank_sums(scores, pos), (rankdata(scores, axis=1) * pos).sum(axis=1))
        k = int(gen.integers(1, m + 1))
        np.testing.assert_array_equal(_top_k(scores, k), np.argsort(-scores, axis=1, kind="stable")[:, :k])


def test_metric_input_errors():
    train, test = tiny_split()
    with pytest.raises(ValueError, match="shape"):
        evaluate_scores(lambda u: np.zeros((len(u), 2)), train, test)
    with pytest.raises(ValueError, match="non-finite"):
        evaluate_scores(lambda u: np.full((len(u), train.n_items), np.nan), train, test)
    other = make_log([("z", "i0", "click", T0, None)], items=[f"i{k}" for k in range(6)])
    with pytest.raises(ValueError, match="share the user map"):
        evaluate_scores(lambda u: np.zeros((len(u), 6)), train, other)


def test_popularity_and_mf_scorers_shapes():
    rows = [(f"u{k}", f"i{(k * j) % 7}", "click", T0 + j, None) for k in range(8) for j in range(6)]
    log = make_log(rows)
    train, _test = temporal_split(log)
    pop = popularity_scorer(train)(np.array([0, 1]))
    assert pop.shape == (2, log.n_items) and (pop[0] == pop[1]).all()
    np.testing.assert_array_equal(pop[0], interaction_matrix(train).toarray().sum(axis=0))
    mf = mf_scorer(train, factors=4, iterations=3)(np.array([0, 1, 2]))
    assert mf.shape == (3, log.n_items) and np.isfinite(mf).all()


def test_real_movielens_mf_beats_popularity():
    """The whole pipeline on the real data; its timings are bench/logs_baselines.py's business, not a test's."""
    log = load_logs(f"movielens:{require_movielens()}")
    assert log.n_events == 100_836 and log.n_items == 9_742
    clean, report = preprocess(log)
    assert report.rows_out == clean.n_events > 95_000
    train, test = temporal_split(clean)
    pop = evaluate_scores(popularity_scorer(train), train, test)
    mf = evaluate_scores(mf_scorer(train), train, test)
    assert pop["users"] == mf["users"] > 600
    assert mf["ndcg@10"] > pop["ndcg@10"] + 0.01, (mf, pop)
    assert 0.8 < pop["auc"] < 0.95 and 0.8 < mf["auc"] < 0.95
