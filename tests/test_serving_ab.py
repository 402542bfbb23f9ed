"""A/B arms (issue #17 item 1): arms files, assignment, stochastic slates and their propensities, the serving log,
its report and its use by off-policy evaluation."""

from __future__ import annotations

import itertools
import json
import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import SAFETY_S, ids_of, make_run_dir

from agents.ope.plackett_luce import pl_prefix_log_prob
from agents.serving import Event, ServingRuntime
from agents.serving.ablog import ServeLogWriter, read_ab_logs
from agents.serving.arms import (
    ABRuntime,
    ModelScorer,
    arm_prefix_log_prob,
    assign,
    cumulative_shares,
    load_arms_file,
    parse_arms,
)
from agents.serving.errors import InvalidRequestError, UnknownArmError
from agents.serving.privacy import UserIdHasher
from agents.slate_sampling import rpl_conditionals, rpl_marginals, rpl_prefix_log_prob, rpl_sample, walk_one
from configs.schema import EnvConfig
from envs.world import World

# ---- the slate walk ---------------------------------------------------------------------------------------------


def test_walk_without_repulsion_is_plackett_luce() -> None:
    gen = np.random.default_rng(0)
    logits = gen.normal(size=(6, 9))
    slates = np.stack([gen.permutation(9)[:4] for _ in range(6)])
    np.testing.assert_allclose(rpl_prefix_log_prob(logits, slates, temperature=0.5),
                               pl_prefix_log_prob(logits / 0.5, slates), atol=1e-10)


def test_walk_probabilities_sum_to_one_and_samples_follow_them() -> None:
    gen = np.random.default_rng(1)
    n, k = 5, 3
    logits = gen.normal(size=(1, n))
    groups = np.array([[0, 0, 1, 1, 2]])
    slates = np.array(list(itertools.permutations(range(n), k)))
    rep = np.repeat
    lp = rpl_prefix_log_prob(rep(logits, len(slates), 0), slates, rep(groups, len(slates), 0), 0.7, 1, 0.8)[:, -1]
    p = np.exp(lp)
    assert p.sum() == pytest.approx(1.0, abs=1e-9)
    draws, dlp = rpl_sample(rep(logits, 20000, 0), k, gen, rep(groups, 20000, 0), 0.7, 1, 0.8)
    index = {tuple(s): i for i, s in enumerate(slates.tolist())}
    freq = np.bincount([index[tuple(s)] for s in draws.tolist()], minlength=len(slates)) / 20000
    assert np.abs(freq - p).max() < 0.02  # 20,000 draws: the largest sampling error is about 0.004
    np.testing.assert_allclose(dlp[:50, -1], lp[[index[tuple(s)] for s in draws[:50].tolist()]], atol=1e-12)
    cond = rpl_conditionals(logits, draws[:1], groups, 0.7, 1, 0.8)
    np.testing.assert_allclose(cond.sum(axis=-1), 1.0, atol=1e-12)
    marg = rpl_marginals(logits, k, gen, groups, 0.7, 1, 0.8, n_samples=4000)
    exact = np.zeros((k, n))
    for s, pr in zip(slates, p, strict=True):
        exact[np.arange(k), s] += pr
    assert np.abs(marg[0] - exact).max() < 0.02


def test_compiled_one_request_walk_matches_the_numpy_walk() -> None:
    gen = np.random.default_rng(3)
    n, k = 5, 3
    logits, groups = gen.normal(size=n), np.array([0, 0, 1, 1, 2])
    slates = np.array(list(itertools.permutations(range(n), k)))
    lp = rpl_prefix_log_prob(np.repeat(logits[None], len(slates), 0), slates, np.repeat(groups[None], len(slates), 0),
                             0.7, 1, 0.8)
    index = {tuple(s): i for i, s in enumerate(slates.tolist())}
    draws = [walk_one(logits, k, groups, 0.7, 1, 0.8, gen) for _ in range(20000)]
    for s, pre in draws[:50]:
        np.testing.assert_allclose(pre, lp[index[tuple(s.tolist())]], atol=1e-12)
        np.testing.assert_allclose(walk_one(logits, k, groups, 0.7, 1, 0.8, slate=s)[1], pre, atol=1e-12)
    freq = np.bincount([index[tuple(s.tolist())] for s, _ in draws], minlength=len(slates)) / len(draws)
    assert np.abs(freq - np.exp(lp[:, -1])).max() < 0.02


def test_low_temperature_samples_the_greedy_walk() -> None:
    from agents.slate_mode import greedy_slate

    gen = np.random.default_rng(2)
    logits = gen.normal(size=12).astype(np.float32)
    groups = gen.integers(0, 3, 12)
    s, _ = rpl_sample(logits[None].astype(np.float64), 4, gen, groups[None], 0.5, 2, 1e-4)
    np.testing.assert_array_equal(s[0], greedy_slate(logits, 4, groups, 0.5, 2))


def test_walk_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="temperature"):
        rpl_prefix_log_prob(np.zeros((1, 3)), np.array([[0, 1]]), temperature=0.0)
    with pytest.raises(ValueError, match="repeats"):
        rpl_prefix_log_prob(np.zeros((1, 3)), np.array([[1, 1]]))


# ---- arms files and assignment ----------------------------------------------------------------------------------


def _arms(**over: object) -> list[dict]:
    arms = [{"name": "a", "kind": "blend", "alpha": 0.5, "share": 0.25, "temperature": 0.1},
            {"name": "b", "kind": "diverse", "alpha": 0.7, "share": 0.75, "temperature": 0.2}]
    arms[0].update(over)
    return arms


@pytest.mark.parametrize(("over", "message"), [
    ({"kind": "bandit"}, "unknown arm kind"),
    ({"share": 0.3}, "sum to 1"),
    ({"share": -0.25}, "share must be >= 0"),
    ({"name": "b"}, "duplicate arm name"),
    ({"temperature": -1}, "temperature must be >= 0"),
    ({"alpha": 1.5}, "alpha must be in"),
    ({"colour": "red"}, "unknown key"),
    ({"share": "half"}, "share must be a finite number"),
])
def test_bad_arms_are_refused_naming_the_problem(over: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_arms({"arms": _arms(**over)})


def test_shares_sum_tolerance_and_missing_export(tmp_path: Path) -> None:
    parse_arms(_arms(share=0.25 + 5e-10))  # within 1e-9
    with pytest.raises(ValueError, match="sum to 1"):
        parse_arms(_arms(share=0.25 + 1e-8))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        parse_arms([{"name": "ppo", "export": str(tmp_path / "nope"), "share": 1.0}])
    f = tmp_path / "arms.yaml"
    f.write_text("arms:\n  - {name: x, export: missing-run, share: 1.0}\n")
    with pytest.raises(FileNotFoundError, match="missing-run"):
        load_arms_file(f)
    with pytest.raises(FileNotFoundError):
        load_arms_file(tmp_path / "none.yaml")


def test_assignment_is_stable_across_restarts_and_follows_the_shares() -> None:
    shares = [{"name": n, "kind": "blend", "alpha": 0.5, "share": s, "temperature": 0.1}
              for n, s in (("a", 0.2), ("b", 0.0), ("c", 0.3), ("d", 0.5))]
    cum = cumulative_shares(parse_arms(shares))
    first, again = UserIdHasher("deployment-key"), UserIdHasher("deployment-key")  # a restart: same key
    ids = [f"user-{i}" for i in range(20000)]
    got = np.array([assign(first(u), cum) for u in ids])
    np.testing.assert_array_equal(got, [assign(again(u), cum) for u in ids])
    freq = np.bincount(got, minlength=4) / len(ids)
    assert freq[1] == 0.0  # a share of 0 gets nobody
    np.testing.assert_allclose(freq[[0, 2, 3]], [0.2, 0.3, 0.5], atol=0.02)


# ---- the A/B runtime ----------------------------------------------------------------------------------------------


@pytest.fixture()
def ab_runtime(onnx_export: Path, tmp_path: Path) -> ABRuntime:
    rt = ABRuntime.load(onnx_export, log_key="test-key", time_budget_ms=SAFETY_S * 1000.0)  # no fallback on a busy host
    arms = parse_arms([{"name": "ppo", "export": str(onnx_export), "share": 0.5, "temperature": 1.0},
                       {"name": "blend", "kind": "blend", "share": 0.3, "temperature": 0.1},
                       {"name": "div", "kind": "diverse", "alpha": 0.7, "share": 0.2, "temperature": 0.2}])
    rt.set_arms(arms, log_dir=tmp_path / "logs", seed=0, flush_s=0.5)
    return rt


def _serve(rt: ABRuntime, world: World, users: int = 24, steps: int = 3) -> list:
    ids = ids_of(world, np.arange(20))
    recs = []
    for u in range(users):
        for t in range(steps):
            rec = rt.recommend(f"user-{u}", ids)
            recs.append(rec)
            if (u + t) % 2 == 0:
                assert rt.observe(f"user-{u}", [Event("click", rec.items[1], dwell_s=120.0,
                                                      request_id=rec.request_id),
                                                Event("purchase", rec.items[1])]) == 2
    return recs


def test_logged_propensities_equal_the_offline_recomputation(ab_runtime: ABRuntime, small_world: World,
                                                             onnx_export: Path) -> None:
    recs = _serve(ab_runtime, small_world)
    assert {r.arm for r in recs} == {"ppo", "blend", "div"}
    ab_runtime.close()
    f = read_ab_logs(ab_runtime.writer.dir).frame
    assert len(f) == len(recs)
    np.testing.assert_allclose(f["log_propensity"], [r.log_propensity for r in recs])
    scorers = dict(zip([a.name for a in ab_runtime.arms], ab_runtime.scorers, strict=True))
    scorers["ppo"] = ModelScorer(onnx_export)  # an independent load of the export
    n = len(f)
    obs = {"features": np.stack(f["features"]).reshape(n, 20, int(f["n_features"][0])),
           "context": np.stack(f["context"]), "user": np.stack(f["user_state"]),
           "candidates": np.stack(f["candidates"])}
    groups, slates = np.stack(f["groups"]), np.stack(f["positions"])
    for arm in ab_runtime.arms:
        offline = arm_prefix_log_prob(scorers[arm.name], obs, groups, slates, arm.temperature)
        # a request the model arm answered with the fallback blend (its deadline passed on a busy machine) logs the
        # blend's propensity, which is what served it: compare it with the logged blend logits instead
        fell = ((f["arm"] == arm.name) & (f["source"] == "fallback")).to_numpy()
        np.testing.assert_allclose(np.stack(f[f"lp.{arm.name}"])[~fell], offline[~fell], atol=1e-4)
        if fell.any():
            logged = rpl_prefix_log_prob(np.stack(f["logits"])[fell], slates[fell], groups[fell], 0.0, None,
                                         arm.temperature)
            np.testing.assert_allclose(np.stack(f[f"lp.{arm.name}"])[fell], logged, atol=1e-9)
        served = (f["arm"] == arm.name).to_numpy() & ~fell
        np.testing.assert_allclose(f.loc[served, "log_propensity"], offline[served, -1], atol=1e-4)
    # feedback joined by request id: click 1, purchase 2, dwell 120 s → 1 + 2 + 0.25·2
    clicked = f["click_rank"] >= 0
    assert clicked.sum() == sum(1 for u in range(24) for t in range(3) if (u + t) % 2 == 0)
    np.testing.assert_allclose(f.loc[clicked, "reward"], 3.5)
    assert (f.loc[clicked, "click_rank"] == 1).all() and f.loc[clicked, "purchase"].all()
    assert (f["user"].str.startswith("u:")).all() and not f["user"].str.contains("user-").any()


def test_unknown_arm_in_a_request(ab_runtime: ABRuntime, small_world: World, onnx_export: Path) -> None:
    ids = ids_of(small_world, np.arange(20))
    with pytest.raises(UnknownArmError, match="nope"):
        ab_runtime.recommend("u1", ids, arm="nope")
    assert ab_runtime.recommend("u1", ids, arm="div").arm == "div"
    plain = ServingRuntime.load(onnx_export)
    with pytest.raises(InvalidRequestError, match="no A/B arms"):
        plain.recommend("u1", ids, arm="div")
    ab_runtime.close()


def test_http_arms_errors_metrics_and_flush_on_shutdown(ab_runtime: ABRuntime, small_world: World) -> None:
    from fastapi.testclient import TestClient

    from agents.serving.app import create_app

    ids = ids_of(small_world, np.arange(20))
    with TestClient(create_app(ab_runtime)) as c:
        r = c.post("/recommend", json={"user_id": "ann", "candidate_ids": ids})
        assert r.status_code == 200 and r.json()["arm"] == ab_runtime.arm_of("ann")
        assert np.isfinite(r.json()["log_propensity"])
        r = c.post("/recommend", json={"user_id": "ann", "candidate_ids": ids, "arm": "zzz"})
        assert r.status_code == 422 and r.json()["error"] == "unknown_arm"
        assert c.get("/health").json()["arms"]["div"]["share"] == 0.2
        text = c.get("/metrics").text
        assert 'recfeed_ab_recommend_total{arm="' in text and "recfeed_ab_log_dropped_total" in text
    files = list(ab_runtime.writer.dir.glob("requests-*.parquet"))  # written on shutdown
    assert files and len(read_ab_logs(ab_runtime.writer.dir).frame) == 1


def test_a_full_queue_drops_and_counts_instead_of_blocking(tmp_path: Path) -> None:
    from prometheus_client import CollectorRegistry

    reg = CollectorRegistry()
    w = ServeLogWriter(tmp_path, ["a"], {}, registry=reg, max_rows=1, queue_size=2)
    gate, busy = threading.Event(), threading.Event()
    real = w._flush

    def stalled(kind: str, rows: list) -> None:  # the disk hangs
        busy.set()
        gate.wait(30)
        real(kind, rows)

    w._flush = stalled  # type: ignore[method-assign]
    row = {"ts": 0.0, "user": "u:1", "request_id": 0, "type": "click", "item": 1, "dwell_s": 0.0}
    assert w.log_feedback(row)
    assert busy.wait(30)
    results = [w.log_feedback(row) for _ in range(10)]  # returns at once: 2 queued, the rest dropped
    assert results.count(True) == 2 and results.count(False) == 8
    assert reg.get_sample_value("recfeed_ab_log_dropped_total", {"kind": "feedback"}) == 8
    gate.set()
    w.close()
    assert not w.log_feedback(row)  # after close: dropped, not raised
    assert len(list(tmp_path.glob("feedback-*.parquet"))) == 3


def test_logs_are_readable_by_ope_and_the_report(ab_runtime: ABRuntime, small_world: World, onnx_export: Path,
                                                 tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from agents.ab_report import main as report_main
    from agents.ope import main as ope_main

    _serve(ab_runtime, small_world)
    ab_runtime.close()
    d = str(ab_runtime.writer.dir)
    out = tmp_path / "ope.json"
    assert ope_main(["--logs", d, "--policy", f"run:{onnx_export}@1", "--policy", "arm:div", "--policy",
                     "diverse:0.7:3:0.5:2@0.2", "--estimators", "ips,snips,iips,rips,cascade-dr", "--samples",
                     "32", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    for pol in (f"run:{onnx_export}@1", "arm:div"):
        for e, v in res[pol]["reward"].items():
            assert np.isfinite(v["value"]) and v["n"] == 72, e
    # the diverse target equals the logged arm "div": same estimates
    assert res["arm:div"]["reward"]["ips"]["value"] == pytest.approx(
        res["diverse:0.7:3:0.5:2@0.2"]["reward"]["ips"]["value"], rel=1e-6)
    # the default logging policy is the mixture of the arms (shares 0.5 / 0.3 / 0.2): its log-propensity is
    # log Σ_a share_a·μ_a(s), from the propensities under every arm; "arm" is the serving arm's alone
    from agents.ope.served import served_log

    mix, own = served_log(d), served_log(d, logging="arm")
    frame = read_ab_logs(d).frame
    per_arm = np.stack([np.stack(frame[f"lp.{a}"])[:, -1] for a in ("ppo", "blend", "div")], axis=1)
    np.testing.assert_allclose(mix.logged_prefix[:, -1], np.log(np.exp(per_arm) @ [0.5, 0.3, 0.2]), atol=1e-9)
    np.testing.assert_allclose(own.logged_prefix[:, -1], frame["log_propensity"], atol=1e-9)
    lt = mix.logging_terms(np.random.default_rng(0), 16)
    np.testing.assert_allclose(lt.marginals.sum(axis=-1), 1.0, atol=1e-9)
    with pytest.raises(ValueError, match="mixture"):
        served_log(d, logging="bogus")
    assert ope_main(["--logs", d, "--policy", "blend:0.5@0.1", "--logging", "arm", "--estimators", "ips"]) == 0
    assert ope_main(["--logs", d, "--policy", "arm:nope"]) == 2
    assert ope_main(["--logs", d, "--policy", "blend:0.5@0", "--estimators", "ips"]) == 2
    assert ope_main(["--logs", d, "--policy", "blend:0.5", "--estimators", "pi"]) == 2
    assert report_main(["--logs", d, "--bootstrap", "50"]) == 0
    table = capsys.readouterr().out
    assert "| ppo |" in table and "precision" in table
    assert report_main(["--logs", d, "--reference", "zzz"]) == 2
    assert report_main(["--logs", str(tmp_path / "empty")]) == 2


def test_an_arm_reading_session_sim_is_served_logged_and_valued_offline(onnx_export: Path, small_world: World,
                                                                       tmp_path: Path) -> None:
    """An arm whose policy reads ``session_sim`` (``env.obs_session_sim``) beside one that does not: the runtime
    builds the column because an arm reads it, the log carries it, the logged propensities of both arms equal their
    recomputation from the log, and the off-policy estimators value the arm from the log."""
    from agents.export import export_run
    from agents.ope import main as ope_main

    run = make_run_dir(tmp_path, small_world, steps=64, session_sim=True)
    sess = export_run(run, "onnx", out=tmp_path / "export-session", world=small_world, parity_envs=4, parity_steps=2)
    rt = ABRuntime.load(onnx_export, log_key="test-key", time_budget_ms=SAFETY_S * 1000.0)
    assert "session_sim" not in rt.obs_inputs
    rt.set_arms(parse_arms([{"name": "ppo", "export": str(onnx_export), "share": 0.5, "temperature": 1.0},
                            {"name": "sess", "export": str(sess), "share": 0.5, "temperature": 1.0}]),
                log_dir=tmp_path / "logs", seed=0, flush_s=0.5)
    assert "session_sim" in rt.obs_inputs
    recs = _serve(rt, small_world, users=16)
    assert {r.arm for r in recs} == {"ppo", "sess"}
    rt.close()
    f = read_ab_logs(rt.writer.dir).frame
    n = len(f)
    obs = {"features": np.stack(f["features"]).reshape(n, 20, int(f["n_features"][0])),
           "context": np.stack(f["context"]), "user": np.stack(f["user_state"]),
           "candidates": np.stack(f["candidates"]), "session_sim": np.stack(f["session_sim"])}
    after_click = f["step"].to_numpy() > 0
    assert (np.abs(obs["session_sim"][after_click]).max(axis=1) > 0).any()  # clicked users' later requests
    assert not obs["session_sim"][f["step"].to_numpy() == 0].any()  # nothing clicked yet this session
    groups, slates = np.stack(f["groups"]), np.stack(f["positions"])
    model = (f["source"] == "model").to_numpy()
    for arm, path in (("ppo", onnx_export), ("sess", sess)):
        offline = arm_prefix_log_prob(ModelScorer(path), obs, groups, slates, 1.0)
        np.testing.assert_allclose(np.stack(f[f"lp.{arm}"])[model], offline[model], atol=1e-4)
    with pytest.raises(ValueError, match=r"obs\['session_sim'\]"):  # a log without the column: said, not a KeyError
        ModelScorer(sess).inputs({k: v for k, v in obs.items() if k != "session_sim"})
    out = tmp_path / "ope.json"
    assert ope_main(["--logs", str(rt.writer.dir), "--policy", "arm:sess", "--estimators", "ips,snips",
                     "--json", str(out)]) == 0
    res = json.loads(out.read_text())["arm:sess"]["reward"]
    assert all(np.isfinite(v["value"]) and v["n"] == n for v in res.values())


def test_serve_cli_refuses_bad_arms(tmp_path: Path, onnx_export: Path, monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture) -> None:
    from agents.serving.app import main

    monkeypatch.delenv("RECFEED_LOG_KEY", raising=False)
    good = tmp_path / "arms.json"
    good.write_text(json.dumps({"arms": [{"name": "b", "kind": "blend", "share": 1.0, "temperature": 0.1}]}))
    assert main([str(onnx_export), "--arms", str(good)]) == 2
    assert "needs a log key" in capsys.readouterr().err
    assert main([str(onnx_export), "--ab-log-dir", str(tmp_path / "l")]) == 2
    assert "needs --arms" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"arms": [{"name": "b", "kind": "blend", "share": 0.9, "temperature": 0.1}]}))
    monkeypatch.setenv("RECFEED_LOG_KEY", "k")
    assert main([str(onnx_export), "--arms", str(bad)]) == 2
    assert "sum to 1" in capsys.readouterr().err


# ---- sampled rankers in evaluate.py ("SPEC@T") ----------------------------------------------------------------------


def test_sampled_ranker_specs(small_world: World, small_cfg: EnvConfig, onnx_export: Path) -> None:
    from conftest import make_core

    from agents.registry import RankerContext, check_specs, make_ranker, parse_spec, run_dir_of

    assert parse_spec("fixed-alpha:0.5@0.1") == ("fixed-alpha", "0.5")
    assert run_dir_of("run:/x/y@1") == "/x/y" and run_dir_of("run:/x/y") == "/x/y" and run_dir_of("random") is None
    for bad, msg in (("tuned-alpha@0", "finite number > 0"), ("tuned-alpha@x", "finite number > 0"),
                     ("random@0.5", "can sample"), ("oracle@1", "can sample")):
        with pytest.raises(ValueError, match=msg):
            check_specs([bad])
    core = make_core(small_cfg, small_world, b=16)
    ctx = RankerContext(small_world, small_cfg, core=core, seed=0)
    obs = core.observe()
    cold = make_ranker("fixed-alpha:0.5@0.0001", ctx).act(obs)  # T → 0: the deterministic ranker
    np.testing.assert_array_equal(cold, make_ranker("fixed-alpha:0.5", ctx).act(obs))
    hot = make_ranker("fixed-alpha:0.5@5", ctx).act(obs)
    assert hot.shape == cold.shape and not np.array_equal(hot, cold)
    ranker = make_ranker(f"run:{onnx_export}@1", ctx)
    assert ranker.name == f"run:{onnx_export}@1" and ranker.act(obs).shape == (16, small_cfg.slate_size)


def test_items_added_while_arms_serve_are_ranked_by_every_arm(ab_runtime: ABRuntime, small_world: World) -> None:
    """POST /items under A/B arms: the exported arm scores the new rows too, and their propensities are logged."""
    from agents.serving.catalog import NewItem
    from encoders.hashing import HashingEncoder

    m = small_world.n_items
    new = [NewItem(id=f"fresh-{i}", text=f"a quiet novel about the sea, part {i}", category="scifi", price=9.0)
           for i in range(3)]
    ab_runtime.add_items(new, encoder=HashingEncoder(dim=64))  # the fixture world's encoder
    scorer = ab_runtime.scorers[ab_runtime._index["ppo"]]
    assert isinstance(scorer, ModelScorer) and scorer.items.n_items == m + 3
    cids = [*ids_of(small_world, range(12)), "fresh-0", "fresh-1", "fresh-2"]
    for arm in ("ppo", "blend", "div"):
        rec = ab_runtime.recommend(f"new-items-{arm}", cids, arm=arm)
        assert rec.arm == arm and len(rec.items) == len(set(rec.items)) and set(rec.items) <= set(cids)
        assert np.isfinite(rec.log_propensity)


def test_welch_p_value_handles_constant_arms_without_warnings() -> None:
    import warnings

    from scipy import stats

    from agents.ab_report import welch_p_value

    gen = np.random.default_rng(0)
    noisy = gen.normal(0.5, 0.1, 40)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the precision-loss warning of a constant sample is not passed on
        assert welch_p_value(np.full(5, 2 / 3), np.full(7, 2 / 3)) == 1.0  # degenerate: equal
        assert welch_p_value(np.full(5, 2 / 3), np.full(7, 0.5)) == 0.0  # degenerate: different
        one_constant = welch_p_value(np.full(6, 2 / 3), noisy)
    assert one_constant is not None and 0.0 <= one_constant < 1e-3  # 0.667 against a mean of 0.5 ± 0.1
    both = welch_p_value(noisy[:20], noisy[20:])
    assert both == pytest.approx(stats.ttest_ind(noisy[:20], noisy[20:], equal_var=False).pvalue)
