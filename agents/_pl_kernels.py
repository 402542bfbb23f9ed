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
def _penalty(beta: float, count: float, cap: int, cap_pen: float) -> float:
    """The effective-logit penalty of a group with ``count`` earlier picks: ``β·count``, plus ``cap_pen`` once
    ``count >= cap`` (the soft category cap; ``cap_pen = 0``: none)."""
    return beta * count + (cap_pen if count >= cap else 0.0)


@numba.njit(cache=True, nogil=True)
def sample_groups(x: np.ndarray, groups: np.ndarray, beta: np.ndarray, u: np.ndarray, n_groups: int,
                  picks: np.ndarray, log_prob: np.ndarray, cap: int = 1 << 30, cap_pen: float = 0.0) -> None:
    """Draw one slate per row.

    Args:
        x: float64 (B, N) logits shifted so that each row's maximum is 0; ``-inf`` for masked candidates.
        groups: int64 (B, N) group of each candidate, in ``[0, n_groups)``.
        beta: float64 (B,) repulsion β >= 0.
        u: float64 (B, K, 2) uniforms in [0, 1).
        n_groups: G.
        picks: int64 (B, K) output: candidate positions, in rank order.
        log_prob: float64 (B,) output: the slates' log-probabilities.
        cap: Soft category cap: a group with ``cap`` or more earlier picks takes ``cap_pen`` more penalty.
        cap_pen: That penalty (nats).
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
                    w = mass[g] * math.exp(-_penalty(beta[r], counts[g], cap, cap_pen))
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
                total += x[r, item] - _penalty(beta[r], counts[chosen], cap, cap_pen) - math.log(z)
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
               counts: np.ndarray, pen: np.ndarray, cap: int, cap_pen: float) -> None:
    """Row r's per-step, per-group quantities of :func:`path_terms_forward` (into the (K, G) / (K,) scratch);
    ``pen[c]`` (:func:`_penalty`) and ``pw[c] = exp(−pen[c])`` for the K possible counts."""
    kk, n_g = raw.shape
    cum_e[:] = 0.0
    cum_xe[:] = 0.0
    counts[:] = 0.0
    for c in range(kk):
        pen[c] = _penalty(beta, float(c), cap, cap_pen)
        pw[c] = math.exp(-pen[c])
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
                mk += w * (tk - pen[int(counts[g])] * sc)
        z[k] = zk
        m[k] = mk
        ga = g_a[r, k]
        cum_e[ga] += e_a[r, k]
        cum_xe[ga] += xe_a[r, k]
        counts[ga] += 1.0


@numba.njit(cache=True, nogil=True)
def _row_forward(big_s: np.ndarray, big_t: np.ndarray, e_a: np.ndarray, xe_a: np.ndarray, x_a: np.ndarray,
                 g_a: np.ndarray, beta: float, r: int, with_entropy: bool, log_p: np.ndarray, lr: int,
                 sc: tuple, cap: int, cap_pen: float) -> float:
    """Row r's log-probability per step (into ``log_p[lr]``); returns its path entropy (0 without)."""
    raw, t, cnt, z, m, pw, cum_e, cum_xe, counts, pen = sc
    kk = raw.shape[0]
    _row_steps(big_s, big_t, e_a, xe_a, g_a, beta, r, raw, t, cnt, z, m, with_entropy, pw, cum_e, cum_xe, counts,
               pen, cap, cap_pen)
    ent = 0.0
    for k in range(kk):
        zc = z[k] if z[k] >= 1e-300 else 1e-300
        log_z = math.log(zc)
        log_p[lr, k] = x_a[r, k] - pen[int(cnt[k, g_a[r, k]])] - log_z
        if with_entropy:
            ent += log_z - m[k] / zc
    return ent


@numba.njit(cache=True, nogil=True)
def _row_backward(big_s: np.ndarray, big_t: np.ndarray, e_a: np.ndarray, xe_a: np.ndarray, g_a: np.ndarray,
                  be: float, r: int, with_entropy: bool, grad_log_p: np.ndarray, h: float, lr: int, sc: tuple,
                  acc_s: np.ndarray, acc_t: np.ndarray, d_e: np.ndarray, d_xe: np.ndarray, d_x: np.ndarray,
                  cap: int, cap_pen: float) -> float:
    """Row r's gradients (see :func:`path_terms_backward`): ``acc_s`` / ``acc_t`` (G,) end as d big_s / d big_t,
    ``d_e``, ``d_xe``, ``d_x`` (K,) are filled; returns d β. ``grad_log_p[lr]`` is the row's upstream gradient of
    the per-step log-probabilities, ``h`` that of the entropy."""
    raw, t, cnt, z, m, pw, cum_e, cum_xe, counts, pen = sc
    kk, n_g = raw.shape
    _row_steps(big_s, big_t, e_a, xe_a, g_a, be, r, raw, t, cnt, z, m, with_entropy, pw, cum_e, cum_xe, counts,
               pen, cap, cap_pen)
    acc_s[:] = 0.0
    acc_t[:] = 0.0
    db = 0.0
    for k in range(kk - 1, -1, -1):
        ga = g_a[r, k]
        # step k's pick is removed from the steps after it
        d_e[k] = -acc_s[ga]
        d_xe[k] = -acc_t[ga]
        a = grad_log_p[lr, k]
        d_x[k] = a
        db -= a * cnt[k, ga]
        zc = z[k] if z[k] >= 1e-300 else 1e-300
        d_log_z = -a
        d_m = 0.0
        d_zc = 0.0
        if with_entropy:
            d_log_z += h
            d_m = -h / zc
            d_zc = h * m[k] / (zc * zc)
        d_zc += d_log_z / zc
        d_z = d_zc if z[k] >= 1e-300 else 0.0
        for g in range(n_g):
            rs = raw[k, g]
            sv = rs if rs > 0.0 else 0.0
            c = cnt[k, g]
            w = pw[int(c)]
            pc = pen[int(c)]
            d_sc = d_z * w
            d_w = d_z * sv
            if with_entropy:
                d_w += d_m * (t[k, g] - pc * sv)
                acc_t[g] += d_m * w
                d_sc -= d_m * pc * w
                db -= d_m * w * c * sv
            db -= d_w * c * w
            if rs >= 0.0:
                acc_s[g] += d_sc
    return db


@numba.njit(cache=True, nogil=True)
def _scratch(kk: int, n_g: int) -> tuple:
    return (np.empty((kk, n_g)), np.empty((kk, n_g)), np.empty((kk, n_g)), np.empty(kk), np.empty(kk),
            np.empty(kk), np.empty(n_g), np.empty(n_g), np.empty(n_g), np.empty(kk))


@numba.njit(cache=True, nogil=True)
def _row_inputs(s: np.ndarray, groups: np.ndarray, path: np.ndarray, r: int, x: np.ndarray, e: np.ndarray,
                big_s: np.ndarray, big_t: np.ndarray, e_a: np.ndarray, xe_a: np.ndarray, x_a: np.ndarray,
                g_a: np.ndarray, seen: np.ndarray) -> bool:
    """Row r of ``PlackettLuceDistribution._row_stats`` and the path gathers of ``_path_terms``, into scratch
    (``x``, ``e`` (N,); ``big_s``, ``big_t`` (1, G); ``e_a``, ``xe_a``, ``x_a``, ``g_a`` (1, K)). Returns whether the
    path is invalid (a repeated or masked pick)."""
    n = s.shape[1]
    kk = path.shape[1]
    mx = -math.inf
    for j in range(n):
        v = float(s[r, j])
        if v > mx:
            mx = v
    big_s[0, :] = 0.0
    big_t[0, :] = 0.0
    for j in range(n):
        xv = float(s[r, j]) - mx
        ev = math.exp(xv)
        x[j] = xv
        e[j] = ev
        seen[j] = False
        g = groups[r, j]
        big_s[0, g] += ev
        if ev > 0.0:
            big_t[0, g] += xv * ev
    invalid = False
    for k in range(kk):
        a = path[r, k]
        if seen[a] or x[a] == -math.inf:
            invalid = True
        seen[a] = True
    for k in range(kk):
        a = path[r, k]
        x_a[0, k] = x[a]
        g_a[0, k] = groups[r, a]
        if invalid:
            e_a[0, k] = 0.0
            xe_a[0, k] = 0.0
        else:
            e_a[0, k] = e[a]
            xe_a[0, k] = e[a] * x[a] if x[a] > -math.inf else 0.0
    return invalid


@numba.njit(cache=True, nogil=True)
def _row_buffers(n: int, kk: int, n_g: int) -> tuple:
    return (np.empty(n), np.empty(n), np.empty(n, np.bool_), np.empty((1, n_g)), np.empty((1, n_g)),
            np.empty((1, kk)), np.empty((1, kk)), np.empty((1, kk)), np.empty((1, kk), np.int64))


@numba.njit(cache=True, nogil=True)
def path_terms_forward(s: np.ndarray, groups: np.ndarray, beta: np.ndarray, path: np.ndarray, n_groups: int,
                       with_entropy: bool, log_p: np.ndarray, entropy: np.ndarray, invalid: np.ndarray,
                       cap: int = 1 << 30, cap_pen: float = 0.0) -> None:
    """``PlackettLuceDistribution._path_terms`` from the logits, one pass per row.

    Args:
        s: float64 (B, N) logits (masked: ``-inf``).
        groups: int64 (B, N) group of each candidate, in ``[0, n_groups)``.
        beta: float64 (B,) β (zeros without repulsion).
        path: int64 (B, K) candidate positions.
        n_groups: G.
        with_entropy: Also compute the path entropy.
        log_p: float64 (B, K) output: the log-probability of each step's pick.
        entropy: float64 (B,) output (untouched without ``with_entropy``).
        invalid: bool (B,) output: the path repeats a candidate or picks a masked one.
        cap: Soft category cap (see :func:`sample_groups`).
        cap_pen: Its penalty.
    """
    b, n = s.shape
    kk = path.shape[1]
    x, e, seen, big_s, big_t, e_a, xe_a, x_a, g_a = _row_buffers(n, kk, n_groups)
    sc = _scratch(kk, n_groups)
    for r in range(b):
        invalid[r] = _row_inputs(s, groups, path, r, x, e, big_s, big_t, e_a, xe_a, x_a, g_a, seen)
        ent = _row_forward(big_s, big_t, e_a, xe_a, x_a, g_a, beta[r], 0, with_entropy, log_p, r, sc, cap, cap_pen)
        if with_entropy:
            entropy[r] = ent


@numba.njit(cache=True, nogil=True)
def path_terms_backward(s: np.ndarray, groups: np.ndarray, beta: np.ndarray, path: np.ndarray, n_groups: int,
                        with_entropy: bool, grad_log_p: np.ndarray, grad_entropy: np.ndarray, d_s: np.ndarray,
                        d_beta: np.ndarray, cap: int = 1 << 30, cap_pen: float = 0.0) -> None:
    """Gradients of :func:`path_terms_forward`'s outputs, weighted by ``grad_log_p`` (B, K) and ``grad_entropy``
    (B,), with respect to ``s`` (into ``d_s`` (B, N)) and ``beta`` (into ``d_beta`` (B,)): the derivative of the same
    float64 operations, as autograd takes it through the torch ops (the row maximum is a constant; clamps pass the
    gradient at or above their bound; an invalid path's picks remove nothing, so only its ``x_a`` carries one)."""
    b, n = s.shape
    kk = path.shape[1]
    x, e, seen, big_s, big_t, e_a, xe_a, x_a, g_a = _row_buffers(n, kk, n_groups)
    sc = _scratch(kk, n_groups)
    acc_s = np.empty(n_groups)
    acc_t = np.empty(n_groups)
    d_e = np.empty(kk)
    d_xe = np.empty(kk)
    d_x = np.empty(kk)
    for r in range(b):
        inv = _row_inputs(s, groups, path, r, x, e, big_s, big_t, e_a, xe_a, x_a, g_a, seen)
        d_beta[r] = _row_backward(big_s, big_t, e_a, xe_a, g_a, beta[r], 0, with_entropy, grad_log_p,
                                  grad_entropy[r], r, sc, acc_s, acc_t, d_e, d_xe, d_x, cap, cap_pen)
        for j in range(n):  # through S_g = Σ e_j and T_g = Σ x_j·e_j (e_j = exp(x_j))
            ev = e[j]
            g = groups[r, j]
            v = ev * acc_s[g]
            if ev > 0.0:
                v += acc_t[g] * ev * (x[j] + 1.0)
            d_s[r, j] = v
        for k in range(kk):  # through the picks' x_a, e_a and x_a·e_a
            a = path[r, k]
            d_s[r, a] += d_x[k]
            if not inv:
                d_s[r, a] += d_e[k] * e[a]
                if x[a] > -math.inf:
                    d_s[r, a] += d_xe[k] * e[a] * (x[a] + 1.0)
