"""Off-policy estimators against the simulator's ground truth (issue #17, item 2).

``python -m bench.ope_validation`` builds the ``small`` preset's world (64-d hashing encoder), logs recfeed's
logging policy (Plackett-Luce on llm_sim / T mixed with ε-uniform slates, the preset's T and ε) on held-out users
in one-request sessions (so the contexts do not depend on the policy: per-request OPE targets exactly the
on-policy per-request value), and estimates several target policies' per-request reward with every estimator of
:mod:`agents.ope`. The truth is each target served in the simulator on the same population (``--truth``
requests, its standard error printed). Per estimator, target and log size: bias (mean estimate − truth), the
standard deviation of the estimates over ``--draws`` independent logs, the RMSE, the mean interval half-width and
the coverage of the 95 % intervals. The small log size is the first rows of each large log.

The simulator's choice model is a position-weighted multinomial logit over the slate: the items below a
position compete for the click, so neither the additive (IIPS, PI) nor the cascade (RIPS, cascade-dr)
decomposition holds exactly; IPS and SNIPS assume nothing. ``--choice-model cascade`` runs the cascade model,
under which RIPS and cascade-dr are unbiased too.

The last line is a JSON object with every figure.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from typing import Any

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # many small solves: threads only contend
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np

from agents.ope import (
    ESTIMATORS,
    LoggingTerms,
    TargetTerms,
    estimate_all,
    log_policy,
    logging_pl_policy,
    on_policy_value,
    parse_policy,
    pi_weights,
    pl_conditionals,
    pl_marginals,
    pl_prefix_log_prob,
)
from encoders.hashing import HashingEncoder
from envs.presets import build_world, preset_config

DEFAULT_TARGETS = ("pl:1:0.25", "pl:0.5:0.2", "pl:0.8:0.05")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the validation; prints the table and the JSON line, returns the JSON object."""
    ap = argparse.ArgumentParser(prog="python -m bench.ope_validation", description=__doc__.split("\n")[0])
    ap.add_argument("--targets", default=",".join(DEFAULT_TARGETS), help="comma-separated pl:ALPHA:TEMP[:EPS]")
    ap.add_argument("--sizes", default="500,2000", help="log sizes (requests); the smaller are prefixes of the largest")
    ap.add_argument("--draws", type=int, default=10, help="independent logs")
    ap.add_argument("--truth", type=int, default=40000, help="on-policy requests per target for the truth")
    ap.add_argument("--samples", type=int, default=256, help="Monte Carlo slates per request (marginals, Γ)")
    ap.add_argument("--gram-samples", type=int, default=1024, help="Monte Carlo slates per request for PI's Γ")
    ap.add_argument("--choice-model", choices=("mnl", "cascade"), default="mnl")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    cfg = preset_config("small")
    world = build_world(cfg, HashingEncoder(dim=64), progress=False)
    run_cfg = dataclasses.replace(cfg, user_model=dataclasses.replace(cfg.user_model,
                                                                      choice_model=args.choice_model))
    sizes = sorted(int(s) for s in args.sizes.split(","))
    targets = [parse_policy(s.strip()) for s in args.targets.split(",") if s.strip()]
    logging = logging_pl_policy(cfg)
    truth = {t.name: on_policy_value(world, run_cfg, t, args.truth, seed=10_000 + args.seed + i)
             for i, t in enumerate(targets)}
    truth[logging.name] = on_policy_value(world, run_cfg, logging, args.truth, seed=20_000 + args.seed)
    est: dict[tuple[str, str, int], list[tuple[float, float, float]]] = {}
    k = cfg.slate_size
    for d in range(args.draws):
        gen = np.random.default_rng([args.seed, d])
        _, log = log_policy(world, run_cfg, logging, sizes[-1], seed=args.seed * 1000 + d)
        lt = LoggingTerms(pl_prefix_log_prob(log.logging_logits, log.slates, log.logging_epsilon),
                          pl_marginals(log.logging_logits, k, gen, args.samples, log.logging_epsilon), None)
        tlogits = [t.logits(log.obs) for t in targets]
        tmarg = [pl_marginals(lg, k, gen, args.samples, t.epsilon) for lg, t in zip(tlogits, targets, strict=True)]
        piw = pi_weights(log.logging_logits, log.slates, tmarg, gen, args.gram_samples, log.logging_epsilon,
                         logging_marginals=lt.marginals)
        for t, lg, m, w in zip(targets, tlogits, tmarg, piw, strict=True):
            tt = TargetTerms(pl_prefix_log_prob(lg, log.slates, t.epsilon), m,
                             pl_conditionals(lg, log.slates, t.epsilon), w)
            for size in sizes:
                rows = slice(0, size)
                sub = log.subset(rows)
                res = estimate_all(sub, sub.rewards, _rows(tt, rows), _rows(lt, rows))
                for name, e in res.items():
                    est.setdefault((t.name, name, size), []).append((e.value, e.low, e.high))
    summary = []
    for (target, name, size), vals in est.items():
        a = np.array(vals)
        tv = truth[target]["reward"]
        bias = float(a[:, 0].mean() - tv)
        std = float(a[:, 0].std(ddof=1)) if len(a) > 1 else float("nan")
        summary.append({
            "target": target, "estimator": name, "n": size, "truth": tv, "bias": bias, "std": std,
            "rmse": float(np.sqrt(np.mean((a[:, 0] - tv) ** 2))),
            "half_width": float(np.mean((a[:, 2] - a[:, 1]) / 2)),
            "coverage": float(np.mean((a[:, 1] <= tv) & (tv <= a[:, 2]))),
        })
    print(f"Per-request reward, small preset (hashing-64), choice model {args.choice_model}, logging policy PL on "
          f"llm_sim/T={cfg.logging.temperature} with ε={cfg.logging.epsilon}, {args.draws} logs per size, truth "
          f"from {args.truth} on-policy requests, {args.samples} Monte Carlo slates per request "
          f"({args.gram_samples} for PI's Γ)\n")
    print("| target (truth ± se) | estimator | n | bias | std | RMSE | mean CI half-width | coverage |")
    print("|---|---|---|---|---|---|---|---|")
    for s in summary:
        tr = truth[s["target"]]
        print(f"| {s['target']} ({tr['reward']:.3f} ± {tr['reward_se']:.3f}) | {s['estimator']} | {s['n']} | "
              f"{s['bias']:+.3f} | {s['std']:.3f} | {s['rmse']:.3f} | {s['half_width']:.3f} | {s['coverage']:.0%} |")
    out = {"truth": truth, "summary": summary, "seconds": round(time.perf_counter() - t0, 1),
           "args": vars(args), "estimators": list(ESTIMATORS)}
    print(json.dumps(out))
    return out


def _rows(terms: TargetTerms | LoggingTerms, rows: slice) -> Any:
    """The same terms restricted to ``rows``."""
    return dataclasses.replace(terms, **{f.name: None if getattr(terms, f.name) is None
                                         else getattr(terms, f.name)[rows] for f in dataclasses.fields(terms)})


if __name__ == "__main__":
    main()
