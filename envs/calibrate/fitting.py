"""Maximum-likelihood fit of the response parameters ρ_u, a and q on held-out choices (Plackett-Luce over the
catalog, ρ_u on a grid with an empirical-Bayes prior); the method is in docs/calibration.md."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp

from envs.calibrate.tastes import event_order
from envs.data.interaction_log import InteractionLog
from envs.factored import item_moments, user_stats


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


class RowStandardised:
    """``standardise_rows(users @ items.T)`` without the (U, M) matrix: the columns and entries a fit reads.

    Each row's mean and (population) std over the M items are exact from the items' moments
    (:func:`envs.factored.user_stats`), as on the world's factored path, so the values equal the dense matrix's
    up to float rounding, and memory is O((U + M)·d) instead of 4·U·M bytes.

    Args:
        users: float (U, d) user vectors.
        items: float (M, d) item vectors.
    """

    def __init__(self, users: np.ndarray, items: np.ndarray) -> None:
        self.users = np.ascontiguousarray(users, np.float32)
        self.items = np.ascontiguousarray(items, np.float32)
        mu, sd = user_stats(self.users, *item_moments(self.items))
        self.mu = mu.astype(np.float32)[:, None]  # (U, 1)
        self.sd = np.maximum(sd, 1e-6).astype(np.float32)[:, None]
        self.shape = (len(self.users), len(self.items))

    def columns(self, cols: np.ndarray) -> np.ndarray:
        """float32 (U, S): the standardised scores of every user on the items ``cols`` (S,)."""
        return (self.users @ self.items[cols].T - self.mu) / self.sd

    def at(self, items: np.ndarray) -> np.ndarray:
        """float32 (U, P): user u's standardised score of item ``items[u, p]``."""
        return (np.einsum("ud,upd->up", self.users, self.items[items]) - self.mu) / self.sd


#: A fit's standardised affinities: the dense float32 (U, M) matrix, or its lazy form.
Affinity = np.ndarray | RowStandardised


def _columns(z: Affinity, cols: np.ndarray) -> np.ndarray:
    return z.columns(cols) if isinstance(z, RowStandardised) else z[:, cols]


def _at(z: Affinity, items: np.ndarray) -> np.ndarray:
    return z.at(items) if isinstance(z, RowStandardised) else z[np.arange(len(z))[:, None], items]


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


def _choice_block(z_sem: Affinity, z_cf: Affinity, features: np.ndarray, choices: np.ndarray,
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
    zc = np.concatenate([_columns(z_cf, cols), _at(z_cf, items)], axis=1).astype(np.float32)
    zs = np.concatenate([_columns(z_sem, cols), _at(z_sem, items)], axis=1).astype(np.float32)
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
    z_sem: Affinity,
    z_cf: Affinity,
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
    on a grid for fixed (a, q); the two alternate ``rounds`` times. With ``prior="population"`` the population's
    distribution of ρ on the grid is fitted by EM and each ρ_u is its posterior mean (docs/calibration.md). The
    partition function sums over a uniform sample of ``sample`` catalog items (importance-weighted, the same
    sample for every user and every parameter value; stratified on ``anchor`` when given) plus the user's choices;
    ``sample`` <= 0 sums over the whole catalog.

    Args:
        z_sem: float32 (U, M) standardised semantic affinity, or its lazy :class:`RowStandardised` form.
        z_cf: float32 (U, M) standardised CF affinity, or its lazy form.
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
