"""The SB3 callbacks of a training run: rollout metrics, the wall-time limit, periodic evaluation, checkpoints, the
running average of the policy's weights, the choice of the best iterate on training users, the advantages' scale
per value bin.

:func:`agents.training.train` hands them to ``PPO.learn``; what they log goes to the run's TensorBoard folder.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch as th
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from tqdm.auto import tqdm

from agents.checkpoints import CKPT_DIR, save_checkpoint
from agents.evaluation import run_episodes
from agents.policies import SlatePolicy
from agents.ppo_ranker import PPORanker
from agents.ppo_update import LinearRate
from agents.rollouts import acting_policy
from configs.fileio import atomic_write_bytes, atomic_write_text
from envs.core import BatchedCore
from envs.sb3 import SB3VecEnv

#: The training-user sessions that pick the saved iterate are ``episode_plan(E, [seed + SELECT_SEED], U_train)``:
#: apart from the tuning sessions (``seed + TUNE_SEED``) and their validation (``+ 7,919``).
SELECT_SEED = 2_000_029
#: The best iterate so far (weights, safetensors) and what it scored (JSON), written atomically on every new best, so
#: that ``--resume`` continues the choice.
BEST_WEIGHTS_FILE = "best_iterate.safetensors"
BEST_STATE_FILE = "best_iterate.json"
#: One JSON line per evaluation of the choice: ``{"step", "return", "best"}``.
SELECTION_LOG = "selection.jsonl"


def play(model: BaseAlgorithm, core: BatchedCore, plan: Any, k: int) -> np.ndarray:
    """The returns of ``plan``'s sessions played by the model's current weights (deterministic slates): float (E,).

    On :func:`agents.rollouts.acting_policy`, i.e. where the rollouts are collected (a CPU copy of the weights on a
    GPU run with ``train.collect_device = "cpu"``: a request is as small a batch as a collection step).
    """
    policy = acting_policy(model)
    assert isinstance(policy, SlatePolicy)
    ret = run_episodes(core, PPORanker(policy, k), plan).ret
    if policy is model.policy:
        policy.train()  # PPORanker put it in eval mode
    return ret


class RolloutMetrics(BaseCallback):
    """Logs what users did during each rollout, the learned α, and where the time goes.

    ``rollout/ctr`` (sessions' requests with a click), ``rollout/purchase_rate`` (purchases per request),
    ``rollout/dwell`` (dwell seconds per request), ``rollout/session_length``, ``rollout/session_return``,
    ``train/alpha_mean`` / ``train/alpha_std`` and the ``train/alpha`` histogram over the rollout's states,
    with a type head ``train/type_bce``, ``train/type_accuracy`` (ρ ≥ 0.5 told apart on the rollout's states,
    before the update) and ``train/type_gate`` (its weight in the gate), with ``train.policy.cf_rule_base``
    ``train/cf_rule_share`` (the base's mean share of the CF-leaning users' rule, and ``_cf`` / ``_content`` by hidden
    type), ``time/collect_s``, ``time/train_s``,
    ``time/env_steps_per_s``.
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
        if policy.type_net is not None and "critic_state" in flat:  # train.policy.type_head_weight
            with th.no_grad():
                prepared = policy._prepare(flat)
                state_in = policy._encode(prepared)[0]
                logit, rho = policy._type_logit(state_in), prepared["critic_state"][:, 0]
                bce = policy._type_bce(logit, prepared).mean()  # the loss the update fits, not a copy of it
            self.logger.record("train/type_bce", float(bce))
            self.logger.record("train/type_accuracy", float(((logit > 0) == (rho >= 0.5)).float().mean()))
            self.logger.record("train/type_gate", float(policy.type_gate.detach()))  # type: ignore[union-attr]
            share = policy.cf_rule_share(logit)
            if share is not None:  # train.policy.cf_rule_base: how far the base moved to the CF-leaning users' rule
                self.logger.record("train/cf_rule_share", float(share.mean()))
                cf = rho < 0.5
                if bool(cf.any()) and bool((~cf).any()):
                    self.logger.record("train/cf_rule_share_cf", float(share[cf].mean()))
                    self.logger.record("train/cf_rule_share_content", float(share[~cf].mean()))
        if self.bar is not None:
            self.bar.set_postfix(ctr=f"{s['clicks'] / steps:.3f}", alpha=f"{float(alpha.mean()):.2f}")


class TimeLimit(BaseCallback):
    """Stops learning once ``minutes`` of wall time have passed (checked every step).

    A :class:`agents.ppo_update.LinearRate` learning rate is given the same clock when learning starts, so that it
    reaches its end rate by the deadline when the minutes end the run before its step count does.
    """

    def __init__(self, minutes: float) -> None:
        super().__init__()
        self.seconds = 60.0 * minutes
        self.deadline = time.perf_counter() + self.seconds

    def _on_training_start(self) -> None:
        rate = getattr(self.model.lr_schedule, "value_schedule", None)  # SB3 wraps it in a FloatSchedule
        if isinstance(rate, LinearRate):
            rate.wall_clock = (self.deadline - self.seconds, self.seconds)

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
        ret = play(self.model, self.core, self.plan, self.k)
        row = {"step": int(self.num_timesteps), "return": float(ret.mean()),
               "return_tuned_alpha": float(self.tuned.mean()), "ratio_vs_tuned": float(ret.mean() / self.tuned.mean()),
               "time": time.time()}
        for k in ("return", "return_tuned_alpha", "ratio_vs_tuned"):
            self.logger.record(f"eval/{k}", row[k])
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")
        return row


class AdvantageBins(BaseCallback):
    """Give every band of the critic's value estimate the same advantage scale before each PPO update.

    After a rollout (its advantages computed, before ``PPO.train``) the B·T samples are split into ``bins`` quantile
    bins of the critic's value estimate ``V(s)``, and each bin's advantages are multiplied by ``σ / σ_bin`` (σ the
    rollout's standard deviation of the advantages, σ_bin the bin's), the gain capped at ``max_gain``. SB3 then
    centres and scales each minibatch as usual; the value targets (``returns``) are untouched.

    Why: with one scale for all samples, the policy gradient of a state is proportional to what is at stake there.
    On ``adapt`` a CF-driven user's session returns ~3 and a content-driven user's ~14.5, so PPO's updates are
    dominated by the content-driven users, and the CF-driven ones, where most of the value of adaptation lies
    (BENCHMARKS.md, "Session 24"), move the policy little. Rescaling per value band re-weights states, not what is
    best within a state: at every state the ascent direction of the policy is the same up to a positive factor.
    Measured there: it moves PPO's gain from the content-driven to the CF-driven users and leaves the total where it
    was, so it is off by default (``train.ppo.advantage_bins`` 0).

    Args:
        bins: Quantile bins of ``V(s)`` (>= 2).
        max_gain: Largest factor a bin's advantages are multiplied by (a bin of near-zero advantages stays small).
    """

    def __init__(self, bins: int, max_gain: float = 10.0) -> None:
        super().__init__()
        if bins < 2:
            raise ValueError(f"bins must be >= 2, got {bins}")
        if not max_gain >= 1:
            raise ValueError(f"max_gain must be >= 1, got {max_gain}")
        self.bins = int(bins)
        self.max_gain = float(max_gain)

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        buf = self.model.rollout_buffer
        gains = rescale_advantages(buf.advantages, buf.values, self.bins, self.max_gain)
        self.logger.record("train/adv_bin_gain_max", float(gains.max()))
        self.logger.record("train/adv_bin_gain_min", float(gains.min()))


def rescale_advantages(advantages: np.ndarray, values: np.ndarray, bins: int, max_gain: float) -> np.ndarray:
    """Scale ``advantages`` in place so that each quantile bin of ``values`` has the overall standard deviation.

    Args:
        advantages: float (T, B) a rollout's advantages (modified in place).
        values: float (T, B) the critic's estimates at the same samples.
        bins: Quantile bins of ``values`` (>= 2).
        max_gain: Cap on each bin's factor (>= 1).

    Returns:
        float (bins,) the factor each bin got (1 for an empty bin).
    """
    a, v = advantages.reshape(-1), values.reshape(-1)
    sigma = float(a.std())
    gains = np.ones(bins)
    if not sigma > 0:
        return gains
    order = np.argsort(v, kind="stable")  # equal-count bins, ties split by position: every bin gets its share
    for b, idx in enumerate(np.array_split(order, bins)):
        if idx.size < 2:
            continue
        s = float(a[idx].std())
        if s > 0:  # a bin of equal advantages carries no signal to amplify
            gains[b] = min(sigma / s, max_gain)
            a[idx] *= gains[b]
    return gains


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


class SelectIterate(_Every):
    """Every ``every`` steps: the policy on fixed sessions of the *training* users; the best iterate is kept.

    The run's saved policy is the iterate (one of those evaluated here, the last one included) with the highest mean
    return on these sessions (``train.select_episodes``). They are training users, so the choice reads nothing of the
    held-out users that the final table measures. Each evaluation is a line of ``selection.jsonl``; each new best
    is written to ``best_iterate.safetensors`` + ``best_iterate.json`` (atomically, the weights first) so that a
    resumed run continues the choice. Ties keep the earlier iterate.

    Args:
        core: Core over the training users.
        plan: The fixed sessions (``episode_plan(E, [seed + SELECT_SEED], U_train)``).
        every: Steps between evaluations (``train.eval_every``).
        run_dir: The run directory.
        k: Slate size.
        start: The step count learning starts from (a resumed run's).
        resume: Read the best iterate a previous part of the run kept (a missing or changed file is named on
            stderr and the choice starts again).
    """

    def __init__(self, core: BatchedCore, plan: Any, every: int, run_dir: Path, k: int, start: int = 0,
                 resume: bool = False) -> None:
        super().__init__(every, start)
        self.core, self.plan, self.run_dir, self.k = core, plan, run_dir, k
        self.best_return = -np.inf
        self.best_step: int | None = None
        self.best_weights: dict[str, th.Tensor] | None = None
        self.last: dict[str, Any] | None = None
        self.evaluations = 0
        if resume:
            self._read_best()

    def fire(self) -> None:
        self.evaluate()

    def evaluate(self) -> dict[str, Any]:
        """Evaluate the current weights (once per step count); keep them when they beat the best so far."""
        step = int(self.model.num_timesteps)  # the model's: after learn() the callback's copy may lag
        if self.last is not None and self.last["step"] == step:
            return self.last
        ret = self.score()
        best = ret > self.best_return
        if best:
            self.best_return, self.best_step = ret, step
            weights = self.model.policy.state_dict()
            self.best_weights = {n: v.detach().cpu().clone().contiguous() for n, v in weights.items()}
            self._write_best()
        self.evaluations += 1
        self.last = {"step": step, "return": ret, "best": best}
        self.logger.record("select/return", ret)
        self.logger.record("select/best_return", self.best_return)
        with open(self.run_dir / SELECTION_LOG, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(self.last) + "\n")
        return self.last

    def score(self) -> float:
        """The current policy's mean return on the selection sessions."""
        return float(play(self.model, self.core, self.plan, self.k).mean())

    def summary(self) -> dict[str, Any]:
        """What was chosen: ``{"episodes", "evaluations", "best_step", "best_return", "last_step", "last_return"}``
        (returns on the training users' selection sessions)."""
        return {"episodes": len(self.plan), "evaluations": self.evaluations, "best_step": self.best_step,
                "best_return": self.best_return, "last_step": None if self.last is None else self.last["step"],
                "last_return": None if self.last is None else self.last["return"]}

    def _state(self) -> dict[str, Any]:
        return {"episodes": len(self.plan), "keys_head": [int(x) for x in self.plan.keys[:4]]}

    def _write_best(self) -> None:
        assert self.best_weights is not None
        data = save_tensors(self.best_weights)
        atomic_write_bytes(self.run_dir / BEST_WEIGHTS_FILE, data)
        atomic_write_text(self.run_dir / BEST_STATE_FILE, json.dumps(
            {**self._state(), "step": self.best_step, "return": self.best_return,
             "sha256": hashlib.sha256(data).hexdigest()}) + "\n")

    def _read_best(self) -> None:
        wpath, spath = self.run_dir / BEST_WEIGHTS_FILE, self.run_dir / BEST_STATE_FILE
        if not spath.is_file():
            return
        try:
            state = json.loads(spath.read_text(encoding="utf-8"))
            data = wpath.read_bytes()
            if hashlib.sha256(data).hexdigest() != state["sha256"]:
                raise ValueError(f"{wpath.name} is missing, truncated or changed since {spath.name} was written")
            if {k: state[k] for k in self._state()} != self._state():
                raise ValueError("it was chosen on other sessions (train.select_episodes or the seed changed)")
            self.best_weights = load_tensors(data)
            self.best_return, self.best_step = float(state["return"]), int(state["step"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            print(f"train.py: warning: the best iterate kept so far ({spath}) cannot be used: {exc}; the choice "
                  "starts again from this part of the run", file=sys.stderr, flush=True)
            self.best_weights, self.best_return, self.best_step = None, -np.inf, None
