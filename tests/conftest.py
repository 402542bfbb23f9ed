"""Shared fixtures: a small world built once per test session with the hashing encoder (fast, no model), and a
tiny trained run with its ONNX / TorchScript exports (used by the export and the serving tests); and the helpers
the simulator's tests share (``greedy``, ``rollout``, ``make_core``: ``from conftest import ...``).

Tests that need the real transformer encoder use it explicitly; nothing here touches the network.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from configs.loader import save_yaml
from configs.schema import Config, EncoderConfig, EnvConfig
from encoders.hashing import HashingEncoder
from envs.core import BatchedCore
from envs.presets import build_world, default_world_dir, preset_config, world_key
from envs.spaces import F_LLM
from envs.vector_env import RecVectorEnv
from envs.world import World

REPO = Path(__file__).resolve().parents[1]
MOVIELENS = REPO.parent / "shared" / "data" / "ml-latest-small"


def require_movielens(path: Path | None = None) -> Path:
    """The real ml-latest-small directory; skips the calling test without it, or fails it under CI.

    Args:
        path: The directory (None: ``$RECFEED_MOVIELENS``, else :data:`MOVIELENS`).

    Returns:
        The directory (it holds ``ratings.csv``).

    Raises:
        pytest.skip.Exception: The data is missing (the reason names the path).
        pytest.fail.Exception: The data is missing and ``CI`` is ``true`` (CI must not pass by skipping).
    """
    path = Path(path or os.environ.get("RECFEED_MOVIELENS") or MOVIELENS)
    if (path / "ratings.csv").is_file():
        return path
    reason = f"ml-latest-small not found at {path} (research-use data, not in the repo; RECFEED_MOVIELENS=DIR)"
    if os.environ.get("CI", "").strip().lower() in ("true", "1", "yes"):
        pytest.fail(f"CI is set: {reason}", pytrace=False)
    pytest.skip(reason)


GENRES = ["Action", "Comedy", "Drama", "Horror", "Romance", "Sci-Fi"]


def write_genre_log(root: Path, n_items: int, rows: list[tuple[int, int, float, int]]) -> Path:
    """An ml-latest-small-format log in ``root``: ``n_items`` films whose genre cycles through :data:`GENRES` (film
    ``j`` is ``GENRES[j % 6]``, its title names it) and the ratings ``rows`` (user id, 0-based film, rating, epoch
    seconds). Returns ``root``."""
    import pandas as pd

    root.mkdir(parents=True, exist_ok=True)
    genre = np.arange(n_items) % len(GENRES)
    pd.DataFrame({"movieId": np.arange(1, n_items + 1),
                  "title": [f"Film {GENRES[genre[j]]} number {j} ({1970 + j % 50})" for j in range(n_items)],
                  "genres": [GENRES[g] for g in genre]}).to_csv(root / "movies.csv", index=False)
    pd.DataFrame([(u, i + 1, r, t) for u, i, r, t in rows],
                 columns=["userId", "movieId", "rating", "timestamp"]).to_csv(root / "ratings.csv", index=False)
    return root


def require_ray() -> object:
    """The ``ray`` module; skips without it, fails under CI (CI installs the dev extra, which holds Ray)."""
    try:
        import ray
    except ImportError:
        reason = "ray is not installed (the optional recfeed[ray] extra: pip install -e '.[ray]')"
        if os.environ.get("CI", "").strip().lower() in ("true", "1", "yes"):
            pytest.fail(f"CI is set: {reason}", pytrace=False)
        pytest.skip(reason)
    return ray


def greedy(obs: dict[str, np.ndarray], k: int) -> np.ndarray:
    """Top-K by ``llm_sim``, ties to the lower position: int64 (B, K) slates for observations with a B axis."""
    return np.argsort(-obs["features"][:, :, F_LLM], axis=1, kind="stable")[:, :k]


def rollout(env: RecVectorEnv, steps: int, seed: int) -> list[tuple[np.ndarray, ...]]:
    """``steps`` greedy steps of ``env`` from ``reset(seed=seed)``: per step (features, candidates, reward,
    terminated, truncated, click_rank), copied."""
    obs, _ = env.reset(seed=seed)
    out = []
    for _ in range(steps):
        obs, rew, term, trunc, info = env.step(greedy(obs, env.core.K))
        out.append((obs["features"].copy(), obs["candidates"].copy(), rew, term, trunc, info["click_rank"]))
    return out


def make_core(cfg: EnvConfig, world: World, b: int = 64, **um: float | str) -> BatchedCore:
    """A core of ``b`` started rows (fixed keys) with ``cfg.user_model`` fields replaced by ``um``, observed once."""
    cfg = dataclasses.replace(cfg, user_model=dataclasses.replace(cfg.user_model, **um))
    core = BatchedCore(world, cfg, b)
    core.reset_rows(np.arange(b), np.arange(b, dtype=np.uint64) * np.uint64(977) + np.uint64(1))
    core.observe()
    return core


@pytest.fixture(scope="session")
def small_cfg() -> EnvConfig:
    """The small preset's env config."""
    return preset_config("small")


@pytest.fixture(scope="session")
def small_world(small_cfg: EnvConfig) -> World:
    """The small preset's world, built with a 64-d hashing encoder (about a second)."""
    return build_world(small_cfg, HashingEncoder(dim=64), progress=False)


def make_run_dir(root: Path, world: World, use_item_table: bool = False, steps: int = 256,
                 summary: dict | None = None, repulsion: bool = True, diverse: bool = True,
                 gate: str = "raw", session_sim: bool = False, hidden_taste: bool = False,
                 critic_state: bool = False, type_head: bool = False, feature_gate: bool = False,
                 told_rho: bool = False, pool_spread: bool = False, type_head_input: str = "state",
                 cf_rule: bool = False) -> Path:
    """A tiny run directory: config.yaml (small preset, 64-d hashing encoder, caches under ``root``), a PPO
    model.zip and the pickle-free policy.safetensors / policy.json, learned for ``steps`` steps (with the category
    repulsion train.py uses by default, strong enough to change slates, and, with ``diverse``, train.py's default
    residual on the diversity heuristic: standardised blend, a seen penalty and a category cap of 2), and
    optionally summary.json. ``gate`` is the diverse policy's gate (``SlatePolicy(gate=...)``; ``"standardised"``
    also gets the direct context path, ``gate_context``, the residual blind to the signals,
    ``gate_only_signals``, the click lean seen by the gate only, ``lean_gate_only``, and the heuristic's
    feedback-adaptive α in the gate, ``gate_lean``). ``session_sim`` turns ``env.obs_session_sim`` on,
    ``hidden_taste`` the research ablation ``env.obs_hidden_taste``, ``critic_state`` the critic's hidden input
    ``env.obs_critic_state``, ``type_head`` (with it) the policy's type head (``train.policy.type_head_weight``),
    ``feature_gate`` the state's own weights of the feature columns (``train.policy.feature_gate``), ``told_rho``
    the research ablation of an actor told the hidden ρ (``train.policy.actor_hidden_columns: [rho]``),
    ``pool_spread`` the candidates' spread in the state (``train.policy.pool_spread``), ``type_head_input`` what the
    type head reads (``train.policy.type_head_input``; ``"request"``: its input statistics joined from the last
    rollout, as the update does), ``cf_rule`` (with ``type_head`` and ``gate="standardised"``) a second base for the
    CF-leaning users (``train.policy.cf_rule_base``; threshold 1/2, so an unsure head mixes the two rules)."""
    from stable_baselines3 import PPO

    from agents.policies import SlatePolicy
    from agents.ppo_ranker import save_policy
    from envs.sb3 import SB3VecEnv
    from envs.vector_env import RecVectorEnv

    run = root / ("run-table" if use_item_table else "run-session" if session_sim else "run-taste" if hidden_taste
                  else "run-type" if type_head else "run-told" if told_rho else "run-critic" if critic_state
                  else "run-fgate" if feature_gate else "run-spread" if pool_spread else "run" if gate == "raw"
                  else f"run-{gate}")
    run.mkdir(parents=True)
    cfg = Config(encoder=EncoderConfig(kind="hashing", hashing_dim=64, cache_dir=str(root / "cache"), progress=False),
                 env=preset_config("small"))
    cfg.env.cache_dir = str(root / "cache")
    cfg.train.policy.use_item_table = use_item_table
    cfg.env.obs_session_sim = session_sim
    cfg.env.obs_hidden_taste = hidden_taste
    cfg.env.obs_critic_state = critic_state or type_head or told_rho
    cfg.train.policy.actor_hidden_state = told_rho
    cfg.train.policy.actor_hidden_columns = ["rho"] if told_rho else None
    cfg.train.policy.type_head_weight = 0.1 if type_head else 0.0
    cfg.train.policy.feature_gate = feature_gate
    cfg.train.policy.pool_spread = pool_spread
    cfg.train.policy.type_head_input = type_head_input  # type: ignore[assignment]
    cfg.train.policy.cf_rule_base = cf_rule
    cfg.train.policy.cf_rule_threshold = 0.5
    save_yaml(cfg, run / "config.yaml")
    # Put the fixture's world where load_world(cfg.env, cfg.encoder) looks for it (saves a rebuild).
    folder = default_world_dir(cfg.env, cfg.encoder) / world_key(cfg.env, world.encoder_name)
    if not folder.exists():
        world.save(folder)
    venv = SB3VecEnv(RecVectorEnv(8, config=cfg.env, world=world))
    venv.seed(0)
    type_kwargs: dict = ({"type_head_weight": 0.1, "type_loss_scale": 0.1 / 0.01, "type_head_input": type_head_input}
                         if type_head else {})
    if told_rho:
        type_kwargs.update(actor_hidden_state=True, actor_hidden_columns=["rho"])
    if cf_rule:
        from envs.spaces import F_CAT_EXPOSURE, FEATURE_NAMES

        weights_b = [0.0] * len(FEATURE_NAMES)
        weights_b[F_CAT_EXPOSURE] = -2.0
        type_kwargs.update(cf_rule_alpha=0.2, cf_rule_lean=3.0, cf_rule_weights=weights_b, cf_rule_threshold=0.5)
    model = PPO(SlatePolicy, venv, n_steps=32, batch_size=64, n_epochs=1, seed=0, device="cpu",
                ent_coef=0.01 if type_head else 0.0,
                policy_kwargs={"hidden": 32, "use_item_table": use_item_table, "repulsion_init": 2.0, **type_kwargs,
                               "item_category": world.catalog.category if repulsion else None,
                               "feature_gate": feature_gate, "pool_spread": pool_spread,
                               **(_diverse_kwargs(gate) if diverse and repulsion else {})})
    model.learn(steps)
    if type_head_input == "request":  # SB3's own update does not join them (agents.ppo_update does)
        from agents.ppo_update import rollout_observations

        model.policy.join_input_statistics(rollout_observations(model))  # type: ignore[operator]
    model.save(run / "model.zip")
    save_policy(model.policy, run)  # policy.safetensors + policy.json, what recfeed loads (as train.py writes them)
    if summary is not None:
        (run / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    return run


def _diverse_kwargs(gate: str = "raw") -> dict:
    """SlatePolicy kwargs of a residual on the diversity heuristic (as ``agents.training.policy_kwargs`` builds)."""
    from envs.spaces import F_ITEM_SEEN, FEATURE_NAMES

    weights = [0.0] * len(FEATURE_NAMES)
    weights[F_ITEM_SEEN] = -0.5
    return {"base": "diverse", "base_weights": weights, "category_cap": 2, "init_alpha": 0.9, "gate": gate,
            "gate_context": gate == "standardised", "gate_only_signals": gate == "standardised",
            "lean_gate_only": gate == "standardised", "gate_lean": 1.5 if gate == "standardised" else None}


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory: pytest.TempPathFactory, small_world: World) -> Path:
    """A tiny trained run (small preset, hashing encoder) with a summary giving tuned_alpha = 0.6."""
    return make_run_dir(tmp_path_factory.mktemp("runs"), small_world, summary={"tuned_alpha": 0.6})


@pytest.fixture(scope="session")
def onnx_export(run_dir: Path, small_world: World) -> Path:
    """The run exported as ONNX."""
    from agents.export import export_run  # torch and ONNX only for the tests that use an export

    return export_run(run_dir, "onnx", run_dir / "export-onnx", world=small_world)


@pytest.fixture(scope="session")
def ts_export(run_dir: Path, small_world: World) -> Path:
    """The run exported as TorchScript."""
    from agents.export import export_run

    return export_run(run_dir, "torchscript", run_dir / "export-ts", world=small_world)


# ---- serving helpers shared by the serving test modules ----------------------------------------------------------

SAFETY_S = 120.0  # a bound on waits that only a broken runtime reaches (never a timing assertion)


class FakeClock:
    """A settable wall clock."""

    def __init__(self, t: float = 1_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def ids_of(world: World, rows: np.ndarray | list[int]) -> list[str]:
    return [world.catalog.ids[int(i)] for i in rows]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def redis_server_or_skip(which: Callable[[str], str | None] = shutil.which,
                         env: dict[str, str] | os._Environ[str] = os.environ) -> str:
    """The redis-server executable. Missing: the Redis tests fail in CI (``CI=true``, where they must run) and
    are skipped, saying why, elsewhere."""
    exe = which("redis-server")
    if exe is None:
        why = "redis-server is not installed (apt-get install -y redis-server)"
        if env.get("CI", "").strip().lower() in ("true", "1", "yes"):
            pytest.fail(f"CI={env['CI']}: the Redis tests must run in CI, but {why}", pytrace=False)
        pytest.skip(f"{why}; with CI=true this is a failure")
    return exe


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    """A throwaway redis-server on a free loopback port (no persistence), stopped after the module."""
    exe = redis_server_or_skip()
    port = free_port()
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import redis

    client = redis.Redis(host="127.0.0.1", port=port)
    deadline = time.monotonic() + SAFETY_S
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail(f"redis-server did not start (exit code {proc.poll()})")
            time.sleep(0.05)
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        client.close()
        proc.terminate()
        proc.wait(timeout=10)


# ---- training helpers ---------------------------------------------------------------------------------------------

SMOKE = Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml"


@pytest.fixture(scope="session")
def runs_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One ``RECFEED_CACHE`` for the tests that train tiny runs, as a user's ``~/.cache/recfeed`` is shared by their
    runs: worlds and tuning searches are cached under keys of everything they depend on, so a run reads what an
    earlier test's run of the same world wrote instead of rebuilding it (the tiny world's searches cost ~35 s). Tests
    of the caches themselves keep their own folders."""
    return tmp_path_factory.mktemp("recfeed-cache")


#: Tuning sessions per grid point in tiny runs (400 by default): the references' searches are the slowest part of a tiny
#: run, and the tests check what the runs write, not how well the references are tuned.
TINY_TUNE_EPISODES = 50


def tiny_args(out: Path, name: str, steps: int) -> list[str]:
    """train.py flags of a tiny smoke run (hashing encoder, a few hundred steps) into ``out/name``."""
    return [
        "--config", str(SMOKE), "--out", str(out), "--name", name, "--quiet",
        "--set", "encoder.kind=hashing", "--set", "encoder.hashing_dim=32",
        "--set", f"train.total_timesteps={steps}", "--set", "train.eval_every=512",
        "--set", "train.checkpoint_every=512", "--set", "train.eval_episodes=16",
        "--set", "train.ppo.n_envs=8", "--set", "train.ppo.n_steps=32", "--set", "train.ppo.batch_size=128",
        "--set", "train.ppo.n_epochs=1", "--set", "eval.episodes=24", "--set", "eval.bootstrap=100",
        "--set", "eval.batch=24", "--set", f"eval.tune_episodes={TINY_TUNE_EPISODES}",
    ]
