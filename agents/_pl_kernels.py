"""Compiled (numba) sampling of the repulsive Plackett-Luce slate distribution on CPU.

One pass per row, no (B, N) temporaries: see :meth:`agents.distributions.PlackettLuceDistribution._sample_groups`
for the scheme (a group by inverse CDF over its repulsion-weighted unplaced mass, then a candidate of that group
by inverse CDF over its unplaced ``exp`` logits; two uniforms per row and step).
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
