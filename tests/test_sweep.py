"""agents/sweep.py: the sweep file's validation, and a tiny sweep on Ray Tune end to end (skip, resume, failure).

Ray is the optional ``recfeed[ray]`` extra: without it the Ray tests skip, except under CI (``CI=true``), where
``make test`` has installed it and a missing Ray fails them (as :func:`conftest.require_movielens` does for data).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import TINY_TUNE_EPISODES, require_ray

from agents.sweep import FAULT_ENV, load_sweep, setting_label
from configs.loader import ConfigError

REPO = Path(__file__).resolve().parents[1]
SMOKE_SWEEP = REPO / "configs" / "sweeps" / "smoke.yaml"
#: Far smaller than configs/sweeps/smoke.yaml: 256 steps, a few dozen evaluation sessions; the world and tuning budget
#: of conftest's ``tiny_args``, so that the trials read the searches other tests' runs cached.
TINY = ["encoder.kind=hashing", "encoder.hashing_dim=32", "train.total_timesteps=256", "train.eval_every=128",
        "train.checkpoint_every=128", "train.eval_episodes=8", "train.ppo.n_envs=8", "train.ppo.n_steps=16",
        "train.ppo.batch_size=64", "train.ppo.n_epochs=1", "eval.episodes=16", "eval.bootstrap=100",
        "eval.batch=16", f"eval.tune_episodes={TINY_TUNE_EPISODES}"]


def write_sweep(path: Path, **extra: object) -> Path:
    """A sweep file on configs/smoke.yaml with the :data:`TINY` budget, updated by ``extra``."""
    data = {"config": str(REPO / "configs" / "smoke.yaml"), "set": list(TINY), "seeds": [0, 1],
            "grid": {"train.ppo.learning_rate": [1.0e-3, 3.0e-4]}, "cpus_per_trial": 1, "max_concurrent": 2,
            "num_cpus": 2, "out": str(path.parent / "sweep")}
    data.update(extra)
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


# ---- the sweep file (no Ray) -----------------------------------------------------------------------------------


def test_shipped_sweep_files_validate(tmp_path: Path) -> None:
    for name in ("smoke", "quality", "quality-adapt"):  # quality-ml needs a calibrated preset (presets/ml)
        sweep = load_sweep(REPO / "configs" / "sweeps" / f"{name}.yaml", out=str(tmp_path / name))
        assert sweep.trials and all(t.run_dir.parent == tmp_path.resolve() / name / "runs" for t in sweep.trials)
    quality = load_sweep(REPO / "configs" / "sweeps" / "quality.yaml", out=str(tmp_path / "q"))
    assert [t.seed for t in quality.trials] == [0, 1, 2, 3, 4]
    assert all("train.max_minutes=15" in t.overrides for t in quality.trials)


def test_grid_times_seeds_and_stable_names(tmp_path: Path) -> None:
    sweep = load_sweep(write_sweep(tmp_path / "s.yaml", grid={"train.ppo.learning_rate": [1e-3, 3e-4],
                                                              "train.ppo.n_epochs": [1, 2]}))
    assert len(sweep.trials) == 8 and len(sweep.settings) == 4
    assert len({t.run_dir for t in sweep.trials}) == 8
    again = load_sweep(tmp_path / "s.yaml")
    assert [t.run_dir for t in again.trials] == [t.run_dir for t in sweep.trials]
    t = sweep.trials[0]
    assert "train.ppo.learning_rate=0.001" in t.overrides and f"train.seed={t.seed}" in t.overrides
    assert setting_label({}) == "base"
    assert setting_label({"train.ppo.ent_coef": 0.1, "train.policy.ent_coef": 0.2}).count("ent_coef") == 2


def test_random_draws_are_seeded_and_in_range(tmp_path: Path) -> None:
    path = write_sweep(tmp_path / "r.yaml", grid=None, samples=3, random_seed=7,
                       random={"train.ppo.ent_coef": {"loguniform": [1e-4, 1e-2]},
                               "train.ppo.n_epochs": {"randint": [1, 4]}})
    a, b = load_sweep(path), load_sweep(path)
    assert [t.values for t in a.trials] == [t.values for t in b.trials]
    assert len(a.settings) == 3
    for t in a.trials:
        assert 1e-4 <= t.values["train.ppo.ent_coef"] <= 1e-2 and t.values["train.ppo.n_epochs"] in (1, 2, 3)


@pytest.mark.parametrize(("extra", "needle"), [
    ({"seedz": [0]}, "seedz"),
    ({"seeds": []}, "seeds"),
    ({"seeds": [0, 0]}, "seeds"),
    ({"cpus_per_trial": 0}, "cpus_per_trial"),
    ({"max_concurrent": "two"}, "max_concurrent"),
    ({"grid": {"train.ppo.learnin_rate": [1e-3]}}, "learnin_rate"),
    ({"grid": {"train.ppo.n_epochs": [0]}}, "n_epochs"),
    ({"grid": {"train.ppo.n_epochs": 2}}, "grid.train.ppo.n_epochs"),
    ({"grid": {"train.seed": [1, 2]}}, "train.seed"),
    ({"grid": None, "random": {"train.ppo.ent_coef": {"gauss": [0, 1]}}}, "gauss"),
    ({"grid": None, "random": {"train.ppo.ent_coef": {"loguniform": [0, 1]}}}, "loguniform"),
    ({"samples": 3}, "samples"),
    ({"config": "nowhere.yaml"}, "nowhere.yaml"),
    ({"set": ["env.slate_size=0"]}, "slate_size"),
])
def test_bad_sweep_files_name_the_key(tmp_path: Path, extra: dict, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        load_sweep(write_sweep(tmp_path / "bad.yaml", **extra))


def test_dry_run_lists_trials_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from agents.sweep import main

    path = write_sweep(tmp_path / "s.yaml")
    out = main(["--config", str(path), "--dry-run"])
    assert len(out["trials"]) == 4 and len(capsys.readouterr().out.strip().splitlines()) == 4
    assert not (tmp_path / "sweep").exists()
    with pytest.raises(SystemExit, match="seedz"):
        main(["--config", str(write_sweep(tmp_path / "bad.yaml", seedz=[1])), "--dry-run"])


def test_the_sweep_module_does_not_import_ray() -> None:
    """Ray is optional: importing the sweep module does not import it (only running a sweep does)."""
    import subprocess
    import sys

    code = "import sys, agents.sweep; print('ray' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


# ---- on Ray ------------------------------------------------------------------------------------------------------
# One Ray cluster for the whole story (each start costs seconds): a head and a second node on loopback.


def test_sweep_on_two_nodes_skip_and_retry(tmp_path: Path, runs_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """2 settings × 2 seeds on a head and a second Ray node on this machine (one CPU each), joined by address:
    the concurrent one-CPU trials run on both nodes; one trial fails (injected), the rest finish and are
    tabulated; the second invocation trains only the failed trial; a third trains nothing and starts no Ray."""
    require_ray()
    import ray
    from ray.cluster_utils import Cluster

    from agents.sweep import main

    monkeypatch.setenv("RECFEED_CACHE", str(runs_cache))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    path = write_sweep(tmp_path / "tiny.yaml", num_cpus=None)
    sweep = load_sweep(path)
    broken = sweep.trials[-1]
    monkeypatch.setenv(FAULT_ENV, broken.name)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        first = main(["--config", str(path), "--address", cluster.address])
        assert first["status"][broken.name].startswith("failed") and "injected fault" in first["status"][broken.name]
        assert all(first["status"][t.name] == "trained" for t in sweep.trials[:-1])
        nodes = {info["node_id"] for info in first["trials"].values() if "node_id" in info}
        assert len(nodes) == 2 and nodes <= {n["NodeID"] for n in ray.nodes() if n["Alive"]}
        assert not (broken.run_dir / "summary.json").exists()
        for t in sweep.trials[:-1]:  # each a normal run directory
            for f in ("config.yaml", "summary.json", "policy.safetensors", "report/results.json"):
                assert (t.run_dir / f).is_file(), (t.name, f)
            assert any((t.run_dir / "tb").rglob("events.out.tfevents.*"))
            cfg = yaml.safe_load((t.run_dir / "config.yaml").read_text(encoding="utf-8"))
            assert cfg["train"]["seed"] == t.seed and cfg["train"]["torch_threads"] == 1
            assert cfg["train"]["ppo"]["learning_rate"] == t.values["train.ppo.learning_rate"]
        rows = {r["setting"]: r for r in first["settings"]}
        assert [rows[s]["finished"] for s in sweep.settings] == [2, 1]
        agg = rows[sweep.settings[0]]["aggregate"]
        assert agg["seeds"] == 2 and {"ppo", "tuned-alpha", "tuned-diverse"} <= set(agg["return"])
        lo, hi = agg["ratio_vs_tuned_diverse"]["ci95"]
        assert lo <= agg["ratio_vs_tuned_diverse"]["mean"] <= hi
        md = Path(first["files"]["md"]).read_text(encoding="utf-8")
        assert broken.name in md and sweep.settings[1] in md
        assert Path(first["files"]["png"]).read_bytes()[:4] == b"\x89PNG"
        assert "return:ppo" in Path(first["files"]["csv"]).read_text(encoding="utf-8")

        # As if a time-limited run (learning stopped by train.max_minutes at 256 of 100,000 steps) had been killed in
        # its final evaluation: resumed from its checkpoint, evaluated again, and not trained any further.
        cut = sweep.trials[0]
        (cut.run_dir / "summary.json").unlink()
        saved_cfg = yaml.safe_load((cut.run_dir / "config.yaml").read_text(encoding="utf-8"))
        saved_cfg["train"].update(total_timesteps=100_000, max_minutes=5.0)
        (cut.run_dir / "config.yaml").write_text(yaml.safe_dump(saved_cfg), encoding="utf-8")
        stamps = {t.name: (t.run_dir / "summary.json").stat().st_mtime_ns for t in sweep.trials[1:-1]}
        monkeypatch.delenv(FAULT_ENV)
        second = main(["--config", str(path), "--address", cluster.address])
        assert second["status"][broken.name] == "trained" and second["status"][cut.name] == "resumed"
        resumed = json.loads((cut.run_dir / "summary.json").read_text(encoding="utf-8"))
        assert resumed["resumed_from"]["num_timesteps"] == 256 and resumed["total_timesteps"] == 256
        assert all(second["status"][n] == "finished before" for n in stamps)
        assert {n: (sweep.out / "runs" / n / "summary.json").stat().st_mtime_ns for n in stamps} == stamps
        assert [r["finished"] for r in second["settings"]] == [2, 2]
    finally:
        ray.shutdown()
        cluster.shutdown()
    third = main(["--config", str(path)])
    assert set(third["status"].values()) == {"finished before"} and not third["trials"]
    assert not ray.is_initialized()
    saved = json.loads(Path(third["files"]["json"]).read_text(encoding="utf-8"))
    assert [r["finished"] for r in saved["settings"]] == [2, 2]


def test_local_ray_by_default_with_the_sweeps_cpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    require_ray()
    import ray

    from agents.sweep import _init_ray

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    sweep = load_sweep(write_sweep(tmp_path / "s.yaml", num_cpus=1))
    try:
        _init_ray(sweep.spec, None)
        assert ray.cluster_resources().get("CPU") == 1 and len(ray.nodes()) == 1
    finally:
        ray.shutdown()
