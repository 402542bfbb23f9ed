"""envs/topk.py: best-first positions, the two tie rules, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from envs.topk import top_k


def test_best_first_and_both_rules_agree_without_ties() -> None:
    scores = np.random.default_rng(0).random((6, 40))
    best = np.argsort(-scores, axis=1)[:, :7]
    assert np.array_equal(top_k(scores, 7), best)
    assert np.array_equal(top_k(scores, 7, ties="partition"), best)
    assert top_k(scores, 7).dtype == np.int64


def test_lowest_rule_gives_ties_to_the_lower_position() -> None:
    scores = np.array([[1.0, 3.0, 3.0, 2.0, 3.0, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    assert top_k(scores, 2).tolist() == [[1, 2], [0, 1]]
    assert top_k(scores, 4).tolist() == [[1, 2, 4, 3], [0, 1, 2, 3]]


@pytest.mark.parametrize(("seed", "shape", "levels", "k"), [(1, (5, 300), 4, 20), (2, (8, 400), 6, 100)])
def test_partition_rule_is_argpartition_then_a_stable_sort(seed: int, shape: tuple[int, int], levels: int,
                                                           k: int) -> None:
    # Many ties; the second case has several tie levels among the K kept (an unstable sort reorders them).
    scores = np.round(np.random.default_rng(seed).random(shape) * levels).astype(np.float32)
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    got = top_k(scores, k, ties="partition")
    assert np.array_equal(got, np.take_along_axis(part, order, axis=1))
    assert (np.diff(np.take_along_axis(scores, got, axis=1), axis=1) <= 0).all()


def test_lowest_rule_holds_on_long_rows_with_ties() -> None:
    # Past 16 entries numpy's default sort is no longer stable; the rule must not depend on the row length.
    scores = np.round(np.random.default_rng(2).random((8, 400)) * 6)
    for k in (20, 100, 400):
        want = np.stack([np.lexsort((np.arange(400), -row))[:k] for row in scores])  # by score, then position
        assert np.array_equal(top_k(scores, k), want), k


def test_partition_rule_keeps_the_k_highest_on_long_rows() -> None:
    scores = np.random.default_rng(11).random((16, 2000))
    for k in (50, 120, 300, 499):
        got = top_k(scores, k, ties="partition")
        kept = np.take_along_axis(scores, got, axis=1)
        assert np.array_equal(kept, -np.sort(-scores, axis=1)[:, :k]), k  # the K largest, best first


def test_k_is_clipped_and_bad_input_is_refused() -> None:
    scores = np.array([[0.2, 0.1, 0.3]])
    assert top_k(scores, 5).tolist() == [[2, 0, 1]]
    assert top_k(scores, 5, ties="partition").tolist() == [[2, 0, 1]]
    with pytest.raises(ValueError, match="k >= 1"):
        top_k(scores, 0)
    with pytest.raises(ValueError, match=r"\(B, N\) scores"):
        top_k(scores[0], 1)
    with pytest.raises(ValueError, match="unknown tie rule"):
        top_k(scores, 1, ties="first")  # type: ignore[arg-type]
