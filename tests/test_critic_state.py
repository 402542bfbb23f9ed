"""``env.obs_critic_state``: the user's hidden state for the critic only (an asymmetric actor-critic).

The core puts the row's hidden ρ, price sensitivity, budget left and fatigue in ``obs["critic_state"]`` without
drawing a random number; the policy's critic reads it and its actor does not (slates, α and the repulsion are the
same whatever the column holds), so a trained policy plays, evaluates and exports without it."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from conftest import greedy, make_core, make_run_dir, tiny_args

from agents.policies import SlatePolicy
from configs.schema import EnvConfig
from envs.spaces import (
    C_CLICKED_CF,
    C_CLICKED_LLM,
    CONTEXT_NAMES,
    CRITIC_STATE_NAMES,
    F_CAT_EXPOSURE,
    F_CF,
    F_ITEM_SEEN,
    F_LLM,
    FEATURE_NAMES,
    action_space,
    observation_space,
)
from envs.world import World

N_ITEMS, N_CAND, DIM, K = 50, 8, 16, 3


def _want(core, rows: np.ndarray) -> np.ndarray:  # type: ignore[no-untyped-def]
    """The hidden state of ``rows`` read straight off the core's arrays: float64 (r, P)."""
    fatigue = core.fatigue[rows].astype(np.float64)
    return np.stack([core.pop.rho[core.user[rows]], np.log(core.price_sens[rows]),
                     core.budget[rows] / core.cfg.user_model.budget_mean, fatigue.mean(axis=1),
                     fatigue.max(axis=1)], axis=1)


def test_critic_state_is_the_rows_hidden_user_state_and_draws_nothing(small_cfg: EnvConfig,
                                                                      small_world: World) -> None:
    """Each row's ``critic_state`` is its user's ρ, log price sensitivity, the budget left over its mean, and the
    mean and max of the category fatigue, after every step and after a partial re-observation of restarted rows;
    a request without a click spends budget and shown categories tire; everything else (observation and sessions) is
    that of a core without the column."""
    on = dataclasses.replace(small_cfg, obs_critic_state=True)
    core, plain = make_core(on, small_world, b=32), make_core(small_cfg, small_world, b=32)
    obs, ref = core.observe(), plain.observe()
    assert "critic_state" not in ref and obs["critic_state"].shape == (32, len(CRITIC_STATE_NAMES))
    space = observation_space(core.M, core.N, core.D, with_critic_state=True)
    first_budget = obs["critic_state"][:, 2].copy()
    assert (obs["critic_state"][:, 3:] == 0).all() and (first_budget > 0).all()  # nothing shown yet: no fatigue
    restarted = 0
    for step in range(12):
        np.testing.assert_array_equal(obs["features"], ref["features"])
        np.testing.assert_allclose(obs["critic_state"], _want(core, np.arange(32)), rtol=1e-5, atol=1e-6)
        assert space.contains({k: v[0] for k, v in obs.items()})
        slate = greedy(obs, core.K)
        res, ref_res = core.step(slate), plain.step(slate)
        np.testing.assert_array_equal(res.click_rank, ref_res.click_rank)
        if step == 0:  # one request later, before any restart: without a click the budget fell; fatigue built up
            after = core.observe()["critic_state"]
            skipped = res.click_rank < 0
            assert skipped.any() and (after[skipped, 2] < first_budget[skipped]).all() and (after[:, 4] > 0).any()
        done = np.flatnonzero(res.terminated | res.truncated)
        restarted += done.size
        for c in (core, plain):
            c.reset_rows(done, done.astype(np.uint64) + np.uint64(5000))
        if done.size:  # the restarted rows alone: their new users' state, fatigue back to 0
            part = core.observe(done)["critic_state"][done]
            np.testing.assert_allclose(part, _want(core, done), rtol=1e-5, atol=1e-6)
            assert (part[:, 3:] == 0).all()
        obs, ref = core.observe(), plain.observe()
    assert restarted > 0


def _fake_obs(space, batch: int, seed: int) -> dict[str, np.ndarray]:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(seed)
    space.seed(seed)
    obs = {k: np.stack([space[k].sample() for _ in range(batch)]) for k in space.spaces}
    feats = rng.uniform(0.0, 1.0, (batch, N_CAND, len(FEATURE_NAMES))).astype(np.float32)
    feats[..., F_LLM] = rng.uniform(-1.0, 1.0, (batch, N_CAND))
    feats[..., F_CF] = rng.normal(0.0, 1.0, (batch, N_CAND))
    obs["features"] = feats
    user = rng.normal(size=obs["user"].shape)
    obs["user"] = (user / np.linalg.norm(user, axis=-1, keepdims=True)).astype(np.float32)
    obs["context"] = rng.uniform(0.0, 1.0, obs["context"].shape).astype(np.float32)
    obs["critic_state"] = rng.normal(size=(batch, len(CRITIC_STATE_NAMES))).astype(np.float32)
    return obs


def test_the_critic_reads_critic_state_and_the_actor_does_not() -> None:
    """Changing ``critic_state`` changes the values and gradients reach the critic's weights on it; the logits, α,
    the repulsion and a sampled slate stay the same, and the actor needs no such column; values without it are
    refused by name; a critic that shares the actor's state net cannot take it; a save / load keeps the values."""
    from agents.ppo_ranker import build_policy, policy_settings

    space = observation_space(N_ITEMS, N_CAND, DIM, with_critic_state=True)
    th.manual_seed(0)
    policy = SlatePolicy(space, action_space(N_CAND, K), lambda _: 1e-3, hidden=16,
                         item_category=np.arange(N_ITEMS) % 3, residual_init_scale=0.5)
    assert policy.reads_critic_state
    obs = _fake_obs(space, 16, seed=1)
    moved = {**obs, "critic_state": obs["critic_state"] + 3.0}
    blind = {k: v for k, v in obs.items() if k != "critic_state"}
    with th.no_grad():
        v0, v1 = policy.predict_values(obs), policy.predict_values(moved)
        assert (v0 - v1).abs().max() > 1e-3
        for fn in (policy.candidate_logits, policy.alpha, policy.repulsion):
            np.testing.assert_array_equal(fn(obs).numpy(), fn(moved).numpy())
            np.testing.assert_array_equal(fn(obs).numpy(), fn(blind).numpy())
        policy.set_generator(th.Generator().manual_seed(3))
        a0 = policy.get_distribution(obs).get_actions()
        policy.set_generator(th.Generator().manual_seed(3))
        np.testing.assert_array_equal(a0.numpy(), policy.get_distribution(blind).get_actions().numpy())
    values, _, _ = policy.evaluate_actions(policy.obs_to_tensor(obs)[0], a0)  # type: ignore[arg-type]
    values.sum().backward()
    first = policy.value_trunk[0]
    assert first.weight.grad is not None and first.weight.grad[:, -len(CRITIC_STATE_NAMES):].abs().sum() > 0
    with pytest.raises(ValueError, match=r"env\.obs_critic_state=true"):
        policy.predict_values(blind)
    with pytest.raises(ValueError, match="share_state_net"):
        SlatePolicy(space, action_space(N_CAND, K), lambda _: 1e-3, hidden=16, share_state_net=True)
    loaded = build_policy(policy_settings(policy), dict(policy.state_dict()))
    with th.no_grad():
        np.testing.assert_allclose(loaded.predict_values(obs).numpy(), v0.numpy(), rtol=1e-6, atol=1e-6)


def test_the_actor_hidden_state_ablation_moves_the_slates_and_is_refused_where_unobservable() -> None:
    """``actor_hidden_state`` (a research ablation): the actor's logits and the values change with ``critic_state``,
    gradients of the logits reach the state net's weights on it, the critic reads it once (its trunk's input is the
    actor's state input), play without the column is refused by name, the config refuses it without
    ``env.obs_critic_state``, and a save / load keeps the logits."""
    from agents.ppo_ranker import build_policy, policy_settings
    from configs.schema import Config, FieldError

    space = observation_space(N_ITEMS, N_CAND, DIM, with_critic_state=True)
    th.manual_seed(0)
    policy = SlatePolicy(space, action_space(N_CAND, K), lambda _: 1e-3, hidden=16,
                         item_category=np.arange(N_ITEMS) % 3, residual_init_scale=0.5, actor_hidden_state=True)
    plain = SlatePolicy(space, action_space(N_CAND, K), lambda _: 1e-3, hidden=16,
                        item_category=np.arange(N_ITEMS) % 3, residual_init_scale=0.5)
    p = len(CRITIC_STATE_NAMES)
    assert policy.state_net[0].in_features == plain.state_net[0].in_features + p
    assert policy.value_trunk[0].in_features == plain.value_trunk[0].in_features  # not read twice
    obs = _fake_obs(space, 16, seed=1)
    moved = {**obs, "critic_state": obs["critic_state"] + 3.0}
    with th.no_grad():
        assert (policy.candidate_logits(obs) - policy.candidate_logits(moved)).abs().max() > 1e-4
        assert (policy.predict_values(obs) - policy.predict_values(moved)).abs().max() > 1e-4
    policy.candidate_logits(obs).sum().backward()
    grad = policy.state_net[0].weight.grad
    assert grad is not None and grad[:, -p:].abs().sum() > 0
    with pytest.raises(ValueError, match=r"actor_hidden_state.*env\.obs_critic_state=true"):
        policy.candidate_logits({k: v for k, v in obs.items() if k != "critic_state"})
    with pytest.raises(ValueError, match="actor_hidden_state"):
        SlatePolicy(observation_space(N_ITEMS, N_CAND, DIM), action_space(N_CAND, K), lambda _: 1e-3,
                    actor_hidden_state=True)
    cfg = Config()
    cfg.train.policy.actor_hidden_state = True
    with pytest.raises(FieldError, match="obs_critic_state"):
        cfg.__post_init__()
    loaded = build_policy(policy_settings(policy), dict(policy.state_dict()))
    assert loaded.actor_hidden_state  # type: ignore[attr-defined]
    with th.no_grad():
        np.testing.assert_allclose(loaded.candidate_logits(obs).numpy(), policy.candidate_logits(obs).numpy(),
                                   rtol=1e-6, atol=1e-6)


def test_the_actor_told_only_the_users_type_reads_rho_and_nothing_else_of_the_hidden_state() -> None:
    """``actor_hidden_columns: [rho]``: the actor's state input grows by one column, its logits move with ρ and not
    with the budget or fatigue, the critic still reads every hidden column (its values move with the budget), a save /
    load keeps the column, and names that are not hidden columns, repeats, or the option without
    ``actor_hidden_state`` are refused by name (policy and config)."""
    from agents.ppo_ranker import build_policy, policy_settings
    from configs.schema import Config, FieldError

    space = observation_space(N_ITEMS, N_CAND, DIM, with_critic_state=True)
    th.manual_seed(0)
    kw = dict(hidden=16, item_category=np.arange(N_ITEMS) % 3, residual_init_scale=0.5)
    policy = SlatePolicy(space, action_space(N_CAND, K), lambda _: 1e-3, actor_hidden_state=True,
                         actor_hidden_columns=["rho"], **kw)  # type: ignore[arg-type]
    plain = SlatePolicy(space, action_space(N_CAND, K), lambda _: 1e-3, **kw)  # type: ignore[arg-type]
    assert policy.state_net[0].in_features == plain.state_net[0].in_features + 1
    assert policy.value_trunk[0].in_features == plain.value_trunk[0].in_features + 1  # its input and every column
    obs = _fake_obs(space, 16, seed=3)
    rho_moved, rest_moved = dict(obs), dict(obs)
    rho_moved["critic_state"] = obs["critic_state"].copy()
    rho_moved["critic_state"][:, CRITIC_STATE_NAMES.index("rho")] += 3.0
    rest_moved["critic_state"] = obs["critic_state"].copy()
    rest_moved["critic_state"][:, CRITIC_STATE_NAMES.index("budget"):] += 3.0
    with th.no_grad():
        logits = policy.candidate_logits(obs)
        assert (logits - policy.candidate_logits(rho_moved)).abs().max() > 1e-4
        np.testing.assert_array_equal(policy.candidate_logits(rest_moved).numpy(), logits.numpy())
        assert (policy.predict_values(obs) - policy.predict_values(rest_moved)).abs().max() > 1e-4
    loaded = build_policy(policy_settings(policy), dict(policy.state_dict()))
    assert loaded.actor_hidden_columns == (CRITIC_STATE_NAMES.index("rho"),)  # type: ignore[attr-defined]
    with th.no_grad():
        np.testing.assert_allclose(loaded.candidate_logits(rho_moved).numpy(),
                                   policy.candidate_logits(rho_moved).numpy(), rtol=1e-6, atol=1e-6)
    for bad in (["rho", "rho"], ["taste"], []):
        with pytest.raises(ValueError, match="actor_hidden_columns must be distinct names"):
            SlatePolicy(space, action_space(N_CAND, K), lambda _: 1e-3, actor_hidden_state=True,
                        actor_hidden_columns=bad, **kw)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="goes with actor_hidden_state"):
        SlatePolicy(space, action_space(N_CAND, K), lambda _: 1e-3, actor_hidden_columns=["rho"],
                    **kw)  # type: ignore[arg-type]
    cfg = Config()
    cfg.env.obs_critic_state = True
    cfg.train.policy.actor_hidden_columns = ["rho"]
    with pytest.raises(FieldError, match=r"actor_hidden_columns.*goes with"):
        cfg.__post_init__()
    cfg.train.policy.actor_hidden_state = True
    cfg.__post_init__()  # accepted
    cfg.train.policy.actor_hidden_columns = ["budget_left"]
    with pytest.raises(FieldError, match=r"actor_hidden_columns.*distinct names"):
        cfg.train.policy.__post_init__()


def test_a_run_with_the_critic_state_plays_without_it_and_exports(tmp_path: Path, small_world: World) -> None:
    """PPO trains with ``env.obs_critic_state``; the run plays the same sessions with the same returns on a core
    that has the column and on one that does not (the actor never reads it, the column draws nothing); the export
    leaves it out of the graph's inputs and matches the policy's slates."""
    from agents.evaluation import episode_plan, run_episodes
    from agents.export import export_run, graph_inputs
    from agents.registry import load_run
    from configs.loader import load_config
    from envs.core import BatchedCore

    run = make_run_dir(tmp_path, small_world, steps=64, critic_state=True)
    ranker = load_run(str(run))
    assert ranker.policy.reads_critic_state  # type: ignore[attr-defined]
    cfg = load_config(run / "config.yaml")
    assert cfg.env.obs_critic_state
    plan = episode_plan(16, [0], small_world.populations["heldout"].size)
    with_col = run_episodes(BatchedCore(small_world, cfg.env, 16, "heldout"), ranker, plan)
    plain_cfg = dataclasses.replace(cfg.env, obs_critic_state=False)
    without = run_episodes(BatchedCore(small_world, plain_cfg, 16, "heldout"), load_run(str(run)), plan)
    np.testing.assert_array_equal(with_col.ret, without.ret)
    assert "critic_state" not in graph_inputs(ranker.policy)
    dest = export_run(run, "onnx", world=small_world, parity_envs=4, parity_steps=2)
    parity = json.loads((dest / "manifest.json").read_text(encoding="utf-8"))["parity"]
    assert parity["slates_equal_up_to_ties"] == parity["observations"] == 8


def _type_policy(weight: float = 0.5, ent_coef: float = 0.01, seed: int = 0, gate_init: float = 0.0) -> SlatePolicy:
    space = observation_space(N_ITEMS, N_CAND, DIM, with_critic_state=True)
    th.manual_seed(seed)
    return SlatePolicy(space, action_space(N_CAND, K), lambda _: 1e-2, hidden=16,
                       item_category=np.arange(N_ITEMS) % 3, residual_init_scale=0.5, type_head_weight=weight,
                       type_loss_scale=weight / ent_coef, entropy_estimator="action",  # no draw: the same twice
                       type_gate_init=gate_init)


def _labelled_obs(batch: int, seed: int) -> dict[str, np.ndarray]:
    """Fake observations whose hidden ρ is a function of what the policy observes (the first context column)."""
    space = observation_space(N_ITEMS, N_CAND, DIM, with_critic_state=True)
    obs = _fake_obs(space, batch, seed)
    obs["critic_state"][:, 0] = (obs["context"][:, 0] > 0.5).astype(np.float32) * 0.8 + 0.1
    return obs


def test_the_type_loss_joins_ppos_loss_through_the_entropy_with_value_zero() -> None:
    """In training mode ``evaluate_actions``' entropy has the value it has in eval mode, and the gradient of SB3's
    entropy term ``−ent_coef·mean(entropy)`` differs from eval mode's by exactly ``w·∇mean(bce)``: on the type
    head's weights, and nowhere else (the actor reads the head's logit detached)."""
    ent_coef, weight = 0.01, 0.5
    policy = _type_policy(weight, ent_coef)
    obs = _labelled_obs(32, seed=2)
    tensors = policy.obs_to_tensor(obs)[0]
    actions = policy.get_distribution(obs).get_actions()

    def grads(training: bool) -> tuple[th.Tensor, dict[str, th.Tensor]]:
        policy.set_training_mode(training)
        policy.zero_grad()
        _, _, entropy = policy.evaluate_actions(tensors, actions)  # type: ignore[arg-type]
        assert entropy is not None
        (-ent_coef * entropy.mean()).backward()
        return entropy.detach(), {n: p.grad.clone() if p.grad is not None else th.zeros_like(p)
                                  for n, p in policy.named_parameters()}

    ent_train, g_train = grads(True)
    ent_eval, g_eval = grads(False)
    np.testing.assert_allclose(ent_train.numpy(), ent_eval.numpy(), rtol=1e-6, atol=1e-6)
    policy.zero_grad()
    (weight * policy.type_loss(obs).mean()).backward()
    moved = set()
    for name, p in policy.named_parameters():
        want = p.grad if p.grad is not None else th.zeros_like(p)
        np.testing.assert_allclose((g_train[name] - g_eval[name]).numpy(), want.numpy(), rtol=1e-4, atol=1e-7,
                                   err_msg=name)
        if want.abs().sum() > 0:
            moved.add(name.split(".")[0])
    assert moved == {"type_net"}


def test_the_type_head_runs_once_per_pass() -> None:
    """The type head's logit feeds the state input, the gate and (in an update) the type loss from one pass of its
    MLP; the slate distribution is the one built from a logit computed apart."""
    policy = _type_policy(0.5, gate_init=0.7)
    policy.set_training_mode(True)
    obs = _labelled_obs(16, seed=3)
    tensors = policy.obs_to_tensor(obs)[0]
    calls = []
    handle = policy.type_net.register_forward_hook(lambda *_: calls.append(1))  # type: ignore[union-attr]
    actions, _, _ = policy.forward(tensors)  # type: ignore[arg-type]
    assert len(calls) == 1
    policy.evaluate_actions(tensors, actions)  # type: ignore[arg-type]
    assert len(calls) == 2
    handle.remove()
    prepared = policy._prepare(tensors)  # type: ignore[arg-type]
    state_in, cand, features, _ = policy._encode(prepared)
    with th.no_grad():
        shared = policy._actor(state_in, cand, features)[0]
        apart = policy._actor(state_in, cand, features, policy._type_logit(state_in))[0]
        moved = policy._actor(state_in, cand, features, policy._type_logit(state_in) - 3.0)[0]
    np.testing.assert_array_equal(shared.numpy(), apart.numpy())
    assert not th.allclose(shared, moved)  # the logit handed in is the one the actor reads


def test_the_type_head_learns_the_hidden_type_and_feeds_the_gate() -> None:
    """Fitted through PPO's entropy term alone, the head tells the two types apart on fresh observations; its logit
    moves α through the gate's weight (zero at init), whatever ``critic_state`` holds; a save / load keeps it; the
    head needs ``critic_state`` in the space."""
    from agents.ppo_ranker import build_policy, policy_settings

    ent_coef = 0.01
    policy = _type_policy(1.0, ent_coef)
    opt = th.optim.Adam(policy.type_net.parameters(), lr=1e-2)  # type: ignore[union-attr]
    policy.set_training_mode(True)
    for step in range(150):
        obs = _labelled_obs(64, seed=100 + step)
        tensors = policy.obs_to_tensor(obs)[0]
        with th.no_grad():
            actions = policy.get_distribution(obs).get_actions()
        _, _, entropy = policy.evaluate_actions(tensors, actions)  # type: ignore[arg-type]
        opt.zero_grad()
        (-ent_coef * entropy.mean()).backward()  # type: ignore[union-attr]
        opt.step()
    policy.set_training_mode(False)
    test = _labelled_obs(256, seed=7)
    with th.no_grad():
        state_in = policy._encode(policy._prepare(test))[0]
        logit = policy._type_logit(state_in).numpy()
        truth = test["critic_state"][:, 0] > 0.5
        assert ((logit > 0) == truth).mean() > 0.9
        before = policy.alpha(test)
        policy.type_gate.fill_(1.0)  # type: ignore[union-attr]
        after = policy.alpha(test)
        shifted = {**test, "critic_state": np.zeros_like(test["critic_state"])}
        np.testing.assert_array_equal(after.numpy(), policy.alpha(shifted).numpy())
    logit_after = th.logit(after.clamp(1e-6, 1 - 1e-6)) - th.logit(before.clamp(1e-6, 1 - 1e-6))
    np.testing.assert_allclose(logit_after.numpy(), logit, rtol=1e-3, atol=1e-3)
    policy.type_gate_lower_only = True  # only the CF-leaning reading moves α
    with th.no_grad():
        lower = th.logit(policy.alpha(test).clamp(1e-6, 1 - 1e-6)) - th.logit(before.clamp(1e-6, 1 - 1e-6))
    np.testing.assert_allclose(lower.numpy(), np.minimum(logit, 0.0), rtol=1e-3, atol=1e-3)
    assert (logit > 0).any() and (logit < 0).any()
    margin = float(np.median(-logit[logit < 0]))  # half the CF-leaning readings are confident enough to move α
    policy.type_gate_margin = margin
    with th.no_grad():
        confident = th.logit(policy.alpha(test).clamp(1e-6, 1 - 1e-6)) - th.logit(before.clamp(1e-6, 1 - 1e-6))
    np.testing.assert_allclose(confident.numpy(), np.minimum(logit + margin, 0.0), rtol=1e-3, atol=1e-3)
    assert 0 < (confident.numpy() < -1e-4).sum() < (logit < 0).sum()
    loaded = build_policy(policy_settings(policy), dict(policy.state_dict()))
    assert loaded.type_gate_margin == margin
    policy.type_gate_margin = 0.0
    for lower_only, want in ((True, th.sigmoid(th.logit(before.clamp(1e-6, 1 - 1e-6)) + lower)), (False, after)):
        policy.type_gate_lower_only = lower_only  # a save / load keeps the gate's reading and its side
        loaded = build_policy(policy_settings(policy), dict(policy.state_dict()))
        assert loaded.type_gate_lower_only is lower_only
        with th.no_grad():
            np.testing.assert_allclose(loaded.alpha(test).numpy(), want.numpy(), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="critic_state"):
        SlatePolicy(observation_space(N_ITEMS, N_CAND, DIM), action_space(N_CAND, K), lambda _: 1e-3,
                    type_head_weight=1.0)


def test_type_head_config_needs_the_critic_state_and_an_entropy_term() -> None:
    """``train.policy.type_head_weight`` names the settings it needs; ``policy_kwargs`` hands the policy the
    weight over ``ent_coef``."""
    from configs.loader import ConfigError, resolve_config

    with pytest.raises(ConfigError, match=r"type_head_weight.*env\.obs_critic_state"):
        resolve_config(None, "small", ["train.policy.type_head_weight=1"])
    with pytest.raises(ConfigError, match=r"type_head_weight.*ent_coef"):
        resolve_config(None, "small", ["train.policy.type_head_weight=1", "env.obs_critic_state=true",
                                       "train.ppo.ent_coef=0"])
    with pytest.raises(ConfigError, match="type_head_weight"):
        resolve_config(None, "small", ["train.policy.type_head_weight=-1"])
    with pytest.raises(ConfigError, match=r"type_gate_init.*type_head_weight"):
        resolve_config(None, "small", ["train.policy.type_gate_init=0.5"])
    with pytest.raises(ConfigError, match=r"type_gate_margin.*type_gate_lower_only"):
        resolve_config(None, "small", ["train.policy.type_head_weight=1", "env.obs_critic_state=true",
                                       "train.policy.type_gate_margin=1"])
    with pytest.raises(ConfigError, match="type_gate_margin"):
        resolve_config(None, "small", ["train.policy.type_head_weight=1", "env.obs_critic_state=true",
                                       "train.policy.type_gate_lower_only=true", "train.policy.type_gate_margin=-1"])
    with pytest.raises(ValueError, match="type_gate_init"):
        _type_policy(0.0, 0.01, gate_init=0.5)  # no head: no gate weight to start
    assert float(SlatePolicy(observation_space(N_ITEMS, N_CAND, DIM, with_critic_state=True), action_space(N_CAND, K),
                             lambda _: 1e-3, type_head_weight=1.0, type_gate_init=0.5).type_gate.detach()) == 0.5


def test_a_run_with_a_type_head_exports_with_parity(tmp_path: Path, small_world: World) -> None:
    """The type head is part of the actor: the exported graph (observations only) gives the policy's slates."""
    from agents.export import export_run

    run = make_run_dir(tmp_path, small_world, steps=64, type_head=True)
    dest = export_run(run, "onnx", world=small_world, parity_envs=4, parity_steps=2)
    parity = json.loads((dest / "manifest.json").read_text(encoding="utf-8"))["parity"]
    assert parity["slates_equal_up_to_ties"] == parity["observations"] == 8


def test_a_run_whose_type_head_reads_the_standardised_request_exports_with_parity(tmp_path: Path,
                                                                                  small_world: World) -> None:
    """``type_head_input: request``: the standardiser's statistics are constants of the exported graph, which gives
    the policy's slates and logits."""
    from agents.export import export_run
    from agents.ppo_ranker import load_policy

    run = make_run_dir(tmp_path, small_world, steps=64, type_head=True, pool_spread=True, type_head_input="request")
    norm = load_policy(run, device="cpu").type_standardiser
    assert norm is not None and not norm.empty
    dest = export_run(run, "onnx", world=small_world, parity_envs=4, parity_steps=2)
    parity = json.loads((dest / "manifest.json").read_text(encoding="utf-8"))["parity"]
    assert parity["slates_equal_up_to_ties"] == parity["observations"] == 8
    assert parity["max_abs_logit_diff"] <= 1e-3


def test_train_py_fits_the_type_head_and_logs_it(tmp_path: Path, runs_cache: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """``train.py`` with ``env.obs_critic_state`` and ``train.policy.type_head_weight`` (and ``type_cap``): the policy
    has the head, the run logs its cross-entropy, accuracy and gate weight per rollout, and PPO moved the gate's weight
    on it."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    import train
    from agents.ppo_ranker import load_policy

    monkeypatch.setenv("RECFEED_CACHE", str(runs_cache))
    summary = train.main([*tiny_args(tmp_path / "runs", "type", 1024), "--set", "env.obs_critic_state=true",
                          "--set", "train.policy.type_head_weight=1", "--set", "train.policy.type_cap=0.6"])
    run = Path(summary["run_dir"])
    policy = load_policy(run, device="cpu")
    assert policy.type_net is not None and policy.reads_critic_state
    assert policy.type_cap == 0.6  # train.policy.type_cap reaches the policy and its saved settings
    events = [str(p) for p in (run / "tb").rglob("events.out.tfevents.*")]
    tags: dict[str, list[float]] = {}
    for path in events:
        acc = EventAccumulator(path)
        acc.Reload()
        for tag in ("train/type_bce", "train/type_accuracy", "train/type_gate"):
            if tag in acc.Tags()["scalars"]:
                tags[tag] = [e.value for e in acc.Scalars(tag)]
    assert set(tags) == {"train/type_bce", "train/type_accuracy", "train/type_gate"}
    assert len(tags["train/type_bce"]) >= 2 and all(0.0 <= a <= 1.0 for a in tags["train/type_accuracy"])
    assert all(np.isfinite(v) for v in tags["train/type_bce"])
    assert policy.type_gate is not None and float(policy.type_gate.detach()) != 0.0


def _request_head_policy(seed: int = 0) -> SlatePolicy:
    space = observation_space(N_ITEMS, N_CAND, DIM, with_critic_state=True)
    th.manual_seed(seed)
    return SlatePolicy(space, action_space(N_CAND, K), lambda _: 1e-2, hidden=16,
                       item_category=np.arange(N_ITEMS) % 3, type_head_weight=0.5, type_loss_scale=50.0,
                       entropy_estimator="action", type_gate_init=1.0, pool_spread=True, type_head_input="request")


def test_a_request_type_head_reads_the_standardised_request_not_the_users_llm_state() -> None:
    """``type_head_input="request"``: the head's logit ignores ``obs["user"]`` and follows the context and the
    candidates; its input is standardised by statistics that only :meth:`join_input_statistics` moves (a forward
    pass in training mode leaves them), to the mean and variance of the encoded columns it joined; a save / load
    keeps the setting and the statistics; the setting needs a type head and the pooled spread."""
    from agents.ppo_ranker import build_policy, policy_settings

    policy = _request_head_policy()
    norm = policy.type_standardiser
    assert norm is not None and norm.empty and _type_policy().type_standardiser is None
    obs = _labelled_obs(64, seed=4)
    prepared = policy._prepare(obs)
    policy.set_training_mode(True)
    with th.no_grad():
        state_in = policy._encode(prepared)[0]
        before = policy._type_logit(state_in)
        policy.evaluate_actions(policy.obs_to_tensor(obs)[0], policy.get_distribution(obs).get_actions())
    assert norm.empty  # a training-mode pass joined nothing
    policy.join_input_statistics(obs, chunk=24)  # in three chunks
    lo, hi = policy._type_cols
    cols = state_in[:, lo:hi].double()
    assert hi - lo == len(CONTEXT_NAMES) + 3 * len(FEATURE_NAMES) + 1 and lo == DIM
    np.testing.assert_allclose(norm.mean.numpy(), cols.mean(dim=0).numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(norm.var.numpy(), cols.var(dim=0, unbiased=False).numpy(), rtol=1e-3, atol=1e-6)
    assert float(norm.count) == 64
    with th.no_grad():
        logit = policy._type_logit(state_in)
        other_user = {**obs, "user": np.roll(obs["user"], 1, axis=0)}
        np.testing.assert_array_equal(policy._type_logit(policy._encode(policy._prepare(other_user))[0]).numpy(),
                                      logit.numpy())
        other_ctx = {**obs, "context": np.roll(obs["context"], 1, axis=0)}
        assert not th.allclose(policy._type_logit(policy._encode(policy._prepare(other_ctx))[0]), logit)
    assert not th.allclose(before, logit)  # the statistics moved the reading
    loaded = build_policy(policy_settings(policy), dict(policy.state_dict()))
    assert loaded.type_head_input == "request" and loaded.type_standardiser is not None
    with th.no_grad():
        np.testing.assert_array_equal(loaded._type_logit(state_in).numpy(), logit.numpy())
    space = observation_space(N_ITEMS, N_CAND, DIM, with_critic_state=True)
    for kwargs in ({"type_head_weight": 0.5, "pool_spread": False}, {"type_head_weight": 0.0, "pool_spread": True}):
        with pytest.raises(ValueError, match="type_head_input='request' needs"):
            SlatePolicy(space, action_space(N_CAND, K), lambda _: 1e-3, type_head_input="request", **kwargs)
    with pytest.raises(ValueError, match="type_head_input must be one of"):
        SlatePolicy(space, action_space(N_CAND, K), lambda _: 1e-3, type_head_weight=0.5, type_head_input="user")


def test_ppo_joins_the_rollouts_to_the_type_heads_statistics_between_updates(tmp_path: Path) -> None:
    """With a standardised type-head input, the update joins its rollout once (the first update before it runs,
    every later one after), so a collection and its update read the same statistics; the update is SB3's
    otherwise (the run learns and its weights stay finite)."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import DummyVecEnv

    from agents.ppo_update import ppo_update

    space = observation_space(N_ITEMS, N_CAND, DIM, with_critic_state=True)

    class _Env(gym.Env):
        observation_space = space
        action_space = action_space(N_CAND, K)

        def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
            super().reset(seed=seed)
            self._t = 0
            return self._obs(), {}

        def _obs(self) -> dict:
            return {k: v[0] for k, v in _labelled_obs(1, int(self.np_random.integers(1 << 30))).items()}

        def step(self, action: np.ndarray) -> tuple[dict, float, bool, bool, dict]:
            self._t += 1
            return self._obs(), float(np.asarray(action)[0] == 0), self._t >= 4, False, {}

    class _PPO(PPO):
        def train(self) -> None:
            seen.append(float(self.policy.type_standardiser.count))  # type: ignore[union-attr]
            ppo_update(self)
            seen.append(float(self.policy.type_standardiser.count))  # type: ignore[union-attr]

    seen: list[float] = []
    model = _PPO(SlatePolicy, DummyVecEnv([_Env, _Env]), n_steps=16, batch_size=16, n_epochs=1, seed=0,
                 device="cpu", ent_coef=0.01,
                 policy_kwargs={"hidden": 16, "type_head_weight": 0.5, "type_loss_scale": 50.0, "pool_spread": True,
                                "type_head_input": "request", "item_category": np.arange(N_ITEMS) % 3,
                                "entropy_estimator": "action"})
    model.learn(96)
    assert seen == [0.0, 32.0, 32.0, 64.0, 64.0, 96.0]
    norm = model.policy.type_standardiser  # type: ignore[attr-defined]
    assert norm is not None and bool(th.isfinite(norm.mean).all()) and float(norm.var.min()) > 0


def _cf_rule_policy(cf_rule: dict | None, alpha: float = 0.9, lean: float = 1.0,
                    weights: tuple[float, ...] = (-1.0, -0.5)) -> SlatePolicy:
    """A diverse-base policy with a type head (seed 0: the same weights every call), rule A at ``alpha``, ``lean``
    and penalty ``weights`` on (cat_exposure, item_seen), with ``cf_rule`` (``{alpha, lean, weights}``) as its
    second base, or none."""
    space = observation_space(N_ITEMS, N_CAND, DIM, with_critic_state=True)

    def w(pair: tuple[float, ...]) -> list[float]:
        out = [0.0] * len(FEATURE_NAMES)
        out[F_CAT_EXPOSURE], out[F_ITEM_SEEN] = pair
        return out

    extra = {} if cf_rule is None else {"cf_rule_alpha": cf_rule["alpha"], "cf_rule_lean": cf_rule["lean"],
                                        "cf_rule_weights": w(cf_rule["weights"]), "cf_rule_threshold": 0.8}
    th.manual_seed(0)
    return SlatePolicy(space, action_space(N_CAND, K), lambda _: 1e-2, hidden=16, residual_init_scale=0.5,
                       item_category=np.arange(N_ITEMS) % 3, base="diverse", base_weights=w(weights), category_cap=2,
                       gate="standardised", gate_lean=lean, init_alpha=alpha, type_head_weight=0.5,
                       type_loss_scale=50.0, entropy_estimator="action", **extra)


def _with_type_bias(policy: SlatePolicy, bias: float) -> SlatePolicy:
    """The policy with its type head's output pinned at ``bias`` (last layer's weights 0)."""
    assert policy.type_net is not None
    last = policy.type_net[-1]
    with th.no_grad():
        last.weight.zero_()
        last.bias.fill_(bias)
    return policy


def test_the_cf_rule_base_moves_the_base_from_rule_a_to_rule_b_by_the_type_heads_reading() -> None:
    """``cf_rule_alpha``: where the type head reads a content-leaning user for sure the policy is the one without a
    second base (rule A's α, lean weight and penalties); where it reads a CF-leaning user for sure it is the policy
    started at rule B's; at the threshold it is half-way in the α prior's logit; save / load keeps the rule; bad
    settings are refused by name."""
    from agents.policies import CF_RULE_SHARPNESS
    from agents.ppo_ranker import build_policy, policy_settings

    rule_b = {"alpha": 0.1, "lean": 4.0, "weights": (-0.5, -0.25)}
    obs = _labelled_obs(32, seed=5)
    obs["context"][:, [C_CLICKED_LLM, C_CLICKED_CF]] = np.abs(obs["context"][:, [C_CLICKED_LLM, C_CLICKED_CF]])
    for bias, want in ((40.0, _cf_rule_policy(None)),
                       (-40.0, _cf_rule_policy(None, rule_b["alpha"], rule_b["lean"], rule_b["weights"]))):
        mixed = _with_type_bias(_cf_rule_policy(rule_b), bias)
        _with_type_bias(want, bias)
        with th.no_grad():
            np.testing.assert_allclose(mixed.candidate_logits(obs).numpy(), want.candidate_logits(obs).numpy(),
                                       rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(mixed.alpha(obs).numpy(), want.alpha(obs).numpy(), rtol=1e-5, atol=1e-6)
    # the share is q = σ(s·(−ℓ − logit 0.8)): 1/2 at the threshold's logit, and A's and B's α priors meet there
    thr = -float(np.log(0.8 / 0.2))
    half = _with_type_bias(_cf_rule_policy(rule_b), thr)
    share = half.cf_rule_share(th.full((3,), thr))
    assert share is not None
    np.testing.assert_allclose(share.numpy(), 0.5, atol=1e-6)
    assert float(half.cf_rule_share(th.full((1,), thr - 1.0))[0]) == pytest.approx(  # type: ignore[index]
        1.0 / (1.0 + np.exp(-CF_RULE_SHARPNESS)), rel=1e-5)
    half.cf_rule_sharpness = 8.0  # a sharper share: the same 1/2 at the threshold, nearer 1 a logit below it
    assert float(half.cf_rule_share(th.full((1,), thr))[0]) == pytest.approx(0.5)  # type: ignore[index]
    assert float(half.cf_rule_share(th.full((1,), thr - 1.0))[0]) == pytest.approx(  # type: ignore[index]
        1.0 / (1.0 + np.exp(-8.0)), rel=1e-5)
    half.cf_rule_sharpness = CF_RULE_SHARPNESS
    a, b = _with_type_bias(_cf_rule_policy(None), 40.0), _with_type_bias(
        _cf_rule_policy(None, rule_b["alpha"], rule_b["lean"], rule_b["weights"]), 40.0)
    obs0 = {**obs, "context": obs["context"].copy()}
    obs0["context"][:, [C_CLICKED_LLM, C_CLICKED_CF]] = 0.0  # no clicks yet: the lean term is 0
    with th.no_grad():
        def logit(p: SlatePolicy) -> th.Tensor:
            return th.logit(p.alpha(obs0).double())

        np.testing.assert_allclose(logit(half).numpy(), (0.5 * (logit(a) + logit(b))).numpy(), rtol=1e-4, atol=1e-4)
    loaded = build_policy(policy_settings(half), dict(half.state_dict()))
    assert (loaded.cf_rule_alpha, loaded.cf_rule_lean, loaded.cf_rule_threshold, loaded.cf_rule_sharpness) == (
        0.1, 4.0, 0.8, CF_RULE_SHARPNESS)
    with th.no_grad():
        np.testing.assert_array_equal(loaded.candidate_logits(obs).numpy(), half.candidate_logits(obs).numpy())
    space = observation_space(N_ITEMS, N_CAND, DIM, with_critic_state=True)
    base = dict(item_category=np.arange(N_ITEMS) % 3, base="diverse", gate="standardised", gate_lean=0.0,
                type_head_weight=0.5, type_loss_scale=50.0)
    for bad, match in (({"type_head_weight": 0.0, "type_loss_scale": 0.0}, "needs a type head"),
                       ({"gate_lean": None}, "needs a type head"),
                       ({"cf_rule_alpha": 1.0}, "cf_rule_alpha must be in"),
                       ({"cf_rule_threshold": 0.0}, "cf_rule_threshold must be in"),
                       ({"cf_rule_sharpness": 0.0}, "cf_rule_sharpness must be"),
                       ({"cf_rule_weights": [0.0]}, "cf_rule_weights needs")):
        with pytest.raises(ValueError, match=match):
            SlatePolicy(space, action_space(N_CAND, K), lambda _: 1e-3, **{**base, "cf_rule_alpha": 0.2, **bad})
    with pytest.raises(ValueError, match="go with cf_rule_alpha"):
        SlatePolicy(space, action_space(N_CAND, K), lambda _: 1e-3, **{**base, "cf_rule_lean": 2.0})


def test_a_run_with_the_cf_rule_base_exports_with_parity(tmp_path: Path, small_world: World) -> None:
    """The second base is part of the actor's graph: the exported model (observations only) gives the policy's
    slates, the rule's settings travel in policy.json."""
    from agents.export import export_run
    from agents.ppo_ranker import load_policy

    run = make_run_dir(tmp_path, small_world, steps=64, type_head=True, gate="standardised", cf_rule=True)
    policy = load_policy(run)
    assert policy.cf_rule_alpha == pytest.approx(0.2) and policy.cf_rule_threshold == 0.5
    dest = export_run(run, "onnx", world=small_world, parity_envs=4, parity_steps=2)
    parity = json.loads((dest / "manifest.json").read_text(encoding="utf-8"))["parity"]
    assert parity["slates_equal_up_to_ties"] == parity["observations"] == 8


def test_the_cf_rule_base_config_and_its_search(tmp_path: Path, small_world: World) -> None:
    """``train.policy.cf_rule_base`` names what it needs; ``RankerContext.cf_rule_search`` is the CF-leaning
    group's point of ``diverse_by_group`` from tuned-diverse's, and ``policy_kwargs`` hands the policy its α, lean
    weight and penalties (the cap stays A's), on the standardised gate even where A's α does not follow clicks."""
    from agents.registry import RankerContext
    from agents.training import penalty_weights, policy_kwargs
    from configs.loader import ConfigError, resolve_config

    need = ["env.obs_critic_state=true", "train.policy.type_head_weight=0.1"]
    with pytest.raises(ConfigError, match=r"cf_rule_base.*type head"):
        resolve_config(None, "small", ["train.policy.cf_rule_base=true"])
    with pytest.raises(ConfigError, match=r"cf_rule_base.*start: diverse"):
        resolve_config(None, "small", [*need, "train.policy.cf_rule_base=true", "train.policy.start=pop-diverse"])
    with pytest.raises(ConfigError, match=r"cf_rule_base.*gate"):
        resolve_config(None, "small", [*need, "train.policy.cf_rule_base=true", "train.policy.gate=raw"])
    with pytest.raises(ConfigError, match=r"cf_rule_base.*obs_session_sim"):
        resolve_config(None, "small", [*need, "train.policy.cf_rule_base=true", "env.obs_session_sim=true"])
    with pytest.raises(ConfigError, match="cf_rule_threshold"):
        resolve_config(None, "small", [*need, "train.policy.cf_rule_threshold=1"])
    cfg = resolve_config(None, "small", [*need, "train.policy.cf_rule_base=true"])
    grid = {"alpha": (0.2, 0.9), "cap": (2,), "exposure_weight": (0.0, 1.0), "seen_weight": (0.5,),
            "lean_weight": (0.0,)}
    ctx = RankerContext(small_world, cfg.env, seed=0, tune_episodes=40, batch=40, diverse_grid=grid,
                        alphas=(0.2, 0.9), cache_dir=str(tmp_path / "tuning"))
    point_a, point_b = ctx.diverse_search().best, ctx.cf_rule_search()
    assert set(point_b) == set(point_a) and point_b["alpha"] in grid["alpha"]
    assert ctx.cf_rule_search() is ctx.cf_rule_search()  # searched once
    fresh = RankerContext(small_world, cfg.env, seed=0, tune_episodes=40, batch=40, diverse_grid=grid,
                          alphas=(0.2, 0.9), cache_dir=str(tmp_path / "tuning"))
    assert fresh.cf_rule_search() == point_b  # read back from the cache
    b = {**point_a, "alpha": 0.2, "lean_weight": 2.0, "exposure_weight": 3.0, "cap": 1}
    kwargs = policy_kwargs(cfg, 0.5, small_world, {**point_a, "lean_weight": 0.0}, b)
    assert kwargs["gate"] == "standardised" and kwargs["gate_lean"] == 0.0
    assert (kwargs["cf_rule_alpha"], kwargs["cf_rule_lean"], kwargs["cf_rule_threshold"]) == (0.2, 2.0, 0.8)
    assert kwargs["cf_rule_sharpness"] == 2.0
    sharp = resolve_config(None, "small", [*need, "train.policy.cf_rule_base=true", "train.policy.cf_rule_sharpness=8"])
    assert policy_kwargs(sharp, 0.5, small_world, point_a, b)["cf_rule_sharpness"] == 8.0
    with pytest.raises(ConfigError, match="cf_rule_sharpness"):
        resolve_config(None, "small", [*need, "train.policy.cf_rule_sharpness=0"])
    assert kwargs["cf_rule_weights"] == penalty_weights(b).tolist() and kwargs["cf_rule_weights"][F_CAT_EXPOSURE] == -3
    assert kwargs["category_cap"] == (int(point_a["cap"]) if point_a["cap"] < cfg.env.slate_size else None)
    with pytest.raises(ValueError, match="cf_rule_base needs"):
        policy_kwargs(cfg, 0.5, small_world, point_a)
