"""Simulated users and the Gymnasium environments (registered on import).

Registered ids: ``recfeed/SlateRec-v0`` (default preset) and ``recfeed/SlateRec-small-v0`` (fast), each with
a vector entry point: ``gymnasium.make_vec(id, num_envs=B, vectorization_mode="vector_entry_point")``.
"""

from typing import Any

import gymnasium as gym

from envs.rec_env import RecEnv
from envs.vector_env import RecVectorEnv

for _id, _preset in (("recfeed/SlateRec-v0", "default"), ("recfeed/SlateRec-small-v0", "small")):
    if _id not in gym.registry:
        gym.register(
            id=_id,
            entry_point="envs.rec_env:RecEnv",
            vector_entry_point="envs.vector_env:RecVectorEnv",
            kwargs={"preset": _preset},
        )

__all__ = ["RecEnv", "RecVectorEnv", "SB3VecEnv"]


def __getattr__(name: str) -> Any:
    """``envs.SB3VecEnv`` on first use: importing stable-baselines3 (and torch) costs seconds every CLI start."""
    if name == "SB3VecEnv":
        from envs.sb3 import SB3VecEnv

        return SB3VecEnv
    raise AttributeError(f"module 'envs' has no attribute {name!r}")
