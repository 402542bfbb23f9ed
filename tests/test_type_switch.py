"""bench.type_switch: the hand-written rule that infers the user's type in the session and switches its rule."""

from __future__ import annotations

import numpy as np
from conftest import make_core

from agents.evaluation import episode_plan, run_episodes
from agents.tuning import diverse_ranker
from bench.type_switch import SwitchRanker, TypeClassifier, fit_classifier, type_features
from configs.schema import EnvConfig
from envs.world import World


def test_the_classifier_recovers_a_label_the_features_carry() -> None:
    """On features whose first column decides the label, the fitted probabilities tell the classes apart."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 5)) * np.array([1.0, 3.0, 0.1, 1.0, 1.0]) + 4.0
    y = x[:, 0] > 4.0
    proba = TypeClassifier(x, y).proba(x)
    assert ((proba > 0.5) == y).mean() > 0.95 and (proba >= 0).all() and (proba <= 1).all()


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
