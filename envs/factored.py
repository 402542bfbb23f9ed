"""The factored (linear-memory) path of the world's per-user tables, for catalogs × populations too large to hold.

The dense path (``World._compute_tables``) keeps four (U, M) float32 tables per population: 16·U·M bytes,
9.7 GB at 50k items × 3k users and out of memory at 200k. A session only ever reads ~300 items of one user, so
the factored path keeps only factors (O(U·D + M·D)) and computes the four per-slot values of a session's pool
at its start (:func:`fill_factored`, O(S·D) per session), exactly as the dense tables define them:

* ``sem_aff[u, i] = θ_u·e_i`` and ``state_sim[u, i] = s_u·e_i``;
* ``static_util[u, i] = a(1-ρ_u)·(c_u·f_i − μ_u)/σ_u + q·quality_i − p_u·logprice_i``;
* ``cf_obs[u, i] = (P_u·Q_i − μ'_u)/σ'_u``.

The per-user catalog statistics the dense path takes over all M items (the mean/std of ``θ_u·e_i`` and of the
two CF scores) are exact without U×M: ``mean_u = x_u·ē`` and ``var_u = x_uᵀ Σ x_u`` with ``ē, Σ`` the item
vectors' mean and (population) covariance (:func:`item_moments`, d×d). So the factored path differs from the
dense one only in float rounding (``tests/test_scale.py`` checks the agreement), plus the retrieval lists when
they come from the approximate index (:mod:`envs.ann`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import numba
import numpy as np

from envs.kernels import put_slot_emb

#: Item rows per chunk when accumulating the moments (bounds a float64 (chunk, d) temporary).
MOMENT_CHUNK = 65_536


def dense_table_bytes(n_users: int, n_items: int) -> int:
    """Bytes of one population's dense packed tables: ``16·U·M`` (four float32 values per user × item)."""
    return 16 * int(n_users) * int(n_items)


def item_moments(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and population covariance of item vectors, in float64, accumulated over chunks of rows.

    Args:
        vectors: (M, d) item vectors (M >= 1).

    Returns:
        ``(mean (d,), cov (d, d))``.
    """
    m, d = vectors.shape
    mean = np.zeros(d, np.float64)
    for lo in range(0, m, MOMENT_CHUNK):
        mean += vectors[lo:lo + MOMENT_CHUNK].sum(axis=0, dtype=np.float64)
    mean /= max(m, 1)
    cov = np.zeros((d, d), np.float64)
    for lo in range(0, m, MOMENT_CHUNK):
        x = vectors[lo:lo + MOMENT_CHUNK].astype(np.float64) - mean
        cov += x.T @ x
    return mean, cov / max(m, 1)


def user_stats(queries: np.ndarray, mean: np.ndarray, cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std over the catalog of ``x_u·v_i`` for each query ``x_u``: ``x_u·ē`` and ``sqrt(x_uᵀΣx_u)``.

    Args:
        queries: (U, d).
        mean: (d,) item mean.
        cov: (d, d) item covariance.

    Returns:
        float64 ``(mu (U,), sd (U,))`` (sd unclipped, >= 0).
    """
    x = queries.astype(np.float64)
    mu = x @ mean
    var = np.einsum("ud,ud->u", x @ cov, x)
    return mu, np.sqrt(np.maximum(var, 0.0))


class FactorArrays(NamedTuple):
    """What :func:`fill_factored` reads: per-user (U, ·) and per-item (M, ·) arrays of one population."""

    sem_taste: np.ndarray  # float32 (U, D)
    init_state: np.ndarray  # float32 (U, D)
    cf_taste: np.ndarray  # float32 (U, F)
    cf_user: np.ndarray  # float32 (U, F')
    w_cf: np.ndarray  # float32 (U,) a·(1-ρ_u)
    cft_mu: np.ndarray  # float32 (U,) mean of c_u·f_i over the catalog
    cft_sd: np.ndarray  # float32 (U,) its std, clipped at 1e-6
    cfo_mu: np.ndarray  # float32 (U,) mean of P_u·Q_i (0 before the CF fit)
    cfo_sd: np.ndarray  # float32 (U,) its std, clipped at 1e-6 (1 before the CF fit)
    price_sens: np.ndarray  # float32 (U,)
    item_emb: np.ndarray  # float32 (M, D)
    cf_factor: np.ndarray  # float32 (M, F)
    item_factors: np.ndarray  # float32 (M, F')
    q_quality: np.ndarray  # float32 (M,) q·quality_i
    log_price: np.ndarray  # float32 (M,) centred log1p(price)


@dataclass
class FactoredTables:
    """A population's tables on the factored path: the same per-user attributes as ``PopulationTables`` except
    the (U, M) tables, plus the factors that :func:`fill_factored` computes a session's values from.

    Attributes:
        sem_mu: float32 (U,) mean of ``θ_u·e_i`` over the catalog (exact, from the item moments).
        sem_sd: float32 (U,) its std, clipped at 1e-6.
        llm_top: int64 (U, L) items by observed LLM similarity ``s_u·e_i`` (exact or approximate search).
        cf_top: int64 (U, L) items by observed CF score.
        packed: float32 (U, M, 0): zero-size, so the session kernel reads no table (no memory behind it).
        factors: The arrays :func:`fill_factored` reads.
        approximate: Whether ``llm_top`` / ``cf_top`` come from the approximate index.
    """

    sem_mu: np.ndarray
    sem_sd: np.ndarray
    llm_top: np.ndarray
    cf_top: np.ndarray
    packed: np.ndarray
    factors: FactorArrays
    approximate: bool

    def values(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """The four dense-table values for (user, item) pairs: float32 (n, 4) for int users (n,), items (n,)
        (``sem_aff, static_util, cf_obs, state_sim``; numpy, for tests and offline use)."""
        f = self.factors
        users, items = np.asarray(users, np.int64), np.asarray(items, np.int64)
        e = f.item_emb[items]
        sem = np.einsum("nd,nd->n", f.sem_taste[users], e)
        cft = (np.einsum("nd,nd->n", f.cf_taste[users], f.cf_factor[items]) - f.cft_mu[users]) / f.cft_sd[users]
        static = f.w_cf[users] * cft + f.q_quality[items] - f.price_sens[users] * f.log_price[items]
        cfo = (np.einsum("nd,nd->n", f.cf_user[users], f.item_factors[items]) - f.cfo_mu[users]) / f.cfo_sd[users]
        st = np.einsum("nd,nd->n", f.init_state[users], e)
        return np.stack([sem, static, cfo, st], axis=1).astype(np.float32)

    def catalog_rows(self, users: np.ndarray, columns: tuple[int, ...] = (0, 1, 2, 3)) -> np.ndarray:
        """The dense tables' rows for a block of users over the whole catalog: what ``PopulationTables.packed
        [users][..., columns]`` holds on the dense path, float32 (b, M, len(columns)) (column 0 ``sem_aff``,
        1 ``static_util``, 2 ``cf_obs``, 3 ``state_sim``; only those asked are computed).

        Offline use (the calibration's fidelity report): O(b·M) memory, so callers pass users in blocks.

        Args:
            users: int (b,) rows of the population.
            columns: Which of the four, in the order wanted.
        """
        f = self.factors
        u = np.asarray(users, np.int64)

        def column(c: int) -> np.ndarray:
            if c == 0:
                return f.sem_taste[u] @ f.item_emb.T
            if c == 1:
                cft = (f.cf_taste[u] @ f.cf_factor.T - f.cft_mu[u, None]) / f.cft_sd[u, None]
                return f.w_cf[u, None] * cft + f.q_quality[None, :] - f.price_sens[u, None] * f.log_price[None, :]
            if c == 2:
                return (f.cf_user[u] @ f.item_factors.T - f.cfo_mu[u, None]) / f.cfo_sd[u, None]
            if c == 3:
                return f.init_state[u] @ f.item_emb.T
            raise ValueError(f"columns are 0-3 (sem_aff, static_util, cf_obs, state_sim), got {c}")

        out = np.empty((u.size, len(f.item_emb), len(columns)), np.float32)
        for j, c in enumerate(columns):
            out[..., j] = column(c)
        return out


def factor_arrays(pop, catalog, item_emb: np.ndarray, item_factors: np.ndarray, log_price: np.ndarray,
                  affinity_scale: float, quality_weight: float,
                  moments: Callable[[str, np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None,
                  ) -> tuple[FactorArrays, np.ndarray, np.ndarray]:
    """The factors of one population and its exact per-user catalog statistics.

    Args:
        pop: The population (``envs.users.Population``).
        catalog: The catalog (``envs.catalog.Catalog``).
        item_emb: float32 (M, D).
        item_factors: float32 (M, F') CF item factors (F' may be 0 before the fit).
        log_price: float32 (M,) centred ``log1p(price)``.
        affinity_scale: ``a``.
        quality_weight: ``q``.
        moments: ``(name, vectors) → (mean, cov)``, e.g. ``World.item_moments`` (cached per world: the d×d
            moments of a million 256-d items cost ~1e11 flops); default: :func:`item_moments` each time.

    Returns:
        ``(factors, sem_mu (U,), sem_sd (U,))``.
    """
    f32 = np.float32
    if moments is None:
        def moments(_name: str, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            return item_moments(vectors)
    e_mean, e_cov = moments("item_emb", item_emb)
    sem_mu, sem_sd = user_stats(pop.sem_taste, e_mean, e_cov)
    c_mean, c_cov = moments("cf_factor", catalog.cf_factor)
    cft_mu, cft_sd = user_stats(pop.cf_taste, c_mean, c_cov)
    u = pop.size
    has_cf = item_factors.size > 0 and pop.cf_user.size > 0 and bool(np.any(pop.cf_user))
    if has_cf:
        q_mean, q_cov = moments("item_factors", item_factors)
        cfo_mu, cfo_sd = user_stats(pop.cf_user, q_mean, q_cov)
        cf_user, q_items = pop.cf_user, item_factors
    else:  # before the fit: cf_obs is 0 everywhere, as on the dense path
        cfo_mu, cfo_sd = np.zeros(u), np.ones(u)
        cf_user, q_items = np.zeros((u, 0), f32), np.zeros((len(item_emb), 0), f32)
    factors = FactorArrays(
        sem_taste=np.ascontiguousarray(pop.sem_taste, f32),
        init_state=np.ascontiguousarray(pop.init_state, f32),
        cf_taste=np.ascontiguousarray(pop.cf_taste, f32),
        cf_user=np.ascontiguousarray(cf_user, f32),
        w_cf=(affinity_scale * (1.0 - pop.rho)).astype(f32),
        cft_mu=cft_mu.astype(f32),
        cft_sd=np.maximum(cft_sd, 1e-6).astype(f32),
        cfo_mu=cfo_mu.astype(f32),
        cfo_sd=np.maximum(cfo_sd, 1e-6).astype(f32),
        price_sens=np.ascontiguousarray(pop.price_sens, f32),
        item_emb=np.ascontiguousarray(item_emb, f32),
        cf_factor=np.ascontiguousarray(catalog.cf_factor, f32),
        item_factors=np.ascontiguousarray(q_items, f32),
        q_quality=(quality_weight * catalog.quality).astype(f32),
        log_price=np.ascontiguousarray(log_price, f32),
    )
    return factors, sem_mu.astype(f32), np.maximum(sem_sd, 1e-6).astype(f32)


@numba.njit(cache=True, nogil=True, fastmath=True, inline="always")
def _dot(a: np.ndarray, u: int, b: np.ndarray, i: int) -> np.float32:
    # float32, reassociated (fastmath): the loop vectorises; the result differs from the dense path's BLAS
    # product only in rounding (~1e-6 relative for D = 384)
    acc = np.float32(0.0)
    for d in range(a.shape[1]):
        acc += a[u, d] * b[i, d]
    return acc


@numba.njit(cache=True, nogil=True, fastmath=True)
def fill_factored(rows: np.ndarray, st, fa: FactorArrays, slot_emb: np.ndarray, slot_scale: np.ndarray, lo: int,
                  hi: int) -> None:
    """Write the four per-slot values of the sessions just started in ``rows[lo:hi]`` from the factors.

    Reads ``st.user[b]`` and ``st.slot_items[b]`` (written by ``envs.kernels.build_sessions``) and writes
    ``st.sem_aff, st.static_util, st.cf_obs, st.state_sim`` for all S slots of each row: O(S·(2D + F + F')).

    Args:
        rows: int64 (r,) rows.
        st: The core's ``SessionState``.
        fa: The population's :class:`FactorArrays`.
        slot_emb: float32 or int8 (B, S, D): also copy each slot's embedding row there
            (``envs.kernels.put_slot_emb``; ``envs.kernels.step_sessions`` reads it on clicks), or a zero-size
            (0, 0, 0) array.
        slot_scale: float32 (B, S) the int8 copy's scales (written), or (0, 0).
        lo: First entry of ``rows``.
        hi: One past the last.
    """
    n_slots = st.slot_items.shape[1]
    copy = slot_emb.shape[0] > 0
    for r in range(lo, hi):
        b = rows[r]
        u = st.user[b]
        w_cf, p = fa.w_cf[u], fa.price_sens[u]
        mu_t, sd_t, mu_o, sd_o = fa.cft_mu[u], fa.cft_sd[u], fa.cfo_mu[u], fa.cfo_sd[u]
        for s in range(n_slots):
            i = st.slot_items[b, s]
            sem = np.float32(0.0)
            state = np.float32(0.0)
            for d in range(fa.item_emb.shape[1]):  # one pass over e_i for both products
                e = fa.item_emb[i, d]
                sem += fa.sem_taste[u, d] * e
                state += fa.init_state[u, d] * e
            st.sem_aff[b, s] = sem
            st.state_sim[b, s] = state
            if copy:
                put_slot_emb(slot_emb, slot_scale, b, s, fa.item_emb, i)
            z = (_dot(fa.cf_taste, u, fa.cf_factor, i) - mu_t) / sd_t
            st.static_util[b, s] = w_cf * z + fa.q_quality[i] - p * fa.log_price[i]
            st.cf_obs[b, s] = (_dot(fa.cf_user, u, fa.item_factors, i) - mu_o) / sd_o
