"""``bench.quality_figure``: the protocols' figures on one scale from tuned-diverse (0) to the ceiling (1)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench import quality_figure


def _protocol(ppo: float, ref: float, top: float, ci: tuple[float, float], **extra: Any) -> dict[str, Any]:
    """A quality-protocol result with the fields the figure reads."""
    returns = {"ppo": ppo, "tuned-diverse": ref, "tuned-oracle-diverse": top, "oracle": ref - 1.0,
               "session-diverse": ref + 0.1, "tuned-alpha": ref / 2}
    return {"return": {k: {"mean": v, "ci95": [v - 0.1, v + 0.1]} for k, v in returns.items()},
            "diff_vs_tuned_diverse": {"mean": ppo - ref, "ci95": [-9.0, 9.0]},
            "vs_tuned_diverse_seeds_and_sessions": {"diff": {"mean": ppo - ref, "ci95": list(ci)}}, **extra}


def _write(tmp_path: Path, name: str, protocol: dict[str, Any]) -> str:
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(protocol), encoding="utf-8")
    return str(path)


def test_the_figure_places_ppo_and_the_bars_on_the_gap_scale(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """Positions are (x − tuned-diverse) / (ceiling − tuned-diverse); PPO's interval is the paired one over seeds
    and sessions; a ratio bar and the adaptation bar (60% of the value) land where they should; the PNG is written."""
    wide = _write(tmp_path, "wide", _protocol(11.0, 10.0, 20.0, (0.5, 1.5)))
    narrow = _write(tmp_path, "narrow", _protocol(5.05, 5.0, 5.3, (0.01, 0.09)))
    adapt = _write(tmp_path, "adapt", _protocol(9.3, 9.0, 16.0, (0.1, 0.5),
                                                 adaptation={"value": {"mean": 0.35, "ci95": [0.2, 0.5]}}))
    out = tmp_path / "fig" / "bars.png"
    out.parent.mkdir()
    placed = {p.label: p for p in quality_figure.main([f"wide={wide}", f"narrow={narrow}", f"adapt={adapt}",
                                                        "--bar", "wide=1.10", "--bar", "narrow=1.05",
                                                        "--out", str(out)])}
    assert placed["wide"].ppo == pytest.approx(0.1) and placed["wide"].bar == pytest.approx(0.1)
    assert placed["wide"].ppo_ci == pytest.approx((0.05, 0.15))
    assert placed["narrow"].ppo == pytest.approx(0.05 / 0.3)
    assert placed["narrow"].bar == pytest.approx(0.25 / 0.3)  # 1.05 × 5.0 = 5.25: most of a narrow gap
    assert placed["narrow"].ratio(1.0) == pytest.approx(5.3 / 5.0)
    assert placed["adapt"].bar == pytest.approx(0.6 * 0.35 / 7.0)  # no --bar: 60% of the value of adaptation
    assert placed["adapt"].rule == ("session-diverse", pytest.approx(0.1 / 7.0))
    assert placed["adapt"].myopic == pytest.approx(-1.0 / 7.0)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert "| narrow | 5.00 | 5.30 (1.060×) | 1.010× |" in printed and f"wrote {out}" in printed


def test_the_figure_refuses_what_it_cannot_place(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A protocol without the ceiling's return, a ceiling not above the reference, a bar for no protocol, a bad bar,
    a file that is not JSON: each is a parser error naming it, and no PNG is written."""
    good = _write(tmp_path, "good", _protocol(11.0, 10.0, 20.0, (0.5, 1.5)))
    no_top = _protocol(11.0, 10.0, 20.0, (0.5, 1.5))
    del no_top["return"]["tuned-oracle-diverse"]
    flat = _protocol(11.0, 10.0, 9.0, (0.5, 1.5))
    (tmp_path / "junk.json").write_text("{not json", encoding="utf-8")
    out = tmp_path / "bars.png"
    cases = [([f"a={_write(tmp_path, 'no_top', no_top)}"], "no 'tuned-oracle-diverse' return"),
             ([f"a={_write(tmp_path, 'flat', flat)}"], "is not above tuned-diverse"),
             ([f"a={good}", "--bar", "b=1.1"], "no protocol is labelled 'b'"),
             ([f"a={good}", "--bar", "a=-1"], "must be a positive number"),
             ([f"a={good}", "--bar", "a=x"], "not a number"),
             ([f"a={tmp_path / 'junk.json'}"], "is not JSON"),
             ([f"a={tmp_path / 'missing.json'}"], "cannot read"),
             ([good], "must be LABEL=VALUE")]
    for argv, message in cases:
        with pytest.raises(SystemExit):
            quality_figure.main([*argv, "--out", str(out)])
        assert message in capsys.readouterr().err, message
    assert not out.exists()
