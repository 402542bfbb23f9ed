"""bench.type_cap and the policy's type_cap: a category cap of one where the type head reads CF-leaning."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch as th
from conftest import make_core, make_run_dir

from agents.ppo_ranker import PPORanker, load_policy, load_run_config
from bench import type_cap
from envs.spaces import CRITIC_STATE_NAMES
from envs.world import World


def _distinct_where_possible(slates: np.ndarray, obs: dict[str, np.ndarray], category: np.ndarray) -> np.ndarray:
    """bool (B,): the row's slate repeats no category, or its candidates hold fewer categories than the slate."""
    k = slates.shape[1]
    picked = category[np.take_along_axis(obs["candidates"], slates, axis=1)]  # (B, K)
    offered = np.array([len(np.unique(category[row])) for row in obs["candidates"]])
    return np.array([len(set(p)) == k for p in picked]) | (offered < k)


def test_the_cap_applies_where_the_head_or_the_hidden_type_says_cf_leaning(tmp_path: Path,
                                                                         small_world: World) -> None:
    """A head forced to read every user CF-leaning makes every slate one item per category; one forced to read every
    user content-leaning leaves the slates as trained; the research row caps exactly the users whose hidden ρ is below
    0.5; a policy without a type head is refused."""
    run = make_run_dir(tmp_path / "a", small_world, steps=64, type_head=True)
    cfg = load_run_config(run)
    obs = make_core(cfg.env, small_world, b=48).observe()
    category = small_world.catalog.category
    k = cfg.env.slate_size
    policy = load_policy(run, device="cpu")
    trained = PPORanker(policy, k).act(obs)
    assert not _distinct_where_possible(trained, obs, category).all()  # the trained policy repeats categories

    def forced(bias: float) -> object:
        out = copy.deepcopy(policy)
        last = out.type_net[-1]
        with th.no_grad():
            last.weight.zero_()
            last.bias.fill_(bias)  # the logit of a content-leaning user
        return out

    cf_read = type_cap.TypeCapRanker(forced(-50.0), k, 0.9).act(obs)
    assert _distinct_where_possible(cf_read, obs, category).all()
    content_policy = forced(50.0)
    np.testing.assert_array_equal(type_cap.TypeCapRanker(content_policy, k, 0.5).act(obs),
                                  PPORanker(content_policy, k).act(obs))
    hidden = type_cap.TypeCapRanker(policy, k, None).act(obs)
    low = obs["critic_state"][:, CRITIC_STATE_NAMES.index("rho")] < 0.5
    assert low.any() and (~low).any()
    np.testing.assert_array_equal(hidden[~low], trained[~low])
    assert _distinct_where_possible(hidden[low], {"candidates": obs["candidates"][low]}, category).all()
    assert type_cap.TypeCapRanker(policy, k, None).reads_hidden_state
    with pytest.raises(ValueError, match="threshold must be in"):
        type_cap.TypeCapRanker(policy, k, 1.0)
    plain = load_policy(make_run_dir(tmp_path / "b", small_world, steps=32), device="cpu")
    with pytest.raises(ValueError, match="needs a type head"):
        type_cap.TypeCapRanker(plain, k, 0.9)


def test_analyse_pairs_each_row_with_the_run_as_trained(tmp_path: Path, small_world: World,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """Every row of every run is a paired difference from that run as trained on the same sessions; over the runs
    each row's difference is the runs' mean; the command refuses bad thresholds by name."""
    runs = [make_run_dir(tmp_path / name, small_world, steps=64, type_head=True) for name in ("a", "b")]
    res = type_cap.main([*map(str, runs), "--thresholds", "0.6", "--episodes", "40", "--eval-seed", "3",
                         "--bootstrap", "100"])
    assert res["sessions"] == 40 and 0 < res["cf_sessions"] < 40
    for rows in res["runs"].values():
        assert rows["as trained"]["diff"]["mean"] == 0.0
        assert list(rows)[1:] == ["cap where the head reads p > 0.6", "cap by the hidden type (research)"]
        for row in list(rows.values())[1:]:
            assert row["diff"]["mean"] == pytest.approx(row["return"] - rows["as trained"]["return"], abs=1e-9)
        research = rows["cap by the hidden type (research)"]
        assert research["diff_content"]["mean"] == 0.0  # the content-leaning users are never capped
    for name, row in res["over_runs"].items():
        assert row["diff"]["mean"] == pytest.approx(
            np.mean([res["runs"][str(r)][name]["diff"]["mean"] for r in runs]), abs=1e-12)
    assert "| over the runs" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        type_cap.main([str(runs[0]), "--thresholds", "1.5"])
    assert "--thresholds" in capsys.readouterr().err


def test_the_policy_option_caps_where_its_head_reads_cf_leaning_saves_and_exports(tmp_path: Path,
                                                                                 small_world: World) -> None:
    """``type_cap`` in the policy: one item per category on the rows its head reads CF-leaning above the threshold
    (the bench's ranker gives the same slates), nothing changed where it reads content-leaning; the setting travels in
    policy.json and the exported graph keeps parity with it; the constructor and the config name what it needs."""
    from agents.export import export_run
    from agents.policies import SlatePolicy
    from agents.ppo_ranker import save_policy
    from configs.loader import ConfigError, resolve_config
    from envs.spaces import action_space, observation_space

    run = make_run_dir(tmp_path / "a", small_world, steps=64, type_head=True)
    cfg = load_run_config(run)
    obs = make_core(cfg.env, small_world, b=48).observe()
    category, k = small_world.catalog.category, cfg.env.slate_size
    policy = load_policy(run, device="cpu")
    last = policy.type_net[-1]
    with th.no_grad():
        last.weight.zero_()
        last.bias.fill_(-50.0)  # every user read CF-leaning
    free = PPORanker(policy, k).act(obs)
    policy.type_cap = 0.9
    capped = PPORanker(policy, k).act(obs)
    assert _distinct_where_possible(capped, obs, category).all() and not np.array_equal(capped, free)
    np.testing.assert_array_equal(capped, type_cap.TypeCapRanker(policy, k, 0.9).act(obs))
    assert bool((policy.repulsion(obs) >= type_cap.CAP_BETA).all())
    with th.no_grad():
        last.bias.fill_(50.0)  # every user read content-leaning: the cap never applies
    content = PPORanker(policy, k).act(obs)
    policy.type_cap = None
    np.testing.assert_array_equal(content, PPORanker(policy, k).act(obs))

    policy.type_cap = 0.9
    with th.no_grad():
        last.bias.fill_(-50.0)
    save_policy(policy, run)
    assert load_policy(run, device="cpu").type_cap == 0.9
    dest = export_run(run, "onnx", world=small_world, parity_envs=4, parity_steps=2)
    parity = json.loads((dest / "manifest.json").read_text(encoding="utf-8"))["parity"]
    assert parity["slates_equal_up_to_ties"] == parity["observations"] == 8

    space, actions = observation_space(50, 8, 16, with_critic_state=True), action_space(8, 3)
    cats = np.arange(50) % 5
    with pytest.raises(ValueError, match="needs a type head"):
        SlatePolicy(space, actions, lambda _: 1e-3, item_category=cats, type_cap=0.9)
    with pytest.raises(ValueError, match="type_cap must be in"):
        SlatePolicy(space, actions, lambda _: 1e-3, item_category=cats, type_head_weight=1.0, type_cap=1.5)
    assert SlatePolicy(space, actions, lambda _: 1e-3, item_category=cats, type_head_weight=1.0,
                       type_cap=0.8).type_cap == 0.8
    with pytest.raises(ConfigError, match="type_cap"):
        resolve_config(None, "small", ["train.policy.type_cap=0.9"])
    with pytest.raises(ConfigError, match="type_cap"):
        resolve_config(None, "small", ["env.obs_critic_state=true", "train.policy.type_head_weight=0.1",
                                       "train.policy.type_cap=1.0"])
    ok = resolve_config(None, "small", ["env.obs_critic_state=true", "train.policy.type_head_weight=0.1",
                                        "train.policy.type_cap=0.9"])
    assert ok.train.policy.type_cap == 0.9
