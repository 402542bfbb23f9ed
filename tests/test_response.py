"""The response model (envs/response.py), hand-checked."""

from __future__ import annotations

import numpy as np

from envs.response import cascade_click_probs, mnl_click_probs, position_weights, sample_choice


def test_choice_models_hand_checked() -> None:
    w = position_weights(3, 1.0)
    np.testing.assert_allclose(w, [1.0, 0.5, 1 / 3])
    p = mnl_click_probs(np.zeros((1, 3)), w, 0.0)
    np.testing.assert_allclose(p, [[1 / (1 + 11 / 6), 0.5 / (1 + 11 / 6), (1 / 3) / (1 + 11 / 6)]])
    pc = cascade_click_probs(np.zeros((1, 2)), np.ones(2), 0.0, abandon=0.0)
    np.testing.assert_allclose(pc, [[0.5, 0.25]])
    assert sample_choice(np.array([[0.2, 0.3]]), np.array([0.1]))[0] == 0
    assert sample_choice(np.array([[0.2, 0.3]]), np.array([0.45]))[0] == 1
    assert sample_choice(np.array([[0.2, 0.3]]), np.array([0.6]))[0] == -1
