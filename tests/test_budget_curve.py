"""``bench.budget_curve``: PPO's paired margin against the steps each protocol's runs trained, pooled over seeds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench import budget_curve


def _run(root: Path, name: str, steps: int) -> str:
    """A finished run folder (its summary names the steps) below ``root``; returns its path relative to ``root``."""
    (root / name).mkdir(parents=True)
    (root / name / "summary.json").write_text(json.dumps({"total_timesteps": steps}), encoding="utf-8")
    return name


def _summary(root: Path, seed: int, runs: dict[str, dict[str, float]], eval_seed: int | None = None,
             tag: str = "") -> str:
    """A ``reference_check --json`` summary of one training seed: run → reference → paired difference."""
    data: dict[str, Any] = {
        "seed": seed, "eval_seed": 60000 + seed if eval_seed is None else eval_seed, "episodes": 100,
        "rankers": {"tuned-diverse": 8.0 + seed, "tuned-pop-diverse": 8.1 + seed},
        "runs": {run: {"return": 1.0, **{f"vs {ref}": {"diff": d, "ci95": [d - 1, d + 1]} for ref, d in refs.items()}}
                 for run, refs in runs.items()},
    }
    path = root / f"check-s{seed}{tag}.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return str(path)


@pytest.fixture()
def checks(tmp_path: Path) -> tuple[Path, list[str]]:
    """Three seeds; a short protocol (1M steps) and a long one (5M–7M); the long one in a second file per seed."""
    files = []
    for seed, (short, long) in enumerate([(0.1, 0.3), (-0.1, 0.2), (0.3, 0.4)]):
        s = _run(tmp_path, f"runs/short-s{seed}", 1_000_000)
        lo = _run(tmp_path, f"runs/long-s{seed}", 5_000_000 + seed * 1_000_000)
        files.append(_summary(tmp_path, seed, {s: {"tuned-diverse": short, "tuned-pop-diverse": short - 0.1}}))
        files.append(_summary(tmp_path, seed, {lo: {"tuned-diverse": long}}, tag="-long"))
    return tmp_path, files


def test_runs_pool_per_protocol_in_order_of_steps_and_the_figure_is_written(
        checks: tuple[Path, list[str]], capsys: pytest.CaptureFixture[str]) -> None:
    """Means and per-seed values per (protocol, reference), fewest steps first, the steps' median and range from
    the runs' summaries; a protocol met on one seed only is left out; the PNG is written."""
    root, files = checks
    out = root / "fig" / "curve.png"
    budgets = budget_curve.main([*files, "--base", str(root), "--out", str(out)])
    assert [(b.protocol, b.reference) for b in budgets] == [
        ("runs/short", "tuned-diverse"), ("runs/short", "tuned-pop-diverse"), ("runs/long", "tuned-diverse")]
    short, short_pop, long = budgets
    assert short.steps == 1_000_000 and short.steps_range == (1_000_000, 1_000_000)
    assert long.steps == 6_000_000 and long.steps_range == (5_000_000, 7_000_000)
    assert short.per_seed == pytest.approx({0: 0.1, 1: -0.1, 2: 0.3})
    assert short.mean == pytest.approx(0.1) and short_pop.mean == pytest.approx(0.0)
    assert long.mean == pytest.approx(0.3)
    assert short.ci95[0] < short.mean < short.ci95[1]
    assert long.ci95[1] - long.ci95[0] < short.ci95[1] - short.ci95[0]  # less spread across seeds, narrower
    printed = capsys.readouterr().out
    assert "| runs/long | 5.0M–7.0M | tuned-diverse | +0.300" in printed
    assert "| 2/3 | 0: +0.10, 1: -0.10, 2: +0.30 |" in printed
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    kept = budget_curve.main([*files, "--base", str(root), "--reference", "tuned-pop-diverse"])
    assert [(b.protocol, b.reference) for b in kept] == [("runs/short", "tuned-pop-diverse")]
    kept = budget_curve.main([*files, "--base", str(root), "--protocol", "runs/long"])
    assert [b.protocol for b in kept] == ["runs/long"]


def test_bad_input_is_refused_with_what_is_wrong(checks: tuple[Path, list[str]],
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """A seed's summaries on other sessions, a run in two summaries of its seed, a run without a summary, a file
    that is not a check's summary, a malformed comparison and an unknown reference each stop the command with a
    message naming them."""
    root, files = checks

    def refused(argv: list[str]) -> str:
        with pytest.raises(SystemExit):
            budget_curve.main([*argv, "--base", str(root)])
        return capsys.readouterr().err

    assert "--reference nope: not in these summaries" in refused([*files, "--reference", "nope"])
    assert "on two or more seeds" in refused(files[:2])  # one seed: nothing to pool
    other = _summary(root, 0, {"runs/long-s0": {"tuned-diverse": 0.0}}, eval_seed=1, tag="-other")
    assert "other sessions or references" in refused([*files, other])
    repicked = json.loads(Path(files[1]).read_text(encoding="utf-8"))
    repicked["rankers"]["tuned-diverse"] += 0.5  # the same sessions, another pick of the reference
    Path(files[1]).write_text(json.dumps(repicked), encoding="utf-8")
    assert "other sessions or references" in refused(files)
    del repicked["rankers"]["tuned-diverse"]  # a summary that plays fewer references meets the same sessions
    Path(files[1]).write_text(json.dumps(repicked), encoding="utf-8")
    assert budget_curve.main([*files, "--base", str(root)])
    again = _summary(root, 0, {"runs/short-s0": {"tuned-diverse": 0.0}}, tag="-again")
    assert "runs/short-s0 is in" in refused([*files, again])
    (root / "runs/short-s1/summary.json").unlink()
    assert "short-s1/summary.json" in refused(files)
    bad = root / "bad.json"
    bad.write_text("[1, 2]", encoding="utf-8")
    assert "bad.json: not a bench.reference_check summary" in refused([str(bad)])
    broken = json.loads(Path(files[0]).read_text(encoding="utf-8"))
    broken["runs"]["runs/short-s0"]["vs tuned-diverse"] = 0.1  # a bare number, not a paired test
    Path(files[0]).write_text(json.dumps(broken), encoding="utf-8")
    assert "runs/short-s0's comparisons are not reference_check's" in refused(files)
