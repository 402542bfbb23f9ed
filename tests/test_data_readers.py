"""Readers of real interaction logs (envs.data): formats, row numbers, bad input, values that would convert
silently, in-memory frames. Every fixture is generated in tmp_path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from envs.data import (
    EVENTS,
    TIMESTAMP_MAX,
    TIMESTAMP_MIN,
    InteractionLog,
    LogFormatError,
    load_logs,
    read_events,
    read_items,
    read_logs,
)

EVENTS_CSV = """user,item,event,timestamp,value
u1,i1,view,1600000000,12.5
u1,i2,click,2020-09-13T12:26:41Z,
u2,i1,purchase,1600000100,
u2,i3,rating,1600000200,4.5
"""
ITEMS_CSV = """id,text,category,price
i1,A red shirt,shirts,19.99
i2,"Blue jeans, slim",jeans,
i3,A hat,,5
"""


def _write(path: Path, text: str | bytes) -> Path:
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def _frame(csv_text: str) -> pd.DataFrame:
    import io

    return pd.read_csv(io.StringIO(csv_text), dtype=str, keep_default_na=False)


def _as_format(tmp_path: Path, name: str, csv_text: str, fmt: str) -> Path:
    """The CSV content written as csv / parquet / jsonl (JSON numbers where the CSV holds numbers)."""
    if fmt == "csv":
        return _write(tmp_path / f"{name}.csv", csv_text)
    df = _frame(csv_text)
    if fmt == "parquet":
        path = tmp_path / f"{name}.parquet"
        df.to_parquet(path)
        return path
    path = tmp_path / f"{name}.jsonl"
    lines = []
    for rec in df.to_dict("records"):
        out = {}
        for k, v in rec.items():
            if v == "":
                continue  # absent key = missing
            try:
                out[k] = int(v) if k in ("timestamp",) else v
            except ValueError:
                out[k] = v
        lines.append(json.dumps(out))
    return _write(path, "\n".join(lines) + "\n")


# ---------------------------------------------------------------------------------------------------------------
# Formats
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["csv", "parquet", "jsonl"])
def test_read_events_each_format(tmp_path, fmt):
    events, report = read_events(_as_format(tmp_path, "events", EVENTS_CSV, fmt))
    assert list(events.columns) == ["user", "item", "event", "timestamp", "value"]
    assert events["user"].tolist() == ["u1", "u1", "u2", "u2"]
    assert events["event"].tolist() == ["view", "click", "purchase", "rating"]
    assert events["event"].dtype == pd.CategoricalDtype(list(EVENTS))
    assert events["timestamp"].dtype == np.int64
    # ISO-8601 string and integer seconds agree: 2020-09-13T12:26:41Z == 1600000001
    assert events["timestamp"].tolist() == [1600000000, 1600000001, 1600000100, 1600000200]
    np.testing.assert_array_equal(events["value"].to_numpy(), [12.5, np.nan, np.nan, 4.5])
    assert report.kept == 4 and report.n_skipped == 0
    if fmt != "parquet":  # text formats: index = line numbers (CSV header = row 1)
        assert events.index.tolist() == ([2, 3, 4, 5] if fmt == "csv" else [1, 2, 3, 4])


@pytest.mark.parametrize("fmt", ["csv", "parquet", "jsonl"])
def test_read_items_each_format(tmp_path, fmt):
    items, _ = read_items(_as_format(tmp_path, "items", ITEMS_CSV, fmt))
    assert items["id"].tolist() == ["i1", "i2", "i3"]
    assert items["text"].tolist() == ["A red shirt", "Blue jeans, slim", "A hat"]
    assert items["category"].tolist()[:2] == ["shirts", "jeans"] and pd.isna(items["category"].iloc[2])
    np.testing.assert_array_equal(items["price"].to_numpy(), [19.99, np.nan, 5.0])


def test_numeric_ids_and_datetime_columns_from_parquet(tmp_path):
    df = pd.DataFrame(
        {
            "user": [1, 2],
            "item": [10.0, 11.0],
            "event": ["CLICK", " view "],
            "timestamp": pd.to_datetime(["2020-09-13 12:26:40", "2020-09-13 12:26:41"]),
            "value": [1, 2],
        }
    )
    df.to_parquet(tmp_path / "e.pq")
    events, _ = read_events(tmp_path / "e.pq")
    assert events["user"].tolist() == ["1", "2"]
    assert events["item"].tolist() == ["10", "11"]  # integral floats print without ".0"
    assert events["event"].tolist() == ["click", "view"]  # case and blanks ignored
    assert events["timestamp"].tolist() == [1600000000, 1600000001]


def test_event_aliases_and_column_renaming(tmp_path):
    path = _write(tmp_path / "e.csv", "visitorid,itemid,event,timestamp\nv,a,addtocart,5\nv,b,transaction,6\n")
    events, _ = read_events(
        path,
        columns={"visitorid": "user", "itemid": "item"},
        event_aliases={"addtocart": "cart", "transaction": "purchase"},
    )
    assert events["event"].tolist() == ["cart", "purchase"]


def test_csv_row_numbers_count_blank_lines_and_quoted_newlines(tmp_path):
    text = 'user,item,event,timestamp\nu1,i1,view,1\n\nu1,"i\n2",view,2\nu2,i3,oops,3\n'
    with pytest.raises(LogFormatError) as err:
        read_events(_write(tmp_path / "e.csv", text))
    assert err.value.row == 6 and err.value.column == "event"
    assert "e.csv, row 6, column 'event': unknown event 'oops'" in str(err.value)


def test_read_logs_and_load_logs_spec(tmp_path):
    items = _write(tmp_path / "items.csv", ITEMS_CSV)
    events = _as_format(tmp_path, "events", EVENTS_CSV, "jsonl")
    log = read_logs(items, events)
    log2 = load_logs(f"logs:{items},{events}")
    assert log.n_events == log2.n_events == 4 and log.n_items == 3 and log.n_users == 2
    with pytest.raises(ValueError, match="movielens:PATH"):
        load_logs(f"csv:{events}")
    with pytest.raises(ValueError, match="ITEMS_PATH,EVENTS_PATH"):
        load_logs(f"logs:{items}")


# ---------------------------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------------------------


def test_malformed_csv_row_error_and_counted_skip(tmp_path):
    path = _write(tmp_path / "e.csv", EVENTS_CSV + "u3,i1,view,1600000300,1,EXTRA\nu3,i2,view,1600000400,\n")
    with pytest.raises(LogFormatError, match=r"row 6: malformed row: expected 5 fields, saw 6") as err:
        read_events(path)
    assert err.value.path == str(path) and err.value.row == 6
    events, report = read_events(path, on_bad_rows="skip")
    assert len(events) == 5 and report.rows == 6 and report.kept == 5
    assert report.skipped == {"malformed row (more than 5 fields)": 1}
    assert report.examples["malformed row (more than 5 fields)"] == [6]
    assert events.index[-1] == 7  # rows after the bad one keep their true line numbers


def test_malformed_jsonl_line_error_and_skip(tmp_path):
    text = '{"user": "u", "item": "i", "event": "view", "timestamp": 1}\n\n{"user": "u", "item": \n[1, 2]\n'
    path = _write(tmp_path / "e.jsonl", text)
    with pytest.raises(LogFormatError, match=r"e.jsonl, row 3: malformed row: not a JSON object \(2 such lines"):
        read_events(path)
    events, report = read_events(path, on_bad_rows="skip")
    assert len(events) == 1 and report.skipped == {"malformed row (not a JSON object)": 2}
    assert report.examples["malformed row (not a JSON object)"] == [3, 4]


def test_malformed_jsonl_value_found_by_slow_path(tmp_path):
    good = '{"user": "u", "item": "i", "event": "view", "timestamp": 1}'
    path = _write(tmp_path / "e.jsonl", f'{good}\n{{"user": "u", "item": x}}\n{good}\n')
    with pytest.raises(LogFormatError, match="row 2: malformed row"):
        read_events(path)


def test_unknown_event_names_row_and_column_and_skip_counts(tmp_path):
    path = _write(tmp_path / "e.csv", EVENTS_CSV + "u3,i2,like,1600000300,\nu3,i2,share,1600000301,\n")
    with pytest.raises(LogFormatError) as err:
        read_events(path)
    msg = str(err.value)
    assert err.value.row == 6 and err.value.column == "event"
    assert "unknown event 'like'" in msg and "view, click, cart, purchase, rating" in msg
    assert "2 bad rows in all" in msg and "on_bad_rows='skip'" in msg
    events, report = read_events(path, on_bad_rows="skip")
    assert len(events) == 4 and report.skipped == {"unknown event": 2}
    assert "skipped 2: 2 unknown event (e.g. row 6, 7)" in str(report)


@pytest.mark.parametrize(
    ("line", "column", "message"),
    [
        ("u3,i2,view,yesterday,", "timestamp", "timestamp 'yesterday' is neither integer epoch seconds nor ISO-8601"),
        ("u3,i2,view,,", "timestamp", "missing timestamp"),
        ("u3,i2,view,10000-01-01,", "timestamp", "timestamp '10000-01-01' is neither integer epoch seconds nor"),
        ("u3,i2,view,1600000300,long", "value", "value 'long' is not a number"),
        ("u3,i2,view,1600000300,inf", "value", "value 'inf' is not a number"),
        (",i2,view,1600000300,", "user", "missing user id"),
        ("u3,,view,1600000300,", "item", "missing item id"),
        ("u3,i2,,1600000300,", "event", "missing event name"),
    ],
)
def test_bad_field_values(tmp_path, line, column, message):
    path = _write(tmp_path / "e.csv", EVENTS_CSV + line + "\n")
    with pytest.raises(LogFormatError) as err:
        read_events(path)
    assert err.value.row == 6 and err.value.column == column
    assert message in str(err.value)
    events, report = read_events(path, on_bad_rows="skip")
    assert len(events) == 4 and report.n_skipped == 1


def test_short_row_message_mentions_field_count(tmp_path):
    path = _write(tmp_path / "e.csv", EVENTS_CSV + "u3,i2,view\n")
    with pytest.raises(LogFormatError, match=r"missing timestamp.*the row has 3 fields, the header 5"):
        read_events(path)


def test_missing_column_is_named(tmp_path):
    path = _write(tmp_path / "e.csv", "user,item,timestamp\nu,i,1\n")
    with pytest.raises(LogFormatError) as err:
        read_events(path)
    assert err.value.column == "event"
    assert "missing required column 'event' for events; found columns ['user', 'item', 'timestamp']" in str(err.value)
    with pytest.raises(LogFormatError, match="missing required column 'text'"):
        read_items(_write(tmp_path / "i.jsonl", '{"id": "a"}\n'))


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("e.csv", b"", "the file is empty"),
        ("e.csv", b"  \n\n", "the file is empty"),
        ("e.csv", b"user,item,event,timestamp\n", "has a header but no data rows"),
        ("e.jsonl", b"", "the file is empty"),
        ("e.jsonl", b"\n \n", "the file is empty"),
        ("e.parquet", b"", "the file is empty"),
        ("e.parquet", b"not parquet at all", "cannot be read as Parquet"),
    ],
)
def test_empty_and_unreadable_files(tmp_path, name, content, message):
    path = _write(tmp_path / name, content)
    with pytest.raises(LogFormatError, match=message) as err:
        read_events(path)
    assert str(path) in str(err.value)


def test_empty_parquet_table(tmp_path):
    pd.DataFrame({"user": pd.Series([], dtype=str), "item": pd.Series([], dtype=str)}).to_parquet(tmp_path / "e.pq")
    with pytest.raises(LogFormatError, match=r"e\.pq: the file has no rows"):
        read_events(tmp_path / "e.pq")


def test_unknown_extension_and_missing_file(tmp_path):
    with pytest.raises(LogFormatError, match=r"unknown file extension '.xlsx'"):
        read_events(_write(tmp_path / "e.xlsx", "x"))
    with pytest.raises(FileNotFoundError, match="no such file"):
        read_events(tmp_path / "absent.csv")
    with pytest.raises(ValueError, match="on_bad_rows must be"):
        read_events(tmp_path / "absent.csv", on_bad_rows="ignore")


def test_latin1_bytes_in_utf8_csv(tmp_path):
    data = EVENTS_CSV.encode() + "u3,caf\xe9,view,1600000300,\n".encode("latin-1") + b"u3,i2,view,1600000301,\n"
    path = _write(tmp_path / "e.csv", data)
    with pytest.raises(LogFormatError) as err:
        read_events(path)
    assert err.value.row == 6 and err.value.column == "item"
    assert "not valid utf-8 (byte 0xe9)" in str(err.value) and "encoding='latin-1'" in str(err.value)
    events, report = read_events(path, on_bad_rows="skip")
    assert (
        len(events) == 5
        and report.skipped == {"invalid utf-8 bytes": 1}
        and report.examples == {"invalid utf-8 bytes": [6]}
    )
    assert events.index[-1] == 7
    events, _ = read_events(path, encoding="latin-1")  # the caller knows better
    assert "café" in events["item"].tolist()


def test_bad_header_encoding_is_always_an_error(tmp_path):
    path = _write(tmp_path / "e.csv", "us\xe9r,item,event,timestamp\n".encode("latin-1") + b"u,i,view,1\n")
    with pytest.raises(LogFormatError, match="row 1"):
        read_events(path, on_bad_rows="skip")


def test_items_duplicates_and_bad_prices(tmp_path):
    path = _write(tmp_path / "i.csv", ITEMS_CSV + "i1,again,shirts,1\ni4,x,,-3\ni5,y,,cheap\n")
    with pytest.raises(LogFormatError, match=r"row 5, column 'id': duplicate item id 'i1' \(first at row 2\)"):
        read_items(path)
    items, report = read_items(path, on_bad_rows="skip")
    assert items["id"].tolist() == ["i1", "i2", "i3"] and items["text"].iloc[0] == "A red shirt"
    assert report.skipped == {"duplicate item id": 1, "non-numeric price": 1, "negative price": 1}


def test_items_missing_from_item_table(tmp_path):
    items = _write(tmp_path / "items.csv", ITEMS_CSV)
    events = _write(tmp_path / "e.csv", EVENTS_CSV + "u3,x9,view,1600000300,\nu3,x8,view,1600000301,\n")
    with pytest.raises(LogFormatError) as err:
        read_logs(items, events)
    msg = str(err.value)
    assert err.value.row == 6 and err.value.column == "item"
    assert "2 events reference 2 item ids missing from the item table" in msg and "'x9', 'x8'" in msg
    log = read_logs(items, events, on_missing_items="skip")
    assert log.n_events == 4
    ev_report = log.reports[1]
    assert ev_report.skipped == {"item not in the item table": 2} and ev_report.kept == 4 and ev_report.rows == 6


def test_all_rows_skipped_is_an_error(tmp_path):
    path = _write(tmp_path / "e.csv", "user,item,event,timestamp\nu,i,like,1\n")
    with pytest.raises(LogFormatError, match="no valid rows left"):
        read_events(path, on_bad_rows="skip")


def test_from_frames_validates_like_the_readers():
    items = pd.DataFrame({"id": ["a", "b"], "text": ["A", "B"]})
    events = pd.DataFrame({"user": ["u", "u"], "item": ["a", "b"], "event": ["view", "swipe"], "timestamp": [1, 2]})
    with pytest.raises(LogFormatError, match=r"<events frame>, row 2, column 'event': unknown event 'swipe'"):
        InteractionLog.from_frames(events, items)
    log = InteractionLog.from_frames(events, items, on_bad_rows="skip")
    assert log.n_events == 1 and log.reports[0].skipped == {"unknown event": 1}


# ---------------------------------------------------------------------------------------------------------------
# Values that would convert silently: infinite / overflowing / out-of-range timestamps, inexact float ids
# ---------------------------------------------------------------------------------------------------------------

GOOD_ROW = {"user": "u1", "item": "i1", "event": "view", "timestamp": 1_600_000_000}


def _events_file(tmp_path: Path, fmt: str, column: str, bad: object) -> Path:
    """Two events, the second with ``column`` = ``bad`` (a CSV cell is written as text, others keep the type)."""
    if fmt == "csv":
        rows = [GOOD_ROW, {**GOOD_ROW, column: bad}]
        text = "user,item,event,timestamp\n" + "".join(",".join(str(r[c]) for c in GOOD_ROW) + "\n" for r in rows)
        return _write(tmp_path / "e.csv", text)
    if fmt == "jsonl":  # bad is the JSON text of the value
        good = json.dumps(GOOD_ROW)
        second = json.dumps({**GOOD_ROW, column: "@"}).replace('"@"', str(bad))
        return _write(tmp_path / "e.jsonl", f"{good}\n{second}\n")
    dtype = np.asarray([bad]).dtype
    good = {"user": 1, "item": 1, "timestamp": GOOD_ROW["timestamp"]}[column]
    good = np.datetime64(good, "s") if dtype.kind == "M" else good
    frame = pd.DataFrame([GOOD_ROW, GOOD_ROW])
    frame[column] = pd.Series([good, bad]).astype(dtype)
    frame.to_parquet(tmp_path / "e.parquet")
    return tmp_path / "e.parquet"


@pytest.mark.parametrize(
    ("fmt", "bad"),
    [
        ("csv", "inf"),
        ("csv", "-Infinity"),
        ("csv", "1e30"),
        ("csv", "9223372036854775807"),
        ("csv", "99999999999999999999"),
        ("csv", "1600000000000"),  # milliseconds
        ("csv", "3000-01-01T00:00:00Z"),
        ("csv", "1500-06-01"),
        ("jsonl", "Infinity"),
        ("jsonl", "1e30"),
        ("jsonl", "99999999999999999999"),
        ("jsonl", "1600000000000"),
        ("parquet", np.float64("inf")),
        ("parquet", np.float64(1e30)),
        ("parquet", np.int64(2**63 - 1)),
        ("parquet", np.int64(-(2**63))),
        ("parquet", np.uint64(2**64 - 1)),
        ("parquet", np.datetime64("3000-01-01T00:00:00", "s")),
    ],
)
def test_timestamps_out_of_range_are_bad_rows(tmp_path, fmt, bad):
    path = _events_file(tmp_path, fmt, "timestamp", bad)
    with pytest.raises(LogFormatError, match="is out of range: epoch seconds must be finite") as err:
        read_events(path)
    assert err.value.row == (3 if fmt == "csv" else 2) and err.value.column == "timestamp"
    assert "on_bad_rows='skip' or, on the command line, --on-bad-rows skip" in str(err.value)
    events, report = read_events(path, on_bad_rows="skip")
    assert report.skipped == {"timestamp out of range": 1} and events["timestamp"].tolist() == [1_600_000_000]


def test_timestamp_range_edges_are_kept_and_convert_to_dates(tmp_path):
    text = "user,item,event,timestamp\n" + "".join(
        f"u,i,view,{t}\n" for t in (TIMESTAMP_MIN, TIMESTAMP_MAX, "2262-04-11T00:00:00Z", TIMESTAMP_MAX + 1)
    )
    events, report = read_events(_write(tmp_path / "e.csv", text), on_bad_rows="skip")
    assert events["timestamp"].tolist() == [TIMESTAMP_MIN, TIMESTAMP_MAX, 9_223_286_400]
    assert report.examples == {"timestamp out of range": [5]}
    assert pd.to_datetime(events["timestamp"], unit="s").notna().all()  # every kept timestamp is a date


def test_milliseconds_are_named_in_the_message(tmp_path):
    with pytest.raises(LogFormatError, match="looks like milliseconds"):
        read_events(_events_file(tmp_path, "csv", "timestamp", "1600000000000"))


@pytest.mark.parametrize(
    ("fmt", "column", "bad"),
    [
        ("parquet", "user", np.float64("inf")),
        ("parquet", "user", np.float64(1e20)),
        ("parquet", "item", np.float64(2.0**53 + 2)),
        ("jsonl", "user", "Infinity"),
        ("jsonl", "user", "1e20"),
        ("jsonl", "item", "-Infinity"),
        ("jsonl", "item", "1.5e300"),
    ],
)
def test_float_ids_that_cannot_be_exact_are_bad_rows(tmp_path, fmt, column, bad):
    path = _events_file(tmp_path, fmt, column, bad)
    with pytest.raises(LogFormatError, match="is a float that cannot be an exact id") as err:
        read_events(path)
    assert err.value.row == 2 and err.value.column == column
    events, report = read_events(path, on_bad_rows="skip")
    assert report.skipped == {f"inexact {column} id": 1} and len(events) == 1
    assert "-9223372036854775808" not in events[column].tolist()


def test_mixed_json_ids_and_in_memory_frames_get_the_same_checks(tmp_path):
    path = _write(tmp_path / "e.jsonl", '{"user": "a", "item": "i", "event": "view", "timestamp": 1}\n'
                  '{"user": Infinity, "item": "i", "event": "view", "timestamp": 2}\n'
                  '{"user": 3.0, "item": "i", "event": "view", "timestamp": 3}\n')
    events, report = read_events(path, on_bad_rows="skip")
    assert events["user"].tolist() == ["a", "3"] and report.skipped == {"inexact user id": 1}
    frame = pd.DataFrame({"user": ["a", np.nan, np.inf, 1e20], "item": ["i"] * 4, "event": ["view"] * 4,
                          "timestamp": [1.0, 2.0, 3.0, np.inf]})
    log = InteractionLog.from_frames(frame, pd.DataFrame({"id": ["i"], "text": ["I"]}), on_bad_rows="skip")
    assert log.events["user"].tolist() == ["a"]
    assert log.reports[0].skipped == {"missing user id": 1, "inexact user id": 2}  # first reason per row counts


def test_item_table_ids_get_the_same_checks(tmp_path):
    pd.DataFrame({"id": [1.0, 1e20, np.inf, np.nan], "text": ["a", "b", "c", "d"]}).to_parquet(tmp_path / "i.pq")
    with pytest.raises(LogFormatError, match=r"row 2, column 'id': item id 1e\+20 is a float that cannot be an"):
        read_items(tmp_path / "i.pq")
    items, report = read_items(tmp_path / "i.pq", on_bad_rows="skip")
    assert items["id"].tolist() == ["1"] and report.skipped == {"inexact item id": 2, "missing item id": 1}


@pytest.mark.parametrize("fmt", ["csv", "parquet", "jsonl"])
def test_negative_and_large_integer_ids_are_kept_exactly(tmp_path, fmt):
    """Only floats convert: integer ids (hashed ids are often negative or beyond 2**53) stay as written."""
    big = 2**63 - 1 if fmt == "parquet" else 10**20  # JSON integers beyond 2**53 are not rounded to floats
    if fmt == "parquet":
        frame = pd.DataFrame({**{k: [v, v, v] for k, v in GOOD_ROW.items()}})
        frame["user"] = np.array([-1, big, 2**53 + 1], dtype=np.int64)
        frame.to_parquet(tmp_path / "e.parquet")
        path = tmp_path / "e.parquet"
    else:
        rows = [{**GOOD_ROW, "user": u} for u in (-1, big, 2**53 + 1)]
        if fmt == "csv":
            text = "user,item,event,timestamp\n" + "".join(",".join(str(r[c]) for c in GOOD_ROW) + "\n" for r in rows)
            path = _write(tmp_path / "e.csv", text)
        else:
            path = _write(tmp_path / "e.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    events, _ = read_events(path)
    assert events["user"].tolist() == ["-1", str(big), str(2**53 + 1)]


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_nan_ids_are_missing_ids(tmp_path, fmt):
    path = _events_file(tmp_path, fmt, "item", np.float64("nan") if fmt == "parquet" else "NaN")
    with pytest.raises(LogFormatError, match="missing item id") as err:
        read_events(path)
    assert err.value.row == 2 and err.value.column == "item"


def test_load_catalog_reads_the_item_table_named_by_the_config(tmp_path: Path) -> None:
    """``env.catalog.source`` = a CSV builds the catalog from its rows (read_items returns (frame, report))."""
    from configs.loader import resolve_config
    from envs.presets import load_catalog

    table = tmp_path / "items.csv"
    pd.DataFrame({"id": ["a", "b", "c"], "text": ["red shoes", "blue hat", "green scarf"],
                  "category": ["shoes", "hats", "hats"], "price": [10.0, 5.0, 7.5]}).to_csv(table, index=False)
    cfg = resolve_config(None, "small", [f"env.catalog.source={table}"]).env
    catalog = load_catalog(cfg)
    assert catalog.ids == ["a", "b", "c"]
    assert catalog.texts[1] == "blue hat"
    assert np.allclose(catalog.price, [10.0, 5.0, 7.5])
    assert catalog.category[1] == catalog.category[2] != catalog.category[0]
