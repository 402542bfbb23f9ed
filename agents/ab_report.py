"""``python -m agents.ab_report --logs DIR``: compare the A/B arms of a serving log.

Per arm: sessions, requests, CTR, return per session, precision / recall / F1@K (``agents.evaluation``'s
definitions: the session's clicked or purchased items are the relevant set), each with a bootstrap 95 % interval
over sessions; and each arm's difference from the reference arm (default the first) with a bootstrap interval
(arms hold different users, so the difference is unpaired: independent resamples of each arm's sessions) and
Welch's t-test. A session is a (user pseudonym, session number) of the log.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import sparse, stats

from agents.evaluation import precision_recall_f1
from agents.report import percentile_ci
from agents.serving.ablog import RewardWeights, read_ab_logs
from configs.fileio import atomic_write_bytes

METRICS = ("return", "ctr", "precision", "recall", "f1")


def session_table(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per (arm, user, session): return, requests, clicks, ctr, precision, recall, f1."""
    key = ["arm", "user", "session"]
    g = frame.groupby(key, sort=False)
    out = g.agg(ret=("reward", "sum"), length=("reward", "size"),
                clicks=("click_rank", lambda x: float((x >= 0).sum()))).reset_index()
    sid = frame.groupby(key, sort=False).ngroup().to_numpy()
    k = len(frame["slate"].iloc[0])
    m = int(max(frame["candidates"].map(max).max(), 0)) + 1
    rows = np.repeat(sid, frame["slate"].map(len).to_numpy())
    cols = np.concatenate(frame["slate"].to_numpy())
    shown = sparse.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(out), m))
    hit = frame["clicked_item"].to_numpy() >= 0
    rel = sparse.csr_matrix((np.ones(int(hit.sum())), (sid[hit], frame["clicked_item"].to_numpy()[hit])),
                            shape=(len(out), m))
    p, r, f1 = precision_recall_f1(shown, rel, out["length"].to_numpy(), k)
    out["return"] = out["ret"]
    out["ctr"] = out["clicks"] / np.maximum(out["length"], 1)
    out["precision"], out["recall"], out["f1"] = p, r, f1
    return out


def _boot_means(x: np.ndarray, n_boot: int, gen: np.random.Generator) -> np.ndarray:
    idx = gen.integers(0, len(x), (n_boot, len(x)))
    return x[idx].mean(axis=1)


def compare_arms(sessions: pd.DataFrame, reference: str | None = None, n_boot: int = 2000, seed: int = 0
                 ) -> dict[str, Any]:
    """Per-arm means with bootstrap intervals and differences from ``reference`` (module docstring).

    Raises:
        ValueError: An unknown reference or an arm with fewer than 2 sessions.
    """
    arms = list(dict.fromkeys(sessions["arm"]))
    reference = reference or arms[0]
    if reference not in arms:
        raise ValueError(f"unknown reference arm {reference!r}; the log's arms are {arms}")
    gen = np.random.default_rng(seed)
    boots: dict[str, dict[str, np.ndarray]] = {}
    out: dict[str, Any] = {"reference": reference, "arms": {}, "diff": {}}
    for a in arms:
        s = sessions[sessions["arm"] == a]
        if len(s) < 2:
            raise ValueError(f"arm {a!r} has {len(s)} session(s): too few to compare")
        out["arms"][a] = {"sessions": len(s), "requests": int(s["length"].sum())}
        boots[a] = {}
        for mname in METRICS:
            x = s[mname].to_numpy(np.float64)
            boots[a][mname] = _boot_means(x, n_boot, gen)
            out["arms"][a][mname] = {"mean": float(x.mean()), "ci95": list(percentile_ci(boots[a][mname]))}
    for a in arms:
        if a == reference:
            continue
        out["diff"][a] = {}
        for mname in METRICS:
            x = sessions.loc[sessions["arm"] == a, mname].to_numpy(np.float64)
            y = sessions.loc[sessions["arm"] == reference, mname].to_numpy(np.float64)
            out["diff"][a][mname] = {"diff": float(x.mean() - y.mean()),
                                     "ci95": list(percentile_ci(boots[a][mname] - boots[reference][mname])),
                                     "p_value": welch_p_value(x, y)}
    return out


def welch_p_value(x: np.ndarray, y: np.ndarray) -> float | None:
    """Two-sided p-value of Welch's t-test of ``mean(x) = mean(y)`` (``scipy.stats.ttest_ind``, unequal variances).

    Two constant samples make the test degenerate: the p-value is then 1 if they are equal, else 0 (as
    ``agents.report.paired_test`` does for equal paired differences); one constant sample is fine (its variance is
    0), though scipy warns of precision loss computing it, a warning not passed on.

    Args:
        x: float (n,) one arm's per-session values (n >= 2).
        y: float (m,) the reference arm's (m >= 2).

    Returns:
        The p-value, or None where scipy's is not finite.
    """
    if np.ptp(x) == 0 and np.ptp(y) == 0:
        return 1.0 if x[0] == y[0] else 0.0
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Precision loss occurred", category=RuntimeWarning)
        p = float(stats.ttest_ind(x, y, equal_var=False).pvalue)
    return p if np.isfinite(p) else None


def markdown(report: dict[str, Any]) -> str:
    """The comparison as Markdown tables."""
    lines = ["| arm | sessions | requests | " + " | ".join(METRICS) + " |",
             "|---|---|---|" + "---|" * len(METRICS)]
    for a, r in report["arms"].items():
        cells = [f"{r[m]['mean']:.3f} [{r[m]['ci95'][0]:.3f}, {r[m]['ci95'][1]:.3f}]" for m in METRICS]
        lines.append(f"| {a} | {r['sessions']} | {r['requests']} | " + " | ".join(cells) + " |")
    ref = report["reference"]
    lines += ["", f"| arm − {ref} | " + " | ".join(METRICS) + " |", "|---|" + "---|" * len(METRICS)]
    for a, r in report["diff"].items():
        cells = [f"{r[m]['diff']:+.3f} [{r[m]['ci95'][0]:+.3f}, {r[m]['ci95'][1]:+.3f}]" for m in METRICS]
        lines.append(f"| {a} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """CLI (module docstring)."""
    ap = argparse.ArgumentParser(prog="python -m agents.ab_report", description=__doc__.split("\n\n")[0])
    ap.add_argument("--logs", required=True, help="A/B serving log folder (agents.serve --arms ... --ab-log-dir)")
    ap.add_argument("--reference", default=None, help="arm the others are compared with (default: the first)")
    ap.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples")
    ap.add_argument("--reward", default="1,2,0.25", help="reward weights click,purchase,dwell-minute")
    ap.add_argument("--json", default=None, help="also write the report here")
    args = ap.parse_args(argv)
    try:
        w = [float(x) for x in args.reward.split(",")]
        if len(w) != 3:
            raise ValueError(f"--reward must be three numbers click,purchase,dwell, got {args.reward!r}")
        if args.bootstrap < 10:
            raise ValueError(f"--bootstrap must be >= 10, got {args.bootstrap}")
        ab = read_ab_logs(args.logs, RewardWeights(*w))
        report = compare_arms(session_table(ab.frame), args.reference, args.bootstrap)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(markdown(report))
    if args.json:
        atomic_write_bytes(Path(args.json), json.dumps(report, indent=2).encode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
