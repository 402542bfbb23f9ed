"""train.py end to end on the small preset (hashing encoder, tiny budgets): run directory, evaluate.py, resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import SMOKE, tiny_args

import evaluate
import train
from agents.checkpoints import checkpoint_dirs
from agents.report import read_returns


@pytest.fixture()
def cache(tmp_path: Path, runs_cache: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The test's folder; ``RECFEED_CACHE`` is the session's shared one (conftest ``runs_cache``)."""
    monkeypatch.setenv("RECFEED_CACHE", str(runs_cache))
    return tmp_path


def test_smoke_run_writes_a_run_directory_that_evaluate_loads(cache: Path) -> None:
    summary = train.main([*tiny_args(cache / "runs", "smoke", 1024), "--set",
                          "eval.extra_references=[tuned-session-diverse,tuned-switch:logistic]"])
    run = Path(summary["run_dir"])
    for name in ("config.yaml", "versions.json", "model.zip", "policy.safetensors", "policy.json", "summary.json",
                 "eval.jsonl", "report/results.json", "report/plots/alpha.png"):
        assert (run / name).is_file(), name
    assert [p.name for p in checkpoint_dirs(run / "checkpoints")] == ["step-000000001024", "step-000000000512"]
    for name in ("policy.safetensors", "policy.json", "optimizer.pt", "vecnormalize.npz", "state.json"):
        assert (run / "checkpoints" / "step-000000001024" / name).is_file(), name
    assert any((run / "tb").rglob("events.out.tfevents.*"))
    saved = json.loads((run / "summary.json").read_text())
    assert saved["total_timesteps"] >= 1024 and "ppo" in saved["heldout"] and "tuned-alpha" in saved["heldout"]
    assert "tuned-session-diverse" in saved["heldout"]  # eval.extra_references: a row of the table, a candidate below
    assert "tuned-switch:logistic" in saved["heldout"]
    # no train.select_episodes: the last iterate is the policy, and nothing of a choice is written
    assert saved["selected_iterate"] is None and "ppo-last" not in saved["heldout"]
    assert not (run / "selection.jsonl").exists() and not (run / "best_iterate.safetensors").exists()
    best = saved["best_hand_written_heldout"]  # the best non-hidden, non-PPO ranker on these sessions
    hand = {n: v["mean"] for n, v in saved["heldout"].items() if n not in ("ppo", "oracle", "tuned-oracle-diverse")}
    assert hand[best["name"]] == max(hand.values()) and best["return"] == pytest.approx(hand[best["name"]])
    if hand.get("tuned-diverse") == best["return"]:  # a tie with tuned-diverse (it kept its start) names it
        assert best["name"] == "tuned-diverse"
    assert best["paired"]["diff"] == pytest.approx(saved["heldout"]["ppo"]["mean"] - best["return"], abs=1e-9)
    report = json.loads((run / "report" / "results.json").read_text())
    assert report["extra_references"] == ["tuned-session-diverse", "tuned-switch:logistic"]  # what the protocol reads
    fit = report["tuned_parameters"]["tuned-switch:logistic"]  # the type switch's fit on the training users
    assert fit["reader"] == "logistic" and fit["fit_requests"] > 0 and "never" in fit["tuning"]
    assert max(fit["tuning"].values()) == (fit["tuning"]["never"] if fit["threshold"] == 2.0
                                           else fit["tuning"][str(fit["threshold"])])
    keys, rets = read_returns(run / "report" / "returns.npz")  # per-session returns, the report's means
    assert set(rets) == set(saved["heldout"]) and all(len(r) == len(keys) for r in rets.values())
    for name, ret in rets.items():
        assert ret.mean() == pytest.approx(saved["heldout"][name]["mean"], rel=1e-9), name
    evals = [json.loads(line) for line in (run / "eval.jsonl").read_text().splitlines()]
    assert [e["step"] for e in evals][:2] == [512, 1024] or evals[0]["step"] >= 512

    out = cache / "eval"
    evaluate.main(["--rankers", f"random,run:{run}", "--episodes", "20", "--seeds", "1", "--preset", "small",
                   "--set", "env.user_model.no_click_utility=3.5", "--encoder", "hashing", "--set",
                   "encoder.hashing_dim=32", "--reference", "random", "--out", str(out), "--no-progress"])
    results = json.loads((out / "results.json").read_text())
    assert set(results["rankers"]) == {"random", f"run:{run}"}
    assert np.isfinite(results["rankers"][f"run:{run}"]["return"]["mean"])


def test_resume_continues_from_the_last_checkpoint(cache: Path) -> None:
    first = train.main(tiny_args(cache / "runs", "resumable", 512))
    run = Path(first["run_dir"])
    state = json.loads((checkpoint_dirs(run / "checkpoints")[0] / "state.json").read_text())
    assert state["num_timesteps"] == 512
    second = train.main(["--resume", str(run), "--total-timesteps", "1024", "--quiet"])
    assert second["total_timesteps"] == 1024
    assert second["resumed_from"]["num_timesteps"] == 512 and second["resumed_from"]["skipped"] == []
    assert json.loads((checkpoint_dirs(run / "checkpoints")[0] / "state.json").read_text())["num_timesteps"] == 1024


def test_bad_config_is_a_clear_error(cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit, match=r"train.ppo: unknown key\(s\) \['n_epochz'\]"):
        train.main(["--config", str(SMOKE), "--set", "train.ppo.n_epochz=2", "--out", str(cache)])
    with pytest.raises(SystemExit, match="not a run directory"):
        train.main(["--resume", str(cache / "nowhere")])
    for bad, why in (("[nope]", "valid choices"), ("[run:x]", "not a hand-written reference"),
                     ("[tuned-diverse]", "already a row"), ("[tuned-diverse@0.5]", "not a hand-written")):
        with pytest.raises(SystemExit, match=f"eval.extra_references: .*{why}"):
            train.main(["--config", str(SMOKE), "--set", f"eval.extra_references={bad}", "--out", str(cache)])


def test_a_diverged_update_ends_train_py_with_its_message(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The update's refusal of non-finite weights (``agents.ppo_update.ppo_update``) reaches the user as train.py's
    one-line error, not a traceback (the refusal itself: ``tests/test_rollouts.py``)."""
    import agents.training

    def diverged(*args: object, **kwargs: object) -> dict:
        raise FloatingPointError("the PPO update at step 4,096 left non-finite weights (value_net.weight): …")

    monkeypatch.setattr(agents.training, "train", diverged)
    with pytest.raises(SystemExit, match=r"^train.py: error: the PPO update at step 4,096 left non-finite weights"):
        train.main(tiny_args(cache / "runs", "diverged", 512))


def test_policy_kwargs_of_the_diverse_base_are_tuned_diverses_parameters(small_world) -> None:
    """``policy.base = "diverse"`` (the default): the policy starts at tuned-diverse's α, with its exposure and seen
    weights as fixed feature weights and its cap (a cap of K or more is no cap); without the search it refuses."""
    import pytest

    from agents.training import policy_kwargs
    from configs.schema import Config
    from envs.presets import preset_config
    from envs.spaces import F_CAT_EXPOSURE, F_ITEM_SEEN

    cfg = Config(env=preset_config("small"))
    assert cfg.train.policy.base == "diverse"
    point = {"alpha": 0.6, "cap": 2, "exposure_weight": 1.5, "seen_weight": 0.25}
    kw = policy_kwargs(cfg, 0.9, small_world, point)
    assert kw["base"] == "diverse" and kw["category_cap"] == 2 and kw["init_alpha"] == pytest.approx(0.6)
    w = kw["base_weights"]
    assert w[F_CAT_EXPOSURE] == -1.5 and w[F_ITEM_SEEN] == -0.25 and sum(abs(x) for x in w) == pytest.approx(1.75)
    assert policy_kwargs(cfg, 0.9, small_world, {**point, "cap": cfg.env.slate_size})["category_cap"] is None
    with pytest.raises(ValueError, match="needs tuned-diverse"):
        policy_kwargs(cfg, 0.9, small_world)
    cfg.train.policy.base = "blend"
    blend = policy_kwargs(cfg, 0.9, small_world)
    assert "base" not in blend and blend["init_alpha"] == 0.9
    cfg.train.policy.base, cfg.train.policy.start = "diverse", "pop-diverse"
    pop = policy_kwargs(cfg, 0.9, small_world, {**point, "pop_weight": 0.2})
    assert pop["pop_base_weight"] == 0.2 and pop["base_weights"] == w  # the same rule, and its popularity prior
    assert "pop_base_weight" not in kw


def test_a_run_started_at_tuned_pop_diverse_saves_its_prior_and_reports_the_reference(cache: Path) -> None:
    """``train.policy.start: pop-diverse``: the policy starts at tuned-pop-diverse (its saved settings carry the
    search's prior weight) and, listed in ``eval.extra_references``, tuned-pop-diverse is a row of the table."""
    summary = train.main([*tiny_args(cache / "runs", "pop", 256), "--set", "train.policy.start=pop-diverse",
                          "--set", "eval.extra_references=[tuned-pop-diverse]"])
    run = Path(summary["run_dir"])
    settings = json.loads((run / "policy.json").read_text())
    saved = json.loads((run / "summary.json").read_text())
    assert "tuned-pop-diverse" in saved["heldout"]
    from agents.final_report import tuning_context
    from configs.loader import resolve_config
    from envs.presets import load_world

    cfg = resolve_config(run / "config.yaml")
    world = load_world(cfg.env, cfg.encoder)
    pick = tuning_context(cfg, world, None, progress=False).pop_diverse_search().best  # cached: the run's search
    assert settings["kwargs"]["pop_base_weight"] == pick["pop_weight"]
    assert settings["kwargs"]["init_alpha"] == pytest.approx(min(max(pick["alpha"], 0.02), 0.98))


def test_eval_alpha_grid_is_the_axis_of_every_references_search(cache: Path, small_world) -> None:
    """``eval.alpha_grid`` replaces the α axis of tuned-alpha's curve and of tuned-diverse's search (its other axes
    kept), and its searches are cached apart from the default grid's."""
    from agents.final_report import tuning_context
    from agents.tuning import ALPHA_GRID, DIVERSE_GRID
    from configs.schema import Config
    from envs.presets import preset_config

    cfg = Config(env=preset_config("small"))
    cfg.eval.tune_episodes = 16
    cfg.eval.alpha_grid = [0.3, 0.7]
    fine = tuning_context(cfg, small_world, None, progress=False)
    curve = fine.alpha_curve()
    assert curve.alphas == [0.3, 0.7] and curve.best_alpha in (0.3, 0.7)
    search = fine.diverse_search()
    assert search.axes["alpha"] == [0.3, 0.7] and search.best["alpha"] in (0.3, 0.7)
    assert {k: tuple(v) for k, v in search.axes.items() if k != "alpha"} == {
        k: tuple(float(x) for x in v) for k, v in DIVERSE_GRID.items() if k != "alpha"}
    cfg.eval.alpha_grid = None
    default = tuning_context(cfg, small_world, None, progress=False).alpha_curve()
    assert default.alphas == [float(a) for a in ALPHA_GRID]
