"""``bench.policy_readout`` and ``SlatePolicy.residual_of``: what a trained policy's residual and gate respond to."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch as th

from agents.policies import SlatePolicy
from bench.policy_readout import centred_fit, feature_grid, main, readout
from envs.spaces import CONTEXT_NAMES, F_CAT_EXPOSURE, F_POP, FEATURE_NAMES, action_space, observation_space

N_ITEMS, N_CAND, DIM, K = 40, 8, 8, 3


def test_the_centred_fit_reads_within_group_weights_and_the_grid_spans_the_values() -> None:
    """Per-group offsets do not move the weights (only standing within a group counts), an exact relation gives R² 1,
    a constant column gets weight 0; a feature with few values is gridded on them, one with many on percentiles."""
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(50), 8)
    x = rng.normal(size=(400, 3))
    x[:, 2] = 1.0
    y = 0.7 * x[:, 0] - 0.2 * x[:, 1] + rng.normal(size=50)[groups] * 5  # a large offset per group
    w, r2 = centred_fit(y, x, groups)
    np.testing.assert_allclose(w, [0.7, -0.2, 0.0], atol=1e-9)
    assert r2 == pytest.approx(1.0)
    _, r2_noise = centred_fit(y + rng.normal(size=400), x, groups)
    assert 0.0 < r2_noise < 1.0
    np.testing.assert_array_equal(feature_grid(np.array([0.0, 2.0, 1.0, 2.0])), [0.0, 1.0, 2.0])
    grid = feature_grid(rng.normal(size=5000))
    assert len(grid) > 10 and np.all(np.diff(grid) > 0) and -2.5 < grid[0] < -1.5


def _policy() -> SlatePolicy:
    space = observation_space(N_ITEMS, N_CAND, DIM)
    weights = [0.0] * len(FEATURE_NAMES)
    weights[F_CAT_EXPOSURE] = -2.0
    return SlatePolicy(space, action_space(N_CAND, K), lambda _: 3e-4, hidden=16, candidate_hidden=8,
                       item_category=np.arange(N_ITEMS) % 5, base="diverse", base_weights=weights, category_cap=2,
                       gate="standardised", gate_context=True)


def _trained_like(seed: int) -> SlatePolicy:
    """:func:`_policy` with every parameter moved by noise (seeded), as training moves them; in eval mode."""
    th.manual_seed(seed)
    policy = _policy().eval()
    with th.no_grad():
        for p in policy.parameters():
            p.add_(0.2 * th.randn_like(p))
    return policy


def _obs(batch: int = 6, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    user = rng.normal(size=(batch, DIM))
    return {"user": (user / np.linalg.norm(user, axis=1, keepdims=True)).astype(np.float32),
            "candidates": np.stack([rng.choice(N_ITEMS, N_CAND, replace=False) for _ in range(batch)]),
            "features": rng.uniform(0.0, 1.0, (batch, N_CAND, len(FEATURE_NAMES))).astype(np.float32),
            "context": rng.uniform(0.0, 1.0, (batch, len(CONTEXT_NAMES))).astype(np.float32)}


def test_residual_of_is_the_residual_part_and_a_linear_residual_reads_back_exactly() -> None:
    """``residual_of`` at each request's own state is ``score_parts``' residual; a policy whose residual is a known
    linear function of the features reads back that function over the learned 1/τ (partial dependence slopes, linear
    weights, R² 1), and a gate that reads only the context reads back with R² 1."""
    policy = _trained_like(0)
    obs = _obs()
    with th.no_grad():
        state = policy.state_embedding(obs)
        parts = policy.score_parts(obs)["residual"]
        feats = th.as_tensor(obs["features"])
        for b in range(len(state)):
            th.testing.assert_close(policy.residual_of(feats[b], state[b].expand(N_CAND, -1)), parts[b])

        policy.residual_head.weight.zero_()
        policy.residual_head.bias.zero_()
        w = th.zeros(len(FEATURE_NAMES))
        w[F_POP], w[F_CAT_EXPOSURE] = 0.8, -0.3
        policy.feature_linear.weight.copy_(w.unsqueeze(0))
        policy.alpha_head.weight.zero_()  # the gate: its context path only
        policy.log_inv_temperature.fill_(np.log(2.0))
        q = 40
        many = {k: np.concatenate([_obs(8, s)[k] for s in range(q // 8)]) for k in obs}
        out = readout(policy, many["features"], policy.state_embedding(many).numpy(), many["context"],
                      policy.gate_shift(many).numpy(), rows=200, seed=0)
    feats_out = out["residual"]["features"]
    assert out["inv_temperature"] == pytest.approx(2.0) and out["residual"]["linear_r2"] == pytest.approx(1.0)
    for j, name in enumerate(FEATURE_NAMES):
        v = feats_out[name]
        assert v["weight"] == pytest.approx(float(w[j]) / 2.0, abs=1e-5)
        slope = np.diff(v["pd"]) / np.diff(v["grid"])
        np.testing.assert_allclose(slope, float(w[j]) / 2.0, atol=1e-4)
    assert feats_out["cat_exposure"]["rule_weight"] == -2.0
    assert out["gate"]["context_r2"] == pytest.approx(1.0)


def test_a_linear_residual_scores_as_its_weights_in_units_of_the_base() -> None:
    """``with_linear_residual(w)``: the residual part of every candidate is ``w·f / τ`` (so ``w·f`` in the base's
    units), the rest of the logit is the policy's own; a wrong number of weights is refused."""
    policy = _trained_like(1)
    obs = _obs()
    w = np.linspace(-0.5, 0.5, len(FEATURE_NAMES))
    linear = policy.with_linear_residual(w)
    with th.no_grad():
        got, own = linear.score_parts(obs), policy.score_parts(obs)
        inv_t = float(policy.log_inv_temperature.exp())
        want = th.as_tensor(obs["features"]) @ th.as_tensor(w, dtype=th.float32) * inv_t
        th.testing.assert_close(got["residual"], want)
        for part in ("llm", "cf", "diversity"):
            th.testing.assert_close(got[part], own[part])
    with pytest.raises(ValueError, match="one per feature"):
        policy.with_linear_residual([0.1, 0.2])


def test_residual_of_refuses_a_policy_that_reads_more_than_the_feature_row() -> None:
    """A policy over item embeddings scores candidates from more than their feature row: refused by name."""
    space = observation_space(N_ITEMS, N_CAND, DIM, with_item_embeddings=True)
    policy = SlatePolicy(space, action_space(N_CAND, K), lambda _: 3e-4, hidden=16)
    with pytest.raises(ValueError, match="feature row alone"):
        policy.residual_of(th.zeros(3, len(FEATURE_NAMES)), th.zeros(3, 16))


def test_the_command_reads_a_run_on_live_requests_only(tmp_path: Path, run_dir: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """End to end on a tiny run: the record holds exactly the requests of the sessions played (not the rows idling
    after their session ended), the JSON and the figure are written, ``--evaluate`` plays the variants on other
    sessions and a rule read back from a readout's JSON plays as the run's own; bad arguments (a missing preset folder,
    a file that is not a readout among them) are refused by name."""
    out, png = tmp_path / "readout.json", tmp_path / "readout.png"
    got = main([str(run_dir), "--episodes", "12", "--batch", "5", "--rows", "50", "--json", str(out),
                "--out", str(png), "--evaluate", "10"])
    assert got["requests"] == got["session_requests"] > 0 and got["rows"] == 50
    d = got["distillation"]
    assert d["episodes"] == 10
    assert set(d["returns"]) == {"start", "the rule", "static", "static, linear residual", "ppo"}
    assert d["pairs"]["ppo − start"]["mean"] == pytest.approx(d["returns"]["ppo"] - d["returns"]["start"], abs=1e-9)
    again = main([str(run_dir), "--episodes", "12", "--batch", "5", "--rows", "50", "--evaluate", "10",
                  "--rule-from", str(out)])["distillation"]["returns"]  # its own rule, read back from the JSON
    assert again[f"the rule of {run_dir}"] == pytest.approx(again["the rule"], abs=1e-12)
    assert json.loads(out.read_text()) == json.loads(json.dumps(got)) and png.read_bytes()[:4] == b"\x89PNG"
    assert set(got["residual"]["features"]) == set(FEATURE_NAMES)
    for argv, why in (([str(tmp_path)], "config.yaml"), ([str(run_dir), "--rows", "0"], "--rows"),
                      ([str(run_dir), "--preset", str(tmp_path / "no-preset")], "no-preset"),
                      ([str(run_dir), "--out", str(tmp_path / "no" / "x.png")], "--out"),
                      ([str(run_dir), "--evaluate", "-1"], "--evaluate"),
                      ([str(run_dir), "--rule-from", str(out)], "goes with --evaluate"),
                      ([str(run_dir), "--evaluate", "5", "--rule-from", str(png)], "not a policy_readout summary")):
        with pytest.raises(SystemExit):
            main(argv)
        assert why in capsys.readouterr().err
