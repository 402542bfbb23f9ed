"""Forgetting users (issue #17, item 5): ``DELETE /users/{id}`` / ``forget_user`` in memory and in Redis, idle
expiry of the in-process store, keyed-hash user ids in logs."""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import FakeClock, ids_of

from agents.serving import Event, MemoryStore, ServingRuntime, UserState
from agents.serving.privacy import LOG_KEY_ENV, HashUserPaths, UserIdHasher, install_access_log_filter
from envs.world import World


def _metric(runtime: ServingRuntime, name: str) -> float:
    from prometheus_client import generate_latest

    for line in generate_latest(runtime.metrics.registry).decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in the metrics")


def _used(runtime: ServingRuntime, user: str, cids: list[str], items: list[str]) -> None:
    """Give ``user`` a history, a recorded slate and a click and a purchase on it."""
    runtime.set_user(user, history=items)
    rec = runtime.recommend(user, cids, k=5)
    runtime.observe(user, [Event("click", rec.items[1], dwell_s=30.0, request_id=rec.request_id),
                           Event("purchase", rec.items[1])])


def _assert_fresh(runtime: ServingRuntime, user: str, cids: list[str]) -> None:
    """``user``'s observation is a never-seen user's, and their first request is request 0 of session 1."""
    fresh = runtime.observation(f"never-seen-{uuid.uuid4().hex}", cids)
    obs = runtime.observation(user, cids)
    for key in ("user", "features", "context"):
        np.testing.assert_array_equal(obs[key], fresh[key], err_msg=key)
    assert runtime.recommend(user, cids, k=5).request_id == 0
    st = runtime.user_state(user)
    assert st is not None and st.sessions == 1 and st.n_events == 0 and not st.cf_items.size


def _forget_round_trip(runtime: ServingRuntime, world: World) -> None:
    cids = ids_of(world, range(40))
    _used(runtime, "alice", cids, ids_of(world, [3, 7, 11]))
    before = runtime.observation("alice", cids)
    fresh = runtime.observation("nobody", cids)
    assert not np.array_equal(before["user"], fresh["user"])  # the state held something to forget
    _used(runtime, "bob", cids, ids_of(world, [5]))
    bob = runtime.observation("bob", cids)
    erased = _metric(runtime, "recfeed_users_erased_total")

    assert runtime.forget_user("alice") is True
    assert runtime.user_state("alice") is None
    assert runtime.forget_user("alice") is False  # already erased
    assert runtime.forget_user("carol") is False  # never seen
    _assert_fresh(runtime, "alice", cids)
    for key in ("user", "features", "context"):  # other users are untouched
        np.testing.assert_array_equal(runtime.observation("bob", cids)[key], bob[key])
    assert _metric(runtime, "recfeed_users_erased_total") == erased + 1.0
    with pytest.raises(ValueError, match="non-empty"):
        runtime.forget_user("")


def test_forget_user_in_memory_starts_the_user_afresh(onnx_export: Path, small_world: World) -> None:
    runtime = ServingRuntime.load(onnx_export, clock=FakeClock(), time_budget_ms=60_000)
    _forget_round_trip(runtime, small_world)


def test_forget_user_in_redis_starts_the_user_afresh(redis_url: str, onnx_export: Path,
                                                     small_world: World) -> None:
    import redis

    prefix = f"recfeed:test-forget-{uuid.uuid4().hex}:"
    runtime = ServingRuntime.load(onnx_export, store=redis_url, redis_prefix=prefix, clock=FakeClock(),
                                  time_budget_ms=60_000)
    client = redis.Redis.from_url(redis_url)
    try:
        _used(runtime, "x", ids_of(small_world, range(40)), ids_of(small_world, [1]))
        assert client.exists(prefix + "x") and 0 < client.ttl(prefix + "x") <= 30 * 86400  # idle expiry is set
        runtime.forget_user("x")
        assert not client.exists(prefix + "x")
        _forget_round_trip(runtime, small_world)
        # a second runtime on the same Redis (another worker) no longer sees the erased user either
        other = ServingRuntime.load(onnx_export, store=redis_url, redis_prefix=prefix, time_budget_ms=60_000)
        assert other.forget_user("alice") is True  # alice was re-created as new by _assert_fresh's request
        assert runtime.user_state("alice") is None
        other.close()
    finally:
        for key in client.scan_iter(prefix + "*"):
            client.delete(key)
        client.close()
        runtime.close()


# ---- HTTP ------------------------------------------------------------------------------------------------------


@pytest.fixture
def client(onnx_export: Path) -> Iterator:
    from fastapi.testclient import TestClient

    from agents.serving.app import create_app

    runtime = ServingRuntime.load(onnx_export, time_budget_ms=60_000)
    with TestClient(create_app(runtime, api_key="s3cret")) as c:
        c.headers["X-API-Key"] = "s3cret"
        yield c


def test_http_delete_user(client, small_world: World) -> None:
    cids = ids_of(small_world, range(30))
    runtime: ServingRuntime = client.app.state.runtime
    for user in ("w", "team/7"):
        assert client.post("/recommend", json={"user_id": user, "candidate_ids": cids}).status_code == 200
    assert runtime.user_state("w") is not None
    assert client.delete("/users/w", headers={"X-API-Key": ""}).status_code == 401  # the key is required
    assert client.delete("/users/w", headers={"X-API-Key": "wrong"}).json()["error"] == "unauthorized"
    assert runtime.user_state("w") is not None
    r = client.delete("/users/w")
    assert r.status_code == 204 and r.content == b""
    assert runtime.user_state("w") is None
    r = client.delete("/users/w")  # erased already
    assert r.status_code == 404 and r.json()["error"] == "unknown_user" and set(r.json()) == {"error", "detail"}
    assert client.delete("/users/never-seen").status_code == 404
    assert client.delete("/users/team%2F7").status_code == 204  # ids with a slash, percent-encoded
    assert runtime.user_state("team/7") is None
    r = client.delete("/users/" + "u" * 300)
    assert r.status_code == 422 and r.json()["error"] == "invalid_request"
    assert client.delete("/users/").status_code == 422
    r = client.get("/users/w")
    assert r.status_code == 405 and r.headers["allow"] == "DELETE"
    r = client.post("/recommend", json={"user_id": "w", "candidate_ids": cids})
    assert r.status_code == 200 and r.json()["request_id"] == 0  # starts fresh
    text = client.get("/metrics").text
    assert "recfeed_users_erased_total 2.0" in text
    assert 'recfeed_http_requests_total{endpoint="/users/{id}",status="204"} 2.0' in text
    assert 'recfeed_http_requests_total{endpoint="/users/{id}",status="404"} 2.0' in text
    assert "team" not in text and 'endpoint="/users/w"' not in text  # no user id in the metrics


# ---- idle expiry ---------------------------------------------------------------------------------------------------


def _blank() -> UserState:
    return UserState.new(4, 2, 3)


def test_memory_store_expires_idle_users_lazily_and_by_a_bounded_sweep() -> None:
    clock = FakeClock(0.0)
    expired: list[int] = []
    store = MemoryStore(ttl_s=10, clock=clock, sweep_batch=2)
    store.on_expire = expired.append
    for u in "abcde":
        store.transact(u, lambda st: None, _blank)
        clock.t += 1.0  # a at 0, b at 1, ... e at 4
    store.transact("a", lambda st: setattr(st, "t", 7), _blank)  # a written again at 5
    clock.t = 12.5  # b (1) and c (2) are idle for more than 10 s; d (3), e (4) and a (5) are not
    assert store.get("b") is None  # lazily, on a read
    assert store.size() == 4 and store.expired == 1
    store.transact("f", lambda st: None, _blank)  # a write sweeps up to 2 from the oldest end: c only
    assert store.expired == 2 and store.size() == 4 and store.get("c") is None
    got = store.get("a")
    assert got is not None and got.t == 7 and store.get("d") is not None
    clock.t = 100.0
    assert store.transact("d", lambda st: st.t, _blank) == 0  # expired on its own write: starts as new
    assert store.expired == 5 and store.size() == 2  # swept 2 (e, a); f (expired, past the batch) and d left
    assert store.sweep(limit=1) == 1 and store.sweep() == 0  # f; d is fresh
    assert store.delete("x") is False and store.delete("d") is True
    assert store.size() == 0 and store.expired == 6 and sum(expired) == 6
    # an expired user that is asked to be deleted is gone either way, but counted as expired
    store.transact("g", lambda st: None, _blank)
    clock.t += 11
    assert store.delete("g") is False and store.expired == 7 and store.get("g") is None


@pytest.mark.parametrize("ttl", [0, -1.0, math.nan, math.inf, True])
def test_memory_store_rejects_bad_ttls(ttl: float) -> None:
    with pytest.raises(ValueError, match="ttl_s"):
        MemoryStore(ttl_s=ttl)


def test_runtime_forgets_idle_users_and_counts_them(onnx_export: Path, small_world: World) -> None:
    clock = FakeClock()
    runtime = ServingRuntime.load(onnx_export, clock=clock, state_ttl_s=3600, time_budget_ms=60_000)
    cids = ids_of(small_world, range(40))
    _used(runtime, "idle", cids, ids_of(small_world, [2, 9]))
    clock.t += 1800
    _used(runtime, "active", cids, ids_of(small_world, [4]))
    clock.t += 1801  # idle: 3601 s without a write; active: 1801 s
    assert runtime.user_state("active") is not None
    _assert_fresh(runtime, "idle", cids)
    assert _metric(runtime, "recfeed_users_expired_total") == 1.0
    assert _metric(runtime, "recfeed_users_erased_total") == 0.0
    forever = ServingRuntime.load(onnx_export, clock=clock, state_ttl_s=None, time_budget_ms=60_000)
    _used(forever, "u", cids, [])
    clock.t += 10**9
    assert forever.user_state("u") is not None


def test_serve_cli_state_ttl_and_log_key(onnx_export: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    import uvicorn

    from agents.serving.app import main

    apps: list = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: apps.append(app))
    monkeypatch.delenv(LOG_KEY_ENV, raising=False)
    key_file = tmp_path / "log.key"
    key_file.write_text("deployment-key\n")
    assert main([str(onnx_export), "--state-ttl-s", "3600", "--log-key-file", str(key_file)]) == 0
    runtime = apps[-1].state.runtime
    assert runtime.store.ttl_s == 3600.0
    assert runtime.hash_user_id("u1") == UserIdHasher("deployment-key")("u1")
    assert main([str(onnx_export), "--state-ttl-s", "0"]) == 0
    assert apps[-1].state.runtime.store.ttl_s is None and apps[-1].state.runtime.hash_user_id.per_process
    assert main([str(onnx_export)]) == 0
    assert apps[-1].state.runtime.store.ttl_s == 30 * 86400
    key_file.write_text("")
    assert main([str(onnx_export), "--log-key-file", str(key_file)]) == 2
    assert "is empty" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main([str(onnx_export), "--state-ttl-s", "-1"])
    assert exc.value.code == 2 and "argument --state-ttl-s" in capsys.readouterr().err


# ---- user ids in logs ----------------------------------------------------------------------------------------------


def test_user_ids_are_keyed_hashes(monkeypatch: pytest.MonkeyPatch) -> None:
    want = "u:" + hmac.new(b"k1", b"alice", hashlib.sha256).hexdigest()[:16]
    assert UserIdHasher("k1")("alice") == want == UserIdHasher(b"k1")("alice")
    assert UserIdHasher("k2")("alice") != want and UserIdHasher("k1")("alicf") != want
    monkeypatch.setenv(LOG_KEY_ENV, "k1")
    assert UserIdHasher()("alice") == want and not UserIdHasher().per_process
    monkeypatch.delenv(LOG_KEY_ENV)
    a, b = UserIdHasher(), UserIdHasher()
    assert a.per_process and a("alice") == a("alice") != b("alice")  # a random key per process
    with pytest.raises(ValueError, match="empty"):
        UserIdHasher("")
    assert UserIdHasher("k1").path("/users/alice") == "/users/" + want
    assert UserIdHasher("k1").path("/users/al%69ce?x=1") == "/users/" + want + "?x=1"
    assert UserIdHasher("k1").path("/recommend") == "/recommend"


def test_logs_carry_only_hashed_user_ids(onnx_export: Path, caplog: pytest.LogCaptureFixture) -> None:
    from agents.serving.app import create_app

    runtime = ServingRuntime.load(onnx_export, log_key="k1", time_budget_ms=60_000)
    hashed = UserIdHasher("k1")("alice@example.com")
    with caplog.at_level(logging.INFO):
        runtime.forget_user("alice@example.com")
        create_app(runtime)  # installs the access-log filter
        # what uvicorn's access log writes for a DELETE (its record format)
        logging.getLogger("uvicorn.access").info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:5000", "DELETE",
                                                 "/users/alice%40example.com", "1.1", 404)
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert text.count(hashed) == 2, text
    assert "alice" not in text
    flt = install_access_log_filter(UserIdHasher("k1"))
    assert sum(isinstance(f, HashUserPaths) for f in logging.getLogger("uvicorn.access").filters) == 1  # replaced
    logging.getLogger("uvicorn.access").removeFilter(flt)
