"""MovieLens (envs.data.movielens): item text, the ml-latest and ml-100k layouts, bad input; and the real
ml-latest-small (skips without it, fails without it under CI)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from conftest import require_movielens

from envs.data import LogFormatError, load_logs, movielens_item_text, read_movielens, split_movielens_title


def _write(path: Path, text: str | bytes) -> Path:
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def test_movielens_item_text():
    text = movielens_item_text(
        "Toy Story (1995)",
        None,
        ["Adventure", "Animation", "Children", "Comedy", "Fantasy"],
        ["Pixar", "fun", " pixar "],
    )
    assert text == "Toy Story (1995). Genres: adventure, animation, children, comedy, fantasy. Tags: pixar, fun."
    assert movielens_item_text("Shawshank Redemption, The (1994)", 1994, ["(no genres listed)"]) == (
        "The Shawshank Redemption (1994)."
    )
    assert movielens_item_text("Babylon 5", None, ["Sci-Fi"], [f"t{k}" for k in range(20)], max_tags=2) == (
        "Babylon 5. Genres: sci-fi. Tags: t0, t1."
    )
    assert split_movielens_title("Misérables, Les (1995)") == ("Les Misérables", 1995)
    assert split_movielens_title("Death Note: Desu nôto (2006–2007)") == ("Death Note: Desu nôto", 2006)
    assert split_movielens_title("City of Lost Children, The (Cité des enfants perdus, La) (1995)") == (
        "The City of Lost Children (Cité des enfants perdus, La)",
        1995,
    )


def _ml_latest(root: Path) -> Path:
    root.mkdir()
    _write(
        root / "movies.csv",
        "movieId,title,genres\n"
        "1,Toy Story (1995),Adventure|Animation|Children|Comedy|Fantasy\n"
        '2,"American President, The (1995)",Comedy|Drama|Romance\n'
        "3,Nothing Here,(no genres listed)\n",
    )
    _write(
        root / "ratings.csv",
        "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,2,3.5,964981247\n2,1,5.0,964982224\n2,3,0.5,964983815\n",
    )
    _write(
        root / "tags.csv",
        "userId,movieId,tag,timestamp\n1,1,pixar,1\n2,1,Pixar,2\n2,1,fun,3\n1,2,politics,4\n1,99,orphan tag,5\n",
    )
    _write(root / "links.csv", "movieId,imdbId,tmdbId\n1,0114709,862\n")
    return root


def test_read_movielens_latest_layout(tmp_path):
    log = read_movielens(_ml_latest(tmp_path / "ml"))
    assert log.n_events == 4 and log.n_items == 3 and log.n_users == 2
    assert set(log.events["event"]) == {"rating"}
    assert log.events["value"].tolist() == [4.0, 3.5, 5.0, 0.5]
    assert log.events["timestamp"].iloc[0] == 964982703
    assert log.items["text"].tolist() == [
        "Toy Story (1995). Genres: adventure, animation, children, comedy, fantasy. Tags: pixar, fun.",
        "The American President (1995). Genres: comedy, drama, romance. Tags: politics.",
        "Nothing Here.",
    ]
    assert log.items["category"].tolist()[:2] == ["adventure", "comedy"] and pd.isna(log.items["category"].iloc[2])
    assert log.items["price"].isna().all()
    tag_report = next(r for r in log.reports if r.path.endswith("tags.csv"))
    assert tag_report.skipped == {"tag of a movie missing from movies.csv": 1} and tag_report.rows == 5
    assert load_logs(f"movielens:{tmp_path / 'ml'}").n_events == 4


def test_read_movielens_latest_bad_rating_row(tmp_path):
    root = _ml_latest(tmp_path / "ml")
    with (root / "ratings.csv").open("a") as f:
        f.write("3,1,four,964983815\n3,7,4.0,964983816\n")
    with pytest.raises(LogFormatError, match=r"ratings.csv, row 6, column 'value': value 'four' is not a number"):
        read_movielens(root)
    log = read_movielens(root, on_bad_rows="skip")
    report = log.reports[-1]
    assert report.skipped == {"non-numeric value": 1, "item not in the item table": 1}
    assert log.n_events == 4


def test_read_movielens_takes_the_options_its_messages_suggest(tmp_path):
    root = _ml_latest(tmp_path / "ml")
    with (root / "ratings.csv").open("a") as f:
        f.write("3,7,4.0,964983816\n")  # movie 7 is not in movies.csv
    with pytest.raises(LogFormatError, match="on_missing_items='skip'") as err:
        read_movielens(root)
    assert "--on-missing-items skip" in str(err.value)
    assert read_movielens(root, on_missing_items="skip").reports[-1].skipped == {"item not in the item table": 1}
    with pytest.raises(LogFormatError, match="missing from the item table"):  # bad rows skipped, missing items not
        read_movielens(root, on_bad_rows="skip", on_missing_items="error")
    movies = (root / "movies.csv").read_bytes().replace(b"Nothing Here", "Caf\xe9 Here".encode("latin-1"))
    (root / "movies.csv").write_bytes(movies)
    with pytest.raises(LogFormatError, match="encoding='latin-1'") as err:
        read_movielens(root, on_missing_items="skip")
    assert "--encoding latin-1" in str(err.value)
    log = read_movielens(root, on_missing_items="skip", encoding="latin-1")
    assert log.items["text"].iloc[2] == "Café Here."


def _ml_100k(root: Path) -> Path:
    root.mkdir()
    _write(root / "u.data", "196\t242\t3\t881250949\n186\t302\t3\t891717742\n22\t242\t1\t878887116\n")
    flags = ["0"] * 19
    f242, f302 = list(flags), list(flags)
    f242[5] = "1"  # Comedy
    f302[6], f302[16] = "1", "1"  # Crime, Thriller
    lines = [
        "|".join(["242", "Kolya (1996)", "24-Jan-1997", "", "http://x", *f242]),
        "|".join(["302", "L.A. Confidential (1997)", "01-Jan-1997", "", "http://y", *f302]),
        "|".join(["303", "Café Society", "01-Jan-1996", "", "http://z", *flags]),
    ]
    _write(root / "u.item", ("\n".join(lines) + "\n").encode("latin-1"))
    return root


def test_read_movielens_100k_layout(tmp_path):
    log = read_movielens(_ml_100k(tmp_path / "ml100k"))
    assert log.n_events == 3 and log.n_items == 3
    assert log.events["value"].tolist() == [3.0, 3.0, 1.0]
    assert log.items["text"].tolist() == [
        "Kolya (1996). Genres: comedy.",
        "L.A. Confidential (1997). Genres: crime, thriller.",
        "Café Society (1996).",  # latin-1 decoded; year from the release date
    ]
    assert log.items["category"].tolist()[:2] == ["comedy", "crime"]


def test_read_movielens_not_a_movielens_directory(tmp_path):
    (tmp_path / "x").mkdir()
    _write(tmp_path / "x" / "ratings.dat", "1::2::3::4\n")
    with pytest.raises(LogFormatError, match=r"not a MovieLens directory.*ratings.dat"):
        read_movielens(tmp_path / "x")
    with pytest.raises(FileNotFoundError):
        read_movielens(tmp_path / "absent")


def test_real_ml_latest_small():
    log = load_logs(f"movielens:{require_movielens()}")
    assert log.n_events == 100_836 and log.n_items == 9_742 and log.n_users == 610
    assert all(r.n_skipped == 0 for r in log.reports)
    toy = log.items.loc[log.items["id"] == "1", "text"].item()
    assert toy.startswith("Toy Story (1995). Genres: adventure, animation, children, comedy, fantasy. Tags: pixar")


def test_require_movielens_skips_outside_ci_and_fails_under_ci(tmp_path, monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="ml-latest-small not found"):
        require_movielens(tmp_path / "absent")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI is set: ml-latest-small not found"):
        require_movielens(tmp_path / "absent")
    _write(tmp_path / "ratings.csv", "userId,movieId,rating,timestamp\n")
    assert require_movielens(tmp_path) == tmp_path
