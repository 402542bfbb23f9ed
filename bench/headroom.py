"""Is there something to learn? Headroom checks of the simulator on held-out users (common random numbers).

``python -m bench.headroom --episodes 2000`` runs, on the same held-out sessions: random, greedy-by-LLM,
greedy-by-CF, the fixed α blend over a grid, the diversity heuristic (at 0.9 and at the held-out best α), the
myopic oracle, and the references of the quality bar, tuned on the TRAINING users (``--tune-episodes`` sessions
per grid point, common random numbers): ``tuned-alpha``, ``tuned-diverse`` and the non-myopic upper reference
``tuned-oracle-diverse`` (``agents/tuning.py``). It checks:

1. the oracle beats greedy-by-LLM and greedy-by-CF, which beat random (paired tests);
2. the best fixed α differs between users with low and high ρ_u (each group's best α beats the other group's
   best α within that group);
3. the diversity-aware heuristic beats pure greedy (the same α blend) on return;

and reports

* the **value of adaptation**: the return of choosing, per hidden ρ_u group (``--rho-edges``), the best fixed α
  (resp. the best diversity parameters, picked by tuned-diverse's own rule within the group: search, then
  validation on fresh sessions) on the training users, evaluated on the held-out users, against the single tuned
  value (tuned-alpha, resp. tuned-diverse): what knowing the user's type is worth to a fixed ranker;
* the **type leak**: how well the ρ group (ρ_u ≥ 0.5) is predicted from the first request's observation alone
  (a logistic classifier on summary features, fitted on the training users, accuracy on the held-out users); a
  type that is not predictable there has to be learnt from in-session feedback;
* the plausibility figures (CTR per request, session length, purchases per click, dwell per click).

The last line is a JSON object with every figure and the checks as booleans.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from agents.evaluation import EpisodePlan, EpisodeStats, episode_plan, run_episodes
from agents.fitting import fit_logistic
from agents.rankers import BlendRanker, z_rows
from agents.registry import RankerContext, make_ranker
from agents.report import Bootstrap, paired_test, percentile_ci
from agents.tuning import (
    ALPHA_GRID,
    MIN_GROUP_EPISODES,
    RHO_EDGES,
    TUNE_SEED,
    diverse_by_group,
    diverse_ranker,
    rho_groups,
    tuning_cache_dir,
)
from configs.loader import ConfigError, resolve_config
from configs.schema import EnvConfig
from envs.core import BatchedCore
from envs.factory import make_core
from envs.presets import load_world
from envs.spaces import F_CF, F_LLM, F_POP, F_PRICE
from envs.world import World


def _mean_ci(x: np.ndarray, boot: Bootstrap, sel: np.ndarray | None = None) -> dict[str, float | list[float]]:
    if sel is not None:
        if not sel.any():
            return {"mean": float("nan"), "ci95": [float("nan"), float("nan")]}
        x = np.where(sel, x, np.nan)
        means = boot.means(np.nan_to_num(x)) / boot.means(sel.astype(float))
        return {"mean": float(np.nanmean(x)), "ci95": list(percentile_ci(means))}
    return {"mean": float(x.mean()), "ci95": list(percentile_ci(boot.means(x)))}


def _ratio_ci(x: np.ndarray, ref: np.ndarray, boot: Bootstrap) -> dict[str, float | list[float]]:
    """Ratio of mean returns ``mean(x) / mean(ref)`` on the same episodes, with a paired bootstrap interval."""
    return {"mean": float(x.mean() / ref.mean()), "ci95": list(percentile_ci(boot.means(x) / boot.means(ref)))}


# ---- value of adaptation ----------------------------------------------------------------------------------------


def best_per_group(returns: dict[Any, np.ndarray], groups: np.ndarray, n_groups: int, fallback: Any,
                   min_count: int = MIN_GROUP_EPISODES) -> list[Any]:
    """For each group, the key whose returns have the highest mean over the group's episodes (first on ties).

    Args:
        returns: key → per-episode returns (E,) on the same sessions.
        groups: int (E,) group of each episode.
        n_groups: G.
        fallback: The choice for a group with fewer than ``min_count`` episodes.
        min_count: Fewest episodes a group needs for its own choice.

    Returns:
        G keys.
    """
    keys = list(returns)
    out = []
    for g in range(n_groups):
        sel = groups == g
        if sel.sum() < min_count:
            out.append(fallback)
            continue
        means = [float(returns[k][sel].mean()) for k in keys]
        out.append(keys[int(np.argmax(means))])
    return out


def alpha_by_group(world: World, cfg: EnvConfig, alphas: Sequence[float] = ALPHA_GRID,
                   edges: Sequence[float] = RHO_EDGES, episodes: int = 1000, seed: int = TUNE_SEED,
                   batch: int = 256, population: str = "train",
                   min_count: int = MIN_GROUP_EPISODES) -> dict[str, Any]:
    """The best fixed α of each hidden ρ group on ``population`` (training users), and the single best α.

    Every α meets the same sessions (common random numbers); with the same ``episodes`` and ``seed`` the single
    choice is tuned-alpha's (``agents.tuning.tune_alpha``).

    Args:
        world: The world.
        cfg: Env config.
        alphas: The α grid.
        edges: Inner ρ group edges.
        episodes: Training sessions per α.
        seed: Seed of the sessions.
        batch: Users simulated at once.
        population: Population the choices are made on.
        min_count: A group with fewer sessions keeps the single choice.

    Returns:
        ``{"single": α, "per_group": [α per group], "counts": [sessions per group],
        "group_means": {α: [mean return per group]}}``.
    """
    core = make_core(cfg, cfg.preset, None, world, population, min(batch, episodes))
    plan = episode_plan(episodes, [seed], world.populations[population].size)
    groups = rho_groups(world.populations[population].rho[plan.users], edges)
    n_groups = len(edges) + 1
    rets = {float(a): run_episodes(core, BlendRanker(cfg.slate_size, float(a)), plan).ret for a in alphas}
    single = max(rets, key=lambda a: rets[a].mean())
    return {
        "single": single,
        "per_group": best_per_group(rets, groups, n_groups, single, min_count),
        "counts": [int((groups == g).sum()) for g in range(n_groups)],
        "group_means": {a: [float(r[groups == g].mean()) if (groups == g).any() else float("nan")
                            for g in range(n_groups)] for a, r in rets.items()},
    }


def grouped_returns(returns_of: Callable[[Any], np.ndarray], groups: np.ndarray,
                    per_group: Sequence[Any]) -> np.ndarray:
    """Per-episode returns of "each episode gets its group's choice": float64 (E,).

    Exact for rankers without memory across rows: a session's trajectory depends only on its key, its user and
    the slates it is shown, not on the other rows of the batch.

    Args:
        returns_of: choice → per-episode returns (E,) of that choice on every session.
        groups: int (E,) group of each session.
        per_group: The choice of each group.
    """
    out = np.zeros(len(groups))
    for g, choice in enumerate(per_group):
        sel = groups == g
        if sel.any():
            out[sel] = returns_of(choice)[sel]
    return out


# ---- type leak ---------------------------------------------------------------------------------------------------

#: Summary features of a first observation that the type-leak classifier reads.
LEAK_FEATURES: tuple[str, ...] = ("llm_mean", "llm_std", "llm_max", "cf_mean", "cf_std", "cf_max", "llm_cf_corr",
                                  "popularity_mean", "price_mean")


def first_request_summary(world: World, cfg: EnvConfig, population: str, seed: int = 3) -> np.ndarray:
    """Summary of each user's first observation (one session per user): float64 (U, len(LEAK_FEATURES))."""
    n = world.populations[population].size
    core = BatchedCore(world, cfg, n, population=population)
    keys = np.arange(n, dtype=np.uint64) * np.uint64(7919) + np.uint64(seed)
    core.reset_rows(np.arange(n), keys, np.arange(n))
    f = core.observe()["features"].astype(np.float64)
    llm, cf = f[:, :, F_LLM], f[:, :, F_CF]
    return np.stack([llm.mean(1), llm.std(1), llm.max(1), cf.mean(1), cf.std(1), cf.max(1),
                     (z_rows(llm) * z_rows(cf)).mean(1),
                     f[:, :, F_POP].mean(1), f[:, :, F_PRICE].mean(1)], axis=1)


def type_leak(world: World, cfg: EnvConfig, threshold: float = 0.5) -> dict[str, float]:
    """How well ``ρ_u >= threshold`` is predicted from the first request alone (logistic classifier).

    Fitted on the training users' first observations (:func:`first_request_summary`, standardised), scored on
    the held-out users'. A lower bound on what a richer model could read there.

    Returns:
        ``{"accuracy": held-out accuracy, "base_rate": accuracy of always guessing the larger class}``.
    """
    xt, xh = first_request_summary(world, cfg, "train"), first_request_summary(world, cfg, "heldout")
    yt = world.populations["train"].rho >= threshold
    yh = world.populations["heldout"].rho >= threshold
    mu, sd = xt.mean(axis=0), xt.std(axis=0) + 1e-9
    w = fit_logistic(np.c_[(xt - mu) / sd, np.ones(len(xt))], yt, l2=1e-2)
    pred = np.c_[(xh - mu) / sd, np.ones(len(xh))] @ w > 0
    return {"accuracy": float((pred == yh).mean()), "base_rate": float(max(yh.mean(), 1.0 - yh.mean()))}


# ---- the run ------------------------------------------------------------------------------------------------------


def _figures(s: EpisodeStats, boot: Bootstrap, groups: np.ndarray, n_groups: int) -> dict[str, Any]:
    clicks = max(s.clicks.sum(), 1.0)
    low, high = s.rho < 0.5, s.rho >= 0.5
    return {
        "return": _mean_ci(s.ret, boot),
        "return_low_rho": _mean_ci(s.ret, boot, low),
        "return_high_rho": _mean_ci(s.ret, boot, high),
        "return_by_group": [_mean_ci(s.ret, boot, groups == g)["mean"] for g in range(n_groups)],
        "ctr_per_request": float(s.clicks.sum() / s.length.sum()),
        "session_length": float(s.length.mean()),
        "purchases_per_click": float(s.purchases.sum() / clicks),
        "dwell_per_click_s": float(s.dwell.sum() / clicks),
    }


def add_world_args(ap: argparse.ArgumentParser, preset: str) -> None:
    """The options of a bench that tunes references on a preset's training users and plays its held-out ones:
    ``--preset``, ``--episodes``, ``--tune-episodes``, ``--seed``, ``--batch`` and ``--set`` (repeatable)."""
    ap.add_argument("--preset", default=preset)
    ap.add_argument("--episodes", type=int, default=2000, help="held-out sessions (same for every ranker)")
    ap.add_argument("--tune-episodes", type=int, default=1000,
                    help="training sessions per grid point of the tuned references (their searches are cached beside "
                         "the world and shared with the runs that tuned with the same seed and sessions)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the sessions and of the tuning (a run's train.seed)")
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config value, e.g. env.max_steps=30 (repeatable; configs/schema.py)")


def main(argv: list[str] | None = None) -> dict:
    """Run the checks; print a table and the JSON summary (last line)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_world_args(ap, preset="default")
    ap.add_argument("--rho-edges", default="0.3333333,0.6666667",
                    help="inner edges of the ρ_u groups of the value of adaptation, comma separated")
    args = ap.parse_args(argv)
    edges = tuple(float(x) for x in args.rho_edges.split(",") if x.strip())
    try:
        full = resolve_config(None, args.preset, args.overrides)
    except ConfigError as exc:
        ap.error(str(exc))
    cfg = full.env
    world = load_world(cfg, full.encoder)
    core = make_core(cfg, cfg.preset, None, world, "heldout", args.batch)
    plan: EpisodePlan = episode_plan(args.episodes, [args.seed], world.populations["heldout"].size)
    ctx = RankerContext(world, cfg, core=core, seed=args.seed, tune_episodes=args.tune_episodes, batch=256,
                        cache_dir=str(tuning_cache_dir(cfg, full.encoder)))
    fixed_specs = [f"fixed-alpha:{a:g}" for a in ALPHA_GRID]
    specs = ["random", "greedy-llm", "greedy-cf", *fixed_specs, "diverse:0.9", "tuned-alpha", "tuned-diverse",
             "oracle", "tuned-oracle-diverse"]
    stats: dict[str, EpisodeStats] = {s: run_episodes(core, make_ranker(s, ctx), plan) for s in specs}
    fixed = {a: stats[f"fixed-alpha:{a:g}"].ret for a in ALPHA_GRID}
    best = max(fixed, key=lambda a: fixed[a].mean())
    div = f"diverse:{best:g}"
    if div not in stats:
        stats[div] = run_episodes(core, make_ranker(div, ctx), plan)

    boot = Bootstrap(len(plan), 2000, args.seed)
    rho = stats["random"].rho
    low, high = rho < 0.5, rho >= 0.5
    best_low = max(fixed, key=lambda a: fixed[a][low].mean())
    best_high = max(fixed, key=lambda a: fixed[a][high].mean())

    # value of adaptation: choices per ρ group on the training users, evaluated on the held-out sessions
    n_groups = len(edges) + 1
    groups = rho_groups(rho, edges)
    tune_seed = args.seed + TUNE_SEED
    by_alpha = alpha_by_group(world, cfg, ALPHA_GRID, edges, args.tune_episodes, tune_seed)
    tuned_div = ctx.diverse_search()
    by_div = diverse_by_group(world, cfg, tuned_div.best, None, edges, args.tune_episodes, tune_seed,
                              cache_dir=tuning_cache_dir(cfg, full.encoder))
    div_cache: dict[tuple, np.ndarray] = {}

    def div_returns(point: dict[str, float]) -> np.ndarray:
        key = tuple(sorted(point.items()))
        if key not in div_cache:
            div_cache[key] = run_episodes(core, diverse_ranker(cfg.slate_size, world.catalog.category, point),
                                          plan).ret
        return div_cache[key]

    alpha_adapted = grouped_returns(lambda a: fixed[a], groups, by_alpha["per_group"])
    div_adapted = grouped_returns(div_returns, groups, by_div["per_group"])
    ret_tuned_alpha, ret_tuned_div = stats["tuned-alpha"].ret, stats["tuned-diverse"].ret
    adaptation = {
        "edges": list(edges),
        "heldout_sessions_per_group": [int((groups == g).sum()) for g in range(n_groups)],
        "alpha": {**by_alpha, "group_means": {f"{a:g}": m for a, m in by_alpha["group_means"].items()},
                  "return": _mean_ci(alpha_adapted, boot),
                  "single_return": _mean_ci(ret_tuned_alpha, boot),
                  "ratio_vs_single": _ratio_ci(alpha_adapted, ret_tuned_alpha, boot),
                  "by_group": [_mean_ci(alpha_adapted, boot, groups == g)["mean"] for g in range(n_groups)]},
        "diverse": {**by_div,
                    "return": _mean_ci(div_adapted, boot),
                    "single_return": _mean_ci(ret_tuned_div, boot),
                    "ratio_vs_single": _ratio_ci(div_adapted, ret_tuned_div, boot),
                    "ratio_vs_tuned_alpha": _ratio_ci(div_adapted, ret_tuned_alpha, boot),
                    "by_group": [_mean_ci(div_adapted, boot, groups == g)["mean"] for g in range(n_groups)]},
    }
    leak = type_leak(world, cfg)

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
    figures = {name: _figures(s, boot, groups, n_groups) for name, s in stats.items()}
    shares = {name: _ratio_ci(s.ret, r["tuned-oracle-diverse"], boot) for name, s in stats.items()}
    for name, f in figures.items():
        f["share_of_ceiling"] = shares[name]
    label = {"alpha by ρ group (hidden)": alpha_adapted, "diverse by ρ group (hidden)": div_adapted}
    for name, x in label.items():
        f = {"return": _mean_ci(x, boot), "return_low_rho": _mean_ci(x, boot, low),
             "return_high_rho": _mean_ci(x, boot, high)}
        figures[name] = f

    print(f"{'ranker':<28}{'return (95% CI)':>24}{'ρ<0.5':>8}{'ρ>=0.5':>8}{'CTR':>7}{'length':>8}{'buy/click':>10}"
          f"{'dwell/click':>12}")
    for name, f in figures.items():
        lo, hi = f["return"]["ci95"]
        line = (f"{name:<28}{f['return']['mean']:>8.3f} ({lo:6.3f}–{hi:6.3f}){f['return_low_rho']['mean']:>8.2f}"
                f"{f['return_high_rho']['mean']:>8.2f}")
        if "ctr_per_request" in f:
            line += (f"{f['ctr_per_request']:>7.3f}{f['session_length']:>8.1f}{f['purchases_per_click']:>10.3f}"
                     f"{f['dwell_per_click_s']:>11.0f}s")
        print(line)
    print(f"best fixed α on held-out users: all {best:g}, ρ<0.5 {best_low:g}, ρ>=0.5 {best_high:g}")
    print(f"tuned-diverse (training users): {tuned_div.best} ({tuned_div.method}, {len(tuned_div.points)} points)")
    orc = ctx.oracle_diverse_search()
    print(f"tuned-oracle-diverse (training users): {orc.best} ({orc.method}, {len(orc.points)} points)")
    a, d = adaptation["alpha"], adaptation["diverse"]
    print(f"ρ groups (inner edges {list(edges)}): held-out sessions {adaptation['heldout_sessions_per_group']}, "
          f"training sessions {a['counts']}")
    print(f"value of adaptation, α: per-group α {a['per_group']} vs single {a['single']:g}: "
          f"{a['return']['mean']:.3f} vs {a['single_return']['mean']:.3f}, ratio {a['ratio_vs_single']['mean']:.3f} "
          f"({a['ratio_vs_single']['ci95'][0]:.3f}–{a['ratio_vs_single']['ci95'][1]:.3f})")
    print(f"value of adaptation, diverse: per-group {d['per_group']} vs single {d['single']}: "
          f"{d['return']['mean']:.3f} vs {d['single_return']['mean']:.3f}, ratio {d['ratio_vs_single']['mean']:.3f} "
          f"({d['ratio_vs_single']['ci95'][0]:.3f}–{d['ratio_vs_single']['ci95'][1]:.3f})")
    print(f"type leak: ρ>=0.5 predicted from the first request with accuracy {leak['accuracy']:.3f} "
          f"(base rate {leak['base_rate']:.3f})")
    for name, c in checks.items():
        print(f"{'PASS' if c['holds'] else 'FAIL'}  {name}: Δ {c['delta']:+.3f}, p = {c['p']:.2g}")
    out = {"preset": args.preset, "episodes": len(plan), "tune_episodes": args.tune_episodes, "best_alpha": best,
           "best_alpha_low_rho": best_low, "best_alpha_high_rho": best_high,
           "tuned_alpha": ctx.alpha_curve().best_alpha, "tuned_diverse": tuned_div.to_dict(),
           "tuned_oracle_diverse": orc.to_dict(), "adaptation": adaptation, "type_leak": leak, "checks": checks,
           "all_hold": all(c["holds"] for c in checks.values()), "figures": figures}
    print(json.dumps(out, default=float))
    return out


if __name__ == "__main__":
    main()
