"""New items while serving (issue #17, item 4): ``ServingRuntime.add_items`` and ``POST /items``."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import SAFETY_S, ids_of

from agents.serving import Event, ServingRuntime
from agents.serving.catalog import DuplicateItemsError, EncoderMismatchError, NewItem
from agents.serving.errors import InvalidRequestError
from encoders.hashing import HashingEncoder
from envs.spaces import F_CF, F_LLM, F_POP, F_PRICE
from envs.world import World

ENC = HashingEncoder(dim=64)  # the fixture world's encoder


def _new(i: int, **kw) -> NewItem:
    base = {"id": f"fresh-{i}", "text": f"a thoughtful science fiction novel about time travel, volume {i}",
            "category": "scifi", "price": 12.0}
    return NewItem(**{**base, **kw})


@pytest.fixture
def runtime(onnx_export: Path) -> ServingRuntime:
    rt = ServingRuntime.load(onnx_export, time_budget_ms=5000)
    rt.encoder = ENC
    return rt


def test_added_items_are_cold_and_rankable(runtime: ServingRuntime, small_world: World) -> None:
    m = small_world.n_items
    assert runtime.add_items([_new(0), _new(1, category="cooking", price=10_000.0)]) == ["fresh-0", "fresh-1"]
    it = runtime.items
    assert it.n_items == m + 2 and it.is_new is not None and it.is_new[-2:].all() and not it.is_new[:m].any()
    assert not it.factors[-2:].any()
    np.testing.assert_allclose(it.emb[-2:], ENC.encode([_new(0).text, _new(1).text]), atol=1e-6)
    assert it.category_names[it.category[-1]] == "cooking"
    # price scaled as the world's (log1p / log1p(max)), held at 1 above the catalog's maximum; popularity 0
    scale = np.log1p(small_world.catalog.price.max())
    np.testing.assert_allclose(it.features[-2:], [[0.0, np.log1p(12.0) / scale], [0.0, 1.0]], rtol=1e-5)
    # a user with history and a CF factor: the new items' features are the simulator's rule for zero factors
    p = small_world.populations["train"].cf_user[0]
    runtime.set_user("u", history=ids_of(small_world, [1, 2, 3]), cf_factor=p)
    cids = [*ids_of(small_world, range(20)), "fresh-0", "fresh-1"]
    o = runtime.observation("u", cids)
    q = np.concatenate([small_world.item_factors, np.zeros((2, small_world.item_factors.shape[1]))]).astype(float)
    s = q @ p.astype(float)
    z = (s - s.mean()) / s.std()  # standardised over the extended catalog, zero rows included
    np.testing.assert_allclose(o["features"][:, F_CF], z[[*range(20), m, m + 1]], atol=1e-4)
    assert o["features"][-1, F_POP] == 0 and o["features"][-2, F_LLM] != 0
    np.testing.assert_allclose(o["features"][-2:, F_PRICE], it.features[-2:, 1])
    rec = runtime.recommend("u", cids, k=22)
    assert {"fresh-0", "fresh-1"} <= set(rec.items)
    # feedback on a new item works and folds it in (its factor is 0: the CF factor does not move)
    assert runtime.observe("u", [Event("click", "fresh-0", dwell_s=10.0, request_id=rec.request_id)]) == 1


def test_add_items_rejects_bad_input_and_changes_nothing(runtime: ServingRuntime, small_world: World) -> None:
    m = runtime.items.n_items
    with pytest.raises(DuplicateItemsError, match="repeated in the request") as e:
        runtime.add_items([_new(0), _new(0)])
    assert e.value.duplicates == ["fresh-0"]
    with pytest.raises(DuplicateItemsError, match="already in the catalog"):
        runtime.add_items([_new(0, id=small_world.catalog.ids[5])])
    with pytest.raises(InvalidRequestError, match="empty text"):
        runtime.add_items([_new(0, text="   ")])
    with pytest.raises(InvalidRequestError, match="unknown category 'poetry'"):
        runtime.add_items([_new(0, category="poetry")])
    for bad in (-1.0, float("nan"), float("inf"), "12", True):
        with pytest.raises(InvalidRequestError, match="price"):
            runtime.add_items([_new(0, price=bad)])
    with pytest.raises(EncoderMismatchError, match="not the run's"):
        runtime.add_items([_new(0)], encoder=HashingEncoder(dim=32))
    with pytest.raises(InvalidRequestError, match="1 to"):
        runtime.add_items([])
    assert runtime.items.n_items == m
    runtime.add_items([_new(0)])
    with pytest.raises(DuplicateItemsError, match="already in the catalog"):  # now it is known
        runtime.add_items([_new(0)])


def test_add_items_while_recommending(runtime: ServingRuntime, small_world: World) -> None:
    cids = ids_of(small_world, range(30))
    errors: list[BaseException] = []
    stop = threading.Event()

    def serve(user: str) -> None:
        try:
            while not stop.is_set():
                rec = runtime.recommend(user, cids, k=5)
                runtime.observe(user, [Event("click", rec.items[0], request_id=rec.request_id)])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=serve, args=(f"t{i}",)) for i in range(3)]
    for t in threads:
        t.start()
    added: list[str] = []
    for batch in range(20):
        added += runtime.add_items([_new(10 * batch + j) for j in range(3)])
    stop.set()
    for t in threads:
        t.join(SAFETY_S)
    assert not errors, errors[:1]
    assert runtime.items.n_items == small_world.n_items + 60 and len(set(added)) == 60
    rec = runtime.recommend("t0", [*cids[:5], *added[-5:]], k=10)
    assert set(added[-5:]) <= set(rec.items)


@pytest.fixture
def client(runtime: ServingRuntime) -> Iterator:
    from fastapi.testclient import TestClient

    from agents.serving.app import create_app

    with TestClient(create_app(runtime, api_key="s3cret", max_body_bytes=1 << 16)) as c:
        c.headers["X-API-Key"] = "s3cret"
        yield c


def _item(i: int, **kw) -> dict:
    return {"id": f"web-{i}", "text": "a cosy farming video game", "category": "videogame", "price": 30, **kw}


def test_http_post_items(client, small_world: World) -> None:
    r = client.post("/items", json={"items": [_item(0), _item(1, price=9.5)]})
    assert r.status_code == 201, r.text
    assert r.json() == {"added": ["web-0", "web-1"], "n_items": small_world.n_items + 2}
    r = client.post("/recommend", json={"user_id": "h", "candidate_ids": ["web-0", "web-1", "item-00001"], "k": 2})
    assert r.status_code == 200 and len(r.json()["items"]) == 2
    cases = [
        ({"items": [_item(2), _item(2)]}, 409, "duplicate_items"),
        ({"items": [_item(0)]}, 409, "duplicate_items"),
        ({"items": [_item(3, text="")]}, 422, "invalid_request"),
        ({"items": [_item(3, category="poetry")]}, 422, "invalid_request"),
        ({"items": [_item(3, price=-1)]}, 422, "invalid_request"),
        ({"items": [_item(3, price="cheap")]}, 422, "invalid_request"),
        ({"items": [_item(3, colour="red")]}, 422, "invalid_request"),
        ({"items": []}, 422, "invalid_request"),
    ]
    for body, status, code in cases:
        r = client.post("/items", json=body)
        assert (r.status_code, r.json()["error"]) == (status, code), (body, r.text)
    r = client.post("/items", content=b"[1, 2", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["error"] == "malformed_json"
    assert client.post("/items", json={"items": [_item(4)]}, headers={"X-API-Key": "wrong"}).status_code == 401
    assert client.get("/items").status_code == 405
    text = client.get("/metrics").text
    assert 'recfeed_http_requests_total{endpoint="/items",status="201"} 1.0' in text
    assert 'recfeed_http_requests_total{endpoint="/items",status="409"} 2.0' in text


def test_http_encoder_mismatch(client, runtime: ServingRuntime) -> None:
    runtime.encoder = HashingEncoder(dim=32)
    r = client.post("/items", json={"items": [_item(0)]})
    assert r.status_code == 409 and r.json()["error"] == "encoder_mismatch"


def test_old_artifact_cannot_take_items(runtime: ServingRuntime) -> None:
    import dataclasses

    from agents.serving.catalog import ItemsUnavailableError

    runtime.items = dataclasses.replace(runtime.items, price=None)
    with pytest.raises(ItemsUnavailableError, match="re-export"):
        runtime.add_items([_new(0)])
