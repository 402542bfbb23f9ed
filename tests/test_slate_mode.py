"""The numpy slate mode (``agents/slate_mode.py``) equals the Plackett-Luce distribution's ``mode()``."""

from __future__ import annotations

import numpy as np
import pytest
import torch as th

from agents.distributions import PlackettLuceDistribution
from agents.slate_mode import greedy_slate, greedy_slates, is_greedy_path


@pytest.mark.parametrize(("ties", "cap"), [(False, None), (True, None), (False, 1), (True, 2), (False, 3)])
def test_greedy_slates_equal_the_distribution_mode_on_random_batches(ties: bool, cap: int | None) -> None:
    """Random batches with repulsion (β = 0 in some rows), also with tied logits and with a soft category cap: the
    batched slates, the one-request slates and the torch distribution's mode are the same, row for row."""
    rng = np.random.default_rng(7)
    for trial in range(150):
        b, n = int(rng.integers(1, 9)), int(rng.integers(2, 40))
        k = int(rng.integers(1, n + 1))
        logits = rng.normal(size=(b, n)).astype(np.float32)
        if ties:
            logits = np.round(logits, 1)  # many exact ties: the first index wins everywhere
        groups = rng.integers(0, int(rng.integers(1, 6)), (b, n))
        beta = rng.choice([0.0, 0.05, 0.5, 3.0], b).astype(np.float32)
        beta[0] = 0.5  # at least one row with repulsion: the batch is walked
        ours = greedy_slates(logits, k, groups, beta, cap)
        dist = PlackettLuceDistribution(n, k, category_cap=cap).proba_distribution(
            th.from_numpy(logits), None, th.from_numpy(groups), th.from_numpy(beta))
        np.testing.assert_array_equal(ours, dist.mode().numpy(), str(trial))
        for i in range(b):
            if beta[i] > 0 or cap is not None:
                np.testing.assert_array_equal(greedy_slate(logits[i], k, groups[i], float(beta[i]), cap), ours[i])
            assert is_greedy_path(ours[i], logits[i], groups[i], float(beta[i]), 1e-5, cap)  # its float64 reading
            if cap is not None:  # nothing over the cap while an open group had candidates left
                picked = groups[i][ours[i]]
                counts = np.bincount(picked, minlength=groups[i].max() + 1)
                open_left = len(set(groups[i].tolist())) * cap >= k and counts.max() > cap
                if open_left:
                    full = [g for g in set(picked.tolist()) if counts[g] > cap]
                    unplaced = np.setdiff1d(np.arange(n), ours[i])
                    assert all(counts[g] >= cap for g in groups[i][unplaced]) or not full, str(trial)


def test_top_k_equals_the_distribution_mode_without_repulsion() -> None:
    rng = np.random.default_rng(3)
    for trial in range(100):
        b, n = int(rng.integers(1, 9)), int(rng.integers(2, 40))
        k = int(rng.integers(1, n + 1))
        logits = rng.normal(size=(b, n)).astype(np.float32)  # distinct logits
        dist = PlackettLuceDistribution(n, k).proba_distribution(th.from_numpy(logits))
        mode = dist.mode().numpy()
        np.testing.assert_array_equal(greedy_slates(logits, k), mode, str(trial))
        zero = np.zeros(b, np.float32)  # β = 0 everywhere: top-K, whatever the groups
        np.testing.assert_array_equal(greedy_slates(logits, k, rng.integers(0, 3, (b, n)), zero), mode)
        for i in range(b):
            np.testing.assert_array_equal(greedy_slate(logits[i], k), mode[i])


def test_without_groups_or_beta_the_slate_is_top_k() -> None:
    # β without groups (or groups without β) is top-K by logit, batched and for one request; int64 either way.
    logits = np.array([[0.1, 0.9, 0.5, 0.7, 0.3]], np.float32)
    groups = np.array([[0, 0, 0, 0, 1]])
    assert greedy_slates(logits, 3, None, np.array([0.5], np.float32)).tolist() == [[1, 3, 2]]
    assert greedy_slate(logits[0], 3, None, 0.5).tolist() == [1, 3, 2]
    assert greedy_slate(logits[0], 3, groups[0]).tolist() == [1, 3, 2]  # β defaults to 0
    walked = greedy_slates(logits, 3, groups, np.array([0.3], np.float32))  # 0.5 - 2 * 0.3 < 0.3 (another group)
    assert walked.tolist() == [[1, 3, 4]] and walked.dtype == np.int64
    one = greedy_slate(logits[0], 3, groups[0], 0.3)
    assert one.tolist() == [1, 3, 4] and one.dtype == np.int64


def test_the_walk_runs_in_float32_like_the_distribution() -> None:
    # float64 logits 1e-12 apart are one float32 value: a tie, which goes to the first index (as mode() does).
    logits = np.array([[1.0, 1.0 + 1e-12, -1.0]])
    groups = np.array([[0, 1, 2]])
    assert greedy_slates(logits, 2, groups, np.array([0.5]))[0].tolist() == [0, 1]
    assert greedy_slate(logits[0], 2, groups[0], 0.5).tolist() == [0, 1]


def test_is_greedy_path_refuses_repeats_and_non_greedy_picks() -> None:
    logits = np.array([0.9, 0.5, 0.1])
    assert is_greedy_path(np.array([0, 1]), logits, None, 0.0, tol=1e-6)
    assert not is_greedy_path(np.array([1, 0]), logits, None, 0.0, tol=1e-6)
    assert not is_greedy_path(np.array([0, 0]), logits, None, 0.0, tol=1e-6)
    assert is_greedy_path(np.array([1, 0]), logits, None, 0.0, tol=0.5)  # within the tolerance
    groups = np.array([0, 0, 1])
    assert is_greedy_path(np.array([0, 2]), logits, groups, 0.5, tol=1e-6)  # 0.5 - 0.5 < 0.1
    assert not is_greedy_path(np.array([0, 1]), logits, groups, 0.5, tol=1e-6)
