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
