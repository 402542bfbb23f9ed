"""The feedback probe (bench/feedback_probe.py) on the tiny trained run: files, rows, α range, determinism,
behaviours, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench.feedback_probe import (
    BEHAVIOURS,
    REPORT_FILES,
    ProbeError,
    ProbeSettings,
    main,
    pick_click,
    request_candidates,
    run_probe,
    session_pool,
)
from envs.presets import preset_config
from envs.spaces import F_CF, F_LLM, FEATURE_NAMES
from envs.world import World

SETTINGS = ProbeSettings(sessions=6, requests=6, seed=3, n_boot=200)


@pytest.fixture(scope="module")
def probe_result(run_dir: Path, onnx_export: Path, small_world: World) -> dict[str, Any]:
    """The probe on the tiny run, through its ONNX export."""
    return run_probe(run_dir, SETTINGS, export_dir=onnx_export, world=small_world)


def test_cli_writes_the_three_files(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The command as documented (its own temporary ONNX export) writes json / md / png and prints the table."""
    out = tmp_path / "report"
    assert main([str(run_dir), "--sessions", "3", "--requests", "5", "--bootstrap", "50", "--out", str(out)]) == 0
    for name in REPORT_FILES.values():
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert (out / "feedback_probe.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads((out / "feedback_probe.json").read_text(encoding="utf-8"))
    assert len(data["rows"]) == 5 * len(BEHAVIOURS)
    assert data["setup"]["export"]["source"].startswith("temporary export")
    printed = capsys.readouterr().out
    assert "| request | behaviour | α (95% CI)" in printed and "α gap cf − llm at request 5" in printed
    assert json.loads(printed.strip().splitlines()[-1])["alpha_gap_request"] == 5
    md = (out / "feedback_probe.md").read_text(encoding="utf-8")
    assert md.count("\n| ") == 1 + 5 * len(BEHAVIOURS)  # header + one row per (request, behaviour)
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temp files


def test_default_out_is_the_runs_report_folder(run_dir: Path, onnx_export: Path, tmp_path: Path) -> None:
    run = tmp_path / "run-copy"
    shutil.copytree(run_dir, run, ignore=shutil.ignore_patterns("export-*", "report"))
    exp = tmp_path / "export"
    shutil.copytree(onnx_export, exp)
    manifest = json.loads((exp / "manifest.json").read_text(encoding="utf-8"))
    manifest["run_dir"] = str(run.resolve())  # the manifest is not hashed: point it at the copy
    (exp / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    assert main([str(run), "--sessions", "2", "--requests", "2", "--bootstrap", "20", "--export", str(exp)]) == 0
    assert sorted(p.name for p in (run / "report").iterdir()) == sorted(REPORT_FILES.values())


def test_one_row_per_request_and_behaviour(probe_result: dict[str, Any]) -> None:
    rows = probe_result["rows"]
    assert [(r["request"], r["behaviour"]) for r in rows] == [
        (i, b) for i in range(1, SETTINGS.requests + 1) for b in BEHAVIOURS]
    for r in rows:
        assert 0.0 < r["alpha"] < 1.0, r
        lo, hi = r["alpha_ci95"]
        assert 0.0 < lo <= r["alpha"] <= hi < 1.0, r
        assert r["repulsion"] >= 0.0
        assert 1.0 <= r["slate_categories"] <= 5.0  # K = 5 on the small preset
        assert -1.0 <= r["slate_llm_sim"] <= 1.0 and np.isfinite(r["slate_cf_score"])
    gap = probe_result["alpha_gap"]
    assert gap["request"] == 5
    cf5 = next(r["alpha"] for r in rows if r["request"] == 5 and r["behaviour"] == "cf")
    llm5 = next(r["alpha"] for r in rows if r["request"] == 5 and r["behaviour"] == "llm")
    assert gap["cf_minus_llm"] == pytest.approx(cf5 - llm5, abs=1e-12)
    assert len(gap["by_request"]) == SETTINGS.requests


def test_same_users_and_candidates_before_any_feedback(probe_result: dict[str, Any]) -> None:
    """Request 1 comes before any click: the three behaviours see the same users and candidates, so the policy's
    answer is the same (common random numbers)."""
    first = {r["behaviour"]: r for r in probe_result["rows"] if r["request"] == 1}
    for key in ("alpha", "repulsion", "slate_llm_sim", "slate_cf_score", "slate_categories"):
        assert first["cf"][key] == first["llm"][key] == first["none"][key], key


def test_behaviours_click_what_they_should(probe_result: dict[str, Any]) -> None:
    rows = probe_result["rows"]
    ev = probe_result["events"]
    n = SETTINGS.sessions * SETTINGS.requests
    assert ev["none"] == {"sent": 0, "applied": 0}
    assert all(r["clicks"] == 0 and r["click_lean"] is None for r in rows if r["behaviour"] == "none")
    for b in ("cf", "llm"):
        assert ev[b] == {"sent": n, "applied": n}, b  # every click is on a shown item, so every one is applied
        assert all(r["clicks"] == SETTINGS.sessions for r in rows if r["behaviour"] == b)
    # cf clicks lean to CF (positive z(cf) − z(llm)), llm clicks to the LLM similarity
    assert all(r["click_lean"] > 0 for r in rows if r["behaviour"] == "cf")
    assert all(r["click_lean"] < 0 for r in rows if r["behaviour"] == "llm")
    # the clicks reach the policy's context: the evidence columns move apart after the first request
    later = {r["behaviour"]: r for r in rows if r["request"] == SETTINGS.requests}
    assert later["none"]["ctx_clicked_cf_ema"] == 0.0 and later["none"]["ctx_clicked_llm_ema"] == 0.0
    assert later["cf"]["ctx_clicked_cf_ema"] > later["llm"]["ctx_clicked_cf_ema"]
    assert later["llm"]["ctx_clicked_llm_ema"] > later["cf"]["ctx_clicked_llm_ema"]


def test_same_seed_same_result_other_seed_other_users(run_dir: Path, onnx_export: Path, small_world: World,
                                                      probe_result: dict[str, Any]) -> None:
    again = run_probe(run_dir, SETTINGS, export_dir=onnx_export, world=small_world)
    assert json.dumps(again, sort_keys=True) == json.dumps(probe_result, sort_keys=True)
    other = run_probe(run_dir, ProbeSettings(**{**SETTINGS.__dict__, "seed": 4}), export_dir=onnx_export,
                      world=small_world)
    assert other["users"] != probe_result["users"]


def test_history_import_runs(run_dir: Path, onnx_export: Path, small_world: World) -> None:
    """``--user-import history``: the CF factor is folded in from the history and each click."""
    res = run_probe(run_dir, ProbeSettings(sessions=2, requests=3, n_boot=20, user_import="history"),
                    export_dir=onnx_export, world=small_world)
    assert res["settings"]["user_import"] == "history"
    assert res["events"]["cf"]["applied"] == 6
    assert all(0.0 < r["alpha"] < 1.0 for r in res["rows"])


def test_pick_click() -> None:
    feats = np.zeros((4, len(FEATURE_NAMES)), np.float32)
    feats[:, F_LLM] = [0.9, 0.1, 0.5, 0.2]
    feats[:, F_CF] = [-1.0, 2.0, 0.0, 1.0]
    assert pick_click("cf", feats) == 1
    assert pick_click("llm", feats) == 0
    assert pick_click("none", feats) is None
    with pytest.raises(ValueError, match="behaviour must be one of"):
        pick_click("both", feats)


def test_pool_and_candidates(small_world: World) -> None:
    cfg = preset_config("small")
    pop = small_world.populations["heldout"]
    pool = session_pool(small_world, cfg, 7, "heldout", 10, np.random.default_rng(0))
    assert len(pool) == cfg.candidates.pool_size and len(np.unique(pool)) == len(pool)
    assert not set(pool.tolist()) & set(pop.history[7][pop.history[7] >= 0].tolist())  # history excluded
    again = session_pool(small_world, cfg, 7, "heldout", 10, np.random.default_rng(0))
    assert np.array_equal(pool, again)
    cand = request_candidates(pool, {int(pool[0]), int(pool[1])}, 20, np.random.default_rng(1))
    assert len(np.unique(cand)) == 20 and set(cand.tolist()) <= set(pool.tolist())
    assert int(pool[0]) not in cand.tolist() and int(pool[1]) not in cand.tolist()
    with pytest.raises(ProbeError, match="fewer than N=20"):
        request_candidates(pool[:21], {int(pool[0]), int(pool[1])}, 20, np.random.default_rng(1))
    # without a reserve the pool is the whole priority list: it holds the user's top items by observed LLM
    # similarity and by observed CF score (their shares of the pool)
    whole = set(session_pool(small_world, cfg, 7, "heldout", 0, np.random.default_rng(2)).tolist())
    hist = set(pop.history[7].tolist())
    n_llm = int(cfg.candidates.llm_share / 1.0 * cfg.candidates.pool_size)
    top_llm = [i for i in np.argsort(-(small_world.item_emb @ pop.init_state[7]), kind="stable").tolist()
               if i not in hist][:n_llm]
    top_cf = [i for i in np.argsort(-(small_world.item_factors @ pop.cf_user[7]), kind="stable").tolist()
              if i not in hist][:5]
    assert set(top_llm) <= whole and set(top_cf) <= whole


def test_bad_input_is_a_clear_one_line_error(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("feedback_probe: error:") and "is not a directory" in err and "\n" not in err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([str(empty)]) == 2
    err = capsys.readouterr().err.strip()
    assert "config.yaml is missing" in err and "\n" not in err
    # a run whose world cannot be loaded (its preset folder is gone)
    broken = tmp_path / "broken"
    broken.mkdir()
    text = (run_dir / "config.yaml").read_text(encoding="utf-8")
    (broken / "config.yaml").write_text(text.replace("preset_dir: null", f"preset_dir: {tmp_path / 'gone'}"),
                                        encoding="utf-8")
    assert main([str(broken)]) == 2
    err = capsys.readouterr().err.strip()
    assert "cannot load the world" in err and "\n" not in err
    assert main([str(run_dir), "--requests", "31"]) == 2  # more than the small preset's max_steps
    assert "max_steps" in capsys.readouterr().err
    assert main([str(run_dir), "--sessions", "0"]) == 2
    assert "sessions must be an integer >= 1" in capsys.readouterr().err
    assert main([str(run_dir), "--users", "martians", "--export", str(tmp_path)]) == 2
    assert "no population 'martians'" in capsys.readouterr().err


def test_export_of_another_run_is_refused(run_dir: Path, onnx_export: Path, small_world: World,
                                          tmp_path: Path) -> None:
    exp = tmp_path / "export"
    shutil.copytree(onnx_export, exp)
    manifest = json.loads((exp / "manifest.json").read_text(encoding="utf-8"))
    manifest["run_dir"] = "/somewhere/else"
    (exp / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    with pytest.raises(ProbeError, match="was made from '/somewhere/else'"):
        run_probe(run_dir, ProbeSettings(sessions=1, requests=1, n_boot=10), export_dir=exp, world=small_world)


def test_effective_alpha_puts_both_signals_on_one_scale() -> None:
    """α = 0.9375 on a cosine with spread 0.2 and a CF score with spread 3 weighs the two standardised signals
    equally (0.5); α = 0.5 there is almost all CF; equal spreads leave α as it is."""
    import numpy as np

    from bench.feedback_probe import effective_alpha
    from envs.spaces import F_CF, F_LLM, FEATURE_NAMES

    rng = np.random.default_rng(0)
    f = np.zeros((50, len(FEATURE_NAMES)))
    z1, z2 = rng.normal(size=50), rng.normal(size=50)
    f[:, F_LLM] = 0.2 * (z1 - z1.mean()) / z1.std()
    f[:, F_CF] = 3.0 * (z2 - z2.mean()) / z2.std()
    assert effective_alpha(0.9375, f) == pytest.approx(0.5)
    assert effective_alpha(0.5, f) == pytest.approx(0.2 / 3.2)
    f[:, F_CF] = 0.2 * (z2 - z2.mean()) / z2.std()
    assert effective_alpha(0.3, f) == pytest.approx(0.3)
    # a policy with the standardised gate already weighs the standardised signals: its α is the effective one
    f[:, F_CF] = 3.0 * (z2 - z2.mean()) / z2.std()
    assert effective_alpha(0.9375, f, "standardised") == pytest.approx(0.9375)
    with pytest.raises(ValueError, match="scale must be"):
        effective_alpha(0.5, f, "logit")


def test_effective_alpha_of_a_batch_is_the_per_request_value() -> None:
    """The vectorised form (B requests at once, as the final report and ``PPORanker`` use it) gives each row the
    value of its own request, and NaN for a request whose two signals are both constant."""
    import numpy as np

    from agents.ppo_ranker import effective_alpha as rows
    from bench.feedback_probe import effective_alpha
    from envs.spaces import F_CF, F_LLM, FEATURE_NAMES

    rng = np.random.default_rng(1)
    f = np.zeros((4, 30, len(FEATURE_NAMES)), np.float32)
    f[..., F_LLM] = rng.normal(size=(4, 30)) * np.array([0.1, 0.2, 0.3, 0.0])[:, None]
    f[..., F_CF] = rng.normal(size=(4, 30)) * np.array([3.0, 1.0, 0.3, 0.0])[:, None]
    alpha = np.array([0.9, 0.5, 0.2, 0.7])
    got = rows(alpha, f)
    assert got.shape == (4,)
    for b in range(3):
        assert got[b] == pytest.approx(effective_alpha(float(alpha[b]), f[b]))
    assert np.isnan(got[3])
    assert got[0] < alpha[0] and got[1] < alpha[1]  # the wider CF spread takes weight from the LLM side
