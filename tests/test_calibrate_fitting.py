"""The maximum-likelihood fit of ρ_u, a and q (envs.calibrate.fitting) on synthetic Plackett-Luce choices."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.stats import spearmanr

from envs.calibrate.fitting import fit_response
from envs.calibrate.tastes import standardise_rows


def test_fit_recovers_known_rho_and_scale() -> None:
    rng = np.random.default_rng(0)
    n_users, m, n_choices = 300, 400, 40
    z_sem = standardise_rows(rng.normal(size=(n_users, m)))
    z_cf = standardise_rows(rng.normal(size=(n_users, m)))
    feat = rng.normal(size=(1, m)).astype(np.float32)
    rho = rng.uniform(0, 1, n_users)
    a, q = 2.5, 0.5
    util = a * (rho[:, None] * z_sem + (1 - rho[:, None]) * z_cf) + q * feat
    exclude = np.zeros((n_users, m), bool)
    exclude[np.arange(n_users)[:, None], rng.integers(0, m, (n_users, 20))] = True
    keys = np.where(exclude, -np.inf, util + rng.gumbel(size=util.shape))
    # Gumbel-top-k: a draw without replacement from the softmax, in Plackett-Luce order
    chosen = np.argsort(-keys, axis=1)[:, :n_choices]
    for sample in (0, 200):
        fit = fit_response(z_sem, z_cf, feat, chosen, sp.csr_matrix(exclude), grid=21, rounds=6, sample=sample)
        assert spearmanr(fit.rho, rho).statistic > 0.8, sample
        assert abs(fit.affinity_scale - a) / a < 0.15, (sample, fit.affinity_scale)
        assert abs(fit.quality_coef[0] - q) < 0.15, (sample, fit.quality_coef)
        # users the data says are semantic get a higher ρ than users it says are collaborative
        assert fit.rho[rho > 0.8].mean() > fit.rho[rho < 0.2].mean() + 0.4
    flat = fit_response(z_sem, z_cf, feat, chosen, sp.csr_matrix(exclude), prior="flat", rounds=3)
    assert spearmanr(flat.rho, rho).statistic > 0.75
    # independent draws from the full set ignore that a user never picks an item twice: a comes out too low
    naive = fit_response(z_sem, z_cf, feat, chosen, sp.csr_matrix(exclude), rounds=3, sequential=False)
    assert naive.affinity_scale < 0.85 * fit.affinity_scale
    pos = np.zeros((n_users, m), bool)
    pos[np.arange(n_users)[:, None], chosen] = True
    with pytest.raises(ValueError, match="excluded"):
        fit_response(z_sem, z_cf, feat, chosen, sp.csr_matrix(pos))
    with pytest.raises(ValueError, match="twice"):
        fit_response(z_sem, z_cf, feat, np.c_[chosen[:, :1], chosen[:, :1]], sp.csr_matrix(exclude))
