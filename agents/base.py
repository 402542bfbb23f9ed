"""The one interface every ranker implements: ``act(obs) -> slate (B, K)``, ``update``, ``reset``.

Observations are the batched dicts of :mod:`envs.spaces` (``user`` (B, D), ``candidates`` (B, N) int64,
``features`` (B, N, F), ``context`` (B, C) [, ``item_emb`` (B, N, D)]); a slate is an int64 (B, K) array of
distinct positions into each row's N candidates. Rankers are vectorised over the B rows.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from envs.core import StepResult


@dataclass
class Feedback:
    """The user's response to one batched slate.

    Attributes:
        clicks: bool (B, K) clicked slots (at most one per row).
        purchases: bool (B, K) purchased slots.
        dwell: float32 (B, K) dwell seconds per slot.
        reward: float32 (B,) the step's reward.
    """

    clicks: np.ndarray
    purchases: np.ndarray
    dwell: np.ndarray
    reward: np.ndarray

    @classmethod
    def from_step(cls, result: StepResult) -> Feedback:
        """Copy the response out of a core step (its arrays are the core's buffers)."""
        return cls(clicks=result.clicks.copy(), purchases=result.purchases.copy(), dwell=result.dwell.copy(),
                   reward=result.reward.copy())


class Ranker(ABC):
    """A ranker answers each request of a batch of B users with a slate of K of their N candidates.

    Attributes:
        name: Display name (the spec it was made from, e.g. ``fixed-alpha:0.5``).
        reads_hidden_state: True for references that read the simulator's hidden truth (the oracle); such a
            ranker is an upper reference, not a deployable policy.
        k: Slate size K.
    """

    name: str = "ranker"
    reads_hidden_state: bool = False

    def __init__(self, k: int) -> None:
        if k < 1:
            raise ValueError(f"slate size must be >= 1, got {k}")
        self.k = k

    def reset(self, rows: np.ndarray, obs: dict[str, np.ndarray]) -> None:  # noqa: B027 - optional hook
        """New sessions start in ``rows``; forget what was learnt about the previous users there.

        Args:
            rows: int (r,) row indices.
            obs: The batched observation (B, …) that already shows the new sessions' first requests.
        """

    @abstractmethod
    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """Rank each row's candidates.

        Args:
            obs: Batched observation (B, …).

        Returns:
            int64 (B, K) positions into each row's candidates, distinct per row.
        """

    def update(self, obs: dict[str, np.ndarray], slate: np.ndarray, feedback: Feedback) -> None:  # noqa: B027
        """Learn from the response to ``slate`` (online rankers; default: nothing).

        Args:
            obs: The observation (B, …) the slate was chosen for.
            slate: int64 (B, K) the slate shown.
            feedback: The users' response.
        """
