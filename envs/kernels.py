"""The simulator's hot path, compiled (numba): session start, step and observation, one pass per row each.

numpy would make a pass over memory per quantity (tens per step); these loops touch each row's data once.
Rows are independent and the kernels release the GIL, so ``envs.core`` splits rows over threads. Random words
are the counter-based streams of :mod:`envs.rng`, bit for bit. The numpy reading of every kernel is
``tests/reference_core.py``; ``tests/test_kernels.py`` checks the kernels against it on every state array.
"""

from __future__ import annotations

from typing import NamedTuple

import numba
import numpy as np
from llvmlite import binding as _llvm
from numba import types as _types
from numba.extending import get_cython_function_address

from envs import features as obs_state
from envs.spaces import F_LLM

# scipy's own ``ndtri`` (the inverse normal CDF of ``envs.rng.normal``) and ``gammaincinv`` (the session budget),
# called from compiled code through their Cython exports (``double f(double..., int skip_dispatch)``): the same
# functions, so the kernels' draws equal the numpy ones bit for bit. Bound by symbol name (not as ctypes
# pointers) so that the kernels stay in numba's on-disk cache.
for _name in ("ndtri", "gammaincinv"):
    _llvm.add_symbol(f"recfeed_scipy_{_name}", get_cython_function_address("scipy.special.cython_special", _name))
_ndtri = _types.ExternalFunction("recfeed_scipy_ndtri", _types.float64(_types.float64, _types.int32))
_gammaincinv = _types.ExternalFunction("recfeed_scipy_gammaincinv",
                                       _types.float64(_types.float64, _types.float64, _types.int32))

# ---- counter-based random numbers, bit-identical to envs.rng (whose docstring defines the streams) ---------------

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_STEP_MUL = np.uint64(0x632BE59BD9B4E019)
_INV_2_53 = 1.0 / float(1 << 53)


@numba.njit(cache=True, nogil=True, inline="always")
def _splitmix64(x: np.uint64) -> np.uint64:
    z = x + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


@numba.njit(cache=True, nogil=True, inline="always")
def _stream(key: np.uint64, step: int, purpose: int) -> np.uint64:
    """``envs.rng.bits(key, step, purpose)``: the base word of one row's stream."""
    return _splitmix64(key ^ _splitmix64(np.uint64(step) * _STEP_MUL + np.uint64(purpose)))


@numba.njit(cache=True, nogil=True, inline="always")
def _slot_bits(base: np.uint64, j: int) -> np.uint64:
    """Word ``j`` (0-based) of ``envs.rng.bits(..., slots=n)``."""
    return _splitmix64(base + np.uint64(j + 1) * _GOLDEN)


@numba.njit(cache=True, nogil=True, inline="always")
def _uniform(word: np.uint64) -> float:
    """``envs.rng.uniform`` of one word: float64 in [0, 1)."""
    return np.float64(word >> np.uint64(11)) * _INV_2_53


@numba.njit(cache=True, nogil=True, inline="always")
def _normal(word: np.uint64) -> float:
    """``envs.rng.normal`` of one word: float64."""
    return _ndtri(min(max(_uniform(word), 1e-12), 1.0 - 1e-12), 0)


@numba.njit(cache=True, nogil=True)
def rng_normal(keys: np.ndarray, step: np.ndarray, purpose: int) -> np.ndarray:
    """``envs.rng.normal(keys, step, purpose)`` compiled (for the bit-exactness test): float64 (r,)."""
    out = np.empty(keys.shape[0], np.float64)
    for i in range(keys.shape[0]):
        out[i] = _normal(_stream(keys[i], step[i], purpose))
    return out


@numba.njit(cache=True, nogil=True)
def rng_bits(keys: np.ndarray, step: int, purpose: int, slots: int) -> np.ndarray:
    """``envs.rng.bits(keys, step, purpose, slots)`` compiled (for the bit-exactness test): uint64 (r, slots)."""
    out = np.empty((keys.shape[0], slots), np.uint64)
    for r in range(keys.shape[0]):
        base = _stream(keys[r], step, purpose)
        for j in range(slots):
            out[r, j] = _slot_bits(base, j)
    return out


@numba.njit(cache=True, nogil=True)
def _argsort_uniform(u: np.ndarray, order: np.ndarray, count: np.ndarray) -> None:
    """``order[:] = argsort(u)`` for distinct ``u`` in [0, 1) in O(n): bucket by ``⌊u·n⌋``, then insertion-sort
    each bucket (one element per bucket on average). ``count`` is int64 (n + 1,) scratch."""
    n = u.shape[0]
    count[:] = 0
    for i in range(n):
        count[int(u[i] * n) + 1] += 1
    for b in range(n):
        count[b + 1] += count[b]
    for i in range(n):
        b = int(u[i] * n)
        order[count[b]] = i
        count[b] += 1
    for i in range(1, n):  # buckets are in order; insertion sort fixes order within them
        x = order[i]
        j = i - 1
        while j >= 0 and u[order[j]] > u[x]:
            order[j + 1] = order[j]
            j -= 1
        order[j + 1] = x


@numba.njit(cache=True, nogil=True)
def gather_features(
    rows: np.ndarray,
    st: SessionState,
    max_steps: int,
    write_llm: bool,
) -> None:
    """Draw each row's candidates by a stride walk over its pool; write their features and the row's context.

    For row ``b = rows[r]`` and candidate ``n``: ``pos = (start + stride·n) mod P`` where ``start = w0 mod P`` and
    ``stride = 1 + (w1 mod P) mod (P - 1)`` for the row's two CANDIDATES words of step ``t[b]`` (``envs.rng``),
    ``slot = pool_slots[b, pos]``, ``item = slot_items[b, slot]`` and the features (columns of
    ``envs.spaces.FEATURE_NAMES``): ``state_sim[b, slot] / state_norm[b]`` (0 without a state),
    ``cf_obs[b, slot]``, ``slot_feat[b, slot, 0:2]`` (the item's popularity and price), ``exposure[b, cat]``,
    ``cat_clicks[b, cat]`` for ``cat = slot_cat[b, slot]``, ``seen[b, slot]``. The context row holds the columns of
    ``envs.spaces.CONTEXT_NAMES`` (rates over ``max(t, 1)`` steps, the skip streak over 5 capped at 1).

    Args:
        rows: int64 (r,) rows to refresh.
        st: The session arrays; writes ``cand_pos``, ``cand_slots``, ``cands``, ``obs_features``, ``obs_context``
            of ``rows`` and, unless ``write_llm`` is False, ``cand_llm`` (the llm_sim column, which the step
            reads: the core never reads the observation buffers back) and ``obs_user`` (``state / ‖state‖``).
        max_steps: T (the context's first column is ``t / T``).
        write_llm: Write the llm_sim column, ``cand_llm`` and ``obs_user`` (False in text mode, where they come
            from the encoded prompt).
    """
    n_cand = st.cands.shape[1]
    p = st.pool_slots.shape[1]
    for r in range(rows.shape[0]):
        b = rows[r]
        base = _stream(st.keys[b], st.t[b], 7)
        pos = np.int64(_slot_bits(base, 0) % np.uint64(p))
        stride = 1 + np.int64(_slot_bits(base, 1) % np.uint64(p)) % (p - 1) if p > 1 else 0
        nrm = st.state_norm[b]
        inv_norm = np.float32(1.0) / nrm if nrm > 0 else np.float32(0.0)
        if write_llm:
            inv = np.float32(1.0) / (nrm if nrm > 0 else np.float32(1.0))
            for d in range(st.state.shape[1]):
                st.obs_user[b, d] = st.state[b, d] * inv
        for n in range(n_cand):
            slot = st.pool_slots[b, pos]
            item = st.slot_items[b, slot]
            cat = np.int64(st.slot_cat[b, slot])
            st.cand_pos[b, n] = pos
            st.cand_slots[b, n] = slot
            st.cands[b, n] = item
            feat = st.obs_features[b, n]
            if write_llm:
                llm = st.state_sim[b, slot] * inv_norm
                st.cand_llm[b, n] = llm
            else:  # text mode: the caller writes the llm_sim column from the encoded prompt
                llm = feat[F_LLM]
            obs_state.write_candidate(feat, llm, st.cf_obs[b, slot], st.slot_feat[b, slot, 0], st.slot_feat[b, slot, 1],
                                      st.exposure[b, cat], st.cat_clicks[b, cat], st.seen[b, slot])
            pos += stride
            if pos >= p:
                pos -= p
        obs_state.write_context(st.acc[b], st.t[b], max_steps, max_steps, st.obs_context[b])


# ---- session start -----------------------------------------------------------------------------------------------


@numba.njit(cache=True, nogil=True, inline="always")
def _take_unseen(ranked: np.ndarray, mark: np.ndarray, chosen: np.ndarray, got: int) -> int:
    """Append the ids of ``ranked`` not yet marked to ``chosen[got:]`` (marking them), until it is full."""
    for x in ranked:
        if got < chosen.shape[0] and not mark[x]:
            mark[x] = True
            chosen[got] = x
            got += 1
    return got


@numba.njit(cache=True, nogil=True)
def build_sessions(
    rows: np.ndarray,
    keys: np.ndarray,
    users: np.ndarray,
    draw_users: bool,
    history: np.ndarray,
    patience: np.ndarray,
    budget_shape: float,
    budget_scale: float,
    st: SessionState,
    tables: np.ndarray,
    llm_top: np.ndarray,
    cf_top: np.ndarray,
    pop_top: np.ndarray,
    sem_mu: np.ndarray,
    sem_sd: np.ndarray,
    a_rho: np.ndarray,
    price_sens: np.ndarray,
    init_state: np.ndarray,
    n_llm: int,
    n_cf: int,
    n_pop: int,
    n_rand: int,
    category: np.ndarray,
    item_features: np.ndarray,
    lo: int,
    hi: int,
) -> None:
    """Start a new session in each of ``rows[lo:hi]``: its slots, their table values and a fresh user state.

    For row ``b = rows[r]`` of user ``u = users[r]``: the S slot items are the first S distinct ids of the
    priority list ``llm_top[u, :n_llm+H] ++ cf_top[u, :n_cf+H] ++ pop_top[n_pop random] ++ n_rand random ids``
    that are not in ``history[u]`` (then, in tiny catalogs only, the lowest unused ids), in the order of
    ``argsort`` of S uniforms (random words from the row's key: ``envs.rng`` streams ``POOL`` 0, 1, 2): the first
    P are the pool's positions, the rest the reserve. The pool's items sit in slots ``0..P-1`` in catalog order
    (``pool_slots`` maps each position to its item's slot), the reserve's in slots ``P..S-1`` in drawn order.
    The per-slot values are ``tables[u, slot_items[b, s]]`` (sem_aff, static_util, cf_obs, state_sim), with the
    item's category and features (``slot_cat``, ``slot_feat``); the pooled
    state is the user's prior-history state; counters, fatigue,
    exposure and impressions start at zero; the recent list holds the last history items.
    ``tests/reference_core.py`` holds the numpy reading (``reset_rows``).

    Args:
        rows: int64 (r,) rows to start.
        keys: uint64 (r,) episode keys.
        users: int64 (r,) population indices; written (drawn from the keys: stream USER) when ``draw_users``.
        draw_users: Draw the users instead of reading them.
        history: int64 (U, H) each user's consumed items (excluded; negative entries are padding).
        patience: float32 (U,) budget multipliers.
        budget_shape: Gamma shape of the initial budget; the budget is ``gammaincinv(shape, u) · scale ·
            patience[u]`` for the row's BUDGET uniform ``u`` (clipped to [1e-9, 1 − 1e-9]).
        budget_scale: Gamma scale (``budget_mean / budget_shape``).
        st: The session arrays, written for ``rows``.
        tables: float32 (U, M, 4) the population's packed tables (``PopulationTables.packed``), or a zero-size
            (U, M, 0) array on the factored path (``envs.factored``): the per-slot values are then left to
            ``fill_factored``.
        llm_top: int64 (U, L) items by LLM similarity per user.
        cf_top: int64 (U, L) items by observed CF score per user.
        pop_top: int64 (Q,) popular items (``Q >= 1``).
        sem_mu: float32 (U,) mean hidden affinity per user; likewise ``sem_sd``.
        a_rho: float32 (U,) affinity scale times ρ_u.
        price_sens: float32 (U,).
        init_state: float32 (U, D) pooled prior-history states.
        n_llm: LLM-retrieved slots wanted.
        n_cf: CF-retrieved slots wanted.
        n_pop: Popular slots drawn.
        n_rand: Random ids drawn.
        category: int64 (M,) item categories: copied per slot (``slot_cat``), so that the observation and the step
            read them from the row's own (B, S) arrays instead of a catalog-sized one.
        item_features: float32 (M, 2) popularity and price: copied per slot (``slot_feat``), likewise.
        lo: First entry of ``rows`` to start (the kernel releases the GIL: ranges run in parallel threads).
        hi: One past the last.
    """
    n_items = tables.shape[1]
    fill_tables = tables.shape[2] == 4
    n_slots = st.slot_items.shape[1]
    n_hist = history.shape[1]
    n_rec = st.recent.shape[1]
    n_pool = st.pool_slots.shape[1]
    mark = np.zeros(n_items, np.bool_)
    by_item = np.empty(n_pool, np.int64)
    chosen = np.empty(n_slots, np.int64)
    order = np.empty(n_slots, np.int64)
    u = np.empty(n_slots, np.float64)
    count = np.zeros(n_slots + 1, np.int64)
    for r in range(lo, hi):
        b, key = rows[r], keys[r]
        if draw_users:
            users[r] = np.int64(_stream(key, 0, 1) % np.uint64(tables.shape[0]))
        user = users[r]
        for j in range(n_hist):
            if history[user, j] >= 0:
                mark[history[user, j]] = True
        got = 0
        got = _take_unseen(llm_top[user, : n_llm + n_hist], mark, chosen, got)
        got = _take_unseen(cf_top[user, : n_cf + n_hist], mark, chosen, got)
        if n_pop > 0:
            base = _stream(key, 0, 8)
            for j in range(n_pop):
                x = pop_top[np.int64(_slot_bits(base, j) % np.uint64(pop_top.shape[0]))]
                if got < n_slots and not mark[x]:
                    mark[x] = True
                    chosen[got] = x
                    got += 1
        base = _stream(key, 1, 8)
        for j in range(n_rand):
            if got >= n_slots:
                break
            x = np.int64(_slot_bits(base, j) % np.uint64(n_items))
            if not mark[x]:
                mark[x] = True
                chosen[got] = x
                got += 1
        x = 0
        while got < n_slots and x < n_items:  # tiny catalogs only: the lowest unused ids
            if not mark[x]:
                mark[x] = True
                chosen[got] = x
                got += 1
            x += 1
        for j in range(n_hist):
            if history[user, j] >= 0:
                mark[history[user, j]] = False
        for j in range(got):
            mark[chosen[j]] = False
        base = _stream(key, 2, 8)
        for j in range(n_slots):
            u[j] = _uniform(_slot_bits(base, j))
        _argsort_uniform(u, order, count)
        # Pool position p holds item chosen[order[p]]; its slot is the item's rank among the pool's items, so
        # slots run in catalog order and the table gathers here and the Gram-row gathers of clicks walk memory
        # forwards. Reserve slots keep the shuffled order (it is the order they replace consumed items in).
        for p in range(n_pool):  # distinct items → distinct keys in [0, 1): the O(P) bucket argsort applies
            u[p] = chosen[order[p]] / n_items
        _argsort_uniform(u[:n_pool], by_item, count)
        for s in range(n_pool):
            p = by_item[s]
            st.slot_items[b, s] = chosen[order[p]]
            st.pool_slots[b, p] = s
        for s in range(n_pool, n_slots):
            st.slot_items[b, s] = chosen[order[s]]
        for s in range(n_slots):
            item = st.slot_items[b, s]
            st.slot_cat[b, s] = category[item]
            st.slot_feat[b, s, 0] = item_features[item, 0]
            st.slot_feat[b, s, 1] = item_features[item, 1]
            if fill_tables:  # else the factored path (envs.factored.fill_factored) writes the four values
                cell = tables[user, st.slot_items[b, s]]
                st.sem_aff[b, s] = cell[0]
                st.static_util[b, s] = cell[1]
                st.cf_obs[b, s] = cell[2]
                st.state_sim[b, s] = cell[3]
            st.seen[b, s] = 0.0
        st.reserve_ptr[b] = 0
        # the user
        u_budget = min(max(_uniform(_stream(key, 0, 2)), 1e-9), 1.0 - 1e-9)
        budget = _gammaincinv(budget_shape, u_budget, 0) * budget_scale * np.float64(patience[user])
        st.user[b], st.keys[b], st.t[b], st.budget[b] = user, key, 0, budget
        st.sem_mu[b], st.sem_sd[b] = sem_mu[user], sem_sd[user]
        st.a_rho[b], st.price_sens[b] = a_rho[user], price_sens[user]
        sq = np.float32(0.0)
        for d in range(init_state.shape[1]):
            v = init_state[user, d]
            st.state[b, d] = v
            sq += v * v
        nrm = np.sqrt(sq)
        st.state_norm[b] = nrm
        st.fatigue[b, :] = 0.0
        obs_state.reset_session(st.acc[b], st.exposure[b], st.cat_clicks[b])
        for j in range(n_rec):
            hj = n_hist - n_rec + j
            st.recent[b, j] = history[user, hj] if hj >= 0 else -1


@numba.njit(cache=True, nogil=True, fastmath=True)
def _dot_row(e: np.ndarray, item_emb: np.ndarray, other: int) -> np.float32:
    """``e · item_emb[other]`` in float32, reassociated so that it vectorises (the step's similarities without a
    Gram matrix: catalogs above its budget). Not inlined, so that the fastmath flag stays on this loop only."""
    g = np.float32(0.0)
    for d in range(e.shape[0]):
        g += e[d] * item_emb[other, d]
    return g


@numba.njit(cache=True, nogil=True, fastmath=True)
def _dot_row_q(e: np.ndarray, q: np.ndarray, other: int) -> np.float32:
    """``e · q[other]`` for an int8 table ``q`` in float32 (times the row's scale: the caller), vectorised."""
    g = np.float32(0.0)
    for d in range(e.shape[0]):
        g += e[d] * np.float32(q[other, d])
    return g


@numba.njit(cache=True, nogil=True, inline="always")
def put_slot_emb(slot_emb: np.ndarray, slot_scale: np.ndarray, b: int, s: int, item_emb: np.ndarray,
                 item: int) -> None:
    """Row ``b``'s copy of slot ``s``'s embedding: ``item_emb[item]`` as is (float32 ``slot_emb``), or quantised
    to int8 with the scale ``max|e| / 127`` in ``slot_scale[b, s]`` (round to nearest: error ≤ scale/2 per value)."""
    if slot_scale.shape[0] == 0:
        slot_emb[b, s, :] = item_emb[item]
        return
    top = np.float32(0.0)
    for d in range(item_emb.shape[1]):
        top = max(top, abs(item_emb[item, d]))
    scale = top / np.float32(127.0) if top > 0 else np.float32(1.0)
    inv = np.float32(1.0) / scale
    for d in range(item_emb.shape[1]):
        slot_emb[b, s, d] = np.int8(np.rint(item_emb[item, d] * inv))
    slot_scale[b, s] = scale


@numba.njit(cache=True, nogil=True)
def copy_slot_emb(rows: np.ndarray, slot_items: np.ndarray, item_emb: np.ndarray, slot_emb: np.ndarray,
                  slot_scale: np.ndarray, lo: int, hi: int) -> None:
    """:func:`put_slot_emb` for every slot of the rows ``rows[lo:hi]`` (the dense-table path's copy; the factored
    path writes it in ``envs.factored.fill_factored``, which reads the same rows).

    Args:
        rows: int64 (r,) rows.
        slot_items: int32 (B, S).
        item_emb: float32 (M, D).
        slot_emb: float32 or int8 (B, S, D), written.
        slot_scale: float32 (B, S) (int8 copy; written) or (0, 0).
        lo: First entry of ``rows``.
        hi: One past the last.
    """
    for r in range(lo, hi):
        b = rows[r]
        for s in range(slot_items.shape[1]):
            put_slot_emb(slot_emb, slot_scale, b, s, item_emb, slot_items[b, s])


# ---- the step ----------------------------------------------------------------------------------------------------


class StepParams(NamedTuple):
    """The scalar settings the step kernel reads (from ``EnvConfig``; see its docstrings)."""

    cascade: bool
    no_click_utility: float
    cascade_abandon: float
    fatigue_weight: float
    repeat_weight: float
    satisfaction_noise: float
    dwell_log_mean: float
    dwell_sat_slope: float
    dwell_sigma: float
    dwell_cap: float
    purchase_bias: float
    purchase_sat_slope: float
    purchase_price_slope: float
    reward_click: float
    reward_purchase: float
    reward_dwell: float
    fatigue_gain: float
    fatigue_click_gain: float
    fatigue_recovery: float
    like_threshold: float
    drift_rate: float
    click_weight: float
    purchase_weight: float
    state_decay: float
    step_cost: float
    no_click_cost: float
    click_refund_base: float
    click_refund_weight: float
    obs_decay: float
    max_steps: int


class SessionState(NamedTuple):
    """The core's per-row arrays the kernels read and update (the fields of ``BatchedCore`` of the same names)."""

    user: np.ndarray
    keys: np.ndarray
    t: np.ndarray
    cand_slots: np.ndarray
    cand_pos: np.ndarray
    slot_items: np.ndarray
    slot_cat: np.ndarray
    slot_feat: np.ndarray
    pool_slots: np.ndarray
    reserve_ptr: np.ndarray
    sem_aff: np.ndarray
    static_util: np.ndarray
    cf_obs: np.ndarray
    state_sim: np.ndarray
    seen: np.ndarray
    sem_mu: np.ndarray
    sem_sd: np.ndarray
    a_rho: np.ndarray
    price_sens: np.ndarray
    budget: np.ndarray
    state: np.ndarray
    state_norm: np.ndarray
    obs_user: np.ndarray
    obs_features: np.ndarray
    fatigue: np.ndarray
    exposure: np.ndarray
    cat_clicks: np.ndarray
    recent: np.ndarray
    cands: np.ndarray
    obs_context: np.ndarray
    cand_llm: np.ndarray
    acc: np.ndarray


class StepResult(NamedTuple):
    """What one batched step returns (fresh arrays each step; the step kernel writes them).

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


@numba.njit(cache=True, nogil=True)
def slate_error_row(slate: np.ndarray, n_candidates: int) -> int:
    """First row of an int64 (B, K) slate with an entry outside ``[0, N)`` or a repeat, else -1."""
    for b in range(slate.shape[0]):
        for k in range(slate.shape[1]):
            x = slate[b, k]
            if x < 0 or x >= n_candidates:
                return b
            for j in range(k):
                if slate[b, j] == x:
                    return b
    return -1


@numba.njit(cache=True, nogil=True)
def step_sessions(
    slate: np.ndarray,
    st: SessionState,
    out: StepResult,
    prm: StepParams,
    pos_w: np.ndarray,
    log1p_price: np.ndarray,
    item_emb: np.ndarray,
    gram: np.ndarray,
    use_gram: bool,
    slot_emb: np.ndarray,
    slot_scale: np.ndarray,
    lo: int,
    hi: int,
) -> None:
    """One request of rows ``lo:hi``: response, reward and all dynamics, one pass per row.

    The semantics are the numpy reading in ``tests/reference_core.py`` (``step``), term by term: utility
    ``a_ρ·z(θ·e) + static − w_f·fatigue[cat] − w_r·seen``; position-weighted MNL (or cascade) choice with an
    outside option sampled with the row's CHOICE uniform; for a click, satisfaction (SATISFACTION normal), dwell
    (DWELL normal) and a price-dependent purchase (PURCHASE uniform), every random number drawn here only for
    the rows that need it, bit-identical to ``envs.rng.uniform`` / ``envs.rng.normal``; fatigue, exposure,
    category clicks, impressions; on a click the drift of the hidden taste and the pooled state over all the
    row's slots (through the item Gram matrix, or the embeddings when ``use_gram`` is False), the consumed
    item's pool position moved to the next reserve slot, the recent list; the budget; the context
    accumulators; ``t``, terminated, truncated.

    Args:
        slate: int64 (B, K) valid positions into the current candidates.
        st: The session arrays, updated in place.
        out: Output buffers, written.
        prm: Scalar settings.
        pos_w: float64 (K,) examination weights.
        log1p_price: float64 (M,).
        item_emb: float32 (M, D).
        gram: float32 (M, M) (any shape when ``use_gram`` is False).
        use_gram: Read item similarities from ``gram`` rather than computing them.
        slot_emb: (B, S, D) each row's copy of its slots' embedding rows, written at session start by
            :func:`put_slot_emb` (from ``envs.factored.fill_factored`` or :func:`copy_slot_emb`): without a Gram
            matrix a click computes its similarities from this contiguous copy instead of S rows gathered from the
            catalog-sized table. float32: ``item_emb[slot_items[b, s]]`` itself (the same floats, the same
            products: bit-identical to the gather); int8: the row quantised with the scale ``slot_scale[b, s]``
            (a quarter of the bytes; similarities to ~1e-3). A zero-size (0, 0, 0) array: gather from ``item_emb``.
        slot_scale: float32 (B, S) the int8 rows' scales, or a zero-size (0, 0) array for a float32 copy.
        lo: First row (the kernel releases the GIL: row ranges run in parallel threads).
        hi: One past the last row.
    """
    k_slate = slate.shape[1]
    n_slots = st.slot_items.shape[1]
    n_pool = st.pool_slots.shape[1]
    n_reserve = n_slots - n_pool
    n_cat = st.fatigue.shape[1]
    dim = st.state.shape[1]
    u0 = prm.no_click_utility
    f_rec = np.float32(prm.fatigue_recovery)
    decay = np.float32(prm.state_decay)
    util = np.empty(k_slate, np.float64)
    probs = np.empty(k_slate, np.float64)
    slots = np.empty(k_slate, np.int64)
    cats = np.empty(k_slate, np.int64)
    items = out.items
    use_slot_emb = slot_emb.shape[0] > 0
    quantised = slot_scale.shape[0] > 0
    for b in range(lo, hi):
        # utility of the shown items (hidden state before this request)
        top = u0
        for k in range(k_slate):
            slot = st.cand_slots[b, slate[b, k]]
            item = st.slot_items[b, slot]
            slots[k] = slot
            items[b, k] = item
            z = (st.sem_aff[b, slot] - st.sem_mu[b]) / st.sem_sd[b]
            cat = st.slot_cat[b, slot]
            util[k] = (st.a_rho[b] * z + st.static_util[b, slot]
                       - prm.fatigue_weight * st.fatigue[b, cat] - prm.repeat_weight * st.seen[b, slot])
            top = max(top, util[k])
        # choice
        if prm.cascade:
            examine = 1.0
            for k in range(k_slate):
                attract = pos_w[k] / (1.0 + np.exp(-(util[k] - u0)))
                probs[k] = examine * attract
                examine *= (1.0 - attract) * (1.0 - prm.cascade_abandon)
        else:
            denom = np.exp(u0 - top)
            for k in range(k_slate):
                probs[k] = np.exp(util[k] - top) * pos_w[k]
                denom += probs[k]
            for k in range(k_slate):
                probs[k] /= denom
        u_choice = _uniform(_stream(st.keys[b], st.t[b], 3))
        rank = -1
        cum = 0.0
        for k in range(k_slate):
            cum += probs[k]
            if u_choice < cum:
                rank = k
                break
        clicked = rank >= 0
        rk = rank if clicked else 0
        item_c, slot_c = items[b, rk], slots[rk]
        rel = 0.0  # satisfaction relative to the outside option: only a click has one
        dwell = 0.0
        bought = False
        if clicked:
            rel = util[rk] + prm.satisfaction_noise * _normal(_stream(st.keys[b], st.t[b], 6)) - u0
            dwell = min(np.exp(prm.dwell_log_mean + prm.dwell_sat_slope * min(max(rel, -4.0), 4.0)
                               + prm.dwell_sigma * _normal(_stream(st.keys[b], st.t[b], 4))), prm.dwell_cap)
            logit = (prm.purchase_bias + prm.purchase_sat_slope * rel
                     - prm.purchase_price_slope * st.price_sens[b] * log1p_price[item_c])
            bought = _uniform(_stream(st.keys[b], st.t[b], 5)) < 1.0 / (1.0 + np.exp(-logit))
        r_click = np.float32(prm.reward_click * clicked)
        r_buy = np.float32(prm.reward_purchase * bought)
        r_dwell = np.float32(prm.reward_dwell * dwell / 60.0)
        out.reward_click[b], out.reward_purchase[b], out.reward_dwell[b] = r_click, r_buy, r_dwell
        out.reward[b] = r_click + r_buy + r_dwell
        # observable session evidence: the clicked item's features against the slate's mean
        m_llm = np.float32(0.0)
        m_cf = np.float32(0.0)
        for k in range(k_slate):
            m_llm += st.cand_llm[b, slate[b, k]]
            m_cf += st.cf_obs[b, slots[k]]
        d_llm = st.cand_llm[b, slate[b, rk]] - m_llm / k_slate
        d_cf = st.cf_obs[b, slots[rk]] - m_cf / k_slate
        # fatigue and impressions (hidden), then the observable request-level update (envs.features)
        for c in range(n_cat):
            st.fatigue[b, c] *= f_rec
        for k in range(k_slate):
            cat = np.int64(st.slot_cat[b, slots[k]])
            cats[k] = cat
            st.fatigue[b, cat] += np.float32(prm.fatigue_gain * pos_w[k])
            st.seen[b, slots[k]] += 1.0
        acc = st.acc[b]
        obs_state.on_slate(acc, st.exposure[b], st.cat_clicks[b], cats, prm.obs_decay)
        for k in range(k_slate):
            out.clicks[b, k] = False
            out.purchases[b, k] = False
            out.dwell[b, k] = 0.0
        if clicked:
            cat_c = np.int64(st.slot_cat[b, slot_c])
            st.fatigue[b, cat_c] += np.float32(prm.fatigue_click_gain)
            obs_state.on_click(acc, st.cat_clicks[b], cat_c, rank, k_slate, d_llm, d_cf, prm.obs_decay)
            if bought:
                obs_state.on_purchase(acc)
            obs_state.on_dwell(acc, np.float32(dwell / 60.0), prm.obs_decay)
            out.clicks[b, rank] = True
            out.purchases[b, rank] = bought
            out.dwell[b, rank] = np.float32(dwell)
            # drift of the hidden taste toward (away from) the item, renormalised; the pooled state
            c_keep, c_item = 1.0, 0.0
            if rel > prm.like_threshold:
                c_keep, c_item = 1.0 - prm.drift_rate, prm.drift_rate
            elif rel < prm.like_threshold - 1.5:
                c_keep, c_item = 1.0 + prm.drift_rate, -prm.drift_rate
            theta_e = np.float64(st.sem_aff[b, slot_c])
            norm = np.sqrt(max(c_keep * c_keep + 2.0 * c_keep * c_item * theta_e + c_item * c_item, 1e-16))
            ck, ci = np.float32(c_keep / norm), np.float32(c_item / norm)
            w = np.float32(prm.click_weight + prm.purchase_weight * bought)
            if use_gram:
                e_c = item_emb[item_c]
                for s in range(n_slots):
                    g = gram[item_c, st.slot_items[b, s]]
                    st.sem_aff[b, s] = ck * st.sem_aff[b, s] + ci * g
                    st.state_sim[b, s] = decay * st.state_sim[b, s] + w * g
            elif use_slot_emb and quantised:  # contiguous: S·D bytes streamed from the row's own int8 copy
                e_c = item_emb[item_c]
                row_emb, row_scale = slot_emb[b], slot_scale[b]
                for s in range(n_slots):
                    g = _dot_row_q(e_c, row_emb, s) * row_scale[s]
                    st.sem_aff[b, s] = ck * st.sem_aff[b, s] + ci * g
                    st.state_sim[b, s] = decay * st.state_sim[b, s] + w * g
            elif use_slot_emb:  # contiguous: S·D floats streamed from the row's own copy
                e_c = item_emb[item_c]
                row_emb = slot_emb[b]
                for s in range(n_slots):
                    g = _dot_row(e_c, row_emb, s)
                    st.sem_aff[b, s] = ck * st.sem_aff[b, s] + ci * g
                    st.state_sim[b, s] = decay * st.state_sim[b, s] + w * g
            else:
                e_c = item_emb[item_c]
                for s in range(n_slots):
                    g = _dot_row(e_c, item_emb, st.slot_items[b, s])
                    st.sem_aff[b, s] = ck * st.sem_aff[b, s] + ci * g
                    st.state_sim[b, s] = decay * st.state_sim[b, s] + w * g
            sq = 0.0
            for d in range(dim):
                v = decay * st.state[b, d] + w * e_c[d]
                st.state[b, d] = v
                sq += np.float64(v) * v
            st.state_norm[b] = np.float32(np.sqrt(sq))
            if st.reserve_ptr[b] < n_reserve:  # the consumed item's pool position → the next reserve slot
                st.pool_slots[b, st.cand_pos[b, slate[b, rank]]] = n_pool + st.reserve_ptr[b]
                st.reserve_ptr[b] += 1
            n_rec = st.recent.shape[1]
            for j in range(n_rec - 1):
                st.recent[b, j] = st.recent[b, j + 1]
            st.recent[b, n_rec - 1] = item_c
            st.budget[b] += prm.click_refund_base + prm.click_refund_weight * max(rel - prm.like_threshold, 0.0)
        else:
            st.budget[b] -= prm.no_click_cost
        st.budget[b] -= prm.step_cost
        st.t[b] += 1
        out.click_rank[b] = rank
        out.terminated[b] = st.budget[b] <= 0.0
        out.truncated[b] = st.t[b] >= prm.max_steps and not out.terminated[b]
