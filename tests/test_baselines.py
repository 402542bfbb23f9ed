"""Baseline rankers, their fitting and tuning, and the ranker registry (agents/rankers.py, fitting.py, tuning.py,
registry.py; agents/baselines.py re-exports them)."""

from __future__ import annotations

import dataclasses
import importlib.util
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_TUNE_EPISODES

from agents.base import Feedback
from agents.evaluation import episode_plan, evaluate_rankers, run_episodes
from agents.fitting import Impressions, examined_slots, fit_logistic
from agents.rankers import (
    BlendRanker,
    DiverseRanker,
    LinUCBRanker,
    OnlineAlphaRanker,
    OracleDiverseRanker,
    ScoredRanker,
    StrategyAlphaRanker,
    TunedAlphaRanker,
    TunedDiverseRanker,
    TunedOracleDiverseRanker,
)
from agents.registry import SPECS, RankerContext, check_specs, make_ranker, parse_spec
from agents.report import paired_test
from agents.tuning import (
    ALPHA_GRID,
    DIVERSE_GRID,
    VALIDATE_TOP,
    VALIDATION_FACTOR,
    VALIDATION_SEED_OFFSET,
    AlphaCurve,
    ParamSearch,
    coordinate_search,
    diverse_ranker,
    oracle_diverse_ranker,
    tune_alpha,
    tune_diverse,
    tune_oracle_diverse,
    validation_candidates,
)
from bench.headroom import alpha_by_group, best_per_group, diverse_by_group, grouped_returns, rho_groups
from configs.schema import EnvConfig
from encoders.hashing import HashingEncoder
from envs.core import BatchedCore
from envs.kernels import SessionState
from envs.presets import build_world, preset_config
from envs.spaces import CONTEXT_NAMES, F_CAT_CLICKS, F_CAT_EXPOSURE, F_CF, F_ITEM_SEEN, F_LLM, FEATURE_NAMES
from envs.users import sample_traits
from envs.world import World

ALL_SPECS = ["random", "popular", "greedy-llm", "greedy-cf", "fixed-alpha:0.3", "scored", "tuned-alpha",
             "online-alpha:0.5", "strategy-alpha:0.5", "linucb", "linucb:0.5", "diverse:0.7", "tuned-diverse",
             "session-diverse", "tuned-session-diverse", "oracle", "tuned-oracle-diverse"]
HIDDEN = ("oracle", "tuned-oracle-diverse")
#: Tiny grids: the tuned references of the ``ctx`` fixture stay cheap.
TINY_DIVERSE = {"alpha": (0.5, 1.0), "cap": (1, 2), "exposure_weight": (0.0, 3.0), "seen_weight": (0.5,)}
TINY_ORACLE = {"cap": (1, 5), "exposure_weight": (0.0, 1.0)}


@pytest.fixture(scope="module")
def ctx(small_world: World, small_cfg: EnvConfig) -> RankerContext:
    """A context with a held-out evaluation core and cheap tuning/fitting budgets."""
    core = BatchedCore(small_world, small_cfg, 32, population="heldout")
    return RankerContext(small_world, small_cfg, core=core, seed=0, alphas=(0.0, 0.5, 1.0), tune_episodes=40,
                         fit_sessions=60, batch=32, diverse_grid=TINY_DIVERSE, oracle_grid=TINY_ORACLE)


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
    for spec in HIDDEN:
        with pytest.raises(ValueError, match="core"):
            make_ranker(spec, RankerContext(small_world, small_cfg))


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
        assert first.reads_hidden_state == (spec in HIDDEN)
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
    assert examined_slots(clicks).tolist() == [[True, True, False], [True, True, True], [True, False, False]]


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


# ---- tuned references -----------------------------------------------------------------------------------------


def _point_returns(world: World, cfg: EnvConfig, point: dict[str, float], episodes: int, seed: int) -> np.ndarray:
    """Training-user returns of the diverse heuristic at one point, on the sessions the tuning uses."""
    core = BatchedCore(world, cfg, min(32, episodes), population="train")
    plan = episode_plan(episodes, [seed], world.populations["train"].size)
    return run_episodes(core, diverse_ranker(cfg.slate_size, world.catalog.category, point), plan).ret


def test_coordinate_search_finds_the_best_point_of_a_known_surface() -> None:
    """A separable surface with its peak at (a=3, b=1): coordinate ascent from a corner reaches it; the result is
    the best evaluated point and never below the start; a small grid is searched point by point."""
    axes = {"a": (0.0, 1.0, 2.0, 3.0, 4.0), "b": (0.0, 1.0, 2.0)}
    calls: list[tuple[float, float]] = []

    def evaluate(p: dict[str, float]) -> np.ndarray:
        calls.append((p["a"], p["b"]))
        return np.full(4, -(p["a"] - 3.0) ** 2 - 2.0 * (p["b"] - 1.0) ** 2)

    best, evaluated = coordinate_search(evaluate, axes, {"a": 0.0, "b": 2.0}, exhaustive_max=4)
    assert best == {"a": 3.0, "b": 1.0}
    assert max(m for _, m in evaluated) == evaluate(best).mean()
    assert len(set(calls)) == len(calls) - 1 < 15  # memoised (the extra call is the check above); not all 15 points
    best_all, evaluated_all = coordinate_search(evaluate, axes, {"a": 0.0, "b": 2.0})
    assert best_all == best and len(evaluated_all) == 15
    # only the selected episodes count
    sel = np.array([True, False, False, False])
    best_sel, _ = coordinate_search(lambda p: np.array([p["a"], -p["a"], -p["a"], -p["a"]]), {"a": (0.0, 1.0)},
                                    {"a": 0.0}, select=sel)
    assert best_sel == {"a": 1.0}
    with pytest.raises(ValueError, match="not on its axis"):
        coordinate_search(evaluate, axes, {"a": 0.5, "b": 0.0})
    with pytest.raises(ValueError, match="empty"):
        coordinate_search(evaluate, {"a": ()}, {"a": 0.0})


def test_term_probe_ranker_is_tuned_diverse_at_zero_and_follows_the_term_when_it_dominates() -> None:
    """``bench.term_probe``'s ranker: β = 0 gives the base heuristic's slates; a dominant β gives the top of the
    term (with the cap not binding and no penalties); the slates stay valid (distinct positions)."""
    from bench.term_probe import TermDiverseRanker

    rng = np.random.default_rng(5)
    b, n, k = 200, 30, 5
    feats = rng.uniform(0.0, 1.0, (b, n, len(FEATURE_NAMES)))
    obs = _obs(feats)
    term = rng.normal(0.0, 1.0, (b, n))
    category = np.arange(n) % 3
    base = DiverseRanker(k, 0.6, category, exposure_weight=0.5, seen_weight=0.5, cap=2)
    np.testing.assert_array_equal(TermDiverseRanker(base, lambda o: term, 0.0).act(obs), base.act(obs))
    free = DiverseRanker(k, 0.6, category, exposure_weight=0.0, seen_weight=0.0, cap=k)
    slate = TermDiverseRanker(free, lambda o: term, 1e6).act(obs)
    np.testing.assert_array_equal(slate, np.argsort(-term, axis=1)[:, :k])
    capped = TermDiverseRanker(base, lambda o: term, 1e6).act(obs)
    assert all(len(set(row)) == k for row in capped.tolist())
    assert (np.stack([np.bincount(category[row], minlength=3) for row in capped]) <= 2).all()


def test_session_click_term_follows_this_sessions_clicks_and_forgets_them_at_a_new_session() -> None:
    """The session-clicks term (``agents.rankers.SessionClicks``, ``bench.term_probe``'s and tuned-session-diverse's): 0
    before any click; after a click, the candidates ranked by their cosine with the clicked items' embedding sum; a
    row whose session restarts forgets, the others keep theirs; the probe's ranker hands it the feedback and the
    session starts."""
    from agents.base import Feedback
    from agents.rankers import SessionClicks
    from bench.term_probe import TermDiverseRanker

    rng = np.random.default_rng(3)
    m, d, b, n, k = 40, 8, 3, 12, 4
    emb = rng.normal(size=(m, d))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    cands = np.stack([rng.permutation(m)[:n] for _ in range(b)])
    obs = {"candidates": cands}
    term = SessionClicks(emb)
    np.testing.assert_array_equal(term(obs), np.zeros((b, n)))  # nothing clicked yet
    slate = np.tile(np.arange(k), (b, 1))
    clicks = np.zeros((b, k), bool)
    clicks[0, 1] = clicks[1, 2] = True  # row 2 skips the slate
    feedback = Feedback(clicks, np.zeros((b, k), bool), np.zeros((b, k), np.float32), np.zeros(b, np.float32))
    term.update(obs, slate, feedback)
    term.update(obs, slate, feedback)  # the same click twice: same direction
    z = term(obs)
    for row, col in ((0, 1), (1, 2)):
        want = emb[cands[row]] @ emb[cands[row, col]]
        np.testing.assert_array_equal(np.argsort(-z[row], kind="stable"), np.argsort(-want, kind="stable"))
        assert abs(z[row].mean()) < 1e-9 and abs(z[row].std() - 1.0) < 1e-6
    np.testing.assert_array_equal(z[2], 0.0)
    term.reset(np.array([0]))
    after = term(obs)
    np.testing.assert_array_equal(after[0], 0.0)
    np.testing.assert_array_equal(after[1], z[1])

    category = np.arange(m) % 3  # per catalog item
    feats = rng.uniform(0.0, 1.0, (b, n, len(FEATURE_NAMES)))
    base = DiverseRanker(k, 0.6, category, exposure_weight=0.0, seen_weight=0.0, cap=k)
    ranker = TermDiverseRanker(base, SessionClicks(emb), 1e6)
    full = {**_obs(feats), "candidates": cands}
    ranker.reset(np.arange(b), full)
    ranker.update(full, slate, feedback)
    got = ranker.act(full)
    want0 = np.argsort(-(emb[cands[0]] @ emb[cands[0, 1]]))[:k]
    np.testing.assert_array_equal(got[0], want0)  # the dominant term decides once the row clicked
    ranker.reset(np.array([0]), full)
    np.testing.assert_array_equal(ranker.act(full)[0], base.act(full)[0])  # forgotten: the heuristic's slate


def test_session_choices_subtract_what_was_shown_and_the_recorder_hands_the_term_its_feedback(
        small_world: World, small_cfg: EnvConfig) -> None:
    """``SessionClicks(shown_weight=λ)`` (``bench.term_probe``'s ``session-choices:λ``): after a skipped slate the
    sum is −λ times the slate's DCG-discounted mean, after a click the clicked item less that; λ = 0 is the plain
    session-clicks term; a negative λ and a bad term name are refused by name; the observed-taste fit hands the term
    each request's feedback and session start, so its column is the term as a ranker would see it."""
    from agents.base import Feedback
    from agents.rankers import SessionClicks, shown_discount
    from bench.term_probe import choices_spec, fit_observed_taste
    from envs.factory import make_core as make_env_core

    rng = np.random.default_rng(5)
    m, d, b, n, k = 30, 6, 2, 10, 4
    emb = rng.normal(size=(m, d))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)  # unit rows, as the catalog's are
    cands = np.stack([rng.permutation(m)[:n] for _ in range(b)])
    obs = {"candidates": cands}
    slate = np.tile(np.arange(k)[::-1], (b, 1))  # shown best-first: candidates 3, 2, 1, 0
    clicks = np.zeros((b, k), bool)
    clicks[1, 2] = True  # row 0 skips the slate, row 1 clicks its third slot (candidate 1)
    feedback = Feedback(clicks, np.zeros((b, k), bool), np.zeros((b, k), np.float32), np.zeros(b, np.float32))
    disc = shown_discount(k)
    assert disc.sum() == pytest.approx(1.0) and np.all(np.diff(disc) < 0)
    lam = 0.4
    term, plain = SessionClicks(emb, lam), SessionClicks(emb)
    term.update(obs, slate, feedback)
    plain.update(obs, slate, feedback)
    for row in range(b):
        shown = emb[cands[row, slate[row]]]  # (K, D)
        want = clicks[row].astype(float) @ shown - lam * disc @ shown
        np.testing.assert_allclose(term.clicked[row], want, rtol=1e-12, atol=1e-12)
        cos = emb[cands[row]] @ want / np.linalg.norm(want)
        np.testing.assert_allclose(term.similarity(obs)[row], cos, rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(plain.similarity(obs)[0], 0.0)  # λ = 0: a skip leaves nothing
    assert np.all(term.similarity(obs)[0] != 0.0)
    with pytest.raises(ValueError, match="shown_weight"):
        SessionClicks(emb, -0.1)
    assert choices_spec("session-choices:0.3") == 0.3 and choices_spec("session-choices:0") == 0.0
    assert choices_spec("session-clicks") is None
    for bad in ("session-choices", "session-choices:-1", "session-choices:x", "session-choices:nan"):
        with pytest.raises(ValueError, match="session-choices"):
            choices_spec(bad)

    base = DiverseRanker(small_cfg.slate_size, 0.8, small_world.catalog.category, exposure_weight=1.0, cap=2)
    plan = episode_plan(16, [0], small_world.populations["train"].size)
    core = make_env_core(small_cfg, small_cfg.preset, None, small_world, "train", 16)
    seen: list[float] = []

    class Spy(SessionClicks):  # records how much feedback the term holds at each request
        def __call__(self, obs: dict[str, np.ndarray]) -> np.ndarray:
            seen.append(float(np.abs(self.clicked).sum()) if len(self.clicked) else 0.0)
            return super().__call__(obs)

    _, fit = fit_observed_taste(core, base, plan, extra=Spy(small_world.item_emb, lam))
    assert seen[0] == 0.0 and max(seen) > 0.0  # empty at the first request, fed by the sessions' slates after
    assert fit["r2"] >= fit["r2_without"] - 1e-9


def test_tuned_session_diverse_starts_at_tuned_diverse_and_is_its_heuristic_at_zero_weight(ctx: RankerContext) -> None:
    """tuned-session-diverse: its search starts at tuned-diverse's point with β = 0 and searches β with the same
    axes; at β = 0 the ranker's slates are tuned-diverse's, and with a click in the session a large β changes them."""
    from agents.rankers import SessionDiverseRanker
    from agents.tuning import SESSION_DIVERSE_RULE, session_diverse_ranker

    search = ctx.session_diverse_search()
    assert search.start == {"session_weight": 0.0, **ctx.diverse_search().best}
    rule = {n: float(v) for n, v in SESSION_DIVERSE_RULE.items()}
    assert rule in search.validation_points  # the hand-set rule meets the validation sessions, whatever the search did
    assert set(search.axes) == {"session_weight", *ctx.diverse_search().axes}
    assert search.axes["session_weight"][0] == 0.0 and len(search.axes["session_weight"]) > 1
    core = ctx.core
    assert core is not None
    core.reset_rows(np.arange(core.B), np.arange(core.B, dtype=np.uint64) + np.uint64(7))
    obs = {key: v.copy() for key, v in core.observe().items()}
    k, cat, emb = core.K, ctx.world.catalog.category, ctx.world.item_emb
    zero = session_diverse_ranker(k, cat, emb, {**search.start})
    assert isinstance(zero, SessionDiverseRanker)
    plain = make_ranker("tuned-diverse", ctx)
    strong = session_diverse_ranker(k, cat, emb, {**search.start, "session_weight": 50.0})
    for r in (zero, plain, strong):
        r.reset(np.arange(core.B), obs)
    slate = plain.act(obs)
    np.testing.assert_array_equal(zero.act(obs), slate)
    np.testing.assert_array_equal(strong.act(obs), slate)  # nothing clicked yet: the term is 0
    res = core.step(slate)
    feedback = Feedback.from_step(res)
    for r in (zero, strong):
        r.update(obs, slate, feedback)
    clicked = np.flatnonzero(res.click_rank >= 0)
    assert clicked.size > 0
    np.testing.assert_array_equal(zero.act(obs), slate)
    moved = strong.act(obs)
    assert (moved[clicked] != slate[clicked]).any(axis=1).mean() > 0.5
    np.testing.assert_array_equal(moved[res.click_rank < 0], slate[res.click_rank < 0])


def test_tuned_pop_diverse_starts_at_tuned_diverse_and_adds_a_popularity_prior(ctx: RankerContext) -> None:
    """tuned-pop-diverse: its search starts at tuned-diverse's point with weight 0 and searches the prior's weight
    with the same axes; at weight 0 its slates are tuned-diverse's; a large weight fills the slate with the most
    popular candidates the category cap allows; its score equals the term probe's ranker with the popularity column
    (the search that found it)."""
    from agents.rankers import PopDiverseRanker
    from agents.tuning import POP_WEIGHTS, pop_diverse_ranker
    from bench.term_probe import OBSERVED_COLUMNS, TermDiverseRanker, column_term
    from envs.spaces import F_POP

    search = ctx.pop_diverse_search()
    assert search.start == {"pop_weight": 0.0, **ctx.diverse_search().best}
    assert set(search.axes) == {"pop_weight", *ctx.diverse_search().axes}
    assert list(search.axes["pop_weight"]) == list(POP_WEIGHTS) and POP_WEIGHTS[0] == 0.0
    ranker = make_ranker("tuned-pop-diverse", ctx)
    assert isinstance(ranker, PopDiverseRanker) and ranker.pop_weight == search.best["pop_weight"]
    core = ctx.core
    assert core is not None
    core.reset_rows(np.arange(core.B), np.arange(core.B, dtype=np.uint64) + np.uint64(11))
    obs = {key: v.copy() for key, v in core.observe().items()}
    k, cat = core.K, ctx.world.catalog.category
    zero = pop_diverse_ranker(k, cat, {**search.start})
    plain = make_ranker("tuned-diverse", ctx)
    np.testing.assert_array_equal(zero.act(obs), plain.act(obs))
    point = {**search.start, "pop_weight": 0.3}
    probe = TermDiverseRanker(plain, column_term(OBSERVED_COLUMNS["popularity"]), 0.3)  # type: ignore[arg-type]
    np.testing.assert_allclose(pop_diverse_ranker(k, cat, point).blend(obs), probe.blend(obs), rtol=1e-12)
    strong = pop_diverse_ranker(k, cat, {**search.start, "pop_weight": 1e6, "exposure_weight": 0.0,
                                         "seen_weight": 0.0, "lean_weight": 0.0})
    slate = strong.act(obs)
    pop = obs["features"][:, :, F_POP]
    for row in range(0, core.B, max(1, core.B // 8)):
        chosen = pop[row, slate[row]]
        np.testing.assert_array_equal(np.sort(chosen)[::-1], chosen)  # best first
        rest = np.setdiff1d(np.arange(pop.shape[1]), slate[row])
        cap_full = np.bincount(cat[obs["candidates"][row, slate[row]]], minlength=cat.max() + 1) >= strong.cap
        free = rest[~cap_full[cat[obs["candidates"][row, rest]]]]  # candidates the cap still allowed
        assert free.size == 0 or pop[row, free].max() <= chosen.min()


def test_cap_probe_variants_reduce_to_the_heuristic_and_do_what_they_say() -> None:
    """``bench.cap_probe``: the default variant gives tuned-diverse's slates (fixed and click-following blend); a soft
    cap of 0 is no cap; ``relax`` gives a clicked category exactly one more slot and the others none."""
    from bench.cap_probe import CapVariantRanker

    rng = np.random.default_rng(9)
    b, n, k = 150, 30, 6
    feats = rng.uniform(0.0, 1.0, (b, n, len(FEATURE_NAMES)))
    category = np.arange(n) % 3
    for lean in (0.0, 2.0):
        obs = _obs(feats)
        obs["context"] = rng.normal(0.0, 1.0, obs["context"].shape).astype(np.float32)
        base = DiverseRanker(k, 0.6, category, exposure_weight=0.5, seen_weight=0.5, cap=2, lean_weight=lean)
        np.testing.assert_array_equal(CapVariantRanker(base).act(obs), base.act(obs))
        free = DiverseRanker(k, 0.6, category, exposure_weight=0.5, seen_weight=0.5, cap=k, lean_weight=lean)
        np.testing.assert_array_equal(CapVariantRanker(base, soft=0.0).act(obs), free.act(obs))
    # category 0 was clicked and its items score highest: with relax=1 it takes cap + 1 = 3 slots, no more
    feats2 = feats.copy()
    feats2[:, :, F_CAT_CLICKS] = np.where(category == 0, 1.0, 0.0)
    feats2[:, :, F_LLM] = feats2[:, :, F_CF] = np.where(category == 0, 10.0, 0.0) + rng.uniform(0, 1, (b, n))
    base = DiverseRanker(k, 0.6, category, exposure_weight=0.0, seen_weight=0.0, cap=2)
    obs = _obs(feats2)
    counts = np.stack([np.bincount(category[row], minlength=3) for row in CapVariantRanker(base, relax=1).act(obs)])
    assert (counts[:, 0] == 3).all() and (counts[:, 1:] <= 2).all()
    counts = np.stack([np.bincount(category[row], minlength=3) for row in base.act(obs)])
    assert (counts[:, 0] == 2).all()  # without it, the cap holds


def test_cap_probe_refuses_a_malformed_variant_by_name(capsys: pytest.CaptureFixture[str]) -> None:
    from bench.cap_probe import main, parse_variant

    assert parse_variant(" relax = 1 , thresh=0.5") == {"relax": 1.0, "thresh": 0.5}
    for bad, why in (("soft", "KEY=VALUE"), ("cap=2", "KEY=VALUE"), ("soft=x", "not a number"),
                     ("bonus=-1", "must be >= 0"), ("relax=0.5", "whole")):
        with pytest.raises(ValueError, match=why):
            parse_variant(bad)
    with pytest.raises(SystemExit):
        main(["--variants", "soft=1", "relax=x"])
    assert "relax=x" in capsys.readouterr().err


def test_term_probe_rejects_too_few_sessions_by_name(capsys: pytest.CaptureFixture[str]) -> None:
    from bench.term_probe import main

    with pytest.raises(SystemExit):
        main(["--episodes", "1"])
    assert "--episodes" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--terms", "quality,tastee"])
    err = capsys.readouterr().err
    assert "--terms" in err and "tastee" in err


def test_observed_column_terms_are_the_standardised_column_and_searchable_with_retune() -> None:
    """``bench.term_probe.column_term``: the observed column standardised over each request (mean 0, SD 1 per row, the
    column's order kept); ``popularity`` and ``price`` are ``--retune`` terms (an engineer's terms)."""
    from bench.term_probe import OBSERVED_COLUMNS, RETUNE_NAMED, column_term
    from envs.spaces import F_POP, F_PRICE

    rng = np.random.default_rng(2)
    feats = rng.uniform(0.0, 3.0, (3, 9, len(FEATURE_NAMES)))
    assert OBSERVED_COLUMNS == {"popularity": F_POP, "price": F_PRICE}
    assert set(OBSERVED_COLUMNS) <= set(RETUNE_NAMED)
    for col in (F_POP, F_PRICE):
        z = column_term(col)({"features": feats.astype(np.float32)})
        np.testing.assert_allclose(z.mean(axis=1), 0.0, atol=1e-9)
        np.testing.assert_allclose(z.std(axis=1), 1.0, rtol=1e-6)
        for row in range(3):
            np.testing.assert_array_equal(np.argsort(z[row]), np.argsort(feats[row, :, col].astype(np.float32)))


def test_term_probe_retune_refuses_a_term_it_cannot_search(capsys: pytest.CaptureFixture[str]) -> None:
    """``--retune`` searches parts of the true utility, ``observed-taste`` and the observed columns; another probe
    term (the plain probe's category penalty) is refused by name, with the choices; so is a β axis without 0
    (tuned-diverse itself) or with a non-number, and a β axis without ``--retune``."""
    from bench.term_probe import main

    with pytest.raises(SystemExit):
        main(["--retune", "--terms", "cat_clicks"])
    err = capsys.readouterr().err
    assert "cat_clicks" in err and "--retune" in err and "taste" in err and "observed-taste" in err
    assert "popularity" in err  # an observed column is searched with --retune (a term an engineer could write)
    for betas, why in (("1,2", "include 0"), ("0,x", "not a comma-separated list"), ("0,inf", "finite")):
        with pytest.raises(SystemExit):  # β's axis: refused before any world is loaded
            main(["--retune", "--betas", betas])
        err = capsys.readouterr().err
        assert "--betas" in err and why in err and betas in err
    with pytest.raises(SystemExit):  # the plain probe has its own β values per term: --betas would be ignored
        main(["--betas", "0,1"])
    err = capsys.readouterr().err
    assert "--betas" in err and "without --retune" in err
    with pytest.raises(SystemExit):  # a noisy-taste term needs its σ, before any world is loaded
        main(["--retune", "--terms", "noisy-taste:x"])
    err = capsys.readouterr().err
    assert "--terms" in err and "noisy-taste:x" in err
    with pytest.raises(SystemExit):  # a run to compare with must exist, before any world is loaded
        main(["--retune", "--terms", "session-clicks", "--runs", "no/such/run"])
    err = capsys.readouterr().err
    assert "--runs" in err and "no/such/run" in err


def test_term_probe_retune_starts_at_tuned_diverse_and_reads_the_searched_core(small_world: World,
                                                                                small_cfg: EnvConfig) -> None:
    """The retune search's β = 0 point is the heuristic itself on the search's own sessions (its tuning mean equals
    the plain ranker's on the same plan), it is the first validation candidate, and a dominant β moves the return
    (the term reads the hidden utility of the core the search runs, not another one)."""
    from agents.tuning import TUNE_SEED
    from bench.term_probe import hidden_term, retune_with_term
    from envs.factory import make_core as make_env_core

    start = {"alpha": 0.8, "cap": 2.0, "exposure_weight": 1.0, "seen_weight": 0.5, "lean_weight": 0.0}
    grid = {"beta": (0.0, 16.0), **{n: (v,) for n, v in start.items()}}
    search = retune_with_term(small_world, small_cfg, "taste", lambda c: hidden_term(c, "semantic", "static"), start,
                              episodes=12, batch=12, grid=grid)
    assert search.kind == "diverse+taste" and search.validation_points[0] == {"beta": 0.0, **start}
    assert {p["beta"] for p in search.points} == {0.0, 16.0}
    core = make_env_core(small_cfg, small_cfg.preset, None, small_world, "train", 12)
    plain = run_episodes(core, diverse_ranker(small_cfg.slate_size, small_world.catalog.category, start),
                         episode_plan(12, [TUNE_SEED], small_world.populations["train"].size)).ret
    means = dict(zip((p["beta"] for p in search.points), search.means, strict=True))
    assert means[0.0] == pytest.approx(float(plain.mean()), rel=1e-12)
    assert means[16.0] != pytest.approx(means[0.0], rel=1e-6)


def test_observed_taste_fit_reads_the_taste_from_the_observation_on_other_users(small_world: World,
                                                                                 small_cfg: EnvConfig) -> None:
    """``bench.term_probe.fit_observed_taste``: fitted on training users' sessions, its observation-only term
    correlates with the hidden taste of held-out users' candidates about as well as the fit's own R² says."""
    from bench.term_probe import fit_observed_taste, hidden_term, observed_taste_term
    from envs.factory import make_core as make_env_core

    base = DiverseRanker(small_cfg.slate_size, 0.8, small_world.catalog.category, exposure_weight=1.0, cap=2)
    train_core = make_env_core(small_cfg, small_cfg.preset, None, small_world, "train", 16)
    w, fit = fit_observed_taste(train_core, base, episode_plan(16, [0], small_world.populations["train"].size))
    assert 0.0 < fit["r2"] < 1.0 and fit["candidates"] > 0 and np.isfinite(w).all()
    core = make_env_core(small_cfg, small_cfg.preset, None, small_world, "heldout", 16)
    plan = episode_plan(16, [1], small_world.populations["heldout"].size)
    term, taste, pairs = observed_taste_term(w), hidden_term(core, "semantic", "static"), []

    class Probe(DiverseRanker):
        def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
            pairs.append((term(obs).ravel(), taste(obs).ravel()))
            return super().act(obs)

    run_episodes(core, Probe(small_cfg.slate_size, 0.8, small_world.catalog.category, exposure_weight=1.0, cap=2),
                 plan)
    x, y = (np.concatenate(v) for v in zip(*pairs, strict=True))
    assert np.corrcoef(x, y)[0, 1] > 0.5 * np.sqrt(fit["r2"])


def test_noisy_taste_is_the_taste_at_zero_and_loses_the_share_of_it_that_sigma_says(small_world: World,
                                                                                    small_cfg: EnvConfig) -> None:
    """``bench.term_probe.noisy_taste_term``: σ = 0 is the standardised true taste; with σ its squared correlation
    with the taste over the candidates is about 1 / (1 + σ²); the error belongs to the (user, item) pair (the same
    item of the same user gets the same error in another request); the low-rank error has unit variance and the
    rank it is asked; a bad σ or rank is refused by name."""
    from bench.term_probe import hidden_term, low_rank_normal, noisy_spec, noisy_taste_term, pair_normal
    from envs.factory import make_core as make_env_core

    core = make_env_core(small_cfg, small_cfg.preset, None, small_world, "heldout", 16)
    plan = episode_plan(16, [1], small_world.populations["heldout"].size)
    taste, exact, noisy = hidden_term(core, "semantic", "static"), noisy_taste_term(core, 0.0), \
        noisy_taste_term(core, 1.0)
    low_term = noisy_taste_term(core, 1.0, rank=8)
    seen: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    class Probe(DiverseRanker):
        def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
            t = taste(obs)
            assert np.array_equal(exact(obs), t)
            seen.append((t.ravel(), noisy(obs).ravel(), low_term(obs).ravel()))
            return super().act(obs)

    run_episodes(core, Probe(small_cfg.slate_size, 0.8, small_world.catalog.category, exposure_weight=1.0, cap=2),
                 plan)
    t, x, lr = (np.concatenate(v) for v in zip(*seen, strict=True))
    assert 0.3 < np.corrcoef(t, x)[0, 1] ** 2 < 0.7  # 1 / (1 + 1²) = 0.5
    assert 0.2 < np.corrcoef(t, lr)[0, 1] ** 2 < 0.8 and not np.allclose(x, lr)  # the same on the mean, another error
    users, items = np.array([[3], [3], [4]]), np.array([[7, 8], [7, 8], [7, 8]])
    e = pair_normal(users, items, seed=1)
    assert e[0, 0] == e[1, 0] and e[0, 1] == e[1, 1] and e[0, 0] != e[2, 0] and e[0, 0] != e[0, 1]
    big = pair_normal(np.arange(200)[:, None], np.arange(500)[None, :], seed=1)
    assert abs(big.mean()) < 0.02 and abs(big.std() - 1.0) < 0.02 and np.isfinite(big).all()
    assert not np.array_equal(big, pair_normal(np.arange(200)[:, None], np.arange(500)[None, :], seed=2))
    low = low_rank_normal(np.arange(400)[:, None], np.arange(400)[None, :], seed=1, rank=4)  # (users, items)
    assert abs(low.mean()) < 0.05 and abs(low.std() - 1.0) < 0.05
    assert np.linalg.matrix_rank(low) == 4 and np.linalg.matrix_rank(big) > 100
    assert noisy_spec("noisy-taste:0.5") == (0.5, None) and noisy_spec("noisy-taste:0.5:8") == (0.5, 8)
    assert noisy_spec("taste") is None
    for bad in ("noisy-taste", "noisy-taste:x", "noisy-taste:-1", "noisy-taste:inf", "noisy-taste:1:0",
                "noisy-taste:1:2.5", "noisy-taste:1:2:3"):
        with pytest.raises(ValueError, match="noisy-taste"):
            noisy_spec(bad)
    with pytest.raises(ValueError, match="σ"):
        noisy_taste_term(core, -0.5)
    with pytest.raises(ValueError, match="rank"):
        noisy_taste_term(core, 0.5, rank=0)



def test_history_terms_read_each_users_state_and_the_fit_says_what_a_column_adds(small_world: World,
                                                                                  small_cfg: EnvConfig) -> None:
    """``history-taste`` and ``history-pool:d`` (``bench.term_probe.state_term``): each candidate's similarity with
    the row's own user's state, standardised over the request; ``history-pool:1`` pools the logged history
    unweighted; the observed-taste fit with an extra column reports its R² with and without it, and a column that is
    the taste itself lifts it to 1; a bad decay is refused by name."""
    from bench.term_probe import fit_observed_taste, hidden_term, history_spec, state_term
    from envs.factory import make_core as make_env_core
    from envs.users import pool_history

    core = make_env_core(small_cfg, small_cfg.preset, None, small_world, "heldout", 16)
    pop, emb = core.pop, small_world.item_emb
    taste_term = state_term(core, pop.sem_taste)
    pooled = pool_history(pop.history, emb, 1.0)
    pool_term = state_term(core, pooled)
    checked: list[bool] = []

    class Probe(DiverseRanker):
        def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
            cand = obs["candidates"]
            for row in (0, len(cand) - 1):
                u = core.user[row]
                for term, state in ((taste_term, pop.sem_taste[u]), (pool_term, pooled[u])):
                    sim = emb[cand[row]].astype(np.float64) @ state.astype(np.float64)
                    want = (sim - sim.mean()) / sim.std()
                    np.testing.assert_allclose(term(obs)[row], want, rtol=1e-6, atol=1e-6)
            checked.append(True)
            return super().act(obs)

    run_episodes(core, Probe(small_cfg.slate_size, 0.8, small_world.catalog.category, exposure_weight=1.0, cap=2),
                 episode_plan(8, [1], pop.size))
    assert checked
    base = DiverseRanker(small_cfg.slate_size, 0.8, small_world.catalog.category, exposure_weight=1.0, cap=2)
    plan = episode_plan(16, [0], small_world.populations["train"].size)
    train_core = make_env_core(small_cfg, small_cfg.preset, None, small_world, "train", 16)
    _, plain = fit_observed_taste(train_core, base, plan)
    w, fit = fit_observed_taste(train_core, base, plan, extra=hidden_term(train_core, "semantic", "static"))
    assert fit["r2_without"] == pytest.approx(plain["r2"], rel=1e-9) and "r2_without" not in plain
    assert fit["r2"] > 0.999 > plain["r2"] and len(w) == len(fit_observed_taste(train_core, base, plan)[0]) + 1
    train_pooled = state_term(train_core, pool_history(train_core.pop.history, emb, 1.0))
    _, pooled_fit = fit_observed_taste(train_core, base, plan, extra=train_pooled)
    assert plain["r2"] - 1e-9 <= pooled_fit["r2"] < 0.999
    assert history_spec("history-pool:1") == 1.0 and history_spec("history-pool:0.85") == 0.85
    assert history_spec("history-taste") is None and history_spec("taste") is None
    for bad in ("history-pool", "history-pool:0", "history-pool:1.5", "history-pool:x", "history-pool:1:2"):
        with pytest.raises(ValueError, match="history-pool"):
            history_spec(bad)


def test_start_taste_is_the_taste_until_the_session_drifts(small_world: World, small_cfg: EnvConfig) -> None:
    """``bench.term_probe.start_taste_term``: at a session's first request it equals the standardised true taste
    (nothing has drifted yet); once the user has clicked, the drifting taste leaves it (the drift rate is > 0)."""
    from bench.term_probe import hidden_term, start_taste_term
    from envs.factory import make_core as make_env_core

    assert small_cfg.user_model.drift_rate > 0
    core = make_env_core(small_cfg, small_cfg.preset, None, small_world, "heldout", 16)
    start, taste = start_taste_term(core), hidden_term(core, "semantic", "static")
    gaps: dict[bool, list[float]] = {True: [], False: []}

    class Probe(DiverseRanker):
        def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
            gap = np.abs(start(obs) - taste(obs)).max(axis=1)
            first = core.t == 0
            gaps[True] += gap[first].tolist()
            gaps[False] += gap[~first].tolist()
            return super().act(obs)

    run_episodes(core, Probe(small_cfg.slate_size, 0.8, small_world.catalog.category, exposure_weight=1.0, cap=2),
                 episode_plan(32, [1], core.pop.size))
    assert gaps[True] and max(gaps[True]) < 1e-4
    assert gaps[False] and max(gaps[False]) > 1e-2


def test_term_probe_summary_is_the_last_line_and_the_json_file(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """``--json`` writes the summary the probe prints as its last line (what ``bench.information_curve`` reads);
    a folder that does not exist is refused before any world is loaded."""
    from bench.term_probe import finish_summary, main

    out = {"preset": "p", "seed": 3, "terms": {"taste": {"return": 1.5}}}
    assert finish_summary(out, tmp_path / "s.json") is out
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(last) == out == json.loads((tmp_path / "s.json").read_text(encoding="utf-8"))
    with pytest.raises(SystemExit):
        main(["--retune", "--json", str(tmp_path / "no" / "s.json")])
    assert "--json" in capsys.readouterr().err


def test_diverse_lean_weight_follows_the_clicks_and_is_the_fixed_blend_at_zero() -> None:
    """``DiverseRanker(lean_weight=w)``: at w = 0 its blend is the fixed one (the standardised-signal form of the
    same blend ranks alike); with w > 0 a session whose clicks leaned to the CF score gets a slate with more CF
    score and less LLM similarity than one whose clicks leaned to the LLM signal, and the LLM signal's share moves
    by w logit units per spread-unit of lean (:func:`lean_alpha`)."""
    from agents.rankers import click_lean, lean_alpha
    from envs.spaces import C_CLICKED_CF, C_CLICKED_LLM

    rng = np.random.default_rng(3)
    b, n, k = 400, 40, 5
    feats = rng.uniform(0.0, 1.0, (b, n, len(FEATURE_NAMES)))
    feats[..., F_LLM] = rng.normal(0.3, 0.1, (b, n))
    feats[..., F_CF] = rng.normal(0.0, 1.0, (b, n))
    feats[..., F_CAT_EXPOSURE] = 0.0
    obs = _obs(feats)
    category = np.arange(n) % 4
    fixed = DiverseRanker(k, 0.7, category)
    zero = DiverseRanker(k, 0.7, category, lean_weight=0.0)
    z_form = DiverseRanker(k, 0.7, category, lean_weight=1e-12)  # the standardised-signal path, no lean to speak of
    np.testing.assert_array_equal(zero.act(obs), fixed.act(obs))
    assert (z_form.act(obs) == fixed.act(obs)).all(axis=1).mean() > 0.99  # the same blend, up to rounding
    to_cf, to_llm = dict(obs, context=obs["context"].copy()), dict(obs, context=obs["context"].copy())
    to_cf["context"][:, C_CLICKED_CF], to_llm["context"][:, C_CLICKED_LLM] = 1.0, 0.1
    adaptive = DiverseRanker(k, 0.7, category, lean_weight=4.0)
    rows = np.arange(b)[:, None]

    def shown(o: dict[str, np.ndarray], col: int) -> float:
        return float(feats[rows, adaptive.act(o), col].mean())

    assert shown(to_cf, F_CF) > shown(to_llm, F_CF) + 0.3
    assert shown(to_llm, F_LLM) > shown(to_cf, F_LLM) + 0.02
    sd_llm, sd_cf = feats[..., F_LLM].std(axis=1) + 1e-9, feats[..., F_CF].std(axis=1) + 1e-9
    lean = click_lean(to_cf["context"], sd_llm, sd_cf)
    np.testing.assert_allclose(lean, -1.0 / sd_cf)
    logit = lambda a: np.log(a / (1.0 - a))  # noqa: E731
    np.testing.assert_allclose(logit(lean_alpha(0.7, sd_llm, sd_cf, lean, 4.0))
                               - logit(lean_alpha(0.7, sd_llm, sd_cf, lean, 0.0)), 4.0 * lean, rtol=1e-6)


def test_tune_diverse_searches_a_tiny_grid_and_picks_on_fresh_sessions(small_world: World,
                                                                       small_cfg: EnvConfig) -> None:
    """Every point of a small grid meets the tuning sessions; the start and the best :data:`VALIDATE_TOP` points
    there meet other sessions of the same users, and the result is the best of those on them."""
    episodes, seed = 48, 5
    search = tune_diverse(small_world, small_cfg, 1.0, TINY_DIVERSE, episodes=episodes, seed=seed, batch=32)
    assert search.method == "exhaustive" and search.population == "train"
    assert len(search.points) == 8  # 2·2·2·1, the start (1.0, cap 2, 3.0, 0.5) among them
    means = {tuple(sorted(p.items())): _point_returns(small_world, small_cfg, p, episodes, seed).mean()
             for p in search.points}
    assert [means[tuple(sorted(p.items()))] for p in search.points] == pytest.approx(search.means)
    ranked = sorted((key for key in means if dict(key) != search.start), key=lambda key: -means[key])
    assert search.validation_points[0] == search.start
    assert [tuple(sorted(p.items())) for p in search.validation_points[1:]] == ranked[:VALIDATE_TOP]
    valid = [_point_returns(small_world, small_cfg, p, VALIDATION_FACTOR * episodes, seed + VALIDATION_SEED_OFFSET)
             .mean() for p in search.validation_points]
    assert valid == pytest.approx(search.validation_means)
    assert search.best == search.validation_points[int(np.argmax(valid))]
    assert search.best_mean == pytest.approx(means[tuple(sorted(search.best.items()))])
    assert search.best_ci95[0] <= search.best_mean <= search.best_ci95[1]
    tuned = TunedDiverseRanker(small_cfg.slate_size, small_world.catalog.category, search)
    assert tuned.name == "tuned-diverse" and tuned.alpha == search.best["alpha"] and tuned.cap == search.best["cap"]
    with pytest.raises(ValueError, match="axes"):
        tune_diverse(small_world, small_cfg, 1.0, {"alpha": (1.0,)}, episodes=8)


def test_tune_diverse_is_never_below_the_hand_set_heuristic(small_world: World, small_cfg: EnvConfig) -> None:
    """Over the full grid (coordinate ascent), the search never ends below ``diverse:<α>`` with its defaults on the
    tuning sessions, and the result (picked on the validation sessions) is at least that heuristic there."""
    episodes, seed, alpha = 40, 9, 0.9
    search = tune_diverse(small_world, small_cfg, alpha, episodes=episodes, seed=seed, batch=32)
    assert search.method == "coordinate"
    assert set(search.best) == set(DIVERSE_GRID)
    core = BatchedCore(small_world, small_cfg, 32, population="train")
    plan = episode_plan(episodes, [seed], small_world.populations["train"].size)
    hand_set = run_episodes(core, DiverseRanker(small_cfg.slate_size, alpha, small_world.catalog.category), plan).ret
    assert search.start_mean == pytest.approx(hand_set.mean())
    assert max(search.means) >= hand_set.mean()
    again = _point_returns(small_world, small_cfg, search.best, episodes, seed)
    assert again.mean() == pytest.approx(search.best_mean)
    valid_plan = episode_plan(VALIDATION_FACTOR * episodes, [seed + VALIDATION_SEED_OFFSET],
                              small_world.populations["train"].size)
    hand_valid = run_episodes(core, DiverseRanker(small_cfg.slate_size, alpha, small_world.catalog.category),
                              valid_plan).ret
    assert search.validation_means[0] == pytest.approx(hand_valid.mean())
    assert max(search.validation_means) >= hand_valid.mean()


def test_validation_candidates_are_the_start_then_the_best_others() -> None:
    """The start first (even when it is not among the best), then the best other points by their tuning mean, the
    earlier on ties; never the start twice, never more than asked."""
    start = {"a": 0.0}
    evaluated = [({"a": 0.0}, 1.0), ({"a": 1.0}, 3.0), ({"a": 2.0}, 2.0), ({"a": 3.0}, 3.0), ({"a": 4.0}, 0.5)]
    assert validation_candidates(start, evaluated, 2) == [{"a": 0.0}, {"a": 1.0}, {"a": 3.0}]
    assert validation_candidates(start, evaluated, 10) == [{"a": 0.0}, {"a": 1.0}, {"a": 3.0}, {"a": 2.0},
                                                           {"a": 4.0}]
    assert validation_candidates(start, evaluated[:1], 3) == [start]


def test_tuning_results_are_cached_by_world_and_settings(small_world: World, small_cfg: EnvConfig, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    first = tune_diverse(small_world, small_cfg, 1.0, TINY_DIVERSE, episodes=24, seed=1, batch=24, cache_dir=tmp_path)
    files = list(tmp_path.glob("diverse-*.json"))
    assert len(files) == 1
    import agents.tuning as tuning

    def no_runs(*args: object, **kwargs: object) -> None:
        raise AssertionError("a cached search ran sessions")

    monkeypatch.setattr(tuning, "run_episodes", no_runs)
    assert tune_diverse(small_world, small_cfg, 1.0, TINY_DIVERSE, episodes=24, seed=1, batch=8,
                        cache_dir=tmp_path) == first
    monkeypatch.undo()
    files[0].write_text("{not json", encoding="utf-8")  # a corrupt entry is searched again and rewritten
    assert tune_diverse(small_world, small_cfg, 1.0, TINY_DIVERSE, episodes=24, seed=1, batch=24,
                        cache_dir=tmp_path) == first
    assert ParamSearch.from_dict(json.loads(files[0].read_text(encoding="utf-8"))) == first
    other = tune_diverse(small_world, small_cfg, 1.0, TINY_DIVERSE, episodes=24, seed=2, batch=24, cache_dir=tmp_path)
    assert other.seed == 2 and len(list(tmp_path.glob("diverse-*.json"))) == 2
    # the session intent changes the sessions a search plays: it is part of the key when set
    intent = dataclasses.replace(small_cfg, user_model=dataclasses.replace(small_cfg.user_model, session_intent=1.5))
    tune_diverse(small_world, intent, 1.0, TINY_DIVERSE, episodes=24, seed=2, batch=24, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("diverse-*.json"))) == 3


def test_the_alpha_curve_is_cached_by_world_and_settings(small_world: World, small_cfg: EnvConfig, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import agents.tuning as tuning

    first = tune_alpha(small_world, small_cfg, (0.0, 0.5, 1.0), episodes=24, seed=1, batch=24, cache_dir=tmp_path)
    assert first == tune_alpha(small_world, small_cfg, (0.0, 0.5, 1.0), episodes=24, seed=1, batch=24)
    files = list(tmp_path.glob("alpha-*.json"))
    assert len(files) == 1

    def no_runs(*args: object, **kwargs: object) -> None:
        raise AssertionError("a cached curve ran sessions")

    monkeypatch.setattr(tuning, "run_episodes", no_runs)
    assert tune_alpha(small_world, small_cfg, (0.0, 0.5, 1.0), episodes=24, seed=1, batch=8,
                      cache_dir=tmp_path) == first
    monkeypatch.undo()
    data = json.loads(files[0].read_text(encoding="utf-8"))
    files[0].write_text(json.dumps({**data, "mean_return": data["mean_return"][:2]}), encoding="utf-8")
    assert tune_alpha(small_world, small_cfg, (0.0, 0.5, 1.0), episodes=24, seed=1, batch=24,
                      cache_dir=tmp_path) == first  # a damaged entry is run again and rewritten
    assert AlphaCurve.from_dict(json.loads(files[0].read_text(encoding="utf-8"))) == first
    for changed in ({"seed": 2}, {"episodes": 16}):
        kwargs = {"episodes": 24, "seed": 1, **changed}
        assert tune_alpha(small_world, small_cfg, (0.0, 0.5, 1.0), batch=24, cache_dir=tmp_path, **kwargs) != first
    assert len(list(tmp_path.glob("alpha-*.json"))) == 3


def test_the_non_myopic_oracle_reads_the_core_without_changing_it(small_world: World, small_cfg: EnvConfig) -> None:
    core = BatchedCore(small_world, small_cfg, 24, population="heldout")
    core.reset_rows(np.arange(24), np.arange(24, dtype=np.uint64) + np.uint64(5))
    for _ in range(2):  # some fatigue, exposure and impressions to read
        core.observe()
        core.step(np.tile(np.arange(small_cfg.slate_size), (24, 1)))
    obs = {key: v.copy() for key, v in core.observe().items()}
    before = {name: getattr(core, name).copy() for name in SessionState._fields}
    search = tune_oracle_diverse(small_world, small_cfg, TINY_ORACLE, episodes=24, seed=3, batch=24)
    ranker = TunedOracleDiverseRanker(small_cfg.slate_size, core, search)
    assert ranker.reads_hidden_state and ranker.name == "tuned-oracle-diverse"
    slate = ranker.act(obs)
    for name in SessionState._fields:
        assert np.array_equal(getattr(core, name), before[name]), name
    # the rule: z(true utility) − λ_c·exposure, greedy under the cap
    cap = int(search.best["cap"])
    cats = small_world.catalog.category[obs["candidates"]]
    for row in range(24):
        assert np.bincount(cats[row, slate[row]]).max() <= cap
    uncapped = oracle_diverse_ranker(small_cfg.slate_size, core, {"cap": small_cfg.slate_size,
                                                                  "exposure_weight": 0.0})
    assert np.array_equal(uncapped.act(obs), make_ranker("oracle", RankerContext(small_world, small_cfg,
                                                                                  core=core)).act(obs))
    assert search.start == {"cap": small_cfg.slate_size, "exposure_weight": 0.0}  # starts at the myopic oracle
    assert search.best_mean >= search.start_mean
    stale = {**obs, "candidates": obs["candidates"][:, ::-1].copy()}
    with pytest.raises(ValueError, match="current request"):
        OracleDiverseRanker(small_cfg.slate_size, core).act(stale)


def test_make_ranker_shares_the_tuning_between_tuned_references(ctx: RankerContext) -> None:
    tuned = make_ranker("tuned-diverse", ctx)
    assert isinstance(tuned, TunedDiverseRanker) and tuned.search is ctx.diverse_search()
    assert ctx.diverse_search().start["alpha"] == ctx.alpha_curve().best_alpha
    assert make_ranker("tuned-alpha", ctx).curve is ctx.alpha_curve()  # type: ignore[attr-defined]
    oracle = make_ranker("tuned-oracle-diverse", ctx)
    assert isinstance(oracle, TunedOracleDiverseRanker) and oracle.core is ctx.core


# ---- value of adaptation (bench/headroom.py) ------------------------------------------------------------------


def test_rho_groups_and_grouped_returns() -> None:
    assert rho_groups(np.array([0.0, 0.2, 1 / 3, 0.5, 0.9, 1.0])).tolist() == [0, 0, 1, 1, 2, 2]
    assert rho_groups(np.array([0.1, 0.7]), (0.5,)).tolist() == [0, 1]
    for bad in ((0.6, 0.4), (0.0,), (1.0,)):
        with pytest.raises(ValueError, match="edges"):
            rho_groups(np.array([0.5]), bad)
    returns = {"a": np.array([1.0, 5.0, 0.0, 2.0]), "b": np.array([2.0, 1.0, 3.0, 1.0])}
    groups = np.array([0, 1, 0, 1])
    assert best_per_group(returns, groups, 3, "a", min_count=1) == ["b", "a", "a"]  # group 2 is empty: fallback
    assert grouped_returns(lambda key: returns[key], groups, ["b", "a"]).tolist() == [2.0, 5.0, 3.0, 2.0]


def test_per_group_choices_are_the_argmax_within_each_group(small_world: World, small_cfg: EnvConfig,
                                                            tmp_path: Path) -> None:
    episodes, seed, edges = 80, 4, (0.5,)
    core = BatchedCore(small_world, small_cfg, 40, population="train")
    plan = episode_plan(episodes, [seed], small_world.populations["train"].size)
    groups = rho_groups(small_world.populations["train"].rho[plan.users], edges)
    assert min((groups == 0).sum(), (groups == 1).sum()) >= 20
    alphas = (0.0, 0.5, 1.0)
    out = alpha_by_group(small_world, small_cfg, alphas, edges, episodes, seed, batch=40, min_count=20)
    rets = {a: run_episodes(core, BlendRanker(small_cfg.slate_size, a), plan).ret for a in alphas}
    assert out["single"] == max(alphas, key=lambda a: rets[a].mean())
    assert out["counts"] == [int((groups == g).sum()) for g in range(2)]
    for g, chosen in enumerate(out["per_group"]):
        sel = groups == g
        assert rets[chosen][sel].mean() == max(r[sel].mean() for r in rets.values())
    # the diversity version, on a grid small enough to be searched exhaustively in each group
    start = {"alpha": 1.0, "cap": 2, "exposure_weight": 3.0, "seen_weight": 0.5}
    div = diverse_by_group(small_world, small_cfg, start, TINY_DIVERSE, edges, episodes, seed, batch=40, min_count=20)
    grid = [dict(zip(TINY_DIVERSE, v, strict=True)) for v in itertools.product(*TINY_DIVERSE.values())]
    point_rets = [run_episodes(core, diverse_ranker(small_cfg.slate_size, small_world.catalog.category, p),
                               plan).ret for p in grid]
    # each group's choice: the start or one of the group's best points on the tuning sessions, whichever returns
    # most on that group's validation sessions (tuned-diverse's own protocol, per group)
    valid_plan = episode_plan(VALIDATION_FACTOR * episodes, [seed + VALIDATION_SEED_OFFSET],
                              small_world.populations["train"].size)
    valid_groups = rho_groups(small_world.populations["train"].rho[valid_plan.users], edges)
    for g, chosen in enumerate(div["per_group"]):
        sel, valid_sel = groups == g, valid_groups == g
        candidates, means = div["validation_points"][g], div["validation_means"][g]
        assert candidates[0] == start and 2 <= len(candidates) <= VALIDATE_TOP + 1
        top = grid[int(np.argmax([r[sel].mean() for r in point_rets]))]  # the group's best on the tuning sessions
        assert top == start or top in candidates
        direct = [run_episodes(core, diverse_ranker(small_cfg.slate_size, small_world.catalog.category, p),
                               valid_plan).ret[valid_sel].mean() for p in candidates]
        assert means == pytest.approx(direct)
        assert chosen == candidates[int(np.argmax(direct))]
    # with the tuning cache: searched once, then read back as it was
    first = diverse_by_group(small_world, small_cfg, start, TINY_DIVERSE, edges, episodes, seed, batch=40,
                             min_count=20, cache_dir=tmp_path)
    (path,) = tmp_path.glob("diverse-by-group-*.json")
    stamp = path.stat().st_mtime_ns
    again = diverse_by_group(small_world, small_cfg, start, TINY_DIVERSE, edges, episodes, seed, batch=40,
                             min_count=20, cache_dir=tmp_path)
    assert first == div and again == div and path.stat().st_mtime_ns == stamp
    diverse_by_group(small_world, small_cfg, start, TINY_DIVERSE, edges, episodes, seed + 1, batch=40, min_count=20,
                     cache_dir=tmp_path)
    assert len(list(tmp_path.glob("diverse-by-group-*.json"))) == 2  # another seed, another entry


# ---- the adapt preset ------------------------------------------------------------------------------------------


def test_the_adapt_preset_has_two_populated_rho_modes() -> None:
    cfg = preset_config("adapt")
    assert cfg.preset == "adapt"
    rho = sample_traits(cfg.user_model, 4000, cfg.catalog.cf_dim, seed=1)["rho"]
    low, high, middle = (rho < 0.2).mean(), (rho > 0.8).mean(), ((rho > 0.35) & (rho < 0.65)).mean()
    assert low > 0.35 and high > 0.35 and middle < 0.05  # bimodal, both modes common, a gap between them
    # a shrunken copy builds and keeps the modes in both populations
    small = preset_config("adapt", {"n_candidates": 20, "slate_size": 5, "catalog": {"n_items": 400},
                                    "candidates": {"pool_size": 60}, "logging": {"organic_per_user": 20},
                                    "user_model": {"n_train": 200, "n_heldout": 100}})
    world = build_world(small, HashingEncoder(dim=32), progress=False)
    for pop in world.populations.values():
        assert (pop.rho < 0.2).mean() > 0.3 and (pop.rho > 0.8).mean() > 0.3


def test_the_stable_import_path_re_exports_the_new_homes() -> None:
    """agents.baselines stays the import path of every name it held before the split (agents/training.py uses it)."""
    import agents.baselines as baselines
    import agents.fitting
    import agents.rankers
    import agents.registry
    import agents.tuning

    homes = (agents.fitting, agents.rankers, agents.registry, agents.tuning)
    for name in baselines.__all__:
        assert any(getattr(m, name, None) is getattr(baselines, name) for m in homes) or name.startswith("_"), name
    assert baselines._examined is agents.fitting.examined_slots and baselines._TUNE_SEED == agents.tuning.TUNE_SEED


def test_reference_check_refuses_bad_arguments_by_name(capsys: pytest.CaptureFixture[str]) -> None:
    """``bench.reference_check``: a run among the references, an unknown spec, a missing run directory or too few
    sessions are refused, naming what is wrong, before any world is loaded."""
    from bench.reference_check import main

    for argv, why in ((["--rankers", "run:x"], "pass runs with --runs"), (["--rankers", "nope"], "valid choices"),
                      (["--runs", "no/such/run"], "no/such/run"), (["--episodes", "1"], "--episodes"),
                      (["--alpha-grid", "0.5,x"], "--alpha-grid"), (["--alpha-grid", "0.5,1.5"], "--alpha-grid")):
        with pytest.raises(SystemExit):
            main(argv)
        assert why in capsys.readouterr().err


def _tiny_tuning(run_dir: Path, tmp_path: Path) -> str:
    """The run's config with the tiny runs' tuning budget (``eval.tune_episodes``): the checks below read what the
    references are searched on and played against, not how well; 1,000 sessions per point made them 38 s."""
    import yaml

    cfg = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    cfg["eval"]["tune_episodes"] = TINY_TUNE_EPISODES
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return str(path)


def test_reference_check_plays_each_reference_searched_on_another_alpha_axis(run_dir: Path, tmp_path: Path) -> None:
    """``--alpha-grid``: each reference is played as is and searched with that α axis, which its pick comes from,
    paired with the plain one on the same sessions; a run is paired with all of them."""
    from bench.reference_check import main

    got = main(["--config", _tiny_tuning(run_dir, tmp_path), "--rankers", "tuned-diverse", "--alpha-grid",
                "0.35,0.65", "--episodes", "10", "--batch", "5", "--runs", str(run_dir)])
    fine = "tuned-diverse [α grid]"
    assert got["alpha_grid"] == [0.35, 0.65] and set(got["rankers"]) == {"tuned-diverse", fine}
    ref = got["references"][fine]
    assert ref["against"] == "tuned-diverse"
    assert ref["diff"] == pytest.approx(got["rankers"][fine] - got["rankers"]["tuned-diverse"], abs=1e-9)
    assert set(got["runs"][str(run_dir)]) == {"return", "vs tuned-diverse", f"vs {fine}"}
    axis = got["picks"][fine]["alpha_axis"]  # the given values: tuned-alpha, the search's start, is on them too
    assert axis == [0.35, 0.65] and got["picks"][fine]["best"]["alpha"] in axis
    assert set(ALPHA_GRID) <= set(got["picks"]["tuned-diverse"]["alpha_axis"])


def test_reference_check_on_other_sessions_writes_summaries_that_pool(run_dir: Path, tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """``--eval-seed`` plays other sessions with the same references; ``--json`` writes the summary; ``--pool`` gives
    each run comparison's mean over the summaries with a t-interval across them, and refuses a file that is not one."""
    from bench.reference_check import main

    argv = ["--config", _tiny_tuning(run_dir, tmp_path), "--rankers", "tuned-alpha", "--episodes", "12", "--batch", "6",
            "--runs", str(run_dir)]
    same = main(argv)
    paths = [tmp_path / "a.json", tmp_path / "b.json"]
    other = [main([*argv, "--eval-seed", str(e), "--json", str(p)]) for e, p in zip((101, 202), paths, strict=True)]
    assert same["eval_seed"] == 0 and [o["eval_seed"] for o in other] == [101, 202]
    rets = [o["rankers"]["tuned-alpha"] for o in (same, *other)]
    assert len(set(rets)) == 3  # other sessions, other returns
    assert json.loads(paths[0].read_text()) == other[0]
    diffs = [o["runs"][str(run_dir)]["vs tuned-alpha"]["diff"] for o in other]
    pooled = main(["--pool", *map(str, paths)])[f"{run_dir} vs tuned-alpha"]
    assert pooled["n"] == 2 and pooled["per_run"] == pytest.approx(diffs)
    assert pooled["mean"] == pytest.approx(np.mean(diffs)) and pooled["ci95"][0] <= pooled["mean"] <= pooled["ci95"][1]
    assert pooled["above_zero"] == sum(d > 0 for d in diffs)
    for seed, (dp, dq) in enumerate(((0.1, -1.0), (0.3, -3.0))):  # two protocols' runs, played in the same checks
        runs = {f"x/p-s{seed}": {"return": 1.0, "vs r": {"diff": dp}}, f"x/q-s{seed}": {"vs r": {"diff": dq}}}
        (tmp_path / f"s{seed}.json").write_text(json.dumps({"runs": runs}))
    two = main(["--pool", str(tmp_path / "s0.json"), str(tmp_path / "s1.json")])
    assert set(two) == {"x/p vs r", "x/q vs r"} and two["x/p vs r"]["mean"] == pytest.approx(0.2)
    assert two["x/q vs r"]["per_run"] == [-1.0, -3.0] and two["x/q vs r"]["above_zero"] == 0
    (tmp_path / "bad.json").write_text("{}")
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["--pool", str(paths[0]), str(tmp_path / "bad.json")])
    assert "bad.json" in capsys.readouterr().err
