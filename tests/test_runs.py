"""Runs survive faults and bad input: resume, checkpoints, export targets, crafted files (issue #12, §4, §5, §7).

One tiny train.py run (configs/smoke.yaml with the hashing encoder and a 1,024-step budget, checkpoints every 512
steps) is made once for this module; each test works on a copy of it.
"""

from __future__ import annotations

import base64
import builtins
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch as th
from conftest import make_run_dir, tiny_args
from safetensors.torch import load_file

import evaluate
import train
from agents.checkpoints import checkpoint_dirs, latest_checkpoint, restore_model
from agents.export import MANIFEST_FILE, PRODUCER, export_run
from agents.export import main as export_main
from agents.ppo_ranker import PolicyFileError, load_policy, load_run_config, load_run_ranker
from agents.training import make_venv
from envs.world import World

REPO = Path(__file__).resolve().parents[1]
STEP_512, STEP_1024 = "step-000000000512", "step-000000001024"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, runs_cache: Path) -> Iterator[Path]:
    """A finished 1,024-step run (checkpoints at 512 and 1,024); RECFEED_CACHE points at the shared cache meanwhile."""
    root = tmp_path_factory.mktemp("trained")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RECFEED_CACHE", str(runs_cache))
        summary = train.main(tiny_args(root / "runs", "base", 1024))
        yield Path(summary["run_dir"])


def _copy(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest)
    return dest


def _eval_steps(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "eval.jsonl").read_text().splitlines()]


def _weights_equal(a: dict[str, th.Tensor], b: dict[str, th.Tensor]) -> bool:
    return a.keys() == b.keys() and all(th.equal(a[k].cpu(), b[k].cpu()) for k in a)


# ---- §4: resume ---------------------------------------------------------------------------------------------------


def test_resume_of_a_finished_run_says_so_then_extends_it(trained: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    run = _copy(trained, tmp_path / "run")
    before = (run / "checkpoints" / STEP_1024 / "state.json").read_text()
    evals = _eval_steps(run)

    again = train.main(["--resume", str(run), "--quiet"])
    assert again["already_finished"] and again["total_timesteps"] == 1024
    assert "already finished" in capsys.readouterr().err
    assert (run / "checkpoints" / STEP_1024 / "state.json").read_text() == before  # nothing was trained
    assert _eval_steps(run) == evals

    longer = train.main(["--resume", str(run), "--total-timesteps", "1536", "--quiet"])
    assert longer["total_timesteps"] == 1536 and longer["resumed_from"]["num_timesteps"] == 1024
    assert load_run_config(run).train.total_timesteps == 1536  # the run's config says how far it now goes
    assert [p.name for p in checkpoint_dirs(run / "checkpoints")] == ["step-000000001536", STEP_1024]  # last two
    assert (run / "checkpoints" / STEP_1024 / "state.json").read_text() == before  # not rewritten: no restart
    new_evals = _eval_steps(run)[len(evals):]
    assert new_evals and min(new_evals) > 1024  # steps carried on from the checkpoint's, not from 0

    assert train.main(["--resume", str(run), "--quiet"])["already_finished"]


def test_resume_after_the_last_checkpoint_finishes_with_the_checkpoint_weights(trained: Path, tmp_path: Path) -> None:
    """Killed after its last checkpoint, before the final files: the resume trains nothing, and the final policy
    is the checkpoint's, bit for bit (a resume that restarted from step 0 or from fresh weights would differ)."""
    run = _copy(trained, tmp_path / "run")
    for name in ("summary.json", "policy.safetensors", "policy.json", "model.zip"):
        (run / name).unlink()
    ckpt_weights = load_file(run / "checkpoints" / STEP_1024 / "policy.safetensors")
    summary = train.main(["--resume", str(run), "--quiet"])
    assert summary["total_timesteps"] == 1024 and summary["resumed_from"]["num_timesteps"] == 1024
    assert _weights_equal(load_file(run / "policy.safetensors"), ckpt_weights)


def test_restored_model_holds_the_checkpoint_state(trained: Path) -> None:
    """Weights, optimizer state, step count and reward-normalisation statistics come back exactly."""
    from envs.presets import load_world

    cfg = load_run_config(trained)
    ckpt, skipped = latest_checkpoint(trained / "checkpoints", "cpu", cfg.train.ppo.normalize_reward)
    assert skipped == [] and ckpt.path.name == STEP_1024
    world = load_world(cfg.env, cfg.encoder, progress=False)
    model = restore_model(cfg, ckpt, make_venv(cfg, world, cfg.train.seed), th.device("cpu"))
    assert model.num_timesteps == 1024 and model._n_updates == ckpt.state["n_updates"] > 0
    assert _weights_equal(model.policy.state_dict(), ckpt.weights)
    assert _weights_equal(model.policy.state_dict(), load_file(trained / "policy.safetensors"))  # final == last ckpt
    opt = model.policy.optimizer.state_dict()
    assert len(opt["state"]) == len(ckpt.optimizer["state"]) > 0
    for i, st in ckpt.optimizer["state"].items():
        assert all(th.equal(opt["state"][i][k], v) for k, v in st.items())
    venv = model.get_env()
    with np.load(ckpt.path / "vecnormalize.npz", allow_pickle=False) as z:
        assert venv.ret_rms.var == pytest.approx(float(z["ret_var"])) and float(z["ret_var"]) != 1.0
        assert venv.ret_rms.count == float(z["ret_count"]) > 1


@pytest.mark.parametrize("damage", ["policy.safetensors", "optimizer.pt", "state.json", "vecnormalize.npz"])
def test_a_damaged_checkpoint_is_named_and_the_previous_one_used(damage: str, trained: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    run = _copy(trained, tmp_path / "run")
    path = run / "checkpoints" / STEP_1024 / damage
    if damage == "vecnormalize.npz":
        path.unlink()  # a missing reward-normalisation file: an error, not unnormalised rewards from here on
    else:
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])  # truncated
    summary = train.main(["--resume", str(run), "--total-timesteps", "1536", "--quiet"])
    err = capsys.readouterr().err
    assert f"{STEP_1024}/{damage}" in err and "unusable" in err
    assert ("reward-normalisation" in err) if damage == "vecnormalize.npz" else (damage == "state.json" or
                                                                                  "truncated" in err)
    assert summary["resumed_from"]["num_timesteps"] == 512 and len(summary["resumed_from"]["skipped"]) == 1
    assert summary["total_timesteps"] == 1536


def test_no_usable_checkpoint_is_a_clear_error(trained: Path, tmp_path: Path) -> None:
    run = _copy(trained, tmp_path / "run")
    for step in (STEP_512, STEP_1024):
        (run / "checkpoints" / step / "vecnormalize.npz").unlink()
    (run / "summary.json").unlink()
    with pytest.raises(SystemExit, match=r"no usable checkpoint .*step-000000000512/vecnormalize.npz is missing: the "
                                         r"reward-normalisation statistics"):
        train.main(["--resume", str(run), "--quiet"])
    shutil.rmtree(run / "checkpoints")
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "latest.zip").write_bytes(b"PK")  # an older recfeed's pickled checkpoint
    with pytest.raises(SystemExit, match=r"older recfeed.*pickle-free"):
        train.main(["--resume", str(run), "--quiet"])


def test_sigkill_then_resume_loses_at_most_one_checkpoint_interval(tmp_path: Path, runs_cache: Path) -> None:
    """train.py killed with SIGKILL after its first checkpoint; ``--resume`` carries on from the newest whole one."""
    env = {**os.environ, "RECFEED_CACHE": str(runs_cache), "RECFEED_ENV_THREADS": "1"}
    args = tiny_args(tmp_path / "runs", "killed", 1_000_000)
    log = tmp_path / "train.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, str(REPO / "train.py"), *args], cwd=REPO, env=env,
                                stdout=out, stderr=subprocess.STDOUT)
    ckpts = tmp_path / "runs" / "killed" / "checkpoints"
    try:
        deadline = time.monotonic() + 600  # a guard against a hang, not a timing assertion
        while not checkpoint_dirs(ckpts):
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    run = ckpts.parent
    newest = json.loads((checkpoint_dirs(ckpts)[0] / "state.json").read_text())["num_timesteps"]
    assert newest >= 512 and not (run / "summary.json").exists()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RECFEED_CACHE", str(runs_cache))
        summary = train.main(["--resume", str(run), "--total-timesteps", str(newest + 512), "--quiet"])
    assert summary["resumed_from"]["num_timesteps"] == newest and summary["resumed_from"]["skipped"] == []
    assert summary["total_timesteps"] == newest + 512
    assert (run / "policy.safetensors").is_file() and (run / "report" / "results.json").is_file()
    assert not [p for p in ckpts.iterdir() if p.name.startswith(".")]  # a killed write's leftovers are gone


# ---- §5: export targets -------------------------------------------------------------------------------------------


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture()
def small_run(tmp_path: Path, small_world: World) -> Path:
    return make_run_dir(tmp_path / "runs", small_world, steps=64, summary={"tuned_alpha": 0.6})


def test_export_never_replaces_a_run_or_what_recfeed_did_not_write(small_run: Path, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    run = small_run
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "keep.txt").write_text("mine")
    other = _copy(run, tmp_path / "many" / "other-run")
    before, before_other = _snapshot(run), _snapshot(other)
    small = ["--parity-envs", "4", "--parity-steps", "2"]

    for out, force, why in [(run, True, "is the run directory"), (run.parent, True, "folder above it"),
                            (tmp_path / "many", True, "contains the run directory"),
                            (run / "checkpoints", True, "'checkpoints' of the run directory"),
                            (other, True, "is a run directory")]:
        assert export_main([str(run), "--out", str(out), *small] + (["--force"] if force else [])) == 2, out
        assert why in capsys.readouterr().err
    assert _snapshot(run) == before and _snapshot(other) == before_other

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("not recfeed's")
    assert export_main([str(run), "--out", str(mine), *small]) == 2
    assert "--force" in capsys.readouterr().err and (mine / "notes.txt").read_text() == "not recfeed's"
    afile = tmp_path / "a-file"
    afile.write_text("x")
    assert export_main([str(run), "--out", str(afile), *small]) == 2 and afile.read_text() == "x"
    assert export_main([str(run), "--out", str(mine), "--force", *small]) == 0  # replaced, as asked
    assert not (mine / "notes.txt").exists() and (mine / MANIFEST_FILE).is_file()
    assert _snapshot(run) == before


def test_export_replaces_only_a_previous_export_and_atomically(small_run: Path, small_world: World, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import agents.export as export_mod

    out = tmp_path / "export"
    export_run(small_run, "onnx", out, world=small_world, parity_envs=4, parity_steps=2)
    first = _snapshot(out)
    assert json.loads(first[MANIFEST_FILE])["producer"] == PRODUCER
    export_run(small_run, "torchscript", out, world=small_world, parity_envs=4, parity_steps=2)  # a previous export
    assert sorted(p.name for p in out.iterdir()) == ["items.npz", "manifest.json", "policy.pt"]
    second = _snapshot(out)

    def broken(*_: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(export_mod, "write_items", broken)
    with pytest.raises(OSError, match="disk full"):
        export_run(small_run, "onnx", out, world=small_world, parity_envs=4, parity_steps=2)
    assert _snapshot(out) == second  # a failed export leaves the previous one whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "runs"]  # and no temporary folder behind

    (out / "extra.txt").write_text("added by hand")
    monkeypatch.undo()
    with pytest.raises(ValueError, match="not a previous export"):
        export_run(small_run, "onnx", out, world=small_world, parity_envs=4, parity_steps=2)
    assert (out / "extra.txt").is_file()


# ---- §5: nothing a user hands us is unpickled ---------------------------------------------------------------------


class _Plant:
    """Unpickling this creates ``path`` (a stand-in for any code a crafted file could run)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return builtins.open, (str(self.path), "w")


def craft_model_zip(model_zip: Path, marker: Path) -> None:
    """Rewrite ``model_zip`` (SB3's archive) so that loading it with ``PPO.load`` creates ``marker``."""
    with zipfile.ZipFile(model_zip) as zf:
        members = {name: zf.read(name) for name in zf.namelist()}
    data = json.loads(members["data"])
    evil = {":type:": "<class 'object'>", ":serialized:": base64.b64encode(pickle.dumps(_Plant(marker))).decode()}
    data["observation_space"] = evil
    data["policy_kwargs"] = evil
    members["data"] = json.dumps(data).encode()
    with zipfile.ZipFile(model_zip, "w") as zf:
        for name, blob in members.items():
            zf.writestr(name, blob)


def test_a_crafted_model_zip_is_never_unpickled(trained: Path, tmp_path: Path) -> None:
    from agents.serve import resolve_artifact

    run = _copy(trained, tmp_path / "run")
    marker = tmp_path / "pwned"
    craft_model_zip(run / "model.zip", marker)

    results = evaluate.main(["--rankers", f"random,run:{run}", "--episodes", "8", "--seeds", "1", "--preset", "small",
                             "--set", "env.user_model.no_click_utility=3.5", "--encoder", "hashing", "--set",
                             "encoder.hashing_dim=32", "--reference", "random", "--out", str(tmp_path / "eval"),
                             "--no-progress"])
    assert not marker.exists()
    assert np.isfinite(results["rankers"][f"run:{run}"]["return"]["mean"])  # loaded from the safe files

    assert export_main([str(run), "--out", str(tmp_path / "exp"), "--parity-envs", "4", "--parity-steps", "2"]) == 0
    assert not marker.exists() and (tmp_path / "exp" / MANIFEST_FILE).is_file()

    artifact = resolve_artifact(run)  # agents.serve exports a run directory first
    assert not marker.exists() and artifact == run / "export" and (artifact / MANIFEST_FILE).is_file()

    from stable_baselines3 import PPO

    with pytest.raises(Exception):  # noqa: B017 - SB3 fails after unpickling the planted objects
        PPO.load(run / "model.zip", device="cpu")
    assert marker.exists()  # the crafted file is live: SB3's own loader runs it


def test_a_run_with_only_model_zip_is_refused_then_converted_on_request(small_run: Path) -> None:
    from agents.ppo_ranker import convert_legacy_run

    expected = load_policy(small_run, "cpu").state_dict()
    for name in ("policy.safetensors", "policy.json"):
        (small_run / name).unlink()
    with pytest.raises(FileNotFoundError, match=r"would unpickle.*python -m agents\.ppo_ranker convert"):
        load_policy(small_run, "cpu")
    convert_legacy_run(small_run)  # the explicit, trusted-file path
    assert _weights_equal(load_policy(small_run, "cpu").state_dict(), expected)


def test_damaged_policy_files_are_named(small_run: Path) -> None:
    weights = small_run / "policy.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    with pytest.raises(PolicyFileError, match=r"policy.safetensors: truncated"):
        load_policy(small_run, "cpu")
    (small_run / "policy.json").write_text("{not json")
    with pytest.raises(PolicyFileError, match=r"policy.json: unreadable"):
        load_policy(small_run, "cpu")


# ---- §7: run:DIR ranks with the mode; catalog size checked at load ------------------------------------------------


def test_run_ranker_ranks_with_the_policy_mode(small_run: Path, small_world: World) -> None:
    from envs.vector_env import RecVectorEnv

    ranker = load_run_ranker(str(small_run), "cpu")
    cfg = load_run_config(small_run)
    obs, _ = RecVectorEnv(64, config=cfg.env, world=small_world, population="heldout").reset(seed=3)
    first, second = ranker.act(obs), ranker.act(obs)
    np.testing.assert_array_equal(first, second)
    with th.no_grad():
        mode = ranker.policy.get_distribution(obs).mode().cpu().numpy()
    np.testing.assert_array_equal(first, mode)


def test_a_policy_for_another_catalog_size_is_refused_at_load(small_run: Path, small_world: World) -> None:
    from agents.registry import RankerContext, make_ranker

    m = small_world.n_items
    assert load_policy(small_run, "cpu", n_items=m) is not None
    with pytest.raises(PolicyFileError, match=f"trained on a catalog of {m} items .* this world has {m + 7} items"):
        load_policy(small_run, "cpu", n_items=m + 7)

    class Other:  # a world whose catalog is another size (only n_items is read before the error)
        n_items = m - 1

    ctx = RankerContext(Other(), load_run_config(small_run).env, device="cpu")  # type: ignore[arg-type]
    with pytest.raises(PolicyFileError, match=f"this world has {m - 1} items"):
        make_ranker(f"run:{small_run}", ctx)
