"""The stable-baselines3 VecEnv adapter (envs/sb3.py)."""

from __future__ import annotations

import dataclasses

import numpy as np
from conftest import greedy

import envs
from configs.schema import EnvConfig
from envs.sb3 import SB3VecEnv
from envs.world import World


def test_sb3_adapter_terminal_observation_and_truncation(small_cfg: EnvConfig, small_world: World) -> None:
    cfg = dataclasses.replace(small_cfg, max_steps=4)
    venv = SB3VecEnv(envs.RecVectorEnv(5, config=cfg, world=small_world))
    venv.seed(3)
    obs = venv.reset()
    saw_done = False
    for _ in range(6):
        venv.step_async(greedy(obs, cfg.slate_size).astype(np.float32))  # SB3 hands float actions
        obs, rew, dones, infos = venv.step_wait()
        assert rew.shape == (5,) and dones.shape == (5,)
        for i in np.flatnonzero(dones):
            saw_done = True
            assert set(infos[i]["terminal_observation"]) == {"user", "candidates", "features", "context"}
            length = infos[i]["episode"]["l"]
            assert length == 4 if infos[i]["TimeLimit.truncated"] else 1 <= length <= 4  # the limit truncates at 4
    assert saw_done
    assert venv.pop_stats()["steps"] == 30
