"""How far above tuned-oracle-diverse can any ranker get? The rollout lookahead ceiling on held-out users.

``python -m bench.lookahead_ceiling --preset presets/ml --config configs/quality.yaml`` plays the held-out sessions
of a run's final evaluation (``eval.episodes`` × ``eval.seeds``, the sessions PPO's report uses) with

* ``tuned-diverse`` (observable; the quality bar's reference) and ``oracle`` (myopic, hidden state);
* ``tuned-oracle-diverse`` (hidden state; the ceiling the protocol tables report);
* ``lookahead-oracle`` (:class:`agents.lookahead.LookaheadRanker`): per request, the best of the candidate slates
  of tuned-oracle-diverse, the other points its search validated (among them its start, uncapped with λ_c = 0: the
  myopic oracle's slate) and tuned-diverse, judged by
  ``--rollouts`` simulated futures that continue with tuned-oracle-diverse. It reads the hidden state *and*
  simulates the true dynamics, so it bounds what a deployable policy could reach far more loosely than
  tuned-oracle-diverse does: if even it is only a few percent above tuned-diverse, a preset's headroom is small.

Prints each ranker's mean return, the paired differences to tuned-diverse and to tuned-oracle-diverse (95% bootstrap
intervals over sessions), how often each candidate was chosen and the planning cost; the last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from agents.evaluation import episode_plan, run_episodes
from agents.final_report import tuning_context
from agents.lookahead import LookaheadRanker, RankerFactory, planning_core
from agents.rankers import OracleRanker
from agents.report import Bootstrap, paired_test
from agents.tuning import diverse_ranker, oracle_diverse_ranker
from configs.loader import resolve_config
from configs.schema import ConfigError
from envs.factory import make_core
from envs.presets import load_world


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the comparison; print the table and the JSON summary (last line)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="default")
    ap.add_argument("--config", default=None, help="config file (its eval settings name the held-out sessions)")
    ap.add_argument("--episodes", type=int, default=None, help="held-out sessions (default: the config's eval plan)")
    ap.add_argument("--seed", type=int, default=0, help="tuning seed of the references (a run's train.seed)")
    ap.add_argument("--rollouts", type=int, default=16, help="simulated futures per candidate slate")
    ap.add_argument("--horizon", type=int, default=None, help="most requests per future (default: to session end)")
    ap.add_argument("--margin", type=float, default=1.0, help="standard errors a candidate must beat the base by")
    ap.add_argument("--batch", type=int, default=64, help="real users planned for at once")
    args = ap.parse_args(argv)
    if args.rollouts < 1 or args.batch < 1 or (args.episodes is not None and args.episodes < 2):
        ap.error("--rollouts and --batch must be >= 1 and --episodes >= 2")
    try:
        cfg = resolve_config(args.config, args.preset, [f"train.seed={args.seed}"])
    except ConfigError as exc:
        ap.error(str(exc))
    world = load_world(cfg.env, cfg.encoder)
    k, n_users = cfg.env.slate_size, world.populations["heldout"].size
    if args.episodes is None:
        plan = episode_plan(cfg.eval.episodes, cfg.eval.seed_list, n_users)
    else:
        plan = episode_plan(args.episodes, [0], n_users)
    core = make_core(cfg.env, cfg.env.preset, cfg.encoder, world, "heldout", args.batch)
    ctx = tuning_context(cfg, world, core, progress=False)  # a run's references: train.py's cached searches
    div, odiv = ctx.diverse_search(), ctx.oracle_diverse_search()
    cat = world.catalog.category
    points = [odiv.best] + [p for p in odiv.validation_points if p != odiv.best]

    def oracle_point(p: dict[str, float]) -> RankerFactory:
        return lambda c: oracle_diverse_ranker(k, c, p)

    # the points include the search's start (no cap, λ_c = 0): the myopic oracle's slate, so it is not added again
    candidates: list[RankerFactory] = [oracle_point(p) for p in points]
    labels = [f"oracle-diverse(cap {p['cap']:g}, λ_c {p['exposure_weight']:g})" for p in points]
    candidates.append(lambda c: diverse_ranker(k, cat, div.best))
    labels.append("tuned-diverse")
    rankers = {"tuned-diverse": diverse_ranker(k, cat, div.best, name="tuned-diverse"),
               "oracle": OracleRanker(k, core),
               "tuned-oracle-diverse": oracle_diverse_ranker(k, core, odiv.best, name="tuned-oracle-diverse")}
    look = LookaheadRanker(k, core, planning_core(core, len(candidates), args.rollouts), candidates,
                           oracle_point(odiv.best), rollouts=args.rollouts, horizon=args.horizon, margin=args.margin,
                           seed=args.seed)
    rankers[look.name] = look
    boot = Bootstrap(len(plan), 1000, args.seed)
    ret, seconds = {}, {}
    for name, ranker in rankers.items():
        t0 = time.perf_counter()
        ret[name] = run_episodes(core, ranker, plan, progress=name == look.name).ret
        seconds[name] = time.perf_counter() - t0
    out: dict[str, Any] = {
        "preset": args.preset, "episodes": len(plan), "rollouts": args.rollouts, "horizon": args.horizon,
        "margin": args.margin,
        "tuned_diverse": div.best, "tuned_oracle_diverse": odiv.best, "candidates": labels,
        "chosen_share": (look.chosen / max(look.chosen.sum(), 1)).tolist(), "sim_requests": look.sim_steps,
        "seconds": seconds, "return": {n: float(r.mean()) for n, r in ret.items()}, "paired": {},
    }
    print(f"{len(plan)} held-out sessions of {args.preset}; tuned-diverse {div.best}; tuned-oracle-diverse "
          f"{odiv.best}; lookahead: {len(candidates)} candidates x {args.rollouts} futures, horizon "
          f"{args.horizon or 'to the end'}, margin {args.margin:g} SE")
    ref = ret["tuned-diverse"]
    for name, r in ret.items():
        line = f"  {name:<22} {r.mean():7.3f}  ({r.mean() / ref.mean():.3f}x tuned-diverse)"
        for other in ("tuned-diverse", "tuned-oracle-diverse"):
            if other != name:
                test = paired_test(r, ret[other], boot)
                out["paired"][f"{name} - {other}"] = test
                line += f"  - {other}: {test['diff']:+.3f} ({test['ci95'][0]:+.3f} to {test['ci95'][1]:+.3f})"
        print(line + f"  [{seconds[name]:.0f} s]")
    print("  lookahead chose: " + ", ".join(f"{lab} {s:.0%}" for lab, s in zip(labels, out["chosen_share"],
                                                                                strict=True)))
    print(f"  planning cost: {look.sim_steps:,} simulated requests in {seconds[look.name]:.0f} s")
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
