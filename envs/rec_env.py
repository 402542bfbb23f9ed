"""``RecEnv``: one simulated user session as a Gymnasium environment (the batched core with B = 1)."""

from __future__ import annotations

from typing import Any, Literal

import gymnasium as gym
import numpy as np

from configs.schema import EncoderConfig, EnvConfig
from envs import rng
from envs.core import BatchedCore, StepResult
from envs.presets import load_world, preset_config
from envs.spaces import action_space, dedupe_slate, observation_space
from envs.world import World


def make_core(config: EnvConfig | None, preset: str, encoder: EncoderConfig | None, world: World | None,
              population: str | None, batch_size: int) -> BatchedCore:
    """The batched core behind both env classes (loads or builds the world when not given)."""
    cfg = config if config is not None else preset_config(preset)
    text_encoder = None
    if cfg.obs_mode == "text" or world is None:
        from encoders.factory import make_encoder

        text_encoder = make_encoder(encoder or EncoderConfig())
    if world is None:
        world = load_world(cfg, encoder, encoder=text_encoder)
    return BatchedCore(world, cfg, batch_size, population=population,
                       text_encoder=text_encoder if cfg.obs_mode == "text" else None)


def step_info(res: StepResult, user: np.ndarray) -> dict[str, np.ndarray]:
    """The per-step info arrays shared by both envs: reward components and the response, (B,) each (the
    step's result arrays are new every step: shared, not copied)."""
    return {
        "user": user.copy(),
        "click": res.click_rank >= 0,
        "click_rank": res.click_rank,
        "purchase": res.purchases.any(axis=1),
        "dwell": res.dwell.sum(axis=1),
        "reward_click": res.reward_click,
        "reward_purchase": res.reward_purchase,
        "reward_dwell": res.reward_dwell,
    }


class RecEnv(gym.Env):
    """A user session in which the agent answers each request with a ranked slate.

    ## Description
    A user drawn from a population (persona tastes in a language model's embedding space, a hidden
    collaborative taste, a hidden mixing weight ρ_u) makes requests. For each request the service retrieves N
    candidates; the agent ranks K of them. The user examines the slate with position bias, clicks at most one
    item (multinomial logit or cascade, with a no-click option), dwells, maybe buys; tires of categories it sees
    often, drifts toward what it liked, and leaves when its time budget runs out.

    ## Action Space
    ``MultiDiscrete([N] * K)``: positions into the request's candidates, distinct within the slate. A slate
    with repeats or out-of-range entries raises ``ValueError`` naming the row, unless ``repair="dedupe"``
    (for raw MultiDiscrete samples) replaces repeats by the lowest unused positions.

    ## Observation Space
    ``Dict(user (D,), candidates (N,) int64, features (N, F), context (C,))``; see ``envs/spaces.py`` for the
    feature and context columns. Hidden truth (tastes, ρ_u, budget) is never observed.

    ## Rewards
    ``reward.click·click + reward.purchase·purchase + reward.dwell·dwell_minutes``; each part in ``info``.

    ## Starting State
    A user drawn from the population by the episode key, with the prior history the service logged for them
    (pooled LLM state, CF factor), a fresh time budget, no fatigue.

    ## Episode End
    ``terminated`` when the user's time budget is exhausted (the user leaves); ``truncated`` at
    ``max_steps`` requests.

    ## Arguments
    ``RecEnv(config=None, preset="default", encoder=None, world=None, population=None, render_mode=None,
    repair=None)``: ``config`` (an EnvConfig) wins over ``preset``; ``world`` skips loading/building.

    ## Version History
    * v0: initial version.
    """

    metadata = {"render_modes": ["ansi"]}

    def __init__(self, config: EnvConfig | None = None, preset: str = "default", encoder: EncoderConfig | None = None,
                 world: World | None = None, population: str | None = None,
                 render_mode: Literal["ansi"] | None = None, repair: Literal["dedupe"] | None = None) -> None:
        if render_mode not in (None, "ansi"):
            raise ValueError(f"render_mode must be None or 'ansi', got {render_mode!r}")
        if repair not in (None, "dedupe"):
            raise ValueError(f"repair must be None or 'dedupe', got {repair!r}")
        self.core = make_core(config, preset, encoder, world, population, batch_size=1)
        self.config = self.core.cfg
        self.render_mode, self.repair = render_mode, repair
        self.observation_space = observation_space(self.core.M, self.core.N, self.core.D,
                                                   self.config.obs_item_embeddings)
        self.action_space = action_space(self.core.N, self.core.K)
        self._key: np.uint64 | None = None
        self._last: StepResult | None = None

    def _obs(self, obs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {k: v[0] for k, v in obs.items()}  # views of new arrays: the core never touches them again

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Start a session.

        Args:
            seed: Seeds ``np_random``, from which the episode key is drawn; later resets without a seed
                continue the key chain (as the vector env's autoreset does).
            options: ``{"user": int}`` to pick the population user.

        Returns:
            ``(obs, info)`` with ``info["user"]``.
        """
        super().reset(seed=seed)
        if seed is not None or self._key is None:
            self._key = rng.key_from_generator(self.np_random)
        else:
            self._key = rng.next_key(np.array([self._key], np.uint64))[0]
        users = None
        if options and "user" in options:
            users = np.array([int(options["user"])])
        self.core.reset_rows(np.array([0]), np.array([self._key], np.uint64), users)
        self._last = None
        return self._obs(self.core.observe()), {"user": int(self.core.user[0])}

    def step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        """Show a slate (K positions into the candidates) and observe the user's response."""
        slate = np.asarray(action).reshape(1, -1)
        if self.repair == "dedupe":
            slate = dedupe_slate(slate, self.core.N)
        res = self.core.step(slate)
        self._last = res
        info = {k: v[0].item() for k, v in step_info(res, self.core.user).items()}
        info["slate_items"] = res.items[0].copy()
        obs = self._obs(self.core.observe())
        return obs, float(res.reward[0]), bool(res.terminated[0]), bool(res.truncated[0]), info

    def render(self) -> str | None:
        """``ansi``: the last slate's item texts, with the click marked."""
        if self.render_mode != "ansi":
            return None
        if self._last is None:
            return f"user {int(self.core.user[0])}: new session"
        texts = self.core.world.catalog.texts
        lines = [f"user {int(self.core.user[0])}, step {int(self.core.t[0])}:"]
        for k, item in enumerate(self._last.items[0]):
            mark = "*" if self._last.click_rank[0] == k else " "
            lines.append(f" {mark}{k + 1:2d}. {texts[item][:100]}")
        return "\n".join(lines)
