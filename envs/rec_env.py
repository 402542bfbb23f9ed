"""``RecEnv``: one simulated user session as a Gymnasium environment (the batched core with B = 1)."""

from __future__ import annotations

from typing import Any, Literal

import gymnasium as gym
import numpy as np
from gymnasium.error import ResetNeeded

from configs.schema import EncoderConfig, EnvConfig
from envs import rng
from envs.core import StepResult
from envs.factory import make_core
from envs.render import SessionView, render_ansi, render_rgb
from envs.spaces import action_space, dedupe_slate, observation_space
from envs.world import World


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
    ``SlateSpace(N, K)`` (:class:`envs.spaces.SlateSpace`, a ``MultiDiscrete([N] * K)`` subclass): K distinct
    positions into the request's candidates; ``action_space.sample()`` draws such a slate. A slate with repeats
    or out-of-range entries raises ``ValueError`` naming the row, unless ``repair="dedupe"`` (for agents that
    sample each position independently, e.g. SB3's MultiDiscrete policies) replaces repeats by the lowest
    unused positions.

    ## Observation Space
    ``Dict(user (D,), candidates (N,) int64, features (N, F), context (C,))``; see ``envs/spaces.py`` for the
    feature and context columns. Hidden truth (tastes, ρ_u, budget) is never observed.

    ## Rewards
    ``reward.click·click + reward.purchase·purchase + reward.dwell·dwell_minutes``; each part in ``info``.

    ## Starting State
    A user drawn from the population by the episode key, with the prior history the service logged for them
    (pooled LLM state, CF factor), a fresh time budget, no fatigue; with ``user_model.session_intent`` > 0 the
    session's hidden semantic taste is the user's moved toward a random intent of this session, which only the
    session's clicks reveal.

    ## Episode End
    ``terminated`` when the user's time budget is exhausted (the user leaves); ``truncated`` at
    ``max_steps`` requests. Stepping an ended session, or stepping before the first ``reset``, raises
    ``gymnasium.error.ResetNeeded``.

    ## Rendering
    ``render_mode="rgb_array"``: a uint8 (H, W, 3) picture of the last slate (rank, category, item text,
    ``llm_sim`` and ``cf_score`` when shown), the user's response to it (click rank, dwell, purchase) and the
    session so far (step, return, clicks). ``"ansi"``: the same as text. Nothing is recorded for rendering
    unless a render mode is set.

    ## Arguments
    ``RecEnv(config=None, preset="default", encoder=None, world=None, population=None, render_mode=None,
    repair=None)``: ``config`` (an EnvConfig) wins over ``preset``; ``world`` skips loading/building;
    ``render_mode`` is ``None``, ``"rgb_array"`` or ``"ansi"``; ``repair`` is ``None`` or ``"dedupe"``.

    ## Version History
    * v0: initial version.
    """

    metadata = {"render_modes": ["rgb_array", "ansi"], "render_fps": 4}

    def __init__(self, config: EnvConfig | None = None, preset: str = "default", encoder: EncoderConfig | None = None,
                 world: World | None = None, population: str | None = None,
                 render_mode: Literal["rgb_array", "ansi"] | None = None,
                 repair: Literal["dedupe"] | None = None) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be None or one of {self.metadata['render_modes']}, got {render_mode!r}")
        if repair not in (None, "dedupe"):
            raise ValueError(f"repair must be None or 'dedupe', got {repair!r}")
        self.core = make_core(config, preset, encoder, world, population, batch_size=1)
        self.config = self.core.cfg
        self.render_mode, self.repair = render_mode, repair
        self.observation_space = observation_space(self.core.M, self.core.N, self.core.D,
                                                   self.config.obs_item_embeddings,
                                                   self.config.obs_session_sim, self.config.obs_hidden_taste,
                                                   self.config.obs_critic_state)
        self.action_space = action_space(self.core.N, self.core.K)
        self._key: np.uint64 | None = None
        self._ended: str | None = "never reset"  # why step() must wait for a reset; None while a session runs
        self._view: SessionView | None = None  # kept only when render_mode is set
        self._features: np.ndarray | None = None  # (N, F) copy of the current features, only when rendering

    def _obs(self, obs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.render_mode is not None:  # the caller may write on what it gets: the render keeps its own copy
            self._features = obs["features"][0].copy()
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
        self._ended = None
        if self.render_mode is not None:
            self._view = SessionView(user=int(self.core.user[0]), max_steps=self.core.T)
        return self._obs(self.core.observe()), {"user": int(self.core.user[0])}

    def step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        """Show a slate and observe the user's response.

        Args:
            action: int (K,) distinct positions into the current candidates.

        Returns:
            ``(obs, reward, terminated, truncated, info)``; ``info`` holds the reward parts, the response
            (``click``, ``click_rank``, ``purchase``, ``dwell`` seconds) and ``slate_items`` (K,) catalog ids.

        Raises:
            ResetNeeded: Before the first ``reset`` or after the session ended (terminated or truncated).
            ValueError: On a malformed slate (wrong shape, out of range, repeats), naming the row.
        """
        if self._ended is not None:
            if self._ended == "never reset":
                raise ResetNeeded("RecEnv.step() called before reset(): call reset() to start a session")
            raise ResetNeeded(f"RecEnv.step() called after the session {self._ended} at step {int(self.core.t[0])}: "
                              "call reset() to start the next session")
        slate = np.asarray(action).reshape(1, -1)
        if self.repair == "dedupe":
            slate = dedupe_slate(slate, self.core.N)
        res = self.core.step(slate)
        info = {k: v[0].item() for k, v in step_info(res, self.core.user).items()}
        info["slate_items"] = res.items[0].copy()
        terminated, truncated = bool(res.terminated[0]), bool(res.truncated[0])
        if terminated or truncated:
            self._ended = "terminated" if terminated else "truncated"
        if self._view is not None and self._features is not None:
            self._view.record(self._features, slate[0].astype(np.int64), res.items[0], float(res.reward[0]),
                              info, self._ended or "")
        obs = self._obs(self.core.observe())
        return obs, float(res.reward[0]), terminated, truncated, info

    def render(self) -> np.ndarray | str | None:
        """Draw the session (see Rendering in the class docstring).

        Returns:
            ``rgb_array``: uint8 (H, W, 3); ``ansi``: a string; no render mode: ``None``.

        Raises:
            ResetNeeded: With a render mode, before the first ``reset``.
        """
        if self.render_mode is None:
            return None
        if self._view is None:
            raise ResetNeeded("RecEnv.render() called before reset(): nothing to draw yet")
        if self.render_mode == "ansi":
            return render_ansi(self._view, self.core.world.catalog)
        return render_rgb(self._view, self.core.world.catalog, self.core.K)
