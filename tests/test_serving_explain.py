"""Explanations (issue #17, item 6): ``explain`` on ``recommend`` and ``POST /recommend``.

Each recommended item's score split into the parts the exported graph returns from the same run (LLM, CF,
diversity penalty, learned residual, range clip), α and β; the fallback blend explains itself as its LLM and CF
terms; an artifact exported before the ``parts`` output answers ``explain`` with 409. Fixtures: ``tests/conftest.py``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agents.serving import InvalidRequestError, MemoryStore, ServingRuntime
from agents.serving.errors import ExplanationUnavailableError
from envs.spaces import F_CF, F_LLM
from envs.world import World

PARTS = ["llm", "cf", "diversity", "residual", "clip"]


def ids_of(world: World, rows: Any) -> list[str]:
    return [world.catalog.ids[int(i)] for i in rows]


def _old_artifact(src: Path, dest: Path) -> Path:
    """A copy of an ONNX export as version 2 wrote it: no ``parts`` graph output, no ``score_parts``."""
    import onnx

    from configs.fileio import sha256_file

    shutil.copytree(src, dest)
    model = onnx.load(str(dest / "policy.onnx"))
    keep = [o for o in model.graph.output if o.name != "parts"]
    del model.graph.output[:]
    model.graph.output.extend(keep)
    onnx.save(model, str(dest / "policy.onnx"))
    m = json.loads((dest / "manifest.json").read_text(encoding="utf-8"))
    m["version"], m["outputs"] = 2, ["logits", "alpha", "repulsion"]
    m.pop("score_parts")
    m["sha256"]["policy.onnx"] = sha256_file(dest / "policy.onnx")
    (dest / "manifest.json").write_text(json.dumps(m), encoding="utf-8")
    return dest


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_model_answer_explains_its_scores(fmt: str, run_dir: Path, onnx_export: Path, ts_export: Path,
                                          small_world: World) -> None:
    """Per item the parts sum to the item's score (1e-5) and equal the policy's ``score_parts`` on the request's
    observation (1e-4); α and β are the answer's; asking for the explanation changes neither the slate nor the
    scores."""
    import torch

    from agents.export import load_run

    runtime = ServingRuntime.load(onnx_export if fmt == "onnx" else ts_export, time_budget_ms=5000)
    _, model, _ = load_run(run_dir)
    cids = ids_of(small_world, range(0, 40, 2))  # N = 20, as the policy was trained with
    runtime.set_user("e", history=ids_of(small_world, [3, 5, 7, 11]))
    for step in range(3):
        obs = runtime.observation("e", cids)
        plain = runtime.recommend("e", cids, k=6, record=False)
        rec = runtime.recommend("e", cids, k=6, explain=True)
        assert plain.explanation is None and "explanation" not in plain.to_dict()
        assert (rec.items, rec.source) == (plain.items, "model")
        np.testing.assert_allclose(rec.scores, plain.scores, rtol=0, atol=1e-6)
        ex = rec.to_dict()["explanation"]
        assert ex["alpha"] == rec.alpha and ex["repulsion"] == rec.repulsion and len(ex["items"]) == 6
        with torch.no_grad():
            ref = model.policy.score_parts({k: v[None] for k, v in obs.items() if k in ("user", "candidates",
                                                                                       "features", "context")})
        row = {str(i): r for r, i in enumerate(cids)}
        for item, score, parts in zip(rec.items, rec.scores, ex["items"], strict=True):
            assert list(parts) == [*PARTS, "score"] and parts["score"] == score
            assert sum(parts[p] for p in PARTS) == pytest.approx(score, abs=1e-5)
            for p in PARTS:
                assert parts[p] == pytest.approx(float(ref[p][0, row[item]]), abs=1e-4), (p, step)
        if step == 2:  # the diverse base penalises items already seen this session: they were, twice
            assert any(p["diversity"] < 0 for p in ex["items"])


def test_fallback_answer_explains_itself_as_llm_and_cf(onnx_export: Path, small_world: World) -> None:
    good = ServingRuntime.load(onnx_export)

    class Broken:
        def run(self, inputs: dict, deadline: float) -> tuple[np.ndarray, float, float]:
            raise RuntimeError("weights corrupted")

        def run_explained(self, inputs: dict, deadline: float) -> tuple[np.ndarray, float, float, np.ndarray]:
            raise RuntimeError("weights corrupted")

    for model in (Broken(), None):
        runtime = ServingRuntime(good.manifest, good.items, model, MemoryStore())
        cids = ids_of(small_world, range(40))
        runtime.set_user("f", history=ids_of(small_world, [1, 2, 3]))
        obs = runtime.observation("f", cids)
        rec = runtime.recommend("f", cids, k=5, explain=True)
        assert rec.source == "fallback" and rec.alpha == 0.6
        ex = rec.explanation
        assert ex is not None and (ex["alpha"], ex["repulsion"]) == (0.6, 0.0)
        row = {str(i): r for r, i in enumerate(cids)}
        for item, score, parts in zip(rec.items, rec.scores, ex["items"], strict=True):
            assert list(parts) == ["llm", "cf", "score"]
            f = obs["features"][row[item]]
            assert parts["llm"] == pytest.approx(0.6 * float(f[F_LLM]), abs=1e-6)
            assert parts["cf"] == pytest.approx(0.4 * float(f[F_CF]), abs=1e-6)
            assert parts["llm"] + parts["cf"] == pytest.approx(score, abs=1e-6)


def test_old_artifact_refuses_to_explain_and_changes_nothing(tmp_path: Path, onnx_export: Path,
                                                             small_world: World) -> None:
    runtime = ServingRuntime.load(_old_artifact(onnx_export, tmp_path / "v2"))
    cids = ids_of(small_world, range(30))
    first = runtime.recommend("o", cids, k=3)  # an old artifact still serves
    assert first.source == "model"
    with pytest.raises(ExplanationUnavailableError, match="re-export"):
        runtime.recommend("o", cids, k=3, explain=True)
    assert runtime.user_state("o").n_requests == 1  # refused before any state changed
    # a manifest that names the parts does not help a graph that lacks them
    m = dict(runtime.manifest, score_parts=PARTS)
    assert ServingRuntime(m, runtime.items, runtime.model, MemoryStore()).score_parts is None
    with pytest.raises(InvalidRequestError, match="explain must be true or false"):
        ServingRuntime.load(onnx_export).recommend("o", cids, k=3, explain=1)  # type: ignore[arg-type]


def test_http_explain(tmp_path: Path, onnx_export: Path, small_world: World) -> None:
    from fastapi.testclient import TestClient

    from agents.serving.app import create_app

    cids = ids_of(small_world, range(30))
    body = {"user_id": "h", "candidate_ids": cids, "k": 4}
    with TestClient(create_app(ServingRuntime.load(onnx_export, time_budget_ms=5000), api_key=None)) as c:
        r = c.post("/recommend", json={**body, "explain": True})
        assert r.status_code == 200
        out = r.json()
        assert set(out) == {"items", "scores", "alpha", "repulsion", "source", "request_id", "fallback_reason",
                            "explanation"}
        ex = out["explanation"]
        assert ex["alpha"] == out["alpha"] and ex["repulsion"] == out["repulsion"]
        for score, parts in zip(out["scores"], ex["items"], strict=True):
            assert sum(parts[p] for p in PARTS) == pytest.approx(score, abs=1e-5) and parts["score"] == score
        for flag in ({"explain": False}, {}):
            r = c.post("/recommend", json={**body, **flag})
            assert r.status_code == 200 and "explanation" not in r.json()
        for bad in ("yes", 1, None, "true"):
            r = c.post("/recommend", json={**body, "explain": bad})
            assert (r.status_code, r.json()["error"]) == (422, "invalid_request"), bad
            assert r.json()["detail"][0]["loc"] == ["body", "explain"]
    old = ServingRuntime.load(_old_artifact(onnx_export, tmp_path / "v2"))
    with TestClient(create_app(old, api_key=None)) as c:
        r = c.post("/recommend", json={**body, "explain": True})
        assert (r.status_code, r.json()["error"]) == (409, "explain_unavailable")
        assert "export version 3" in r.json()["detail"]
        assert c.post("/recommend", json=body).status_code == 200
