"""User dynamics within a session: fatigue, budget and interest drift. Pure functions over batched arrays.

The simulator's step runs these rules compiled, per row (``envs.kernels.step_sessions``); these numpy forms are
their readable statement, used by the reference core the kernels are tested against.
"""

from __future__ import annotations

import numpy as np


def category_counts(categories: np.ndarray, weights: np.ndarray, n_categories: int) -> np.ndarray:
    """Sum per-slot weights into per-category totals for each row.

    Args:
        categories: int (B, K) category of each slot.
        weights: (B, K) or (K,) weight of each slot.
        n_categories: C.

    Returns:
        float64 (B, C).
    """
    b = categories.shape[0]
    w = np.broadcast_to(weights, categories.shape)
    flat = (np.arange(b)[:, None] * n_categories + categories).ravel()
    return np.bincount(flat, weights=w.ravel(), minlength=b * n_categories).reshape(b, n_categories)


def update_fatigue(fatigue: np.ndarray, exposure: np.ndarray, recovery: float) -> np.ndarray:
    """Fatigue recovers geometrically and grows with this step's exposure.

    Args:
        fatigue: (B, C) current fatigue per category.
        exposure: (B, C) this step's weighted exposure per category.
        recovery: Multiplicative decay per step in [0, 1].

    Returns:
        (B, C) new fatigue (written into ``fatigue`` in place and returned).
    """
    fatigue *= recovery
    fatigue += exposure
    return fatigue


def update_budget(budget: np.ndarray, clicked: np.ndarray, satisfaction: np.ndarray, step_cost: float,
                  no_click_cost: float, refund_base: float, refund_weight: float) -> np.ndarray:
    """Time budget after one request.

    Each request costs ``step_cost``; a slate with no click costs ``no_click_cost`` more; a click refunds
    ``refund_base + refund_weight·max(satisfaction, 0)``. So good slates extend the session, bad ones end it.

    Args:
        budget: (B,) budget before the request.
        clicked: bool (B,).
        satisfaction: (B,) how much the clicked item pleased, above the liking bar (ignored without click).
        step_cost: Cost of a request.
        no_click_cost: Extra cost of a slate without a click.
        refund_base: Refund of any click.
        refund_weight: Refund per unit of positive satisfaction.

    Returns:
        (B,) new budget.
    """
    refund = np.where(clicked, refund_base + refund_weight * np.maximum(satisfaction, 0.0), 0.0)
    return budget - step_cost - np.where(clicked, 0.0, no_click_cost) + refund


def drift_coefficients(liked: np.ndarray, disliked: np.ndarray, rate: float) -> tuple[np.ndarray, np.ndarray]:
    """Coefficients (c_keep, c_item) of the drift ``θ ← c_keep·θ + c_item·e_item`` (before renormalising).

    Toward a liked item: ``(1 − η, η)``; away from a disappointing one: ``(1 + η, −η)``; else ``(1, 0)``.

    Args:
        liked: bool (B,).
        disliked: bool (B,).
        rate: η.

    Returns:
        Two float64 (B,) arrays.
    """
    c_keep = np.where(liked, 1.0 - rate, np.where(disliked, 1.0 + rate, 1.0))
    c_item = np.where(liked, rate, np.where(disliked, -rate, 0.0))
    return c_keep, c_item


def drift_norm(theta_dot_theta: np.ndarray, theta_dot_item: np.ndarray, c_keep: np.ndarray,
               c_item: np.ndarray) -> np.ndarray:
    """Norm of ``c_keep·θ + c_item·e`` for unit ``e`` from dot products, without forming the vector.

    Args:
        theta_dot_theta: (B,) ``θ·θ``.
        theta_dot_item: (B,) ``θ·e``.
        c_keep: (B,).
        c_item: (B,).

    Returns:
        (B,) norms (at least 1e-8).
    """
    sq = c_keep**2 * theta_dot_theta + 2.0 * c_keep * c_item * theta_dot_item + c_item**2
    return np.sqrt(np.maximum(sq, 1e-16))
