"""bench.gate_calibration: a trained run's type-gate margin moved after training, picked on training users."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import make_core, make_run_dir

import evaluate
from agents.ppo_ranker import PPORanker, load_policy, save_policy
from bench import gate_calibration
from envs.world import World


def _gated_run(tmp_path: Path, world: World) -> Path:
    """A tiny run with a type head whose logit reaches the gate below 0 only (as configs/quality-adapt.yaml)."""
    run = make_run_dir(tmp_path, world, steps=128, type_head=True)
    policy = load_policy(run, device="cpu")
    policy.type_gate_lower_only = True
    assert policy.type_gate is not None
    policy.type_gate.data.fill_(1.0)
    save_policy(policy, run)
    return run


def test_the_margin_moves_only_the_gate_and_inf_blinds_it(tmp_path: Path, small_world: World) -> None:
    """Margin ∞ gives the slates of the same policy with its type gate at 0; a margin that puts every row below 0
    changes α where margin 0 and ∞ agree it is blind; a run without the lower-only gate is refused by name."""
    plain = make_run_dir(tmp_path, small_world, steps=128, type_head=True)  # type_gate_lower_only off
    with pytest.raises(ValueError, match="no lower-only type gate"):
        gate_calibration.gated_policy(plain, small_world.catalog.n_items)
    run = _gated_run(tmp_path / "gated", small_world)
    policy = gate_calibration.gated_policy(run, small_world.catalog.n_items)
    cfg = gate_calibration.load_run_config(run)
    obs = make_core(cfg.env, small_world, b=16).observe()
    ranker = PPORanker(policy, 3)

    def alpha(margin: float) -> np.ndarray:
        policy.type_gate_margin = margin
        ranker.act(obs)
        assert ranker.last_alpha is not None
        return np.array(ranker.last_alpha, copy=True)

    blind = alpha(math.inf)
    policy.type_gate_margin = 0.0
    assert policy.type_gate is not None
    policy.type_gate.data.fill_(0.0)
    ranker.act(obs)
    np.testing.assert_allclose(blind, ranker.last_alpha, rtol=1e-6)
    policy.type_gate.data.fill_(1.0)
    below = alpha(-100.0)  # every row's clamped logit is negative: the gate lowers α everywhere
    assert np.all(below < blind)


def test_calibrate_picks_on_training_users_and_pairs_on_held_out_sessions(tmp_path: Path,
                                                                          small_world: World) -> None:
    """The pick is one of the grid's margins, validated with margin 0; at margin 0 the policy replays the report
    before its figures count; the per-group differences add up to the whole; shares move by Δ / value; two runs of
    the same sessions pool over seeds and sessions; a report the policy does not replay is refused."""
    run = _gated_run(tmp_path, small_world)
    report = tmp_path / "report"
    evaluate.main(["--rankers", f"run:{run}", "--episodes", "40", "--seeds", "1", "--set", "eval.bootstrap=100",
                   "--no-progress", "--out", str(report)])
    res = gate_calibration.calibrate(run, episodes=20, margins=[-1.0, math.inf], bootstrap=100, report=report,
                                     name=f"run:{run}")
    assert sorted(res["train"]) == ["-1", "0", "off"]
    assert "0" in res["validation"] and res["picked"] in res["validation"]
    h = res["heldout"]
    assert h["sessions"] == 40
    diff, cf = res["_diff"], res["_cf"]
    if res["picked"] == "0":
        assert not diff.any()
    assert h["diff"]["mean"] == pytest.approx(diff.mean())
    groups = h["diff_by_group"]
    n_cf = int(cf.sum())
    if 0 < n_cf < 40:
        whole = (n_cf * groups[gate_calibration.GROUPS[0]]["mean"]
                 + (40 - n_cf) * groups[gate_calibration.GROUPS[1]]["mean"]) / 40
        assert whole == pytest.approx(h["diff"]["mean"])
    assert res["share_before"] is None
    shares = {"all": {"value": {"mean": 0.5}, "share": {"mean": 0.4}}}
    (report / gate_calibration.adaptation_share_file(gate_calibration.COMMON_REFERENCE)).write_text(json.dumps(shares))
    again = gate_calibration.calibrate(run, episodes=20, margins=[-1.0, math.inf], bootstrap=100, report=report,
                                       name=f"run:{run}")
    assert again["picked"] == res["picked"]  # the same sessions, the same pick
    assert again["share_after"] == pytest.approx(0.4 + diff.mean() / 0.5)
    pooled = gate_calibration.pool([again, again])
    assert pooled["all"]["mean"] == pytest.approx(diff.mean())
    assert pooled["share_before"] == pytest.approx(0.4)
    assert "| picked |" in gate_calibration.markdown([again, again], pooled)
    with pytest.raises(ValueError, match="same held-out sessions"):
        gate_calibration.pool([again, {**again, "_keys": again["_keys"][::-1]}])
    # a report whose stored returns are not this policy's
    other = tmp_path / "report-other"
    shutil.copytree(report, other)
    with np.load(other / "returns.npz", allow_pickle=False) as data:
        arrays = {k: np.array(data[k]) for k in data.files}
    key = next(k for k in arrays if k.endswith(f"run:{run}"))
    arrays[key] = arrays[key] + 1.0
    np.savez(other / "returns.npz", **arrays)
    with pytest.raises(ValueError, match="margins must be numbers or"):
        gate_calibration.calibrate(run, episodes=20, margins=[float("nan")], report=report, name=f"run:{run}")
    with pytest.raises(ValueError, match="does not replay its stored held-out returns"):
        gate_calibration.calibrate(run, episodes=20, margins=[math.inf], bootstrap=100, report=other,
                                   name=f"run:{run}")


def test_the_scale_screen_pairs_each_weight_with_the_run_as_trained(tmp_path: Path, small_world: World,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """``--scales``: scale 1 is the run as trained (no difference), scale 0 plays what the gate blind to the type
    (margin ∞) plays on the same training sessions, the groups' differences add up to the whole, and a scale that is
    not a finite number is refused by name."""
    from agents.evaluation import episode_plan, run_episodes
    from envs.factory import make_core as factory_core

    run = _gated_run(tmp_path, small_world)
    res = gate_calibration.scale_screen(run, [3.0, 0.0], episodes=30, batch=10)
    assert list(res["by_scale"]) == ["0", "1", "3"] and res["weight"] == pytest.approx(1.0)
    assert res["sessions"] == 30 and res["seed"] == gate_calibration.SCREEN_SEED
    assert res["by_scale"]["1"]["diff"]["mean"] == 0.0
    cfg = gate_calibration.load_run_config(run)
    core = factory_core(cfg.env, cfg.env.preset, None, small_world, "train", 10)
    policy = gate_calibration.gated_policy(run, core.M)
    policy.type_gate_margin = math.inf
    plan = episode_plan(30, [gate_calibration.SCREEN_SEED], small_world.populations["train"].size)
    blind = run_episodes(core, PPORanker(policy, cfg.env.slate_size), plan).ret
    assert res["by_scale"]["0"]["return"] == pytest.approx(float(blind.mean()), abs=1e-9)
    cf = small_world.populations["train"].rho[plan.users] < gate_calibration.RHO_EDGE
    three = res["by_scale"]["3"]
    parts = [(n, three["diff_by_group"][g]) for n, g in zip((cf.sum(), (~cf).sum()), gate_calibration.GROUPS,
                                                           strict=True) if n]
    assert sum(n * d for n, d in parts) / 30 == pytest.approx(three["diff"]["mean"], abs=1e-9)
    with pytest.raises(ValueError, match="finite numbers"):
        gate_calibration.scale_screen(run, [math.nan], episodes=5)
    out = gate_calibration.main([str(run), "--scales", "2", "--episodes", "12", "--batch", "6"])
    assert list(out["scale_screen"][0]["by_scale"]) == ["1", "2"]
    assert "| trained weight | × |" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        gate_calibration.main([str(run), "--scales", "2,x"])
    assert "--scales: expected comma-separated numbers, got '2,x'" in capsys.readouterr().err
