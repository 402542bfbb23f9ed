"""Is there something to learn? Headroom checks of the simulator on held-out users (common random numbers).

``python -m bench.headroom --episodes 2000`` runs, on the same sessions: random, greedy-by-LLM, greedy-by-CF,
the fixed α blend over a grid, a diversity-aware heuristic on the best α, and the myopic oracle. It checks:

1. the oracle beats greedy-by-LLM and greedy-by-CF, which beat random (paired tests);
2. the best fixed α differs between users with low and high ρ_u (each group's best α beats the other group's
   best α within that group);
3. the diversity-aware heuristic beats pure greedy (the same α blend) on return;
and prints the plausibility figures (CTR per request, session length, purchases per click, dwell per click).
The last line is a JSON object with every figure and the checks as booleans.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from agents.baselines import ALPHA_GRID, RankerContext, make_ranker
from agents.evaluation import Bootstrap, EpisodeStats, episode_plan, paired_test, percentile_ci, run_episodes
from configs.loader import ConfigError, resolve_config
from envs.factory import make_core
from envs.presets import load_world


def _mean_ci(x: np.ndarray, boot: Bootstrap, sel: np.ndarray | None = None) -> dict[str, float | list[float]]:
    if sel is not None:
        x = np.where(sel, x, np.nan)
        means = boot.means(np.nan_to_num(x)) / boot.means(sel.astype(float))
        return {"mean": float(np.nanmean(x)), "ci95": list(percentile_ci(means))}
    return {"mean": float(x.mean()), "ci95": list(percentile_ci(boot.means(x)))}


def main(argv: list[str] | None = None) -> dict:
    """Run the checks; print a table and the JSON summary (last line)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--episodes", type=int, default=2000, help="held-out sessions (same for every ranker)")
    ap.add_argument("--preset", default="default")
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config value, e.g. env.max_steps=30 (repeatable; configs/schema.py)")
    args = ap.parse_args(argv)
    try:
        full = resolve_config(None, args.preset, args.overrides)
    except ConfigError as exc:
        ap.error(str(exc))
    cfg = full.env
    world = load_world(cfg, full.encoder)
    core = make_core(cfg, cfg.preset, None, world, "heldout", args.batch)
    plan = episode_plan(args.episodes, [args.seed], world.populations["heldout"].size)
    ctx = RankerContext(world, cfg, core=core, seed=args.seed)
    specs = ["random", "greedy-llm", "greedy-cf", "oracle"] + [f"fixed-alpha:{a:g}" for a in ALPHA_GRID]
    stats: dict[str, EpisodeStats] = {s: run_episodes(core, make_ranker(s, ctx), plan) for s in specs}
    fixed = {a: stats[f"fixed-alpha:{a:g}"].ret for a in ALPHA_GRID}
    best = max(fixed, key=lambda a: fixed[a].mean())
    div = f"diverse:{best:g}"
    stats[div] = run_episodes(core, make_ranker(div, ctx), plan)

    boot = Bootstrap(len(plan), 2000, args.seed)
    rho = stats["random"].rho
    low, high = rho < 0.5, rho >= 0.5
    best_low = max(fixed, key=lambda a: fixed[a][low].mean())
    best_high = max(fixed, key=lambda a: fixed[a][high].mean())

    def beats(a: np.ndarray, b: np.ndarray, sel: np.ndarray | None = None) -> dict:
        s = np.ones(len(a), bool) if sel is None else sel
        t = paired_test(a[s], b[s])
        return {"delta": t["diff"], "p": t["p_value"], "holds": bool(t["diff"] > 0 and t["p_value"] < 0.01)}

    r = {k: v.ret for k, v in stats.items()}
    checks = {
        "oracle>greedy-llm": beats(r["oracle"], r["greedy-llm"]),
        "oracle>greedy-cf": beats(r["oracle"], r["greedy-cf"]),
        "greedy-llm>random": beats(r["greedy-llm"], r["random"]),
        "greedy-cf>random": beats(r["greedy-cf"], r["random"]),
        f"low-rho: alpha {best_low:g} > alpha {best_high:g}": beats(fixed[best_low], fixed[best_high], low),
        f"high-rho: alpha {best_high:g} > alpha {best_low:g}": beats(fixed[best_high], fixed[best_low], high),
        f"{div}>fixed-alpha:{best:g}": beats(r[div], fixed[best]),
    }
    figures = {}
    for name, s in stats.items():
        clicks = max(s.clicks.sum(), 1.0)
        figures[name] = {
            "return": _mean_ci(s.ret, boot),
            "return_low_rho": _mean_ci(s.ret, boot, low),
            "return_high_rho": _mean_ci(s.ret, boot, high),
            "ctr_per_request": float(s.clicks.sum() / s.length.sum()),
            "session_length": float(s.length.mean()),
            "purchases_per_click": float(s.purchases.sum() / clicks),
            "dwell_per_click_s": float(s.dwell.sum() / clicks),
        }
    print(f"{'ranker':<18}{'return (95% CI)':>22}{'ρ<0.5':>8}{'ρ>=0.5':>8}{'CTR':>7}{'length':>8}{'buy/click':>10}"
          f"{'dwell/click':>12}")
    for name, f in figures.items():
        lo, hi = f["return"]["ci95"]
        print(f"{name:<18}{f['return']['mean']:>8.3f} ({lo:.3f}–{hi:.3f}){f['return_low_rho']['mean']:>8.2f}"
              f"{f['return_high_rho']['mean']:>8.2f}{f['ctr_per_request']:>7.3f}{f['session_length']:>8.1f}"
              f"{f['purchases_per_click']:>10.3f}{f['dwell_per_click_s']:>11.0f}s")
    print(f"best fixed α: all users {best:g}, ρ<0.5 {best_low:g}, ρ>=0.5 {best_high:g}")
    for name, c in checks.items():
        print(f"{'PASS' if c['holds'] else 'FAIL'}  {name}: Δ {c['delta']:+.3f}, p = {c['p']:.2g}")
    out = {"preset": args.preset, "episodes": len(plan), "best_alpha": best, "best_alpha_low_rho": best_low,
           "best_alpha_high_rho": best_high, "checks": checks, "all_hold": all(c["holds"] for c in checks.values()),
           "figures": figures}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
