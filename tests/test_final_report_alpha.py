"""The learned α by hidden user type and request (agents/final_report.py ``alpha_by_type``)."""

from __future__ import annotations

import numpy as np
import pytest

from agents.final_report import alpha_by_type


def test_alpha_by_type_splits_raw_and_effective_alpha_by_group_and_request() -> None:
    rng = np.random.default_rng(0)
    n = 4000
    rho = np.where(rng.random(n) < 0.5, 0.05, 0.95)
    step = rng.integers(0, 5, n)
    alpha = np.full(n, 0.9)
    # the effective α falls with the request for CF users (rho < 0.5) and rises for content users
    alpha_eff = np.where(rho < 0.5, 0.6 - 0.05 * step, 0.6 + 0.05 * step)
    alpha_eff[:10] = np.nan  # requests whose two signals were constant: left out, not averaged as 0
    out = alpha_by_type(rho, step, alpha, alpha_eff, max_step=5)
    assert out["by_rho"]["rho<1/3 (CF-driven)"] == pytest.approx(0.9)
    assert out["by_rho_effective"]["rho<1/3 (CF-driven)"] < 0.55 < out["by_rho_effective"]["rho>=2/3 (content-driven)"]
    assert out["by_rho_effective"]["1/3<=rho<2/3 (mixed)"] is None  # no user in the middle group
    assert out["by_step"][4]["effective rho<0.5"] == pytest.approx(0.4)
    assert out["by_step"][4]["effective rho>=0.5"] == pytest.approx(0.8)
    assert out["by_step"][0]["effective rho<0.5"] == pytest.approx(0.6)
    assert out["corr_effective_alpha_rho"] > 0.5
