"""An adapter that lets stable-baselines3 drive :class:`envs.vector_env.RecVectorEnv` (SB3 cannot take a
``gymnasium.vector.VectorEnv``).

Beyond SB3's contract (``terminal_observation``, ``TimeLimit.truncated``), the adapter keeps running totals of
the response (clicks, purchases, dwell, finished sessions and their lengths) as arrays, so training code can
log ``rollout/ctr`` and friends without per-env info dicts: see :meth:`SB3VecEnv.pop_stats`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from stable_baselines3.common.vec_env.base_vec_env import VecEnv, VecEnvIndices, VecEnvObs, VecEnvStepReturn

from envs.vector_env import RecVectorEnv


class SB3VecEnv(VecEnv):
    """SB3 ``VecEnv`` over a natively batched :class:`RecVectorEnv`.

    Args:
        venv: The vector env (its observations are new arrays every step, so SB3 may keep them).
    """

    def __init__(self, venv: RecVectorEnv) -> None:
        self.venv = venv
        self.render_mode = None  # must exist before VecEnv.__init__ (it calls get_attr("render_mode"))
        super().__init__(venv.num_envs, venv.single_observation_space, venv.single_action_space)
        self._actions: np.ndarray | None = None
        self._seed: int | None = None
        self._ep_return = np.zeros(self.num_envs, np.float64)
        self._ep_len = np.zeros(self.num_envs, np.int64)
        self.pop_stats()

    def reset(self) -> VecEnvObs:
        """Reset every session (seeded by the last :meth:`seed` call, if any)."""
        obs, _ = self.venv.reset(seed=self._seed)
        self._seed = None
        self._ep_return[:] = 0.0
        self._ep_len[:] = 0
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        """Store the slates (B, K) for :meth:`step_wait`."""
        self._actions = np.asarray(actions)

    def step_wait(self) -> VecEnvStepReturn:
        """Step the vector env; build SB3's per-env infos (``episode`` stats, ``terminal_observation``)."""
        assert self._actions is not None, "step_async must be called first"
        obs, reward, terminated, truncated, infos = self.venv.step(self._actions.astype(np.int64))
        dones = terminated | truncated
        self._ep_return += reward
        self._ep_len += 1
        s = self._stats
        s["steps"] += self.num_envs
        s["clicks"] += int(infos["click"].sum())
        s["purchases"] += int(infos["purchase"].sum())
        s["dwell"] += float(infos["dwell"].sum())
        s["reward"] += float(reward.sum())
        info_list: list[dict[str, Any]] = [{} for _ in range(self.num_envs)]
        for i in np.flatnonzero(dones):
            info_list[i] = {
                "terminal_observation": infos["final_obs"][i],
                "TimeLimit.truncated": bool(truncated[i] and not terminated[i]),
                "episode": {"r": float(self._ep_return[i]), "l": int(self._ep_len[i])},
            }
            s["episodes"] += 1
            s["episode_return"] += float(self._ep_return[i])
            s["episode_len"] += int(self._ep_len[i])
        self._ep_return[dones] = 0.0
        self._ep_len[dones] = 0
        return obs, reward.astype(np.float32), dones, info_list

    def pop_stats(self) -> dict[str, float]:
        """Totals since the last call (steps, clicks, purchases, dwell, reward, episodes, …), then reset."""
        out = dict(getattr(self, "_stats", {}))
        self._stats: dict[str, float] = dict.fromkeys(
            ("steps", "clicks", "purchases", "dwell", "reward", "episodes", "episode_return", "episode_len"), 0
        )
        return out

    def seed(self, seed: int | None = None) -> Sequence[int | None]:
        """Seed the next reset (row i as ``RecEnv.reset(seed=seed + i)``)."""
        self._seed = seed
        return [None if seed is None else seed + i for i in range(self.num_envs)]

    def close(self) -> None:
        """Nothing to release."""

    def _indices(self, indices: VecEnvIndices) -> Iterable[int]:
        if indices is None:
            return range(self.num_envs)
        if isinstance(indices, int):
            return [indices]
        return indices

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        """The vector env's attribute, once per requested index."""
        value = getattr(self, attr_name) if attr_name == "render_mode" else getattr(self.venv, attr_name)
        return [value for _ in self._indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        """Set an attribute on the vector env (shared by all rows)."""
        setattr(self.venv, attr_name, value)

    def env_method(self, method_name: str, *method_args: Any, indices: VecEnvIndices = None,
                   **method_kwargs: Any) -> list[Any]:
        """Call a vector-env method once (rows share one env) and return its result per index."""
        result = getattr(self.venv, method_name)(*method_args, **method_kwargs)
        return [result for _ in self._indices(indices)]

    def env_is_wrapped(self, wrapper_class: type, indices: VecEnvIndices = None) -> list[bool]:
        """Rows are not gymnasium-wrapped."""
        return [False for _ in self._indices(indices)]
