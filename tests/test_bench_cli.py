"""bench.cli.print_analysis: the shared ending of the analysis commands (errors by name, table, JSON last)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from bench import cf_rule_split
from bench.cli import print_analysis


def _parser() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(prog="some-analysis")


def test_prints_the_table_then_the_json_with_numpy_scalars_as_floats(capsys: pytest.CaptureFixture[str]) -> None:
    res = print_analysis(_parser(), lambda: {"mean": np.float32(0.25), "n": 3}, lambda r: f"| mean | {r['mean']} |")
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "| mean | 0.25 |"
    assert json.loads(out[-1]) == {"mean": 0.25, "n": 3}
    assert res["n"] == 3


@pytest.mark.parametrize("exc", [ValueError("report has no ranker 'x'"), FileNotFoundError("no such run: r")])
def test_a_bad_input_ends_as_a_usage_error_that_names_it(exc: Exception, capsys: pytest.CaptureFixture[str]) -> None:
    def compute() -> dict:
        raise exc

    with pytest.raises(SystemExit) as ended:
        print_analysis(_parser(), compute, str)
    assert ended.value.code == 2
    err = capsys.readouterr().err
    assert "some-analysis: error:" in err and str(exc) in err


def test_other_errors_are_not_hidden() -> None:
    def compute() -> dict:
        raise KeyError("a bug, not bad input")

    with pytest.raises(KeyError):
        print_analysis(_parser(), compute, str)


def test_an_unserialisable_result_is_refused_after_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(TypeError, match="not JSON serializable"):
        print_analysis(_parser(), lambda: {"x": object()}, lambda r: "table")
    assert capsys.readouterr().out.startswith("table")


def test_cf_rule_split_names_a_missing_run_instead_of_a_traceback(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "no-such-run"
    with pytest.raises(SystemExit) as ended:
        cf_rule_split.main([str(missing)])
    assert ended.value.code == 2
    assert str(missing) in capsys.readouterr().err
