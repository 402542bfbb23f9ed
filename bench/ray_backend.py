"""Training throughput of the Ray backend against the local one (issue #15, item 2), alternated in one sitting.

``python -m bench.ray_backend --workers 1,2 --rounds 3 --rollouts 2`` measures, in fresh processes and in the
order local, ray W=1, ray W=2, local, … (``--rounds`` times), PPO as ``train.py`` builds it
(:func:`agents.training.make_train_env` and :func:`agents.checkpoints.new_ppo`, so the backend switch is the only
difference): one warm-up rollout, then ``--rollouts`` timed rollouts + updates. Each measurement reports env
steps/s, the collect / update split of the timed wall (the collect part, for Ray, includes the weight broadcast,
the actors' stepping and the driver's replay into the buffer), for Ray the slowest actor's own rollout seconds
(``actor_s``: collect minus it is the backend's overhead) and the start (Ray + actors) seconds.
The last line is a JSON object: per backend the median steps/s over the rounds, every run, and the load average.

``--set`` overrides config values (e.g. ``env.obs_mode=text`` with a smaller ``train.ppo.n_envs``). One
measurement alone: ``--one local`` or ``--one ray:2`` (what the alternation runs as its child processes).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch as th
from stable_baselines3.common.vec_env import VecNormalize

from configs.loader import resolve_config
from encoders.cache import default_cache_dir

#: ``tuned-diverse``-like parameters for the default ``policy.base = "diverse"`` (no search: the figures are rates).
DIVERSE = {"alpha": 0.8, "cap": 2, "exposure_weight": 0.3, "seen_weight": 0.5}


def measure(backend: str, overrides: list[str], rollouts: int, threads: int) -> dict[str, Any]:
    """One measurement in this process: ``backend`` is ``"local"`` or ``"ray:W"``."""
    from agents.checkpoints import new_ppo
    from agents.training import load_training_world, make_train_env, policy_kwargs
    from bench.train_throughput import _Split
    th.set_num_threads(threads)
    extra = [] if backend == "local" else ["train.backend=ray", f"train.ray.workers={backend.split(':')[1]}"]
    cfg = resolve_config(None, None, [*overrides, *extra])
    world = load_training_world(cfg)
    kwargs = policy_kwargs(cfg, 0.8, world, DIVERSE)
    t0 = time.perf_counter()
    venv: Any = make_train_env(cfg, world, kwargs)
    start_s = time.perf_counter() - t0
    pc = cfg.train.ppo
    env = VecNormalize(venv, norm_obs=False, norm_reward=True, gamma=pc.gamma) if pc.normalize_reward else venv
    model = new_ppo(cfg, env, th.device(cfg.train.device if cfg.train.device != "auto" else "cpu"), None, kwargs)
    per_rollout = pc.n_envs * pc.n_steps
    try:
        model.learn(per_rollout)  # warm-up: the actors' first rollout, numba and torch first calls
        split = _Split()
        actor_s0 = getattr(venv, "worker_seconds", 0.0)
        t0 = time.perf_counter()
        model.learn(rollouts * per_rollout, reset_num_timesteps=False, callback=split)
        wall = time.perf_counter() - t0
        actor_s = getattr(venv, "worker_seconds", 0.0) - actor_s0  # the slowest actor's rollout, per iteration
    finally:
        venv.close()
        if cfg.train.backend == "ray":
            from agents.ray_backend import shutdown_if_started

            shutdown_if_started()
    return {"backend": backend, "steps": rollouts * per_rollout, "steps_per_s": round(rollouts * per_rollout / wall, 1),
            "collect_s": round(split.collect_s, 2), "update_s": round(split.update_s, 2),
            "start_s": round(start_s, 1), "actor_s": round(actor_s, 2), "n_envs": pc.n_envs, "n_steps": pc.n_steps,
            "obs_mode": cfg.env.obs_mode, "load": os.getloadavg()[0]}


def projected_steps_per_s(workers: int, worker_rate: float, overhead_s: float, update_s: float) -> float:
    """Projected steps/s of the synchronous Ray backend (collect on every actor, then update in the driver).

    Per iteration of S samples (S grows with W: each actor keeps its shard size): the actors collect in
    S / (W · worker_rate) seconds, the driver spends ``overhead_s`` per sample (weights out, rollout in, replay into
    the buffer) and ``update_s`` per sample in PPO's update; nothing overlaps. So steps/s =
    1 / (1 / (W · worker_rate) + overhead_s + update_s).

    Args:
        workers: W.
        worker_rate: One actor's collection rate (its env steps + its policy forward), steps/s.
        overhead_s: Driver seconds per sample outside the actors and the update.
        update_s: Learner seconds per sample (PPO's epochs over the rollout).
    """
    return 1.0 / (1.0 / (workers * worker_rate) + overhead_s + update_s)


def project(summary: dict[str, Any], gpu_update_s: float, workers: tuple[int, ...] = (16, 64)) -> dict[str, Any]:
    """The scaling model from a measured alternation (``ray:1`` and ``local``): per-worker rate, overhead and the
    CPU update cost per sample from the medians here; ``gpu_update_s`` (seconds per sample) from a GPU measurement."""
    res = summary["results"]
    one = res["ray:1"]
    steps = summary["steps"]
    med = statistics.median
    worker_rate = steps / med(one["actor_s"])
    overhead = (med(one["collect_s"]) - med(one["actor_s"])) / steps
    cpu_update = med(res["local"]["update_s"]) / steps
    out: dict[str, Any] = {"worker_rate": round(worker_rate, 1), "overhead_us_per_sample": round(overhead * 1e6, 2),
                           "cpu_update_us_per_sample": round(cpu_update * 1e6, 2),
                           "gpu_update_us_per_sample": round(gpu_update_s * 1e6, 2)}
    for w in workers:
        out[f"W={w}"] = {"cpu_learner": round(projected_steps_per_s(w, worker_rate, overhead, cpu_update)),
                         "gpu_learner": round(projected_steps_per_s(w, worker_rate, overhead, gpu_update_s)),
                         "collection_only": round(w * worker_rate)}
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the alternation (or ``--one`` measurement); print the JSON summary as the last line."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", default="1,2", help="Ray worker counts to compare with local, e.g. 1,2")
    ap.add_argument("--rounds", type=int, default=3, help="alternation rounds (medians over them)")
    ap.add_argument("--rollouts", type=int, default=2, help="timed rollouts per measurement (after one warm-up)")
    ap.add_argument("--threads", type=int, default=1, help="the driver's torch threads")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--one", help="one measurement in this process: local or ray:W")
    ap.add_argument("--fresh-encoder-cache", action="store_true",
                    help="every measurement encodes through a new, empty embedding cache (text mode: else the prompts "
                         "of earlier runs, the same seeds' sessions, are cache hits); worlds are still read from the "
                         "usual cache")
    args = ap.parse_args(argv)
    if args.one:
        out = measure(args.one, args.overrides, args.rollouts, args.threads)
        print(json.dumps(out), flush=True)
        return out
    backends = ["local", *[f"ray:{w}" for w in args.workers.split(",")]]
    runs: dict[str, list[dict[str, Any]]] = {b: [] for b in backends}
    tmp = tempfile.TemporaryDirectory(prefix="ray-bench-")
    base = resolve_config(None, None, args.overrides)
    worlds = Path(base.env.cache_dir or base.encoder.cache_dir or default_cache_dir())
    for r in range(args.rounds):
        for b in backends:
            fresh = ["--set", f"env.cache_dir={worlds}", "--set", f"encoder.cache_dir={tmp.name}/{r}-{b}"] \
                if args.fresh_encoder_cache else []
            cmd = [sys.executable, "-m", "bench.ray_backend", "--one", b, "--rollouts", str(args.rollouts),
                   "--threads", str(args.threads), *[x for o in args.overrides for x in ("--set", o)], *fresh]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                print(proc.stdout[-2000:], proc.stderr[-4000:], file=sys.stderr)
                raise SystemExit(f"{b} failed (round {r})")
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            runs[b].append(row)
            print(json.dumps(row), flush=True)
    summary = {b: {"median_steps_per_s": statistics.median(x["steps_per_s"] for x in rs),
                   "steps_per_s": [x["steps_per_s"] for x in rs], "collect_s": [x["collect_s"] for x in rs],
                   "update_s": [x["update_s"] for x in rs], "start_s": [x["start_s"] for x in rs],
                   "actor_s": [x.get("actor_s", 0.0) for x in rs],
                   "load": [round(x["load"], 1) for x in rs]} for b, rs in runs.items()}
    tmp.cleanup()
    out = {"overrides": args.overrides, "fresh_encoder_cache": args.fresh_encoder_cache, "rollouts": args.rollouts,
           "rounds": args.rounds, "results": summary,
           "steps": runs["local"][0]["steps"]}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
