"""The batched simulator core: B user sessions stepped at once, over preallocated arrays.

The env classes only orchestrate this core (RecSim's separation, batched; PufferLib's preallocation). The hot
path (session start, step, observation) runs as compiled per-row kernels (:mod:`envs.kernels`) split over
threads; the same rules as plain numpy functions are :mod:`envs.response` (choice, dwell, purchase) and
:mod:`envs.dynamics` (fatigue, budget, drift), and the whole numpy core the kernels are checked against is
``tests/reference_core.py``. Randomness: :mod:`envs.rng`. See DESIGN_NOTES.md for why per-session slot arrays
and an item Gram matrix replace (B, N, D) gathers.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from configs.schema import EnvConfig
from encoders.base import TextEncoder
from envs import rng
from envs.dynamics import intent_affinity, intent_factor
from envs.factored import FactoredTables, fill_factored
from envs.features import ACC_NAMES, new_accumulators, text_llm_sim
from envs.kernels import (
    SessionState,
    StepParams,
    StepResult,
    build_sessions,
    copy_slot_emb,
    gather_features,
    slate_error_row,
    step_sessions,
)
from envs.response import position_weights
from envs.spaces import CONTEXT_NAMES, CRITIC_STATE_NAMES, F_LLM, FEATURE_NAMES, validate_slate
from envs.world import World

#: Decay per step of the observable category exposure / click counters and of the context EMAs.
OBS_DECAY = 0.8
#: Recent clicked items kept per row for the text-mode prompt.
RECENT = 5
#: Rows below which a kernel call is not split across threads (dispatch costs more than it saves).
MIN_ROWS_PER_THREAD = 64

_POOL: ThreadPoolExecutor | None = None
_POOL_PID = 0  # the process that made _POOL: a forked child has the object but not its threads


def slot_emb_dtype(setting: str, n_items: int, ann_min_items: int) -> str:
    """The dtype of the per-row slot-embedding copy (``EnvConfig.slot_emb_dtype``): ``"auto"`` is ``"int8"`` for
    catalogs of at least ``ann_min_items`` items (the scalable path, whose retrieval is approximate too), else
    ``"float32"`` (bit-identical trajectories)."""
    if setting not in ("auto", "float32", "int8"):
        raise ValueError(f"slot_emb_dtype must be 'auto', 'float32' or 'int8', got {setting!r}")
    if setting == "auto":
        return "int8" if n_items >= ann_min_items else "float32"
    return setting


def kernel_threads() -> int:
    """Threads the compiled kernels split rows over: ``RECFEED_ENV_THREADS``, else the CPU count (at most 8).

    The kernels release the GIL and rows are independent, so results do not depend on it.

    Raises:
        ValueError: If ``RECFEED_ENV_THREADS`` is not a positive integer.
    """
    raw = os.environ.get("RECFEED_ENV_THREADS")
    if raw is None:
        return max(1, min(os.cpu_count() or 1, 8))
    try:
        n = int(raw)
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"RECFEED_ENV_THREADS must be a positive integer, got {raw!r}")
    return n


def split_rows(n: int, call: Callable[[int, int], None], threads: int) -> None:
    """Run ``call(lo, hi)`` over ``[0, n)`` split into up to ``threads`` contiguous ranges, in parallel threads.

    Args:
        n: Number of rows.
        call: Processes rows ``lo:hi`` (a GIL-releasing kernel call).
        threads: Upper bound on the ranges (each at least :data:`MIN_ROWS_PER_THREAD` rows).
    """
    global _POOL, _POOL_PID
    parts = max(1, min(threads, n // MIN_ROWS_PER_THREAD))
    if parts == 1:
        call(0, n)
        return
    if _POOL is None or _POOL_PID != os.getpid() or _POOL._max_workers < parts - 1:
        _POOL = ThreadPoolExecutor(max_workers=parts - 1, thread_name_prefix="recfeed-kernel")
        _POOL_PID = os.getpid()
    bounds = [n * i // parts for i in range(parts + 1)]
    futures = [_POOL.submit(call, bounds[i], bounds[i + 1]) for i in range(1, parts)]
    call(bounds[0], bounds[1])
    for f in futures:
        f.result()


def _next_prime(n: int) -> int:
    n = max(n, 2)
    while any(n % d == 0 for d in range(2, int(n**0.5) + 1)):
        n += 1
    return n


def _prev_prime(n: int) -> int:
    while n > 2 and any(n % d == 0 for d in range(2, int(n**0.5) + 1)):
        n -= 1
    return n


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
                                   um.affinity_scale, um.quality_weight, budget_mb=cfg.table_budget_mb,
                                   ann_min_items=cfg.ann_min_items, ann_nprobe=cfg.ann_nprobe)
        self.factored = isinstance(self.tables, FactoredTables)
        if cfg.obs_session_sim and self.factored:
            raise ValueError("env.obs_session_sim is not available on the factored path (a catalog whose per-user "
                             "tables exceed env.table_budget_mb): raise the budget or turn it off")
        self.text_encoder = text_encoder
        self._pos_w = position_weights(self.K, um.position_decay)
        self._category = world.catalog.category
        self._log1p_price = np.log1p(world.catalog.price).astype(np.float64)
        self._rows = np.arange(batch_size)
        self.threads = kernel_threads()
        self._a_rho = (um.affinity_scale * self.pop.rho).astype(np.float32)
        self._intent = intent_factor(world.item_emb) if um.session_intent > 0 else None  # float64 (D, D)
        self._history = np.ascontiguousarray(self.pop.history if self.H else np.zeros((self.pop.size, 0)), np.int64)
        self._pop_top = np.ascontiguousarray(world.popular_items[: max(3 * int(self._part_sizes[2]), 1)])
        gram = world.gram if 4 * self.M * self.M <= cfg.gram_budget_mb * 2**20 else None
        self._use_gram = gram is not None
        self._gram = gram if gram is not None else np.zeros((1, 1), np.float32)
        # without a Gram matrix, each row keeps a contiguous copy of its S slots' embedding rows (taken at session
        # start), so that a click streams S·D floats instead of gathering S rows from the catalog-sized table
        self._slot_emb = np.zeros((0, 0, 0), np.float32)
        self._slot_scale = np.zeros((0, 0), np.float32)  # the int8 copy's per-slot scales
        dtype = np.dtype(slot_emb_dtype(cfg.slot_emb_dtype, self.M, cfg.ann_min_items))
        if not self._use_gram and dtype.itemsize * batch_size * self.S * self.D <= cfg.slot_emb_budget_mb * 2**20:
            self._slot_emb = np.zeros((batch_size, self.S, self.D), dtype)
            if dtype == np.int8:
                self._slot_scale = np.ones((batch_size, self.S), np.float32)
        rw = cfg.reward
        self._params = StepParams(
            cascade=um.choice_model == "cascade", no_click_utility=um.no_click_utility,
            cascade_abandon=um.cascade_abandon, fatigue_weight=um.fatigue_weight, repeat_weight=um.repeat_weight,
            satisfaction_noise=um.satisfaction_noise, dwell_log_mean=um.dwell_log_mean,
            dwell_sat_slope=um.dwell_sat_slope, dwell_sigma=um.dwell_sigma, dwell_cap=um.dwell_cap,
            purchase_bias=um.purchase_bias, purchase_sat_slope=um.purchase_sat_slope,
            purchase_price_slope=um.purchase_price_slope, reward_click=rw.click, reward_purchase=rw.purchase,
            reward_dwell=rw.dwell, fatigue_gain=um.fatigue_gain, fatigue_click_gain=um.fatigue_click_gain,
            fatigue_recovery=um.fatigue_recovery, like_threshold=um.like_threshold, drift_rate=um.drift_rate,
            click_weight=cfg.click_weight, purchase_weight=cfg.purchase_weight, state_decay=cfg.state_decay,
            step_cost=um.step_cost, no_click_cost=um.no_click_cost, click_refund_base=um.click_refund_base,
            click_refund_weight=um.click_refund_weight, obs_decay=OBS_DECAY, max_steps=self.T,
        )
        # one numba type signature whatever the config's number literals: floats as float, the rest as declared
        self._params = self._params._replace(**{k: float(v) for k, v in self._params._asdict().items()
                                                if StepParams.__annotations__[k] == "float"})
        self._alloc()
        self._bind()

    # ---- state ---------------------------------------------------------------------------------------------
    #
    # A session only ever sees items from its pool, so every per-item quantity is kept per *slot*: (B, S)
    # arrays with S = P + R (pool + reserve), addressed by ``slot_items`` (B, S). Candidates are P-positions
    # mapped to slots by ``pool_slots`` (B, P); a consumed item's position is pointed at the next reserve slot.
    # The index arrays the kernels walk (slot items, pool slots, candidate slots and positions) are int32: the
    # feature gather is bound by memory traffic, and halving it made ``observe`` ~1.5x faster.

    def _alloc(self) -> None:
        b, d, c, s = self.B, self.D, self.C, self.S
        f32 = np.float32
        self.user = np.zeros(b, np.int64)
        self.keys = np.zeros(b, np.uint64)
        self.t = np.zeros(b, np.int64)
        self.slot_items = np.zeros((b, s), np.int32)
        self.slot_cat = np.zeros((b, s), np.int32)  # the slot item's category (copied at session start)
        self.slot_feat = np.zeros((b, s, 2), f32)  # the slot item's popularity and price (likewise)
        self.pool_slots = np.zeros((b, self.P), np.int32)
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
        self.cand_llm = np.zeros((b, self.N), f32)  # llm_sim of the current candidates (the step reads it)
        # env.obs_session_sim: per slot, Σ over this session's clicked items of e_clicked · e_slot, and ‖Σ e_clicked‖²
        self.sess_sim = np.zeros((b, s), f32)
        self.sess_norm2 = np.zeros(b, f32)
        self.cand_slots = np.zeros((b, self.N), np.int32)
        self.cand_pos = np.zeros((b, self.N), np.int32)
        self.recent = np.full((b, RECENT), -1, np.int64)
        # the context's accumulators (envs.features.ACC_NAMES), also readable by name as column views
        self.acc = new_accumulators(b)  # (B, A) float32
        (self.n_clicks, self.n_purchases, self.click_ema, self.last_click, self.last_rank, self.llm_ema, self.cf_ema,
         self.dwell_ema, self.skip_streak) = (self.acc[:, a] for a in range(len(ACC_NAMES)))
        self._new_obs_buffers(np.zeros)

    def _new_obs_buffers(self, alloc: Callable[..., np.ndarray] = np.empty) -> None:
        """Point the observation buffers at new arrays (written in full by the next :meth:`observe`).

        The core never reads them back, so the arrays :meth:`observe` returns belong to the caller once the next
        full observation has replaced them: no copy is needed to keep them.
        """
        b, f32 = self.B, np.float32
        self.obs_user = alloc((b, self.D), f32)  # the pooled state, normalised
        self.cands = alloc((b, self.N), np.int64)  # catalog ids of the current candidates
        self.obs_features = alloc((b, self.N, len(FEATURE_NAMES)), f32)
        self.obs_context = alloc((b, len(CONTEXT_NAMES)), f32)
        self.obs_session_sim = alloc((b, self.N if self.cfg.obs_session_sim else 0), f32)
        self.obs_hidden_taste = alloc((b, self.N if self.cfg.obs_hidden_taste else 0), f32)
        self.obs_critic_state = alloc((b, len(CRITIC_STATE_NAMES) if self.cfg.obs_critic_state else 0), f32)

    def _bind(self) -> None:
        """(Re)build the tuple of arrays the kernels take from the current attributes."""
        self._session = SessionState(*(getattr(self, name) for name in SessionState._fields))

    def reset_rows(self, rows: np.ndarray, keys: np.ndarray, users: np.ndarray | None = None) -> None:
        """Start new sessions in ``rows``.

        Args:
            rows: int (r,) row indices.
            keys: uint64 (r,) episode keys (all randomness of the session derives from them).
            users: int (r,) population indices; default: drawn from the keys.

        Raises:
            ValueError: Rows outside the batch or repeated, or ``keys`` / ``users`` not one per row, or a user
                outside the population (checked here: the compiled kernel does not bounds-check).
        """
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if rows.size == 0:
            return
        ordered = rows[0] >= 0 and rows[-1] < self.B and bool((rows[1:] > rows[:-1]).all())  # the usual case
        if not ordered and (rows.min() < 0 or rows.max() >= self.B or np.unique(rows).size != rows.size):
            raise ValueError(f"rows must be distinct indices in [0, {self.B}), got {rows.tolist()[:10]}")
        keys = np.asarray(keys, dtype=np.uint64).reshape(-1)
        if keys.shape != rows.shape:
            raise ValueError(f"got {keys.size} keys for {rows.size} rows")
        pop, tab, um = self.pop, self.tables, self.cfg.user_model
        draw = users is None
        if draw:  # the kernel draws them from the keys (stream USER)
            users = np.empty(rows.size, np.int64)
        users = np.asarray(users, dtype=np.int64).reshape(-1)
        if users.shape != rows.shape:
            raise ValueError(f"got {users.size} users for {rows.size} rows")
        if not draw and (users.min() < 0 or users.max() >= pop.size):
            raise ValueError(f"user index out of range [0, {pop.size})")
        shape, scale = float(um.budget_shape), float(um.budget_mean / um.budget_shape)
        n_llm, n_cf, n_pop, n_rand = (int(x) for x in self._part_sizes)
        n_rand += self.S // 4 + 16

        def start(lo: int, hi: int) -> None:
            build_sessions(rows, keys, users, draw, self._history, pop.patience, shape, scale, self._session,
                           tab.packed, tab.llm_top, tab.cf_top, self._pop_top, tab.sem_mu, tab.sem_sd, self._a_rho,
                           pop.price_sens, pop.init_state, n_llm, n_cf, n_pop, n_rand, self._category,
                           self.world.item_features, lo, hi)
            if self.factored:  # the slots' four values (and embedding rows) from the factors: no table was read
                fill_factored(rows, self._session, tab.factors, self._slot_emb, self._slot_scale, lo, hi)
            elif self._slot_emb.shape[0]:
                copy_slot_emb(rows, self.slot_items, self.world.item_emb, self._slot_emb, self._slot_scale, lo, hi)

        split_rows(len(rows), start, self.threads)
        if self._intent is not None:
            self._start_intent(rows)
        self.sess_sim[rows] = 0.0
        self.sess_norm2[rows] = 0.0

    def _start_intent(self, rows: np.ndarray) -> None:
        """Move the new sessions' hidden affinities to their session intent (``UserConfig.session_intent``)."""
        for lo in range(0, rows.size, 256):  # bounds the (r, S, D) gather of slot embeddings
            r = rows[lo:lo + 256]
            z = rng.normal(self.keys[r], 0, rng.INTENT, self.D)  # (r, D)
            self.sem_aff[r] = intent_affinity(self.sem_aff[r], self.pop.sem_taste[self.user[r]],
                                              self.world.item_emb[self.slot_items[r]], z, self._intent,
                                              self.cfg.user_model.session_intent)

    def copy_rows(self, src: BatchedCore, src_rows: np.ndarray, dst_rows: np.ndarray,
                  keys: np.ndarray | None = None) -> None:
        """Make ``dst_rows`` exact copies of ``src``'s sessions ``src_rows`` (their state and current request).

        A copy given its source's key replays the source exactly under the same slates; given another key it is an
        independent continuation of the same session from here (all randomness derives from key and step). This
        is what a lookahead needs: many futures of one user's session, at the cost of a memory copy. (A destination
        core too large for per-row slot embeddings reads the catalog table instead: exact in float32; from an int8
        source the copy then differs from it within the int8 error of ``bench.slot_emb_error``.)

        Args:
            src: A core over the same world, config and population (it may be this core).
            src_rows: int (r,) rows of ``src``.
            dst_rows: int (r,) rows of this core, distinct.
            keys: uint64 (r,) the copies' episode keys (default: the sources' keys).

        Raises:
            ValueError: For cores over different worlds, configs or populations, or rows not one-to-one.
        """
        if src.world is not self.world or src.cfg != self.cfg or src.population != self.population:
            raise ValueError("copy_rows needs a core over the same world, config and population")
        src_rows = np.asarray(src_rows, dtype=np.int64).reshape(-1)
        dst_rows = np.asarray(dst_rows, dtype=np.int64).reshape(-1)
        if src_rows.shape != dst_rows.shape:
            raise ValueError(f"got {src_rows.size} source rows for {dst_rows.size} destination rows")
        if src_rows.size and (src_rows.min() < 0 or src_rows.max() >= src.B):
            raise ValueError(f"source rows must be in [0, {src.B})")
        if dst_rows.size and (dst_rows.min() < 0 or dst_rows.max() >= self.B
                              or np.unique(dst_rows).size != dst_rows.size):
            raise ValueError(f"destination rows must be distinct indices in [0, {self.B})")
        if keys is not None:
            keys = np.asarray(keys, dtype=np.uint64).reshape(-1)
            if keys.shape != dst_rows.shape:
                raise ValueError(f"got {keys.size} keys for {dst_rows.size} rows")
        for name in SessionState._fields:
            getattr(self, name)[dst_rows] = getattr(src, name)[src_rows]
        self.sess_sim[dst_rows] = src.sess_sim[src_rows]
        self.sess_norm2[dst_rows] = src.sess_norm2[src_rows]
        if self._slot_emb.shape[0] and src._slot_emb.shape[0]:
            self._slot_emb[dst_rows] = src._slot_emb[src_rows]
            if self._slot_scale.shape[0]:
                self._slot_scale[dst_rows] = src._slot_scale[src_rows]
        elif self._slot_emb.shape[0]:  # the source reads the table: take the rows' copies from it, as at start
            if self.factored:
                raise ValueError("copy_rows from a core without per-row slot embeddings into one with them needs "
                                 "the full embedding table; this world is factored (raise env.slot_emb_budget_mb)")
            copy_slot_emb(dst_rows, self.slot_items, self.world.item_emb, self._slot_emb, self._slot_scale, 0,
                          int(dst_rows.size))
        if keys is not None:
            self.keys[dst_rows] = keys

    def _gather(self, arr: np.ndarray, idx: np.ndarray, slots: np.ndarray) -> np.ndarray:
        """``arr[idx[:, None], slots]`` for a (B, S) per-slot array: (r, X)."""
        return arr.ravel()[idx[:, None] * self.S + slots]

    # ---- observation ------------------------------------------------------------------------------------------

    def observe(self, rows: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Draw the N candidates of each row's current request and build the observation.

        A full observation (``rows`` None) is written into new arrays, so the arrays of the previous one are left
        to whoever holds them; a partial one (after a partial reset) updates the current arrays' ``rows``.

        Args:
            rows: Only refresh these rows (after a partial reset); default all.

        Returns:
            ``{"user": (B, D), "candidates": (B, N) int64, "features": (B, N, F), "context": (B, C)}`` (plus
            ``item_emb`` (B, N, D), ``session_sim`` (B, N) and ``hidden_taste`` (B, N) when configured): the current
            observation arrays, all B rows.
        """
        sel: slice | np.ndarray = slice(None) if rows is None else np.asarray(rows, dtype=np.int64)
        idx = self._rows[sel]
        text = self.cfg.obs_mode == "text"
        if rows is None:
            self._new_obs_buffers()
            self._bind()

        def gather(lo: int, hi: int) -> None:
            gather_features(idx[lo:hi], self._session, self.T, not text)

        split_rows(len(idx), gather, self.threads)
        if text:
            state = self._text_states(idx)
            self.obs_user[sel] = state
            self.cand_llm[sel] = text_llm_sim(self.world.item_emb, self.cands[sel], state)
            self.obs_features[sel, :, F_LLM] = self.cand_llm[sel]
        obs = {"user": self.obs_user, "candidates": self.cands, "features": self.obs_features,
               "context": self.obs_context}
        if self.cfg.obs_item_embeddings:
            obs["item_emb"] = self.world.item_emb[self.cands]
        if self.cfg.obs_session_sim:
            norm = np.sqrt(self.sess_norm2[idx])
            sim = self._gather(self.sess_sim, idx, self.cand_slots[idx])  # (r, N)
            self.obs_session_sim[idx] = np.where(norm[:, None] > 0, sim / np.maximum(norm, 1e-12)[:, None], 0.0)
            obs["session_sim"] = self.obs_session_sim
        if self.cfg.obs_hidden_taste:  # a research ablation: the hidden state, never servable
            parts = self.utility_parts(self.cand_slots[idx], idx)
            self.obs_hidden_taste[idx] = parts["semantic"] + parts["static"]
            obs["hidden_taste"] = self.obs_hidden_taste
        if self.cfg.obs_critic_state:  # the hidden state for the critic only (asymmetric actor-critic)
            self.obs_critic_state[idx] = self.critic_state(idx)
            obs["critic_state"] = self.obs_critic_state
        return obs

    def critic_state(self, rows: np.ndarray) -> np.ndarray:
        """The user's hidden state in ``rows`` (``env.obs_critic_state``): float32 (r, P), the columns of
        :data:`envs.spaces.CRITIC_STATE_NAMES` (ρ, log price sensitivity, budget left / budget mean, mean and max
        fatigue over categories)."""
        fatigue = self.fatigue[rows]
        return np.stack([self.pop.rho[self.user[rows]],
                         np.log(np.maximum(self.price_sens[rows], 1e-9)),
                         self.budget[rows] / self.cfg.user_model.budget_mean,
                         fatigue.mean(axis=1), fatigue.max(axis=1)], axis=1).astype(np.float32)

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
        """The encoded prompts (r, D), in the item embeddings' space (centred the same way on calibrated worlds)."""
        assert self.text_encoder is not None
        states = self.text_encoder.encode(self.prompts(rows)).astype(np.float32)
        info = self.world.meta.get("item_emb") or {}
        if info.get("centred"):  # the world's item embeddings are centred on the raw catalog mean: so is the prompt
            states = states - np.asarray(info["mean"], np.float32)
            norms = np.linalg.norm(states, axis=1, keepdims=True)
            states = np.where(norms > 0, states / np.maximum(norms, 1e-12), 0.0).astype(np.float32)
        return states

    # ---- hidden truth -------------------------------------------------------------------------------------------

    def utility_parts(self, slots: np.ndarray, rows: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """The terms of each row's true utility of its slots (hidden state), each float32 (r, X).

        ``semantic``: ``a·ρ_u·z_sem`` (the drifting semantic taste); ``static``: ``a·(1−ρ_u)·z_cf + q·quality −
        p_u·log1p(price)`` (fixed over the session); ``fatigue`` and ``repeat``: the penalties, as the positive
        amounts subtracted. :meth:`utility` is ``semantic + static − fatigue − repeat``.

        Args:
            slots: int64 (r, X) slot indices (``cand_slots`` or a slate's slots) of the rows ``rows``.
            rows: int (r,) the rows (default all B).
        """
        um = self.cfg.user_model
        idx = self._rows if rows is None else rows
        items = np.take_along_axis(self.slot_items if rows is None else self.slot_items[rows], slots, axis=1)
        z_sem = (self._gather(self.sem_aff, idx, slots) - self.sem_mu[idx, None]) / self.sem_sd[idx, None]
        fat = self.fatigue.ravel()[idx[:, None] * self.C + self._category[items]]
        return {"semantic": self.a_rho[idx, None] * z_sem, "static": self._gather(self.static_util, idx, slots),
                "fatigue": um.fatigue_weight * fat, "repeat": um.repeat_weight * self._gather(self.seen, idx, slots)}

    def utility(self, slots: np.ndarray) -> np.ndarray:
        """True (noise-free) utility of each row's slots given its current hidden state.

        Args:
            slots: int64 (B, X) slot indices (``cand_slots`` or a slate's slots).

        Returns:
            float32 (B, X).
        """
        u = self.utility_parts(slots)
        return u["semantic"] + u["static"] - u["fatigue"] - u["repeat"]

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
        slate = np.asarray(slate)
        if (slate.ndim != 2 or slate.shape != (self.B, self.K) or slate.dtype != np.int64
                or not slate.flags.c_contiguous or slate_error_row(slate, self.N) >= 0):
            slate = validate_slate(slate, self.N, self.K)  # raises naming the row, or converts the dtype
            if slate.shape[0] != self.B:
                raise ValueError(f"slate has {slate.shape[0]} rows for a batch of {self.B}")
        b, k = self.B, self.K
        f32 = np.float32
        out = StepResult(
            reward=np.empty(b, f32), terminated=np.empty(b, bool), truncated=np.empty(b, bool),
            items=np.empty((b, k), np.int64), click_rank=np.empty(b, np.int64), clicks=np.empty((b, k), bool),
            purchases=np.empty((b, k), bool), dwell=np.empty((b, k), f32), reward_click=np.empty(b, f32),
            reward_purchase=np.empty(b, f32), reward_dwell=np.empty(b, f32),
        )
        use_gram = self._use_gram

        def advance(lo: int, hi: int) -> None:
            step_sessions(slate, self._session, out, self._params, self._pos_w, self._log1p_price,
                          self.world.item_emb, self._gram, use_gram, self._slot_emb, self._slot_scale, lo, hi)

        clicked_slots = np.take_along_axis(self.cand_slots, slate, axis=1) if self.cfg.obs_session_sim else None
        split_rows(b, advance, self.threads)
        if clicked_slots is not None:
            self._add_session_clicks(out, clicked_slots)
        return out

    def _add_session_clicks(self, out: StepResult, slate_slots: np.ndarray) -> None:
        """``env.obs_session_sim``: add each clicked item to its row's session sum (per-slot similarities, norm).

        Args:
            out: The step's outcome (its ``click_rank`` and ``items``).
            slate_slots: int (B, K) the slots the slate showed.
        """
        rows = np.flatnonzero(out.click_rank >= 0)
        if rows.size == 0:
            return
        rank = out.click_rank[rows]
        item = out.items[rows, rank]  # (r,) catalog ids
        slot = slate_slots[rows, rank]  # (r,)
        if self._use_gram:
            g = self._gram[item[:, None], self.slot_items[rows]].astype(np.float32)  # (r, S)
            self_sim = self._gram[item, item].astype(np.float32)
        else:
            emb = self.world.item_emb
            g = np.einsum("rsd,rd->rs", emb[self.slot_items[rows]], emb[item]).astype(np.float32)
            self_sim = np.einsum("rd,rd->r", emb[item], emb[item]).astype(np.float32)
        # ‖c + e‖² = ‖c‖² + 2 c·e + e·e, with c·e the clicked slot's similarity before this click
        self.sess_norm2[rows] += 2.0 * self.sess_sim[rows, slot] + self_sim
        self.sess_sim[rows] += g
