"""Env cost against catalog size (#16): world build time, env user-steps/s, peak RSS and ANN recall per size.

``python -m bench.env_scaling --items 3000,30000,300000,1000000 --users 100000`` builds, for each catalog size,
the default preset's world (hashing encoder, ``catalog.n_items`` and ``user_model.n_train`` changed) in a fresh
subprocess, times the build (no world cache: built from scratch), creates a ``RecVectorEnv`` of B = 1,024
(N = 100, K = 10), times its user-steps/s (median of ``--repeats`` windows) and reads the child's peak RSS
(``VmHWM``). It prints one line per size and writes ``env_scaling.json``, ``.csv`` and ``.png`` (cost vs size)
to ``--out``.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

COLUMNS = ("n_items", "n_users", "tables", "build_s", "tables_s", "user_steps_per_s", "peak_rss_gb",
           "recall_llm_top", "recall_cf_top", "recall_organic_sem", "recall_organic_cf", "load")


def _peak_rss_gb() -> float:
    """This process's peak resident set size (``VmHWM``) in GB (1e9 bytes)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024 / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def child(n_items: int, n_users: int, n_heldout: int, batch: int, seconds: float, repeats: int, dim: int,
          overrides: list[str]) -> dict:
    """One size, in this process: build, make the env, time it; returns the row."""
    from bench.env_throughput import measure
    from configs.loader import resolve_config
    from encoders.hashing import HashingEncoder
    from envs.presets import build_world
    from envs.vector_env import RecVectorEnv

    sets = [f"env.catalog.n_items={n_items}", f"env.user_model.n_train={n_users}",
            f"env.user_model.n_heldout={n_heldout}", *overrides]
    cfg = resolve_config(None, "default", sets).env
    t0 = time.perf_counter()
    world = build_world(cfg, HashingEncoder(dim=dim), progress=False)
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    env = RecVectorEnv(batch, config=cfg, world=world)
    tables_s = time.perf_counter() - t0
    measure(env, min(1.0, seconds))  # warm-up
    runs = [measure(env, seconds, seed=i) for i in range(repeats)]
    ann = world.meta.get("ann", {})

    def rec(key: str) -> float | None:
        return ann[key]["recall"] if key in ann else None

    return {
        "n_items": n_items, "n_users": n_users, "tables": world.meta["tables"]["train"],
        "build_s": round(build_s, 1), "tables_s": round(tables_s, 1),
        "user_steps_per_s": round(statistics.median(runs), 0), "runs": [round(r, 0) for r in runs],
        "peak_rss_gb": round(_peak_rss_gb(), 2), "recall_llm_top": rec("llm_top/train"),
        "recall_cf_top": rec("cf_top/train"), "recall_organic_sem": rec("organic_sem/train"),
        "recall_organic_cf": rec("organic_cf/train"), "ann": ann, "load": round(os.getloadavg()[0], 1),
        "encode_s": world.meta.get("encode_seconds"),
    }


def plot(rows: list[dict], path: Path) -> None:
    """Build time, user-steps/s and peak RSS against catalog size (log x), one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from configs.fileio import atomic_write_bytes, figure_png

    x = [r["n_items"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, key, label in zip(axes, ("build_s", "user_steps_per_s", "peak_rss_gb"),
                              ("world build (s)", "env user-steps/s (B=1,024)", "peak RSS (GB)"), strict=True):
        ax.plot(x, [r[key] for r in rows], "o-")
        ax.set_xscale("log")
        ax.set_xlabel("catalog items M")
        ax.set_title(label)
        ax.grid(alpha=0.3)
    fig.suptitle(f"recfeed cost vs catalog size ({rows[0]['n_users']:,} users, hashing encoder)")
    fig.tight_layout()
    png = figure_png(fig, dpi=100)
    plt.close(fig)
    atomic_write_bytes(path, png)


def main(argv: list[str] | None = None) -> list[dict]:
    """Run every size in a fresh subprocess; print and write the table."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--items", default="3000,30000,300000,1000000", help="comma-separated catalog sizes")
    ap.add_argument("--users", type=int, default=100_000, help="training users U")
    ap.add_argument("--heldout", type=int, default=1000, help="held-out users")
    ap.add_argument("--batch", type=int, default=1024, help="B")
    ap.add_argument("--seconds", type=float, default=5.0, help="length of one timed window")
    ap.add_argument("--repeats", type=int, default=3, help="timed windows per size (median reported)")
    ap.add_argument("--dim", type=int, default=256, help="hashing encoder dimension")
    ap.add_argument("--out", default="bench/results/scale", help="folder for env_scaling.{json,csv,png}")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="extra config override for every size (repeatable)")
    ap.add_argument("--append", action="store_true",
                    help="merge with the rows already in --out (a size measured again replaces its row)")
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child is not None:
        row = child(args.child, args.users, args.heldout, args.batch, args.seconds, args.repeats, args.dim,
                    args.overrides)
        print(json.dumps(row))
        return [row]
    try:
        sizes = [int(s) for s in args.items.split(",") if s.strip()]
    except ValueError:
        ap.error(f"--items must be comma-separated integers, got {args.items!r}")
    if not sizes or min(sizes) < 1:
        ap.error(f"--items needs positive sizes, got {args.items!r}")
    rows = []
    for m in sizes:
        cmd = [sys.executable, "-m", "bench.env_scaling", "--child", str(m), "--users", str(args.users),
               "--heldout", str(args.heldout), "--batch", str(args.batch), "--seconds", str(args.seconds),
               "--repeats", str(args.repeats), "--dim", str(args.dim)]
        for o in args.overrides:
            cmd += ["--set", o]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"M={m:,}: failed (exit {proc.returncode})\n{proc.stderr[-2000:]}", flush=True)
            rows.append({"n_items": m, "n_users": args.users, "error": f"exit {proc.returncode}"})
            continue
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        # cross-check: the largest peak RSS of any child so far (RUSAGE_CHILDREN, KiB on Linux)
        row["children_max_rss_gb"] = round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024 / 1e9, 2)
        rows.append(row)
        print(f"M={m:>9,}  U={args.users:,}  {row['tables']:8s}  build {row['build_s']:7.1f} s  "
              f"tables {row['tables_s']:6.1f} s  {row['user_steps_per_s']:>10,.0f} user-steps/s  "
              f"peak RSS {row['peak_rss_gb']:5.2f} GB  recall llm/cf {row['recall_llm_top']}/{row['recall_cf_top']}  "
              f"load {row['load']}", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.append and (out / "env_scaling.json").is_file():
        old = json.loads((out / "env_scaling.json").read_text(encoding="utf-8"))
        rows = sorted([r for r in old if r["n_items"] not in sizes] + rows, key=lambda r: r["n_items"])
    from configs.fileio import atomic_write_text

    atomic_write_text(out / "env_scaling.json", json.dumps(rows, indent=1))
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(r for r in rows if "error" not in r)
    atomic_write_text(out / "env_scaling.csv", table.getvalue())
    ok = [r for r in rows if "error" not in r]
    if ok:
        plot(ok, out / "env_scaling.png")
    print(json.dumps({"sizes": sizes, "out": str(out)}))
    return rows


if __name__ == "__main__":
    main()
