"""The batched simulator core: B user sessions stepped at once, over preallocated arrays.

The env classes only orchestrate this core (RecSim's separation, batched; PufferLib's preallocation). The
user's response lives in :mod:`envs.response`, the dynamics in :mod:`envs.dynamics`, randomness in
:mod:`envs.rng`. See DESIGN_NOTES.md for why per-row (M,) affinity vectors replace (B, N, D) gathers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import gammaincinv

from configs.schema import EnvConfig
from encoders.base import TextEncoder
from envs import rng
from envs.dynamics import category_counts, drift_coefficients, drift_norm, update_budget, update_fatigue
from envs.kernels import click_updates, first_unique, gather_features
from envs.response import (
    cascade_click_probs,
    dwell_seconds,
    mnl_click_probs,
    position_weights,
    purchase_probs,
    sample_choice,
)
from envs.spaces import (
    CONTEXT_NAMES,
    F_CF,
    F_LLM,
    FEATURE_NAMES,
    validate_slate,
)
from envs.world import World

#: Decay per step of the observable category exposure / click counters and of the context EMAs.
OBS_DECAY = 0.8
#: Recent clicked items kept per row for the text-mode prompt.
RECENT = 5


def _next_prime(n: int) -> int:
    n = max(n, 2)
    while any(n % d == 0 for d in range(2, int(n**0.5) + 1)):
        n += 1
    return n


def _prev_prime(n: int) -> int:
    while n > 2 and any(n % d == 0 for d in range(2, int(n**0.5) + 1)):
        n -= 1
    return n


@dataclass
class StepResult:
    """What one batched step returns (arrays are views of the core's buffers; copy to keep).

    Attributes:
        reward: float32 (B,).
        terminated: bool (B,) the user left (budget exhausted).
        truncated: bool (B,) the step limit was reached.
        items: int64 (B, K) catalog ids of the shown slate.
        click_rank: int64 (B,) rank of the click, -1 for none.
        clicks: bool (B, K).
        purchases: bool (B, K).
        dwell: float32 (B, K) seconds.
        reward_click: float32 (B,) click part of the reward.
        reward_purchase: float32 (B,) purchase part.
        reward_dwell: float32 (B,) dwell part.
    """

    reward: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    items: np.ndarray
    click_rank: np.ndarray
    clicks: np.ndarray
    purchases: np.ndarray
    dwell: np.ndarray
    reward_click: np.ndarray
    reward_purchase: np.ndarray
    reward_dwell: np.ndarray


class BatchedCore:
    """B simulated sessions over one world and one user population.

    Args:
        world: The simulated world.
        cfg: Env settings (N, K, limits, user model, reward, candidates).
        batch_size: B.
        population: Population name; default ``cfg.users``.
        text_encoder: Encoder for ``obs_mode="text"`` (cached; required in that mode).

    Raises:
        ValueError: If the catalog is too small for N candidates and the session pool.
    """

    def __init__(self, world: World, cfg: EnvConfig, batch_size: int, population: str | None = None,
                 text_encoder: TextEncoder | None = None) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if cfg.slate_size < 1 or cfg.n_candidates < cfg.slate_size:
            raise ValueError(f"need 1 <= slate_size <= n_candidates, got K={cfg.slate_size}, N={cfg.n_candidates}")
        if cfg.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {cfg.max_steps}")
        if cfg.obs_mode == "text" and text_encoder is None:
            raise ValueError("obs_mode='text' needs a text encoder")
        self.world, self.cfg, self.B = world, cfg, batch_size
        self.population = population or cfg.users
        if self.population not in world.populations:
            raise KeyError(f"unknown user population {self.population!r}; this world has {sorted(world.populations)}")
        self.pop = world.populations[self.population]
        um = cfg.user_model
        self.N, self.K, self.T = cfg.n_candidates, cfg.slate_size, cfg.max_steps
        self.M, self.D, self.C = world.n_items, world.dim, world.catalog.n_categories
        self.H = self.pop.history.shape[1] if self.pop.history.ndim == 2 else 0
        # Pool of P distinct items (P prime, so a stride walk visits N distinct positions) + a reserve that
        # replaces consumed items; at most one click per request, so T reserve items always suffice.
        self.R = self.T
        room = self.M - self.H - self.R
        self.P = _next_prime(max(cfg.candidates.pool_size, self.N))
        if self.P > room:
            self.P = _prev_prime(room)
        if self.P < self.N:
            raise ValueError(
                f"catalog of {self.M} items is too small for N={self.N} candidates with a history of {self.H} "
                f"and {self.R} reserve items; use fewer candidates or a larger catalog"
            )
        shares = np.array([cfg.candidates.llm_share, cfg.candidates.cf_share, cfg.candidates.popular_share,
                           cfg.candidates.random_share], dtype=np.float64)
        if (shares < 0).any() or shares.sum() <= 0:
            raise ValueError(f"candidate shares must be >= 0 and not all 0, got {shares.tolist()}")
        self.S = self.P + self.R
        self._part_sizes = np.floor(shares / shares.sum() * self.S).astype(int)
        self.tables = world.tables(self.population, int(self._part_sizes[:2].max()) + self.H + 8,
                                   um.affinity_scale, um.quality_weight)
        self.text_encoder = text_encoder
        self._pos_w = position_weights(self.K, um.position_decay)
        self._category = world.catalog.category
        self._log1p_price = np.log1p(world.catalog.price).astype(np.float64)
        self._rows = np.arange(batch_size)
        self._alloc()

    # ---- state ---------------------------------------------------------------------------------------------
    #
    # A session only ever sees items from its pool, so every per-item quantity is kept per *slot*: (B, S)
    # arrays with S = P + R (pool + reserve), addressed by ``slot_items`` (B, S). Candidates are P-positions
    # mapped to slots by ``pool_slots`` (B, P); a consumed item's position is pointed at the next reserve slot.

    def _alloc(self) -> None:
        b, d, c, s = self.B, self.D, self.C, self.S
        f32 = np.float32
        self.user = np.zeros(b, np.int64)
        self.keys = np.zeros(b, np.uint64)
        self.t = np.zeros(b, np.int64)
        self.slot_items = np.zeros((b, s), np.int64)
        self.pool_slots = np.zeros((b, self.P), np.int64)
        self.reserve_ptr = np.zeros(b, np.int64)
        self.sem_aff = np.zeros((b, s), f32)  # hidden θ·e per slot, drifting (θ unit norm)
        self.static_util = np.zeros((b, s), f32)  # hidden non-drifting part of the utility
        self.cf_obs = np.zeros((b, s), f32)  # observed CF score
        self.state_sim = np.zeros((b, s), f32)  # observed pooled state · e (unnormalised)
        self.seen = np.zeros((b, s), f32)  # impressions this session
        self.sem_mu = np.zeros(b, f32)
        self.sem_sd = np.ones(b, f32)
        self.a_rho = np.zeros(b, f32)
        self.price_sens = np.zeros(b, f32)
        self.budget = np.zeros(b, np.float64)
        self.state = np.zeros((b, d), f32)  # observed pooled LLM state (unnormalised)
        self.state_norm = np.zeros(b, f32)
        self.fatigue = np.zeros((b, c), f32)
        self.exposure = np.zeros((b, c), f32)
        self.cat_clicks = np.zeros((b, c), f32)
        self.cands = np.zeros((b, self.N), np.int64)  # catalog ids of the current candidates
        self.cand_slots = np.zeros((b, self.N), np.int64)
        self.cand_pos = np.zeros((b, self.N), np.int64)
        self.recent = np.full((b, RECENT), -1, np.int64)
        # context accumulators
        self.n_clicks = np.zeros(b, f32)
        self.n_purchases = np.zeros(b, f32)
        self.click_ema = np.zeros(b, f32)
        self.last_click = np.zeros(b, f32)
        self.last_rank = np.ones(b, f32)
        self.llm_ema = np.zeros(b, f32)
        self.cf_ema = np.zeros(b, f32)
        self.dwell_ema = np.zeros(b, f32)
        self.skip_streak = np.zeros(b, f32)
        # observation buffers
        self.obs_user = np.zeros((b, d), f32)
        self.obs_features = np.zeros((b, self.N, len(FEATURE_NAMES)), f32)
        self.obs_context = np.zeros((b, len(CONTEXT_NAMES)), f32)

    def reset_rows(self, rows: np.ndarray, keys: np.ndarray, users: np.ndarray | None = None) -> None:
        """Start new sessions in ``rows``.

        Args:
            rows: int (r,) row indices.
            keys: uint64 (r,) episode keys (all randomness of the session derives from them).
            users: int (r,) population indices; default: drawn from the keys.
        """
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size == 0:
            return
        keys = np.asarray(keys, dtype=np.uint64)
        pop, tab, um = self.pop, self.tables, self.cfg.user_model
        if users is None:
            users = rng.integers(keys, 0, rng.USER, pop.size)
        users = np.asarray(users, dtype=np.int64)
        if users.size and (users.min() < 0 or users.max() >= pop.size):
            raise ValueError(f"user index out of range [0, {pop.size})")
        self.user[rows] = users
        self.keys[rows] = keys
        self.t[rows] = 0
        hist = pop.history[users] if self.H else np.zeros((len(rows), 0), np.int64)
        slot_items = self._build_pools(keys, users, hist)
        self.slot_items[rows] = slot_items
        self.pool_slots[rows] = np.arange(self.P)
        self.reserve_ptr[rows] = 0
        flat = users[:, None] * self.M + slot_items
        self.sem_aff[rows] = tab.sem_aff.ravel()[flat]
        self.static_util[rows] = tab.static_util.ravel()[flat]
        self.cf_obs[rows] = tab.cf_obs.ravel()[flat]
        self.state_sim[rows] = tab.state_sim.ravel()[flat]
        self.seen[rows] = 0.0
        self.sem_mu[rows] = tab.sem_mu[users]
        self.sem_sd[rows] = tab.sem_sd[users]
        self.a_rho[rows] = um.affinity_scale * pop.rho[users]
        self.price_sens[rows] = pop.price_sens[users]
        u = rng.uniform(keys, 0, rng.BUDGET)
        scale = um.budget_mean / um.budget_shape
        self.budget[rows] = gammaincinv(um.budget_shape, np.clip(u, 1e-9, 1 - 1e-9)) * scale * pop.patience[users]
        self.state[rows] = pop.init_state[users]
        self.state_norm[rows] = np.linalg.norm(self.state[rows], axis=1)
        self.fatigue[rows] = 0.0
        self.exposure[rows] = 0.0
        self.cat_clicks[rows] = 0.0
        self.recent[rows] = -1
        if self.H:
            k = min(RECENT, self.H)
            self.recent[rows, RECENT - k:] = hist[:, self.H - k:]
        for acc in (self.n_clicks, self.n_purchases, self.click_ema, self.last_click, self.llm_ema, self.cf_ema,
                    self.dwell_ema, self.skip_streak):
            acc[rows] = 0.0
        self.last_rank[rows] = 1.0
        self._update_obs_user(rows)

    def _build_pools(self, keys: np.ndarray, users: np.ndarray, hist: np.ndarray) -> np.ndarray:
        """Per-session slots: LLM retrieval, CF retrieval, popular, random; distinct, history excluded.

        Returns:
            int64 (r, S) catalog ids, shuffled; the first P are the pool, the rest the reserve.
        """
        n_llm, n_cf, n_pop, n_rand = self._part_sizes
        need = self.S
        pop_top = self.world.popular_items[: max(3 * n_pop, 1)]
        rand = rng.integers(keys, 1, rng.POOL, self.M, slots=n_rand + need // 4 + 16)
        parts = [hist, self.tables.llm_top[users, : n_llm + self.H], self.tables.cf_top[users, : n_cf + self.H]]
        if n_pop:
            parts.append(pop_top[rng.integers(keys, 0, rng.POOL, len(pop_top), slots=n_pop)])
        parts.append(rand)
        a = np.concatenate(parts, axis=1)
        chosen = np.empty((len(a), need), np.int64)
        got = first_unique(a, self.H, need, self.M, chosen)
        for i in np.flatnonzero(got < need):  # tiny catalogs only: fill with any unused items
            keep = chosen[i, : got[i]]
            banned = np.concatenate([keep, hist[i][hist[i] >= 0]])
            chosen[i] = np.concatenate([keep, np.setdiff1d(np.arange(self.M), banned)[: need - got[i]]])
        perm = np.argsort(rng.uniform(keys, 2, rng.POOL, slots=need), axis=1)
        return np.take_along_axis(chosen, perm, axis=1)

    def _click_updates(self, cr: np.ndarray, items: np.ndarray, sem_keep: np.ndarray, sem_item: np.ndarray,
                       decay: np.float32, weight: np.ndarray) -> None:
        """Drift the hidden affinity and move the pooled-state similarity of clicked rows, on every slot."""
        gram = self.world.gram
        if gram is not None:
            click_updates(cr, items, gram, self.slot_items, self.sem_aff, sem_keep, sem_item, self.state_sim,
                          float(decay), weight)
            return
        g = self.world.gram_block(items, self.slot_items[cr])  # (r, S), computed from E for huge catalogs
        self.sem_aff[cr] = sem_keep[:, None] * self.sem_aff[cr] + sem_item[:, None] * g
        self.state_sim[cr] = decay * self.state_sim[cr] + weight[:, None] * g

    def _update_obs_user(self, rows: np.ndarray) -> None:
        norm = self.state_norm[rows]
        self.obs_user[rows] = self.state[rows] / np.where(norm > 0, norm, 1.0)[:, None]

    def _gather(self, arr: np.ndarray, idx: np.ndarray, slots: np.ndarray) -> np.ndarray:
        """``arr[idx[:, None], slots]`` for a (B, S) per-slot array: (r, X)."""
        return arr.ravel()[idx[:, None] * self.S + slots]

    # ---- observation ------------------------------------------------------------------------------------------

    def observe(self, rows: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Draw the N candidates of each row's current request and build the observation.

        Args:
            rows: Only refresh these rows (after a partial reset); default all.

        Returns:
            ``{"user": (B, D), "candidates": (B, N) int64, "features": (B, N, F), "context": (B, C)}`` (plus
            ``item_emb`` (B, N, D) when configured): the core's buffers, all B rows.
        """
        sel: slice | np.ndarray = slice(None) if rows is None else np.asarray(rows, dtype=np.int64)
        idx = self._rows[sel]
        keys, t = self.keys[sel], self.t[sel]
        walk = rng.integers(keys, t, rng.CANDIDATES, self.P, slots=2)
        stride = 1 + walk[:, 1] % (self.P - 1) if self.P > 1 else np.zeros(len(idx), np.int64)
        text = self.cfg.obs_mode == "text"
        norm = self.state_norm
        inv_norm = np.divide(1.0, norm, out=np.zeros_like(norm), where=norm > 0)
        gather_features(idx, walk[:, 0], stride, self.pool_slots, self.slot_items, self.state_sim, inv_norm,
                        self.cf_obs, self.seen, self.world.item_features, self._category, self.exposure,
                        self.cat_clicks, self.cand_pos, self.cand_slots, self.cands, self.obs_features, not text)
        if text:
            state = self._text_states(idx)
            self.obs_user[sel] = state
            self.obs_features[sel, :, F_LLM] = np.einsum("bnd,bd->bn", self.world.item_emb[self.cands[sel]], state)
        steps = np.maximum(t, 1).astype(np.float32)
        self.obs_context[sel] = np.stack(
            [
                t / self.T,
                self.click_ema[sel],
                self.n_clicks[sel] / steps,
                self.last_click[sel],
                self.last_rank[sel],
                self.llm_ema[sel],
                self.cf_ema[sel],
                self.n_purchases[sel] / steps,
                self.dwell_ema[sel],
                np.minimum(self.skip_streak[sel] / 5.0, 1.0),
            ],
            axis=1,
        )
        obs = {"user": self.obs_user, "candidates": self.cands, "features": self.obs_features,
               "context": self.obs_context}
        if self.cfg.obs_item_embeddings:
            obs["item_emb"] = self.world.item_emb[self.cands]
        return obs

    def prompts(self, rows: np.ndarray | None = None) -> list[str]:
        """The text-mode prompt of each row: [user context] + [task objective].

        Args:
            rows: Rows to build prompts for (default all).

        Returns:
            One prompt per row.
        """
        rows = self._rows if rows is None else rows
        texts = self.world.catalog.texts
        out = []
        for r in rows:
            recent = [texts[i].split(".")[0] for i in self.recent[r] if i >= 0]
            liked = "; ".join(reversed(recent)) if recent else "nothing yet"
            mood = "has been skipping recent suggestions" if self.skip_streak[r] >= 2 else "is engaged"
            out.append(
                f"User context: recently enjoyed {liked}. The user {mood}. "
                f"Task: recommend the next items this user will enjoy."
            )
        return out

    def _text_states(self, rows: np.ndarray) -> np.ndarray:
        assert self.text_encoder is not None
        return self.text_encoder.encode(self.prompts(rows)).astype(np.float32)

    # ---- hidden truth -------------------------------------------------------------------------------------------

    def utility(self, slots: np.ndarray) -> np.ndarray:
        """True (noise-free) utility of each row's slots given its current hidden state.

        Args:
            slots: int64 (B, X) slot indices (``cand_slots`` or a slate's slots).

        Returns:
            float32 (B, X).
        """
        um = self.cfg.user_model
        idx = self._rows
        items = np.take_along_axis(self.slot_items, slots, axis=1)
        z_sem = (self._gather(self.sem_aff, idx, slots) - self.sem_mu[:, None]) / self.sem_sd[:, None]
        fat = self.fatigue.ravel()[idx[:, None] * self.C + self._category[items]]
        return (self.a_rho[:, None] * z_sem + self._gather(self.static_util, idx, slots)
                - um.fatigue_weight * fat - um.repeat_weight * self._gather(self.seen, idx, slots))

    def candidate_utility(self) -> np.ndarray:
        """True utility of the current candidates: float32 (B, N) (hidden state: for oracles and diagnosis)."""
        return self.utility(self.cand_slots)

    def true_click_probs(self) -> np.ndarray:
        """Probability that each current candidate is clicked if shown alone at the top: float32 (B, N)."""
        um = self.cfg.user_model
        return 1.0 / (1.0 + np.exp(-(self.candidate_utility() - um.no_click_utility)))

    # ---- step ----------------------------------------------------------------------------------------------------

    def step(self, slate: np.ndarray) -> StepResult:
        """Show each row its slate, sample the response, update the users.

        Args:
            slate: int (B, K) positions into the current candidates, distinct per row.

        Returns:
            The step's outcome (rows whose session ended must be reset by the caller).

        Raises:
            ValueError: On a malformed slate, naming the row.
        """
        um, rw = self.cfg.user_model, self.cfg.reward
        slate = validate_slate(slate, self.N, self.K)
        b, rows = self.B, self._rows
        slots = np.take_along_axis(self.cand_slots, slate, axis=1)
        items = np.take_along_axis(self.slot_items, slots, axis=1)
        util = self.utility(slots)
        if um.choice_model == "mnl":
            probs = mnl_click_probs(util, self._pos_w, um.no_click_utility)
        else:
            probs = cascade_click_probs(util, self._pos_w, um.no_click_utility, um.cascade_abandon)
        rank = sample_choice(probs, rng.uniform(self.keys, self.t, rng.CHOICE))
        clicked = rank >= 0
        rk = np.where(clicked, rank, 0)
        item_c = items[rows, rk]
        slot_c = slots[rows, rk]
        rel = util[rows, rk] + um.satisfaction_noise * rng.normal(self.keys, self.t, rng.SATISFACTION)
        rel -= um.no_click_utility
        dwell = np.where(clicked, dwell_seconds(rel, rng.normal(self.keys, self.t, rng.DWELL), um.dwell_log_mean,
                                                um.dwell_sat_slope, um.dwell_sigma, um.dwell_cap), 0.0)
        p_buy = purchase_probs(rel, self.price_sens * self._log1p_price[item_c], um.purchase_bias,
                               um.purchase_sat_slope, um.purchase_price_slope)
        bought = clicked & (rng.uniform(self.keys, self.t, rng.PURCHASE) < p_buy)
        r_click = (rw.click * clicked).astype(np.float32)
        r_buy = (rw.purchase * bought).astype(np.float32)
        r_dwell = (rw.dwell * dwell / 60.0).astype(np.float32)

        # Observable session evidence, from the features the ranker saw for this slate.
        feats = self.obs_features
        d_llm = feats[rows, slate[rows, rk], F_LLM] - feats[rows[:, None], slate, F_LLM].mean(axis=1)
        d_cf = feats[rows, slate[rows, rk], F_CF] - feats[rows[:, None], slate, F_CF].mean(axis=1)

        # Dynamics: fatigue, exposure, repeats, drift, pooled state, budget, consumption.
        cats = self._category[items]
        cat_c = self._category[item_c]
        gain = category_counts(cats, um.fatigue_gain * self._pos_w, self.C)
        gain[rows, cat_c] += um.fatigue_click_gain * clicked
        update_fatigue(self.fatigue, gain.astype(np.float32), um.fatigue_recovery)
        self.exposure *= OBS_DECAY
        self.exposure += category_counts(cats, np.full(self.K, 1.0 / self.K), self.C).astype(np.float32)
        self.cat_clicks *= OBS_DECAY
        self.cat_clicks[rows, cat_c] += clicked
        self.seen.ravel()[rows[:, None] * self.S + slots] += 1.0

        cr = np.flatnonzero(clicked)
        if cr.size:
            ic, sc = item_c[cr], slot_c[cr]
            e = self.world.item_emb[ic]  # (r, D)
            rel_c = rel[cr]
            liked = rel_c > um.like_threshold
            disliked = rel_c < um.like_threshold - 1.5
            c_keep, c_item = drift_coefficients(liked, disliked, um.drift_rate)
            theta_e = self.sem_aff[cr, sc].astype(np.float64)
            norm = drift_norm(np.ones_like(theta_e), theta_e, c_keep, c_item)
            ck, ci = (c_keep / norm).astype(np.float32), (c_item / norm).astype(np.float32)
            w = (self.cfg.click_weight + self.cfg.purchase_weight * bought[cr]).astype(np.float32)
            decay = np.float32(self.cfg.state_decay)
            self._click_updates(cr, ic, ck, ci, decay, w)
            self.state[cr] = decay * self.state[cr] + w[:, None] * e
            self.state_norm[cr] = np.linalg.norm(self.state[cr], axis=1)
            self._update_obs_user(cr)
            # consumed: its pool position now points at the next reserve slot (a row stepped past its end, e.g.
            # an idle row in a batch, keeps its pool once the reserve is spent)
            ok = self.reserve_ptr[cr] < self.R
            cro = cr[ok]
            self.pool_slots[cro, self.cand_pos[cro, slate[cro, rank[cro]]]] = self.P + self.reserve_ptr[cro]
            self.reserve_ptr[cro] += 1
            self.recent[cr, :-1] = self.recent[cr, 1:]
            self.recent[cr, -1] = ic
        self.budget = update_budget(self.budget, clicked, rel - um.like_threshold, um.step_cost, um.no_click_cost,
                                    um.click_refund_base, um.click_refund_weight)

        # Context accumulators.
        self.n_clicks += clicked
        self.n_purchases += bought
        self.click_ema *= OBS_DECAY
        self.click_ema += (1 - OBS_DECAY) * clicked
        self.last_click[:] = clicked
        self.last_rank[:] = np.where(clicked, rank / self.K, 1.0)
        self.llm_ema[cr] = OBS_DECAY * self.llm_ema[cr] + (1 - OBS_DECAY) * d_llm[cr]
        self.cf_ema[cr] = OBS_DECAY * self.cf_ema[cr] + (1 - OBS_DECAY) * d_cf[cr]
        self.dwell_ema *= OBS_DECAY
        self.dwell_ema += (1 - OBS_DECAY) * (dwell / 60.0)
        self.skip_streak = np.where(clicked, 0.0, self.skip_streak + 1.0).astype(np.float32)

        self.t += 1
        terminated = self.budget <= 0.0
        truncated = (self.t >= self.T) & ~terminated
        clicks = np.zeros((b, self.K), bool)
        clicks[cr, rank[cr]] = True
        purchases = np.zeros((b, self.K), bool)
        purchases[cr, rank[cr]] = bought[cr]
        dwell_k = np.zeros((b, self.K), np.float32)
        dwell_k[cr, rank[cr]] = dwell[cr]
        return StepResult(
            reward=r_click + r_buy + r_dwell,
            terminated=terminated,
            truncated=truncated,
            items=items,
            click_rank=rank,
            clicks=clicks,
            purchases=purchases,
            dwell=dwell_k,
            reward_click=r_click,
            reward_purchase=r_buy,
            reward_dwell=r_dwell,
        )
