"""The maximum-likelihood fit of ρ_u, a and q (envs.calibrate.fitting) on synthetic Plackett-Luce choices."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.stats import spearmanr

from envs.calibrate.fitting import RowStandardised, fit_response
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


def test_lazy_affinities_equal_the_dense_matrix_and_give_the_same_fit() -> None:
    """Past the table budget the fit reads ``standardise_rows(users @ items.T)`` through RowStandardised, whose row
    statistics come from the items' moments: the same values up to rounding, hence the same fit."""
    rng = np.random.default_rng(1)
    n_users, m, d = 120, 300, 8
    users, items = rng.normal(size=(n_users, d)), rng.normal(size=(m, d)) + 0.3
    cf_users, cf_items = rng.normal(size=(n_users, 4)), rng.normal(size=(m, 4))
    dense = standardise_rows(users.astype(np.float32) @ items.astype(np.float32).T)
    lazy = RowStandardised(users, items)
    assert lazy.shape == dense.shape
    cols = np.array([5, 0, 299, 5])
    np.testing.assert_allclose(lazy.columns(cols), dense[:, cols], atol=1e-4)
    picks = rng.integers(0, m, (n_users, 3))
    np.testing.assert_allclose(lazy.at(picks), dense[np.arange(n_users)[:, None], picks], atol=1e-4)

    z_cf = standardise_rows(cf_users.astype(np.float32) @ cf_items.astype(np.float32).T)
    rho = rng.uniform(0, 1, n_users)
    util = 2.0 * (rho[:, None] * dense + (1 - rho[:, None]) * z_cf)
    chosen = np.argsort(-(util + rng.gumbel(size=util.shape)), axis=1)[:, :15]
    exclude = sp.csr_matrix((n_users, m), dtype=bool)
    want = fit_response(dense, z_cf, np.zeros((0, m)), chosen, exclude, rounds=3, sample=100)
    got = fit_response(lazy, RowStandardised(cf_users, cf_items), np.zeros((0, m)), chosen, exclude, rounds=3,
                       sample=100)
    assert got.affinity_scale == pytest.approx(want.affinity_scale, rel=1e-3)
    np.testing.assert_allclose(got.rho, want.rho, atol=1e-3)
    assert got.loglik_per_choice == pytest.approx(want.loglik_per_choice, rel=1e-4)
