"""The trained PPO slate policy as a :class:`agents.base.Ranker`, and loading it from a run directory.

A run directory (written by ``train.py``) holds ``config.yaml`` (the resolved config) and ``model.zip`` (the
SB3 PPO model with :class:`agents.policies.SlatePolicy`); ``evaluate.py --rankers run:DIR`` loads it here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch as th

from agents.base import Ranker
from agents.policies import SlatePolicy
from configs.loader import load_config
from configs.schema import Config

MODEL_FILE = "model.zip"
CONFIG_FILE = "config.yaml"


def resolve_device(device: str) -> th.device:
    """``"auto"`` → cuda when available, else cpu; anything else as given."""
    if device == "auto":
        return th.device("cuda" if th.cuda.is_available() else "cpu")
    return th.device(device)


class PPORanker(Ranker):
    """Ranks by the learned policy's logits ``[α_θ(s)·llm_sim + (1-α_θ(s))·cf_score]/τ + residual_θ(s, x_i)``.

    Deterministic by default (top-K logits, the Plackett-Luce mode); ``deterministic=False`` samples slates.
    Source: this project's PPO policy (``agents/policies.py``), trained by ``train.py``.

    Args:
        policy: The trained policy.
        k: Slate size.
        deterministic: Top-K instead of sampling.
        name: Display name.
    """

    def __init__(self, policy: SlatePolicy, k: int, deterministic: bool = True, name: str = "ppo") -> None:
        super().__init__(k)
        self.policy = policy.eval()
        self.deterministic = deterministic
        self.name = name
        self.last_alpha: np.ndarray | None = None
        self.last_beta: np.ndarray | None = None

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """Slates (B, K) from the policy; the α (and β) it used are kept in ``last_alpha`` (``last_beta``) (B,)."""
        with th.no_grad():
            prepared = self.policy._prepare(obs)
            _, alpha, beta = self.policy.score_candidates(prepared)
            self.last_alpha = alpha.cpu().numpy()
            self.last_beta = None if beta is None else beta.cpu().numpy()
            dist = self.policy.get_distribution(prepared)
            return dist.get_actions(deterministic=self.deterministic).cpu().numpy()


def load_run_config(run_dir: str | Path) -> Config:
    """The resolved config saved with a run.

    Raises:
        FileNotFoundError: If the run directory or its config is missing.
    """
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a recfeed run directory: {path} is missing")
    return load_config(path)


def load_policy(run_dir: str | Path, device: str = "auto", model_file: str = MODEL_FILE) -> SlatePolicy:
    """The trained policy of a run directory.

    Raises:
        FileNotFoundError: If the model file is missing.
    """
    from stable_baselines3 import PPO

    path = Path(run_dir) / model_file
    if not path.is_file():
        raise FileNotFoundError(f"no trained model at {path}: has train.py finished for this run?")
    model = PPO.load(path, device=resolve_device(device), custom_objects={"policy_class": SlatePolicy})
    assert isinstance(model.policy, SlatePolicy)
    return model.policy


def load_run_ranker(run_dir: str, device: str = "auto") -> PPORanker:
    """The ranker of a run directory (used by ``evaluate.py --rankers run:DIR``)."""
    cfg = load_run_config(run_dir)
    return PPORanker(load_policy(run_dir, device), cfg.env.slate_size, name=f"run:{run_dir}")
