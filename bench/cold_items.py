"""Returns with new (cold-start) items among the candidates: a PPO run against the blends on its own world.

    python -m bench.cold_items RUN_DIR [--episodes 1000] [--seeds 2]

``RUN_DIR`` was trained on a world with new items (``env.catalog.new_item_share > 0``). On held-out users
(common random numbers: every ranker plays the same sessions) it reports per ranker the return, the share of
requests whose candidates include a new item, new items shown per slate and clicks on new items per request; and
the paired differences PPO − tuned-alpha and PPO − tuned-diverse (bootstrap 95% intervals over sessions). Markdown on
stdout.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from agents.baselines import make_ranker
from agents.evaluation import episode_plan, run_episodes
from agents.final_report import tuning_context
from agents.ppo_ranker import PPORanker, load_policy, load_run_config
from agents.report import Bootstrap, paired_test
from envs.factory import make_core
from envs.presets import load_world


def main(argv: list[str] | None = None) -> int:
    """CLI entry point (see the module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir")
    ap.add_argument("--episodes", type=int, default=1000)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--bootstrap", type=int, default=2000)
    args = ap.parse_args(argv)
    run = Path(args.run_dir)
    cfg = load_run_config(run)
    world = load_world(cfg.env, cfg.encoder, progress=False)
    new = world.new_items if world.new_items.size else np.zeros(world.n_items, bool)
    summary = json.loads((run / "summary.json").read_text())
    core = make_core(cfg.env, cfg.env.preset, cfg.encoder, world, "heldout", cfg.eval.batch)
    plan = episode_plan(args.episodes, list(range(args.seeds)), world.populations["heldout"].size)
    ctx = tuning_context(cfg, world, core, False)
    tuned = make_ranker(f"fixed-alpha:{summary['tuned_alpha']:g}", ctx)
    rankers = {"ppo": PPORanker(load_policy(run, "cpu", world.n_items), cfg.env.slate_size), "tuned-alpha": tuned,
               "tuned-diverse": make_ranker("tuned-diverse", ctx), "greedy-llm": make_ranker("greedy-llm", ctx)}
    rows, rets = {}, {}
    for name, ranker in rankers.items():
        acc = {"requests": 0, "with_new": 0, "new_shown": 0, "new_clicks": 0}

        def on_step(obs, slate, fb, active, acc=acc):
            rows_ = np.flatnonzero(active)
            cands = obs["candidates"][rows_]
            items = np.take_along_axis(obs["candidates"], slate, axis=1)[rows_]
            acc["requests"] += len(rows_)
            acc["with_new"] += int(new[cands].any(axis=1).sum())
            acc["new_shown"] += int(new[items].sum())
            acc["new_clicks"] += int((new[items] & fb.clicks[rows_]).sum())

        stats = run_episodes(core, ranker, plan, on_step=on_step)
        rets[name] = stats.ret
        r = acc["requests"]
        rows[name] = (stats.ret.mean(), acc["with_new"] / r, acc["new_shown"] / r, acc["new_clicks"] / r)
    boot = Bootstrap(len(plan), args.bootstrap, 0)
    print(f"run {run.name}: {summary['total_timesteps']:,} steps; world {world.n_items} items, {int(new.sum())} new; "
          f"{len(plan)} held-out sessions\n")
    print("| ranker | return | requests with a new candidate | new items shown / slate | new-item clicks / request |")
    print("|---|---:|---:|---:|---:|")
    for name, (ret, share, shown, clicks) in rows.items():
        print(f"| {name} | {ret:.2f} | {share:.1%} | {shown:.2f} | {clicks:.3f} |")
    print("\n| paired (all sessions) | diff | 95% CI | p |\n|---|---:|---|---:|")
    for ref in ("tuned-alpha", "tuned-diverse"):
        t = paired_test(rets["ppo"], rets[ref], boot)
        print(f"| PPO − {ref} | {t['diff']:+.2f} | [{t['ci95'][0]:+.2f}, {t['ci95'][1]:+.2f}] | {t['p_value']:.2g} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
