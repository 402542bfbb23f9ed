"""The A/B serving log: Parquet files of served requests and of the feedback that follows, and their reader.

Written by :class:`ServeLogWriter` on a background thread fed through a bounded queue, so a request never waits
for the disk: when the queue is full the row is dropped and counted (``recfeed_ab_log_dropped_total{kind}``), never
raised. Files are rotated by rows and by (estimated) bytes, and flushed every ``flush_s`` seconds and on
:meth:`ServeLogWriter.close`; each is written atomically (a reader never sees half a file):

* ``requests-<start>-<pid>-<seq>.parquet``: one row per answered (recorded) request, in the simulator's rollout-log
  schema (``envs.rollout_log.ROLLOUT_COLUMNS``; ``user`` is the keyed-hash pseudonym, the response columns are
  filled in by :func:`read_ab_logs`) plus ``request_id``, ``ts``, ``arm``, ``forced``, ``source``, ``temperature``,
  ``positions`` (the slate as positions into ``candidates``), the serving arm's ``logits``, ``beta``, ``cap`` and
  the candidates' ``groups`` (categories), the observation (``features`` flattened (N·F), ``context``,
  ``user_state``, and ``session_sim`` (N) when an arm reads it) and, per arm, ``lp.<arm>``: the slate's prefix
  log-propensities (K) under that arm.
* ``feedback-<start>-<pid>-<seq>.parquet``: ``ts, user, request_id, type, item, dwell_s`` per applied event.

:func:`read_ab_logs` joins the two by ``(user, request_id)`` into one frame with the rollout-log response columns
(click rank, clicked item, purchase, dwell, reward from configurable weights).
"""

from __future__ import annotations

import io
import json
import os
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from configs.fileio import atomic_write_bytes
from envs.rollout_log import ROLLOUT_COLUMNS

KINDS = ("requests", "feedback")
_STOP = object()
#: How often the writer thread drains the queue (seconds).
POLL_S = 0.05
META_KEY = b"recfeed_ab"


class ServeLogWriter:
    """Background Parquet writer of the A/B log (module docstring).

    Args:
        directory: Log folder (created).
        arms: Arm names (one ``lp.<arm>`` column each).
        meta: JSON-ready description stored in each file's schema metadata (arms, item table fingerprint …).
        registry: Prometheus registry for the counters (``None``: a private one).
        max_rows: Rows per file.
        max_bytes: Approximate bytes per file (estimated from the rows' arrays).
        queue_size: Rows waiting at most; beyond it rows are dropped and counted.
        flush_s: Seconds after which buffered rows are written even if the file is small.
    """

    def __init__(self, directory: str | Path, arms: Sequence[str], meta: dict[str, Any], registry: Any = None,
                 max_rows: int = 50_000, max_bytes: int = 64 << 20, queue_size: int = 10_000,
                 flush_s: float = 30.0) -> None:
        from prometheus_client import CollectorRegistry, Counter

        for name, v in (("max_rows", max_rows), ("max_bytes", max_bytes), ("queue_size", queue_size)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        if not flush_s > 0:
            raise ValueError(f"flush_s must be > 0, got {flush_s!r}")
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.arms = list(arms)
        self.meta = json.dumps(meta).encode()
        self.max_rows, self.max_bytes, self.flush_s = max_rows, max_bytes, float(flush_s)
        self._q: queue.Queue[Any] = queue.Queue(maxsize=queue_size)
        self._stamp = f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{os.getpid()}"
        self._seq = 0
        r = registry if registry is not None else CollectorRegistry()
        self.rows = Counter("recfeed_ab_log_rows_total", "Rows handed to the A/B log writer, by kind", ["kind"],
                            registry=r)
        self.dropped = Counter("recfeed_ab_log_dropped_total", "A/B log rows dropped because the writer's queue was "
                               "full, by kind", ["kind"], registry=r)
        self.files = Counter("recfeed_ab_log_files_total", "A/B log files written", registry=r)
        self.errors = Counter("recfeed_ab_log_write_errors_total", "A/B log files that failed to write", registry=r)
        self._rows = {k: self.rows.labels(k) for k in KINDS}
        self._dropped = {k: self.dropped.labels(k) for k in KINDS}
        self.written: list[Path] = []
        self._closed = False
        self._wake = threading.Event()  # set on close: drain now
        self._thread = threading.Thread(target=self._loop, name="recfeed-ab-log", daemon=True)
        self._thread.start()

    def _put(self, kind: str, row: dict[str, Any]) -> bool:
        if self._closed:
            self._dropped[kind].inc()
            return False
        try:
            self._q.put_nowait((kind, row))
        except queue.Full:
            self._dropped[kind].inc()
            return False
        self._rows[kind].inc()
        return True

    def log_request(self, row: dict[str, Any]) -> bool:
        """Queue one request row (never blocks). Returns False if it was dropped (queue full or closed)."""
        return self._put("requests", row)

    def log_feedback(self, row: dict[str, Any]) -> bool:
        """Queue one feedback row (never blocks). Returns False if it was dropped."""
        return self._put("feedback", row)

    def close(self, timeout_s: float = 60.0) -> None:
        """Write what is queued and buffered, then stop the thread (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._wake.set()
        self._q.put(_STOP, timeout=timeout_s)
        self._thread.join(timeout_s)

    # ---- the writer thread -----------------------------------------------------------------------------------

    def _loop(self) -> None:
        """Drain the queue every ``POLL_S`` (not on every row: a waiting thread woken per row would take the GIL from
        the request thread once per request), buffer, and write files when full, old or at the end."""
        buf: dict[str, list[dict[str, Any]]] = {k: [] for k in KINDS}
        size = dict.fromkeys(KINDS, 0)
        since = time.monotonic()
        done = False
        while not done:
            self._wake.wait(POLL_S)
            while True:
                try:
                    item = self._q.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    done = True
                    break
                kind, row = item
                buf[kind].append(row)
                size[kind] += sum(getattr(v, "nbytes", 8) for v in row.values())
                if len(buf[kind]) >= self.max_rows or size[kind] >= self.max_bytes:
                    self._flush(kind, buf[kind])
                    buf[kind], size[kind] = [], 0
            if done or time.monotonic() - since >= self.flush_s:
                for k in KINDS:
                    self._flush(k, buf[k])
                    buf[k], size[k] = [], 0
                since = time.monotonic()

    def _flush(self, kind: str, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        try:
            table = self._requests_table(rows) if kind == "requests" else _feedback_table(rows)
            table = table.replace_schema_metadata({META_KEY: self.meta})
            out = io.BytesIO()
            pq.write_table(table, out)
            path = self.dir / f"{kind}-{self._stamp}-{self._seq:06d}.parquet"
            self._seq += 1
            atomic_write_bytes(path, out.getvalue())
            self.written.append(path)
            self.files.inc()
        except Exception:  # a failed write loses these rows, never the service
            self.errors.inc()

    def _requests_table(self, rows: list[dict[str, Any]]) -> pa.Table:
        def scalars(key: str, typ: pa.DataType, conv: Any = None) -> pa.Array:
            return pa.array([r[key] if conv is None else conv(r[key]) for r in rows], typ)

        def lists(values: list[np.ndarray], dtype: Any, typ: pa.DataType) -> pa.Array:
            """A list column from one concatenated buffer (no per-element Python objects)."""
            flat = [np.asarray(v, dtype).ravel() for v in values]
            offsets = np.zeros(len(flat) + 1, np.int32)
            np.cumsum([len(v) for v in flat], out=offsets[1:])
            return pa.ListArray.from_arrays(pa.array(offsets), pa.array(np.concatenate(flat), typ))

        cands = [np.asarray(r["candidates"], np.int64) for r in rows]
        col = {
            "population": pa.array(["served"] * len(rows)),
            "user": scalars("user", pa.string()),
            "session": scalars("session", pa.int64(), int),
            "step": scalars("step", pa.int64(), int),
            "candidates": lists(cands, np.int64, pa.int64()),
            "slate": lists([c[r["positions"]] for c, r in zip(cands, rows, strict=True)], np.int64, pa.int64()),
            "log_propensity": scalars("log_propensity", pa.float64(), float),
            "request_id": scalars("request_id", pa.int64(), int),
            "ts": scalars("ts", pa.float64(), float),
            "arm": scalars("arm", pa.string()),
            "forced": scalars("forced", pa.bool_(), bool),
            "source": scalars("source", pa.string()),
            "temperature": scalars("temperature", pa.float64(), float),
            "positions": lists([r["positions"] for r in rows], np.int64, pa.int64()),
            "logits": lists([r["logits"] for r in rows], np.float64, pa.float64()),
            "beta": scalars("beta", pa.float64(), float),
            "cap": scalars("cap", pa.int64(), int),
            "groups": lists([r["groups"] for r in rows], np.int64, pa.int64()),
            "n_features": pa.array([int(np.shape(r["features"])[-1]) for r in rows], pa.int64()),
            "features": lists([r["features"] for r in rows], np.float32, pa.float32()),
            "context": lists([r["context"] for r in rows], np.float32, pa.float32()),
            "user_state": lists([r["user_state"] for r in rows], np.float32, pa.float32()),
        }
        if all("session_sim" in r for r in rows):
            col["session_sim"] = lists([r["session_sim"] for r in rows], np.float32, pa.float32())
        for a in self.arms:
            col[f"lp.{a}"] = lists([r["lp"][a] for r in rows], np.float64, pa.float64())
        return pa.table(col)


def _feedback_table(rows: list[dict[str, Any]]) -> pa.Table:
    return pa.table({
        "ts": pa.array([float(r["ts"]) for r in rows], pa.float64()),
        "user": pa.array([r["user"] for r in rows]),
        "request_id": pa.array([int(r["request_id"]) for r in rows], pa.int64()),
        "type": pa.array([r["type"] for r in rows]),
        "item": pa.array([int(r["item"]) for r in rows], pa.int64()),
        "dwell_s": pa.array([float(r["dwell_s"]) for r in rows], pa.float64()),
    })


# ---- reading ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RewardWeights:
    """The simulator's reward (``configs.schema.RewardConfig``): click + purchase + dwell minutes, weighted."""

    click: float = 1.0
    purchase: float = 2.0
    dwell: float = 0.25


@dataclass
class ABLog:
    """Served requests joined with their feedback.

    Attributes:
        frame: One row per request: :data:`envs.rollout_log.ROLLOUT_COLUMNS` (response columns from the feedback)
            plus the request file's extra columns.
        meta: The writer's metadata (``arms``: the arms' specs, ``items_fingerprint`` …).
    """

    frame: pd.DataFrame
    meta: dict[str, Any]

    @property
    def arms(self) -> list[str]:
        """Arm names, in the arms file's order."""
        return [a["name"] for a in self.meta.get("arms", [])]


def _read_kind(directory: Path, kind: str) -> tuple[pd.DataFrame | None, dict[str, Any]]:
    files = sorted(directory.glob(f"{kind}-*.parquet"))
    if not files:
        return None, {}
    tables, meta = [], {}
    for f in files:
        t = pq.read_table(f)
        raw = (t.schema.metadata or {}).get(META_KEY)
        if raw:
            meta = json.loads(raw)
        tables.append(t)
    return pa.concat_tables(tables, promote_options="default").to_pandas(), meta


def read_ab_logs(directory: str | Path, reward: RewardWeights | None = None) -> ABLog:
    """Read an A/B log folder and join each request with its feedback (module docstring).

    The first click on a request's slate sets its ``click_rank`` and ``clicked_item`` (the simulator has one click
    per request); a purchase of the clicked item sets ``purchase``; the clicked item's dwell (with the click or
    reported later) sums into ``dwell`` (seconds); ``reward = w_click·click + w_purchase·purchase +
    w_dwell·dwell/60``. Feedback for a ``(user, request_id)`` that no request row has (a file not written yet, or
    dropped) is ignored.

    Raises:
        FileNotFoundError: No folder or no request file in it.
    """
    reward = reward or RewardWeights()
    d = Path(directory)
    if not d.is_dir():
        raise FileNotFoundError(f"A/B log folder {d} does not exist")
    req, meta = _read_kind(d, "requests")
    if req is None:
        raise FileNotFoundError(f"{d} holds no requests-*.parquet files (an A/B serving log, agents.serving.ablog)")
    fb, _ = _read_kind(d, "feedback")
    n = len(req)
    click_rank = np.full(n, -1, np.int64)
    clicked = np.full(n, -1, np.int64)
    purchase = np.zeros(n, bool)
    dwell = np.zeros(n)
    if fb is not None and len(fb):
        index = {key: i for i, key in enumerate(zip(req["user"], req["request_id"], strict=True))}  # last wins
        slates = req["slate"].to_numpy()
        for user, rid, typ, item, dw in zip(*(fb.sort_values("ts", kind="stable")[c] for c in
                                              ("user", "request_id", "type", "item", "dwell_s")), strict=True):
            i = index.get((user, rid))
            if i is None:
                continue
            if typ == "click":
                if click_rank[i] < 0:
                    hits = np.flatnonzero(slates[i] == item)
                    if len(hits):
                        click_rank[i], clicked[i] = int(hits[0]), int(item)
                if item == clicked[i]:
                    dwell[i] += dw
            elif typ == "purchase":
                purchase[i] |= bool(item == clicked[i])
            elif item == clicked[i]:
                dwell[i] += dw
    req["click_rank"] = click_rank
    req["clicked_item"] = clicked
    req["purchase"] = purchase
    req["dwell"] = dwell
    req["reward"] = reward.click * (click_rank >= 0) + reward.purchase * purchase + reward.dwell * dwell / 60.0
    extra = [c for c in req.columns if c not in ROLLOUT_COLUMNS]
    return ABLog(req[[*ROLLOUT_COLUMNS, *extra]].reset_index(drop=True), meta)
