"""Env throughput: user-steps per second of ``RecVectorEnv`` (the whole step: core, autoreset, obs copy).

``python -m bench.env_throughput --batch 1024 --seconds 10`` prints progress lines, then a JSON object as the
last line with ``user_steps_per_s`` (the median over ``--repeats`` timed windows).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np

from configs.loader import ConfigError, resolve_config
from configs.schema import Config
from envs.presets import load_world
from envs.vector_env import RecVectorEnv
from envs.world import World


def measure(env: RecVectorEnv, seconds: float, seed: int = 0) -> float:
    """User-steps/s of ``env`` stepped with precomputed valid slates for about ``seconds``."""
    n, k, b = env.core.N, env.core.K, env.num_envs
    rng = np.random.default_rng(seed)
    slates = np.stack([np.argsort(rng.random((b, n)), axis=1)[:, :k] for _ in range(8)])
    env.reset(seed=seed)
    steps = 0
    start = time.perf_counter()
    while True:
        env.step(slates[steps % 8])
        steps += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return steps * b / elapsed


def add_world_args(ap: argparse.ArgumentParser) -> None:
    """The ``--preset`` and repeatable ``--set KEY=VALUE`` options of the env benchmarks."""
    ap.add_argument("--preset", default="default")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config value, e.g. env.max_steps=30 (repeatable; configs/schema.py)")


def config_and_world(ap: argparse.ArgumentParser, args: argparse.Namespace,
                     flags: dict | None = None, progress: bool = False) -> tuple[Config, World]:
    """The resolved config of ``--preset`` / ``--set`` (a bad one ends the command with the loader's message) and its
    world (built or read from the cache; ``progress``: show the build's progress bars)."""
    try:
        full = resolve_config(None, args.preset, args.overrides, flags=flags)
    except ConfigError as exc:
        ap.error(str(exc))
    return full, load_world(full.env, full.encoder, progress=progress)


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark and print the JSON summary as the last line."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--batch", type=int, default=1024, help="users stepped at once (B)")
    ap.add_argument("--seconds", type=float, default=5.0, help="length of one timed window")
    ap.add_argument("--repeats", type=int, default=3, help="timed windows; the median is reported")
    ap.add_argument("--mode", choices=["pooled", "text"], default="pooled", help="user-state encoding")
    add_world_args(ap)
    args = ap.parse_args(argv)
    full, world = config_and_world(ap, args, flags={"env": {"obs_mode": args.mode}}, progress=True)
    cfg = full.env
    env = RecVectorEnv(args.batch, config=cfg, world=world)
    measure(env, min(1.0, args.seconds))  # warm-up: tables, caches
    runs = [measure(env, args.seconds, seed=i) for i in range(args.repeats)]
    for i, r in enumerate(runs):
        print(f"window {i}: {r:,.0f} user-steps/s")
    out = {
        "preset": args.preset, "mode": args.mode, "batch": args.batch, "n_candidates": env.core.N,
        "slate_size": env.core.K, "n_items": env.core.M, "dim": env.core.D, "repeats": args.repeats,
        "user_steps_per_s": round(statistics.median(runs), 1), "runs": [round(r, 1) for r in runs],
    }
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
