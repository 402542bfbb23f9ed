"""The SB3 callbacks of a training run: rollout metrics, the wall-time limit, periodic evaluation, checkpoints, the
running average of the policy's weights.

:func:`agents.training.train` hands them to ``PPO.learn``; what they log goes to the run's TensorBoard folder.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch as th
from stable_baselines3.common.callbacks import BaseCallback
from tqdm.auto import tqdm

from agents.checkpoints import CKPT_DIR, save_checkpoint
from agents.evaluation import run_episodes
from agents.policies import SlatePolicy
from agents.ppo_ranker import PPORanker
from envs.core import BatchedCore
from envs.sb3 import SB3VecEnv


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


class _Every(BaseCallback):
    """Calls :meth:`fire` at every multiple of ``every`` steps after ``start`` (``every`` ≤ 0: never).

    ``start``: the step count learning starts from (a resumed run's), so that the next firing is the next multiple of
    ``every`` above it rather than ``every`` steps later.
    """

    def __init__(self, every: int, start: int = 0) -> None:
        super().__init__()
        self.every = every
        self._next = (start // every + 1) * every if every > 0 else 0

    def _on_step(self) -> bool:
        if self.every > 0 and self.num_timesteps >= self._next:
            self._next += self.every
            self.fire()
        return True

    def fire(self) -> None:
        """What happens at each multiple of ``every``."""
        raise NotImplementedError


class PeriodicEval(_Every):
    """Every ``every`` steps: the policy against tuned-alpha on the same held-out sessions (``eval.jsonl``).

    Args:
        core: Evaluation core over the held-out users.
        plan: The fixed held-out sessions.
        tuned_return: tuned-alpha's per-episode returns on ``plan`` (computed once).
        every: Steps between evaluations.
        path: The ``eval.jsonl`` file.
        k: Slate size.
        start: The step count learning starts from (a resumed run's).
    """

    def __init__(self, core: BatchedCore, plan: Any, tuned_return: np.ndarray, every: int, path: Path,
                 k: int, start: int = 0) -> None:
        super().__init__(every, start)
        self.core, self.plan, self.tuned, self.path, self.k = core, plan, tuned_return, path, k

    def fire(self) -> None:
        self.evaluate()

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


class PolicyAverage(BaseCallback):
    """An exponential moving average of the policy's weights over PPO updates (Polyak averaging of the iterates).

    After every update (every new ``n_updates`` of the model) ``average ← d·average + (1 − d)·weights`` for each
    floating-point tensor of the policy's state dict, ``d = 0.5 ** (1 / halflife)``: an update ``halflife`` updates
    ago weighs half as much as the newest. Integer buffers (the item → category table, feature masks) are copied.
    Training itself is untouched (the optimizer steps the live weights); the average is what :mod:`agents.training`
    saves as the run's policy. Why it exists: the periodic evaluations (``eval.jsonl``) swing by several tenths between
    consecutive updates, which looked like a last iterate drawn from a band. Measured on ``adapt`` (BENCHMARKS.md,
    "Session 16"): +0.03 (−0.24 to +0.31) over the last iterate, so it is off by default; the swings are mostly what
    256 heavy-tailed sessions make of small policy changes.

    Args:
        halflife: In updates (rollouts), > 0.
        average: A saved average to continue (a resumed run's; ``None``: start at the current weights).
    """

    def __init__(self, halflife: float, average: dict[str, th.Tensor] | None = None) -> None:
        super().__init__()
        if not halflife > 0:
            raise ValueError(f"halflife must be > 0 updates, got {halflife}")
        self.decay = 0.5 ** (1.0 / float(halflife))
        self.average = average
        self._seen_updates: int | None = None

    def _on_training_start(self) -> None:
        policy = self.model.policy
        if self.average is None:
            self.average = {k: v.detach().clone() for k, v in policy.state_dict().items()}
        else:
            self.average = {k: v.to(policy.device) for k, v in self.average.items()}
        self._seen_updates = int(self.model._n_updates)

    def _on_rollout_start(self) -> None:
        self.update()

    def _on_training_end(self) -> None:
        self.update()

    def _on_step(self) -> bool:
        return True

    def update(self) -> None:
        """Fold the current weights into the average if an update happened since the last call."""
        n = int(self.model._n_updates)
        if self.average is None or n == self._seen_updates:
            return
        self._seen_updates = n
        with th.no_grad():
            for k, v in self.model.policy.state_dict().items():
                a = self.average[k]
                if a.is_floating_point():
                    a.mul_(self.decay).add_(v, alpha=1.0 - self.decay)
                else:
                    a.copy_(v)


class Checkpointer(_Every):
    """Every ``every`` steps after ``start``: a checkpoint ``checkpoints/step-<N>/`` (:mod:`agents.checkpoints`), the
    last two kept; with ``average``, the running average of the weights goes into it too (a resume continues it)."""

    def __init__(self, run_dir: Path, every: int, start: int = 0, average: PolicyAverage | None = None) -> None:
        super().__init__(every, start)
        self.dir = run_dir / CKPT_DIR
        self.average = average

    def fire(self) -> None:
        self.save()

    def save(self) -> None:
        """Write the checkpoint now."""
        if self.average is not None:
            self.average.update()
        save_checkpoint(self.model, self.dir, average=None if self.average is None else self.average.average)
