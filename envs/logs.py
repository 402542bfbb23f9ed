"""Real interaction logs: a documented schema, strict readers (CSV, Parquet, JSONL, MovieLens) and index maps.

Schema
------
**Events**, one row per interaction (:attr:`InteractionLog.events`):

=========  ===================  ==========================================================================
column     dtype                meaning
=========  ===================  ==========================================================================
user       str                  user id as written in the source
item       str                  item id; must exist in the item table
event      category of EVENTS   ``view``, ``click``, ``cart``, ``purchase`` or ``rating``
timestamp  int64                Unix epoch seconds, UTC
value      float64              dwell seconds (view / click), the rating (rating), else NaN
=========  ===================  ==========================================================================

The frame's index is the 1-based row number of the event in its source file (named ``row``), so later
messages can point back at the file.

**Items** (:attr:`InteractionLog.items`): ``id`` (str), ``text`` (str, may be empty until preprocessing fills
it), ``category`` (str or NA), ``price`` (float64 or NaN). Row order defines the item index ``0..M-1``.

Readers
-------
:func:`read_events` / :func:`read_items` pick the format by extension: ``.csv``, ``.parquet`` / ``.pq``,
``.jsonl`` / ``.ndjson``. Validation is strict:

* required columns present (events: user, item, event, timestamp; items: id, text), extra columns ignored;
* event names known (case-insensitive, surrounding blanks ignored; ``event_aliases`` maps others);
* timestamps are integer epoch seconds (fractions truncated) or ISO-8601 strings (a naive time is UTC), within
  the dates pandas can hold (:data:`TIMESTAMP_MIN` .. :data:`TIMESTAMP_MAX`, 1677-09-21 to 2262-04-11): an
  infinite, overflowing or out-of-range timestamp is a bad row, never wrapped or clipped;
* values and prices numeric (empty, ``NA``, ``N/A``, ``null``, ``None``, ``NaN`` mean missing; ids are missing only
  when empty or null);
* ids are kept as written (integers of any size and sign too); a float id that cannot be exact (infinite, or
  beyond 2**53) is a bad row;
* bytes decode in the given encoding (UTF-8 by default, a BOM is ignored).

Every problem is a :class:`LogFormatError` naming the file, the row (as a person counts lines in the file:
the CSV header is row 1, the first data line row 2; JSONL line numbers; Parquet data rows from 1) and the
column. With ``on_bad_rows="skip"`` bad rows are dropped instead and counted, per reason with example rows,
in a :class:`ReadReport` (also logged at WARNING): never silently. Empty files are always an error.

CSV rows with fewer fields than the header get their missing trailing fields empty (pandas' rule), which is
fine for the optional ``value`` column and an error for a required one; rows with more fields are malformed.

MovieLens
---------
:func:`read_movielens` reads ml-latest-small (and the other ml-latest / ml-25m style directories:
``ratings.csv``, ``movies.csv``, optional ``tags.csv``; ``links.csv`` is ignored) or ml-100k (``u.data``,
``u.item``). Every rating is a ``rating`` event with ``value`` = the rating; item text comes from
:func:`movielens_item_text`; category = the first genre; price NaN.

Weights for collaborative filtering
-----------------------------------
:meth:`InteractionLog.interaction_weights` turns events into unique (user, item, weight) triples for
:func:`envs.cf.fit_als`: implicit events weigh :data:`EVENT_WEIGHTS` (purchase > cart > click > view), a rating
``r >= rating_threshold`` (default :data:`POSITIVE_RATING` = 4) weighs ``1 + (r - threshold)`` and a lower
rating is left out; several events on one pair add up. ``mode="binary"`` gives weight 1 to every pair with
any event (what the ranking baselines in :mod:`envs.cf_eval` use).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import re
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

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

_FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl"}
_MISSING_TOKENS = ("", "na", "n/a", "nan", "null", "none")
_MISSING_SPELLINGS = tuple({v for t in _MISSING_TOKENS for v in (t, t.upper(), t.capitalize())} | {"NaN", "N/A"})
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


# --------------------------------------------------------------------------------------------------------------
# Raw tables: values as found in the file plus the row number of each record
# --------------------------------------------------------------------------------------------------------------


@dataclass
class _Raw:
    """A file's records before validation.

    Attributes:
        frame: (n, columns) raw values (strings for text formats).
        path: The file.
        rows: int64 (n,) 1-based row numbers of the records.
        n_fields: int64 (n,) fields per record (CSV only; None elsewhere).
        expected_fields: Fields per record the header announces (CSV only).
        approximate: True when row numbers could not be recovered exactly (then they are record counts).
    """

    frame: pd.DataFrame
    path: str
    rows: np.ndarray
    n_fields: np.ndarray | None = None
    expected_fields: int | None = None
    approximate: bool = False


def _check_on_bad(on_bad_rows: str) -> None:
    if on_bad_rows not in ("error", "skip"):
        raise ValueError(f"on_bad_rows must be 'error' or 'skip', got {on_bad_rows!r}")


def _file_format(path: Path) -> str:
    fmt = _FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise LogFormatError(
            f"unknown file extension {path.suffix!r}; use one of {', '.join(sorted(_FORMATS))}", path=path
        )
    return fmt


def _read_bytes(path: Path) -> bytes:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    data = path.read_bytes()
    if not data.strip():
        raise LogFormatError("the file is empty", path=path)
    return data


def _is_blank(c: np.ndarray) -> np.ndarray:
    return (c == 32) | ((c >= 9) & (c <= 13))


def _solid_edge(b: np.ndarray, starts: np.ndarray, ends: np.ndarray, forward: bool) -> np.ndarray:
    """First (or last) non-blank byte of each line, -1 for a blank line.

    Walks all lines one byte at a time in lock-step (lines rarely have more than a ``\\r`` or an indent to
    skip); the few lines still undecided after 16 steps are finished one by one.

    Args:
        b: uint8 (N,) the bytes.
        starts: int64 (L,) line starts.
        ends: int64 (L,) line ends (exclusive).
        forward: Search from the start (True) or from the end.

    Returns:
        int16 (L,).
    """
    out = np.full(starts.size, -1, dtype=np.int16)
    pos = starts.copy() if forward else ends - 1
    live = np.flatnonzero(starts < ends)
    for _ in range(16):
        if live.size == 0:
            return out
        c = b[pos[live]]
        solid = ~_is_blank(c)
        out[live[solid]] = c[solid]
        live = live[~solid]
        pos[live] += 1 if forward else -1
        live = live[(pos[live] < ends[live]) if forward else (pos[live] >= starts[live])]
    for i in live.tolist():  # long runs of blanks only
        seg = b[starts[i] : ends[i]]
        hit = np.flatnonzero(~_is_blank(seg))
        if hit.size:
            out[i] = seg[hit[0] if forward else hit[-1]]
    return out


def _scan_lines(text: str, sep: str | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per physical line (as ``text.split("\\n")`` cuts them), vectorised over the UTF-8 bytes.

    Newlines and an ASCII separator never occur inside a multi-byte UTF-8 character, so bytes suffice.

    Args:
        text: The decoded file.
        sep: A one-character ASCII separator to count, or None.

    Returns:
        (nonblank bool (L,), n_sep int64 (L,), first int16 (L,), last int16 (L,)): whether the line holds more than
        ASCII blanks, how many separators it holds, and its first / last non-blank byte (-1 for a blank line).
    """
    b = np.frombuffer(text.encode("utf-8", "surrogatepass"), dtype=np.uint8)
    nl = np.flatnonzero(b == 10)
    starts = np.r_[0, nl + 1]
    ends = np.r_[nl, b.size]  # exclusive
    first = _solid_edge(b, starts, ends, forward=True)
    last = _solid_edge(b, starts, ends, forward=False)
    nonblank = first >= 0
    n_sep = np.zeros(starts.size, dtype=np.int64)
    if sep is not None:
        at = np.flatnonzero(b == ord(sep))
        n_sep = np.searchsorted(at, ends, side="left") - np.searchsorted(at, starts, side="left")
    return nonblank, n_sep.astype(np.int64), first, last


def _decode(
    data: bytes,
    path: Path,
    encoding: str,
    on_bad_rows: OnBadRows,
    report: ReadReport,
    sep: str | None = None,
    names: Sequence[str] | None = None,
) -> str:
    """Decode bytes; undecodable lines are an error naming row and column, or (skip) blanked and counted."""
    enc = "utf-8-sig" if encoding.lower().replace("_", "-") in ("utf-8", "utf8") else encoding
    try:
        return data.decode(enc)
    except UnicodeDecodeError as err:
        bad_line = data.count(b"\n", 0, err.start) + 1
        first_bad = err
    except LookupError as err:
        raise ValueError(f"unknown encoding {encoding!r}") from err
    text = data.decode(enc, errors="surrogateescape")
    lines = text.split("\n")
    if on_bad_rows == "error" or bad_line == 1:
        column = None
        if sep is not None:  # best effort: the field that holds the bad byte
            header = names if names is not None else [c.strip() for c in lines[0].split(sep)]
            fields = lines[bad_line - 1].split(sep)
            hit = [j for j, f in enumerate(fields) if re.search("[\udc80-\udcff]", f)]
            if hit and hit[0] < len(header):
                column = header[hit[0]]
        raise LogFormatError(
            f"bytes that are not valid {encoding} (byte 0x{data[first_bad.start]:02x}); re-encode the file as "
            f"UTF-8, or pass the encoding it uses, e.g. {option_hint('encoding', 'latin-1')}"
            + ("" if bad_line == 1 else f"; or pass {option_hint('on_bad_rows', 'skip')}, to drop such rows"),
            path=path,
            row=bad_line,
            column=column,
        )
    codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    newlines = np.flatnonzero(codes == 10)
    bad_chars = np.flatnonzero((codes >= 0xDC80) & (codes <= 0xDCFF))
    bad = np.unique(np.searchsorted(newlines, bad_chars, side="left"))  # 0-based line index
    for i in bad.tolist():  # only the bad lines
        lines[i] = ""
    report.add(f"invalid {encoding} bytes", bad + 1)
    return "\n".join(lines)


def _read_delimited(
    path: Path,
    *,
    sep: str = ",",
    names: Sequence[str] | None = None,
    encoding: str = "utf-8",
    quoting: int = csv.QUOTE_MINIMAL,
    on_bad_rows: OnBadRows,
    report: ReadReport,
) -> _Raw:
    """Read delimited text (a header line unless ``names`` is given) into strings with exact row numbers."""
    data = _read_bytes(path)
    text = _decode(data, path, encoding, on_bad_rows, report, sep=sep, names=names)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", pd.errors.ParserWarning)
        try:
            frame = pd.read_csv(
                io.StringIO(text),
                sep=sep,
                header=None if names is not None else 0,
                names=list(names) if names is not None else None,
                dtype=str,
                keep_default_na=False,
                na_filter=False,
                on_bad_lines="warn",
                index_col=False,
                quoting=quoting,
                engine="c",
            )
        except pd.errors.EmptyDataError as err:
            raise LogFormatError("the file has no header and no rows", path=path) from err
        except (pd.errors.ParserError, ValueError) as err:
            raise LogFormatError(f"cannot be parsed as delimited text ({err})", path=path) from err
    frame.columns = [str(c).strip() for c in frame.columns]
    expected = len(frame.columns)
    header = names is None
    had_bad = any("Skipping line" in str(w.message) for w in caught)
    # Row numbers: vectorised when no record can span lines, else one csv pass
    approximate = False
    if len(sep) == 1 and sep.isascii() and (quoting == csv.QUOTE_NONE or '"' not in text):
        nonblank, n_sep, _, _ = _scan_lines(text, sep)
        starts = np.flatnonzero(nonblank).astype(np.int64) + 1
        counts = n_sep[nonblank] + 1
    else:
        starts, counts, approximate = _csv_layout(text, sep, quoting)
    if header:
        starts, counts = starts[1:], counts[1:]
    too_many = counts > expected
    if not approximate and int((~too_many).sum()) != len(frame):
        approximate = True
    if approximate:
        rows = np.arange(len(frame), dtype=np.int64) + (2 if header else 1)
        kept_counts = None
    else:
        rows, kept_counts = starts[~too_many], counts[~too_many]
    if had_bad or too_many.any():
        bad_rows = starts[too_many]
        if on_bad_rows == "error":
            first = int(bad_rows[0]) if bad_rows.size else None
            saw = int(counts[too_many][0]) if bad_rows.size else "more"
            raise LogFormatError(
                f"malformed row: expected {expected} fields, saw {saw}"
                f" ({int(too_many.sum())} such rows; pass {option_hint('on_bad_rows', 'skip')}, to drop and count "
                "them)",
                path=path,
                row=first,
            )
        report.add(f"malformed row (more than {expected} fields)", bad_rows)
    if len(frame) == 0 and report.n_skipped == 0:
        raise LogFormatError("the file has a header but no data rows", path=path)
    return _Raw(frame, str(path), rows, kept_counts, expected, approximate)


def _csv_layout(text: str, sep: str, quoting: int) -> tuple[np.ndarray, np.ndarray, bool]:
    """Start line and field count of every non-blank record (quoted fields may span lines).

    Returns:
        (starts int64 (R,), counts int64 (R,), approximate): approximate is True when the csv module gave up.
    """
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=sep, quoting=quoting)
    starts: list[int] = []
    counts: list[int] = []
    prev = 0
    try:
        for rec in reader:
            start, prev = prev + 1, reader.line_num
            if not rec or (len(rec) == 1 and not rec[0].strip()):
                continue
            starts.append(start)
            counts.append(len(rec))
    except csv.Error:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), True
    return np.asarray(starts, np.int64), np.asarray(counts, np.int64), False


def _read_jsonl(path: Path, *, encoding: str, on_bad_rows: OnBadRows, report: ReadReport) -> _Raw:
    """Read one JSON object per line; blank lines are ignored."""
    data = _read_bytes(path)
    text = _decode(data, path, encoding, on_bad_rows, report)
    nonblank, _, first_byte, last_byte = _scan_lines(text)
    looks = (first_byte == ord("{")) & (last_byte == ord("}"))
    malformed = nonblank & ~looks
    good = nonblank & looks
    frame = None
    good_idx = np.flatnonzero(good)
    if not malformed.any() and good_idx.size:
        import pyarrow as pa
        import pyarrow.json as pj

        try:
            table = pj.read_json(io.BytesIO(text.encode("utf-8")))  # blank lines are ignored
            frame = table.to_pandas() if table.num_rows == good_idx.size else None
        except (pa.ArrowInvalid, UnicodeEncodeError):
            frame = None
        if frame is not None and any(_rounded_ints(frame[c]) for c in frame.columns):
            frame = None  # Arrow read integers beyond 2**53 as doubles: json keeps them exact
    if frame is None:  # slow path: find the exact bad lines
        lines = text.split("\n")
        records: list[dict] = []
        ok = np.zeros(len(lines), dtype=bool)
        for i in good_idx.tolist():
            try:
                rec = json.loads(lines[i])
            except ValueError:
                continue
            if isinstance(rec, dict):
                records.append(rec)
                ok[i] = True
        malformed = nonblank & ~ok
        good_idx = np.flatnonzero(ok)
        frame = pd.DataFrame.from_records(records) if records else pd.DataFrame()
    if malformed.any():
        bad_rows = np.flatnonzero(malformed) + 1
        if on_bad_rows == "error":
            raise LogFormatError(
                f"malformed row: not a JSON object ({bad_rows.size} such lines; pass "
                f"{option_hint('on_bad_rows', 'skip')}, to drop and count them)",
                path=path,
                row=int(bad_rows[0]),
            )
        report.add("malformed row (not a JSON object)", bad_rows)
    if len(frame) == 0 and report.n_skipped == 0:
        raise LogFormatError("the file has no JSON rows", path=path)
    frame.columns = [str(c).strip() for c in frame.columns]
    return _Raw(frame.reset_index(drop=True), str(path), good_idx.astype(np.int64) + 1)


def _rounded_ints(s: pd.Series) -> bool:
    """Whether a float column holds integral values beyond 2**53 (integers a JSON parser may have rounded)."""
    if not pd.api.types.is_float_dtype(s.dtype):
        return False
    v = s.to_numpy(dtype=np.float64, na_value=np.nan)
    with np.errstate(invalid="ignore"):
        return bool((np.isfinite(v) & (np.abs(v) >= _EXACT_FLOAT_INT) & (np.floor(v) == v)).any())


def _read_parquet(path: Path) -> _Raw:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise LogFormatError("the file is empty", path=path)
    try:
        frame = pd.read_parquet(path)
    except Exception as err:  # pyarrow raises several types for corrupt files
        raise LogFormatError(f"cannot be read as Parquet ({type(err).__name__}: {err})", path=path) from err
    if not isinstance(frame.index, pd.RangeIndex):
        frame = frame.reset_index()
    if len(frame) == 0:
        raise LogFormatError("the file has no rows", path=path)
    frame.columns = [str(c).strip() for c in frame.columns]
    return _Raw(frame.reset_index(drop=True), str(path), np.arange(1, len(frame) + 1, dtype=np.int64))


def _read_raw(path: Path, *, encoding: str, on_bad_rows: OnBadRows, report: ReadReport) -> _Raw:
    fmt = _file_format(path)
    if fmt == "csv":
        return _read_delimited(path, encoding=encoding, on_bad_rows=on_bad_rows, report=report)
    if fmt == "jsonl":
        return _read_jsonl(path, encoding=encoding, on_bad_rows=on_bad_rows, report=report)
    return _read_parquet(path)


# --------------------------------------------------------------------------------------------------------------
# Column validation (vectorised); each returns parsed values and bad-row masks
# --------------------------------------------------------------------------------------------------------------


@dataclass
class _Check:
    column: str
    reason: str  # report key
    bad: np.ndarray  # bool (n,)
    message: Callable[[int], str]  # position -> explanation


def _require_columns(raw: _Raw, required: Sequence[str], what: str) -> None:
    missing = [c for c in required if c not in raw.frame.columns]
    if missing:
        raise LogFormatError(
            f"missing required column{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))} for {what}; "
            f"found columns {list(map(str, raw.frame.columns))}",
            path=raw.path,
            row=1 if raw.n_fields is not None else None,
            column=missing[0],
        )


def _nonscalar(s: pd.Series) -> np.ndarray:
    if s.dtype != object:
        return np.zeros(len(s), dtype=bool)
    return s.map(lambda v: isinstance(v, (dict, list, tuple, set))).to_numpy(dtype=bool)


def _object_floats(s: pd.Series) -> np.ndarray:
    """bool (n,) cells of an object column that hold a Python / numpy float (mixed JSON columns)."""
    if s.dtype != object:
        return np.zeros(len(s), dtype=bool)
    return np.fromiter((isinstance(v, (float, np.floating)) for v in s.to_numpy()), dtype=bool, count=len(s))


def _as_text(s: pd.Series) -> pd.Series:
    """Strings, stripped; NA stays NA. Integral floats (below 2**53) print without '.0', in float and mixed columns."""
    if pd.api.types.is_float_dtype(s.dtype):
        v = s.to_numpy(dtype=np.float64)
        integral = np.isfinite(v) & (np.floor(v) == v) & (np.abs(v) < _EXACT_FLOAT_INT)
        out = s.astype("str")
        if integral.any():
            out[integral] = pd.Series(v[integral].astype(np.int64), index=s.index[integral]).astype("str")
        return out.where(~np.isnan(v))
    floats = _object_floats(s)
    if floats.any():
        out = s.copy()
        out[floats] = _as_text(pd.Series(s[floats].to_numpy(dtype=np.float64), index=s.index[floats]))
        s = out
    return s.astype("str").str.strip()


def _missing_mask(text: pd.Series) -> np.ndarray:
    return (text.isna() | text.isin(_MISSING_SPELLINGS)).to_numpy(dtype=bool)


def _id_column(s: pd.Series) -> tuple[pd.Series, np.ndarray]:
    """Ids as strings; only an empty cell or a null is missing (an id may well be "NA" or "None")."""
    text = _as_text(s)
    return text, (text.isna() | (text == "")).to_numpy(dtype=bool) | _nonscalar(s)


def _inexact_ids(s: pd.Series) -> np.ndarray:
    """bool (n,) float ids that cannot be the id as written: infinite, or integral beyond 2**53 (rounded).

    Integer, string and negative ids are kept as written (signed 64-bit hashed ids are common); NaN is missing.
    """
    if pd.api.types.is_float_dtype(s.dtype):
        v = s.to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        floats = _object_floats(s)
        if not floats.any():
            return np.zeros(len(s), dtype=bool)
        v = np.full(len(s), np.nan)
        v[floats] = s[floats].to_numpy(dtype=np.float64)
    with np.errstate(invalid="ignore"):
        return np.isinf(v) | (np.abs(v) >= _EXACT_FLOAT_INT)


def _to_float(text: pd.Series, missing: np.ndarray) -> np.ndarray:
    """float64 (n,) of stripped strings; NaN where missing or not a number (a fresh, writable array)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    cleaned = text.where(~missing)
    try:  # Arrow's parser is much faster than pd.to_numeric, and strict: any bad cell raises
        return pc.cast(pa.array(cleaned, type=pa.string()), pa.float64()).to_numpy(zero_copy_only=False).copy()
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError):
        return pd.to_numeric(cleaned, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan, copy=True)


def _float_column(s: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Floats; missing -> NaN (not bad); non-numeric or infinite -> bad."""
    if pd.api.types.is_bool_dtype(s.dtype):
        return np.full(len(s), np.nan), np.ones(len(s), dtype=bool)
    if pd.api.types.is_numeric_dtype(s.dtype):
        v = s.to_numpy(dtype=np.float64, na_value=np.nan)
        return v, np.isinf(v)
    text = s.astype("str").str.strip()
    missing = _missing_mask(text)
    v = _to_float(text, missing)
    bad = (~missing & ~np.isfinite(v)) | _nonscalar(s)
    v[bad] = np.nan
    return v, bad


def _datetime_seconds(s: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Epoch seconds (floored) of a datetime column of any unit, naive (UTC) or tz-aware, without overflow.

    Returns:
        (seconds int64 (n,), 0 where missing; missing bool (n,)).
    """
    if isinstance(s.dtype, pd.DatetimeTZDtype):
        s = s.dt.tz_convert("UTC").dt.tz_localize(None)
    vals = s.to_numpy()  # datetime64[unit], NaT for missing
    unit, count = np.datetime_data(vals.dtype)
    missing = np.isnat(vals)
    per = max(int(np.timedelta64(1, "s") // np.timedelta64(count, unit)), 1)
    secs = np.where(missing, 0, vals.view(np.int64) // per)
    return secs.astype(np.int64), missing


def _timestamp_column(s: pd.Series) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Epoch seconds from integers / floats (floored) / datetimes / ISO-8601 strings.

    A timestamp must lie in [:data:`TIMESTAMP_MIN`, :data:`TIMESTAMP_MAX`] (what pandas can represent as a date):
    an infinite, overflowing or out-of-range value is never wrapped or clipped.

    Returns:
        (seconds int64 (n,), missing bool (n,), unparsable bool (n,), out_of_range bool (n,)); seconds are 0 where
        a row is missing, unparsable or out of range.
    """
    n = len(s)
    out = np.zeros(n, dtype=np.int64)
    no = np.zeros(n, dtype=bool)
    if isinstance(s.dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_dtype(s.dtype):
        secs, missing = _datetime_seconds(s)
        far = ~missing & ((secs < TIMESTAMP_MIN) | (secs > TIMESTAMP_MAX))
        ok = ~missing & ~far
        out[ok] = secs[ok]
        return out, missing, no, far
    if pd.api.types.is_integer_dtype(s.dtype):
        missing = s.isna().to_numpy()
        vals = s[~missing].to_numpy()
        inside = (vals.astype(np.float64) >= TIMESTAMP_MIN) & (vals.astype(np.float64) <= TIMESTAMP_MAX)
        idx = np.flatnonzero(~missing)
        out[idx[inside]] = vals[inside].astype(np.int64)
        far = np.zeros(n, dtype=bool)
        far[idx[~inside]] = True
        return out, missing, no, far
    if pd.api.types.is_float_dtype(s.dtype):
        text = None
        numeric = s.to_numpy(dtype=np.float64, na_value=np.nan)
        missing = np.isnan(numeric)
        rest = np.zeros(n, dtype=bool)
    else:
        text = s.astype("str").str.strip()
        missing = _missing_mask(text) | _nonscalar(s)
        numeric = _to_float(text, missing)
        rest = ~missing & np.isnan(numeric)
    is_num = ~missing & ~rest
    with np.errstate(invalid="ignore"):
        far = is_num & ~((numeric >= TIMESTAMP_MIN) & (numeric < TIMESTAMP_MAX + 1))  # inf, overflow, out of range
    ok_num = is_num & ~far
    out[ok_num] = np.floor(numeric[ok_num]).astype(np.int64)
    bad = np.zeros(n, dtype=bool)
    if rest.any():
        idx = np.flatnonzero(rest)
        parsed = pd.to_datetime(text[rest], format="ISO8601", utc=True, errors="coerce")
        secs, nat = _datetime_seconds(parsed)
        inside = ~nat & (secs >= TIMESTAMP_MIN) & (secs <= TIMESTAMP_MAX)
        out[idx[inside]] = secs[inside]
        far[idx[~nat & ~inside]] = True
        for j in idx[nat].tolist():  # a date pandas could not hold at the column's resolution, or not a date
            far[j] = _beyond_datetime_range(text.iloc[j])
            bad[j] = not far[j]
    return out, missing, bad, far


def _beyond_datetime_range(text: str) -> bool:
    """Whether an ISO-8601 string is a valid date outside [TIMESTAMP_MIN, TIMESTAMP_MAX] (e.g. year 3000)."""
    import datetime as dt

    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return False
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    secs = (when - dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)).total_seconds()
    return not TIMESTAMP_MIN <= secs < TIMESTAMP_MAX + 1


def _resolve(raw: _Raw, checks: list[_Check], on_bad_rows: OnBadRows, report: ReadReport) -> np.ndarray:
    """Apply bad-row masks: raise for the first bad row, or drop and count them.

    Returns:
        bool (n,) rows to keep.
    """
    n = len(raw.frame)
    any_bad = np.zeros(n, dtype=bool)
    for c in checks:
        any_bad |= c.bad
    if not any_bad.any():
        return ~any_bad
    if on_bad_rows == "error":
        first = int(np.flatnonzero(any_bad)[0])
        check = next(c for c in checks if c.bad[first])
        msg = check.message(first)
        if raw.n_fields is not None and raw.expected_fields and raw.n_fields[first] < raw.expected_fields:
            msg += f" (the row has {raw.n_fields[first]} fields, the header {raw.expected_fields})"
        total = int(any_bad.sum())
        more = f"; {total} bad rows in all" if total > 1 else ""
        raise LogFormatError(
            f"{msg}{more} (pass {option_hint('on_bad_rows', 'skip')}, to drop and count them)"
            + (" [row number approximate]" if raw.approximate else ""),
            path=raw.path,
            row=int(raw.rows[first]),
            column=check.column,
        )
    seen = np.zeros(n, dtype=bool)
    for c in checks:
        new = c.bad & ~seen
        report.add(c.reason, raw.rows[new])
        seen |= c.bad
    return ~any_bad


def _finish(report: ReadReport, raw: _Raw, kept: int) -> None:
    report.rows = kept + report.n_skipped
    report.kept = kept
    if report.skipped:
        logger.warning("%s", report)
    if kept == 0:
        raise LogFormatError(f"no valid rows left ({report})", path=raw.path)


def _plain(x: object) -> object:
    """A cell as it reads in a message: numpy scalars as Python numbers (``inf``, not ``np.float64(inf)``)."""
    if isinstance(x, pd.Timestamp):
        return x.isoformat()
    return x.item() if isinstance(x, np.generic) else x


def _out_of_range_message(x: object) -> str:
    msg = (f"timestamp {_plain(x)!r} is out of range: epoch seconds must be finite and within [{TIMESTAMP_MIN}, "
           f"{TIMESTAMP_MAX}] (1677-09-21 to 2262-04-11 UTC, the dates pandas can hold)")
    try:
        v = float(_plain(x))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return msg
    return msg + ("; it looks like milliseconds" if TIMESTAMP_MIN <= v / 1000 <= TIMESTAMP_MAX else "")


def _inexact_message(what: str, x: object) -> str:
    return (f"{what} id {_plain(x)!r} is a float that cannot be an exact id (infinite, or beyond 2**53 where floats "
            "round); write ids as strings or integers")


def _validate_events(
    raw: _Raw, on_bad_rows: OnBadRows, report: ReadReport, event_aliases: Mapping[str, str] | None = None
) -> pd.DataFrame:
    """Raw records -> the events schema (index = row numbers)."""
    _require_columns(raw, ("user", "item", "event", "timestamp"), "events")
    df = raw.frame
    user, bad_user = _id_column(df["user"])
    item, bad_item = _id_column(df["item"])
    inexact_user = _inexact_ids(df["user"])
    inexact_item = _inexact_ids(df["item"])
    ev_raw = _as_text(df["event"])
    ev = ev_raw.str.lower()
    if event_aliases:
        ev = ev.replace({k.lower(): v for k, v in event_aliases.items()})
    miss_event = _missing_mask(ev_raw)
    unknown = ~miss_event & ~ev.isin(EVENTS).to_numpy(dtype=bool)
    ts, miss_ts, bad_ts, far_ts = _timestamp_column(df["timestamp"])
    if "value" in df.columns:
        value, bad_value = _float_column(df["value"])
    else:
        value, bad_value = np.full(len(df), np.nan), np.zeros(len(df), dtype=bool)
    known = ", ".join(EVENTS)
    checks = [
        _Check("user", "missing user id", bad_user, lambda i: "missing user id"),
        _Check("item", "missing item id", bad_item, lambda i: "missing item id"),
        _Check("user", "inexact user id", inexact_user, lambda i: _inexact_message("user", df["user"].iloc[i])),
        _Check("item", "inexact item id", inexact_item, lambda i: _inexact_message("item", df["item"].iloc[i])),
        _Check("event", "missing event", miss_event, lambda i: "missing event name"),
        _Check(
            "event",
            "unknown event",
            unknown,
            lambda i: f"unknown event {df['event'].iloc[i]!r}; known events: {known}",
        ),
        _Check("timestamp", "missing timestamp", miss_ts, lambda i: "missing timestamp"),
        _Check(
            "timestamp",
            "bad timestamp",
            bad_ts,
            lambda i: f"timestamp {df['timestamp'].iloc[i]!r} is neither integer epoch seconds nor ISO-8601",
        ),
        _Check(
            "timestamp",
            "timestamp out of range",
            far_ts,
            lambda i: _out_of_range_message(df["timestamp"].iloc[i]),
        ),
        _Check("value", "non-numeric value", bad_value, lambda i: f"value {df['value'].iloc[i]!r} is not a number"),
    ]
    keep = _resolve(raw, checks, on_bad_rows, report)
    out = pd.DataFrame(
        {
            "user": user[keep].to_numpy(),
            "item": item[keep].to_numpy(),
            "event": pd.Categorical(ev[keep].to_numpy(), dtype=EVENT_DTYPE),
            "timestamp": ts[keep],
            "value": value[keep],
        },
        index=pd.Index(raw.rows[keep], name="row"),
    )
    out["user"] = out["user"].astype("str")
    out["item"] = out["item"].astype("str")
    _finish(report, raw, len(out))
    return out


def _validate_items(raw: _Raw, on_bad_rows: OnBadRows, report: ReadReport) -> pd.DataFrame:
    """Raw records -> the items schema (index = row numbers)."""
    _require_columns(raw, ("id", "text"), "items")
    df = raw.frame
    ids, bad_id = _id_column(df["id"])
    inexact = _inexact_ids(df["id"]) & ~bad_id
    dup = ids.duplicated(keep="first").to_numpy(dtype=bool) & ~bad_id & ~inexact
    text = _as_text(df["text"])
    text = text.where(~_missing_mask(text), "")
    nonscalar_text = _nonscalar(df["text"])
    if "category" in df.columns:
        cat = _as_text(df["category"])
        cat = cat.where(~_missing_mask(cat))
    else:
        cat = pd.Series(np.nan, index=df.index, dtype="str")
    if "price" in df.columns:
        price, bad_price = _float_column(df["price"])
    else:
        price, bad_price = np.full(len(df), np.nan), np.zeros(len(df), dtype=bool)
    negative = ~bad_price & (price < 0)
    first_row = pd.Series(raw.rows, index=df.index).groupby(ids.to_numpy()).transform("first").to_numpy()

    checks = [
        _Check("id", "missing item id", bad_id, lambda i: "missing item id"),
        _Check("id", "inexact item id", inexact, lambda i: _inexact_message("item", df["id"].iloc[i])),
        _Check(
            "id",
            "duplicate item id",
            dup,
            lambda i: f"duplicate item id {ids.iloc[i]!r} (first at row {int(first_row[i])})",
        ),
        _Check("text", "non-text item text", nonscalar_text, lambda i: "item text is not a string"),
        _Check("price", "non-numeric price", bad_price, lambda i: f"price {df['price'].iloc[i]!r} is not a number"),
        _Check("price", "negative price", negative, lambda i: f"price {price[i]} is negative"),
    ]
    keep = _resolve(raw, checks, on_bad_rows, report)
    out = pd.DataFrame(
        {
            "id": ids[keep].to_numpy(),
            "text": text[keep].to_numpy(),
            "category": cat[keep].to_numpy(),
            "price": price[keep],
        },
        index=pd.Index(raw.rows[keep], name="row"),
    )
    out["id"] = out["id"].astype("str")
    out["text"] = out["text"].astype("str")
    out["category"] = out["category"].astype("str")
    _finish(report, raw, len(out))
    return out


# --------------------------------------------------------------------------------------------------------------
# Public readers
# --------------------------------------------------------------------------------------------------------------


def read_events(
    path: str | Path,
    *,
    on_bad_rows: OnBadRows = "error",
    encoding: str = "utf-8",
    columns: Mapping[str, str] | None = None,
    event_aliases: Mapping[str, str] | None = None,
) -> tuple[pd.DataFrame, ReadReport]:
    """Read an events file (CSV, Parquet or JSONL by extension) into the events schema.

    Args:
        path: The file.
        on_bad_rows: ``"error"`` raises :class:`LogFormatError` at the first bad row; ``"skip"`` drops bad rows
            and counts them in the report.
        encoding: Text encoding of CSV / JSONL files.
        columns: Optional renaming, source column -> schema column (e.g. ``{"userId": "user"}``).
        event_aliases: Optional event renaming before the check, e.g. ``{"addtocart": "cart"}``.

    Returns:
        (events, report): events with columns :data:`EVENT_COLUMNS` indexed by row number, and what was skipped.

    Raises:
        LogFormatError: Empty file, unknown extension, missing column, undecodable bytes, malformed or invalid
            rows (the latter three only with ``on_bad_rows="error"``), or no valid row left.
        FileNotFoundError: No such file.
    """
    _check_on_bad(on_bad_rows)
    path = Path(path)
    report = ReadReport(str(path))
    raw = _read_raw(path, encoding=encoding, on_bad_rows=on_bad_rows, report=report)
    if columns:
        raw.frame = raw.frame.rename(columns=dict(columns))
    return _validate_events(raw, on_bad_rows, report, event_aliases), report


def read_items(
    path: str | Path,
    *,
    on_bad_rows: OnBadRows = "error",
    encoding: str = "utf-8",
    columns: Mapping[str, str] | None = None,
) -> tuple[pd.DataFrame, ReadReport]:
    """Read an item table (CSV, Parquet or JSONL by extension) into the items schema.

    Duplicate ids are bad rows (the first occurrence is kept when skipping); a negative price is a bad row;
    an empty text is kept as ``""`` (preprocessing fills it).

    Args:
        path: The file.
        on_bad_rows: ``"error"`` or ``"skip"`` (see :func:`read_events`).
        encoding: Text encoding of CSV / JSONL files.
        columns: Optional renaming, source column -> schema column.

    Returns:
        (items, report): items with columns :data:`ITEM_COLUMNS` indexed by row number, and what was skipped.

    Raises:
        LogFormatError: As :func:`read_events`.
        FileNotFoundError: No such file.
    """
    _check_on_bad(on_bad_rows)
    path = Path(path)
    report = ReadReport(str(path))
    raw = _read_raw(path, encoding=encoding, on_bad_rows=on_bad_rows, report=report)
    if columns:
        raw.frame = raw.frame.rename(columns=dict(columns))
    return _validate_items(raw, on_bad_rows, report), report


def check_item_references(
    events: pd.DataFrame,
    items: pd.DataFrame,
    *,
    on_missing_items: OnBadRows = "error",
    events_path: str | None = None,
    items_path: str | None = None,
    report: ReadReport | None = None,
) -> pd.DataFrame:
    """Events whose item is not in the item table: an error listing a few ids and the count, or a counted skip.

    Args:
        events: Events frame (schema columns; index = row numbers when read from a file).
        items: Items frame.
        on_missing_items: ``"error"`` or ``"skip"``.
        events_path: Named in messages.
        items_path: Named in messages.
        report: Where skips are counted (reason ``"item not in the item table"``).

    Returns:
        The events that reference known items.

    Raises:
        LogFormatError: With ``on_missing_items="error"`` when any event references an unknown item.
    """
    _check_on_bad(on_missing_items)
    missing = ~events["item"].isin(items["id"]).to_numpy(dtype=bool)
    if not missing.any():
        return events
    ids = pd.unique(events["item"].to_numpy()[missing])
    shown = ", ".join(map(repr, ids[:5].tolist())) + (", …" if ids.size > 5 else "")
    table = f" {items_path}" if items_path else ""
    msg = f"{int(missing.sum())} events reference {ids.size} item ids missing from the item table{table}: {shown}"
    rows = events.index.to_numpy()[missing] if events.index.name == "row" else np.flatnonzero(missing) + 1
    if on_missing_items == "error":
        raise LogFormatError(
            msg + f" (pass {option_hint('on_missing_items', 'skip')}, to drop and count them)",
            path=events_path,
            row=int(rows[0]),
            column="item",
        )
    if missing.all():
        raise LogFormatError(msg + "; no events left", path=events_path, row=int(rows[0]), column="item")
    if report is not None:
        report.add("item not in the item table", rows)
        report.kept -= int(missing.sum())
    logger.warning("skipped %s", msg)
    return events[~missing]


# --------------------------------------------------------------------------------------------------------------
# The log
# --------------------------------------------------------------------------------------------------------------


@dataclass(eq=False)
class InteractionLog:
    """Events plus the item table, with index maps user id <-> 0..U-1 and item id <-> 0..M-1.

    Treat instances as immutable: derive new logs with :meth:`with_events` / :meth:`reindexed`.

    Attributes:
        events: Events frame (:data:`EVENT_COLUMNS`, index = source row numbers).
        items: Items frame (:data:`ITEM_COLUMNS`); row order is the item index.
        user_ids: object (U,) user ids; position = user index. Every event's user is among them.
        source: Where the log came from (a spec or path), for reports.
        reports: What the readers skipped.
    """

    events: pd.DataFrame
    items: pd.DataFrame
    user_ids: np.ndarray
    source: str = ""
    reports: list[ReadReport] = field(default_factory=list)

    def __post_init__(self) -> None:
        missing = [c for c in EVENT_COLUMNS if c not in self.events.columns]
        missing += [c for c in ITEM_COLUMNS if c not in self.items.columns]
        if missing:
            raise ValueError(f"InteractionLog needs columns {missing}; use InteractionLog.from_frames to validate")
        if self.events["event"].dtype != EVENT_DTYPE:
            raise ValueError("events['event'] must have dtype envs.logs.EVENT_DTYPE; use InteractionLog.from_frames")
        self.user_ids = np.asarray(self.user_ids, dtype=object)
        if pd.Index(self.user_ids).has_duplicates:
            raise ValueError("user_ids has duplicates")
        if self.item_index_map.has_duplicates:
            raise ValueError("items['id'] has duplicates")
        if (self.user_index(self.events["user"]) < 0).any():
            raise ValueError("events reference users missing from user_ids")
        if (self.item_index(self.events["item"]) < 0).any():
            raise ValueError("events reference items missing from the item table; see check_item_references")

    @classmethod
    def from_frames(
        cls,
        events: pd.DataFrame,
        items: pd.DataFrame,
        *,
        on_bad_rows: OnBadRows = "error",
        on_missing_items: OnBadRows = "error",
        event_aliases: Mapping[str, str] | None = None,
        source: str = "",
        reports: list[ReadReport] | None = None,
    ) -> InteractionLog:
        """Validate in-memory frames as the readers validate files, then build the log.

        Args:
            events: Frame with at least user, item, event, timestamp (value optional), any dtypes the readers
                accept. Row numbers in messages are the frame index if it is named ``row``, else positions + 1.
            items: Frame with at least id, text (category, price optional).
            on_bad_rows: ``"error"`` or ``"skip"``.
            on_missing_items: ``"error"`` or ``"skip"`` for events whose item is not in ``items``.
            event_aliases: As in :func:`read_events`.
            source: Stored in :attr:`source`.
            reports: Earlier read reports to carry along.

        Returns:
            The log; users indexed in sorted id order.
        """
        _check_on_bad(on_bad_rows)
        ev_report, it_report = ReadReport("<events frame>"), ReadReport("<items frame>")

        def raw_of(frame: pd.DataFrame, name: str) -> _Raw:
            rows = frame.index.to_numpy() if frame.index.name == "row" else np.arange(1, len(frame) + 1)
            return _Raw(frame.reset_index(drop=True), name, np.asarray(rows, dtype=np.int64))

        if len(events) == 0:
            raise LogFormatError("no events", path="<events frame>")
        if len(items) == 0:
            raise LogFormatError("no items", path="<items frame>")
        ev = _validate_events(raw_of(events, "<events frame>"), on_bad_rows, ev_report, event_aliases)
        it = _validate_items(raw_of(items, "<items frame>"), on_bad_rows, it_report)
        ev = check_item_references(ev, it, on_missing_items=on_missing_items, report=ev_report)
        return cls.build(ev, it, source=source, reports=[*(reports or []), ev_report, it_report])

    @classmethod
    def build(
        cls, events: pd.DataFrame, items: pd.DataFrame, *, source: str = "", reports: list[ReadReport] | None = None
    ) -> InteractionLog:
        """Build from frames already in the schema (as the readers return them); users in sorted id order."""
        users = np.sort(np.asarray(pd.unique(events["user"].to_numpy()), dtype=object))
        return cls(events, items, users, source=source, reports=list(reports or []))

    # -- sizes and maps ----------------------------------------------------------------------------------------

    @property
    def n_users(self) -> int:
        """U."""
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        """M (the item table, including items without events)."""
        return len(self.items)

    @property
    def n_events(self) -> int:
        """E."""
        return len(self.events)

    @property
    def item_ids(self) -> np.ndarray:
        """object (M,) item ids; position = item index."""
        return self.items["id"].to_numpy(dtype=object)

    @cached_property
    def user_index_map(self) -> pd.Index:
        """pd.Index over user ids (``get_loc`` / ``get_indexer`` give user indices)."""
        return pd.Index(self.user_ids)

    @cached_property
    def item_index_map(self) -> pd.Index:
        """pd.Index over item ids."""
        return pd.Index(self.item_ids)

    def user_index(self, ids: Sequence[str] | pd.Series | np.ndarray) -> np.ndarray:
        """int64 (n,) user indices of ids (-1 for unknown)."""
        return self.user_index_map.get_indexer(pd.Index(np.asarray(ids, dtype=object))).astype(np.int64)

    def item_index(self, ids: Sequence[str] | pd.Series | np.ndarray) -> np.ndarray:
        """int64 (n,) item indices of ids (-1 for unknown)."""
        return self.item_index_map.get_indexer(pd.Index(np.asarray(ids, dtype=object))).astype(np.int64)

    def codes(self) -> tuple[np.ndarray, np.ndarray]:
        """(users int64 (E,), items int64 (E,)): each event's user and item index."""
        return self.user_index(self.events["user"]), self.item_index(self.events["item"])

    # -- derived logs ------------------------------------------------------------------------------------------

    def with_events(self, events: pd.DataFrame) -> InteractionLog:
        """A log over a subset of the events, sharing the user and item maps (e.g. a train / test split)."""
        return InteractionLog(events, self.items, self.user_ids, source=self.source, reports=self.reports)

    def reindexed(self) -> InteractionLog:
        """A log whose user map holds exactly the users with events (sorted); the item table is unchanged."""
        return InteractionLog.build(self.events, self.items, source=self.source, reports=self.reports)

    # -- CF input ----------------------------------------------------------------------------------------------

    def interaction_weights(
        self,
        mode: Literal["weighted", "binary"] = "weighted",
        event_weights: Mapping[str, float] | None = None,
        rating_threshold: float = POSITIVE_RATING,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Unique (user, item, weight) triples for :func:`envs.cf.fit_als`.

        ``weighted``: view / click / cart / purchase weigh ``event_weights`` (default :data:`EVENT_WEIGHTS`);
        a rating ``r >= rating_threshold`` weighs ``1 + (r - rating_threshold)``, a lower one 0 (left out).
        Events on one (user, item) pair add up. ``binary``: weight 1 for every pair with any event.

        Args:
            mode: ``"weighted"`` or ``"binary"``.
            event_weights: Overrides for implicit event weights.
            rating_threshold: Lowest positive rating.

        Returns:
            (users int64 (P,), items int64 (P,), weights float32 (P,)), pairs sorted by (user, item), weights > 0.
        """
        if mode not in ("weighted", "binary"):
            raise ValueError(f"mode must be 'weighted' or 'binary', got {mode!r}")
        u, i = self.codes()
        if mode == "binary":
            w = np.ones(u.size, dtype=np.float64)
        else:
            table = {**EVENT_WEIGHTS, **(event_weights or {})}
            unknown = set(table) - set(EVENTS)
            if unknown:
                raise ValueError(f"unknown events in event_weights: {sorted(unknown)}")
            per_event = np.array([table.get(e, 0.0) for e in EVENTS], dtype=np.float64)
            codes = self.events["event"].cat.codes.to_numpy()
            w = per_event[codes]
            is_rating = codes == EVENTS.index("rating")
            r = self.events["value"].to_numpy(dtype=np.float64)
            w[is_rating] = np.where(r[is_rating] >= rating_threshold, 1.0 + r[is_rating] - rating_threshold, 0.0)
        keep = w > 0
        key = u[keep] * np.int64(self.n_items) + i[keep]
        pairs, inv = np.unique(key, return_inverse=True)
        weights = np.bincount(inv, weights=w[keep], minlength=pairs.size)
        if mode == "binary":
            weights = np.ones_like(weights)
        return pairs // self.n_items, pairs % self.n_items, weights.astype(np.float32)

    def summary(self) -> dict:
        """Counts for reports: events, users, items, items with events, events per type, time range."""
        ev = self.events
        return {
            "events": self.n_events,
            "users": self.n_users,
            "items": self.n_items,
            "items_with_events": int(ev["item"].nunique()),
            "by_event": {k: int(v) for k, v in ev["event"].value_counts(sort=False).items() if v},
            "first_timestamp": int(ev["timestamp"].min()) if len(ev) else None,
            "last_timestamp": int(ev["timestamp"].max()) if len(ev) else None,
        }


def read_logs(
    items: str | Path,
    events: str | Path,
    *,
    on_bad_rows: OnBadRows = "error",
    on_missing_items: OnBadRows = "error",
    encoding: str = "utf-8",
    event_aliases: Mapping[str, str] | None = None,
) -> InteractionLog:
    """Read an item table and an events file (any supported format each) into a log.

    Args:
        items: Item table path.
        events: Events path.
        on_bad_rows: ``"error"`` or ``"skip"`` for bad rows in either file.
        on_missing_items: ``"error"`` or ``"skip"`` for events whose item is not in the table.
        encoding: Text encoding of CSV / JSONL files.
        event_aliases: As in :func:`read_events`.

    Returns:
        The log, its read reports attached.
    """
    it, it_report = read_items(items, on_bad_rows=on_bad_rows, encoding=encoding)
    ev, ev_report = read_events(events, on_bad_rows=on_bad_rows, encoding=encoding, event_aliases=event_aliases)
    ev = check_item_references(
        ev, it, on_missing_items=on_missing_items, events_path=str(events), items_path=str(items), report=ev_report
    )
    return InteractionLog.build(ev, it, source=f"logs:{items},{events}", reports=[it_report, ev_report])


# --------------------------------------------------------------------------------------------------------------
# MovieLens
# --------------------------------------------------------------------------------------------------------------

#: ml-100k genre flag order (``u.genre``); "unknown" is treated as no genre.
ML100K_GENRES: tuple[str, ...] = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
_YEAR_RE = re.compile(r"\s*\((\d{4})(?:\s*[-–]\s*(?:\d{4})?)?\)\s*$")
_ARTICLE_RE = re.compile(r"^(?P<body>.+?), (?P<art>The|A|An|Les|La|Le|Il|El|Das|Der|Die|Los|Las|L')(?P<rest> \(.*\))?$")
_NO_GENRES = {"(no genres listed)", "unknown", ""}


def split_movielens_title(title: str) -> tuple[str, int | None]:
    """Split a MovieLens title into a readable title and the year.

    ``"Shawshank Redemption, The (1994)"`` -> ``("The Shawshank Redemption", 1994)``; a trailing article
    (English and a few others) moves to the front; a range ``(1994-1998)`` gives its first year.

    Args:
        title: As in movies.csv / u.item.

    Returns:
        (title, year or None).
    """
    title = str(title).strip()
    year = None
    m = _YEAR_RE.search(title)
    if m:
        year = int(m.group(1))
        title = title[: m.start()].strip()
    a = _ARTICLE_RE.match(title)
    if a:
        sep = "" if a.group("art").endswith("'") else " "
        title = f"{a.group('art')}{sep}{a.group('body')}{a.group('rest') or ''}"
    return title, year


def movielens_item_text(
    title: str,
    year: int | None = None,
    genres: Sequence[str] = (),
    tags: Sequence[str] = (),
    max_tags: int = 10,
) -> str:
    """Descriptive text of a movie for the text encoder.

    ``movielens_item_text("Toy Story (1995)", None, ["Adventure", "Animation"], ["Pixar", "fun", "pixar"])``
    -> ``"Toy Story (1995). Genres: adventure, animation. Tags: pixar, fun."``

    Args:
        title: Title, possibly with the year in parentheses (parsed out; ``year`` wins when given).
        year: Release year, or None.
        genres: Genre names in order; lower-cased, deduplicated, "(no genres listed)" / "unknown" dropped.
        tags: Tags by decreasing frequency; lower-cased, stripped, deduplicated, at most ``max_tags``.
        max_tags: Cap on the number of tags.

    Returns:
        The text.
    """
    name, parsed = split_movielens_title(title)
    year = parsed if year is None or (isinstance(year, float) and np.isnan(year)) else int(year)
    head = f"{name} ({year})" if year is not None else name
    g = [x for x in dict.fromkeys(str(x).strip().lower() for x in genres) if x not in _NO_GENRES]
    t = [x for x in dict.fromkeys(str(x).strip().lower() for x in tags) if x][:max_tags]
    parts = [head.rstrip(".")]
    if g:
        parts.append("Genres: " + ", ".join(g))
    if t:
        parts.append("Tags: " + ", ".join(t))
    return ". ".join(parts) + "."


def _top_tags(tags: pd.DataFrame, max_tags: int) -> pd.Series:
    """item id -> list of its most frequent tags (lower-cased; ties alphabetical)."""
    t = tags.assign(tag=tags["tag"].astype("str").str.strip().str.lower())
    t = t[t["tag"].str.len() > 0]
    counts = t.groupby(["item", "tag"], sort=False).size().rename("n").reset_index()
    counts = counts.sort_values(["item", "n", "tag"], ascending=[True, False, True], kind="stable")
    return counts.groupby("item", sort=False).head(max_tags).groupby("item", sort=False)["tag"].agg(list)


def _movielens_items(
    ids: pd.Series, titles: pd.Series, years: Sequence, genres: Sequence[list[str]], tags: pd.Series, max_tags: int
) -> pd.DataFrame:
    tag_lists = tags.reindex(ids.to_numpy())
    texts = [
        movielens_item_text(t, y, g, tg if isinstance(tg, list) else (), max_tags)
        for t, y, g, tg in zip(titles.tolist(), years, genres, tag_lists.tolist(), strict=True)
    ]  # per item (M ~ 1e4), not per event
    first = [next((x.lower() for x in g if x.strip().lower() not in _NO_GENRES), None) for g in genres]
    return pd.DataFrame(
        {
            "id": ids.to_numpy(),
            "text": texts,
            "category": pd.Series(first, dtype="str").to_numpy(),
            "price": np.full(len(ids), np.nan),
        },
        index=ids.index,
    ).astype({"id": "str", "text": "str", "category": "str"})


def read_movielens(
    path: str | Path,
    *,
    on_bad_rows: OnBadRows = "error",
    on_missing_items: OnBadRows | None = None,
    encoding: str | None = None,
    max_tags: int = 10,
    with_tags: bool = True,
) -> InteractionLog:
    """Read a MovieLens directory: ml-latest-small layout or ml-100k layout (detected from the files).

    ml-latest(-small): ``ratings.csv`` (userId, movieId, rating, timestamp), ``movies.csv`` (movieId, title,
    genres ``A|B``), optional ``tags.csv`` (userId, movieId, tag, timestamp: tags feed item text only).
    ml-100k: ``u.data`` (tab-separated user, item, rating, timestamp), ``u.item`` (``|``-separated, latin-1:
    id, title, release date, video date, IMDb URL, 19 genre flags in :data:`ML100K_GENRES` order).

    Args:
        path: The directory.
        on_bad_rows: ``"error"`` or ``"skip"`` for bad rows (tags of unknown movies are always skipped and
            counted).
        on_missing_items: ``"error"`` or ``"skip"`` for ratings of movies missing from the movie table (None: as
            ``on_bad_rows``).
        encoding: Text encoding of every file (None: each layout's own, UTF-8 for ml-latest and ``u.data``,
            latin-1 for ``u.item``).
        max_tags: Tags per item text.
        with_tags: Read tags.csv into the text (ml-latest only).

    Returns:
        The log: ``rating`` events with value = rating; item text via :func:`movielens_item_text`; category = the
        first genre (lower-case); price NaN.

    Raises:
        LogFormatError: Not a MovieLens directory, or bad content (see :func:`read_events`).
        FileNotFoundError: No such directory.
    """
    _check_on_bad(on_bad_rows)
    on_missing_items = on_bad_rows if on_missing_items is None else on_missing_items
    _check_on_bad(on_missing_items)
    enc = encoding or "utf-8"
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such directory (expected a MovieLens directory)")
    reports: list[ReadReport] = []
    if (root / "ratings.csv").is_file() and (root / "movies.csv").is_file():
        mv_report = ReadReport(str(root / "movies.csv"))
        raw = _read_delimited(root / "movies.csv", encoding=enc, on_bad_rows=on_bad_rows, report=mv_report)
        _require_columns(raw, ("movieId", "title", "genres"), "MovieLens movies")
        ids, _ = _id_column(raw.frame["movieId"])
        titles = raw.frame["title"]
        genres = raw.frame["genres"].astype("str").str.split("|").tolist()
        tags = pd.Series(dtype=object)
        if with_tags and (root / "tags.csv").is_file():
            tg_report = ReadReport(str(root / "tags.csv"))
            traw = _read_delimited(root / "tags.csv", encoding=enc, on_bad_rows=on_bad_rows, report=tg_report)
            _require_columns(traw, ("movieId", "tag"), "MovieLens tags")
            tid, _ = _id_column(traw.frame["movieId"])
            tframe = pd.DataFrame({"item": tid.to_numpy(), "tag": traw.frame["tag"].to_numpy()})
            unknown = ~tframe["item"].isin(ids).to_numpy(dtype=bool)
            tg_report.add("tag of a movie missing from movies.csv", traw.rows[unknown])
            tg_report.kept = int((~unknown).sum())
            tg_report.rows = len(tframe) + tg_report.n_skipped - int(unknown.sum())
            tags = _top_tags(tframe[~unknown], max_tags)
            reports.append(tg_report)
        raw.frame = pd.DataFrame({"id": ids.to_numpy(), "text": titles.to_numpy()})
        items = _validate_items(raw, on_bad_rows, mv_report)  # ids, duplicates
        keep = pd.Index(raw.rows).get_indexer(items.index)
        items = _movielens_items(
            items["id"], titles.iloc[keep], [None] * len(items), [genres[k] for k in keep], tags, max_tags
        )
        ev_path = root / "ratings.csv"
        ev_report = ReadReport(str(ev_path))
        eraw = _read_delimited(ev_path, encoding=enc, on_bad_rows=on_bad_rows, report=ev_report)
        _require_columns(eraw, ("userId", "movieId", "rating", "timestamp"), "MovieLens ratings")
        eraw.frame = eraw.frame.rename(columns={"userId": "user", "movieId": "item", "rating": "value"})
        reports.insert(0, mv_report)
    elif (root / "u.data").is_file() and (root / "u.item").is_file():
        mv_report = ReadReport(str(root / "u.item"))
        names = ["id", "title", "release", "video_release", "url", *(f"g{j}" for j in range(len(ML100K_GENRES)))]
        raw = _read_delimited(
            root / "u.item",
            sep="|",
            names=names,
            encoding=encoding or "latin-1",
            quoting=csv.QUOTE_NONE,
            on_bad_rows=on_bad_rows,
            report=mv_report,
        )
        flags = raw.frame[[f"g{j}" for j in range(len(ML100K_GENRES))]].apply(pd.to_numeric, errors="coerce")
        flags = flags.fillna(0).to_numpy(dtype=np.int64) > 0
        genre_names = np.array(ML100K_GENRES, dtype=object)
        titles = raw.frame["title"]
        release_year = pd.to_numeric(raw.frame["release"].str.strip().str[-4:], errors="coerce")
        raw.frame = pd.DataFrame({"id": raw.frame["id"].to_numpy(), "text": titles.to_numpy()})
        items = _validate_items(raw, on_bad_rows, mv_report)
        keep = pd.Index(raw.rows).get_indexer(items.index)
        years = [
            split_movielens_title(t)[1] or (None if np.isnan(r) else int(r))
            for t, r in zip(titles.iloc[keep].tolist(), release_year.iloc[keep].tolist(), strict=True)
        ]
        genres = [list(genre_names[f]) for f in flags[keep]]
        items = _movielens_items(items["id"], titles.iloc[keep], years, genres, pd.Series(dtype=object), max_tags)
        ev_path = root / "u.data"
        ev_report = ReadReport(str(ev_path))
        eraw = _read_delimited(
            ev_path,
            sep="\t",
            names=["user", "item", "value", "timestamp"],
            encoding=enc,
            quoting=csv.QUOTE_NONE,
            on_bad_rows=on_bad_rows,
            report=ev_report,
        )
        reports.insert(0, mv_report)
    else:
        raise LogFormatError(
            "not a MovieLens directory: expected ratings.csv + movies.csv (ml-latest-small layout) or "
            f"u.data + u.item (ml-100k layout); found {sorted(p.name for p in root.iterdir())[:10]}",
            path=root,
        )
    eraw.frame = eraw.frame.assign(event="rating")
    events = _validate_events(eraw, on_bad_rows, ev_report)
    events = check_item_references(
        events,
        items,
        on_missing_items=on_missing_items,
        events_path=str(ev_path),
        items_path=mv_report.path,
        report=ev_report,
    )
    reports.append(ev_report)
    return InteractionLog.build(events, items, source=f"movielens:{root}", reports=reports)


def load_logs(spec: str, **kwargs) -> InteractionLog:
    """Load a log from a spec string.

    ``movielens:PATH`` -> :func:`read_movielens`; ``logs:ITEMS,EVENTS`` -> :func:`read_logs`.

    Args:
        spec: The spec.
        **kwargs: Passed to the reader: ``on_bad_rows``, ``on_missing_items``, ``encoding`` (both readers take
            them), ``event_aliases`` (``logs:`` only), ``max_tags`` / ``with_tags`` (``movielens:`` only).

    Returns:
        The log.

    Raises:
        ValueError: Unknown spec form.
    """
    kind, sep, rest = spec.partition(":")
    if sep and kind == "movielens" and rest:
        return read_movielens(rest, **kwargs)
    if sep and kind == "logs":
        items, comma, events = rest.partition(",")
        if comma and items and events:
            return read_logs(items, events, **kwargs)
    raise ValueError(f"unknown log spec {spec!r}; use 'movielens:PATH' or 'logs:ITEMS_PATH,EVENTS_PATH'")
