"""The type gate's threshold of a trained ``adapt`` run, calibrated on training users (issue #13, session 56).

Each ``adapt`` run settles somewhere on a trade between the two user groups (BENCHMARKS "Session 51" to "Session
56"): what it gains on the CF-leaning users it may give up on the content-leaning ones. A run with a type head in its
α gate (``train.policy.type_head_weight`` with ``type_gate_lower_only``, as ``configs/quality-adapt.yaml``) lets the
head's reading reach the gate through one threshold: the gate reads ``min(logit + margin, 0)`` (margin 0 as
trained), so a larger margin reads fewer users as CF-leaning and ``∞`` leaves the gate blind to the type. This bench
moves that margin after training, the weights untouched, and asks whether a run's own best point on training users
is better on held-out users:

1. every margin of the grid plays the same training users' sessions (the references' tuning sessions of the run's
   seed, ``agents.tuning.TUNE_SEED``), and the trained margin 0 with the best three others is validated on five times
   as many fresh training sessions, as the hand-written references are searched (``agents.tuning.search_family``);
2. the picked margin plays the run's own held-out sessions (``report/returns.npz``: the policy at margin 0 must
   replay the stored returns first), paired with the run as trained, for all users and per hidden user type.

With several runs the table pools the paired differences over seeds *and* sessions (the runs must share their
held-out sessions, as a protocol's do) and, where a run's report holds the common reference's value of adaptation
(``bench.quality_protocol --adaptation-reference``), gives each run's share before and after.

    python -m bench.gate_calibration runs/protocol56/p56-adapt-s14 runs/protocol56/p56-adapt-s15 --json out.json

``--scales`` screens the gate's other knob instead, its weight on the type logit (``type_gate``, learned from
``type_gate_init``): each run's trained weight multiplied by each scale, played on training users' sessions of
``--session-seed`` (777 by default: no reference is tuned on it) and paired with the run as trained, for all users and
per hidden type. A screen on training users, not a calibration: nothing is picked and no held-out session is played
(session 65):

    python -m bench.gate_calibration runs/p61-adapt-cap-s17 runs/p61-adapt-cap-s18 --scales 1.5,2,3

Prints a Markdown table; with ``--json`` also writes the figures (atomically).
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from agents.evaluation import EpisodePlan, episode_plan, run_episodes
from agents.policies import SlatePolicy
from agents.ppo_ranker import PPORanker, load_policy, load_run_config
from agents.report import Bootstrap
from agents.tuning import TUNE_SEED, VALIDATE_TOP, VALIDATION_FACTOR, VALIDATION_SEED_OFFSET, validation_candidates
from bench.eval_blocks import report_returns
from bench.quality_protocol import RHO_EDGE, adaptation_share_file, seeds_and_sessions_interval
from bench.type_switch import _diff
from configs.loader import atomic_write_text

#: The margins searched (0: the run as trained; ``inf``: the gate blind to the type head).
MARGINS: tuple[float, ...] = (-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0, math.inf)
#: Held-out sessions the policy at margin 0 must replay exactly before its other figures are trusted.
REPLAY_SESSIONS = 200
#: The common reference of the ``adapt`` bar (tune seed, sessions per point): ``bench.quality_protocol
#: --adaptation-reference 11`` keeps each run's share against it in its report.
COMMON_REFERENCE: tuple[int, int] = (11, 4000)
GROUPS = ("CF-leaning (rho<0.5)", "content-leaning (rho>=0.5)")


def margin_label(m: float) -> str:
    """``"off"`` for ``inf`` (JSON has no infinity), else the number as text."""
    return "off" if math.isinf(m) else f"{m:g}"


def gated_policy(run: Path, n_items: int) -> SlatePolicy:
    """The run's policy, checked to have the lower-only type gate whose margin this bench moves.

    Raises:
        ValueError: A policy without a type head in its gate, or one that reads the type on both sides.
    """
    policy = load_policy(run, device="cpu", n_items=n_items)
    if policy.type_gate is None or not policy.type_gate_lower_only:
        raise ValueError(f"{run}'s policy has no lower-only type gate (train.policy.type_head_weight > 0 with "
                         "type_gate_lower_only: true, as configs/quality-adapt.yaml): there is no margin to move")
    return policy


def _returns_at(core: Any, ranker: PPORanker, plan: EpisodePlan, margin: float) -> np.ndarray:
    ranker.policy.type_gate_margin = float(margin)
    return run_episodes(core, ranker, plan).ret


def calibrate(run: Path, episodes: int = 4000, margins: Sequence[float] = MARGINS, batch: int = 500,
              bootstrap: int = 2000, report: Path | None = None, name: str = "ppo",
              common: tuple[int, int] = COMMON_REFERENCE) -> dict[str, Any]:
    """Pick ``run``'s gate margin on training users and pair it with the run as trained on its held-out sessions.

    Args:
        run: A finished run directory with ``report/returns.npz`` (a protocol's run).
        episodes: Training sessions per margin (the validation plays ``VALIDATION_FACTOR`` times as many).
        margins: The grid; 0 (the run as trained) is always on it.
        batch: Users simulated at once.
        bootstrap: Resamples of the per-run intervals.
        report: The ``evaluate.py`` report holding the run's held-out returns (``None``: the run's ``report/``).
        name: The run's name in that report (``ppo`` in a run's own report, ``run:DIR`` in ``evaluate.py``'s).
        common: The common reference ``(tune seed, sessions per point)`` whose share the report may hold.

    Returns:
        ``{"run", "seed", "train": {label: mean}, "validation": {label: mean}, "picked", "heldout": {"sessions",
        "diff", "diff_by_group"}, "share_before", "share_after"}`` (shares ``None`` without the common reference's
        file); the per-session differences (E,), the hidden type masks (E,) and the session keys (E,) are returned
        under ``"_diff"``, ``"_cf"`` and ``"_keys"`` for pooling.

    Raises:
        ValueError: A run without the gate, a margin that is nan or -inf, or a policy that does not replay its stored
            returns.
        FileNotFoundError: A run without ``report/returns.npz``.
    """
    from envs.factory import make_core
    from envs.presets import load_world

    run = Path(run)
    grid = sorted({float(m) for m in margins} | {0.0})
    if any(math.isnan(m) or m == -math.inf for m in grid):
        raise ValueError(f"margins must be numbers or +inf, got {list(margins)}")
    cfg = load_run_config(run)
    world = load_world(cfg.env, cfg.encoder, progress=False)
    k = cfg.env.slate_size
    seed = int(cfg.train.seed) + TUNE_SEED
    n_train = world.populations["train"].size
    core = make_core(cfg.env, cfg.env.preset, None, world, "train", min(batch, episodes))
    ranker = PPORanker(gated_policy(run, core.M), k)
    plan = episode_plan(episodes, [seed], n_train)
    evaluated = [({"margin": m}, float(_returns_at(core, ranker, plan, m).mean())) for m in grid]
    candidates = validation_candidates({"margin": 0.0}, evaluated, VALIDATE_TOP)
    valid_plan = episode_plan(VALIDATION_FACTOR * episodes, [seed + VALIDATION_SEED_OFFSET], n_train)
    valid = [float(_returns_at(core, ranker, valid_plan, p["margin"]).mean()) for p in candidates]
    picked = float(candidates[int(np.argmax(valid))]["margin"])  # the first on ties: margin 0

    report = run / "report" if report is None else Path(report)
    heldout, stored = report_returns(report, (name,))
    trained = stored[name]
    hcore = make_core(cfg.env, cfg.env.preset, None, world, "heldout", min(batch, len(heldout)))
    m = min(REPLAY_SESSIONS, len(heldout))
    replay = _returns_at(hcore, ranker, EpisodePlan(heldout.keys[:m], heldout.users[:m], heldout.seeds[:m]), 0.0)
    if not np.allclose(replay, trained[:m], rtol=1e-9, atol=1e-9):
        raise ValueError(f"{run}'s policy does not replay its stored held-out returns (largest difference "
                         f"{float(np.abs(replay - trained[:m]).max()):.3g}): is this its report?")
    after = trained if picked == 0.0 else _returns_at(hcore, ranker, heldout, picked)
    diff = after - trained  # (E,)
    boot = Bootstrap(len(diff), bootstrap, 0)
    cf = world.populations["heldout"].rho[heldout.users] < RHO_EDGE  # (E,)

    def cell(sel: np.ndarray) -> dict[str, Any]:
        return _diff(after, trained, boot, sel)

    share_before = share_after = None
    shares = report / adaptation_share_file(common)
    if shares.is_file():
        res = json.loads(shares.read_text())["all"]
        value = float(res["value"]["mean"])
        share_before = float(res["share"]["mean"])
        share_after = share_before + float(diff.mean()) / value
    return {"run": str(run), "seed": int(cfg.train.seed),
            "train": {margin_label(p["margin"]): v for p, v in evaluated},
            "validation": {margin_label(p["margin"]): v for p, v in zip(candidates, valid, strict=True)},
            "picked": margin_label(picked),
            "heldout": {"sessions": len(diff), "diff": cell(np.ones(len(diff), dtype=bool)),
                        "diff_by_group": {GROUPS[0]: cell(cf), GROUPS[1]: cell(~cf)}},
            "share_before": share_before, "share_after": share_after, "_diff": diff, "_cf": cf,
            "_keys": heldout.keys}


#: Training users' session seed of the scale screen: none of the references' tuning seeds (``TUNE_SEED`` + a run's
#: seed, and its validation offset) reaches it for the seeds the protocols use.
SCREEN_SEED = 777


def scale_screen(run: Path, scales: Sequence[float], episodes: int = 4000, seed: int = SCREEN_SEED,
                 batch: int = 500) -> dict[str, Any]:
    """``run``'s policy with its type gate's weight multiplied by each of ``scales`` after training, on training users.

    Args:
        run: A finished run directory whose policy has the lower-only type gate.
        scales: Finite multipliers of the trained weight (0: the gate blind to the type; 1, the run as trained, is
            always played).
        episodes: Training users' sessions.
        seed: Their session seed.
        batch: Users simulated at once.

    Returns:
        ``{"run", "weight": the trained weight, "sessions", "seed", "by_scale": {label: {"return", "diff": {"mean",
        "se"}, "diff_by_group": {group: mean}}}}``, each difference paired with the run as trained on the same
        sessions (``None`` for an SE of one session or a group without sessions: JSON has no NaN).

    Raises:
        ValueError: A run without the gate, or a scale that is not a finite number.
    """
    import torch as th

    from envs.factory import make_core
    from envs.presets import load_world

    grid = sorted({float(x) for x in scales} | {1.0})
    if not all(math.isfinite(x) for x in grid):
        raise ValueError(f"scales must be finite numbers, got {list(scales)}")
    run = Path(run)
    cfg = load_run_config(run)
    world = load_world(cfg.env, cfg.encoder, progress=False)
    core = make_core(cfg.env, cfg.env.preset, None, world, "train", min(batch, episodes))
    policy = gated_policy(run, core.M)
    assert policy.type_gate is not None  # gated_policy checked it
    ranker = PPORanker(policy, cfg.env.slate_size)
    plan = episode_plan(episodes, [seed], world.populations["train"].size)
    cf = world.populations["train"].rho[plan.users] < RHO_EDGE  # (E,)
    weight = float(policy.type_gate.detach())
    rets: dict[float, np.ndarray] = {}
    for x in grid:  # the policy is this call's own copy: nothing to put back
        with th.no_grad():
            policy.type_gate.fill_(weight * x)
        rets[x] = run_episodes(core, ranker, plan).ret  # (E,)
    by_scale = {}
    for x in grid:
        d = rets[x] - rets[1.0]  # (E,)
        by_scale[f"{x:g}"] = {"return": float(rets[x].mean()),
                              "diff": {"mean": float(d.mean()),
                                       "se": float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else None},
                              "diff_by_group": {g: float(d[sel].mean()) if sel.any() else None
                                                for g, sel in zip(GROUPS, (cf, ~cf), strict=True)}}
    return {"run": str(run), "weight": weight, "sessions": len(plan), "seed": seed, "by_scale": by_scale}


def screen_markdown(results: list[dict[str, Any]]) -> str:
    """One row per run and scale: the mean return and the paired difference with the run as trained."""
    lines = ["| run | trained weight | × | return | Δ all (SE) | " + " | ".join(f"Δ {g}" for g in GROUPS) + " |",
             "|---|---:|---:|---:|---:|" + "---:|" * len(GROUPS)]
    def num(x: float | None, fmt: str) -> str:
        return "—" if x is None else format(x, fmt)

    for r in results:
        for label, c in r["by_scale"].items():
            lines.append(f"| {Path(r['run']).name} | {r['weight']:.3f} | {label} | {c['return']:.3f} | "
                         f"{c['diff']['mean']:+.3f} ({num(c['diff']['se'], '.3f')}) | "
                         + " | ".join(num(c["diff_by_group"][g], "+.3f") for g in GROUPS) + " |")
    r0 = results[0]
    lines.append(f"\n{r0['sessions']:,} training users' sessions of seed {r0['seed']} per run and scale; Δ: the "
                 "scaled gate − the run as trained on the same sessions (SE over sessions).")
    return "\n".join(lines)


def pool(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The runs' paired differences over seeds *and* sessions, for all users and per group.

    Raises:
        ValueError: Runs evaluated on different held-out sessions.
    """
    if any(not np.array_equal(r["_keys"], results[0]["_keys"]) for r in results):
        raise ValueError("the runs were not evaluated on the same held-out sessions: pool runs of one protocol "
                         "or of protocols that share their sessions")
    diffs, cf = np.stack([r["_diff"] for r in results]), results[0]["_cf"]
    out = {"all": seeds_and_sessions_interval(diffs),
           "by_group": {GROUPS[0]: seeds_and_sessions_interval(diffs[:, cf]),
                        GROUPS[1]: seeds_and_sessions_interval(diffs[:, ~cf])}}
    shares = [(r["share_before"], r["share_after"]) for r in results]
    if all(b is not None for b, _ in shares):
        out["share_before"] = float(np.mean([b for b, _ in shares]))
        out["share_after"] = float(np.mean([a for _, a in shares]))
    return out


def markdown(results: list[dict[str, Any]], pooled: dict[str, Any] | None) -> str:
    """The per-run table (margins on training users, the pick, its held-out difference) and the pooled rows."""
    labels = list(results[0]["train"])
    lines = ["| run | " + " | ".join(f"margin {m}" for m in labels) + " | picked | held-out Δ (all) | "
             + " | ".join(f"Δ {g}" for g in GROUPS) + " | share before → after |",
             "|---|" + "---:|" * len(labels) + "---|---:|" + "---:|" * len(GROUPS) + "---:|"]

    def fmt(d: dict[str, Any]) -> str:
        return f"{d['mean']:+.3f} ({d['ci95'][0]:+.3f} to {d['ci95'][1]:+.3f})"

    for r in results:
        train = " | ".join(f"{r['train'][m]:.3f}" + ("*" if m in r["validation"] else "") for m in labels)
        h = r["heldout"]
        share = ("-" if r["share_before"] is None
                 else f"{100 * r['share_before']:.0f}% → {100 * r['share_after']:.0f}%")
        lines.append(f"| {Path(r['run']).name} | {train} | {r['picked']} | {fmt(h['diff'])} | "
                     + " | ".join(fmt(h["diff_by_group"][g]) for g in GROUPS) + f" | {share} |")
    lines.append("\nTraining sessions' mean return per margin (* validated on five times as many); held-out Δ: the "
                 "picked margin − the run as trained, paired, 95% bootstrap over the run's sessions.")
    if pooled:
        lines.append(f"\nOver the {len(results)} runs, seeds and sessions: all users {fmt(pooled['all'])}; "
                     + "; ".join(f"{g} {fmt(pooled['by_group'][g])}" for g in GROUPS)
                     + ("" if "share_before" not in pooled else
                        f"; mean share {100 * pooled['share_before']:.0f}% → {100 * pooled['share_after']:.0f}%")
                     + ".")
    return "\n".join(lines)


def comma_numbers(text: str) -> list[float]:
    """``--margins`` / ``--scales``: one or more comma-separated numbers (``inf`` allowed, refused later where it
    does not belong), or an ``argparse`` error that shows what was given."""
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        values = []
    if not values:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}")
    return values


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Command line: calibrate each run, print the table, optionally write the JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path, help="finished run directories (a protocol's: report/returns.npz)")
    ap.add_argument("--episodes", type=int, default=4000, help="training sessions per margin (default 4000)")
    ap.add_argument("--margins", type=comma_numbers, default=list(MARGINS),
                    help="comma-separated margins (inf: the gate blind to the type); 0 is always searched")
    ap.add_argument("--batch", type=int, default=500, help="users simulated at once")
    ap.add_argument("--adaptation-reference", type=int, default=COMMON_REFERENCE[0], metavar="SEED",
                    help="the common reference's tune seed whose shares the runs' reports hold (default 11)")
    ap.add_argument("--adaptation-tune-episodes", type=int, default=COMMON_REFERENCE[1],
                    help="its sessions per searched point (default 4000)")
    ap.add_argument("--json", type=Path, default=None, help="write the figures here (atomically)")
    ap.add_argument("--scales", type=comma_numbers, default=None,
                    help="screen the gate's weight instead: comma-separated multipliers of the trained weight, "
                         "played on training users only (1 is always played)")
    ap.add_argument("--session-seed", type=int, default=SCREEN_SEED,
                    help=f"with --scales: the training users' session seed (default {SCREEN_SEED})")
    args = ap.parse_args(argv)
    if args.episodes < 1:
        ap.error(f"--episodes must be >= 1, got {args.episodes}")
    if args.scales is not None:
        try:
            screened = [scale_screen(run, args.scales, args.episodes, args.session_seed, args.batch)
                        for run in args.runs]
        except (ValueError, FileNotFoundError) as e:
            ap.error(str(e))
        print(screen_markdown(screened))
        out_screen = {"scale_screen": screened, "episodes": args.episodes}
        if args.json is not None:
            atomic_write_text(args.json, json.dumps(out_screen, indent=1))
        return out_screen
    results = []
    for run in args.runs:
        try:
            results.append(calibrate(run, args.episodes, args.margins, args.batch,
                                     common=(args.adaptation_reference, args.adaptation_tune_episodes)))
        except (ValueError, FileNotFoundError) as e:
            ap.error(str(e))
        print(f"[gate] {run}: picked {results[-1]['picked']}", flush=True)
    pooled = pool(results) if len(results) > 1 else None
    print(markdown(results, pooled))
    out = {"runs": [{k: v for k, v in r.items() if not k.startswith("_")} for r in results], "pooled": pooled,
           "episodes": args.episodes}
    if args.json is not None:
        atomic_write_text(args.json, json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
