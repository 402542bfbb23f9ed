"""Pickle-free checkpoints of a PPO run: write, read back and check, and rebuild the model from one.

A checkpoint ``RUN_DIR/checkpoints/step-<N>/`` is a folder built beside its final name and renamed into place (a
kill leaves the previous checkpoints whole), holding nothing that is unpickled on resume::

    policy.safetensors, policy.json   weights + constructor settings (agents/ppo_ranker.py)
    optimizer.pt      Adam's state: tensors and numbers only, read with torch.load(weights_only=True)
    vecnormalize.npz  the reward-normalisation statistics (train.ppo.normalize_reward), read with allow_pickle=False
    state.json        step count, update count, the sha256 of every file above (written last)

``train.py --resume`` rebuilds PPO from the run's config (:func:`new_ppo`, the one constructor of a run's PPO) and
loads these into it; a checkpoint that is truncated or unreadable (or lacks its reward-normalisation file) is named
in a message and the previous one is used.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch as th
from safetensors.torch import load_file, save_file
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import VecNormalize

from agents.policies import SlatePolicy
from agents.ppo_ranker import (
    SETTINGS_FILE,
    WEIGHTS_FILE,
    PolicyFileError,
    policy_spec,
    read_policy_files,
    same_space,
    save_policy,
)
from agents.ppo_update import DeviceDictRolloutBuffer, LinearRate
from agents.rollouts import RecPPO
from configs.fileio import atomic_write_text, json_default, sha256_file
from configs.schema import Config
from envs.sb3 import SB3VecEnv

#: The run directory's checkpoint folder.
CKPT_DIR = "checkpoints"
#: A checkpoint folder is ``checkpoints/step-<num_timesteps, 12 digits>``.
CKPT_PREFIX = "step-"
#: Checkpoints kept (the newest ones); an unusable newest one falls back to the one before.
KEEP_CHECKPOINTS = 2
OPTIMIZER_FILE = "optimizer.pt"
VECNORM_FILE = "vecnormalize.npz"
#: The running average of the policy's weights (``train.policy_average_halflife`` > 0), safetensors.
AVERAGE_FILE = "policy_average.safetensors"
STATE_FILE = "state.json"
CKPT_FORMAT = "recfeed.checkpoint"
CKPT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint cannot be used; the message names the file and what is wrong with it."""


@dataclass
class Checkpoint:
    """A checkpoint read back and checked (see :func:`read_checkpoint`).

    Attributes:
        path: Its folder.
        state: ``state.json``.
        settings: ``policy.json``.
        weights: The policy's state dict.
        optimizer: The optimizer's state dict.
        vecnorm: The reward-normalisation statistics (``None``: the run does not normalise rewards).
        average: The running average of the policy's weights (``None``: the run does not average them).
    """

    path: Path
    state: dict[str, Any]
    settings: dict[str, Any]
    weights: dict[str, th.Tensor]
    optimizer: dict[str, Any]
    vecnorm: dict[str, np.ndarray] | None = field(default=None)
    average: dict[str, th.Tensor] | None = field(default=None)

    @property
    def num_timesteps(self) -> int:
        """Env steps trained when it was written."""
        return int(self.state["num_timesteps"])


def checkpoint_dirs(ckpt_dir: Path) -> list[Path]:
    """The checkpoint folders in ``ckpt_dir`` (``step-<N>``), newest (largest N) first."""
    if not ckpt_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in ckpt_dir.iterdir()
             if p.is_dir() and (m := re.fullmatch(re.escape(CKPT_PREFIX) + r"(\d+)", p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def save_checkpoint(model: PPO, ckpt_dir: Path, keep: int = KEEP_CHECKPOINTS,
                    average: dict[str, th.Tensor] | None = None) -> Path:
    """Write ``ckpt_dir/step-<N>/`` (policy, optimizer, reward-normalisation stats, the running average of the
    weights when ``average`` is given, state.json) and keep the newest ``keep`` checkpoints.

    The folder is built under a temporary name beside it and renamed into place, so a kill at any moment leaves
    every earlier checkpoint whole. A checkpoint of the same step (the final save right after a periodic one) is
    replaced. Only folders this function wrote (``step-<N>`` and its own temporary names) are ever removed.

    Returns:
        The checkpoint folder.
    """
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    step = int(model.num_timesteps)
    dest = ckpt_dir / f"{CKPT_PREFIX}{step:012d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=ckpt_dir))
    try:
        policy = model.policy
        assert isinstance(policy, SlatePolicy)
        save_policy(policy, tmp)
        th.save(policy.optimizer.state_dict(), tmp / OPTIMIZER_FILE)
        venv = model.get_env()
        files = [WEIGHTS_FILE, SETTINGS_FILE, OPTIMIZER_FILE]
        if isinstance(venv, VecNormalize):
            rms = venv.ret_rms
            buf = io.BytesIO()
            np.savez(buf, ret_mean=np.asarray(rms.mean, np.float64), ret_var=np.asarray(rms.var, np.float64),
                     ret_count=np.float64(rms.count), gamma=np.float64(venv.gamma),
                     epsilon=np.float64(venv.epsilon), clip_reward=np.float64(venv.clip_reward),
                     norm_obs=np.bool_(venv.norm_obs), norm_reward=np.bool_(venv.norm_reward))
            (tmp / VECNORM_FILE).write_bytes(buf.getvalue())
            files.append(VECNORM_FILE)
        if average is not None:
            save_file({k: v.detach().cpu().contiguous() for k, v in average.items()}, str(tmp / AVERAGE_FILE))
            files.append(AVERAGE_FILE)
        state = {"format": CKPT_FORMAT, "version": CKPT_VERSION, "num_timesteps": step,
                 "n_updates": int(model._n_updates), "episode_num": int(model._episode_num), "time": time.time(),
                 "reward_normalisation": isinstance(venv, VecNormalize),
                 "sha256": {name: sha256_file(tmp / name) for name in files}}
        atomic_write_text(tmp / STATE_FILE, json.dumps(state, indent=2, default=json_default) + "\n")
        old = None
        if dest.exists():
            old = ckpt_dir / f".{dest.name}.replaced"
            if old.exists():
                shutil.rmtree(old)
            os.rename(dest, old)
        os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    for stale in checkpoint_dirs(ckpt_dir)[keep:]:
        shutil.rmtree(stale)
    for p in ckpt_dir.glob(f".{CKPT_PREFIX}*"):  # leftovers of a write that was killed
        if p.is_dir() and p.name.endswith((".tmp", ".replaced")):
            shutil.rmtree(p, ignore_errors=True)
    return dest


def read_checkpoint(path: Path, device: th.device | str = "cpu", normalize_reward: bool | None = None) -> Checkpoint:
    """Read and check one checkpoint folder (no unpickling).

    Args:
        path: ``checkpoints/step-<N>``.
        device: Where the optimizer state goes.
        normalize_reward: The run's ``train.ppo.normalize_reward`` (``None``: not checked); when true, a
            checkpoint without its reward-normalisation file is an error.

    Raises:
        CheckpointError: A file is missing, truncated, changed since it was written, or unreadable (named).
    """
    spath = path / STATE_FILE
    try:
        state = json.loads(spath.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise CheckpointError(f"{spath} is missing (the checkpoint was not finished)") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{spath}: unreadable ({exc})") from exc
    if not isinstance(state, dict) or state.get("format") != CKPT_FORMAT or state.get("version") != CKPT_VERSION:
        raise CheckpointError(f"{spath}: not a recfeed checkpoint state (format {CKPT_FORMAT!r} v{CKPT_VERSION})")
    hashes = state.get("sha256")
    if not isinstance(hashes, dict) or not isinstance(state.get("num_timesteps"), int):
        raise CheckpointError(f"{spath}: lacks sha256 / num_timesteps")
    wants_vecnorm = bool(state.get("reward_normalisation")) or bool(normalize_reward)
    if wants_vecnorm and VECNORM_FILE not in hashes:
        raise CheckpointError(f"{path / VECNORM_FILE}: the run normalises rewards but this checkpoint has no "
                              "reward-normalisation statistics")
    required = [WEIGHTS_FILE, SETTINGS_FILE, OPTIMIZER_FILE] + ([VECNORM_FILE] if VECNORM_FILE in hashes else [])
    for name in required:
        f = path / name
        if not f.is_file():
            if name == VECNORM_FILE:
                raise CheckpointError(f"{f} is missing: the reward-normalisation statistics are needed to resume "
                                      "(without them the run would silently switch to unnormalised rewards)")
            raise CheckpointError(f"{f} is missing (part of the checkpoint)")
        if sha256_file(f) != hashes.get(name):
            raise CheckpointError(f"{f}: truncated or changed since the checkpoint was written (sha256 differs)")
    try:
        settings, weights = read_policy_files(path)
    except (FileNotFoundError, PolicyFileError) as exc:
        raise CheckpointError(str(exc)) from exc
    try:
        optimizer = th.load(path / OPTIMIZER_FILE, map_location=device, weights_only=True)
    except Exception as exc:  # torch raises several types for a bad archive
        raise CheckpointError(f"{path / OPTIMIZER_FILE}: unreadable ({exc})") from exc
    if not isinstance(optimizer, dict) or "state" not in optimizer or "param_groups" not in optimizer:
        raise CheckpointError(f"{path / OPTIMIZER_FILE}: not an optimizer state dict")
    vecnorm = None
    if VECNORM_FILE in hashes:
        try:
            with np.load(path / VECNORM_FILE, allow_pickle=False) as z:
                vecnorm = {k: np.asarray(z[k]) for k in z.files}
        except Exception as exc:  # zipfile / numpy errors for a bad archive
            raise CheckpointError(f"{path / VECNORM_FILE}: unreadable ({exc})") from exc
        missing = {"ret_mean", "ret_var", "ret_count", "gamma", "norm_obs"} - set(vecnorm)
        if missing:
            raise CheckpointError(f"{path / VECNORM_FILE}: lacks {sorted(missing)}")
    average = None
    if AVERAGE_FILE in hashes:
        f = path / AVERAGE_FILE
        if not f.is_file() or sha256_file(f) != hashes.get(AVERAGE_FILE):
            raise CheckpointError(f"{f}: missing, truncated or changed since the checkpoint was written")
        try:
            average = load_file(str(f), device=str(device))
        except Exception as exc:  # safetensors raises its own error types for a bad file
            raise CheckpointError(f"{f}: unreadable ({exc})") from exc
        if set(average) != set(weights) or any(average[k].shape != weights[k].shape for k in weights):
            raise CheckpointError(f"{f}: its tensors are not the policy's (names or shapes differ)")
    return Checkpoint(path, state, settings, weights, optimizer, vecnorm, average)


def latest_checkpoint(ckpt_dir: Path, device: th.device | str = "cpu", normalize_reward: bool | None = None,
                      warn: Any = None) -> tuple[Checkpoint, list[str]]:
    """The newest usable checkpoint in ``ckpt_dir``, and why each newer one was skipped.

    Args:
        ckpt_dir: ``RUN_DIR/checkpoints``.
        device: Where the optimizer state goes.
        normalize_reward: See :func:`read_checkpoint`.
        warn: Called with a message for each unusable checkpoint (default: printed to stderr).

    Raises:
        FileNotFoundError: No checkpoint at all.
        CheckpointError: No usable checkpoint (every reason named), or only an older recfeed's pickled one.
    """
    if warn is None:
        def warn(msg: str) -> None:
            print(f"train.py: warning: {msg}", file=sys.stderr, flush=True)

    dirs = checkpoint_dirs(ckpt_dir)
    if not dirs:
        if (ckpt_dir / "latest.zip").is_file():
            raise CheckpointError(f"{ckpt_dir / 'latest.zip'} was written by an older recfeed (a pickled SB3 "
                                  "archive and vecnormalize.pkl); this recfeed resumes only from pickle-free "
                                  "checkpoints: start a new run")
        raise FileNotFoundError(f"no checkpoint to resume in {ckpt_dir}")
    skipped: list[str] = []
    for d in dirs:
        try:
            ckpt = read_checkpoint(d, device, normalize_reward)
        except CheckpointError as exc:
            skipped.append(str(exc))
            warn(f"checkpoint {d.name} is unusable: {exc}")
            continue
        if skipped:
            warn(f"resuming from the previous checkpoint, {d.name}")
        return ckpt, skipped
    raise CheckpointError(f"no usable checkpoint in {ckpt_dir}: " + "; ".join(skipped))


def restore_model(cfg: Config, ckpt: Checkpoint, venv: SB3VecEnv, device: th.device,
                  run_dir: Path | None = None) -> PPO:
    """A PPO built from the run's config (as a new run builds it) with the checkpoint's state loaded into it.

    Weights, optimizer state, step and update counts and the reward-normalisation statistics come from the
    checkpoint; nothing is unpickled.

    Args:
        cfg: The run's config.
        ckpt: The checkpoint (:func:`read_checkpoint`).
        venv: The training env (wrapped here in VecNormalize when the checkpoint has statistics).
        device: Torch device.
        run_dir: Run directory (TensorBoard folder); ``None``: no TensorBoard.

    Raises:
        CheckpointError: The checkpoint does not fit the run's env or config.
    """
    where = str(ckpt.path / SETTINGS_FILE)
    try:
        obs_space, act_space, kwargs = policy_spec(ckpt.settings, ckpt.weights, where)
    except PolicyFileError as exc:
        raise CheckpointError(str(exc)) from exc
    if not same_space(obs_space, venv.observation_space) or not same_space(act_space, venv.action_space):
        raise CheckpointError(f"{where}: the checkpoint's policy was built for other observation/action spaces than "
                              "this run's env (was the world or the config changed?)")
    env: SB3VecEnv | VecNormalize = venv
    if ckpt.vecnorm is not None:
        v = ckpt.vecnorm
        if bool(v["norm_obs"]) or not np.isclose(float(v["gamma"]), cfg.train.ppo.gamma):
            raise CheckpointError(f"{ckpt.path / VECNORM_FILE}: settings (norm_obs={bool(v['norm_obs'])}, "
                                  f"gamma={float(v['gamma'])}) differ from the run's (rewards only, "
                                  f"gamma={cfg.train.ppo.gamma})")
        env = VecNormalize(venv, norm_obs=False, norm_reward=True, gamma=cfg.train.ppo.gamma)
        env.ret_rms.mean = np.asarray(v["ret_mean"], np.float64)
        env.ret_rms.var = np.asarray(v["ret_var"], np.float64)
        env.ret_rms.count = float(v["ret_count"])
        if "epsilon" in v:
            env.epsilon = float(v["epsilon"])
        if "clip_reward" in v:
            env.clip_reward = float(v["clip_reward"])
    model = new_ppo(cfg, env, device, run_dir, kwargs)
    policy = model.policy
    try:
        policy.load_state_dict(ckpt.weights, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{ckpt.path / WEIGHTS_FILE}: does not fit the policy ({exc})") from exc
    try:
        policy.optimizer.load_state_dict(ckpt.optimizer)
    except (ValueError, KeyError, RuntimeError) as exc:
        raise CheckpointError(f"{ckpt.path / OPTIMIZER_FILE}: does not fit the optimizer ({exc})") from exc
    model.num_timesteps = ckpt.num_timesteps
    model._n_updates = int(ckpt.state.get("n_updates", 0))
    model._episode_num = int(ckpt.state.get("episode_num", 0))
    return model


def new_ppo(cfg: Config, env: SB3VecEnv | VecNormalize, device: th.device, run_dir: Path | None,
            kwargs: dict[str, Any]) -> PPO:
    """PPO with the config's hyperparameters and ``SlatePolicy(**kwargs)``.

    How a new run builds its model (:func:`agents.training.train`), and so how :func:`restore_model` rebuilds one
    before loading a checkpoint into it: it lives here so that both build the same PPO.
    """
    pc, tc = cfg.train.ppo, cfg.train
    algo: type[PPO] = RecPPO  # SB3's PPO, the bootstrap batched, rollouts on collect_device (agents/rollouts.py)
    extra: dict[str, Any] = {"collect_device": tc.collect_device}
    if tc.backend == "ray":  # rollouts from Ray actors (agents/ray_backend.py), the same update
        from agents.ray_backend import RayPPO

        algo, extra = RayPPO, {}
    rate = pc.learning_rate if pc.learning_rate_end is None else LinearRate(pc.learning_rate, pc.learning_rate_end)
    return algo(SlatePolicy, env, learning_rate=rate, n_steps=pc.n_steps, batch_size=pc.batch_size,
               n_epochs=pc.n_epochs, gamma=pc.gamma, gae_lambda=pc.gae_lambda, clip_range=pc.clip_range,
               ent_coef=pc.ent_coef, vf_coef=pc.vf_coef, max_grad_norm=pc.max_grad_norm, target_kl=pc.target_kl,
               tensorboard_log=None if run_dir is None else str(run_dir / "tb"), device=device, seed=tc.seed,
               policy_kwargs=kwargs, verbose=0, rollout_buffer_class=DeviceDictRolloutBuffer, **extra)
