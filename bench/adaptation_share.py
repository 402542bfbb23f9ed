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
cache and must return what the report holds, session for session, or the command stops. The searches use the α axis
of the run's config (``eval.alpha_grid``; the default axis without one), as its own table did.

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

Several policies of one report, one per training seed (``--ranker`` repeated, with ``--common-reference``), are read
against the same references replayed once, and over the runs: the share's mean with its t-interval across runs, and
the policies − tuned-diverse and − the switch over seeds and sessions. With ``evaluate.py --first-seed`` the report
can be a fresh draw of sessions that none of the runs' own reports met (the confirmatory reading of session 60):

    python evaluate.py --preset adapt --rankers run:A,run:B,run:C --episodes 1000 --first-seed 20 --seeds 80 \
        --tune-seed 11 --tune-episodes 4000 --out runs/fresh
    python -m bench.adaptation_share runs/fresh --ranker run:A --ranker run:B --ranker run:C --common-reference \
        --tune-seed 11 --tune-episodes 4000

Research only: the per-type rule reads the hidden ρ. Prints a Markdown table; the last printed line is the JSON.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agents.evaluation import EpisodePlan, run_episodes
from agents.registry import RankerContext, alpha_grid_kwargs, run_dir_of
from agents.report import Bootstrap, percentile_ci, write_returns
from agents.tuning import TUNE_SEED, diverse_ranker, tuning_cache_dir
from bench.cli import print_analysis
from bench.eval_blocks import report_returns
from bench.headroom import RHO_EDGES, diverse_by_group, grouped_returns, rho_groups
from bench.ppo_seeds import t_interval
from bench.quality_protocol import _type_masks, seeds_and_sessions_interval
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


@dataclass
class Replay:
    """The references replayed on a report's sessions (E of them): what every policy of the report is read against.

    Attributes:
        plan: The report's sessions.
        returns: Name → float (E,) the report's per-session returns of the policies read.
        reference: The reference's name (tuned-diverse, the report's own or the common one).
        ref: float (E,) its per-session returns.
        typed: float (E,) the per-type rule's.
        split: Hidden type label → bool (E,) its sessions (``bench.quality_protocol``'s CF- / content-leaning split).
        boot: Resamples over the E sessions.
        start: tuned-diverse's point.
        per_group: The per-type rule's point per ρ group.
        ctx: The references' context (fits the type switch).
        core: Held-out users of the run's world.
    """

    plan: EpisodePlan
    returns: dict[str, np.ndarray]
    reference: str
    ref: np.ndarray
    typed: np.ndarray
    split: dict[str, np.ndarray]
    boot: Bootstrap
    start: dict[str, float]
    per_group: list[dict[str, Any]]
    ctx: RankerContext
    core: BatchedCore


def replay(report: Path, rankers: Sequence[str], run: Path | None = None, reference: str = "tuned-diverse",
           tune_seed: int = 0, tune_episodes: int = 1000, edges: tuple[float, ...] = RHO_EDGES, batch: int = 500,
           bootstrap: int = 2000, common: bool = False) -> Replay:
    """Replay tuned-diverse and the per-type rule on a report's sessions (arguments as :func:`analyse`'s; ``run``
    defaults to the first ranker's own ``run:DIR``)."""
    from agents.ppo_ranker import load_run_config
    from envs.factory import make_core
    from envs.presets import load_world

    plan, rets = report_returns(report, tuple(rankers) if common else (*rankers, reference))
    run = run if run is not None else (Path(d) if (d := run_dir_of(rankers[0])) else None)
    if run is None:
        raise ValueError(f"{rankers[0]!r} is not a run:DIR ranker: name the run whose world to load (--run)")
    cfg = load_run_config(run)
    world = load_world(cfg.env, cfg.encoder, progress=False)
    core = make_core(cfg.env, cfg.env.preset, None, world, "heldout", min(batch, len(plan)))
    ctx = RankerContext(world, cfg.env, seed=tune_seed, tune_episodes=tune_episodes, batch=256,
                        cache_dir=str(tuning_cache_dir(cfg.env, cfg.encoder)), **alpha_grid_kwargs(cfg.eval.alpha_grid))
    start = ctx.diverse_search().best
    k, category = cfg.env.slate_size, world.catalog.category
    memo: dict[tuple, np.ndarray] = {}

    def returns_of(point: dict[str, float]) -> np.ndarray:
        key = tuple(sorted(point.items()))
        if key not in memo:
            memo[key] = run_episodes(core, diverse_ranker(k, category, point), plan).ret
        return memo[key]

    ref = returns_of(start)
    if common:
        reference = f"tuned-diverse (tune seed {tune_seed}, {tune_episodes} sessions per point)"
    elif not np.allclose(ref, rets[reference], rtol=1e-9, atol=1e-9):
        worst = float(np.abs(ref - rets[reference]).max())
        raise ValueError(f"tuned-diverse tuned with seed {tune_seed} does not replay the report's {reference!r} "
                         f"(largest per-session difference {worst:.3g}): pass the report's --tune-seed and "
                         "--tune-episodes")
    by_div = diverse_by_group(world, cfg.env, start, ctx.diverse_grid, edges, tune_episodes, tune_seed + TUNE_SEED,
                              cache_dir=tuning_cache_dir(cfg.env, cfg.encoder))
    rho = world.populations["heldout"].rho[plan.users]
    typed = grouped_returns(returns_of, rho_groups(rho, edges), by_div["per_group"])
    return Replay(plan, {n: rets[n] for n in rankers}, reference, ref, typed, _type_masks(rho),
                  Bootstrap(len(plan), bootstrap, 0), start, by_div["per_group"], ctx, core)


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
    r = replay(report, [ranker], run, reference, tune_seed, tune_episodes, edges, batch, bootstrap, common)
    policy = r.returns[ranker]
    switch = play_switch(r, switch_returns)
    return {"report": str(report), "ranker": ranker, "reference": r.reference, "tune_seed": tune_seed,
            "tune_episodes": tune_episodes, "common_reference": common, "edges": list(edges), "start": r.start,
            "per_group": r.per_group,
            "returns": {"policy": float(policy.mean()), "reference": float(r.ref.mean()),
                        "typed": float(r.typed.mean())},
            "all": share(policy, r.ref, r.typed, r.boot),
            "by_user_type": {label: share(policy, r.ref, r.typed, r.boot, sel) for label, sel in r.split.items()},
            "switch": switch if "skipped" in switch else switch_figures(r, policy, **switch)}


def play_switch(r: Replay, out: Path | None = None) -> dict[str, Any]:
    """The type switch (``tuned-switch``, boosted reader, fitted by ``r.ctx``) played on ``r``'s sessions:
    ``{"threshold", "ret": float (E,)}``, or ``{"skipped": why}`` where the training users are of one type; its
    per-session returns written to ``out`` unless ``None``."""
    try:
        search = r.ctx.switch_search("boosted")
    except ValueError as exc:
        return {"skipped": str(exc)}
    stats = run_episodes(r.core, search.ranker, r.plan)
    if out is not None:
        write_returns({"tuned-switch": stats}, r.plan, out)
    return {"threshold": search.threshold, "ret": stats.ret}


def switch_figures(r: Replay, policy: np.ndarray, threshold: float, ret: np.ndarray) -> dict[str, Any]:
    """The switch's share of the value of adaptation and the policy − it, for all users and by hidden type.

    Args:
        r: The references on the report's sessions.
        policy: float (E,) the policy's per-session returns.
        threshold: The switch's threshold.
        ret: float (E,) the switch's per-session returns (:func:`play_switch`).

    Returns:
        ``{"threshold", "return", "all", "by_user_type", "policy_minus_switch"}`` (:func:`share` figures of the
        switch; ``policy_minus_switch`` per label ``all`` and each type: ``{"mean", "ci95"}``).
    """
    diff = policy - ret

    def paired(sel: np.ndarray) -> dict[str, Any]:
        w = sel.astype(np.float64)
        return {"mean": float(diff[sel].mean()),
                "ci95": list(percentile_ci(r.boot.means(diff * w) / r.boot.means(w)))}

    return {"threshold": threshold, "return": float(ret.mean()),
            "all": share(ret, r.ref, r.typed, r.boot),
            "by_user_type": {label: share(ret, r.ref, r.typed, r.boot, sel) for label, sel in r.split.items()},
            "policy_minus_switch": {"all": paired(np.ones(len(r.plan), dtype=bool)),
                                    **{label: paired(sel) for label, sel in r.split.items()}}}


def analyse_runs(report: Path, rankers: Sequence[str], run: Path | None = None, tune_seed: int = 11,
                 tune_episodes: int = 4000, edges: tuple[float, ...] = RHO_EDGES, batch: int = 500,
                 bootstrap: int = 2000, against: Sequence[str] = ()) -> dict[str, Any]:
    """Several policies of one report (one per training seed) against one common reference and type switch.

    The references (tuned-diverse, the per-type rule, the switch; searched with ``tune_seed`` on ``tune_episodes``
    sessions per point, as ``--common-reference``) are replayed once on the report's sessions, so every policy meets
    the same sessions and the same references: a reading of finished runs on a fresh draw of sessions (``evaluate.py
    --first-seed``). Over the policies: the share of the value of adaptation (mean of the per-run shares, t-interval
    across runs, as ``bench.quality_protocol --adaptation``), and the policy − tuned-diverse and − the switch over
    seeds **and** sessions (``bench.quality_protocol.seeds_and_sessions_interval``), for all users and by hidden type.

    Args:
        report: An ``evaluate.py`` report folder holding every policy's returns.
        rankers: The policies' names in the report (>= 2).
        run: The run whose world to load (default: the first ranker's ``run:DIR``).
        tune_seed: The common reference's seed.
        tune_episodes: Its training sessions per grid point.
        edges: Inner ρ group edges of the per-type rule.
        batch: Users simulated at once.
        bootstrap: Resamples of the per-run intervals.
        against: Policies of another recipe in the same report, matched to ``rankers`` by position (the same
            training seed): adds the policies − them, paired run by run, over seeds and sessions
            (``"policy_minus_against"``). Empty: none.

    Raises:
        FileNotFoundError: Without ``returns.npz``.
        ValueError: Fewer than two policies, ``against`` of another length, or a name the report lacks.
    """
    if len(set(rankers)) < 2:
        raise ValueError(f"analyse_runs reads two or more policies, got {list(rankers)}")
    if against and len(against) != len(rankers):
        raise ValueError(f"against pairs run by run: {len(against)} policies for {len(rankers)}")
    r = replay(report, list(dict.fromkeys([*rankers, *against])), run, tune_seed=tune_seed,
               tune_episodes=tune_episodes, edges=edges, batch=batch, bootstrap=bootstrap, common=True)
    switch = play_switch(r)
    labels = {"all": np.ones(len(r.plan), dtype=bool), **r.split}
    per_run = {}
    for name in rankers:
        policy = r.returns[name]
        per_run[name] = {"return": float(policy.mean()),
                         "share": {label: share(policy, r.ref, r.typed, r.boot, sel)["share"]
                                   for label, sel in labels.items()}}
        if "skipped" not in switch:
            per_run[name]["policy_minus_switch"] = switch_figures(r, policy, **switch)["policy_minus_switch"]
    table = np.stack([r.returns[n] for n in rankers])  # (S, E)
    over: dict[str, Any] = {
        "share": {label: _across(np.array([per_run[n]["share"][label]["mean"] for n in rankers]))
                  for label in labels},
        "policy_minus_reference": {label: seeds_and_sessions_interval(table[:, m] - r.ref[m])
                                   for label, m in labels.items()}}
    if against:
        other = np.stack([r.returns[n] for n in against])  # (S, E), row s the same training seed as table's
        over["policy_minus_against"] = {label: seeds_and_sessions_interval(table[:, m] - other[:, m])
                                        for label, m in labels.items()}
    out: dict[str, Any] = {
        "report": str(report), "rankers": list(rankers), "reference": r.reference, "tune_seed": tune_seed,
        "tune_episodes": tune_episodes, "sessions": len(r.plan), "seeds": sorted(set(r.plan.seeds.tolist())),
        "against": list(against),
        "edges": list(edges), "start": r.start, "per_group": r.per_group,
        "returns": {"reference": float(r.ref.mean()), "typed": float(r.typed.mean())},
        # the value of adaptation (per-type rule − reference), read through share() with the reference as policy
        "value": {label: share(r.ref, r.ref, r.typed, r.boot, sel)["value"] for label, sel in labels.items()},
        "per_run": per_run, "over_runs": over}
    if "skipped" in switch:
        out["switch"] = {"skipped": switch["skipped"]}
    else:
        sw = switch_figures(r, r.ref, **switch)
        out["switch"] = {"threshold": switch["threshold"], "return": sw["return"],
                         "share": {label: (sw["all"] if label == "all" else sw["by_user_type"][label])["share"]
                                   for label in labels}}
        over["policy_minus_switch"] = {label: seeds_and_sessions_interval(table[:, m] - switch["ret"][m])
                                       for label, m in labels.items()}
    return out


def _across(v: np.ndarray) -> dict[str, Any]:
    """Mean of per-run figures with its t-interval across the runs."""
    return {"mean": float(v.mean()), "ci95": t_interval(v), "per_seed": v.tolist()}


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


def markdown_runs(res: dict[str, Any]) -> str:
    """:func:`analyse_runs`' table: a row per run, then the figures over the runs."""
    def cell(x: dict[str, Any], pct: bool = False) -> str:
        f = (lambda v: f"{100 * v:.0f}%") if pct else (lambda v: f"{v:+.3f}")
        return f"{f(x['mean'])} ({f(x['ci95'][0])} to {f(x['ci95'][1])})"

    labels = list(res["value"])
    sw = res["switch"]

    def share_cell(x: dict[str, Any], label: str) -> str:  # no share of a value whose interval reaches 0
        return cell(x, pct=True) if res["value"][label]["ci95"][0] > 0 else "—"

    lines = [f"{len(res['rankers'])} policies on {res['sessions']} sessions (evaluation seeds {res['seeds'][0]}–"
             f"{res['seeds'][-1]}); {res['reference']} {res['returns']['reference']:.3f}, the per-type rule (reads ρ) "
             f"{res['returns']['typed']:.3f}"
             + ("" if "skipped" in sw else f", the type switch (threshold {sw['threshold']:g}) {sw['return']:.3f}"),
             "", "| value of adaptation | " + " | ".join(labels) + " |", "|---|" + "---:|" * len(labels),
             "| per-type rule − reference | " + " | ".join(cell(res["value"][lb]) for lb in labels) + " |"]
    if "skipped" not in sw:
        lines.append("| the type switch's share | " + " | ".join(share_cell(sw["share"][lb], lb) for lb in labels)
                     + " |")
    lines += ["", "| policy | return | share (all users) | − the switch: all | " + " | ".join(labels[1:]) + " |",
              "|---|---:|---:|---:|" + "---:|" * (len(labels) - 1)]
    for name, row in res["per_run"].items():
        pms = row.get("policy_minus_switch")
        lines.append(f"| {name} | {row['return']:.3f} | {share_cell(row['share']['all'], 'all')} | "
                     + (" | ".join(cell(pms[lb]) for lb in labels) if pms else " | ".join("—" for _ in labels))
                     + " |")
    over = res["over_runs"]
    lines += ["", "| over the runs | " + " | ".join(labels) + " |", "|---|" + "---:|" * len(labels),
              "| share of the value of adaptation (t-interval across runs) | "
              + " | ".join(share_cell(over["share"][lb], lb) for lb in labels) + " |",
              "| policy − reference (seeds and sessions) | "
              + " | ".join(cell(over["policy_minus_reference"][lb]) for lb in labels) + " |"]
    if "policy_minus_against" in over:
        lines.append("| policy − the `--against` policy of its seed (seeds and sessions) | "
                     + " | ".join(cell(over["policy_minus_against"][lb]) for lb in labels) + " |")
    if "policy_minus_switch" in over:
        lines.append("| **policy − the type switch** (seeds and sessions) | "
                     + " | ".join(cell(over["policy_minus_switch"][lb]) for lb in labels) + " |")
    else:
        lines += ["", f"The type switch: not played ({sw['skipped']})."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Print the table and the JSON."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("report", help="an evaluate.py report folder (with returns.npz), on held-out users")
    ap.add_argument("--ranker", required=True, action="append",
                    help="the policy's name in the report, e.g. run:runs/x; repeated (with --common-reference), "
                         "several policies of one report against the same references, and over them")
    ap.add_argument("--against", action="append", default=[],
                    help="with several --ranker: a policy of another recipe in the report, one per --ranker in the "
                         "same order (the same training seed): the policies − them, paired, over seeds and sessions")
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
    rankers = list(dict.fromkeys(args.ranker))
    if len(rankers) > 1 and not args.common_reference:
        ap.error("several --ranker read together need --common-reference (one reference for all of them)")
    if args.against and len(rankers) < 2:
        ap.error("--against pairs several --ranker run by run")
    run = Path(args.run) if args.run else None
    if len(rankers) > 1:
        return print_analysis(ap, lambda: analyse_runs(Path(args.report), rankers, run, args.tune_seed,
                                                       args.tune_episodes, edges, args.batch, args.bootstrap,
                                                       args.against), markdown_runs)
    return print_analysis(ap, lambda: analyse(Path(args.report), rankers[0], run, args.reference, args.tune_seed,
                                              args.tune_episodes, edges, args.batch, args.bootstrap,
                                              common=args.common_reference), markdown)


if __name__ == "__main__":
    main()
