"""How much of a policy's margin is the held-out sessions' draw: one evaluation, cut into blocks of sessions.

A quality protocol meets one set of held-out sessions (``eval.episodes`` × ``eval.seeds``: 20,000 in
``configs/quality*.yaml``, 2,000 in ``configs/quality.yaml`` before session 45) and reads each training seed's margin
over a reference there. When margins differ from seed to seed, the question is whether the policies differ or the
sessions do. This bench answers it for one policy: evaluate it on many more sessions (``evaluate.py ... --seeds
10``: the plan is seed-major, so the run's own sessions are the first block), then cut the per-session differences
into consecutive blocks of the protocol's size. The spread of the block means is what re-drawing the sessions alone
does to one policy's reading; the mean over all blocks is the policy's margin with that noise shrunk.

    python evaluate.py --rankers run:RUN,tuned-diverse --reference tuned-diverse --episodes 1000 --seeds 10 \\
        --tune-seed S --out runs/s6-10k
    python -m bench.eval_blocks runs/s6-10k --ranker run:RUN --reference tuned-diverse --block 2000 --run RUN

``--run`` adds the split by the users' hidden ρ (``bench.quality_protocol``'s CF-leaning / content-leaning groups;
research only: ρ is hidden state). Prints a Markdown table; the last printed line is the JSON.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from agents.evaluation import EpisodePlan
from agents.report import Bootstrap, percentile_ci, read_returns
from bench.cli import print_analysis
from bench.ppo_seeds import t_interval


def blocks(diff: np.ndarray, block: int, bootstrap: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Per-session differences in consecutive blocks of ``block`` sessions.

    Args:
        diff: float (E,) per-session difference (policy − reference), in the plan's order.
        block: Sessions per block (E // block blocks; a remainder is left out of the blocks, not of the total).
        bootstrap: Resamples of the total's interval.
        seed: Bootstrap seed.

    Returns:
        ``{"sessions", "mean", "ci95"}`` over all sessions (bootstrap), ``"block_means"`` (n,), their ``"block_sd"``
        (ddof 1; ``None`` for one block), and ``"block_se_expected"``: the standard error one block's mean has from
        its own sessions' spread (the pooled within-block SD / √block), which the block SD matches when the blocks
        differ by their draw of sessions only.

    Raises:
        ValueError: For ``block`` < 2 or more than the sessions there are.
    """
    diff = np.asarray(diff, dtype=np.float64)
    n = diff.size // block if block >= 2 else 0
    if n < 1:
        raise ValueError(f"need a block of >= 2 sessions and at most the {diff.size} there are, got {block}")
    cut = diff[: n * block].reshape(n, block)  # (n, block)
    means = cut.mean(axis=1)
    within = float(np.sqrt(cut.var(axis=1, ddof=1).mean()))
    boot = Bootstrap(diff.size, bootstrap, seed)
    return {"sessions": int(diff.size), "mean": float(diff.mean()), "ci95": list(percentile_ci(boot.means(diff))),
            "block": block, "block_means": [float(m) for m in means],
            "block_sd": float(means.std(ddof=1)) if n > 1 else None,
            "block_mean_ci95": t_interval(means) if n > 1 else None,
            "block_se_expected": within / float(np.sqrt(block))}


def report_returns(report: Path, names: tuple[str, ...]) -> tuple[EpisodePlan, dict[str, np.ndarray]]:
    """The sessions of an ``evaluate.py`` report folder and the per-session returns of ``names`` on them.

    Returns:
        ``(plan, name → float64 (E,))``: the plan rebuilt from the file (keys, users, evaluation seeds).

    Raises:
        FileNotFoundError: Without ``returns.npz`` (reports from before evaluate.py wrote it).
        ValueError: A name the report lacks (the message lists what it has), or a malformed file.
    """
    path = Path(report) / "returns.npz"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: re-run evaluate.py (it writes per-session returns since "
                                "session 30)")
    keys, rets = read_returns(path)
    missing = [n for n in names if n not in rets]
    if missing:
        raise ValueError(f"{path} has no returns of {missing}; it has {sorted(rets)}")
    with np.load(path, allow_pickle=False) as data:
        plan = EpisodePlan(keys, data["users"], data["seeds"])
    return plan, {n: rets[n] for n in names}


def analyse(report: Path, ranker: str, reference: str, block: int, rho: np.ndarray | None = None,
            users: np.ndarray | None = None, bootstrap: int = 2000) -> dict[str, Any]:
    """:func:`blocks` of ``ranker − reference`` from an ``evaluate.py`` report folder's ``returns.npz``.

    Args:
        report: The report folder (``returns.npz`` inside).
        ranker: The policy's name in the report (e.g. ``run:DIR``).
        reference: The reference's name (e.g. ``tuned-diverse``).
        block: Sessions per block.
        rho: float (U,) hidden ρ of the evaluated population, to split by user type (``None``: no split).
        users: int64 (E,) each session's user (read from the file when ``None``).
        bootstrap: Resamples of the intervals.

    Raises:
        FileNotFoundError: Without ``returns.npz`` (reports from before evaluate.py wrote it).
        ValueError: A name the report lacks (the message lists what it has), or a bad block.
    """
    plan, rets = report_returns(report, (ranker, reference))
    diff = rets[ranker] - rets[reference]
    out: dict[str, Any] = {"report": str(report), "ranker": ranker, "reference": reference,
                           "ranker_mean": float(rets[ranker].mean()), "reference_mean": float(rets[reference].mean()),
                           "all": blocks(diff, block, bootstrap)}
    if rho is not None:
        users = plan.users if users is None else users
        from bench.quality_protocol import _type_masks

        groups = {}
        for label, mask in _type_masks(np.asarray(rho)[users]).items():
            # the block of a group keeps its share of each block of the plan
            share = max(2, round(block * float(mask.mean())))
            if mask.sum() >= 2 * share:
                groups[label] = {"share": float(mask.mean()), **blocks(diff[mask], share, bootstrap)}
        out["by_user_type"] = groups
    return out


def markdown(res: dict[str, Any]) -> str:
    """The result as a Markdown table: one row for all users and one per user type (every block mean: the JSON)."""
    lines = [f"{res['ranker']} − {res['reference']} ({res['ranker_mean']:.3f} − {res['reference_mean']:.3f})", "",
             "| users | sessions | mean (95% CI) | block | blocks | first block | block means: min / median / max "
             "| block SD | a block's SE from its sessions |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    rows = [("all", res["all"]), *res.get("by_user_type", {}).items()]
    for label, b in rows:
        sd = "—" if b["block_sd"] is None else f"{b['block_sd']:.3f}"
        m = np.asarray(b["block_means"])
        lines.append(f"| {label} | {b['sessions']} | {b['mean']:+.3f} ({b['ci95'][0]:+.3f} to {b['ci95'][1]:+.3f}) "
                     f"| {b['block']} | {m.size} | {m[0]:+.3f} | {m.min():+.2f} / {np.median(m):+.2f} / {m.max():+.2f} "
                     f"| {sd} | {b['block_se_expected']:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Print the table and the JSON."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("report", help="an evaluate.py report folder (with returns.npz)")
    ap.add_argument("--ranker", required=True, help="the policy's name in the report, e.g. run:runs/x")
    ap.add_argument("--reference", default="tuned-diverse", help="the reference's name in the report")
    ap.add_argument("--block", type=int, default=2000, help="sessions per block (the protocol's held-out sessions)")
    ap.add_argument("--run", help="a run directory whose world gives the held-out users' hidden ρ (split by type)")
    ap.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples")
    args = ap.parse_args(argv)
    rho = None
    if args.run:
        from bench.quality_protocol import heldout_rho

        rho = heldout_rho(Path(args.run))
    return print_analysis(ap, lambda: analyse(Path(args.report), args.ranker, args.reference, args.block, rho,
                                              bootstrap=args.bootstrap), markdown)


if __name__ == "__main__":
    main()
