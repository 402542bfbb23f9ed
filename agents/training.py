"""PPO training of the slate policy: run directories, callbacks, checkpoints, resume, the final comparison.

``train.py`` is the command line over :func:`train`. A run directory holds::

    config.yaml      the resolved config (every hyperparameter)
    versions.json    library versions, device, seeds, the world's key
    signature.json   the world and env shape the policy is trained on (agents/runinfo.py)
    tb/              TensorBoard events (SB3's scalars + rollout/*, train/alpha_*, time/*, eval/*)
    checkpoints/     step-<N>/ every train.checkpoint_every steps, the last two kept (see below)
    eval.jsonl       periodic evaluations against tuned-alpha on held-out users
    policy.safetensors + policy.json   the final policy, pickle-free: what evaluate.py / export / serve read
    model.zip        the final model as SB3's archive (PPO with SlatePolicy), for SB3 users; recfeed never reads it
    report/          final comparison: results.json / .md / .csv, plots/*.png, alpha.json
    summary.json     headline figures, timings and paths

A checkpoint ``checkpoints/step-<N>/`` is a folder built beside its final name and renamed into place (a kill
leaves the previous checkpoints whole), holding nothing that is unpickled on resume::

    policy.safetensors, policy.json   weights + constructor settings (agents/ppo_ranker.py)
    optimizer.pt      Adam's state: tensors and numbers only, read with torch.load(weights_only=True)
    vecnormalize.npz  the reward-normalisation statistics (train.ppo.normalize_reward), read with allow_pickle=False
    state.json        step count, update count, the sha256 of every file above (written last)

``--resume`` rebuilds PPO from the run's config and loads these into it; a checkpoint that is truncated or
unreadable (or lacks its reward-normalisation file) is named in a message and the previous one is used.
"""

from __future__ import annotations

import io
import json
import os
import platform
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
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback, CallbackList
from stable_baselines3.common.logger import HParam
from stable_baselines3.common.vec_env import VecNormalize
from tqdm.auto import tqdm

from agents.baselines import ParamSearch, RankerContext, make_ranker, tune_alpha, tuning_cache_dir
from agents.evaluation import (
    RHO_EDGES,
    RHO_LABELS,
    Bootstrap,
    episode_plan,
    paired_test,
    run_episodes,
    summarise,
    write_report,
)
from agents.plausibility import write_plausibility
from agents.policies import SlatePolicy
from agents.ppo_ranker import (
    CONFIG_FILE,
    MODEL_FILE,
    SETTINGS_FILE,
    WEIGHTS_FILE,
    PolicyFileError,
    PPORanker,
    policy_spec,
    read_policy_files,
    resolve_device,
    same_space,
    save_policy,
)
from agents.runinfo import write_signature
from configs.fileio import json_default, sha256_file
from configs.loader import atomic_write_text, load_config, save_yaml, to_dict
from configs.schema import Config
from envs.core import BatchedCore
from envs.factory import make_core
from envs.presets import load_world, world_key
from envs.sb3 import SB3VecEnv
from envs.spaces import F_CAT_EXPOSURE, F_ITEM_SEEN, FEATURE_NAMES
from envs.vector_env import RecVectorEnv
from envs.world import World

CKPT_DIR = "checkpoints"
#: A checkpoint folder is ``checkpoints/step-<num_timesteps, 12 digits>``.
CKPT_PREFIX = "step-"
#: Checkpoints kept (the newest ones); an unusable newest one falls back to the one before.
KEEP_CHECKPOINTS = 2
OPTIMIZER_FILE = "optimizer.pt"
VECNORM_FILE = "vecnormalize.npz"
STATE_FILE = "state.json"
CKPT_FORMAT = "recfeed.checkpoint"
CKPT_VERSION = 1
#: Baselines of the final comparison (the oracle reads hidden state; it is the upper reference).
FINAL_BASELINES = ("random", "greedy-llm", "greedy-cf", "tuned-alpha", "linucb", "diverse", "tuned-diverse", "oracle",
                   "tuned-oracle-diverse")
#: The quality bar's reference (the strongest hand-written ranker) and the non-myopic ceiling (reads hidden state).
STRONGEST_HEURISTIC, CEILING = "tuned-diverse", "tuned-oracle-diverse"


def versions() -> dict[str, str]:
    """Library versions recorded with a run."""
    import gymnasium
    import stable_baselines3
    import transformers

    return {"python": platform.python_version(), "numpy": np.__version__, "torch": th.__version__,
            "stable_baselines3": stable_baselines3.__version__, "gymnasium": gymnasium.__version__,
            "transformers": transformers.__version__, "platform": platform.platform()}


def new_run_dir(cfg: Config) -> Path:
    """A fresh run directory under ``train.out_dir`` (``run_name`` or a timestamp; never reused)."""
    base = Path(cfg.train.out_dir)
    name = cfg.train.run_name or time.strftime(f"ppo-{cfg.env.preset.split(':')[0]}-%Y%m%d-%H%M%S")
    path = base / name
    if path.exists():
        raise FileExistsError(f"run directory {path} already exists; pick another train.run_name or use --resume")
    path.mkdir(parents=True)
    return path


def _json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, default=json_default) + "\n")


def _atomic_save(save: Any, dest: Path) -> None:
    """Call ``save(tmp_path)`` then rename into place, so a checkpoint is never half-written."""
    tmp = dest.with_name(f".{dest.name}.tmp")
    save(tmp)
    written = tmp if tmp.exists() else tmp.with_suffix(tmp.suffix + ".zip")  # SB3 may append .zip
    os.replace(written, dest)


def policy_kwargs(cfg: Config, init_alpha: float, world: World,
                  diverse: dict[str, float] | None = None) -> dict[str, Any]:
    """SlatePolicy constructor arguments from the config (``init_alpha`` clipped into (0, 1)).

    Args:
        cfg: The run's config.
        init_alpha: tuned-alpha's α (the start of a ``"blend"`` policy unless ``policy.init_alpha`` is set).
        world: The world (item categories).
        diverse: ``tuned-diverse``'s parameters ``{alpha, cap, exposure_weight, seen_weight}``; required for
            ``policy.base = "diverse"``, whose start they are (α, the fixed penalties, the category cap).
    """
    pc = cfg.train.policy
    extra: dict[str, Any] = {}
    if pc.base == "diverse":
        if diverse is None:
            raise ValueError("policy.base = 'diverse' needs tuned-diverse's parameters")
        init_alpha = float(diverse["alpha"])
        weights = np.zeros(len(FEATURE_NAMES))
        weights[F_CAT_EXPOSURE] = -float(diverse["exposure_weight"])
        weights[F_ITEM_SEEN] = -float(diverse["seen_weight"])
        cap = int(diverse["cap"])
        extra = dict(base="diverse", base_weights=weights.tolist(),
                     category_cap=cap if cap < cfg.env.slate_size else None)
    alpha0 = pc.init_alpha if pc.init_alpha is not None else init_alpha
    return dict(hidden=pc.hidden, candidate_hidden=pc.candidate_hidden, n_layers=pc.n_layers,
                temperature=pc.temperature, init_alpha=float(np.clip(alpha0, 0.02, 0.98)),
                residual_init_scale=pc.residual_init_scale, use_item_table=pc.use_item_table,
                item_category=world.catalog.category if pc.category_repulsion else None,
                entropy_estimator=pc.entropy_estimator, **extra)


def make_venv(cfg: Config, world: World, seed: int) -> SB3VecEnv:
    """The native vector env over the training users, behind the SB3 adapter (seeded)."""
    venv = SB3VecEnv(RecVectorEnv(cfg.train.ppo.n_envs, config=cfg.env, world=world, population="train"))
    venv.seed(seed)
    return venv


# ---- callbacks -----------------------------------------------------------------------------------------------


class RolloutMetrics(BaseCallback):
    """Logs what users did during each rollout, the learned α, and where the time goes.

    ``rollout/ctr`` (sessions' requests with a click), ``rollout/purchase_rate`` (purchases per request),
    ``rollout/dwell`` (dwell seconds per request), ``rollout/session_length``, ``rollout/session_return``,
    ``train/alpha_mean`` / ``train/alpha_std`` and the ``train/alpha`` histogram over the rollout's states,
    ``time/collect_s``, ``time/train_s``, ``time/env_steps_per_s``.
    """

    def __init__(self, stats_env: SB3VecEnv, bar: tqdm | None = None) -> None:
        super().__init__()
        self.stats_env, self.bar = stats_env, bar
        self._t_rollout = self._t_train = time.perf_counter()
        self.collect_s = self.train_s = 0.0
        self._last_steps = 0
        self._updating = False

    def _on_rollout_start(self) -> None:
        now = time.perf_counter()
        if self._updating:  # the time since the last rollout ended went into the update
            self.train_s += now - self._t_train
            self.logger.record("time/train_s", now - self._t_train)
        self._t_rollout = now

    def _on_training_end(self) -> None:
        if self._updating:
            self.train_s += time.perf_counter() - self._t_train
            self._updating = False

    def _on_step(self) -> bool:
        if self.bar is not None:
            self.bar.update(self.training_env.num_envs)
        return True

    def _on_rollout_end(self) -> None:
        now = time.perf_counter()
        collect = now - self._t_rollout
        self.collect_s += collect
        self._t_train = now
        self._updating = True
        s = self.stats_env.pop_stats()
        steps = max(s["steps"], 1)
        self.logger.record("rollout/ctr", s["clicks"] / steps)
        self.logger.record("rollout/purchase_rate", s["purchases"] / steps)
        self.logger.record("rollout/dwell", s["dwell"] / steps)
        self.logger.record("rollout/reward_per_request", s["reward"] / steps)
        if s["episodes"]:
            self.logger.record("rollout/session_length", s["episode_len"] / s["episodes"])
            self.logger.record("rollout/session_return", s["episode_return"] / s["episodes"])
        self.logger.record("time/collect_s", collect)
        self.logger.record("time/env_steps_per_s", (self.num_timesteps - self._last_steps) / max(collect, 1e-9))
        self._last_steps = self.num_timesteps
        policy = self.model.policy
        assert isinstance(policy, SlatePolicy)
        buf = self.model.rollout_buffer.observations
        assert isinstance(buf, dict)
        n = min(2048, buf["context"].shape[0] * buf["context"].shape[1])
        flat = {k: v.reshape(-1, *v.shape[2:])[-n:] for k, v in buf.items()}
        with th.no_grad():
            alpha = policy.alpha(flat).cpu()
        self.logger.record("train/alpha_mean", float(alpha.mean()))
        self.logger.record("train/alpha_std", float(alpha.std()))
        self.logger.record("train/alpha", alpha)
        with th.no_grad():
            beta = policy.repulsion(flat)
        if beta is not None:
            self.logger.record("train/repulsion_mean", float(beta.mean()))
        if self.bar is not None:
            self.bar.set_postfix(ctr=f"{s['clicks'] / steps:.3f}", alpha=f"{float(alpha.mean()):.2f}")


class TimeLimit(BaseCallback):
    """Stops learning once ``minutes`` of wall time have passed (checked every step)."""

    def __init__(self, minutes: float) -> None:
        super().__init__()
        self.deadline = time.perf_counter() + 60.0 * minutes

    def _on_step(self) -> bool:
        return time.perf_counter() < self.deadline


class PeriodicEval(BaseCallback):
    """Every ``every`` steps: the policy against tuned-alpha on the same held-out sessions (``eval.jsonl``).

    Args:
        core: Evaluation core over the held-out users.
        plan: The fixed held-out sessions.
        tuned_return: tuned-alpha's per-episode returns on ``plan`` (computed once).
        every: Steps between evaluations.
        path: The ``eval.jsonl`` file.
        k: Slate size.
    """

    def __init__(self, core: BatchedCore, plan: Any, tuned_return: np.ndarray, every: int, path: Path,
                 k: int) -> None:
        super().__init__()
        self.core, self.plan, self.tuned, self.every, self.path, self.k = core, plan, tuned_return, every, path, k
        self._next = every

    def _on_step(self) -> bool:
        if self.every > 0 and self.num_timesteps >= self._next:
            self._next += self.every
            self.evaluate()
        return True

    def evaluate(self) -> dict[str, float]:
        """Run the evaluation now; log and append it."""
        policy = self.model.policy
        assert isinstance(policy, SlatePolicy)
        ret = run_episodes(self.core, PPORanker(policy, self.k), self.plan).ret
        policy.train()
        row = {"step": int(self.num_timesteps), "return": float(ret.mean()),
               "return_tuned_alpha": float(self.tuned.mean()), "ratio_vs_tuned": float(ret.mean() / self.tuned.mean()),
               "time": time.time()}
        for k in ("return", "return_tuned_alpha", "ratio_vs_tuned"):
            self.logger.record(f"eval/{k}", row[k])
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")
        return row


class Checkpointer(BaseCallback):
    """Every ``every`` steps: a checkpoint ``checkpoints/step-<N>/`` (see the module docstring), the last two kept."""

    def __init__(self, run_dir: Path, every: int) -> None:
        super().__init__()
        self.dir, self.every = run_dir / CKPT_DIR, every
        self._next = every

    def _on_step(self) -> bool:
        if self.every > 0 and self.num_timesteps >= self._next:
            self._next += self.every
            self.save()
        return True

    def save(self) -> None:
        """Write the checkpoint now."""
        save_checkpoint(self.model, self.dir)


# ---- checkpoints ---------------------------------------------------------------------------------------------


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
    """

    path: Path
    state: dict[str, Any]
    settings: dict[str, Any]
    weights: dict[str, th.Tensor]
    optimizer: dict[str, Any]
    vecnorm: dict[str, np.ndarray] | None = field(default=None)

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


def save_checkpoint(model: PPO, ckpt_dir: Path, keep: int = KEEP_CHECKPOINTS) -> Path:
    """Write ``ckpt_dir/step-<N>/`` (policy, optimizer, reward-normalisation stats, state.json) and keep the newest
    ``keep`` checkpoints.

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
        state = {"format": CKPT_FORMAT, "version": CKPT_VERSION, "num_timesteps": step,
                 "n_updates": int(model._n_updates), "episode_num": int(model._episode_num), "time": time.time(),
                 "reward_normalisation": isinstance(venv, VecNormalize),
                 "sha256": {name: sha256_file(tmp / name) for name in files}}
        _json(tmp / STATE_FILE, state)
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
    return Checkpoint(path, state, settings, weights, optimizer, vecnorm)


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
    model = _new_ppo(cfg, env, device, run_dir, kwargs)
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


def _new_ppo(cfg: Config, env: SB3VecEnv | VecNormalize, device: th.device, run_dir: Path | None,
             kwargs: dict[str, Any]) -> PPO:
    """PPO with the config's hyperparameters and ``SlatePolicy(**kwargs)``."""
    pc, tc = cfg.train.ppo, cfg.train
    return PPO(SlatePolicy, env, learning_rate=pc.learning_rate, n_steps=pc.n_steps, batch_size=pc.batch_size,
               n_epochs=pc.n_epochs, gamma=pc.gamma, gae_lambda=pc.gae_lambda, clip_range=pc.clip_range,
               ent_coef=pc.ent_coef, vf_coef=pc.vf_coef, max_grad_norm=pc.max_grad_norm, target_kl=pc.target_kl,
               tensorboard_log=None if run_dir is None else str(run_dir / "tb"), device=device, seed=tc.seed,
               policy_kwargs=kwargs, verbose=0)


def finished_summary(cfg: Config, run_dir: Path) -> dict[str, Any] | None:
    """The saved summary when ``run_dir`` has finished training up to ``train.total_timesteps``, else ``None``.

    Finished: ``summary.json`` and the final policy exist, the summary counts at least ``total_timesteps`` steps,
    and no checkpoint was written after it (a resume that was killed before its summary is not finished).
    """
    path = run_dir / "summary.json"
    if not path.is_file() or not (run_dir / WEIGHTS_FILE).is_file():
        return None
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
        steps = int(summary["total_timesteps"])
        dirs = checkpoint_dirs(run_dir / CKPT_DIR)
        newest = json.loads((dirs[0] / STATE_FILE).read_text(encoding="utf-8"))["num_timesteps"] if dirs else steps
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if steps >= cfg.train.total_timesteps and newest == steps:
        return summary
    return None


# ---- the run -------------------------------------------------------------------------------------------------


def train(cfg: Config, run_dir: Path | None = None, resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """Train PPO on the configured world; evaluate against the baselines; write the run directory.

    Args:
        cfg: The resolved config.
        run_dir: Run directory (``None``: a new one under ``train.out_dir``).
        resume: Continue ``run_dir`` from its last usable checkpoint (``cfg`` is its saved config, with a larger
            ``train.total_timesteps`` to extend a finished run). A run that has already trained
            ``train.total_timesteps`` steps and written its summary is not trained again: a message says so and
            its saved summary is returned (with ``"already_finished": True``).
        progress: Show progress bars.

    Returns:
        The summary (also in ``summary.json``).

    Raises:
        FileNotFoundError: ``resume`` without any checkpoint.
        CheckpointError: ``resume`` without a usable checkpoint (each one's fault named).
    """
    t_start = time.perf_counter()
    tc = cfg.train
    device = resolve_device(tc.device)
    if tc.torch_threads > 0:
        th.set_num_threads(tc.torch_threads)
    th.manual_seed(tc.seed)
    if run_dir is None:
        run_dir = new_run_dir(cfg)
    run_dir = Path(run_dir)
    say = (lambda msg: tqdm.write(msg)) if progress else (lambda msg: None)
    ckpt: Checkpoint | None = None
    skipped: list[str] = []
    if resume:
        done = finished_summary(cfg, run_dir)
        if done is not None:
            print(f"train.py: {run_dir} has already finished: {done['total_timesteps']:,} steps trained "
                  f"(train.total_timesteps = {tc.total_timesteps:,}); to train it further, resume with a larger "
                  "--total-timesteps", file=sys.stderr, flush=True)
            return {**done, "already_finished": True}
        # Read (and check) the checkpoint before anything slow; an unusable newest one falls back to the previous.
        ckpt, skipped = latest_checkpoint(run_dir / CKPT_DIR, device, tc.ppo.normalize_reward)
        saved = load_config(run_dir / CONFIG_FILE)
        if tc.total_timesteps > saved.train.total_timesteps:  # extending: the run's config says how far it goes
            saved.train.total_timesteps = tc.total_timesteps
            save_yaml(saved, run_dir / CONFIG_FILE)
    else:
        save_yaml(cfg, run_dir / CONFIG_FILE)
    say(f"run directory: {run_dir}")

    world = load_world(cfg.env, cfg.encoder, progress=progress)
    say(f"world: {world.n_items} items, users {({k: p.size for k, p in world.populations.items()})}, "
        f"encoder {world.encoder_name}")
    _json(run_dir / "versions.json", {**versions(), "device": str(device), "seed": tc.seed,
                                      "world_key": world_key(cfg.env, world.encoder_name)})
    write_signature(run_dir, cfg, world)  # what evaluate.py checks run:DIR against (agents/runinfo.py)

    # The reference every result is compared with: the best fixed α on the training users.
    t0 = time.perf_counter()
    curve = tune_alpha(world, cfg.env, episodes=max(100, cfg.eval.episodes // 2), seed=tc.seed + 1_000_003,
                       batch=cfg.eval.batch, progress=progress)
    say(f"tuned-alpha on training users: α* = {curve.best_alpha:g} ({time.perf_counter() - t0:.0f}s)")
    diverse: ParamSearch | None = None
    if tc.policy.base == "diverse":  # the policy starts at tuned-diverse: search it now (cached for the final table)
        t0 = time.perf_counter()
        diverse = _tuning_context(cfg, world, None, progress).diverse_search()
        say(f"tuned-diverse on training users: {diverse.best} ({time.perf_counter() - t0:.0f}s)")

    venv: SB3VecEnv | VecNormalize = make_venv(cfg, world, tc.seed)
    stats_env = venv
    ckpt_dir = run_dir / CKPT_DIR
    resumed_from: dict[str, Any] | None = None
    if ckpt is not None:
        model = restore_model(cfg, ckpt, venv, device, run_dir)
        resumed_from = {"checkpoint": str(ckpt.path), "num_timesteps": ckpt.num_timesteps, "skipped": skipped}
        say(f"resuming from step {model.num_timesteps:,} ({ckpt.path.name})")
        model.set_logger(_tb_logger(run_dir))
    else:
        if tc.ppo.normalize_reward:
            venv = VecNormalize(venv, norm_obs=False, norm_reward=True, gamma=tc.ppo.gamma)
        model = _new_ppo(cfg, venv, device, run_dir,
                         policy_kwargs(cfg, curve.best_alpha, world, None if diverse is None else diverse.best))
        model.set_logger(_tb_logger(run_dir))
        model.logger.record("hparams", HParam(_flat_hparams(cfg), {"eval/return": 0.0, "eval/ratio_vs_tuned": 0.0}),
                            exclude=("stdout", "log", "json", "csv"))

    eval_core = make_core(cfg.env, cfg.env.preset, cfg.encoder, world, "heldout", cfg.eval.batch)
    eval_plan = episode_plan(tc.eval_episodes, [tc.seed + 7], world.populations["heldout"].size)
    tuned_ret = run_episodes(eval_core, make_ranker("fixed-alpha:" + str(curve.best_alpha),
                                                    RankerContext(world, cfg.env)), eval_plan).ret
    remaining = max(0, tc.total_timesteps - model.num_timesteps)
    bar = tqdm(total=tc.total_timesteps, initial=model.num_timesteps, unit="step", desc="PPO", disable=not progress,
               smoothing=0.1)
    metrics = RolloutMetrics(stats_env, bar)
    periodic = PeriodicEval(eval_core, eval_plan, tuned_ret, tc.eval_every, run_dir / "eval.jsonl",
                            cfg.env.slate_size)
    periodic._next = (model.num_timesteps // tc.eval_every + 1) * tc.eval_every if tc.eval_every > 0 else 0
    ckpt = Checkpointer(run_dir, tc.checkpoint_every)
    ckpt._next = (model.num_timesteps // tc.checkpoint_every + 1) * tc.checkpoint_every if tc.checkpoint_every else 0
    t_learn = time.perf_counter()
    steps_before = model.num_timesteps
    callbacks: list[BaseCallback] = [metrics, periodic, ckpt]
    if tc.max_minutes is not None:
        callbacks.append(TimeLimit(tc.max_minutes))
    periodic.init_callback(model)  # learn() does this too, but the final evaluation needs it when nothing is left
    if remaining:
        model.learn(remaining, callback=CallbackList(callbacks), reset_num_timesteps=not resume, tb_log_name="ppo")
    bar.close()
    learn_s = time.perf_counter() - t_learn
    save_checkpoint(model, ckpt_dir)
    assert isinstance(model.policy, SlatePolicy)
    save_policy(model.policy, run_dir)  # what recfeed reads (pickle-free)
    _atomic_save(model.save, run_dir / MODEL_FILE)  # SB3's archive, for SB3 users
    final_eval = periodic.evaluate() if tc.eval_every > 0 else None
    say(f"trained {model.num_timesteps - steps_before:,} steps in {learn_s:.0f}s "
        f"({(model.num_timesteps - steps_before) / max(learn_s, 1e-9):,.0f} steps/s; "
        f"collection {metrics.collect_s:.0f}s, updates {metrics.train_s:.0f}s)")

    report = final_comparison(cfg, world, model.policy, curve, run_dir, progress, diverse)
    summary = {
        "run_dir": str(run_dir),
        "total_timesteps": int(model.num_timesteps),
        "learn_seconds": round(learn_s, 1),
        "steps_per_s": round((model.num_timesteps - steps_before) / max(learn_s, 1e-9), 1),
        "collect_seconds": round(metrics.collect_s, 1),
        "update_seconds": round(metrics.train_s, 1),
        "wall_seconds": round(time.perf_counter() - t_start, 1),
        "device": str(device),
        "tuned_alpha": curve.best_alpha,
        "final_periodic_eval": final_eval,
        "heldout": {name: report["rankers"][name]["return"] for name in report["rankers"]},
        "ratio_vs_tuned_alpha": report["ratio_vs_tuned_alpha"],
        "gap_closed_to_oracle": report.get("gap_closed_to_oracle"),
        "ratio_vs_tuned_diverse": report["ratio_vs_tuned_diverse"],
        "paired_vs_tuned_diverse": report["paired_vs_tuned_diverse"],
        "policy_base": tc.policy.base,
        "gap_closed_to_ceiling": report.get("gap_closed_to_ceiling"),
        "alpha_by_user_type": report["alpha"]["by_rho"],
        "resumed_from": resumed_from,
        "paths": {"config": str(run_dir / CONFIG_FILE), "model": str(run_dir / MODEL_FILE),
                  "policy": str(run_dir / WEIGHTS_FILE),
                  "tensorboard": str(run_dir / "tb"), "report": str(run_dir / "report"),
                  "plots": str(run_dir / "report" / "plots")},
    }
    _json(run_dir / "summary.json", summary)
    return summary


def _tuning_context(cfg: Config, world: World, core: Any, progress: bool) -> RankerContext:
    """The references' context of a run: tuning on the training users, its searches cached beside the world."""
    return RankerContext(world, cfg.env, core=core, seed=cfg.train.seed, batch=cfg.eval.batch, progress=progress,
                         tune_episodes=400, cache_dir=str(tuning_cache_dir(cfg.env, cfg.encoder)))


def final_comparison(cfg: Config, world: World, policy: SlatePolicy, curve: Any, run_dir: Path,
                     progress: bool, diverse: ParamSearch | None = None) -> dict[str, Any]:
    """PPO against the baselines on held-out users (common random numbers); α by user type and by step.

    Writes ``report/`` (results.json/.md/.csv, plots) and ``report/alpha.json``. ``diverse``: tuned-diverse's search
    when training already ran it (a ``"diverse"`` policy starts there), so that the table's reference is the same.
    """
    ec = cfg.eval
    core = make_core(cfg.env, cfg.env.preset, cfg.encoder, world, "heldout", ec.batch)
    plan = episode_plan(ec.episodes, list(range(ec.seeds)), world.populations["heldout"].size)
    ctx = _tuning_context(cfg, world, core, progress)
    ctx._diverse = diverse
    rankers = {}
    for spec in FINAL_BASELINES:
        if spec in ("tuned-alpha", "diverse"):  # both on the α tuned above (not tuned again)
            base = "fixed-alpha" if spec == "tuned-alpha" else "diverse"
            rankers[spec] = make_ranker(f"{base}:{curve.best_alpha:g}", ctx)
            rankers[spec].name = spec
        else:
            rankers[spec] = make_ranker(spec, ctx)
    ppo = PPORanker(policy, cfg.env.slate_size)
    alpha_rows: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (rho, step, alpha) per step

    def record_alpha(obs: dict[str, np.ndarray], slate: np.ndarray, feedback: Any, active: np.ndarray) -> None:
        assert ppo.last_alpha is not None
        rows = np.flatnonzero(active)
        alpha_rows.append((core.pop.rho[core.user[rows]], core.t[rows] - 1, ppo.last_alpha[rows]))

    stats = {"ppo": run_episodes(core, ppo, plan, progress=progress, desc="ppo (held-out)", on_step=record_alpha)}
    for name, r in rankers.items():
        stats[name] = run_episodes(core, r, plan, progress=progress, desc=f"{name} (held-out)")
    results = summarise(stats, reference="tuned-alpha", n_boot=ec.bootstrap, seed=cfg.train.seed,
                        hidden=["oracle", CEILING], alpha_curve=curve.to_dict(),
                        setup={"users": "heldout", "preset": cfg.env.preset, "seeds": list(range(ec.seeds))})
    rho, step, alpha = (np.concatenate(x) for x in zip(*alpha_rows, strict=True))
    by_rho = {}
    for lo, hi, label in zip(RHO_EDGES[:-1], RHO_EDGES[1:], RHO_LABELS, strict=True):
        sel = (rho >= lo) & ((rho < hi) | (hi == 1.0))
        by_rho[label] = float(alpha[sel].mean()) if sel.any() else None
    by_step = {}
    for t in range(min(cfg.env.max_steps, 20)):
        sel = step == t
        if sel.sum() >= 20:
            lo_t = sel & (rho < 0.5)
            hi_t = sel & (rho >= 0.5)
            by_step[t] = {"all": float(alpha[sel].mean()),
                          "rho<0.5": float(alpha[lo_t].mean()) if lo_t.any() else None,
                          "rho>=0.5": float(alpha[hi_t].mean()) if hi_t.any() else None}
    results["alpha"] = {"by_rho": by_rho, "by_step": by_step,
                        "corr_alpha_rho": _correlation(alpha, rho)}
    r = results["rankers"]
    results["ratio_vs_tuned_alpha"] = r["ppo"]["return"]["mean"] / r["tuned-alpha"]["return"]["mean"]
    results["ratio_vs_tuned_diverse"] = r["ppo"]["return"]["mean"] / r[STRONGEST_HEURISTIC]["return"]["mean"]
    # the quality bar's paired comparison: PPO − tuned-diverse on the same sessions (per-session differences)
    results["paired_vs_tuned_diverse"] = paired_test(stats["ppo"].ret, stats[STRONGEST_HEURISTIC].ret,
                                                     Bootstrap(len(stats["ppo"].ret), ec.bootstrap, cfg.train.seed))
    for key, top in (("gap_closed_to_oracle", "oracle"), ("gap_closed_to_ceiling", CEILING)):
        gap = r[top]["return"]["mean"] - r["tuned-alpha"]["return"]["mean"]
        if gap > 0:
            results[key] = (r["ppo"]["return"]["mean"] - r["tuned-alpha"]["return"]["mean"]) / gap
    results["tuned_parameters"] = {name: rankers[name].search.to_dict() for name in (STRONGEST_HEURISTIC, CEILING)
                                   if getattr(rankers[name], "search", None) is not None}
    out = run_dir / "report"
    write_report(results, out)
    write_plausibility(results, out, policies=["ppo"])  # report/plausibility.json / .md: flags figures out of range
    _alpha_plot(results["alpha"], out / "plots" / "alpha.png")
    return results


def _correlation(x: np.ndarray, y: np.ndarray) -> float | None:
    """Pearson correlation of two (n,) arrays in float64; None where it is undefined (a constant side)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        c = float(np.corrcoef(np.asarray(x, np.float64), np.asarray(y, np.float64))[0, 1]) if len(x) > 1 else np.nan
    return c if np.isfinite(c) else None


def _alpha_plot(alpha: dict[str, Any], path: Path) -> None:
    """Plot learned α by hidden user type and by step within the session."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from configs.loader import atomic_write_bytes

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
    labels = [k for k, v in alpha["by_rho"].items() if v is not None]
    a1.bar(range(len(labels)), [alpha["by_rho"][k] for k in labels], color="#4C72B0")
    a1.set_xticks(range(len(labels)), [k.split(" ")[1].strip("()") if " " in k else k for k in labels])
    a1.set_ylabel("mean learned α")
    a1.set_title("α by hidden user type (ρ_u)")
    steps = sorted(alpha["by_step"], key=int)
    for key, colour in (("rho<0.5", "#DD8452"), ("rho>=0.5", "#55A868"), ("all", "#4C72B0")):
        a2.plot([int(s) for s in steps], [alpha["by_step"][s][key] for s in steps], label=key, color=colour)
    a2.set_xlabel("step in session")
    a2.set_ylabel("mean learned α")
    a2.set_title("α within the session")
    a2.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def _tb_logger(run_dir: Path) -> Any:
    from stable_baselines3.common.logger import configure

    return configure(str(run_dir / "tb"), ["tensorboard"])


def _flat_hparams(cfg: Config) -> dict[str, Any]:
    """Every config value, flattened (``train.ppo.n_epochs``), as TensorBoard hparams (scalars and strings)."""
    out: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        elif isinstance(value, bool | int | float | str):
            out[prefix] = value
        else:
            out[prefix] = str(value)

    walk("", to_dict(cfg))
    return out


def print_summary(summary: dict[str, Any], results_md: Path) -> None:
    """The closing message of ``train.py``: how PPO compares, and where everything is."""
    print()
    if results_md.is_file():
        print(results_md.read_text(encoding="utf-8"))
    h = summary["heldout"]
    ppo, tuned = h["ppo"]["mean"], h["tuned-alpha"]["mean"]
    print(f"PPO return per session on held-out users: {ppo:.3f} (95% CI {h['ppo']['ci95'][0]:.3f}–"
          f"{h['ppo']['ci95'][1]:.3f}); tuned-alpha {tuned:.3f} → {summary['ratio_vs_tuned_alpha']:.3f}×")
    if "ratio_vs_tuned_diverse" in summary:
        print(f"against the strongest hand-written ranker: tuned-diverse {h[STRONGEST_HEURISTIC]['mean']:.3f} → "
              f"{summary['ratio_vs_tuned_diverse']:.3f}×")
    pd = summary.get("paired_vs_tuned_diverse")
    if pd and pd.get("ci95"):
        print(f"  paired on the same sessions: PPO − tuned-diverse {pd['diff']:+.3f} (95% CI {pd['ci95'][0]:+.3f} to "
              f"{pd['ci95'][1]:+.3f}, p {pd['p_value']:.2g})")
    if summary.get("gap_closed_to_oracle") is not None:
        print(f"share of the tuned-alpha → myopic oracle gap closed: {summary['gap_closed_to_oracle']:.2f}")
    if summary.get("gap_closed_to_ceiling") is not None:
        print(f"share of the tuned-alpha → non-myopic ceiling ({CEILING}) gap closed: "
              f"{summary['gap_closed_to_ceiling']:.2f}")
    print("learned α by hidden user type: "
          + ", ".join(f"{k}: {v:.2f}" for k, v in summary["alpha_by_user_type"].items() if v is not None))
    p = summary["paths"]
    print(f"\nrun directory: {summary['run_dir']}\n  model:       {p['model']}\n  TensorBoard: tensorboard "
          f"--logdir {p['tensorboard']}\n  report:      {p['report']}/results.md\n  plots:       {p['plots']}")

