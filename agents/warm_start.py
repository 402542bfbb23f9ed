"""Start a new run from another run's policy (``train.py --init-from RUN_DIR``): incremental learning.

Unlike ``--resume`` (the same run, config and world, continued from its checkpoint with its optimizer), a warm
start is a *new* run, possibly on another world (an updated one: ``python -m envs.update``), whose policy starts
from ``RUN_DIR``'s final weights (``policy.safetensors`` + ``policy.json``, pickle-free). The policy is built with
``RUN_DIR``'s own constructor settings (its base, α start, category cap), so right after loading it ranks exactly
as ``RUN_DIR``'s policy does; what depends on the catalog follows the new world: the item-category buffer (the
within-slate repulsion and cap) and, with ``use_item_table``, the item table, whose rows for the old items are
kept and whose new rows start at the table's initialisation. The optimizer starts fresh (Adam's moments belong
to the old run's last updates); the reward-normalisation statistics come from ``RUN_DIR``'s newest checkpoint when
it has them (the value head was trained on that scale).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch as th
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import VecNormalize

from agents.checkpoints import CKPT_DIR, CheckpointError, latest_checkpoint, new_ppo
from agents.ppo_ranker import SETTINGS_FILE, PolicyFileError, policy_spec, read_policy_files
from configs.schema import Config
from envs.sb3 import SB3VecEnv
from envs.world import World

#: State-dict entries that follow the new world rather than the source run.
CATALOG_BUFFERS = ("item_category",)
ITEM_TABLE = "item_table.weight"


def warm_start_kwargs(src: Path, world: World) -> tuple[dict[str, Any], dict[str, th.Tensor]]:
    """The source run's policy constructor kwargs (catalog parts from ``world``) and its weights.

    Raises:
        CheckpointError: The run has no readable pickle-free policy.
    """
    where = str(src / SETTINGS_FILE)
    try:
        settings, weights = read_policy_files(src)
        _, _, kwargs = policy_spec(settings, weights, where)
    except (FileNotFoundError, PolicyFileError) as exc:
        raise CheckpointError(f"--init-from {src}: {exc}") from exc
    if kwargs.get("item_category") is not None:
        kwargs["item_category"] = world.catalog.category
    if kwargs.get("use_item_table"):
        kwargs["n_items"] = world.n_items
    return kwargs, weights


def load_warm_weights(policy: th.nn.Module, weights: dict[str, th.Tensor], where: str) -> dict[str, int]:
    """Copy ``weights`` into ``policy`` (catalog buffers excepted; item-table rows of the old items copied).

    Returns:
        ``{"tensors": loaded, "item_rows": item-table rows copied}``.

    Raises:
        CheckpointError: A missing or extra tensor, or one whose shape differs (another N, D or architecture).
    """
    state = policy.state_dict()
    extra = sorted(set(weights) - set(state) - set(CATALOG_BUFFERS))
    missing = sorted(set(state) - set(weights) - set(CATALOG_BUFFERS))
    if extra or missing:
        raise CheckpointError(f"{where}: the policy does not fit this run's (missing {missing[:5]}, extra {extra[:5]})")
    rows = 0
    for name, value in weights.items():
        if name in CATALOG_BUFFERS:
            continue
        target = state[name]
        if name == ITEM_TABLE and value.shape[1:] == target.shape[1:]:
            rows = min(len(value), len(target))
            target[:rows] = value[:rows].to(target.dtype)
            continue
        if value.shape != target.shape:
            raise CheckpointError(f"{where}: tensor {name} has shape {tuple(value.shape)}, this run's policy needs "
                                  f"{tuple(target.shape)} (other N, D, features or architecture)")
        target.copy_(value.to(target.dtype))
    policy.load_state_dict(state, strict=True)
    return {"tensors": len(weights), "item_rows": rows}


def warm_start_model(cfg: Config, src: str | Path, venv: SB3VecEnv, world: World, device: th.device,
                     run_dir: Path | None) -> tuple[PPO, dict[str, Any]]:
    """A new PPO on ``venv`` whose policy starts from ``src``'s (see the module docstring).

    Args:
        cfg: The new run's config.
        src: The source run directory.
        venv: The new run's training env (wrapped in VecNormalize here when the config normalises rewards).
        world: The new run's world.
        device: Torch device.
        run_dir: The new run's directory (TensorBoard), or ``None``.

    Returns:
        ``(model, provenance)`` with the source, the tensors loaded and the reward statistics' origin.

    Raises:
        CheckpointError: ``src`` is not a run with a pickle-free policy, or its policy does not fit.
    """
    src = Path(src)
    kwargs, weights = warm_start_kwargs(src, world)
    env: SB3VecEnv | VecNormalize = venv
    stats = None
    if cfg.train.ppo.normalize_reward:
        env = VecNormalize(venv, norm_obs=False, norm_reward=True, gamma=cfg.train.ppo.gamma)
        try:
            ckpt, _ = latest_checkpoint(src / CKPT_DIR, "cpu", None, warn=lambda _msg: None)
        except (FileNotFoundError, CheckpointError):
            ckpt = None
        if ckpt is not None and ckpt.vecnorm is not None and np.isclose(float(ckpt.vecnorm["gamma"]),
                                                                         cfg.train.ppo.gamma):
            env.ret_rms.mean = np.asarray(ckpt.vecnorm["ret_mean"], np.float64)
            env.ret_rms.var = np.asarray(ckpt.vecnorm["ret_var"], np.float64)
            env.ret_rms.count = float(ckpt.vecnorm["ret_count"])
            stats = str(ckpt.path)
    model = new_ppo(cfg, env, device, run_dir, kwargs)
    loaded = load_warm_weights(model.policy, weights, str(src / SETTINGS_FILE))
    return model, {"run": str(src.resolve()), **loaded, "reward_statistics": stats}
