"""bench.first_reading: what the first request's pooled statistics tell of the user's type."""

from __future__ import annotations

import numpy as np
import pytest

from agents.evaluation import episode_plan
from agents.policy_ops import SPREAD_EPS
from agents.type_switch import RHO_EDGE, type_features
from bench.first_reading import first_requests, main, pooled
from configs.schema import EnvConfig
from envs.factory import make_core
from envs.spaces import C_T_FRAC, CONTEXT_NAMES, F_CF, F_LLM, FEATURE_NAMES
from envs.world import World


def test_first_requests_are_the_plan_s_sessions_before_any_feedback(small_cfg: EnvConfig, small_world: World) -> None:
    """One row per session of the one-seed plan, each at its first request (no click yet), labelled with its user's
    hidden type; the same seed gives the same requests, another seed other ones."""
    obs, cf = first_requests(small_world, small_cfg, "train", 40, seed=4)
    assert obs["features"].shape[0] == 40 and cf.shape == (40,) and cf.dtype == bool
    context = obs["context"]
    assert (context[:, C_T_FRAC] == 0).all() and (context[:, CONTEXT_NAMES.index("click_rate")] == 0).all()
    plan = episode_plan(40, [4], small_world.populations["train"].size)
    core = make_core(small_cfg, small_cfg.preset, None, small_world, "train", 40)
    np.testing.assert_array_equal(cf, core.pop.rho[plan.users] < RHO_EDGE)
    again, _ = first_requests(small_world, small_cfg, "train", 40, seed=4)
    other, _ = first_requests(small_world, small_cfg, "train", 40, seed=5)
    np.testing.assert_array_equal(again["features"], obs["features"])
    assert not np.array_equal(other["features"], obs["features"])


def test_each_reader_pools_what_it_names(small_cfg: EnvConfig, small_world: World) -> None:
    """``mean+max`` is symlog(features) averaged and maxed over the candidates (the policy's pooling); ``spread`` the
    population standard deviation of the same rows (``sqrt(var + SPREAD_EPS)``); ``mean+max+spread`` adds the LLM–CF
    correlation of the raw signals; the ``user`` sets append the user's LLM state; ``type_features`` is the type
    switch's."""
    obs, _ = first_requests(small_world, small_cfg, "heldout", 12, seed=0)
    got = pooled(obs)
    f = obs["features"].astype(np.float64)
    sl = np.sign(f) * np.log1p(np.abs(f))
    n_feat, dim = len(FEATURE_NAMES), obs["user"].shape[1]
    np.testing.assert_allclose(got["mean+max"], np.c_[sl.mean(1), sl.max(1)], atol=1e-12)
    np.testing.assert_allclose(got["spread"], np.sqrt(sl.var(1) + SPREAD_EPS), atol=1e-9)  # a column all 0: 1e-4
    corr = [np.corrcoef(f[b, :, F_LLM], f[b, :, F_CF])[0, 1] for b in range(12)]
    np.testing.assert_allclose(got["mean+max+spread"][:, -1], corr, atol=1e-6)
    assert got["mean+max+spread"].shape[1] == 3 * n_feat + 1
    assert got["mean+max+user"].shape[1] == 2 * n_feat + dim
    np.testing.assert_array_equal(got["mean+max+spread+user"][:, -dim:], obs["user"].astype(np.float64))
    np.testing.assert_array_equal(got["type_features"], type_features(obs))


@pytest.mark.parametrize("flag", ["--episodes", "--train-sessions"])
def test_a_count_below_one_is_refused_by_name(flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    """No session to read is a usage error naming the flag, before any world is built."""
    with pytest.raises(SystemExit):
        main([flag, "0"])
    assert f"{flag} must be at least 1, got 0" in capsys.readouterr().err
