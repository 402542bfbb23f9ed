"""bench.told_type: a policy told the hidden ρ, played with ρ true or read by another run's type head."""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import make_core, make_run_dir

import evaluate
from agents.ppo_ranker import PPORanker, load_policy
from bench import told_type
from envs.spaces import C_T_FRAC, CRITIC_STATE_NAMES
from envs.world import World


def test_the_told_policy_plays_the_head_reading_in_place_of_rho(tmp_path: Path, small_world: World) -> None:
    """Soft: the told policy's slates given ρ := σ(the head's logit); hard: ρ := the side's value; the caller's
    observation is left as it was; both runs evaluated in one report are paired session by session (the told row
    replays the report, the estimator's row is 0 against itself); runs of the wrong kind are refused by name."""
    told = make_run_dir(tmp_path, small_world, steps=128, told_rho=True)
    est = make_run_dir(tmp_path, small_world, steps=128, type_head=True)
    told_pol, est_pol = load_policy(told, device="cpu"), load_policy(est, device="cpu")
    cfg = told_type.load_run_config(told)
    obs = make_core(cfg.env, small_world, b=6).observe()
    kept = {k: np.array(v, copy=True) for k, v in obs.items()}
    rho_col = CRITIC_STATE_NAMES.index("rho")
    reading = told_type.type_reading(est_pol, obs)
    assert reading.shape == (6,) and np.all((reading > 0) & (reading < 1))
    given = {**obs, "critic_state": obs["critic_state"].copy()}
    given["critic_state"][:, rho_col] = reading
    want = PPORanker(told_pol, 3).act(given)
    soft = told_type.EstimatedTypeRanker(told_pol, est_pol, 3, "soft")
    seen: list[dict[str, np.ndarray]] = []
    inner = soft.policy.act
    soft.policy.act = lambda o: (seen.append(o), inner(o))[1]  # type: ignore[method-assign]
    np.testing.assert_array_equal(soft.act(obs), want)
    np.testing.assert_allclose(seen[0]["critic_state"][:, rho_col], reading, rtol=1e-6)  # what the policy was given
    others = [i for i in range(len(CRITIC_STATE_NAMES)) if i != rho_col]
    np.testing.assert_array_equal(seen[0]["critic_state"][:, others], obs["critic_state"][:, others])
    for k, v in kept.items():
        np.testing.assert_array_equal(obs[k], v)
    sides = (0.1, 0.9)
    given["critic_state"][:, rho_col] = np.where(reading < 0.5, *sides)
    np.testing.assert_array_equal(told_type.EstimatedTypeRanker(told_pol, est_pol, 3, "hard", sides).act(obs),
                                  PPORanker(told_pol, 3).act(given))
    # told from request T: at the session's first request (every row here) T = 1 tells the true ρ, T = 2 the reading
    steps = cfg.env.max_steps
    assert np.all(np.rint(obs["context"][:, C_T_FRAC] * steps) == 0)
    np.testing.assert_array_equal(
        told_type.EstimatedTypeRanker(told_pol, est_pol, 3, "soft", told_from=1, max_steps=steps).act(obs),
        PPORanker(told_pol, 3).act(obs))
    np.testing.assert_array_equal(
        told_type.EstimatedTypeRanker(told_pol, est_pol, 3, "soft", told_from=2, max_steps=steps).act(obs), want)
    for bad in ({"told_from": 0, "max_steps": steps}, {"told_from": 2}):
        with pytest.raises(ValueError, match="told_from goes with mode 'soft'"):
            told_type.EstimatedTypeRanker(told_pol, est_pol, 3, "soft", **bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs an estimator"):
        told_type.EstimatedTypeRanker(told_pol, None, 3, "soft")
    with pytest.raises(ValueError, match="mode must be one of"):
        told_type.EstimatedTypeRanker(told_pol, est_pol, 3, "guess")

    report = tmp_path / "report"
    evaluate.main(["--rankers", f"run:{told},run:{est}", "--episodes", "30", "--seeds", "1", "--reference",
                   f"run:{est}", "--set", "eval.bootstrap=100", "--no-progress", "--out", str(report)])
    res = told_type.analyse(told, est, report=report, bootstrap=100, told_from=(1, 3))
    rows = res["rows"]
    assert res["sessions"] == 30 and len(rows) == 6
    assert rows["told ρ from request 1 (the head's reading before)"]["return"] == rows["told ρ (true)"]["return"]
    own = rows["the estimator run's PPO (observations only)"]
    assert own["diff"]["mean"] == 0.0 and own["diff"]["ci95"] == [0.0, 0.0]
    assert 0.0 <= res["sides"][0] < 0.5 <= res["sides"][1] <= 1.0
    for r in rows.values():
        n_cf = res["cf_sessions"]
        if 0 < n_cf < 30:
            assert r["return"] == pytest.approx((n_cf * r["cf"] + (30 - n_cf) * r["content"]) / 30)
    assert "| told ρ (true) |" in told_type.markdown(res)
    # the head's accuracy by request: every session reads its first request once; fewer sessions last longer
    acc = res["head_accuracy_by_request"]
    assert acc[0]["request"] == 1 and acc[0]["readings"] == 30
    assert [a["request"] for a in acc] == list(range(1, len(acc) + 1))
    assert all(b["readings"] <= a["readings"] for a, b in itertools.pairwise(acc))
    assert all(0.0 <= a["accuracy"] <= 1.0 for a in acc)
    assert "The type head reads the type right" in told_type.markdown(res)
    with pytest.raises(ValueError, match="not told ρ alone"):
        told_type.analyse(est, told, report=report)
    elsewhere = tmp_path / "run-elsewhere"
    shutil.copytree(est, elsewhere)
    config = (elsewhere / "config.yaml").read_text(encoding="utf-8")
    assert "preset: small" in config
    (elsewhere / "config.yaml").write_text(config.replace("preset: small", "preset: default"), encoding="utf-8")
    with pytest.raises(ValueError, match="must read the same world"):
        told_type.analyse(told, elsewhere, report=report)
    with pytest.raises(FileNotFoundError, match=r"returns\.npz is missing"):
        told_type.analyse(told, est)  # neither run has a report/ of its own
