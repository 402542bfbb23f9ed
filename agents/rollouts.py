"""PPO's rollout collection with the time-limit bootstrap batched (the local backend's PPO).

SB3's ``collect_rollouts`` adds ``gamma × V(final observation)`` to the reward of every session that the step limit
ended (``TimeLimit.truncated``), one policy call per such session: a batch of one, with its own host-device copies
and synchronisation on a GPU. Sessions end by the limit often here (``env.max_steps``: on the default config about
2.5 of the 256 training users per step, 13% of the sessions), so on a GPU most of a collection step's host→device
copies came from those calls (by count; BENCHMARKS.md, "GPU (one NVIDIA H200, session 31)"). :class:`RecPPO` makes
the same correction in one call per step over all the step's truncated sessions and leaves the rest of SB3's loop
and its update as they are; the Ray backend's actors batch it the same way (:mod:`agents.ray_backend`).

Where the rollout's policy calls run (``train.collect_device``): a collection step is one policy call over a few
hundred users, too small for a GPU to pay back its host-device traffic and per-kernel launches, while the update's
minibatches of thousands are what it is fast at (session 31 on an H200 machine: collection 1.7× slower on cuda than on
that machine's CPU, the update 3.9× faster). With ``collect_device = "cpu"`` and an accelerator as ``train.device``,
:class:`RecPPO` collects with a CPU copy of the policy whose weights it refreshes from the trained policy before each
rollout (one state-dict copy per rollout), and updates on the accelerator. ``model.policy`` stays the trained policy
throughout, for callbacks and checkpoints alike: only the loop's own policy calls go to the copy.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch as th
from stable_baselines3 import PPO
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.utils import obs_as_tensor
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper
from stable_baselines3.common.vec_env.base_vec_env import VecEnvObs, VecEnvStepReturn

from agents.ppo_update import ppo_update

#: The info key set on a session whose time-limit bootstrap :class:`RecPPO` already added to its reward.
BOOTSTRAPPED = "TimeLimit.bootstrapped"


def truncated_rows(dones: np.ndarray, infos: list[dict]) -> list[int]:
    """The rows SB3 bootstraps: ended by the time limit, with a final observation (SB3's own test)."""
    return [int(i) for i in np.flatnonzero(dones)
            if infos[i].get("terminal_observation") is not None and infos[i].get("TimeLimit.truncated", False)]


def final_values(policy: BasePolicy, infos: list[dict], rows: list[int]) -> np.ndarray:
    """The policy's values of ``rows``' final observations, in one batched call: float32 (len(rows),)."""
    final = [infos[i]["terminal_observation"] for i in rows]
    batch = {k: np.stack([f[k] for f in final]) for k in final[0]} if isinstance(final[0], dict) else np.stack(final)
    with th.no_grad():
        return policy.predict_values(obs_as_tensor(batch, policy.device)).cpu().numpy().ravel().astype(np.float32)


class _BatchedBootstrap(VecEnvWrapper):
    """The training env as :class:`RecPPO`'s collection sees it: each step's truncated sessions get
    ``gamma × V(final observation)`` added to their (normalised, where ``VecNormalize`` is below) reward in one
    batched value call, and their ``TimeLimit.truncated`` is cleared (``TimeLimit.bootstrapped`` set instead) so that
    SB3's per-session loop finds nothing left to do."""

    def __init__(self, venv: VecEnv, model: PPO, policy: BasePolicy) -> None:
        super().__init__(venv)
        self.model, self.policy = model, policy

    def reset(self) -> VecEnvObs:
        return self.venv.reset()

    def step_wait(self) -> VecEnvStepReturn:
        obs, rewards, dones, infos = self.venv.step_wait()
        rows = truncated_rows(dones, infos)
        if rows:
            rewards[rows] += self.model.gamma * final_values(self.policy, infos, rows).astype(rewards.dtype)
            for i in rows:
                infos[i]["TimeLimit.truncated"] = False
                infos[i][BOOTSTRAPPED] = True
        return obs, rewards, dones, infos


#: ``train.collect_device`` values: ``"cpu"`` (a CPU copy of the policy collects; the same policy when training on
#: the CPU) and ``"train"`` (collect on ``train.device``).
COLLECT_DEVICES = ("cpu", "train")


@contextmanager
def _policy_calls_on(model: PPO, collector: BasePolicy) -> Iterator[None]:
    """Within the block, SB3's collection loop calls ``collector``: ``model.policy``'s ``forward`` and
    ``predict_values`` are ``collector``'s and ``model.device`` (where the loop puts observations) is its device.
    Everything else that reads ``model.policy`` (callbacks, checkpoints, the buffer's device) sees the trained
    policy unchanged."""
    policy, device = model.policy, model.device
    policy.forward = collector.forward  # type: ignore[method-assign]  # nn.Module.__call__ dispatches to it
    policy.predict_values = collector.predict_values  # type: ignore[method-assign]
    model.device = collector.device
    try:
        yield
    finally:
        del policy.forward, policy.predict_values  # the class's methods again
        model.device = device


class RecPPO(PPO):
    """SB3's PPO, its time-limit bootstrap made in one value call per step and its rollouts collected on
    ``collect_device`` (see the module docstring).

    Everything else is SB3's: the rollout loop, the buffer, GAE, saving; the update is SB3's too, its minibatches
    gathered on the training device and its statistics read once per update (:mod:`agents.ppo_update`, the same
    weights bit for bit). With the collection on the training device (or both on the CPU) the only difference from
    ``PPO`` is the batch in which the truncated sessions' values are computed (equal to float rounding).

    Args:
        *args: SB3's ``PPO`` arguments.
        collect_device: One of :data:`COLLECT_DEVICES`.
        **kwargs: SB3's ``PPO`` keyword arguments.
    """

    def __init__(self, *args: object, collect_device: str = "cpu", **kwargs: object) -> None:
        if collect_device not in COLLECT_DEVICES:
            raise ValueError(f"collect_device must be one of {list(COLLECT_DEVICES)}, got {collect_device!r}")
        self.collect_device = collect_device
        self._collector: BasePolicy | None = None
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "_collector"]

    def collector_device(self) -> th.device:
        """Where the rollouts' policy calls run."""
        return th.device("cpu") if self.collect_device == "cpu" else self.device

    def _separate_collector(self) -> bool:
        """Whether the rollouts need a copy of the policy (on another device than the training)."""
        return self.collector_device() != self.device

    def rollout_policy(self) -> BasePolicy:
        """The policy that collects the next rollout: ``self.policy`` where the collection runs on its device, else
        a copy of it on :meth:`collector_device` with the trained policy's current weights (built once, refreshed
        at each call)."""
        if not self._separate_collector():
            return self.policy
        device = self.collector_device()
        if self._collector is None:
            policy = self.policy
            with th.random.fork_rng(devices=[]):  # building draws initial weights: leave the run's stream as it is
                self._collector = type(policy)(**policy._get_constructor_parameters()).to(device)
            self._collector.set_training_mode(False)
        with th.no_grad():
            self._collector.load_state_dict(self.policy.state_dict())
        return self._collector

    def train(self) -> None:
        """SB3's update with one read of the device, then the weights' finiteness check
        (:func:`agents.ppo_update.ppo_update`)."""
        ppo_update(self)

    def collect_rollouts(self, env: VecEnv, callback: BaseCallback, rollout_buffer: RolloutBuffer,
                         n_rollout_steps: int) -> bool:
        """SB3's ``collect_rollouts`` over :class:`_BatchedBootstrap` of ``env``, its policy calls on
        :meth:`rollout_policy`."""
        collector = self.rollout_policy()
        bootstrapped = _BatchedBootstrap(env, self, collector)
        if collector is self.policy:
            return super().collect_rollouts(bootstrapped, callback, rollout_buffer, n_rollout_steps)
        with _policy_calls_on(self, collector):
            return super().collect_rollouts(bootstrapped, callback, rollout_buffer, n_rollout_steps)


def acting_policy(model: PPO) -> BasePolicy:
    """The policy that plays sessions for ``model`` (its rollouts, and the evaluations during and after training):
    :meth:`RecPPO.rollout_policy` (a CPU copy with the current weights on a GPU run), else ``model.policy``."""
    return model.rollout_policy() if isinstance(model, RecPPO) else model.policy
