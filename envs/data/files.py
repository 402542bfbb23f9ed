"""Raw records from CSV, JSONL and Parquet files, with the row number of each record as a person counts it."""

from __future__ import annotations

import csv
import io
import json
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from envs.data.schema import _EXACT_FLOAT_INT, LogFormatError, OnBadRows, ReadReport, option_hint

_FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl"}


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
