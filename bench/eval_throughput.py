"""Evaluation throughput: sessions per second of the evaluation engine (``agents.evaluation.run_episodes``).

``python -m bench.eval_throughput --episodes 1000 --rankers random,popular,greedy-llm,greedy-cf,fixed-alpha:0.5,linucb``
runs every ranker over the same ``--episodes`` held-out sessions (metrics included: NDCG against the oracle,
diversity, novelty, coverage) and prints one line per ranker, then a JSON object as the last line with
``episodes_per_s`` per ranker and overall (all episodes / all seconds). Building the rankers (fitting, tuning)
is timed apart, as ``setup_seconds``.
"""

from __future__ import annotations

import argparse
import json
import time

from agents.evaluation import episode_plan, run_episodes
from agents.registry import RankerContext, check_specs, make_ranker
from configs.loader import ConfigError, resolve_config
from envs.core import BatchedCore
from envs.presets import load_world


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark and print the JSON summary as the last line."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--episodes", type=int, default=1000, help="sessions per ranker")
    ap.add_argument("--rankers", default="random,popular,greedy-llm,greedy-cf,fixed-alpha:0.5,linucb")
    ap.add_argument("--batch", type=int, default=256, help="users simulated at once (B)")
    ap.add_argument("--preset", default="default")
    ap.add_argument("--users", choices=["heldout", "train"], default="heldout")
    ap.add_argument("--encoder", choices=["transformer", "hashing"], default="transformer")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config value, e.g. env.max_steps=30 (repeatable; configs/schema.py)")
    args = ap.parse_args(argv)
    specs = [s.strip() for s in args.rankers.split(",") if s.strip()]
    check_specs(specs)
    try:
        full = resolve_config(None, args.preset, args.overrides, flags={"encoder": {"kind": args.encoder}})
    except ConfigError as exc:
        ap.error(str(exc))
    cfg = full.env
    world = load_world(cfg, full.encoder)
    plan = episode_plan(args.episodes, [0], world.populations[args.users].size)
    core = BatchedCore(world, cfg, min(args.batch, len(plan)), population=args.users)
    ctx = RankerContext(world, cfg, core=core, batch=args.batch)
    t0 = time.perf_counter()
    rankers = {spec: make_ranker(spec, ctx) for spec in specs}
    setup = time.perf_counter() - t0
    run_episodes(core, next(iter(rankers.values())), episode_plan(core.B, [1], world.populations[args.users].size))
    per: dict[str, dict[str, float]] = {}
    for name, ranker in rankers.items():
        st = run_episodes(core, ranker, plan)
        per[name] = {"seconds": round(st.seconds, 3), "episodes_per_s": round(len(plan) / st.seconds, 1),
                     "user_steps_per_s": round(float(st.length.sum()) / st.seconds, 1)}
        print(f"{name:>20}: {per[name]['episodes_per_s']:8.1f} episodes/s, "
              f"{per[name]['user_steps_per_s']:9.1f} user-steps/s ({st.length.mean():.1f} steps per session)")
    total = sum(p["seconds"] for p in per.values())
    out = {
        "preset": args.preset, "users": args.users, "episodes": len(plan), "batch": core.B, "n_candidates": core.N,
        "slate_size": core.K, "n_items": core.M, "dim": core.D, "setup_seconds": round(setup, 2),
        "episodes_per_s": round(len(plan) * len(per) / total, 1), "rankers": per,
    }
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
