"""User dynamics within a session: its intent, fatigue, budget and interest drift. Pure functions over batched arrays.

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


INTENT_SAMPLE = 65_536  # items that estimate the intent's covariance (a stride sample of larger catalogs)


def intent_factor(item_emb: np.ndarray) -> np.ndarray:
    """The symmetric square root ``L`` of the item embeddings' second moment ``C = E[e·eᵀ]``: ``L·z ~ N(0, C)``.

    A session intent drawn this way points where items are (``E‖ξ‖² = E‖e‖²``, 1 for unit embeddings) and
    favours whole neighbourhoods of the catalog, unlike isotropic noise, most of which is orthogonal to every item.

    Args:
        item_emb: float (M, D) item embeddings; catalogs above :data:`INTENT_SAMPLE` items are read at a stride.

    Returns:
        float64 (D, D), rounded through float32 so that every process (whatever its BLAS threads) holds the same
        values, and unique (no eigenvector signs in it).
    """
    step = max(1, -(-item_emb.shape[0] // INTENT_SAMPLE))
    e = np.asarray(item_emb[::step], dtype=np.float64)
    lam, vec = np.linalg.eigh(e.T @ e / e.shape[0])
    root = (vec * np.sqrt(np.clip(lam, 0.0, None))[None, :]) @ vec.T
    return root.astype(np.float32).astype(np.float64)


def intent_affinity(sem_aff: np.ndarray, theta: np.ndarray, slot_emb: np.ndarray, z: np.ndarray,
                    factor: np.ndarray, sigma: float) -> np.ndarray:
    """The session-start affinities ``θ_s·e`` of a session intent (``UserConfig.session_intent``).

    ``θ_s = ‖θ‖·(θ + σ·ξ) / ‖θ + σ·ξ‖`` with ``ξ = L·z``. Per-row reductions only (``einsum``, no BLAS), so a
    row's values do not depend on the rows it is batched with.

    Args:
        sem_aff: float (r, S) the user's affinities ``θ·e`` of the session's slot items.
        theta: float (r, D) the users' semantic tastes.
        slot_emb: float (r, S, D) the slot items' embeddings.
        z: float64 (r, D) standard normal draws of the sessions.
        factor: float64 (D, D) :func:`intent_factor`.
        sigma: σ.

    Returns:
        float32 (r, S).
    """
    xi = np.einsum("de,re->rd", factor, z)  # (r, D)
    theta = np.asarray(theta, dtype=np.float64)
    moved = theta + sigma * xi
    scale = np.sqrt(np.einsum("rd,rd->r", theta, theta) / np.maximum(np.einsum("rd,rd->r", moved, moved), 1e-24))
    xe = np.einsum("rsd,rd->rs", np.asarray(slot_emb, dtype=np.float64), xi)  # (r, S)
    return ((np.asarray(sem_aff, dtype=np.float64) + sigma * xe) * scale[:, None]).astype(np.float32)
