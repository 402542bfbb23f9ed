"""The user's response to a slate: pure functions over batched arrays (RecSim's choice model, batched).

The simulator's step runs these rules compiled, per row (``envs.kernels.step_sessions``); these numpy forms are
their readable statement, used by the reference core the kernels are tested against and by calibration.

Nothing here holds state or draws random numbers itself: uniforms and normals come in as arguments, so
each piece can be tested with hand-picked values.
"""

from __future__ import annotations

import numpy as np


def position_weights(slate_size: int, decay: float) -> np.ndarray:
    """Examination probability by rank: ``(1 + k) ** -decay`` for k = 0..K-1.

    Args:
        slate_size: K.
        decay: Position-bias exponent (0 = no position bias).

    Returns:
        float64 (K,), 1 at the top, decreasing.
    """
    return (1.0 + np.arange(slate_size, dtype=np.float64)) ** -decay


def mnl_click_probs(utility: np.ndarray, pos_weights: np.ndarray, no_click_utility: float) -> np.ndarray:
    """Position-weighted multinomial logit with an outside option.

    ``P(click k) = w_k·exp(U_k) / (exp(u0) + Σ_j w_j·exp(U_j))``; ``P(no click) = 1 − Σ_k P(click k)``.

    Args:
        utility: (B, K) utilities of the slate's items in rank order.
        pos_weights: (K,) examination weights.
        no_click_utility: u0, utility of not clicking.

    Returns:
        float64 (B, K) click probabilities per rank (rows sum to < 1).
    """
    top = np.maximum(utility.max(axis=1, keepdims=True), no_click_utility)
    expu = np.exp(utility - top) * pos_weights[None, :]
    denom = np.exp(no_click_utility - top) + expu.sum(axis=1, keepdims=True)
    return expu / denom


def cascade_click_probs(
    utility: np.ndarray, pos_weights: np.ndarray, no_click_utility: float, abandon: float
) -> np.ndarray:
    """Cascade model: the user scans down, clicking rank k with probability ``σ(U_k − u0)`` if examined.

    Rank k is examined if no earlier rank was clicked and the user did not abandon at an earlier rank
    (probability ``abandon`` per rank), scaled by the position weight's decay.

    Args:
        utility: (B, K) utilities in rank order.
        pos_weights: (K,) examination weights (multiply the attraction).
        no_click_utility: u0.
        abandon: Per-rank abandonment probability.

    Returns:
        float64 (B, K) click probabilities per rank.
    """
    attract = pos_weights[None, :] / (1.0 + np.exp(-(utility - no_click_utility)))
    cont = (1.0 - attract) * (1.0 - abandon)
    examine = np.concatenate([np.ones((utility.shape[0], 1)), np.cumprod(cont[:, :-1], axis=1)], axis=1)
    return examine * attract


def sample_choice(click_probs: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Pick at most one clicked rank per row from per-rank probabilities with one uniform per row.

    Args:
        click_probs: (B, K) probabilities, rows summing to <= 1.
        u: (B,) uniforms in [0, 1).

    Returns:
        int64 (B,) the clicked rank, or -1 for no click.
    """
    cum = np.cumsum(click_probs, axis=1)
    below = u[:, None] < cum
    any_click = below[:, -1]
    return np.where(any_click, below.argmax(axis=1), -1).astype(np.int64)


def dwell_seconds(rel_satisfaction: np.ndarray, z: np.ndarray, log_mean: float, slope: float, sigma: float,
                  cap: float) -> np.ndarray:
    """Log-normal dwell time on a click, longer for more satisfying items.

    Args:
        rel_satisfaction: (B,) satisfaction relative to the outside option.
        z: (B,) standard normals.
        log_mean: Log-seconds at zero relative satisfaction.
        slope: Log-seconds per unit of relative satisfaction.
        sigma: Log-normal sigma.
        cap: Maximum seconds.

    Returns:
        float64 (B,) seconds in (0, cap].
    """
    return np.minimum(np.exp(log_mean + slope * np.clip(rel_satisfaction, -4.0, 4.0) + sigma * z), cap)


def purchase_probs(rel_satisfaction: np.ndarray, price_term: np.ndarray, bias: float, sat_slope: float,
                   price_slope: float) -> np.ndarray:
    """Probability that a click turns into a purchase: ``σ(bias + a·sat − b·price_term)``.

    Args:
        rel_satisfaction: (B,) satisfaction relative to the outside option.
        price_term: (B,) the user's price sensitivity times the item's log price.
        bias: Logit bias.
        sat_slope: Logit per unit of satisfaction.
        price_slope: Logit per unit of price term.

    Returns:
        float64 (B,) probabilities.
    """
    return 1.0 / (1.0 + np.exp(-(bias + sat_slope * rel_satisfaction - price_slope * price_term)))
