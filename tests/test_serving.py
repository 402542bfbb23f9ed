"""Serving runtime and HTTP service: feature parity with the simulator, user state, fallback, stores, HTTP errors.

Redis tests start a real ``redis-server`` on a free loopback port (``apt-get install -y redis-server``); without
one they are skipped, saying why, except in CI (``CI=true``), where that fails the run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import SAFETY_S, FakeClock, free_port, ids_of, make_run_dir, redis_server_or_skip

from agents.serving import (
    CorruptStateError,
    Event,
    InvalidRequestError,
    ItemTable,
    MemoryStore,
    ModelTimeoutError,
    OnnxModel,
    Recommendation,
    RedisStore,
    ServingRuntime,
    StoreConflictError,
    ThreadedModel,
    UnknownItemsError,
    UserState,
    decode_state,
    encode_state,
    load_manifest,
)
from envs.features import A_LAST_RANK, context_bounds
from envs.spaces import CONTEXT_NAMES, F_CF, F_LLM, FEATURE_NAMES
from envs.world import World

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _torch_threads_restored() -> Iterator[None]:
    """TorchScript models set torch's thread count, which is process-global: put it back after each test."""
    import torch as th

    before = th.get_num_threads()
    yield
    th.set_num_threads(before)


# ---- feature parity with the simulator --------------------------------------------------------------------------


#: Response models that force an event path whatever the policy ranks (the policy is trained on the test's CPU,
#: so its slates, and how often users click or buy, differ between machines): with the outside option at -50
#: every request gets a click and every click a purchase; at +50 no request gets a click.
FORCED = {"click_purchase": {"no_click_utility": -50.0, "purchase_bias": 50.0}, "skip": {"no_click_utility": 50.0}}


def _replay(runtime: ServingRuntime, world: World, scenario: str, n_sessions: int, split_dwell: bool = False,
            policy: Any = None, session_sim: bool = False) -> dict:
    """Replay env sessions through the runtime: the runtime ranks, the env's user responds, the runtime observes
    the same click / dwell / purchase; at every request the runtime's observation of the env's candidates is
    compared with the env's (every feature column, the context, the user vector).

    With ``split_dwell`` every other click is sent without its dwell, which follows as a ``dwell`` event (a dwell
    reported later). With ``policy`` (the run's SlatePolicy) every served slate is also checked to be the policy's
    mode on the runtime's observation (repulsion and category cap included). With ``session_sim`` the env has
    ``env.obs_session_sim`` and the runtime's ``session_sim`` is compared too (``worst_session_sim``). Returns the
    counts of steps and events and the largest differences per column.
    """
    from envs.presets import preset_config
    from envs.rec_env import RecEnv

    cfg = preset_config("small")
    for key, value in FORCED.get(scenario, {}).items():
        setattr(cfg.user_model, key, value)
    cfg.obs_session_sim = session_sim
    env = RecEnv(config=cfg, world=world)
    pop = world.populations["train"]
    out = {"steps": 0, "clicks": 0, "purchases": 0, "dwell_events": 0, "max_dwell_ema": 0.0,
           "worst_f": np.zeros(len(FEATURE_NAMES)), "worst_c": np.zeros(len(CONTEXT_NAMES)), "worst_session_sim": 0.0,
           "session_sim_nonzero": 0}
    for ep in range(n_sessions):
        u = (3 * ep + 1) % pop.init_state.shape[0]
        obs, _ = env.reset(seed=100 + ep, options={"user": u})
        uid = f"sim-{scenario}-{ep}"
        runtime.set_user(uid, pooled_state=pop.init_state[u], cf_factor=pop.cf_user[u])
        done = False
        while not done:
            cids = ids_of(world, obs["candidates"])
            mine = runtime.observation(uid, cids)
            out["worst_f"] = np.maximum(out["worst_f"], np.abs(mine["features"] - obs["features"]).max(axis=0))
            out["worst_c"] = np.maximum(out["worst_c"], np.abs(mine["context"] - obs["context"]))
            out["max_dwell_ema"] = max(out["max_dwell_ema"], float(obs["context"][CONTEXT_NAMES.index("dwell_ema")]))
            np.testing.assert_allclose(mine["user"], obs["user"], atol=1e-5)
            if session_sim:
                diff = float(np.abs(mine["session_sim"] - obs["session_sim"]).max())
                out["worst_session_sim"] = max(out["worst_session_sim"], diff)
                out["session_sim_nonzero"] += int(np.abs(obs["session_sim"]).max() > 0)
            rec = runtime.recommend(uid, cids)
            assert rec.source == "model", rec.fallback_reason
            pos = np.array([cids.index(i) for i in rec.items])
            if policy is not None:
                batch = {key: np.asarray(v)[None] for key, v in mine.items()}
                mode = policy.get_distribution(batch).mode().cpu().numpy()[0]
                np.testing.assert_array_equal(pos, mode)
                out["mode_checked"] = out.get("mode_checked", 0) + 1
            obs, _, term, trunc, info = env.step(pos)
            done = term or trunc
            out["steps"] += 1
            if info["click"]:
                out["clicks"] += 1
                item = rec.items[info["click_rank"]]
                later = split_dwell and out["clicks"] % 2 == 0
                dwell = float(info["dwell"])
                events = [Event("click", item, dwell_s=0.0 if later else dwell, request_id=rec.request_id)]
                if info["purchase"]:
                    out["purchases"] += 1
                    events.append(Event("purchase", item, request_id=rec.request_id))
                if later:
                    out["dwell_events"] += 1
                    events.append(Event("dwell", item, dwell_s=dwell))
                assert runtime.observe(uid, events) == len(events)  # every event is for an item shown
    return out


def _parity_failures(out: dict) -> tuple[dict, dict]:
    bad_f = {n: float(v) for n, v in zip(FEATURE_NAMES, out["worst_f"], strict=True) if v > 1e-5}
    bad_c = {n: float(v) for n, v in zip(CONTEXT_NAMES, out["worst_c"], strict=True) if v > 1e-5}
    return bad_f, bad_c


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_runtime_features_equal_simulator_observations(fmt: str, onnx_export: Path, ts_export: Path,
                                                       run_dir: Path, small_world: World) -> None:
    """Sessions of the small preset's users replayed through the runtime: at every request the runtime's
    observation equals the env's (whatever mix of clicks, purchases and skips the trained policy meets), and its
    slate is the trained policy's mode (the greedy walk with the repulsion and the category cap)."""
    from agents.ppo_ranker import load_policy

    art = onnx_export if fmt == "onnx" else ts_export
    runtime = ServingRuntime.load(art, clock=FakeClock(), time_budget_ms=60_000)  # no timeouts on a busy test machine
    assert runtime.category_cap == 2
    out = _replay(runtime, small_world, "default", n_sessions=12, policy=load_policy(run_dir, "cpu"))
    assert out["steps"] >= 12 and out["mode_checked"] == out["steps"]
    assert _parity_failures(out) == ({}, {})


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_click_purchase_and_later_dwell_events_move_the_state_as_the_simulator(
        fmt: str, onnx_export: Path, ts_export: Path, small_world: World) -> None:
    """Users who click and buy at every request, half of the dwell times reported later as ``dwell`` events:
    after each click, purchase and dwell the runtime's context row (and every feature) is the simulator core's
    after the same event."""
    art = onnx_export if fmt == "onnx" else ts_export
    runtime = ServingRuntime.load(art, clock=FakeClock(), time_budget_ms=60_000)
    out = _replay(runtime, small_world, "click_purchase", n_sessions=3, split_dwell=True)
    assert out["clicks"] == out["purchases"] == out["steps"] >= 3  # forced by the response model
    assert out["dwell_events"] >= 1 and out["max_dwell_ema"] > 0
    assert _parity_failures(out) == ({}, {})


def test_sessions_without_clicks_replay_like_the_simulator(onnx_export: Path, small_world: World) -> None:
    """Users who never click (skip streaks, budget run out): the runtime's observations equal the env's."""
    runtime = ServingRuntime.load(onnx_export, clock=FakeClock(), time_budget_ms=60_000)
    out = _replay(runtime, small_world, "skip", n_sessions=4)
    assert out["clicks"] == 0 and out["steps"] >= 4
    assert _parity_failures(out) == ({}, {})


def test_a_policy_reading_session_sim_is_served_like_the_simulator(tmp_path: Path, small_world: World) -> None:
    """``env.obs_session_sim``: the export takes ``session_sim`` as a graph input (parity checked on it), and the
    runtime keeps each session's click sum, so at every request its ``session_sim`` equals the env's (users who
    click at every request, and the trained policy's own sessions) and its slate is the policy's mode on that
    observation; a new session starts from zero."""
    from agents.export import export_run
    from agents.ppo_ranker import load_policy
    from bench.feedback_probe import BEHAVIOURS, ProbeSettings, run_probe

    run = make_run_dir(tmp_path, small_world, steps=64, session_sim=True)
    art = export_run(run, "onnx", out=tmp_path / "export", world=small_world, parity_envs=8, parity_steps=4)
    m = load_manifest(art)
    assert m["inputs"][-1] == "session_sim"
    assert m["parity"]["slates_equal_up_to_ties"] == m["parity"]["observations"] == 32
    runtime = ServingRuntime.load(art, clock=FakeClock(), time_budget_ms=60_000)
    policy = load_policy(run, "cpu")
    clicked = _replay(runtime, small_world, "click_purchase", n_sessions=3, policy=policy, session_sim=True)
    assert clicked["clicks"] == clicked["steps"] >= 3  # forced: every request after a session's first has a click
    assert clicked["session_sim_nonzero"] == clicked["steps"] - 3
    played = _replay(runtime, small_world, "default", n_sessions=6, policy=policy, session_sim=True)
    for out in (clicked, played):
        assert out["mode_checked"] == out["steps"]
        assert out["worst_session_sim"] <= 1e-5 and _parity_failures(out) == ({}, {})
    uid, cids = "sim-click_purchase-2", ids_of(small_world, range(12))
    assert np.abs(runtime.observation(uid, cids)["session_sim"]).max() > 0
    runtime.end_session(uid)
    assert not runtime.observation(uid, cids)["session_sim"].any()
    # the feedback probe plays exports through this runtime, so it now runs on such a run too
    probe = run_probe(run, ProbeSettings(sessions=3, requests=5, seed=1, n_boot=50), export_dir=art,
                      world=small_world)
    assert len(probe["rows"]) == 5 * len(BEHAVIOURS) and all(0.0 < r["alpha"] < 1.0 for r in probe["rows"])


def test_simulator_context_stays_within_the_serving_bounds(small_world: World) -> None:
    """:func:`context_bounds` holds for the simulator's own observations (random slates, every response model)."""
    from envs.presets import preset_config
    from envs.vector_env import RecVectorEnv

    for scenario in ("default", *FORCED):
        cfg = preset_config("small")
        for key, value in FORCED.get(scenario, {}).items():
            setattr(cfg.user_model, key, value)
        env = RecVectorEnv(32, config=cfg, world=small_world)
        lo, hi = context_bounds(cfg.max_steps, small_world.n_items, cfg.user_model.dwell_cap)
        obs, _ = env.reset(seed=5)
        rng = np.random.default_rng(0)
        for _ in range(2 * cfg.max_steps):
            ctx = obs["context"].astype(np.float64)
            assert np.all(ctx >= lo) and np.all(ctx <= hi), (scenario, ctx.min(axis=0), ctx.max(axis=0))
            slate = np.argsort(rng.random((32, cfg.n_candidates)), axis=1)[:, :cfg.slate_size]
            obs, *_ = env.step(slate)


def test_new_user_and_history_import(onnx_export: Path, small_world: World) -> None:
    from envs.users import pool_history

    runtime = ServingRuntime.load(onnx_export)
    cids = ids_of(small_world, range(20))
    o = runtime.observation("nobody", cids)
    assert not o["user"].any() and not o["features"][:, [F_LLM, F_CF, 4, 5, 6]].any()
    expected_ctx = np.zeros(len(CONTEXT_NAMES), np.float32)
    expected_ctx[CONTEXT_NAMES.index("last_click_rank")] = 1.0
    np.testing.assert_array_equal(o["context"], expected_ctx)
    np.testing.assert_array_equal(o["features"][:, 2:4], small_world.item_features[:20])

    hist = [5, 17, 230, 17, 99]
    runtime.set_user("u", history=ids_of(small_world, hist))
    st = runtime.user_state("u")
    assert st is not None
    np.testing.assert_allclose(st.state, pool_history(np.array([hist]), small_world.item_emb, 0.85)[0], atol=1e-6)
    assert st.cf_factor.any() and not st.cf_pinned
    with pytest.raises(UnknownItemsError, match="nope"):
        runtime.set_user("u", history=["nope"])
    with pytest.raises(ValueError, match="pooled_state must have shape"):
        runtime.set_user("u", pooled_state=np.zeros(3))


def test_cf_fold_in_matches_implicit_least_squares(onnx_export: Path, small_world: World) -> None:
    """The incremental fold-in equals implicit's user solve on the same confidences (c = cf_alpha·Σw)."""
    import scipy.sparse as sp
    from implicit.cpu.als import user_factor

    runtime = ServingRuntime.load(onnx_export)
    m = load_manifest(onnx_export)
    items, lam, alpha = [3, 50, 3, 120], m["cf"]["regularization"], m["cf"]["alpha"]
    runtime.recommend("cf", ids_of(small_world, [3, 50, 120]), k=3)  # feedback counts for items shown
    runtime.observe("cf", [Event("click", i) for i in ids_of(small_world, items)] + [Event("purchase", "item-00120")])
    st = runtime.user_state("cf")
    assert st is not None
    weights = {3: 2.0, 50: 1.0, 120: 2.0}
    row = sp.csr_matrix((alpha * np.array(list(weights.values())), ([0, 0, 0], list(weights))),
                        shape=(1, small_world.n_items))
    y = small_world.item_factors.astype(np.float64)
    expected = user_factor(y, y.T @ y, row, 0, lam, y.shape[1])
    np.testing.assert_allclose(st.cf_factor, expected, rtol=1e-4, atol=1e-5)
    # the served cf_score is that factor's score standardised over the whole catalog
    scores = y @ expected
    z = (scores - scores.mean()) / scores.std()
    o = runtime.observation("cf", ids_of(small_world, range(40)))
    np.testing.assert_allclose(o["features"][:, F_CF], z[:40], atol=1e-4)


def test_fast_greedy_slate_equals_the_sequential_walk() -> None:
    """The serving path's O(N log N) slate equals the literal greedy walk of PlackettLuceDistribution.mode."""
    import torch as th

    from agents.distributions import PlackettLuceDistribution
    from agents.slate_mode import greedy_slate, greedy_slates

    rng = np.random.default_rng(0)
    for trial in range(200):
        n, k = int(rng.integers(5, 60)), int(rng.integers(1, 5))
        k = min(k, n)
        logits = rng.normal(size=(1, n)).astype(np.float32)
        groups = rng.integers(0, int(rng.integers(1, 6)), (1, n))
        beta = np.array([rng.choice([0.0, 0.05, 0.5, 3.0])], np.float32)
        walk = greedy_slates(logits, k, groups, beta)
        np.testing.assert_array_equal(greedy_slate(logits[0], k, groups[0], float(beta[0])), walk[0], str(trial))
        dist = PlackettLuceDistribution(n, k).proba_distribution(th.from_numpy(logits), None,
                                                                 th.from_numpy(groups), th.from_numpy(beta))
        np.testing.assert_array_equal(dist.mode().numpy(), walk, str(trial))


# ---- sessions, record, state serialisation --------------------------------------------------------------------


def test_session_timeout_preview_and_end_session(onnx_export: Path, small_world: World) -> None:
    clock = FakeClock()
    runtime = ServingRuntime.load(onnx_export, session_timeout_s=60, clock=clock)
    cids = ids_of(small_world, range(30))
    rec = runtime.recommend("s", cids, k=4)
    runtime.observe("s", [{"type": "click", "item_id": rec.items[1], "dwell_s": 30.0}])
    before = runtime.user_state("s")
    assert before is not None and before.t == 1 and before.ctx[A_LAST_RANK] == 0.25

    preview = runtime.recommend("s", cids, k=4, record=False)
    after = runtime.user_state("s")
    assert after is not None and encode_state(after) == encode_state(before)  # a preview changes nothing
    assert preview.request_id == 1

    clock.t += 61  # idle: the next request starts a new session; the pooled state and CF factor stay
    o = runtime.observation("s", cids)
    assert o["context"][0] == 0.0 and not o["features"][:, 4:].any()
    np.testing.assert_allclose(np.linalg.norm(o["user"]), 1.0, rtol=1e-5)
    runtime.recommend("s", cids, k=4)
    st = runtime.user_state("s")
    assert st is not None and st.t == 1 and st.sessions == 2 and st.n_requests == 2
    runtime.end_session("s")
    st = runtime.user_state("s")
    assert st is not None and st.t == 0 and st.sessions == 3 and st.state.any()
    # a session lasts at most max_steps requests (the training horizon), then the next one starts
    for _ in range(runtime.const.max_steps):
        runtime.recommend("s", cids, k=4)
    st = runtime.user_state("s")
    assert st is not None and st.t == runtime.const.max_steps == 30 and st.sessions == 3
    runtime.recommend("s", cids, k=4)
    st = runtime.user_state("s")
    assert st is not None and st.t == 1 and st.sessions == 4 and len(st.seen_items) == 4


def test_state_serialisation_round_trip() -> None:
    st = UserState.new(dim=8, cf_dim=3, n_categories=4)
    st.state[:] = np.arange(8)
    st.seen_items = np.array([2, 9], np.int32)
    st.seen_counts = np.array([1.0, 3.0], np.float32)
    st.cf_a[0, 1] = 0.5
    st.t, st.n_events, st.last_active = 4, 11, 123.5
    st.sess_sum[:] = np.linspace(-1.0, 1.0, 8)
    blob = encode_state(st)
    back = decode_state(blob)
    assert encode_state(back) == blob and len(blob) < 1000
    np.testing.assert_array_equal(back.seen_counts, st.seen_counts)
    np.testing.assert_array_equal(back.sess_sum, st.sess_sum)
    back.state[0] = 42.0  # decoded arrays are writable copies
    with pytest.raises(ValueError, match="not a recfeed user state"):
        decode_state(b"pickle?")
    with pytest.raises(ValueError, match="truncated"):
        decode_state(blob[:-4])


def test_request_validation_in_process(onnx_export: Path, small_world: World) -> None:
    runtime = ServingRuntime.load(onnx_export, max_candidates=50)
    cids = ids_of(small_world, range(20))
    with pytest.raises(UnknownItemsError) as exc:
        runtime.recommend("v", [*cids, "ghost-1", "ghost-2", "ghost-1"])
    assert exc.value.unknown == ["ghost-1", "ghost-2"]
    for bad, match in [([], "empty"), (ids_of(small_world, range(51)), "over the limit of 50"),
                       ([cids[0], cids[0]], "repeats")]:
        with pytest.raises(InvalidRequestError, match=match):
            runtime.recommend("v", bad)
    with pytest.raises(InvalidRequestError, match="k must be"):
        runtime.recommend("v", cids, k=21)
    with pytest.raises(InvalidRequestError, match="event type"):
        runtime.observe("v", [{"type": "like", "item_id": cids[0]}])
    with pytest.raises(UnknownItemsError):
        runtime.observe("v", [Event("click", cids[0]), Event("click", "ghost")])
    assert runtime.user_state("v") is None  # nothing was applied


@pytest.mark.parametrize(("kwargs", "match"), [({"time_budget_ms": 0}, "time_budget_ms"),
                                               ({"time_budget_ms": float("nan")}, "time_budget_ms"),
                                               ({"session_timeout_s": -1.0}, "session_timeout_s"),
                                               ({"max_candidates": 0}, "max_candidates"), ({"max_k": 0}, "max_k"),
                                               ({"max_candidates": 2.5}, "max_candidates")])
def test_runtime_and_app_refuse_bad_limits(kwargs: dict, match: str, onnx_export: Path) -> None:
    from agents.serving.app import create_app

    good = ServingRuntime.load(onnx_export)
    with pytest.raises(ValueError, match=match):
        ServingRuntime(good.manifest, good.items, None, MemoryStore(), **kwargs)
    with pytest.raises(ValueError, match="max_body_bytes"):
        create_app(good, max_body_bytes=0)


def test_feedback_for_items_not_shown_this_session_is_ignored_and_counted(onnx_export: Path,
                                                                          small_world: World) -> None:
    runtime = ServingRuntime.load(onnx_export)
    cids = ids_of(small_world, range(20))
    assert runtime.observe("n", [Event("click", cids[0]), Event("purchase", cids[0])]) == 0  # nothing shown yet
    st = runtime.user_state("n")
    assert st is not None and st.n_events == 0 and not st.state.any() and not st.cf_b.any()
    rec = runtime.recommend("n", cids, k=5)
    unseen = next(c for c in cids if c not in rec.items)
    applied = runtime.observe("n", [Event("click", rec.items[1], request_id=rec.request_id),
                                   Event("purchase", unseen), Event("dwell", unseen, dwell_s=30.0)])
    assert applied == 1
    st = runtime.user_state("n")
    assert st is not None and st.n_events == 1 and st.ctx[A_LAST_RANK] == 0.2
    o = runtime.observation("n", cids)
    ctx = dict(zip(CONTEXT_NAMES, o["context"].tolist(), strict=True))
    assert ctx["purchase_rate"] == 0.0 and ctx["dwell_ema"] == 0.0
    m = runtime.metrics
    assert m.ignored.labels("not_shown")._value.get() == 4
    assert m.events.labels("click")._value.get() == 1 and m.events.labels("purchase")._value.get() == 0
    runtime.end_session("n")  # a new session has shown nothing yet
    assert runtime.observe("n", [Event("click", rec.items[0])]) == 0


def test_feedback_cannot_push_the_context_outside_the_simulators_range(onnx_export: Path,
                                                                       small_world: World) -> None:
    """1,000 purchases and 1,000 dwell events of a day on one shown item: the dwell is applied as the simulator's
    cap, every context column stays in the simulator's range, and the out-of-range columns are counted."""
    runtime = ServingRuntime.load(onnx_export)
    cids = ids_of(small_world, range(20))
    rec = runtime.recommend("x", cids, k=5)
    item = rec.items[0]
    events = [Event("click", item, request_id=rec.request_id), *[Event("purchase", item)] * 1000,
              *[Event("dwell", item, dwell_s=86_400.0)] * 1000]
    assert runtime.observe("x", events) == 2001
    assert runtime.metrics.dwell_clipped._value.get() == 1000
    lo, hi = context_bounds(runtime.const.max_steps, runtime.items.n_items, runtime.dwell_cap_s)
    o = runtime.observation("x", cids)
    assert np.all(o["context"] >= lo) and np.all(o["context"] <= hi)
    ctx = dict(zip(CONTEXT_NAMES, o["context"].tolist(), strict=True))
    assert ctx["purchase_rate"] == 1.0 and ctx["dwell_ema"] == pytest.approx(runtime.dwell_cap_s / 60.0)
    assert runtime.dwell_cap_s == load_manifest(onnx_export)["obs"]["dwell_cap_s"] == 900.0  # the run's dwell_cap
    runtime.recommend("x", cids, k=5)
    counted = {n: runtime.metrics.out_of_range.labels(n)._value.get() for n in CONTEXT_NAMES}
    assert counted == {n: float(n in ("purchase_rate", "dwell_ema")) for n in CONTEXT_NAMES}


# ---- fallback ---------------------------------------------------------------------------------------------------


class BrokenModel:
    def __init__(self, mode: str) -> None:
        self.mode = mode

    def run(self, inputs: dict[str, np.ndarray], deadline: float) -> tuple[np.ndarray, float, float]:
        if self.mode == "raise":
            raise RuntimeError("weights corrupted")
        if self.mode == "nan":
            return np.full(inputs["features"].shape[1], np.nan, np.float32), 0.5, 0.1
        raise ModelTimeoutError("late")


@pytest.mark.parametrize(("mode", "reason"), [("raise", "error"), ("nan", "invalid_output"), ("late", "timeout")])
def test_fallback_answers_when_model_is_broken(mode: str, reason: str, onnx_export: Path,
                                               small_world: World) -> None:
    from agents.rankers import BlendRanker

    good = ServingRuntime.load(onnx_export)
    # a budget no loaded CI machine overruns: "late" raises its timeout itself, the others must not meet one
    runtime = ServingRuntime(good.manifest, good.items, BrokenModel(mode), MemoryStore(), time_budget_ms=60_000)
    cids = ids_of(small_world, range(40))
    runtime.set_user("f", history=ids_of(small_world, [1, 2, 3]))
    obs = runtime.observation("f", cids)
    rec = runtime.recommend("f", cids, k=5)
    assert (rec.source, rec.fallback_reason, rec.alpha) == ("fallback", reason, 0.6)
    expected = BlendRanker(5, 0.6).act({k: v[None] for k, v in obs.items()})[0]
    assert rec.items == ids_of(small_world, np.array(obs["candidates"])[expected])
    metrics = runtime.metrics
    assert metrics.fallback.labels(reason)._value.get() == 1
    assert metrics.recommend.labels("fallback")._value.get() == 1




class GatedModel:
    """A model stuck in its call until the test opens the gate (as a model that cannot be cancelled would be)."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.calls = 0
        self.finished = 0

    def run(self, inputs: dict[str, np.ndarray], deadline: float) -> tuple[np.ndarray, float, float]:
        self.calls += 1
        if not self.gate.wait(SAFETY_S):
            raise RuntimeError("the test never opened the gate")
        self.finished += 1
        return np.linspace(1.0, 0.0, inputs["features"].shape[1], dtype=np.float32), 0.5, 0.0


def _in_thread(fn: Callable[[], object]) -> object:
    """``fn()`` on another thread; fails (instead of hanging) if it has not returned within :data:`SAFETY_S`."""
    box: list[object] = []
    t = threading.Thread(target=lambda: box.append(fn()), daemon=True)
    t.start()
    t.join(SAFETY_S)
    assert not t.is_alive() and box, f"no answer within {SAFETY_S} s: the call waited for the stuck model"
    return box[0]


def test_stuck_model_is_not_waited_for(onnx_export: Path, small_world: World) -> None:
    """A model that blocks in its call: the request comes back from the fallback at its deadline while the model's
    call is still blocked; calls queued behind it are dropped, not run late; once the model is free it answers."""
    good = ServingRuntime.load(onnx_export)
    model = GatedModel()
    runtime = ServingRuntime(good.manifest, good.items, model, MemoryStore(), time_budget_ms=50)
    assert isinstance(runtime.model, ThreadedModel)  # a model that cannot enforce its deadline runs on its thread
    cids = ids_of(small_world, range(20))
    rec = _in_thread(lambda: runtime.recommend("stuck", cids, k=3))
    assert isinstance(rec, Recommendation)
    assert (rec.source, rec.fallback_reason) == ("fallback", "timeout")
    assert model.finished == 0  # the answer came while the gate was shut: the blocked call was not waited for
    again = _in_thread(lambda: runtime.recommend("stuck", cids, k=3))  # queued behind the stuck call
    assert isinstance(again, Recommendation) and again.fallback_reason == "timeout"
    assert runtime.metrics.fallback.labels("timeout")._value.get() == 2
    assert runtime.metrics.recommend.labels("fallback")._value.get() == 2

    model.gate.set()
    runtime.model.call(lambda: None, time.perf_counter() + SAFETY_S)  # the model thread is free again
    assert model.calls <= 1  # the queued call's deadline had passed: it was never run
    runtime.time_budget_s = SAFETY_S
    rec = runtime.recommend("stuck", cids, k=3)
    assert rec.source == "model" and rec.items == cids[:3]  # the gated model's logits decrease with position
    runtime.close()


def _loop_onnx(path: Path, trips: int, size: int = 64) -> None:
    """A graph with the policy's signature that runs ``trips`` matmuls on its input in an ONNX Loop: logits are
    the feature sums (7 for all-ones features), alpha 0.5, no repulsion output."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    f32 = TensorProto.FLOAT
    w = numpy_helper.from_array((np.random.default_rng(0).standard_normal((size, size)) / size).astype(np.float32),
                                "W")
    body = helper.make_graph(
        [helper.make_node("MatMul", ["x_in", "W"], ["m"]), helper.make_node("Tanh", ["m"], ["x_out"]),
         helper.make_node("Identity", ["cond_in"], ["cond_out"])], "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("x_in", f32, None)],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("x_out", f32, None)])
    nodes = [helper.make_node("ReduceSum", ["user"], ["s"], keepdims=0),
             helper.make_node("Add", ["W", "s"], ["x0"]),
             helper.make_node("Loop", ["trips", "cond", "x0"], ["xT"], body=body),
             helper.make_node("ReduceSum", ["xT"], ["h"], keepdims=0),
             helper.make_node("Mul", ["h", "zero"], ["z"]),
             helper.make_node("ReduceSum", ["features", "ax2"], ["f"], keepdims=0),
             helper.make_node("Add", ["f", "z"], ["logits"]),
             helper.make_node("ReduceSum", ["context", "ax1"], ["c"], keepdims=0),
             helper.make_node("Mul", ["c", "zero"], ["c0"]),
             helper.make_node("Add", ["c0", "z"], ["a0"]),
             helper.make_node("Sigmoid", ["a0"], ["alpha"])]
    graph = helper.make_graph(
        nodes, "slow",
        [helper.make_tensor_value_info("user", f32, ["B", 64]),
         helper.make_tensor_value_info("features", f32, ["B", "N", 7]),
         helper.make_tensor_value_info("context", f32, ["B", 10])],
        [helper.make_tensor_value_info("logits", f32, ["B", "N"]), helper.make_tensor_value_info("alpha", f32, ["B"])],
        initializer=[w, numpy_helper.from_array(np.zeros((), np.float32), "zero"),
                     numpy_helper.from_array(np.array([2], np.int64), "ax2"),
                     numpy_helper.from_array(np.array([1], np.int64), "ax1"),
                     numpy_helper.from_array(np.array(trips, np.int64), "trips"),
                     numpy_helper.from_array(np.array(True), "cond")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def test_onnx_run_is_cancelled_at_its_deadline(tmp_path: Path, onnx_export: Path,
                                              small_world: World) -> None:
    """An ONNX graph that would run for ages (2^62 loop iterations) is cancelled at its deadline (ONNX Runtime's
    terminate flag) and the blend answers; the same graph with 3 iterations answers normally."""
    inputs = {"user": np.ones((1, 64), np.float32), "features": np.ones((1, 20, 7), np.float32),
              "context": np.zeros((1, 10), np.float32)}
    _loop_onnx(tmp_path / "quick.onnx", trips=3)
    logits, alpha, beta = OnnxModel(tmp_path / "quick.onnx", ["user", "features", "context"]).run(
        inputs, deadline=time.perf_counter() + SAFETY_S)
    np.testing.assert_allclose(logits, 7.0)
    assert alpha == 0.5 and beta == 0.0  # a graph without the repulsion output

    _loop_onnx(tmp_path / "endless.onnx", trips=2**62)
    model = OnnxModel(tmp_path / "endless.onnx", ["user", "features", "context"])
    good = ServingRuntime.load(onnx_export)
    runtime = ServingRuntime(good.manifest, good.items, model, MemoryStore(), time_budget_ms=20)
    assert runtime.model is model  # ONNX Runtime enforces the deadline itself: run on the request's thread
    rec = _in_thread(lambda: runtime.recommend("slow", ids_of(small_world, range(20)), k=3))
    assert isinstance(rec, Recommendation)
    assert (rec.source, rec.fallback_reason) == ("fallback", "timeout")
    assert runtime.metrics.fallback.labels("timeout")._value.get() == 1


def test_torchscript_runs_with_the_thread_setting(ts_export: Path, small_world: World) -> None:
    """``threads`` reaches the TorchScript model: torch's intra-op thread count on the model's thread is it."""
    import torch as th

    before = th.get_num_threads()
    want = 2 if before == 1 else 1
    runtime = ServingRuntime.load(ts_export, threads=want, time_budget_ms=SAFETY_S * 1000)
    try:
        assert isinstance(runtime.model, ThreadedModel)
        assert runtime.model.call(th.get_num_threads, time.perf_counter() + SAFETY_S) == want
        assert runtime.recommend("t", ids_of(small_world, range(20)), k=3).source == "model"
    finally:
        runtime.close()
        th.set_num_threads(before)  # process-global in torch: leave the test process as it was
    with pytest.raises(ValueError, match="threads must be >= 1"):
        ServingRuntime.load(ts_export, threads=0)


def test_corrupt_model_file(tmp_path: Path, onnx_export: Path, small_world: World) -> None:
    art = tmp_path / "art"
    shutil.copytree(onnx_export, art)
    (art / "policy.onnx").write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="does not match the SHA-256"):
        ServingRuntime.load(art)
    with pytest.raises(ValueError, match="cannot load the model"):
        ServingRuntime.load(art, verify=False)
    runtime = ServingRuntime.load(art, verify=False, on_model_error="fallback")
    rec = runtime.recommend("c", ids_of(small_world, range(10)), k=2)
    assert (rec.source, rec.fallback_reason) == ("fallback", "no_model")
    assert runtime.health()["model"] == "missing"


# ---- concurrency ------------------------------------------------------------------------------------------------


def _hammer(runtimes: list[ServingRuntime], user: str, items: list[str], threads: int, per_thread: int) -> None:
    def work(i: int) -> None:
        r = runtimes[i % len(runtimes)]
        for j in range(per_thread):
            if j % 10 == 0:  # every item shown (feedback counts for shown items), before the first click
                r.recommend(user, items, k=len(items))
            r.observe(user, [Event("click", items[(i * per_thread + j) % len(items)])])

    ts = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()


def _expected_cf_b(items: ItemTable, rows: list[int], alpha: float) -> np.ndarray:
    return alpha * items.factors[rows].astype(np.float64).sum(axis=0)


def test_concurrent_feedback_loses_no_event_in_memory(onnx_export: Path, small_world: World) -> None:
    runtime = ServingRuntime.load(onnx_export)
    items = ids_of(small_world, range(60))
    _hammer([runtime], "busy", items, threads=8, per_thread=40)
    st = runtime.user_state("busy")
    assert st is not None and st.n_events == 320 and st.n_requests == 32
    rows = [(i * 40 + j) % 60 for i in range(8) for j in range(40)]
    np.testing.assert_allclose(st.cf_b, _expected_cf_b(runtime.items, rows, runtime.const.cf_alpha), rtol=1e-9)


# ---- Redis -------------------------------------------------------------------------------------------------------


def test_missing_redis_server_fails_in_ci_and_skips_elsewhere() -> None:
    with pytest.raises(pytest.fail.Exception, match="must run in CI"):
        redis_server_or_skip(lambda _: None, {"CI": "true"})
    with pytest.raises(pytest.skip.Exception, match="not installed"):
        redis_server_or_skip(lambda _: None, {})
    with pytest.raises(pytest.skip.Exception):
        redis_server_or_skip(lambda _: None, {"CI": "false"})
    assert redis_server_or_skip(lambda _: "/usr/bin/redis-server", {"CI": "true"}) == "/usr/bin/redis-server"


def test_redis_state_survives_a_new_runtime(redis_url: str, onnx_export: Path, small_world: World) -> None:
    cids = ids_of(small_world, range(40))
    first = ServingRuntime.load(onnx_export, store=redis_url)
    first.set_user("r1", history=ids_of(small_world, [4, 8, 15]))
    rec = first.recommend("r1", cids, k=5)
    first.observe("r1", [Event("click", rec.items[0], dwell_s=12.0, request_id=rec.request_id),
                         Event("purchase", rec.items[0])])
    obs_before = first.observation("r1", cids)
    state_before = encode_state(first.user_state("r1"))  # type: ignore[arg-type]
    first.close()

    second = ServingRuntime.load(onnx_export, store=redis_url)  # a restarted service
    assert encode_state(second.user_state("r1")) == state_before  # type: ignore[arg-type]
    obs_after = second.observation("r1", cids)
    for key in ("user", "features", "context"):
        np.testing.assert_array_equal(obs_after[key], obs_before[key])
    assert second.recommend("r1", cids, k=5).request_id == 1
    # a tampered value is refused, not served
    bad = second.user_state("r1")
    assert bad is not None
    bad.seen_items = np.array([10**6], np.int32)
    bad.seen_counts = np.ones(1, np.float32)
    second.store.transact("r1", lambda st: st.__dict__.update(bad.__dict__), second._new_state)
    with pytest.raises(CorruptStateError, match="does not fit"):
        second.recommend("r1", cids, k=5)
    second.close()


def test_redis_concurrent_feedback_from_many_processes_loses_no_event(redis_url: str, onnx_export: Path,
                                                                      small_world: World) -> None:
    """Four runtimes (as four worker processes would be, each with its own connections and locks) and eight
    threads update one user at once: every event lands (compare-and-set retries with backoff, then the user's
    lease)."""
    runtimes = [ServingRuntime.load(onnx_export, store=redis_url) for _ in range(4)]
    items = ids_of(small_world, range(60))
    _hammer(runtimes, "hot", items, threads=8, per_thread=25)
    st = runtimes[0].user_state("hot")
    assert st is not None and st.n_events == 200 and st.n_requests == 24
    rows = [(i * 25 + j) % 60 for i in range(8) for j in range(25)]
    np.testing.assert_allclose(st.cf_b, _expected_cf_b(runtimes[0].items, rows, runtimes[0].const.cf_alpha),
                               rtol=1e-9)
    for r in runtimes:
        r.close()


def _count_event(st: UserState) -> int:
    st.n_events += 1
    return st.n_events


def _tiny_state() -> UserState:
    return UserState.new(dim=4, cf_dim=2, n_categories=3)


def test_redis_writer_that_loses_every_race_takes_the_lease_and_writes(redis_url: str) -> None:
    """A writer whose every attempt meets a concurrent write starves on optimism alone; with a lease it writes,
    and the write it would have met is refused while the lease is held."""
    rival = RedisStore(redis_url, prefix="lease-test:", max_retries=1, lease_after=None)
    refused = []

    def racing(st: UserState) -> int:  # another process writes the same user between our read and our write
        try:
            rival.transact("u", _count_event, _tiny_state)
        except StoreConflictError:
            refused.append(1)
        return _count_event(st)

    optimist = RedisStore(redis_url, prefix="lease-test:", max_retries=5, lease_after=None, backoff_ms=0.0,
                          backoff_cap_ms=0.0)
    with pytest.raises(StoreConflictError, match="'u': 5 conflicting"):
        optimist.transact("u", racing, _tiny_state)
    assert optimist.conflicts == 5 and optimist.leases == 0 and not refused
    before = rival.get("u")
    assert before is not None and before.n_events == 5  # the rival won every race

    leased = RedisStore(redis_url, prefix="lease-test:", max_retries=5, lease_after=2, backoff_ms=0.0,
                        backoff_cap_ms=0.0)
    assert leased.transact("u", racing, _tiny_state) == 5 + 2 + 1  # two lost races, then the leased write
    assert (leased.conflicts, leased.leases, len(refused)) == (2, 1, 1)
    after = leased.get("u")
    assert after is not None and after.n_events == 8
    assert leased._redis.get("lease-test:u:lease") is None  # the write released it
    for st in (rival, optimist, leased):
        st.close()


def test_redis_lease_refuses_other_writers_until_released_and_expires(redis_url: str) -> None:
    store = RedisStore(redis_url, prefix="lease-test2:", max_retries=3, lease_after=None, backoff_ms=0.0,
                       backoff_cap_ms=0.0)
    store._redis.set("lease-test2:v:lease", "someone-else", px=60_000)  # a holder that died mid-update
    with pytest.raises(StoreConflictError, match="3 conflicting"):
        store.transact("v", _count_event, _tiny_state)
    assert store.get("v") is None  # nothing written under another's lease
    store._redis.delete("lease-test2:v:lease")  # as its PX expiry would
    assert store.transact("v", _count_event, _tiny_state) == 1

    holder = RedisStore(redis_url, prefix="lease-test2:", max_retries=3, lease_after=0, lease_ms=5000)
    ttls: list[int] = []

    def failing(st: UserState) -> int:
        ttls.append(holder._redis.pttl("lease-test2:v:lease"))
        raise ValueError("the update failed")

    with pytest.raises(ValueError, match="the update failed"):
        holder.transact("v", failing, _tiny_state)
    assert len(ttls) == 1 and 0 < ttls[0] <= 5000  # held, with an expiry
    assert holder._redis.get("lease-test2:v:lease") is None  # released when fn raised
    assert holder.transact("v", _count_event, _tiny_state) == 2 and holder.leases == 2
    for st in (store, holder):
        st.close()


def test_bench_redis_contention_counts_what_it_runs(redis_url: str) -> None:
    from bench.redis_contention import POLICIES, run_once

    out = run_once(redis_url, "bench-test:", POLICIES["lease"], stores=2, threads=4, updates=5, max_retries=50,
                   work_s=0.0)
    assert out["refused"] == 0 and out["stored"] == 20 and out["leases"] <= out["conflicts"]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"max_retries": 0}, "max_retries must be at least 1"),
    ({"max_retries": 3, "lease_after": 3}, "lease_after must be in"),
    ({"lease_ms": 0}, "lease_ms > 0"),
    ({"backoff_ms": 5.0, "backoff_cap_ms": 1.0}, "backoff_ms <= backoff_cap_ms"),
])
def test_redis_store_refuses_bad_retry_settings(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RedisStore("redis://127.0.0.1:1/0", **kwargs)


def _start_service(art: Path, port: int, redis_url: str, env: dict[str, str]) -> subprocess.Popen:
    import httpx

    # a generous model budget: the tests compare answers across restarts, and on a loaded machine a 10 ms budget
    # can turn one of them into the fallback's
    proc = subprocess.Popen([sys.executable, "-m", "agents.serve", str(art), "--port", str(port), "--redis",
                             redis_url, "--time-budget-ms", "10000"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            out = proc.stdout.read().decode() if proc.stdout else ""
            pytest.fail(f"service exited with {proc.returncode}: {out}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1.0).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    pytest.fail("service did not come up in 120 s")


def test_http_service_restart_keeps_user_state_in_redis(redis_url: str, onnx_export: Path,
                                                        small_world: World) -> None:
    """`python -m agents.serve ART --redis URL`: feedback, stop the process, start a new one: the user's state
    (request counter, features) is where it was."""
    import httpx

    port = free_port()
    env = {**os.environ, "RECFEED_API_KEY": "k-123", "PYTHONPATH": str(REPO)}
    headers = {"X-API-Key": "k-123"}
    base = f"http://127.0.0.1:{port}"
    cids = ids_of(small_world, range(50))
    proc = _start_service(onnx_export, port, redis_url, env)
    try:
        rec = httpx.post(f"{base}/recommend", json={"user_id": "h1", "candidate_ids": cids, "k": 5},
                         headers=headers).json()
        fb = httpx.post(f"{base}/feedback", headers=headers, json={"user_id": "h1", "events": [
            {"type": "click", "item_id": rec["items"][2], "dwell_s": 40.0, "request_id": rec["request_id"]}]})
        assert fb.json() == {"applied": 1}
        preview = httpx.post(f"{base}/recommend", headers=headers,
                             json={"user_id": "h1", "candidate_ids": cids, "k": 5, "record": False}).json()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    proc = _start_service(onnx_export, port, redis_url, env)
    try:
        again = httpx.post(f"{base}/recommend", headers=headers,
                           json={"user_id": "h1", "candidate_ids": cids, "k": 5, "record": False}).json()
        assert again == preview and again["request_id"] == 1
        assert httpx.post(f"{base}/recommend", json={"user_id": "h1", "candidate_ids": cids}).status_code == 401
    finally:
        proc.terminate()
        proc.wait(timeout=30)


# ---- HTTP --------------------------------------------------------------------------------------------------------


@pytest.fixture
def client(onnx_export: Path) -> Iterator:
    from fastapi.testclient import TestClient

    from agents.serving.app import create_app

    runtime = ServingRuntime.load(onnx_export, max_candidates=100, time_budget_ms=5000)
    with TestClient(create_app(runtime, api_key="s3cret", max_body_bytes=4096)) as c:
        c.headers["X-API-Key"] = "s3cret"
        yield c


def test_http_recommend_feedback_health_metrics(client, small_world: World) -> None:
    cids = ids_of(small_world, range(30))
    r = client.post("/recommend", json={"user_id": "w", "candidate_ids": cids, "k": 4})
    assert r.status_code == 200
    body = r.json()
    assert len(body["items"]) == 4 and set(body["items"]) <= set(cids) and body["source"] == "model"
    assert len(body["scores"]) == 4 and 0 < body["alpha"] < 1 and body["repulsion"] > 0
    r = client.post("/feedback", json={"user_id": "w", "events": [
        {"type": "click", "item_id": body["items"][0], "dwell_s": 20, "request_id": body["request_id"]},
        {"type": "purchase", "item_id": body["items"][0]}, {"type": "dwell", "item_id": body["items"][0],
                                                            "dwell_s": 5.5}]})
    assert r.status_code == 200 and r.json() == {"applied": 3}
    bearer = client.get("/health", headers={"X-API-Key": "", "Authorization": "Bearer s3cret"})
    assert bearer.status_code == 200 and bearer.json()["model"] == "ok"
    text = client.get("/metrics").text
    assert 'recfeed_recommend_total{source="model"} 1.0' in text
    assert 'recfeed_feedback_events_total{type="click"} 1.0' in text
    assert 'recfeed_http_requests_total{endpoint="/recommend",status="200"} 1.0' in text
    assert "recfeed_fallback_total" in text and "_created" not in text


def test_http_bad_requests_get_the_right_status(client, small_world: World) -> None:
    cids = ids_of(small_world, range(30))
    ok = {"user_id": "b", "candidate_ids": cids}
    json_ct = {"Content-Type": "application/json"}
    cases = [
        # (method, path, kwargs, status, error code)
        ("post", "/recommend", {"content": b'{"user_id": "b", "candidate_ids": [', "headers": json_ct}, 400,
         "malformed_json"),
        ("post", "/recommend", {"content": b"", "headers": json_ct}, 400, "malformed_json"),
        ("post", "/recommend", {"content": b'{"user_id": "b"}', "headers": {"Content-Type": "text/plain"}}, 415,
         "unsupported_media_type"),
        ("post", "/recommend", {"json": ok, "headers": {"X-API-Key": "wrong"}}, 401, "unauthorized"),
        ("post", "/recommend", {"json": ok, "headers": {"X-API-Key": ""}}, 401, "unauthorized"),
        ("get", "/metrics", {"headers": {"X-API-Key": ""}}, 401, "unauthorized"),
        ("post", "/recommend", {"json": {**ok, "candidate_ids": [*cids, "ghost"]}}, 404, "unknown_items"),
        ("post", "/feedback", {"json": {"user_id": "b", "events": [{"type": "click", "item_id": "ghost"}]}}, 404,
         "unknown_items"),
        ("post", "/recommend", {"json": {**ok, "candidate_ids": ids_of(small_world, range(101))}}, 422,
         "invalid_request"),
        ("post", "/recommend", {"json": {**ok, "candidate_ids": ["x" * 300]}}, 422, "invalid_request"),
        ("post", "/recommend", {"json": {**ok, "k": 31}}, 422, "invalid_request"),
        ("post", "/recommend", {"json": {**ok, "k": 0}}, 422, "invalid_request"),
        ("post", "/recommend", {"json": {**ok, "k": "many"}}, 422, "invalid_request"),
        ("post", "/recommend", {"json": {**ok, "candidate_ids": [cids[0], cids[0]]}}, 422, "invalid_request"),
        ("post", "/recommend", {"json": {**ok, "candidate_ids": []}}, 422, "invalid_request"),
        ("post", "/recommend", {"json": {"candidate_ids": cids}}, 422, "invalid_request"),
        ("post", "/recommend", {"json": {**ok, "user_id": ""}}, 422, "invalid_request"),
        ("post", "/recommend", {"json": {**ok, "user_id": 7}}, 422, "invalid_request"),
        ("post", "/recommend", {"json": {**ok, "debug": True}}, 422, "invalid_request"),
        ("post", "/recommend", {"json": [ok]}, 422, "invalid_request"),
        ("post", "/feedback", {"json": {"user_id": "b", "events": [{"type": "like", "item_id": cids[0]}]}}, 422,
         "invalid_request"),
        ("post", "/feedback", {"json": {"user_id": "b", "events": [{"type": "dwell", "item_id": cids[0],
                                                                    "dwell_s": -1}]}}, 422, "invalid_request"),
        ("post", "/feedback", {"json": {"user_id": "b", "events": []}}, 422, "invalid_request"),
        ("post", "/feedback", {"json": {"user_id": "b", "events": [{"type": "click", "item_id": cids[0]}] * 1001}},
         413, "body_too_large"),
        ("post", "/recommend", {"json": {**ok, "candidate_ids": cids * 20}}, 413, "body_too_large"),
    ]
    for method, path, kwargs, status, code in cases:
        r = getattr(client, method)(path, **kwargs)
        assert (r.status_code, r.json().get("error")) == (status, code), (path, kwargs, r.text[:300])
    r = client.get("/nowhere")  # unknown paths and wrong methods answer in the documented error shape too
    assert (r.status_code, r.json()["error"]) == (404, "not_found") and "/nowhere" in r.json()["detail"]
    r = client.post("/nowhere", json=ok)
    assert (r.status_code, r.json()["error"]) == (404, "not_found")
    r = client.get("/recommend")
    assert (r.status_code, r.json()["error"], r.headers["allow"]) == (405, "method_not_allowed", "POST")
    r = client.put("/health", json={})
    assert (r.status_code, r.json()["error"]) == (405, "method_not_allowed")

    # a body over the limit without Content-Length (chunked) is cut off as well
    def chunks() -> Iterator[bytes]:
        yield b'{"user_id": "b", "candidate_ids": ['
        for _ in range(400):
            yield b'"item-00001",'
        yield b'"item-00002"]}'

    r = client.post("/recommend", content=chunks(), headers=json_ct)
    assert r.status_code == 413
    # the events limit is enforced by the schema when the body fits
    from agents.serving.app import MAX_EVENTS

    assert MAX_EVENTS == 1000
    text = client.get("/metrics").text
    assert 'recfeed_http_requests_total{endpoint="/recommend",status="413"}' in text
    assert client.get("/health", headers={"X-API-Key": ""}).status_code == 200  # health needs no key


def test_http_without_api_key_and_too_many_events(onnx_export: Path, small_world: World) -> None:
    from fastapi.testclient import TestClient

    from agents.serving.app import create_app

    with TestClient(create_app(ServingRuntime.load(onnx_export), api_key=None, max_body_bytes=1 << 20)) as c:
        ev = {"type": "click", "item_id": small_world.catalog.ids[0]}
        assert c.post("/recommend", json={"user_id": "n", "candidate_ids": [ev["item_id"]]}).status_code == 200
        r = c.post("/feedback", json={"user_id": "n", "events": [ev] * 1001})
        assert r.status_code == 422 and r.json()["error"] == "invalid_request"
        assert c.post("/feedback", json={"user_id": "n", "events": [ev] * 1000}).json() == {"applied": 1000}


def test_http_client_disconnect_is_not_counted_as_a_server_error(onnx_export: Path) -> None:
    """A client that goes away before its body has arrived gets no answer and is counted as 499, not 500."""
    import asyncio

    from prometheus_client import generate_latest

    from agents.serving.app import DISCONNECT_STATUS, create_app

    runtime = ServingRuntime.load(onnx_export)
    app = create_app(runtime, api_key=None)
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": "/recommend", "raw_path": b"/recommend", "root_path": "", "query_string": b"",
             "headers": [(b"content-type", b"application/json")], "client": ("127.0.0.1", 1),
             "server": ("127.0.0.1", 8000)}
    asyncio.run(app(scope, receive, send))
    assert sent == []
    text = generate_latest(runtime.metrics.registry).decode()
    assert f'recfeed_http_requests_total{{endpoint="/recommend",status="{DISCONNECT_STATUS}"}} 1.0' in text
    assert 'status="500"' not in text


@pytest.mark.parametrize("flags", [["--port", "99999"], ["--port", "0"], ["--port", "http"],
                                   ["--max-candidates", "0"], ["--max-body-bytes", "-1"],
                                   ["--time-budget-ms", "-5"], ["--time-budget-ms", "nan"],
                                   ["--session-timeout-s", "0"], ["--session-timeout-s", "inf"],
                                   ["--workers", "0"], ["--model-threads", "0"], ["--log-level", "loud"]])
def test_serve_cli_rejects_bad_limits(flags: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Each bad flag value exits with status 2 and a message naming the flag, before anything is loaded."""
    from agents.serving.app import main

    with pytest.raises(SystemExit) as exc:
        main([str(tmp_path), *flags])
    assert exc.value.code == 2
    assert f"argument {flags[0]}" in capsys.readouterr().err


def test_serve_cli_binds_beyond_loopback_only_with_a_key_or_insecure(onnx_export: Path,
                                                                     monkeypatch: pytest.MonkeyPatch,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    import uvicorn

    from agents.serving.app import is_loopback, main

    runs: list[dict] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: runs.append(kw))
    monkeypatch.delenv("RECFEED_API_KEY", raising=False)
    assert main([str(onnx_export), "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert "not a loopback address" in err and "--insecure" in err and not runs
    assert main([str(onnx_export), "--host", "0.0.0.0", "--port", "8123", "--insecure"]) == 0
    assert (runs[-1]["host"], runs[-1]["port"]) == ("0.0.0.0", 8123)
    assert "http://0.0.0.0:8123 " in capsys.readouterr().out  # what it prints is where it listens
    monkeypatch.setenv("RECFEED_API_KEY", "k")
    assert main([str(onnx_export), "--host", "10.1.2.3", "--model-threads", "2"]) == 0
    assert main([str(onnx_export), "--host", "::1"]) == 0 and runs[-1]["host"] == "::1"
    assert [is_loopback(h) for h in ("127.0.0.1", "127.9.9.9", "::1", "[::1]", "localhost", "0.0.0.0", "::",
                                     "10.0.0.1", "example.com")] == [True] * 5 + [False] * 4


def test_serve_cli_resolves_artifacts_and_refuses_bad_setups(tmp_path: Path, onnx_export: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    from agents.serving.app import main, resolve_artifact

    assert resolve_artifact(onnx_export) == onnx_export  # an artifact directory is used as it is
    run = tmp_path / "run"
    shutil.copytree(onnx_export, run / "export")
    assert resolve_artifact(run) == run / "export"  # a run directory's export/
    with pytest.raises(FileNotFoundError, match="neither a run directory"):
        resolve_artifact(tmp_path / "empty")
    assert main([str(onnx_export), "--workers", "2"]) == 2  # in-process state cannot be shared by workers
    assert "needs --redis" in capsys.readouterr().err
    assert main([str(tmp_path / "empty")]) == 2
    assert "cannot serve" in capsys.readouterr().err


def test_http_store_down_is_503(onnx_export: Path, small_world: World) -> None:
    """A Redis store that cannot be reached: requests get 503 store_unavailable, /health says so."""
    from fastapi.testclient import TestClient

    from agents.serving.app import create_app

    runtime = ServingRuntime.load(onnx_export, store=f"redis://127.0.0.1:{free_port()}/0")
    with TestClient(create_app(runtime)) as c:
        r = c.post("/recommend", json={"user_id": "x", "candidate_ids": ids_of(small_world, range(10))})
        assert r.status_code == 503 and r.json()["error"] == "store_unavailable"
        r = c.post("/feedback", json={"user_id": "x", "events": [{"type": "click", "item_id": "item-00001"}]})
        assert r.status_code == 503
        h = c.get("/health")
        assert h.status_code == 503 and h.json()["store_ok"] is False
