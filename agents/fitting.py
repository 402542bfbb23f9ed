"""What the fitted baselines learn from: impressions logged on the training users, and logistic regression.

``scored`` and ``linucb`` (:mod:`agents.rankers`) fit on :class:`Impressions` that the logging policy
(``envs.logging_policy``) leaves on the TRAINING population; :func:`examined_slots` is the cascade reading of a
slate that both the impressions and the online rankers use.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import expit

from agents.base import Feedback, Ranker
from agents.evaluation import episode_plan, run_episodes
from configs.schema import EncoderConfig, EnvConfig
from envs.core import BatchedCore
from envs.factory import make_core
from envs.logging_policy import logging_policy
from envs.world import World

#: Offset that keeps the fitting seeds (logged impressions) apart from the evaluation seeds.
FIT_SEED = 2_000_003


def examined_slots(clicks: np.ndarray) -> np.ndarray:
    """Cascade reading of a slate (Craswell et al., WSDM 2008): slots down to the click, all K without one.

    Args:
        clicks: bool (B, K).

    Returns:
        bool (B, K) examined slots.
    """
    k = clicks.shape[1]
    last = np.where(clicks.any(axis=1), clicks.argmax(axis=1), k - 1)
    return np.arange(k)[None, :] <= last[:, None]



@dataclass
class Impressions:
    """Impressions logged by the logging policy on the training users.

    Attributes:
        features: float32 (n, F) candidate features at the time of the impression.
        rank: int64 (n,) slot in the slate.
        clicked: bool (n,).
        examined: bool (n,) at or above the click (all K when nothing was clicked): the cascade reading.
    """

    features: np.ndarray
    rank: np.ndarray
    clicked: np.ndarray
    examined: np.ndarray


class _LoggingPolicyRanker(Ranker):
    """``envs.presets.logging_policy`` as a ranker (its randomness comes from the core's episode keys)."""

    name = "logging-policy"

    def __init__(self, k: int, core: BatchedCore) -> None:
        super().__init__(k)
        self.core = core

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        lc = self.core.cfg.logging
        return logging_policy(obs, self.core.keys, self.core.t, self.k, lc.epsilon, lc.temperature)[0]


def collect_impressions(world: World, env_cfg: EnvConfig, sessions: int, seed: int, batch: int = 256,
                        population: str = "train", encoder: EncoderConfig | None = None,
                        progress: bool = False) -> Impressions:
    """Log the impressions of ``sessions`` sessions of the logging policy on ``population``.

    Args:
        world: The world.
        env_cfg: Env config.
        sessions: Sessions to log.
        seed: Seed of the episode keys.
        batch: Users simulated at once.
        population: Population (training users).
        encoder: Encoder config (text observation mode only).
        progress: Show a progress bar.

    Returns:
        The impressions.
    """
    core = make_core(env_cfg, env_cfg.preset, encoder, world, population, min(batch, sessions))
    chunks: list[tuple[np.ndarray, ...]] = []

    def record(obs: dict[str, np.ndarray], slate: np.ndarray, fb: Feedback, active: np.ndarray) -> None:
        rows = np.flatnonzero(active)
        feats = np.take_along_axis(obs["features"][rows], slate[rows][:, :, None], axis=1)  # (r, K, F)
        rank = np.broadcast_to(np.arange(slate.shape[1]), slate[rows].shape)
        chunks.append((feats.reshape(-1, feats.shape[2]), rank.ravel(), fb.clicks[rows].ravel(),
                       examined_slots(fb.clicks[rows]).ravel()))

    plan = episode_plan(sessions, [seed], world.populations[population].size)
    run_episodes(core, _LoggingPolicyRanker(env_cfg.slate_size, core), plan, progress=progress,
                 desc="logging impressions", on_step=record)
    feats, rank, clicked, examined = (np.concatenate(parts) for parts in zip(*chunks, strict=True))
    return Impressions(feats.astype(np.float32), rank.astype(np.int64), clicked, examined)


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1e-4, max_iter: int = 50,
                 tol: float = 1e-8) -> np.ndarray:
    """L2-regularised logistic regression by Newton's method (IRLS).

    Minimises ``mean(log(1 + exp(−s·x·w))) + l2/2·|w|²`` with ``s = ±1``.

    Args:
        x: (n, p) design matrix (add a column of ones for an intercept).
        y: (n,) labels in {0, 1}.
        l2: Ridge weight.
        max_iter: Newton steps at most.
        tol: Stop when the largest step is below this.

    Returns:
        float64 (p,) weights.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    n, p = x.shape
    w = np.zeros(p)
    for _ in range(max_iter):
        prob = expit(x @ w)
        grad = x.T @ (prob - y) / n + l2 * w
        hess = (x * (prob * (1.0 - prob))[:, None]).T @ x / n + l2 * np.eye(p)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < tol:
            break
    return w
