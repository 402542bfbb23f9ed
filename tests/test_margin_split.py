"""``bench.margin_split``: a ranker's margin over another, split into better requests and longer sessions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bench.margin_split import band_sums, main, pool, split_margin, survival_and_reward


def _sessions(rng: np.random.Generator, e: int, t: int, mean_len: float, reward: float) -> tuple[np.ndarray, ...]:
    length = np.minimum(rng.geometric(1.0 / mean_len, e), t).astype(np.float64)
    steps = rng.exponential(reward, (e, t)) * (np.arange(t)[None, :] < length[:, None])
    return steps, length


def test_the_split_is_exact_and_puts_each_effect_in_its_part() -> None:
    """The two parts sum to the margin at every request index (also where one side has no session left, and over
    bootstrap-shaped (R, T) arrays); sessions of equal length put the whole margin in the requests part, equal rewards
    per request put it in the sessions part."""
    rng = np.random.default_rng(0)
    t = 12
    x, lx = _sessions(rng, 400, t, 6.0, 1.2)
    b, lb = _sessions(rng, 400, t, 3.0, 1.0)
    b[:, 8:], lb = 0.0, np.minimum(lb, 8)  # the base's sessions all end by request 8: a one-sided tail
    a_x, s_x = survival_and_reward(x, lx)
    a_b, s_b = survival_and_reward(b, lb)
    assert a_x[0] == 1.0 and np.all(np.diff(a_x) <= 0) and np.all(a_b[8:] == 0) and a_x[8] > 0
    np.testing.assert_allclose(s_x.sum(), x.sum(axis=1).mean(), rtol=1e-12)
    split = split_margin(a_x, s_x, a_b, s_b)
    np.testing.assert_allclose(split.requests + split.sessions, s_x - s_b, rtol=1e-12, atol=1e-12)
    assert np.all(split.requests[8:] == 0) and np.all(split.sessions[8:] > 0)  # no base request there to beat
    stacked = split_margin(np.stack([a_x, a_b]), np.stack([s_x, s_b]), np.stack([a_b, a_x]), np.stack([s_b, s_x]))
    np.testing.assert_allclose(stacked.requests[0], split.requests, rtol=1e-12)
    np.testing.assert_allclose(stacked.requests[1] + split.requests, 0.0, atol=1e-12)  # antisymmetric

    same_len = split_margin(a_x, 1.5 * s_x, a_x, s_x)  # better requests only
    np.testing.assert_allclose(same_len.sessions, 0.0, atol=1e-12)
    np.testing.assert_allclose(same_len.requests.sum(), 0.5 * s_x.sum(), rtol=1e-12)
    m = np.full(t, 0.7)  # equal reward per request, longer sessions only
    longer = split_margin(a_x, a_x * m, a_b, a_b * m)
    np.testing.assert_allclose(longer.requests, 0.0, atol=1e-12)
    np.testing.assert_allclose(longer.sessions.sum(), 0.7 * (a_x.sum() - a_b.sum()), rtol=1e-12)
    np.testing.assert_array_equal(band_sums(np.arange(1.0, 31.0))[:3], [1.0, 2.0 + 3.0, 4.0 + 5.0 + 6.0])


def test_the_command_splits_a_runs_margin_on_shared_sessions(tmp_path: Path, run_dir: Path) -> None:
    """End to end on a tiny run (its config names its preset): the JSON's margin is the paired difference of the mean
    returns, its parts sum to it, the bands sum to the parts, and the figure is written."""
    out, png = tmp_path / "split.json", tmp_path / "split.png"
    got = main(["--config", str(run_dir / "config.yaml"), "--rankers",  # the run's own preset, as no --preset says
                f"run:{run_dir},diverse:0.9", "--base", "greedy-llm", "--episodes", "24", "--batch", "12",
                "--boot", "40", "--json", str(out), "--out", str(png)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(got)) and png.read_bytes()[:4] == b"\x89PNG"
    assert [s["ranker"] for s in got["splits"]] == [f"run:{run_dir}", "diverse:0.9"] and got["preset"] == "small"
    for row in got["splits"]:
        margin = got["returns"][row["ranker"]] - got["returns"]["greedy-llm"]
        assert row["margin"]["value"] == pytest.approx(margin, abs=1e-9)
        assert row["requests"]["value"] + row["sessions"]["value"] == pytest.approx(margin, abs=1e-9)
        for part in ("requests", "sessions"):
            assert sum(b[part]["value"] for b in row["bands"]) == pytest.approx(row[part]["value"], abs=1e-9)
            lo, hi = row[part]["ci95"]
            assert lo <= hi
        assert row["bands"][0]["from"] == 1 and row["bands"][-1]["to"] == len(got["curves"]["greedy-llm"]["reach"])


def test_by_type_splits_each_user_types_sessions_and_they_add_up(tmp_path: Path, run_dir: Path) -> None:
    """``--by-type``: each hidden type's margin is its sessions' paired difference, the types' margins weighted by
    their sessions give the whole margin back, and each type's parts sum to its margin; ``--eval-seed`` and
    ``--tune-episodes`` reach the sessions and the references' search."""
    argv = ["--config", str(run_dir / "config.yaml"), "--rankers", f"run:{run_dir},diverse:0.9", "--base",
            "tuned-diverse", "--episodes", "40", "--batch", "20", "--boot", "40", "--seed", "3"]
    got = main([*argv, "--eval-seed", "7", "--tune-episodes", "24", "--by-type", "--over-rankers"])
    assert got["eval_seed"] == 7 and got["tune_episodes"] == 24
    # over the rankers: each part's mean over them, per type too
    for holder in [got, *(t for t in got["by_type"].values() if t["splits"])]:
        pooled = holder["over_rankers"]
        assert pooled["n"] == 2 and pooled["margin"]["value"] == pytest.approx(
            np.mean([r["margin"]["value"] for r in holder["splits"]]), abs=1e-12)
    other = main([*argv, "--eval-seed", "8", "--tune-episodes", "24"])
    assert "by_type" not in other and other["returns"]["diverse:0.9"] != got["returns"]["diverse:0.9"]
    types = got["by_type"]
    assert sum(t["sessions"] for t in types.values()) == 40
    for i, row in enumerate(got["splits"]):
        name = row["ranker"]
        weighted = sum(t["sessions"] * t["splits"][i]["margin"]["value"] for t in types.values() if t["splits"])
        assert weighted / 40 == pytest.approx(row["margin"]["value"], abs=1e-9)
        for t in types.values():
            if not t["splits"]:
                continue
            part = t["splits"][i]
            assert part["margin"]["value"] == pytest.approx(t["returns"][name] - t["returns"]["tuned-diverse"],
                                                            abs=1e-9)
            assert part["requests"]["value"] + part["sessions"]["value"] == pytest.approx(part["margin"]["value"],
                                                                                          abs=1e-9)


def test_the_command_refuses_bad_arguments_by_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A missing run, a listed-twice ranker, a missing output folder and too few sessions are refused by name before
    any world is loaded."""
    for argv, why in ((["--rankers", f"run:{tmp_path / 'nope'}"], "nope"),
                      (["--rankers", "greedy-llm", "--base", "greedy-llm"], "twice"),
                      (["--rankers", "greedy-llm", "--json", str(tmp_path / "no" / "x.json")], "--json"),
                      (["--rankers", "greedy-llm", "--episodes", "1"], "--episodes"),
                      (["--rankers", "greedy-llm", "--tune-episodes", "0"], "--tune-episodes"),
                      (["--rankers", "greedy-llm", "--eval-seed", "-1"], "--eval-seed must be >= 0"),
                      (["--rankers", " , "], "--rankers")):
        with pytest.raises(SystemExit):
            main(argv)
        assert why in capsys.readouterr().err


def test_pooling_averages_each_part_over_the_files_and_refuses_mismatches(tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """``--pool``: each part's mean over the files with a t-interval around it (the point for one file), for the
    rankers every file has; files whose bases differ, and ``--pool`` beside ``--rankers``, are refused by name."""
    def summary(shift: float, ranker: str = "run:a", base: str = "tuned-diverse") -> dict:
        def part(v: float) -> dict:
            return {"value": v, "ci95": [v - 1, v + 1]}
        bands = [{"from": 1, "to": 1, "requests": part(0.1 + shift), "sessions": part(0.0)},
                 {"from": 2, "to": 3, "requests": part(0.2), "sessions": part(0.3 + shift)}]
        return {"base": base, "splits": [{"ranker": ranker, "base": base, "margin": part(0.6 + 2 * shift),
                                          "requests": part(0.3 + shift), "sessions": part(0.3 + shift),
                                          "bands": bands}]}

    got = pool([summary(0.0), summary(0.2, "run:b"), summary(0.4, "run:c")])[0]
    assert got["n"] == 3 and got["rankers"] == ["run:a", "run:b", "run:c"]
    assert got["margin"]["value"] == pytest.approx(1.0) and got["requests"]["value"] == pytest.approx(0.5)
    lo, hi = got["margin"]["ci95"]
    assert lo < 1.0 < hi and hi - 1.0 == pytest.approx(1.0 - lo)
    assert got["bands"][1]["sessions"]["value"] == pytest.approx(0.5) and got["bands"][0]["to"] == 1
    assert pool([summary(0.0)])[0]["margin"]["ci95"] == [0.6, 0.6]
    two = summary(0.0)
    two["splits"].append({**two["splits"][0], "ranker": "oracle"})
    assert [r["rankers"] for r in pool([two, summary(0.2)])] == [["run:a", "run:a"]]  # oracle: one file only
    with pytest.raises(ValueError, match="different bases"):
        pool([summary(0.0), summary(0.0, base="greedy-llm")])
    files = []
    for i, sm in enumerate((summary(0.0), summary(0.2))):
        files.append(tmp_path / f"s{i}.json")
        files[-1].write_text(json.dumps(sm))
    assert main(["--pool", *map(str, files)])["pooled"][0]["margin"]["value"] == pytest.approx(0.8)
    assert "run:a (2 files" in capsys.readouterr().out
    (tmp_path / "bad.json").write_text("{")
    for argv, why in ((["--pool", str(tmp_path / "bad.json")], "--pool"),
                      (["--pool", str(files[0]), "--rankers", "greedy-llm"], "--rankers")):
        with pytest.raises(SystemExit):
            main(argv)
        assert why in capsys.readouterr().err
