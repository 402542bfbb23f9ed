"""``python -m agents.ope --logs LOG.parquet --policy SPEC``: every estimator's value of a policy from a log."""

from __future__ import annotations

import argparse
import json
import sys

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
    ap.add_argument("--logs", required=True, help="rollout log written by agents.ope.write_ope_log (+ .obs.npz)")
    ap.add_argument("--policy", required=True, action="append",
                    help="target policy: pl:ALPHA:TEMP[:EPS] (repeatable)")
    ap.add_argument("--samples", type=int, default=512, help="Monte Carlo prefixes per request (marginals, Γ)")
    ap.add_argument("--estimators", default=",".join(ESTIMATORS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="also write the estimates here")
    args = ap.parse_args(argv)
    ests = [e.strip() for e in args.estimators.split(",") if e.strip()]
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
    print(f"{len(log)} logged requests from {args.logs}\n")
    print("| policy | estimator | reward | 95% CI | click | 95% CI |\n|---|---|---|---|---|---|")
    for pol, r in result.items():
        for e in ests:
            a, c = r["reward"][e], r["click"][e]
            print(f"| {pol} | {e} | {a['value']:.4f} | [{a['low']:.4f}, {a['high']:.4f}] | {c['value']:.4f} | "
                  f"[{c['low']:.4f}, {c['high']:.4f}] |")
    if args.json:
        atomic_write_bytes(args.json, json.dumps(result, indent=2).encode())
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
