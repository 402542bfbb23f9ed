"""The quality protocol's aggregation and its re-run rule (bench/quality_protocol.py), on fabricated run folders."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from bench.quality_protocol import aggregate, main, markdown, run_all, train_commands


def _fake_run(root: Path, name: str, returns: dict[str, float], paired_diff: float) -> Path:
    run = root / name
    (run / "report").mkdir(parents=True)
    results = {"rankers": {n: {"return": {"mean": v, "ci95": [v - 1, v + 1]}} for n, v in returns.items()},
               "paired_vs_tuned_diverse": {"diff": paired_diff, "ci95": [paired_diff - 0.1, paired_diff + 0.1],
                                           "p_value": 0.01}}
    (run / "report" / "results.json").write_text(json.dumps(results))
    (run / "report" / "plausibility.json").write_text(json.dumps({"policy_flags": {"ppo": []}}))
    (run / "summary.json").write_text(json.dumps({"total_timesteps": 1000, "learn_seconds": 60.0,
                                                  "alpha_by_user_type": {"a": 0.5, "b": 0.6}}))
    return run


def _returns(ppo: float, diverse: float) -> dict[str, float]:
    return {"ppo": ppo, "tuned-alpha": 4.0, "tuned-diverse": diverse, "oracle": 8.0, "tuned-oracle-diverse": 12.0}


def test_aggregate_ratios_intervals_and_gap(tmp_path: Path) -> None:
    runs = [_fake_run(tmp_path, f"r{i}", _returns(p, d), p - d)
            for i, (p, d) in enumerate([(7.0, 6.0), (7.5, 6.4), (8.0, 6.9)])]
    agg = aggregate(runs)
    ratios = np.array([7.0 / 6.0, 7.5 / 6.4, 8.0 / 6.9])
    assert agg["ratio_vs_tuned_diverse"]["mean"] == pytest.approx(ratios.mean())
    lo, hi = agg["ratio_vs_tuned_diverse"]["ci95"]
    assert lo < ratios.mean() < hi
    assert agg["diff_vs_tuned_diverse"]["per_seed"] == pytest.approx([1.0, 1.1, 1.1])
    assert agg["above_tuned_diverse_intervals_apart"]  # differences 1.0, 1.1, 1.1: the interval is above 0
    assert agg["gap_closed_to_ceiling"]["per_seed"] == pytest.approx([3 / 8, 3.5 / 8, 4 / 8])
    assert agg["ratio_vs_tuned_alpha"]["mean"] == pytest.approx(np.mean([7.0, 7.5, 8.0]) / 4.0)
    md = markdown(agg, "t")
    assert "ratio_vs_tuned_diverse" in md and "**True**" in md
    # a seed below the reference makes the interval of the difference reach below 0
    worse = [*runs[:2], _fake_run(tmp_path, "r3", _returns(5.0, 6.5), -1.5)]
    assert not aggregate(worse)["above_tuned_diverse_intervals_apart"]


def test_finished_runs_are_not_trained_again(tmp_path: Path) -> None:
    done = _fake_run(tmp_path, "p-s0", _returns(7.0, 6.0), 1.0)
    fail = tmp_path / "p-s1"
    status = run_all([(done, ["false"]), (fail, [sys.executable, "-c", "import sys; sys.exit(3)"])], parallel=2)
    assert status["p-s0"] == "finished before"
    assert status["p-s1"].startswith("failed (exit 3")
    # a run's env-kernel threads are --threads (its torch threads are in its command)
    seen = tmp_path / "p-s2"
    write = (f"import os, pathlib; pathlib.Path({str(seen)!r}, 'summary.json')"
             ".write_text(os.environ['RECFEED_ENV_THREADS'])")
    seen.mkdir()
    assert run_all([(seen, [sys.executable, "-c", write])], parallel=1, threads=2)["p-s2"] == "trained"
    assert (seen / "summary.json").read_text() == "2"


def test_aggregate_only_reads_finished_runs_and_rejects_bad_flags(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    for s in (0, 1):
        _fake_run(tmp_path, f"protocol-default-s{s}", _returns(7.0 + s, 6.0), 1.0 + s)
    agg = main(["--seeds", "0,1,2", "--out", str(tmp_path), "--aggregate-only"])
    assert agg["seeds"] == 2  # seed 2 has no run: left out, not invented
    one = main(["--seeds", "0", "--out", str(tmp_path), "--aggregate-only"])
    assert one["above_tuned_diverse_intervals_apart"] is None  # one run: no interval across seeds, no verdict
    assert "across seeds: none (one run)" in (tmp_path / "protocol-default.md").read_text()
    assert (tmp_path / "protocol-default.json").is_file() and (tmp_path / "protocol-default.md").is_file()
    both = main(["--seeds", "0,1", "--out", str(tmp_path), "--aggregate-only", "--table", "both-seeds"])
    assert both["seeds"] == 2 and json.loads((tmp_path / "both-seeds.json").read_text())["seeds"] == 2
    assert json.loads((tmp_path / "protocol-default.json").read_text())["seeds"] == 1  # the earlier table is kept
    with pytest.raises(SystemExit):
        main(["--seeds", "0", "--out", str(tmp_path), "--aggregate-only", "--table", "sub/t"])
    assert "--table is a file stem" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--seeds", "0,0", "--out", str(tmp_path), "--aggregate-only"])
    assert "distinct seeds" in capsys.readouterr().err
    # a bad preset or override is named before any run starts (not in each run's log)
    for bad, says in ((["--preset", "nosuch"], "unknown preset 'nosuch'"),
                      (["--set", "train.ppo.n_steps=-1"], "train.ppo.n_steps: must be >= 1")):
        with pytest.raises(SystemExit):
            main(["--seeds", "0", "--out", str(tmp_path / "bad"), *bad])
        assert says in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_named_runs_of_two_protocols_are_pooled_by_seed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--runs`` aggregates finished runs from any folders (two protocols' seeds of one recipe) into one table
    over all their seeds; it needs ``--table``, and refuses an unfinished run, two runs of one seed and runs of two
    worlds."""
    runs = []
    for proto, seeds in (("a", (0, 1)), ("b", (11,))):
        for s in seeds:
            run = _fake_run(tmp_path / proto, f"{proto}-s{s}", _returns(7.0 + s / 11, 6.0), 1.0 + s / 11)
            (run / "config.yaml").write_text(f"train:\n  seed: {s}\n")
            runs.append(run)
    out = tmp_path / "pooled"
    agg = main(["--runs", *map(str, runs), "--out", str(out), "--table", "six"])
    assert agg["seeds"] == 3 and agg["runs"] == [str(r) for r in runs]
    assert agg["diff_vs_tuned_diverse"]["per_seed"] == pytest.approx([1.0, 1.0 + 1 / 11, 2.0])
    assert json.loads((out / "six.json").read_text())["seeds"] == 3
    assert not (tmp_path / "a" / "six.json").exists()  # written into --out only
    def refused(*argv: str) -> str:
        """The error ``main`` stops with on ``argv``."""
        with pytest.raises(SystemExit):
            main(list(argv))
        return capsys.readouterr().err

    names, table = [str(r) for r in runs], ("--out", str(out), "--table", "t")
    assert "--runs needs --table" in refused("--runs", *names, "--out", str(out))
    twin = _fake_run(tmp_path / "c", "c-s0", _returns(7.0, 6.0), 1.0)
    (twin / "config.yaml").write_text("train:\n  seed: 0\n")
    assert "are both of training seed 0" in refused("--runs", names[0], str(twin), *table)
    assert "(the same run twice)" in refused("--runs", names[0], names[0], *table)
    other = _fake_run(tmp_path / "d", "d-s5", _returns(7.0, 6.0), 1.0)
    (other / "config.yaml").write_text("env:\n  preset: adapt\ntrain:\n  seed: 5\n")
    assert "are of different worlds (preset 'default'" in refused("--runs", names[0], str(other), *table)
    assert "--against-runs names 1 runs for 3 finished runs" in refused("--runs", *names, *table, "--against-runs",
                                                                         names[0])
    assert "give one of them" in refused("--runs", *names, *table, "--against", "x", "--against-runs", "y")
    (runs[1] / "config.yaml").unlink()
    assert "is not a recfeed run directory" in refused("--runs", *names, *table)
    (runs[1] / "summary.json").unlink()
    assert "is not a finished run (no summary.json)" in refused("--runs", *names, *table)


def test_probe_gaps_are_read_per_run_and_aggregated(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """``--probe`` reads each run's ``report/feedback_probe.json`` (a finished probe is not played again) and gives
    the effective-α gap with its interval across seeds, in the JSON and in the table."""
    gaps = [-0.44, -0.36, -0.40]
    for s, g in enumerate(gaps):
        run = _fake_run(tmp_path, f"protocol-adapt-s{s}", _returns(8.0, 6.5), 1.5)
        probe = {"alpha_gap": {"effective_alpha": {"cf_minus_llm": g, "ci95": [g - 0.01, g + 0.01]},
                               "slate_lean": {"cf_minus_llm": -g, "ci95": [-g - 0.1, -g + 0.1]}}}
        (run / "report" / "feedback_probe.json").write_text(json.dumps(probe))
    agg = main(["--preset", "adapt", "--seeds", "0,1,2", "--out", str(tmp_path), "--aggregate-only", "--probe"])
    eff = agg["probe"]["effective_alpha_gap"]
    assert eff["per_seed"] == pytest.approx(gaps)
    assert eff["mean"] == pytest.approx(np.mean(gaps))
    assert eff["ci95"][0] < np.mean(gaps) < eff["ci95"][1] < 0
    assert agg["probe"]["slate_lean_gap"]["per_seed"] == pytest.approx([0.44, 0.36, 0.40])
    assert "probe: effective α gap cf − llm at request 5" in capsys.readouterr().out


def test_adaptation_shares_are_read_per_run_and_aggregated(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """``--adaptation`` reads each run's ``report/adaptation_share.json`` (a finished replay is not run again) and gives
    PPO's share of the value of adaptation per seed, across seeds, pooled, and by hidden user type."""
    margins, values = [0.2, 0.3, 0.1], [0.4, 0.5, 0.4]

    def cell(m: float) -> dict[str, object]:
        return {"mean": m, "ci95": [m - 0.1, m + 0.1]}

    types = ("rho<0.5 (CF-leaning)", "rho>=0.5 (content-leaning)")

    def switch(m: float, v: float) -> dict[str, object]:  # the type switch 0.1 below PPO, half of it on the CF-leaning
        part = {"sessions": 100, "policy_diff": cell(m - 0.1), "value": cell(v), "share": cell((m - 0.1) / v)}
        return {"threshold": 0.8, "return": 8.0 - m, "all": part, "by_user_type": dict.fromkeys(types, part),
                "policy_minus_switch": {"all": cell(0.1), types[0]: cell(0.05), types[1]: cell(0.15)}}

    for s, (m, v) in enumerate(zip(margins, values, strict=True)):
        run = _fake_run(tmp_path, f"protocol-adapt-s{s}", _returns(8.0, 6.5), 1.5)
        part = {"sessions": 100, "policy_diff": cell(m), "value": cell(v), "share": cell(m / v)}
        res = {"all": part, "by_user_type": dict.fromkeys(types, part), "switch": switch(m, v)}
        (run / "report" / "adaptation_share.json").write_text(json.dumps(res))
        (run / "report" / "adaptation_share.switch-returns.npz").write_bytes(b"")  # replayed: not run again
    agg = main(["--preset", "adapt", "--seeds", "0,1,2", "--out", str(tmp_path), "--aggregate-only", "--adaptation"])
    ad = agg["adaptation"]
    assert ad["share"]["per_seed"] == pytest.approx([0.5, 0.6, 0.25])
    assert ad["share"]["mean"] == pytest.approx(np.mean([0.5, 0.6, 0.25]))
    assert ad["pooled_share"] == pytest.approx(np.mean(margins) / np.mean(values))
    assert ad["value"]["ci95"][0] < np.mean(values) < ad["value"]["ci95"][1]
    assert sorted(ad["by_user_type"]) == ["rho<0.5 (CF-leaning)", "rho>=0.5 (content-leaning)"]
    sw = ad["switch"]
    assert sw["threshold"] == [0.8] * 3 and sw["return"] == pytest.approx([7.8, 7.7, 7.9])
    assert sw["share"]["all"]["per_seed"] == pytest.approx([0.25, 0.4, 0.0], abs=1e-12)
    assert sw["policy_minus_switch"]["all"]["mean"] == pytest.approx(0.1)
    assert sw["policy_minus_switch"][types[1]]["per_seed"] == pytest.approx([0.15] * 3)
    out = capsys.readouterr().out
    assert "| PPO's share, pooled (mean margin / mean value) | 0.46 |" in out
    assert "| the type switch (tuned-switch, the same references; thresholds 0.8, 0.8, 0.8)" in out
    assert "| per run, over its sessions: 0.25 (0.15–0.35), 0.40 (0.30–0.50), 0.00 (-0.10–0.10) |" in out
    assert "| PPO − the type switch, users with rho>=0.5 (content-leaning) | +0.150 (" in out
    # the interval over seeds and sessions needs per-session returns, which these runs lack: said, not a traceback
    assert "no per-session returns" in sw["policy_minus_switch_seeds_and_sessions"]["skipped"]
    assert "| PPO − the type switch over seeds and sessions | not measured: no per-session returns" in out
    assert "value of adaptation on these sessions (per-type rule − tuned-diverse), all users" in out
    # one reference for every run: its own files, not the runs' own readings
    for s, m in enumerate(margins):
        part = {"sessions": 100, "policy_diff": cell(m), "value": cell(0.5), "share": cell(m / 0.5)}
        none = {"sessions": 100, "policy_diff": cell(m), "value": cell(0.002), "share": cell(m / 0.002)}
        res = {"all": part, "by_user_type": {types[0]: part, types[1]: none}, "switch": {"skipped": "one type"}}
        (tmp_path / f"protocol-adapt-s{s}" / "report" / "adaptation_share-common-s11-e4000.json").write_text(
            json.dumps(res))
    agg = main(["--preset", "adapt", "--seeds", "0,1,2", "--out", str(tmp_path), "--aggregate-only", "--adaptation",
                "--adaptation-reference", "11"])
    ad = agg["adaptation"]
    assert ad["share"]["per_seed"] == pytest.approx([0.4, 0.6, 0.2])
    assert ad["value"]["ci95"] == pytest.approx([0.5, 0.5])
    assert ad["reference"] == "one for every run (tune seed 11, 4000 sessions per point)"
    assert ad["switch"] == {"skipped": "one type"}
    out = capsys.readouterr().out
    assert "| the type switch (tuned-switch) | not played: one type |" in out
    assert "| references of the value of adaptation (tuned-diverse, the per-type rule) | one for every run" in out
    # one value for every run: its t-interval across runs is a point, so the share is shown only where each run's
    # own interval over its sessions is above 0 (here not for the content-leaning users: 0.002 ± 0.1)
    assert "PPO's share of it, users with rho<0.5 (CF-leaning) (hidden)" in out
    assert "PPO's share of it, users with rho>=0.5" not in out
    # ... while PPO's difference from the reference is shown per seed for every group, the share's or not
    assert ad["by_user_type"]["rho>=0.5 (content-leaning)"]["policy_diff"]["per_seed"] == pytest.approx(margins)
    assert "| PPO − the value's tuned-diverse, users with rho>=0.5 (content-leaning) (hidden) | +0.200 (" in out
    assert out.count("| PPO − the value's tuned-diverse, ") == 3
    assert "| +0.200, +0.300, +0.100 |" in out
    with pytest.raises(SystemExit):
        main(["--preset", "adapt", "--seeds", "0", "--out", str(tmp_path), "--aggregate-only",
              "--adaptation-reference", "11"])
    assert "it needs --adaptation" in capsys.readouterr().err
    # a run without a finished replay and without per-session returns: said in the table, not a traceback
    (tmp_path / "protocol-adapt-s1" / "report" / "adaptation_share.json").unlink()
    (tmp_path / "protocol-adapt-s1" / "config.yaml").write_text("train:\n  seed: 1\n")
    agg = main(["--preset", "adapt", "--seeds", "0,1,2", "--out", str(tmp_path), "--aggregate-only", "--adaptation"])
    assert "returns.npz is missing" in agg["adaptation"]["skipped"]
    assert "| value of adaptation on these sessions | not measured: protocol-adapt-s1:" in capsys.readouterr().out


def test_make_train_mode_runs_train_py_defaults_per_seed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--make-train`` runs ``make train``'s job per seed: no config file, no time limit, only the seed set; the
    15-minute protocol keeps both. Giving it a config or a time limit is an error, not silently ignored."""
    base = {"preset": "default", "seeds": [0, 3], "out": tmp_path, "name": "m", "set": ["eval.batch=64"],
            "config": "configs/quality.yaml", "minutes": 15.0, "steps": None, "threads": 1}
    jobs = train_commands(argparse.Namespace(**base, make_train=True))
    assert [run.name for run, _ in jobs] == ["m-s0", "m-s3"]
    cmd = jobs[1][1]
    assert "--config" not in cmd and not any(c.startswith("train.max_minutes") for c in cmd)
    assert "train.seed=3" in cmd and cmd[-1] == "eval.batch=64"
    timed = train_commands(argparse.Namespace(**base, make_train=False))
    assert "configs/quality.yaml" in timed[0][1] and "train.max_minutes=15" in timed[0][1]
    _fake_run(tmp_path, "make-train-default-s0", _returns(7.8, 7.3), 0.5)
    agg = main(["--make-train", "--seeds", "0,1", "--out", str(tmp_path), "--aggregate-only"])
    assert agg["seeds"] == 1 and (tmp_path / "make-train-default.md").is_file()
    assert "make train's job" in capsys.readouterr().out
    for extra in (["--config", "configs/quality.yaml"], ["--minutes", "5"], ["--steps", "1000"]):
        with pytest.raises(SystemExit):
            main(["--make-train", *extra, "--out", str(tmp_path), "--aggregate-only"])
        assert "neither --config nor --minutes nor --steps" in capsys.readouterr().err


def test_a_step_budget_replaces_the_time_limit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--steps N``: every run gets ``train.total_timesteps=N`` and no time limit (the config's 15 minutes are
    lifted); it does not combine with ``--minutes``, and a budget below 1 is refused by name."""
    base = {"preset": "adapt", "seeds": [1], "out": tmp_path, "name": "s", "set": [], "make_train": False,
            "config": "configs/quality.yaml", "minutes": 15.0, "threads": 2}
    cmd = train_commands(argparse.Namespace(**base, steps=3_400_000))[0][1]
    assert "train.total_timesteps=3400000" in cmd and "train.max_minutes=null" in cmd
    assert "train.max_minutes=15" not in cmd and "configs/quality.yaml" in cmd
    from configs.loader import resolve_config

    overrides = [cmd[i + 1] for i, c in enumerate(cmd) if c == "--set"]
    cfg = resolve_config("configs/quality.yaml", "adapt", overrides)
    assert cfg.train.max_minutes is None and cfg.train.total_timesteps == 3_400_000
    assert cfg.train.torch_threads == 2  # --threads 2 wins over the config's one thread
    for bad, why in ((["--steps", "1000", "--minutes", "5"], "not with it"), (["--steps", "0"], ">= 1 steps")):
        with pytest.raises(SystemExit):
            main([*bad, "--out", str(tmp_path), "--aggregate-only"])
        assert why in capsys.readouterr().err


def test_interval_over_seeds_and_sessions_covers_what_either_one_alone_misses() -> None:
    """Crossed seed × session tables. With a large shared session effect the across-seed t-interval (the sessions
    held fixed) misses the population mean far more often than 5%; with a large seed effect the interval over the
    sessions of the seed-averaged values does; the interval over both covers it ~95% of the time in either case
    and in neither is it much wider than it needs to be."""
    from bench.ppo_seeds import t_interval
    from bench.quality_protocol import seeds_and_sessions_interval

    rng = np.random.default_rng(0)
    s, e, reps, mu = 5, 200, 400, 1.0
    for sd_seed, sd_session in ((0.05, 2.0), (0.6, 0.2)):
        cover = {"both": 0, "seeds": 0, "sessions": 0}
        width = []
        for _ in range(reps):
            x = (mu + rng.normal(0, sd_seed, (s, 1)) + rng.normal(0, sd_session, (1, e))
                 + rng.normal(0, 0.5, (s, e)))
            got = seeds_and_sessions_interval(x)
            for name, (lo, hi) in (("both", got["ci95"]), ("seeds", t_interval(x.mean(axis=1))),
                                   ("sessions", t_interval(x.mean(axis=0)))):
                cover[name] += lo <= mu <= hi
            width.append(got["ci95"][1] - got["ci95"][0])
        assert 0.92 <= cover["both"] / reps <= 0.99, (sd_seed, sd_session, cover)
        assert min(cover["seeds"], cover["sessions"]) / reps < 0.7, (sd_seed, sd_session, cover)
        var = sd_seed ** 2 / s + sd_session ** 2 / e + 0.25 / (s * e)  # the mean's true variance
        assert np.median(width) < 2 * 2.8 * np.sqrt(var)  # t(4) at most: never a blanket widening


def _with_returns(run: Path, keys: np.ndarray, ppo: np.ndarray, diverse: np.ndarray) -> None:
    from agents.evaluation import EpisodePlan
    from agents.report import write_returns

    stats = {n: argparse.Namespace(ret=r) for n, r in (("ppo", ppo), ("tuned-diverse", diverse))}
    plan = EpisodePlan(keys=keys, users=np.arange(len(keys)), seeds=np.zeros(len(keys), np.int64))
    write_returns(stats, plan, run / "report" / "returns.npz")  # type: ignore[arg-type]


def test_per_session_returns_give_the_pooled_row_or_say_why_not(tmp_path: Path) -> None:
    """With every run's per-session returns on the same sessions, the aggregate carries the difference and ratio over
    seeds and sessions (the session means' PPO − tuned-diverse, and the ratio of the grand means); a run without the
    file, or one that met other sessions, gives a reason instead of a figure."""
    from agents.report import read_returns

    rng = np.random.default_rng(1)
    keys = np.arange(50, dtype=np.uint64)
    runs, ppo_all, div_all = [], [], []
    for i in range(3):
        div = rng.gamma(2.0, 3.0, 50)
        ppo = div + 0.5 + rng.normal(0, 0.2, 50)
        run = _fake_run(tmp_path, f"p{i}", _returns(float(ppo.mean()), float(div.mean())), 0.5)
        _with_returns(run, keys, ppo, div)
        runs.append(run)
        ppo_all.append(ppo)
        div_all.append(div)
    got_keys, rets = read_returns(runs[0] / "report" / "returns.npz")
    np.testing.assert_array_equal(got_keys, keys)
    np.testing.assert_array_equal(rets["ppo"], ppo_all[0])
    pooled = aggregate(runs)["vs_tuned_diverse_seeds_and_sessions"]
    diff = np.stack(ppo_all) - np.stack(div_all)
    assert pooled["diff"]["mean"] == pytest.approx(diff.mean())
    assert pooled["diff"]["ci95"][0] < diff.mean() < pooled["diff"]["ci95"][1]
    assert pooled["ratio"]["mean"] == pytest.approx(np.mean(ppo_all) / np.mean(div_all))
    agg = aggregate(runs)
    assert agg["above_tuned_diverse_seeds_and_sessions"]  # +0.5 with per-session noise 0.2: clear of 0
    md = markdown(agg, "t")
    assert "over seeds **and** the 50 sessions" in md and "over seeds and sessions **True** (+0." in md
    _with_returns(runs[2], keys + 1, ppo_all[2], div_all[2])
    assert "different held-out sessions" in aggregate(runs)["vs_tuned_diverse_seeds_and_sessions"]["skipped"]
    (runs[2] / "report" / "returns.npz").write_bytes(b"not an npz")
    assert "unreadable per-session returns" in aggregate(runs)["vs_tuned_diverse_seeds_and_sessions"]["skipped"]
    (runs[2] / "report" / "returns.npz").unlink()
    skipped = aggregate(runs)["vs_tuned_diverse_seeds_and_sessions"]["skipped"]
    assert "no per-session returns" in skipped and "p2" in skipped
    assert "No interval over seeds and sessions" in markdown(aggregate(runs), "t")
    assert "above_tuned_diverse_seeds_and_sessions" not in aggregate(runs)  # no verdict without the interval


def test_extra_references_and_each_runs_strongest_ranker_get_their_own_rows(tmp_path: Path) -> None:
    """A run's eval.extra_references and its strongest hand-written ranker on its held-out sessions are compared
    with PPO like tuned-diverse: per seed, across seeds, and over seeds and sessions from the per-session returns,
    each run against its own strongest ranker."""
    from agents.evaluation import EpisodePlan
    from agents.report import write_returns

    rng = np.random.default_rng(3)
    keys = np.arange(40, dtype=np.uint64)
    runs, gaps = [], []
    # seed 0: the extra reference is the strongest; seed 1 and 2: tuned-diverse is
    for i, (ppo_m, div_m, rule_m) in enumerate([(8.0, 7.0, 7.9), (8.2, 7.6, 7.1), (8.1, 7.5, 7.0)]):
        rets = {n: m + rng.normal(0, 0.3, 40) for n, m in (("ppo", ppo_m), ("tuned-diverse", div_m),
                                                           ("tuned-session-diverse", rule_m))}
        means = {n: float(v.mean()) for n, v in rets.items()}
        run = _fake_run(tmp_path, f"x{i}", {**_returns(means["ppo"], means["tuned-diverse"]),
                                            "tuned-session-diverse": means["tuned-session-diverse"]}, 0.0)
        best = max(("tuned-diverse", "tuned-session-diverse"), key=means.__getitem__)
        results = json.loads((run / "report" / "results.json").read_text())
        results["extra_references"] = ["tuned-session-diverse"]
        results["best_hand_written_heldout"] = {"name": best, "return": means[best]}
        (run / "report" / "results.json").write_text(json.dumps(results))
        stats = {n: argparse.Namespace(ret=v) for n, v in rets.items()}
        plan = EpisodePlan(keys=keys, users=np.arange(40), seeds=np.zeros(40, np.int64))
        write_returns(stats, plan, run / "report" / "returns.npz")  # type: ignore[arg-type]
        runs.append(run)
        gaps.append(rets["ppo"] - rets[best])
    agg = aggregate(runs)
    rule = agg["vs_references"]["tuned-session-diverse"]
    assert rule["diff"]["per_seed"] == pytest.approx(
        [agg["return"]["ppo"]["per_seed"][i] - agg["return"]["tuned-session-diverse"]["per_seed"][i]
         for i in range(3)])
    strongest = agg["vs_references"]["strongest hand-written per run"]
    assert strongest["names"] == ["tuned-session-diverse", "tuned-diverse", "tuned-diverse"]
    # the pooled row reads each run's own strongest ranker's per-session returns
    assert strongest["seeds_and_sessions"]["diff"]["mean"] == pytest.approx(np.mean(gaps))
    assert strongest["diff"]["mean"] == pytest.approx(np.mean(gaps))
    md = markdown(agg, "t")
    assert "| PPO − tuned-session-diverse |" in md
    assert "strongest hand-written per run (tuned-session-diverse, tuned-diverse, tuned-diverse)" in md
    assert "Above tuned-session-diverse: across seeds **" in md
    # runs from before extra_references was recorded: no such rows, and nothing else changes
    for run in runs:
        results = json.loads((run / "report" / "results.json").read_text())
        del results["extra_references"], results["best_hand_written_heldout"]
        (run / "report" / "results.json").write_text(json.dumps(results))
    old = aggregate(runs)
    assert "vs_references" not in old
    assert old["diff_vs_tuned_diverse"] == agg["diff_vs_tuned_diverse"]


def test_runs_that_chose_an_earlier_iterate_get_a_row_against_their_last_iterate(tmp_path: Path) -> None:
    """A run whose saved policy is not its last iterate reports ``ppo-last``; a run that kept its last iterate has no
    such row and counts as a difference of 0 (its ``ppo`` is its last iterate), per seed and per session."""
    from agents.evaluation import EpisodePlan
    from agents.report import write_returns

    rng = np.random.default_rng(5)
    keys = np.arange(30, dtype=np.uint64)
    runs, diffs = [], []
    for i, chose in enumerate([True, False, True]):
        rets = {"ppo": 8.0 + rng.normal(0, 0.5, 30), "tuned-diverse": 7.0 + rng.normal(0, 0.5, 30)}
        if chose:
            rets["ppo-last"] = rets["ppo"] - 0.3 + rng.normal(0, 0.1, 30)
        means = {n: float(v.mean()) for n, v in rets.items()}
        run = _fake_run(tmp_path, f"c{i}", {**_returns(means["ppo"], means["tuned-diverse"]),
                                            **({"ppo-last": means["ppo-last"]} if chose else {})}, 1.0)
        summary = json.loads((run / "summary.json").read_text())
        summary["selected_iterate"] = {"best_step": 400 + i} if chose else {"best_step": 1000}
        (run / "summary.json").write_text(json.dumps(summary))
        plan = EpisodePlan(keys=keys, users=np.arange(30), seeds=np.zeros(30, np.int64))
        write_returns({n: argparse.Namespace(ret=v) for n, v in rets.items()}, plan,  # type: ignore[misc]
                      run / "report" / "returns.npz")
        runs.append(run)
        diffs.append(rets["ppo"] - rets.get("ppo-last", rets["ppo"]))
    agg = aggregate(runs)
    v = agg["vs_last_iterate"]
    assert v["names"] == ["ppo-last", "ppo", "ppo-last"]
    assert v["diff"]["per_seed"] == pytest.approx([float(d.mean()) for d in diffs])
    assert v["diff"]["per_seed"][1] == 0.0
    assert v["seeds_and_sessions"]["diff"]["mean"] == pytest.approx(np.mean(diffs))
    md = markdown(agg, "t")
    assert "| PPO − its last iterate (the saved policy's choice; step chosen per run: 400, 1,000, 402) |" in md
    # runs that all kept their last iterate: no such row
    for run in runs:
        results = json.loads((run / "report" / "results.json").read_text())
        results["rankers"].pop("ppo-last", None)
        (run / "report" / "results.json").write_text(json.dumps(results))
    assert "vs_last_iterate" not in aggregate(runs)


def test_the_margin_is_split_by_hidden_user_type(tmp_path: Path) -> None:
    """Sessions of users below ρ 0.5 get PPO − tuned-diverse ≈ 0, the others +1: each group's row says so, with the
    group's own interval; runs that met other sessions are refused, one run gives no rows."""
    from bench.quality_protocol import by_user_type

    rng = np.random.default_rng(3)
    keys = np.arange(40, dtype=np.uint64)
    rho = np.where(np.arange(40) % 4 == 0, 0.1, 0.9)  # a quarter of the users lean to the crowd
    runs = []
    for i in range(3):
        div = rng.gamma(2.0, 3.0, 40)
        ppo = div + np.where(rho < 0.5, 0.0, 1.0) + rng.normal(0, 0.1, 40)
        run = _fake_run(tmp_path, f"t{i}", _returns(float(ppo.mean()), float(div.mean())), 0.7)
        _with_returns(run, keys, ppo, div)
        runs.append(run)
    types = by_user_type(runs, rho_of=lambda run: rho)
    assert types is not None and set(types["groups"]) == {"rho<0.5 (CF-leaning)", "rho>=0.5 (content-leaning)"}
    low, high = types["groups"]["rho<0.5 (CF-leaning)"], types["groups"]["rho>=0.5 (content-leaning)"]
    assert (low["sessions"], high["sessions"]) == (10, 30)
    assert low["diff"]["ci95"][0] < 0 < low["diff"]["ci95"][1] and abs(low["diff"]["mean"]) < 0.2
    assert 0.8 < high["diff"]["ci95"][0] < 1.0 < high["diff"]["ci95"][1] < 1.2
    assert by_user_type(runs[:1], rho_of=lambda run: rho) is None
    other = _fake_run(tmp_path, "t3", _returns(7.0, 6.0), 1.0)
    _with_returns(other, keys + 1, np.ones(40), np.zeros(40))
    assert "skipped" in by_user_type([runs[0], other], rho_of=lambda run: rho)  # type: ignore[operator]
    assert "config.yaml" in aggregate(runs)["by_user_type"]["skipped"]  # fabricated runs: no world to read ρ from
    md = markdown({**aggregate(runs[:1]), "by_user_type": types}, "t")
    assert "users with rho<0.5 (CF-leaning) (10 sessions; hidden)" in md


def test_paired_with_another_protocols_runs_by_seed_and_type(tmp_path: Path) -> None:
    """``--against``: PPO − the other runs' PPO on the same seeds and sessions, over seeds and sessions and by hidden
    type (here +0.5 for the CF-leaning users, 0 for the others); runs of other sessions or without returns are named
    as not compared; the table gets one row per group."""
    from bench.quality_protocol import paired_with

    rng = np.random.default_rng(5)
    keys = np.arange(40, dtype=np.uint64)
    rho = np.where(np.arange(40) % 4 == 0, 0.1, 0.9)
    new, old = [], []
    for i in range(3):
        base = rng.gamma(2.0, 3.0, 40)
        for prefix, runs, ppo in (("new", new, base + np.where(rho < 0.5, 0.5, 0.0) + rng.normal(0, 0.05, 40)),
                                  ("old", old, base)):
            run = _fake_run(tmp_path, f"{prefix}-s{i}", _returns(float(ppo.mean()), 6.0), 0.1)
            _with_returns(run, keys, ppo, base)
            runs.append(run)
    out = paired_with(new, old, rho_of=lambda run: rho)
    assert out["against"] == ["old-s0", "old-s1", "old-s2"] and len(out["per_seed"]) == 3
    assert out["diff"]["mean"] == pytest.approx(0.125, abs=0.02)
    cf, content = out["groups"]["rho<0.5 (CF-leaning)"], out["groups"]["rho>=0.5 (content-leaning)"]
    assert cf["diff"]["ci95"][0] > 0.4 and cf["sessions"] == 10
    assert content["diff"]["ci95"][0] < 0 < content["diff"]["ci95"][1]
    shifted = _fake_run(tmp_path, "old-s9", _returns(7.0, 6.0), 0.1)
    _with_returns(shifted, keys + 1, np.ones(40), np.ones(40))
    assert "different held-out sessions" in paired_with(new[:1], [shifted], rho_of=lambda run: rho)["skipped"]
    assert "no per-session returns" in paired_with(new[:1], [tmp_path / "absent"], rho_of=lambda run: rho)["skipped"]
    md = markdown({**aggregate(new), "paired_with": {"prefix": "old", **out}}, "t")
    assert "| PPO − the PPO of old, paired, users with rho<0.5 (CF-leaning) (10 sessions; hidden)" in md
    md = markdown({**aggregate(new), "paired_with": {"prefix": "x", "skipped": "why"}}, "t")
    assert "| PPO − the PPO of x, paired | not compared: why | |" in md
    md = markdown({**aggregate(new), "paired_with": out}, "t")  # --against-runs: the runs named, no prefix
    assert "| PPO − the PPO of old-s0, old-s1, old-s2, paired, all users" in md


def test_ppo_against_the_switch_over_seeds_and_sessions_pairs_each_runs_sessions(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """PPO − the type switch over seeds and sessions reads PPO's and the switch's per-session returns of each run,
    pairs them session by session, splits them by the sessions' users' hidden type, and refuses switch returns of
    other sessions."""
    from agents.evaluation import episode_plan
    from agents.report import write_returns
    from bench import quality_protocol

    plan = episode_plan(50, [0, 1], 10)
    rho = np.linspace(0.0, 1.0, 10)  # users 0-4 CF-leaning
    monkeypatch.setattr(quality_protocol, "heldout_rho", lambda run: rho)
    rng = np.random.default_rng(0)
    runs = []
    for s in range(3):
        run = tmp_path / f"r{s}"
        (run / "report").mkdir(parents=True)
        ppo = rng.normal(5.0, 1.0, len(plan))
        switch = ppo - np.where(rho[plan.users] < 0.5, -0.2, 0.3) - 0.01 * s
        write_returns({"ppo": SimpleNamespace(ret=ppo)}, plan, run / "report" / "returns.npz")
        write_returns({"tuned-switch": SimpleNamespace(ret=switch)}, plan, run / "report" / "sw.npz")
        runs.append(run)
    out = quality_protocol.switch_over_seeds_and_sessions(runs, "sw.npz")
    cf, content = out["rho<0.5 (CF-leaning)"], out["rho>=0.5 (content-leaning)"]
    assert cf["mean"] == pytest.approx(-0.19) and content["mean"] == pytest.approx(0.31)
    assert out["all"]["mean"] == pytest.approx(np.mean(np.where(rho[plan.users] < 0.5, -0.2, 0.3)) + 0.01)
    other = episode_plan(50, [5, 6], 10)
    zeros = SimpleNamespace(ret=np.zeros(len(other)))
    write_returns({"tuned-switch": zeros}, other, runs[1] / "report" / "sw.npz")
    assert "r1: the switch's returns are of other sessions" in quality_protocol.switch_over_seeds_and_sessions(
        runs, "sw.npz")["skipped"]
