"""PPO's margin over a reference against the steps it trained: runs of several budgets on the same held-out sessions.

``python -m bench.budget_curve runs/s46/budget-s0.json … runs/s46/budget-s4.json --out docs/img/budget_curve.png``
reads the summaries that ``bench.reference_check --json`` writes (one or more per training seed, that seed's runs of
every budget played on its own held-out sessions against the same references), groups the runs by protocol (the run
folder without its ``-s<seed>`` suffix, as ``reference_check --pool`` does), reads each run's steps from its
``summary.json``, and prints per protocol, in order of steps, the mean paired difference with each reference, its
95% t-interval across the seeds, and each seed's value. The PNG (written atomically) has one panel per reference: each
seed's runs joined across budgets, the means with their intervals, steps on a log axis. Session 46 used it to decide
``make train``'s budget (BENCHMARKS.md, "PPO").
"""

from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.ppo_seeds import t_interval
from bench.reference_check import protocol_of
from configs.fileio import atomic_write_bytes, figure_png


@dataclass(frozen=True)
class Budget:
    """One protocol's runs against one reference, over the training seeds.

    Attributes:
        protocol: The runs' folder without the ``-s<seed>`` suffix.
        reference: The reference's registry spec.
        steps: Median steps trained over the runs.
        steps_range: Fewest and most steps of a run.
        mean: Mean paired difference (run − reference) over the seeds.
        ci95: 95% t-interval of that mean across the seeds.
        per_seed: Training seed → that seed's paired difference.
    """

    protocol: str
    reference: str
    steps: int
    steps_range: tuple[int, int]
    mean: float
    ci95: tuple[float, float]
    per_seed: dict[int, float]


def _steps(run: str, base: Path) -> int:
    """Steps a run trained, from its ``summary.json`` (relative run folders are read below ``base``)."""
    path = Path(run) if Path(run).is_absolute() else base / run
    summary = path / "summary.json"
    try:
        return int(json.loads(summary.read_text(encoding="utf-8"))["total_timesteps"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{summary}: no finished run's summary with 'total_timesteps' ({exc})") from exc


def load(paths: list[str], base: str | Path = ".") -> list[Budget]:
    """Every (protocol, reference) pair met on two or more seeds, in order of steps, then reference.

    Args:
        paths: ``bench.reference_check --json`` summaries: one or more per training seed, a seed's all on the same
            held-out sessions (``--eval-seed`` and ``--episodes``); a reference two of them play must return the
            same there (the same pick).
        base: Folder the summaries' relative run folders are read from (where ``reference_check`` ran).

    Returns:
        The budgets, fewest steps first.

    Raises:
        ValueError: A file is not such a summary (named); two summaries of one seed name other sessions or
            references, or both hold one run; a run has no summary with its steps; or no pair is met on two seeds.
    """
    diffs: dict[tuple[str, str], dict[int, float]] = {}
    steps: dict[str, list[int]] = {}
    seen: dict[int, tuple[str, tuple[Any, Any], dict[str, float]]] = {}  # seed -> first summary, sessions, returns
    placed: dict[tuple[str, int], str] = {}  # (protocol, seed) -> the summary that holds that run
    for path in paths:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
            seed, runs = int(data["seed"]), dict(data["runs"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}: not a bench.reference_check summary (--json): {exc}") from exc
        sessions = (data.get("eval_seed"), data.get("episodes"))
        references = dict(data.get("rankers") or {})
        first, first_sessions, first_refs = seen.setdefault(seed, (path, sessions, references))
        if sessions != first_sessions or any(first_refs[k] != v for k, v in references.items() if k in first_refs):
            raise ValueError(f"{path}: seed {seed}'s runs met other sessions or references than in {first}; a "
                             "seed's summaries must share --eval-seed and --episodes, and its references' picks")
        for run, row in runs.items():
            protocol = protocol_of(run)
            if placed.setdefault((protocol, seed), path) != path:
                raise ValueError(f"{path}: {run} is in {placed[(protocol, seed)]} too")
            steps.setdefault(protocol, []).append(_steps(run, Path(base)))
            try:
                run_diffs = {key[3:]: float(test["diff"]) for key, test in row.items() if key.startswith("vs ")}
            except (AttributeError, KeyError, TypeError, ValueError) as exc:
                raise ValueError(f"{path}: {run}'s comparisons are not reference_check's ({exc})") from exc
            for reference, diff in run_diffs.items():
                diffs.setdefault((protocol, reference), {})[seed] = diff
    out = []
    for (protocol, reference), per_seed in diffs.items():
        if len(per_seed) < 2:
            continue
        x = np.asarray(list(per_seed.values()))
        lo, hi = t_interval(x)
        out.append(Budget(protocol, reference, int(statistics.median(steps[protocol])),
                          (min(steps[protocol]), max(steps[protocol])), float(x.mean()), (float(lo), float(hi)),
                          dict(sorted(per_seed.items()))))
    if not out:
        raise ValueError("no run is compared with a reference on two or more seeds")
    return sorted(out, key=lambda b: (b.steps, b.reference, b.protocol))


def _millions(steps: int) -> str:
    return f"{steps / 1e6:.1f}M"


def table(budgets: list[Budget]) -> str:
    """A markdown table: one row per protocol and reference, fewest steps first."""
    rows = ["| runs | steps | reference | run − reference (95% t-interval across seeds) | above 0 | per seed |",
            "|---|---|---|---|---:|---|"]
    for b in budgets:
        lo, hi = b.steps_range
        span = _millions(lo) if lo == hi else f"{_millions(lo)}–{_millions(hi)}"
        above = sum(v > 0 for v in b.per_seed.values())
        seeds = ", ".join(f"{seed}: {v:+.2f}" for seed, v in b.per_seed.items())
        rows.append(f"| {b.protocol} | {span} | {b.reference} | {b.mean:+.3f} ({b.ci95[0]:+.3f} to {b.ci95[1]:+.3f})"
                    f" | {above}/{len(b.per_seed)} | {seeds} |")
    return "\n".join(rows)


def figure(budgets: list[Budget]) -> bytes:
    """The PNG: one panel per reference, PPO − reference against steps (log axis)."""
    from matplotlib.figure import Figure

    references = list(dict.fromkeys(b.reference for b in budgets))
    fig = Figure(figsize=(4.6 * len(references), 3.6))
    axes = fig.subplots(1, len(references), squeeze=False, sharey=True)[0]
    for ax, reference in zip(axes, references, strict=True):
        mine = [b for b in budgets if b.reference == reference]
        seeds = sorted({s for b in mine for s in b.per_seed})
        for seed in seeds:
            pts = [(b.steps, b.per_seed[seed]) for b in mine if seed in b.per_seed]
            ax.plot(*zip(*pts, strict=True), color="0.7", lw=0.9, marker=".", ms=4,
                    label="one training seed" if seed == seeds[0] else None)
        x = [b.steps for b in mine]
        y = [b.mean for b in mine]
        err = [[b.mean - b.ci95[0] for b in mine], [b.ci95[1] - b.mean for b in mine]]
        ax.errorbar(x, y, yerr=err, color="tab:blue", marker="o", ms=6, capsize=3, lw=1.6,
                    label="mean, 95% interval across seeds")
        ax.axhline(0.0, color="black", lw=0.8)
        ax.set_xscale("log")
        ticks = [2.0**k * 1e6 for k in range(-6, 12) if min(x) / 1.5 <= 2.0**k * 1e6 <= max(x) * 1.5]
        ax.set_xticks(ticks, [f"{t / 1e6:g}M" for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel("steps trained")
        ax.set_title(f"PPO − {reference}", fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("return per held-out session")
    axes[0].legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return figure_png(fig, dpi=130)


def main(argv: list[str] | None = None) -> list[Budget]:
    """CLI: print the table, write the figure with ``--out``; returns the budgets."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("summaries", nargs="+", help="bench.reference_check --json files, one or more per training seed")
    ap.add_argument("--reference", action="append", default=None,
                    help="keep only this reference (repeatable; default every one the summaries compare with)")
    ap.add_argument("--protocol", action="append", default=None,
                    help="keep only these runs: a run folder without its -s<seed> suffix (repeatable; default all)")
    ap.add_argument("--base", default=".", help="folder the summaries' run folders are relative to")
    ap.add_argument("--out", default=None, help="write the figure (PNG) here")
    args = ap.parse_args(argv)
    try:
        budgets = load(args.summaries, args.base)
    except ValueError as exc:
        ap.error(str(exc))
    for flag, keep, attr in (("--reference", args.reference, "reference"), ("--protocol", args.protocol, "protocol")):
        if keep:
            missing = set(keep) - {getattr(b, attr) for b in budgets}
            if missing:
                ap.error(f"{flag} {', '.join(sorted(missing))}: not in these summaries (on two or more seeds)")
            budgets = [b for b in budgets if getattr(b, attr) in keep]
    print(table(budgets))
    if args.out:
        atomic_write_bytes(args.out, figure(budgets))
        print(f"figure: {args.out}")
    return budgets


if __name__ == "__main__":
    main()
