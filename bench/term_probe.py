"""What would one more per-item term add to tuned-diverse? Paired probes on held-out users.

``python -m bench.term_probe --preset presets/ml`` ranks the same held-out sessions with tuned-diverse (tuned on
the training users, ``agents/tuning.py``) and with tuned-diverse whose standardised blend gets ``β·x`` added before
its penalties and category cap, for each term ``x`` and each β:

* ``quality``: the item's hidden quality (≈ N(0, 1) over the catalog). It **reads the hidden state**: the most that
  a learned per-item table (``train.policy.use_item_table``) could recover from clicks;
* ``popularity`` and ``price``: the observed feature columns, standardised over the request's candidates;
* ``semantic``, ``static`` and ``taste``: parts of the user's true utility (``BatchedCore.utility_parts``), standardised
  over the request's candidates. They **read the hidden state**: ``semantic`` is the drifting semantic taste that the
  observed ``llm_sim`` reads through the pooled history, ``static`` the CF taste plus quality and price that
  ``cf_score`` reads through the fitted CF model, ``taste`` their sum, ``utility`` the whole true utility (fatigue and
  repeat penalties included). They say which hidden quantity the oracles' headroom is made of (session 12);
* ``cat_clicks`` and ``fatigue``: a penalty on the observed decayed clicks of the candidate's category, and on the
  user's true (hidden) fatigue for it, both unstandardised, as the heuristic's own exposure penalty is.

A term whose best β adds nothing is not where a learned policy's headroom is. The last line is a JSON object with
every paired difference (PPO-free: this measures the world, not a policy).

``--retune`` asks the question without holding the heuristic's other parameters at tuned-diverse's values: for each
term, β joins tuned-diverse's own axes (α, category cap, exposure, seen and lean weights) and the whole point is
searched on the *training* users by tuned-diverse's protocol (``agents.tuning.search_family``: coordinate ascent from
tuned-diverse's point with β = 0, then the start and the 3 best points re-scored on 5× fresh sessions). Only the
chosen point meets the held-out sessions, so the figure is not the luckiest of many on them. This is the most the
best hand-written ranker gets from the term when its penalties and cap may re-balance around it (session 14).
``observed-taste`` is the same search over a term that reads only the observation: the least-squares reading of the
true taste (semantic + static, standardised per request) from the candidate features, their squares and their
products with the session's feedback context, fitted with the hidden taste as target on fresh training sessions
under tuned-diverse (``fit_observed_taste``). It says how much of the taste's worth the observation holds for a
per-candidate linear reading, the question a learner's headroom turns on. ``popularity`` and ``price`` (the observed
columns, standardised; pass ``--betas`` with negative values to let β change sign) are searched the same way: a term
an engineer could add by hand, so that a gain from one is a gap in tuned-diverse, not missing information (session 38).

``noisy-taste:σ`` is the true taste seen through a known amount of noise: ``z(z(taste) + σ·e)`` with ``e`` a standard
normal fixed per (user, item) (the same in every request and session of that user, as an estimation error of the
user's taste would be), so its squared correlation with the taste over a request's candidates is about
``1 / (1 + σ²)``. Searched like the others, a few σ trace the best hand-written ranker's return against how much of
the taste it knows, and put ``observed-taste`` (whose fit reports the same R²) and a trained policy on that curve:
what the observation's reading is worth beside an unstructured error of the same size (session 35).
``noisy-taste:σ:r`` makes the error low-rank, as a wrong estimate of the user's taste vector would be: ``e = g_u·f_i
/ √r`` with ``g_u`` and ``f_i`` standard normal r-vectors per user and per item (each ``e`` still has variance 1).

``history-taste`` and ``history-pool:d`` ask what a long-term user state would add to the observation (whose pooled
state ``llm_sim`` reads forgets an item in a few: ``env.state_decay``). Each is the cosine of every candidate with one
vector per user, standardised over the request: ``history-taste`` the user's semantic taste at the session's start,
which in a calibrated world *is* the whole logged train history pooled by the calibration's weights (a service
holding the same log could compute it; in the built-in presets it is the hidden persona), ``history-pool:d`` the
logged history the observation starts from (``env.logging.history_len`` items) pooled with decay ``d`` per item
(observable in every world; ``d`` 1: unweighted). Beside the search each reports the R² of the observation's reading
of the taste with and without the state as one more column (``r2``, ``r2_without``: the observed-taste fit's design).

``start-taste`` is ``taste`` as it stood at the session's start (the semantic part from the user's taste before the
session's drift): beside ``taste`` it says what following the drift is worth. It reads the hidden state.

``session-clicks`` reads only what a service sees item by item: the cosine of each candidate's embedding with the sum
of the embeddings of the items this user clicked in this session (0 before the first click), standardised over the
request (:class:`agents.rankers.SessionClicks`, session 17; ``tuned-session-diverse`` is the ranker it became). The
observed ``llm_sim`` already pools the session's clicks into the history's state; this term weighs them on their own.
It is a term with memory: the probe's ranker hands it each request's feedback.

``session-choices:λ`` weighs the session's choices as a multinomial-logit user makes them: the clicked items' sum
less λ times each shown slate's mean (discounted by rank as DCG does), so that what the user passed over counts
too; at λ near the click rate per slate it is the choice model's score, the direction the session's feedback moves
the taste's estimate (:class:`agents.rankers.SessionClicks` with ``shown_weight``; session 38). Beside the search,
``session-clicks`` and ``session-choices:λ`` report the R² the observation's reading of the taste reaches with the
term as one more column, as the history terms do: what the session's feedback, read this way, adds to it.

``--runs RUN[,RUN…]`` plays trained policies on the same held-out sessions and pairs each with tuned-diverse and with
each term's pick (the retuned point, or the plain probe's best β), so a new hand-written term is measured against the
learner on the same users.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from agents.base import Feedback, Ranker
from agents.evaluation import EpisodePlan, episode_plan, run_episodes
from agents.final_report import tuning_context
from agents.rankers import DiverseRanker, SessionClicks, z_feature, z_rows
from agents.registry import RankerContext, load_run
from agents.report import Bootstrap, paired_test
from agents.tuning import (
    DIVERSE_GRID,
    TUNE_SEED,
    VALIDATION_FACTOR,
    ParamSearch,
    diverse_ranker,
    search_family,
    tuning_cache_dir,
)
from configs.fileio import atomic_write_text
from configs.loader import resolve_config
from configs.schema import Config, ConfigError, EncoderConfig, EnvConfig
from envs.core import BatchedCore
from envs.factory import make_core
from envs.presets import load_world
from envs.spaces import (
    C_CLICK_RATE,
    C_CLICKED_CF,
    C_CLICKED_LLM,
    C_T_FRAC,
    F_CAT_CLICKS,
    F_CAT_EXPOSURE,
    F_CF,
    F_ITEM_SEEN,
    F_LLM,
    F_POP,
    F_PRICE,
)
from envs.users import pool_history
from envs.world import World

#: β values tried per term.
BETAS: dict[str, tuple[float, ...]] = {"quality": (0.25, 0.5, 1.0, 2.0), "popularity": (-0.5, -0.2, 0.2, 0.5),
                                       "price": (-0.5, -0.2, 0.2, 0.5), "semantic": (0.25, 0.5, 1.0, 2.0),
                                       "static": (0.25, 0.5, 1.0, 2.0), "taste": (0.25, 0.5, 1.0, 2.0, 4.0, 8.0),
                                       "utility": (0.5, 1.0, 2.0, 4.0, 8.0), "cat_clicks": (0.25, 0.5, 1.0, 2.0),
                                       "fatigue": (0.25, 0.5, 1.0, 2.0), "session-clicks": (0.1, 0.25, 0.5, 1.0)}
#: How each part of ``BatchedCore.utility_parts`` enters the utility.
UTILITY_SIGN: dict[str, float] = {"semantic": 1.0, "static": 1.0, "fatigue": -1.0, "repeat": -1.0}

#: A probe term: the observation → float (B, N), one value per candidate.
Term = Callable[[dict[str, np.ndarray]], np.ndarray]


class TermDiverseRanker(DiverseRanker):
    """:class:`DiverseRanker` whose standardised blend gets ``beta·term(obs)`` added (the probe's ranker).

    A term with memory (:class:`agents.rankers.SessionClicks`) is handed the ranker's session starts and feedback.

    Args:
        base: The ranker whose parameters it copies (tuned-diverse).
        term: obs → float (B, N) extra column.
        beta: Its weight, in units of the blend's spread.
    """

    def __init__(self, base: DiverseRanker, term: Term, beta: float) -> None:
        super().__init__(base.k, base.alpha, base.category, exposure_weight=base.exposure_weight,
                         seen_weight=base.seen_weight, cap=base.cap, lean_weight=base.lean_weight)
        self.term, self.beta = term, float(beta)

    def blend(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """The standardised blend plus ``beta·term``: float64 (B, N)."""
        return z_rows(super().blend(obs)) + self.beta * self.term(obs)

    def reset(self, rows: np.ndarray, obs: dict[str, np.ndarray]) -> None:
        """See :class:`DiverseRanker`; a term with memory forgets ``rows``."""
        super().reset(rows, obs)
        if isinstance(self.term, SessionClicks):
            self.term.reset(rows)

    def update(self, obs: dict[str, np.ndarray], slate: np.ndarray, feedback: Feedback) -> None:
        """See :class:`DiverseRanker`; a term with memory reads the feedback."""
        super().update(obs, slate, feedback)
        if isinstance(self.term, SessionClicks):
            self.term.update(obs, slate, feedback)


def hidden_term(core: BatchedCore, *parts: str) -> Term:
    """The standardised, signed sum of ``parts`` of the true utility of ``core``'s current candidates.

    Args:
        core: The core whose sessions the ranker acts on (it reads their hidden state).
        parts: Names of :meth:`BatchedCore.utility_parts` (signs from :data:`UTILITY_SIGN`).

    Returns:
        obs → float64 (B, N): the term, standardised over each request's candidates.
    """
    def term(obs: dict[str, np.ndarray]) -> np.ndarray:
        u = core.utility_parts(core.cand_slots)
        return z_rows(sum(UTILITY_SIGN[p] * u[p].astype(np.float64) for p in parts))

    return term


#: The hidden terms ``--retune`` can search, as parts of the true utility.
RETUNE_PARTS: dict[str, tuple[str, ...]] = {"semantic": ("semantic",), "static": ("static",),
                                            "taste": ("semantic", "static"), "utility": tuple(UTILITY_SIGN)}
#: Observed feature columns a probe may add, standardised over the request (``--retune`` searches them too: a term an
#: engineer could write, so a gain from one is a gap in tuned-diverse, not information the observation lacks).
OBSERVED_COLUMNS: dict[str, int] = {"popularity": F_POP, "price": F_PRICE}


def column_term(col: int) -> Term:
    """obs → float64 (B, N): the observed feature column ``col``, standardised over each request's candidates (the
    term of ``popularity`` is :class:`agents.rankers.PopDiverseRanker`'s prior)."""
    return lambda obs: z_feature(obs, col)

#: ``--retune``'s observation-only term: the least-squares reading of the true taste from the observation.
OBSERVED_TASTE = "observed-taste"
#: ``--retune``'s degraded truth: ``noisy-taste:σ[:rank]`` (:func:`noisy_taste_term`).
NOISY_TASTE = "noisy-taste"
#: Seed of the noisy-taste term's per-(user, item) errors.
NOISE_SEED = 35
#: ``--retune``'s long-term state: the similarity with the user's taste at the session's start (calibrated worlds:
#: the whole logged train history pooled by the calibration's weights, so the logs hold it; built-in presets: the
#: hidden persona).
HISTORY_TASTE = "history-taste"
#: ``--retune``'s hidden taste without the session's drift (:func:`start_taste_term`).
START_TASTE = "start-taste"
#: ``--retune``'s observed long-term state: ``history-pool:d``, the logged history pooled with decay ``d`` per item.
HISTORY_POOL = "history-pool"
#: ``--retune``'s observation-only term with memory: :class:`agents.rankers.SessionClicks`.
SESSION_CLICKS = "session-clicks"
#: ``--retune``'s ``session-choices:λ``: :class:`agents.rankers.SessionClicks` with each shown slate subtracted (λ).
SESSION_CHOICES = "session-choices"
#: Context columns the observed-taste design multiplies the two signals by (what feedback says about the user).
TASTE_CONTEXT = (C_CLICKED_LLM, C_CLICKED_CF, C_CLICK_RATE, C_T_FRAC)


def taste_design(obs: dict[str, np.ndarray]) -> np.ndarray:
    """The observed-taste regression's design per candidate: float64 (B, N, P).

    Columns: 1, the standardised (over the request) ``llm_sim``, ``cf_score`` and popularity, the raw exposure,
    clicks and seen features, their squares for the two signals, and the two standardised signals times each
    :data:`TASTE_CONTEXT` column (so the fit may weigh them by what the session's clicks said).
    """
    f = obs["features"].astype(np.float64)
    llm, cf, pop = z_rows(f[:, :, F_LLM]), z_rows(f[:, :, F_CF]), z_rows(f[:, :, F_POP])
    ctx = obs["context"].astype(np.float64)[:, None, :]
    cols = [np.ones_like(llm), llm, cf, pop, f[:, :, F_CAT_EXPOSURE], f[:, :, F_CAT_CLICKS], f[:, :, F_ITEM_SEEN],
            llm * llm, cf * cf, llm * cf]
    cols += [sig * ctx[:, :, c] for c in TASTE_CONTEXT for sig in (llm, cf)]
    return np.stack(cols, axis=-1)


class _TasteRecorder(Ranker):
    """Plays ``base`` and accumulates the normal equations of ``z(true taste) ~ taste_design(obs)``, and the
    correlation of the taste with ``base``'s own standardised blend. Every row is recorded: the rows that idle at the
    plan's tail replay real sessions of the same population, so they are valid requests too."""

    def __init__(self, base: DiverseRanker, core: BatchedCore, extra: Term | None = None) -> None:
        super().__init__(base.k)
        self.base, self.name, self.extra = base, f"{base.name} (recording)", extra
        self.taste = hidden_term(core, "semantic", "static")
        self.xtx: np.ndarray | float = 0.0  # (P, P) after the first request
        self.xty: np.ndarray | float = 0.0  # (P,)
        self.sums = {"yy": 0.0, "yb": 0.0, "bb": 0.0, "n": 0.0}

    def reset(self, rows: np.ndarray, obs: dict[str, np.ndarray]) -> None:
        self.base.reset(rows, obs)
        if isinstance(self.extra, SessionClicks):
            self.extra.reset(rows)

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        x = taste_design(obs)
        if self.extra is not None:  # one more column: a candidate term whose information is in question
            x = np.concatenate([x, self.extra(obs)[..., None]], axis=-1)
        x = x.reshape(-1, x.shape[-1])
        y = self.taste(obs).ravel()
        blend = z_rows(self.base.blend(obs)).ravel()
        self.xtx = self.xtx + x.T @ x
        self.xty = self.xty + x.T @ y
        for key, v in (("yy", y @ y), ("yb", y @ blend), ("bb", blend @ blend), ("n", len(y))):
            self.sums[key] += float(v)
        return self.base.act(obs)

    def update(self, obs: dict[str, np.ndarray], slate: np.ndarray, feedback: Any) -> None:
        self.base.update(obs, slate, feedback)
        if isinstance(self.extra, SessionClicks):
            self.extra.update(obs, slate, feedback)


def fit_observed_taste(core: BatchedCore, base: DiverseRanker, plan: EpisodePlan, ridge: float = 1e-3,
                       extra: Term | None = None) -> tuple[np.ndarray, dict[str, float]]:
    """Least-squares weights of ``z(true taste) ≈ taste_design(obs) @ w`` over the requests ``base`` meets on ``plan``.

    The fit reads the hidden taste (the simulator's ground truth, on training users); the term it gives reads only
    the observation. It is the best per-candidate linear reading of the taste that the observation holds, with the
    session's feedback as interactions: a generous stand-in for what a learner could infer.

    Args:
        core: A core on the training population.
        base: The ranker whose sessions are recorded (tuned-diverse).
        plan: The sessions.
        ridge: Ridge penalty relative to the mean diagonal of ``XᵀX``.
        extra: A term (made for ``core``) whose column joins the design (its weight is last in ``w``): how much
            the reading's R² gains from it says what the term knows of the taste beyond the observation.

    Returns:
        ``(w float64 (P,), {"r2": the fit's R², "r2_blend": R² of the base's standardised blend alone (its squared
        correlation with the taste), "candidates": rows of the fit[, "r2_without": the fit's R² without
        ``extra``]})``.
    """
    rec = _TasteRecorder(base, core, extra)
    run_episodes(core, rec, plan)
    assert isinstance(rec.xtx, np.ndarray) and isinstance(rec.xty, np.ndarray)  # a plan has at least one request
    yy = rec.sums["yy"]

    def solve(p: int) -> tuple[np.ndarray, float]:  # the ridge fit on the design's first p columns, and its R²
        xtx, xty = rec.xtx[:p, :p], rec.xty[:p]
        lam = ridge * float(np.trace(xtx)) / p
        w = np.linalg.solve(xtx + lam * np.eye(p), xty)
        return w, 1.0 - (yy - 2 * float(w @ xty) + float(w @ xtx @ w)) / yy

    w, r2 = solve(len(rec.xtx))
    out = {"r2": r2, "r2_blend": rec.sums["yb"] ** 2 / (rec.sums["bb"] * yy), "candidates": int(rec.sums["n"])}
    if extra is not None:
        out["r2_without"] = solve(len(rec.xtx) - 1)[1]
    return w, out


def pair_normal(users: np.ndarray, items: np.ndarray, seed: int) -> np.ndarray:
    """A standard normal per (user, item) pair, the same on every call.

    Counter-based (splitmix64 of the pair, then the normal quantile of the top 53 bits), so it needs no state and
    costs a few vector operations per request.

    Args:
        users: int, broadcastable with ``items`` (user indices).
        items: int, broadcastable with ``users`` (item ids).
        seed: Which noise.

    Returns:
        float64, the broadcast shape of ``users`` and ``items``.
    """
    from scipy.special import ndtri

    with np.errstate(over="ignore"):
        h = (np.asarray(users, np.uint64) * np.uint64(0x9E3779B97F4A7C15)
             + np.asarray(items, np.uint64) * np.uint64(0xD1B54A32D192ED03)
             + np.uint64(seed) * np.uint64(0x94D049BB133111EB))
        for shift, mult in ((30, 0xBF58476D1CE4E5B9), (27, 0x94D049BB133111EB)):
            h = (h ^ (h >> np.uint64(shift))) * np.uint64(mult)
        h = h ^ (h >> np.uint64(31))
    u = ((h >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53  # (0, 1)
    return ndtri(u)


def low_rank_normal(users: np.ndarray, items: np.ndarray, seed: int, rank: int) -> np.ndarray:
    """A rank-``rank`` error per (user, item) pair: ``g_u·f_i / √rank``, ``g_u``, ``f_i`` standard normal vectors.

    Each value has mean 0 and variance 1; a user's errors over items are correlated through ``g_u`` (a wrong taste
    vector), unlike :func:`pair_normal`'s.

    Args:
        users: int, broadcastable with ``items`` (user indices).
        items: int, broadcastable with ``users`` (item ids).
        seed: Which noise.
        rank: r >= 1.

    Returns:
        float64, the broadcast shape of ``users`` and ``items``.
    """
    axis = np.arange(rank)
    g = pair_normal(np.asarray(users)[..., None], axis, 2 * seed)  # (..., r)
    f = pair_normal(np.asarray(items)[..., None], axis, 2 * seed + 1)  # (..., r)
    return (g * f).sum(axis=-1) / np.sqrt(rank)


def noisy_taste_term(core: BatchedCore, sigma: float, seed: int = NOISE_SEED, rank: int | None = None) -> Term:
    """obs → float64 (B, N): ``z(z(true taste) + σ·e)``, ``e`` standard normal per (user, item) (:func:`pair_normal`)
    or, with ``rank``, a low-rank error (:func:`low_rank_normal`).

    It reads the hidden state: the taste of ``core``'s sessions with an error of known size that does not change
    within a user's sessions. Its squared correlation with the taste over a request's candidates is about
    ``1 / (1 + σ²)``.

    Args:
        core: The core whose sessions the ranker acts on.
        sigma: The error's standard deviation, in units of the taste's spread over the request (>= 0).
        seed: Which errors.
        rank: ``None``: independent per pair; r >= 1: rank r.

    Raises:
        ValueError: If ``sigma`` is negative or not finite, or ``rank`` < 1.
    """
    if not np.isfinite(sigma) or sigma < 0:
        raise ValueError(f"noisy-taste: σ must be a finite number >= 0, got {sigma}")
    if rank is not None and rank < 1:
        raise ValueError(f"noisy-taste: the rank must be >= 1, got {rank}")
    truth = hidden_term(core, "semantic", "static")

    def term(obs: dict[str, np.ndarray]) -> np.ndarray:
        t = truth(obs)
        if sigma == 0:
            return t
        users = core.user[:, None]
        e = pair_normal(users, obs["candidates"], seed) if rank is None else \
            low_rank_normal(users, obs["candidates"], seed, rank)
        return z_rows(t + sigma * e)

    return term


def state_term(core: BatchedCore, state: np.ndarray) -> Term:
    """obs → float64 (B, N): ``z(s_u·e_i)``, each candidate's similarity with a per-user state, standardised.

    Args:
        core: The core whose sessions the ranker acts on (its ``user`` names each row's user).
        state: float (U, D) one vector per user of ``core``'s population, in the item embeddings' space.
    """
    emb = core.world.item_emb

    def term(obs: dict[str, np.ndarray]) -> np.ndarray:
        s = state[core.user].astype(np.float64)  # (B, D)
        return z_rows(np.einsum("bd,bnd->bn", s, emb[obs["candidates"]], dtype=np.float64))

    return term


def start_taste_term(core: BatchedCore) -> Term:
    """obs → float64 (B, N): the true taste as it was at the session's start, ``z(a·ρ_u·z_sem⁰ + static)``.

    ``taste`` with the semantic affinity taken from the user's taste before any drift (``Population.sem_taste``),
    standardised as the core standardises it at session start; the static part (CF taste, quality, price) is fixed
    over a session anyway. It reads the hidden state; beside ``taste`` it says what the in-session drift is worth.
    In a world with a session intent (``user_model.session_intent`` > 0) it is the user's taste, not the session's.
    """
    emb, pop = core.world.item_emb, core.pop

    def term(obs: dict[str, np.ndarray]) -> np.ndarray:
        sem0 = np.einsum("bd,bnd->bn", pop.sem_taste[core.user].astype(np.float64), emb[obs["candidates"]],
                         dtype=np.float64)
        z0 = (sem0 - core.sem_mu[:, None]) / core.sem_sd[:, None]
        static = core.utility_parts(core.cand_slots)["static"].astype(np.float64)
        return z_rows(core.a_rho[:, None].astype(np.float64) * z0 + static)

    return term


def _number_spec(name: str, prefix: str, valid: Callable[[float], bool], how: str) -> float | None:
    """The number ``x`` of a ``prefix:x`` term name; ``None`` for a name with another prefix.

    Raises:
        ValueError: ``how`` (prefixed with the name), for a ``prefix`` name whose number is missing or not ``valid``.
    """
    parts = name.split(":")
    if parts[0] != prefix:
        return None
    try:
        if len(parts) != 2:
            raise ValueError
        x = float(parts[1])
    except ValueError:
        raise ValueError(f"{name!r}: {how}") from None
    if not (np.isfinite(x) and valid(x)):
        raise ValueError(f"{name!r}: {how}")
    return x


def history_spec(name: str) -> float | None:
    """The decay ``d`` of a ``history-pool:d`` term name; ``None`` for any other name.

    Raises:
        ValueError: A ``history-pool`` name without a decay in (0, 1].
    """
    return _number_spec(name, HISTORY_POOL, lambda d: 0 < d <= 1,
                        f"write {HISTORY_POOL}:d with a decay 0 < d <= 1, e.g. {HISTORY_POOL}:1")


def choices_spec(name: str) -> float | None:
    """The shown-slate weight λ of a ``session-choices:λ`` term name; ``None`` for any other name.

    Raises:
        ValueError: A ``session-choices`` name without a finite λ >= 0.
    """
    return _number_spec(name, SESSION_CHOICES, lambda lam: lam >= 0,
                        f"write {SESSION_CHOICES}:λ with a weight λ >= 0 of each shown slate, e.g. "
                        f"{SESSION_CHOICES}:0.3")


def noisy_spec(name: str) -> tuple[float, int | None] | None:
    """``(σ, rank or None)`` of a ``noisy-taste:σ[:r]`` term name; ``None`` for any other name.

    Raises:
        ValueError: A ``noisy-taste`` name without a finite σ >= 0, or with a rank that is not an integer >= 1.
    """
    parts = name.split(":")
    if parts[0] != NOISY_TASTE:
        return None
    how = f"{name!r}: write noisy-taste:σ or noisy-taste:σ:r (σ >= 0, rank r >= 1), e.g. noisy-taste:0.5:8"
    if len(parts) not in (2, 3):
        raise ValueError(how)
    try:
        sigma = float(parts[1])
        rank = int(parts[2]) if len(parts) == 3 else None
    except ValueError:
        raise ValueError(how) from None
    if not np.isfinite(sigma) or sigma < 0 or (rank is not None and rank < 1):
        raise ValueError(how)
    return sigma, rank


def observed_taste_term(w: np.ndarray) -> Term:
    """obs → float64 (B, N): ``z(taste_design(obs) @ w)``, the fitted reading of the taste (observation only)."""
    return lambda obs: z_rows(taste_design(obs) @ w)


#: ``--retune``'s terms by name beside :data:`RETUNE_PARTS` (the parameterised ones are ``noisy-taste:σ[:rank]``,
#: ``history-pool:d`` and ``session-choices:λ``).
RETUNE_NAMED: tuple[str, ...] = (OBSERVED_TASTE, SESSION_CLICKS, HISTORY_TASTE, START_TASTE, *OBSERVED_COLUMNS)
#: The observed-taste fit's sessions: seed ``seed + TUNE_SEED`` plus this (neither tuning nor validation sessions).
FIT_SEED_OFFSET = 104_729
#: β's axis in the ``--retune`` search (0 is tuned-diverse itself, the search's start).
RETUNE_BETAS: tuple[float, ...] = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)


def fit_sessions(cfg: Config, world: World, seed: int, tune_episodes: int, batch: int
                 ) -> tuple[BatchedCore, EpisodePlan]:
    """The fresh training sessions the observed-taste reading is fitted on (neither tuning nor validation ones):
    a core over the training users and ``VALIDATION_FACTOR · tune_episodes`` sessions of seed
    ``seed + TUNE_SEED + FIT_SEED_OFFSET`` (so every probe of one seed fits the same weights)."""
    plan = episode_plan(VALIDATION_FACTOR * tune_episodes, [seed + TUNE_SEED + FIT_SEED_OFFSET],
                        world.populations["train"].size)
    return make_core(cfg.env, cfg.env.preset, cfg.encoder, world, "train", batch), plan


def retune_with_term(world: World, env_cfg: EnvConfig, name: str, make_term: Callable[[BatchedCore], Term],
                     start: dict[str, float], episodes: int, batch: int, encoder: EncoderConfig | None = None,
                     cache_dir: str | Path | None = None, grid: dict[str, tuple[float, ...]] | None = None,
                     seed: int = TUNE_SEED) -> ParamSearch:
    """Search β·term together with tuned-diverse's axes on the training users (tuned-diverse's protocol).

    Args:
        world: The world.
        env_cfg: Env config.
        name: The term's name (the search's kind is ``diverse+<name>``; part of its cache key, so a term whose
            definition can change, like a fitted one, must not be cached).
        make_term: core → the term, for the search's own core (a hidden term reads that core's sessions).
        start: tuned-diverse's point; the search starts there with β = 0.
        episodes: Tuning sessions per point (validation: 5× as many).
        batch: Users simulated at once.
        encoder: Encoder config (text observation mode only).
        cache_dir: JSON cache folder of the search (``None``: none).
        grid: Axes ``beta`` and tuned-diverse's (default :data:`RETUNE_BETAS` and ``DIVERSE_GRID``).
        seed: Seed of the tuning sessions (a run's tuned-diverse uses ``train.seed + TUNE_SEED``).

    Returns:
        The search; ``best`` holds β and the heuristic's parameters.
    """
    k, category = env_cfg.slate_size, world.catalog.category

    def factory(core: BatchedCore, point: dict[str, float]) -> DiverseRanker:
        return TermDiverseRanker(diverse_ranker(k, category, point), make_term(core), point["beta"])

    return search_family(f"diverse+{name}", factory, {"beta": RETUNE_BETAS, **DIVERSE_GRID}, grid,
                         {"beta": 0.0, **start}, world, env_cfg, episodes, seed, batch, "train", encoder, False,
                         cache_dir)


def retune_terms(names: list[str], cfg: Config, world: World, core: BatchedCore, plan: EpisodePlan,
                 base: DiverseRanker, point: dict[str, float], ref: np.ndarray, boot: Bootstrap, tune_episodes: int,
                 batch: int, seed: int, betas: tuple[float, ...] = RETUNE_BETAS,
                 returns: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
    """``--retune``: per term, the search of :func:`retune_with_term`, then its pick on the held-out sessions.

    Args:
        names: Terms (keys of :data:`RETUNE_PARTS`, :data:`OBSERVED_TASTE`, :data:`SESSION_CLICKS`,
            :data:`HISTORY_TASTE`, :data:`START_TASTE`, ``noisy-taste:σ[:rank]``, ``history-pool:d`` or
            ``session-choices:λ``).
        cfg: The probe's config.
        world: The world.
        core: The held-out core.
        plan: The held-out sessions.
        base: tuned-diverse (``observed-taste``'s fit plays its sessions).
        point: tuned-diverse's parameters (the start of every search).
        ref: float (E,) tuned-diverse's returns on ``plan``.
        boot: The paired test's bootstrap.
        tune_episodes: Tuning sessions per point.
        batch: Users simulated at once.
        seed: The probe's seed (tuning sessions: ``seed + TUNE_SEED``, as a run's tuned-diverse).
        betas: β's axis in every search (0 is tuned-diverse itself).
        returns: If given, filled with each term's float (E,) returns of its pick on ``plan``.

    Returns:
        Term → ``{"best", "return", "ratio", "points", "validation_points", "validation_means", [the fit's
        figures,] "diff", "ci95", …}`` (the paired test against tuned-diverse).
    """
    def fit_setup() -> tuple[BatchedCore, EpisodePlan]:
        return fit_sessions(cfg, world, seed, tune_episodes, batch)

    out: dict[str, Any] = {}
    for name in names:
        fit: dict[str, Any] = {}
        cache: Path | None = tuning_cache_dir(cfg.env, cfg.encoder)
        if name == OBSERVED_TASTE:  # fitted on fresh training sessions under tuned-diverse, then searched
            train_core, fit_plan = fit_setup()
            w, fit = fit_observed_taste(train_core, base, fit_plan)
            fit["weights"] = w.tolist()
            print(f"  {name}: R² of the true taste {fit['r2']:.3f} (tuned-diverse's blend alone "
                  f"{fit['r2_blend']:.3f}) over {fit['candidates']:,} candidates")

            def make_term(c: BatchedCore, w: np.ndarray = w) -> Term:
                return observed_taste_term(w)

            cache = None  # a fitted term is not part of the cache key
        elif name == SESSION_CLICKS or choices_spec(name) is not None:
            lam = choices_spec(name) or 0.0
            fit = {"shown_weight": lam}

            def make_term(c: BatchedCore, lam: float = lam) -> Term:
                return SessionClicks(world.item_emb, lam)
        elif name == START_TASTE:
            def make_term(c: BatchedCore) -> Term:
                return start_taste_term(c)
        elif name in OBSERVED_COLUMNS:
            def make_term(c: BatchedCore, col: int = OBSERVED_COLUMNS[name]) -> Term:
                return column_term(col)
        elif name == HISTORY_TASTE:
            def make_term(c: BatchedCore) -> Term:
                return state_term(c, c.pop.sem_taste)
        elif (decay := history_spec(name)) is not None:
            fit = {"decay": decay}

            def make_term(c: BatchedCore, decay: float = decay) -> Term:
                return state_term(c, pool_history(c.pop.history, c.world.item_emb, decay))
        elif (spec := noisy_spec(name)) is not None:
            fit = {"sigma": spec[0], "rank": spec[1], "r2_nominal": 1.0 / (1.0 + spec[0] ** 2)}

            def make_term(c: BatchedCore, spec: tuple[float, int | None] = spec) -> Term:
                return noisy_taste_term(c, spec[0], rank=spec[1])
        else:
            def make_term(c: BatchedCore, parts: tuple[str, ...] = RETUNE_PARTS[name]) -> Term:
                return hidden_term(c, *parts)

        if name in (HISTORY_TASTE, SESSION_CLICKS) or history_spec(name) is not None or choices_spec(name) is not None:
            train_core, fit_plan = fit_setup()  # what the state adds to the observation's reading of the taste
            fit.update(fit_observed_taste(train_core, base, fit_plan, extra=make_term(train_core))[1])
            print(f"  {name}: R² of the true taste read from the observation {fit['r2_without']:.3f}, with this "
                  f"term too {fit['r2']:.3f}, over {fit['candidates']:,} candidates")
        kind = name if noisy_spec(name) is None else f"{name}/e{NOISE_SEED}"  # the errors are part of the term
        search = retune_with_term(world, cfg.env, kind, make_term, point, tune_episodes, batch, cfg.encoder, cache,
                                  {"beta": betas, **DIVERSE_GRID}, seed + TUNE_SEED)
        best = search.best
        ranker = TermDiverseRanker(diverse_ranker(cfg.env.slate_size, world.catalog.category, best), make_term(core),
                                   best["beta"])
        ret = run_episodes(core, ranker, plan).ret
        if returns is not None:
            returns[name] = ret
        test = paired_test(ret, ref, boot)
        out[name] = {"best": best, "return": float(ret.mean()), "ratio": float(ret.mean() / ref.mean()),
                     "points": len(search.points), "validation_points": search.validation_points,
                     "validation_means": search.validation_means, **fit, **test}
        print(f"  {name:<10} retuned {best}: {ret.mean():.3f} ({ret.mean() / ref.mean():.3f}×), paired "
              f"{test['diff']:+.3f} (95% CI {test['ci95'][0]:+.3f} to {test['ci95'][1]:+.3f}); "
              f"{len(search.points)} points searched")
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the probes; print one line per term and β, and the JSON summary (last line)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default=None,
                    help="preset name or calibrated preset folder (default: the config's env.preset, else default)")
    ap.add_argument("--config", default=None, help="config file (its eval and tuning settings)")
    ap.add_argument("--episodes", type=int, default=2000, help="held-out sessions (the same for every ranker)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the sessions and of tuned-diverse's tuning")
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--terms", default=None,
                    help=f"comma-separated terms to probe, of {', '.join(BETAS)} (default all; with --retune, of "
                         f"{', '.join([*RETUNE_PARTS, *RETUNE_NAMED])}, "
                         f"{NOISY_TASTE}:σ[:rank], {HISTORY_POOL}:d, {SESSION_CHOICES}:λ; "
                         "default taste)")
    ap.add_argument("--retune", action="store_true",
                    help="search β with tuned-diverse's own axes on the training users, then score that one point "
                         "on the held-out sessions (see the module's text)")
    ap.add_argument("--betas", default=None,
                    help="with --retune: β's axis, comma-separated, 0 included (0 is tuned-diverse itself; default "
                         f"{','.join(f'{b:g}' for b in RETUNE_BETAS)})")
    ap.add_argument("--runs", default=None,
                    help="comma-separated trained run directories: each is played on the same held-out sessions and "
                         "compared, paired, with tuned-diverse and each term's pick (best β for the plain probe)")
    ap.add_argument("--tune-episodes", type=int, default=400,
                    help="with --retune: tuning sessions per point (validation: 5× as many)")
    ap.add_argument("--json", type=Path, default=None,
                    help="also write the summary (the last line printed) to this file, atomically (read by "
                         "bench.information_curve)")
    args = ap.parse_args(argv)
    if args.json is not None and not args.json.parent.is_dir():
        ap.error(f"--json: folder {str(args.json.parent)!r} does not exist")
    if args.episodes < 2 or args.batch < 1 or args.tune_episodes < 2:
        ap.error(f"--episodes and --tune-episodes must be >= 2 and --batch >= 1, got {args.episodes}, "
                 f"{args.tune_episodes} and {args.batch}")
    if args.betas is not None and not args.retune:
        ap.error("--betas is β's axis of the --retune search; without --retune each term has its own β values")
    try:
        betas = RETUNE_BETAS if args.betas is None else tuple(sorted({float(b) for b in args.betas.split(",")
                                                                      if b.strip()}))
    except ValueError:
        ap.error(f"--betas: not a comma-separated list of numbers: {args.betas!r}")
    if 0.0 not in betas or any(not np.isfinite(b) for b in betas):
        ap.error(f"--betas must be finite and include 0 (tuned-diverse itself, the search's start), got {args.betas!r}")
    choices = [*RETUNE_PARTS, *RETUNE_NAMED] if args.retune else list(BETAS)
    names = [t.strip() for t in (args.terms or ("taste" if args.retune else ",".join(BETAS))).split(",") if t.strip()]
    unknown = []
    for t in names:
        try:
            if t not in choices and not (args.retune and any(spec(t) is not None for spec in
                                                             (noisy_spec, history_spec, choices_spec))):
                unknown.append(t)
        except ValueError as exc:
            ap.error(f"--terms: {exc}")
    if unknown or not names:
        ap.error(f"--terms: unknown or empty {unknown or args.terms!r}"
                 f"{' with --retune' if args.retune else ''}; choose from {', '.join(choices)}"
                 f"{f', {NOISY_TASTE}:σ[:rank], {HISTORY_POOL}:d, {SESSION_CHOICES}:λ' if args.retune else ''}")
    runs = [r.strip() for r in (args.runs or "").split(",") if r.strip()]
    missing = [r for r in runs if not Path(r).is_dir()]
    if missing:
        ap.error(f"--runs: no such run directory: {', '.join(missing)}")
    try:
        cfg, world, core, plan, ctx = heldout_setup(args.config, args.preset, args.seed, args.episodes, args.batch)
    except ConfigError as exc:
        ap.error(str(exc))
    point = ctx.diverse_search().best
    base = diverse_ranker(cfg.env.slate_size, world.catalog.category, point, name="tuned-diverse")
    ref = run_episodes(core, base, plan).ret
    quality = world.catalog.quality.astype(np.float64)
    boot = Bootstrap(len(plan), 1000, args.seed)
    out: dict[str, Any] = {"preset": cfg.env.preset, "seed": args.seed, "tuned_diverse": point,
                           "tuned_diverse_return": float(ref.mean()), "episodes": len(plan), "terms": {}}
    print(f"tuned-diverse {point}: {ref.mean():.3f} on {len(plan)} held-out sessions")
    picks: dict[str, np.ndarray] = {}  # term → float (E,) returns of its pick on the held-out sessions
    if args.retune:
        out["terms"] = retune_terms(names, cfg, world, core, plan, base, point, ref, boot, args.tune_episodes,
                                    args.batch, args.seed, betas, picks)
        out["runs"] = compare_runs(runs, core, world, plan, {"tuned-diverse": ref, **picks}, boot)
        return finish_summary(out, args.json)

    def hidden(*parts: str) -> Term:
        return hidden_term(core, *parts)

    all_terms: dict[str, Term] = {
        "quality": lambda obs: quality[obs["candidates"]],
        **{name: column_term(col) for name, col in OBSERVED_COLUMNS.items()},
        "semantic": hidden("semantic"), "static": hidden("static"), "taste": hidden("semantic", "static"),
        "utility": hidden(*UTILITY_SIGN),
        "cat_clicks": lambda obs: -obs["features"][:, :, F_CAT_CLICKS].astype(np.float64),
        "fatigue": lambda obs: -core.utility_parts(core.cand_slots)["fatigue"].astype(np.float64),
        SESSION_CLICKS: SessionClicks(world.item_emb)}
    terms = {n: all_terms[n] for n in names}
    for name, term in terms.items():
        rows = []
        for beta in BETAS[name]:
            ret = run_episodes(core, TermDiverseRanker(base, term, beta), plan).ret
            if name not in picks or ret.mean() > picks[name].mean():
                picks[name] = ret
            test = paired_test(ret, ref, boot)
            rows.append({"beta": beta, "return": float(ret.mean()), **test})
            print(f"  {name:<10} β {beta:+.2f}: {ret.mean():.3f}, paired {test['diff']:+.3f} "
                  f"(95% CI {test['ci95'][0]:+.3f} to {test['ci95'][1]:+.3f})")
        out["terms"][name] = rows
    out["runs"] = compare_runs(runs, core, world, plan, {"tuned-diverse": ref, **picks}, boot)
    return finish_summary(out, args.json)


def finish_summary(out: dict[str, Any], path: Path | None) -> dict[str, Any]:
    """Write the summary to ``path`` (atomically) when given, print it as the last line, and return it."""
    text = json.dumps(out)
    if path is not None:
        atomic_write_text(path, text + "\n")
        print(f"wrote {path}")
    print(text)
    return out


def heldout_setup(config: str | None, preset: str | None, seed: int, episodes: int, batch: int,
                  eval_seed: int | None = None, overrides: Sequence[str] = ()
                  ) -> tuple[Config, World, BatchedCore, EpisodePlan, RankerContext]:
    """What a probe of training seed ``seed`` plays on: its config (``train.seed = seed``, then ``overrides``, e.g.
    ``eval.tune_episodes=4000``), world, held-out core, ``episodes`` held-out sessions of evaluation seed
    ``eval_seed`` (``None``: ``seed``), and ``train.py``'s tuning context for that seed (its cached searches: the same
    references a run of that seed has).

    Raises:
        ConfigError: For a bad config or preset.
    """
    cfg = resolve_config(config, preset, [f"train.seed={seed}", *overrides])
    world = load_world(cfg.env, cfg.encoder)
    core = make_core(cfg.env, cfg.env.preset, cfg.encoder, world, "heldout", batch)
    plan = episode_plan(episodes, [seed if eval_seed is None else eval_seed], world.populations["heldout"].size)
    return cfg, world, core, plan, tuning_context(cfg, world, core, progress=False)


def run_setup(run: str, preset: str | None, seed: int | None, episodes: int, batch: int
              ) -> tuple[Config, World, BatchedCore, EpisodePlan, RankerContext, Any, int]:
    """:func:`heldout_setup` for a trained run: its config, ``seed`` (``None``: the run's ``train.seed``), and its
    policy as a :class:`agents.ppo_ranker.PPORanker` (the world's catalog size checked against it).

    Returns:
        ``(config, world, held-out core, plan, tuning context, ranker, seed)``.

    Raises:
        FileNotFoundError: If ``run`` is not a finished run directory.
        ConfigError: For a bad config or preset.
        ValueError: If the run is not a PPO run, or was trained on another catalog.
    """
    from agents.ppo_ranker import PPORanker
    from configs.loader import load_config

    config = Path(run) / "config.yaml"
    if not config.is_file():
        raise FileNotFoundError(f"{run} is not a finished recfeed run directory: {config} is missing")
    seed = int(load_config(config).train.seed) if seed is None else seed
    cfg, world, core, plan, ctx = heldout_setup(str(config), preset, seed, episodes, batch)
    ranker = load_run(run, n_items=world.n_items)
    if not isinstance(ranker, PPORanker):
        raise ValueError(f"{run}: not a PPO run (its ranker is {type(ranker).__name__})")
    return cfg, world, core, plan, ctx, ranker, seed


def policy_core(ranker: Ranker, core: BatchedCore, world: World,
                cores: dict[tuple[bool, bool, bool], BatchedCore]) -> BatchedCore:
    """``core``, or a copy of it with the columns a trained policy reads that ``core`` lacks.

    A policy that reads ``obs["session_sim"]`` (``env.obs_session_sim``), ``obs["hidden_taste"]``
    (``env.obs_hidden_taste``) or, in its actor, ``obs["critic_state"]`` (``train.policy.actor_hidden_state``) plays
    a copy of ``core`` with the column: no column changes a draw, so the sessions are the same ones.

    Args:
        ranker: The ranker (a trained policy's ``policy`` says which columns it reads; any other ranker reads none).
        core: The held-out core.
        world: Its world.
        cores: Copies made so far, by ``(session_sim, hidden_taste, critic_state)`` (filled here; pass the same dict
            each call).
    """
    policy = getattr(ranker, "policy", None)
    have = (core.cfg.obs_session_sim, core.cfg.obs_hidden_taste, core.cfg.obs_critic_state)
    flags = (have[0] or getattr(policy, "reads_session_sim", False),
             have[1] or getattr(policy, "reads_hidden_taste", False),
             have[2] or getattr(policy, "actor_hidden_state", False))
    if flags == have:
        return core
    if flags not in cores:
        cores[flags] = BatchedCore(world, dataclasses.replace(core.cfg, obs_session_sim=flags[0],
                                                              obs_hidden_taste=flags[1], obs_critic_state=flags[2]),
                                   core.B, core.population)
    return cores[flags]


def compare_runs(runs: list[str], core: BatchedCore, world: World, plan: EpisodePlan,
                 references: dict[str, np.ndarray], boot: Bootstrap) -> dict[str, Any]:
    """Each trained policy on the held-out sessions ``plan``, paired with each reference (a policy that reads a
    column ``core`` lacks plays :func:`policy_core`'s copy: the same sessions).

    Args:
        runs: Run directories (``train.py``).
        core: The held-out core.
        world: The world (its catalog size is checked against each policy's).
        plan: The held-out sessions.
        references: Name → float (E,) its returns on ``plan``.
        boot: The paired test's bootstrap.

    Returns:
        Run → ``{"return", "vs <name>": paired test, …}``.
    """

    out: dict[str, Any] = {}
    flagged: dict[tuple[bool, bool, bool], BatchedCore] = {}
    for run in runs:
        ranker = load_run(run, n_items=world.n_items)
        ret = run_episodes(policy_core(ranker, core, world, flagged), ranker, plan).ret
        row: dict[str, Any] = {"return": float(ret.mean())}
        row.update({f"vs {name}": paired_test(ret, r, boot) for name, r in references.items()})
        out[run] = row
        print(f"  {run}: {ret.mean():.3f}; " + "; ".join(
            f"{key} {t['diff']:+.3f} ({t['ci95'][0]:+.3f} to {t['ci95'][1]:+.3f})"
            for key, t in row.items() if key != "return"), flush=True)
    return out


if __name__ == "__main__":
    main()
