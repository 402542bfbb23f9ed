"""Off-policy evaluation of slate (ranking) policies from logged requests with logging propensities.

A logged request is a context x (the observation: candidates, features, user state), the ranked slate
s = (s_1, …, s_K) of K distinct positions out of the request's N candidates that the logging policy μ drew, and
the response: per-position rewards r_k (recfeed's reward, or the click indicator, sits at the clicked position;
the user clicks at most once per request). The value of a target policy π is the expected per-request reward
``V(π) = E_x E_{s~π(·|x)} [Σ_k r_k]`` over the logged contexts' distribution. Every estimator below returns that
value and a 95 % normal interval from its per-request terms (delta method for the self-normalised one).

Estimators (each needs μ(s|x) > 0 wherever π(s|x) > 0): ``ips`` (whole-slate weights; no reward assumption),
``snips`` (self-normalised), ``iips`` (per-position marginals; independent / position-based rewards; Li et al.,
KDD 2018), ``rips`` (prefix weights; cascade rewards; McInerney et al., KDD 2020), ``pi`` (pseudo-inverse;
rewards additive over slot × item; Swaminathan et al., NeurIPS 2017) and ``cascade-dr`` (RIPS with a per-position
reward model as control variate; Kiyohara et al., WSDM 2022). Policies are Plackett-Luce over per-candidate logits,
optionally mixed with a uniform slate (recfeed's logging policy): slate and prefix probabilities are exact,
per-position marginals and PI's moments are Rao-Blackwellised Monte Carlo. Formulas, assumptions, why this is numpy
and not Open Bandit Pipeline, the log format (rollout log + ``<log>.obs.npz``) and the validation against the
simulator: ``docs/ope.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from configs.fileio import atomic_write_bytes
from configs.schema import EnvConfig
from envs import rng as env_rng
from envs.core import BatchedCore
from envs.rollout_log import RolloutLogger, read_rollout_log, write_rollout_log
from envs.sessions import Sessions
from envs.spaces import F_CF, F_LLM
from envs.world import World

#: Estimator names, in the order of tables.
ESTIMATORS: tuple[str, ...] = ("ips", "snips", "iips", "rips", "pi", "cascade-dr")
Z95 = 1.959963984540054
#: Observation keys stored in the sidecar (``item_emb`` only when the env has it).
OBS_KEYS: tuple[str, ...] = ("user", "candidates", "features", "context", "item_emb")


# ---- Plackett-Luce with an ε-uniform mixture (numpy) ------------------------------------------------------------


def _check_logits(logits: np.ndarray, k: int) -> np.ndarray:
    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim != 2:
        raise ValueError(f"logits must be (B, N), got shape {logits.shape}")
    if not np.isfinite(logits).all():
        raise ValueError("logits contain NaN or infinite values")
    if not 1 <= k <= logits.shape[1]:
        raise ValueError(f"slate size K={k} must be in [1, N={logits.shape[1]}]")
    return logits


def _check_slates(slates: np.ndarray, b: int, n: int) -> np.ndarray:
    slates = np.asarray(slates)
    if slates.ndim != 2 or slates.shape[0] != b:
        raise ValueError(f"slates must be (B={b}, K), got shape {slates.shape}")
    if not np.issubdtype(slates.dtype, np.integer):
        raise ValueError(f"slates must hold integer candidate positions, got dtype {slates.dtype}")
    if (slates < 0).any() or (slates >= n).any():
        raise ValueError(f"slates hold positions outside [0, N={n})")
    srt = np.sort(slates, axis=1)
    if (srt[:, 1:] == srt[:, :-1]).any():
        bad = int(np.flatnonzero((srt[:, 1:] == srt[:, :-1]).any(axis=1))[0])
        raise ValueError(f"slate of row {bad} repeats a candidate: {slates[bad].tolist()}")
    return slates.astype(np.int64)


def _log_uniform_prefix(n: int, k: int) -> np.ndarray:
    """log P(a given prefix of length 1..k) under a uniform random ranking: (k,)."""
    return -np.cumsum(np.log(n - np.arange(k, dtype=np.float64)))


def pl_prefix_log_prob(logits: np.ndarray, slates: np.ndarray, epsilon: float = 0.0) -> np.ndarray:
    """log-probability of each slate's prefix ``s_{1:k}``, k = 1..K, under ``(1−ε)·PL(logits) + ε·uniform``.

    Args:
        logits: (B, N) per-candidate logits.
        slates: int (B, K) distinct candidate positions.
        epsilon: Share of uniform random slates in [0, 1).

    Returns:
        float64 (B, K); the last column is the whole slate's log-propensity.

    Raises:
        ValueError: For bad shapes, non-finite logits, repeated positions or ε outside [0, 1).
    """
    logits = _check_logits(logits, np.asarray(slates).shape[-1] if np.ndim(slates) == 2 else 1)
    b, n = logits.shape
    slates = _check_slates(slates, b, n)
    _check_epsilon(epsilon)
    k = slates.shape[1]
    remaining = np.ones((b, n), bool)
    out = np.zeros((b, k))
    acc = np.zeros(b)
    rows = np.arange(b)
    for j in range(k):
        masked = np.where(remaining, logits, -np.inf)
        top = masked.max(axis=1)
        lse = top + np.log(np.exp(masked - top[:, None]).sum(axis=1))
        acc = acc + logits[rows, slates[:, j]] - lse
        out[:, j] = acc
        remaining[rows, slates[:, j]] = False
    if epsilon > 0:
        out = np.logaddexp(np.log1p(-epsilon) + out, np.log(epsilon) + _log_uniform_prefix(n, k)[None, :])
    return out


def _check_epsilon(epsilon: float) -> None:
    if not (np.isfinite(epsilon) and 0.0 <= epsilon < 1.0):
        raise ValueError(f"epsilon must be in [0, 1), got {epsilon}")


def pl_conditionals(logits: np.ndarray, slates: np.ndarray, epsilon: float = 0.0) -> np.ndarray:
    """The policy's distribution over the candidate at position k given the logged prefix ``s_{1:k−1}``.

    Exact for the mixture: ``P(s_{1:k−1}, a) / P(s_{1:k−1})``.

    Args:
        logits: (B, N).
        slates: int (B, K).
        epsilon: Uniform share.

    Returns:
        float64 (B, K, N), rows summing to 1, zero on the prefix's candidates.
    """
    logits = _check_logits(logits, np.asarray(slates).shape[-1])
    b, n = logits.shape
    slates = _check_slates(slates, b, n)
    _check_epsilon(epsilon)
    k = slates.shape[1]
    prefix = pl_prefix_log_prob(logits, slates, 0.0)  # PL part
    uni = _log_uniform_prefix(n, k)
    remaining = np.ones((b, n), bool)
    out = np.zeros((b, k, n))
    rows = np.arange(b)
    for j in range(k):
        masked = np.where(remaining, logits, -np.inf)
        top = masked.max(axis=1, keepdims=True)
        e = np.exp(masked - top)
        pl_cond = e / e.sum(axis=1, keepdims=True)  # PL(a | prefix)
        if epsilon > 0:
            lp_prev = prefix[:, j - 1] if j > 0 else np.zeros(b)
            lu_prev = uni[j - 1] if j > 0 else 0.0
            # weights of the two components given the prefix (posterior over the mixture component)
            a = np.log1p(-epsilon) + lp_prev
            c = np.log(epsilon) + lu_prev
            m = np.logaddexp(a, c)
            wa, wc = np.exp(a - m), np.exp(c - m)
            cond = wa[:, None] * pl_cond + wc[:, None] * remaining / (n - j)
        else:
            cond = pl_cond
        out[:, j] = cond
        remaining[rows, slates[:, j]] = False
    return out


def pl_sample(logits: np.ndarray, k: int, generator: np.random.Generator, n_samples: int = 1,
              epsilon: float = 0.0) -> np.ndarray:
    """Draw ranked slates from ``(1−ε)·PL(logits) + ε·uniform`` (Gumbel top-K).

    Args:
        logits: (B, N).
        k: Slate size K.
        generator: Randomness.
        n_samples: S draws per row.
        epsilon: Uniform share.

    Returns:
        int64 (S, B, K).
    """
    logits = _check_logits(logits, k)
    _check_epsilon(epsilon)
    b, n = logits.shape
    g = generator.gumbel(size=(n_samples, b, n))
    explore = generator.random((n_samples, b)) < epsilon
    scores = np.where(explore[..., None], g, logits[None] + g)
    part = np.argpartition(-scores, k - 1, axis=-1)[..., :k] if k < n else np.broadcast_to(np.arange(n), scores.shape)
    top = np.take_along_axis(scores, part, axis=-1)
    order = np.argsort(-top, axis=-1, kind="stable")
    return np.take_along_axis(part, order, axis=-1).astype(np.int64)


def _pl_sample_conditionals(logits: np.ndarray, k: int, generator: np.random.Generator, n_samples: int
                            ) -> tuple[np.ndarray, np.ndarray]:
    """Sampled PL prefixes and, per sample, the exact conditional distribution at each position.

    Returns:
        ``(onehot (B, S, K, N) bool, cond (B, S, K, N) float64)``.
    """
    b, n = logits.shape
    s = pl_sample(logits, k, generator, n_samples, 0.0).transpose(1, 0, 2)  # (B, S, K)
    onehot = np.zeros((b, n_samples, k, n), bool)
    np.put_along_axis(onehot, s[..., None], True, axis=-1)
    taken = np.concatenate([np.zeros((b, n_samples, 1, n), bool), np.cumsum(onehot, axis=2)[:, :, :-1] > 0], axis=2)
    z = np.where(taken, -np.inf, logits[:, None, None, :])
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return onehot, e / e.sum(axis=-1, keepdims=True)


def pl_marginals(logits: np.ndarray, k: int, generator: np.random.Generator, n_samples: int = 512,
                 epsilon: float = 0.0, chunk: int = 256) -> np.ndarray:
    """Per-position marginals ``P(s_k = a | x)`` of the mixture policy (Rao-Blackwellised Monte Carlo).

    Position 1 is exact (a softmax); position k > 1 averages, over S sampled PL prefixes, the exact conditional
    distribution at k; the ε-uniform part (1/N everywhere) is exact.

    Args:
        logits: (B, N).
        k: Slate size K.
        generator: Randomness of the prefixes.
        n_samples: S prefixes per row.
        epsilon: Uniform share.
        chunk: Rows per block (memory B·S·K·N).

    Returns:
        float64 (B, K, N); each (b, k) row sums to 1.
    """
    logits = _check_logits(logits, k)
    _check_epsilon(epsilon)
    b, n = logits.shape
    out = np.zeros((b, k, n))
    for lo in range(0, b, chunk):
        _, cond = _pl_sample_conditionals(logits[lo:lo + chunk], k, generator, n_samples)
        out[lo:lo + chunk] = cond.mean(axis=1)
    return (1.0 - epsilon) * out + epsilon / n


def pl_pinv_gram(logits: np.ndarray, k: int, generator: np.random.Generator, n_samples: int = 512,
                 epsilon: float = 0.0, chunk: int = 64) -> np.ndarray:
    """Moore-Penrose pseudo-inverse of ``Γ = E[1_s 1_sᵀ]`` (slot × item indicators, K·N of them) per row.

    The PL part is the plain Monte Carlo mean of ``1_s 1_sᵀ`` over S sampled slates (positive semi-definite, and
    null exactly where the true Γ is: slot-wise Rao-Blackwellised pairs are not, and the pseudo-inverse blows
    their noise up); the ε-uniform part is exact, which bounds Γ's smallest non-null eigenvalue away from 0.

    Args:
        logits: (B, N) logging logits.
        k: Slate size K.
        generator: Randomness.
        n_samples: S prefixes per row.
        epsilon: Uniform share.
        chunk: Rows per block.

    Returns:
        float64 (B, K·N, K·N), index ``k·N + a``.
    """
    logits = _check_logits(logits, k)
    _check_epsilon(epsilon)
    b, n = logits.shape
    kn = k * n
    uni = _uniform_gram(k, n)
    out = np.zeros((b, kn, kn))
    for lo in range(0, b, chunk):
        s = pl_sample(logits[lo:lo + chunk], k, generator, n_samples, 0.0).transpose(1, 0, 2)  # (c, S, K)
        c = len(s)
        ind = np.zeros((c, n_samples, kn))
        np.put_along_axis(ind, np.arange(k) * n + s, 1.0, axis=2)
        gram = np.einsum("bsi,bsj->bij", ind, ind, optimize=True) / n_samples
        gram = (1.0 - epsilon) * gram + epsilon * uni[None]
        out[lo:lo + c] = np.linalg.pinv(gram, rcond=1e-8, hermitian=True)
    return out


def _null_projector(k: int, n: int) -> np.ndarray:
    """Projector onto the directions every slate indicator is orthogonal to (block sums equal): (K·N, K·N)."""
    d = np.zeros((k * n, max(k - 1, 0)))
    for j in range(1, k):
        d[j * n:(j + 1) * n, j - 1] = 1.0
        d[:n, j - 1] = -1.0
    if d.shape[1] == 0:
        return np.zeros((k * n, k * n))
    return d @ np.linalg.solve(d.T @ d, d.T)


def pi_weights(logits: np.ndarray, slates: np.ndarray, target_marginals: Sequence[np.ndarray],
               generator: np.random.Generator, n_samples: int = 1024, epsilon: float = 0.0, chunk: int = 32,
               logging_marginals: np.ndarray | None = None) -> list[np.ndarray]:
    """The pseudo-inverse estimator's weights ``q_πᵀ Γ_μ⁺ 1_s`` of the logged slates, for several targets at once.

    Γ_μ is estimated as in :func:`pl_pinv_gram` (plain Monte Carlo of the PL part, exact ε-uniform part), but
    never inverted: ``Γ⁺ q = (Γ + P)⁻¹ q`` for q in Γ's range, P the projector on the K − 1 directions every
    slate indicator is orthogonal to (Γ's null space when ε > 0), one LU solve per request for all targets. With
    ε = 0 a sampled Γ may be singular beyond those directions; the pseudo-inverse is used then.

    Control variate: for the logging policy itself the weight is exactly 1 (``q_μ = Γ c`` with ``1_sᵀ c = 1``),
    but Monte Carlo noise in Γ, magnified by its pseudo-inverse, makes ``q_μᵀ Γ̂⁺ 1_s`` far from 1 (mean
    ``|w − 1|`` 0.58 at S = 256, 0.14 at 2,048 on N = 20, K = 5). With ``logging_marginals`` the weight is
    ``1 + (q_π − q_μ)ᵀ Γ̂⁺ 1_s``: exact at π = μ, the error shrinking with the distance between the policies.

    Args:
        logits: (n, N) logging logits.
        slates: int (n, K) logged slates.
        target_marginals: per target, (n, K, N) per-position marginals.
        generator: Randomness of the sampled slates.
        n_samples: S sampled slates per request.
        epsilon: The logging policy's uniform share.
        chunk: Requests per block.
        logging_marginals: (n, K, N) the logging policy's marginals (the control variate above), or None.

    Returns:
        Per target, float64 (n,).
    """
    logits = _check_logits(logits, np.shape(slates)[-1])
    b, n = logits.shape
    slates = _check_slates(slates, b, n)
    _check_epsilon(epsilon)
    k = slates.shape[1]
    kn = k * n
    for m in target_marginals:
        if np.shape(m) != (b, k, n):
            raise ValueError(f"target marginals must be (n, K, N) = {(b, k, n)}, got {np.shape(m)}")
    uni = _uniform_gram(k, n)
    proj = _null_projector(k, n)
    q = np.stack([np.asarray(m, dtype=np.float64).reshape(b, kn) for m in target_marginals], axis=2)  # (n, KN, T)
    base = 0.0
    if logging_marginals is not None:
        if np.shape(logging_marginals) != (b, k, n):
            raise ValueError(f"logging marginals must be (n, K, N) = {(b, k, n)}, got {np.shape(logging_marginals)}")
        q = q - np.asarray(logging_marginals, dtype=np.float64).reshape(b, kn, 1)
        base = 1.0
    idx = np.arange(k)[None, :] * n + slates  # (n, K)
    out = np.zeros((b, q.shape[2]))
    for lo in range(0, b, chunk):
        s = pl_sample(logits[lo:lo + chunk], k, generator, n_samples, 0.0).transpose(1, 0, 2)  # (c, S, K)
        c = len(s)
        flat = np.arange(k) * n + s  # (c, S, K)
        pair = (flat[:, :, :, None] * kn + flat[:, :, None, :]).reshape(c, -1) + (np.arange(c) * kn * kn)[:, None]
        gram = np.bincount(pair.ravel(), minlength=c * kn * kn).reshape(c, kn, kn) / n_samples
        gram = (1.0 - epsilon) * gram + epsilon * uni[None]
        if epsilon > 0:
            sol = np.linalg.solve(gram + proj[None], q[lo:lo + c])
        else:
            sol = np.linalg.pinv(gram, rcond=1e-8, hermitian=True) @ q[lo:lo + c]
        out[lo:lo + c] = np.take_along_axis(sol, idx[lo:lo + c, :, None], axis=1).sum(axis=1)
    return [base + out[:, t] for t in range(out.shape[1])]


def _uniform_gram(k: int, n: int) -> np.ndarray:
    """E[1_s 1_sᵀ] of a uniform random ranking of K out of N: (K·N, K·N)."""
    uni = np.full((k, n, k, n), 1.0 / (n * (n - 1))) if n > 1 else np.zeros((k, n, k, n))
    for j in range(k):
        uni[j, :, j, :] = np.eye(n) / n
        for jj in range(k):
            if jj != j:
                uni[j, np.arange(n), jj, np.arange(n)] = 0.0
    return uni.reshape(k * n, k * n)


# ---- policies ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PLPolicy:
    """A Plackett-Luce slate policy over ``score(obs) / temperature``, mixed with ε-uniform slates.

    Attributes:
        name: Display name.
        score: obs → (B, N) float scores.
        temperature: Softmax temperature (> 0; small: nearly the greedy top-K of the score).
        epsilon: Share of uniform random slates in [0, 1).
    """

    name: str
    score: Callable[[dict[str, np.ndarray]], np.ndarray]
    temperature: float
    epsilon: float = 0.0

    def __post_init__(self) -> None:
        if not (np.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"policy {self.name!r}: temperature must be > 0, got {self.temperature}")
        _check_epsilon(self.epsilon)

    def logits(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """float64 (B, N) logits."""
        return np.asarray(self.score(obs), dtype=np.float64) / self.temperature


def blend_policy(alpha: float, temperature: float, epsilon: float = 0.0, name: str | None = None) -> PLPolicy:
    """PL over recfeed's α blend ``α·llm_sim + (1−α)·cf_score`` (:class:`agents.rankers.BlendRanker`'s score)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")

    def score(obs: dict[str, np.ndarray]) -> np.ndarray:
        f = obs["features"]
        return alpha * f[:, :, F_LLM] + (1.0 - alpha) * f[:, :, F_CF]

    return PLPolicy(name or f"pl:{alpha:g}:{temperature:g}" + (f":{epsilon:g}" if epsilon else ""), score,
                    temperature, epsilon)


def logging_pl_policy(cfg: EnvConfig) -> PLPolicy:
    """recfeed's logging policy (:func:`envs.logging_policy.logging_policy`) as a :class:`PLPolicy`."""
    return blend_policy(1.0, cfg.logging.temperature, cfg.logging.epsilon, name="logging")


def parse_policy(spec: str, cfg: EnvConfig | None = None) -> PLPolicy:
    """A numpy policy from a spec: ``pl:ALPHA:TEMP[:EPS]`` (PL over the α blend) or ``logging``.

    Raises:
        ValueError: For any other spec or bad numbers (the message shows the syntax).
    """
    syntax = "policy specs: 'pl:ALPHA:TEMP[:EPS]' (e.g. pl:0.5:0.1), 'logging', 'run:DIR'"
    if spec == "logging":
        if cfg is None:
            raise ValueError("the 'logging' policy needs the env config")
        return logging_pl_policy(cfg)
    parts = spec.split(":")
    if parts[0] != "pl" or len(parts) not in (3, 4):
        raise ValueError(f"unknown policy {spec!r}; {syntax}")
    try:
        nums = [float(p) for p in parts[1:]]
    except ValueError:
        raise ValueError(f"bad number in policy {spec!r}; {syntax}") from None
    return blend_policy(nums[0], nums[1], nums[2] if len(nums) == 3 else 0.0, name=spec)


# ---- logged data -----------------------------------------------------------------------------------------------


@dataclass
class SlateLog:
    """Logged requests in candidate-position space, what the estimators read.

    Attributes:
        slates: int64 (n, K) positions into each request's candidates, ranked.
        rewards: float64 (n, K) reward at each position (the request's reward sits at its click position).
        clicks: float64 (n, K) click indicator per position.
        logging_logits: float64 (n, N) the logging policy's PL logits.
        logging_epsilon: Its uniform share.
        obs: The observations (``features`` (n, N, F), ``context`` (n, C), …) targets and the reward model read.
    """

    slates: np.ndarray
    rewards: np.ndarray
    clicks: np.ndarray
    logging_logits: np.ndarray
    logging_epsilon: float
    obs: dict[str, np.ndarray]

    def __post_init__(self) -> None:
        n, k = np.shape(self.slates) if np.ndim(self.slates) == 2 else (None, None)
        if n is None:
            raise ValueError(f"slates must be (n, K), got shape {np.shape(self.slates)}")
        for name in ("rewards", "clicks"):
            arr = np.asarray(getattr(self, name), dtype=np.float64)
            if arr.shape != (n, k):
                raise ValueError(f"{name} must be (n={n}, K={k}) like the slates, got shape {arr.shape}")
            if not np.isfinite(arr).all():
                row = int(np.flatnonzero(~np.isfinite(arr).all(axis=1))[0])
                raise ValueError(f"{name} contain NaN or infinite values (row {row})")
            setattr(self, name, arr)
        lg = np.asarray(self.logging_logits, dtype=np.float64)
        if lg.ndim != 2 or lg.shape[0] != n:
            raise ValueError(f"logging_logits must be (n={n}, N), got shape {lg.shape}")
        _check_logits(lg, k)
        self.logging_logits = lg
        self.slates = _check_slates(self.slates, n, lg.shape[1])
        _check_epsilon(self.logging_epsilon)
        for key, v in self.obs.items():
            if np.shape(v)[0] != n:
                raise ValueError(f"obs[{key!r}] has {np.shape(v)[0]} rows, the log has {n}")

    def __len__(self) -> int:
        return len(self.slates)

    def subset(self, rows: np.ndarray | slice) -> SlateLog:
        """The requests ``rows`` (a view-free copy)."""
        return SlateLog(self.slates[rows], self.rewards[rows], self.clicks[rows], self.logging_logits[rows],
                        self.logging_epsilon, {k: v[rows] for k, v in self.obs.items()})


def log_policy(world: World, cfg: EnvConfig, policy: PLPolicy, n_requests: int, seed: int,
               population: str = "heldout", batch_size: int = 1024, max_steps: int | None = 1,
               ) -> tuple[pd.DataFrame, SlateLog]:
    """Serve ``policy`` (sampling) to users of ``population`` and log every request with its propensity.

    With ``max_steps = 1`` each session is one request, so the contexts do not depend on the policy that served
    earlier requests (the setting in which per-request OPE estimates the on-policy value; see
    :func:`on_policy_value`).

    Args:
        world: The world.
        cfg: Env config (``max_steps`` replaced by ``max_steps`` when given).
        policy: The logging policy.
        n_requests: Sessions to play (requests when ``max_steps`` is 1).
        seed: Seed of the episode keys and the policy's draws.
        population: Population name (held-out users by default).
        batch_size: Rows simulated at once.
        max_steps: Requests per session (``None``: the config's).

    Returns:
        ``(rollout frame with ROLLOUT_COLUMNS, SlateLog)``.
    """
    if n_requests < 1:
        raise ValueError(f"n_requests must be >= 1, got {n_requests}")
    if max_steps is not None:
        cfg = dataclasses.replace(cfg, max_steps=max_steps)
    core = BatchedCore(world, cfg, min(batch_size, n_requests), population=population)
    base = env_rng.splitmix64(np.uint64(seed) ^ np.uint64(0x0FE))
    keys = env_rng.splitmix64(np.arange(n_requests, dtype=np.uint64) ^ base)
    users = np.random.default_rng([seed, 0x0FE]).integers(0, core.pop.size, n_requests)
    sessions = Sessions(core, keys, users)
    sessions.start()
    gen = np.random.default_rng([seed, 0x0FF])
    logger = RolloutLogger(population)
    chunks: dict[str, list[np.ndarray]] = {k: [] for k in (*OBS_KEYS, "slate", "logits", "reward", "clicks")}
    obs = {k: v.copy() for k, v in core.observe().items()}
    while (active := sessions.active).any():
        logits = policy.logits(obs)
        slate = pl_sample(logits, cfg.slate_size, gen, 1, policy.epsilon)[0]
        lp = pl_prefix_log_prob(logits, slate, policy.epsilon)[:, -1]
        steps, cands = core.t.copy(), core.cands.copy()
        res = sessions.step(slate)
        rows = np.flatnonzero(active)
        logger.log(core.user, sessions.session, steps, cands, res, lp, rows=rows)
        for key in OBS_KEYS:
            if key in obs:
                chunks[key].append(obs[key][rows])
        chunks["slate"].append(slate[rows])
        chunks["logits"].append(logits[rows])
        chunks["reward"].append(res.reward[rows].astype(np.float64))
        chunks["clicks"].append(res.clicks[rows].astype(np.float64))
        sessions.refill()
        obs = {k: v.copy() for k, v in core.observe().items()}
    frame = logger.to_frame()
    cat = {k: np.concatenate(v) for k, v in chunks.items() if v}
    rewards = position_rewards(cat["reward"], frame["click_rank"].to_numpy())
    log = SlateLog(cat["slate"], rewards, cat["clicks"], cat["logits"], policy.epsilon,
                   {k: cat[k] for k in OBS_KEYS if k in cat})
    return frame, log


def position_rewards(reward: np.ndarray, click_rank: np.ndarray, k: int | None = None) -> np.ndarray:
    """Spread each request's reward to its click position: float64 (n, K).

    Raises:
        ValueError: A reward without a click (the per-position attribution the estimators need is undefined).
    """
    reward = np.asarray(reward, dtype=np.float64)
    click_rank = np.asarray(click_rank, dtype=np.int64)
    if reward.shape != click_rank.shape or reward.ndim != 1:
        raise ValueError(f"reward {reward.shape} and click_rank {click_rank.shape} must be matching (n,) arrays")
    k = k if k is not None else int(max(click_rank.max(initial=-1) + 1, 1))
    none = click_rank < 0
    if (np.abs(reward[none]) > 1e-9).any():
        raise ValueError("a request has a reward but no click: cannot attribute it to a slate position")
    out = np.zeros((len(reward), k))
    rows = np.flatnonzero(~none)
    out[rows, click_rank[rows]] = reward[rows]
    return out


def on_policy_value(world: World, cfg: EnvConfig, policy: PLPolicy, n_requests: int, seed: int,
                    population: str = "heldout", batch_size: int = 1024, max_steps: int | None = 1,
                    ) -> dict[str, float]:
    """The policy's per-request reward and click rate measured by serving it in the simulator (ground truth).

    Returns:
        ``{"reward", "reward_se", "click", "click_se", "n"}``.
    """
    _, log = log_policy(world, cfg, policy, n_requests, seed, population, batch_size, max_steps)
    r, c = log.rewards.sum(axis=1), log.clicks.sum(axis=1)
    n = len(r)
    return {"reward": float(r.mean()), "reward_se": float(r.std(ddof=1) / np.sqrt(n)),
            "click": float(c.mean()), "click_se": float(c.std(ddof=1) / np.sqrt(n)), "n": n}


def write_ope_log(frame: pd.DataFrame, log: SlateLog, path: str | Path) -> Path:
    """Write the rollout log (Parquet) and its sidecar ``<path>.obs.npz`` (observations, logging logits, ε)."""
    path = Path(path)
    if len(frame) != len(log):
        raise ValueError(f"the rollout frame has {len(frame)} rows, the slate log {len(log)}")
    buf = io.BytesIO()
    np.savez_compressed(buf, slates=log.slates, clicks=log.clicks, logging_logits=log.logging_logits,
                        logging_epsilon=np.float64(log.logging_epsilon),
                        **{f"obs_{k}": v for k, v in log.obs.items()})
    atomic_write_bytes(sidecar_path(path), buf.getvalue())
    return write_rollout_log(frame, path)


def sidecar_path(path: str | Path) -> Path:
    """``<log>.obs.npz`` beside a log."""
    p = Path(path)
    return p.with_name(p.name + ".obs.npz")


def read_ope_log(path: str | Path) -> tuple[pd.DataFrame, SlateLog]:
    """Read a log written by :func:`write_ope_log` (arrays only: never unpickles).

    Raises:
        FileNotFoundError: The log or its sidecar is missing.
        ValueError: They disagree (rows, slates) or are malformed.
    """
    frame = read_rollout_log(path)
    side = sidecar_path(path)
    if not side.is_file():
        raise FileNotFoundError(f"{side} is missing: off-policy evaluation needs the observations and the logging "
                                "policy's logits logged beside the rollout log (agents.ope.write_ope_log)")
    with np.load(side, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    need = ("slates", "clicks", "logging_logits", "logging_epsilon")
    missing = [k for k in need if k not in arrays]
    if missing:
        raise ValueError(f"{side} lacks {missing}")
    slates = arrays["slates"]
    if len(slates) != len(frame):
        raise ValueError(f"{side} has {len(slates)} requests, {path} has {len(frame)}")
    cands = np.stack(frame["candidates"].to_numpy())
    shown = np.stack(frame["slate"].to_numpy())
    if not np.array_equal(np.take_along_axis(cands, slates, axis=1), shown):
        raise ValueError(f"{side} does not match {path}: the slates differ")
    rewards = position_rewards(frame["reward"].to_numpy(), frame["click_rank"].to_numpy(), slates.shape[1])
    obs = {k[4:]: v for k, v in arrays.items() if k.startswith("obs_")}
    return frame, SlateLog(slates, rewards, arrays["clicks"], arrays["logging_logits"],
                           float(arrays["logging_epsilon"]), obs)


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


# ---- CLI -----------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """``python -m agents.ope --logs LOG.parquet --policy SPEC [...]``: estimates as a table and JSON."""
    ap = argparse.ArgumentParser(prog="python -m agents.ope", description=__doc__.split("\n")[0])
    ap.add_argument("--logs", required=True, help="rollout log written by agents.ope.write_ope_log (+ .obs.npz)")
    ap.add_argument("--policy", required=True, action="append",
                    help="target policy: pl:ALPHA:TEMP[:EPS] (repeatable)")
    ap.add_argument("--samples", type=int, default=512, help="Monte Carlo prefixes per request (marginals, Γ)")
    ap.add_argument("--estimators", default=",".join(ESTIMATORS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="also write the estimates here")
    args = ap.parse_args(argv)
    ests = [e.strip() for e in args.estimators.split(",") if e.strip()]
    try:
        policies = [parse_policy(s) for s in args.policy]
        _, log = read_ope_log(args.logs)
        gen = np.random.default_rng(args.seed)
        lt = logging_terms(log, gen, args.samples, with_pi=False)
        result: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
        for pol in policies:
            tt = target_terms(log, pol, gen, args.samples)
            if "pi" in ests:
                tt.pi_weight = pi_weights(log.logging_logits, log.slates, [tt.marginals], gen, 4 * args.samples,
                                          log.logging_epsilon, logging_marginals=lt.marginals)[0]
            result[pol.name] = {
                "reward": {k: v.to_dict() for k, v in estimate_all(log, log.rewards, tt, lt, ests).items()},
                "click": {k: v.to_dict() for k, v in estimate_all(log, log.clicks, tt, lt, ests).items()},
            }
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{len(log)} logged requests from {args.logs}\n")
    print("| policy | estimator | reward | 95% CI | click | 95% CI |\n|---|---|---|---|---|---|")
    for pol, r in result.items():
        for e in ests:
            a, c = r["reward"][e], r["click"][e]
            print(f"| {pol} | {e} | {a['value']:.4f} | [{a['low']:.4f}, {a['high']:.4f}] | {c['value']:.4f} | "
                  f"[{c['low']:.4f}, {c['high']:.4f}] |")
    if args.json:
        atomic_write_bytes(args.json, json.dumps(result, indent=2).encode())
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
