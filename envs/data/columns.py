"""Column validation of raw records into the events / items schema; each bad cell names its row and column."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from envs.data.files import _Raw
from envs.data.schema import (
    _EXACT_FLOAT_INT,
    EVENT_DTYPE,
    EVENTS,
    TIMESTAMP_MAX,
    TIMESTAMP_MIN,
    LogFormatError,
    OnBadRows,
    ReadReport,
    _check_on_bad,
    option_hint,
)

logger = logging.getLogger(__name__)

_MISSING_TOKENS = ("", "na", "n/a", "nan", "null", "none")
_MISSING_SPELLINGS = tuple({v for t in _MISSING_TOKENS for v in (t, t.upper(), t.capitalize())} | {"NaN", "N/A"})


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
