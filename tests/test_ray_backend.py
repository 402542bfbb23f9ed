"""agents/ray_backend.py: ``train.backend = "ray"`` (rollouts on Ray actors, learned in the driver).

The Ray tests share one local Ray (3 CPUs) and skip without the optional ``recfeed[ray]`` extra, except under CI
(``CI=true``), where a missing Ray fails them.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch as th
from conftest import SMOKE, require_ray, tiny_args

import evaluate
import train
from agents import ray_backend
from agents.ray_backend import RayVecEnv, sampling_seed, shards
from configs.loader import ConfigError, resolve_config
from configs.schema import Config


def tiny_cfg(*extra: str) -> Config:
    """The tiny smoke budget of tests/conftest.py's ``tiny_args`` as a config, plus ``extra`` overrides."""
    args = tiny_args(Path("unused"), "unused", 256)
    sets = [a for prev, a in itertools.pairwise(args) if prev == "--set"]
    return resolve_config(SMOKE, None, [*sets, *extra])


# ---- no Ray needed ---------------------------------------------------------------------------------------------


def test_shards_cover_the_rows_in_order() -> None:
    assert shards(8, 3) == [(0, 3), (3, 3), (6, 2)]
    assert shards(5, 1) == [(0, 5)]
    assert shards(4, 4) == [(0, 1), (1, 1), (2, 1), (3, 1)]
    with pytest.raises(ValueError, match=r"train\.ray\.workers = 9"):
        shards(8, 9)
    assert len({sampling_seed(0, off) for off, _ in shards(256, 64)}) == 64  # one stream per shard
    assert sampling_seed(0, 3) == sampling_seed(0, 3) != sampling_seed(1, 3)


@pytest.mark.parametrize(("overrides", "needle"), [
    (["train.backend=rays"], r"train.backend: 'rays' is not one of \['local', 'ray'\]"),
    (["train.backend=ray", "train.ray.workers=0"], "train.ray.workers: must be >= 1"),
    (["train.backend=ray", "train.ray.workers=9"], "train.ray.workers: 9 workers for train.ppo.n_envs = 8"),
    (["train.ray.cpus_per_worker=0"], "train.ray.cpus_per_worker: must be > 0"),
    (["train.ray.max_restarts=-1"], "train.ray.max_restarts: must be >= 0"),
    (["train.ray.address=' '"], "train.ray.address: must not be empty"),
    (["train.ray.wrokers=2"], r"train.ray: unknown key\(s\) \['wrokers'\]"),
])
def test_bad_ray_settings_name_the_key(overrides: list[str], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        tiny_cfg(*overrides)


def test_local_is_the_default_backend() -> None:
    cfg = tiny_cfg()
    assert cfg.train.backend == "local" and cfg.train.ray.workers >= 1


# ---- on a local Ray ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_local() -> Iterator[object]:
    ray = require_ray()
    ray.init(address="local", num_cpus=3, include_dashboard=False, log_to_driver=False, logging_level="warning")  # type: ignore[attr-defined]
    yield ray
    ray.shutdown()  # type: ignore[attr-defined]


@pytest.fixture()
def cache(tmp_path: Path, runs_cache: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The test's folder; ``RECFEED_CACHE`` is the session's shared one (conftest), forwarded to the actors."""
    monkeypatch.setenv("RECFEED_CACHE", str(runs_cache))  # forwarded to the actors (RECFEED_*)
    return tmp_path


def _world_and_kwargs(cfg: Config) -> tuple[object, dict]:
    from agents.training import load_training_world, policy_kwargs

    world = load_training_world(cfg)  # built and cached here, read by the actors
    diverse = {"alpha": 0.6, "cap": 2, "exposure_weight": 0.3, "seen_weight": 0.5}  # tuned-diverse-like
    return world, policy_kwargs(cfg, 0.5, world, diverse)


def test_shards_simulate_the_local_envs_rows(ray_local: object, cache: Path) -> None:
    """W = 3 uneven shards reset to the local env's observations, and replaying their slates in the local env gives
    their rewards, ends and next observations; their values and log-probabilities are the driver policy's."""
    from agents.policies import SlatePolicy
    from agents.training import make_venv

    cfg = tiny_cfg("train.backend=ray", "train.ray.workers=3", "train.seed=5")
    world, kwargs = _world_and_kwargs(cfg)
    venv = RayVecEnv(cfg, kwargs)
    try:
        local = make_venv(cfg, world, cfg.train.seed)
        obs_ray, obs_local = venv.reset(), local.reset()
        for k in obs_local:
            np.testing.assert_array_equal(obs_ray[k], obs_local[k], err_msg=k)
        th.manual_seed(0)
        policy = SlatePolicy(local.observation_space, local.action_space, lambda _: 0.0, **kwargs)
        policy.set_training_mode(False)
        steps = 12
        parts = venv.collect(policy, steps)
        assert [p["actions"].shape[1] for p in parts] == [3, 3, 2]

        def cat(key: str, t: int) -> np.ndarray:
            return np.concatenate([p[key][t] for p in parts])

        obs = obs_local
        ended = 0
        for t in range(steps):
            for k in obs:
                np.testing.assert_allclose(np.concatenate([p["obs"][k][t] for p in parts]), obs[k], rtol=1e-6,
                                           atol=1e-6, err_msg=f"{k} at step {t}")
            with th.no_grad():
                values, log_prob, _ = policy.evaluate_actions(
                    {k: th.as_tensor(v) for k, v in obs.items()}, th.as_tensor(cat("actions", t)))
            np.testing.assert_allclose(cat("log_probs", t), log_prob.numpy(), rtol=1e-4, atol=1e-4)
            np.testing.assert_allclose(cat("values", t), values.numpy().ravel(), rtol=1e-4, atol=1e-4)
            obs, rewards, dones, _ = local.step(cat("actions", t))
            np.testing.assert_allclose(cat("rewards", t), rewards, rtol=1e-6, atol=1e-6)
            nxt = cat("starts", t + 1) if t + 1 < steps else np.concatenate([p["last_dones"] for p in parts])
            np.testing.assert_array_equal(nxt.astype(bool), dones)
            ended += int(dones.sum())
        assert ended > 0  # sessions ended and restarted inside the rollout (max_steps 30, 12 steps: a few)
        assert sum(len(p["episodes"]) for p in parts) == ended
        stats = venv.pop_stats()
        assert stats["steps"] == steps * 8 and stats["episodes"] == ended
    finally:
        venv.close()


def test_text_mode_encodes_prompts_on_the_actors(ray_local: object, cache: Path) -> None:
    from agents.training import make_venv

    cfg = tiny_cfg("train.backend=ray", "train.ray.workers=2", "env.obs_mode=text")
    world, kwargs = _world_and_kwargs(cfg)
    venv = RayVecEnv(cfg, kwargs)
    try:
        info = ray_local.get([a.describe.remote() for a in venv.actors])  # type: ignore[attr-defined]
        assert all(i["text_encoder"] is not None for i in info)
        assert all(i["obs_mode"] == "text" and i["pid"] != os.getpid() for i in info)
        obs_ray, obs_local = venv.reset(), make_venv(cfg, world, cfg.train.seed).reset()
        np.testing.assert_allclose(obs_ray["user"], obs_local["user"], atol=1e-6)  # the encoded prompts
    finally:
        venv.close()


def _tb_scalars(run: Path, tag: str) -> np.ndarray:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    values = []
    for events in sorted((run / "tb").rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        if tag in acc.Tags()["scalars"]:
            values += [e.value for e in acc.Scalars(tag)]
    return np.asarray(values)


def test_ray_learns_like_local_at_equal_steps_and_seeds(ray_local: object, cache: Path) -> None:
    """Same config, steps and seed: the same users, so the training curve (reward per request per rollout) and the
    held-out return agree within their sampling noise; the policies differ only by the slates' sampling noise."""
    steps = ["--set", "train.ppo.n_envs=16", "--set", "train.ppo.n_steps=32", "--set", "train.ppo.batch_size=256"]
    local = train.main([*tiny_args(cache / "runs", "local", 6144), *steps])
    ray = train.main([*tiny_args(cache / "runs", "ray", 6144), *steps, "--set", "train.backend=ray",
                      "--set", "train.ray.workers=2"])
    assert local["backend"] == {"name": "local"}
    assert ray["backend"]["name"] == "ray" and ray["backend"]["shards"] == [[0, 8], [8, 8]]
    assert ray["backend"]["iterations"] == 12 and ray["backend"]["lost_rollouts"] == 0
    assert ray["total_timesteps"] == local["total_timesteps"] == 6144
    evals = {name: [json.loads(x) for x in (Path(s["run_dir"]) / "eval.jsonl").read_text().splitlines()]
             for name, s in (("local", local), ("ray", ray))}
    assert [e["step"] for e in evals["ray"]] == [e["step"] for e in evals["local"]]  # callbacks at the same steps
    # The learning curve: per-rollout reward per request; its mean over the 12 rollouts within 4 standard errors.
    curves = {name: _tb_scalars(Path(s["run_dir"]), "rollout/reward_per_request")
              for name, s in (("local", local), ("ray", ray))}
    assert len(curves["local"]) == len(curves["ray"]) == 12
    se = np.sqrt(sum(c.var(ddof=1) / c.size for c in curves.values()))
    assert abs(curves["ray"].mean() - curves["local"].mean()) <= 4 * se + 1e-3, curves
    # Held-out return of the final policies (same evaluation sessions): their 95% intervals overlap.
    a, b = local["heldout"]["ppo"], ray["heldout"]["ppo"]
    assert a["ci95"][0] <= b["ci95"][1] and b["ci95"][0] <= a["ci95"][1], (a, b)


def test_a_worker_killed_mid_rollout_is_restarted_and_training_goes_on(ray_local: object, cache: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ray_backend, "CRASH_FOR_TEST", (2, 1, 5))  # iteration 2, worker 1, before its 6th step
    summary = train.main([*tiny_args(cache / "runs", "crash", 1024), "--set", "train.backend=ray",
                          "--set", "train.ray.workers=2"])
    assert summary["total_timesteps"] == 1024
    assert summary["backend"]["lost_rollouts"] == 1 and summary["backend"]["iterations"] == 4
    run = Path(summary["run_dir"])
    assert json.loads((run / "summary.json").read_text())["backend"]["lost_rollouts"] == 1
    assert [json.loads(x)["step"] for x in (run / "eval.jsonl").read_text().splitlines()][:2] == [512, 1024]
    monkeypatch.setattr(ray_backend, "CRASH_FOR_TEST", None)
    resumed = train.main(["--resume", str(run), "--total-timesteps", "1536", "--quiet"])  # from its checkpoint
    assert resumed["total_timesteps"] == 1536 and resumed["resumed_from"]["num_timesteps"] == 1024
    assert resumed["backend"]["name"] == "ray" and resumed["backend"]["iterations"] == 2
    out = cache / "eval"  # the same run directory as the local backend's: evaluate.py reads it
    evaluate.main(["--rankers", f"random,run:{run}", "--episodes", "12", "--seeds", "1", "--preset", "small",
                   "--set", "env.user_model.no_click_utility=3.5", "--encoder", "hashing", "--set",
                   "encoder.hashing_dim=32", "--reference", "random", "--out", str(out), "--no-progress"])
    assert np.isfinite(json.loads((out / "results.json").read_text())["rankers"][f"run:{run}"]["return"]["mean"])
