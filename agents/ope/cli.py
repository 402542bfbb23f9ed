"""``python -m agents.ope --logs LOG.parquet --policy SPEC``: every estimator's value of a policy from a log."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from agents.ope.estimators import (
    estimate_all,
    logging_terms,
    target_terms,
)
from agents.ope.logs import (
    parse_policy,
    read_ope_log,
)
from agents.ope.plackett_luce import (
    ESTIMATORS,
    pi_weights,
)
from configs.fileio import atomic_write_bytes

# ---- CLI -----------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """``python -m agents.ope --logs LOG.parquet --policy SPEC [...]``: estimates as a table and JSON."""
    ap = argparse.ArgumentParser(prog="python -m agents.ope", description=__doc__.split("\n")[0])
    ap.add_argument("--logs", required=True, help="rollout log written by agents.ope.write_ope_log (+ .obs.npz), or "
                    "an A/B serving log folder (agents.serve --arms ... --ab-log-dir DIR)")
    ap.add_argument("--policy", required=True, action="append",
                    help="target policy (repeatable): pl:ALPHA:TEMP[:EPS] for a rollout log; run:DIR[@T], "
                    "blend:A[@T], diverse:A:LC:LS:CAP[@T], arm:NAME for a serving log folder")
    ap.add_argument("--samples", type=int, default=512, help="Monte Carlo prefixes per request (marginals, Γ)")
    ap.add_argument("--estimators", default=",".join(ESTIMATORS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="also write the estimates here")
    ap.add_argument("--logging", choices=["mixture", "arm"], default="mixture",
                    help="serving logs: the logging policy of a request is the share-weighted mixture of the arms "
                    "(default) or the arm that served it (docs/ope.md)")
    ap.add_argument("--reward", default="1,2,0.25", help="serving logs: reward weights click,purchase,dwell-minute "
                    "(the simulator's env.reward)")
    args = ap.parse_args(argv)
    ests = [e.strip() for e in args.estimators.split(",") if e.strip()]
    if not Path(args.logs).exists():
        print(f"error: --logs {args.logs}: no such file or folder (a rollout log or an A/B serving log folder)",
              file=sys.stderr)
        return 2
    if Path(args.logs).is_dir():
        return _served_main(args, ests)
    try:
        policies = [parse_policy(s) for s in args.policy]
        _, log = read_ope_log(args.logs)
        gen = np.random.default_rng(args.seed)
        lt = logging_terms(log, gen, args.samples, with_pi=False)
        result: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
        for pol in policies:
            tt = target_terms(log, pol, gen, args.samples)
            if "pi" in ests:
                tt.pi_weight = pi_weights(log.logging_logits, log.slates, [tt.marginals], gen, 4 * args.samples,
                                          log.logging_epsilon, logging_marginals=lt.marginals)[0]
            result[pol.name] = {
                "reward": {k: v.to_dict() for k, v in estimate_all(log, log.rewards, tt, lt, ests).items()},
                "click": {k: v.to_dict() for k, v in estimate_all(log, log.clicks, tt, lt, ests).items()},
            }
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    _table(len(log), args.logs, result, ests)
    if args.json:
        atomic_write_bytes(args.json, json.dumps(result, indent=2).encode())
    print(json.dumps(result))
    return 0


def _table(n: int, source: str, result: dict, ests: list[str], note: str = "") -> None:
    print(f"{n} logged requests from {source}{note}\n")
    print("| policy | estimator | reward | 95% CI | click | 95% CI |\n|---|---|---|---|---|---|")
    for pol, r in result.items():
        for e in ests:
            a, c = r["reward"][e], r["click"][e]
            print(f"| {pol} | {e} | {a['value']:.4f} | [{a['low']:.4f}, {a['high']:.4f}] | {c['value']:.4f} | "
                  f"[{c['low']:.4f}, {c['high']:.4f}] |")


def _served_main(args: argparse.Namespace, ests: list[str]) -> int:
    """``--logs DIR``: a serving log folder (``agents/ope/served.py``)."""
    from agents.ope.served import SERVED_ESTIMATORS, parse_target, served_log
    from agents.serving.ablog import RewardWeights

    try:
        bad = [e for e in ests if e not in SERVED_ESTIMATORS]
        if bad:
            raise ValueError(f"estimator(s) {bad} not available on serving logs; choose from {list(SERVED_ESTIMATORS)}")
        try:
            w = [float(x) for x in args.reward.split(",")]
        except ValueError:
            w = []
        if len(w) != 3:
            raise ValueError(f"--reward must be three numbers click,purchase,dwell, got {args.reward!r}")
        slog = served_log(args.logs, RewardWeights(*w), args.logging)
        targets = [parse_target(s, slog.arms) for s in args.policy]
        result = served_estimates(slog, targets, ests, args.samples, args.seed)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    note = f" ({slog.dropped} left out: deterministic arm or another candidate count)" if slog.dropped else ""
    _table(len(slog.log), args.logs, result, ests, note)
    if args.json:
        atomic_write_bytes(args.json, json.dumps(result, indent=2).encode())
    print(json.dumps(result))
    return 0


def served_estimates(slog: object, targets: list, ests: list[str], samples: int = 256, seed: int = 0
                     ) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
    """Every estimator's value (reward and click) of each target on a :class:`agents.ope.served.ServedLog`."""
    gen = np.random.default_rng(seed)
    lt = slog.logging_terms(gen, samples)  # type: ignore[attr-defined]
    log = slog.log  # type: ignore[attr-defined]
    out = {}
    for t in targets:
        tt = t.terms(slog, gen, samples)
        out[t.name] = {
            "reward": {k: v.to_dict() for k, v in estimate_all(log, log.rewards, tt, lt, ests).items()},
            "click": {k: v.to_dict() for k, v in estimate_all(log, log.clicks, tt, lt, ests).items()},
        }
    return out


if __name__ == "__main__":
    raise SystemExit(main())
