"""Where an env step's time goes: the step kernel, session starts, the observation, the rest (numpy glue).

``python -m bench.env_profile --set env.catalog.n_items=1000000 --set encoder.kind=hashing`` loads (or builds)
the world as ``bench.env_throughput`` does, steps a ``RecVectorEnv`` of B = ``--batch`` with precomputed valid
slates for ``--seconds`` and prints, per part, the milliseconds per step (wall time of ``BatchedCore.step``,
``BatchedCore.reset_rows`` (``build_sessions`` + ``fill_factored``) and ``BatchedCore.observe``
(``gather_features``) against the whole ``env.step``), the click rate and the session starts per step. The last
line is a JSON object with the same figures.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import numpy as np

from bench.env_throughput import add_world_args, config_and_world
from envs.vector_env import RecVectorEnv

PARTS = ("step", "reset_rows", "observe")


def _timed(fn: Callable, acc: dict[str, float], name: str) -> Callable:
    """``fn`` wrapped so that its wall time adds to ``acc[name]``."""

    def wrapper(*args: object, **kw: object) -> object:
        t0 = time.perf_counter()
        try:
            return fn(*args, **kw)
        finally:
            acc[name] += time.perf_counter() - t0

    return wrapper


def profile(env: RecVectorEnv, seconds: float, seed: int = 0) -> dict:
    """Step ``env`` for about ``seconds`` and split the wall time per step into :data:`PARTS` and the rest.

    Args:
        env: The vector env (its core's methods are wrapped for the duration).
        seconds: Length of the timed window.
        seed: Slate and reset seed.

    Returns:
        ``{"steps", "user_steps_per_s", "ms_per_step": {part: ms, "rest": ms, "total": ms}, "click_rate",
        "starts_per_step"}``.
    """
    core = env.core
    n, k, b = core.N, core.K, env.num_envs
    rng = np.random.default_rng(seed)
    slates = np.stack([np.argsort(rng.random((b, n)), axis=1)[:, :k] for _ in range(8)])
    env.reset(seed=seed)
    acc = dict.fromkeys(PARTS, 0.0)
    saved = {p: getattr(core, p) for p in PARTS}
    starts = clicks = 0
    for p in PARTS:
        setattr(core, p, _timed(saved[p], acc, p))
    try:
        steps = 0
        start = time.perf_counter()
        while True:
            _, _, term, trunc, info = env.step(slates[steps % 8])
            starts += int(np.count_nonzero(term | trunc))
            clicks += int(np.count_nonzero(info["click"]))
            steps += 1
            elapsed = time.perf_counter() - start
            if elapsed >= seconds:
                break
    finally:
        for p in PARTS:
            delattr(core, p)  # the instance attributes shadowed the methods
    ms = {p: round(1e3 * acc[p] / steps, 3) for p in PARTS}
    ms["total"] = round(1e3 * elapsed / steps, 3)
    ms["rest"] = round(ms["total"] - sum(ms[p] for p in PARTS), 3)
    return {"steps": steps, "user_steps_per_s": round(steps * b / elapsed, 0), "ms_per_step": ms,
            "click_rate": round(clicks / (steps * b), 4), "starts_per_step": round(starts / steps, 1)}


def main(argv: list[str] | None = None) -> dict:
    """Run the profile and print the JSON summary as the last line."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--batch", type=int, default=1024, help="users stepped at once (B)")
    ap.add_argument("--seconds", type=float, default=5.0, help="length of one timed window")
    ap.add_argument("--repeats", type=int, default=3, help="timed windows (each printed)")
    add_world_args(ap)
    args = ap.parse_args(argv)
    full, world = config_and_world(ap, args)
    env = RecVectorEnv(args.batch, config=full.env, world=world)
    profile(env, min(1.0, args.seconds))  # warm-up
    runs = [profile(env, args.seconds, seed=i) for i in range(args.repeats)]
    for r in runs:
        print(f"{r['user_steps_per_s']:>10,.0f} user-steps/s  ms/step {r['ms_per_step']}  clicks {r['click_rate']}"
              f"  starts/step {r['starts_per_step']}", flush=True)
    out = {"n_items": env.core.M, "batch": args.batch, "factored": env.core.factored,
           "use_gram": bool(env.core._use_gram), "threads": env.core.threads, "runs": runs}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
