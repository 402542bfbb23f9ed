"""``agents.rollouts.RecPPO``: SB3's rollout with the time-limit bootstrap in one value call per step."""

from __future__ import annotations

import numpy as np
import pytest
import torch as th
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import VecNormalize

from agents.checkpoints import new_ppo
from agents.rollouts import RecPPO
from agents.training import make_venv, policy_kwargs
from bench.train_throughput import HEURISTIC
from configs.loader import resolve_config
from envs.world import World


def _collect(algo: type[PPO], world: World, normalize: bool) -> tuple[PPO, int]:
    """One rollout of ``algo`` on the small world with sessions cut at 3 requests (most end by the limit); returns
    the model and how many times the policy's value head was called during it."""
    cfg = resolve_config(None, "small", ["env.max_steps=3", "train.ppo.n_envs=16", "train.ppo.n_steps=12",
                                          "train.ppo.batch_size=64", "train.device=cpu"])
    venv = make_venv(cfg, world, 0)
    env = VecNormalize(venv, norm_obs=False, norm_reward=True, gamma=cfg.train.ppo.gamma) if normalize else venv
    model = new_ppo(cfg, env, th.device("cpu"), None, policy_kwargs(cfg, 0.9, world, HEURISTIC))
    if algo is PPO:  # the same construction, SB3's own collection
        model.__class__ = PPO
    calls = 0
    inner = model.policy.predict_values

    def counted(obs):  # type: ignore[no-untyped-def]
        nonlocal calls
        calls += 1
        return inner(obs)

    model.policy.predict_values = counted  # type: ignore[method-assign]
    _, callback = model._setup_learn(cfg.train.ppo.n_envs * cfg.train.ppo.n_steps, None)
    callback.on_training_start(locals(), globals())
    assert model.collect_rollouts(model.env, callback, model.rollout_buffer, cfg.train.ppo.n_steps)
    return model, calls


@pytest.mark.parametrize("normalize", [False, True], ids=["raw", "vecnormalize"])
def test_recppo_fills_the_buffer_as_sb3_does_with_one_value_call_per_step(small_world: World,
                                                                           normalize: bool) -> None:
    ours, our_calls = _collect(RecPPO, small_world, normalize)
    sb3, sb3_calls = _collect(PPO, small_world, normalize)
    assert type(ours) is RecPPO and type(sb3) is PPO
    a, b = ours.rollout_buffer, sb3.rollout_buffer
    np.testing.assert_array_equal(a.actions, b.actions)  # the value calls draw nothing: the same sessions
    np.testing.assert_array_equal(a.episode_starts, b.episode_starts)
    n_steps = a.buffer_size
    truncated = sb3_calls - 1  # SB3: one call per truncated session, and one for the rollout's last observation
    assert truncated > 2 * n_steps, "the test needs many truncated sessions per step"
    assert 1 < our_calls <= n_steps + 1  # at most one batched call per step
    assert np.abs(b.values).min() > 1e-3  # the critic's values are not ~0: a missing bootstrap would show below
    np.testing.assert_allclose(a.rewards, b.rewards, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(a.returns, b.returns, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(a.values, b.values, rtol=1e-6, atol=1e-6)


def test_new_ppo_builds_recppo_for_the_local_backend(small_world: World) -> None:
    cfg = resolve_config(None, "small", ["train.device=cpu"])
    model = new_ppo(cfg, make_venv(cfg, small_world, 0), th.device("cpu"), None,
                    policy_kwargs(cfg, 0.9, small_world, HEURISTIC))
    assert type(model) is RecPPO
