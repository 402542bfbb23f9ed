"""MovieLens directories (ml-latest / ml-latest-small, ml-100k) as an interaction log, and movie item texts."""

from __future__ import annotations

import csv
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from envs.data.columns import _id_column, _require_columns, _validate_events, _validate_items, check_item_references
from envs.data.files import _read_delimited
from envs.data.interaction_log import InteractionLog
from envs.data.schema import LogFormatError, OnBadRows, ReadReport, _check_on_bad

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
        LogFormatError: Not a MovieLens directory, or bad content (see :func:`envs.data.readers.read_events`).
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
