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
    assert rec.requests > 0 and set(table) == {"blend", *readings}
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


def test_bad_arguments_are_named_before_any_world_is_loaded(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for argv, flag in ((["--sigmas", "-1"], "--sigmas"), (["--sigmas", "x"], "--sigmas"),
                       (["--json", str(tmp_path / "no" / "t.json")], "--json"), (["--episodes", "0"], "--episodes")):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2 and flag in capsys.readouterr().err
