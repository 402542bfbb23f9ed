"""evaluate.py end to end: a smoke run on the small preset with the hashing encoder, and bad input."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

import evaluate
from agents.report import read_returns
from agents.tuning import TUNE_SEED


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """``--set`` overrides that keep the world and embedding caches inside the test's temp folder."""
    d = tmp_path_factory.mktemp("cache")
    return ["--set", f"env.cache_dir={d}", "--set", f"encoder.cache_dir={d}"]


def _args(out: Path, cache: list[str], *extra: str) -> list[str]:
    return ["--preset", "small", "--encoder", "hashing", "--episodes", "24", "--seeds", "2", "--tune-episodes", "16",
            "--fit-sessions", "16", "--no-progress", "--out", str(out), *cache, *extra]


def test_smoke_run_writes_a_parsable_report(tmp_path: Path, cache: list[str], capsys: pytest.CaptureFixture) -> None:
    rankers = "random,popular,greedy-llm,tuned-alpha,scored,linucb,oracle"
    out = tmp_path / "report"
    evaluate.main(_args(out, cache, "--rankers", rankers, "--set", "eval.bootstrap=200"))
    results = json.loads((out / "results.json").read_text())
    assert list(results["rankers"]) == rankers.split(",")
    for row in results["rankers"].values():
        lo, hi = row["return"]["ci95"]
        assert lo <= row["return"]["mean"] <= hi
    assert results["paired"]["reference"] == "tuned-alpha"
    assert results["setup"]["users"] == "heldout" and results["setup"]["episodes"] == 48
    assert results["alpha_curve"]["population"] == "train"
    assert results["hidden_state"] == ["oracle"]
    with (out / "results.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert {r["ranker"] for r in rows} == set(rankers.split(","))
    for name in ("metrics", "alpha_curve", "by_rho"):
        assert (out / "plots" / f"{name}.png").stat().st_size > 1000
    keys, rets = read_returns(out / "returns.npz")
    assert len(np.unique(keys)) == 48 and list(rets) == rankers.split(",")
    for name, ret in rets.items():  # the per-session returns are the ones the table averages
        assert ret.mean() == pytest.approx(results["rankers"][name]["return"]["mean"], rel=1e-9)
    printed = capsys.readouterr().out
    assert "| ranker | return |" in printed and printed.count("\n|") >= 8


def test_first_seed_plays_the_sessions_after_the_first_seeds(tmp_path: Path, cache: list[str]) -> None:
    # a fresh draw of held-out sessions: seeds 1..2 are the last two seeds' sessions of an evaluation over 0..2,
    # returns included, and none of them is a session of seed 0's
    args = ["--rankers", "greedy-llm,diverse:0.5", "--set", "eval.bootstrap=200"]
    whole = evaluate.main(_args(tmp_path / "whole", cache, *args, "--seeds", "3"))
    later = evaluate.main(_args(tmp_path / "later", cache, *args, "--first-seed", "1"))
    assert whole["setup"]["seeds"] == [0, 1, 2] and later["setup"]["seeds"] == [1, 2]
    keys3, rets3 = read_returns(tmp_path / "whole" / "returns.npz")
    keys2, rets2 = read_returns(tmp_path / "later" / "returns.npz")
    assert np.array_equal(keys2, keys3[24:]) and not np.isin(keys2, keys3[:24]).any()
    for name in rets2:
        np.testing.assert_array_equal(rets2[name], rets3[name][24:])
    with np.load(tmp_path / "later" / "returns.npz") as data:
        assert set(data["seeds"].tolist()) == {1, 2}


def test_yaml_config_and_determinism(tmp_path: Path, cache: list[str]) -> None:
    cfg = tmp_path / "eval.yaml"
    cfg.write_text("eval:\n  rankers: [random, greedy-cf, strategy-alpha:0.5]\n  reference: greedy-cf\n"
                   "  bootstrap: 200\n  users: train\n", encoding="utf-8")
    a = evaluate.main(["--config", str(cfg), *_args(tmp_path / "a", cache)])
    b = evaluate.main(["--config", str(cfg), *_args(tmp_path / "b", cache)])
    assert a["setup"]["users"] == "train" and a["paired"]["reference"] == "greedy-cf"
    assert a["rankers"] == b["rankers"] and a["paired"] == b["paired"]


def test_tune_seed_picks_the_tuning_sessions_and_the_cache_serves_them(tmp_path: Path, cache: list[str]) -> None:
    args = ["--rankers", "random,tuned-alpha", "--set", "eval.bootstrap=200"]
    a = evaluate.main([*_args(tmp_path / "a", cache), *args, "--tune-seed", "3"])
    assert a["setup"]["tune_seed"] == 3 and a["alpha_curve"]["seed"] == 3 + TUNE_SEED
    cached = sorted((Path(cache[1].split("=", 1)[1]) / "worlds" / "tuning").glob("alpha-*.json"))
    assert cached, "the α curve was not written to the tuning cache"
    stamp = {p: p.stat().st_mtime_ns for p in cached}
    b = evaluate.main([*_args(tmp_path / "b", cache), *args, "--tune-seed", "3"])
    assert b["alpha_curve"] == a["alpha_curve"] and b["rankers"] == a["rankers"]
    assert {p: p.stat().st_mtime_ns for p in cached} == stamp  # read back, not searched and written again
    c = evaluate.main([*_args(tmp_path / "c", cache), *args])
    assert c["setup"]["tune_seed"] == 0 and c["alpha_curve"]["seed"] == TUNE_SEED


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--rankers", "random,bogus"], "unknown ranker 'bogus'; valid choices: random, popular"),
        (["--rankers", "random,run:/no/such/run-dir"], "/no/such/run-dir"),
        (["--rankers", "random", "--reference", "oracle"], "'oracle' is not among the rankers"),
        (["--rankers", "random", "--set", "eval.bogus=1"], "unknown key(s) ['bogus']"),
        (["--rankers", "random", "--set", "env.slate_size=ten"], "env.slate_size"),
        (["--rankers", "random", "--preset", "nope"], "unknown preset 'nope'"),
        (["--rankers", "random", "--config", "/no/such.yaml"], "does not exist"),
        (["--rankers", "random", "--episodes", "0"], "eval.episodes"),
        (["--rankers", "random", "--tune-seed", "-1"], "--tune-seed must be >= 0, got -1"),
    ],
)
def test_bad_input_is_a_clear_error(tmp_path: Path, cache: list[str], capsys: pytest.CaptureFixture,
                                    extra: list[str], message: str) -> None:
    out = tmp_path / "never"
    with pytest.raises(SystemExit) as exc:
        evaluate.main(_args(out, cache, *extra))
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_shipped_config_matches_the_documented_command() -> None:
    """configs/eval_baselines.yaml resolves to the BENCHMARKS.md command (no run: only the config)."""
    from_file, _ = evaluate.resolve_config(evaluate.build_parser().parse_args(
        ["--config", str(Path(evaluate.__file__).parent / "configs" / "eval_baselines.yaml")]))
    from_flags, _ = evaluate.resolve_config(evaluate.build_parser().parse_args(
        ["--rankers", "random,popular,greedy-llm,greedy-cf,fixed-alpha:0.5,scored,tuned-alpha,online-alpha:0.5,"
         "strategy-alpha:0.5,linucb,diverse:0.9,tuned-diverse,session-diverse,oracle,tuned-oracle-diverse",
         "--episodes", "1000", "--seeds", "2", "--users", "heldout", "--out", "reports/baselines"]))
    assert from_file.eval == from_flags.eval and from_file.env == from_flags.env


def test_bad_paths_fail_before_any_work(tmp_path: Path, cache: list[str], capsys: pytest.CaptureFixture,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """--out that is a file, a config that is a folder or not UTF-8: one line, exit 2, nothing built or evaluated.

    Regression: ``--out FILE`` used to fail in write_report, after the whole evaluation.
    """
    def no_world(*args: object, **kwargs: object) -> None:
        raise AssertionError("the world was loaded despite bad input")

    monkeypatch.setattr(evaluate, "load_world", no_world)
    afile = tmp_path / "afile"
    afile.write_text("keep me", encoding="utf-8")
    latin = tmp_path / "latin1.yaml"
    latin.write_bytes(b"eval:\n  out: caf\xe9\n")
    cases = [
        (["--out", str(afile)], f"--out '{afile}': '{afile}' is a file, not a folder"),
        (["--out", str(afile / "sub")], f"'{afile}' is a file, not a folder"),
        (["--set", f"eval.out={afile}"], f"eval.out '{afile}': '{afile}' is a file, not a folder"),
        (["--config", str(tmp_path)], "is a folder, not a YAML file"),
        (["--config", str(latin)], "is not UTF-8 text (byte 0xe9"),
        (["--set", "env.slate_size=0"], "env.slate_size: must be >= 1, got 0"),
        (["--set", "env.slate_size=21"], "env.slate_size: must be <= n_candidates (20), got 21"),
        (["--set", "eval.bootstrap=5"], "eval.bootstrap: use at least 100 resamples, got 5"),
    ]
    base = ["--preset", "small", "--encoder", "hashing", "--rankers", "random", "--no-progress", *cache]
    for argv, message in cases:
        out = [] if any(a.startswith(("--out", "eval.out")) for a in argv) else ["--out", str(tmp_path / "never")]
        with pytest.raises(SystemExit) as exc:
            evaluate.main([*base, *out, *argv])
        assert exc.value.code == 2
        err = capsys.readouterr().err
        last = err.strip().splitlines()[-1]
        assert last.startswith("evaluate.py: error: ") and message in last, (argv, err)
    assert afile.read_text(encoding="utf-8") == "keep me"
    assert not (tmp_path / "never").exists()


@pytest.mark.parametrize("users", ["heldout", "train"])
def test_evaluation_simulates_the_named_population(tmp_path: Path, cache: list[str], users: str) -> None:
    """The sessions evaluate.py reports are the named population's: recomputed on that population's core, the
    numbers agree exactly, and the hidden ρ_u breakdown counts that population's users."""
    from agents.evaluation import RHO_EDGES, RHO_LABELS, episode_plan, run_episodes
    from agents.rankers import BlendRanker
    from envs.core import BatchedCore
    from envs.presets import load_world

    argv = _args(tmp_path / "out", cache, "--rankers", "greedy-llm,random", "--users", users, "--set",
                 "eval.bootstrap=100", "--reference", "random")
    results = evaluate.main(argv)
    cfg, _ = evaluate.resolve_config(evaluate.build_parser().parse_args(argv))
    world = load_world(cfg.env, cfg.encoder, progress=False)
    expected = {}
    for pop in ("heldout", "train"):
        plan = episode_plan(24, [0, 1], world.populations[pop].size)
        st = run_episodes(BatchedCore(world, cfg.env, 7, population=pop), BlendRanker(cfg.env.slate_size, 1.0), plan)
        rho = world.populations[pop].rho[plan.users]
        bucket = np.clip(np.digitize(rho, RHO_EDGES[1:-1]), 0, len(RHO_LABELS) - 1)
        expected[pop] = (float(st.ret.mean()), {RHO_LABELS[i]: int((bucket == i).sum()) for i in np.unique(bucket)})
    assert expected["heldout"] != expected["train"]  # the test can tell the populations apart
    assert results["setup"]["users"] == users
    assert results["rankers"]["greedy-llm"]["return"]["mean"] == pytest.approx(expected[users][0], rel=1e-12)
    counts = {label: row["n"] for label, row in results["by_rho"]["results"]["greedy-llm"].items()}
    assert counts == expected[users][1]


def test_sampled_rankers_at_a_temperature(tmp_path: Path, cache: list[str]) -> None:
    """``SPEC@T`` (the A/B arms' stochastic policies) evaluate like any ranker; a near-zero T is the ranker itself."""
    rankers = "fixed-alpha:0.5,fixed-alpha:0.5@0.00001,fixed-alpha:0.5@2"
    res = evaluate.main(_args(tmp_path / "r", cache, "--rankers", rankers, "--reference", "fixed-alpha:0.5",
                              "--set", "eval.bootstrap=100"))
    assert list(res["rankers"]) == rankers.split(",")
    cold = res["paired"]["results"]["fixed-alpha:0.5@0.00001"]["return"]
    assert cold["diff"] == pytest.approx(0.0, abs=1e-12)  # same slates on the same sessions
    assert res["rankers"]["fixed-alpha:0.5@2"]["return"]["mean"] != res["rankers"]["fixed-alpha:0.5"]["return"]["mean"]
