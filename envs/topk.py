"""Top-K positions per row: (B, N) scores → int64 (B, K), highest score first (rankers, retrieval, logging)."""

from __future__ import annotations

from typing import Literal

import numpy as np


def top_k(scores: np.ndarray, k: int, ties: Literal["lowest", "partition"] = "lowest") -> np.ndarray:
    """Positions of the K highest scores of each row, in descending-score order.

    Two tie rules, because trajectories depend on them:

    * ``"lowest"``: equal scores go to the lower position (a full stable sort, O(N log N) per row). Rankers and
      the logging policy use it.
    * ``"partition"``: ``np.argpartition`` picks the K (O(N) per row), then a stable sort orders them. Which of
      several scores equal to the K-th one are kept, and in which order equal kept scores come, is then
      numpy's selection algorithm's: cold-start retrieval lists (all-zero scores) come out in that order, so
      ``World`` tables (and hence built worlds) keep it. Use it only where that is already the contract.

    Args:
        scores: (B, N) scores (any real dtype).
        k: K >= 1; clipped to N.
        ties: The tie rule (above).

    Returns:
        int64 (B, min(K, N)) positions into each row.

    Raises:
        ValueError: For ``k < 1``, scores that are not 2-D, or an unknown tie rule.
    """
    if k < 1:
        raise ValueError(f"top_k needs k >= 1, got {k}")
    if scores.ndim != 2:
        raise ValueError(f"top_k needs (B, N) scores, got shape {scores.shape}")
    k = min(k, scores.shape[1])
    if ties == "lowest":
        return np.argsort(-scores, axis=1, kind="stable")[:, :k].astype(np.int64)
    if ties == "partition":
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
        return np.take_along_axis(part, order, axis=1).astype(np.int64)
    raise ValueError(f"unknown tie rule {ties!r}; choose 'lowest' or 'partition'")
