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
