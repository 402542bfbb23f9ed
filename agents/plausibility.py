"""Does a policy stay in the range real users show? Plausibility rows of rankers and flags (issue #13, item 5).

A policy trained against the simulator can reach a high return by exploiting it: sessions far longer than any real
visit, a click on every page, every click a purchase. Each ranker's *plausibility row* puts four figures next to
the range that the real-data calibrated preset (MovieLens) and the default preset's baselines show:

==========================  =====================================================================
``ctr_per_slate``           requests with a click / requests (clicks / slates: at most one click per slate)
``requests_per_session``    mean requests served per session
``purchases_per_click``     purchases / clicks
``dwell_per_click_s``       seconds of dwell / clicks
==========================  =====================================================================

All four are ratios of totals over the evaluated sessions (as ``bench/headroom.py`` prints them), so they are
computed alike from an :class:`~agents.evaluation.EpisodeStats` or from a report of
:func:`~agents.report.summarise` (whose per-session means over the same sessions give the same ratios).

The range lives in ``configs/plausibility.yaml`` (values with the command each comes from) with a relative
tolerance: a figure is flagged when it lies outside ``[lo·(1 − tol), hi·(1 + tol)]``.

For the end of training (``agents/final_report.py``'s ``final_comparison``, after ``write_report(results, out)``)::

    from agents.plausibility import write_plausibility
    write_plausibility(results, out, policies=["ppo"])   # report/plausibility.{json,md}; results["plausibility"]
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from configs.fileio import atomic_write_text
from configs.loader import read_yaml_mapping

#: The figures of a plausibility row, in table order.
FIGURES: tuple[str, ...] = ("ctr_per_slate", "requests_per_session", "purchases_per_click", "dwell_per_click_s")
#: Column label and number format of each figure.
FIGURE_LABELS: dict[str, tuple[str, str]] = {
    "ctr_per_slate": ("CTR per slate", ".3f"),
    "requests_per_session": ("requests / session", ".1f"),
    "purchases_per_click": ("purchases / click", ".3f"),
    "dwell_per_click_s": ("dwell / click (s)", ".0f"),
}
#: The range shipped with recfeed.
DEFAULT_RANGE_FILE = Path(__file__).resolve().parents[1] / "configs" / "plausibility.yaml"
#: Marker of a flagged figure in the Markdown table.
FLAG = "⚠"


# ---- rows ----------------------------------------------------------------------------------------------------


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den > 0 else math.nan


def row_from_totals(clicks: float, purchases: float, dwell_s: float, requests: float,
                    sessions: float) -> dict[str, float]:
    """A plausibility row from totals (or means: the ratios are the same) over a set of sessions.

    Args:
        clicks: Clicks.
        purchases: Purchases.
        dwell_s: Seconds of dwell.
        requests: Requests served (slates shown).
        sessions: Sessions.

    Returns:
        ``{figure: value}`` for :data:`FIGURES` (NaN where the denominator is 0, e.g. per click without clicks).
    """
    return {
        "ctr_per_slate": _ratio(clicks, requests),
        "requests_per_session": _ratio(requests, sessions),
        "purchases_per_click": _ratio(purchases, clicks),
        "dwell_per_click_s": _ratio(dwell_s, clicks),
    }


def row_from_stats(stats: Any) -> dict[str, float]:
    """The plausibility row of one ranker's :class:`~agents.evaluation.EpisodeStats` (per-episode arrays (E,)).

    Args:
        stats: An object with ``clicks``, ``purchases``, ``dwell``, ``length`` arrays of shape (E,).

    Returns:
        ``{figure: value}``.
    """
    return row_from_totals(float(stats.clicks.sum()), float(stats.purchases.sum()), float(stats.dwell.sum()),
                           float(stats.length.sum()), float(len(stats.length)))


def row_from_summary(ranker_row: Mapping[str, Any], name: str = "ranker") -> dict[str, float]:
    """The plausibility row of one ranker in a :func:`~agents.report.summarise` report.

    Args:
        ranker_row: ``results["rankers"][name]``: ``{metric: {"mean": …, "ci95": …}}`` with at least ``clicks``,
            ``purchases``, ``dwell`` and ``length``.
        name: The ranker's name (for the error message).

    Returns:
        ``{figure: value}`` (means per session over the same sessions: their ratios are ratios of totals).

    Raises:
        KeyError: A metric is missing (the message names the ranker and the metric).
    """
    means = {}
    for metric in ("clicks", "purchases", "dwell", "length"):
        try:
            means[metric] = float(ranker_row[metric]["mean"])
        except (KeyError, TypeError) as exc:
            raise KeyError(f"ranker {name!r}: the report has no mean of {metric!r} (needed for plausibility)") from exc
    return row_from_totals(means["clicks"], means["purchases"], means["dwell"], means["length"], 1.0)


# ---- the range -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bound:
    """The plausible range of one figure.

    Attributes:
        lo: Lowest value the reference rankers show.
        hi: Highest value they show.
        sources: Where the two ends come from (free text).
    """

    lo: float
    hi: float
    sources: tuple[str, ...] = ()


@dataclass(frozen=True)
class PlausibleRange:
    """The range of every figure and the tolerance around it.

    Attributes:
        bounds: ``{figure: Bound}`` for :data:`FIGURES`.
        tolerance: Relative slack: a value is in range when ``lo·(1 − tolerance) <= value <= hi·(1 + tolerance)``.
        source: Where the range was read from.
        notes: Free text kept with the range (commands, machine).
    """

    bounds: dict[str, Bound]
    tolerance: float
    source: str = ""
    notes: tuple[str, ...] = field(default_factory=tuple)

    def limits(self, figure: str) -> tuple[float, float]:
        """``(low, high)`` accepted for ``figure``, tolerance included."""
        b = self.bounds[figure]
        return b.lo * (1.0 - self.tolerance), b.hi * (1.0 + self.tolerance)

    def check(self, row: Mapping[str, float | None]) -> dict[str, dict[str, Any]]:
        """Check one row.

        Args:
            row: ``{figure: value}`` (all of :data:`FIGURES`; a value may be NaN or None: undefined).

        Returns:
            ``{figure: {"value", "low", "high", "ok"}}``; an undefined value (per click without clicks) is not ok.
        """
        out = {}
        for fig in FIGURES:
            lo, hi = self.limits(fig)
            v = row[fig]
            ok = v is not None and math.isfinite(v) and lo <= v <= hi
            out[fig] = {"value": v, "low": lo, "high": hi, "ok": bool(ok)}
        return out

    def flags(self, row: Mapping[str, float | None]) -> list[str]:
        """The figures of ``row`` outside the range (tolerance included), in :data:`FIGURES` order."""
        return [fig for fig, c in self.check(row).items() if not c["ok"]]


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{where}: expected a finite number, got {value!r}")
    return float(value)


def parse_range(data: Mapping[str, Any], source: str = "<mapping>") -> PlausibleRange:
    """Build a :class:`PlausibleRange` from the mapping a plausibility YAML holds.

    Expected keys: ``tolerance`` (a number in [0, 1)), ``figures`` (``{figure: {lo, hi, sources}}`` for every one of
    :data:`FIGURES`), optionally ``notes`` (a list of strings).

    Raises:
        ValueError: Unknown or missing keys, non-numbers, ``lo > hi`` or a negative bound; the message names the
            file and the key.
    """
    if not isinstance(data, Mapping):
        raise ValueError(f"{source}: expected a mapping at top level")
    unknown = set(data) - {"tolerance", "figures", "notes"}
    if unknown:
        raise ValueError(f"{source}: unknown keys {sorted(unknown)} (expected tolerance, figures, notes)")
    if "tolerance" not in data or "figures" not in data:
        raise ValueError(f"{source}: needs 'tolerance' and 'figures'")
    tol = _number(data["tolerance"], f"{source}: tolerance")
    if not 0.0 <= tol < 1.0:
        raise ValueError(f"{source}: tolerance must be in [0, 1), got {tol}")
    figs = data["figures"]
    if not isinstance(figs, Mapping):
        raise ValueError(f"{source}: figures must be a mapping of {list(FIGURES)}")
    unknown = set(figs) - set(FIGURES)
    missing = [f for f in FIGURES if f not in figs]
    if unknown or missing:
        raise ValueError(f"{source}: figures: unknown {sorted(unknown)}, missing {missing} (expected {list(FIGURES)})")
    bounds = {}
    for fig in FIGURES:
        entry = figs[fig]
        where = f"{source}: figures.{fig}"
        if not isinstance(entry, Mapping):
            raise ValueError(f"{where}: expected a mapping with lo, hi, sources")
        extra = set(entry) - {"lo", "hi", "sources"}
        if extra:
            raise ValueError(f"{where}: unknown keys {sorted(extra)} (expected lo, hi, sources)")
        if "lo" not in entry or "hi" not in entry:
            raise ValueError(f"{where}: needs lo and hi")
        lo, hi = _number(entry["lo"], f"{where}.lo"), _number(entry["hi"], f"{where}.hi")
        if lo < 0 or lo > hi:
            raise ValueError(f"{where}: need 0 <= lo <= hi, got lo = {lo}, hi = {hi}")
        sources = entry.get("sources", [])
        if not isinstance(sources, list) or not all(isinstance(s, str) for s in sources):
            raise ValueError(f"{where}.sources: expected a list of strings")
        bounds[fig] = Bound(lo, hi, tuple(sources))
    notes = data.get("notes", [])
    if not isinstance(notes, list) or not all(isinstance(s, str) for s in notes):
        raise ValueError(f"{source}: notes: expected a list of strings")
    return PlausibleRange(bounds, tol, source, tuple(notes))


def load_range(path: str | Path | None = None) -> PlausibleRange:
    """Read a plausibility range (default ``configs/plausibility.yaml``).

    Raises:
        FileNotFoundError: The file is missing.
        ValueError: It is malformed (see :func:`parse_range`).
    """
    p = Path(path) if path is not None else DEFAULT_RANGE_FILE
    if not p.is_file():
        raise FileNotFoundError(f"plausibility range file {p} not found")
    try:
        shown = str(p.resolve().relative_to(DEFAULT_RANGE_FILE.parents[1]))
    except ValueError:
        shown = str(p)
    return parse_range(read_yaml_mapping(p), shown)


# ---- reports -------------------------------------------------------------------------------------------------


def plausibility(results: Mapping[str, Any], policies: Iterable[str] = (), bounds: PlausibleRange | None = None
                 ) -> dict[str, Any]:
    """Plausibility rows of every ranker of a :func:`~agents.report.summarise` report, and their flags.

    Args:
        results: The report (``results["rankers"][name]`` with ``clicks``, ``purchases``, ``dwell``, ``length``).
        policies: Names of the trained policies among the rankers (marked in the table; the rest are baselines).
        bounds: The range (default: :func:`load_range`).

    Returns:
        JSON-ready (no NaN: an undefined figure is None) ``{"rows": {name: {figure: value}}, "flags": {name:
        [figure, …]}, "policies": [...], "policy_flags": {name: [...]} (policies only), "range": {figure: {lo, hi,
        low, high, sources}}, "tolerance": …, "range_source": …}``.

    Raises:
        KeyError: A policy name is not among the rankers, or a ranker lacks a metric.
    """
    rng = bounds or load_range()
    rankers = results["rankers"]
    pols = list(policies)
    for p in pols:
        if p not in rankers:
            raise KeyError(f"policy {p!r} is not among the evaluated rankers {list(rankers)}")
    rows = {name: row_from_summary(row, name) for name, row in rankers.items()}
    flags = {name: rng.flags(row) for name, row in rows.items()}
    rows_json = {name: {f: (v if math.isfinite(v) else None) for f, v in row.items()} for name, row in rows.items()}
    return {
        "rows": rows_json,
        "flags": flags,
        "policies": pols,
        "policy_flags": {p: flags[p] for p in pols},
        "range": {fig: {"lo": b.lo, "hi": b.hi, "low": rng.limits(fig)[0], "high": rng.limits(fig)[1],
                        "sources": list(b.sources)} for fig, b in rng.bounds.items()},
        "tolerance": rng.tolerance,
        "range_source": rng.source,
    }


def _cell(value: float | None, spec: str, flagged: bool) -> str:
    text = "–" if value is None or not math.isfinite(value) else format(value, spec)
    return f"{text} {FLAG}" if flagged else text


def plausibility_markdown(report: Mapping[str, Any]) -> str:
    """The Markdown table of :func:`plausibility`'s report: one row per ranker, the range below, flags marked."""
    header = [FIGURE_LABELS[f][0] for f in FIGURES]
    lines = ["| ranker | " + " | ".join(header) + " | flags |", "|---|" + "---:|" * len(FIGURES) + "---|"]
    pols = set(report.get("policies", []))
    for name, row in report["rows"].items():
        flagged = set(report["flags"][name])
        cells = [_cell(row[f], FIGURE_LABELS[f][1], f in flagged) for f in FIGURES]
        label = f"**{name}**" if name in pols else name
        note = ", ".join(report["flags"][name]) or ("ok" if name in pols else "")
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {note} |")
    rng = report["range"]
    for label, lo, hi in (("plausible range", "lo", "hi"), ("flagged outside", "low", "high")):
        lines.append(f"| *{label}* | " + " | ".join(
            f"{format(rng[f][lo], FIGURE_LABELS[f][1])}–{format(rng[f][hi], FIGURE_LABELS[f][1])}" for f in FIGURES)
            + " | |")
    tol = report["tolerance"]
    lines += ["", f"Ratios of totals over the evaluated sessions. {FLAG}: outside the plausible range widened by "
              f"±{tol:.0%} (lo·(1 − {tol:g}) to hi·(1 + {tol:g})); the range is what the real-data calibrated "
              f"preset (MovieLens) and the default preset's baselines show ({report['range_source']})."]
    if pols:
        bad = {p: f for p, f in report["policy_flags"].items() if f}
        lines.append("Trained policies (bold): " + ("; ".join(f"{p} outside on {', '.join(f)}" for p, f in bad.items())
                                                    if bad else "every figure in range") + ".")
    return "\n".join(lines) + "\n"


def write_plausibility(results: dict[str, Any], out_dir: str | Path, policies: Sequence[str] = (),
                       bounds: PlausibleRange | None = None) -> dict[str, Any]:
    """Add the plausibility report to ``results`` (key ``"plausibility"``) and write it next to the results.

    Writes ``plausibility.json`` and ``plausibility.md`` into ``out_dir`` atomically.

    Args:
        results: A :func:`~agents.report.summarise` report (updated in place).
        out_dir: The report folder (e.g. ``RUN_DIR/report``).
        policies: Names of the trained policies among the rankers.
        bounds: The range (default: ``configs/plausibility.yaml``).

    Returns:
        The plausibility report (also ``results["plausibility"]``), with ``"paths"`` of the two files.
    """
    report = plausibility(results, policies, bounds)
    out = Path(out_dir)
    paths = {"json": out / "plausibility.json", "markdown": out / "plausibility.md"}
    atomic_write_text(paths["json"], json.dumps(report, indent=2, allow_nan=False) + "\n")
    atomic_write_text(paths["markdown"], plausibility_markdown(report))
    results["plausibility"] = report
    return {**report, "paths": {k: str(v) for k, v in paths.items()}}
