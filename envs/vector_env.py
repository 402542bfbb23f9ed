"""``RecVectorEnv``: B user sessions natively batched over the same core (SAME_STEP autoreset)."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from configs.schema import EncoderConfig, EnvConfig
from envs import rng
from envs.factory import make_core
from envs.rec_env import step_info
from envs.sessions import Sessions
from envs.spaces import action_space, dedupe_slate, observation_space
from envs.world import World


class RecVectorEnv(VectorEnv):
    """``num_envs`` sessions stepped at once; see :class:`envs.rec_env.RecEnv` for the spec of one.

    Autoreset is SAME_STEP: when a session ends, the returned observation is already the next session's
    first one, and the last observation of the ended session is in ``infos["final_obs"]`` (an object array,
    ``None`` for rows that did not end, with mask ``infos["_final_obs"]``). Row i after ``reset(seed=s)``
    follows exactly the trajectory of ``RecEnv.reset(seed=s + i)``.

    ``single_action_space`` is ``SlateSpace(N, K)`` and ``action_space`` the batched ``SlateSpace(N, K, batch=B)``
    (its samples are (B, K), distinct within each row); see :class:`envs.spaces.SlateSpace`.

    Infos hold (B,) arrays: ``user, click, click_rank, purchase, dwell, reward_click, reward_purchase,
    reward_dwell``.

    Args:
        num_envs: B.
        config: Env config (wins over ``preset``).
        preset: Preset name.
        encoder: Encoder config (for building the world, and text mode).
        world: A ready world (skips loading/building).
        population: ``"train"`` / ``"heldout"`` (default ``config.users``).
        repair: ``"dedupe"`` to repair repeated entries (for agents that sample each position independently).

    Every observation (and every array in ``infos``) is a new array the env never reads or writes again: keep
    it, change it, no copy is needed.
    """

    metadata = {"autoreset_mode": AutoresetMode.SAME_STEP, "render_modes": []}

    def __init__(self, num_envs: int, config: EnvConfig | None = None, preset: str = "default",
                 encoder: EncoderConfig | None = None, world: World | None = None, population: str | None = None,
                 repair: Literal["dedupe"] | None = None) -> None:
        if repair not in (None, "dedupe"):
            raise ValueError(f"repair must be None or 'dedupe', got {repair!r}")
        self.core = make_core(config, preset, encoder, world, population, batch_size=num_envs)
        self.sessions = Sessions(self.core)  # chained: an ended row restarts with the next key of its chain
        self.config = self.core.cfg
        self.num_envs = num_envs
        self.repair = repair
        self.render_mode = None
        self.single_observation_space = observation_space(self.core.M, self.core.N, self.core.D,
                                                          self.config.obs_item_embeddings,
                                                          self.config.obs_session_sim, self.config.obs_hidden_taste,
                                                          self.config.obs_critic_state)
        self.single_action_space = action_space(self.core.N, self.core.K)
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)

    def reset(self, *, seed: int | list[int] | None = None, options: dict[str, Any] | None = None
              ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Start B sessions.

        Args:
            seed: An int s seeds row i like ``RecEnv.reset(seed=s + i)``; a list gives one seed per row;
                ``None`` draws keys from ``np_random``.
            options: ``{"users": int array (B,)}`` to pick the population users.

        Returns:
            ``(obs, infos)`` with ``infos["user"]`` (B,).
        """
        if isinstance(seed, list | tuple | np.ndarray):
            if len(seed) != self.num_envs:
                raise ValueError(f"got {len(seed)} seeds for {self.num_envs} envs")
            keys = np.concatenate([rng.keys_from_seed(int(s), 1) for s in seed])
            self._np_random_seed = int(seed[0])
        else:
            super().reset(seed=seed)
            keys = rng.keys_from_seed(seed, self.num_envs) if seed is not None else \
                self.np_random.integers(0, 2**63, size=self.num_envs, dtype=np.uint64)
        users = None if not options or "users" not in options else np.asarray(options["users"], np.int64)
        if users is not None and users.shape != (self.num_envs,):
            raise ValueError(f"options['users'] must have shape ({self.num_envs},), got {users.shape}")
        self.sessions.start(keys, users)
        return self.core.observe(), {"user": self.core.user.copy()}

    def step(self, actions: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray,
                                                  dict[str, Any]]:
        """Show each row its slate; rows whose session ended are reset in the same step."""
        if self.repair == "dedupe":
            actions = dedupe_slate(actions, self.core.N)
        res = self.sessions.step(actions)  # new arrays every step
        reward, terminated, truncated = res.reward, res.terminated, res.truncated
        infos: dict[str, Any] = step_info(res, self.core.user)
        obs = self.core.observe()  # new arrays; the rows of ended sessions are refreshed in place below
        done = self.sessions.ended
        if done.size:
            block = {k: v[done] for k, v in obs.items()}  # one copy per key; each row's dict holds views of it
            final = np.full(self.num_envs, None, dtype=object)
            for j, i in enumerate(done):
                final[i] = {k: v[j] for k, v in block.items()}
            mask = np.zeros(self.num_envs, bool)
            mask[done] = True
            infos["final_obs"], infos["_final_obs"] = final, mask
            infos["episode_steps"] = self.core.t.copy()
            self.sessions.refill()
            obs = self.core.observe(rows=done)
        return obs, reward, terminated, truncated, infos
