"""Compiled (numba) sampling of the repulsive Plackett-Luce slate distribution on CPU.

One pass per row, no (B, N) temporaries: see :meth:`agents.distributions.PlackettLuceDistribution._sample_groups`
for the scheme (a group by inverse CDF over its repulsion-weighted unplaced mass, then a candidate of that group
by inverse CDF over its unplaced ``exp`` logits; two uniforms per row and step); and the per-group arithmetic of
the log-probability and path entropy with its gradient (:class:`agents.distributions._PathTermsCPU`).
"""

from __future__ import annotations

import math

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def sample_groups(x: np.ndarray, groups: np.ndarray, beta: np.ndarray, u: np.ndarray, n_groups: int,
                  picks: np.ndarray, log_prob: np.ndarray) -> None:
    """Draw one slate per row.

    Args:
        x: float64 (B, N) logits shifted so that each row's maximum is 0; ``-inf`` for masked candidates.
        groups: int64 (B, N) group of each candidate, in ``[0, n_groups)``.
        beta: float64 (B,) repulsion β >= 0.
        u: float64 (B, K, 2) uniforms in [0, 1).
        n_groups: G.
        picks: int64 (B, K) output: candidate positions, in rank order.
        log_prob: float64 (B,) output: the slates' log-probabilities.
    """
    b, n = x.shape
    kk = picks.shape[1]
    e = np.empty(n)
    placed = np.zeros(n, np.bool_)
    mass = np.zeros(n_groups)
    left = np.zeros(n_groups, np.int64)  # valid candidates not yet placed, per group
    counts = np.zeros(n_groups, np.int64)
    weight = np.zeros(n_groups)
    for r in range(b):
        mass[:] = 0.0
        left[:] = 0
        counts[:] = 0
        for j in range(n):
            placed[j] = False
            v = math.exp(x[r, j])  # 0 for masked (-inf)
            e[j] = v
            if x[r, j] > -math.inf:
                mass[groups[r, j]] += v
                left[groups[r, j]] += 1
        total = 0.0
        for k in range(kk):
            z = 0.0
            for g in range(n_groups):
                w = 0.0
                if left[g] > 0 and mass[g] > 0.0:
                    w = mass[g] * math.exp(-beta[r] * counts[g])
                weight[g] = w
                z += w
            target = u[r, k, 0] * z
            chosen = -1
            acc = 0.0
            for g in range(n_groups):
                if weight[g] > 0.0:
                    chosen = g  # the last positive group if rounding leaves target >= the sum
                    acc += weight[g]
                    if acc > target:
                        break
            item = -1
            if chosen >= 0:
                target = u[r, k, 1] * mass[chosen]
                acc = 0.0
                for j in range(n):
                    if groups[r, j] == chosen and not placed[j] and e[j] > 0.0:
                        item = j
                        acc += e[j]
                        if acc > target:
                            break
            if item < 0:  # numerically degenerate (remaining mass underflowed): the best unplaced valid candidate
                for j in range(n):
                    if not placed[j] and x[r, j] > -math.inf and (item < 0 or x[r, j] > x[r, item]):
                        item = j
                chosen = groups[r, item]
            else:
                total += x[r, item] - beta[r] * counts[chosen] - math.log(z)
            picks[r, k] = item
            placed[item] = True
            mass[chosen] = max(mass[chosen] - e[item], 0.0)
            left[chosen] -= 1
            counts[chosen] += 1
        log_prob[r] = total


@numba.njit(cache=True, nogil=True)
def _row_steps(big_s: np.ndarray, big_t: np.ndarray, e_a: np.ndarray, xe_a: np.ndarray, g_a: np.ndarray,
               beta: float, r: int, raw: np.ndarray, t: np.ndarray, cnt: np.ndarray, z: np.ndarray,
               m: np.ndarray, with_entropy: bool, pw: np.ndarray, cum_e: np.ndarray, cum_xe: np.ndarray,
               counts: np.ndarray) -> None:
    """Row r's per-step, per-group quantities of :func:`path_terms_forward` (into the (K, G) / (K,) scratch);
    ``pw[c] = exp(−β·c)`` for the K possible counts."""
    kk, n_g = raw.shape
    cum_e[:] = 0.0
    cum_xe[:] = 0.0
    counts[:] = 0.0
    for c in range(kk):
        pw[c] = math.exp(-beta * float(c))
    for k in range(kk):
        zk = 0.0
        mk = 0.0
        for g in range(n_g):
            rs = big_s[r, g] - cum_e[g]
            raw[k, g] = rs
            sc = rs if rs > 0.0 else 0.0
            cnt[k, g] = counts[g]
            w = pw[int(counts[g])]
            zk += w * sc
            if with_entropy:
                tk = big_t[r, g] - cum_xe[g]
                t[k, g] = tk
                mk += w * (tk - beta * counts[g] * sc)
        z[k] = zk
        m[k] = mk
        ga = g_a[r, k]
        cum_e[ga] += e_a[r, k]
        cum_xe[ga] += xe_a[r, k]
        counts[ga] += 1.0


@numba.njit(cache=True, nogil=True)
def path_terms_forward(big_s: np.ndarray, big_t: np.ndarray, e_a: np.ndarray, xe_a: np.ndarray, x_a: np.ndarray,
                       g_a: np.ndarray, beta: np.ndarray, with_entropy: bool, log_p: np.ndarray,
                       entropy: np.ndarray) -> None:
    """The K conditional softmaxes along a path, per group (see ``PlackettLuceDistribution._path_terms``).

    Args:
        big_s, big_t: float64 (B, G) per-group sums of ``e`` and ``e·x``.
        e_a, xe_a, x_a: float64 (B, K) ``e``, ``e·x`` and ``x`` of the path's picks (``e_a`` / ``xe_a`` zero on
            invalid paths).
        g_a: int64 (B, K) the picks' groups.
        beta: float64 (B,) β (zeros without repulsion).
        with_entropy: Also compute the entropy.
        log_p: float64 (B, K) output, per step.
        entropy: float64 (B,) output (left untouched without ``with_entropy``).
    """
    b, kk = x_a.shape
    n_g = big_s.shape[1]
    raw = np.empty((kk, n_g))
    t = np.empty((kk, n_g))
    cnt = np.empty((kk, n_g))
    z = np.empty(kk)
    m = np.empty(kk)
    pw = np.empty(kk)
    cum_e = np.empty(n_g)
    cum_xe = np.empty(n_g)
    counts = np.empty(n_g)
    for r in range(b):
        _row_steps(big_s, big_t, e_a, xe_a, g_a, beta[r], r, raw, t, cnt, z, m, with_entropy, pw, cum_e, cum_xe,
                   counts)
        ent = 0.0
        for k in range(kk):
            zc = z[k] if z[k] >= 1e-300 else 1e-300
            log_z = math.log(zc)
            log_p[r, k] = x_a[r, k] - beta[r] * cnt[k, g_a[r, k]] - log_z
            if with_entropy:
                ent += log_z - m[k] / zc
        if with_entropy:
            entropy[r] = ent


@numba.njit(cache=True, nogil=True)
def path_terms_backward(big_s: np.ndarray, big_t: np.ndarray, e_a: np.ndarray, xe_a: np.ndarray,
                        g_a: np.ndarray, beta: np.ndarray, with_entropy: bool, grad_log_p: np.ndarray,
                        grad_entropy: np.ndarray, d_s: np.ndarray, d_t: np.ndarray, d_e: np.ndarray,
                        d_xe: np.ndarray, d_x: np.ndarray, d_beta: np.ndarray) -> None:
    """Gradients of :func:`path_terms_forward`'s outputs (weighted by ``grad_log_p`` (B, K) and ``grad_entropy``
    (B,)) with respect to ``big_s``, ``big_t`` (B, G), ``e_a``, ``xe_a``, ``x_a`` (B, K) and ``beta`` (B,), into the
    ``d_*`` outputs. The clamps of the forward (unplaced mass at 0, the normaliser at 1e-300) pass the gradient
    where the value is at or above the bound, as ``torch.clamp`` does."""
    b, kk = e_a.shape
    n_g = big_s.shape[1]
    raw = np.empty((kk, n_g))
    t = np.empty((kk, n_g))
    cnt = np.empty((kk, n_g))
    z = np.empty(kk)
    m = np.empty(kk)
    acc_s = np.empty(n_g)  # sum over later steps of d raw_k[g]
    acc_t = np.empty(n_g)
    pw = np.empty(kk)
    cum_e = np.empty(n_g)
    cum_xe = np.empty(n_g)
    counts = np.empty(n_g)
    for r in range(b):
        be = beta[r]
        _row_steps(big_s, big_t, e_a, xe_a, g_a, be, r, raw, t, cnt, z, m, with_entropy, pw, cum_e, cum_xe, counts)
        acc_s[:] = 0.0
        acc_t[:] = 0.0
        db = 0.0
        for k in range(kk - 1, -1, -1):
            ga = g_a[r, k]
            # step k's picks are removed from the steps after it
            d_e[r, k] = -acc_s[ga]
            d_xe[r, k] = -acc_t[ga]
            a = grad_log_p[r, k]
            d_x[r, k] = a
            db -= a * cnt[k, ga]
            zc = z[k] if z[k] >= 1e-300 else 1e-300
            d_log_z = -a
            d_m = 0.0
            d_zc = 0.0
            if with_entropy:
                h = grad_entropy[r]
                d_log_z += h
                d_m = -h / zc
                d_zc = h * m[k] / (zc * zc)
            d_zc += d_log_z / zc
            d_z = d_zc if z[k] >= 1e-300 else 0.0
            for g in range(n_g):
                rs = raw[k, g]
                sc = rs if rs > 0.0 else 0.0
                c = cnt[k, g]
                w = pw[int(c)]
                d_sc = d_z * w
                d_w = d_z * sc
                if with_entropy:
                    d_w += d_m * (t[k, g] - be * c * sc)
                    acc_t[g] += d_m * w
                    d_sc -= d_m * be * c * w
                    db -= d_m * w * c * sc
                db -= d_w * c * w
                if rs >= 0.0:
                    acc_s[g] += d_sc
        for g in range(n_g):
            d_s[r, g] = acc_s[g]
            d_t[r, g] = acc_t[g]
        d_beta[r] = db
