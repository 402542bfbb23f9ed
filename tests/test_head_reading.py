"""bench.head_reading: a trained run's type head scored request by request on its own held-out sessions."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from conftest import make_run_dir

import evaluate
from agents.evaluation import episode_plan
from agents.ppo_ranker import load_policy, save_policy
from bench import head_reading
from envs.world import World


def _evaluated(run: Path, report: Path) -> None:
    evaluate.main(["--rankers", f"run:{run}", "--episodes", "40", "--seeds", "1", "--set", "eval.bootstrap=100",
                   "--no-progress", "--out", str(report)])


def test_a_head_that_reads_every_user_as_content_leaning_scores_the_content_share(tmp_path: Path,
                                                                                small_world: World) -> None:
    """A head whose logit is a large constant reads every user as content-leaning: its share right at each request is
    the share of content-leaning users among the sessions that reach it (at the first, all 40 sessions); with its
    gate weight at 0 the slates read the head only through the state net; the readings fall
    with the requests as sessions end; a report the policy does not replay and a run without a head are refused."""
    run = make_run_dir(tmp_path, small_world, steps=64, type_head=True)
    policy = load_policy(run, device="cpu")
    assert policy.type_net is not None and policy.type_gate is not None
    policy.type_gate.data.fill_(0.0)  # the slates do not read the head
    last = policy.type_net[-1]
    last.weight.data.zero_()
    last.bias.data.fill_(50.0)
    save_policy(policy, run)
    report = tmp_path / "report"
    _evaluated(run, report)
    res = head_reading.read_run(run, sessions=40, requests=4, report=report, name=f"run:{run}")
    rows = res["by_request"]
    assert res["sessions"] == 40 and res["type_head_input"] == "state" and rows[0]["readings"] == 40
    users = episode_plan(40, [0], small_world.populations["heldout"].size).users
    content = small_world.populations["heldout"].rho[users] >= 0.5
    assert rows[0]["right"] == pytest.approx(content.mean())
    assert all(a["readings"] >= b["readings"] for a, b in itertools.pairwise(rows))
    for r in rows:
        assert 0.0 <= r["ci95"][0] <= r["right"] <= r["ci95"][1] <= 1.0
    assert "| " + run.name + " | state |" in head_reading.markdown([res])
    other = make_run_dir(tmp_path / "other", small_world, steps=64, type_head=True, pool_spread=True,
                         type_head_input="request")
    with pytest.raises(ValueError, match="does not replay"):
        head_reading.read_run(other, sessions=40, report=report, name=f"run:{run}")
    plain = make_run_dir(tmp_path / "plain", small_world, steps=64)
    with pytest.raises(ValueError, match="no type head"):
        head_reading.read_run(plain, sessions=40, report=report, name=f"run:{run}")
    with pytest.raises(ValueError, match="sessions must be"):
        head_reading.read_run(run, sessions=0, report=report, name=f"run:{run}")
    assert np.isfinite([r["right"] for r in rows]).all()


@pytest.mark.parametrize("bias", [50.0, -50.0])
def test_a_head_that_reads_one_type_fires_the_cap_on_all_or_none(tmp_path: Path, small_world: World,
                                                                  bias: float) -> None:
    """At a threshold the bench gives each hidden type's share read as CF-leaning above it: a head whose logit is a
    large positive constant reads every user as content-leaning, so no session of either type is above p = 0.9; a
    large negative one reads every user as CF-leaning, so every session of both types is; the two types' readings add
    up to the request's, the markdown gains the second table, and a threshold outside (0, 1) is refused."""
    run = make_run_dir(tmp_path, small_world, steps=64, type_head=True)
    policy = load_policy(run, device="cpu")
    assert policy.type_gate is not None and policy.type_cap is None
    policy.type_gate.data.fill_(0.0)
    last = policy.type_net[-1]
    last.weight.data.zero_()
    last.bias.data.fill_(bias)
    save_policy(policy, run)
    report = tmp_path / "report"
    _evaluated(run, report)
    plain = head_reading.read_run(run, sessions=40, requests=3, report=report, name=f"run:{run}")
    assert plain["threshold"] is None and "cf_above" not in plain["by_request"][0]
    assert "read CF-leaning above p" not in head_reading.markdown([plain])
    res = head_reading.read_run(run, sessions=40, requests=3, report=report, name=f"run:{run}", threshold=0.9)
    assert res["threshold"] == 0.9
    users = episode_plan(40, [0], small_world.populations["heldout"].size).users
    cf = small_world.populations["heldout"].rho[users] < 0.5
    first = res["by_request"][0]
    assert (first["cf_readings"], first["content_readings"]) == (int(cf.sum()), int((~cf).sum()))
    for row in res["by_request"]:
        assert row["cf_readings"] + row["content_readings"] == row["readings"]
        for group in ("cf", "content"):
            if row[f"{group}_readings"]:
                assert row[f"{group}_above"] == (1.0 if bias < 0 else 0.0)
                lo, hi = row[f"{group}_above_ci95"]
                assert lo == hi == row[f"{group}_above"]
    assert [r["right"] for r in res["by_request"]] == [r["right"] for r in plain["by_request"]]
    assert "| " + run.name + " (p 0.9) | CF-leaning (the cap's reach) |" in head_reading.markdown([res])
    with pytest.raises(ValueError, match="threshold must be in"):
        head_reading.read_run(run, sessions=40, report=report, name=f"run:{run}", threshold=1.0)


def test_at_one_half_the_cap_reads_the_head_exactly_as_its_right_share(tmp_path: Path, small_world: World) -> None:
    """At p = 0.5 a reading above p is a CF-leaning reading, so an untrained head's share right is the CF-leaning
    users' share above p and the content-leaning users' share not above it, weighted by their readings."""
    run = make_run_dir(tmp_path, small_world, steps=64, type_head=True)
    report = tmp_path / "report"
    _evaluated(run, report)
    res = head_reading.read_run(run, sessions=40, requests=4, report=report, name=f"run:{run}", threshold=0.5)
    for row in res["by_request"]:
        ncf, nco = row["cf_readings"], row["content_readings"]
        right = (ncf * (row["cf_above"] if ncf else 0.0) + nco * (1.0 - row["content_above"] if nco else 0.0))
        assert right / row["readings"] == pytest.approx(row["right"])


def test_a_type_that_no_session_of_reaches_a_request_shows_a_dash_not_nan() -> None:
    """A request that no session of one hidden type reaches has no share for that type: the table shows "–"."""
    row = {"request": 1, "readings": 3, "right": 2 / 3, "ci95": [0.0, 1.0], "cf_readings": 3, "cf_above": 1 / 3,
           "cf_above_ci95": [0.0, 1.0], "content_readings": 0, "content_above": float("nan"),
           "content_above_ci95": [float("nan"), float("nan")]}
    table = head_reading.markdown([{"run": "runs/r", "sessions": 3, "type_head_input": "request", "threshold": 0.9,
                                    "by_request": [row]}])
    assert "nan" not in table
    assert "| r (p 0.9) | CF-leaning (the cap's reach) | 33.3% |" in table
    assert "| r (p 0.9) | content-leaning (misfires) | – |" in table
