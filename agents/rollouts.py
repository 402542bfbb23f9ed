"""PPO's rollout collection with the time-limit bootstrap batched (the local backend's PPO).

SB3's ``collect_rollouts`` adds ``gamma × V(final observation)`` to the reward of every session that the step limit
ended (``TimeLimit.truncated``), one policy call per such session: a batch of one, with its own host-device copies
and synchronisation on a GPU. Sessions end by the limit often here (``env.max_steps``: on the default config about
2.5 of the 256 training users per step, 13% of the sessions), so on a GPU most of a collection step's host→device
copies came from those calls (by count; BENCHMARKS.md, "GPU (one NVIDIA H200, session 31)"). :class:`RecPPO` makes
the same correction in one call per step over all the step's truncated sessions and leaves the rest of SB3's loop
and its update as they are; the Ray backend's actors batch it the same way (:mod:`agents.ray_backend`).
"""

from __future__ import annotations

import numpy as np
import torch as th
from stable_baselines3 import PPO
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.utils import obs_as_tensor
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper
from stable_baselines3.common.vec_env.base_vec_env import VecEnvObs, VecEnvStepReturn

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

    def __init__(self, venv: VecEnv, model: PPO) -> None:
        super().__init__(venv)
        self.model = model

    def reset(self) -> VecEnvObs:
        return self.venv.reset()

    def step_wait(self) -> VecEnvStepReturn:
        obs, rewards, dones, infos = self.venv.step_wait()
        rows = truncated_rows(dones, infos)
        if rows:
            rewards[rows] += self.model.gamma * final_values(self.model.policy, infos, rows).astype(rewards.dtype)
            for i in rows:
                infos[i]["TimeLimit.truncated"] = False
                infos[i][BOOTSTRAPPED] = True
        return obs, rewards, dones, infos


class RecPPO(PPO):
    """SB3's PPO, its time-limit bootstrap made in one value call per step (see the module docstring).

    Everything else is SB3's: the rollout loop, the buffer, GAE, the update, saving. The only difference from
    ``PPO`` is the batch in which the truncated sessions' values are computed (equal to float rounding).
    """

    def collect_rollouts(self, env: VecEnv, callback: BaseCallback, rollout_buffer: RolloutBuffer,
                         n_rollout_steps: int) -> bool:
        """SB3's ``collect_rollouts`` over :class:`_BatchedBootstrap` of ``env``."""
        return super().collect_rollouts(_BatchedBootstrap(env, self), callback, rollout_buffer, n_rollout_steps)
