"""Calibrated presets from real interaction logs: simulated users fitted to real users, and a fidelity report.

``python -m envs.calibrate --data movielens:PATH --out DIR`` (or ``--data logs:ITEMS,EVENTS``) writes a preset
directory that ``envs.presets.preset_config(DIR)`` + ``load_world(cfg)`` (and so ``train.py`` / ``evaluate.py
--preset DIR``) accept::

    DIR/env.yaml        EnvConfig values (preset "calibrated:<source>", the fitted user_model values); written last
    DIR/world/          the World (catalog, item embeddings, populations "train" and "heldout", CF model)
    DIR/fidelity.json   {"models": {"simulator"|"mf"|"popularity": {"auc", "ndcg@10", "recall@10"}}, "split",
                        "fit", "distributions", "timings", ...}
    DIR/fidelity.md     the same as tables, with the preprocessing report
    DIR/plots/*.png     popularity curve, genre mix, activity per user, ranking metrics

Steps
-----
1. Read and preprocess the log (:func:`envs.preprocess.preprocess`; what was dropped is reported), then hold
   out each user's last ``holdout`` share of events in time (:func:`envs.preprocess.temporal_split`): **train** /
   **test**. Everything below is fitted on train only; test is touched by the fidelity report alone.
2. The catalog is the item table (:func:`envs.catalog.catalog_from_items`; MovieLens item texts come from
   :func:`envs.logs.movielens_item_text`, category = the first genre); item embeddings from the (cached) encoder.
3. Collaborative filtering: implicit ALS (:func:`envs.cf.fit_als`) on the binarised train matrix, the same model
   and settings as the ``mf`` baseline of :mod:`envs.cf_eval`. Its factors are both the world's hidden
   collaborative truth (``Catalog.cf_factor``, ``Population.cf_taste``) and the observed CF model
   (``World.item_factors``, ``Population.cf_user``).
4. Semantic taste ``θ_u``: the weighted mean embedding of the user's train items minus the catalog's mean
   embedding, L2-normalised. Weights: ``0.5 ** (age / taste_halflife)`` (age = items consumed since, so recent
   items weigh more) times, for ratings, ``max(r − mean_u + 1, 0.1)`` (liked items weigh more), for implicit
   events :data:`envs.logs.EVENT_WEIGHTS`. Centring matters: MiniLM embeddings share a common component
   (``|ē| ≈ 0.64`` on MovieLens) that otherwise dominates ``θ·e``; on a validation split it raised the
   semantic ranking's NDCG@10 from 0.013 to 0.065.
5. Response parameters, by maximum likelihood on a *validation* split cut from train (each user's last
   ``validation`` share of train events; ALS and tastes refitted on the rest): a user's new validation items, in
   time order, are draws without replacement (Plackett-Luce) from the softmax over the items the user had not
   consumed yet, with logits equal to the simulator's session-start utility
   ``a·[ρ_u·z_sem + (1−ρ_u)·z_cf] + Σ_k q_k·x_k`` (``x_k``: standardised item features, log-popularity and the
   shrunk mean rating when the log has ratings). Fitting on choices held out in time rather than on the train
   items matters: ALS fits its own train items almost perfectly, so a fit on them would push ρ to 0 and ``a``
   up; treating the choices as independent draws from the full catalog biases ``a`` low (tests show it). The fit
   alternates (:func:`fit_response`):

   * ``a`` and the ``q_k`` by Newton's method (the log-likelihood is concave in them for fixed ρ);
   * ρ_u on a grid over [0, 1] (all users at once, one pass per grid point), with an empirical-Bayes prior: the
     population's distribution of ρ on the grid is fitted by EM (nonparametric maximum likelihood) and each
     user's ρ_u is the posterior mean, so users with few validation items are shrunk toward the population
     instead of landing on 0 or 1.

   The softmax's partition function runs over ``partition_sample`` catalog columns (the most popular half exactly,
   a uniform draw from the rest, importance-weighted) plus the user's choices. The catalog's hidden quality is
   the fitted combination ``Σ_k q_k·x_k``, standardised; ``quality_weight`` is its standard deviation; the same
   coefficients apply to the features recomputed on all of train.

   What the likelihood prefers: on MovieLens it puts ρ near 0.78 (text explains where in the catalog a user's
   next items fall better than the ALS does), which maximises AUC; a lower ρ (about 0.4) would rank the top ten
   slightly better (NDCG@10), but the linear utility cannot have both, and the fit follows the likelihood.
   Fitting on env-like candidate pools instead of the whole catalog (a conditional likelihood, valid under the
   MNL's independence of irrelevant alternatives) gave the same ρ.
6. Populations: one simulated user per real user. A seeded share ``heldout_users`` of the real users forms the
   ``heldout`` population (never seen by training), the rest ``train``; with ``heldout_users = 0`` both names
   hold all users. history = the user's last ``history_len`` train items (most recent last); init_state =
   :func:`envs.users.pool_history`; popularity = distinct train users per item; patience =
   ``(n_u / median n)^patience_exponent`` clipped to [0.25, 4] (n_u = the user's train events), so heavier real
   users live longer sessions; price 0 for MovieLens (no prices: the price term vanishes and purchases depend
   on satisfaction only), price sensitivity the config's ``price_weight`` for everyone.
7. The outside option: MovieLens has no impressions, so ``no_click_utility`` is not identified by the data. It is
   set (by bisection) so that the first request's expected click rate under a random slate of the session's
   candidates equals ``target_random_ctr`` (0.12: the default preset's random-ranker CTR), keeping the env's
   budget / fatigue dynamics in the range they were tuned for.

Fidelity
--------
On the test split, for every user with held-out items: the simulator's score of an item is its session-start
utility (no fatigue, no repeats: a monotone function of the click probability of the item shown alone), read
from :meth:`envs.world.World.tables` (the env's own numbers); ``mf`` is the same ALS alone; ``popularity`` counts
distinct train users per item. :func:`envs.cf_eval.evaluate_scores` gives AUC, NDCG@10 and recall@10 over the
items the user had not consumed in train. Distribution checks compare the real held-out consumption with
(a) *simulated choices*: each simulated user draws as many items as the real user held out, without
replacement, from the simulator's choice probabilities (softmax of the session-start utility) over the items
not in their train set, and (b) *simulated sessions*: ``sim_sessions`` env sessions per user under the logging
policy (:func:`envs.presets.logging_policy`: ε-uniform + Plackett-Luce on LLM similarity), consumption =
clicks. Item popularity curve, genre mix (first genre) and activity per user are reported for each.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import json
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before numpy loads: implicit's ALS wants one BLAS thread

import numpy as np
import scipy.sparse as sp

from configs.loader import ConfigError, apply_overrides, atomic_write_bytes, atomic_write_text, from_dict, to_dict
from configs.schema import EncoderConfig, EnvConfig
from encoders.base import TextEncoder
from envs.catalog import Catalog, catalog_from_items
from envs.cf import MFModel, fit_als
from envs.cf_eval import evaluate_scores, interaction_matrix
from envs.logs import EVENT_WEIGHTS, EVENTS, InteractionLog, load_logs
from envs.preprocess import PreprocessConfig, PreprocessReport, preprocess, temporal_split
from envs.users import Population, pool_history
from envs.world import World

#: Model keys of ``fidelity.json``.
MODELS: tuple[str, ...] = ("simulator", "mf", "popularity")
#: Metric keys per model in ``fidelity.json``.
METRICS: tuple[str, ...] = ("auc", "ndcg@10", "recall@10")
FORMAT = 1
_RATING = EVENTS.index("rating")


@dataclass
class CalibrationConfig:
    """Settings of :func:`calibrate` (``--set calibrate.<key>=value`` on the command line).

    Attributes:
        holdout: Share of each user's last events (in time) held out for the fidelity report.
        validation: Share of each user's last *train* events cut off to fit ρ, a and q.
        min_events: Users with fewer events are not split (they stay in train entirely).
        als_factors: ALS latent dimension F (also the catalog's ``cf_dim``).
        als_regularization: ALS L2 weight.
        als_alpha: ALS confidence scale.
        als_iterations: ALS sweeps.
        taste_halflife: Items after which a consumed item's weight in the semantic taste halves (<= 0: no decay).
        taste_rating_weight: Weigh rated items by ``max(r − mean_u + 1, 0.1)`` in the semantic taste.
        taste_center: Subtract the catalog's mean embedding before normalising the taste.
        quality_features: Item features the hidden quality is fitted from: ``popularity`` (log distinct users),
            ``rating`` (mean rating shrunk toward the global mean by ``rating_prior`` pseudo-ratings).
        rating_prior: Pseudo-ratings of the shrunk mean rating.
        rho_grid: Grid points for ρ_u on [0, 1].
        fit_rounds: Alternations of the (a, q) Newton fit and the ρ grid search.
        partition_sample: Catalog items in the softmax's partition function during the fit (<= 0: all): the
            half most popular in the fit split always, the other half a uniform draw from the rest, importance
            weighted. On MovieLens (9,742 items) 2,048 columns give a, q and mean ρ within ±0.01 of the exact fit,
            about 4 times faster; a plain uniform sample of 2,048 was off by 0.08 in a.
        rho_prior: ``"population"`` (empirical Bayes: posterior mean under the fitted population prior) or
            ``"flat"`` (per-user maximum likelihood on the grid).
        heldout_users: Share of real users in the ``heldout`` population (0: both populations hold everyone).
        history_len: Prior-history items per user (most recent last).
        patience_exponent: ``patience_u = (n_u / median n) ** patience_exponent``, clipped to [0.25, 4].
        target_random_ctr: Expected first-request CTR of a random slate; sets ``no_click_utility``.
        sim_sessions: Env sessions per user for the distribution checks.
        seed: Seed of the user split and the simulations.
    """

    holdout: float = 0.2
    validation: float = 0.2
    min_events: int = 5
    als_factors: int = 64
    als_regularization: float = 10.0
    als_alpha: float = 1.0
    als_iterations: int = 15
    taste_halflife: float = 30.0
    taste_rating_weight: bool = True
    taste_center: bool = True
    quality_features: list[str] = field(default_factory=lambda: ["popularity", "rating"])
    rating_prior: float = 5.0
    rho_grid: int = 21
    fit_rounds: int = 4
    partition_sample: int = 2048
    rho_prior: str = "population"
    heldout_users: float = 0.2
    history_len: int = 20
    patience_exponent: float = 0.5
    target_random_ctr: float = 0.12
    sim_sessions: int = 3
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("holdout", "validation"):
            v = getattr(self, name)
            if not 0.0 < v < 1.0:
                raise ValueError(f"calibrate.{name} must be in (0, 1), got {v}")
        if not 0.0 <= self.heldout_users < 1.0:
            raise ValueError(f"calibrate.heldout_users must be in [0, 1), got {self.heldout_users}")
        if self.rho_grid < 2:
            raise ValueError(f"calibrate.rho_grid must be >= 2, got {self.rho_grid}")
        if self.rho_prior not in ("population", "flat"):
            raise ValueError(f"calibrate.rho_prior must be 'population' or 'flat', got {self.rho_prior!r}")
        unknown = set(self.quality_features) - {"popularity", "rating"}
        if unknown:
            raise ValueError(f"calibrate.quality_features: unknown {sorted(unknown)}; use popularity, rating")
        if not 0.0 < self.target_random_ctr < 1.0:
            raise ValueError(f"calibrate.target_random_ctr must be in (0, 1), got {self.target_random_ctr}")
        for name in ("als_factors", "als_iterations", "history_len", "sim_sessions", "fit_rounds"):
            if getattr(self, name) < 1:
                raise ValueError(f"calibrate.{name} must be >= 1, got {getattr(self, name)}")


# --------------------------------------------------------------------------------------------------------------
# Pieces (pure functions over arrays)
# --------------------------------------------------------------------------------------------------------------


def standardise_rows(x: np.ndarray) -> np.ndarray:
    """Each row minus its mean over its std (as the simulator standardises z_sem and z_cf).

    Args:
        x: float (U, M).

    Returns:
        float32 (U, M).
    """
    mu = x.mean(axis=1, keepdims=True)
    sd = x.std(axis=1, keepdims=True)
    return ((x - mu) / np.maximum(sd, 1e-6)).astype(np.float32)


def _standardise(x: np.ndarray) -> np.ndarray:
    sd = float(x.std())
    return ((x - x.mean()) / (sd if sd > 0 else 1.0)).astype(np.float32)


def event_order(log: InteractionLog) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each event's user, item and age within its user's time order.

    Args:
        log: The log.

    Returns:
        (users int64 (E,), items int64 (E,), age int64 (E,)): age 0 for the user's most recent event, 1 for the one
        before, ... (ties in timestamp by file order).
    """
    u, i = log.codes()
    ts = log.events["timestamp"].to_numpy(dtype=np.int64)
    order = np.lexsort((np.arange(u.size), ts, u))
    su = u[order]
    first = np.searchsorted(su, su, side="left")
    n = np.bincount(u, minlength=log.n_users)[su]
    age = np.empty(u.size, np.int64)
    age[order] = n - 1 - (np.arange(su.size) - first)
    return u, i, age


def taste_weights(log: InteractionLog, halflife: float, rating_weight: bool) -> np.ndarray:
    """Per-event weight in the semantic taste: recency decay times a preference weight.

    Args:
        log: The log.
        halflife: Items after which the weight halves (<= 0: no decay).
        rating_weight: Ratings weigh ``max(r − mean_u + 1, 0.1)`` (else 1); implicit events weigh
            :data:`envs.logs.EVENT_WEIGHTS`.

    Returns:
        float64 (E,) weights, aligned with ``log.events``.
    """
    u, _, age = event_order(log)
    codes = log.events["event"].cat.codes.to_numpy()
    value = log.events["value"].to_numpy(dtype=np.float64)
    per_event = np.array([EVENT_WEIGHTS.get(e, 1.0) for e in EVENTS])
    w = per_event[codes]
    rated = (codes == _RATING) & ~np.isnan(value)
    w[codes == _RATING] = 1.0
    if rating_weight and rated.any():
        n = np.bincount(u[rated], minlength=log.n_users)
        mean = np.bincount(u[rated], weights=value[rated], minlength=log.n_users) / np.maximum(n, 1)
        w[rated] = np.maximum(value[rated] - mean[u[rated]] + 1.0, 0.1)
    if halflife > 0:
        w = w * 0.5 ** (age / halflife)
    return w


def semantic_taste(
    users: np.ndarray, items: np.ndarray, weights: np.ndarray, item_emb: np.ndarray, n_users: int, center: bool = True
) -> np.ndarray:
    """θ_u: the weighted mean embedding of each user's items (minus the catalog mean), L2-normalised.

    Args:
        users: int (E,) user indices.
        items: int (E,) item indices.
        weights: float (E,) weights (>= 0).
        item_emb: float32 (M, D) item embeddings.
        n_users: U.
        center: Subtract the catalog's mean embedding (see the module docstring).

    Returns:
        float32 (U, D), unit rows (zero rows for users without events).
    """
    m = item_emb.shape[0]
    s = sp.csr_matrix((np.asarray(weights, np.float64), (users, items)), shape=(n_users, m))
    total = np.asarray(s.sum(axis=1)).ravel()
    theta = np.asarray(s @ item_emb.astype(np.float64)) / np.maximum(total, 1e-12)[:, None]
    if center:
        theta = np.where(total[:, None] > 0, theta - item_emb.mean(axis=0, dtype=np.float64), 0.0)
    norm = np.linalg.norm(theta, axis=1, keepdims=True)
    return (theta / np.where(norm > 0, norm, 1.0)).astype(np.float32)


def last_items(log: InteractionLog, length: int) -> np.ndarray:
    """Each user's last ``length`` distinct-event items in time order (most recent last), -1 padded on the left.

    Args:
        log: The log.
        length: H.

    Returns:
        int64 (U, H).
    """
    u, i, age = event_order(log)
    keep = age < length
    out = np.full((log.n_users, length), -1, np.int64)
    out[u[keep], length - 1 - age[keep]] = i[keep]
    return out


def item_features(log: InteractionLog, names: Sequence[str], rating_prior: float) -> tuple[np.ndarray, list[str]]:
    """Standardised item features the hidden quality is fitted from.

    Args:
        log: Training log.
        names: ``popularity`` (log1p distinct users) and / or ``rating`` (shrunk mean rating; skipped when the log
            has no ratings).
        rating_prior: Pseudo-ratings at the global mean in the shrunk mean.

    Returns:
        (float32 (Q, M) features, their names); Q may be 0.
    """
    feats, used = [], []
    for name in names:
        if name == "popularity":
            counts = np.asarray(interaction_matrix(log).sum(axis=0), dtype=np.float64).ravel()
            feats.append(_standardise(np.log1p(counts)))
            used.append(name)
        elif name == "rating":
            codes = log.events["event"].cat.codes.to_numpy()
            value = log.events["value"].to_numpy(dtype=np.float64)
            rated = (codes == _RATING) & ~np.isnan(value)
            if not rated.any():
                continue
            _, items = log.codes()
            n = np.bincount(items[rated], minlength=log.n_items)
            total = np.bincount(items[rated], weights=value[rated], minlength=log.n_items)
            mean = value[rated].mean()
            feats.append(_standardise((total + rating_prior * mean) / (n + rating_prior)))
            used.append(name)
    m = log.n_items
    return (np.stack(feats) if feats else np.zeros((0, m), np.float32)).astype(np.float32), used


# --------------------------------------------------------------------------------------------------------------
# Maximum-likelihood fit of ρ_u, a and q
# --------------------------------------------------------------------------------------------------------------


@dataclass
class ResponseFit:
    """The fitted response parameters.

    Attributes:
        rho: float32 (U,) ρ_u (posterior mean under the prior, or the per-user grid MLE).
        affinity_scale: a.
        quality_coef: float64 (Q,) coefficients q_k of the standardised item features.
        rho_grid: float64 (G,) grid of ρ.
        rho_prior: float64 (G,) the fitted population prior on the grid (uniform for ``flat``).
        loglik: Total log-likelihood of the choices at the fitted values.
        n_choices: Choices (positives) the fit used.
        n_users: Users with at least one choice.
        history: Per round: (a, q..., mean ρ, loglik).
    """

    rho: np.ndarray
    affinity_scale: float
    quality_coef: np.ndarray
    rho_grid: np.ndarray
    rho_prior: np.ndarray
    loglik: float
    n_choices: int
    n_users: int
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def loglik_per_choice(self) -> float:
        """Mean log-likelihood per choice."""
        return self.loglik / max(self.n_choices, 1)


def choice_sequences(log: InteractionLog, exclude: sp.csr_matrix | None = None) -> np.ndarray:
    """Each user's items in time order (first event of each item), leaving out ``exclude``'d items.

    Args:
        log: The log (e.g. a validation split).
        exclude: bool (U, M) items to leave out (e.g. consumed in the fit split), or None.

    Returns:
        int64 (U, P) item indices, oldest first, -1 padded on the right (P = the longest sequence, at least 1).
    """
    u, i, age = event_order(log)
    order = np.lexsort((-age, u))  # by user, oldest first
    u, i = u[order], i[order]
    keep = np.ones(u.size, bool)
    if exclude is not None and u.size:
        keep = ~np.asarray(sp.csr_matrix(exclude)[u, i], dtype=bool).ravel()
    key = u * np.int64(log.n_items) + i
    first = np.zeros(u.size, bool)
    first[np.unique(key, return_index=True)[1]] = True  # the earliest event of each (user, item)
    u, i = u[keep & first], i[keep & first]
    n = np.bincount(u, minlength=log.n_users)
    slot = np.arange(u.size) - np.repeat(np.cumsum(n) - n, n)
    out = np.full((log.n_users, max(int(n.max()) if n.size else 0, 1)), -1, np.int64)
    out[u, slot] = i
    return out


@dataclass
class _ChoiceBlock:
    """The choice sets of a fit as a dense (U, C) block: S sampled catalog columns, then each user's P choices.

    Attributes:
        z_cf: float32 (U, C) standardised CF affinity.
        diff: float32 (U, C) ``z_sem − z_cf``.
        f_cols: float32 (Q, S) item features of the sampled columns (the same for every user).
        f_pos: float32 (Q, U, P) item features of the choices.
        log_w: float32 (U, C) log importance weight of each column in the user's partition function (-inf: not
            in the user's choice set).
        valid: bool (U, P) real choices (False: padding).
    """

    z_cf: np.ndarray
    diff: np.ndarray
    f_cols: np.ndarray
    f_pos: np.ndarray
    log_w: np.ndarray
    valid: np.ndarray

    @property
    def n_sampled(self) -> int:
        """S."""
        return int(self.f_cols.shape[1])


def _choice_block(z_sem: np.ndarray, z_cf: np.ndarray, features: np.ndarray, choices: np.ndarray,
                  exclude: sp.csr_matrix, sample: int, seed: int, anchor: np.ndarray | None = None) -> _ChoiceBlock:
    """Columns: ``sample`` catalog items (all items when ``sample`` <= 0 or >= M), then each user's choices.

    Sampling is stratified: the ``sample // 2`` items with the highest ``anchor`` (e.g. popularity, which carries
    most of the partition function) are always in, the rest of the columns are a uniform draw from the other
    items, the same for every user. A drawn item stands for ``available items of its stratum / drawn available
    items of its stratum`` of the user (never chosen, not excluded), so the sampled partition function estimates
    the exact one without bias; chosen items count once, exactly.
    """
    n_users, m = z_sem.shape
    gen = np.random.default_rng(seed)
    if 0 < sample < m:
        n_top = sample // 2 if anchor is not None else 0
        top = np.argsort(-np.asarray(anchor), kind="stable")[:n_top] if n_top else np.zeros(0, np.int64)
        rest = np.setdiff1d(np.arange(m), top)
        cols = np.concatenate([top, np.sort(gen.choice(rest, size=sample - n_top, replace=False))])
        stratum = np.r_[np.zeros(n_top, np.int64), np.ones(sample - n_top, np.int64)]
        in_top = np.zeros(m, bool)
        in_top[top] = True
    else:
        cols, stratum, in_top = np.arange(m), np.zeros(m, np.int64), np.ones(m, bool)
    valid = choices >= 0
    items = np.where(valid, choices, 0)
    rows = np.broadcast_to(np.arange(n_users)[:, None], choices.shape)
    chosen = sp.csr_matrix((np.ones(int(valid.sum())), (rows[valid], choices[valid])), shape=(n_users, m))
    blocked = (sp.csr_matrix(exclude).astype(bool) + chosen.astype(bool)).tocsr()
    blocked_cols = blocked[:, cols].toarray()  # (U, S)
    blocked_top = np.asarray(blocked[:, np.flatnonzero(in_top)].sum(axis=1)).ravel()
    n_avail = np.stack([in_top.sum() - blocked_top, (m - in_top.sum()) - (np.asarray(blocked.sum(axis=1)).ravel()
                                                                            - blocked_top)], axis=1)  # (U, 2)
    n_drawn = np.stack([((~blocked_cols) & (stratum == g)).sum(axis=1) for g in (0, 1)], axis=1)  # (U, 2)
    scale = np.where(n_drawn > 0, n_avail / np.maximum(n_drawn, 1), 0.0)  # (U, 2)
    log_w_cols = np.where(blocked_cols, -np.inf, np.log(np.maximum(scale[:, stratum], 1e-300))).astype(np.float32)
    r = np.arange(n_users)[:, None]
    zc = np.concatenate([z_cf[:, cols], z_cf[r, items]], axis=1).astype(np.float32)
    zs = np.concatenate([z_sem[:, cols], z_sem[r, items]], axis=1).astype(np.float32)
    return _ChoiceBlock(
        z_cf=zc,
        diff=zs - zc,
        f_cols=np.ascontiguousarray(features[:, cols], np.float32),
        f_pos=features[:, items].astype(np.float32),
        log_w=np.concatenate([log_w_cols, np.where(valid, 0.0, -np.inf).astype(np.float32)], axis=1),
        valid=valid,
    )


def _excl_cumsum(x: np.ndarray) -> np.ndarray:
    """Exclusive cumulative sum along the last axis (the sum of the earlier entries)."""
    return np.cumsum(x, axis=-1) - x


def _choice_loglik(blk: _ChoiceBlock, a: float, q: np.ndarray, rho: np.ndarray, sequential: bool,
                   moments: bool = False) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Per-user log-likelihood of the choices, and optionally its gradient and (approximate) Fisher information in
    (a, q).

    The logit of column j for user u is ``a·x_uj + Σ_k q_k f_kuj`` with ``x = ρ_u·z_sem + (1−ρ_u)·z_cf``; choice t
    of a user is a draw from the softmax over the user's choice set minus (``sequential``) the user's earlier
    choices: ``log P = s_t − log(Z − Σ_{t' < t} exp(s_t'))``.

    Returns:
        (ll float64 (U,), grad float64 (K,) or None, info float64 (K, K) or None) with K = 1 + Q.
    """
    sn, q_dim = blk.n_sampled, q.size
    x = blk.z_cf + rho[:, None].astype(np.float32) * blk.diff  # (U, C)
    s = np.float32(a) * x + blk.log_w
    if q_dim:
        s[:, :sn] += (q @ blk.f_cols).astype(np.float32)[None, :]
        s[:, sn:] += np.einsum("k,kup->up", q, blk.f_pos).astype(np.float32)
    top = s.max(axis=1)
    top = np.where(np.isfinite(top), top, 0.0).astype(np.float32)
    e = np.exp(s - top[:, None])  # (U, C), 0 outside the choice sets
    z = e.sum(axis=1, dtype=np.float64)  # (U,)
    ep = e[:, sn:].astype(np.float64)  # (U, P), 0 at padding
    cum = _excl_cumsum(ep) if sequential else np.zeros_like(ep)
    rest = np.maximum(z[:, None] - cum, 1e-300)  # (U, P) partition function left at each choice
    s_pos = np.where(blk.valid, s[:, sn:].astype(np.float64) - top[:, None], 0.0)
    ll = np.where(blk.valid, s_pos - np.log(rest), 0.0).sum(axis=1)
    if not moments:
        return ll, None, None
    k_dim = 1 + q_dim
    ex = e * x
    ec = e[:, :sn]
    # Σ_c e·f_k and Σ_c e·f_k·f_l over all columns, per user: x is dense, the features are per item on the
    # sampled columns (matrix-vector products) and per choice on the rest.
    big_a = np.empty((len(e), k_dim))
    big_aa = np.empty((len(e), k_dim, k_dim))
    big_a[:, 0] = ex.sum(axis=1, dtype=np.float64)
    big_aa[:, 0, 0] = (ex * x).sum(axis=1, dtype=np.float64)
    if q_dim:
        fc, fpos = blk.f_cols.astype(np.float64), blk.f_pos.astype(np.float64)
        e_pos = ep
        ex_pos = ex[:, sn:].astype(np.float64)
        big_a[:, 1:] = ec @ fc.T + np.einsum("up,kup->uk", e_pos, fpos)
        big_aa[:, 0, 1:] = ex[:, :sn] @ fc.T + np.einsum("up,kup->uk", ex_pos, fpos)
        big_aa[:, 1:, 0] = big_aa[:, 0, 1:]
        ff = fc[:, None, :] * fc[None, :, :]  # (Q, Q, S)
        big_aa[:, 1:, 1:] = (ec @ ff.reshape(q_dim * q_dim, -1).T).reshape(-1, q_dim, q_dim) + np.einsum(
            "up,kup,lup->ukl", e_pos, fpos, fpos)
        fp = np.concatenate([x[None, :, sn:].astype(np.float64), fpos], axis=0)  # (K, U, P)
    else:
        fp = x[None, :, sn:].astype(np.float64)
    c1 = _excl_cumsum(ep[None] * fp) if sequential else 0.0  # (K, U, P)
    e1 = (big_a.T[:, :, None] - c1) / rest[None]  # (K, U, P) E_t[f] over what is left at choice t
    grad = np.where(blk.valid[None], fp - e1, 0.0).sum(axis=(1, 2))
    # Fisher information with every choice's covariance taken over the user's whole choice set (exact for
    # sequential=False, a close approximation otherwise): Newton's steps stay ascent directions, the gradient is
    # exact, and no (K, K, U, P) arrays are needed.
    mean = big_a / z[:, None]  # (U, K)
    cov = big_aa / z[:, None, None] - mean[:, :, None] * mean[:, None, :]  # (U, K, K)
    info = np.einsum("u,ukl->kl", blk.valid.sum(axis=1).astype(np.float64), cov)
    return ll, grad, info


def _grid_loglik(blk: _ChoiceBlock, a: float, q: np.ndarray, rho_grid: np.ndarray, sequential: bool) -> np.ndarray:
    """Per-user log-likelihood at every ρ of the grid, all users sharing each ρ: float64 (U, G).

    The same numbers as :func:`_choice_loglik` with ``rho = full(U, r)``, with the ρ-free part of the logits
    computed once and the per-ρ logits built in place.
    """
    sn, n_users = blk.n_sampled, len(blk.z_cf)
    base = np.float32(a) * blk.z_cf + blk.log_w  # (U, C)
    if q.size:
        base[:, :sn] += (q @ blk.f_cols).astype(np.float32)[None, :]
        base[:, sn:] += np.einsum("k,kup->up", q, blk.f_pos).astype(np.float32)
    s = np.empty_like(base)
    out = np.empty((n_users, len(rho_grid)))
    for g, r in enumerate(rho_grid):
        np.multiply(blk.diff, np.float32(a * r), out=s)
        s += base
        top = s.max(axis=1)
        top = np.where(np.isfinite(top), top, 0.0).astype(np.float32)
        s_pos = np.where(blk.valid, s[:, sn:].astype(np.float64) - top[:, None], 0.0)
        s -= top[:, None]
        np.exp(s, out=s)
        z = s.sum(axis=1, dtype=np.float64)
        ep = s[:, sn:].astype(np.float64)
        rest = np.maximum(z[:, None] - (_excl_cumsum(ep) if sequential else 0.0), 1e-300)
        out[:, g] = np.where(blk.valid, s_pos - np.log(rest), 0.0).sum(axis=1)
    return out


def fit_response(
    z_sem: np.ndarray,
    z_cf: np.ndarray,
    features: np.ndarray,
    choices: np.ndarray,
    exclude: sp.csr_matrix,
    grid: int = 21,
    rounds: int = 4,
    prior: str = "population",
    newton_steps: int = 8,
    sample: int = 2048,
    seed: int = 0,
    sequential: bool = True,
    anchor: np.ndarray | None = None,
) -> ResponseFit:
    """Maximum likelihood of choices under ``softmax_j(a·[ρ_u·z_sem + (1−ρ_u)·z_cf] + Σ_k q_k·features_k)``.

    User u's choices, in order, are draws without replacement (Plackett-Luce): the t-th from the softmax over the
    items not in ``exclude[u]`` and not chosen before (``sequential=False``: every choice from the full set, which
    biases ``a`` low when users choose many items). ``a`` and ``q`` are fitted by Newton's method for fixed ρ, ρ_u
    on a grid for fixed (a, q); the two alternate ``rounds`` times (see the module docstring for the
    empirical-Bayes prior). The partition function sums over a uniform sample of ``sample`` catalog items
    (importance-weighted, the same sample for every user and every parameter value; stratified on ``anchor``
    when given) plus the user's choices; ``sample`` <= 0 sums over the whole catalog.

    Args:
        z_sem: float32 (U, M) standardised semantic affinity.
        z_cf: float32 (U, M) standardised CF affinity.
        features: float32 (Q, M) item features (Q may be 0).
        choices: int64 (U, P) chosen items in order, -1 padded (:func:`choice_sequences`); distinct per row.
        exclude: bool (U, M) items not available to the user (consumed before); must not hold a choice.
        grid: Grid points for ρ on [0, 1].
        rounds: Alternations.
        prior: ``"population"`` (posterior mean under the EM-fitted grid prior) or ``"flat"`` (grid MLE).
        newton_steps: Newton iterations per round.
        sample: Catalog items in the partition function (<= 0: all).
        seed: Seed of the sample.
        sequential: Plackett-Luce (True) or independent choices from the full set.
        anchor: float (M,) item score whose top ``sample // 2`` items are always in the sample (e.g. popularity).

    Returns:
        The fit.

    Raises:
        ValueError: On shape mismatches, choices that are excluded or repeated, or when there are no choices.
    """
    n_users, m = z_sem.shape
    choices = np.asarray(choices, np.int64)
    if z_cf.shape != (n_users, m) or exclude.shape != (n_users, m) or choices.ndim != 2 or len(choices) != n_users:
        raise ValueError(f"shape mismatch: z_sem {z_sem.shape}, z_cf {z_cf.shape}, choices {choices.shape}, "
                         f"exclude {exclude.shape}")
    if prior not in ("population", "flat"):
        raise ValueError(f"prior must be 'population' or 'flat', got {prior!r}")
    valid = choices >= 0
    if not valid.any():
        raise ValueError("no choices to fit the response parameters on")
    if choices.max() >= m:
        raise ValueError(f"choice index out of range [0, {m})")
    rows = np.broadcast_to(np.arange(n_users)[:, None], choices.shape)[valid]
    if np.asarray(sp.csr_matrix(exclude)[rows, choices[valid]]).any():
        raise ValueError("some choices are among the excluded items")
    if np.unique(rows * np.int64(m) + choices[valid]).size != rows.size:
        raise ValueError("a user chooses the same item twice")
    features = np.asarray(features, np.float32).reshape(-1, m)
    q_dim = features.shape[0]
    blk = _choice_block(z_sem, z_cf, features, choices, exclude, sample, seed, anchor)
    n_pos = valid.sum(axis=1)
    rho_grid = np.linspace(0.0, 1.0, grid)
    rho = np.full(n_users, 0.5)
    theta = np.r_[1.0, np.zeros(q_dim)]
    log_prior = np.full(grid, -np.log(grid))
    history: list[dict[str, Any]] = []
    ll_total = -np.inf
    for _ in range(rounds):
        # (a, q) by Newton for fixed ρ (the log-likelihood is concave in them), with step halving.
        ll_u, grad, info = _choice_loglik(blk, theta[0], theta[1:], rho, sequential, moments=True)
        ll = float(ll_u.sum())
        for _step in range(newton_steps):
            step = np.linalg.solve(info + 1e-9 * np.eye(1 + q_dim), grad)
            t, accepted = 1.0, False
            while t > 1e-4:
                cand = theta + t * step
                ll_new = float(_choice_loglik(blk, cand[0], cand[1:], rho, sequential)[0].sum())
                if ll_new >= ll - 1e-9:
                    accepted = True
                    break
                t *= 0.5
            if not accepted:
                break
            gain, theta, ll = ll_new - ll, cand, ll_new
            if gain < 1e-7 * max(abs(ll), 1.0):
                break
            _, grad, info = _choice_loglik(blk, theta[0], theta[1:], rho, sequential, moments=True)
        # ρ_u on the grid for fixed (a, q): one pass over the block per grid point, all users at once.
        grid_ll = _grid_loglik(blk, theta[0], theta[1:], rho_grid, sequential)  # (U, G)
        if prior == "population":
            log_prior = _npmle_prior(grid_ll)
            post = grid_ll + log_prior[None, :]
            post = np.exp(post - post.max(axis=1, keepdims=True))
            rho = (post @ rho_grid) / post.sum(axis=1)
        else:
            rho = rho_grid[np.argmax(grid_ll, axis=1)]
        ll_total = float(_choice_loglik(blk, theta[0], theta[1:], rho, sequential)[0].sum())
        history.append({"affinity_scale": float(theta[0]), "quality_coef": theta[1:].tolist(),
                        "rho_mean": float(rho.mean()), "loglik": ll_total})
    return ResponseFit(
        rho=rho.astype(np.float32),
        affinity_scale=float(theta[0]),
        quality_coef=np.asarray(theta[1:], np.float64),
        rho_grid=rho_grid,
        rho_prior=np.exp(log_prior),
        loglik=ll_total,
        n_choices=int(n_pos.sum()),
        n_users=int((n_pos > 0).sum()),
        history=history,
    )


def _npmle_prior(grid_ll: np.ndarray, iterations: int = 300) -> np.ndarray:
    """EM for the population's distribution of ρ on the grid (nonparametric maximum likelihood).

    Args:
        grid_ll: float64 (U, G) per-user log-likelihood at each grid point.
        iterations: EM iterations.

    Returns:
        float64 (G,) log prior probabilities.
    """
    lik = np.exp(grid_ll - grid_ll.max(axis=1, keepdims=True))  # (U, G), per-user scale irrelevant
    pi = np.full(grid_ll.shape[1], 1.0 / grid_ll.shape[1])
    for _ in range(iterations):
        w = lik * pi[None, :]
        w /= w.sum(axis=1, keepdims=True)
        pi = np.maximum(w.mean(axis=0), 1e-12)
        pi /= pi.sum()
    return np.log(pi)


# --------------------------------------------------------------------------------------------------------------
# The calibrated world
# --------------------------------------------------------------------------------------------------------------


@dataclass
class _Parts:
    """What the fit derives from one training log (fit split or all of train).

    Attributes:
        mf: The ALS model.
        sem_taste: float32 (U, D) unit semantic tastes.
        z_sem: float32 (U, M) standardised ``θ_u·e_i`` (None when not asked for).
        z_cf: float32 (U, M) standardised ALS scores (None when not asked for).
        features: float32 (Q, M) standardised item features.
        feature_names: Their names.
    """

    mf: MFModel
    sem_taste: np.ndarray
    z_sem: np.ndarray | None
    z_cf: np.ndarray | None
    features: np.ndarray
    feature_names: list[str]


def _als(log: InteractionLog, cfg: CalibrationConfig) -> MFModel:
    u, i, w = log.interaction_weights(mode="binary")
    return fit_als(u, i, w, log.n_users, log.n_items, factors=cfg.als_factors, regularization=cfg.als_regularization,
                   iterations=cfg.als_iterations, alpha=cfg.als_alpha, seed=cfg.seed)


def _parts(log: InteractionLog, item_emb: np.ndarray, cfg: CalibrationConfig, with_z: bool = True) -> _Parts:
    mf = _als(log, cfg)
    u, i, _ = event_order(log)
    w = taste_weights(log, cfg.taste_halflife, cfg.taste_rating_weight)
    theta = semantic_taste(u, i, w, item_emb, log.n_users, center=cfg.taste_center)
    feats, names = item_features(log, cfg.quality_features, cfg.rating_prior)
    z_sem = standardise_rows(theta @ item_emb.T) if with_z else None
    z_cf = standardise_rows(mf.user_factors @ mf.item_factors.T) if with_z else None
    return _Parts(mf=mf, sem_taste=theta, z_sem=z_sem, z_cf=z_cf, features=feats, feature_names=names)


def _catalog(log: InteractionLog, parts: _Parts, coef: np.ndarray) -> tuple[Catalog, float]:
    """The catalog with fitted hidden attributes: quality = standardised Σ q_k x_k, cf_factor = ALS item factors.

    Returns:
        (catalog, quality_weight).
    """
    cat = catalog_from_items(log.items, parts.mf.item_factors.shape[1], seed=0)
    combo = (coef @ parts.features).astype(np.float64) if coef.size else np.zeros(log.n_items)
    sd = float(combo.std())
    cat.quality = ((combo - combo.mean()) / sd).astype(np.float32) if sd > 0 else np.zeros(log.n_items, np.float32)
    cat.cf_factor = parts.mf.item_factors.astype(np.float32)
    return cat, sd


def _split_users(n_users: int, share: float, seed: int) -> dict[str, np.ndarray]:
    """Real user indices per population: a seeded share for ``heldout`` (or everyone in both)."""
    if share <= 0 or n_users < 2:
        everyone = np.arange(n_users)
        return {"train": everyone, "heldout": everyone}
    perm = np.random.default_rng(seed).permutation(n_users)
    k = min(max(1, round(share * n_users)), n_users - 1)
    return {"train": np.sort(perm[k:]), "heldout": np.sort(perm[:k])}


def _outside_option(world: World, cfg: EnvConfig, target: float, seed: int) -> tuple[float, float]:
    """``no_click_utility`` giving the first request's expected CTR ``target`` under a random slate.

    The expectation is exact over the choice model (no sampling): every train-population user starts one session,
    the slate is the first K of its N candidates (which the env draws in random order from the session's pool).

    Returns:
        (no_click_utility, the random-slate CTR it gives).
    """
    from scipy.optimize import brentq

    from envs import rng
    from envs.core import BatchedCore
    from envs.response import cascade_click_probs, mnl_click_probs, position_weights

    um = cfg.user_model
    n = world.populations["train"].size
    core = BatchedCore(world, cfg, n, population="train")
    keys = rng.splitmix64(np.arange(n, dtype=np.uint64) + np.uint64(seed) * np.uint64(7_919))
    core.reset_rows(np.arange(n), keys, np.arange(n))
    core.observe()
    util = core.candidate_utility()[:, : cfg.slate_size].astype(np.float64)  # (B, K)
    pos_w = position_weights(cfg.slate_size, um.position_decay)

    def ctr(u0: float) -> float:
        if um.choice_model == "mnl":
            p = mnl_click_probs(util, pos_w, u0)
        else:
            p = cascade_click_probs(util, pos_w, u0, um.cascade_abandon)
        return float(p.sum(axis=1).mean())

    lo, hi = float(util.min()) - 30.0, float(util.max()) + 30.0
    if not ctr(hi) < target < ctr(lo):
        return um.no_click_utility, ctr(um.no_click_utility)
    u0 = float(brentq(lambda v: ctr(v) - target, lo, hi, xtol=1e-4))
    return round(u0, 4), ctr(round(u0, 4))


def _session_start_utility(world: World, cfg: EnvConfig, users: dict[str, np.ndarray], n_users: int) -> np.ndarray:
    """float32 (U, M) session-start utility of every real user (no fatigue, no repeats), from the world's tables.

    The tables are taken from a one-row core of each population, so the env's later cores reuse them.
    """
    from envs.core import BatchedCore

    um = cfg.user_model
    out = np.zeros((n_users, world.n_items), np.float32)
    for name, idx in users.items():
        pop = world.populations[name]
        tab = BatchedCore(world, cfg, 1, population=name).tables
        out[idx] = um.affinity_scale * pop.rho[:, None] * (tab.sem_aff - tab.sem_mu[:, None]) / tab.sem_sd[:, None]
        out[idx] += tab.static_util
    return out


# --------------------------------------------------------------------------------------------------------------
# Distribution checks and plots
# --------------------------------------------------------------------------------------------------------------


def _gini(counts: np.ndarray) -> float:
    x = np.sort(np.asarray(counts, np.float64))
    if x.sum() <= 0:
        return 0.0
    n = x.size
    return float((2 * np.arange(1, n + 1) - n - 1) @ x / (n * x.sum()))


def _popularity_stats(counts: np.ndarray) -> dict[str, float]:
    total = counts.sum()
    top = np.sort(counts)[::-1]
    k1 = max(1, round(0.01 * counts.size))
    k10 = max(1, round(0.10 * counts.size))
    return {
        "events": int(total),
        "gini": round(_gini(counts), 4),
        "top1pct_share": round(float(top[:k1].sum() / max(total, 1)), 4),
        "top10pct_share": round(float(top[:k10].sum() / max(total, 1)), 4),
        "coverage": round(float((counts > 0).mean()), 4),
    }


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    if a.size < 3 or np.all(a == a[0]) or np.all(b == b[0]):
        return float("nan")
    return round(float(spearmanr(a, b).statistic), 4)


def _draw_choices(util: np.ndarray, exclude: sp.csr_matrix, n_draw: np.ndarray, seed: int) -> tuple[np.ndarray, ...]:
    """Each user draws ``n_draw[u]`` items without replacement from softmax(util[u]) over non-excluded items.

    Gumbel-top-k: the k largest of ``util + Gumbel noise`` are a sample without replacement from the softmax.

    Args:
        util: float32 (U, M) utilities.
        exclude: bool (U, M) items that cannot be drawn.
        n_draw: int (U,) items per user.
        seed: Seed.

    Returns:
        (users int64 (n,), items int64 (n,)).
    """
    gen = np.random.default_rng(seed)
    keys = util - np.log(-np.log(gen.random(util.shape, dtype=np.float32) + np.float32(1e-12)))
    keys[exclude.toarray().astype(bool)] = -np.inf
    n_draw = np.minimum(n_draw, np.isfinite(keys).sum(axis=1))
    width = int(n_draw.max()) if n_draw.size else 0
    if width == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    top = np.argpartition(-keys, width - 1, axis=1)[:, :width]
    order = np.argsort(-np.take_along_axis(keys, top, axis=1), axis=1)
    top = np.take_along_axis(top, order, axis=1)
    take = np.arange(width)[None, :] < n_draw[:, None]
    users = np.broadcast_to(np.arange(len(util))[:, None], top.shape)[take]
    return users.astype(np.int64), top[take].astype(np.int64)


def _distributions(real_items: np.ndarray, sims: dict[str, tuple[np.ndarray, np.ndarray]], real_activity: np.ndarray,
                   sim_activity: np.ndarray, catalog: Catalog) -> dict[str, Any]:
    """Popularity curve, genre mix and activity statistics, real against each simulated source."""
    m, c = catalog.n_items, catalog.n_categories
    names = catalog.category_names
    real_counts = np.bincount(real_items, minlength=m)
    sources = {"real": real_counts, **{k: np.bincount(v[1], minlength=m) for k, v in sims.items()}}
    pop = {k: _popularity_stats(v) for k, v in sources.items()}
    for k in sims:
        pop[k]["spearman_vs_real"] = _spearman(real_counts, sources[k])
    mix = {k: np.bincount(catalog.category[v > 0].repeat(v[v > 0]), minlength=c) for k, v in sources.items()}
    shares = {k: (v / max(v.sum(), 1)).round(4).tolist() for k, v in mix.items()}
    tv = {k: round(0.5 * float(np.abs(np.array(shares[k]) - np.array(shares["real"])).sum()), 4) for k in sims}

    def quantiles(x: np.ndarray) -> dict[str, float]:
        med = float(np.median(x)) if x.size else 0.0
        qs = np.quantile(x, [0.1, 0.25, 0.5, 0.75, 0.9]) if x.size else np.zeros(5)
        return {"median": round(med, 3), "mean": round(float(x.mean()) if x.size else 0.0, 3),
                **{f"q{int(p * 100)}_over_median": round(float(v / med), 3) if med > 0 else None
                   for p, v in zip((0.1, 0.25, 0.5, 0.75, 0.9), qs, strict=True)},
                "cv": round(float(x.std() / x.mean()), 3) if x.size and x.mean() > 0 else None}

    return {
        "popularity": pop,
        "genre_mix": {"categories": names, "shares": shares, "tv_distance_vs_real": tv},
        "activity": {
            "real": quantiles(real_activity.astype(np.float64)),
            "simulated_sessions": quantiles(sim_activity.astype(np.float64)),
            "spearman_real_vs_simulated": _spearman(real_activity, sim_activity),
        },
        "_counts": sources,  # for the plots; dropped before writing JSON
        "_mix": mix,
    }


def _save_figure(fig: Any, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    atomic_write_bytes(path, buf.getvalue())


def _plots(out: Path, dist: dict[str, Any], models: dict[str, dict[str, float]], real_activity: np.ndarray,
           sim_activity: np.ndarray) -> list[str]:
    """Write the PNGs under ``out/plots``; returns their paths relative to ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = {"real": "real (held-out)", "simulated_choices": "simulated choices",
              "simulated_sessions": "simulated sessions (logging policy)"}
    colors = {"real": "black", "simulated_choices": "tab:blue", "simulated_sessions": "tab:orange"}
    written = []

    fig, ax = plt.subplots(figsize=(6.4, 4.2), layout="constrained")
    for k, counts in dist["_counts"].items():
        y = np.sort(counts)[::-1].astype(np.float64)
        y = y[y > 0] / counts.sum()
        x = np.unique(np.geomspace(1, max(y.size, 1), 200).astype(np.int64))  # log-spaced ranks: a light figure
        ax.loglog(x, y[x - 1], label=labels.get(k, k), color=colors.get(k))
    ax.set_xlabel("item rank")
    ax.set_ylabel("share of consumption")
    ax.set_title("Item popularity curve")
    ax.legend()
    _save_figure(fig, out / "plots" / "popularity.png")
    plt.close(fig)
    written.append("plots/popularity.png")

    names = dist["genre_mix"]["categories"]
    shares = dist["genre_mix"]["shares"]
    order = np.argsort(-np.array(shares["real"]))
    fig, ax = plt.subplots(figsize=(max(6.4, 0.45 * len(names)), 4.2), layout="constrained")
    width = 0.8 / len(shares)
    for j, (k, v) in enumerate(shares.items()):
        ax.bar(np.arange(len(names)) + j * width, np.array(v)[order], width, label=labels.get(k, k),
               color=colors.get(k))
    ax.set_xticks(np.arange(len(names)) + 0.4 - width / 2)
    ax.set_xticklabels([names[i] for i in order], rotation=60, ha="right")
    ax.set_ylabel("share of consumption")
    ax.set_title("Genre mix of consumption (first genre)")
    ax.legend()
    _save_figure(fig, out / "plots" / "genre_mix.png")
    plt.close(fig)
    written.append("plots/genre_mix.png")

    fig, ax = plt.subplots(figsize=(6.4, 4.2), layout="constrained")
    act_labels = {"real": "real (train events)", "simulated_sessions": "simulated sessions (clicks)"}
    for k, x in (("real", real_activity), ("simulated_sessions", sim_activity)):
        x = np.sort(np.asarray(x, np.float64))
        mean = x.mean() if x.size and x.mean() > 0 else 1.0
        ax.step(x / mean, np.arange(1, x.size + 1) / max(x.size, 1), where="post", label=act_labels[k],
                color=colors.get(k))
    ax.set_xscale("symlog", linthresh=0.1)
    ax.set_xlim(left=0)
    ax.set_xlabel("activity / mean activity (symlog: users without clicks sit at 0)")
    ax.set_ylabel("share of users (CDF)")
    ax.set_title("Activity per user")
    ax.legend()
    _save_figure(fig, out / "plots" / "activity.png")
    plt.close(fig)
    written.append("plots/activity.png")

    fig, axes = plt.subplots(1, len(METRICS), figsize=(9.6, 3.4), layout="constrained")
    for ax, metric in zip(axes, METRICS, strict=True):
        vals = [models[k][metric] for k in MODELS]
        ax.bar(MODELS, vals, color=["tab:green", "tab:blue", "tab:gray"])
        ax.set_title(metric)
        for j, v in enumerate(vals):
            ax.text(j, v, f"{v:.3f}", ha="center", va="bottom", fontsize=8)
        ax.tick_params(axis="x", rotation=20)
    fig.suptitle("Held-out ranking of the real users' next items")
    _save_figure(fig, out / "plots" / "ranking.png")
    plt.close(fig)
    written.append("plots/ranking.png")
    return written


# --------------------------------------------------------------------------------------------------------------
# calibrate(): the whole pipeline
# --------------------------------------------------------------------------------------------------------------


def _deep_merge(base: dict, extra: Mapping) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), dict) else v
    return out


def _r(x: float, nd: int = 4) -> float:
    return round(float(x), nd)


def calibrate(
    log: InteractionLog,
    cfg: CalibrationConfig | None,
    encoder: TextEncoder,
    out_dir: str | Path,
    *,
    env_overrides: Mapping[str, Any] | None = None,
    preprocess_cfg: PreprocessConfig | None = None,
    progress: Callable[[str], None] | None = None,
    extra_timings: Mapping[str, float] | None = None,
    command: str | None = None,
) -> dict[str, Any]:
    """Calibrate a preset from a real log and write it, with its fidelity report, to ``out_dir``.

    See the module docstring for the steps. ``out_dir/env.yaml`` is removed first and written last, so a preset
    directory whose run failed half-way is never loadable; every file is written atomically.

    Args:
        log: The raw log (as read by :func:`envs.logs.load_logs`); preprocessed here.
        cfg: Calibration settings (None: defaults).
        encoder: Text encoder for the item embeddings (cached; a warm cache encodes nothing).
        out_dir: The preset directory (created; files of an earlier preset are replaced).
        env_overrides: Nested EnvConfig values applied on top of the defaults and of the fitted values (an
            explicit ``user_model.no_click_utility`` skips its calibration); ``preset_dir`` is not allowed.
        preprocess_cfg: Preprocessing rules (None: defaults).
        progress: Called with one line per step (None: silent).
        extra_timings: Seconds of steps done before the call (e.g. ``read``), recorded in the timings (wall
            clock per step; ``total`` adds them; ``cpu_calibrate`` is the CPU time of this call, a figure that
            depends less on other jobs sharing the machine).
        command: The command line, recorded in the report.

    Returns:
        The fidelity report (what ``fidelity.json`` holds).

    Raises:
        ValueError: Bad settings, or a log that leaves nothing to fit after preprocessing and splitting.
    """
    cfg = cfg or CalibrationConfig()
    t_start, cpu_start = time.perf_counter(), time.process_time()
    timings: dict[str, float] = {k: _r(v, 3) for k, v in (extra_timings or {}).items()}
    say = progress or (lambda _msg: None)
    overrides = dict(env_overrides or {})
    if "preset_dir" in overrides:
        raise ValueError("env.preset_dir cannot be set: preset_config adds it when the preset is loaded")
    base_env = from_dict(EnvConfig, _deep_merge(to_dict(EnvConfig()), overrides), "env")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "env.yaml").unlink(missing_ok=True)

    def lap(name: str, t0: float) -> float:
        timings[name] = _r(time.perf_counter() - t0, 3)
        return time.perf_counter()

    # 1. preprocess and split
    t = time.perf_counter()
    clean, prep = preprocess(log, preprocess_cfg)
    say(f"preprocessed: {prep.rows_in} -> {prep.rows_out} events ({prep.dropped} dropped: "
        + (", ".join(f"{s.rule} {s.dropped}" for s in prep.steps if s.dropped) or "none") + f"); "
        f"{clean.n_users} users, {clean.n_items} items")
    train, test = temporal_split(clean, cfg.holdout, cfg.min_events)
    fit_log, val_log = temporal_split(train, cfg.validation, cfg.min_events)
    say(f"split: train {train.n_events} / test {test.n_events} events (each user's last {cfg.holdout:.0%} in time); "
        f"validation for the response fit: {val_log.n_events} of the train events")
    t = lap("preprocess_split", t)

    # 2. item embeddings
    say(f"encoding {clean.n_items} item texts with {encoder.name}")
    texts = clean.items["text"].astype(str).tolist()
    item_emb = np.asarray(encoder.encode(texts), np.float32)  # (M, D)
    hits, misses = getattr(encoder, "hits", None), getattr(encoder, "misses", None)
    t = lap("encode", t)
    cache = f" (cache: {hits} hits, {misses} misses)" if hits is not None else ""
    say(f"encoded in {timings['encode']:.1f} s{cache}")

    # 3. response parameters on the validation split
    parts_fit = _parts(fit_log, item_emb, cfg)
    seen_fit = interaction_matrix(fit_log)
    choices = choice_sequences(val_log, seen_fit)  # (U, P) new items in time order
    if not (choices >= 0).any():
        raise ValueError("the validation split holds no new items: too few events per user to calibrate "
                         f"(min_events = {cfg.min_events}, validation = {cfg.validation}); lower min_events or raise "
                         "validation: CalibrationConfig(min_events=...) or, on the command line, --set "
                         "calibrate.min_events=2")
    say(f"fitting rho, a, q by maximum likelihood on {int((choices >= 0).sum())} validation choices of "
        f"{int((choices >= 0).any(axis=1).sum())} users")
    fit = fit_response(parts_fit.z_sem, parts_fit.z_cf, parts_fit.features, choices, seen_fit, grid=cfg.rho_grid,
                       rounds=cfg.fit_rounds, prior=cfg.rho_prior, sample=cfg.partition_sample, seed=cfg.seed,
                       anchor=np.asarray(seen_fit.sum(axis=0), np.float64).ravel())
    del parts_fit
    t = lap("fit_response", t)
    say(f"fit: a = {fit.affinity_scale:.3f}, q = {np.round(fit.quality_coef, 3).tolist()}, mean rho = "
        f"{fit.rho.mean():.3f}, log-likelihood per choice {fit.loglik_per_choice:.3f} "
        f"({timings['fit_response']:.1f} s)")

    # 4. the world, from all of train
    parts = _parts(train, item_emb, cfg, with_z=False)  # the world computes its own tables
    catalog, quality_weight = _catalog(clean, parts, fit.quality_coef)
    users = _split_users(clean.n_users, cfg.heldout_users, cfg.seed)
    n_train_events = np.bincount(train.codes()[0], minlength=clean.n_users)
    med = max(float(np.median(n_train_events)), 1.0)
    patience = np.clip((np.maximum(n_train_events, 1) / med) ** cfg.patience_exponent, 0.25, 4.0).astype(np.float32)
    history = last_items(train, cfg.history_len)
    popularity = np.asarray(interaction_matrix(train).sum(axis=0), np.float32).ravel()
    a = _r(fit.affinity_scale)
    qw = _r(quality_weight)
    source = log.source or "log"
    pops = {}
    for name, idx in users.items():
        pops[name] = Population(
            name=name,
            persona=[f"Real user {clean.user_ids[u]} of {source} ({n_train_events[u]} train events)" for u in idx],
            sem_taste=parts.sem_taste[idx],
            cf_taste=parts.mf.user_factors[idx],
            rho=fit.rho[idx],
            price_sens=np.full(idx.size, base_env.user_model.price_weight, np.float32),
            patience=patience[idx],
            history=history[idx],
            init_state=pool_history(history[idx], item_emb, base_env.state_decay),
            cf_user=parts.mf.user_factors[idx],
        )
    fitted = {
        "preset": f"calibrated:{source}",
        "catalog": {"n_items": clean.n_items, "cf_dim": cfg.als_factors},
        "user_model": {"n_train": int(users["train"].size), "n_heldout": int(users["heldout"].size),
                       "affinity_scale": a, "quality_weight": qw},
        "logging": {"history_len": cfg.history_len, "cf_factors": cfg.als_factors,
                    "cf_regularization": cfg.als_regularization, "cf_alpha": cfg.als_alpha,
                    "cf_iterations": cfg.als_iterations},
    }
    if source.startswith("logs:"):
        fitted["catalog"]["source"] = source[len("logs:"):].split(",")[0]
    env = from_dict(EnvConfig, _deep_merge(_deep_merge(to_dict(EnvConfig()), fitted), overrides), "env")
    key = hashlib.sha1(json.dumps({"format": FORMAT, "source": source, "calibrate": to_dict(cfg),
                                   "env": to_dict(env), "encoder": encoder.name}, sort_keys=True,
                                  default=str).encode()).hexdigest()[:16]
    world = World(catalog=catalog, item_emb=item_emb, populations=pops, item_factors=parts.mf.item_factors,
                  popularity=popularity, encoder_name=encoder.name,
                  meta={"config_key": key, "calibrated_from": source,
                        "user_ids": {n: [str(clean.user_ids[u]) for u in idx] for n, idx in users.items()}})
    t = lap("build_world", t)

    # 5. the outside option
    if "no_click_utility" in overrides.get("user_model", {}):  # an explicit value wins
        u0, ctr0 = env.user_model.no_click_utility, None
    else:
        u0, ctr0 = _outside_option(world, env, cfg.target_random_ctr, cfg.seed)
        env = dataclasses.replace(env, user_model=dataclasses.replace(env.user_model, no_click_utility=u0))
    world.meta["calibration"] = {"affinity_scale": a, "quality_weight": qw, "no_click_utility": u0}
    world.save(out / "world")
    t = lap("outside_option_and_save", t)
    say(f"world saved to {out / 'world'}: {catalog.n_items} items, populations "
        + ", ".join(f"{n} {p.size}" for n, p in pops.items()) + f"; no_click_utility = {u0:.3f}")

    # 6. fidelity: ranking of the held-out items
    unique = {"train": users["train"]} if users["heldout"] is users["train"] else users
    util = _session_start_utility(world, env, unique, clean.n_users)  # (U, M)
    uf, itf = parts.mf.user_factors, parts.mf.item_factors
    pop_scores = popularity.astype(np.float64)
    models = {
        "simulator": evaluate_scores(lambda ub: util[ub], train, test),
        "mf": evaluate_scores(lambda ub: uf[ub] @ itf.T, train, test),
        "popularity": evaluate_scores(lambda ub: np.broadcast_to(pop_scores, (len(ub), pop_scores.size)), train,
                                      test),
    }
    n_eval = models["simulator"]["users"]
    models = {k: {m_: _r(v[m_]) for m_ in METRICS} for k, v in models.items()}
    t = lap("fidelity_ranking", t)
    say("held-out ranking: " + "; ".join(f"{k} " + ", ".join(f"{m_} {v[m_]:.4f}" for m_ in METRICS)
                                         for k, v in models.items()))

    # 7. distribution checks
    seen_train = interaction_matrix(train)
    held = (interaction_matrix(test) > seen_train).tocsr()
    _, real_i = held.nonzero()
    sims = {"simulated_choices": _draw_choices(util, seen_train, np.diff(held.indptr), cfg.seed)}
    from envs.presets import run_logging_phase

    env_sim = dataclasses.replace(env, logging=dataclasses.replace(env.logging, sessions_per_user=cfg.sim_sessions))
    su, si = [], []
    # These few sessions compute the Gram rows they need from the embeddings (World.gram_block's path for large
    # catalogs) instead of materialising the 4·M² byte matrix (380 MB, seconds, for MovieLens) on this world.
    world.__dict__["gram"] = None
    try:
        for j, (name, idx) in enumerate(unique.items()):
            frame = run_logging_phase(world, env_sim, name, seed=cfg.seed + 17 * j)
            clicks = frame[frame["click_rank"] >= 0]
            su.append(idx[clicks["user"].to_numpy(dtype=np.int64)])
            si.append(clicks["clicked_item"].to_numpy(dtype=np.int64))
    finally:
        world.__dict__.pop("gram", None)
    sims["simulated_sessions"] = (np.concatenate(su), np.concatenate(si))
    sim_activity = np.bincount(sims["simulated_sessions"][0], minlength=clean.n_users)
    dist = _distributions(real_i, sims, n_train_events, sim_activity, catalog)
    dist["activity"]["simulated_sessions_per_user"] = cfg.sim_sessions
    plots = _plots(out, dist, models, n_train_events, sim_activity)
    dist = {k: v for k, v in dist.items() if not k.startswith("_")}
    t = lap("distributions", t)

    timings["total"] = _r(time.perf_counter() - t_start + sum((extra_timings or {}).values()), 3)
    timings["cpu_calibrate"] = _r(time.process_time() - cpu_start, 3)  # CPU seconds of this call, all threads
    q = np.quantile(fit.rho, [0.1, 0.5, 0.9])
    report: dict[str, Any] = {
        "format": FORMAT,
        "source": source,
        "preset": env.preset,
        "encoder": encoder.name,
        "command": command,
        "models": models,
        "split": {
            "method": "temporal: each user's last share of events in time held out",
            "holdout": cfg.holdout, "min_events": cfg.min_events, "users": clean.n_users,
            "users_evaluated": n_eval, "items": clean.n_items, "train_events": train.n_events,
            "test_events": test.n_events, "validation": cfg.validation, "validation_choices": fit.n_choices,
        },
        "preprocess": {"rows_in": prep.rows_in, "rows_out": prep.rows_out, "dropped": prep.dropped,
                       "steps": [{"rule": s.rule, "dropped": s.dropped, "filled": s.filled, "reason": s.reason,
                                  "detail": s.detail} for s in prep.steps]},
        "fit": {
            "affinity_scale": a, "quality_weight": qw, "quality_features": parts.feature_names,
            "quality_coef": [_r(c) for c in fit.quality_coef], "no_click_utility": u0,
            "random_slate_ctr": None if ctr0 is None else _r(ctr0), "target_random_ctr": cfg.target_random_ctr,
            "rho": {"mean": _r(fit.rho.mean()), "q10": _r(q[0]), "q50": _r(q[1]), "q90": _r(q[2]),
                    "prior": cfg.rho_prior,
                    "prior_grid": [_r(g, 3) for g in fit.rho_grid], "prior_probs": [_r(p) for p in fit.rho_prior]},
            "loglik_per_choice": _r(fit.loglik_per_choice), "choices": fit.n_choices, "users_with_choices": fit.n_users,
            "rounds": fit.history,
            "als": {"factors": cfg.als_factors, "regularization": cfg.als_regularization, "alpha": cfg.als_alpha,
                    "iterations": cfg.als_iterations},
            "taste": {"halflife": cfg.taste_halflife, "rating_weight": cfg.taste_rating_weight,
                      "center": cfg.taste_center},
        },
        "populations": {n: int(p.size) for n, p in pops.items()} | {"heldout_users": cfg.heldout_users},
        "distributions": dist,
        "plots": plots,
        "encoder_cache": None if hits is None else {"hits": int(hits), "misses": int(misses)},
        "calibrate_config": to_dict(cfg),
        "timings": timings,
    }
    atomic_write_text(out / "fidelity.json", json.dumps(report, indent=2, default=_json_default) + "\n")
    atomic_write_text(out / "fidelity.md", fidelity_markdown(report, prep))
    env_data = to_dict(env)
    env_data.pop("preset_dir", None)
    import yaml

    header = (f"# Calibrated preset from {source} (python -m envs.calibrate); values only, fields documented in\n"
              "# configs/schema.py (EnvConfig). The catalog, users and CF model live in world/ next to this file;\n"
              "# load with envs.presets.preset_config(<this directory>) or --preset <this directory>.\n")
    atomic_write_text(out / "env.yaml", header + yaml.safe_dump(env_data, sort_keys=False))
    say(f"wrote {out / 'env.yaml'}, fidelity.json, fidelity.md and {len(plots)} plots in {timings['total']:.1f} s")
    return report


def _json_default(x: Any) -> Any:
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.floating):
        return float(x)
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(f"not JSON serialisable: {type(x)}")


def fidelity_markdown(report: dict[str, Any], prep: PreprocessReport | None = None) -> str:
    """The fidelity report as Markdown (what ``fidelity.md`` holds).

    Args:
        report: The dict :func:`calibrate` returns.
        prep: The preprocessing report (its table is included when given).

    Returns:
        Markdown text.
    """
    sp_, fit, dist = report["split"], report["fit"], report["distributions"]
    lines = [
        f"# Fidelity of the calibrated preset `{report['preset']}`",
        "",
        f"Encoder `{report['encoder']}`." + (f" Command: `{report['command']}`" if report.get("command") else ""),
        "",
        "## Held-out ranking",
        "",
        f"Temporal split: each user's last {sp_['holdout']:.0%} of events in time held out; train "
        f"{sp_['train_events']} / test {sp_['test_events']} events; {sp_['users_evaluated']} users evaluated over "
        f"the items they had not consumed in train ({sp_['items']} items). `simulator`: the simulated user's "
        "session-start utility (the order of its click probabilities); `mf`: the same ALS alone; `popularity`: "
        "distinct train users per item.",
        "",
        "| model | " + " | ".join(METRICS) + " |",
        "|---|" + "---:|" * len(METRICS),
    ]
    for k in MODELS:
        lines.append(f"| {k} | " + " | ".join(f"{report['models'][k][m]:.4f}" for m in METRICS) + " |")
    lines += [
        "",
        "![ranking](plots/ranking.png)",
        "",
        "## Fitted response parameters",
        "",
        f"Maximum likelihood on {fit['choices']} validation choices ({fit['users_with_choices']} users; each "
        f"user's last {sp_['validation']:.0%} of train events, the rest refitted): log-likelihood per choice "
        f"{fit['loglik_per_choice']:.3f}.",
        "",
        "| parameter | value |",
        "|---|---|",
        f"| affinity_scale a | {fit['affinity_scale']} |",
        f"| quality features → coefficients | {', '.join(f'{n} {c:+.3f}' for n, c in zip(fit['quality_features'], fit['quality_coef'], strict=True)) or 'none'} |",  # noqa: E501
        f"| quality_weight (std of the fitted combination) | {fit['quality_weight']} |",
        f"| ρ_u: mean, 10 / 50 / 90 % | {fit['rho']['mean']:.3f}, {fit['rho']['q10']:.3f} / "
        f"{fit['rho']['q50']:.3f} / {fit['rho']['q90']:.3f} ({fit['rho']['prior']} prior) |",
        f"| no_click_utility | {fit['no_click_utility']} (random-slate first-request CTR "
        f"{fit['random_slate_ctr']}, target {fit['target_random_ctr']}) |",
        f"| ALS | {fit['als']} |",
        f"| semantic taste | {fit['taste']} |",
        "",
        "## Distributions, simulated against real",
        "",
        "Real = the held-out consumption (test items new to the user). Simulated choices = each simulated user "
        "draws as many items as the real user held out, without replacement, from its choice probabilities over "
        f"the items not in its train set. Simulated sessions = {dist['activity'].get('simulated_sessions_per_user')} "
        "env sessions per user under the logging policy (ε-uniform + Plackett-Luce on LLM similarity), "
        "consumption = clicks.",
        "",
        "| source | events | gini | top 1% items' share | top 10% share | coverage | Spearman vs real | genre TV distance |",  # noqa: E501
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for k, v in dist["popularity"].items():
        rho_s = v.get("spearman_vs_real")
        tv = dist["genre_mix"]["tv_distance_vs_real"].get(k)
        lines.append(f"| {k} | {v['events']} | {v['gini']:.3f} | {v['top1pct_share']:.3f} | {v['top10pct_share']:.3f} "
                     f"| {v['coverage']:.3f} | {'' if rho_s is None else f'{rho_s:.3f}'} | "
                     f"{'' if tv is None else f'{tv:.3f}'} |")
    act = dist["activity"]
    lines += [
        "",
        "![popularity](plots/popularity.png) ![genres](plots/genre_mix.png)",
        "",
        "Activity per user (real: train events; simulated: clicks in the sessions; patience scales with real "
        f"activity): Spearman {act['spearman_real_vs_simulated']}.",
        "",
        "| source | median | mean | q10 / median | q90 / median | cv |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for k in ("real", "simulated_sessions"):
        v = act[k]
        lines.append(f"| {k} | {v['median']} | {v['mean']} | {v['q10_over_median']} | {v['q90_over_median']} | "
                     f"{v['cv']} |")
    lines += ["", "![activity](plots/activity.png)", "", "## Timings (seconds)", "",
              "| step | s |", "|---|---:|"]
    lines += [f"| {k} | {v} |" for k, v in report["timings"].items()]
    if prep is not None:
        lines += ["", "## Preprocessing", "", prep.to_markdown()]
    return "\n".join(lines).rstrip() + "\n"


# --------------------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------------------

_SECTIONS = ("env", "encoder", "calibrate", "preprocess")


def _parse_sets(items: Sequence[str]) -> dict[str, dict[str, Any]]:
    data: dict[str, Any] = {}
    apply_overrides(data, items)
    unknown = sorted(set(data) - set(_SECTIONS))
    if unknown:
        raise ConfigError(f"--set keys must start with one of {list(_SECTIONS)} (e.g. env.n_candidates=50, "
                          f"calibrate.heldout_users=0); got {unknown}")
    for k, v in data.items():
        if not isinstance(v, dict):
            raise ConfigError(f"--set {k}=...: name a key inside the section, e.g. {k}.<key>=value")
    return data


def check_data_spec(spec: str) -> None:
    """Reject a malformed ``--data`` spec before any work, with the accepted forms in the message.

    Raises:
        ValueError: Not ``movielens:PATH`` or ``logs:ITEMS,EVENTS`` with non-empty paths.
    """
    kind, sep, rest = spec.partition(":")
    ok = bool(sep) and ((kind == "movielens" and rest.strip()) or (kind == "logs" and all(
        p.strip() for p in rest.partition(",")[::2]) and "," in rest))
    if not ok:
        raise ValueError(f"bad --data {spec!r}: use movielens:PATH (a MovieLens directory, e.g. "
                         "movielens:../shared/data/ml-latest-small) or logs:ITEMS,EVENTS (an item table and an "
                         "events file, CSV / Parquet / JSONL)")


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m envs.calibrate`` (every reader option an error message suggests is here)."""
    p = argparse.ArgumentParser(prog="python -m envs.calibrate",
                                description="Calibrate simulated users on real logs; write a preset directory.")
    p.add_argument("--data", required=True, help="movielens:PATH or logs:ITEMS,EVENTS")
    p.add_argument("--out", required=True, help="preset directory to write (env.yaml, world/, fidelity.*)")
    p.add_argument("--encoder", choices=("transformer", "hashing"), default="transformer",
                   help="item text encoder (default: the cached MiniLM transformer)")
    p.add_argument("--holdout", type=float, default=None, help="share of each user's last events held out (0.2)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override: env.<EnvConfig key>, encoder.<key>, calibrate.<key>, preprocess.<key>")
    p.add_argument("--on-bad-rows", choices=("error", "skip"), default="error", help="reader policy for bad rows")
    p.add_argument("--on-missing-items", choices=("error", "skip"), default=None,
                   help="reader policy for events whose item is not in the item table (default: error; MovieLens: "
                        "as --on-bad-rows)")
    p.add_argument("--encoding", default=None,
                   help="text encoding of the log files, e.g. latin-1 (default: UTF-8; MovieLens: each layout's own)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    return p


def reader_options(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of :func:`envs.logs.load_logs` that the command line sets."""
    opts: dict[str, Any] = {"on_bad_rows": args.on_bad_rows}
    if args.on_missing_items is not None:
        opts["on_missing_items"] = args.on_missing_items
    if args.encoding is not None:
        opts["encoding"] = args.encoding
    return opts


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m envs.calibrate --data SPEC --out DIR [...]``: write a calibrated preset and its report.

    Args:
        argv: Command line (None: sys.argv[1:]).

    Returns:
        0 on success (errors exit with status 2 and a one-line message).
    """
    p = build_parser()
    args = p.parse_args(argv)
    t0 = time.perf_counter()

    def say(msg: str) -> None:
        if not args.quiet:
            print(f"[calibrate {time.perf_counter() - t0:6.1f}s] {msg}", file=sys.stderr, flush=True)

    try:
        check_data_spec(args.data)
        sets = _parse_sets(args.set)
        cal = sets.get("calibrate", {})
        if args.holdout is not None:
            cal["holdout"] = args.holdout
        cfg = from_dict(CalibrationConfig, cal, "calibrate")
        enc_cfg = from_dict(EncoderConfig, {"kind": args.encoder, "progress": not args.quiet,
                                            **sets.get("encoder", {})}, "encoder")
        prep_cfg = from_dict(PreprocessConfig, sets.get("preprocess", {}), "preprocess")
        if "preset_dir" in sets.get("env", {}):
            raise ConfigError("env.preset_dir cannot be set: preset_config adds it when the preset is loaded")
        say(f"reading {args.data}")
        log = load_logs(args.data, **reader_options(args))
        read_s = time.perf_counter() - t0
        say(f"read {log.n_events} events, {log.n_users} users, {log.n_items} items in {read_s:.1f} s")
        from encoders.factory import make_encoder

        encoder = make_encoder(enc_cfg)
        command = "python -m envs.calibrate " + " ".join(argv if argv is not None else sys.argv[1:])
        report = calibrate(log, cfg, encoder, args.out, env_overrides=sets.get("env", {}), preprocess_cfg=prep_cfg,
                           progress=say, extra_timings={"read": read_s}, command=command)
    except (ValueError, FileNotFoundError, NotADirectoryError, ConfigError) as exc:
        p.error(str(exc))
    print(json.dumps({"out": str(args.out), "models": report["models"], "timings": report["timings"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
