"""``train.py``'s closing message (agents/final_report.py ``print_summary``): what one run's margin says."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agents.final_report import margin_verdict, print_summary


def _summary(ci95: tuple[float, float]) -> dict[str, Any]:
    """The fields ``print_summary`` reads, PPO's paired interval against tuned-diverse given."""
    stat = {"mean": 8.0, "ci95": [7.5, 8.5]}
    return {
        "heldout": {"ppo": stat, "tuned-alpha": {"mean": 4.0, "ci95": [3.8, 4.2]}, "tuned-diverse": stat},
        "ratio_vs_tuned_alpha": 2.0, "ratio_vs_tuned_diverse": 1.0,
        "paired_vs_tuned_diverse": {"diff": sum(ci95) / 2, "ci95": list(ci95), "p_value": 0.5},
        "alpha_by_user_type": {"rho<1/3 (CF-driven)": 0.6}, "run_dir": "runs/x",
        "paths": {"model": "runs/x/model.zip", "tensorboard": "runs/x/tb", "report": "runs/x/report",
                  "plots": "runs/x/report/plots"},
    }


@pytest.mark.parametrize(("ci95", "words"), [
    ((0.05, 0.4), "above tuned-diverse on these sessions, the interval clear of 0"),
    ((-0.4, -0.05), "below tuned-diverse on these sessions, the interval clear of 0"),
    ((-0.03, 0.4), "level with tuned-diverse within these sessions' noise"),
    ((-0.4, 0.0), "level with tuned-diverse within these sessions' noise"),
])
def test_the_verdict_follows_the_paired_interval(ci95: tuple[float, float], words: str) -> None:
    """Above or below only when the interval excludes 0; otherwise level, with where the bar is measured."""
    assert words in margin_verdict(ci95)


def test_the_closing_message_says_what_the_margin_means(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The verdict line follows the paired difference, and a level run is pointed to the seeds' protocol."""
    print_summary(_summary((-0.031, 0.395)), tmp_path / "absent.md")
    out = capsys.readouterr().out
    lines = out.splitlines()
    paired = next(i for i, line in enumerate(lines) if "paired on the same sessions" in line)
    assert "level with tuned-diverse" in lines[paired + 1] and "bench.quality_protocol" in lines[paired + 1]
    print_summary(_summary((0.02, 0.395)), tmp_path / "absent.md")
    assert "PPO is above tuned-diverse on these sessions" in capsys.readouterr().out
