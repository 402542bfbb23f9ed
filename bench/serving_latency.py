"""In-process serving latency: ``ServingRuntime.recommend`` and ``ServingRuntime.observe`` of an exported policy.

``python -m bench.serving_latency --run RUN_DIR --candidates 200 --k 10`` loads ``RUN_DIR/export`` (exported
as ONNX first if missing; RUN_DIR may also be an artifact directory), imports ``--users`` users with a
20-item history each, then times ``--requests`` recommend calls (a random user, N random distinct catalog
items) and, after each, one click event on a recommended item (``observe``, one event per call). Candidate
lists are drawn before the clock starts. It prints a table, then a JSON object as the last line with
``p50_ms`` / ``p99_ms`` (recommend), ``observe_p50_ms`` / ``observe_p99_ms``, the model's share and the
number of fallback answers (a model run past ``--time-budget-ms`` is answered by the blend and counted), and
the same percentiles of the calling thread's CPU time (``cpu_p50_ms`` …), which waiting for a core on a busy
machine does not inflate. ``--explain`` asks every ``recommend`` for its explanation (the graph's ``parts``
output, issue #17 item 6); compare with a run without it. ``--arms FILE`` serves A/B arms (issue #17 item 1) and
``--ab-log-dir DIR`` turns their serving log on (propensities under every arm, Parquet written by a background
thread); compare the three.

Targets (the serving issue): recommend p99 <= 2 ms at N = 200, K = 10; a feedback update p99 <= 0.2 ms.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import time

import numpy as np


def _pct(x: list[float], q: float) -> float:
    return round(float(np.percentile(np.asarray(x) * 1000.0, q)), 4)


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark and print the JSON summary as the last line."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="run directory (or exported artifact directory)")
    ap.add_argument("--candidates", type=int, default=200, help="N per request")
    ap.add_argument("--k", type=int, default=10, help="K per request")
    ap.add_argument("--requests", type=int, default=5000, help="timed recommend calls")
    ap.add_argument("--warmup", type=int, default=300, help="untimed calls first")
    ap.add_argument("--users", type=int, default=1000, help="distinct users")
    ap.add_argument("--store", default="memory", help="'memory' or a redis:// URL")
    ap.add_argument("--format", choices=["onnx", "torchscript"], default="onnx", help="format if exporting")
    ap.add_argument("--time-budget-ms", type=float, default=10.0, help="model deadline")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--explain", action="store_true", help="ask every recommend for its explanation (score parts)")
    ap.add_argument("--arms", default=None, help="serve these A/B arms (agents/serving/arms.py), not the run alone")
    ap.add_argument("--ab-log-dir", default=None, help="with --arms: write the serving log here (logging on)")
    args = ap.parse_args(argv)
    if args.requests < 1 or args.candidates < args.k or args.k < 1:
        ap.error("need --requests >= 1 and 1 <= --k <= --candidates")

    from agents.serving import Event, ServingRuntime
    from agents.serving.app import resolve_artifact

    artifact = resolve_artifact(args.run, args.format)
    if args.arms:
        from agents.serving.arms import ABRuntime, load_arms_file

        runtime = ABRuntime.load(artifact, args.store, time_budget_ms=args.time_budget_ms,
                                 max_candidates=max(1000, args.candidates), log_key="bench")
        runtime.set_arms(load_arms_file(args.arms), log_dir=args.ab_log_dir, seed=args.seed)
    else:
        if args.ab_log_dir:
            ap.error("--ab-log-dir needs --arms")
        runtime = ServingRuntime.load(artifact, args.store, time_budget_ms=args.time_budget_ms,
                                      max_candidates=max(1000, args.candidates))
    m = runtime.manifest
    ids = [str(s) for s in runtime.items.ids]
    n_items = len(ids)
    if args.candidates > n_items:
        ap.error(f"--candidates {args.candidates} is more than the catalog's {n_items} items")
    rng = np.random.default_rng(args.seed)
    users = [f"bench-{u}" for u in range(args.users)]
    for u in users:
        runtime.set_user(u, history=[ids[i] for i in rng.choice(n_items, 20, replace=False)])
    total = args.warmup + args.requests
    cand_lists = [[ids[i] for i in rng.choice(n_items, args.candidates, replace=False)] for _ in range(total)]
    who = rng.integers(0, args.users, total)
    click_pos = rng.integers(0, args.k, total)

    rec_s: list[float] = []
    obs_s: list[float] = []
    rec_cpu: list[float] = []
    obs_cpu: list[float] = []
    cpu = time.thread_time
    model_ms: list[float] = []
    sources = {"model": 0, "fallback": 0}
    gc.collect()
    gc.freeze()  # the set-up's objects are not scanned again by timed-phase collections
    for i in range(total):
        user = users[who[i]]
        c0, t0 = cpu(), time.perf_counter()
        rec = runtime.recommend(user, cand_lists[i], args.k, explain=args.explain)
        c1, t1 = cpu(), time.perf_counter()
        runtime.observe(user, [Event("click", rec.items[click_pos[i]], dwell_s=30.0, request_id=rec.request_id)])
        c2, t2 = cpu(), time.perf_counter()
        if i >= args.warmup:
            rec_s.append(t1 - t0)
            obs_s.append(t2 - t1)
            rec_cpu.append(c1 - c0)
            obs_cpu.append(c2 - c1)
            model_ms.append(rec.model_ms)
            sources[rec.source] += 1
    out = {
        "artifact": str(artifact), "format": m["format"], "n_items": n_items, "dim": int(m["dim"]),
        "candidates": args.candidates, "k": args.k, "requests": args.requests, "users": args.users,
        "store": runtime.store.kind, "time_budget_ms": args.time_budget_ms, "explain": args.explain,
        "arms": args.arms, "ab_logging": bool(args.ab_log_dir),
        "p50_ms": _pct(rec_s, 50), "p90_ms": _pct(rec_s, 90), "p99_ms": _pct(rec_s, 99), "max_ms": _pct(rec_s, 100),
        "model_p50_ms": round(float(np.percentile(model_ms, 50)), 4),
        "model_p99_ms": round(float(np.percentile(model_ms, 99)), 4),
        "observe_p50_ms": _pct(obs_s, 50), "observe_p99_ms": _pct(obs_s, 99),
        "cpu_p50_ms": _pct(rec_cpu, 50), "cpu_p99_ms": _pct(rec_cpu, 99),
        "observe_cpu_p50_ms": _pct(obs_cpu, 50), "observe_cpu_p99_ms": _pct(obs_cpu, 99),
        "fallbacks": sources["fallback"], "loadavg_1m": round(os.getloadavg()[0], 2), "cpus": os.cpu_count(),
    }
    if getattr(runtime, "writer", None) is not None:
        runtime.writer.close()
        out["ab_log_dropped"] = sum(s.value for m_ in runtime.writer.dropped.collect() for s in m_.samples
                                    if s.name.endswith("_total"))
    print(f"recommend (N={args.candidates}, K={args.k}, {m['format']}, D={m['dim']}, M={n_items}, "
          f"{runtime.store.kind} store{', explain' if args.explain else ''}): p50 {out['p50_ms']:.3f} ms, "
          f"p99 {out['p99_ms']:.3f} ms "
          f"(model p50 {out['model_p50_ms']:.3f} ms), fallbacks {out['fallbacks']}/{args.requests}")
    print(f"observe (1 click event):  p50 {out['observe_p50_ms']:.3f} ms, p99 {out['observe_p99_ms']:.3f} ms")
    print(f"CPU time of the calling thread (what waiting for a core does not inflate): recommend p50 "
          f"{out['cpu_p50_ms']:.3f} / p99 {out['cpu_p99_ms']:.3f} ms, observe p50 {out['observe_cpu_p50_ms']:.3f} / "
          f"p99 {out['observe_cpu_p99_ms']:.3f} ms")
    print(f"load average (1 min) during the run: {out['loadavg_1m']} on {out['cpus']} CPUs")
    print(json.dumps(out))
    runtime.close()
    return out


if __name__ == "__main__":
    main()
