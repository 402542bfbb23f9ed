"""Serving runtime and HTTP service: feature parity with the simulator, user state, fallback, stores, HTTP errors.

Redis tests start a real ``redis-server`` on a free loopback port (skipped, saying why, when it is not installed:
``apt-get install -y redis-server``).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from test_export import onnx_export, run_dir, ts_export  # noqa: F401 - session fixtures shared with the export tests

from agents.serving import (
    A_LAST_RANK,
    CorruptStateError,
    Event,
    InvalidRequestError,
    ItemTable,
    MemoryStore,
    ModelTimeoutError,
    OnnxModel,
    Ranker,
    UnknownItemsError,
    UserState,
    decode_state,
    encode_state,
    load_manifest,
)
from envs.spaces import CONTEXT_NAMES, F_CF, F_LLM, FEATURE_NAMES
from envs.world import World

REPO = Path(__file__).resolve().parents[1]


class FakeClock:
    """A settable wall clock."""

    def __init__(self, t: float = 1_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def ids_of(world: World, rows: np.ndarray | list[int]) -> list[str]:
    return [world.catalog.ids[int(i)] for i in rows]


# ---- feature parity with the simulator --------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_runtime_features_equal_simulator_observations(fmt: str, onnx_export: Path, ts_export: Path,  # noqa: F811
                                                       small_world: World) -> None:
    """Replay env sessions through the runtime: the runtime ranks, the env's user responds, the runtime observes
    the same click / dwell / purchase; at every request the runtime's observation of the env's candidates
    equals the env's observation (every feature column, the context and the user vector)."""
    from envs.presets import preset_config
    from envs.rec_env import RecEnv

    art = onnx_export if fmt == "onnx" else ts_export
    ranker = Ranker.load(art, clock=FakeClock(), time_budget_ms=5000)  # no timeouts on a busy test machine
    env = RecEnv(config=preset_config("small"), world=small_world)
    pop = small_world.populations["train"]
    worst_f = np.zeros(len(FEATURE_NAMES))
    worst_c = np.zeros(len(CONTEXT_NAMES))
    clicks = purchases = steps = 0
    # Replay sessions until every event path has run: purchases are rare at the small preset (about 1% of clicks
    # with the hashing encoder), and how soon one comes depends on the trained policy's slates (on the training CPU).
    for ep in range(300):
        if clicks >= 30 and purchases >= 1 and steps >= 200:
            break
        u = (3 * ep + 1) % pop.init_state.shape[0]
        obs, _ = env.reset(seed=100 + ep, options={"user": u})
        uid = f"sim-{fmt}-{ep}"
        ranker.set_user(uid, pooled_state=pop.init_state[u], cf_factor=pop.cf_user[u])
        done = False
        while not done:
            cids = ids_of(small_world, obs["candidates"])
            mine = ranker.observation(uid, cids)
            worst_f = np.maximum(worst_f, np.abs(mine["features"] - obs["features"]).max(axis=0))
            worst_c = np.maximum(worst_c, np.abs(mine["context"] - obs["context"]))
            np.testing.assert_allclose(mine["user"], obs["user"], atol=1e-5)
            rec = ranker.recommend(uid, cids)
            assert rec.source == "model", rec.fallback_reason
            pos = np.array([cids.index(i) for i in rec.items])
            obs, _, term, trunc, info = env.step(pos)
            done = term or trunc
            steps += 1
            if info["click"]:
                clicks += 1
                item = rec.items[info["click_rank"]]
                events = [Event("click", item, dwell_s=float(info["dwell"]), request_id=rec.request_id)]
                if info["purchase"]:
                    purchases += 1
                    events.append(Event("purchase", item, request_id=rec.request_id))
                ranker.observe(uid, events)
    assert clicks >= 30 and purchases >= 1 and steps >= 200, (clicks, purchases, steps)  # every event path ran
    bad_f = {n: float(v) for n, v in zip(FEATURE_NAMES, worst_f, strict=True) if v > 1e-5}
    bad_c = {n: float(v) for n, v in zip(CONTEXT_NAMES, worst_c, strict=True) if v > 1e-5}
    assert not bad_f and not bad_c, (bad_f, bad_c)


def test_new_user_and_history_import(onnx_export: Path, small_world: World) -> None:  # noqa: F811
    from envs.users import pool_history

    ranker = Ranker.load(onnx_export)
    cids = ids_of(small_world, range(20))
    o = ranker.observation("nobody", cids)
    assert not o["user"].any() and not o["features"][:, [F_LLM, F_CF, 4, 5, 6]].any()
    expected_ctx = np.zeros(len(CONTEXT_NAMES), np.float32)
    expected_ctx[CONTEXT_NAMES.index("last_click_rank")] = 1.0
    np.testing.assert_array_equal(o["context"], expected_ctx)
    np.testing.assert_array_equal(o["features"][:, 2:4], small_world.item_features[:20])

    hist = [5, 17, 230, 17, 99]
    ranker.set_user("u", history=ids_of(small_world, hist))
    st = ranker.user_state("u")
    assert st is not None
    np.testing.assert_allclose(st.state, pool_history(np.array([hist]), small_world.item_emb, 0.85)[0], atol=1e-6)
    assert st.cf_factor.any() and not st.cf_pinned
    with pytest.raises(UnknownItemsError, match="nope"):
        ranker.set_user("u", history=["nope"])
    with pytest.raises(ValueError, match="pooled_state must have shape"):
        ranker.set_user("u", pooled_state=np.zeros(3))


def test_cf_fold_in_matches_implicit_least_squares(onnx_export: Path, small_world: World) -> None:  # noqa: F811
    """The incremental fold-in equals implicit's user solve on the same confidences (c = cf_alpha·Σw)."""
    import scipy.sparse as sp
    from implicit.cpu.als import user_factor

    ranker = Ranker.load(onnx_export)
    m = load_manifest(onnx_export)
    items, lam, alpha = [3, 50, 3, 120], m["cf"]["regularization"], m["cf"]["alpha"]
    ranker.observe("cf", [Event("click", i) for i in ids_of(small_world, items)] + [Event("purchase", "item-00120")])
    st = ranker.user_state("cf")
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
    o = ranker.observation("cf", ids_of(small_world, range(40)))
    np.testing.assert_allclose(o["features"][:, F_CF], z[:40], atol=1e-4)


def test_fast_greedy_slate_equals_the_sequential_walk() -> None:
    """The serving path's O(N log N) slate equals the literal greedy walk of PlackettLuceDistribution.mode."""
    import torch as th

    from agents.distributions import PlackettLuceDistribution
    from agents.serving import greedy_slate, greedy_slates

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


def test_session_timeout_preview_and_end_session(onnx_export: Path, small_world: World) -> None:  # noqa: F811
    clock = FakeClock()
    ranker = Ranker.load(onnx_export, session_timeout_s=60, clock=clock)
    cids = ids_of(small_world, range(30))
    rec = ranker.recommend("s", cids, k=4)
    ranker.observe("s", [{"type": "click", "item_id": rec.items[1], "dwell_s": 30.0}])
    before = ranker.user_state("s")
    assert before is not None and before.t == 1 and before.ctx[A_LAST_RANK] == 0.25

    preview = ranker.recommend("s", cids, k=4, record=False)
    after = ranker.user_state("s")
    assert after is not None and encode_state(after) == encode_state(before)  # a preview changes nothing
    assert preview.request_id == 1

    clock.t += 61  # idle: the next request starts a new session; the pooled state and CF factor stay
    o = ranker.observation("s", cids)
    assert o["context"][0] == 0.0 and not o["features"][:, 4:].any()
    np.testing.assert_allclose(np.linalg.norm(o["user"]), 1.0, rtol=1e-5)
    ranker.recommend("s", cids, k=4)
    st = ranker.user_state("s")
    assert st is not None and st.t == 1 and st.sessions == 2 and st.n_requests == 2
    ranker.end_session("s")
    st = ranker.user_state("s")
    assert st is not None and st.t == 0 and st.sessions == 3 and st.state.any()
    # a session lasts at most max_steps requests (the training horizon), then the next one starts
    for _ in range(ranker.const.max_steps):
        ranker.recommend("s", cids, k=4)
    st = ranker.user_state("s")
    assert st is not None and st.t == ranker.const.max_steps == 30 and st.sessions == 3
    ranker.recommend("s", cids, k=4)
    st = ranker.user_state("s")
    assert st is not None and st.t == 1 and st.sessions == 4 and len(st.seen_items) == 4


def test_state_serialisation_round_trip() -> None:
    st = UserState.new(dim=8, cf_dim=3, n_categories=4)
    st.state[:] = np.arange(8)
    st.seen_items = np.array([2, 9], np.int32)
    st.seen_counts = np.array([1.0, 3.0], np.float32)
    st.cf_a[0, 1] = 0.5
    st.t, st.n_events, st.last_active = 4, 11, 123.5
    blob = encode_state(st)
    back = decode_state(blob)
    assert encode_state(back) == blob and len(blob) < 1000
    np.testing.assert_array_equal(back.seen_counts, st.seen_counts)
    back.state[0] = 42.0  # decoded arrays are writable copies
    with pytest.raises(ValueError, match="not a recfeed user state"):
        decode_state(b"pickle?")
    with pytest.raises(ValueError, match="truncated"):
        decode_state(blob[:-4])


def test_request_validation_in_process(onnx_export: Path, small_world: World) -> None:  # noqa: F811
    ranker = Ranker.load(onnx_export, max_candidates=50)
    cids = ids_of(small_world, range(20))
    with pytest.raises(UnknownItemsError) as exc:
        ranker.recommend("v", [*cids, "ghost-1", "ghost-2", "ghost-1"])
    assert exc.value.unknown == ["ghost-1", "ghost-2"]
    for bad, match in [([], "empty"), (ids_of(small_world, range(51)), "over the limit of 50"),
                       ([cids[0], cids[0]], "repeats")]:
        with pytest.raises(InvalidRequestError, match=match):
            ranker.recommend("v", bad)
    with pytest.raises(InvalidRequestError, match="k must be"):
        ranker.recommend("v", cids, k=21)
    with pytest.raises(InvalidRequestError, match="event type"):
        ranker.observe("v", [{"type": "like", "item_id": cids[0]}])
    with pytest.raises(UnknownItemsError):
        ranker.observe("v", [Event("click", cids[0]), Event("click", "ghost")])
    assert ranker.user_state("v") is None  # nothing was applied


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
def test_fallback_answers_when_model_is_broken(mode: str, reason: str, onnx_export: Path,  # noqa: F811
                                               small_world: World) -> None:
    from agents.baselines import BlendRanker

    good = Ranker.load(onnx_export)
    ranker = Ranker(good.manifest, good.items, BrokenModel(mode), MemoryStore())
    cids = ids_of(small_world, range(40))
    ranker.set_user("f", history=ids_of(small_world, [1, 2, 3]))
    obs = ranker.observation("f", cids)
    rec = ranker.recommend("f", cids, k=5)
    assert (rec.source, rec.fallback_reason, rec.alpha) == ("fallback", reason, 0.6)
    expected = BlendRanker(5, 0.6).act({k: v[None] for k, v in obs.items()})[0]
    assert rec.items == ids_of(small_world, np.array(obs["candidates"])[expected])
    metrics = ranker.metrics
    assert metrics.fallback.labels(reason)._value.get() == 1
    assert metrics.recommend.labels("fallback")._value.get() == 1


def _slow_onnx(path: Path, n_matmul: int = 200, size: int = 512) -> None:
    """A graph with the policy's signature that spends about a second in a chain of matmuls on its input."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array((np.random.default_rng(0).standard_normal((size, size)) / size).astype(np.float32),
                                "W")
    nodes = [helper.make_node("ReduceSum", ["user"], ["s"], keepdims=0),
             helper.make_node("Add", ["W", "s"], ["x0"])]
    for i in range(n_matmul):
        nodes += [helper.make_node("MatMul", [f"x{i}", "W"], [f"m{i}"]),
                  helper.make_node("Tanh", [f"m{i}"], [f"x{i + 1}"])]
    nodes += [helper.make_node("ReduceSum", [f"x{n_matmul}"], ["h"], keepdims=0),
              helper.make_node("Mul", ["h", "zero"], ["z"]),
              helper.make_node("ReduceSum", ["features", "ax2"], ["f"], keepdims=0),
              helper.make_node("Add", ["f", "z"], ["logits"]),
              helper.make_node("ReduceSum", ["context", "ax1"], ["c"], keepdims=0),
              helper.make_node("Mul", ["c", "zero"], ["c0"]),
              helper.make_node("Add", ["c0", "z"], ["a0"]),
              helper.make_node("Sigmoid", ["a0"], ["alpha"])]
    f32 = TensorProto.FLOAT
    graph = helper.make_graph(
        nodes, "slow",
        [helper.make_tensor_value_info("user", f32, ["B", 64]), helper.make_tensor_value_info("features", f32,
                                                                                             ["B", "N", 7]),
         helper.make_tensor_value_info("context", f32, ["B", 10])],
        [helper.make_tensor_value_info("logits", f32, ["B", "N"]), helper.make_tensor_value_info("alpha", f32,
                                                                                                ["B"])],
        initializer=[w, numpy_helper.from_array(np.zeros((), np.float32), "zero"),
                     numpy_helper.from_array(np.array([2], np.int64), "ax2"),
                     numpy_helper.from_array(np.array([1], np.int64), "ax1")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def test_slow_model_is_cancelled_at_its_deadline(tmp_path: Path, onnx_export: Path,  # noqa: F811
                                                 small_world: World) -> None:
    """A model past its time budget is cancelled (ONNX Runtime's terminate flag) and the blend answers in time."""
    _slow_onnx(tmp_path / "slow.onnx")
    model = OnnxModel(tmp_path / "slow.onnx", ["user", "features", "context"])
    inputs = {"user": np.ones((1, 64), np.float32), "features": np.ones((1, 20, 7), np.float32),
              "context": np.zeros((1, 10), np.float32)}
    t0 = time.perf_counter()
    logits, _, beta = model.run(inputs, deadline=t0 + 30.0)
    full = time.perf_counter() - t0
    np.testing.assert_allclose(logits, 7.0)
    assert beta == 0.0  # a graph without the repulsion output
    assert full > 0.3, f"the slow graph should take well over the budget, took {full:.3f}s"

    good = Ranker.load(onnx_export)
    ranker = Ranker(good.manifest, good.items, model, MemoryStore(), time_budget_ms=20)
    t0 = time.perf_counter()
    rec = ranker.recommend("slow", ids_of(small_world, range(20)), k=3)
    took = time.perf_counter() - t0
    assert (rec.source, rec.fallback_reason) == ("fallback", "timeout")
    assert took < full / 2, f"cancelled run took {took:.3f}s of a {full:.3f}s graph"
    assert ranker.metrics.fallback.labels("timeout")._value.get() == 1


def test_corrupt_model_file(tmp_path: Path, onnx_export: Path, small_world: World) -> None:  # noqa: F811
    art = tmp_path / "art"
    shutil.copytree(onnx_export, art)
    (art / "policy.onnx").write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="does not match the SHA-256"):
        Ranker.load(art)
    with pytest.raises(ValueError, match="cannot load the model"):
        Ranker.load(art, verify=False)
    ranker = Ranker.load(art, verify=False, on_model_error="fallback")
    rec = ranker.recommend("c", ids_of(small_world, range(10)), k=2)
    assert (rec.source, rec.fallback_reason) == ("fallback", "no_model")
    assert ranker.health()["model"] == "missing"


# ---- concurrency ------------------------------------------------------------------------------------------------


def _hammer(rankers: list[Ranker], user: str, items: list[str], threads: int, per_thread: int) -> None:
    def work(i: int) -> None:
        r = rankers[i % len(rankers)]
        for j in range(per_thread):
            r.observe(user, [Event("click", items[(i * per_thread + j) % len(items)])])
            if j % 10 == 0:
                r.recommend(user, items[:20], k=3)

    ts = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()


def _expected_cf_b(items: ItemTable, rows: list[int], alpha: float) -> np.ndarray:
    return alpha * items.factors[rows].astype(np.float64).sum(axis=0)


def test_concurrent_feedback_loses_no_event_in_memory(onnx_export: Path, small_world: World) -> None:  # noqa: F811
    ranker = Ranker.load(onnx_export)
    items = ids_of(small_world, range(60))
    _hammer([ranker], "busy", items, threads=8, per_thread=40)
    st = ranker.user_state("busy")
    assert st is not None and st.n_events == 320 and st.n_requests == 32
    rows = [(i * 40 + j) % 60 for i in range(8) for j in range(40)]
    np.testing.assert_allclose(st.cf_b, _expected_cf_b(ranker.items, rows, ranker.const.cf_alpha), rtol=1e-9)


# ---- Redis -------------------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    """A throwaway redis-server on a free loopback port (no persistence), stopped after the module."""
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server is not installed (apt-get install -y redis-server)")
    port = _free_port()
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import redis

    client = redis.Redis(host="127.0.0.1", port=port)
    for _ in range(100):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail("redis-server did not start")
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        client.close()
        proc.terminate()
        proc.wait(timeout=10)


def test_redis_state_survives_a_new_runtime(redis_url: str, onnx_export: Path, small_world: World) -> None:  # noqa: F811
    cids = ids_of(small_world, range(40))
    first = Ranker.load(onnx_export, store=redis_url)
    first.set_user("r1", history=ids_of(small_world, [4, 8, 15]))
    rec = first.recommend("r1", cids, k=5)
    first.observe("r1", [Event("click", rec.items[0], dwell_s=12.0, request_id=rec.request_id),
                         Event("purchase", rec.items[0])])
    obs_before = first.observation("r1", cids)
    state_before = encode_state(first.user_state("r1"))  # type: ignore[arg-type]
    first.close()

    second = Ranker.load(onnx_export, store=redis_url)  # a restarted service
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


def test_redis_concurrent_feedback_from_many_processes_loses_no_event(redis_url: str, onnx_export: Path,  # noqa: F811
                                                                      small_world: World) -> None:
    """Four runtimes (as four worker processes would be, each with its own connections and locks) and eight
    threads update one user at once: every event lands (WATCH/MULTI retries on conflict)."""
    rankers = [Ranker.load(onnx_export, store=redis_url) for _ in range(4)]
    items = ids_of(small_world, range(60))
    _hammer(rankers, "hot", items, threads=8, per_thread=25)
    st = rankers[0].user_state("hot")
    assert st is not None and st.n_events == 200 and st.n_requests == 24
    rows = [(i * 25 + j) % 60 for i in range(8) for j in range(25)]
    np.testing.assert_allclose(st.cf_b, _expected_cf_b(rankers[0].items, rows, rankers[0].const.cf_alpha),
                               rtol=1e-9)
    for r in rankers:
        r.close()


def _start_service(art: Path, port: int, redis_url: str, env: dict[str, str]) -> subprocess.Popen:
    import httpx

    proc = subprocess.Popen([sys.executable, "-m", "agents.serve", str(art), "--port", str(port), "--redis",
                             redis_url], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
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


def test_http_service_restart_keeps_user_state_in_redis(redis_url: str, onnx_export: Path,  # noqa: F811
                                                        small_world: World) -> None:
    """`python -m agents.serve ART --redis URL`: feedback, stop the process, start a new one: the user's state
    (request counter, features) is where it was."""
    import httpx

    port = _free_port()
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
def client(onnx_export: Path) -> Iterator:  # noqa: F811
    from fastapi.testclient import TestClient

    from agents.serve import create_app

    ranker = Ranker.load(onnx_export, max_candidates=100, time_budget_ms=5000)
    with TestClient(create_app(ranker, api_key="s3cret", max_body_bytes=4096)) as c:
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
    assert client.get("/nowhere").status_code == 404
    assert client.get("/recommend").status_code == 405

    # a body over the limit without Content-Length (chunked) is cut off as well
    def chunks() -> Iterator[bytes]:
        yield b'{"user_id": "b", "candidate_ids": ['
        for _ in range(400):
            yield b'"item-00001",'
        yield b'"item-00002"]}'

    r = client.post("/recommend", content=chunks(), headers=json_ct)
    assert r.status_code == 413
    # the events limit is enforced by the schema when the body fits
    from agents.serve import MAX_EVENTS

    assert MAX_EVENTS == 1000
    text = client.get("/metrics").text
    assert 'recfeed_http_requests_total{endpoint="/recommend",status="413"}' in text
    assert client.get("/health", headers={"X-API-Key": ""}).status_code == 200  # health needs no key


def test_http_without_api_key_and_too_many_events(onnx_export: Path, small_world: World) -> None:  # noqa: F811
    from fastapi.testclient import TestClient

    from agents.serve import create_app

    with TestClient(create_app(Ranker.load(onnx_export), api_key=None, max_body_bytes=1 << 20)) as c:
        ev = {"type": "click", "item_id": small_world.catalog.ids[0]}
        r = c.post("/feedback", json={"user_id": "n", "events": [ev] * 1001})
        assert r.status_code == 422 and r.json()["error"] == "invalid_request"
        assert c.post("/feedback", json={"user_id": "n", "events": [ev] * 1000}).json() == {"applied": 1000}


def test_serve_cli_resolves_artifacts_and_refuses_bad_setups(tmp_path: Path, onnx_export: Path,  # noqa: F811
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    from agents.serve import main, resolve_artifact

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


def test_http_store_down_is_503(onnx_export: Path, small_world: World) -> None:  # noqa: F811
    """A Redis store that cannot be reached: requests get 503 store_unavailable, /health says so."""
    from fastapi.testclient import TestClient

    from agents.serve import create_app

    ranker = Ranker.load(onnx_export, store=f"redis://127.0.0.1:{_free_port()}/0")
    with TestClient(create_app(ranker)) as c:
        r = c.post("/recommend", json={"user_id": "x", "candidate_ids": ids_of(small_world, range(10))})
        assert r.status_code == 503 and r.json()["error"] == "store_unavailable"
        r = c.post("/feedback", json={"user_id": "x", "events": [{"type": "click", "item_id": "item-00001"}]})
        assert r.status_code == 503
        h = c.get("/health")
        assert h.status_code == 503 and h.json()["store_ok"] is False
