"""What the boosted type reader's OpenMP threads cost, alone and beside a busy process.

``agents.type_switch.BoostedClassifier`` (the reader of ``tuned-switch`` and ``bench.type_switch --reader boosted``)
fits scikit-learn's ``HistGradientBoostingClassifier``, whose OpenMP threads default to every core. This bench fits
trees of the reader's settings on a synthetic table of its size and reads a request's batch, on one thread and on
``--threads`` (default: every core): with the machine to itself, beside ``--busy`` processes spinning in plain
Python, and beside as many processes that fit trees on every core (another OpenMP job: a second protocol, a test
run). Medians of ``--repeats`` runs of each; the ratios are of medians measured in the same run. The last printed
line is the JSON.

    .venv/bin/python -m bench.reader_threads --repeats 3
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import time
from typing import Any

import numpy as np


def _spin(stop: Any) -> None:
    """Keep one core busy in plain Python until ``stop`` is set."""
    while not stop.is_set():
        sum(range(10_000))


def _fit_trees(stop: Any) -> None:
    """Keep fitting the reader's trees on OpenMP's default threads (every core) until ``stop`` is set: another
    OpenMP job, as a second protocol or a test run that fits the reader is."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(20_000, 12))
    y = x[:, 0] + rng.normal(size=20_000) > 0
    from sklearn.ensemble import HistGradientBoostingClassifier

    while not stop.is_set():
        HistGradientBoostingClassifier(max_iter=50, random_state=0).fit(x, y)


def time_reader(threads: int, x: np.ndarray, y: np.ndarray, batch: np.ndarray, reads: int) -> tuple[float, float]:
    """Seconds of one fit with the reader's settings and milliseconds of one read of ``batch``, on ``threads``."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=threads, user_api="openmp"):
        t0 = time.perf_counter()
        model = HistGradientBoostingClassifier(max_iter=400, learning_rate=0.05, early_stopping=True,
                                               validation_fraction=0.15, random_state=0).fit(x, y)
        fit_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(reads):
            model.predict_proba(batch)
        read_ms = (time.perf_counter() - t0) / reads * 1e3
    return fit_s, read_ms


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the bench and print the table and the JSON."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=40_000, help="training requests (the reader fits on ~10^4-10^5)")
    ap.add_argument("--features", type=int, default=12)
    ap.add_argument("--batch", type=int, default=500, help="rows of one read (users simulated at once)")
    ap.add_argument("--reads", type=int, default=50)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="the many-thread arm (default: cores)")
    ap.add_argument("--busy", type=int, default=1, help="neighbours: busy in plain Python, then fitting trees")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    if min(args.rows, args.features, args.batch, args.reads, args.threads, args.repeats) < 1 or args.busy < 0:
        ap.error("--rows, --features, --batch, --reads, --threads and --repeats must be >= 1, --busy >= 0")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.rows, args.features))
    y = x[:, 0] + rng.normal(size=args.rows) > 0
    batch = rng.normal(size=(args.batch, args.features))
    out: dict[str, Any] = {"cpu_count": os.cpu_count(), "rows": args.rows, "threads": args.threads,
                           "busy": args.busy, "repeats": args.repeats}
    settings = {"alone": (0, _spin), "beside_python": (args.busy, _spin), "beside_openmp": (args.busy, _fit_trees)}
    for setting, (busy, job) in settings.items():
        ctx = mp.get_context("spawn")  # OpenMP's runtime does not survive a fork once it has run
        stop = ctx.Event()
        spinners = [ctx.Process(target=job, args=(stop,), daemon=True) for _ in range(busy)]
        for p in spinners:
            p.start()
        try:
            runs = {n: [time_reader(n, x, y, batch, args.reads) for _ in range(args.repeats)]
                    for n in sorted({1, args.threads})}
        finally:
            stop.set()
            for p in spinners:
                p.join()
        out[setting] = {str(n): {"fit_s": float(np.median([r[0] for r in rs])),
                                 "read_ms": float(np.median([r[1] for r in rs]))} for n, rs in runs.items()}
    print(f"| machine | threads | fit (s, median of {args.repeats}) | read of {args.batch} rows (ms) |")
    print("|---|---:|---:|---:|")
    labels = {"alone": "alone", "beside_python": f"beside {args.busy} busy Python process(es)",
              "beside_openmp": f"beside {args.busy} process(es) fitting trees on every core"}
    for setting, label in labels.items():
        for n, fig in out[setting].items():
            print(f"| {label} | {n} | {fig['fit_s']:.2f} | {fig['read_ms']:.1f} |")
    many = str(args.threads)
    for setting in labels:
        out[f"{setting}_fit_ratio_many_over_one"] = out[setting][many]["fit_s"] / out[setting]["1"]["fit_s"]
        print(f"{labels[setting]}: fit on {many} threads / on 1: {out[f'{setting}_fit_ratio_many_over_one']:.2f}")
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
