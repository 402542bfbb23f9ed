"""Many writers on one hot user in Redis: how many updates starve, with and without the lease.

``python -m bench.redis_contention`` starts a throwaway ``redis-server`` on a free loopback port (it must be
installed), then, ``--repeats`` times for each of three write policies, lets ``--stores`` ``RedisStore``\\ s (as
that many worker processes would hold, each with its own connections and striped locks) and ``--threads``
threads make ``--updates`` updates each to one user. An update holds the user for ``--work-ms`` (a sleep that
releases the GIL, as the ONNX model does) between its read and its compare-and-set. The policies:

- ``optimistic``: retry at once on conflict, no lease (the store before the fix: ``lease_after=None``,
  no backoff);
- ``backoff``: jittered exponential backoff, no lease;
- ``lease`` (the default store): backoff, and the user's lease after ``lease_after`` conflicts in a row.

Each update may try ``--max-retries`` times (the store's default is 50; a smaller budget makes starvation
frequent enough to count in a short run). It prints a table (updates refused with ``StoreConflictError``, the
events stored, conflicts, leases taken, wall time; medians over the repeats) and a JSON object as the last line.
"""

from __future__ import annotations

import argparse
import inspect
import json
import shutil
import socket
import subprocess
import threading
import time
from typing import Any

import numpy as np

from agents.serving import RedisStore, StoreConflictError, UserState

POLICIES: dict[str, dict[str, Any]] = {
    "optimistic": {"lease_after": None, "backoff_ms": 0.0, "backoff_cap_ms": 0.0},
    "backoff": {"lease_after": None},
    "lease": {},
}


def _default_lease_after() -> int | None:
    return inspect.signature(RedisStore).parameters["lease_after"].default


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_redis() -> tuple[subprocess.Popen, str]:
    exe = shutil.which("redis-server")
    if exe is None:
        raise SystemExit("redis-server is not installed (apt-get install -y redis-server)")
    port = _free_port()
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    probe = RedisStore(url)
    deadline = time.monotonic() + 30
    while not probe.ping():
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            raise SystemExit(f"redis-server did not start (exit code {proc.poll()})")
        time.sleep(0.05)
    probe.close()
    return proc, url


def run_once(url: str, prefix: str, policy: dict[str, Any], stores: int, threads: int, updates: int,
             max_retries: int, work_s: float) -> dict[str, float]:
    """One contention run; the counts it ends with."""
    held = [RedisStore(url, prefix=prefix, max_retries=max_retries, **policy) for _ in range(stores)]
    refused = [0] * threads

    def update(st: UserState) -> None:
        time.sleep(work_s)
        st.n_events += 1

    def work(i: int) -> None:
        store = held[i % stores]
        for _ in range(updates):
            try:
                store.transact("hot", update, lambda: UserState.new(4, 2, 3))
            except StoreConflictError:
                refused[i] += 1

    t0 = time.perf_counter()
    ts = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    wall = time.perf_counter() - t0
    final = held[0].get("hot")
    out = {"refused": sum(refused), "stored": final.n_events if final else 0,
           "conflicts": sum(s.conflicts for s in held), "leases": sum(s.leases for s in held), "wall_s": wall}
    for s in held:
        s.close()
    return out


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark and print the JSON summary as the last line."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stores", type=int, default=4, help="RedisStores (as worker processes)")
    ap.add_argument("--threads", type=int, default=8, help="writer threads, spread over the stores")
    ap.add_argument("--updates", type=int, default=50, help="updates per thread")
    ap.add_argument("--max-retries", type=int, default=10, help="attempts per update")
    ap.add_argument("--work-ms", type=float, default=0.5, help="time an update holds the user before its write")
    ap.add_argument("--lease-after", type=int, default=None,
                    help="conflicts before the lease (the `lease` policy; default: the store's)")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    if min(args.stores, args.threads, args.updates, args.max_retries, args.repeats) < 1 or args.work_ms < 0:
        ap.error("--stores, --threads, --updates, --max-retries, --repeats must be >= 1 and --work-ms >= 0")
    policies = dict(POLICIES)
    if args.lease_after is not None:
        policies["lease"] = {"lease_after": args.lease_after}
    proc, url = _start_redis()
    rows: dict[str, list[dict[str, float]]] = {name: [] for name in policies}
    try:
        for rep in range(args.repeats):
            for name, policy in policies.items():  # interleaved: machine load hits every policy alike
                rows[name].append(run_once(url, f"bench-{name}-{rep}:", policy, args.stores, args.threads,
                                           args.updates, args.max_retries, args.work_ms / 1000.0))
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    total = args.threads * args.updates
    summary: dict[str, Any] = {"lease_after": policies["lease"].get("lease_after", _default_lease_after()),
                               "updates": total, "repeats": args.repeats, "max_retries": args.max_retries,
                               "stores": args.stores, "threads": args.threads, "work_ms": args.work_ms}
    print(f"{args.stores} stores x {args.threads} threads x {args.updates} updates on one user, "
          f"lease_after {summary['lease_after']}, max_retries {args.max_retries}, work {args.work_ms} ms; "
          f"medians over {args.repeats} repeats")
    print(f"{'policy':<12}{'refused':>9}{'(max)':>7}{'stored':>8}{'conflicts':>11}{'leases':>8}{'wall s':>8}")
    for name, runs in rows.items():
        med = {key: float(np.median([r[key] for r in runs])) for key in runs[0]}
        worst = max(r["refused"] for r in runs)
        summary[name] = {**med, "refused_max": worst, "lost": sum(total - r["stored"] for r in runs)}
        print(f"{name:<12}{med['refused']:>9.0f}{worst:>7.0f}{med['stored']:>8.0f}{med['conflicts']:>11.0f}"
              f"{med['leases']:>8.0f}{med['wall_s']:>8.2f}")
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
