"""bench.cf_rule_split: a policy with the CF-leaning users' second base, played with its share set otherwise."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch as th
from conftest import make_core, make_run_dir

import evaluate
from agents.ppo_ranker import PPORanker, load_policy
from bench import cf_rule_split
from envs.spaces import CRITIC_STATE_NAMES
from envs.world import World


def test_the_share_modes_and_the_split_of_a_run(tmp_path: Path, small_world: World) -> None:
    """``off`` plays the policy with its second base taken out, ``hard`` plays it with the share at 1 where the head's
    share is above 1/2 and as ``off`` elsewhere, ``hidden`` as ``off`` for the content-leaning users and as ``hard``
    for the CF-leaning users the head reads so; a policy without the second base is refused; ``analyse`` pairs the
    modes with the run's stored returns (and a run given as ``against``, here the run itself)."""
    run = make_run_dir(tmp_path / "a", small_world, steps=64, type_head=True, gate="standardised", cf_rule=True)
    cfg = cf_rule_split.load_run_config(run)
    obs = make_core(cfg.env, small_world, b=32).observe()
    rho = obs["critic_state"][:, CRITIC_STATE_NAMES.index("rho")]
    policy = load_policy(run, device="cpu")

    def slates(mode: str) -> np.ndarray:
        return cf_rule_split.ShareRanker(policy, 3, mode).act(obs)

    off, hard, hidden = slates("off"), slates("hard"), slates("hidden")
    without = copy.deepcopy(policy)  # the second base taken out by hand: no shift of α, lean or penalties
    without._cf_rule_alpha_shift, without._cf_rule_lean_shift = 0.0, 0.0
    with th.no_grad():
        without.cf_rule_weight_shift.zero_()
    np.testing.assert_array_equal(off, PPORanker(without, 3).act(obs))
    trained = cf_rule_split.ShareRanker(policy, 3, "trained")
    np.testing.assert_array_equal(trained.act(obs), PPORanker(policy, 3).act(obs))
    assert trained.last_share is not None
    read_cf, low = trained.last_share > 0.5, rho < 0.5
    assert read_cf.any() and (~read_cf).any() and low.any() and (~low).any()
    np.testing.assert_array_equal(hard[~read_cf], off[~read_cf])
    np.testing.assert_array_equal(hidden[~low], off[~low])
    np.testing.assert_array_equal(hidden[low & read_cf], hard[low & read_cf])
    assert not np.array_equal(hidden[low], off[low])  # the second base moves the slates
    with pytest.raises(ValueError, match="mode must be one of"):
        cf_rule_split.ShareRanker(policy, 3, "soft")

    plain = copy.deepcopy(policy)
    plain.cf_rule_alpha = None
    with pytest.raises(ValueError, match="no second base"):
        cf_rule_split.ShareRanker(plain, 3)
    report = tmp_path / "report"
    evaluate.main(["--rankers", f"run:{run}", "--episodes", "30", "--seeds", "1", "--reference", f"run:{run}",
                   "--set", "eval.bootstrap=100", "--no-progress", "--out", str(report)])
    stored = dict(np.load(report / "returns.npz"))
    (run / "report").mkdir()  # as train.py stores its PPO
    np.savez(run / "report" / "returns.npz", keys=stored["keys"], users=stored["users"], seeds=stored["seeds"],
             **{"ret:ppo": stored[f"ret:run:{run}"]})
    res = cf_rule_split.analyse(run, against=run, bootstrap=100)  # itself: a row of 0
    rows = res["rows"]
    assert res["sessions"] == 30 and len(rows) == 5
    for name in ("PPO as trained (stored)", f"{run.name}'s PPO"):
        assert rows[name]["diff"] == {"mean": 0.0, "ci95": [0.0, 0.0]}
    n_cf = res["cf_sessions"]
    for r in rows.values():
        if 0 < n_cf < 30:
            assert r["return"] == pytest.approx((n_cf * r["cf"] + (30 - n_cf) * r["content"]) / 30)
    assert [s["request"] for s in res["share_by_request"]] == list(range(1, len(res["share_by_request"]) + 1))
    assert all(0.0 < s["cf"] < 1.0 and 0.0 < s["content"] < 1.0 for s in res["share_by_request"])
    assert "| share off (base A only) |" in cf_rule_split.markdown(res)


def test_rule_b_installed_after_training_plays_as_the_trained_second_base(tmp_path: Path, small_world: World) -> None:
    """``install_rule`` gives a run trained without the second base the slates of the same weights built with it
    (``cf_rule_base``'s constructor arguments, its share made hard at the threshold); with the share off it plays the
    run as trained; ``install_screen`` pairs each row (B installed, by the hidden type, PPO only where its head is
    sure, the type switch) with the run on training users, and the hidden-type row leaves every content-leaning
    user's sessions as they were."""
    from agents.policies import SlatePolicy
    from agents.training import penalty_weights

    run = make_run_dir(tmp_path / "a", small_world, steps=64, type_head=True, gate="standardised")
    cfg = cf_rule_split.load_run_config(run)
    obs = make_core(cfg.env, small_world, b=32).observe()
    policy = load_policy(run, device="cpu")
    rule = {"alpha": 0.05, "lean_weight": 1.5, "cap": 1, "exposure_weight": 1.0, "seen_weight": 0.25}
    with th.no_grad():
        p_cf = th.sigmoid(-policy._type_logit(policy._encode(policy._prepare(obs))[0])).numpy()  # (B,)
    threshold = float(np.median(p_cf))  # half the users read above it
    installed = cf_rule_split.install_rule(policy, rule, threshold)
    as_trained = PPORanker(policy, 3).act(obs)
    np.testing.assert_array_equal(cf_rule_split.ShareRanker(installed, 3, "off").act(obs), as_trained)
    kwargs = policy._get_constructor_parameters()
    kwargs.update(cf_rule_alpha=rule["alpha"], cf_rule_lean=rule["lean_weight"], cf_rule_threshold=threshold,
                  cf_rule_weights=penalty_weights(rule).tolist(),
                  cf_rule_sharpness=1e6)
    built = SlatePolicy(**kwargs)
    built.load_state_dict(policy.state_dict(), strict=False)  # all but B's penalty shift, a buffer of the build
    assert th.equal(built.cf_rule_weight_shift, installed.cf_rule_weight_shift)
    hard = cf_rule_split.ShareRanker(installed, 3, "trained").act(obs)
    np.testing.assert_array_equal(hard, PPORanker(built, 3).act(obs))
    above = p_cf > threshold
    assert above.any() and (~above).any() and not np.array_equal(hard[above], as_trained[above])
    np.testing.assert_array_equal(hard[~above], as_trained[~above])
    np.testing.assert_allclose(cf_rule_split.HeadReader(policy).read(obs), p_cf, rtol=1e-6)  # the switch's reader
    with pytest.raises(ValueError, match="threshold must be in"):
        cf_rule_split.install_rule(policy, rule, 1.0)
    with pytest.raises(ValueError, match="trained with its second base"):
        cf_rule_split.install_rule(installed, rule, 0.5)

    res = cf_rule_split.install_screen(run, [threshold, 0.99], episodes=40, seed=3, tune_seed=1, tune_episodes=20,
                                       bootstrap=100)
    rows = res["rows"]
    assert res["sessions"] == 40 and len(rows) == 7 and set(res["rule"]) >= {"alpha", "cap"}
    assert sum(name.startswith("the type switch (tuned-switch, threshold") for name in rows) == 1
    assert rows["PPO as trained"]["diff"] == {"mean": 0.0, "ci95": [0.0, 0.0]}
    hidden = rows["B by the hidden type (research)"]
    if res["cf_sessions"] < 40:
        assert hidden["diff_content"]["mean"] == 0.0
    assert "| B where the head reads CF-leaning above 0.99 |" in cf_rule_split.install_markdown(res)
