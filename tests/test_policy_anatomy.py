"""``bench.policy_anatomy`` and ``SlatePolicy.with_components_at_start``: a trained policy's margin credited to
its learned components."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch as th

from agents.policies import LEARNED_COMPONENTS, SlatePolicy
from bench.policy_anatomy import label, main, pool, shapley, subsets
from envs.spaces import F_CAT_EXPOSURE, F_ITEM_SEEN, FEATURE_NAMES, action_space, observation_space

N_ITEMS, N_CAND, DIM, K = 40, 8, 8, 3


def test_shapley_values_split_the_whole_gain_and_share_an_interaction() -> None:
    """Efficiency (the values sum to v(all) − v(∅), per element of array payoffs), a gain that needs two players is
    split between them, and a player that adds nothing gets nothing."""
    names = ("a", "b", "c")
    rng = np.random.default_rng(0)
    additive = {s: sum({"a": 1.0, "b": 2.0, "c": 0.0}[x] for x in s) for s in subsets(names)}
    assert {k: float(v) for k, v in shapley(additive, names).items()} == pytest.approx({"a": 1.0, "b": 2.0, "c": 0.0})
    both = {s: np.array([3.0 if {"a", "b"} <= s else 0.0, 1.0 if "c" in s else 0.0]) for s in subsets(names)}
    phi = shapley(both, names)
    np.testing.assert_allclose(phi["a"], [1.5, 0.0])
    np.testing.assert_allclose(phi["b"], [1.5, 0.0])
    np.testing.assert_allclose(phi["c"], [0.0, 1.0])
    game = {s: rng.normal(size=4) for s in subsets(names)}
    np.testing.assert_allclose(sum(shapley(game, names).values()), game[frozenset(names)] - game[frozenset()])
    assert subsets(names)[0] == frozenset() and subsets(names)[-1] == frozenset(names) and len(subsets(names)) == 8
    assert label(frozenset()) == "start" and label(frozenset(LEARNED_COMPONENTS)) == "ppo"
    assert label(frozenset({"temperature", "gate"})) == "gate+temperature"


def _policy() -> SlatePolicy:
    space = observation_space(N_ITEMS, N_CAND, DIM)
    weights = [0.0] * len(FEATURE_NAMES)
    weights[F_CAT_EXPOSURE], weights[F_ITEM_SEEN] = -2.0, -0.5
    return SlatePolicy(space, action_space(N_CAND, K), lambda _: 3e-4, hidden=16, candidate_hidden=8,
                       item_category=np.arange(N_ITEMS) % 5, base="diverse", base_weights=weights, category_cap=2,
                       gate="standardised", gate_context=True, gate_lean=0.4, init_alpha=0.7)


def _obs(seed: int = 0, batch: int = 6) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feats = rng.uniform(0.0, 1.0, (batch, N_CAND, len(FEATURE_NAMES))).astype(np.float32)
    user = rng.normal(size=(batch, DIM))
    space = observation_space(N_ITEMS, N_CAND, DIM)
    context = rng.uniform(0.0, 1.0, (batch, space["context"].shape[0])).astype(np.float32)
    return {"user": (user / np.linalg.norm(user, axis=1, keepdims=True)).astype(np.float32),
            "candidates": np.stack([rng.choice(N_ITEMS, N_CAND, replace=False) for _ in range(batch)]),
            "features": feats, "context": context}


def test_components_go_back_to_their_start_values_one_by_one_and_the_policy_is_untouched() -> None:
    """Trained-like weights (every parameter moved) with all four components at start score as the untrained policy
    with its residual at 0: the same α, the same repulsion, no residual part, the same logits; a single component at
    start changes only its own part; a gate held constant has that learned logit in every state and keeps the rest; the
    policy read at one state scores every request as the trained policy scores that state's; the trained policy itself
    is not changed; an unknown name is refused."""
    th.manual_seed(0)
    start = _policy().eval()
    trained = copy.deepcopy(start)
    with th.no_grad():
        for p in trained.parameters():
            p.add_(0.3 * th.randn_like(p))
    before = {k: v.clone() for k, v in trained.state_dict().items()}
    obs = _obs()
    at_start = trained.with_components_at_start(LEARNED_COMPONENTS)
    with th.no_grad():
        ref = start.score_parts(obs)
        got = at_start.score_parts(obs)
        th.testing.assert_close(at_start.alpha(obs), start.alpha(obs))
        th.testing.assert_close(at_start.repulsion(obs), start.repulsion(obs))
        assert th.all(got["residual"] == 0)
        th.testing.assert_close(at_start.candidate_logits(obs), ref["llm"] + ref["cf"] + ref["diversity"] + got["clip"])
        assert not th.allclose(trained.alpha(obs), start.alpha(obs))  # the test moved what it resets

        gate_only = trained.with_components_at_start(["gate"])
        th.testing.assert_close(gate_only.alpha(obs), start.alpha(obs))
        th.testing.assert_close(gate_only.score_parts(obs)["residual"], trained.score_parts(obs)["residual"])
        th.testing.assert_close(gate_only.repulsion(obs), trained.repulsion(obs))
        residual_only = trained.with_components_at_start(["residual"])
        assert th.all(residual_only.score_parts(obs)["residual"] == 0)
        th.testing.assert_close(residual_only.alpha(obs), trained.alpha(obs))
        same = trained.with_components_at_start([])
        th.testing.assert_close(same.candidate_logits(obs), trained.candidate_logits(obs))
        shift = trained.gate_shift(obs)
        assert shift.std() > 0 and th.all(start.gate_shift(obs) == 0)  # moved weights: α follows the state
        constant = trained.with_constant_gate(0.7)
        th.testing.assert_close(constant.gate_shift(obs), th.full_like(shift, 0.7))
        th.testing.assert_close(constant.score_parts(obs)["residual"], trained.score_parts(obs)["residual"])
        state = trained.state_embedding(obs)  # (B, H)
        static = trained.with_constant_state(state[2], float(shift[2]))  # every request read as request 2
        logits, want = static.candidate_logits(obs), trained.candidate_logits(obs)
        th.testing.assert_close(logits[2], want[2])
        assert not th.allclose(logits[0], want[0])
        th.testing.assert_close(static.repulsion(obs), trained.repulsion(obs)[2].expand(len(state)))
        th.testing.assert_close(static.gate_shift(obs), th.full_like(shift, float(shift[2])))
    assert all(th.equal(before[k], v) for k, v in trained.state_dict().items())
    with pytest.raises(ValueError, match=r"unknown policy components.*'bias'"):
        trained.with_components_at_start(["gate", "bias"])


def test_the_command_credits_a_runs_margin_on_shared_sessions(tmp_path: Path, run_dir: Path) -> None:
    """End to end on a tiny run: 16 variants on the same sessions; the full variant is the run's own policy (it
    returns exactly what the run played as a reference returns); the Shapley values of return and of length each sum
    to the margin over the start; the JSON is written and pools."""
    out = tmp_path / "anatomy.json"
    got = main([str(run_dir), "--episodes", "24", "--batch", "12", "--boot", "40",
                "--references", f"greedy-llm,run:{run_dir}", "--json", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(got))
    names = list(got["variants"])
    assert len(names) == 16 and names[0] == "start" and names[-1] == "ppo"
    ppo, start = got["variants"]["ppo"], got["variants"]["start"]
    assert ppo["return"]["mean"] == pytest.approx(got["references"][f"run:{run_dir}"]["return"]["mean"], abs=1e-9)
    margin = ppo["return"]["mean"] - start["return"]["mean"]
    assert got["margin"]["mean"] == pytest.approx(margin, abs=1e-9)
    assert sum(v["mean"] for v in got["shapley_return"].values()) == pytest.approx(margin, abs=1e-9)
    assert sum(v["mean"] for v in got["shapley_length"].values()) == pytest.approx(
        ppo["length"] - start["length"], abs=1e-9)
    assert got["gate_state_dependence"]["mean"] == pytest.approx(
        ppo["return"]["mean"] - got["constant_gate"]["mean"], abs=1e-9) and got["gate_shift"]["sd"] >= 0
    assert got["shifted_start − start"]["ci95"][0] <= got["shifted_start − start"]["mean"]
    assert got["gate_shift"]["requests"] == round(ppo["length"] * got["episodes"])  # live rows only
    assert got["state_dependence"]["mean"] == pytest.approx(ppo["return"]["mean"] - got["constant_state"]["mean"],
                                                            abs=1e-9)
    pooled = pool([got, got])
    assert pooled["n"] == 2 and pooled["margin"]["mean"] == pytest.approx(margin, abs=1e-9)
    assert pooled["shapley_return"]["gate"]["per_file"][0] == pooled["shapley_return"]["gate"]["per_file"][1]
    assert main(["--pool", str(out), str(out)])["pooled"]["n"] == 2
    png = tmp_path / "anatomy.png"
    groups = main(["--group", "a", str(out), str(out), "--group", "b", str(out), "--out", str(png)])["groups"]
    assert [groups[g]["n"] for g in ("a", "b")] == [2, 1] and png.read_bytes()[:4] == b"\x89PNG"


def test_the_command_refuses_bad_arguments_by_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """No run, a folder that is not a run, too few sessions, a missing output folder, an unreadable pool file, a group
    without files and a figure without groups are refused by name before any world is loaded."""
    for argv, why in (([], "run directory"),
                      ([str(tmp_path)], "config.yaml"),
                      ([str(tmp_path), "--episodes", "1"], "--episodes"),
                      ([str(tmp_path), "--json", str(tmp_path / "no" / "x.json")], "--json"),
                      (["--pool", str(tmp_path / "missing.json")], "--pool"),
                      (["--group", "a", str(tmp_path / "missing.json")], "--group a"),
                      (["--group", "a"], "at least one summary"),
                      (["--pool", str(tmp_path / "x.json"), "--out", str(tmp_path / "x.png")], "--out")):
        with pytest.raises(SystemExit):
            main(argv)
        assert why in capsys.readouterr().err
