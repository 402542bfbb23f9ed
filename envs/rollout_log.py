"""The simulator's rollout log: one row per (user, request) of a rollout, as a DataFrame or a Parquet file.

The world builder's logging phase records its sessions with it (:func:`envs.presets.run_logging_phase`; the CF fit
reads the frame in memory, ``build_world(log_dir=...)`` also writes it). Real interaction logs are another
subject: :mod:`envs.data`.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from configs.fileio import atomic_write_bytes
from envs.core import StepResult

#: Columns of a rollout log: the user, the candidates, the shown slate (catalog ids), the ranker's log-probability
#: of that slate when it samples (NaN when deterministic; recorded, not used by recfeed so far), and the response.
ROLLOUT_COLUMNS = (
    "population", "user", "session", "step", "candidates", "slate", "log_propensity", "click_rank", "clicked_item",
    "purchase", "dwell", "reward",
)


@dataclass
class RolloutLogger:
    """Collects batched steps into a rollout log; arrays are copied, so the core's buffers can move on.

    Attributes:
        population: Name of the population the users come from.
        lists: Keep the candidates and slates (``False``: the frame has no such columns; O(rows) memory).
    """

    population: str
    lists: bool = True
    _chunks: list[dict[str, np.ndarray]] = field(default_factory=list, repr=False)

    def log(self, users: np.ndarray, sessions: np.ndarray, steps: np.ndarray, candidates: np.ndarray,
            result: StepResult, log_propensity: np.ndarray | None = None, rows: np.ndarray | None = None) -> None:
        """Record one batched step.

        Args:
            users: int (B,) population user indices.
            sessions: int (B,) session ids (any unique numbering per user).
            steps: int (B,) step within the session (before the step).
            candidates: int64 (B, N) catalog ids offered.
            result: The core's step result (``items`` is the slate as catalog ids).
            log_propensity: float (B,) log-probability of the slate under the ranker, or ``None``.
            rows: Only log these rows (e.g. active ones); default all.
        """
        sel = slice(None) if rows is None else rows
        rank = result.click_rank[sel]
        items = result.items[sel]
        clicked_item = np.where(rank >= 0, items[np.arange(len(rank)), np.maximum(rank, 0)], -1)
        lp = (np.full(len(rank), np.nan) if log_propensity is None else np.asarray(log_propensity)[sel])
        self._chunks.append({
            "user": np.asarray(users)[sel].copy(),
            "session": np.asarray(sessions)[sel].copy(),
            "step": np.asarray(steps)[sel].copy(),
            **({"candidates": np.asarray(candidates)[sel].copy(), "slate": items.copy()} if self.lists else {}),
            "log_propensity": lp.astype(np.float64),
            "click_rank": rank.copy(),
            "clicked_item": clicked_item,
            "purchase": result.purchases[sel].any(axis=1),
            "dwell": result.dwell[sel].sum(axis=1),
            "reward": result.reward[sel].copy(),
        })

    def __len__(self) -> int:
        return sum(len(c["user"]) for c in self._chunks)

    def to_frame(self) -> pd.DataFrame:
        """All logged rows as a DataFrame with :data:`ROLLOUT_COLUMNS` (list-valued ``candidates``/``slate``)."""
        if not self._chunks:
            return pd.DataFrame({c: [] for c in ROLLOUT_COLUMNS})
        cat = {k: np.concatenate([c[k] for c in self._chunks]) for k in self._chunks[0]}
        frame = pd.DataFrame({k: v for k, v in cat.items() if v.ndim == 1})
        if not self.lists:
            frame.insert(0, "population", self.population)
            return frame[[c for c in ROLLOUT_COLUMNS if c not in ("candidates", "slate")]]
        frame["candidates"] = list(cat["candidates"])
        frame["slate"] = list(cat["slate"])
        frame.insert(0, "population", self.population)
        return frame[list(ROLLOUT_COLUMNS)]

    def write_parquet(self, path: str | Path) -> Path:
        """Write the log to Parquet atomically and return the path."""
        return write_rollout_log(self.to_frame(), path)


def write_rollout_log(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write a rollout log frame to Parquet atomically (never a half-written file).

    Args:
        frame: Rows with :data:`ROLLOUT_COLUMNS`.
        path: Destination ``.parquet`` file.

    Returns:
        The path.
    """
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), buf)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def read_rollout_log(path: str | Path) -> pd.DataFrame:
    """Read a rollout log written by :func:`write_rollout_log`.

    Raises:
        FileNotFoundError: If missing.
        ValueError: If it lacks the log columns.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"rollout log {p} does not exist")
    frame = pq.read_table(p).to_pandas()
    missing = [c for c in ROLLOUT_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"{p} is not a recfeed rollout log: missing column(s) {missing}")
    return frame
