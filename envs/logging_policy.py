"""The logging policy of the world build's logging phase (and of the ``scored`` / ``linucb`` baselines' data):
ε-uniform slates mixed with Plackett-Luce on LLM similarity, with the slate's log-propensity."""

from __future__ import annotations

import numpy as np

from envs import rng
from envs.spaces import F_LLM
from envs.topk import top_k


def logging_policy(obs: dict[str, np.ndarray], keys: np.ndarray, t: np.ndarray, slate_size: int, epsilon: float,
                   temperature: float) -> tuple[np.ndarray, np.ndarray]:
    """The logging policy: with probability ε a uniform random slate, else Plackett-Luce on llm_sim / temperature.

    Args:
        obs: Batched observation (uses ``features[..., llm_sim]``).
        keys: uint64 (B,) episode keys (randomness source).
        t: int (B,) steps.
        slate_size: K.
        epsilon: Share of uniform slates.
        temperature: Softmax temperature.

    Returns:
        ``(slate (B, K) int64, log_propensity (B,))``: the log-probability of the slate under the mixture.
    """
    logits = obs["features"][:, :, F_LLM].astype(np.float64) / temperature  # (B, N)
    b, n = logits.shape
    uni = rng.uniform(keys, t, rng.LOGGING)
    gumbel = -np.log(-np.log(np.clip(rng.uniform(keys, t, rng.RANKER, slots=n), 1e-12, 1 - 1e-12)))
    explore = uni < epsilon
    scores = np.where(explore[:, None], gumbel, logits + gumbel)
    slate = top_k(scores, slate_size)
    # log P(slate) under PL(logits) and under uniform, mixed with weights (1-ε, ε).
    remaining = np.ones((b, n), bool)
    lp_pl = np.zeros(b)
    for k in range(slate_size):
        chosen = slate[:, k]
        masked = np.where(remaining, logits, -np.inf)
        top = masked.max(axis=1)
        lse = top + np.log(np.exp(masked - top[:, None]).sum(axis=1))
        lp_pl += logits[np.arange(b), chosen] - lse
        remaining[np.arange(b), chosen] = False
    lp_uni = -np.sum(np.log(n - np.arange(slate_size)))
    log_prop = np.logaddexp(np.log1p(-epsilon) + lp_pl, np.log(epsilon) + lp_uni) if epsilon > 0 else lp_pl
    return slate, log_prop
