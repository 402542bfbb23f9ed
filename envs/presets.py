"""Building worlds: the embedded default, the small preset, and any config; cached on disk.

Building a world (``build_world``):
1. the catalog (synthetic, or an item table) and its LLM embeddings (encoder cache: a second run encodes nothing);
2. the train and held-out populations: persona texts → LLM semantic tastes, hidden traits;
3. a logging phase: every user lives ``logging.sessions_per_user`` cold-start sessions under the stochastic
   logging policy (:mod:`envs.logging_policy`), logged with propensities to Parquet;
4. the CF model (ALS) fitted on those logged clicks, the users' prior histories and pooled LLM states, and
   the items' logged popularity.
The result depends only on the config and the encoder identity; it is saved under a hash of both.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from configs.loader import CONFIG_DIR, preset_env, to_dict
from configs.schema import EncoderConfig, EnvConfig
from encoders.base import TextEncoder
from envs import rng
from envs.catalog import Catalog, catalog_from_items, generate_catalog, persona_texts
from envs.cf import fit_als
from envs.core import BatchedCore
from envs.factored import factor_arrays
from envs.logging_policy import logging_policy
from envs.rollout_log import RolloutLogger, write_rollout_log
from envs.sessions import Sessions
from envs.shift import new_item_mask, old_items_world, remap_log, to_catalog_ids, zero_new_items
from envs.users import Population, pool_history, sample_traits
from envs.world import World

WORLD_FORMAT = 1
#: EnvConfig keys that decide a build's table path and retrieval (see :func:`world_key`).
SCALE_KEYS = ("table_budget_mb", "ann_min_items", "ann_nprobe")
SCALE_DEFAULTS = {k: EnvConfig.__dataclass_fields__[k].default for k in SCALE_KEYS}
#: Texts per encoder call when building a world (65,536 = 1,024 transformer batches of 64).
ENCODE_BATCH = 65_536
#: Users per chunk of the factored organic-history draw (bounds its (chunk, C, D) gather).
ORGANIC_CHUNK = 256
PRESET_DIR = CONFIG_DIR / "presets"


def preset_config(name: str, overrides: dict | None = None) -> EnvConfig:
    """The env config of a preset, with optional overrides (see :func:`configs.loader.preset_env`, where the
    preset lookup lives so that every script resolves presets the same way).

    Args:
        name: ``"default"``, ``"small"`` (files in ``configs/presets``), or a calibrated preset directory
            written by ``python -m envs.calibrate`` (it holds ``env.yaml`` and ``world/``).
        overrides: Nested dict of EnvConfig values applied on top.

    Returns:
        The EnvConfig (``preset_dir`` set for a calibrated preset).

    Raises:
        ValueError: For an unknown preset, listing the known ones (a :class:`configs.loader.ConfigError`).
    """
    return preset_env(name, overrides)


def world_key(cfg: EnvConfig, encoder_name: str) -> str:
    """Hash of everything a world depends on (not N/K/limits of later envs: only what the build uses)."""
    relevant = {
        "format": WORLD_FORMAT,
        "encoder": encoder_name,
        "catalog": _catalog_key(cfg),
        "user_model": _user_model_key(cfg),
        "logging": to_dict(cfg.logging),
        "candidates": to_dict(cfg.candidates),
        "reward": to_dict(cfg.reward),
        "env": {k: getattr(cfg, k) for k in ("n_candidates", "slate_size", "max_steps", "state_decay", "click_weight",
                                             "purchase_weight")},
    }
    scale = {k: getattr(cfg, k) for k in SCALE_KEYS}
    factored = 16 * max(cfg.user_model.n_train, cfg.user_model.n_heldout) * cfg.catalog.n_items > \
        cfg.table_budget_mb * 2**20
    if (cfg.catalog.source == "synthetic" and factored) or scale != SCALE_DEFAULTS:
        relevant["scale"] = scale  # only then: the keys (and cached worlds) of dense builds stay as they were
    if cfg.catalog.source != "synthetic":
        p = Path(cfg.catalog.source)
        relevant["catalog_file"] = [str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns]
    return hashlib.sha1(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


def _user_model_key(cfg: EnvConfig) -> dict:
    """The user-model section of the world key, without ``session_intent``: the intent is drawn at each session's
    start (``BatchedCore``), not built into the world, so worlds built before it keep their keys."""
    data = to_dict(cfg.user_model)
    data.pop("session_intent", None)
    return data


def _catalog_key(cfg: EnvConfig) -> dict:
    """The catalog section of the world key; ``new_item_share`` only when set (worlds built before it keep their
    keys)."""
    data = to_dict(cfg.catalog)
    if not data.get("new_item_share"):
        data.pop("new_item_share", None)
    return data


def load_catalog(cfg: EnvConfig) -> Catalog:
    """The synthetic catalog, or the item table named by ``catalog.source``."""
    if cfg.catalog.source == "synthetic":
        return generate_catalog(cfg.catalog)
    from envs.data.readers import read_items

    items, _report = read_items(cfg.catalog.source)
    return catalog_from_items(items, cfg.catalog.cf_dim, cfg.catalog.seed)


def encode_in_batches(encoder: TextEncoder, texts: list[str], progress: bool = True) -> np.ndarray:
    """Encode ``texts`` in batches of :data:`ENCODE_BATCH` (a multiple of the transformer's batch sizes, so the
    rows equal one call's), with a progress bar for large catalogs: bounded memory per call, and a crash keeps
    the batches already in the encoder's cache.

    Returns:
        float32 (len(texts), D).
    """
    if len(texts) <= ENCODE_BATCH:
        return encoder.encode(texts).astype(np.float32)
    out = None
    bar = tqdm(total=len(texts), desc="encoding items", unit="text", disable=not progress, leave=False)
    for lo in range(0, len(texts), ENCODE_BATCH):
        part = encoder.encode(texts[lo:lo + ENCODE_BATCH]).astype(np.float32)
        if out is None:
            out = np.empty((len(texts), part.shape[1]), np.float32)
        out[lo:lo + len(part)] = part
        bar.update(len(part))
    bar.close()
    assert out is not None
    return out


def make_population(name: str, cfg: EnvConfig, n: int, seed: int, encoder: TextEncoder) -> Population:
    """A synthetic population: personas encoded by the LLM, hidden traits drawn from ``seed``."""
    texts = persona_texts(n, seed)
    traits = sample_traits(cfg.user_model, n, cfg.catalog.cf_dim, seed + 1)
    return Population(name=name, persona=texts, sem_taste=encode_in_batches(encoder, texts, progress=False), **traits)


def run_logging_phase(world: World, cfg: EnvConfig, population: str, seed: int, batch_size: int = 512,
                      progress: bool = False, lists: bool = True) -> pd.DataFrame:
    """Every user of ``population`` lives ``sessions_per_user`` sessions under the logging policy.

    Args:
        world: A world without CF model or histories yet (cold-start users).
        cfg: Env config.
        population: Population name.
        seed: Seed of the episode keys.
        batch_size: Users simulated at once.
        progress: Show a progress bar.
        lists: Keep the candidates and slates (else the log has no such columns: what the CF fit reads only,
            O(rows) instead of O(rows·N), for large populations).

    Returns:
        The rollout log (see :mod:`envs.rollout_log`).
    """
    pop = world.populations[population]
    queue = np.repeat(np.arange(pop.size), cfg.logging.sessions_per_user)
    n_sessions = len(queue)
    core = BatchedCore(world, cfg, min(batch_size, n_sessions), population=population)
    session_keys = rng.splitmix64(np.arange(n_sessions, dtype=np.uint64) + np.uint64(seed) * np.uint64(1_000_003))
    sessions = Sessions(core, session_keys, queue)
    sessions.start()
    logger = RolloutLogger(population, lists=lists)
    bar = tqdm(total=n_sessions, desc=f"logging {population} sessions", disable=not progress, leave=False)
    obs = core.observe()
    while (active := sessions.active).any():
        slate, lp = logging_policy(obs, core.keys, core.t, cfg.slate_size, cfg.logging.epsilon,
                                   cfg.logging.temperature)
        steps = core.t.copy()
        cands = core.cands.copy()
        res = sessions.step(slate)
        logger.log(core.user, sessions.session, steps, cands, res, lp, rows=np.flatnonzero(active))
        bar.update(len(sessions.ended))
        sessions.refill()
        obs = core.observe()
    bar.close()
    return logger.to_frame()


def build_world(cfg: EnvConfig, encoder: TextEncoder, progress: bool = True, log_dir: Path | None = None) -> World:
    """Build a world from scratch (see the module docstring).

    Args:
        cfg: Env config.
        encoder: Text encoder (cached).
        progress: Show progress bars.
        log_dir: Where to write the logging phase's Parquet logs (default: not written).

    Returns:
        The world, with CF model, popularity and prior histories.
    """
    t0 = time.perf_counter()
    catalog = load_catalog(cfg)
    item_emb = encode_in_batches(encoder, catalog.texts, progress=progress)
    um = cfg.user_model
    pops = {
        "train": make_population("train", cfg, um.n_train, um.seed, encoder),
        "heldout": make_population("heldout", cfg, um.n_heldout, um.seed + 7919, encoder),
    }
    for p in pops.values():
        p.history = np.full((p.size, 0), -1, np.int64)
        p.init_state = np.zeros((p.size, item_emb.shape[1]), np.float32)
    world = World(catalog=catalog, item_emb=item_emb, populations=pops,
                  item_factors=np.zeros((catalog.n_items, 0), np.float32),
                  popularity=np.zeros(catalog.n_items, np.float32), encoder_name=encoder.name)
    t_encode = time.perf_counter() - t0
    new = new_item_mask(catalog.n_items, cfg.catalog.new_item_share, cfg.catalog.seed)
    keep = np.flatnonzero(~new)
    # new items (cold start, envs/shift.py) exist for nobody before the CF fit: histories and logs use the rest
    src = old_items_world(world, keep) if new.any() else world
    organic = {name: organic_history(src, cfg, name, seed=um.seed + 101 + i) for i, name in enumerate(pops)}
    logs = {name: run_logging_phase(src, cfg, name, seed=um.seed + i, progress=progress, lists=log_dir is not None)
            for i, name in enumerate(pops)}
    if new.any():
        organic = {name: to_catalog_ids(v, keep) for name, v in organic.items()}
        logs = {name: remap_log(v, keep) for name, v in logs.items()}
    if log_dir is not None:
        for name, frame in logs.items():
            write_rollout_log(frame, Path(log_dir) / f"logging_{name}.parquet")
    fit_world_from_logs(world, cfg, logs, organic)
    if new.any():
        zero_new_items(world, new)
    world.meta.update({
        "config_key": world_key(cfg, encoder.name),
        "build_seconds": round(time.perf_counter() - t0, 2),
        "encode_seconds": round(t_encode, 2),
        "logged_requests": {k: len(v) for k, v in logs.items()},
        "logged_clicks": {k: int((v["click_rank"] >= 0).sum()) for k, v in logs.items()},
        "organic_items": {k: int(v.size) for k, v in organic.items()},
        **({"new_items": int(new.sum())} if new.any() else {}),
        "tables": {k: "factored" if world.is_factored(p.size, cfg.table_budget_mb) else "dense"
                   for k, p in pops.items()},
    })
    return world


def organic_history(world: World, cfg: EnvConfig, population: str, seed: int) -> np.ndarray:
    """Items each user consumed outside the recommender, in consumption order.

    Drawn without replacement by Gumbel-top-k over the catalog with probability ∝ exp(U / τ), where U is
    the user's true session-start utility (no fatigue); so the organic history reflects both tastes.

    Args:
        world: The world (tables of the population).
        cfg: Env config (``logging.organic_per_user``, ``logging.organic_temperature``).
        population: Population name.
        seed: Seed.

    Returns:
        int64 (U, organic_per_user) item ids.
    """
    um, lc = cfg.user_model, cfg.logging
    n = min(lc.organic_per_user, world.n_items)
    if n <= 0:
        return np.zeros((world.populations[population].size, 0), np.int64)
    if world.is_factored(world.populations[population].size, cfg.table_budget_mb):
        return _organic_history_factored(world, cfg, population, n, seed)
    tab = world.tables(population, 1, um.affinity_scale, um.quality_weight)
    pop = world.populations[population]
    util = (um.affinity_scale * pop.rho[:, None] * (tab.sem_aff - tab.sem_mu[:, None]) / tab.sem_sd[:, None]
            + tab.static_util)
    gen = np.random.default_rng(seed)
    keys = util / lc.organic_temperature - np.log(-np.log(gen.random(util.shape)))
    # the set of the n largest keys, in argpartition's order: the permutation below shuffles that order, so a
    # sorted top_k here would give other histories (and another world)
    top = np.argpartition(-keys, n - 1, axis=1)[:, :n]
    return np.take_along_axis(top, gen.permuted(np.tile(np.arange(n), (len(top), 1)), axis=1), axis=1)


def _organic_history_factored(world: World, cfg: EnvConfig, population: str, n: int, seed: int) -> np.ndarray:
    """:func:`organic_history` without (U, M) arrays: the Gumbel-top-n draw over a per-user candidate set.

    The candidates are the user's 4n items of highest semantic affinity ``θ_u·e_i`` and of highest hidden CF
    score ``c_u·f_i`` (retrieved like the env's lists: exact, or the approximate index on large catalogs), the
    catalog's 4n items of highest ``q·quality − p̄·logprice``, and 4n uniform random items; the true utility is
    computed exactly on them. This approximates the full-catalog draw (it drops the draws of low-utility items
    outside the set, whose share grows with the temperature and the catalog); chunks of users bound memory.
    """
    um, lc = cfg.user_model, cfg.logging
    pop = world.populations[population]
    fa, sem_mu, sem_sd = factor_arrays(pop, world.catalog, world.item_emb, world.item_factors, world.log_price,
                                       um.affinity_scale, um.quality_weight, world.item_moments)
    c = min(4 * n, world.n_items)
    ann = {"ann_min_items": cfg.ann_min_items, "nprobe": cfg.ann_nprobe}
    sem_top = world.retrieve("item_emb", world.item_emb, fa.sem_taste, c, label=f"organic_sem/{population}", **ann)
    cf_top = world.retrieve("cf_factor", fa.cf_factor, fa.cf_taste, c, label=f"organic_cf/{population}", **ann)
    item_part = fa.q_quality - float(pop.price_sens.mean()) * fa.log_price
    best = np.argsort(-item_part, kind="stable")[:c]
    gen = np.random.default_rng(seed)
    out = np.empty((pop.size, n), np.int64)
    a_rho = (um.affinity_scale * pop.rho).astype(np.float32)
    for lo in range(0, pop.size, ORGANIC_CHUNK):
        hi = min(lo + ORGANIC_CHUNK, pop.size)
        u = np.arange(lo, hi)
        cand = np.concatenate([sem_top[lo:hi], cf_top[lo:hi], np.broadcast_to(best, (hi - lo, len(best))),
                               gen.integers(0, world.n_items, (hi - lo, c))], axis=1)
        cand.sort(axis=1)
        sem = np.einsum("ud,ucd->uc", fa.sem_taste[u], fa.item_emb[cand])
        cft = (np.einsum("uf,ucf->uc", fa.cf_taste[u], fa.cf_factor[cand]) - fa.cft_mu[u, None]) / fa.cft_sd[u, None]
        util = (a_rho[u, None] * (sem - sem_mu[u, None]) / sem_sd[u, None] + fa.w_cf[u, None] * cft
                + fa.q_quality[cand] - fa.price_sens[u, None] * fa.log_price[cand])
        keys = util / lc.organic_temperature - np.log(-np.log(gen.random(util.shape)))
        keys[:, 1:][cand[:, 1:] == cand[:, :-1]] = -np.inf  # each item once
        top = np.take_along_axis(cand, np.argpartition(-keys, n - 1, axis=1)[:, :n], axis=1)
        out[lo:hi] = np.take_along_axis(top, gen.permuted(np.tile(np.arange(n), (hi - lo, 1)), axis=1), axis=1)
    return out


def fit_world_from_logs(world: World, cfg: EnvConfig, logs: dict[str, pd.DataFrame],
                        organic: dict[str, np.ndarray] | None = None) -> None:
    """Fit ALS on organic histories and logged clicks (purchases weigh double); set popularity, histories
    and pooled states.

    Args:
        world: The world to complete (modified in place).
        cfg: Env config (``logging`` section).
        logs: Rollout log per population.
        organic: int64 (U, n) organic history per population (consumed before the logged sessions).
    """
    names = list(world.populations)
    organic = organic or {n: np.zeros((world.populations[n].size, 0), np.int64) for n in names}
    offsets = np.cumsum([0] + [world.populations[n].size for n in names])
    users, items, weights = [], [], []
    for off, name in zip(offsets, names, strict=False):
        clicks = logs[name][logs[name]["click_rank"] >= 0]
        org = organic[name]
        users += [np.repeat(np.arange(len(org)), org.shape[1]) + off, clicks["user"].to_numpy() + off]
        items += [org.ravel(), clicks["clicked_item"].to_numpy()]
        weights += [np.ones(org.size, np.float32), 1.0 + clicks["purchase"].to_numpy(dtype=np.float32)]
    u, i, w = np.concatenate(users), np.concatenate(items), np.concatenate(weights)
    lc = cfg.logging
    mf = fit_als(u, i, w, int(offsets[-1]), world.n_items, factors=lc.cf_factors, regularization=lc.cf_regularization,
                 iterations=lc.cf_iterations, alpha=lc.cf_alpha, seed=cfg.user_model.seed)
    world.item_factors = mf.item_factors
    world.popularity = np.bincount(i, minlength=world.n_items).astype(np.float32)
    for off, name in zip(offsets, names, strict=False):
        pop = world.populations[name]
        pop.cf_user = mf.user_factors[off:off + pop.size]
        clicks = logs[name][logs[name]["click_rank"] >= 0].sort_values(["user", "session", "step"], kind="stable")
        tail = clicks.groupby("user").tail(lc.history_len)
        logged = np.full((pop.size, lc.history_len), -1, np.int64)
        if len(tail):
            pos_from_end = tail.groupby("user").cumcount(ascending=False).to_numpy()
            logged[tail["user"].to_numpy(), lc.history_len - 1 - pos_from_end] = tail["clicked_item"].to_numpy()
        hist = _last_valid(np.concatenate([organic[name], logged], axis=1), lc.history_len)
        pop.history = hist
        pop.init_state = pool_history(hist, world.item_emb, cfg.state_decay)
    world.__dict__.pop("item_features", None)
    world.__dict__.pop("popular_items", None)
    world._tables.clear()


def _last_valid(seq: np.ndarray, width: int) -> np.ndarray:
    """The last ``width`` non-negative entries of each row, right-aligned, -1 padded: (U, L) → (U, width)."""
    valid = seq >= 0
    order = np.argsort(~valid, axis=1, kind="stable")  # valid entries first, in order
    packed = np.take_along_axis(seq, order, axis=1)
    count = valid.sum(axis=1)
    out = np.full((len(seq), width), -1, np.int64)
    for k in range(width):  # column k of the output takes the (count - width + k)-th valid entry
        src = count - width + k
        ok = src >= 0
        out[ok, k] = packed[ok, src[ok]]
    return out


def default_world_dir(cfg: EnvConfig, enc_cfg: EncoderConfig) -> Path:
    """Folder under which worlds are cached."""
    from encoders.cache import default_cache_dir

    base = Path(cfg.cache_dir) if cfg.cache_dir else Path(enc_cfg.cache_dir or default_cache_dir())
    return base / "worlds"


def load_world(cfg: EnvConfig, enc_cfg: EncoderConfig | None = None, encoder: TextEncoder | None = None,
               progress: bool = True) -> World:
    """The world of ``cfg``: a calibrated preset folder, else the disk cache, else built and cached.

    Args:
        cfg: Env config (``preset_dir`` wins when set).
        enc_cfg: Encoder config (default: the transformer).
        encoder: A ready encoder (else made from ``enc_cfg``).
        progress: Show progress bars while building.

    Returns:
        The world.
    """
    if cfg.preset_dir:
        return World.load(Path(cfg.preset_dir) / "world")
    enc_cfg = enc_cfg or EncoderConfig()
    if encoder is None:
        from encoders.factory import make_encoder

        encoder = make_encoder(dataclasses.replace(enc_cfg, progress=progress and enc_cfg.progress))
    folder = default_world_dir(cfg, enc_cfg) / world_key(cfg, encoder.name)
    if (folder / "world.json").is_file():
        try:
            return World.load(folder)
        except (ValueError, KeyError, OSError):
            pass  # corrupt cache entry: rebuild below
    world = build_world(cfg, encoder, progress=progress)
    world.save(folder)
    return world
