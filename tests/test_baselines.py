"""Baseline rankers and the ranker registry (agents/baselines.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from agents.base import Feedback
from agents.baselines import (
    SPECS,
    BlendRanker,
    Impressions,
    LinUCBRanker,
    OnlineAlphaRanker,
    RankerContext,
    ScoredRanker,
    StrategyAlphaRanker,
    TunedAlphaRanker,
    _examined,
    check_specs,
    fit_logistic,
    make_ranker,
    parse_spec,
    tune_alpha,
)
from agents.evaluation import episode_plan, evaluate_rankers, paired_test
from configs.schema import EnvConfig
from envs.core import BatchedCore
from envs.spaces import CONTEXT_NAMES, F_CF, F_ITEM_SEEN, F_LLM, FEATURE_NAMES
from envs.world import World

ALL_SPECS = ["random", "popular", "greedy-llm", "greedy-cf", "fixed-alpha:0.3", "scored", "tuned-alpha",
             "online-alpha:0.5", "strategy-alpha:0.5", "linucb", "linucb:0.5", "oracle"]


@pytest.fixture(scope="module")
def ctx(small_world: World, small_cfg: EnvConfig) -> RankerContext:
    """A context with a held-out evaluation core and cheap tuning/fitting budgets."""
    core = BatchedCore(small_world, small_cfg, 32, population="heldout")
    return RankerContext(small_world, small_cfg, core=core, seed=0, alphas=(0.0, 0.5, 1.0), tune_episodes=40,
                         fit_sessions=60, batch=32)


def _obs(features: np.ndarray) -> dict[str, np.ndarray]:
    b, n, _ = features.shape
    return {"user": np.zeros((b, 4), np.float32), "candidates": np.tile(np.arange(n), (b, 1)),
            "features": features.astype(np.float32), "context": np.zeros((b, len(CONTEXT_NAMES)), np.float32)}


# ---- the registry ---------------------------------------------------------------------------------------------


def test_unknown_and_malformed_specs_list_the_valid_choices() -> None:
    for bad in ("nope", "fixed-alpha", "fixed-alpha:1.5", "fixed-alpha:x", "random:3", "linucb:-1", "run:"):
        with pytest.raises(ValueError, match="valid choices") as exc:
            parse_spec(bad)
        for choice in SPECS:
            assert choice in str(exc.value)
    assert parse_spec("fixed-alpha:0.25") == ("fixed-alpha", "0.25")
    assert parse_spec("linucb") == ("linucb", None)
    with pytest.raises(ValueError, match="listed twice"):
        check_specs(["random", "random"])


def test_missing_run_directory_is_named(tmp_path: Path, ctx: RankerContext) -> None:
    missing = tmp_path / "no-such-run"
    with pytest.raises(FileNotFoundError, match="no-such-run"):
        check_specs([f"run:{missing}"])
    with pytest.raises(FileNotFoundError, match="no-such-run"):
        make_ranker(f"run:{missing}", ctx)
    if importlib.util.find_spec("agents.ppo_ranker") is None:
        with pytest.raises(ImportError, match="ppo_ranker"):
            make_ranker(f"run:{tmp_path}", ctx)


def test_oracle_needs_the_core(small_world: World, small_cfg: EnvConfig) -> None:
    with pytest.raises(ValueError, match="core"):
        make_ranker("oracle", RankerContext(small_world, small_cfg))


def test_every_ranker_returns_valid_slates_deterministically(ctx: RankerContext, small_cfg: EnvConfig) -> None:
    core = ctx.core
    assert core is not None
    k, n = small_cfg.slate_size, small_cfg.n_candidates
    keys = np.arange(core.B, dtype=np.uint64) + np.uint64(99)
    core.reset_rows(np.arange(core.B), keys)
    obs = {key: v.copy() for key, v in core.observe().items()}
    for spec in ALL_SPECS:
        first, second = make_ranker(spec, ctx), make_ranker(spec, ctx)
        assert first.name == spec
        assert first.reads_hidden_state == (spec == "oracle")
        for r in (first, second):
            r.reset(np.arange(core.B), obs)
        a, b = first.act(obs), second.act(obs)
        assert a.shape == (core.B, k) and a.dtype == np.int64, spec
        assert ((a >= 0) & (a < n)).all(), spec
        assert all(len(set(row)) == k for row in a.tolist()), spec
        assert np.array_equal(a, b), spec


# ---- scoring rules on hand-made observations ------------------------------------------------------------------


def test_blend_formula() -> None:
    f = np.zeros((1, 4, len(FEATURE_NAMES)))
    f[0, :, F_LLM] = [0.9, 0.1, 0.5, 0.0]
    f[0, :, F_CF] = [-1.0, 2.0, 0.0, 1.0]
    obs = _obs(f)
    assert BlendRanker(2, 1.0).act(obs).tolist() == [[0, 2]]  # greedy by LLM similarity
    assert BlendRanker(2, 0.0).act(obs).tolist() == [[1, 3]]  # greedy by CF score
    # α = 0.5: scores -0.05, 1.05, 0.25, 0.5
    assert BlendRanker(3, 0.5).act(obs).tolist() == [[1, 3, 2]]
    with pytest.raises(ValueError):
        BlendRanker(2, 1.5)


def test_examined_is_the_cascade_reading() -> None:
    clicks = np.array([[False, True, False], [False, False, False], [True, False, False]])
    assert _examined(clicks).tolist() == [[True, True, False], [True, True, True], [True, False, False]]


def test_fit_logistic_recovers_weights() -> None:
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(size=(40_000, 2)), np.ones((40_000, 1))], axis=1)
    w = np.array([1.5, -2.0, 0.5])
    y = rng.random(40_000) < 1.0 / (1.0 + np.exp(-x @ w))
    assert fit_logistic(x, y, l2=1e-6) == pytest.approx(w, abs=0.08)


def test_scored_fit_separates_features_from_position_bias() -> None:
    """Clicks depend on feature llm_sim and on the slot; the fitted W keeps the first, the slot terms the second."""
    rng = np.random.default_rng(1)
    n, k = 60_000, 3
    feats = np.zeros((n, len(FEATURE_NAMES)), np.float32)
    feats[:, F_LLM] = rng.normal(size=n)
    rank = rng.integers(0, k, n)
    logit = 1.2 * feats[:, F_LLM] - 1.0 * rank - 0.5
    clicked = rng.random(n) < 1.0 / (1.0 + np.exp(-logit))
    ranker = ScoredRanker.fit(Impressions(feats, rank, clicked, np.ones(n, bool)), k=2)
    assert ranker.weights[F_LLM] == pytest.approx(1.2, abs=0.08)
    assert ranker.bias == pytest.approx(-0.5, abs=0.08)
    assert set(ranker.describe()) == {*FEATURE_NAMES, "bias"}


def test_linucb_batched_update_matches_the_formula() -> None:
    d = len(FEATURE_NAMES) + 1
    theta0 = np.linspace(-0.1, 0.1, d)
    r = LinUCBRanker(2, theta0, prior_weight=4.0, exploration=0.0)
    rng = np.random.default_rng(2)
    obs = _obs(rng.normal(size=(2, 5, len(FEATURE_NAMES))))
    r.reset(np.arange(2), obs)
    assert np.array_equal(r.act(obs)[0], np.argsort(-(np.c_[obs["features"][0], np.ones(5)] @ theta0))[:2])
    slate = np.array([[3, 1], [0, 4]])
    clicks = np.array([[False, True], [False, False]])
    fb = Feedback(clicks, np.zeros_like(clicks), np.zeros((2, 2), np.float32), np.zeros(2, np.float32))
    r.update(obs, slate, fb)
    for row in range(2):
        x = np.c_[obs["features"][row, slate[row]], np.ones(2)]  # both slots examined in both rows
        a = 4.0 * np.eye(d) + x.T @ x
        b = 4.0 * theta0 + x.T @ clicks[row].astype(float)
        assert np.allclose(r.a[row], a) and np.allclose(r.b[row], b)
        assert np.allclose(r.a_inv[row], np.linalg.inv(a))
    r.reset(np.array([1]), obs)  # only row 1 forgets
    assert np.allclose(r.b[1], 4.0 * theta0) and not np.allclose(r.b[0], 4.0 * theta0)


def test_strategy_blend_update() -> None:
    """w = 0.5, α = 0.5: a click explained by LLM similarity moves w to 0.75; no click leaves it."""
    f = np.zeros((2, 4, len(FEATURE_NAMES)))
    f[:, :, F_LLM] = [3.0, 0.0, 1.0, 0.0]  # candidate 0 stands out by LLM similarity
    f[:, :, F_CF] = [0.0, 3.0, 1.0, 0.0]  # candidate 1 by CF score
    obs = _obs(f)
    r = StrategyAlphaRanker(2, alpha=0.5)
    r.reset(np.arange(2), obs)
    slate = np.array([[0, 1], [0, 1]])
    clicks = np.array([[True, False], [False, False]])
    r.update(obs, slate, Feedback(clicks, clicks & False, np.zeros((2, 2), np.float32), np.zeros(2, np.float32)))
    assert r.weight.tolist() == [0.75, 0.5]
    r.update(obs, slate, Feedback(np.array([[False, True], [False, False]]), clicks & False,
                                  np.zeros((2, 2), np.float32), np.zeros(2, np.float32)))
    assert r.weight.tolist() == [0.375, 0.5]  # then a CF-explained click: 0.5·0.75 + 0.5·0


def test_online_alpha_starts_at_the_blend_and_moves_toward_clicks(ctx: RankerContext) -> None:
    core = ctx.core
    assert core is not None
    core.reset_rows(np.arange(core.B), np.arange(core.B, dtype=np.uint64) + np.uint64(7))
    obs = {key: v.copy() for key, v in core.observe().items()}
    online = OnlineAlphaRanker(ctx.env_cfg.slate_size, 0.6, ctx.world.item_emb)
    online.reset(np.arange(core.B), obs)
    assert np.allclose(online.scores(obs), BlendRanker(ctx.env_cfg.slate_size, 0.6).scores(obs), atol=1e-5)
    slate = online.act(obs)
    clicks = np.zeros(slate.shape, bool)
    clicks[:, 1] = True
    before = online.scores(obs)
    online.update(obs, slate, Feedback(clicks, clicks & False, np.zeros(slate.shape, np.float32),
                                       np.zeros(len(slate), np.float32)))
    after = online.scores(obs)
    rows = np.arange(core.B)
    clicked_pos, skipped_pos = slate[:, 1], slate[:, 0]
    assert (after[rows, clicked_pos] > before[rows, clicked_pos]).all()
    assert (after[rows, clicked_pos] - after[rows, skipped_pos] > before[rows, clicked_pos]
            - before[rows, skipped_pos]).all()


def test_scored_and_linucb_learn_the_repeat_penalty(ctx: RankerContext) -> None:
    """The simulator penalises re-shown items; rankers fitted on logs should weigh ``item_seen`` negatively."""
    assert make_ranker("scored", ctx).weights[F_ITEM_SEEN] < 0  # type: ignore[attr-defined]
    assert make_ranker("linucb", ctx).theta0[F_ITEM_SEEN] < 0  # type: ignore[attr-defined]


# ---- behaviour on the simulator ---------------------------------------------------------------------------------


def test_oracle_beats_random_on_a_fixed_seed(ctx: RankerContext, small_world: World) -> None:
    core = ctx.core
    assert core is not None
    plan = episode_plan(160, [3], small_world.populations["heldout"].size)
    st = evaluate_rankers(core, {"random": make_ranker("random", ctx), "oracle": make_ranker("oracle", ctx)}, plan)
    assert st["oracle"].ret.mean() > 1.3 * st["random"].ret.mean()
    assert paired_test(st["oracle"].ret, st["random"].ret)["p_value"] < 1e-3


def test_tune_alpha_returns_the_argmax_of_its_curve(small_world: World, small_cfg: EnvConfig) -> None:
    alphas = (0.0, 0.25, 0.5, 0.75, 1.0)
    curve = tune_alpha(small_world, small_cfg, alphas, episodes=40, seed=11, batch=40)
    assert curve.alphas == list(alphas) and len(curve.mean_return) == len(alphas)
    assert curve.best_alpha == alphas[int(np.argmax(curve.mean_return))]
    assert curve.population == "train"
    for (lo, hi), m in zip(curve.ci95, curve.mean_return, strict=True):
        assert lo <= m <= hi
    again = tune_alpha(small_world, small_cfg, alphas, episodes=40, seed=11, batch=16)
    assert again.mean_return == pytest.approx(curve.mean_return)  # same sessions whatever the batch
    tuned = TunedAlphaRanker(small_cfg.slate_size, curve)
    assert tuned.alpha == curve.best_alpha and tuned.name == "tuned-alpha"
