"""RecEnv (envs/rec_env.py) and the registered ids: slate checks and repair, the checkers, reward parts."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import envs
from configs.schema import EnvConfig
from envs.world import World


def test_env_step_rejects_bad_slate_and_dedupe_repairs(small_cfg: EnvConfig, small_world: World) -> None:
    env = envs.RecEnv(config=small_cfg, world=small_world)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="row 0 repeats"):
        env.step(np.zeros(small_cfg.slate_size, np.int64))
    repaired = envs.RecEnv(config=small_cfg, world=small_world, repair="dedupe")
    repaired.reset(seed=0)
    _, _, _, _, info = repaired.step(np.zeros(small_cfg.slate_size, np.int64))
    assert len(set(info["slate_items"].tolist())) == small_cfg.slate_size


def test_gymnasium_and_sb3_checkers_pass(small_cfg: EnvConfig, small_world: World) -> None:
    from gymnasium.utils.env_checker import check_env

    with pytest.warns(UserWarning):  # the checkers warn about unbounded Box features; not an error
        check_env(envs.RecEnv(config=small_cfg, world=small_world, repair="dedupe"), skip_render_check=True)
        sb3_check_env(envs.RecEnv(config=small_cfg, world=small_world, repair="dedupe"))


def test_registered_ids_and_vector_entry_point(small_cfg: EnvConfig, small_world: World) -> None:
    assert "recfeed/SlateRec-v0" in gym.registry and "recfeed/SlateRec-small-v0" in gym.registry
    venv = gym.make_vec("recfeed/SlateRec-small-v0", num_envs=3, vectorization_mode="vector_entry_point",
                        world=small_world)
    obs, _ = venv.reset(seed=0)
    assert obs["features"].shape == (3, small_cfg.n_candidates, 7)
    env = gym.make("recfeed/SlateRec-small-v0", world=small_world)
    o, _ = env.reset(seed=0)
    assert env.observation_space.contains(o)


def test_reward_components_add_up(small_cfg: EnvConfig, small_world: World) -> None:
    env = envs.RecEnv(config=small_cfg, world=small_world)
    env.reset(seed=1)
    total = 0.0
    for _ in range(10):
        _, r, te, tr, info = env.step(np.arange(small_cfg.slate_size))
        assert r == pytest.approx(info["reward_click"] + info["reward_purchase"] + info["reward_dwell"], rel=1e-5)
        assert info["reward_click"] == pytest.approx(small_cfg.reward.click * info["click"])
        total += r
        if te or tr:
            break
    assert total > 0
