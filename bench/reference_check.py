"""Trained runs against registry references on one training seed's held-out sessions, with that seed's tuning.

``python -m bench.reference_check --preset default --seed 1 --rankers tuned-diverse,tuned-session-diverse --runs
runs/protocol10/p10-default-s1,runs/protocol14/p14-default-s1`` builds the references as ``train.py`` with
``train.seed=1`` does (its cached searches: the same tuning sessions, the same picks), plays them and the runs on
``--episodes`` held-out sessions of evaluation seed ``--seed`` (every ranker meets the same sessions), and prints each
ranker's return, each reference paired with the first one, and each run paired with each reference (95% bootstrap
intervals over the sessions). Session 17 used it to play ``tuned-session-diverse`` against the PPO runs of every
seed. The last printed line is a JSON object.

``--alpha-grid 0,0.1,…,0.9,1`` plays every reference twice: as is and searched with that α axis in place of
:data:`agents.tuning.ALPHA_GRID`, tuned-alpha's curve (where the searches start) included, as ``train.py --set
eval.alpha_grid=[…]`` does (the rest of the search unchanged; printed as ``SPEC [α grid]``, paired with ``SPEC``;
before session 40 the searches started at the default grid's tuned-alpha). Session 39 used it to find that the raw α
grid of the time (0, 0.1, …, 1) was coarse where the tuned rules sit: the CF score's spread is ~15× the cosine's, so
raw α 0.9 and 1.0 put 0.38 and ~0.77 of the standardised weight on the LLM signal, and nothing lay between; since
session 40 the default grid has seven points there.

``--eval-seed E`` plays other held-out sessions than the training seed's (``train.py``'s final table plays evaluation
seeds 0 and 1, so ``--seed 0 --eval-seed 50000`` meets none of them); ``--json PATH`` writes the summary too, and
``--pool A.json B.json …`` reads such summaries (one per training seed, each on its own sessions) and prints, per run
comparison, the mean difference over them with a 95% t-interval across them (seeds and sessions both vary) and how
many are above 0. Session 40 played both default-preset protocols on 3,000 fresh sessions per seed this way.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from agents.evaluation import run_episodes
from agents.registry import alpha_grid_kwargs, make_ranker, parse_spec
from agents.report import Bootstrap, paired_test
from bench.ppo_seeds import t_interval
from bench.term_probe import compare_runs, heldout_setup
from configs.fileio import atomic_write_text
from configs.schema import ConfigError


def protocol_of(run: str) -> str:
    """A run folder without its ``-s<seed>`` suffix: its protocol, in ``bench.quality_protocol``'s naming."""
    return re.sub(r"-s[0-9]+$", "", run)


def pool(paths: list[str]) -> dict[str, Any]:
    """Run comparisons pooled over several checks' JSON summaries (one per training seed, each on its own sessions).

    Args:
        paths: Summaries written by ``--json``.

    Returns:
        ``"<runs> vs <reference>"`` → ``{"mean", "ci95" (t-interval across the checks), "per_run", "above_zero",
        "n"}``, where ``<runs>`` is a run directory without its ``-s<seed>`` suffix (the protocols' naming), so that
        each protocol's runs pool apart from another's played in the same checks.

    Raises:
        ValueError: If a file is not such a summary, or no comparison has two runs.
    """
    diffs: dict[str, list[float]] = {}
    for path in paths:
        try:
            data = json.loads(Path(path).read_text())
            runs = data["runs"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}: not a reference_check summary (--json): {exc}") from exc
        for run, row in runs.items():
            for key, test in row.items():
                if key.startswith("vs "):
                    diffs.setdefault(f"{protocol_of(run)} {key}", []).append(float(test["diff"]))
    out: dict[str, Any] = {}
    for key, d in diffs.items():
        if len(d) < 2:
            continue
        x = np.asarray(d)
        out[key] = {"mean": float(x.mean()), "ci95": t_interval(x), "per_run": d, "above_zero": int((x > 0).sum()),
                    "n": len(d)}
    if not out:
        raise ValueError("--pool: no comparison has runs in two or more summaries")
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the check; print the table and the JSON summary (last line)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default=None,
                    help="preset name or calibrated preset folder (default: the config's env.preset, else default)")
    ap.add_argument("--config", default=None, help="config file (its env and eval settings)")
    ap.add_argument("--seed", type=int, default=0, help="training seed of the tuning, and evaluation seed")
    ap.add_argument("--rankers", default="tuned-diverse,tuned-session-diverse,tuned-pop-diverse",
                    help="comma-separated registry specs (not run:DIR); the first is the others' reference")
    ap.add_argument("--runs", default="", help="comma-separated trained run directories")
    ap.add_argument("--episodes", type=int, default=2000, help="held-out sessions")
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--alpha-grid", default=None,
                    help="comma-separated α values: also play each reference searched with this α axis")
    ap.add_argument("--eval-seed", type=int, default=None,
                    help="evaluation seed of the held-out sessions (default: --seed)")
    ap.add_argument("--json", default=None, help="also write the summary to this file")
    ap.add_argument("--pool", nargs="+", default=None, metavar="JSON",
                    help="pool the run comparisons of these summaries (one per seed) and exit")
    args = ap.parse_args(argv)
    if args.pool is not None:
        try:
            pooled = pool(args.pool)
        except ValueError as exc:
            ap.error(str(exc))
        for key, p in pooled.items():
            print(f"{key}: {p['mean']:+.3f} ({p['ci95'][0]:+.3f} to {p['ci95'][1]:+.3f}) over {p['n']} runs, "
                  f"{p['above_zero']} above 0; per run " + ", ".join(f"{d:+.2f}" for d in p["per_run"]), flush=True)
        print(json.dumps(pooled))
        return pooled
    specs = [r.strip() for r in args.rankers.split(",") if r.strip()]
    runs = [r.strip() for r in args.runs.split(",") if r.strip()]
    if not specs:
        ap.error("--rankers: give at least one registry spec")
    for spec in specs:
        try:
            name, _ = parse_spec(spec)
        except ValueError as exc:
            ap.error(f"--rankers: {exc}")
        if name == "run":
            ap.error(f"--rankers: {spec!r} is a run; pass runs with --runs")
    missing = [r for r in runs if not Path(r).is_dir()]
    if missing:
        ap.error(f"--runs: no such run directory: {', '.join(missing)}")
    if args.episodes < 2 or args.batch < 1:
        ap.error(f"--episodes must be >= 2 and --batch >= 1, got {args.episodes} and {args.batch}")
    alpha_grid: tuple[float, ...] | None = None
    if args.alpha_grid is not None:
        try:
            alpha_grid = tuple(sorted({float(a) for a in args.alpha_grid.split(",") if a.strip()}))
        except ValueError:
            ap.error(f"--alpha-grid: comma-separated numbers in [0, 1], got {args.alpha_grid!r}")
        if not alpha_grid or not all(0.0 <= a <= 1.0 for a in alpha_grid):
            ap.error(f"--alpha-grid: comma-separated numbers in [0, 1], got {args.alpha_grid!r}")
    try:
        cfg, world, core, plan, ctx = heldout_setup(args.config, args.preset, args.seed, args.episodes, args.batch,
                                                    args.eval_seed)
    except ConfigError as exc:
        ap.error(str(exc))
    boot = Bootstrap(len(plan), 1000, args.seed)
    rankers = {spec: make_ranker(spec, ctx) for spec in specs}
    paired_with = {spec: specs[0] for spec in specs[1:]}
    if alpha_grid is not None:
        # as train.py with eval.alpha_grid: tuned-alpha's curve (the searches' start) on that axis too
        fine = dataclasses.replace(ctx, **alpha_grid_kwargs(alpha_grid), _alpha_curve=None, _diverse=None,
                                   _session_diverse=None, _pop_diverse=None)
        for spec in specs:
            rankers[f"{spec} [α grid]"] = make_ranker(spec, fine)
            paired_with[f"{spec} [α grid]"] = spec
    rets = {spec: run_episodes(core, r, plan).ret for spec, r in rankers.items()}
    out: dict[str, Any] = {"preset": cfg.env.preset, "seed": args.seed, "episodes": len(plan),
                           "eval_seed": args.seed if args.eval_seed is None else args.eval_seed,
                           "alpha_grid": None if alpha_grid is None else list(alpha_grid),
                           "rankers": {s: float(r.mean()) for s, r in rets.items()}, "references": {},
                           "picks": {s: {"best": r.search.best, "alpha_axis": list(r.search.axes.get("alpha", []))}
                                     for s, r in rankers.items() if getattr(r, "search", None) is not None}}
    for spec, ranker in rankers.items():
        search = getattr(ranker, "search", None)
        line = f"{spec}: {rets[spec].mean():.3f}" + (f" (pick {search.best})" if search is not None else "")
        if spec in paired_with:
            base = paired_with[spec]
            out["references"][spec] = t = {"against": base, **paired_test(rets[spec], rets[base], boot)}
            line += f"; − {base} {t['diff']:+.3f} ({t['ci95'][0]:+.3f} to {t['ci95'][1]:+.3f})"
        print(line, flush=True)
    out["runs"] = compare_runs(runs, core, world, plan, rets, boot)
    if args.json:
        atomic_write_text(args.json, json.dumps(out, indent=1))
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
