"""Export: a tiny trained run → ONNX / TorchScript artifact that ranks like the SB3 model.

The fixtures (a tiny run directory and its exports, ``make_run_dir``) are in ``tests/conftest.py``, shared with
``tests/test_serving.py``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_run_dir

from agents.export import ITEMS_FILE, MANIFEST_FILE, MODEL_FILES, TIE_TOL, export_run, main, run_exported, tie_tolerance
from agents.serving import greedy_slates
from envs.spaces import CONTEXT_NAMES, FEATURE_NAMES
from envs.world import World


def _manifest(path: Path) -> dict:
    return json.loads((path / MANIFEST_FILE).read_text(encoding="utf-8"))


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_writes_self_contained_artifact(fmt: str, onnx_export: Path, ts_export: Path,
                                               small_world: World) -> None:
    out = onnx_export if fmt == "onnx" else ts_export
    assert sorted(p.name for p in out.iterdir()) == sorted([MANIFEST_FILE, ITEMS_FILE, MODEL_FILES[fmt]])
    m = _manifest(out)
    assert m["format"] == fmt
    assert m["feature_names"] == list(FEATURE_NAMES) and m["context_names"] == list(CONTEXT_NAMES)
    assert (m["n_candidates"], m["slate_size"], m["dim"], m["n_items"]) == (20, 5, 64, small_world.n_items)
    assert m["encoder"]["name"] == small_world.encoder_name and m["encoder"]["kind"] == "hashing"
    assert m["fallback_alpha"] == 0.6 and m["fallback_alpha_source"] == "summary.json:tuned_alpha"
    assert m["inputs"] == ["user", "features", "context"]
    assert m["outputs"] == ["logits", "alpha", "repulsion", "parts"] and m["repulsion"]
    assert m["version"] == 3 and m["score_parts"] == ["llm", "cf", "diversity", "residual", "clip"]
    items = np.load(out / ITEMS_FILE, allow_pickle=False)  # no pickled object arrays anywhere
    assert list(items["ids"]) == small_world.catalog.ids
    np.testing.assert_array_equal(items["item_emb"], small_world.item_emb)
    np.testing.assert_array_equal(items["item_features"], small_world.item_features)
    np.testing.assert_array_equal(items["category"], small_world.catalog.category)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_parity_with_sb3_model(fmt: str, run_dir: Path, onnx_export: Path, ts_export: Path,
                                      small_world: World) -> None:
    """The exported graph gives the SB3 model's deterministic slate on observations it did not see at export."""
    from agents.export import collect_observations, load_run

    out = onnx_export if fmt == "onnx" else ts_export
    p = _manifest(out)["parity"]
    assert p["slates_equal_up_to_ties"] == p["observations"] == 256
    assert p["max_abs_logit_diff"] < 1e-4 and p["other_n"] == 43 and p["max_abs_parts_diff"] < 1e-4

    cfg, model, _ = load_run(run_dir)
    obs = collect_observations(model, cfg, small_world, n_envs=16, steps=6, seed=777)
    sb3_slates, _ = model.predict(obs, deterministic=True)
    args = tuple(np.asarray(obs[n], np.float32) for n in ("user", "features", "context"))
    logits, alpha, beta = run_exported(out / MODEL_FILES[fmt], fmt, args, ["user", "features", "context"])
    groups = small_world.catalog.category[obs["candidates"]]
    cap = _manifest(out)["category_cap"]
    assert cap == 2  # the fixture's policy is a residual on the diversity heuristic, with its category cap
    np.testing.assert_array_equal(greedy_slates(logits, 5, groups, beta, cap), sb3_slates)
    assert alpha.shape == beta.shape == (96,) and np.all((alpha > 0) & (alpha < 1)) and np.all(beta > 0)
    # the repulsion and the cap matter here: without them other slates come out for some of these requests
    assert (greedy_slates(logits, 5) != sb3_slates).any(axis=1).sum() >= 5
    assert (greedy_slates(logits, 5, groups, beta) != sb3_slates).any(axis=1).sum() >= 1


def test_export_with_item_table(tmp_path: Path, small_world: World) -> None:
    """A policy with a learned item table takes candidate ids as a graph input; no summary → neutral α."""
    run = make_run_dir(tmp_path, small_world, use_item_table=True, steps=64, repulsion=False)
    out = export_run(run, "onnx", world=small_world, parity_envs=8, parity_steps=4)
    m = _manifest(out)
    assert out == run / "export"
    assert m["inputs"] == ["user", "features", "context", "candidates"] and not m["repulsion"]
    assert m["fallback_alpha_source"] == "policy_alpha_at_neutral_state" and 0 < m["fallback_alpha"] < 1
    assert m["parity"]["slates_equal_up_to_ties"] == m["parity"]["observations"] == 32


def test_export_with_standardised_gate(tmp_path: Path, small_world: World) -> None:
    """A policy whose gate weighs the standardised signals exports with parity (its α output included) and says
    so in the manifest (``alpha_scale``), which the feedback probe reads; its direct context → gate path traces."""
    run = make_run_dir(tmp_path, small_world, steps=64, gate="standardised")
    out = export_run(run, "onnx", world=small_world, parity_envs=8, parity_steps=4)
    m = _manifest(out)
    assert m["alpha_scale"] == "standardised" and m["parity"]["max_abs_alpha_diff"] <= 1e-4
    assert m["parity"]["slates_equal_up_to_ties"] == m["parity"]["observations"] == 32


def test_export_with_feature_gate(tmp_path: Path, small_world: World) -> None:
    """A policy whose feature weights follow the state (``train.policy.feature_gate``), trained until its gate has
    moved, exports with parity: the graph computes the per-request weights as the policy does."""
    run = make_run_dir(tmp_path, small_world, steps=64, gate="standardised", feature_gate=True)
    from agents.ppo_ranker import load_policy

    gate = load_policy(run, device="cpu").feature_gate_weight
    assert gate is not None and bool(gate.detach().abs().max() > 0)  # it learned away from its zero start
    out = export_run(run, "onnx", world=small_world, parity_envs=8, parity_steps=4)
    m = _manifest(out)
    assert m["parity"]["slates_equal_up_to_ties"] == m["parity"]["observations"] == 32
    assert m["parity"]["max_abs_logit_diff"] <= 1e-3 and m["parity"]["max_abs_parts_diff"] <= 1e-3


def test_export_with_the_candidates_spread(tmp_path: Path, small_world: World) -> None:
    """A policy whose state pools the candidates' spread (``train.policy.pool_spread``) exports with parity: the graph
    computes the standard deviations and the LLM–CF correlation from its ``features`` input as the policy does."""
    run = make_run_dir(tmp_path, small_world, steps=64, pool_spread=True)
    from agents.ppo_ranker import load_policy

    assert load_policy(run, device="cpu").pool_spread
    out = export_run(run, "onnx", world=small_world, parity_envs=8, parity_steps=4)
    m = _manifest(out)
    assert m["inputs"] == ["user", "features", "context"]
    assert m["parity"]["slates_equal_up_to_ties"] == m["parity"]["observations"] == 32
    assert m["parity"]["max_abs_logit_diff"] <= 1e-3


def test_a_policy_reading_session_sim_trains_and_evaluates(tmp_path: Path, small_world: World) -> None:
    """``env.obs_session_sim``: PPO trains on it (the key reaches the policy through the SB3 adapter), the run's
    ranker plays sessions of a core that has it and refuses, by name, a core without it (its export and serving:
    ``tests/test_serving.py``)."""
    from agents.evaluation import episode_plan, run_episodes
    from agents.registry import load_run
    from configs.loader import load_config
    from envs.core import BatchedCore

    run = make_run_dir(tmp_path, small_world, steps=64, session_sim=True)
    ranker = load_run(str(run))
    assert ranker.policy.session_weight is not None  # type: ignore[attr-defined]
    cfg = load_config(run / "config.yaml")
    assert cfg.env.obs_session_sim
    core = BatchedCore(small_world, cfg.env, 16, "heldout")
    stats = run_episodes(core, ranker, episode_plan(16, [0], small_world.populations["heldout"].size))
    assert np.isfinite(stats.ret).all() and stats.ret.shape == (16,)
    plain = BatchedCore(small_world, dataclasses.replace(cfg.env, obs_session_sim=False), 16, "heldout")
    with pytest.raises(ValueError, match=r"env\.obs_session_sim=true"):  # no column: said, not a KeyError
        run_episodes(plain, ranker, episode_plan(16, [0], small_world.populations["heldout"].size))


def test_a_policy_reading_the_hidden_taste_trains_evaluates_and_is_not_exported(tmp_path: Path,
                                                                               small_world: World) -> None:
    """``env.obs_hidden_taste`` (the research ablation): PPO trains on the column, the run plays sessions of a core
    that has it, ``bench.term_probe --runs`` plays it on the same sessions from a core without it (the column draws
    nothing), and the export refuses it by name (no service observes a user's true taste), writing nothing."""
    from agents.evaluation import episode_plan, run_episodes
    from agents.registry import load_run
    from agents.report import Bootstrap
    from bench.term_probe import compare_runs
    from configs.loader import load_config
    from envs.core import BatchedCore

    run = make_run_dir(tmp_path, small_world, steps=64, hidden_taste=True)
    ranker = load_run(str(run))
    assert ranker.policy.taste_weight is not None  # type: ignore[attr-defined]
    cfg = load_config(run / "config.yaml")
    core = BatchedCore(small_world, cfg.env, 16, "heldout")
    plan = episode_plan(16, [0], small_world.populations["heldout"].size)
    stats = run_episodes(core, ranker, plan)
    assert np.isfinite(stats.ret).all() and stats.ret.shape == (16,)
    plain = BatchedCore(small_world, dataclasses.replace(cfg.env, obs_hidden_taste=False), 16, "heldout")
    rows = compare_runs([str(run)], plain, small_world, plan, {"zero": np.zeros(16)}, Bootstrap(16, 200, 0))
    assert rows[str(run)]["return"] == pytest.approx(float(stats.ret.mean()), abs=1e-6)
    assert rows[str(run)]["vs zero"]["diff"] == pytest.approx(float(stats.ret.mean()), abs=1e-6)
    with pytest.raises(ValueError, match=r"hidden_taste.*not exportable"):
        export_run(run, "onnx", world=small_world, parity_envs=4, parity_steps=2)
    assert not (run / "export").exists()


def test_export_cli_and_errors(tmp_path: Path, run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The CLI loads the world from the run's config (the cache the fixture filled) and reports parity."""
    assert main([str(run_dir), "--format", "onnx", "--out", str(tmp_path / "cli"), "--parity-envs", "4",
                 "--parity-steps", "2"]) == 0
    assert "8/8 slates equal" in capsys.readouterr().out
    assert (tmp_path / "cli" / "policy.onnx").is_file()
    assert main([str(tmp_path / "nowhere")]) == 2
    assert "config.yaml is missing" in capsys.readouterr().err
    with pytest.raises(ValueError, match="format must be one of"):
        export_run(run_dir, "tflite")  # type: ignore[arg-type]


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_exported_score_parts_match_the_policy(fmt: str, run_dir: Path, onnx_export: Path, ts_export: Path,
                                               small_world: World) -> None:
    """The graph's ``parts`` output (same run as the logits) equals the policy's ``score_parts`` within 1e-4 on
    observations export did not see, sums to the graph's logits, and the run without parts gives the same
    logits."""
    from agents.export import collect_observations, load_run
    from agents.policies import SCORE_PARTS
    from agents.serving.runners import run_exported_parts

    out = onnx_export if fmt == "onnx" else ts_export
    cfg, model, _ = load_run(run_dir)
    obs = collect_observations(model, cfg, small_world, n_envs=8, steps=4, seed=4242)
    names = ["user", "features", "context"]
    args = tuple(np.asarray(obs[n], np.float32) for n in names)
    logits, alpha, beta, parts = run_exported_parts(out / MODEL_FILES[fmt], fmt, args, names)
    assert parts.shape == (32, 20, len(SCORE_PARTS))
    with torch.no_grad():
        ref = model.policy.score_parts(obs)
    for i, name in enumerate(SCORE_PARTS):
        np.testing.assert_allclose(parts[..., i], ref[name].numpy(), rtol=0, atol=1e-4, err_msg=name)
    np.testing.assert_allclose(parts.sum(-1), logits, rtol=0, atol=1e-5)
    assert np.abs(parts[..., SCORE_PARTS.index("diversity")]).max() > 0  # the fixture's diverse base penalises
    plain = run_exported(out / MODEL_FILES[fmt], fmt, args, names)
    np.testing.assert_allclose(plain[0], logits, rtol=0, atol=1e-6)
    np.testing.assert_allclose(plain[1], alpha, rtol=0, atol=1e-7)
    np.testing.assert_allclose(plain[2], beta, rtol=0, atol=1e-7)


def test_ties_are_judged_within_what_two_implementations_disagree_on() -> None:
    """Two candidates 3e-4 apart, swapped by an implementation whose logits are 2e-4 from the other's, are a tie at
    the parity check's tolerance (twice the disagreement) and not at the fixed floor; with no disagreement the floor
    holds, and the repulsion's disagreement counts once per earlier pick of the slate."""
    from agents.slate_mode import is_greedy_path

    logits = np.array([1.0003, 1.0, 0.2, 0.1])
    swapped = np.array([1, 0, 2])
    tol = tie_tolerance(2e-4, 0.0, 3)
    assert tol == pytest.approx(4e-4) and is_greedy_path(swapped, logits, None, 0.0, tol)
    assert not is_greedy_path(swapped, logits, None, 0.0, TIE_TOL)
    assert tie_tolerance(0.0, 0.0, 10) == TIE_TOL
    assert tie_tolerance(1e-4, 1e-5, 10) == pytest.approx(2 * (1e-4 + 9 * 1e-5))
