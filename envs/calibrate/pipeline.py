"""``calibrate()``: a preset directory calibrated on a real log, as named steps (split, encode, fit, world, outside
option, fidelity, write). What each step does and why: docs/calibration.md."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from configs.data import CalibrationConfig, PreprocessConfig
from configs.fileio import atomic_write_text, json_default
from configs.loader import deep_merge, from_dict, to_dict
from configs.schema import EnvConfig
from encoders.base import TextEncoder
from envs.calibrate.drift import DRIFT_GRID, DriftFit, fit_drift_rate, lag_profile, simulated_lag_profiles
from envs.calibrate.fidelity import METRICS, distribution_checks, fidelity_markdown, rank_held_out
from envs.calibrate.fitting import Affinity, ResponseFit, RowStandardised, choice_sequences, fit_response
from envs.calibrate.intent import (
    SIGMA_GRID,
    IntentFit,
    coherence,
    fit_session_intent,
    session_ids,
    sessions_read,
    simulated_ratio,
)
from envs.calibrate.tastes import (
    center_embeddings,
    event_order,
    item_features,
    last_items,
    semantic_taste,
    standardise_rows,
    taste_weights,
)
from envs.catalog import Catalog, catalog_from_items
from envs.cf import MFModel, fit_als
from envs.data.cf_eval import interaction_matrix
from envs.data.interaction_log import InteractionLog
from envs.data.preprocess import PreprocessReport, preprocess, temporal_split
from envs.factored import FactoredTables, dense_table_bytes
from envs.users import Population, pool_history
from envs.world import PopulationTables, World

#: Version of the preset / report layout (part of the world's config key).
FORMAT = 1


# --------------------------------------------------------------------------------------------------------------
# Pieces of the calibrated world
# --------------------------------------------------------------------------------------------------------------


@dataclass
class _Parts:
    """What the fit derives from one training log (fit split or all of train).

    Attributes:
        mf: The ALS model.
        sem_taste: float32 (U, D) unit semantic tastes.
        z_sem: float32 (U, M) standardised ``θ_u·e_i``, or its lazy form (None when not asked for).
        z_cf: float32 (U, M) standardised ALS scores, or its lazy form (None when not asked for).
        features: float32 (Q, M) standardised item features.
        feature_names: Their names.
    """

    mf: MFModel
    sem_taste: np.ndarray
    z_sem: Affinity | None
    z_cf: Affinity | None
    features: np.ndarray
    feature_names: list[str]


def _als(log: InteractionLog, cfg: CalibrationConfig) -> MFModel:
    u, i, w = log.interaction_weights(mode="binary")
    return fit_als(u, i, w, log.n_users, log.n_items, factors=cfg.als_factors, regularization=cfg.als_regularization,
                   iterations=cfg.als_iterations, alpha=cfg.als_alpha, seed=cfg.seed)


def _parts(log: InteractionLog, item_emb: np.ndarray, cfg: CalibrationConfig, with_z: bool = True,
           budget_mb: float | None = None) -> _Parts:
    """ALS, tastes and item features of a log; with ``with_z`` the standardised affinities the response fit reads:
    dense (U, M) matrices, or their lazy :class:`RowStandardised` form when dense ones would take more than
    ``budget_mb`` MiB (``env.table_budget_mb``, the bound of the world's own tables; None: always dense)."""
    mf = _als(log, cfg)
    u, i, _ = event_order(log)
    w = taste_weights(log, cfg.taste_halflife, cfg.taste_rating_weight)
    theta = semantic_taste(u, i, w, item_emb, log.n_users, center=cfg.taste_center)
    feats, names = item_features(log, cfg.quality_features, cfg.rating_prior)
    z_sem: Affinity | None = None
    z_cf: Affinity | None = None
    if with_z and budget_mb is not None and dense_table_bytes(log.n_users, log.n_items) > budget_mb * 2**20:
        z_sem, z_cf = RowStandardised(theta, item_emb), RowStandardised(mf.user_factors, mf.item_factors)
    elif with_z:
        z_sem = standardise_rows(theta @ item_emb.T)
        z_cf = standardise_rows(mf.user_factors @ mf.item_factors.T)
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


def _r(x: float, nd: int = 4) -> float:
    return round(float(x), nd)


# --------------------------------------------------------------------------------------------------------------
# The steps of calibrate()
# --------------------------------------------------------------------------------------------------------------


class _Clock:
    """Wall-clock seconds per step (``timings``), and the progress callback."""

    def __init__(self, extra_timings: Mapping[str, float] | None, progress: Callable[[str], None] | None) -> None:
        self.start, self.cpu_start = time.perf_counter(), time.process_time()
        self.extra = dict(extra_timings or {})
        self.timings: dict[str, float] = {k: _r(v, 3) for k, v in self.extra.items()}
        self.say = progress or (lambda _msg: None)
        self.t = time.perf_counter()

    def lap(self, name: str) -> None:
        """Record the seconds since the previous lap as step ``name``."""
        self.timings[name] = _r(time.perf_counter() - self.t, 3)
        self.t = time.perf_counter()

    def finish(self) -> None:
        """Add ``total`` (this call plus the extra timings) and ``cpu_calibrate`` (CPU seconds of this call)."""
        self.timings["total"] = _r(time.perf_counter() - self.start + sum(self.extra.values()), 3)
        self.timings["cpu_calibrate"] = _r(time.process_time() - self.cpu_start, 3)


@dataclass
class _Splits:
    """The preprocessed log and its temporal splits (all share one user and item map).

    Attributes:
        clean: The preprocessed log.
        prep: What preprocessing did.
        train: Everything but each user's last ``holdout`` share.
        test: The held-out share (touched by the fidelity report only).
        fit: Train minus each user's last ``validation`` share.
        validation: That share: the choices the response parameters are fitted on.
    """

    clean: InteractionLog
    prep: PreprocessReport
    train: InteractionLog
    test: InteractionLog
    fit: InteractionLog
    validation: InteractionLog


@dataclass
class _Built:
    """The calibrated world and what the later steps need of its making.

    Attributes:
        world: The world (catalog, embeddings, populations, CF model).
        env: Its EnvConfig (before the outside option).
        users: Real user indices per population.
        parts: ALS, tastes and item features from all of train.
        popularity: float32 (M,) distinct train users per item.
        n_train_events: int64 (U,) train events per real user.
        quality_weight: Std of the fitted quality combination, rounded.
        affinity_scale: a, rounded.
    """

    world: World
    env: EnvConfig
    users: dict[str, np.ndarray]
    parts: _Parts
    popularity: np.ndarray
    n_train_events: np.ndarray
    quality_weight: float
    affinity_scale: float


def _preprocess_and_split(log: InteractionLog, cfg: CalibrationConfig, preprocess_cfg: PreprocessConfig | None,
                          say: Callable[[str], None]) -> _Splits:
    """Step 1: preprocess, hold out each user's last events in time (test), cut the validation split from train."""
    clean, prep = preprocess(log, preprocess_cfg)
    say(f"preprocessed: {prep.rows_in} -> {prep.rows_out} events ({prep.dropped} dropped: "
        + (", ".join(f"{s.rule} {s.dropped}" for s in prep.steps if s.dropped) or "none") + f"); "
        f"{clean.n_users} users, {clean.n_items} items")
    train, test = temporal_split(clean, cfg.holdout, cfg.min_events)
    fit_log, val_log = temporal_split(train, cfg.validation, cfg.min_events)
    say(f"split: train {train.n_events} / test {test.n_events} events (each user's last {cfg.holdout:.0%} in time); "
        f"validation for the response fit: {val_log.n_events} of the train events")
    return _Splits(clean=clean, prep=prep, train=train, test=test, fit=fit_log, validation=val_log)


def _encode_items(clean: InteractionLog, encoder: TextEncoder, center: bool,
                  say: Callable[[str], None]) -> tuple[np.ndarray, dict[str, Any]]:
    """Step 2: the item embeddings of the item texts (cached by the encoder), centred when ``center``.

    Returns:
        (float32 (M, D) the embeddings the world stores (every later step uses them), what was done to them for
        ``World.meta["item_emb"]``: ``centred``, ``raw_mean_norm`` and, when centred, the ``mean`` (D,) subtracted
        (a new item's raw embedding ``e`` maps to ``(e − mean) / ‖e − mean‖``)).
    """
    say(f"encoding {clean.n_items} item texts with {encoder.name}")
    texts = clean.items["text"].astype(str).tolist()
    raw = np.asarray(encoder.encode(texts), np.float32)  # (M, D)
    mean_norm = float(np.linalg.norm(raw.mean(axis=0, dtype=np.float64)))
    if not center:
        return raw, {"centred": False, "raw_mean_norm": _r(mean_norm)}
    emb, mean = center_embeddings(raw)
    say(f"centred the item embeddings on the catalog mean (|mean| = {mean_norm:.3f}) and re-normalised them")
    return emb, {"centred": True, "raw_mean_norm": _r(mean_norm), "mean": [float(x) for x in mean]}


def _fit_response_parameters(splits: _Splits, item_emb: np.ndarray, cfg: CalibrationConfig,
                             say: Callable[[str], None], budget_mb: float | None = None) -> ResponseFit:
    """Step 3: ρ_u, a and q by maximum likelihood on the validation choices (ALS and tastes from the fit split;
    the affinities lazy past ``budget_mb``, see :func:`_parts`)."""
    parts_fit = _parts(splits.fit, item_emb, cfg, budget_mb=budget_mb)
    seen_fit = interaction_matrix(splits.fit)
    choices = choice_sequences(splits.validation, seen_fit)  # (U, P) new items in time order
    if not (choices >= 0).any():
        raise ValueError("the validation split holds no new items: too few events per user to calibrate "
                         f"(min_events = {cfg.min_events}, validation = {cfg.validation}); lower min_events or raise "
                         "validation: CalibrationConfig(min_events=...) or, on the command line, --set "
                         "calibrate.min_events=2")
    say(f"fitting rho, a, q by maximum likelihood on {int((choices >= 0).sum())} validation choices of "
        f"{int((choices >= 0).any(axis=1).sum())} users")
    return fit_response(parts_fit.z_sem, parts_fit.z_cf, parts_fit.features, choices, seen_fit, grid=cfg.rho_grid,
                        rounds=cfg.fit_rounds, prior=cfg.rho_prior, sample=cfg.partition_sample, seed=cfg.seed,
                        anchor=np.asarray(seen_fit.sum(axis=0), np.float64).ravel())


def _build_world(source: str, splits: _Splits, item_emb: np.ndarray, fit: ResponseFit, cfg: CalibrationConfig,
                 base_env: EnvConfig, overrides: Mapping[str, Any], encoder: TextEncoder) -> _Built:
    """Step 4: the world from all of train: catalog with fitted quality, one simulated user per real user."""
    clean, train = splits.clean, splits.train
    parts = _parts(train, item_emb, cfg, with_z=False)  # the world computes its own tables
    catalog, quality_weight = _catalog(clean, parts, fit.quality_coef)
    users = _split_users(clean.n_users, cfg.heldout_users, cfg.seed)
    n_train_events = np.bincount(train.codes()[0], minlength=clean.n_users)
    med = max(float(np.median(n_train_events)), 1.0)
    patience = np.clip((np.maximum(n_train_events, 1) / med) ** cfg.patience_exponent, 0.25, 4.0).astype(np.float32)
    history = last_items(train, cfg.history_len)
    train_seen = interaction_matrix(train)
    popularity = np.asarray(train_seen.sum(axis=0), np.float32).ravel()
    # each real user's held-out items they had not met in train (the positives of the fidelity ranking)
    held = (interaction_matrix(splits.test).astype(np.int8) - train_seen.astype(np.int8)).tocsr()
    held.data = (held.data > 0).astype(np.int8)
    held.eliminate_zeros()
    held.sort_indices()
    a = _r(fit.affinity_scale)
    qw = _r(quality_weight)
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
            test_indptr=held[idx].indptr.astype(np.int64),
            test_items=held[idx].indices.astype(np.int64),
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
    env = from_dict(EnvConfig, deep_merge(deep_merge(to_dict(EnvConfig()), fitted), overrides), "env")
    key = hashlib.sha1(json.dumps({"format": FORMAT, "source": source, "calibrate": to_dict(cfg),
                                   "env": to_dict(env), "encoder": encoder.name}, sort_keys=True,
                                  default=str).encode()).hexdigest()[:16]
    world = World(catalog=catalog, item_emb=item_emb, populations=pops, item_factors=parts.mf.item_factors,
                  popularity=popularity, encoder_name=encoder.name,
                  meta={"config_key": key, "calibrated_from": source,
                        "user_ids": {n: [str(clean.user_ids[u]) for u in idx] for n, idx in users.items()}})
    return _Built(world=world, env=env, users=users, parts=parts, popularity=popularity,
                  n_train_events=n_train_events, quality_weight=qw, affinity_scale=a)


class _StaticRows:
    """``static_util`` rows of a factored population, computed on demand: ``rows[users]`` is float32 (n, M) for
    int users (n,), what the dense table's ``static_util[users]`` holds (for a fit that reads a sample of users)."""

    def __init__(self, tables: FactoredTables) -> None:
        self._tables = tables

    def __getitem__(self, users: np.ndarray) -> np.ndarray:
        return self._tables.catalog_rows(np.asarray(users, np.int64), (1,))[..., 0]


def _simulated_users(built: _Built, what: str, left: str, say: Callable[[str], None], factored_ok: bool = False,
                     ) -> list[tuple[np.ndarray, Population, PopulationTables | FactoredTables, Any]] | None:
    """The distinct populations a fit simulates the real users of: per population, its users' codes in the train
    split (int64 (U,), row order), the population, its session-start tables and their ``static_util`` (the dense
    table, or with ``factored_ok`` a :class:`_StaticRows` on factored tables, for a fit that reads a sample of
    rows). None, said, when a population's tables are factored and the fit needs them dense."""
    from envs.core import BatchedCore

    world = built.world
    out = []
    for name, idx in ({"train": built.users["train"]} if built.users["heldout"] is built.users["train"]
                      else built.users).items():
        pop = world.populations[name]
        if world.is_factored(pop.size, built.env.table_budget_mb) and not factored_ok:
            say(f"{what}the catalog's per-user tables exceed env.table_budget_mb; not fitted, left at {left}")
            return None
        tab = BatchedCore(world, built.env, 1, population=name).tables
        static = _StaticRows(tab) if isinstance(tab, FactoredTables) else tab.static_util
        out.append((np.asarray(idx, np.int64), pop, tab, static))
    return out


def _fit_intent(built: _Built, splits: _Splits, cfg: CalibrationConfig, overrides: Mapping[str, Any],
                say: Callable[[str], None]) -> IntentFit | None:
    """Step 4b: ``session_intent`` from the coherence of the train split's sessions (an explicit override wins).

    Sets ``built.env``'s value; returns the fit, or None when not fitted (turned off, overridden, or fewer than
    10 users with two sessions: then it stays 0).
    """
    if not cfg.session_intent or "session_intent" in overrides.get("user_model", {}):
        return None
    train, world, env = splits.train, built.world, built.env
    users, items = train.codes()
    sessions = session_ids(users, train.events["timestamp"].to_numpy(np.int64), 60.0 * cfg.session_gap_minutes)
    keep = sessions_read(users, sessions, min_items=cfg.session_min_items, max_sessions=cfg.session_max,
                         max_size=cfg.session_max_items, skip_first=cfg.session_skip_first, seed=cfg.seed)
    data = coherence(users[keep], sessions[keep], items[keep], world.item_emb, min_items=cfg.session_min_items,
                     seed=cfg.seed)
    if data.users < 10:
        say(f"session intent: {data.users} users with two sessions of {cfg.session_min_items} events "
            f"(gap {cfg.session_gap_minutes:g} min); too few to fit, left at 0")
        return None
    tables = _simulated_users(built, "session intent: ", "0", say)
    if tables is None:
        return None
    sims = []
    um = env.user_model
    for idx, pop, tab, static in tables:
        ku, ks = users[keep], sessions[keep]
        sizes = []
        for u in idx:
            _, k = np.unique(ks[ku == u], return_counts=True)
            sizes.append(k)
        sims.append(simulated_ratio(
            SIGMA_GRID, sem_taste=pop.sem_taste, rho=pop.rho, sem_mu=tab.sem_mu, sem_sd=tab.sem_sd,
            static_util=static, item_emb=world.item_emb, affinity_scale=um.affinity_scale,
            session_sizes=sizes, min_items=cfg.session_min_items, seed=cfg.seed))
    # the populations' curves, weighted by the sessions each simulated (a population without any is left out)
    ratios = np.array([[c.ratio for c in r] for r in sims])  # (populations, grid)
    weights = np.array([[c.sessions for c in r] for r in sims], np.float64)
    weights[~np.isfinite(ratios)] = 0.0
    sim = np.nansum(np.where(weights > 0, ratios, 0.0) * weights, axis=0) / np.maximum(weights.sum(axis=0), 1.0)
    result = fit_session_intent(data, sim.tolist())
    built.env = dataclasses.replace(env, user_model=dataclasses.replace(env.user_model,
                                                                        session_intent=_r(result.sigma)))
    curve = ", ".join(f"{g:g}: {r:.2f}" for g, r in zip(SIGMA_GRID, sim, strict=True))
    say(f"session intent: sigma = {result.sigma:.3f} (coherence ratio {data.ratio:.3f} over {data.users} users, "
        f"{data.sessions} sessions; simulated {curve})")
    return result


def _fit_drift(built: _Built, splits: _Splits, cfg: CalibrationConfig, overrides: Mapping[str, Any],
               say: Callable[[str], None]) -> DriftFit | None:
    """Step 4c: ``drift_rate`` from the lag profile of the train split's sessions (an explicit override wins).

    Sets ``built.env``'s value; returns the fit, or None when not fitted (turned off, overridden, fewer than 100
    pairs of events the largest lag apart, or no simulated user with such sessions: then it stays as configured).
    On factored tables the simulation reads its sampled users' rows on demand.
    """
    if not cfg.drift_rate or "drift_rate" in overrides.get("user_model", {}):
        return None
    train, world, env = splits.train, built.world, built.env
    users, items = train.codes()
    t = train.events["timestamp"].to_numpy(np.int64)
    sessions = session_ids(users, t, 60.0 * cfg.session_gap_minutes)
    keep = sessions_read(users, sessions, min_items=cfg.session_min_items, max_sessions=cfg.session_max,
                         max_size=cfg.session_max_items, skip_first=cfg.session_skip_first, seed=cfg.seed)
    order = np.lexsort((np.arange(users.size), t, sessions))
    order = order[keep[order]]  # each session's events together, in time order (ties: the log's order)
    data = lag_profile(sessions[order], items[order], world.item_emb)
    if data.pairs[-1] < 10 * data.lags[-1]:
        say(f"drift: {data.pairs[-1]} pairs of events {data.lags[-1]} apart in a session; too few to fit, left at "
            f"{env.user_model.drift_rate:g}")
        return None
    ids, first, size = np.unique(sessions[order], return_index=True, return_counts=True)
    owner = users[order][first]  # (sessions,) user code of each session
    # the fit reads at most MAX_SIM_SESSIONS sessions' users: factored tables give their rows on demand
    tables = _simulated_users(built, "drift: ", f"{env.user_model.drift_rate:g}", say, factored_ok=True)
    if tables is None:
        return None
    decays, weights = [], []
    um = env.user_model
    for idx, pop, tab, static in tables:
        row = np.full(int(max(users.max(), idx.max(initial=0))) + 1, -1, np.int64)
        row[idx] = np.arange(idx.size)
        mine = row[owner] >= 0
        if not mine.any():
            continue
        profiles = simulated_lag_profiles(
            DRIFT_GRID, sem_taste=pop.sem_taste, rho=pop.rho, sem_mu=tab.sem_mu, sem_sd=tab.sem_sd,
            static_util=static, item_emb=world.item_emb, affinity_scale=um.affinity_scale,
            session_users=row[owner[mine]], session_sizes=size[mine], seed=cfg.seed)
        decays.append([p.decay for p in profiles])
        weights.append(float(mine.sum()))
    if not decays:
        say(f"drift: no simulated user has the log's sessions; not fitted, left at {env.user_model.drift_rate:g}")
        return None
    sim = np.average(np.array(decays), axis=0, weights=np.array(weights))  # (grid,) by the sessions of each
    result = fit_drift_rate(data, sim.tolist(), DRIFT_GRID, sessions=int(sum(weights)))
    built.env = dataclasses.replace(env, user_model=dataclasses.replace(env.user_model, drift_rate=_r(result.rate)))
    curve = ", ".join(f"{g:g}: {d:.4f}" for g, d in zip(DRIFT_GRID, sim, strict=True))
    say(f"drift: rate = {result.rate:.3f} (lag decay {data.decay:.4f} over {ids.size} sessions; simulated {curve})")
    return result


def _set_outside_option(built: _Built, cfg: CalibrationConfig, overrides: Mapping[str, Any],
                        out: Path) -> tuple[EnvConfig, float, float | None]:
    """Step 5: ``no_click_utility`` for the target random-slate CTR (an explicit override wins); save the world.

    Returns:
        (the env config with it, no_click_utility, the random-slate CTR it gives or None when overridden).
    """
    env = built.env
    if "no_click_utility" in overrides.get("user_model", {}):  # an explicit value wins
        u0, ctr0 = env.user_model.no_click_utility, None
    else:
        u0, ctr0 = _outside_option(built.world, env, cfg.target_random_ctr, cfg.seed)
        env = dataclasses.replace(env, user_model=dataclasses.replace(env.user_model, no_click_utility=u0))
    built.world.meta["calibration"] = {"affinity_scale": built.affinity_scale, "quality_weight": built.quality_weight,
                                       "no_click_utility": u0}
    built.world.save(out / "world")
    return env, u0, ctr0


def _report(*, source: str, env: EnvConfig, encoder: TextEncoder, command: str | None, cfg: CalibrationConfig,
            splits: _Splits, built: _Built, fit: ResponseFit, u0: float, ctr0: float | None,
            intent: IntentFit | None, drift: DriftFit | None, models: dict[str, dict[str, float]], n_eval: int,
            dist: dict[str, Any],
            plots: list[str],
            cache_counts: tuple[int | None, int | None], timings: dict[str, float]) -> dict[str, Any]:
    """The fidelity report (what ``fidelity.json`` holds)."""
    clean, prep = splits.clean, splits.prep
    hits, misses = cache_counts
    q = np.quantile(fit.rho, [0.1, 0.5, 0.9])
    return {
        "format": FORMAT,
        "source": source,
        "preset": env.preset,
        "encoder": encoder.name,
        "command": command,
        "models": models,
        "split": {
            "method": "temporal: each user's last share of events in time held out",
            "holdout": cfg.holdout, "min_events": cfg.min_events, "users": clean.n_users,
            "users_evaluated": n_eval, "users_with_held_out": int(np.unique(splits.test.codes()[0]).size),
            "fidelity_users": cfg.fidelity_users, "items": clean.n_items, "train_events": splits.train.n_events,
            "test_events": splits.test.n_events, "validation": cfg.validation, "validation_choices": fit.n_choices,
        },
        "preprocess": {"rows_in": prep.rows_in, "rows_out": prep.rows_out, "dropped": prep.dropped,
                       "steps": [{"rule": s.rule, "dropped": s.dropped, "filled": s.filled, "reason": s.reason,
                                  "detail": s.detail} for s in prep.steps]},
        "fit": {
            "affinity_scale": built.affinity_scale, "quality_weight": built.quality_weight,
            "quality_features": built.parts.feature_names,
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
            "session_intent": {"sigma": env.user_model.session_intent, "fitted": intent is not None}
            | ({} if intent is None else {
                "gap_minutes": cfg.session_gap_minutes, "users": intent.data.users,
                "sessions": intent.data.sessions, "within": _r(intent.data.within),
                "across": _r(intent.data.across), "between": _r(intent.data.between),
                "ratio": _r(intent.data.ratio), "grid": intent.grid, "simulated": [_r(r) for r in intent.simulated]}),
            "drift_rate": {"rate": env.user_model.drift_rate, "fitted": drift is not None}
            | ({} if drift is None else {
                "gap_minutes": cfg.session_gap_minutes, "lags": list(drift.data.lags),
                "cosine": [_r(c) for c in drift.data.cosine], "pairs": list(drift.data.pairs),
                "decay": _r(drift.data.decay), "grid": drift.grid, "simulated": [_r(d) for d in drift.simulated],
                "sessions_simulated": drift.sessions}),
        },
        "item_embeddings": {k: v for k, v in built.world.meta.get("item_emb", {}).items() if k != "mean"},
        "populations": {n: int(p.size) for n, p in built.world.populations.items()}
        | {"heldout_users": cfg.heldout_users},
        "distributions": dist,
        "plots": plots,
        "encoder_cache": None if hits is None else {"hits": int(hits), "misses": int(misses)},
        "calibrate_config": to_dict(cfg),
        "timings": timings,
    }


def _write_report_and_preset(out: Path, report: dict[str, Any], prep: PreprocessReport, env: EnvConfig,
                             source: str) -> None:
    """Step 7: fidelity.json, fidelity.md, then env.yaml last (a preset whose run failed is never loadable)."""
    atomic_write_text(out / "fidelity.json", json.dumps(report, indent=2, default=json_default) + "\n")
    atomic_write_text(out / "fidelity.md", fidelity_markdown(report, prep))
    env_data = to_dict(env)
    env_data.pop("preset_dir", None)
    import yaml

    header = (f"# Calibrated preset from {source} (python -m envs.calibrate); values only, fields documented in\n"
              "# configs/schema.py (EnvConfig). The catalog, users and CF model live in world/ next to this file;\n"
              "# load with envs.presets.preset_config(<this directory>) or --preset <this directory>.\n")
    atomic_write_text(out / "env.yaml", header + yaml.safe_dump(env_data, sort_keys=False))


# --------------------------------------------------------------------------------------------------------------
# calibrate(): the whole pipeline
# --------------------------------------------------------------------------------------------------------------


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

    The steps (docs/calibration.md says what each does and why): preprocess and split, encode the items, fit the
    response parameters on a validation split, build the world from all of train, set the outside option and save
    the world, rank the held-out items and check the distributions, write the report and ``env.yaml``.
    ``out_dir/env.yaml`` is removed first and written last, so a preset directory whose run failed half-way is
    never loadable; every file is written atomically.

    Args:
        log: The raw log (as read by :func:`envs.data.readers.load_logs`); preprocessed here.
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
    clock = _Clock(extra_timings, progress)
    say = clock.say
    overrides = dict(env_overrides or {})
    if "preset_dir" in overrides:
        raise ValueError("env.preset_dir cannot be set: preset_config adds it when the preset is loaded")
    base_env = from_dict(EnvConfig, deep_merge(to_dict(EnvConfig()), overrides), "env")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "env.yaml").unlink(missing_ok=True)
    source = log.source or "log"
    clock.t = time.perf_counter()

    splits = _preprocess_and_split(log, cfg, preprocess_cfg, say)
    clock.lap("preprocess_split")

    item_emb, emb_info = _encode_items(splits.clean, encoder, cfg.center_embeddings, say)
    hits, misses = getattr(encoder, "hits", None), getattr(encoder, "misses", None)
    clock.lap("encode")
    cache = f" (cache: {hits} hits, {misses} misses)" if hits is not None else ""
    say(f"encoded in {clock.timings['encode']:.1f} s{cache}")

    fit = _fit_response_parameters(splits, item_emb, cfg, say, base_env.table_budget_mb)
    clock.lap("fit_response")
    say(f"fit: a = {fit.affinity_scale:.3f}, q = {np.round(fit.quality_coef, 3).tolist()}, mean rho = "
        f"{fit.rho.mean():.3f}, log-likelihood per choice {fit.loglik_per_choice:.3f} "
        f"({clock.timings['fit_response']:.1f} s)")

    built = _build_world(source, splits, item_emb, fit, cfg, base_env, overrides, encoder)
    built.world.meta["item_emb"] = emb_info
    clock.lap("build_world")

    intent = _fit_intent(built, splits, cfg, overrides, say)
    clock.lap("session_intent")

    drift = _fit_drift(built, splits, cfg, overrides, say)
    clock.lap("drift_rate")

    env, u0, ctr0 = _set_outside_option(built, cfg, overrides, out)
    clock.lap("outside_option_and_save")
    say(f"world saved to {out / 'world'}: {built.world.n_items} items, populations "
        + ", ".join(f"{n} {p.size}" for n, p in built.world.populations.items()) + f"; no_click_utility = {u0:.3f}")

    unique = {"train": built.users["train"]} if built.users["heldout"] is built.users["train"] else built.users
    models, n_eval, scores = rank_held_out(built.world, env, unique, splits.clean.n_users, built.parts.mf,
                                           built.popularity, splits.train, splits.test, cfg.fidelity_users, cfg.seed)
    clock.lap("fidelity_ranking")
    say("held-out ranking: " + "; ".join(f"{k} " + ", ".join(f"{m_} {v[m_]:.4f}" for m_ in METRICS)
                                         for k, v in models.items()))

    dist, plots = distribution_checks(built.world, env, unique, scores, splits.train, splits.test,
                                      built.n_train_events, cfg.sim_sessions, cfg.seed, models, out)
    clock.lap("distributions")

    clock.finish()
    report = _report(source=source, env=env, encoder=encoder, command=command, cfg=cfg, splits=splits, built=built,
                     fit=fit, u0=u0, ctr0=ctr0, intent=intent, drift=drift, models=models, n_eval=n_eval, dist=dist,
                     plots=plots, cache_counts=(hits, misses), timings=clock.timings)
    _write_report_and_preset(out, report, splits.prep, env, source)
    say(f"wrote {out / 'env.yaml'}, fidelity.json, fidelity.md and {len(plots)} plots in "
        f"{clock.timings['total']:.1f} s")
    return report
