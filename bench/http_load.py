"""HTTP load test of the ranking service on loopback: sustained requests/s, latency, errors, server memory.

``python -m bench.http_load --run RUN_DIR --rate 1000 --duration 60`` starts ``python -m agents.serve`` on a free
port of 127.0.0.1 (the run's export; ``--redis URL`` for the Redis store), waits for ``/health``, then drives it
open-loop at ``--rate`` requests/s for ``--duration`` seconds from ``--connections`` keep-alive connections
(a minimal asyncio HTTP/1.1 client in this process, so the generator costs little of the 2 cores it shares
with the server). Traffic: each arrival picks one of ``--users`` users; with probability ``--feedback-share``
it posts a click on an item of that user's last recommendation (``POST /feedback``), else it asks for a slate of
``--k`` out of ``--candidates`` random catalog items (``POST /recommend``).

Latency is measured from each request's *scheduled* time (so a server that falls behind is charged for the
queueing it causes: no coordinated omission). Errors are non-2xx answers, transport failures and requests that
could not be sent on schedule. The server's RSS is sampled every second (``/proc``; the sum over its process
tree). The last line is a JSON object: ``rps``, ``p50_ms``, ``p99_ms``, ``errors``, ``rss_start_mb`` (after the
first 10% of the run), ``rss_end_mb``, ``rss_max_mb`` and the per-endpoint split.

Bounded by construction: traffic goes to 127.0.0.1 only, ``--duration`` <= 3600 s, ``--rate`` <= 20,000/s, and the
server is stopped at the end. ``--rate 0`` runs closed-loop (each connection sends as fast as it gets answers)
to find the capacity. ``--client wrk`` drives the same mix with ``wrk`` (closed-loop, ``--connections``
connections, one thread; the Python client costs about 0.45 ms of CPU per request, wrk a small fraction of it,
which leaves more of two shared cores to the server; a feedback click then names an item of the latest
recommendation the wrk thread received).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HOST = "127.0.0.1"
REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` and its descendants (MB)."""
    total = 0
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/status", encoding="ascii") as fh:
                for line in fh:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
            with open(f"/proc/{p}/task/{p}/children", encoding="ascii") as fh:
                todo += [int(c) for c in fh.read().split()]
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return total / 1024.0


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its descendants so far."""
    total = 0.0
    todo = [pid]
    tick = os.sysconf("SC_CLK_TCK")
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/stat", encoding="ascii") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
            with open(f"/proc/{p}/task/{p}/children", encoding="ascii") as fh:
                todo += [int(c) for c in fh.read().split()]
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return total


class Conn:
    """One keep-alive HTTP/1.1 connection (no pipelining)."""

    def __init__(self, port: int, api_key: str | None) -> None:
        self.port = port
        self.head = (f"Host: {HOST}:{port}\r\nContent-Type: application/json\r\n"
                     + (f"X-API-Key: {api_key}\r\n" if api_key else ""))
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, path: str, body: bytes) -> tuple[int, bytes]:
        if self.writer is None or self.writer.is_closing():
            self.reader, self.writer = await asyncio.open_connection(HOST, self.port)
        assert self.reader is not None
        self.writer.write(f"POST {path} HTTP/1.1\r\n{self.head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionError("server closed the connection")
        status = int(status_line.split()[1])
        length = 0
        close = False
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b""):
                break
            name, _, value = line.partition(b":")
            lname = name.strip().lower()
            if lname == b"content-length":
                length = int(value)
            elif lname == b"connection" and value.strip().lower() == b"close":
                close = True
        data = await self.reader.readexactly(length)
        if close:
            self.writer.close()
            self.writer = None
        return status, data


async def drive(port: int, ids: list[str], args: argparse.Namespace, api_key: str | None,
                server_pid: int) -> dict:
    """Run the load and return the measurements."""
    rng = random.Random(args.seed)
    n_items = len(ids)
    last: dict[int, list[str]] = {}
    lat: dict[str, list[float]] = {"/recommend": [], "/feedback": []}
    status_counts: dict[str, int] = {}
    errors = {"http": 0, "transport": 0, "late": 0}
    queue: asyncio.Queue = asyncio.Queue()
    rss: list[tuple[float, float]] = []
    stop = asyncio.Event()

    def make_job(scheduled: float) -> tuple[float, str, bytes, int]:
        u = rng.randrange(args.users)
        if u in last and rng.random() < args.feedback_share:
            item = rng.choice(last[u])
            body = {"user_id": f"load-{u}", "events": [{"type": "click", "item_id": item, "dwell_s": 30.0}]}
            return scheduled, "/feedback", json.dumps(body).encode(), u
        cands = [ids[i] for i in rng.sample(range(n_items), args.candidates)]
        body = {"user_id": f"load-{u}", "candidate_ids": cands, "k": args.k}
        return scheduled, "/recommend", json.dumps(body).encode(), u

    async def worker(conn: Conn, closed_loop: bool) -> None:
        while not stop.is_set():
            if closed_loop:
                job = make_job(time.perf_counter())
            else:
                job = await queue.get()
                if job is None:
                    return
            scheduled, path, body, u = job
            try:
                status, data = await conn.request(path, body)
            except (OSError, ConnectionError, asyncio.IncompleteReadError, ValueError):
                errors["transport"] += 1
                conn.writer = None
                continue
            done = time.perf_counter()
            lat[path].append(done - scheduled)
            status_counts[str(status)] = status_counts.get(str(status), 0) + 1
            if status != 200:
                errors["http"] += 1
            elif path == "/recommend":
                last[u] = json.loads(data)["items"]

    async def sampler() -> None:
        t0 = time.perf_counter()
        while not stop.is_set():
            rss.append((time.perf_counter() - t0, _rss_mb(server_pid)))
            await asyncio.sleep(1.0)

    conns = [Conn(port, api_key) for _ in range(args.connections)]
    closed = args.rate == 0
    tasks = [asyncio.create_task(worker(c, closed)) for c in conns]
    samp = asyncio.create_task(sampler())
    t0 = time.perf_counter()
    cpu0, gen_cpu0 = _cpu_s(server_pid), time.process_time()
    end = t0 + args.duration
    sent = 0
    if closed:
        await asyncio.sleep(args.duration)
        stop.set()
    else:
        interval = 1.0 / args.rate
        while True:
            scheduled = t0 + sent * interval
            if scheduled >= end:
                break
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if queue.qsize() > args.rate * 5:  # five seconds behind: count as errors rather than queue forever
                errors["late"] += 1
            else:
                queue.put_nowait(make_job(scheduled))
            sent += 1
        for _ in conns:
            queue.put_nowait(None)
    await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), timeout=60)
    elapsed = time.perf_counter() - t0
    server_cpu, gen_cpu = _cpu_s(server_pid) - cpu0, time.process_time() - gen_cpu0
    stop.set()
    samp.cancel()
    for c in conns:
        if c.writer is not None:
            c.writer.close()
    rec_ms = np.array(lat["/recommend"]) * 1000.0
    fb_ms = np.array(lat["/feedback"]) * 1000.0
    all_lat = np.concatenate([rec_ms, fb_ms])
    n_done = len(all_lat)
    warm = [r for t, r in rss if t >= 0.1 * args.duration] or [r for _, r in rss]

    def pct(x: np.ndarray, q: float) -> float:
        return round(float(np.percentile(x, q)), 3) if len(x) else 0.0

    return {
        "duration_s": round(elapsed, 1), "mode": "closed-loop" if closed else "open-loop", "target_rps": args.rate,
        "rps": round(n_done / elapsed, 1), "requests": n_done, "errors": sum(errors.values()), "error_kinds": errors,
        "status": status_counts, "p50_ms": pct(all_lat, 50), "p90_ms": pct(all_lat, 90), "p99_ms": pct(all_lat, 99),
        "max_ms": pct(all_lat, 100),
        "recommend": {"requests": len(rec_ms), "p50_ms": pct(rec_ms, 50), "p99_ms": pct(rec_ms, 99)},
        "feedback": {"requests": len(fb_ms), "p50_ms": pct(fb_ms, 50), "p99_ms": pct(fb_ms, 99)},
        "server_cpu_ms_per_request": round(1000.0 * server_cpu / max(n_done, 1), 3),
        "server_cpu_cores": round(server_cpu / elapsed, 2), "loadgen_cpu_cores": round(gen_cpu / elapsed, 2),
        "rss_start_mb": round(warm[0], 1) if warm else None, "rss_end_mb": round(rss[-1][1], 1) if rss else None,
        "rss_max_mb": round(max(r for _, r in rss), 1) if rss else None,
        "rss_samples": [round(r, 1) for _, r in rss[:: max(1, len(rss) // 30)]],
    }


WRK_LUA = r"""
-- generated by bench/http_load.py: the same traffic as the Python client (closed-loop)
local ids = {%(ids)s}
local N, K, USERS, FB, KEY = %(n)d, %(k)d, %(users)d, %(fb)f, "%(key)s"
local headers = {["Content-Type"] = "application/json", ["X-API-Key"] = KEY}
local last = nil  -- items of the latest recommendation this thread received
local counter = 0
function setup(thread) thread:set("tid", counter); counter = counter + 1 end
function init(args) math.randomseed(%(seed)d + (tid or 0)) end
request = function()
  local u = math.random(USERS)
  if last ~= nil and math.random() < FB then
    local it = last[math.random(#last)]
    return wrk.format("POST", "/feedback", headers, '{"user_id":"load-' .. u ..
      '","events":[{"type":"click","item_id":"' .. it .. '","dwell_s":30.0}]}')
  end
  local chosen, seen = {}, {}
  while #chosen < N do
    local j = math.random(#ids)
    if not seen[j] then seen[j] = true; chosen[#chosen + 1] = '"' .. ids[j] .. '"' end
  end
  return wrk.format("POST", "/recommend", headers, '{"user_id":"load-' .. u .. '","candidate_ids":[' ..
    table.concat(chosen, ",") .. '],"k":' .. K .. '}')
end
response = function(status, hdrs, body)
  if status == 200 then
    local arr = body:match('"items":%%[(.-)%%]')
    if arr then
      local items = {}
      for id in arr:gmatch('"([^"]+)"') do items[#items + 1] = id end
      if #items > 0 then last = items end
    end
  end
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRKJSON {"requests": %%d, "duration_us": %%d, "p50_us": %%d, "p90_us": %%d, ' ..
    '"p99_us": %%d, "max_us": %%d, "connect": %%d, "read": %%d, "write": %%d, "status": %%d, "timeout": %%d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, e.connect, e.read, e.write, e.status, e.timeout))
end
"""


def drive_wrk(port: int, ids: list[str], args: argparse.Namespace, api_key: str, server_pid: int) -> dict:
    """Closed-loop load with ``wrk`` (one thread, ``--connections`` connections): the same request mix, generated in
    LuaJIT (a feedback click names an item of the latest recommendation the thread received, for a random user:
    mostly an item that user was not shown, which the service counts and does not apply, so wrk's feedback requests
    cost less than the Python client's). wrk is closed-loop, so its latencies leave out requests a stalled server
    kept it from sending."""
    import shutil
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as fh:
        fh.write(WRK_LUA % {"ids": ",".join(f'"{i}"' for i in ids), "n": args.candidates, "k": args.k,
                            "users": args.users, "fb": args.feedback_share, "key": api_key, "seed": args.seed})
        script = fh.name
    try:
        exe = shutil.which("wrk")
        assert exe is not None
        cmd = [exe, "-t", "1", "-c", str(args.connections), "-d", f"{int(args.duration)}s", "-s", script,
               f"http://{HOST}:{port}/"]
        t0 = time.perf_counter()
        cpu0 = _cpu_s(server_pid)
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        rss: list[tuple[float, float]] = []
        while proc.poll() is None:
            rss.append((time.perf_counter() - t0, _rss_mb(server_pid)))
            time.sleep(1.0)
        elapsed = time.perf_counter() - t0
        server_cpu = _cpu_s(server_pid) - cpu0
        text = proc.stdout.read() if proc.stdout else ""
        line = next((ln for ln in text.splitlines() if ln.startswith("WRKJSON ")), None)
        if line is None:
            raise RuntimeError(f"wrk failed: {text[-2000:]}")
        w = json.loads(line[len("WRKJSON "):])
    finally:
        os.unlink(script)
    n = int(w["requests"])
    errors = {k: int(w[k]) for k in ("connect", "read", "write", "status", "timeout")}
    warm = [r for t, r in rss if t >= 0.1 * args.duration] or [r for _, r in rss]
    dur = w["duration_us"] / 1e6
    return {
        "duration_s": round(dur, 1), "mode": f"closed-loop (wrk, {args.connections} connections)", "target_rps": 0,
        "rps": round(n / dur, 1), "requests": n, "errors": sum(errors.values()), "error_kinds": errors,
        "status": {}, "p50_ms": w["p50_us"] / 1000, "p90_ms": w["p90_us"] / 1000, "p99_ms": w["p99_us"] / 1000,
        "max_ms": w["max_us"] / 1000, "recommend": {}, "feedback": {},
        "server_cpu_ms_per_request": round(1000.0 * server_cpu / max(n, 1), 3),
        "server_cpu_cores": round(server_cpu / elapsed, 2), "loadgen_cpu_cores": None,
        "rss_start_mb": round(warm[0], 1) if warm else None, "rss_end_mb": round(rss[-1][1], 1) if rss else None,
        "rss_max_mb": round(max(r for _, r in rss), 1) if rss else None,
        "rss_samples": [round(r, 1) for _, r in rss[:: max(1, len(rss) // 30)]],
    }


def main(argv: list[str] | None = None) -> dict:
    """Start the server, run the load, stop the server, print the JSON summary as the last line."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="run directory (or exported artifact directory)")
    ap.add_argument("--rate", type=float, default=1000.0, help="requests/s, open-loop (0: closed-loop, max speed)")
    ap.add_argument("--duration", type=float, default=60.0, help="seconds of load")
    ap.add_argument("--connections", type=int, default=32, help="keep-alive connections")
    ap.add_argument("--candidates", type=int, default=200, help="N per recommend request")
    ap.add_argument("--k", type=int, default=10, help="K per recommend request")
    ap.add_argument("--users", type=int, default=5000, help="distinct users")
    ap.add_argument("--feedback-share", type=float, default=0.3, help="share of requests that are feedback")
    ap.add_argument("--redis", default=None,
                    help="redis:// URL for the service's user store, or 'auto': a throwaway redis-server on a free "
                    "loopback port, stopped at the end")
    ap.add_argument("--workers", type=int, default=1, help="server worker processes (needs --redis)")
    ap.add_argument("--time-budget-ms", type=float, default=10.0, help="the server's model deadline")
    ap.add_argument("--warmup", type=float, default=5.0, help="seconds of load before measuring")
    ap.add_argument("--client", choices=["python", "wrk"], default="python",
                    help="load generator: this process's asyncio client (open-loop at --rate) or wrk (closed-loop "
                    "at --connections; far cheaper per request, so more of the 2 cores go to the server)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.client == "wrk":
        import shutil

        if shutil.which("wrk") is None:
            ap.error("--client wrk needs wrk (apt-get install -y wrk)")
    if not 0 < args.duration <= 3600 or not 0 <= args.rate <= 20_000 or args.connections < 1:
        ap.error("need 0 < --duration <= 3600, 0 <= --rate <= 20000, --connections >= 1")

    from agents.serving.app import resolve_artifact

    artifact = resolve_artifact(args.run)
    ids = [str(s) for s in np.load(artifact / "items.npz", allow_pickle=False)["ids"]]
    redis_proc = None
    if args.redis == "auto":
        import shutil

        exe = shutil.which("redis-server")
        if exe is None:
            ap.error("--redis auto needs redis-server (apt-get install -y redis-server)")
        rport = _free_port()
        redis_proc = subprocess.Popen([exe, "--port", str(rport), "--bind", HOST, "--save", "", "--appendonly", "no"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        args.redis = f"redis://{HOST}:{rport}/0"
        time.sleep(0.5)
    port = _free_port()
    api_key = "bench-" + os.urandom(8).hex()
    env = {**os.environ, "RECFEED_API_KEY": api_key, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "agents.serve", str(artifact), "--host", HOST, "--port", str(port),
           "--time-budget-ms", str(args.time_budget_ms), "--workers", str(args.workers)]
    if args.redis:
        cmd += ["--redis", args.redis]
    server = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        import httpx

        deadline = time.time() + 300
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"server exited: {server.stderr.read().decode() if server.stderr else ''}")
            try:
                if httpx.get(f"http://{HOST}:{port}/health", timeout=1.0).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.time() > deadline:
                raise RuntimeError("server did not come up in 300 s")
            time.sleep(0.2)
        if args.warmup > 0:
            warm = argparse.Namespace(**{**vars(args), "duration": args.warmup})
            asyncio.run(drive(port, ids, warm, api_key, server.pid))
        if args.client == "wrk":
            out = drive_wrk(port, ids, args, api_key, server.pid)
        else:
            out = asyncio.run(drive(port, ids, args, api_key, server.pid))
        metrics = httpx.get(f"http://{HOST}:{port}/metrics", headers={"X-API-Key": api_key}, timeout=5).text
        out["server_fallbacks"] = {line.split('reason="')[1].split('"')[0]: float(line.split()[-1])
                                   for line in metrics.splitlines() if line.startswith("recfeed_fallback_total{")}
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        if redis_proc is not None:
            redis_proc.terminate()
            redis_proc.wait(timeout=10)
    out.update({"connections": args.connections, "candidates": args.candidates, "k": args.k, "users": args.users,
                "feedback_share": args.feedback_share, "store": "redis" if args.redis else "memory",
                "workers": args.workers, "loadavg_1m": round(os.getloadavg()[0], 2), "cpus": os.cpu_count()})
    target = "" if args.client == "wrk" else f", target {args.rate:g} req/s"
    print(f"{out['mode']} {args.duration:.0f}s{target}: {out['rps']} req/s, "
          f"p50 {out['p50_ms']} ms, p99 {out['p99_ms']} ms, errors {out['errors']}, "
          f"server {out['server_cpu_ms_per_request']} CPU-ms/request ({out['server_cpu_cores']} cores), "
          f"RSS {out['rss_start_mb']} → {out['rss_end_mb']} MB (max {out['rss_max_mb']}), "
          f"fallbacks {out['server_fallbacks']}")
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
