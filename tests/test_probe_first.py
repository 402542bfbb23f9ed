"""bench.probe_first: a first slate mixed from the two user types' rules, then the type switch."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_core

from agents.base import Feedback, Ranker
from agents.evaluation import episode_plan, run_episodes
from agents.tuning import diverse_ranker
from agents.type_switch import TypeClassifier, played_requests, request_index
from bench.probe_first import (
    READ_AT,
    FirstRequest,
    accuracy_by_request,
    first_click_share,
    interleave,
    main,
)
from configs.schema import EnvConfig
from envs.world import World


def test_interleave_takes_turns_and_skips_a_candidate_already_taken() -> None:
    """First's first, second's first, …; a shared candidate appears once and its ranking's next one fills in."""
    first = np.array([[0, 1, 2, 3], [5, 6, 7, 8]])
    second = np.array([[9, 8, 7, 6], [6, 5, 9, 1]])
    out = interleave(first, second, 4)
    np.testing.assert_array_equal(out[0], [0, 9, 1, 8])
    # row 1: 5 (first), 6 (second), first's 6 is taken so its 7, second's 5 is taken so its 9
    np.testing.assert_array_equal(out[1], [5, 6, 7, 9])
    assert out.dtype == np.int64 and all(len(set(row)) == 4 for row in out.tolist())


class _Recorder(Ranker):
    """A rule that answers every row with its fixed ranking and records the request index of each row it met."""

    def __init__(self, k: int, order: np.ndarray, steps: int) -> None:
        super().__init__(k)
        self.order, self.steps, self.met = order, steps, []

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        self.met.append(request_index(obs["context"], self.steps))
        return np.tile(self.order, (len(obs["context"]), 1))


def test_the_mixed_slate_opens_each_session_and_the_rule_answers_the_rest(small_cfg: EnvConfig,
                                                                            small_world: World) -> None:
    """Rows at their first request get the interleaved slate of the two rankings, every other request the rule's;
    over whole sessions the first slates are exactly the mixed ones."""
    k, steps = small_cfg.slate_size, small_cfg.max_steps
    core = make_core(small_cfg, small_world, b=8)
    n = core.observe()["features"].shape[1]
    b_order, c_order = np.arange(k), np.arange(n - 1, n - 1 - k, -1)
    rule = _Recorder(k, np.arange(k, 2 * k), steps)
    ranker = FirstRequest(rule, _Recorder(k, b_order, steps), _Recorder(k, c_order, steps), steps, name="mixed")
    obs = core.observe()
    assert (request_index(obs["context"], steps) == 0).all()
    mixed = interleave(b_order[None], c_order[None], k)[0]
    np.testing.assert_array_equal(ranker.act(obs), np.tile(mixed, (8, 1)))
    shown: list[tuple[np.ndarray, np.ndarray]] = []

    def on_step(o: dict[str, np.ndarray], slate: np.ndarray, feedback: object, active: np.ndarray) -> None:
        shown.append((request_index(o["context"], steps)[active], slate[active]))

    run_episodes(core, ranker, episode_plan(16, [1], small_world.populations["train"].size), on_step=on_step)
    t = np.concatenate([s[0] for s in shown])
    slates = np.concatenate([s[1] for s in shown])
    assert (t == 0).sum() == 16 and (t > 0).any()
    np.testing.assert_array_equal(slates[t == 0], np.tile(mixed, ((t == 0).sum(), 1)))
    np.testing.assert_array_equal(slates[t > 0], np.tile(np.arange(k, 2 * k), ((t > 0).sum(), 1)))


def test_the_reading_is_scored_per_request_of_its_session(small_cfg: EnvConfig, small_world: World) -> None:
    """``agents.type_switch.played_requests`` gives one row per request met with its index and its user's type; the
    accuracy at a request is the share read right among the requests of that index only."""
    core = make_core(small_cfg, small_world, b=16)
    rule = diverse_ranker(small_cfg.slate_size, small_world.catalog.category,
                          {"alpha": 0.5, "cap": 2, "exposure_weight": 0.5, "seen_weight": 0.5})
    plan = episode_plan(48, [2], small_world.populations["train"].size)
    x, cf, t = played_requests(core, rule, plan)
    assert len(x) == len(cf) == len(t) == run_episodes(core, rule, plan).length.sum()
    assert (t == 0).sum() == 48 and t.min() == 0
    truth = np.where(cf, 1.0, -1.0)
    perfect = TypeClassifier(np.c_[x, truth], cf)
    always_cf = TypeClassifier(np.c_[x, truth], cf)
    always_cf.w = np.zeros_like(always_cf.w)
    always_cf.w[-1] = 10.0  # only the intercept: every request read as CF-leaning
    acc = accuracy_by_request(perfect, np.c_[x, truth], cf, t)
    assert set(acc) == {str(r) for r in READ_AT if (t == r - 1).any()} and min(acc.values()) > 0.95
    flat = accuracy_by_request(always_cf, np.c_[x, truth], cf, t)
    assert flat["1"] == cf[t == 0].mean() and flat["2"] == cf[t == 1].mean()
    # the first slate's clicks, counted from the feedback of the same sessions (common random numbers)
    first_clicks: list[int] = []

    def on_step(obs: dict[str, np.ndarray], slate: np.ndarray, feedback: Feedback, active: np.ndarray) -> None:
        opening = active & (request_index(obs["context"], small_cfg.max_steps) == 0)
        first_clicks.append(int(feedback.clicks[opening].any(axis=1).sum()))

    run_episodes(core, rule, plan, on_step=on_step)
    share, reached = first_click_share(x, t), int((t == 1).sum())
    assert 0 < share < 1 and round(share * reached) <= sum(first_clicks)
    if reached == 48:  # every session reached a second request: the share is the first slates' click rate
        assert round(share * reached) == sum(first_clicks)


@pytest.mark.parametrize("flag", ["--episodes", "--tune-episodes", "--fit-episodes"])
def test_a_count_below_one_is_refused_by_name(flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    """No session to play is a usage error naming the flag, before any world is built or rule tuned."""
    with pytest.raises(SystemExit):
        main([flag, "0"])
    assert f"{flag} must be at least 1, got 0" in capsys.readouterr().err
