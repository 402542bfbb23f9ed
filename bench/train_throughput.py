"""End-to-end PPO training throughput (collection + updates) on the default config.

``python -m bench.train_throughput --threads 1 --rollouts 3`` builds the default world and PPO exactly as
``train.py`` does, learns one warm-up rollout, then times ``--rollouts`` more; the last line is a JSON object
with ``steps_per_s``. ``--set key=value`` overrides config values (e.g. ``train.ppo.n_epochs=2``).
"""

from __future__ import annotations

import argparse
import json
import time

import torch as th
from stable_baselines3 import PPO

from agents.policies import SlatePolicy
from agents.training import make_venv, policy_kwargs
from configs.loader import load_config
from envs.presets import load_world


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; print the JSON summary as the last line."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--rollouts", type=int, default=3, help="timed rollouts (after one warm-up)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args(argv)
    th.set_num_threads(args.threads)
    cfg = load_config(None, args.overrides)
    world = load_world(cfg.env, cfg.encoder, progress=False)
    pc = cfg.train.ppo
    model = PPO(SlatePolicy, make_venv(cfg, world, 0), n_steps=pc.n_steps, batch_size=pc.batch_size,
                n_epochs=pc.n_epochs, learning_rate=pc.learning_rate, gamma=pc.gamma,
                policy_kwargs=policy_kwargs(cfg, 0.9, world), verbose=0)
    per_rollout = pc.n_envs * pc.n_steps
    model.learn(per_rollout)
    t0 = time.perf_counter()
    model.learn(args.rollouts * per_rollout, reset_num_timesteps=False)
    seconds = time.perf_counter() - t0
    out = {"threads": args.threads, "steps": args.rollouts * per_rollout, "seconds": round(seconds, 2),
           "steps_per_s": round(args.rollouts * per_rollout / seconds, 1), "n_envs": pc.n_envs, "n_steps": pc.n_steps,
           "batch_size": pc.batch_size, "n_epochs": pc.n_epochs}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
