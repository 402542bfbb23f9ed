"""Aggregate PPO runs over training seeds against the baselines (the PPO quality bar).

``python -m bench.ppo_seeds runs/quality-s0 runs/quality-s1 ...`` reads each run's ``report/results.json``
(held-out sessions, common random numbers) and prints, per ranker, the mean return over seeds with a 95%
t-interval across seeds (for the baselines, which do not depend on the training seed except tuned-alpha's α,
the interval is the mean of their per-run bootstrap intervals), PPO's ratio to tuned-alpha, the share of the
tuned-alpha → oracle gap it closes, and the learned α by hidden user type. Last line: JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from scipy import stats


def t_interval(x: np.ndarray) -> list[float]:
    """95% t-interval of the mean of ``x`` (n >= 2), else the point."""
    if len(x) < 2:
        return [float(x.mean()), float(x.mean())]
    half = stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x))
    return [float(x.mean() - half), float(x.mean() + half)]


def main(argv: list[str] | None = None) -> dict:
    """Print the table and the JSON summary."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="run directories (one per training seed)")
    args = ap.parse_args(argv)
    results, summaries = [], []
    for run in args.runs:
        path = Path(run) / "report" / "results.json"
        if not path.is_file():
            raise SystemExit(f"{path} is missing: has train.py finished for {run}?")
        results.append(json.loads(path.read_text()))
        summaries.append(json.loads((Path(run) / "summary.json").read_text()))
    names = list(results[0]["rankers"])
    table = {}
    for name in names:
        means = np.array([r["rankers"][name]["return"]["mean"] for r in results])
        cis = np.array([r["rankers"][name]["return"]["ci95"] for r in results])
        ci = t_interval(means) if name == "ppo" else [float(cis[:, 0].mean()), float(cis[:, 1].mean())]
        table[name] = {"mean": float(means.mean()), "ci95": ci, "per_seed": means.tolist()}
    ppo, tuned = np.array(table["ppo"]["per_seed"]), np.array(table["tuned-alpha"]["per_seed"])
    ratio = ppo / tuned
    out: dict = {"runs": args.runs, "seeds": len(args.runs), "return": table,
                 "ratio_vs_tuned": {"mean": float(ratio.mean()), "ci95": t_interval(ratio), "per_seed": ratio.tolist()}}
    if "oracle" in table:
        oracle = np.array(table["oracle"]["per_seed"])
        gap = (ppo - tuned) / (oracle - tuned)
        out["gap_closed"] = {"mean": float(gap.mean()), "ci95": t_interval(gap), "per_seed": gap.tolist()}
    if "linucb" in table:
        out["above_linucb_no_overlap"] = bool(table["ppo"]["ci95"][0] > table["linucb"]["ci95"][1])
    out["above_tuned_no_overlap"] = bool(table["ppo"]["ci95"][0] > table["tuned-alpha"]["ci95"][1])
    out["alpha_by_user_type"] = [s["alpha_by_user_type"] for s in summaries]
    out["learn_minutes"] = [round(s["learn_seconds"] / 60, 1) for s in summaries]
    out["steps"] = [s["total_timesteps"] for s in summaries]
    out["steps_per_s"] = [s["steps_per_s"] for s in summaries]
    print(f"{'ranker':<14}{'return over seeds':>20}{'95% CI':>20}")
    for name, row in table.items():
        print(f"{name:<14}{row['mean']:>20.3f}{'':>4}{row['ci95'][0]:.3f}–{row['ci95'][1]:.3f}")
    print(f"PPO / tuned-alpha: {out['ratio_vs_tuned']['mean']:.3f} (95% CI {out['ratio_vs_tuned']['ci95'][0]:.3f}–"
          f"{out['ratio_vs_tuned']['ci95'][1]:.3f}); gap to oracle closed: "
          f"{out.get('gap_closed', {}).get('mean', float('nan')):.2f}")
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
