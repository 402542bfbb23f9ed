"""The slate estimators (IPS, SNIPS, IIPS, RIPS, PI, cascade-DR) over a :class:`~agents.ope.logs.SlateLog`, each with a
95% interval from its per-request terms (see :mod:`agents.ope`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from agents.ope.logs import (
    PLPolicy,
    SlateLog,
)
from agents.ope.plackett_luce import (
    ESTIMATORS,
    Z95,
    pl_conditionals,
    pl_marginals,
    pl_pinv_gram,
    pl_prefix_log_prob,
)

# ---- estimators ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Estimate:
    """An estimate of a policy's per-request value with its 95 % normal interval.

    Attributes:
        value: The estimate.
        se: Its standard error (from the per-request terms).
        low: Lower 95 % bound.
        high: Upper 95 % bound.
        n: Requests used.
    """

    value: float
    se: float
    low: float
    high: float
    n: int

    def to_dict(self) -> dict[str, float]:
        """JSON-ready fields."""
        return dataclasses.asdict(self)


def _from_terms(terms: np.ndarray, value: float | None = None) -> Estimate:
    n = len(terms)
    v = float(terms.mean()) if value is None else float(value)
    se = float(terms.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan")
    return Estimate(v, se, v - Z95 * se, v + Z95 * se, n)


@dataclass
class TargetTerms:
    """What the estimators need of a target policy on the logged requests.

    Attributes:
        prefix_logp: float64 (n, K) log π(s_{1:k}|x) of the logged prefixes.
        marginals: float64 (n, K, N) π's per-position marginals (IIPS, PI).
        conditionals: float64 (n, K, N) π(a | x, s_{1:k−1}) at the logged prefixes (cascade DR).
        pi_weight: float64 (n,) the PI weights ``q_πᵀ Γ_μ⁺ 1_s`` (:func:`pi_weights`); when ``None``, PI computes
            them from ``marginals`` and the logging policy's ``pinv_gram``.
    """

    prefix_logp: np.ndarray
    marginals: np.ndarray | None
    conditionals: np.ndarray | None
    pi_weight: np.ndarray | None = None


@dataclass
class LoggingTerms:
    """What the estimators need of the logging policy (computed once per log, shared by all targets).

    Attributes:
        prefix_logp: float64 (n, K) log μ(s_{1:k}|x).
        marginals: float64 (n, K, N) μ's per-position marginals.
        pinv_gram: float64 (n, K·N, K·N) Γ_μ⁺ (PI), or None.
    """

    prefix_logp: np.ndarray
    marginals: np.ndarray | None
    pinv_gram: np.ndarray | None


def logging_terms(log: SlateLog, generator: np.random.Generator, n_samples: int = 512,
                  with_pi: bool = True) -> LoggingTerms:
    """The logging policy's propensities, marginals and (for PI) Γ⁺ on the logged requests."""
    k = log.slates.shape[1]
    lp = pl_prefix_log_prob(log.logging_logits, log.slates, log.logging_epsilon)
    marg = pl_marginals(log.logging_logits, k, generator, n_samples, log.logging_epsilon)
    pg = pl_pinv_gram(log.logging_logits, k, generator, n_samples, log.logging_epsilon) if with_pi else None
    return LoggingTerms(lp, marg, pg)


def target_terms(log: SlateLog, policy: PLPolicy, generator: np.random.Generator, n_samples: int = 512
                 ) -> TargetTerms:
    """A PL target's prefix log-probabilities, marginals and conditionals on the logged requests."""
    logits = policy.logits(log.obs)
    k = log.slates.shape[1]
    return TargetTerms(pl_prefix_log_prob(logits, log.slates, policy.epsilon),
                       pl_marginals(logits, k, generator, n_samples, policy.epsilon),
                       pl_conditionals(logits, log.slates, policy.epsilon))


def _reward_features(obs: dict[str, np.ndarray]) -> np.ndarray:
    """(n, N, P) the reward model's inputs per candidate: its features, the request's context, 1."""
    f = np.asarray(obs["features"], dtype=np.float64)
    n, m, _ = f.shape
    parts = [f]
    if "context" in obs:
        ctx = np.asarray(obs["context"], dtype=np.float64)
        parts.append(np.broadcast_to(ctx[:, None, :], (n, m, ctx.shape[1])))
    parts.append(np.ones((n, m, 1)))
    return np.concatenate(parts, axis=2)


def fit_position_reward_model(x: np.ndarray, slates: np.ndarray, rewards: np.ndarray, ridge: float = 1.0
                              ) -> np.ndarray:
    """Ridge regression per position of r_k on the shown item's inputs: weights float64 (K, P).

    Args:
        x: (n, N, P) per-candidate inputs.
        slates: int (n, K).
        rewards: (n, K).
        ridge: L2 penalty (not on the intercept, the last input).
    """
    k = slates.shape[1]
    p = x.shape[2]
    pen = np.eye(p) * ridge
    pen[-1, -1] = 0.0
    w = np.zeros((k, p))
    for j in range(k):
        xj = x[np.arange(len(slates)), slates[:, j]]  # (n, P)
        w[j] = np.linalg.solve(xj.T @ xj + pen + 1e-9 * np.eye(p), xj.T @ rewards[:, j])
    return w


def fit_qhat(log: SlateLog, rewards: np.ndarray, ridge: float = 1.0, folds: int = 2) -> np.ndarray:
    """Cross-fitted per-position reward predictions ``q̂_k(x, a)`` for every candidate: float64 (n, K, N).

    Row i's predictions come from a model fitted on the other folds (``i mod folds``).
    """
    n, k = log.slates.shape
    x = _reward_features(log.obs)
    qhat = np.zeros((n, k, x.shape[1]))
    fold = np.arange(n) % folds
    for f in range(folds):
        train, test = fold != f, fold == f
        if not train.any():
            train = test
        w = fit_position_reward_model(x[train], log.slates[train], rewards[train], ridge)
        qhat[test] = np.einsum("bnp,kp->bkn", x[test], w)
    return qhat


def cascade_dr_terms(slates: np.ndarray, rewards: np.ndarray, qhat: np.ndarray, target: TargetTerms,
                     logging: LoggingTerms) -> np.ndarray:
    """Per-request terms of the cascade doubly robust estimator (module docstring): float64 (n,).

    Args:
        slates: int (n, K) logged slates.
        rewards: (n, K) per-position rewards.
        qhat: (n, K, N) predicted reward at position k of each candidate (any values keep the estimator
            unbiased under the cascade assumption).
        target: Target terms (``conditionals`` required).
        logging: Logging terms.
    """
    if target.conditionals is None:
        raise ValueError("cascade-dr needs the target's conditional distributions (TargetTerms.conditionals)")
    n, k = slates.shape
    cond = target.conditionals  # (n, K, N)
    if qhat.shape != cond.shape:
        raise ValueError(f"qhat must be (n, K, N) = {cond.shape}, got {qhat.shape}")
    # rewards expected at later positions: g_k(b) = Σ_{k' > k} q̂_k'(b), drawn from the position-k conditional
    later = np.cumsum(qhat[:, ::-1], axis=1)[:, ::-1] - qhat  # (n, K, N)
    tot = (cond * later).sum(axis=2, keepdims=True)
    free = 1.0 - cond
    future = np.where(free > 1e-9, (tot - cond * later) / np.maximum(free, 1e-9), 0.0)
    q_all = qhat + future  # Q̂_k(s_{1:k−1}, a)
    rows = np.arange(n)
    q_logged = np.stack([q_all[rows, j, slates[:, j]] for j in range(k)], axis=1)  # (n, K)
    v_base = (cond * q_all).sum(axis=2)  # (n, K)
    w = np.exp(target.prefix_logp - logging.prefix_logp)  # w_{1:k}
    w_prev = np.concatenate([np.ones((n, 1)), w[:, :-1]], axis=1)
    return (w * (rewards - q_logged) + w_prev * v_base).sum(axis=1)


def _check_terms(log: SlateLog, rewards: np.ndarray, target: TargetTerms, logging: LoggingTerms) -> np.ndarray:
    n, k = log.slates.shape
    rewards = np.asarray(rewards, dtype=np.float64)
    if rewards.shape != (n, k):
        raise ValueError(f"rewards must be (n={n}, K={k}) like the logged slates, got shape {rewards.shape}")
    if not np.isfinite(rewards).all():
        raise ValueError("rewards contain NaN or infinite values")
    for what, arr in (("target prefix_logp", target.prefix_logp), ("logging prefix_logp", logging.prefix_logp)):
        if np.shape(arr) != (n, k):
            raise ValueError(f"{what} must be (n={n}, K={k}) like the logged slates, got shape {np.shape(arr)}")
        if np.isnan(arr).any():
            raise ValueError(f"{what} contains NaN (row {int(np.flatnonzero(np.isnan(arr).any(axis=1))[0])})")
    bad = np.isneginf(logging.prefix_logp).any(axis=1) | (logging.prefix_logp > 1e-9).any(axis=1)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise ValueError(f"logged slate of row {row} has logging propensity 0 or above 1 (log-propensities "
                         f"{logging.prefix_logp[row].tolist()}): its importance weight is undefined")
    return rewards


def estimator_terms(name: str, log: SlateLog, rewards: np.ndarray, target: TargetTerms, logging: LoggingTerms,
                    qhat: np.ndarray | None = None) -> np.ndarray:
    """Per-request terms of a linear estimator (all but ``snips``); their mean is the estimate: float64 (n,).

    Args:
        name: One of :data:`ESTIMATORS` except ``snips``.
        log: The logged requests.
        rewards: float64 (n, K) per-position outcome to value (``log.rewards`` or ``log.clicks``).
        target: The target's terms on the log.
        logging: The logging policy's terms on the log.
        qhat: cascade-dr's (n, K, N) reward predictions (default: :func:`fit_qhat` on this log).

    Raises:
        ValueError: Unknown name, shapes that do not match the log, non-finite inputs, a logged slate with
            logging propensity 0, or missing marginals / Γ⁺ / conditionals the estimator needs.
    """
    rewards = _check_terms(log, rewards, target, logging)
    n, k = log.slates.shape
    rows = np.arange(n)
    total = rewards.sum(axis=1)
    w_prefix = np.exp(target.prefix_logp - logging.prefix_logp)  # (n, K)
    if name == "ips":
        return w_prefix[:, -1] * total
    if name == "rips":
        return (rewards * w_prefix).sum(axis=1)
    if name == "iips":
        if target.marginals is None or logging.marginals is None:
            raise ValueError("iips needs the per-position marginals of both policies")
        pt = np.stack([target.marginals[rows, j, log.slates[:, j]] for j in range(k)], axis=1)
        pl = np.stack([logging.marginals[rows, j, log.slates[:, j]] for j in range(k)], axis=1)
        if not (pl > 0).all():
            raise ValueError("iips: a logged (position, item) has logging marginal 0 (or NaN)")
        return (rewards * pt / pl).sum(axis=1)
    if name == "pi" and target.pi_weight is not None:
        if np.shape(target.pi_weight) != (n,):
            raise ValueError(f"pi_weight must be (n={n},), got shape {np.shape(target.pi_weight)}")
        return np.asarray(target.pi_weight, dtype=np.float64) * total
    if name == "pi":
        if target.marginals is None or logging.pinv_gram is None:
            raise ValueError("pi needs the target's marginals and the logging policy's Γ⁺ (pinv_gram)")
        n_items = target.marginals.shape[2]
        q = target.marginals.reshape(n, k * n_items)
        if logging.pinv_gram.shape != (n, k * n_items, k * n_items):
            raise ValueError(f"pinv_gram must be (n, K·N, K·N) = {(n, k * n_items, k * n_items)}, got "
                             f"{logging.pinv_gram.shape}")
        idx = np.arange(k)[None, :] * n_items + log.slates  # (n, K) entries of 1_s
        gq = np.einsum("bij,bj->bi", logging.pinv_gram, q)  # Γ⁺ q (Γ⁺ symmetric)
        return np.take_along_axis(gq, idx, axis=1).sum(axis=1) * total
    if name == "cascade-dr":
        q = fit_qhat(log, rewards) if qhat is None else qhat
        return cascade_dr_terms(log.slates, rewards, q, target, logging)
    raise ValueError(f"unknown linear estimator {name!r}; choose from {[e for e in ESTIMATORS if e != 'snips']}")


def estimate_all(log: SlateLog, rewards: np.ndarray, target: TargetTerms, logging: LoggingTerms,
                 estimators: Sequence[str] = ESTIMATORS, qhat: np.ndarray | None = None) -> dict[str, Estimate]:
    """Every requested estimator of the target's per-request value of ``rewards`` (module docstring).

    Args:
        log: The logged requests.
        rewards: float64 (n, K) per-position outcome to value (``log.rewards`` or ``log.clicks``).
        target: The target's terms on the log.
        logging: The logging policy's terms on the log.
        estimators: Names from :data:`ESTIMATORS`.
        qhat: (n, K, N) cascade-dr's reward model predictions (default: :func:`fit_qhat` on this log).

    Returns:
        Name → estimate (normal 95 % interval; SNIPS by the delta method).

    Raises:
        ValueError: Unknown estimator names and everything :func:`estimator_terms` rejects.
    """
    unknown = [e for e in estimators if e not in ESTIMATORS]
    if unknown:
        raise ValueError(f"unknown estimator(s) {unknown}; choose from {list(ESTIMATORS)}")
    rewards = _check_terms(log, rewards, target, logging)
    out: dict[str, Estimate] = {}
    for name in estimators:
        if name == "snips":
            w = np.exp(target.prefix_logp[:, -1] - logging.prefix_logp[:, -1])
            total = rewards.sum(axis=1)
            if not w.sum() > 0:
                raise ValueError("snips: all importance weights are 0 (the target never picks a logged slate)")
            v = float((w * total).sum() / w.sum())
            out[name] = _from_terms(w * (total - v) / w.mean() + v, value=v)
        else:
            out[name] = _from_terms(estimator_terms(name, log, rewards, target, logging, qhat))
    return out
