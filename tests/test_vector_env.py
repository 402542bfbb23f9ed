"""RecVectorEnv (envs/vector_env.py): determinism, observations owned by the caller, batched == single envs."""

from __future__ import annotations

import numpy as np
from conftest import greedy, rollout

import envs
from configs.schema import EnvConfig
from envs.world import World


def test_same_seed_same_trajectory(small_cfg: EnvConfig, small_world: World) -> None:
    a = rollout(envs.RecVectorEnv(16, config=small_cfg, world=small_world), 40, seed=5)
    b = rollout(envs.RecVectorEnv(16, config=small_cfg, world=small_world), 40, seed=5)
    c = rollout(envs.RecVectorEnv(16, config=small_cfg, world=small_world), 40, seed=6)
    for x, y in zip(a, b, strict=True):
        for u, v in zip(x, y, strict=True):
            assert np.array_equal(u, v)
    assert not all(np.array_equal(x[1], y[1]) for x, y in zip(a, c, strict=True))


def test_returned_observations_belong_to_the_caller(small_cfg: EnvConfig, small_world: World) -> None:
    """The env writes every observation into new arrays and never reads them back: later steps leave kept
    observations as they were, and scribbling on one does not change the trajectory."""
    env = envs.RecVectorEnv(16, config=small_cfg, world=small_world)
    clean = rollout(envs.RecVectorEnv(16, config=small_cfg, world=small_world), 40, seed=5)
    obs, _ = env.reset(seed=5)
    kept: list[dict[str, np.ndarray]] = []
    ends = 0
    for want in clean:
        act = greedy(obs, env.core.K)
        obs, _, term, trunc, info = env.step(act)
        assert np.array_equal(obs["features"], want[0]) and np.array_equal(obs["candidates"], want[1])
        assert np.array_equal(info["click_rank"], want[5])
        ends += int((term | trunc).sum())
        kept.append({k: v.copy() for k, v in obs.items()})  # what the env returned, for the next step's slate
        for v in obs.values():  # the caller may change what it got ...
            v[...] = -7
        kept[-1], obs = obs, kept[-1]
    assert ends > 0  # rows were refreshed in place by the autoreset
    for got in kept:  # ... and later steps leave it alone
        for k, v in got.items():
            assert (v == -7).all(), k


def test_batched_env_equals_single_envs(small_cfg: EnvConfig, small_world: World) -> None:
    b = 6
    vec = envs.RecVectorEnv(b, config=small_cfg, world=small_world)
    singles = [envs.RecEnv(config=small_cfg, world=small_world) for _ in range(b)]
    obs, _ = vec.reset(seed=11)
    sobs = [s.reset(seed=11 + i)[0] for i, s in enumerate(singles)]
    ends = 0
    for _ in range(70):
        for i in range(b):
            assert np.array_equal(obs["candidates"][i], sobs[i]["candidates"])
            np.testing.assert_allclose(obs["features"][i], sobs[i]["features"], rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(obs["context"][i], sobs[i]["context"], rtol=1e-5, atol=1e-6)
        act = greedy(obs, vec.core.K)
        obs, rew, term, trunc, info = vec.step(act)
        for i, s in enumerate(singles):
            o, r, te, tr, inf = s.step(act[i])
            assert inf["click_rank"] == info["click_rank"][i]
            assert (te, tr) == (term[i], trunc[i])
            np.testing.assert_allclose(r, rew[i], rtol=1e-5)
            if te or tr:
                ends += 1
                np.testing.assert_allclose(info["final_obs"][i]["features"], o["features"], rtol=1e-5, atol=1e-6)
                o, _ = s.reset()
            sobs[i] = o
    assert ends > b  # autoreset was exercised
