"""How exactly must a ranker know each user's taste to gain from it? One figure from ``bench.term_probe`` files.

``bench.term_probe --retune --terms taste,noisy-taste:σ,…,observed-taste --runs RUN --json F`` scores, on one
seed's held-out sessions, the best hand-written ranker (tuned-diverse's family, searched on the training users) given
the user's true taste through an error of standard deviation σ (``noisy-taste:σ``; σ = 0 is ``taste``), given the
observation's best linear reading of the taste (``observed-taste``), and the trained policies of ``--runs``.
``python -m bench.information_curve F [F …] --bar 1.05 --out docs/img/ml_information.png`` puts them on one figure:

- x: the error σ, in units of the taste's spread over a request's candidates; the top axis gives the same point as
  R², the squared correlation of what the ranker reads with the true taste (``1 / (1 + σ²)``);
- y: the return as a multiple of tuned-diverse's on the same sessions, with the paired 95% interval over sessions;
  a line per seed (files of one seed's sessions may split the terms between them); a low-rank error
  (``noisy-taste:σ:r``) as separate squares;
- ``observed-taste`` at the σ with its fit's R² (``σ = sqrt(1/R² − 1)``), the long-term states (``history-taste``,
  ``history-pool:d``) at the σ of that fit's R² with the state as one more column, each trained recipe (a protocol's
  runs, ``NAME-sSEED``) as a line at its mean over seeds in a band from the mean of their per-seed intervals, and the
  bar (``--bar``) as a dashed line.

It answers the question the MovieLens bar turns on: how much of the taste's worth survives an error of the size the
observation leaves. The table printed beside it gives every point. The PNG is written atomically.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from configs.fileio import atomic_write_bytes, figure_png

TASTE, NOISY, OBSERVED = "taste", "noisy-taste:", "observed-taste"
#: Long-term states (``history-taste``, ``history-pool:d``): placed at the R² of the observation's reading with them.
HISTORY = "history-"
#: Marker and colour of each kind of point read from the observation (and a state), and its legend text.
READ_MARKERS = {OBSERVED: ("D", "tab:green", "hand-written, told the observation's best reading of the taste"),
                "history-taste": ("^", "tab:cyan", "hand-written, also told the whole logged history's taste"),
                "history-pool": ("v", "tab:olive", "hand-written, also told the logged items pooled (history-pool)")}
RUN_COLORS = ("tab:blue", "tab:purple", "tab:brown", "tab:pink")  # one per trained recipe


@dataclass(frozen=True)
class Point:
    """One ranker's figure on one file's sessions, as a multiple of tuned-diverse's return there."""

    source: str  # whose sessions: "seed S" (the file's name for a summary without its seed)
    name: str  # the term, or the run's folder name without its "-sSEED" (the protocols' runs of one recipe)
    sigma: float | None  # the error's SD (None: a trained policy)
    ratio: float
    ci: tuple[float, float]  # the paired 95% interval, as ratios
    rank: int | None = None  # a low-rank error's rank (``noisy-taste:σ:r``); None: independent per pair


def _ratio_point(source: str, name: str, sigma: float | None, row: dict[str, Any], ref: float,
                 test: dict[str, Any]) -> Point:
    lo, hi = test["ci95"]
    rank = row.get("rank")
    return Point(source, name, sigma, float(row["return"]) / ref, (1.0 + float(lo) / ref, 1.0 + float(hi) / ref),
                 None if rank is None else int(rank))


def read_points(path: str) -> list[Point]:
    """Every point of one ``bench.term_probe --json`` file.

    Raises:
        ValueError: Not a probe summary (no tuned-diverse return or no terms), or a term without the fields it needs
            (a plain probe's rows).
    """
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: cannot read a bench.term_probe summary ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("tuned_diverse_return"), (int, float)) \
            or not isinstance(data.get("terms"), dict):
        raise ValueError(f"{path}: not a bench.term_probe summary (no tuned_diverse_return or terms)")
    ref = float(data["tuned_diverse_return"])
    source = f"seed {data['seed']}" if "seed" in data else Path(path).name
    points: list[Point] = []
    for name, row in data["terms"].items():
        if not isinstance(row, dict) or "return" not in row or "ci95" not in row:
            raise ValueError(f"{path}: term {name!r} has no return and interval: was it run with --retune?")
        try:
            if name == TASTE:
                sigma: float | None = 0.0
            elif name.startswith(NOISY):
                sigma = float(row["sigma"])
            elif name == OBSERVED or name.startswith(HISTORY):
                sigma = math.sqrt(max(1.0 / float(row["r2"]) - 1.0, 0.0))
            else:
                continue
            points.append(_ratio_point(source, name, sigma, row, ref, row))
        except (KeyError, TypeError, ValueError, ZeroDivisionError) as exc:
            raise ValueError(f"{path}: term {name!r} lacks a field the figure reads ({exc!r})") from None
    for run, row in (data.get("runs") or {}).items():
        recipe = re.sub(r"-s\d+$", "", Path(run).name)
        try:
            points.append(_ratio_point(source, recipe, None, row, ref, row["vs tuned-diverse"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}: run {run!r} lacks a field the figure reads ({exc!r})") from None
    return points


def curve(points: list[Point], source: str | None = None) -> list[tuple[float, float]]:
    """(σ, ratio) of the taste and (independent-error) noisy-taste points of ``source`` (one seed's sessions;
    ``None``: any), by σ."""
    return sorted((p.sigma, p.ratio) for p in points
                  if p.sigma is not None and not _read(p.name) and p.rank is None and source in (None, p.source))


def _read(name: str) -> tuple[str, str, str] | None:
    """Marker, colour and legend text of a point read from the observation (``None``: a told-taste point)."""
    return READ_MARKERS.get(name.split(":")[0]) if name == OBSERVED or name.startswith(HISTORY) else None


def plot(points: list[Point], bar: float | None, out: Path, labels: dict[str, str] | None = None) -> None:
    """Draw the figure (see the module's text) and write it to ``out`` atomically; ``labels``: recipe → legend text."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sources = sorted({p.source for p in points})
    fig, ax = plt.subplots(figsize=(8.0, 4.6))
    for i, src in enumerate(sources):
        dx = 0.006 * (i - (len(sources) - 1) / 2)
        line = curve(points, src)
        if line:
            xs, ys = zip(*line, strict=True)
            ax.plot([x + dx for x in xs], ys, "-", color="tab:orange", lw=1.2, alpha=0.4 + 0.6 / (i + 1),
                    label="hand-written, told the taste with error σ (a line per seed)" if i == 0 else None)
        for p in (q for q in points if q.source == src and q.sigma is not None):
            read = _read(p.name)
            fmt, color = read[:2] if read else ("s", "tab:red") if p.rank else ("o", "tab:orange")
            ax.errorbar(p.sigma + dx, p.ratio, yerr=[[p.ratio - p.ci[0]], [p.ci[1] - p.ratio]], fmt=fmt, color=color,
                        ms=5, capsize=2, lw=0.8)
    runs = sorted({p.name for p in points if p.sigma is None})
    for j, run in enumerate(runs):
        rs = [p for p in points if p.sigma is None and p.name == run]
        mean = sum(p.ratio for p in rs) / len(rs)
        lo, hi = (sum(p.ci[k] for p in rs) / len(rs) for k in (0, 1))
        color = RUN_COLORS[j % len(RUN_COLORS)]
        ax.axhspan(lo, hi, color=color, alpha=0.12)
        ax.axhline(mean, color=color, lw=1.2, label=f"{(labels or {}).get(run, run)} (mean over seeds)")
    ranks = sorted({p.rank for p in points if p.rank})
    if ranks:
        ax.plot([], [], "s", color="tab:red",
                label=f"hand-written, told the taste with a low-rank error (rank {', '.join(map(str, ranks))})")
    for fmt, color, text in dict.fromkeys(r for p in points if (r := _read(p.name))):
        ax.plot([], [], fmt, color=color, label=text)
    if bar is not None:
        ax.axhline(bar, color="k", ls="--", lw=1.0, label=f"the bar: {bar:g} × tuned-diverse")
    ax.axhline(1.0, color="0.6", lw=0.8)
    ax.set_xlabel("error σ in what the ranker reads of the user's taste (units of its spread over a request)")
    ax.set_ylabel("return / tuned-diverse (same sessions)")
    top = ax.secondary_xaxis("top", functions=(lambda s: 1.0 / (1.0 + s * s),
                                               lambda r: (1.0 / r.clip(1e-9, None) - 1.0).clip(0, None) ** 0.5))
    top.set_xticks([1.0, 0.98, 0.92, 0.8, 0.5])
    top.set_xlabel("R² with the true taste")
    lo, hi = ax.get_ylim()
    ax.set_ylim(lo, hi + 0.4 * (hi - lo))  # room above the points for the legend
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    png = figure_png(fig)
    plt.close(fig)
    atomic_write_bytes(out, png)


def main(argv: list[str] | None = None) -> list[Point]:
    """Read the files, print the table, write the figure; return every point."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+", help="bench.term_probe --retune --json files (one per seed)")
    ap.add_argument("--bar", type=float, default=None, help="the quality bar, as a multiple of tuned-diverse")
    ap.add_argument("--out", type=Path, required=True, help="the PNG to write")
    ap.add_argument("--label", action="append", default=[], metavar="RECIPE=TEXT",
                    help="legend text of a trained recipe (a run's folder name without -sSEED); repeatable")
    args = ap.parse_args(argv)
    labels = dict(item.split("=", 1) for item in args.label if "=" in item)
    if len(labels) != len(args.label):
        ap.error(f"--label: write RECIPE=TEXT, got {[x for x in args.label if '=' not in x]}")
    if args.bar is not None and not (math.isfinite(args.bar) and args.bar > 0):
        ap.error(f"--bar must be a positive number, got {args.bar}")
    if not args.out.parent.is_dir():
        ap.error(f"--out: folder {str(args.out.parent)!r} does not exist")
    try:
        read = {(p.source, p.name): p for f in args.files for p in read_points(f)}  # a later file's repeat wins
    except ValueError as exc:
        ap.error(str(exc))
    points = list(read.values())
    if not curve(points):
        ap.error(f"no taste or noisy-taste term in {', '.join(args.files)}: nothing to draw the curve from")
    print("| what the ranker reads | σ | R² | × tuned-diverse (95% CI), per seed |")
    print("|---|---:|---:|---|")
    for name in dict.fromkeys(p.name for p in sorted(points, key=lambda p: (p.sigma is None, p.sigma or 0.0))):
        rs = [p for p in points if p.name == name]
        sigma = rs[0].sigma
        cells = "; ".join(f"{p.source}: {p.ratio:.3f} ({p.ci[0]:.3f}–{p.ci[1]:.3f})" for p in rs)
        r2 = "" if sigma is None else f"{1.0 / (1.0 + sigma * sigma):.3f}"
        print(f"| {name} | {'' if sigma is None else f'{sigma:.2f}'} | {r2} | {cells} |")
    unknown = sorted(set(labels) - {p.name for p in points if p.sigma is None})
    if unknown:
        ap.error(f"--label: no trained recipe {', '.join(unknown)} in the files")
    plot(points, args.bar, args.out, labels)
    print(f"wrote {args.out}")
    return points


if __name__ == "__main__":
    main()
