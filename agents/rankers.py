"""The baseline rankers: every ranker class of the comparison, each docstring stating its scoring rule and source.

Every ranker implements :class:`agents.base.Ranker` (``act(obs) -> slate (B, K)``, vectorised over B rows).
Simple ones (random, popular, the α blend, the diversity heuristic), fitted on logged impressions (scored,
LinUCB; :mod:`agents.fitting`), online within a session (online-α, strategy-α), tuned on the training users
(:mod:`agents.tuning` finds their parameters) and the oracles, which read the simulator's hidden state. Specs
such as ``fixed-alpha:0.5`` become rankers in :mod:`agents.registry`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from scipy.special import expit

from agents.base import Feedback, Ranker
from agents.fitting import Impressions, examined_slots, fit_logistic
from envs.core import BatchedCore
from envs.spaces import C_CLICKED_CF, C_CLICKED_LLM, F_CAT_EXPOSURE, F_CF, F_ITEM_SEEN, F_LLM, F_POP, FEATURE_NAMES
from envs.topk import top_k

if TYPE_CHECKING:
    from agents.tuning import AlphaCurve, ParamSearch


def check_current_request(obs: dict[str, np.ndarray], core: BatchedCore) -> None:
    """Check that ``obs`` is ``core``'s current observation (the oracles read the core's hidden state of it).

    Raises:
        ValueError: If ``obs``'s candidates are not the core's current ones.
    """
    if obs["candidates"].shape != core.cands.shape or not np.array_equal(obs["candidates"], core.cands):
        raise ValueError("the oracle can only rank the current request of the core it reads")


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


def z_rows(x: np.ndarray) -> np.ndarray:
    """The diversity heuristic's ``z``: each row of ``x`` float (B, N) minus its mean, over its std + 1e-9 (a
    constant row becomes 0): float64 (B, N)."""
    x = np.asarray(x, dtype=np.float64)
    return (x - x.mean(axis=1, keepdims=True)) / (x.std(axis=1, keepdims=True) + 1e-9)


def z_feature(obs: dict[str, np.ndarray], col: int) -> np.ndarray:
    """float64 (B, N): the observed feature column ``col`` (``envs.spaces.FEATURE_NAMES``) standardised over each
    request's candidates (:func:`z_rows`)."""
    return z_rows(obs["features"][:, :, col])


#: How close to 0 or 1 the raw α of the feedback-adaptive blend may be (its logit must be finite).
LEAN_ALPHA_CLIP = 0.02


def lean_alpha(alpha: float, sd_llm: np.ndarray, sd_cf: np.ndarray, lean: np.ndarray, weight: float) -> np.ndarray:
    """The feedback-adaptive blend weight of :class:`DiverseRanker` (and of the policy's ``gate_lean``).

    ``α_t = σ(logit α + log sd_llm − log sd_cf + w·lean)``: the share of the *standardised* LLM signal. At ``w = 0``
    it is the share the raw α gives it (``z(α·llm + (1 − α)·cf) = z(α_t·z(llm) + (1 − α_t)·z(cf))``); ``lean`` is
    how far the user's clicks lean to the LLM signal rather than the CF score (:func:`click_lean`). ``α`` is
    clipped into [0.02, 0.98] so that its logit is finite (the clip of a policy's ``init_alpha``, so that a policy
    on this heuristic starts at its slates).

    Args:
        alpha: The raw α.
        sd_llm: float (B,) the LLM similarity's spread over each request's candidates (> 0).
        sd_cf: float (B,) the CF score's.
        lean: float (B,) :func:`click_lean`.
        weight: w.

    Returns:
        float64 (B,) in (0, 1).
    """
    a = min(max(float(alpha), LEAN_ALPHA_CLIP), 1.0 - LEAN_ALPHA_CLIP)
    return expit(np.log(a / (1.0 - a)) + np.log(sd_llm) - np.log(sd_cf) + weight * lean)


def click_lean(context: np.ndarray, sd_llm: np.ndarray, sd_cf: np.ndarray) -> np.ndarray:
    """How far the session's clicks lean to the LLM signal rather than the CF score, in units of each signal's spread:
    ``clicked_llm_ema / sd_llm − clicked_cf_ema / sd_cf`` (float64 (B,); the EMAs are the clicked item's signal
    minus its slate's mean, ``envs/spaces.py``)."""
    return context[:, C_CLICKED_LLM] / sd_llm - context[:, C_CLICKED_CF] / sd_cf


class DiverseRanker(BlendRanker):
    """A diversity-aware heuristic on top of the fixed α blend (MMR-style re-ranking with a category cap), with an
    optional feedback-adaptive α.

    Formula: ``score_i = z(α·llm_sim_i + (1 − α)·cf_score_i) − λ_c·cat_exposure_i − λ_s·item_seen_i``, where ``z``
    standardises the blend over the request's candidates (so the penalties are in units of its spread), then greedy
    selection that skips a candidate once its category already fills ``cap`` slots of the slate (unless nothing
    else is left). Source: maximal marginal relevance (Carbonell & Goldstein, SIGIR 1998) and the category
    caps of production feeds; here it answers fatigue, which a myopic blend ignores.

    With ``lean_weight`` w ≠ 0 the blend follows the session's clicks: ``z(α_t·z(llm_sim) + (1 − α_t)·z(cf_score))``
    with ``α_t`` of :func:`lean_alpha` (the LLM signal's share grows by w logit units per spread-unit that the
    clicks lean to it); at w = 0 this is the fixed blend above. The rule an engineer would write for users whose
    clicks show which signal serves them.

    Args:
        k: Slate size.
        alpha: α in [0, 1].
        category: int (M,) category of every catalog item (the env's catalog; observable item metadata).
        exposure_weight: λ_c.
        seen_weight: λ_s.
        cap: Most slots one category may take.
        name: Display name.
        lean_weight: w of the feedback-adaptive α (0: the fixed blend).
    """

    def __init__(self, k: int, alpha: float, category: np.ndarray, exposure_weight: float = 3.0,
                 seen_weight: float = 0.5, cap: int = 2, name: str | None = None, lean_weight: float = 0.0) -> None:
        super().__init__(k, alpha, name=name or f"diverse:{alpha:g}")
        self.category = np.asarray(category, dtype=np.int64)
        self.n_categories = int(self.category.max()) + 1
        self.exposure_weight, self.seen_weight, self.cap = exposure_weight, seen_weight, cap
        self.lean_weight = float(lean_weight)

    def blend(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """The blend before its standardisation: float64 (B, N) (the raw ``α·llm + (1 − α)·cf`` at w = 0, else
        ``α_t·z(llm) + (1 − α_t)·z(cf)``)."""
        if self.lean_weight == 0.0:
            return self.scores(obs).astype(np.float64)
        f = obs["features"]
        llm, cf = f[:, :, F_LLM].astype(np.float64), f[:, :, F_CF].astype(np.float64)
        sd_llm, sd_cf = llm.std(axis=1) + 1e-9, cf.std(axis=1) + 1e-9  # (B,)
        a = lean_alpha(self.alpha, sd_llm, sd_cf, click_lean(obs["context"], sd_llm, sd_cf), self.lean_weight)
        z_llm = (llm - llm.mean(axis=1, keepdims=True)) / sd_llm[:, None]
        z_cf = (cf - cf.mean(axis=1, keepdims=True)) / sd_cf[:, None]
        return a[:, None] * z_llm + (1.0 - a[:, None]) * z_cf

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """Greedy top-K under the category cap: int64 (B, K)."""
        return self.greedy(self.penalised(obs), self.category[obs["candidates"]])

    def penalised(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """The score before the cap, ``z(blend) − λ_c·cat_exposure − λ_s·item_seen``: float64 (B, N)."""
        f = obs["features"]
        return (z_rows(self.blend(obs)) - self.exposure_weight * f[:, :, F_CAT_EXPOSURE]
                - self.seen_weight * f[:, :, F_ITEM_SEEN])

    def greedy(self, score: np.ndarray, cats: np.ndarray, cap: int | np.ndarray | None = None,
               soft: float = float("inf")) -> np.ndarray:
        """Greedy top-K of ``score`` under a category cap: int64 (B, K).

        Args:
            score: float64 (B, N); overwritten (picked candidates become -inf).
            cats: int64 (B, N) each candidate's category.
            cap: Most slots per category: one value, or int (B, N) the cap of each candidate's category
                (``None``: ``self.cap``).
            soft: ``inf``: a candidate whose category is full is taken only if nothing else is left; finite μ: it
                loses ``μ·(count − cap + 1)`` instead (``bench.cap_probe``'s soft cap).
        """
        cap = self.cap if cap is None else cap
        b = score.shape[0]
        rows = np.arange(b)
        counts = np.zeros((b, self.n_categories), np.int64)
        slate = np.empty((b, self.k), np.int64)
        for j in range(self.k):
            over = np.take_along_axis(counts, cats, axis=1) - cap + 1  # > 0: the category is full
            penalty = 1e6 if not np.isfinite(soft) else soft * over  # capped ones only if nothing else (hard)
            pick = np.argmax(np.where(over > 0, score - penalty, score), axis=1)
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
        check_current_request(obs, self.core)
        return top_k(self.core.true_click_probs(), self.k)



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
        seen = examined_slots(feedback.clicks).astype(np.float64)
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
        skip = examined_slots(feedback.clicks) & ~feedback.clicks
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


# ---- tuned on the training users (agents.tuning) and the non-myopic upper reference -------------------------


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
                         seen_weight=p["seen_weight"], cap=int(p["cap"]), name="tuned-diverse",
                         lean_weight=p.get("lean_weight", 0.0))
        self.search = search


def shown_discount(k: int) -> np.ndarray:
    """float64 (K,): DCG's examination discount ``1/log2(2 + rank)``, normalised to sum 1 (a service's own prior
    on which slots a user looks at; the simulator's hidden position weights are not read)."""
    w = 1.0 / np.log2(2.0 + np.arange(k))
    return w / w.sum()


class SessionClicks:
    """What a service knows of this session's clicks, item by item: per row, the sum ``c`` of the embeddings of the
    items clicked since the session started.

    ``similarity(obs)`` is each candidate's cosine with ``c`` (0 on rows without a click yet): the observation's
    ``session_sim`` (``env.obs_session_sim``), computed from the catalog's embeddings.

    With ``shown_weight`` λ > 0 every slate shown is subtracted too: ``c = Σ_t (e_clicked,t − λ·ē_t)``, ``ē_t`` the
    slate's embeddings averaged by :func:`shown_discount`. At λ equal to the click rate per slate this is the
    gradient of a multinomial-logit choice model's log-likelihood in the taste at a prior that finds every shown
    item alike: the choices' whole evidence about the taste direction, skips included (what the user chose *over*,
    not only what was chosen), not just the clicked items' sum (session 38).

    Args:
        item_emb: float (M, D) item embeddings (the catalog's, public to the service).
        shown_weight: λ, the weight of each shown slate's discounted mean (0: the clicked items alone).
    """

    def __init__(self, item_emb: np.ndarray, shown_weight: float = 0.0) -> None:
        if not np.isfinite(shown_weight) or shown_weight < 0:
            raise ValueError(f"shown_weight must be a finite number >= 0, got {shown_weight}")
        self.item_emb = np.asarray(item_emb, np.float64)
        self.shown_weight = float(shown_weight)
        self.clicked = np.zeros((0, self.item_emb.shape[1]))  # float64 (B, D) once the batch size is known

    def _rows(self, b: int) -> np.ndarray:
        if len(self.clicked) != b:
            self.clicked = np.zeros((b, self.item_emb.shape[1]))
        return self.clicked

    def similarity(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """float64 (B, N): ``cos(e_i, c)`` per candidate (0 on rows with ``c`` = 0: no click yet at λ = 0, no
        feedback yet at λ > 0)."""
        c = self._rows(len(obs["candidates"]))
        norm = np.linalg.norm(c, axis=1, keepdims=True)
        return np.einsum("bnd,bd->bn", self.item_emb[obs["candidates"]], c / np.maximum(norm, 1e-12))

    def __call__(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """float64 (B, N): :meth:`similarity` standardised over each request's candidates (a term of a blend)."""
        return z_rows(self.similarity(obs))

    def reset(self, rows: np.ndarray) -> None:
        """New sessions in ``rows``: nothing clicked yet."""
        if len(self.clicked):
            self.clicked[rows] = 0.0

    def update(self, obs: dict[str, np.ndarray], slate: np.ndarray, feedback: Feedback) -> None:
        """Add each row's clicked item (if any) to its sum, less λ times the slate's discounted mean."""
        c = self._rows(len(slate))
        items = np.take_along_axis(obs["candidates"], slate, axis=1)  # (B, K)
        emb = self.item_emb[items]  # (B, K, D)
        c += np.einsum("bk,bkd->bd", feedback.clicks.astype(np.float64), emb)
        if self.shown_weight:
            c -= self.shown_weight * np.einsum("k,bkd->bd", shown_discount(slate.shape[1]), emb)


class SessionDiverseRanker(DiverseRanker):
    """:class:`DiverseRanker` whose blend also follows this session's clicks item by item.

    Formula: ``score_i = z(z(blend)_i + β·z(cos(e_i, c))) − λ_c·cat_exposure_i − λ_s·item_seen_i``, then the
    greedy category cap, with ``c`` the sum of the embeddings of the items clicked so far in the session
    (:class:`SessionClicks`; the term is 0 before the first click) and ``blend`` :class:`DiverseRanker`'s (fixed or
    click-following α). The pooled user state that ``llm_sim`` reads mixes the session's clicks into the history
    (``env.state_decay``); this term weighs them on their own, as a session-based recommender would (session 17).

    Args:
        k: Slate size.
        alpha: α.
        category: int (M,) item categories.
        item_emb: float (M, D) item embeddings.
        session_weight: β, in units of the blend's spread.
        exposure_weight: λ_c.
        seen_weight: λ_s.
        cap: Most slots one category may take.
        name: Display name.
        lean_weight: w of the feedback-adaptive α.
    """

    def __init__(self, k: int, alpha: float, category: np.ndarray, item_emb: np.ndarray, session_weight: float,
                 exposure_weight: float = 3.0, seen_weight: float = 0.5, cap: int = 2, name: str | None = None,
                 lean_weight: float = 0.0) -> None:
        super().__init__(k, alpha, category, exposure_weight=exposure_weight, seen_weight=seen_weight, cap=cap,
                         name=name or f"session-diverse:{alpha:g}", lean_weight=lean_weight)
        self.session_weight = float(session_weight)
        self.clicks = SessionClicks(item_emb)

    def blend(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """``z(blend) + β·z(cos(e, c))``: float64 (B, N) (:meth:`penalised` standardises it, as any blend)."""
        return z_rows(super().blend(obs)) + self.session_weight * self.clicks(obs)

    def reset(self, rows: np.ndarray, obs: dict[str, np.ndarray]) -> None:
        """New sessions in ``rows``: forget their clicks."""
        super().reset(rows, obs)
        self.clicks.reset(rows)

    def update(self, obs: dict[str, np.ndarray], slate: np.ndarray, feedback: Feedback) -> None:
        """Remember the clicked items."""
        super().update(obs, slate, feedback)
        self.clicks.update(obs, slate, feedback)


class TunedSessionDiverseRanker(SessionDiverseRanker):
    """``session-diverse`` at the parameters that maximised return on the training users
    (:func:`agents.tuning.tune_session_diverse`: β searched with tuned-diverse's own axes, from tuned-diverse).

    Args:
        k: Slate size.
        category: int (M,) item categories.
        item_emb: float (M, D) item embeddings.
        search: The search's result.
    """

    def __init__(self, k: int, category: np.ndarray, item_emb: np.ndarray, search: ParamSearch) -> None:
        p = search.best
        super().__init__(k, p["alpha"], category, item_emb, p["session_weight"], exposure_weight=p["exposure_weight"],
                         seen_weight=p["seen_weight"], cap=int(p["cap"]), name="tuned-session-diverse",
                         lean_weight=p.get("lean_weight", 0.0))
        self.search = search


class PopDiverseRanker(DiverseRanker):
    """:class:`DiverseRanker` with a popularity prior: its standardised blend plus ``w·z(popularity)``.

    Formula: ``score_i = z(z(blend)_i + w·z(pop)_i) − λ_c·cat_exposure_i − λ_s·item_seen_i``, then the greedy
    category cap; ``pop`` is the observed popularity column, standardised over the request's candidates. At ``w = 0``
    it is :class:`DiverseRanker`. On the default preset a prior of w 0.1–0.2 on tuned-diverse is worth 1.06× it
    (session 38, ``bench.term_probe --retune --terms popularity``), the strongest hand-written rule known there.

    Args:
        k: Slate size.
        alpha: α.
        category: int (M,) item categories.
        pop_weight: w, in units of the blend's spread.
        exposure_weight: λ_c.
        seen_weight: λ_s.
        cap: Most slots one category may take.
        name: Display name.
        lean_weight: :class:`DiverseRanker`'s click-following weight of α.
    """

    def __init__(self, k: int, alpha: float, category: np.ndarray, pop_weight: float, exposure_weight: float = 3.0,
                 seen_weight: float = 0.5, cap: int = 2, name: str | None = None, lean_weight: float = 0.0) -> None:
        super().__init__(k, alpha, category, exposure_weight=exposure_weight, seen_weight=seen_weight, cap=cap,
                         name=name or f"pop-diverse:{alpha:g}", lean_weight=lean_weight)
        self.pop_weight = float(pop_weight)

    def blend(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """``z(blend) + w·z(pop)``: float64 (B, N) (:meth:`penalised` standardises it, as any blend)."""
        return z_rows(super().blend(obs)) + self.pop_weight * z_feature(obs, F_POP)


class TunedPopDiverseRanker(PopDiverseRanker):
    """``pop-diverse`` at the parameters that maximised return on the training users
    (:func:`agents.tuning.tune_pop_diverse`: the prior's weight searched with tuned-diverse's own axes, from
    tuned-diverse).

    Args:
        k: Slate size.
        category: int (M,) item categories.
        search: The search's result.
    """

    def __init__(self, k: int, category: np.ndarray, search: ParamSearch) -> None:
        p = search.best
        super().__init__(k, p["alpha"], category, p["pop_weight"], exposure_weight=p["exposure_weight"],
                         seen_weight=p["seen_weight"], cap=int(p["cap"]), name="tuned-pop-diverse",
                         lean_weight=p.get("lean_weight", 0.0))
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
        check_current_request(obs, self.core)
        return self.core.candidate_utility()


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
