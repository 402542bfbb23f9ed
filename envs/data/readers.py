"""Public readers: an events file, an item table, both as a log, or a log from a spec string."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from envs.data.columns import _validate_events, _validate_items, check_item_references
from envs.data.files import _Raw, _read_raw
from envs.data.interaction_log import InteractionLog
from envs.data.movielens import read_movielens
from envs.data.schema import OnBadRows, ReadReport, _check_on_bad


def _read_renamed(path: str | Path, on_bad_rows: OnBadRows, encoding: str,
                  columns: Mapping[str, str] | None) -> tuple[_Raw, ReadReport]:
    """The file's rows, read by its extension with ``columns`` renamed, and the report of what was skipped."""
    _check_on_bad(on_bad_rows)
    path = Path(path)
    report = ReadReport(str(path))
    raw = _read_raw(path, encoding=encoding, on_bad_rows=on_bad_rows, report=report)
    if columns:
        raw.frame = raw.frame.rename(columns=dict(columns))
    return raw, report


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
    raw, report = _read_renamed(path, on_bad_rows, encoding, columns)
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
    raw, report = _read_renamed(path, on_bad_rows, encoding, columns)
    return _validate_items(raw, on_bad_rows, report), report


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
