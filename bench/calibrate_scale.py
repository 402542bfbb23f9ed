"""Calibration on a large generated log: seconds per step and peak memory; the last line printed is JSON.

python -m bench.calibrate_scale --users 5000 --items 40000 --per-user 100

Writes a MovieLens-format log (``movies.csv``, ``ratings.csv``) of ``--users`` users who rate ``--per-user`` to
``1.5×--per-user`` items each (a Zipf popularity times a liking for two of eight genres, in time order), then runs
``python -m envs.calibrate`` on it in this process with the hashing encoder, so the figures are the calibration's
own and not the text encoder's. ``--kernels`` also times the held-out ranking's two kernels on one block of 256
users × ``--items`` (median of 5, in this run): ``scipy.stats.rankdata`` and a full stable argsort, which
``envs.data.cf_eval.evaluate_scores`` used before session 36, against the one sort and the partition it uses now.

Populations whose dense tables (``16·U·M`` bytes) exceed ``env.table_budget_mb`` take the factored path; the JSON
says which path each took. Everything goes to a temporary folder unless ``--out`` names one (the preset goes to
``OUT/preset``, the log to ``OUT/log``); the figures are the report's ``timings`` and the process's peak resident
memory. The synthetic log's fidelity figures mean nothing about any real log; this measures cost,
tests/test_calibrate.py the results.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

GENRES = ("Action", "Comedy", "Drama", "Horror", "Romance", "Sci-Fi", "Thriller", "Animation")


def write_log(root: Path, n_users: int, n_items: int, per_user: int, seed: int = 0) -> int:
    """Write a MovieLens-format log (``movies.csv``, ``ratings.csv``, ``tags.csv``) under ``root``.

    Args:
        root: Folder (created).
        n_users: Users.
        n_items: Items (each rated by some user or not).
        per_user: Fewest ratings per user (each rates ``per_user`` to ``1.5·per_user - 1`` distinct items).
        seed: Seed.

    Returns:
        The number of ratings written.
    """
    if n_items < 2 * per_user:
        raise ValueError(f"--items ({n_items}) must be at least twice --per-user ({per_user})")
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    g1, g2 = rng.integers(0, len(GENRES), n_items), rng.integers(0, len(GENRES), n_items)
    pd.DataFrame({
        "movieId": np.arange(1, n_items + 1),
        "title": [f"Film {j} Part {j % 97} ({1950 + j % 70})" for j in range(n_items)],
        "genres": [GENRES[a] + (f"|{GENRES[b]}" if a != b else "") for a, b in zip(g1, g2, strict=True)],
    }).to_csv(root / "movies.csv", index=False)
    popularity = rng.zipf(1.3, n_items).astype(np.float64)
    users, items, stamps = [], [], []
    for u in range(n_users):
        liked = rng.choice(len(GENRES), 2, replace=False)
        w = popularity * np.where(np.isin(g1, liked), 4.0, 1.0)
        n = per_user + int(rng.integers(0, max(per_user // 2, 1)))
        # Gumbel-top-n: n distinct items with probability ∝ w, without a cumulative-sum draw per item
        chosen = np.argpartition(-(np.log(w) - np.log(-np.log(rng.random(n_items)))), n - 1)[:n]
        users.append(np.full(n, u + 1))
        items.append(chosen + 1)
        stamps.append(1_100_000_000 + int(rng.integers(0, 10**7)) + 3600 * np.arange(n))
    n_events = sum(len(x) for x in users)
    pd.DataFrame({
        "userId": np.concatenate(users), "movieId": np.concatenate(items),
        "rating": np.clip(np.round(2 * rng.normal(3.5, 1.0, n_events)) / 2, 0.5, 5.0),
        "timestamp": np.concatenate(stamps),
    }).to_csv(root / "ratings.csv", index=False)
    pd.DataFrame({"userId": [1], "movieId": [1], "tag": ["x"], "timestamp": [1]}).to_csv(root / "tags.csv",
                                                                                         index=False)
    return n_events


def time_kernels(n_items: int, repeats: int = 5, seed: int = 0) -> dict[str, float]:
    """Median seconds of the held-out ranking's kernels on one (256, n_items) block, old against new.

    Args:
        n_items: M.
        repeats: Timed repetitions (the median is reported).
        seed: Seed of the scores.

    Returns:
        ``{"rankdata_argsort_s", "sort_partition_s", "ratio"}``.
    """
    import time

    from scipy.stats import rankdata

    from envs.data.cf_eval import _positive_rank_sums, _top_k

    gen = np.random.default_rng(seed)
    scores = gen.normal(size=(256, n_items))
    pos = gen.random((256, n_items)) < 25 / n_items  # ~25 held-out items per user

    def old() -> None:
        (rankdata(scores, axis=1) * pos).sum(axis=1)
        np.argsort(-scores, axis=1, kind="stable")[:, :10]

    def new() -> None:
        _positive_rank_sums(scores, pos)
        _top_k(scores, 10)

    medians = {}
    for name, fn in (("rankdata_argsort_s", old), ("sort_partition_s", new)):
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        medians[name] = float(np.median(times))
    out = {name: round(v, 6) for name, v in medians.items()}
    out["ratio"] = round(medians["rankdata_argsort_s"] / max(medians["sort_partition_s"], 1e-9), 1)
    return out


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark and print the figures.

    Args:
        argv: Command line (None: sys.argv).

    Returns:
        The figures (also printed as the last line, JSON).
    """
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--users", type=int, default=5000)
    p.add_argument("--items", type=int, default=40_000)
    p.add_argument("--per-user", type=int, default=100, help="fewest ratings per user")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--kernels", action="store_true", help="also time the ranking kernels, old against new")
    p.add_argument("--out", type=Path, default=None, help="keep the log and the preset here (default: a temp dir)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="passed on to python -m envs.calibrate (e.g. calibrate.fidelity_users=0)")
    args = p.parse_args(argv)
    for name in ("users", "items", "per_user"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.items < 2 * args.per_user:
        p.error(f"--items ({args.items}) must be at least twice --per-user ({args.per_user})")

    from envs.calibrate.cli import main as calibrate_main
    from envs.factored import dense_table_bytes
    from envs.presets import preset_config

    with tempfile.TemporaryDirectory(prefix="recfeed-calibrate-scale-") as tmp:
        out = args.out if args.out is not None else Path(tmp)
        n_events = write_log(out / "log", args.users, args.items, args.per_user, args.seed)
        preset = out / "preset"
        extra = [x for s in args.set for x in ("--set", s)]
        code = calibrate_main(["--data", f"movielens:{out / 'log'}", "--out", str(preset), "--encoder", "hashing",
                               "--set", f"encoder.cache_dir={out / 'cache'}", *extra])
        if code != 0:
            raise SystemExit(code)
        report = json.loads((preset / "fidelity.json").read_text())
        world = json.loads((preset / "world" / "world.json").read_text())
        budget = preset_config(str(preset)).table_budget_mb
        n_items = len(world["ids"])
        tables = {name: "factored" if budget is not None and dense_table_bytes(len(ids), n_items) > budget * 2**20
                  else "dense" for name, ids in world["meta"]["user_ids"].items()}
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    figures = {
        "users": args.users, "items": args.items, "events": n_events,
        "tables": tables,
        "users_evaluated": report["split"]["users_evaluated"],
        "timings_s": report["timings"],
        "peak_rss_gib": round(peak_kib / 2**20, 2),
        "sets": args.set,
    }
    if args.kernels:
        figures["kernels_256_users"] = time_kernels(args.items)
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
