"""Read + preprocess a real log, then popularity vs ALS on the temporal split; the last line printed is JSON.

python -m bench.logs_baselines --data movielens:../shared/data/ml-latest-small

The seconds of each stage and ``total_s`` (read to last metric) are this benchmark's figures; tests assert the
results only (tests/test_data_cf_eval.py::test_real_movielens_mf_beats_popularity), never a duration.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before numpy loads: implicit's ALS wants one BLAS thread


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark and print the figures.

    Args:
        argv: Command line (None: sys.argv).

    Returns:
        The figures (also printed as the last line, JSON).
    """
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="log spec: movielens:PATH or logs:ITEMS,EVENTS")
    p.add_argument("--holdout", type=float, default=0.2, help="fraction of each user's last events held out")
    p.add_argument("--k", type=int, default=10, help="ranking cut-off")
    p.add_argument("--factors", type=int, default=64)
    p.add_argument("--regularization", type=float, default=10.0)
    p.add_argument("--alpha", type=float, default=1.0)
    p.add_argument("--iterations", type=int, default=15)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    from configs.data import PreprocessConfig
    from envs.data.cf_eval import evaluate_scores, mf_scorer, popularity_scorer
    from envs.data.preprocess import preprocess, temporal_split
    from envs.data.readers import load_logs

    t_start = t = time.perf_counter()
    log = load_logs(args.data)
    read_s = time.perf_counter() - t
    t = time.perf_counter()
    clean, report = preprocess(log, PreprocessConfig())
    prep_s = time.perf_counter() - t
    train, test = temporal_split(clean, holdout_frac=args.holdout)
    print(report.to_markdown())

    t = time.perf_counter()
    pop = evaluate_scores(popularity_scorer(train), train, test, k=args.k)
    pop_s = time.perf_counter() - t
    t = time.perf_counter()
    scorer = mf_scorer(
        train, factors=args.factors, regularization=args.regularization, iterations=args.iterations,
        alpha=args.alpha, seed=args.seed,
    )  # fmt: skip
    fit_s = time.perf_counter() - t
    t = time.perf_counter()
    mf = evaluate_scores(scorer, train, test, k=args.k)
    mf_s = time.perf_counter() - t
    total_s = time.perf_counter() - t_start

    def fmt(r: dict) -> str:
        return ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items())

    print(f"read {read_s:.2f} s, preprocess {prep_s:.2f} s; train {train.n_events} / test {test.n_events} events")
    print(f"popularity: {fmt(pop)} ({pop_s:.2f} s)")
    print(f"mf (ALS F={args.factors}, reg={args.regularization:g}): {fmt(mf)} (fit {fit_s:.2f} s, eval {mf_s:.2f} s)")
    out = {
        "data": args.data,
        "events": log.n_events,
        "events_clean": clean.n_events,
        "users": clean.n_users,
        "items": clean.n_items,
        "dropped": report.dropped,
        "read_s": round(read_s, 3),
        "preprocess_s": round(prep_s, 3),
        "train_events": train.n_events,
        "test_events": test.n_events,
        "k": args.k,
        "popularity": {k: round(v, 4) if isinstance(v, float) else v for k, v in pop.items()},
        "mf": {k: round(v, 4) if isinstance(v, float) else v for k, v in mf.items()},
        "mf_params": {
            "factors": args.factors,
            "regularization": args.regularization,
            "alpha": args.alpha,
            "iterations": args.iterations,
            "seed": args.seed,
        },
        "mf_fit_s": round(fit_s, 3),
        "eval_s": round(pop_s + mf_s, 3),
        "total_s": round(total_s, 3),
    }
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
