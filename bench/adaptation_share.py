"""A policy's share of the value of adaptation, paired on the sessions of one (large) evaluation.

The value of adaptation (``bench.headroom``) is what knowing each user's hidden type is worth to the best
hand-written rule: the diversity heuristic with its parameters chosen per hidden ρ group on the training users, by
tuned-diverse's own protocol (:func:`bench.headroom.diverse_by_group`), against the single tuned-diverse. The
``adapt`` bar asks what share of it a policy captures. ``bench.headroom`` plays that per-type rule on its own
sessions; here it plays the sessions an ``evaluate.py`` report met, so policy, per-type rule and tuned-diverse are
paired session by session and the share ``(policy − tuned-diverse) / (per-type rule − tuned-diverse)`` gets a
bootstrap interval (the same resamples for both differences):

    python evaluate.py --rankers run:RUN,tuned-diverse --reference tuned-diverse --episodes 1000 --seeds 100 \\
        --tune-seed S --out runs/x
    python -m bench.adaptation_share runs/x --ranker run:RUN --tune-seed S

``--tune-seed`` must be the report's (the run's ``train.seed``): tuned-diverse is replayed first from the tuning
cache and must return what the report holds, session for session, or the command stops.

``--common-reference`` reads the share against one reference whatever run made the report: tuned-diverse and the
per-type rule are searched with ``--tune-seed`` and ``--tune-episodes`` (the ``adapt`` bar's reading since session 51:
seed 11, 4,000 sessions per point) and both are replayed on the report's sessions; the report need not hold a
tuned-diverse, and its own is not used. Several runs read this way on the same sessions share one value of
adaptation, so their shares differ only by their own returns (``bench.quality_protocol --adaptation-reference``):

    python -m bench.adaptation_share runs/RUN/report --ranker ppo --run runs/RUN --common-reference \
        --tune-seed 11 --tune-episodes 4000

Beside it, the engineer's type switch (the registry's ``tuned-switch``, boosted reader, fitted with the same seed and
sessions per point) is replayed on the same sessions: its own share of the value of adaptation, and the policy − the
switch, by hidden type: the policy against the strongest hand-written use of the type (``"switch"`` in the JSON).

Research only: the per-type rule reads the hidden ρ. Prints a Markdown table; the last printed line is the JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from agents.evaluation import EpisodePlan, run_episodes
from agents.registry import RankerContext, run_dir_of
from agents.report import Bootstrap, percentile_ci, write_returns
from agents.tuning import TUNE_SEED, diverse_ranker, tuning_cache_dir
from bench.eval_blocks import report_returns
from bench.headroom import RHO_EDGES, diverse_by_group, grouped_returns, rho_groups
from bench.quality_protocol import _type_masks
from envs.core import BatchedCore


def share(policy: np.ndarray, reference: np.ndarray, typed: np.ndarray, boot: Bootstrap,
          sel: np.ndarray | None = None) -> dict[str, Any]:
    """The policy's and the per-type rule's margins over the reference, and the share, with paired intervals.

    Args:
        policy: float (E,) the policy's per-session returns.
        reference: float (E,) the reference's (tuned-diverse) on the same sessions.
        typed: float (E,) the per-type rule's on the same sessions.
        boot: Resamples over the E sessions.
        sel: bool (E,) the sessions to read (``None``: all); the resamples keep the rest out by weight.

    Returns:
        ``{"sessions", "policy_diff", "value", "share"}``, each a ``{"mean", "ci95"}`` but ``sessions``.
    """
    d_pol, d_typ = policy - reference, typed - reference
    w = np.ones(len(policy)) if sel is None else sel.astype(np.float64)
    n_sel = boot.means(w)  # (R,) the share of the resample in the selection
    with np.errstate(invalid="ignore", divide="ignore"):
        pol_r, typ_r = boot.means(d_pol * w) / n_sel, boot.means(d_typ * w) / n_sel
        share_r = np.where(typ_r != 0, pol_r / typ_r, np.nan)  # no value in a resample: no share there
    m_pol, m_typ = float((d_pol * w).sum() / w.sum()), float((d_typ * w).sum() / w.sum())
    return {"sessions": int(w.sum()),
            "policy_diff": {"mean": m_pol, "ci95": list(percentile_ci(pol_r))},
            "value": {"mean": m_typ, "ci95": list(percentile_ci(typ_r))},
            "share": {"mean": m_pol / m_typ if m_typ else float("nan"),
                      "ci95": list(percentile_ci(share_r)) if np.isfinite(share_r).any() else [float("nan")] * 2}}


def analyse(report: Path, ranker: str, run: Path | None = None, reference: str = "tuned-diverse", tune_seed: int = 0,
            tune_episodes: int = 1000, edges: tuple[float, ...] = RHO_EDGES, batch: int = 500,
            bootstrap: int = 2000, common: bool = False, switch_returns: Path | None = None) -> dict[str, Any]:
    """Replay tuned-diverse and the per-type rule on a report's sessions and pair them with ``ranker``.

    Args:
        report: An ``evaluate.py`` report folder with ``returns.npz`` (held-out users).
        ranker: The policy's name in the report.
        run: The run whose world and config to load (default: ``ranker``'s own ``run:DIR``).
        reference: tuned-diverse's name in the report (unused with ``common``).
        tune_seed: The report's ``--tune-seed``; with ``common``, the common reference's.
        tune_episodes: Training sessions per grid point of the searches (the report's ``eval.tune_episodes``; with
            ``common``, the common reference's).
        edges: Inner ρ group edges of the per-type rule (``bench.headroom``'s default thirds).
        batch: Users simulated at once.
        bootstrap: Resamples of the intervals.
        common: Use tuned-diverse searched with ``tune_seed`` and ``tune_episodes``, replayed on the report's
            sessions, as the reference instead of the report's own (which then need not exist): one reference for
            every run read this way.
        switch_returns: Where to write the type switch's per-session returns on the report's sessions
            (:func:`agents.report.write_returns`, ranker ``tuned-switch``; ``None``: not written).

    Raises:
        FileNotFoundError: Without ``returns.npz``.
        ValueError: A name the report lacks, no run to load, or a tuned-diverse that does not replay the report's.
    """
    from agents.ppo_ranker import load_run_config
    from envs.factory import make_core
    from envs.presets import load_world

    plan, rets = report_returns(report, (ranker,) if common else (ranker, reference))
    run = run if run is not None else (Path(d) if (d := run_dir_of(ranker)) else None)
    if run is None:
        raise ValueError(f"{ranker!r} is not a run:DIR ranker: name the run whose world to load (--run)")
    cfg = load_run_config(run)
    world = load_world(cfg.env, cfg.encoder, progress=False)
    core = make_core(cfg.env, cfg.env.preset, None, world, "heldout", min(batch, len(plan)))
    ctx = RankerContext(world, cfg.env, seed=tune_seed, tune_episodes=tune_episodes, batch=256,
                        cache_dir=str(tuning_cache_dir(cfg.env, cfg.encoder)))
    start = ctx.diverse_search().best
    k, category = cfg.env.slate_size, world.catalog.category
    memo: dict[tuple, np.ndarray] = {}

    def returns_of(point: dict[str, float]) -> np.ndarray:
        key = tuple(sorted(point.items()))
        if key not in memo:
            memo[key] = run_episodes(core, diverse_ranker(k, category, point), plan).ret
        return memo[key]

    replay = returns_of(start)
    if common:
        reference = f"tuned-diverse (tune seed {tune_seed}, {tune_episodes} sessions per point)"
        rets[reference] = replay
    elif not np.allclose(replay, rets[reference], rtol=1e-9, atol=1e-9):
        worst = float(np.abs(replay - rets[reference]).max())
        raise ValueError(f"tuned-diverse tuned with seed {tune_seed} does not replay the report's {reference!r} "
                         f"(largest per-session difference {worst:.3g}): pass the report's --tune-seed and "
                         "--tune-episodes")
    by_div = diverse_by_group(world, cfg.env, start, None, edges, tune_episodes, tune_seed + TUNE_SEED,
                              cache_dir=tuning_cache_dir(cfg.env, cfg.encoder))
    rho = world.populations["heldout"].rho[plan.users]
    typed = grouped_returns(returns_of, rho_groups(rho, edges), by_div["per_group"])
    boot = Bootstrap(len(plan), bootstrap, 0)
    policy, ref = rets[ranker], rets[reference]
    split = _type_masks(rho)  # bench.quality_protocol's CF-leaning / content-leaning split
    return {"report": str(report), "ranker": ranker, "reference": reference, "tune_seed": tune_seed,
            "tune_episodes": tune_episodes, "common_reference": common, "edges": list(edges), "start": start,
            "per_group": by_div["per_group"],
            "returns": {"policy": float(policy.mean()), "reference": float(ref.mean()), "typed": float(typed.mean())},
            "all": share(policy, ref, typed, boot),
            "by_user_type": {label: share(policy, ref, typed, boot, sel) for label, sel in split.items()},
            "switch": switch_figures(ctx, core, plan, policy, ref, typed, boot, split, switch_returns)}


def switch_figures(ctx: RankerContext, core: BatchedCore, plan: EpisodePlan, policy: np.ndarray,
                   reference: np.ndarray, typed: np.ndarray, boot: Bootstrap,
                   split: dict[str, np.ndarray], out: Path | None = None) -> dict[str, Any]:
    """The type switch (``tuned-switch``, fitted by ``ctx``) replayed on ``plan``'s sessions: its share of the value
    of adaptation and the policy − it, for all users and by hidden type.

    Args:
        ctx: The references' context (its seed and sessions per point fit the switch).
        core: Held-out users.
        plan: The report's sessions (E).
        policy: float (E,) the policy's per-session returns.
        reference: float (E,) tuned-diverse's.
        typed: float (E,) the per-type rule's.
        boot: Resamples over the E sessions.
        split: Hidden type label → bool (E,) its sessions.
        out: Where to write the switch's per-session returns (``None``: not written).

    Returns:
        ``{"threshold", "return", "all", "by_user_type", "policy_minus_switch"}`` (:func:`share` figures of the
        switch; ``policy_minus_switch`` per label ``all`` and each type: ``{"mean", "ci95"}``), or ``{"skipped":
        why}`` where the training users are of one type.
    """
    try:
        search = ctx.switch_search("boosted")
    except ValueError as exc:
        return {"skipped": str(exc)}
    stats = run_episodes(core, search.ranker, plan)
    if out is not None:
        write_returns({"tuned-switch": stats}, plan, out)
    ret = stats.ret
    diff = policy - ret

    def paired(sel: np.ndarray) -> dict[str, Any]:
        w = sel.astype(np.float64)
        return {"mean": float(diff[sel].mean()), "ci95": list(percentile_ci(boot.means(diff * w) / boot.means(w)))}

    return {"threshold": search.threshold, "return": float(ret.mean()),
            "all": share(ret, reference, typed, boot),
            "by_user_type": {label: share(ret, reference, typed, boot, sel) for label, sel in split.items()},
            "policy_minus_switch": {"all": paired(np.ones(len(plan), dtype=bool)),
                                    **{label: paired(sel) for label, sel in split.items()}}}


def markdown(res: dict[str, Any]) -> str:
    """One row for all users and one per user type (no share where the value's interval reaches 0)."""
    r = res["returns"]
    lines = [f"{res['ranker']} {r['policy']:.3f}, {res['reference']} {r['reference']:.3f}, the per-type rule "
             f"(reads ρ) {r['typed']:.3f}", "",
             "| users | sessions | policy − reference | value of adaptation (per-type rule − reference) | share |",
             "|---|---:|---:|---:|---:|"]

    def cell(x: dict[str, Any], pct: bool = False) -> str:
        f = (lambda v: f"{100 * v:.0f}%") if pct else (lambda v: f"{v:+.3f}")
        return f"{f(x['mean'])} ({f(x['ci95'][0])} to {f(x['ci95'][1])})"

    for label, s in [("all", res["all"]), *res["by_user_type"].items()]:
        part = cell(s["share"], pct=True) if s["value"]["ci95"][0] > 0 else "— (no value above 0 to share)"
        lines.append(f"| {label} | {s['sessions']} | {cell(s['policy_diff'])} | {cell(s['value'])} | {part} |")
    sw = res.get("switch", {})
    if "skipped" in sw:
        lines += ["", f"The type switch: not played ({sw['skipped']})."]
    elif sw:
        lines += ["", f"The type switch (tuned-switch, threshold {sw['threshold']:g}) {sw['return']:.3f}:", "",
                  "| users | switch − reference | its share | policy − switch |", "|---|---:|---:|---:|"]
        for label, s in [("all", sw["all"]), *sw["by_user_type"].items()]:
            part = cell(s["share"], pct=True) if s["value"]["ci95"][0] > 0 else "—"
            lines.append(f"| {label} | {cell(s['policy_diff'])} | {part} | "
                         f"{cell(sw['policy_minus_switch'][label])} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Print the table and the JSON."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("report", help="an evaluate.py report folder (with returns.npz), on held-out users")
    ap.add_argument("--ranker", required=True, help="the policy's name in the report, e.g. run:runs/x")
    ap.add_argument("--run", help="the run whose world to load (default: the ranker's run:DIR)")
    ap.add_argument("--reference", default="tuned-diverse", help="tuned-diverse's name in the report")
    ap.add_argument("--tune-seed", type=int, default=0,
                    help="the report's --tune-seed (the run's train.seed); with --common-reference, the reference's")
    ap.add_argument("--tune-episodes", type=int, default=1000,
                    help="the report's eval.tune_episodes; with --common-reference, the reference's")
    ap.add_argument("--common-reference", action="store_true",
                    help="search tuned-diverse and the per-type rule with --tune-seed and --tune-episodes and replay "
                         "both on the report's sessions, in place of the report's own tuned-diverse")
    ap.add_argument("--rho-edges", default="0.3333333,0.6666667", help="inner ρ group edges of the per-type rule")
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--bootstrap", type=int, default=2000)
    args = ap.parse_args(argv)
    if args.tune_seed < 0 or args.tune_episodes < 1:
        ap.error(f"--tune-seed must be >= 0 and --tune-episodes >= 1, got {args.tune_seed} and {args.tune_episodes}")
    edges = tuple(float(x) for x in args.rho_edges.split(",") if x.strip())
    try:
        res = analyse(Path(args.report), args.ranker, Path(args.run) if args.run else None, args.reference,
                      args.tune_seed, args.tune_episodes, edges, args.batch, args.bootstrap,
                      common=args.common_reference)
    except (FileNotFoundError, ValueError) as exc:
        ap.error(str(exc))
    print(markdown(res))
    print(json.dumps(res, default=float))
    return res


if __name__ == "__main__":
    main()
