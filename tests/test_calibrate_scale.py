"""bench.calibrate_scale: the generated log has the asked shape, calibration runs on it on either table path, and
the figures say which path each population took (the seconds are the benchmark's business, never a test's)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from bench.calibrate_scale import main, write_log


def test_generated_log_has_the_asked_shape(tmp_path: Path) -> None:
    n = write_log(tmp_path, n_users=7, n_items=50, per_user=6, seed=3)
    ratings = pd.read_csv(tmp_path / "ratings.csv")
    movies = pd.read_csv(tmp_path / "movies.csv")
    assert len(ratings) == n and len(movies) == 50
    per_user = ratings.groupby("userId").size()
    assert len(per_user) == 7 and per_user.between(6, 8).all()
    assert not ratings.duplicated(["userId", "movieId"]).any()  # distinct items per user
    assert ratings["movieId"].isin(movies["movieId"]).all()
    assert (ratings.groupby("userId")["timestamp"].diff().dropna() > 0).all()  # in time order
    with pytest.raises(ValueError, match="at least twice"):
        write_log(tmp_path / "x", n_users=2, n_items=10, per_user=6)


@pytest.mark.parametrize(("budget", "path"), [(None, "dense"), (0, "factored")])
def test_calibration_runs_on_either_table_path(tmp_path: Path, budget: int | None, path: str) -> None:
    sets = ["env.n_candidates=10", "env.slate_size=3", "env.max_steps=5", "calibrate.history_len=5",
            "calibrate.sim_sessions=1", "calibrate.rho_grid=5", "calibrate.fit_rounds=2"]
    sets += [] if budget is None else [f"env.table_budget_mb={budget}"]
    argv = ["--users", "30", "--items", "120", "--per-user", "12", "--out", str(tmp_path)]
    figures = main(argv + [x for s in sets for x in ("--set", s)])
    assert figures["tables"] == {"train": path, "heldout": path}
    assert 30 * 12 <= figures["events"] < 30 * 18
    assert 0 < figures["users_evaluated"] <= 30
    assert figures["timings_s"]["total"] > 0 and figures["peak_rss_gib"] > 0
    assert (tmp_path / "preset" / "env.yaml").is_file() and (tmp_path / "log" / "ratings.csv").is_file()


def test_kernel_timing_reports_both_kernels() -> None:
    from bench.calibrate_scale import time_kernels

    figures = time_kernels(300, repeats=1)
    assert set(figures) == {"rankdata_argsort_s", "sort_partition_s", "ratio"}
    assert figures["rankdata_argsort_s"] >= 0 and figures["sort_partition_s"] >= 0 and figures["ratio"] > 0


@pytest.mark.parametrize("argv", [["--users", "0"], ["--items", "10", "--per-user", "6"]])
def test_bad_sizes_are_refused_by_name(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(argv)
    err = capsys.readouterr().err
    assert ("--users must be >= 1" in err) if "--users" in argv else ("at least twice --per-user" in err)
