"""Plausibility rows and flags (agents/plausibility.py, configs/plausibility.yaml)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import sparse

from agents.evaluation import EpisodeStats
from agents.plausibility import (
    FIGURES,
    FLAG,
    load_range,
    parse_range,
    plausibility,
    plausibility_markdown,
    row_from_stats,
    row_from_summary,
    write_plausibility,
)
from agents.report import summarise

RANGE = {
    "tolerance": 0.25,
    "figures": {
        "ctr_per_slate": {"lo": 0.15, "hi": 0.5, "sources": ["a", "b"]},
        "requests_per_session": {"lo": 6.0, "hi": 14.0},
        "purchases_per_click": {"lo": 0.04, "hi": 0.13},
        "dwell_per_click_s": {"lo": 37.0, "hi": 60.0},
    },
}


def _stats(clicks: list[float], purchases: list[float], dwell: list[float], length: list[float]) -> EpisodeStats:
    e = len(clicks)
    arr = np.asarray
    return EpisodeStats(ret=arr(clicks, float), clicks=arr(clicks, float), purchases=arr(purchases, float),
                        dwell=arr(dwell, float), length=arr(length, float), ndcg=np.zeros(e), diversity=np.zeros(e),
                        novelty=np.zeros(e), precision=np.zeros(e), recall=np.zeros(e), f1=np.zeros(e),
                        users=np.arange(e), rho=np.linspace(0, 1, e), seeds=np.zeros(e, np.int64),
                        shown=sparse.csr_matrix((e, 5), dtype=bool), seconds=1.0)


def _results() -> dict[str, Any]:
    """A summarise report: a baseline in range, a policy that exploits the simulator (long sessions, every slate
    clicked, most clicks bought) and one without a click."""
    stats = {
        "tuned-alpha": _stats([3, 2, 4, 3], [0, 1, 0, 0], [120, 80, 160, 110], [10, 8, 12, 9]),
        "ppo": _stats([30, 28, 32, 29], [25, 20, 30, 22], [900, 800, 1000, 850], [30, 29, 33, 30]),
        "mute": _stats([0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [7, 6, 8, 7]),
    }
    return summarise(stats, reference="tuned-alpha", n_boot=50)


def test_rows_from_stats_and_summary_agree() -> None:
    s = _stats([3, 2, 4, 3], [0, 1, 0, 0], [120, 80, 160, 110], [10, 8, 12, 9])
    row = row_from_stats(s)
    assert row == pytest.approx({"ctr_per_slate": 12 / 39, "requests_per_session": 39 / 4,
                                 "purchases_per_click": 1 / 12, "dwell_per_click_s": 470 / 12})
    res = summarise({"x": s}, reference="x", n_boot=20)
    assert row_from_summary(res["rankers"]["x"]) == pytest.approx(row)
    with pytest.raises(KeyError, match="ranker 'y': the report has no mean of 'dwell'"):
        row_from_summary({k: v for k, v in res["rankers"]["x"].items() if k != "dwell"}, "y")


def test_flags_fire_out_of_range_and_not_in_range() -> None:
    rng = parse_range(RANGE)
    inside = {"ctr_per_slate": 0.3, "requests_per_session": 9.0, "purchases_per_click": 0.08, "dwell_per_click_s": 45.0}
    assert rng.flags(inside) == []
    # just inside the tolerance band on both sides: still in range
    edge = {"ctr_per_slate": 0.15 * 0.76, "requests_per_session": 14.0 * 1.24, "purchases_per_click": 0.04,
            "dwell_per_click_s": 60.0}
    assert rng.flags(edge) == []
    out = {"ctr_per_slate": 0.9, "requests_per_session": 9.0, "purchases_per_click": 0.6, "dwell_per_click_s": 10.0}
    assert rng.flags(out) == ["ctr_per_slate", "purchases_per_click", "dwell_per_click_s"]
    just_out = dict(inside, requests_per_session=14.0 * 1.26)
    assert rng.flags(just_out) == ["requests_per_session"]
    assert rng.flags(dict(inside, purchases_per_click=math.nan)) == ["purchases_per_click"]  # undefined: not ok
    assert rng.flags(dict(inside, purchases_per_click=None)) == ["purchases_per_click"]


def test_report_flags_the_exploiting_policy_only(tmp_path: Path) -> None:
    results = _results()
    rep = write_plausibility(results, tmp_path, policies=["ppo"], bounds=parse_range(RANGE, "test-range"))
    assert rep["flags"]["tuned-alpha"] == []
    assert rep["policy_flags"] == {"ppo": ["ctr_per_slate", "requests_per_session", "purchases_per_click"]}
    assert rep["flags"]["mute"] == ["ctr_per_slate", "purchases_per_click", "dwell_per_click_s"]
    assert rep["rows"]["mute"]["purchases_per_click"] is None  # no clicks: undefined, not NaN
    assert results["plausibility"]["rows"] == rep["rows"]
    on_disk = json.loads((tmp_path / "plausibility.json").read_text(encoding="utf-8"))
    assert on_disk["policy_flags"] == rep["policy_flags"]
    md = (tmp_path / "plausibility.md").read_text(encoding="utf-8")
    ppo_line = next(line for line in md.splitlines() if line.startswith("| **ppo**"))
    assert ppo_line.count(FLAG) == 3
    tuned_line = next(line for line in md.splitlines() if line.startswith("| tuned-alpha"))
    assert FLAG not in tuned_line
    assert "ppo outside on ctr_per_slate, requests_per_session, purchases_per_click" in md
    assert plausibility_markdown(results["plausibility"]) == md
    assert "| *plausible range* | 0.150–0.500 | 6.0–14.0 |" in md
    assert "| *flagged outside* | 0.11" in md and "–0.625 | 4.5–17.5 |" in md
    assert json.dumps(results, allow_nan=False)  # the report stays strict JSON (write_report writes it so)
    with pytest.raises(KeyError, match="policy 'nope' is not among"):
        plausibility(results, policies=["nope"], bounds=parse_range(RANGE))


def test_shipped_range_holds_its_references() -> None:
    """configs/plausibility.yaml parses, names its sources, and holds the figures it was built from."""
    rng = load_range()
    assert set(rng.bounds) == set(FIGURES) and 0 < rng.tolerance < 1
    for fig, b in rng.bounds.items():
        assert 0 <= b.lo < b.hi and b.sources, fig
    # the end points quoted in the file's header (ml and default presets, random / tuned-alpha / diverse / oracle)
    quoted = [(0.1575, 8.572, 0.1274, 48.05), (0.3659, 12.538, 0.0802, 40.22), (0.4297, 14.154, 0.0766, 40.52),
              (0.4318, 14.07, 0.0708, 36.92), (0.1709, 6.774, 0.0967, 45.43), (0.3213, 8.726, 0.0556, 39.66),
              (0.4084, 9.736, 0.1006, 59.32), (0.4852, 11.6, 0.0412, 38.42)]
    for row in quoted:
        assert rng.flags(dict(zip(FIGURES, row, strict=True))) == [], row
    assert rng.flags(dict(zip(FIGURES, (0.9, 40.0, 0.9, 5.0), strict=True))) == list(FIGURES)


@pytest.mark.parametrize(("edit", "message"), [
    (lambda d: d.pop("tolerance"), "needs 'tolerance' and 'figures'"),
    (lambda d: d.update(tolerance=1.5), "tolerance must be in"),
    (lambda d: d.update(extra=1), "unknown keys \\['extra'\\]"),
    (lambda d: d["figures"].pop("dwell_per_click_s"), "missing \\['dwell_per_click_s'\\]"),
    (lambda d: d["figures"].update(ctr=1), "unknown \\['ctr'\\]"),
    (lambda d: d["figures"]["ctr_per_slate"].update(lo=0.9), "figures.ctr_per_slate: need 0 <= lo <= hi"),
    (lambda d: d["figures"]["ctr_per_slate"].update(hi="high"), "figures.ctr_per_slate.hi: expected a finite"),
    (lambda d: d["figures"]["ctr_per_slate"].update(mid=0.3), "figures.ctr_per_slate: unknown keys"),
    (lambda d: d["figures"]["ctr_per_slate"].update(sources="x"), "ctr_per_slate.sources: expected a list"),
])
def test_bad_range_files_are_named(tmp_path: Path, edit: Any, message: str) -> None:
    data = json.loads(json.dumps(RANGE))
    edit(data)
    path = tmp_path / "range.yaml"
    path.write_text(json.dumps(data), encoding="utf-8")  # JSON is YAML
    with pytest.raises(ValueError, match=message) as info:
        load_range(path)
    assert str(path) in str(info.value)


def test_missing_range_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="plausibility range file"):
        load_range(tmp_path / "nope.yaml")


def test_evaluate_writes_the_plausibility_report(tmp_path: Path, run_dir: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """evaluate.py's hook: plausibility.{json,md} beside results.*, the run:DIR ranker marked as the policy."""
    import evaluate

    out = tmp_path / "report"
    evaluate.main(["--preset", "small", "--encoder", "hashing", "--episodes", "8", "--seeds", "1", "--no-progress",
                   "--rankers", f"random,run:{run_dir}", "--reference", "random", "--set", "eval.bootstrap=100",
                   "--set", "encoder.hashing_dim=64", "--set", f"env.cache_dir={tmp_path}", "--set",
                   f"encoder.cache_dir={tmp_path}", "--out", str(out)])
    rep = json.loads((out / "plausibility.json").read_text(encoding="utf-8"))
    assert list(rep["rows"]) == ["random", f"run:{run_dir}"]
    assert rep["policies"] == [f"run:{run_dir}"]
    assert "plausibility.md" in capsys.readouterr().out
    assert (out / "plausibility.md").read_text(encoding="utf-8").count(f"| **run:{run_dir}** |") == 1
