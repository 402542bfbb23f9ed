"""The numpy reading of the simulator core's compiled kernels: the batched step and session start exactly as
``envs/core.py`` computed them before they were compiled (one numpy pass per quantity, over all rows).

``tests/test_kernels.py`` runs a core through these and a twin core through the kernels and checks that every
state array and every output agree. Readable, slow; never on the hot path.
"""

from __future__ import annotations

import numpy as np
from scipy.special import gammaincinv

from envs import rng
from envs.core import OBS_DECAY, RECENT, BatchedCore
from envs.dynamics import category_counts, drift_coefficients, drift_norm, update_budget, update_fatigue
from envs.response import cascade_click_probs, dwell_seconds, mnl_click_probs, purchase_probs, sample_choice
from envs.spaces import F_CF, F_LLM, validate_slate


def first_unique(candidates: np.ndarray, skip: int, need: int, out: np.ndarray) -> np.ndarray:
    """Per row, the first ``need`` distinct non-negative ids of ``candidates[:, skip:]`` not in
    ``candidates[:, :skip]`` (the history), in order; ``out`` (r, need) is filled with them (-1 after the last).

    Returns:
        int64 (r,) how many ids each row got.
    """
    got = np.zeros(len(candidates), np.int64)
    out[:] = -1
    for r, row in enumerate(candidates):
        banned = {int(x) for x in row[:skip] if x >= 0}
        for x in row[skip:]:
            if x >= 0 and x not in banned and got[r] < need:
                banned.add(int(x))
                out[r, got[r]] = x
                got[r] += 1
    return got


def build_pools(core: BatchedCore, keys: np.ndarray, users: np.ndarray, hist: np.ndarray) -> np.ndarray:
    """Per-session slots: LLM retrieval, CF retrieval, popular, random; distinct, history excluded, shuffled.

    Returns:
        int64 (r, S) catalog ids; the first P are the pool, the rest the reserve.
    """
    n_llm, n_cf, n_pop, n_rand = core._part_sizes
    need = core.S
    pop_top = core.world.popular_items[: max(3 * n_pop, 1)]
    rand = rng.integers(keys, 1, rng.POOL, core.M, slots=n_rand + need // 4 + 16)
    parts = [hist, core.tables.llm_top[users, : n_llm + core.H], core.tables.cf_top[users, : n_cf + core.H]]
    if n_pop:
        parts.append(pop_top[rng.integers(keys, 0, rng.POOL, len(pop_top), slots=n_pop)])
    parts.append(rand)
    a = np.concatenate(parts, axis=1)
    chosen = np.empty((len(a), need), np.int64)
    got = first_unique(a, core.H, need, chosen)
    for i in np.flatnonzero(got < need):  # tiny catalogs only: fill with any unused items
        keep = chosen[i, : got[i]]
        banned = np.concatenate([keep, hist[i][hist[i] >= 0]])
        chosen[i] = np.concatenate([keep, np.setdiff1d(np.arange(core.M), banned)[: need - got[i]]])
    perm = np.argsort(rng.uniform(keys, 2, rng.POOL, slots=need), axis=1)
    return np.take_along_axis(chosen, perm, axis=1)


def reset_rows(core: BatchedCore, rows: np.ndarray, keys: np.ndarray, users: np.ndarray) -> None:
    """Start new sessions in ``rows`` of ``core`` (users given)."""
    pop, tab, um = core.pop, core.tables, core.cfg.user_model
    core.user[rows] = users
    core.keys[rows] = keys
    core.t[rows] = 0
    hist = pop.history[users] if core.H else np.zeros((len(rows), 0), np.int64)
    drawn = build_pools(core, keys, users, hist)  # pool positions, then the reserve
    order = np.argsort(drawn[:, : core.P], axis=1)  # pool slots hold the pool's items in catalog order
    slot_items = np.concatenate([np.take_along_axis(drawn[:, : core.P], order, axis=1), drawn[:, core.P:]], axis=1)
    core.slot_items[rows] = slot_items
    core.pool_slots[rows] = np.argsort(order, axis=1)  # position p -> the slot of its item
    core.reserve_ptr[rows] = 0
    flat = users[:, None] * core.M + slot_items
    core.sem_aff[rows] = tab.sem_aff.ravel()[flat]
    core.static_util[rows] = tab.static_util.ravel()[flat]
    core.cf_obs[rows] = tab.cf_obs.ravel()[flat]
    core.state_sim[rows] = tab.state_sim.ravel()[flat]
    core.seen[rows] = 0.0
    core.sem_mu[rows] = tab.sem_mu[users]
    core.sem_sd[rows] = tab.sem_sd[users]
    core.a_rho[rows] = um.affinity_scale * pop.rho[users]
    core.price_sens[rows] = pop.price_sens[users]
    u = rng.uniform(keys, 0, rng.BUDGET)
    scale = um.budget_mean / um.budget_shape
    core.budget[rows] = gammaincinv(um.budget_shape, np.clip(u, 1e-9, 1 - 1e-9)) * scale * pop.patience[users]
    core.state[rows] = pop.init_state[users]
    core.state_norm[rows] = np.linalg.norm(core.state[rows], axis=1)
    core.fatigue[rows] = 0.0
    core.exposure[rows] = 0.0
    core.cat_clicks[rows] = 0.0
    core.recent[rows] = -1
    if core.H:
        k = min(RECENT, core.H)
        core.recent[rows, RECENT - k:] = hist[:, core.H - k:]
    for acc in (core.n_clicks, core.n_purchases, core.click_ema, core.last_click, core.llm_ema, core.cf_ema,
                core.dwell_ema, core.skip_streak):
        acc[rows] = 0.0
    core.last_rank[rows] = 1.0


def observe(core: BatchedCore) -> dict[str, np.ndarray]:
    """Draw every row's candidates (a stride walk over its pool) and build the observation, in numpy."""
    keys, t, p = core.keys, core.t, core.P
    walk = rng.integers(keys, t, rng.CANDIDATES, p, slots=2)
    stride = 1 + walk[:, 1] % (p - 1) if p > 1 else np.zeros(core.B, np.int64)
    pos = (walk[:, :1] + stride[:, None] * np.arange(core.N)) % p
    rows = core._rows[:, None]
    slots = core.pool_slots[rows, pos]
    items = core.slot_items[rows, slots]
    cats = core._category[items]
    norm = core.state_norm[:, None]
    feats = np.stack([np.where(norm > 0, core.state_sim[rows, slots] / np.where(norm > 0, norm, 1.0), 0.0),
                      core.cf_obs[rows, slots], core.world.item_features[items, 0], core.world.item_features[items, 1],
                      core.exposure[rows, cats], core.cat_clicks[rows, cats], core.seen[rows, slots]], axis=2)
    core.cand_pos[:], core.cand_slots[:], core.cands[:] = pos, slots, items
    core.obs_features[:] = feats
    steps = np.maximum(t, 1).astype(np.float32)
    core.obs_context[:] = np.stack([t / core.T, core.click_ema, core.n_clicks / steps, core.last_click, core.last_rank,
                                    core.llm_ema, core.cf_ema, core.n_purchases / steps, core.dwell_ema,
                                    np.minimum(core.skip_streak / 5.0, 1.0)], axis=1)
    core.obs_user[:] = core.state / np.where(norm > 0, norm, 1.0)
    return {"user": core.obs_user, "candidates": core.cands, "features": core.obs_features,
            "context": core.obs_context}


def _gather(core: BatchedCore, arr: np.ndarray, slots: np.ndarray) -> np.ndarray:
    return arr.ravel()[core._rows[:, None] * core.S + slots]


def utility(core: BatchedCore, slots: np.ndarray) -> np.ndarray:
    """True utility (B, X) of each row's slots."""
    um = core.cfg.user_model
    items = np.take_along_axis(core.slot_items, slots, axis=1)
    z_sem = (_gather(core, core.sem_aff, slots) - core.sem_mu[:, None]) / core.sem_sd[:, None]
    fat = core.fatigue.ravel()[core._rows[:, None] * core.C + core._category[items]]
    return (core.a_rho[:, None] * z_sem + _gather(core, core.static_util, slots)
            - um.fatigue_weight * fat - um.repeat_weight * _gather(core, core.seen, slots))


def step(core: BatchedCore, slate: np.ndarray) -> dict[str, np.ndarray]:
    """One batched step of ``core`` in numpy; returns the outputs of ``BatchedCore.step`` as a dict."""
    um, rw = core.cfg.user_model, core.cfg.reward
    slate = validate_slate(slate, core.N, core.K)
    b, rows = core.B, core._rows
    slots = np.take_along_axis(core.cand_slots, slate, axis=1)
    items = np.take_along_axis(core.slot_items, slots, axis=1)
    util = utility(core, slots)
    if um.choice_model == "mnl":
        probs = mnl_click_probs(util, core._pos_w, um.no_click_utility)
    else:
        probs = cascade_click_probs(util, core._pos_w, um.no_click_utility, um.cascade_abandon)
    rank = sample_choice(probs, rng.uniform(core.keys, core.t, rng.CHOICE))
    clicked = rank >= 0
    rk = np.where(clicked, rank, 0)
    item_c = items[rows, rk]
    slot_c = slots[rows, rk]
    rel = util[rows, rk] + um.satisfaction_noise * rng.normal(core.keys, core.t, rng.SATISFACTION)
    rel -= um.no_click_utility
    dwell = np.where(clicked, dwell_seconds(rel, rng.normal(core.keys, core.t, rng.DWELL), um.dwell_log_mean,
                                            um.dwell_sat_slope, um.dwell_sigma, um.dwell_cap), 0.0)
    p_buy = purchase_probs(rel, core.price_sens * core._log1p_price[item_c], um.purchase_bias,
                           um.purchase_sat_slope, um.purchase_price_slope)
    bought = clicked & (rng.uniform(core.keys, core.t, rng.PURCHASE) < p_buy)
    r_click = (rw.click * clicked).astype(np.float32)
    r_buy = (rw.purchase * bought).astype(np.float32)
    r_dwell = (rw.dwell * dwell / 60.0).astype(np.float32)

    feats = core.obs_features
    d_llm = feats[rows, slate[rows, rk], F_LLM] - feats[rows[:, None], slate, F_LLM].mean(axis=1)
    d_cf = feats[rows, slate[rows, rk], F_CF] - feats[rows[:, None], slate, F_CF].mean(axis=1)

    cats = core._category[items]
    cat_c = core._category[item_c]
    gain = category_counts(cats, um.fatigue_gain * core._pos_w, core.C)
    gain[rows, cat_c] += um.fatigue_click_gain * clicked
    update_fatigue(core.fatigue, gain.astype(np.float32), um.fatigue_recovery)
    core.exposure *= OBS_DECAY
    core.exposure += category_counts(cats, np.full(core.K, 1.0 / core.K), core.C).astype(np.float32)
    core.cat_clicks *= OBS_DECAY
    core.cat_clicks[rows, cat_c] += clicked
    core.seen.ravel()[rows[:, None] * core.S + slots] += 1.0

    cr = np.flatnonzero(clicked)
    if cr.size:
        ic, sc = item_c[cr], slot_c[cr]
        e = core.world.item_emb[ic]
        rel_c = rel[cr]
        liked = rel_c > um.like_threshold
        disliked = rel_c < um.like_threshold - 1.5
        c_keep, c_item = drift_coefficients(liked, disliked, um.drift_rate)
        theta_e = core.sem_aff[cr, sc].astype(np.float64)
        norm = drift_norm(np.ones_like(theta_e), theta_e, c_keep, c_item)
        ck, ci = (c_keep / norm).astype(np.float32), (c_item / norm).astype(np.float32)
        w = (core.cfg.click_weight + core.cfg.purchase_weight * bought[cr]).astype(np.float32)
        decay = np.float32(core.cfg.state_decay)
        g = core.world.gram_block(ic, core.slot_items[cr])
        core.sem_aff[cr] = ck[:, None] * core.sem_aff[cr] + ci[:, None] * g
        core.state_sim[cr] = decay * core.state_sim[cr] + w[:, None] * g
        core.state[cr] = decay * core.state[cr] + w[:, None] * e
        core.state_norm[cr] = np.linalg.norm(core.state[cr], axis=1)
        ok = core.reserve_ptr[cr] < core.R
        cro = cr[ok]
        core.pool_slots[cro, core.cand_pos[cro, slate[cro, rank[cro]]]] = core.P + core.reserve_ptr[cro]
        core.reserve_ptr[cro] += 1
        core.recent[cr, :-1] = core.recent[cr, 1:]
        core.recent[cr, -1] = ic
    core.budget[:] = update_budget(core.budget, clicked, rel - um.like_threshold, um.step_cost, um.no_click_cost,
                                   um.click_refund_base, um.click_refund_weight)

    core.n_clicks += clicked
    core.n_purchases += bought
    core.click_ema *= OBS_DECAY
    core.click_ema += (1 - OBS_DECAY) * clicked
    core.last_click[:] = clicked
    core.last_rank[:] = np.where(clicked, rank / core.K, 1.0)
    core.llm_ema[cr] = OBS_DECAY * core.llm_ema[cr] + (1 - OBS_DECAY) * d_llm[cr]
    core.cf_ema[cr] = OBS_DECAY * core.cf_ema[cr] + (1 - OBS_DECAY) * d_cf[cr]
    core.dwell_ema *= OBS_DECAY
    core.dwell_ema += (1 - OBS_DECAY) * (dwell / 60.0)
    core.skip_streak[:] = np.where(clicked, 0.0, core.skip_streak + 1.0)

    core.t += 1
    terminated = core.budget <= 0.0
    truncated = (core.t >= core.T) & ~terminated
    clicks = np.zeros((b, core.K), bool)
    clicks[cr, rank[cr]] = True
    purchases = np.zeros((b, core.K), bool)
    purchases[cr, rank[cr]] = bought[cr]
    dwell_k = np.zeros((b, core.K), np.float32)
    dwell_k[cr, rank[cr]] = dwell[cr]
    return {"reward": r_click + r_buy + r_dwell, "terminated": terminated, "truncated": truncated, "items": items,
            "click_rank": rank, "clicks": clicks, "purchases": purchases, "dwell": dwell_k,
            "reward_click": r_click, "reward_purchase": r_buy, "reward_dwell": r_dwell}
