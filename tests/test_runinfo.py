"""Runs and worlds fit together (agents/runinfo.py, evaluate.py run:DIR), and what train.py's report compares.

One tiny run on the small preset (hashing encoder, 512 steps) is trained for the module; everything else reads it.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import tiny_args

import evaluate
import train
from agents.evaluation import episode_plan, run_episodes
from agents.rankers import BlendRanker
from agents.runinfo import MATCH_KEYS, SIGNATURE_FILE, mismatch, read_signature, signature
from agents.tuning import TUNE_SEED, tune_alpha
from configs.loader import ConfigError, load_config
from configs.schema import Config
from envs.core import BatchedCore
from envs.presets import load_world
from envs.world import World


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, runs_cache: Path) -> Iterator[Path]:
    """A finished tiny run (its world in the session's shared cache, kept for the module's tests)."""
    root = tmp_path_factory.mktemp("runinfo")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RECFEED_CACHE", str(runs_cache))
        summary = train.main(tiny_args(root / "runs", "tiny", 512))
        yield Path(summary["run_dir"])


@pytest.fixture(scope="module")
def run_cfg(run: Path) -> Config:
    return load_config(run / "config.yaml")


@pytest.fixture(scope="module")
def run_world(run_cfg: Config) -> World:
    return load_world(run_cfg.env, run_cfg.encoder, progress=False)


def copy_run(run: Path, dest: Path, drop: tuple[str, ...] = (), **sig_changes: Any) -> Path:
    """A copy of the run (without the files in ``drop``; its signature changed as given)."""
    shutil.copytree(run, dest, ignore=shutil.ignore_patterns("tb", "checkpoints", "report"))
    for name in drop:
        (dest / name).unlink()
    if sig_changes:
        sig = json.loads((dest / SIGNATURE_FILE).read_text())
        (dest / SIGNATURE_FILE).write_text(json.dumps({**sig, **sig_changes}))
    return dest


def eval_args(out: Path, *extra: str) -> list[str]:
    return ["--episodes", "8", "--seeds", "1", "--reference", "random", "--set", "eval.bootstrap=100",
            "--no-progress", "--out", str(out), *extra]


@pytest.fixture()
def no_evaluation(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if evaluate.py gets as far as building rankers or evaluating."""
    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("evaluate.py evaluated despite a run that does not fit")

    monkeypatch.setattr(evaluate, "make_ranker", boom)
    monkeypatch.setattr(evaluate, "evaluate_rankers", boom)


def last_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err, "nothing on stderr"
    return err[-1]


def refusal_before_the_world(run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                             capsys: pytest.CaptureFixture[str], extra: list[str]) -> str:
    """``evaluate.py`` with ``run:RUN`` and ``extra`` must stop with exit code 2 before loading the world and before
    writing anything; returns its error line."""
    def no_world(*args: object, **kwargs: object) -> None:
        raise AssertionError("the world was loaded for a run that does not fit")

    monkeypatch.setattr(evaluate, "load_world", no_world)
    with pytest.raises(SystemExit) as exc:
        evaluate.main(["--rankers", f"random,run:{run}", *eval_args(tmp_path / "out"), *extra])
    assert exc.value.code == 2
    assert not (tmp_path / "out").exists()
    return last_error(capsys)


# ---- the signature ------------------------------------------------------------------------------------------------


def test_training_writes_the_signature(run: Path, run_cfg: Config, run_world: World) -> None:
    sig = json.loads((run / SIGNATURE_FILE).read_text())
    assert sig == signature(run_cfg, run_world)
    assert (sig["preset"], sig["n_candidates"], sig["slate_size"], sig["n_items"], sig["embedding_dim"]) == (
        "small", 20, 5, 400, 32)
    assert sig["encoder"] == run_world.encoder_name and sig["encoder"].startswith("hashing")
    assert sig["world_key"] == json.loads((run / "versions.json").read_text())["world_key"]
    assert read_signature(run) == sig
    assert not list(run.glob(f".{SIGNATURE_FILE}*"))  # written atomically: no temp file left


def test_a_run_without_signature_gets_a_derived_one(run: Path, tmp_path: Path) -> None:
    old = copy_run(run, tmp_path / "old", drop=(SIGNATURE_FILE,))
    derived = read_signature(old)
    assert derived["derived_from"] == ["config.yaml", "versions.json"]
    real = read_signature(run)
    for key in ("n_candidates", "slate_size", "n_items", "embedding_dim", "encoder_kind", "max_steps", "world_key"):
        assert derived[key] == real[key], key
    assert derived["encoder"] is None  # the config cannot tell the encoder's full identity
    assert mismatch(derived, real) is None
    with pytest.raises(FileNotFoundError, match=re.escape("neither signature.json nor config.yaml")):
        read_signature(tmp_path)
    (old / SIGNATURE_FILE).write_text("{not json")
    with pytest.raises(ConfigError, match=re.escape("signature.json cannot be read as JSON")):
        read_signature(old)


def test_mismatch_is_one_line_naming_both_sides() -> None:
    a = {k: None for k in MATCH_KEYS} | {"preset": "small", "n_candidates": 20, "slate_size": 5, "n_items": 400}
    b = a | {"preset": "default", "n_candidates": 100, "slate_size": 10, "n_items": None}
    assert mismatch(a, dict(a)) is None
    assert mismatch(a, a | {"n_items": None, "preset": "other"}) is None  # unknown keys and names do not count
    why = mismatch(a, b, "run:runs/a", "the env")
    assert why is not None and "\n" not in why
    assert why.startswith("run:runs/a (preset small, N=20, K=5, M=400) does not fit the env (preset default, N=100, "
                          "K=10): ")
    assert why.endswith("n_candidates 20 vs 100, slate_size 5 vs 10")
    only_world = mismatch(a | {"world_key": "aaa"}, a | {"world_key": "bbb"})
    assert only_world is not None and "world_key 'aaa' vs 'bbb' (the worlds were built from different" in only_world


def test_an_actor_that_reads_a_hidden_column_fits_only_an_env_that_has_it() -> None:
    """The research ablations' hidden columns: a run whose actor reads the true taste (``env.obs_hidden_taste``) or
    the hidden state (``train.policy.actor_hidden_state``) does not fit an env without that column; a column only
    the critic reads (``env.obs_critic_state`` alone) is not needed; signatures from before these keys pass."""
    def sig(taste: bool = False, state: bool = False, actor: bool = False) -> dict[str, Any]:
        cfg = Config()
        cfg.env.obs_hidden_taste, cfg.env.obs_critic_state, cfg.train.policy.actor_hidden_state = taste, state, actor
        return signature(cfg)

    plain, critic, actor, taste = sig(), sig(state=True), sig(state=True, actor=True), sig(taste=True)
    assert (plain["obs_hidden"], plain["actor_reads_hidden"]) == ([], [])
    assert (critic["obs_hidden"], critic["actor_reads_hidden"]) == (["critic_state"], [])
    assert (actor["obs_hidden"], actor["actor_reads_hidden"]) == (["critic_state"], ["critic_state"])
    assert (taste["obs_hidden"], taste["actor_reads_hidden"]) == (["hidden_taste"], ["hidden_taste"])
    assert mismatch(critic, plain) is None and mismatch(actor, critic) is None and mismatch(plain, taste) is None
    why = mismatch(actor, plain, "run:runs/a", "the env")
    assert why is not None and why.endswith("the run's actor reads obs['critic_state'], which needs "
                                            "env.obs_critic_state=true (a research ablation's hidden column)")
    why = mismatch(taste, critic)
    assert why is not None and why.endswith("obs['hidden_taste'], which needs env.obs_hidden_taste=true (a research "
                                            "ablation's hidden column)")
    old = {k: v for k, v in actor.items() if k not in ("obs_hidden", "actor_reads_hidden")}
    assert mismatch(old, plain) is None and mismatch(actor, old) is None


# ---- evaluate.py with run:DIR ---------------------------------------------------------------------------------------


def test_evaluate_adopts_the_env_of_the_run(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """No --preset, no env.*: the run is evaluated on its own env and encoder (it used to get the default preset
    and the transformer encoder, and failed inside torch after building that world)."""
    results = evaluate.main(["--rankers", f"random,run:{run}", *eval_args(tmp_path / "out")])
    setup = results["setup"]
    assert (setup["preset"], setup["n_candidates"], setup["slate_size"], setup["n_items"]) == ("small", 20, 5, 400)
    assert setup["encoder"] == read_signature(run)["encoder"]
    assert np.isfinite(results["rankers"][f"run:{run}"]["return"]["mean"])
    assert f"note: evaluating on the env of run:{run} (preset small, N=20, K=5" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "diff"),
    [
        (["--preset", "small", "--set", "env.n_candidates=30"], "n_candidates 20 vs 30"),
        (["--preset", "default"],
         "n_candidates 20 vs 100, slate_size 5 vs 10, n_items 400 vs 3000, max_steps 30 vs 50"),
        (["--set", "env.catalog.n_items=500"], "n_items 400 vs 500"),
        (["--set", "env.slate_size=4"], "slate_size 5 vs 4"),
        (["--encoder", "transformer"], "encoder_kind 'hashing' vs 'transformer'"),
        (["--set", "encoder.hashing_dim=16"], "embedding_dim 32 vs 16"),
        (["--set", "env.obs_item_embeddings=true"], "obs_item_embeddings False vs True"),
    ],
)
def test_evaluate_stops_before_the_world_on_another_env(run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str], extra: list[str],
                                                        diff: str) -> None:
    """Regression: another N crashed in torch (``Sizes of tensors must match``); another catalog size was clamped
    silently. Now: one line naming both sides, before the world is even loaded."""
    line = refusal_before_the_world(run, tmp_path, monkeypatch, capsys, extra)
    assert line.startswith(f"evaluate.py: error: run:{run} (preset small, N=20, K=5, M=400, D=32")
    assert "does not fit the env to evaluate on (" in line and line.endswith(diff)


@pytest.mark.parametrize(("extra", "old_signature"), [
    ([], False),
    (["--preset", "small", "--encoder", "hashing", "--set", "encoder.hashing_dim=32"], False),
    (["--set", "env.obs_critic_state=false"], True),
])
def test_evaluate_stops_before_the_world_when_the_actor_reads_a_column_the_env_lacks(
        run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        extra: list[str], old_signature: bool) -> None:
    """Regression (session 42): a run trained with ``train.policy.actor_hidden_state`` evaluated on an env without
    ``env.obs_critic_state`` failed only at its first request, after the references' tuning, as a ranker that
    "returned a bad slate". Now it stops before the world is loaded, whether the env is the run's own config's, a
    preset's or the run's with the column turned off, naming the setting; a signature written before the hidden keys
    existed gets them from the run's config.yaml."""
    hidden = copy_run(run, tmp_path / "hidden", actor_reads_hidden=["critic_state"])
    if old_signature:
        sig = json.loads((hidden / SIGNATURE_FILE).read_text())
        del sig["obs_hidden"], sig["actor_reads_hidden"]
        (hidden / SIGNATURE_FILE).write_text(json.dumps(sig))
        config = (hidden / "config.yaml").read_text()
        assert "actor_hidden_state: false" in config and "obs_critic_state: false" in config
        (hidden / "config.yaml").write_text(config.replace("actor_hidden_state: false", "actor_hidden_state: true")
                                            .replace("obs_critic_state: false", "obs_critic_state: true"))
        assert read_signature(hidden)["actor_reads_hidden"] == ["critic_state"]
    line = refusal_before_the_world(hidden, tmp_path, monkeypatch, capsys, extra)
    assert line.startswith(f"evaluate.py: error: run:{hidden} (preset small, N=20, K=5, M=400, D=32")
    assert line.endswith("obs['critic_state'], which needs env.obs_critic_state=true (a research ablation's hidden "
                         "column)")


def test_evaluate_stops_after_the_world_when_only_the_world_differs(run: Path, tmp_path: Path, no_evaluation: None,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """Same shapes, another world (other users): caught once the world is loaded, before any ranker is built."""
    with pytest.raises(SystemExit) as exc:
        evaluate.main(["--rankers", f"random,run:{run}", *eval_args(tmp_path / "out"), "--set",
                       "env.user_model.seed=5"])
    assert exc.value.code == 2
    line = last_error(capsys)
    assert line.startswith(f"evaluate.py: error: run:{run} (") and "world_key '" in line
    assert not (tmp_path / "out").exists()


def test_evaluate_accepts_an_explicit_env_that_fits(run: Path, tmp_path: Path) -> None:
    results = evaluate.main(["--rankers", f"random,run:{run}", *eval_args(tmp_path / "out"), "--preset", "small",
                             "--encoder", "hashing", "--set", "encoder.hashing_dim=32", "--users", "train"])
    assert results["setup"]["users"] == "train" and results["setup"]["n_candidates"] == 20


def test_runs_that_disagree_are_named(run: Path, tmp_path: Path, no_evaluation: None,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    other = copy_run(run, tmp_path / "other", n_candidates=30, world_key="0123456789abcdef")
    with pytest.raises(SystemExit):
        evaluate.main(["--rankers", f"run:{run},run:{other}", "--reference", f"run:{run}",
                       *eval_args(tmp_path / "out")[4:]])
    line = last_error(capsys)
    assert line.startswith(f"evaluate.py: error: the runs were trained on different envs: run:{other} (")
    assert f"does not fit run:{run} (" in line and line.endswith("n_candidates 30 vs 20, world_key '0123456789abcdef' "
                                                                 f"vs '{read_signature(run)['world_key']}'")


def test_unfinished_or_foreign_run_directories(run: Path, tmp_path: Path, no_evaluation: None,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    half = copy_run(run, tmp_path / "half", drop=("model.zip", "policy.safetensors"))
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    for path, message in ((half, f"run:{half} is not a finished recfeed run: {half / 'policy.safetensors'} is missing"),
                          (foreign, f"{foreign / 'config.yaml'} is missing")):
        with pytest.raises(SystemExit):
            evaluate.main(["--rankers", f"random,run:{path}", *eval_args(tmp_path / "out")])
        assert message in last_error(capsys)


# ---- what train.py's report compares (section 7a/7b) -------------------------------------------------------------


def test_the_report_compares_ppo_with_the_alpha_tuning_found(run: Path, run_cfg: Config, run_world: World) -> None:
    """summary.json's tuned α is tune_alpha's argmax on the training users (eval.tune_episodes sessions per point, the
    tuned references' own protocol), and tuned-diverse's search starts from it; the report's tuned-alpha row is that
    α's fixed blend on the held-out sessions; the headline ratio is PPO over that row."""
    cfg, world = run_cfg, run_world
    summary = json.loads((run / "summary.json").read_text())
    report = json.loads((run / "report" / "results.json").read_text())
    curve = tune_alpha(world, cfg.env, episodes=cfg.eval.tune_episodes, seed=cfg.train.seed + TUNE_SEED,
                       batch=cfg.eval.batch)  # computed afresh: no cache
    assert summary["tuned_alpha"] == curve.best_alpha == report["alpha_curve"]["best_alpha"]
    assert report["tuned_parameters"]["tuned-diverse"]["start"]["alpha"] == curve.best_alpha
    assert report["alpha_curve"]["mean_return"] == pytest.approx(curve.mean_return)
    held = world.populations["heldout"].size
    plan = episode_plan(cfg.eval.episodes, list(range(cfg.eval.seeds)), held)
    core = BatchedCore(world, cfg.env, 9, population="heldout")
    tuned = run_episodes(core, BlendRanker(cfg.env.slate_size, curve.best_alpha), plan).ret.mean()
    rows = report["rankers"]
    assert rows["tuned-alpha"]["return"]["mean"] == pytest.approx(tuned, rel=1e-12)
    assert summary["ratio_vs_tuned_alpha"] == pytest.approx(rows["ppo"]["return"]["mean"] / tuned, rel=1e-12)
    assert report["paired"]["reference"] == "tuned-alpha"
    diff = report["paired"]["results"]["ppo"]["return"]["diff"]
    assert diff == pytest.approx(rows["ppo"]["return"]["mean"] - tuned, abs=1e-9)  # PPO minus the reference


def test_the_periodic_evaluation_simulates_held_out_users(run: Path, run_cfg: Config, run_world: World) -> None:
    """eval.jsonl's tuned-alpha figure is the tuned blend on held-out sessions (not on the training users)."""
    cfg, world = run_cfg, run_world
    summary = json.loads((run / "summary.json").read_text())
    row = [json.loads(line) for line in (run / "eval.jsonl").read_text().splitlines()][-1]
    means = {}
    for pop in ("heldout", "train"):
        plan = episode_plan(cfg.train.eval_episodes, [cfg.train.seed + 7], world.populations[pop].size)
        core = BatchedCore(world, cfg.env, 5, population=pop)
        means[pop] = float(run_episodes(core, BlendRanker(cfg.env.slate_size, summary["tuned_alpha"]), plan).ret.mean())
    assert means["heldout"] != means["train"]
    assert row["return_tuned_alpha"] == pytest.approx(means["heldout"], rel=1e-12)
