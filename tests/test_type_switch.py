"""bench.type_switch: the hand-written rule that infers the user's type in the session and switches its rule."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from conftest import make_core, make_run_dir

from agents.evaluation import episode_plan, run_episodes
from agents.ppo_ranker import PPORanker, load_policy
from agents.report import write_returns
from agents.tuning import diverse_ranker
from agents.type_switch import (
    READER_THREADS,
    THRESHOLDS,
    BoostedClassifier,
    SwitchRanker,
    TypeClassifier,
    fit_classifier,
    reading_features,
    type_features,
)
from bench import type_switch as type_switch_bench
from bench.type_switch import checked_runs_plan, override_run, ppo_against, runs_plan
from configs.loader import resolve_config, save_yaml
from configs.schema import EnvConfig
from envs.world import World


def test_the_classifier_recovers_a_label_the_features_carry() -> None:
    """On features whose first column decides the label, the fitted probabilities tell the classes apart."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 5)) * np.array([1.0, 3.0, 0.1, 1.0, 1.0]) + 4.0
    y = x[:, 0] > 4.0
    proba = TypeClassifier(x, y).proba(x)
    assert ((proba > 0.5) == y).mean() > 0.95 and (proba >= 0).all() and (proba <= 1).all()


def test_the_boosted_reader_runs_on_one_openmp_thread_and_reads_as_on_two(monkeypatch: pytest.MonkeyPatch) -> None:
    """The trees fit and read on :data:`READER_THREADS` OpenMP threads whatever OpenMP would take (its default of
    every core thrashes when another process holds one), and read what the same trees fitted on two threads read."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from threadpoolctl import threadpool_info, threadpool_limits

    seen: list[int] = []
    fit, predict = HistGradientBoostingClassifier.fit, HistGradientBoostingClassifier.predict_proba

    def openmp_threads() -> int:
        return max(m["num_threads"] for m in threadpool_info() if m["user_api"] == "openmp")

    def spying_fit(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(openmp_threads())
        return fit(self, *args, **kwargs)

    def spying_predict(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(openmp_threads())
        return predict(self, *args, **kwargs)

    rng = np.random.default_rng(0)
    x = rng.normal(size=(3000, 4))
    y = x[:, 0] + 0.5 * rng.normal(size=3000) > 0
    with threadpool_limits(limits=2, user_api="openmp"):
        two = BoostedClassifier(x, y, seed=0).proba(x[:200])  # the spy is not in yet: scikit-learn's own threads
        monkeypatch.setattr(HistGradientBoostingClassifier, "fit", spying_fit)
        monkeypatch.setattr(HistGradientBoostingClassifier, "predict_proba", spying_predict)
        one = BoostedClassifier(x, y, seed=0).proba(x[:200])
        assert openmp_threads() == 2  # the bound holds only inside the reader
    assert seen == [READER_THREADS, READER_THREADS]
    np.testing.assert_allclose(one, two, rtol=0, atol=1e-12)  # the root's gradient sum is a parallel reduction
    assert ((one > 0.5) == y[:200]).mean() > 0.8


def test_a_switch_that_never_or_always_switches_is_its_rule_session_for_session(small_cfg: EnvConfig,
                                                                               small_world: World) -> None:
    """Above probability 1 the switch plays rule A's slates, below 0 rule B's: the same returns on the same
    sessions; in between it plays B on some requests only; the features are one finite row per request."""
    core = make_core(small_cfg, small_world, b=32)
    k, cat = small_cfg.slate_size, small_world.catalog.category
    a = diverse_ranker(k, cat, {"alpha": 0.9, "cap": 2, "exposure_weight": 0.0, "seen_weight": 0.5})
    b = diverse_ranker(k, cat, {"alpha": 0.1, "cap": 1, "exposure_weight": 0.5, "seen_weight": 0.5, "lean_weight": 4})
    plan = episode_plan(64, [3], small_world.populations["train"].size)
    obs = core.observe()
    feats = type_features(obs)
    assert feats.shape[0] == 32 and np.isfinite(feats).all()
    classifier = fit_classifier(core, a, episode_plan(64, [9], small_world.populations["train"].size))
    ret_a, ret_b = run_episodes(core, a, plan).ret, run_episodes(core, b, plan).ret
    assert not np.array_equal(ret_a, ret_b)
    never, always = SwitchRanker(a, b, classifier, 1.1), SwitchRanker(a, b, classifier, -0.1)
    np.testing.assert_array_equal(run_episodes(core, never, plan).ret, ret_a)
    np.testing.assert_array_equal(run_episodes(core, always, plan).ret, ret_b)
    assert never.switched == 0 and always.switched > 0
    median = float(np.median(classifier.proba(feats)))
    some = SwitchRanker(a, b, classifier, median)
    stats = run_episodes(core, some, plan)
    assert 0 < some.switched < stats.length.sum()


def test_the_boosted_reader_reads_the_pooled_candidates_too_and_drives_the_switch(small_cfg: EnvConfig,
                                                                                 small_world: World) -> None:
    """``--reader boosted``: the classifier reads :func:`reading_features` (the request's statistics and the
    candidates' pooled columns: 3F + 1 more), gives one probability in [0, 1] per row, tells the types apart on its
    own training requests better than chance, and plays in the switch as the logistic one does; an unknown reader is
    refused by name."""
    core = make_core(small_cfg, small_world, b=32)
    k, cat = small_cfg.slate_size, small_world.catalog.category
    a = diverse_ranker(k, cat, {"alpha": 0.9, "cap": 2, "exposure_weight": 0.0, "seen_weight": 0.5})
    b = diverse_ranker(k, cat, {"alpha": 0.1, "cap": 1, "exposure_weight": 0.5, "seen_weight": 0.5, "lean_weight": 4})
    obs = core.observe()
    n_feat = obs["features"].shape[-1]
    assert reading_features(obs).shape == (32, type_features(obs).shape[1] + 3 * n_feat + 1)
    fit_plan = episode_plan(96, [9], small_world.populations["train"].size)
    boosted = fit_classifier(core, a, fit_plan, reader="boosted")
    assert isinstance(boosted, BoostedClassifier)
    p = boosted.read(obs)
    assert p.shape == (32,) and ((p >= 0) & (p <= 1)).all()
    from agents.type_switch import played_requests

    x, cf, _ = played_requests(core, a, fit_plan, reading_features)
    assert 0 < cf.mean() < 1 and ((boosted.proba(x) > 0.5) == cf).mean() > max(cf.mean(), 1 - cf.mean())
    plan = episode_plan(32, [3], small_world.populations["train"].size)
    never = SwitchRanker(a, b, boosted, 1.1)
    np.testing.assert_array_equal(run_episodes(core, never, plan).ret, run_episodes(core, a, plan).ret)
    with pytest.raises(ValueError, match="reader must be one of"):
        fit_classifier(core, a, fit_plan, reader="forest")


def _run(root: Path, name: str, preset: str, episodes: int, ppo: np.ndarray | None = None,
         plan_seeds: int = 2) -> Path:
    """A run directory with a config of ``preset`` (eval: ``episodes`` × 2 held-out sessions) and, when ``ppo`` is
    given, per-session returns of PPO on ``plan_seeds`` seeds' sessions."""
    run = root / name
    run.mkdir()
    save_yaml(resolve_config(None, preset, [f"eval.episodes={episodes}", "eval.seeds=2"]), run / "config.yaml")
    if ppo is not None:
        plan = episode_plan(episodes, list(range(plan_seeds)), 40)
        write_returns({"ppo": SimpleNamespace(ret=ppo)}, plan, run / "report" / "returns.npz")  # type: ignore[dict-item]
    return run


def test_ppo_against_the_switch_is_paired_on_the_runs_sessions_and_refuses_others(tmp_path: Path) -> None:
    """``--runs``: the runs' held-out sessions come from their eval settings; PPO − rule is the paired difference
    per run and over seeds and sessions, by hidden type; runs of another preset, other sessions or without returns
    are refused by name."""
    rng = np.random.default_rng(1)
    rule = rng.normal(size=20)
    cf = np.arange(20) % 3 == 0
    ppo = [rule + 0.5 + 1.0 * cf + rng.normal(scale=0.01, size=20), rule + 0.3 + 1.0 * cf]
    runs = [_run(tmp_path, f"s{i}", "small", 10, p) for i, p in enumerate(ppo)]
    plan = runs_plan(runs, "small", 40)
    assert len(plan) == 20
    out = ppo_against(rule, plan, runs, cf, bootstrap=200)
    first = out["per_run"][str(runs[0])]
    assert first["all"]["mean"] == pytest.approx(float((ppo[0] - rule).mean()))
    assert first["cf"]["mean"] == pytest.approx(1.5, abs=0.02)
    assert first["content"]["mean"] == pytest.approx(0.5, abs=0.02)
    over = out["over_seeds_and_sessions"]
    assert over["cf"]["mean"] == pytest.approx(1.4, abs=0.02)
    assert over["content"]["mean"] == pytest.approx(0.4, abs=0.02)
    assert over["all"]["ci95"][0] < over["all"]["mean"] < over["all"]["ci95"][1]
    assert "over_seeds_and_sessions" not in ppo_against(rule, plan, runs[:1], cf, bootstrap=50)
    with pytest.raises(ValueError, match="preset 'small', not 'adapt'"):
        runs_plan(runs, "adapt", 40)
    with pytest.raises(ValueError, match="different held-out sessions"):
        runs_plan([*runs, _run(tmp_path, "other", "small", 12)], "small", 40)
    with pytest.raises(ValueError, match=r"no config\.yaml"):
        runs_plan([tmp_path], "small", 40)
    with pytest.raises(ValueError, match="other sessions"):
        ppo_against(rule, plan, [_run(tmp_path, "late", "small", 5, rule[:15], plan_seeds=3)], cf)
    with pytest.raises(ValueError, match="no per-session returns"):
        ppo_against(rule, plan, [_run(tmp_path, "bare", "small", 10)], cf)
    assert checked_runs_plan([], "small", 40) is None
    assert np.array_equal(checked_runs_plan(runs, "small", 40).keys, plan.keys)
    with pytest.raises(ValueError, match="no per-session returns"):  # refused before any tuning, not at the end
        checked_runs_plan([*runs, _run(tmp_path, "bare2", "small", 10)], "small", 40)


def test_ppo_with_the_override_replays_ppo_first_and_switches_only_where_it_pays(
        tmp_path: Path, small_cfg: EnvConfig, small_world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--override``: the run's saved PPO must replay its stored returns (a wrong store is refused); the hybrid's
    threshold is one of the searched ones or none, and with none it is PPO session for session; a policy reading an
    observation the core lacks is refused by name."""
    run = make_run_dir(tmp_path, small_world, critic_state=True)
    policy = load_policy(run, device="cpu")
    k, cat = small_cfg.slate_size, small_world.catalog.category
    crit_cfg = dataclasses.replace(small_cfg, obs_critic_state=True)
    core, train_core = make_core(crit_cfg, small_world, b=32), make_core(crit_cfg, small_world, b=32)
    n = small_world.populations["train"].size
    plan = episode_plan(48, [3], small_world.populations["heldout"].size)
    stored = run_episodes(core, PPORanker(policy, k), plan).ret
    rule_b = diverse_ranker(k, cat, {"alpha": 0.1, "cap": 1, "exposure_weight": 0.5, "seen_weight": 0.5})
    fit, tune = episode_plan(32, [5], n), episode_plan(32, [6], n)
    out = override_run(run, rule_b, train_core, core, fit, tune, plan, stored)
    assert out["threshold"] is None or out["threshold"] in THRESHOLDS
    assert set(out["tuning"]) == {"never", *map(str, THRESHOLDS)}
    assert out["ret"].shape == stored.shape and np.isfinite(out["ret"]).all()
    best = max(out["tuning"].values())
    assert out["tuning"]["never" if out["threshold"] is None else str(out["threshold"])] == best
    if out["threshold"] is None:
        np.testing.assert_array_equal(out["ret"], stored)
        assert out["switched"] == 0
    else:
        assert 0 < out["switched"] <= 1
    readers: list[str] = []
    fit_classifier = type_switch_bench.fit_classifier

    def spy(*args: Any) -> Any:
        readers.append(args[3])
        return fit_classifier(*args)

    monkeypatch.setattr(type_switch_bench, "fit_classifier", spy)  # --reader reaches the override's classifier
    boosted = override_run(run, rule_b, train_core, core, fit, tune, plan, stored, "boosted", 1)
    assert readers == ["boosted"] and boosted["tuning"]["never"] == out["tuning"]["never"]
    with pytest.raises(ValueError, match="does not replay its stored returns"):
        override_run(run, rule_b, train_core, core, fit, tune, plan, stored + 1.0)
    with pytest.raises(ValueError, match="critic_state"):
        override_run(run, rule_b, make_core(small_cfg, small_world, b=32), make_core(small_cfg, small_world, b=32),
                     fit, tune, plan, stored)
