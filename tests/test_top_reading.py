"""``bench.top_reading``: what a reading of the taste knows beyond the blend, over all candidates and at the top."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from agents.evaluation import episode_plan, run_episodes
from agents.rankers import DiverseRanker, z_rows
from bench.term_probe import hidden_term, noisy_taste_term
from bench.top_reading import BETAS, _TopRecorder, main
from configs.schema import EnvConfig
from envs.factory import make_core
from envs.world import World


def test_the_recorder_scores_the_truth_at_its_maximum_and_the_blend_at_nothing_beyond_itself(
        small_world: World, small_cfg: EnvConfig) -> None:
    """The taste read exactly has every R² at 1 and the best top K there is (no reading's top K has a higher mean
    true taste, with or without the blend); σ 0 is the taste; a reading that is the blend adds nothing beyond it
    (partial R² 0, over all candidates and at the top); an independent error of σ 1 keeps about half the taste's
    variance; the recorder plays the base ranker's slates (its returns are the base's)."""
    core = make_core(small_cfg, small_cfg.preset, None, small_world, "heldout", 16)
    plan = episode_plan(16, [1], small_world.populations["heldout"].size)

    def base() -> DiverseRanker:
        return DiverseRanker(small_cfg.slate_size, 0.8, small_world.catalog.category, exposure_weight=1.0, cap=2)

    b = base()
    readings = {"taste": hidden_term(core, "semantic", "static"), "noisy:0": noisy_taste_term(core, 0.0),
                "noisy:1": noisy_taste_term(core, 1.0), "same-as-blend": lambda obs: z_rows(b.blend(obs))}
    rec = _TopRecorder(b, core, readings, top=10)
    played = run_episodes(core, rec, plan).ret
    np.testing.assert_array_equal(played, run_episodes(core, base(), plan).ret)
    table = rec.summary()
    assert rec.requests > 0 and set(table) == {"blend", *readings, "slates"}
    taste = table["taste"]
    for key in ("r2", "partial_r2", "r2_top", "partial_r2_top"):
        assert taste[key] == pytest.approx(1.0)
        assert table["noisy:0"][key] == pytest.approx(taste[key])
    assert taste["topk"]["alone"]["overlap"] == pytest.approx(1.0)
    best = taste["topk"]["alone"]["true_z"]
    scored = [c["true_z"] for name in readings for c in table[name]["topk"].values()]
    assert max(scored) == pytest.approx(best) and table["blend"]["topk"]["0"]["true_z"] < best
    assert set(taste["topk"]) == {*(str(b) for b in BETAS), "alone"}
    assert table["blend"]["partial_r2"] == 0.0 and table["blend"]["partial_r2_top"] == 0.0
    same = table["same-as-blend"]
    assert same["partial_r2"] == 0.0 and same["partial_r2_top"] == 0.0
    assert same["r2"] == pytest.approx(table["blend"]["r2"]) and 0.0 < same["r2"] < 1.0
    assert 0.3 < table["noisy:1"]["r2"] < 0.7 and 0.0 < table["noisy:1"]["partial_r2"] < table["noisy:1"]["r2"] + 0.1
    assert set(table["slates"]) == {"played"} and table["slates"]["played"]["utility_z"] == 0.0  # no shadows


def test_shadow_rankers_pick_slates_on_the_played_requests_and_hear_the_played_feedback(
        small_world: World, small_cfg: EnvConfig) -> None:
    """A shadow that is the played ranker's twin picks the played slate at every request (so it hears the same
    feedback and keeps the same session state); a shadow that ranks by the true taste picks slates of a higher mean
    true taste than the played one; the played sessions' returns do not change with shadows beside them."""
    from bench.term_probe import TermDiverseRanker

    core = make_core(small_cfg, small_cfg.preset, None, small_world, "heldout", 16)
    plan = episode_plan(16, [2], small_world.populations["heldout"].size)

    def base() -> DiverseRanker:
        return DiverseRanker(small_cfg.slate_size, 0.8, small_world.catalog.category, exposure_weight=1.0, cap=2,
                             lean_weight=1.0)  # the lean follows the session's clicks: the twin needs the feedback

    taste = hidden_term(core, "semantic", "static")
    alone = run_episodes(core, base(), plan).ret
    rec = _TopRecorder(base(), core, {}, top=10,
                       shadows={"twin": base(), "taste": TermDiverseRanker(base(), taste, 8.0)})
    np.testing.assert_array_equal(run_episodes(core, rec, plan).ret, alone)
    slates = rec.summary()["slates"]
    assert set(slates) == {"played", "twin", "taste"}
    assert slates["twin"] == slates["played"] and slates["taste"]["true_z"] > slates["played"]["true_z"] + 0.1
    assert slates["played"]["utility_z"] != 0.0


def test_bad_arguments_are_named_before_any_world_is_loaded(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for argv, flag in ((["--sigmas", "-1"], "--sigmas"), (["--sigmas", "x"], "--sigmas"),
                       (["--json", str(tmp_path / "no" / "t.json")], "--json"), (["--episodes", "0"], "--episodes")):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2 and flag in capsys.readouterr().err


def test_the_figure_pairs_each_reading_with_its_worth_on_the_same_seed(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """``--figure``: ``noisy:σ`` meets ``noisy-taste:σ``, ``taste`` meets ``taste`` and ``observed`` meets
    ``observed-taste`` of the same seed (another seed's worth, a low-rank error and the blend are not paired); the
    worth is the probe's ratio to tuned-diverse; the PNG is written; missing pieces are named."""
    import json

    from bench.top_reading import match_worth

    def top(seed: int) -> str:
        rows = {name: {"r2": r2, "partial_r2_top": p} for name, r2, p in
                (("blend", 0.4, 0.0), ("observed", 0.68, 0.3), ("noisy:0.7", 0.67, 0.44), ("taste", 1.0, 1.0))}
        path = tmp_path / f"top-s{seed}.json"
        path.write_text(json.dumps({"seed": seed, "readings": rows}), encoding="utf-8")
        return str(path)

    def worth(seed: int, terms: dict[str, tuple[float, dict[str, object]]]) -> str:
        path = tmp_path / f"voi-s{seed}.json"
        path.write_text(json.dumps({"seed": seed, "tuned_diverse_return": 8.0, "terms": {
            name: {"return": ret, "ci95": [ret - 8.1, ret - 7.9], **extra} for name, (ret, extra) in terms.items()}}),
            encoding="utf-8")
        return str(path)

    w0 = worth(0, {"taste": (14.0, {}), "noisy-taste:0.7": (9.2, {"sigma": 0.7}),
                   "noisy-taste:0.7:8": (8.4, {"sigma": 0.7, "rank": 8}), "observed-taste": (8.0, {"r2": 0.68})})
    w1 = worth(1, {"noisy-taste:0.7": (8.8, {"sigma": 0.7})})
    known = match_worth([top(0), top(1)], [w0, w1])
    got = {(k.source, k.name): (k.r2, k.partial_r2_top, round(k.worth.ratio, 6)) for k in known}
    assert got == {("seed 0", "observed"): (0.68, 0.3, 1.0), ("seed 0", "noisy:0.7"): (0.67, 0.44, 1.15),
                   ("seed 0", "taste"): (1.0, 1.0, 1.75), ("seed 1", "noisy:0.7"): (0.67, 0.44, 1.1)}
    out = tmp_path / "top.png"
    main(["--figure", top(0), "--worth", w0, "--out", str(out)])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| seed 0 | observed | 0.680 | 0.300 | 1.000" in capsys.readouterr().out
    for argv, message in ((["--figure", top(0)], "--figure needs --worth"),
                          (["--figure", top(1), "--worth", w0, "--out", str(out)], "no reading of these files"),
                          (["--worth", w0], "--worth and --out go with --figure")):
        with pytest.raises(SystemExit):
            main(argv)
        assert message in capsys.readouterr().err
