"""Collaborative filtering on implicit feedback: ALS matrix factorisation through the `implicit` library.

The CF score used by the env, the α blend and the rankers is ``user_factors[u] · item_factors[i]``
of a model fitted on *logged* interactions (never on the simulator's hidden truth).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp


@dataclass
class MFModel:
    """A fitted factorisation.

    Attributes:
        user_factors: float32 (U, F).
        item_factors: float32 (M, F).
    """

    user_factors: np.ndarray
    item_factors: np.ndarray

    def scores(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Scores for user rows against item ids.

        Args:
            users: int (B,) user indices.
            items: int (B, N) item indices.

        Returns:
            float32 (B, N) dot products.
        """
        return np.einsum("bf,bnf->bn", self.user_factors[users], self.item_factors[items]).astype(np.float32)


def fit_als(
    users: np.ndarray,
    items: np.ndarray,
    weights: np.ndarray,
    n_users: int,
    n_items: int,
    factors: int = 32,
    regularization: float = 0.05,
    iterations: int = 15,
    alpha: float = 1.0,
    seed: int = 0,
) -> MFModel:
    """Fit implicit-feedback ALS (Hu, Koren & Volinsky 2008) on (user, item, weight) triples.

    Args:
        users: int (E,) user indices in ``[0, n_users)``.
        items: int (E,) item indices in ``[0, n_items)``.
        weights: float (E,) confidence weights (e.g. 1 per click, more per purchase); duplicates add up.
        n_users: U.
        n_items: M.
        factors: Latent dimension F.
        regularization: L2 weight.
        iterations: ALS sweeps.
        alpha: Confidence scale ``c = 1 + alpha·weight``.
        seed: Initialisation seed.

    Returns:
        The fitted :class:`MFModel` (users or items without interactions get near-zero factors).

    Raises:
        ValueError: On mismatched lengths or out-of-range indices.
    """
    users = np.asarray(users, dtype=np.int64)
    items = np.asarray(items, dtype=np.int64)
    weights = np.asarray(weights, dtype=np.float32)
    if not (users.shape == items.shape == weights.shape) or users.ndim != 1:
        raise ValueError(
            f"users, items and weights must be 1-D of one length, got {users.shape}, {items.shape}, {weights.shape}"
        )
    if users.size and (users.min() < 0 or users.max() >= n_users):
        raise ValueError(f"user index out of range [0, {n_users})")
    if items.size and (items.min() < 0 or items.max() >= n_items):
        raise ValueError(f"item index out of range [0, {n_items})")
    from threadpoolctl import threadpool_limits

    matrix = sp.csr_matrix((alpha * weights, (users, items)), shape=(n_users, n_items), dtype=np.float32)
    matrix.sum_duplicates()
    # implicit warns about BLAS threads in its constructor; we limit them to one for the fit, as it asks.
    with threadpool_limits(1, "blas"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        from implicit.cpu.als import AlternatingLeastSquares

        model = AlternatingLeastSquares(
            factors=factors, regularization=regularization, iterations=iterations, random_state=seed
        )
        model.fit(matrix, show_progress=False)
    return MFModel(
        user_factors=np.ascontiguousarray(model.user_factors, dtype=np.float32),
        item_factors=np.ascontiguousarray(model.item_factors, dtype=np.float32),
    )
