"""The rollout log (envs/rollout_log.py): the logging phase writes Parquet that the CF fit reads back."""

from __future__ import annotations

import numpy as np

from configs.schema import EnvConfig
from envs.world import World


def test_rollouts_log_to_parquet_and_the_cf_fit_reads_them(small_cfg: EnvConfig, small_world: World,
                                                           tmp_path) -> None:
    from envs.presets import fit_world_from_logs, run_logging_phase
    from envs.rollout_log import ROLLOUT_COLUMNS as LOG_COLUMNS
    from envs.rollout_log import read_rollout_log as read_log

    frame = run_logging_phase(small_world, small_cfg, "train", seed=3, batch_size=64)
    path = tmp_path / "train.parquet"
    from envs.rollout_log import write_rollout_log as write_log

    write_log(frame, path)
    back = read_log(path)
    assert list(back.columns) == list(LOG_COLUMNS) and len(back) == len(frame)
    assert np.all(back["log_propensity"] < 0) and np.all(np.isfinite(back["log_propensity"]))
    clicked = back[back["click_rank"] >= 0]
    assert np.array_equal(clicked["clicked_item"].to_numpy(),
                          np.array([s[r] for s, r in zip(clicked["slate"], clicked["click_rank"], strict=True)]))
    heldout = run_logging_phase(small_world, small_cfg, "heldout", seed=4, batch_size=64)
    import copy

    world = copy.deepcopy(small_world)
    fit_world_from_logs(world, small_cfg, {"train": back, "heldout": heldout})
    assert world.popularity.sum() == (back["click_rank"] >= 0).sum() + (heldout["click_rank"] >= 0).sum()
    assert np.abs(world.item_factors).sum() > 0
