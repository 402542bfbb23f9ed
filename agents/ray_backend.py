"""The Ray backend of training (``train.backend = "ray"``): rollouts collected on Ray actors, PPO learned here.

W actors (Ray Core, not RLlib: DESIGN_NOTES.md, "Ray") each hold a shard of the training users, the native batched
env of the local backend (``SB3VecEnv(RecVectorEnv(rows))``, built the same way, the world read from the same
cache; in text mode the prompt encoder runs in the actor) and a CPU copy of :class:`~agents.policies.SlatePolicy`.
Each PPO iteration the driver puts the policy's weights once in the object store, every actor loads them, steps its
shard ``n_steps`` times and returns the rollout as numpy arrays; the driver replays it, in the order the local
backend would have produced it, into SB3's rollout buffer (reward normalisation, the time-limit bootstrap, GAE) and
runs PPO's unchanged update, on the GPU when there is one.

Randomness (DESIGN.md): shard ``w`` holds the global rows ``[offset_w, offset_w + rows_w)`` and is reset with
``seed + offset_w``, so its row ``i`` follows ``RecEnv.reset(seed=seed + offset_w + i)``, the row the local
backend's one vector env would simulate; only the policy's sampling noise differs (each actor draws slates from its
own ``torch.Generator``, seeded from ``(seed, offset_w)``).

Faults: an actor that dies is restarted by Ray (``train.ray.max_restarts``); the rollout it was collecting is lost,
its shard starts new sessions (seeded apart from every earlier one) and the rollout is asked for once more.
``RayVecEnv.lost_rollouts`` counts them (``summary.json``: ``ray.lost_rollouts``).

Only this module imports Ray, inside functions: the core install does not need it.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch as th
from stable_baselines3 import PPO
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.utils import obs_as_tensor
from stable_baselines3.common.vec_env import VecEnv, VecNormalize
from stable_baselines3.common.vec_env.base_vec_env import VecEnvIndices, VecEnvObs, VecEnvStepReturn

from agents.ppo_update import ppo_update
from agents.rollouts import final_values, truncated_rows
from configs.schema import Config

#: Environment variables the actors get from the driver (cache folders, env threads, …).
FORWARD_ENV_PREFIX = "RECFEED_"
#: Test hook: ``(iteration, worker, step)`` makes that worker's process exit mid-rollout at that step of that
#: iteration (counted from 1), as a crash would; ``None`` (always, outside tests) does nothing.
CRASH_FOR_TEST: tuple[int, int, int] | None = None
#: Seconds a restarting actor may take before its iteration fails.
RESTART_WAIT_S = 300.0
_STARTED = False  # whether init_ray connected this process (and so shutdown_if_started disconnects it)


def shards(n_envs: int, workers: int) -> list[tuple[int, int]]:
    """``(offset, rows)`` of each worker's shard: ``n_envs`` rows in order, the first ``n_envs % workers`` one more.

    Raises:
        ValueError: Fewer rows than workers.
    """
    if not 1 <= workers <= n_envs:
        raise ValueError(f"train.ray.workers = {workers} must be in [1, train.ppo.n_envs = {n_envs}]")
    base, extra = divmod(n_envs, workers)
    sizes = [base + (w < extra) for w in range(workers)]
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    return [(int(o), int(s)) for o, s in zip(offsets, sizes, strict=True)]


def sampling_seed(seed: int, offset: int) -> int:
    """The seed of the torch generator a worker draws slates from (distinct per shard, fixed by the run's seed)."""
    return int(np.random.SeedSequence([int(seed), int(offset), 0x5EED]).generate_state(1, np.uint64)[0] >> 1)


class RolloutWorker:
    """One actor: a shard of the training users and a CPU copy of the policy (``ray.remote`` wraps this class).

    Args:
        config: The run's config as a plain mapping (:func:`configs.loader.to_dict`).
        offset: The shard's first global row.
        rows: Its rows (users stepped at once).
        seed: The run's seed.
        policy_kwargs: ``SlatePolicy``'s constructor arguments (:func:`agents.training.policy_kwargs`).
        threads: Torch and env-kernel threads.
    """

    def __init__(self, config: dict[str, Any], offset: int, rows: int, seed: int, policy_kwargs: dict[str, Any],
                 threads: int) -> None:
        os.environ["RECFEED_ENV_THREADS"] = str(threads)
        th.set_num_threads(threads)
        from agents.policies import SlatePolicy
        from agents.training import load_training_world
        from configs.loader import from_dict
        from envs.sb3 import SB3VecEnv
        from envs.vector_env import RecVectorEnv

        cfg = from_dict(Config, config)
        world = load_training_world(cfg)  # the driver built and cached it
        # The local backend's env, over this shard's rows; in text mode make_core builds the encoder here.
        self.venv = SB3VecEnv(RecVectorEnv(rows, config=cfg.env, encoder=cfg.encoder, world=world,
                                           population="train"))
        self.offset, self.rows, self.seed, self.gamma = offset, rows, seed, cfg.train.ppo.gamma
        self.policy = SlatePolicy(self.venv.observation_space, self.venv.action_space, lambda _: 0.0,
                                  **policy_kwargs)
        self.policy.set_training_mode(False)
        self.policy.set_generator(th.Generator().manual_seed(sampling_seed(seed, offset)))
        self.last_obs: dict[str, np.ndarray] | None = None
        self.last_starts = np.ones(rows, bool)

    def spaces(self) -> tuple[Any, Any]:
        """The shard's single-row observation and action spaces."""
        return self.venv.observation_space, self.venv.action_space

    def describe(self) -> dict[str, Any]:
        """Where this shard runs and what it holds: ``pid``, ``node``, ``rows``, ``offset``, ``obs_mode``, and the
        prompt encoder's class in text mode (built here, in the actor) or ``None``."""
        import ray

        enc = self.venv.venv.core.text_encoder
        return {"pid": os.getpid(), "node": ray.get_runtime_context().get_node_id(), "rows": self.rows,
                "offset": self.offset, "obs_mode": self.venv.venv.config.obs_mode,
                "text_encoder": None if enc is None else type(enc).__name__}

    def reset(self, seed: int) -> dict[str, np.ndarray]:
        """Start new sessions on every row (row ``i`` as ``RecEnv.reset(seed=seed + i)``); their observations."""
        self.venv.seed(seed)
        self.last_obs = self.venv.reset()
        self.last_starts = np.ones(self.rows, bool)
        self.venv.pop_stats()
        return self.last_obs

    def rollout(self, weights: dict[str, np.ndarray], n_steps: int, reset_seed: int | None = None,
                crash_at: int | None = None) -> dict[str, Any]:
        """Load ``weights``, step the shard ``n_steps`` times, and return what SB3's rollout buffer needs.

        Args:
            weights: The policy's state dict (numpy, from the object store).
            n_steps: Steps per row.
            reset_seed: Start new sessions first, seeded so (after a restart, or the first rollout).
            crash_at: Test hook: exit the process before this step.

        Returns:
            ``obs`` {key: (T, b, …)}, ``actions`` (T, b, K), ``rewards`` (T, b) raw, ``starts`` (T, b) episode
            starts, ``values`` (T, b), ``log_probs`` (T, b), ``terminal_values`` (T, b) the value of the final
            observation where a session was truncated (else 0), ``last_values`` (b,), ``last_dones`` (b,),
            ``episodes`` [(t, global row, return, length)], ``stats`` (the env's totals), ``seconds``.
        """
        t0 = time.perf_counter()
        self.policy.load_state_dict({k: th.from_numpy(np.asarray(v)) for k, v in weights.items()})
        self.policy.set_training_mode(False)
        if reset_seed is not None or self.last_obs is None:
            self.reset(self.seed + self.offset if reset_seed is None else reset_seed)
        assert self.last_obs is not None
        b = self.rows
        obs_buf = {k: np.empty((n_steps, *v.shape), v.dtype) for k, v in self.last_obs.items()}
        k_slate = int(self.venv.action_space.shape[0])
        out = {"actions": np.empty((n_steps, b, k_slate), np.int64), "rewards": np.empty((n_steps, b), np.float32),
               "starts": np.empty((n_steps, b), np.float32), "values": np.empty((n_steps, b), np.float32),
               "log_probs": np.empty((n_steps, b), np.float32),
               "terminal_values": np.zeros((n_steps, b), np.float32)}
        episodes: list[tuple[int, int, float, int]] = []
        dones = self.last_starts
        for t in range(n_steps):
            if crash_at is not None and t == crash_at:
                os._exit(1)  # the test hook: a worker dying mid-rollout
            with th.no_grad():
                actions, values, log_probs = self.policy(obs_as_tensor(self.last_obs, th.device("cpu")))
            act = actions.numpy()
            new_obs, rewards, dones, infos = self.venv.step(act)
            ended = np.flatnonzero(dones)
            trunc = truncated_rows(dones, infos)
            if trunc:  # SB3's bootstrap of a time-limit end (its collect_rollouts), batched as RecPPO does
                out["terminal_values"][t, trunc] = final_values(self.policy, infos, trunc)
            for i in ended:
                ep = infos[i].get("episode")
                if ep is not None:
                    episodes.append((t, self.offset + int(i), float(ep["r"]), int(ep["l"])))
            for k, v in self.last_obs.items():
                obs_buf[k][t] = v
            out["actions"][t] = act
            out["rewards"][t] = rewards
            out["starts"][t] = self.last_starts
            out["values"][t] = values.numpy().ravel()
            out["log_probs"][t] = log_probs.numpy().ravel()
            self.last_obs, self.last_starts = new_obs, dones
        with th.no_grad():
            last_values = self.policy.predict_values(obs_as_tensor(self.last_obs, th.device("cpu"))).numpy().ravel()
        return {"obs": obs_buf, **out, "last_values": last_values.astype(np.float32),
                "last_dones": np.asarray(dones, bool).copy(), "episodes": episodes, "stats": self.venv.pop_stats(),
                "seconds": time.perf_counter() - t0}


def init_ray(address: str | None, num_cpus: float) -> Any:
    """Join ``address`` (or ``$RAY_ADDRESS``), else start a new local Ray with ``num_cpus`` CPUs; quiet, no dashboard.

    A Ray already initialised in this process is used as it is.
    """
    try:
        import ray
    except ImportError as exc:
        raise ImportError("train.backend = 'ray' needs Ray: pip install -c constraints.txt '.[ray]'") from exc
    global _STARTED
    if ray.is_initialized():
        return ray
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        ray.init(address=address, log_to_driver=False, logging_level="warning")
    else:
        # address="local": a new Ray of our own, even when a `ray start` cluster runs on this machine (a bare
        # ray.init() would join that one instead, and refuse num_cpus).
        ray.init(address="local", num_cpus=max(1, math.ceil(num_cpus)), include_dashboard=False,
                 log_to_driver=False, logging_level="warning")
    _STARTED = True
    return ray


def shutdown_if_started() -> None:
    """Disconnect from Ray (stopping it when local) if :func:`init_ray` connected; a Ray the caller started (a
    sweep trial, a test) stays up."""
    global _STARTED
    if _STARTED:
        import ray

        ray.shutdown()
        _STARTED = False


class RayVecEnv(VecEnv):
    """The training env of the Ray backend: ``n_envs`` rows split over W :class:`RolloutWorker` actors.

    It stands where the local backend's :class:`envs.sb3.SB3VecEnv` stands (wrapped in ``VecNormalize`` by the
    same code, saved in the same checkpoints) but is not stepped one step at a time: :class:`RayPPO` asks it for
    whole rollouts (:meth:`collect`). :meth:`pop_stats` totals the last rollout's (for the metrics callback).

    Args:
        cfg: The run's config (``train.ray``: workers, address, CPUs, restarts).
        policy_kwargs: ``SlatePolicy``'s constructor arguments.
    """

    def __init__(self, cfg: Config, policy_kwargs: dict[str, Any]) -> None:
        from configs.loader import to_dict

        rc, tc = cfg.train.ray, cfg.train
        self.ray = ray = init_ray(rc.address, rc.workers * rc.cpus_per_worker)
        self.address = ray.get_runtime_context().gcs_address
        self.shards = shards(tc.ppo.n_envs, rc.workers)
        threads = max(1, math.ceil(rc.cpus_per_worker))
        repo = str(Path(__file__).resolve().parents[1])
        env = {k: v for k, v in os.environ.items() if k.startswith(FORWARD_ENV_PREFIX)}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (repo, os.environ.get("PYTHONPATH")) if p)
        actor = ray.remote(RolloutWorker).options(num_cpus=rc.cpus_per_worker, max_restarts=rc.max_restarts,
                                                  max_task_retries=0, runtime_env={"env_vars": env})
        config = to_dict(cfg)
        self.actors = [actor.remote(config, off, rows, tc.seed, policy_kwargs, threads) for off, rows in self.shards]
        obs_space, act_space = ray.get(self.actors[0].spaces.remote())
        self.render_mode = None
        super().__init__(tc.ppo.n_envs, obs_space, act_space)
        self._seed: int | None = tc.seed
        self.n_envs, self.lost_rollouts, self.iterations = tc.ppo.n_envs, 0, 0
        self.worker_seconds = 0.0
        self._stats: dict[str, float] = {}
        self._reset_seeds: list[int | None] = [None] * len(self.actors)

    # ---- VecEnv --------------------------------------------------------------------------------------------------

    def seed(self, seed: int | None = None) -> list[int | None]:
        """Seed the next reset (global row i as ``RecEnv.reset(seed=seed + i)``)."""
        self._seed = seed
        return [None if seed is None else seed + i for i in range(self.num_envs)]

    def reset(self) -> VecEnvObs:
        """Start new sessions on every shard; the rows' observations in global row order."""
        base = 0 if self._seed is None else self._seed
        parts = self.ray.get([a.reset.remote(base + off) for a, (off, _) in zip(self.actors, self.shards,
                                                                              strict=True)])
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def step_async(self, actions: np.ndarray) -> None:
        """Not supported: the actors step themselves (:meth:`collect`)."""
        raise NotImplementedError("the Ray backend collects whole rollouts on its actors (RayPPO), not single steps")

    def step_wait(self) -> VecEnvStepReturn:
        """Not supported (see :meth:`step_async`)."""
        raise NotImplementedError("the Ray backend collects whole rollouts on its actors (RayPPO), not single steps")

    def close(self) -> None:
        """Stop the actors (Ray itself stays up: :func:`shutdown`)."""
        for a in self.actors:
            self.ray.kill(a, no_restart=True)
        self.actors = []

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        """Only ``render_mode`` (``None``) is known here."""
        if attr_name != "render_mode":
            raise AttributeError(f"RayVecEnv has no attribute {attr_name!r} (the envs live on the actors)")
        return [None for _ in self._idx(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        """Not supported: the envs live on the actors."""
        raise NotImplementedError("RayVecEnv: the envs live on the Ray actors")

    def env_method(self, method_name: str, *method_args: Any, indices: VecEnvIndices = None,
                   **method_kwargs: Any) -> list[Any]:
        """Not supported: the envs live on the actors."""
        raise NotImplementedError("RayVecEnv: the envs live on the Ray actors")

    def env_is_wrapped(self, wrapper_class: type, indices: VecEnvIndices = None) -> list[bool]:
        """Rows are not gymnasium-wrapped."""
        return [False for _ in self._idx(indices)]

    def _idx(self, indices: VecEnvIndices) -> range | list[int]:
        if indices is None:
            return range(self.num_envs)
        return [indices] if isinstance(indices, int) else list(indices)

    # ---- collection ----------------------------------------------------------------------------------------------

    def collect(self, policy: th.nn.Module, n_steps: int) -> list[dict[str, Any]]:
        """One rollout of ``n_steps`` per row from every actor with ``policy``'s current weights (shard order).

        A dead actor is restarted by Ray; its rollout is lost (counted in :attr:`lost_rollouts`) and asked for again,
        once, on new sessions.

        Raises:
            RuntimeError: An actor failed twice in one iteration (or could not be restarted).
        """
        from ray.exceptions import RayActorError

        self.iterations += 1
        weights = self.ray.put({k: v.detach().cpu().numpy() for k, v in policy.state_dict().items()})
        crash = CRASH_FOR_TEST
        futures = [a.rollout.remote(weights, n_steps, self._reset_seeds[w],
                                    crash[2] if crash and crash[:2] == (self.iterations, w) else None)
                   for w, a in enumerate(self.actors)]
        self._reset_seeds = [None] * len(self.actors)
        parts: list[dict[str, Any]] = []
        for w, fut in enumerate(futures):
            try:
                parts.append(self.ray.get(fut))
            except RayActorError as exc:
                self.lost_rollouts += 1
                off = self.shards[w][0]
                seed = (self._seed or 0) + self.n_envs * self.lost_rollouts * 1_000 + off  # rows no reset used
                try:
                    parts.append(self._retry(w, weights, n_steps, seed))
                except RayActorError as again:
                    raise RuntimeError(f"Ray worker {w} (rows {off}…{off + self.shards[w][1] - 1}) died twice in "
                                       f"iteration {self.iterations}: {again}") from exc
        self.worker_seconds += max(p["seconds"] for p in parts)
        stats: dict[str, float] = {}
        for p in parts:
            for k, v in p["stats"].items():
                stats[k] = stats.get(k, 0) + v
        self._stats = stats
        return parts

    def _retry(self, w: int, weights: Any, n_steps: int, seed: int) -> dict[str, Any]:
        """Worker ``w``'s rollout on new sessions (``seed``), once Ray has restarted it (waiting up to
        :data:`RESTART_WAIT_S` while it is "temporarily unavailable")."""
        from ray.exceptions import ActorUnavailableError

        deadline = time.monotonic() + RESTART_WAIT_S
        while True:
            try:
                return self.ray.get(self.actors[w].rollout.remote(weights, n_steps, seed))
            except ActorUnavailableError:  # restarting: its process and world are being rebuilt
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def pop_stats(self) -> dict[str, float]:
        """The env totals of the last rollout (clicks, purchases, …; as :meth:`envs.sb3.SB3VecEnv.pop_stats`)."""
        out, self._stats = self._stats, {}
        return out


class RayPPO(PPO):
    """SB3's PPO whose rollouts come from :class:`RayVecEnv`'s actors; the update is the local backend's
    (:func:`agents.ppo_update.ppo_update`, SB3's own with one read of the device).

    ``collect_rollouts`` replays the actors' rollouts into the buffer as SB3's loop would have filled it: per step,
    the reward normalised by the run's ``VecNormalize`` statistics (updated as its ``step_wait`` does), plus
    ``gamma`` × the value of a truncated session's final observation; callbacks called once per step with
    ``num_timesteps`` advanced by ``n_envs`` (so evaluations, checkpoints and the time limit fall where they do
    locally); then GAE from the actors' last values.
    """

    def train(self) -> None:
        """SB3's update with one read of the device, then the weights' finiteness check
        (:func:`agents.ppo_update.ppo_update`)."""
        ppo_update(self)

    def collect_rollouts(self, env: VecEnv, callback: BaseCallback, rollout_buffer: RolloutBuffer,
                         n_rollout_steps: int) -> bool:
        """Collect one rollout on the actors and fill ``rollout_buffer`` (see the class docstring)."""
        vecnorm = env if isinstance(env, VecNormalize) else None
        ray_env = vecnorm.venv if vecnorm is not None else env
        if not isinstance(ray_env, RayVecEnv):
            raise TypeError(f"RayPPO needs a RayVecEnv (optionally in VecNormalize), got {type(ray_env).__name__}")
        self.policy.set_training_mode(False)
        rollout_buffer.reset()
        callback.on_rollout_start()
        parts = ray_env.collect(self.policy, n_rollout_steps)

        def cat(key: str, t: int) -> np.ndarray:
            return np.concatenate([p[key][t] for p in parts])

        episodes = sorted((e for p in parts for e in p["episodes"]), key=lambda e: (e[0], e[1]))
        ep_i = 0
        dones = np.zeros(ray_env.num_envs, bool)
        for t in range(n_rollout_steps):
            raw = cat("rewards", t)
            starts = cat("starts", t)
            dones = np.concatenate([p["starts"][t + 1] for p in parts]) if t + 1 < n_rollout_steps \
                else np.concatenate([p["last_dones"] for p in parts])
            dones = dones.astype(bool)
            if vecnorm is not None:  # VecNormalize.step_wait, rewards only
                if vecnorm.training:
                    vecnorm._update_reward(raw)
                rewards = vecnorm.normalize_reward(raw)
                vecnorm.returns[dones] = 0
            else:
                rewards = raw.astype(np.float32)
            rewards = rewards + self.gamma * cat("terminal_values", t)
            self.num_timesteps += ray_env.num_envs
            callback.update_locals(locals())
            if not callback.on_step():
                return False
            while ep_i < len(episodes) and episodes[ep_i][0] == t:
                self.ep_info_buffer.extend([{"r": episodes[ep_i][2], "l": episodes[ep_i][3]}])
                ep_i += 1
            obs = {k: np.concatenate([p["obs"][k][t] for p in parts]) for k in parts[0]["obs"]}
            rollout_buffer.add(obs, cat("actions", t), rewards, starts, th.as_tensor(cat("values", t)),
                               th.as_tensor(cat("log_probs", t)))
        last_values = th.as_tensor(np.concatenate([p["last_values"] for p in parts]), device=self.device)
        self._last_episode_starts = dones
        rollout_buffer.compute_returns_and_advantage(last_values=last_values, dones=dones)
        callback.update_locals(locals())
        callback.on_rollout_end()
        return True


def make_ray_venv(cfg: Config, policy_kwargs: dict[str, Any]) -> RayVecEnv:
    """The Ray backend's training env (starts Ray or joins the cluster, and the W actors)."""
    return RayVecEnv(cfg, policy_kwargs)
