"""Baseline rankers, and ``make_ranker(spec, ctx)``: the registry that turns specs like ``fixed-alpha:0.5`` into them.

Every ranker implements :class:`agents.base.Ranker` (``act(obs) -> slate (B, K)``, vectorised over B rows) and
its docstring states its scoring rule and where the rule comes from. Specs (see :data:`SPECS`):

``random``, ``popular``, ``greedy-llm``, ``greedy-cf``, ``fixed-alpha:A``, ``scored``, ``tuned-alpha``,
``online-alpha:A``, ``strategy-alpha:A``, ``linucb[:C]``, ``diverse:A``, ``tuned-diverse``, ``oracle``,
``tuned-oracle-diverse``, ``run:DIR``.

Rankers that learn before the evaluation do so on the TRAINING population only: ``tuned-alpha`` grid-searches
α there, ``tuned-diverse`` and ``tuned-oracle-diverse`` search their parameters there by the same protocol,
``scored`` and ``linucb`` fit on impressions logged there by ``envs.presets.logging_policy``. All of their
randomness derives from the context's seed (never the global RNG).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.special import expit

from agents.base import Feedback, Ranker
from agents.evaluation import Bootstrap, episode_plan, percentile_ci, run_episodes
from configs.loader import atomic_write_text, to_dict
from configs.schema import EncoderConfig, EnvConfig
from envs.core import BatchedCore
from envs.factory import make_core
from envs.logging_policy import logging_policy
from envs.presets import default_world_dir, world_key
from envs.spaces import F_CAT_EXPOSURE, F_CF, F_ITEM_SEEN, F_LLM, F_POP, FEATURE_NAMES
from envs.topk import top_k
from envs.world import World

#: The α grid of ``tuned-alpha``.
ALPHA_GRID: tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(11))
#: Spec syntax → what it is; the order of the error message listing the valid choices.
SPECS: dict[str, str] = {
    "random": "uniformly random slate",
    "popular": "most logged clicks first",
    "greedy-llm": "top-K by LLM similarity (α = 1)",
    "greedy-cf": "top-K by CF score (α = 0)",
    "fixed-alpha:A": "top-K by A·llm_sim + (1-A)·cf_score, A in [0, 1]",
    "scored": "top-K by sigmoid(W·x + b), W, b fitted on logged impressions",
    "tuned-alpha": "fixed-alpha with α grid-searched on the training users",
    "online-alpha:A": "fixed-α blend whose user vector takes a gradient step on each click and skip",
    "strategy-alpha:A": "per-user LLM/CF weight updated by new = A·current + (1-A)·signal",
    "linucb[:C]": "LinUCB over the candidate features, per user, exploration C (default 0.1)",
    "diverse:A": "fixed-alpha:A with penalties on recently shown categories and items, at most 2 per category",
    "tuned-diverse": "diverse with α, category cap and penalty weights searched on the training users",
    "oracle": "true click probability (reads the simulator's hidden state)",
    "tuned-oracle-diverse": "true utility with a category cap and exposure penalty tuned on the training users "
                            "(non-myopic upper reference; reads the simulator's hidden state)",
    "run:DIR": "a trained PPO run directory (train.py)",
}
_NEEDS_ALPHA = ("fixed-alpha", "online-alpha", "strategy-alpha", "diverse")
_NO_ARG = ("random", "popular", "greedy-llm", "greedy-cf", "scored", "tuned-alpha", "tuned-diverse", "oracle",
           "tuned-oracle-diverse")
#: Offsets that keep the training-side seeds (tuning, fitting) apart from the evaluation seeds.
_TUNE_SEED, _FIT_SEED = 1_000_003, 2_000_003
#: The tuning seed offset, public: tuning sessions are ``episode_plan(episodes, [seed + TUNE_SEED], U)``.
TUNE_SEED = _TUNE_SEED


def valid_choices() -> str:
    """The spec syntaxes, comma separated (for error messages and ``--help``)."""
    return ", ".join(SPECS)


def parse_spec(spec: str) -> tuple[str, str | None]:
    """Split and check a ranker spec.

    Args:
        spec: e.g. ``"fixed-alpha:0.5"``, ``"linucb"``, ``"run:runs/ppo-1"``.

    Returns:
        ``(name, argument or None)``.

    Raises:
        ValueError: For an unknown name or a bad argument; the message lists the valid choices.
    """
    name, sep, arg = spec.strip().partition(":")
    bad = f"; valid choices: {valid_choices()}"
    if name in _NO_ARG:
        if sep:
            raise ValueError(f"ranker {name!r} takes no argument, got {spec!r}{bad}")
        return name, None
    if name in _NEEDS_ALPHA:
        try:
            alpha = float(arg)
        except ValueError:
            raise ValueError(f"ranker {spec!r} needs α in [0, 1], as in '{name}:0.5'{bad}") from None
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"ranker {spec!r}: α must be in [0, 1], got {alpha}{bad}")
        return name, arg
    if name == "linucb":
        if sep:
            try:
                ok = float(arg) >= 0.0
            except ValueError:
                ok = False
            if not ok:
                raise ValueError(f"ranker {spec!r}: the exploration weight must be a number >= 0{bad}")
        return name, arg or None
    if name == "run":
        if not arg:
            raise ValueError(f"ranker {spec!r} needs a run directory, as in 'run:runs/my-run'{bad}")
        return name, arg
    raise ValueError(f"unknown ranker {spec!r}; valid choices: {valid_choices()}")


def check_specs(specs: list[str]) -> None:
    """Validate a list of specs before any expensive work: syntax, duplicates, run directories.

    Raises:
        ValueError: Empty list, duplicates, or a bad spec (listing the valid choices).
        FileNotFoundError: A ``run:DIR`` whose directory does not exist.
    """
    if not specs:
        raise ValueError(f"no rankers given; valid choices: {valid_choices()}")
    dup = sorted({s for s in specs if specs.count(s) > 1})
    if dup:
        raise ValueError(f"rankers listed twice: {dup}")
    for spec in specs:
        name, arg = parse_spec(spec)
        if name == "run" and arg is not None and not Path(arg).is_dir():
            raise FileNotFoundError(f"run directory {arg!r} (ranker {spec!r}) does not exist")


# ---- the simple rankers --------------------------------------------------------------------------------------


class RandomRanker(Ranker):
    """A uniformly random slate of K distinct candidates: the floor every ranker must beat.

    Formula: ``slate = first K of a uniform random permutation of the N candidates``. Its draws come from its own
    Generator in batch order, so its slates (not the sessions) depend on the batch size B as well as the seed.

    Args:
        k: Slate size.
        seed: Seed of its own ``np.random.Generator``.
    """

    name = "random"

    def __init__(self, k: int, seed: int) -> None:
        super().__init__(k)
        self.rng = np.random.default_rng([int(seed), 0x7A4D])

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """Random slate: int64 (B, K)."""
        b, n = obs["candidates"].shape
        return np.argsort(self.rng.random((b, n)), axis=1)[:, : self.k].astype(np.int64)


class PopularRanker(Ranker):
    """Most popular first (TopPop; Cremonesi, Koren & Turrin, RecSys 2010): the non-personalised baseline.

    Formula: ``score_i = popularity_i`` (the ``popularity`` feature, log logged clicks scaled to [0, 1]).
    """

    name = "popular"

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """Top-K by popularity: int64 (B, K)."""
        return top_k(obs["features"][:, :, F_POP], self.k)


class BlendRanker(Ranker):
    """The fixed α blend of the LLM-for-recsys pipelines: LLM similarity fused linearly with a CF score.

    Formula: ``score_i = α·llm_sim_i + (1 − α)·cf_score_i``, top-K by score. α = 1 is greedy by LLM similarity,
    α = 0 greedy by CF score. Source: the hybrid scoring that LLM-for-recsys write-ups stop at (the design card's
    starting point); the PPO policy starts from the same blend (``agents/policies.py``).

    Args:
        k: Slate size.
        alpha: α in [0, 1].
        name: Display name (default ``fixed-alpha:<α>``).
    """

    def __init__(self, k: int, alpha: float, name: str | None = None) -> None:
        super().__init__(k)
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        self.alpha = float(alpha)
        self.name = name or f"fixed-alpha:{alpha:g}"

    def scores(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """``α·llm_sim + (1 − α)·cf_score``: float32 (B, N)."""
        f = obs["features"]
        return self.alpha * f[:, :, F_LLM] + (1.0 - self.alpha) * f[:, :, F_CF]

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """Top-K by the blend: int64 (B, K)."""
        return top_k(self.scores(obs), self.k)


class DiverseRanker(BlendRanker):
    """A diversity-aware heuristic on top of the fixed α blend (MMR-style re-ranking with a category cap).

    Formula: ``score_i = z(α·llm_sim_i + (1 − α)·cf_score_i) − λ_c·cat_exposure_i − λ_s·item_seen_i``, where ``z``
    standardises the blend over the request's candidates (so the penalties are in units of its spread), then greedy
    selection that skips a candidate once its category already fills ``cap`` slots of the slate (unless nothing
    else is left). Source: maximal marginal relevance (Carbonell & Goldstein, SIGIR 1998) and the category
    caps of production feeds; here it answers fatigue, which a myopic blend ignores.

    Args:
        k: Slate size.
        alpha: α in [0, 1].
        category: int (M,) category of every catalog item (the env's catalog; observable item metadata).
        exposure_weight: λ_c.
        seen_weight: λ_s.
        cap: Most slots one category may take.
        name: Display name.
    """

    def __init__(self, k: int, alpha: float, category: np.ndarray, exposure_weight: float = 3.0,
                 seen_weight: float = 0.5, cap: int = 2, name: str | None = None) -> None:
        super().__init__(k, alpha, name=name or f"diverse:{alpha:g}")
        self.category = np.asarray(category, dtype=np.int64)
        self.n_categories = int(self.category.max()) + 1
        self.exposure_weight, self.seen_weight, self.cap = exposure_weight, seen_weight, cap

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """Greedy top-K under the category cap: int64 (B, K)."""
        f = obs["features"]
        base = self.scores(obs).astype(np.float64)
        base = (base - base.mean(axis=1, keepdims=True)) / (base.std(axis=1, keepdims=True) + 1e-9)
        score = base - self.exposure_weight * f[:, :, F_CAT_EXPOSURE] - self.seen_weight * f[:, :, F_ITEM_SEEN]
        cats = self.category[obs["candidates"]]  # (B, N)
        b = score.shape[0]
        rows = np.arange(b)
        counts = np.zeros((b, self.n_categories), np.int64)
        slate = np.empty((b, self.k), np.int64)
        for j in range(self.k):
            full = np.take_along_axis(counts, cats, axis=1) >= self.cap
            pick = np.argmax(np.where(full, score - 1e6, score), axis=1)  # capped ones only if nothing else
            slate[:, j] = pick
            counts[rows, cats[rows, pick]] += 1
            score[rows, pick] = -np.inf
        return slate


class OracleRanker(Ranker):
    """Myopic oracle: ranks by the simulator's true click probability. Reads HIDDEN state: an upper reference.

    Formula: ``score_i = P(click i | shown alone at the top) = σ(U_ui − u_0)`` from
    ``BatchedCore.true_click_probs``; greedy in the current step, blind to fatigue and budget to come.

    Args:
        k: Slate size.
        core: The core whose current request is being ranked (the evaluation's core).
    """

    name = "oracle"
    reads_hidden_state = True

    def __init__(self, k: int, core: BatchedCore) -> None:
        super().__init__(k)
        self.core = core

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """Top-K by true click probability: int64 (B, K).

        Raises:
            ValueError: If ``obs`` is not the core's current observation.
        """
        if obs["candidates"].shape != self.core.cands.shape or not np.array_equal(obs["candidates"], self.core.cands):
            raise ValueError("the oracle can only rank the current request of the core it reads")
        return top_k(self.core.true_click_probs(), self.k)


def _examined(clicks: np.ndarray) -> np.ndarray:
    """Cascade reading of a slate (Craswell et al., WSDM 2008): slots down to the click, all K without one.

    Args:
        clicks: bool (B, K).

    Returns:
        bool (B, K) examined slots.
    """
    k = clicks.shape[1]
    last = np.where(clicks.any(axis=1), clicks.argmax(axis=1), k - 1)
    return np.arange(k)[None, :] <= last[:, None]


# ---- rankers fitted on logged data (training users) -------------------------------------------------------------


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
                       _examined(fb.clicks[rows]).ravel()))

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


class ScoredRanker(Ranker):
    """Scored blend: ``Score_i = sigmoid(W·x_i + b)`` over the candidate features, W and b learnt from logs.

    The LLM-for-recsys "scored" variant of the fixed blend: instead of a hand-set α, a logistic model over all
    F features (``llm_sim, cf_score, popularity, price, cat_exposure, cat_clicks, item_seen``) learns the
    weights from logged clicks (logistic CTR models, e.g. McMahan et al., KDD 2013). The fit is position-aware
    (PAL; Guo et al., RecSys 2019): one-hot slot terms absorb position bias during training and are dropped
    when scoring. Ranks by Score (equivalently by ``W·x + b``).

    Args:
        k: Slate size.
        weights: float (F,) W.
        bias: b.
    """

    name = "scored"

    def __init__(self, k: int, weights: np.ndarray, bias: float) -> None:
        super().__init__(k)
        self.weights = np.asarray(weights, dtype=np.float32)
        self.bias = float(bias)

    @classmethod
    def fit(cls, imp: Impressions, k: int, l2: float = 1e-4) -> ScoredRanker:
        """Fit W, b on logged impressions (features + slot one-hots → clicked)."""
        n_feat = imp.features.shape[1]
        slots = int(imp.rank.max()) + 1
        onehot = np.zeros((len(imp.rank), slots - 1))  # slot 0 is the baseline
        rows = np.flatnonzero(imp.rank > 0)
        onehot[rows, imp.rank[rows] - 1] = 1.0
        x = np.concatenate([imp.features, onehot, np.ones((len(imp.rank), 1))], axis=1)
        w = fit_logistic(x, imp.clicked, l2=l2)
        return cls(k, w[:n_feat], float(w[-1]))

    def scores(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """``sigmoid(W·x + b)``: float32 (B, N)."""
        return expit(obs["features"] @ self.weights + self.bias)

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """Top-K by Score: int64 (B, K)."""
        return top_k(self.scores(obs), self.k)

    def describe(self) -> dict[str, float]:
        """The fitted weights by feature name, and the bias."""
        return {**dict(zip(FEATURE_NAMES, map(float, self.weights), strict=True)), "bias": self.bias}


class LinUCBRanker(Ranker):
    """LinUCB over the candidate features, one linear model per user, learnt online within the session.

    Formula (Li, Chu, Langford & Schapire, WWW 2010, disjoint model shared by the items of one user): with
    ``x_i = [features_i, 1]`` (d = F + 1), ``A = λI + Σ x xᵀ``, ``b = λθ₀ + Σ y·x``, ``θ = A⁻¹b``,
    ``score_i = θ·x_i + c·sqrt(x_iᵀ A⁻¹ x_i)``, top-K by score. Feedback is read as in CascadeLinUCB (Zong et
    al., UAI 2016): slots down to the click are observed (y = 1 for the click, 0 above it), all K when nothing
    was clicked. The prior mean θ₀ (weight λ) is a ridge regression on examined logged impressions of the
    training users, so a session starts from what the population does and moves toward this user.

    Per-user state is batched: A⁻¹ (B, d, d), b (B, d); one ``np.linalg.inv`` of the batch per step.

    Args:
        k: Slate size.
        theta0: float (d,) prior mean.
        prior_weight: λ, in pseudo-observations.
        exploration: c.
    """

    name = "linucb"

    def __init__(self, k: int, theta0: np.ndarray, prior_weight: float = 20.0, exploration: float = 0.1) -> None:
        super().__init__(k)
        if prior_weight <= 0 or exploration < 0:
            raise ValueError(f"need prior_weight > 0 and exploration >= 0, got {prior_weight}, {exploration}")
        self.theta0 = np.asarray(theta0, dtype=np.float64)
        self.lam, self.c = float(prior_weight), float(exploration)
        self.a = np.zeros((0, len(self.theta0), len(self.theta0)))
        self.a_inv = self.a.copy()
        self.b = np.zeros((0, len(self.theta0)))

    @classmethod
    def fit(cls, imp: Impressions, k: int, prior_weight: float = 20.0, exploration: float = 0.1,
            l2: float = 1.0) -> LinUCBRanker:
        """Prior mean θ₀ by ridge regression (weight ``l2``) of clicks on ``[features, 1]`` over examined slots."""
        x = _with_bias(imp.features[imp.examined].astype(np.float64))
        y = imp.clicked[imp.examined].astype(np.float64)
        theta0 = np.linalg.solve(x.T @ x + l2 * np.eye(x.shape[1]), x.T @ y)
        return cls(k, theta0, prior_weight, exploration)

    def reset(self, rows: np.ndarray, obs: dict[str, np.ndarray]) -> None:
        """Forget the previous users of ``rows``: back to the prior."""
        b = len(obs["features"])
        d = len(self.theta0)
        if len(self.b) != b:
            self.a, self.a_inv, self.b = np.zeros((b, d, d)), np.zeros((b, d, d)), np.zeros((b, d))
            rows = np.arange(b)
        self.a[rows] = self.lam * np.eye(d)
        self.a_inv[rows] = np.eye(d) / self.lam
        self.b[rows] = self.lam * self.theta0

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """Top-K by upper confidence bound: int64 (B, K)."""
        if len(self.b) != len(obs["features"]):
            self.reset(np.arange(len(obs["features"])), obs)
        x = _with_bias(obs["features"].astype(np.float64))  # (B, N, d)
        theta = np.einsum("bij,bj->bi", self.a_inv, self.b)
        width = np.einsum("bni,bij,bnj->bn", x, self.a_inv, x)
        return top_k(np.einsum("bnd,bd->bn", x, theta) + self.c * np.sqrt(np.maximum(width, 0.0)), self.k)

    def update(self, obs: dict[str, np.ndarray], slate: np.ndarray, feedback: Feedback) -> None:
        """Add the examined slots of each row to its A and b (cascade reading of the slate)."""
        x = _with_bias(np.take_along_axis(obs["features"], slate[:, :, None], axis=1).astype(np.float64))
        seen = _examined(feedback.clicks).astype(np.float64)
        self.a += np.einsum("bk,bki,bkj->bij", seen, x, x)
        self.b += np.einsum("bk,bki->bi", seen * feedback.clicks, x)
        self.a_inv = np.linalg.inv(self.a)


def _with_bias(x: np.ndarray) -> np.ndarray:
    """Append a column of ones: (…, F) → (…, F + 1)."""
    return np.concatenate([x, np.ones((*x.shape[:-1], 1), x.dtype)], axis=-1)


# ---- online blends ---------------------------------------------------------------------------------------------


class OnlineAlphaRanker(BlendRanker):
    """Fixed-α blend over a user vector learnt online within the session (the "dynamic user model").

    Formula: ``score_i = α·cos(u, e_i) + (1 − α)·cf_score_i`` with ``u = obs.user + δ``. After each slate, δ
    takes one stochastic-gradient step on the logistic log-likelihood of the examined slots (cascade reading):
    ``δ ← δ + η·[Σ_click (1 − σ(u·e_j))·e_j − w_skip·Σ_skip σ(u·e_s)·e_s]``. This is online matrix factorisation's
    per-user update (Rendle & Schmidt-Thieme, RecSys 2008) applied to the LLM-space user vector; δ = 0 at the
    start of a session, where the ranker equals ``fixed-alpha:α``.

    Args:
        k: Slate size.
        alpha: α in [0, 1].
        item_emb: float32 (M, D) item embeddings (the catalog's LLM embeddings, public to the service).
        lr: η.
        skip_weight: Weight of a skipped slot relative to a click (skips are weak evidence).
    """

    def __init__(self, k: int, alpha: float, item_emb: np.ndarray, lr: float = 0.3, skip_weight: float = 0.1) -> None:
        super().__init__(k, alpha, name=f"online-alpha:{alpha:g}")
        self.item_emb = item_emb
        self.lr, self.skip_weight = float(lr), float(skip_weight)
        self.delta = np.zeros((0, item_emb.shape[1]), np.float32)

    def reset(self, rows: np.ndarray, obs: dict[str, np.ndarray]) -> None:
        """New sessions in ``rows``: δ = 0."""
        b = len(obs["user"])
        if len(self.delta) != b:
            self.delta = np.zeros((b, self.item_emb.shape[1]), np.float32)
        self.delta[rows] = 0.0

    def _user(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        if len(self.delta) != len(obs["user"]):
            self.reset(np.arange(len(obs["user"])), obs)
        return obs["user"] + self.delta

    def scores(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """``α·cos(u, e_i) + (1 − α)·cf_score_i``: float32 (B, N)."""
        u = self._user(obs)
        emb = obs["item_emb"] if "item_emb" in obs else self.item_emb[obs["candidates"]]  # (B, N, D)
        norm = np.linalg.norm(u, axis=1)
        sim = np.matmul(emb, u[:, :, None])[:, :, 0] / np.where(norm > 0, norm, 1.0)[:, None]
        return self.alpha * sim + (1.0 - self.alpha) * obs["features"][:, :, F_CF]

    def update(self, obs: dict[str, np.ndarray], slate: np.ndarray, feedback: Feedback) -> None:
        """One gradient step of δ on the examined slots."""
        u = self._user(obs)
        e = self.item_emb[np.take_along_axis(obs["candidates"], slate, axis=1)]  # (B, K, D)
        p = expit(np.einsum("bkd,bd->bk", e, u))
        skip = _examined(feedback.clicks) & ~feedback.clicks
        g = feedback.clicks * (1.0 - p) - self.skip_weight * skip * p  # (B, K)
        self.delta += (self.lr * np.einsum("bk,bkd->bd", g, e)).astype(np.float32)


class StrategyAlphaRanker(Ranker):
    """Strategy blend: a per-user weight on the LLM strategy vs the CF strategy, smoothed from feedback.

    Formula: ``score_i = w·z(llm_sim)_i + (1 − w)·z(cf_score)_i`` with ``z`` the z-score over the request's N
    candidates (so w is a share of trust, not a unit conversion). After a click on item j the weight moves by
    the exponential-smoothing rule ``w_new = α·w + (1 − α)·signal``, ``signal = 1`` when the clicked item stood
    out more by LLM similarity than by CF score (``z(llm)_j > z(cf)_j``), else 0; no click leaves w unchanged.
    w = 0.5 at session start. Source: the ``new = α·current + (1 − α)·signal_from_feedback`` update that
    LLM-for-recsys write-ups use to adapt a blend from real-time feedback.

    Args:
        k: Slate size.
        alpha: α in [0, 1] (memory of the smoothing).
        init_weight: w at session start.
    """

    def __init__(self, k: int, alpha: float, init_weight: float = 0.5) -> None:
        super().__init__(k)
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        self.alpha, self.init_weight = float(alpha), float(init_weight)
        self.name = f"strategy-alpha:{alpha:g}"
        self.weight = np.zeros(0)

    def reset(self, rows: np.ndarray, obs: dict[str, np.ndarray]) -> None:
        """New sessions in ``rows``: w back to its start."""
        b = len(obs["features"])
        if len(self.weight) != b:
            self.weight = np.full(b, self.init_weight)
        self.weight[rows] = self.init_weight

    @staticmethod
    def _z(obs: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        f = obs["features"][:, :, [F_LLM, F_CF]].astype(np.float64)  # (B, N, 2)
        z = (f - f.mean(axis=1, keepdims=True)) / np.maximum(f.std(axis=1, keepdims=True), 1e-6)
        return z[:, :, 0], z[:, :, 1]

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """Top-K by the per-user blend of z-scores: int64 (B, K)."""
        if len(self.weight) != len(obs["features"]):
            self.reset(np.arange(len(obs["features"])), obs)
        z_llm, z_cf = self._z(obs)
        w = self.weight[:, None]
        return top_k(w * z_llm + (1.0 - w) * z_cf, self.k)

    def update(self, obs: dict[str, np.ndarray], slate: np.ndarray, feedback: Feedback) -> None:
        """Smooth w toward the strategy that explains each click."""
        clicked = feedback.clicks.any(axis=1)
        pos = np.take_along_axis(slate, feedback.clicks.argmax(axis=1)[:, None], axis=1)  # (B, 1)
        z_llm, z_cf = self._z(obs)
        signal = (np.take_along_axis(z_llm, pos, axis=1) > np.take_along_axis(z_cf, pos, axis=1))[:, 0]
        self.weight = np.where(clicked, self.alpha * self.weight + (1.0 - self.alpha) * signal, self.weight)


# ---- tuned α -------------------------------------------------------------------------------------------------


@dataclass
class AlphaCurve:
    """Return per session of the fixed-α blend over a grid of α, on one population.

    Attributes:
        alphas: The grid.
        mean_return: Mean return per α.
        ci95: 95% bootstrap interval per α.
        best_alpha: The α of the highest mean return (the first on ties).
        episodes: Sessions per α (the same sessions for every α).
        population: Where it was measured (training users).
        seed: Seed of the sessions.
    """

    alphas: list[float]
    mean_return: list[float]
    ci95: list[list[float]]
    best_alpha: float
    episodes: int
    population: str
    seed: int

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON."""
        return dataclasses.asdict(self)


def tune_alpha(world: World, env_cfg: EnvConfig, alphas: tuple[float, ...] = ALPHA_GRID, episodes: int = 400,
               seed: int = _TUNE_SEED, batch: int = 256, population: str = "train",
               encoder: EncoderConfig | None = None, progress: bool = False) -> AlphaCurve:
    """Grid-search α of the fixed blend on ``population`` (the training users, never the held-out ones).

    Every α meets the same sessions (common random numbers), so the curve's differences are paired.

    Args:
        world: The world.
        env_cfg: Env config.
        alphas: The grid.
        episodes: Sessions per α.
        seed: Seed of the sessions.
        batch: Users simulated at once.
        population: Population to tune on.
        encoder: Encoder config (text observation mode only).
        progress: Show a progress bar.

    Returns:
        The curve; ``best_alpha`` is its argmax.
    """
    if not alphas:
        raise ValueError("the α grid is empty")
    core = make_core(env_cfg, env_cfg.preset, encoder, world, population, min(batch, episodes))
    plan = episode_plan(episodes, [seed], world.populations[population].size)
    boot = Bootstrap(len(plan), 1000, seed)
    returns = [run_episodes(core, BlendRanker(env_cfg.slate_size, a), plan, progress=progress,
                            desc=f"tuning α={a:g}").ret for a in alphas]
    means = [float(r.mean()) for r in returns]
    return AlphaCurve(alphas=[float(a) for a in alphas], mean_return=means,
                      ci95=[list(percentile_ci(boot.means(r))) for r in returns],
                      best_alpha=float(alphas[int(np.argmax(means))]), episodes=episodes, population=population,
                      seed=seed)


class TunedAlphaRanker(BlendRanker):
    """``fixed-alpha`` at the α that maximised return on the training users (grid search, :func:`tune_alpha`).

    Formula: ``score_i = α*·llm_sim_i + (1 − α*)·cf_score_i``, ``α* = argmax_α mean return(α)`` over
    :data:`ALPHA_GRID` on the training population, so that learned policies are compared with the best fixed α,
    not an arbitrary one.

    Args:
        k: Slate size.
        curve: The grid search's result.
    """

    def __init__(self, k: int, curve: AlphaCurve) -> None:
        super().__init__(k, curve.best_alpha, name="tuned-alpha")
        self.curve = curve


# ---- tuned diversity heuristic and the non-myopic upper reference --------------------------------------------

#: The axes of ``tuned-diverse``'s search (parameters of :class:`DiverseRanker`; caps above K mean no cap).
DIVERSE_GRID: dict[str, tuple[float, ...]] = {
    "alpha": ALPHA_GRID,
    "cap": (1, 2, 3, 5),
    "exposure_weight": (0.0, 0.5, 1.0, 2.0, 3.0, 5.0, 8.0),
    "seen_weight": (0.0, 0.25, 0.5, 1.0, 2.0),
}
#: :class:`DiverseRanker`'s hand-set defaults, the start of ``tuned-diverse``'s search (α: tuned-alpha's value).
DIVERSE_DEFAULTS: dict[str, float] = {"cap": 2, "exposure_weight": 3.0, "seen_weight": 0.5}
#: The axes of ``tuned-oracle-diverse``'s search; its start is the myopic oracle (no penalty, no cap).
ORACLE_DIVERSE_GRID: dict[str, tuple[float, ...]] = {
    "cap": (1, 2, 3, 5, 1000),
    "exposure_weight": (0.0, 0.25, 0.5, 1.0, 2.0, 4.0),
}
#: Grids with at most this many points are searched exhaustively; larger ones by coordinate ascent.
EXHAUSTIVE_MAX = 64


@dataclass
class ParamSearch:
    """A search over a grid of ranker parameters on one population (common random numbers for every point).

    Attributes:
        kind: What was tuned (``"diverse"``, ``"oracle-diverse"``).
        axes: Grid values per parameter, in search order.
        method: ``"exhaustive"`` (every grid point) or ``"coordinate"`` (coordinate ascent from ``start``).
        start: The point the search started from (a coordinate search never ends below it).
        start_mean: Its mean return.
        best: The point of the highest mean return among those evaluated (on ties, the one reached first).
        best_mean: Its mean return.
        best_ci95: 95% bootstrap interval of its mean.
        points: Every evaluated point, in evaluation order.
        means: Mean return of each point.
        episodes: Sessions per point (the same sessions for every point).
        population: Where it was measured (training users).
        seed: Seed of the sessions.
    """

    kind: str
    axes: dict[str, list[float]]
    method: str
    start: dict[str, float]
    start_mean: float
    best: dict[str, float]
    best_mean: float
    best_ci95: list[float]
    points: list[dict[str, float]]
    means: list[float]
    episodes: int
    population: str
    seed: int

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ParamSearch:
        """The inverse of :meth:`to_dict` (for the JSON cache).

        Raises:
            ValueError: If keys are missing or unknown.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        if set(data) != names:
            raise ValueError(f"a parameter search needs the keys {sorted(names)}, got {sorted(data)}")
        return cls(**data)


def coordinate_search(evaluate: Callable[[dict[str, float]], np.ndarray], axes: dict[str, tuple[float, ...]],
                      start: dict[str, float], select: np.ndarray | None = None, exhaustive_max: int = EXHAUSTIVE_MAX,
                      max_rounds: int = 4,
                      memo: dict[tuple[float, ...], np.ndarray] | None = None
                      ) -> tuple[dict[str, float], list[tuple[dict[str, float], float]]]:
    """Maximise the mean of ``evaluate(point)`` over a grid: every point when the grid is small, else coordinate
    ascent (sweep one axis at a time with the others fixed; move only on a strict gain; stop after a round
    without a move or after ``max_rounds``).

    Either way the returned point has the highest mean of all evaluated points (coordinate ascent moves to the
    best point of each sweep, and the current point only gets better), and it is never below ``start``.

    Args:
        evaluate: Point → per-episode returns (E,) on fixed sessions (common random numbers across points).
        axes: Grid values per parameter, in sweep order.
        start: Starting point; every value must be on its axis.
        select: bool (E,) episodes that count (e.g. one ρ group; default all).
        exhaustive_max: Grids of at most this many points are searched exhaustively.
        max_rounds: Rounds of coordinate ascent at most.
        memo: Shared cache point → returns (lets several searches over the same sessions share evaluations).

    Returns:
        ``(best point, [(point, mean) for every point evaluated by this search, in order])``.

    Raises:
        ValueError: For an empty axis, or a start value that is not on its axis.
    """
    names = list(axes)
    for name in names:
        if not axes[name]:
            raise ValueError(f"the grid axis {name!r} is empty")
        if name not in start or start[name] not in axes[name]:
            raise ValueError(f"the start value of {name!r} ({start.get(name)!r}) is not on its axis {axes[name]}")
    memo = {} if memo is None else memo
    seen: dict[tuple[float, ...], float] = {}

    def mean_of(point: dict[str, float]) -> float:
        key = tuple(point[n] for n in names)
        if key not in seen:
            if key not in memo:
                memo[key] = np.asarray(evaluate(dict(point)), dtype=np.float64)
            ret = memo[key]
            seen[key] = float(ret.mean() if select is None else ret[select].mean())
        return seen[key]

    best = dict(start)
    best_mean = mean_of(best)
    if int(np.prod([len(axes[n]) for n in names])) <= exhaustive_max:
        for values in itertools.product(*(axes[n] for n in names)):
            point = dict(zip(names, values, strict=True))
            if mean_of(point) > best_mean:
                best, best_mean = point, mean_of(point)
    else:
        for _ in range(max_rounds):
            moved = False
            for name in names:
                for value in axes[name]:
                    point = {**best, name: value}
                    if mean_of(point) > best_mean:
                        best, best_mean, moved = point, mean_of(point), True
            if not moved:
                break
    evaluated = [(dict(zip(names, key, strict=True)), m) for key, m in seen.items()]
    return best, evaluated


def _search_cache_path(cache_dir: str | Path, kind: str, world: World, env_cfg: EnvConfig,
                       spec: dict[str, Any]) -> Path:
    """The cache file of one search: keyed by the world (its config key) and everything the search depends on."""
    world_id = world.meta.get("config_key") or world_key(env_cfg, world.encoder_name)
    key = {"kind": kind, "world": world_id, "preset_dir": env_cfg.preset_dir, "obs_mode": env_cfg.obs_mode,
           "env": {k: getattr(env_cfg, k) for k in ("n_candidates", "slate_size", "max_steps")},
           "user_model": to_dict(env_cfg.user_model), "reward": to_dict(env_cfg.reward), **spec}
    digest = hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return Path(cache_dir) / f"{kind}-{digest}.json"


def _search(kind: str, factory: Callable[[BatchedCore, dict[str, float]], Ranker], world: World,
            env_cfg: EnvConfig, axes: dict[str, tuple[float, ...]], start: dict[str, float], episodes: int,
            seed: int, batch: int, population: str, encoder: EncoderConfig | None, progress: bool,
            cache_dir: str | Path | None) -> ParamSearch:
    """Run (or load from ``cache_dir``) one :func:`coordinate_search` of ``factory``'s rankers on ``population``."""
    axes = {n: tuple(sorted(set(v) | {start[n]})) for n, v in axes.items()}  # the start is always on the grid
    spec = {"axes": {n: list(v) for n, v in axes.items()}, "start": start, "episodes": episodes, "seed": seed,
            "population": population}
    path = _search_cache_path(cache_dir, kind, world, env_cfg, spec) if cache_dir is not None else None
    if path is not None and path.is_file():
        try:
            return ParamSearch.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except (ValueError, TypeError, json.JSONDecodeError):
            pass  # a corrupt cache entry: search again and overwrite it
    core = make_core(env_cfg, env_cfg.preset, encoder, world, population, min(batch, episodes))
    plan = episode_plan(episodes, [seed], world.populations[population].size)
    memo: dict[tuple[float, ...], np.ndarray] = {}

    def evaluate(point: dict[str, float]) -> np.ndarray:
        return run_episodes(core, factory(core, point), plan, progress=progress, desc=f"tuning {kind} {point}").ret

    best, evaluated = coordinate_search(evaluate, axes, start, memo=memo)
    names = list(axes)
    exhaustive = int(np.prod([len(v) for v in axes.values()])) <= EXHAUSTIVE_MAX
    best_ret = memo[tuple(best[n] for n in names)]
    result = ParamSearch(
        kind=kind, axes={n: [float(x) for x in v] for n, v in axes.items()},
        method="exhaustive" if exhaustive else "coordinate", start={n: float(v) for n, v in start.items()},
        start_mean=float(memo[tuple(start[n] for n in names)].mean()), best={n: float(v) for n, v in best.items()},
        best_mean=float(best_ret.mean()),
        best_ci95=list(percentile_ci(Bootstrap(len(plan), 1000, seed).means(best_ret))),
        points=[{n: float(v) for n, v in p.items()} for p, _ in evaluated], means=[m for _, m in evaluated],
        episodes=episodes, population=population, seed=seed)
    if path is not None:
        atomic_write_text(path, json.dumps(result.to_dict(), indent=1))
    return result


def diverse_ranker(k: int, category: np.ndarray, point: dict[str, float], name: str | None = None) -> DiverseRanker:
    """The :class:`DiverseRanker` of one grid point ``{alpha, cap, exposure_weight, seen_weight}``."""
    return DiverseRanker(k, float(point["alpha"]), category, exposure_weight=float(point["exposure_weight"]),
                         seen_weight=float(point["seen_weight"]), cap=int(point["cap"]), name=name)


def tune_diverse(world: World, env_cfg: EnvConfig, alpha: float, grid: dict[str, tuple[float, ...]] | None = None,
                 episodes: int = 400, seed: int = _TUNE_SEED, batch: int = 256, population: str = "train",
                 encoder: EncoderConfig | None = None, progress: bool = False,
                 cache_dir: str | Path | None = None) -> ParamSearch:
    """Tune the diversity heuristic's α, category cap, exposure and seen weights on ``population`` (training users).

    The protocol of :func:`tune_alpha`: every grid point meets the same sessions (common random numbers). The
    search starts at ``diverse:<alpha>`` with the hand-set defaults (:data:`DIVERSE_DEFAULTS`), so on these
    sessions the result is never worse than that; grids of at most :data:`EXHAUSTIVE_MAX` points are searched
    exhaustively, larger ones by coordinate ascent (:func:`coordinate_search`: about 30–60 points for
    :data:`DIVERSE_GRID`).

    Args:
        world: The world.
        env_cfg: Env config.
        alpha: Start α (tuned-alpha's value); added to the α axis if missing.
        grid: Axes ``alpha, cap, exposure_weight, seen_weight`` (default :data:`DIVERSE_GRID`).
        episodes: Sessions per point.
        seed: Seed of the sessions.
        batch: Users simulated at once.
        population: Population to tune on.
        encoder: Encoder config (text observation mode only).
        progress: Show progress bars.
        cache_dir: Folder of a JSON cache of results, keyed by the world and the search's settings (``None``:
            no cache; :func:`tuning_cache_dir` is the usual place).

    Returns:
        The search; ``best`` holds the tuned parameters.

    Raises:
        ValueError: For a grid with missing or unknown axes, or an empty axis.
    """
    grid = dict(DIVERSE_GRID if grid is None else grid)
    if set(grid) != set(DIVERSE_GRID):
        raise ValueError(f"the diverse grid needs the axes {sorted(DIVERSE_GRID)}, got {sorted(grid)}")
    k = env_cfg.slate_size
    grid["cap"] = tuple(sorted({min(int(c), k) for c in grid["cap"]}))  # caps above K all mean "no cap"
    start = {"alpha": float(alpha), **DIVERSE_DEFAULTS}
    start["cap"] = min(int(start["cap"]), k)
    category = world.catalog.category
    return _search("diverse", lambda core, p: diverse_ranker(k, category, p), world, env_cfg, grid, start, episodes,
                   seed, batch, population, encoder, progress, cache_dir)


class TunedDiverseRanker(DiverseRanker):
    """``diverse`` at the parameters that maximised return on the training users (:func:`tune_diverse`).

    Formula: :class:`DiverseRanker`'s, with ``(α, cap, λ_c, λ_s) = argmax mean return`` of the search over
    :data:`DIVERSE_GRID` on the training population: the best hand-written ranker, tuned by the protocol of
    ``tuned-alpha`` (the reference of the quality bar).

    Args:
        k: Slate size.
        category: int (M,) item categories.
        search: The search's result.
    """

    def __init__(self, k: int, category: np.ndarray, search: ParamSearch) -> None:
        p = search.best
        super().__init__(k, p["alpha"], category, exposure_weight=p["exposure_weight"],
                         seen_weight=p["seen_weight"], cap=int(p["cap"]), name="tuned-diverse")
        self.search = search


class OracleDiverseRanker(DiverseRanker):
    """Fatigue-aware oracle: true utilities re-ranked like the diversity heuristic. Reads HIDDEN state.

    Formula: ``score_i = z(U_i) − λ_c·cat_exposure_i``, ``U_i`` the simulator's true utility of candidate i now
    (``BatchedCore.candidate_utility``: taste, quality, price, current fatigue and repeat penalty), ``z`` over the
    request's candidates; then greedy selection with at most ``cap`` items per category, as in
    :class:`DiverseRanker`. The cap and λ_c look ahead: the myopic oracle (``cap`` ≥ K, λ_c = 0) piles a slate
    into the user's favourite category, whose fatigue then costs every later request; spreading the slate keeps
    the session alive. It reads the true utility (hidden tastes, ρ_u, price sensitivity, fatigue), not the
    future random draws.

    Args:
        k: Slate size.
        core: The core whose current request is ranked.
        exposure_weight: λ_c.
        cap: Most slots one category may take.
        name: Display name.
    """

    reads_hidden_state = True

    def __init__(self, k: int, core: BatchedCore, exposure_weight: float = 0.0, cap: int = 1000,
                 name: str | None = None) -> None:
        super().__init__(k, 1.0, core.world.catalog.category, exposure_weight=exposure_weight, seen_weight=0.0,
                         cap=cap, name=name or f"oracle-diverse(cap={cap}, λ_c={exposure_weight:g})")
        self.core = core

    def scores(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """True utility of each candidate: float32 (B, N).

        Raises:
            ValueError: If ``obs`` is not the core's current observation.
        """
        if obs["candidates"].shape != self.core.cands.shape or not np.array_equal(obs["candidates"], self.core.cands):
            raise ValueError("the oracle can only rank the current request of the core it reads")
        return self.core.candidate_utility()


def oracle_diverse_ranker(k: int, core: BatchedCore, point: dict[str, float],
                          name: str | None = None) -> OracleDiverseRanker:
    """The :class:`OracleDiverseRanker` of one grid point ``{cap, exposure_weight}`` reading ``core``."""
    return OracleDiverseRanker(k, core, exposure_weight=float(point["exposure_weight"]), cap=int(point["cap"]),
                               name=name)


def tune_oracle_diverse(world: World, env_cfg: EnvConfig, grid: dict[str, tuple[float, ...]] | None = None,
                        episodes: int = 400, seed: int = _TUNE_SEED, batch: int = 256, population: str = "train",
                        encoder: EncoderConfig | None = None, progress: bool = False,
                        cache_dir: str | Path | None = None) -> ParamSearch:
    """Tune :class:`OracleDiverseRanker`'s cap and λ_c on ``population`` (training users), like :func:`tune_diverse`.

    The search starts at the myopic oracle (λ_c = 0, no cap), so on these sessions the result is never below it.

    Args:
        world: The world.
        env_cfg: Env config.
        grid: Axes ``cap, exposure_weight`` (default :data:`ORACLE_DIVERSE_GRID`).
        episodes: Sessions per point.
        seed: Seed of the sessions.
        batch: Users simulated at once.
        population: Population to tune on.
        encoder: Encoder config (text observation mode only).
        progress: Show progress bars.
        cache_dir: JSON cache folder (see :func:`tune_diverse`).

    Returns:
        The search; ``best`` holds the tuned parameters.

    Raises:
        ValueError: For a grid with missing or unknown axes, or an empty axis.
    """
    grid = dict(ORACLE_DIVERSE_GRID if grid is None else grid)
    if set(grid) != set(ORACLE_DIVERSE_GRID):
        raise ValueError(f"the oracle-diverse grid needs the axes {sorted(ORACLE_DIVERSE_GRID)}, got {sorted(grid)}")
    k = env_cfg.slate_size
    grid["cap"] = tuple(sorted({min(int(c), k) for c in grid["cap"]}))
    start = {"cap": k, "exposure_weight": 0.0}
    return _search("oracle-diverse", lambda core, p: oracle_diverse_ranker(k, core, p), world, env_cfg, grid, start,
                   episodes, seed, batch, population, encoder, progress, cache_dir)


class TunedOracleDiverseRanker(OracleDiverseRanker):
    """:class:`OracleDiverseRanker` at the cap and λ_c that maximised return on the training users
    (:func:`tune_oracle_diverse`): the non-myopic upper reference. Reads HIDDEN state.

    Args:
        k: Slate size.
        core: The core whose current request is ranked (the evaluation's core).
        search: The search's result.
    """

    def __init__(self, k: int, core: BatchedCore, search: ParamSearch) -> None:
        super().__init__(k, core, exposure_weight=search.best["exposure_weight"], cap=int(search.best["cap"]),
                         name="tuned-oracle-diverse")
        self.search = search


def tuning_cache_dir(env_cfg: EnvConfig, encoder: EncoderConfig | None = None) -> Path:
    """Where tuning results are cached by default: ``<world cache folder>/tuning``."""
    return default_world_dir(env_cfg, encoder or EncoderConfig()) / "tuning"


# ---- the registry ----------------------------------------------------------------------------------------------


@dataclass
class RankerContext:
    """What the factory needs to build any ranker.

    Attributes:
        world: The world.
        env_cfg: Env config (K, N, logging settings).
        core: The evaluation core (the oracles read its hidden state); required for ``oracle`` and
            ``tuned-oracle-diverse``.
        seed: Seed of the rankers' own randomness; training-side seeds are derived from it.
        train_population: Population that tuning and fitting use.
        alphas: tuned-alpha's grid.
        tune_episodes: Sessions per grid point for tuned-alpha, tuned-diverse and tuned-oracle-diverse.
        fit_sessions: Logged sessions for ``scored`` and ``linucb``.
        batch: Users simulated at once while tuning and fitting.
        encoder: Encoder config (text observation mode only).
        device: Torch device for ``run:DIR``.
        progress: Show progress bars while tuning and fitting.
        diverse_grid: tuned-diverse's axes (``None``: :data:`DIVERSE_GRID`).
        oracle_grid: tuned-oracle-diverse's axes (``None``: :data:`ORACLE_DIVERSE_GRID`).
        cache_dir: JSON cache of the tuned-diverse and tuned-oracle-diverse searches (``None``: none; see
            :func:`tuning_cache_dir`).
    """

    world: World
    env_cfg: EnvConfig
    core: BatchedCore | None = None
    seed: int = 0
    train_population: str = "train"
    alphas: tuple[float, ...] = ALPHA_GRID
    tune_episodes: int = 400
    fit_sessions: int = 600
    batch: int = 256
    encoder: EncoderConfig | None = None
    device: str = "auto"
    progress: bool = False
    diverse_grid: dict[str, tuple[float, ...]] | None = None
    oracle_grid: dict[str, tuple[float, ...]] | None = None
    cache_dir: str | None = None
    _impressions: Impressions | None = field(default=None, repr=False)
    _alpha_curve: AlphaCurve | None = field(default=None, repr=False)
    _diverse: ParamSearch | None = field(default=None, repr=False)
    _oracle_diverse: ParamSearch | None = field(default=None, repr=False)

    def impressions(self) -> Impressions:
        """Logged impressions on the training users (collected once, shared by ``scored`` and ``linucb``)."""
        if self._impressions is None:
            self._impressions = collect_impressions(self.world, self.env_cfg, self.fit_sessions,
                                                    self.seed + _FIT_SEED, self.batch, self.train_population,
                                                    self.encoder, self.progress)
        return self._impressions

    def alpha_curve(self) -> AlphaCurve:
        """tuned-alpha's grid search on the training users (run once, shared by tuned-alpha and tuned-diverse)."""
        if self._alpha_curve is None:
            self._alpha_curve = tune_alpha(self.world, self.env_cfg, self.alphas, self.tune_episodes,
                                           self.seed + _TUNE_SEED, self.batch, self.train_population, self.encoder,
                                           self.progress)
        return self._alpha_curve

    def diverse_search(self) -> ParamSearch:
        """tuned-diverse's search on the training users, from ``diverse:<tuned-alpha's α>`` (run once)."""
        if self._diverse is None:
            self._diverse = tune_diverse(self.world, self.env_cfg, self.alpha_curve().best_alpha, self.diverse_grid,
                                         self.tune_episodes, self.seed + _TUNE_SEED, self.batch,
                                         self.train_population, self.encoder, self.progress, self.cache_dir)
        return self._diverse

    def oracle_diverse_search(self) -> ParamSearch:
        """tuned-oracle-diverse's search on the training users (run once)."""
        if self._oracle_diverse is None:
            self._oracle_diverse = tune_oracle_diverse(self.world, self.env_cfg, self.oracle_grid, self.tune_episodes,
                                                       self.seed + _TUNE_SEED, self.batch, self.train_population,
                                                       self.encoder, self.progress, self.cache_dir)
        return self._oracle_diverse


def make_ranker(spec: str, ctx: RankerContext) -> Ranker:
    """Build the ranker named by ``spec`` (see :data:`SPECS`).

    Args:
        spec: e.g. ``"random"``, ``"fixed-alpha:0.5"``, ``"linucb:0.2"``, ``"run:runs/ppo-1"``.
        ctx: World, config, evaluation core and seeds.

    Returns:
        The ranker, its ``name`` set to the spec.

    Raises:
        ValueError: For an unknown or malformed spec (listing the valid choices), or an oracle without a core.
        FileNotFoundError: For ``run:DIR`` when DIR does not exist.
        ImportError: For ``run:DIR`` when the PPO ranker module (``agents/ppo_ranker.py``) is not available.
    """
    name, arg = parse_spec(spec)
    k = ctx.env_cfg.slate_size
    ranker: Ranker
    if name == "random":
        ranker = RandomRanker(k, ctx.seed)
    elif name == "popular":
        ranker = PopularRanker(k)
    elif name == "greedy-llm":
        ranker = BlendRanker(k, 1.0, name="greedy-llm")
    elif name == "greedy-cf":
        ranker = BlendRanker(k, 0.0, name="greedy-cf")
    elif name == "fixed-alpha":
        ranker = BlendRanker(k, float(arg))
    elif name == "scored":
        ranker = ScoredRanker.fit(ctx.impressions(), k)
    elif name == "tuned-alpha":
        ranker = TunedAlphaRanker(k, ctx.alpha_curve())
    elif name == "diverse":
        ranker = DiverseRanker(k, float(arg), ctx.world.catalog.category)
    elif name == "tuned-diverse":
        ranker = TunedDiverseRanker(k, ctx.world.catalog.category, ctx.diverse_search())
    elif name == "online-alpha":
        ranker = OnlineAlphaRanker(k, float(arg), ctx.world.item_emb)
    elif name == "strategy-alpha":
        ranker = StrategyAlphaRanker(k, float(arg))
    elif name == "linucb":
        ranker = LinUCBRanker.fit(ctx.impressions(), k, exploration=float(arg) if arg else 0.1)
    elif name in ("oracle", "tuned-oracle-diverse"):
        if ctx.core is None:
            raise ValueError(f"{name} reads the evaluation core's hidden state: give RankerContext a core")
        if name == "oracle":
            ranker = OracleRanker(k, ctx.core)
        else:
            ranker = TunedOracleDiverseRanker(k, ctx.core, ctx.oracle_diverse_search())
    else:  # run:DIR (parse_spec admits nothing else)
        ranker = load_run(str(arg), ctx.device, n_items=ctx.world.n_items)
    ranker.name = spec
    return ranker


def load_run(run_dir: str, device: str = "auto", n_items: int | None = None) -> Ranker:
    """The ranker of a PPO run directory, through ``agents.ppo_ranker.load_run_ranker`` (imported lazily).

    ``n_items``: the evaluation world's catalog size; a policy trained on another catalog is an error.

    Raises:
        FileNotFoundError: If ``run_dir`` does not exist.
        ImportError: If ``agents/ppo_ranker.py`` is not available.
    """
    if not Path(run_dir).is_dir():
        raise FileNotFoundError(f"run directory {run_dir!r} does not exist")
    try:
        from agents.ppo_ranker import load_run_ranker
    except ModuleNotFoundError as exc:
        if exc.name != "agents.ppo_ranker":
            raise
        raise ImportError(f"cannot load run {run_dir!r}: agents/ppo_ranker.py (the PPO ranker) is not available "
                          "in this checkout") from exc
    return load_run_ranker(run_dir, device=device, n_items=n_items)
