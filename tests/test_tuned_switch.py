"""The registry's ``tuned-switch``: the engineer's type switch as a tuned reference (agents.type_switch)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import make_core

from agents.base import Feedback, Ranker
from agents.evaluation import episode_plan, run_episodes
from agents.registry import SWITCH_FIT_FACTOR, RankerContext, make_ranker, parse_spec
from agents.tuning import TUNE_SEED, diverse_ranker
from agents.type_switch import (
    NEVER,
    THRESHOLDS,
    BoostedClassifier,
    SwitchRanker,
    TypeClassifier,
    fit_classifier,
    pick_threshold,
)
from configs.schema import EnvConfig
from envs.world import World

A = {"alpha": 0.9, "cap": 2, "exposure_weight": 0.0, "seen_weight": 0.5}
B = {"alpha": 0.1, "cap": 1, "exposure_weight": 0.5, "seen_weight": 0.5, "lean_weight": 4}
GRID = {"alpha": (0.2, 0.9), "cap": (2,), "exposure_weight": (0.0, 1.0), "seen_weight": (0.5,), "lean_weight": (0.0,)}


def test_the_spec_takes_a_reader_and_refuses_others_by_name() -> None:
    """``tuned-switch`` (boosted), ``tuned-switch:logistic``; an unknown reader names the readers."""
    assert parse_spec("tuned-switch") == ("tuned-switch", None)
    assert parse_spec("tuned-switch:logistic") == ("tuned-switch", "logistic")
    with pytest.raises(ValueError, match="type reader must be one of logistic, boosted"):
        parse_spec("tuned-switch:forest")
    with pytest.raises(ValueError, match=r"only .* can sample"):
        parse_spec("tuned-switch@0.1")


def test_the_threshold_is_the_best_on_training_sessions_and_never_when_b_adds_nothing(small_cfg: EnvConfig,
                                                                                     small_world: World) -> None:
    """:func:`pick_threshold` scores "never" and every threshold on the same sessions and picks the best; with B
    equal to A every candidate ties and the pick is "never" (A's slates, no switching)."""
    core = make_core(small_cfg, small_world, b=32)
    k, cat = small_cfg.slate_size, small_world.catalog.category
    a, b = diverse_ranker(k, cat, A), diverse_ranker(k, cat, B)
    n = small_world.populations["train"].size
    classifier = fit_classifier(core, a, episode_plan(64, [9], n))
    plan = episode_plan(48, [3], n)
    best, tuning = pick_threshold(core, a, b, classifier, plan)
    assert set(tuning) == {"never", *map(str, THRESHOLDS)}
    assert tuning["never"] == pytest.approx(run_episodes(core, a, plan).ret.mean())
    assert max(tuning.values()) == (tuning["never"] if best == NEVER else tuning[str(best)])
    same, tied = pick_threshold(core, a, diverse_ranker(k, cat, A), classifier, plan)
    assert same == NEVER and len(set(tied.values())) == 1


def test_a_classifier_needs_both_types_of_user(small_cfg: EnvConfig, small_world: World) -> None:
    """Training requests of one type only are refused by name (nothing to tell apart)."""
    world = small_world
    train = world.populations["train"]
    saved = train.rho.copy()
    try:
        train.rho[:] = 0.9  # every user content-leaning
        core = make_core(small_cfg, world, b=16)
        a = diverse_ranker(small_cfg.slate_size, world.catalog.category, A)
        with pytest.raises(ValueError, match=r"needs requests of CF-leaning users .* one type"):
            fit_classifier(core, a, episode_plan(16, [9], train.size))
    finally:
        train.rho[:] = saved


class Recorder(Ranker):
    """Rule A's slates; records the hooks it was called with."""

    def __init__(self, inner: Ranker) -> None:
        super().__init__(inner.k)
        self.inner, self.resets, self.updates = inner, 0, 0

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        return self.inner.act(obs)

    def reset(self, rows: np.ndarray, obs: dict[str, np.ndarray]) -> None:
        self.resets += len(rows)

    def update(self, obs: dict[str, np.ndarray], slate: np.ndarray, feedback: Feedback) -> None:
        self.updates += 1


def test_the_switch_tells_both_rules_of_every_session_start_and_response(small_cfg: EnvConfig,
                                                                         small_world: World) -> None:
    """Whichever rule answered, both see every new session and every response (online rules stay in step)."""
    core = make_core(small_cfg, small_world, b=16)
    k, cat = small_cfg.slate_size, small_world.catalog.category
    a, b = Recorder(diverse_ranker(k, cat, A)), Recorder(diverse_ranker(k, cat, B))
    x = np.random.default_rng(0).normal(size=(200, 3))
    never = SwitchRanker(a, b, TypeClassifier(x, x[:, 0] > 0, features=lambda o: np.zeros((len(o["context"]), 3))),
                         NEVER)
    run_episodes(core, never, episode_plan(24, [3], small_world.populations["train"].size))
    assert a.resets == b.resets > 0 and a.updates == b.updates > 0 and never.switched == 0


@pytest.mark.parametrize("reader", ["logistic", "boosted"])
def test_tuned_switch_is_fitted_on_training_users_and_plays_rule_a_or_b_per_request(
        tmp_path: Path, small_cfg: EnvConfig, small_world: World, reader: str) -> None:
    """``make_ranker("tuned-switch[:READER]")``: rule A is tuned-diverse's point, B the CF-leaning users' point
    (``cf_rule_search``); the classifier is fitted on ``SWITCH_FIT_FACTOR × tune_episodes`` training sessions; the
    threshold is the best of the training sessions' scores; on a request each row gets A's slate below the
    threshold and B's above; the fit runs once per context and reader, each spec gets its own switch."""
    ctx = RankerContext(small_world, small_cfg, seed=0, tune_episodes=40, batch=40, diverse_grid=GRID,
                        alphas=(0.2, 0.9), cache_dir=str(tmp_path / "tuning"))
    spec = "tuned-switch" if reader == "boosted" else f"tuned-switch:{reader}"
    ranker = make_ranker(spec, ctx)
    search = ctx.switch_search(reader)
    assert isinstance(ranker, SwitchRanker) and ranker.name == spec and ranker is not search.ranker
    assert make_ranker(spec, ctx).classifier is ranker.classifier  # fitted once
    assert isinstance(ranker.classifier, BoostedClassifier) == (reader == "boosted")
    assert ranker.threshold == search.threshold
    best = max(search.tuning.values())
    assert (search.tuning["never"] if search.threshold == NEVER else search.tuning[str(search.threshold)]) == best
    k, cat = small_cfg.slate_size, small_world.catalog.category
    point_a, point_b = ctx.diverse_search().best, ctx.cf_rule_search()
    assert (ranker.a.alpha, ranker.b.alpha) == (point_a["alpha"], point_b["alpha"])
    n_train = small_world.populations["train"].size
    assert 0 < search.fit_requests
    assert search.fit_requests <= SWITCH_FIT_FACTOR * 40 * small_cfg.max_steps
    fit_plan = episode_plan(SWITCH_FIT_FACTOR * 40, [TUNE_SEED + 77], n_train)
    assert search.fit_requests == run_episodes(make_core(small_cfg, small_world, b=40),
                                               diverse_ranker(k, cat, point_a), fit_plan).length.sum()
    obs = make_core(small_cfg, small_world, b=32).observe()
    p = ranker.classifier.read(obs)
    assert p.max() > p.min()  # the reader tells these rows apart (trees give steps: a median could tie)
    forced = SwitchRanker(ranker.a, ranker.b, ranker.classifier, float(p.min() + p.max()) / 2)
    use_b = p > forced.threshold
    assert use_b.any() and not use_b.all()
    slate = forced.act(obs)
    np.testing.assert_array_equal(slate[~use_b], ranker.a.act(obs)[~use_b])
    np.testing.assert_array_equal(slate[use_b], ranker.b.act({key: v[use_b] for key, v in obs.items()}))


def test_a_switch_over_users_of_one_type_never_switches(small_cfg: EnvConfig, small_world: World) -> None:
    """Where every training user is of one type there is nothing to read: ``tune_switch`` returns the switch that
    never switches (A's slates, threshold ``NEVER``), scored on the tuning sessions, instead of failing a run's
    final table."""
    from agents.type_switch import tune_switch

    train = small_world.populations["train"]
    saved = train.rho.copy()
    try:
        train.rho[:] = 0.9
        core = make_core(small_cfg, small_world, b=16)
        k, cat = small_cfg.slate_size, small_world.catalog.category
        a, b = diverse_ranker(k, cat, A), diverse_ranker(k, cat, B)
        search = tune_switch(core, a, b, fit_episodes=32, tune_episodes=16, seed=5, reader="logistic")
        plan = episode_plan(16, [5], train.size)
        assert search.threshold == NEVER and search.fit_requests == 0 and set(search.tuning) == {"never"}
        assert search.tuning["never"] == pytest.approx(run_episodes(core, a, plan).ret.mean())
        np.testing.assert_array_equal(run_episodes(core, search.ranker, plan).ret, run_episodes(core, a, plan).ret)
    finally:
        train.rho[:] = saved
