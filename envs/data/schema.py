"""The interaction-log schema: event and item columns, CF weights, the timestamp range, read errors and reports.

The schema in full is in docs/calibration.md ("The log schema").
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

#: Known event names, in the order of the ``event`` categorical.
EVENTS: tuple[str, ...] = ("view", "click", "cart", "purchase", "rating")
EVENT_DTYPE = pd.CategoricalDtype(list(EVENTS))
EVENT_COLUMNS: tuple[str, ...] = ("user", "item", "event", "timestamp", "value")
ITEM_COLUMNS: tuple[str, ...] = ("id", "text", "category", "price")

#: CF weight of one implicit event (ratings are weighted by value, see :meth:`InteractionLog.interaction_weights`).
EVENT_WEIGHTS: dict[str, float] = {"view": 0.25, "click": 1.0, "cart": 2.0, "purchase": 4.0}
#: A rating at or above this counts as positive feedback.
POSITIVE_RATING = 4.0

OnBadRows = Literal["error", "skip"]

_MAX_EXAMPLES = 5
#: Epoch seconds a timestamp may take: what pandas' datetime64[ns] represents (1677-09-21 to 2262-04-11 UTC).
TIMESTAMP_MIN = -(-pd.Timestamp.min.value // 10**9)
TIMESTAMP_MAX = pd.Timestamp.max.value // 10**9
#: Floats hold every integer up to this exactly; a float id beyond it is not the id that was written.
_EXACT_FLOAT_INT = 2.0**53


def option_hint(name: str, value: str) -> str:
    """How to ask for a reader option, as a Python keyword and as a ``python -m envs.calibrate`` flag.

    Args:
        name: The keyword (``on_bad_rows``, ``on_missing_items``, ``encoding``).
        value: The value to suggest.

    Returns:
        e.g. ``"on_bad_rows='skip' or, on the command line, --on-bad-rows skip"``.
    """
    return f"{name}={value!r} or, on the command line, --{name.replace('_', '-')} {value}"


class LogFormatError(ValueError):
    """A log or item file that cannot be read as the schema says.

    Attributes:
        path: The file (None when the data did not come from a file).
        row: 1-based row number as a person counts it in the file (None for file-level problems).
        column: The column concerned (None when not about one column).
        reason: The bare explanation, without the location prefix.
    """

    def __init__(self, reason: str, *, path: str | Path | None = None, row: int | None = None, column=None):
        self.path = None if path is None else str(path)
        self.row = None if row is None else int(row)
        self.column = column
        self.reason = reason
        where = [p for p in (self.path, None if row is None else f"row {self.row}") if p]
        if column is not None:
            where.append(f"column {column!r}")
        super().__init__(f"{', '.join(where)}: {reason}" if where else reason)


@dataclass
class ReadReport:
    """What a reader kept and what it skipped (``on_bad_rows="skip"``), per reason.

    Attributes:
        path: The file read.
        rows: Data rows (records) found in the file, bad ones included.
        kept: Rows returned.
        skipped: Reason -> number of rows skipped for it.
        examples: Reason -> up to five example row numbers.
    """

    path: str
    rows: int = 0
    kept: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[int]] = field(default_factory=dict)

    @property
    def n_skipped(self) -> int:
        """Total rows skipped."""
        return int(sum(self.skipped.values()))

    def add(self, reason: str, rows: Iterable[int] | np.ndarray) -> None:
        """Count skipped rows.

        Args:
            reason: Why they were skipped (the key in :attr:`skipped`).
            rows: int (n,) their row numbers.
        """
        rows = np.asarray(rows, dtype=np.int64).ravel()
        if rows.size == 0:
            return
        self.skipped[reason] = self.skipped.get(reason, 0) + int(rows.size)
        ex = self.examples.setdefault(reason, [])
        ex.extend(int(r) for r in rows[: max(0, _MAX_EXAMPLES - len(ex))])

    def __str__(self) -> str:
        head = f"{self.path}: kept {self.kept} of {self.rows} rows"
        if not self.skipped:
            return head
        parts = [
            f"{n} {reason} (e.g. row {', '.join(map(str, self.examples.get(reason, [])))})"
            for reason, n in self.skipped.items()
        ]
        return f"{head}; skipped {self.n_skipped}: " + "; ".join(parts)

    def to_markdown(self) -> str:
        """A Markdown table of the skips (one line when nothing was skipped)."""
        if not self.skipped:
            return f"`{self.path}`: kept all {self.kept} rows."
        lines = [
            f"`{self.path}`: kept {self.kept} of {self.rows} rows.",
            "",
            "| skipped rows | reason | example rows |",
            "|---:|---|---|",
        ]
        lines += [
            f"| {n} | {reason} | {', '.join(map(str, self.examples.get(reason, [])))} |"
            for reason, n in self.skipped.items()
        ]
        return "\n".join(lines)



def _check_on_bad(on_bad_rows: str) -> None:
    if on_bad_rows not in ("error", "skip"):
        raise ValueError(f"on_bad_rows must be 'error' or 'skip', got {on_bad_rows!r}")

