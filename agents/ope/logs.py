"""Target and logging policies of off-policy evaluation, and the logged data: logging a policy on simulated users,
the rollout log + ``.obs.npz`` sidecar, on-policy ground truth (see :mod:`agents.ope`)."""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from agents.ope.plackett_luce import (
    OBS_KEYS,
    _check_epsilon,
    _check_logits,
    _check_slates,
    pl_prefix_log_prob,
    pl_sample,
)
from configs.fileio import atomic_write_bytes
from configs.schema import EnvConfig
from envs import rng as env_rng
from envs.core import BatchedCore
from envs.rollout_log import RolloutLogger, read_rollout_log, write_rollout_log
from envs.sessions import Sessions
from envs.spaces import F_CF, F_LLM
from envs.world import World

# ---- policies ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PLPolicy:
    """A Plackett-Luce slate policy over ``score(obs) / temperature``, mixed with ε-uniform slates.

    Attributes:
        name: Display name.
        score: obs → (B, N) float scores.
        temperature: Softmax temperature (> 0; small: nearly the greedy top-K of the score).
        epsilon: Share of uniform random slates in [0, 1).
    """

    name: str
    score: Callable[[dict[str, np.ndarray]], np.ndarray]
    temperature: float
    epsilon: float = 0.0

    def __post_init__(self) -> None:
        if not (np.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"policy {self.name!r}: temperature must be > 0, got {self.temperature}")
        _check_epsilon(self.epsilon)

    def logits(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """float64 (B, N) logits."""
        return np.asarray(self.score(obs), dtype=np.float64) / self.temperature


def blend_policy(alpha: float, temperature: float, epsilon: float = 0.0, name: str | None = None) -> PLPolicy:
    """PL over recfeed's α blend ``α·llm_sim + (1−α)·cf_score`` (:class:`agents.rankers.BlendRanker`'s score)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")

    def score(obs: dict[str, np.ndarray]) -> np.ndarray:
        f = obs["features"]
        return alpha * f[:, :, F_LLM] + (1.0 - alpha) * f[:, :, F_CF]

    return PLPolicy(name or f"pl:{alpha:g}:{temperature:g}" + (f":{epsilon:g}" if epsilon else ""), score,
                    temperature, epsilon)


def logging_pl_policy(cfg: EnvConfig) -> PLPolicy:
    """recfeed's logging policy (:func:`envs.logging_policy.logging_policy`) as a :class:`PLPolicy`."""
    return blend_policy(1.0, cfg.logging.temperature, cfg.logging.epsilon, name="logging")


def parse_policy(spec: str, cfg: EnvConfig | None = None) -> PLPolicy:
    """A numpy policy from a spec: ``pl:ALPHA:TEMP[:EPS]`` (PL over the α blend) or ``logging``.

    Raises:
        ValueError: For any other spec or bad numbers (the message shows the syntax).
    """
    syntax = ("a rollout log's policy specs: 'pl:ALPHA:TEMP[:EPS]' (e.g. pl:0.5:0.1) or 'logging' (run:DIR, blend:, "
              "diverse: and arm: targets are for an A/B serving log folder)")
    if spec == "logging":
        if cfg is None:
            raise ValueError("the 'logging' policy needs the env config")
        return logging_pl_policy(cfg)
    parts = spec.split(":")
    if parts[0] != "pl" or len(parts) not in (3, 4):
        raise ValueError(f"unknown policy {spec!r}; {syntax}")
    try:
        nums = [float(p) for p in parts[1:]]
    except ValueError:
        raise ValueError(f"bad number in policy {spec!r}; {syntax}") from None
    return blend_policy(nums[0], nums[1], nums[2] if len(nums) == 3 else 0.0, name=spec)


# ---- logged data -----------------------------------------------------------------------------------------------


@dataclass
class SlateLog:
    """Logged requests in candidate-position space, what the estimators read.

    Attributes:
        slates: int64 (n, K) positions into each request's candidates, ranked.
        rewards: float64 (n, K) reward at each position (the request's reward sits at its click position).
        clicks: float64 (n, K) click indicator per position.
        logging_logits: float64 (n, N) the logging policy's PL logits.
        logging_epsilon: Its uniform share.
        obs: The observations (``features`` (n, N, F), ``context`` (n, C), …) targets and the reward model read.
    """

    slates: np.ndarray
    rewards: np.ndarray
    clicks: np.ndarray
    logging_logits: np.ndarray
    logging_epsilon: float
    obs: dict[str, np.ndarray]

    def __post_init__(self) -> None:
        n, k = np.shape(self.slates) if np.ndim(self.slates) == 2 else (None, None)
        if n is None:
            raise ValueError(f"slates must be (n, K), got shape {np.shape(self.slates)}")
        for name in ("rewards", "clicks"):
            arr = np.asarray(getattr(self, name), dtype=np.float64)
            if arr.shape != (n, k):
                raise ValueError(f"{name} must be (n={n}, K={k}) like the slates, got shape {arr.shape}")
            if not np.isfinite(arr).all():
                row = int(np.flatnonzero(~np.isfinite(arr).all(axis=1))[0])
                raise ValueError(f"{name} contain NaN or infinite values (row {row})")
            setattr(self, name, arr)
        lg = np.asarray(self.logging_logits, dtype=np.float64)
        if lg.ndim != 2 or lg.shape[0] != n:
            raise ValueError(f"logging_logits must be (n={n}, N), got shape {lg.shape}")
        _check_logits(lg, k)
        self.logging_logits = lg
        self.slates = _check_slates(self.slates, n, lg.shape[1])
        _check_epsilon(self.logging_epsilon)
        for key, v in self.obs.items():
            if np.shape(v)[0] != n:
                raise ValueError(f"obs[{key!r}] has {np.shape(v)[0]} rows, the log has {n}")

    def __len__(self) -> int:
        return len(self.slates)

    def subset(self, rows: np.ndarray | slice) -> SlateLog:
        """The requests ``rows`` (a view-free copy)."""
        return SlateLog(self.slates[rows], self.rewards[rows], self.clicks[rows], self.logging_logits[rows],
                        self.logging_epsilon, {k: v[rows] for k, v in self.obs.items()})


def log_policy(world: World, cfg: EnvConfig, policy: PLPolicy, n_requests: int, seed: int,
               population: str = "heldout", batch_size: int = 1024, max_steps: int | None = 1,
               ) -> tuple[pd.DataFrame, SlateLog]:
    """Serve ``policy`` (sampling) to users of ``population`` and log every request with its propensity.

    With ``max_steps = 1`` each session is one request, so the contexts do not depend on the policy that served
    earlier requests (the setting in which per-request OPE estimates the on-policy value; see
    :func:`on_policy_value`).

    Args:
        world: The world.
        cfg: Env config (``max_steps`` replaced by ``max_steps`` when given).
        policy: The logging policy.
        n_requests: Sessions to play (requests when ``max_steps`` is 1).
        seed: Seed of the episode keys and the policy's draws.
        population: Population name (held-out users by default).
        batch_size: Rows simulated at once.
        max_steps: Requests per session (``None``: the config's).

    Returns:
        ``(rollout frame with ROLLOUT_COLUMNS, SlateLog)``.
    """
    if n_requests < 1:
        raise ValueError(f"n_requests must be >= 1, got {n_requests}")
    if max_steps is not None:
        cfg = dataclasses.replace(cfg, max_steps=max_steps)
    core = BatchedCore(world, cfg, min(batch_size, n_requests), population=population)
    base = env_rng.splitmix64(np.uint64(seed) ^ np.uint64(0x0FE))
    keys = env_rng.splitmix64(np.arange(n_requests, dtype=np.uint64) ^ base)
    users = np.random.default_rng([seed, 0x0FE]).integers(0, core.pop.size, n_requests)
    sessions = Sessions(core, keys, users)
    sessions.start()
    gen = np.random.default_rng([seed, 0x0FF])
    logger = RolloutLogger(population)
    chunks: dict[str, list[np.ndarray]] = {k: [] for k in (*OBS_KEYS, "slate", "logits", "reward", "clicks")}
    obs = {k: v.copy() for k, v in core.observe().items()}
    while (active := sessions.active).any():
        logits = policy.logits(obs)
        slate = pl_sample(logits, cfg.slate_size, gen, 1, policy.epsilon)[0]
        lp = pl_prefix_log_prob(logits, slate, policy.epsilon)[:, -1]
        steps, cands = core.t.copy(), core.cands.copy()
        res = sessions.step(slate)
        rows = np.flatnonzero(active)
        logger.log(core.user, sessions.session, steps, cands, res, lp, rows=rows)
        for key in OBS_KEYS:
            if key in obs:
                chunks[key].append(obs[key][rows])
        chunks["slate"].append(slate[rows])
        chunks["logits"].append(logits[rows])
        chunks["reward"].append(res.reward[rows].astype(np.float64))
        chunks["clicks"].append(res.clicks[rows].astype(np.float64))
        sessions.refill()
        obs = {k: v.copy() for k, v in core.observe().items()}
    frame = logger.to_frame()
    cat = {k: np.concatenate(v) for k, v in chunks.items() if v}
    rewards = position_rewards(cat["reward"], frame["click_rank"].to_numpy())
    log = SlateLog(cat["slate"], rewards, cat["clicks"], cat["logits"], policy.epsilon,
                   {k: cat[k] for k in OBS_KEYS if k in cat})
    return frame, log


def position_rewards(reward: np.ndarray, click_rank: np.ndarray, k: int | None = None) -> np.ndarray:
    """Spread each request's reward to its click position: float64 (n, K).

    Raises:
        ValueError: A reward without a click (the per-position attribution the estimators need is undefined).
    """
    reward = np.asarray(reward, dtype=np.float64)
    click_rank = np.asarray(click_rank, dtype=np.int64)
    if reward.shape != click_rank.shape or reward.ndim != 1:
        raise ValueError(f"reward {reward.shape} and click_rank {click_rank.shape} must be matching (n,) arrays")
    k = k if k is not None else int(max(click_rank.max(initial=-1) + 1, 1))
    none = click_rank < 0
    if (np.abs(reward[none]) > 1e-9).any():
        raise ValueError("a request has a reward but no click: cannot attribute it to a slate position")
    out = np.zeros((len(reward), k))
    rows = np.flatnonzero(~none)
    out[rows, click_rank[rows]] = reward[rows]
    return out


def on_policy_value(world: World, cfg: EnvConfig, policy: PLPolicy, n_requests: int, seed: int,
                    population: str = "heldout", batch_size: int = 1024, max_steps: int | None = 1,
                    ) -> dict[str, float]:
    """The policy's per-request reward and click rate measured by serving it in the simulator (ground truth).

    Returns:
        ``{"reward", "reward_se", "click", "click_se", "n"}``.
    """
    _, log = log_policy(world, cfg, policy, n_requests, seed, population, batch_size, max_steps)
    r, c = log.rewards.sum(axis=1), log.clicks.sum(axis=1)
    n = len(r)
    return {"reward": float(r.mean()), "reward_se": float(r.std(ddof=1) / np.sqrt(n)),
            "click": float(c.mean()), "click_se": float(c.std(ddof=1) / np.sqrt(n)), "n": n}


def write_ope_log(frame: pd.DataFrame, log: SlateLog, path: str | Path) -> Path:
    """Write the rollout log (Parquet) and its sidecar ``<path>.obs.npz`` (observations, logging logits, ε)."""
    path = Path(path)
    if len(frame) != len(log):
        raise ValueError(f"the rollout frame has {len(frame)} rows, the slate log {len(log)}")
    buf = io.BytesIO()
    np.savez_compressed(buf, slates=log.slates, clicks=log.clicks, logging_logits=log.logging_logits,
                        logging_epsilon=np.float64(log.logging_epsilon),
                        **{f"obs_{k}": v for k, v in log.obs.items()})
    atomic_write_bytes(sidecar_path(path), buf.getvalue())
    return write_rollout_log(frame, path)


def sidecar_path(path: str | Path) -> Path:
    """``<log>.obs.npz`` beside a log."""
    p = Path(path)
    return p.with_name(p.name + ".obs.npz")


def read_ope_log(path: str | Path) -> tuple[pd.DataFrame, SlateLog]:
    """Read a log written by :func:`write_ope_log` (arrays only: never unpickles).

    Raises:
        FileNotFoundError: The log or its sidecar is missing.
        ValueError: They disagree (rows, slates) or are malformed.
    """
    frame = read_rollout_log(path)
    side = sidecar_path(path)
    if not side.is_file():
        raise FileNotFoundError(f"{side} is missing: off-policy evaluation needs the observations and the logging "
                                "policy's logits logged beside the rollout log (agents.ope.write_ope_log)")
    with np.load(side, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    need = ("slates", "clicks", "logging_logits", "logging_epsilon")
    missing = [k for k in need if k not in arrays]
    if missing:
        raise ValueError(f"{side} lacks {missing}")
    slates = arrays["slates"]
    if len(slates) != len(frame):
        raise ValueError(f"{side} has {len(slates)} requests, {path} has {len(frame)}")
    cands = np.stack(frame["candidates"].to_numpy())
    shown = np.stack(frame["slate"].to_numpy())
    if not np.array_equal(np.take_along_axis(cands, slates, axis=1), shown):
        raise ValueError(f"{side} does not match {path}: the slates differ")
    rewards = position_rewards(frame["reward"].to_numpy(), frame["click_rank"].to_numpy(), slates.shape[1])
    obs = {k[4:]: v for k, v in arrays.items() if k.startswith("obs_")}
    return frame, SlateLog(slates, rewards, arrays["clicks"], arrays["logging_logits"],
                           float(arrays["logging_epsilon"]), obs)
