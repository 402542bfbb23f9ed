"""``train.py --init-from RUN_DIR`` (agents/warm_start.py): a new run starts from another run's final policy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch as th
from conftest import make_run_dir, tiny_args

from agents.checkpoints import CheckpointError
from agents.ppo_ranker import load_policy
from agents.warm_start import warm_start_model
from configs.loader import load_config
from encoders.hashing import HashingEncoder
from envs.sb3 import SB3VecEnv
from envs.update import add_items
from envs.vector_env import RecVectorEnv
from envs.world import World


@pytest.fixture(scope="module")
def src_run(tmp_path_factory: pytest.TempPathFactory, small_world: World) -> Path:
    return make_run_dir(tmp_path_factory.mktemp("warm"), small_world, steps=128)


def _model(src: Path, world: World):
    cfg = load_config(src / "config.yaml")
    cfg.env.catalog.n_items = world.n_items
    cfg.train.ppo.batch_size = 4 * cfg.train.ppo.n_steps  # the 4-user rollout (SB3 warns of a larger minibatch)
    venv = SB3VecEnv(RecVectorEnv(4, config=cfg.env, world=world))
    venv.seed(0)
    model, prov = warm_start_model(cfg, src, venv, world, th.device("cpu"), None)
    return model, prov, venv


def _logits(policy, obs: dict[str, np.ndarray]) -> th.Tensor:
    t, _ = policy.obs_to_tensor(obs)
    with th.no_grad():
        return policy.candidate_logits(t)


def test_warm_start_ranks_as_the_source_right_after_loading(src_run: Path, small_world: World) -> None:
    model, prov, venv = _model(src_run, small_world)
    src = load_policy(src_run, "cpu")
    obs = venv.reset()
    th.testing.assert_close(_logits(model.policy, obs), _logits(src, obs), rtol=0, atol=1e-6)
    a_src, _ = src.predict(obs, deterministic=True)
    a_new, _ = model.policy.predict(obs, deterministic=True)
    np.testing.assert_array_equal(a_new, a_src)
    assert prov["tensors"] > 0 and model.num_timesteps == 0  # a new run: steps and optimizer start fresh


def test_warm_start_on_a_grown_catalog(src_run: Path, small_world: World) -> None:
    table = pd.DataFrame({"id": [f"n{i}" for i in range(40)], "text": [f"a new cookbook number {i}" for i in range(40)],
                          "category": ["cooking"] * 40, "price": [20.0] * 40})
    grown = add_items(small_world, table, HashingEncoder(dim=64))
    model, _, venv = _model(src_run, grown)
    assert model.policy.item_category.shape[0] == grown.n_items  # the new world's categories
    np.testing.assert_array_equal(model.policy.item_category[-40:].numpy(), grown.catalog.category[-40:])
    src = load_policy(src_run, "cpu")
    obs = venv.reset()
    old = (obs["candidates"] < small_world.n_items).all(axis=1)  # rows whose candidates the source knows
    assert old.any()
    sub = {k: v[old] for k, v in obs.items()}
    th.testing.assert_close(_logits(model.policy, sub), _logits(src, sub), rtol=0, atol=1e-6)


def test_warm_start_refuses_a_policy_that_does_not_fit(src_run: Path, small_world: World, tmp_path: Path) -> None:
    cfg = load_config(src_run / "config.yaml")
    cfg.train.ppo.batch_size = 4 * cfg.train.ppo.n_steps
    venv = SB3VecEnv(RecVectorEnv(4, config=cfg.env, world=small_world))
    with pytest.raises(CheckpointError, match="init-from"):
        warm_start_model(cfg, tmp_path, venv, small_world, th.device("cpu"), None)  # no policy files
    from envs.presets import build_world

    world = build_world(cfg.env, HashingEncoder(dim=32), progress=False)
    venv = SB3VecEnv(RecVectorEnv(4, config=cfg.env, world=world))
    with pytest.raises(CheckpointError, match="shape"):  # another D: the state network does not fit
        warm_start_model(cfg, src_run, venv, world, th.device("cpu"), None)


def test_train_cli_init_from(tmp_path: Path, src_run: Path) -> None:
    import train

    with pytest.raises(SystemExit, match="one of them"):
        train.main(["--resume", str(src_run), "--init-from", str(src_run)])
    with pytest.raises(SystemExit, match="pickle-free policy"):
        train.main([*tiny_args(tmp_path, "x", 64), "--init-from", str(tmp_path)])
