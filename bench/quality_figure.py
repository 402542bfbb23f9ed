"""Where each quality bar sits between the reference and the ceiling: one figure from the protocols' JSON files.

``python -m bench.quality_figure default=runs/protocol33/p33-default.json adapt=runs/protocol32/p32-adapt.json
ml=runs/protocol33/p33-ml.json --bar default=1.10 --bar ml=1.05 --out docs/img/quality_bars.png`` reads the files
``bench.quality_protocol`` writes and places, per preset, every figure on one scale: 0 is the quality bar's reference
(tuned-diverse), 1 the non-myopic ceiling that reads the simulator's hidden state (tuned-oracle-diverse), both
measured on the same held-out sessions. On it:

- PPO, with its 95% interval over seeds and sessions (the paired difference with tuned-diverse);
- the bar: ``--bar LABEL=RATIO`` (PPO ≥ RATIO × tuned-diverse), or on a protocol run with ``--adaptation`` the
  issue's "60% of the value of adaptation" (tuned-diverse + 0.6 × that value);
- the strongest hand-written rule measured there (``tuned-session-diverse``, else ``session-diverse``) and the myopic
  oracle; figures left of the axis are drawn at its edge with their value.

The same scale puts a bar that needs a small part of a wide gap (the default preset's 1.10×) beside one that needs
nearly all of a narrow one (MovieLens: 1.05× of a ceiling at 1.054×), which is why a learner can meet the one and not
the other. The table printed beside it gives the returns and the ratios. The PNG is written atomically.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from configs.fileio import atomic_write_bytes, figure_png

REFERENCE, CEILING, MYOPIC = "tuned-diverse", "tuned-oracle-diverse", "oracle"
RULES = ("tuned-session-diverse", "session-diverse")  # the strongest hand-written rule, the first one present
SHARE = 0.6  # the adapt bar: PPO captures >= 60% of the value of adaptation
LEFT = -0.3  # the axis' left edge (gap units); figures below it are drawn there with their value
MARKERS: dict[str, dict[str, Any]] = {  # the figure's markers, shared by its points and its legend
    "ppo": {"marker": "o", "color": "tab:blue", "ls": "none", "ms": 8},
    "rule": {"marker": "D", "color": "tab:green", "ls": "none", "ms": 6},
    "myopic": {"marker": "s", "color": "0.55", "ls": "none", "ms": 6},
}


@dataclass(frozen=True)
class Placement:
    """One preset's figures in gap units: (x − tuned-diverse) / (ceiling − tuned-diverse)."""

    label: str
    reference: float  # tuned-diverse's return
    ceiling: float  # tuned-oracle-diverse's return
    ppo: float
    ppo_ci: tuple[float, float]
    bar: float | None
    bar_text: str
    rule: tuple[str, float] | None  # the strongest hand-written rule: its name and position
    myopic: float | None

    def ratio(self, position: float) -> float:
        """The return at ``position`` as a multiple of tuned-diverse's."""
        return (self.reference + position * (self.ceiling - self.reference)) / self.reference


def place(label: str, protocol: dict[str, Any], bar_ratio: float | None) -> Placement:
    """``protocol`` (a ``bench.quality_protocol`` JSON) on the gap scale.

    Args:
        label: The preset's name in the figure.
        protocol: The parsed JSON.
        bar_ratio: The bar as a multiple of tuned-diverse, or ``None`` (the adaptation bar when the protocol measured
            the value of adaptation; no bar otherwise).

    Raises:
        ValueError: The file lacks a figure the placement needs (named), or the ceiling is not above the reference.
    """
    returns = protocol.get("return")
    if not isinstance(returns, dict):
        raise ValueError(f"{label}: not a quality-protocol result (no 'return' table)")
    for name in ("ppo", REFERENCE, CEILING):
        if name not in returns:
            raise ValueError(f"{label}: the protocol has no '{name}' return; re-run it with the current "
                             "bench.quality_protocol")
    ref, top = float(returns[REFERENCE]["mean"]), float(returns[CEILING]["mean"])
    if not top > ref:
        raise ValueError(f"{label}: the ceiling ({top:.3f}) is not above tuned-diverse ({ref:.3f})")
    gap = top - ref

    def pos(x: float) -> float:
        return (x - ref) / gap

    paired = protocol.get("vs_tuned_diverse_seeds_and_sessions") or {}
    diff = paired.get("diff") or protocol["diff_vs_tuned_diverse"]
    lo, hi = (float(v) for v in diff["ci95"])
    bar: float | None = None
    bar_text = "no bar given"
    adaptation = protocol.get("adaptation")
    if bar_ratio is not None:
        bar, bar_text = pos(bar_ratio * ref), f"{bar_ratio:.2f}× tuned-diverse"
    elif isinstance(adaptation, dict) and "value" in adaptation:
        value = float(adaptation["value"]["mean"])
        bar, bar_text = value * SHARE / gap, f"{SHARE:.0%} of the value of adaptation (+{value:.2f})"
    rule = next(((n, pos(float(returns[n]["mean"]))) for n in RULES if n in returns), None)
    myopic = pos(float(returns[MYOPIC]["mean"])) if MYOPIC in returns else None
    return Placement(label, ref, top, pos(float(returns["ppo"]["mean"])), (lo / gap, hi / gap), bar, bar_text, rule,
                     myopic)


def table(placements: list[Placement]) -> str:
    """A markdown table of the placements: returns, ratios to tuned-diverse, positions on the gap scale."""
    lines = ["| preset | tuned-diverse | ceiling (× tuned-diverse) | PPO (×) | PPO's position (95%) "
             "| the bar: position (×) | strongest rule: position |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for p in placements:
        bar = "—" if p.bar is None else f"{p.bar:.2f} ({p.ratio(p.bar):.3f}×; {p.bar_text})"
        rule = "—" if p.rule is None else f"{p.rule[0]} {p.rule[1]:.2f}"
        lines.append(f"| {p.label} | {p.reference:.2f} | {p.ceiling:.2f} ({p.ratio(1.0):.3f}×) | "
                     f"{p.ratio(p.ppo):.3f}× | {p.ppo:.2f} ({p.ppo_ci[0]:.2f} to {p.ppo_ci[1]:.2f}) | {bar} | {rule} |")
    return "\n".join(lines)


def figure(placements: list[Placement]) -> bytes:
    """The PNG: one row per preset on the gap scale (0 tuned-diverse, 1 the hidden-state ceiling)."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    fig = Figure(figsize=(8.5, 1.6 + 0.75 * len(placements)))
    ax = fig.add_subplot()
    for row, p in enumerate(reversed(placements)):
        def clip(x: float, y: float = row, **style: Any) -> None:
            if x >= LEFT:
                ax.plot([x], [y], **style)
            else:  # off the axis: at its edge, with the value
                ax.plot([LEFT], [y], **{**style, "marker": "<"})
                ax.annotate(f"{x:.1f}", (LEFT, y), xytext=(4, 6), textcoords="offset points", fontsize=7)

        ax.plot([0, 1], [row, row], color="0.85", lw=6, solid_capstyle="butt", zorder=0)
        if p.myopic is not None:
            clip(p.myopic, **MARKERS["myopic"])
        if p.rule is not None:
            clip(p.rule[1], **MARKERS["rule"])
        lo, hi = max(p.ppo_ci[0], LEFT), p.ppo_ci[1]
        ax.plot([lo, hi], [row, row], color="tab:blue", lw=2)
        clip(p.ppo, **MARKERS["ppo"])
        if p.bar is not None:
            ax.plot([p.bar, p.bar], [row - 0.3, row + 0.3], color="tab:red", lw=2.5)
        ax.annotate(f"ceiling {p.ratio(1.0):.3f}×", (1, row), xytext=(4, -3), textcoords="offset points", fontsize=7)
    ax.set_yticks(range(len(placements)), [p.label for p in reversed(placements)])
    ax.set_xlim(LEFT - 0.05, 1.2)
    ax.set_ylim(-0.7, len(placements) - 0.3)
    ax.axvline(0, color="0.4", lw=0.8)
    ax.axvline(1, color="0.4", lw=0.8)
    ax.set_xlabel("0 = tuned-diverse (the bar's reference), 1 = the ceiling that reads the hidden state "
                  "(tuned-oracle-diverse)", fontsize=8)
    ax.set_title("Where PPO and each bar sit between the hand-written reference and the hidden-state ceiling",
                 fontsize=9)
    handles = [Line2D([], [], **MARKERS[k]) for k in ("ppo", "rule", "myopic")]
    handles.append(Line2D([], [], color="tab:red", lw=2.5))
    ax.legend(handles, ["PPO (95% over seeds and sessions)", "strongest hand-written rule", "myopic oracle",
                        "the issue's bar"], loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=4, fontsize=7,
              frameon=False)
    fig.tight_layout()
    return figure_png(fig, dpi=130)


def _pairs(items: list[str], what: str, ap: argparse.ArgumentParser) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        label, sep, value = item.partition("=")
        if not sep or not label or not value:
            ap.error(f"{what} must be LABEL=VALUE, got {item!r}")
        if label in out:
            ap.error(f"{what}: the label {label!r} is given twice")
        out[label] = value
    return out


def main(argv: list[str] | None = None) -> list[Placement]:
    """Read the protocols, print the table, write the figure."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("protocols", nargs="+", metavar="LABEL=JSON", help="a quality-protocol result and its label")
    ap.add_argument("--bar", action="append", default=[], metavar="LABEL=RATIO",
                    help="the preset's bar as a multiple of tuned-diverse")
    ap.add_argument("--out", type=Path, required=True, help="the PNG to write")
    args = ap.parse_args(argv)
    files = _pairs(args.protocols, "a protocol", ap)
    bars: dict[str, float] = {}
    for label, text in _pairs(args.bar, "--bar", ap).items():
        if label not in files:
            ap.error(f"--bar {label}=…: no protocol is labelled {label!r}")
        try:
            bars[label] = float(text)
        except ValueError:
            ap.error(f"--bar {label}={text}: not a number")
        if not (math.isfinite(bars[label]) and bars[label] > 0):
            ap.error(f"--bar {label}={text}: must be a positive number")
    placements = []
    for label, path in files.items():
        try:
            protocol = json.loads(Path(path).read_text(encoding="utf-8"))
            placements.append(place(label, protocol, bars.get(label)))
        except OSError as exc:
            ap.error(f"{label}: cannot read {path}: {exc.strerror or exc}")
        except json.JSONDecodeError as exc:
            ap.error(f"{label}: {path} is not JSON ({exc})")
        except (ValueError, KeyError, TypeError) as exc:
            ap.error(f"{label}: {path}: {exc}")
    print(table(placements))
    atomic_write_bytes(args.out, figure(placements))
    print(f"wrote {args.out}")
    return placements


if __name__ == "__main__":
    main()
