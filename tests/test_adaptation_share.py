"""bench.adaptation_share: the share of the value of adaptation, paired on a report's own sessions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import evaluate
from agents.report import Bootstrap
from bench import adaptation_share
from configs.loader import resolve_config, save_yaml, to_dict


def test_share_pairs_both_margins_on_the_same_resamples() -> None:
    rng = np.random.default_rng(0)
    ref = rng.normal(5.0, 3.0, 4000)
    policy, typed = ref + 0.2 + rng.normal(0, 0.1, 4000), ref + 0.4
    boot = Bootstrap(4000, 400, 0)
    res = adaptation_share.share(policy, ref, typed, boot)
    assert res["value"]["mean"] == pytest.approx(0.4) and res["value"]["ci95"] == pytest.approx([0.4, 0.4])
    assert res["policy_diff"]["mean"] == pytest.approx((policy - ref).mean())
    assert res["share"]["mean"] == pytest.approx(res["policy_diff"]["mean"] / 0.4)
    lo, hi = res["share"]["ci95"]
    assert lo < res["share"]["mean"] < hi and hi - lo < 0.05  # the reference's own spread cancels in the pairing
    sel = np.arange(4000) < 1000
    part = adaptation_share.share(policy, ref, typed, boot, sel)
    assert part["sessions"] == 1000
    assert part["policy_diff"]["mean"] == pytest.approx((policy - ref)[:1000].mean())


#: A short α axis for the searches of these tests (the replay takes the run config's, as evaluate.py does): the
#: replays' logic does not depend on the axis, and the default axis's 18 points made these the suite's slowest tests.
ALPHA_GRID = "eval.alpha_grid=[0.5,0.9,1.0]"


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One world and tuning cache for the file's tests: the searches they share (tune seed 2) run once."""
    return tmp_path_factory.mktemp("c")


def _cache_args(cache: Path) -> list[str]:
    return ["--set", f"env.cache_dir={cache}", "--set", f"encoder.cache_dir={cache}", "--set", ALPHA_GRID]


def _run_folder(tmp_path: Path, cache: Path) -> Path:
    """A stand-in run folder: only its config.yaml (the small preset, hashing encoder, the short α axis)."""
    run = tmp_path / "run"
    run.mkdir()
    cfg = resolve_config(None, "small", [f"env.cache_dir={cache}", f"encoder.cache_dir={cache}", ALPHA_GRID],
                         flags={"encoder": {"kind": "hashing"}})
    save_yaml(to_dict(cfg), run / "config.yaml")
    return run


def test_replays_the_report_and_refuses_another_tuning_seed(tmp_path: Path, cache: Path) -> None:
    base = ["--preset", "small", "--encoder", "hashing", "--episodes", "60", "--seeds", "2", "--tune-episodes", "120",
            "--no-progress", "--set", "eval.bootstrap=200", *_cache_args(cache)]
    # a stand-in for a trained policy: any ranker of the report; the run folder only lends its config
    evaluate.main([*base, "--rankers", "diverse:0.5,tuned-diverse", "--reference", "tuned-diverse", "--tune-seed", "2",
                   "--out", str(tmp_path / "report")])
    run = _run_folder(tmp_path, cache)
    res = adaptation_share.analyse(tmp_path / "report", "diverse:0.5", run=run, tune_seed=2, tune_episodes=120,
                                   bootstrap=200)
    assert res["all"]["sessions"] == 120
    assert sum(g["sessions"] for g in res["by_user_type"].values()) == 120
    # the per-type rule is chosen on training users and keeps the single choice where a group is too small; on
    # these sessions its margin is what the value reads
    assert len(res["per_group"]) == 3 and res["returns"]["reference"] == pytest.approx(
        res["returns"]["typed"] - res["all"]["value"]["mean"])
    assert "| all | 120 |" in adaptation_share.markdown(res)
    # the type switch on the same sessions: its margin over the same reference, and the policy − it
    sw = res["switch"]
    assert sw["threshold"] in (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 2.0)
    assert sw["all"]["value"]["mean"] == pytest.approx(res["all"]["value"]["mean"])
    assert sw["return"] - res["returns"]["reference"] == pytest.approx(sw["all"]["policy_diff"]["mean"])
    assert res["returns"]["policy"] - sw["return"] == pytest.approx(sw["policy_minus_switch"]["all"]["mean"])
    assert set(sw["policy_minus_switch"]) == {"all", *res["by_user_type"]}
    assert "The type switch (tuned-switch, threshold" in adaptation_share.markdown(res)
    res["all"]["value"]["ci95"][0] = 0.0
    assert "— (no value above 0 to share)" in adaptation_share.markdown(res)
    with pytest.raises(ValueError, match="does not replay"):
        adaptation_share.analyse(tmp_path / "report", "diverse:0.5", run=run, tune_seed=5, tune_episodes=120)
    # one reference for every report: read with seed 5's searches, the seed-2 report gives what a report evaluated
    # with seed 5 gives against its own, session for session (the report's own tuned-diverse is not needed)
    evaluate.main([*base, "--rankers", "diverse:0.5,tuned-diverse", "--reference", "tuned-diverse", "--tune-seed", "5",
                   "--out", str(tmp_path / "report5")])
    own5 = adaptation_share.analyse(tmp_path / "report5", "diverse:0.5", run=run, tune_seed=5, tune_episodes=120,
                                    bootstrap=200)
    common5 = adaptation_share.analyse(tmp_path / "report", "diverse:0.5", run=run, reference="absent", tune_seed=5,
                                       tune_episodes=120, bootstrap=200, common=True)
    assert common5["common_reference"] and "tune seed 5, 120 sessions" in common5["reference"]
    assert common5["returns"] == pytest.approx(own5["returns"], abs=1e-12)
    assert common5["per_group"] == own5["per_group"]
    for key in ("policy_diff", "value", "share"):  # the same sessions and references: the same figures and intervals
        assert common5["all"][key]["mean"] == pytest.approx(own5["all"][key]["mean"], rel=1e-9, abs=1e-12)
        assert common5["all"][key]["ci95"] == pytest.approx(own5["all"][key]["ci95"], rel=1e-9, abs=1e-12)
    common2 = adaptation_share.analyse(tmp_path / "report", "diverse:0.5", run=run, tune_seed=2, tune_episodes=120,
                                       bootstrap=200, common=True)
    assert common2["returns"] == pytest.approx(res["returns"], abs=1e-12)  # its own seed: the own reading
    with pytest.raises(ValueError, match="not a run:DIR ranker"):
        adaptation_share.analyse(tmp_path / "report", "diverse:0.5")
    with pytest.raises(ValueError, match=r"no returns of \['ppo'\]"):
        adaptation_share.analyse(tmp_path / "report", "ppo", run=run)


def test_several_runs_against_one_reference_replayed_once(tmp_path: Path, cache: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    evaluate.main(["--preset", "small", "--encoder", "hashing", "--episodes", "60", "--seeds", "2", "--first-seed", "3",
                   "--tune-episodes", "120", "--no-progress", "--set", "eval.bootstrap=200", *_cache_args(cache),
                   "--rankers", "diverse:0.5,diverse:0.9,greedy-cf", "--tune-seed", "2", "--out", str(tmp_path / "r")])
    run = _run_folder(tmp_path, cache)
    names = ["diverse:0.5", "diverse:0.9", "greedy-cf"]
    res = adaptation_share.analyse_runs(tmp_path / "r", names, run=run, tune_seed=2, tune_episodes=120,
                                        bootstrap=200)
    assert res["sessions"] == 120 and res["seeds"] == [3, 4] and res["rankers"] == names
    one = {n: adaptation_share.analyse(tmp_path / "r", n, run=run, tune_seed=2, tune_episodes=120, bootstrap=200,
                                       common=True) for n in names}
    # each policy reads as it does alone against the common reference: the same value of adaptation, share and switch.
    # On this tiny tuning the per-type rule may pick tuned-diverse's own point (a value of exactly 0, so no share: NaN),
    # depending on the CPU's rounding; NaN must then read NaN on both paths
    value = res["value"]["all"]["mean"]
    assert value == pytest.approx(one[names[0]]["all"]["value"]["mean"], abs=1e-12)
    for n in names:
        assert res["per_run"][n]["share"]["all"]["mean"] == pytest.approx(one[n]["all"]["share"]["mean"], rel=1e-9,
                                                                          nan_ok=True)
        assert res["per_run"][n]["policy_minus_switch"]["all"]["mean"] == pytest.approx(
            one[n]["switch"]["policy_minus_switch"]["all"]["mean"], rel=1e-9, abs=1e-12)
    assert res["returns"]["reference"] == pytest.approx(one[names[0]]["returns"]["reference"], abs=1e-12)
    assert res["switch"]["return"] == pytest.approx(one[names[0]]["switch"]["return"], abs=1e-12)
    # over the runs: the mean of the per-run shares and, over seeds and sessions, the mean paired difference
    over = res["over_runs"]
    shares = [one[n]["all"]["share"]["mean"] for n in names]
    assert over["share"]["all"]["mean"] == pytest.approx(np.mean(shares), rel=1e-9, nan_ok=True)
    assert np.isfinite(over["share"]["all"]["mean"]) == (value != 0)
    if value != 0:
        assert over["share"]["all"]["ci95"][0] < over["share"]["all"]["mean"] < over["share"]["all"]["ci95"][1]
    diffs = [one[n]["switch"]["policy_minus_switch"]["all"]["mean"] for n in names]
    assert over["policy_minus_switch"]["all"]["mean"] == pytest.approx(np.mean(diffs), rel=1e-9, abs=1e-12)
    lo, hi = over["policy_minus_switch"]["all"]["ci95"]
    assert lo < over["policy_minus_switch"]["all"]["mean"] < hi
    assert set(over["policy_minus_reference"]) == {"all", *one[names[0]]["by_user_type"]}
    assert "**policy − the type switch**" in adaptation_share.markdown_runs(res)
    # --against: paired run by run with another recipe's policies of the same report
    paired = adaptation_share.analyse_runs(tmp_path / "r", names[:2], run=run, tune_seed=2, tune_episodes=120,
                                           bootstrap=200, against=[names[2], names[2]])
    mine = [one[n]["returns"]["policy"] for n in names]
    assert paired["over_runs"]["policy_minus_against"]["all"]["mean"] == pytest.approx(
        np.mean(mine[:2]) - mine[2], abs=1e-9)
    assert "`--against` policy" in adaptation_share.markdown_runs(paired)
    with pytest.raises(ValueError, match="run by run"):
        adaptation_share.analyse_runs(tmp_path / "r", names[:2], run=run, tune_seed=2, tune_episodes=120,
                                      against=[names[2]])
    with pytest.raises(ValueError, match="two or more policies"):
        adaptation_share.analyse_runs(tmp_path / "r", ["greedy-cf"], run=run, tune_seed=2, tune_episodes=120)
    with pytest.raises(SystemExit):
        adaptation_share.main([str(tmp_path / "r"), "--ranker", "greedy-cf", "--ranker", "diverse:0.5", "--run",
                               str(run), "--tune-seed", "2", "--tune-episodes", "120"])
    assert "need --common-reference" in capsys.readouterr().err
