"""``bench.information_curve``: the hand-written ranker told the taste through an error of size σ, on one figure."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench import information_curve


def _summary(seed: int, ref: float, terms: dict[str, tuple[float, dict[str, Any]]],
             runs: dict[str, float]) -> dict[str, Any]:
    """A ``bench.term_probe --retune --json`` summary: term → (return, extra fields); run → return."""
    def row(ret: float) -> dict[str, Any]:
        return {"return": ret, "diff": ret - ref, "ci95": [ret - ref - 0.05, ret - ref + 0.05]}

    return {"preset": "p", "seed": seed, "tuned_diverse_return": ref, "episodes": 10,
            "terms": {name: {**row(ret), **extra} for name, (ret, extra) in terms.items()},
            "runs": {run: {"return": ret, "vs tuned-diverse": row(ret)} for run, ret in runs.items()}}


def _write(tmp_path: Path, name: str, data: Any) -> str:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")
    return str(path)


def test_the_curve_places_each_term_at_its_error_and_averages_over_seeds(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """Ratios are returns over tuned-diverse's on the same seed, intervals the paired ones; the observed reading
    sits at σ = sqrt(1/R² − 1); each seed's curve has its own points (the files of one seed may split its terms, and a
    term two of them hold is one point);
    a protocol's runs of one recipe are one policy; the table names every point and the PNG is written."""
    s0a = _write(tmp_path, "s0a.json", _summary(0, 5.0, {"taste": (5.25, {}), "noisy-taste:0.5": (5.0, {"sigma": 0.5})},
                                                {"runs/p-ml-s0": 5.1}))
    s0b = _write(tmp_path, "s0b.json", _summary(0, 5.0, {"observed-taste": (5.05, {"r2": 0.8}), "taste": (5.25, {}),
                                                     "history-taste": (5.1, {"r2": 0.9, "r2_without": 0.8}),
                                                     "history-pool:1": (5.0, {"r2": 0.8, "decay": 1.0})},
                                                {}))  # seed 0's taste again: one point
    s1 = _write(tmp_path, "s1.json", _summary(1, 4.0, {"taste": (4.4, {}), "noisy-taste:0.5": (4.04, {"sigma": 0.5}),
                                                 "noisy-taste:0.5:8": (4.2, {"sigma": 0.5, "rank": 8})},
                                              {"runs/p-ml-s1": 4.2}))
    out = tmp_path / "curve.png"
    points = information_curve.main([s0a, s0b, s1, "--bar", "1.05", "--out", str(out), "--label", "p-ml=PPO"])
    observed = next(p for p in points if p.name == "observed-taste")
    assert observed.sigma == pytest.approx(0.5) and observed.ratio == pytest.approx(1.01)
    assert observed.ci == pytest.approx((1.0, 1.02)) and observed.source == "seed 0"
    assert information_curve.curve(points, "seed 0") == [(0.0, pytest.approx(1.05)), (0.5, pytest.approx(1.0))]
    assert information_curve.curve(points, "seed 1") == [(0.0, pytest.approx(1.1)), (0.5, pytest.approx(1.01))]
    hist = {p.name: p for p in points if p.name.startswith("history-")}  # at their R², off the told-taste line
    assert hist["history-taste"].sigma == pytest.approx(1 / 3) and hist["history-taste"].ratio == pytest.approx(1.02)
    assert hist["history-pool:1"].sigma == pytest.approx(0.5)
    low = next(p for p in points if p.rank is not None)  # a low-rank error: its own marker, not on the line
    assert (low.name, low.sigma, low.rank, low.ratio) == ("noisy-taste:0.5:8", 0.5, 8, pytest.approx(1.05))
    runs = [p for p in points if p.sigma is None]
    assert {p.name for p in runs} == {"p-ml"} and sorted(p.ratio for p in runs) == pytest.approx([1.02, 1.05])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert "| taste | 0.00 | 1.000 | seed 0: 1.050 (1.040–1.060); seed 1: 1.100 (1.088–1.113) |" in printed
    assert f"wrote {out}" in printed


def test_the_curve_refuses_what_it_cannot_draw(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A file that is not JSON, a summary without tuned-diverse's return, a plain probe's rows (no --retune), one
    with no taste term to draw from, a run without its paired test, a bad bar or label and a missing folder: each is
    a parser error naming it, no PNG."""
    good = _write(tmp_path, "good.json", _summary(0, 5.0, {"taste": (5.2, {})}, {}))
    cases = [
        ([_write(tmp_path, "bad.json", "{not json")], "bad.json"),
        ([_write(tmp_path, "noref.json", {"terms": {}})], "tuned_diverse_return"),
        ([_write(tmp_path, "plain.json", {"tuned_diverse_return": 5.0, "terms": {"taste": [{"beta": 1.0}]}})],
         "--retune"),
        ([_write(tmp_path, "obs.json", _summary(0, 5.0, {"observed-taste": (5.0, {"r2": 0.9})}, {}))],
         "no taste or noisy-taste"),
        ([_write(tmp_path, "norun.json", {**_summary(0, 5.0, {"taste": (5.2, {})}, {}),
                                          "runs": {"r-s0": {"return": 5.0}}})], "run 'r-s0' lacks"),
        ([good, "--bar", "-1"], "--bar"),
        ([good, "--label", "PPO"], "RECIPE=TEXT"),
        ([good, "--label", "nope=PPO"], "no trained recipe nope"),
    ]
    for args, why in cases:
        out = tmp_path / "x.png"
        with pytest.raises(SystemExit):
            information_curve.main([*args, "--out", str(out)])
        assert why in capsys.readouterr().err and not out.exists()
    with pytest.raises(SystemExit):
        information_curve.main([good, "--out", str(tmp_path / "no" / "x.png")])
    assert "--out" in capsys.readouterr().err
