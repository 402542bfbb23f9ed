"""configs/: the one resolver (preset → file → --set → flags), range checks, and train.py's bad input.

Nothing here builds a world or trains: train.py's training entry is replaced by a stub that records the config it
was handed (and fails the test if bad input reached it).
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import train
from configs.loader import (
    PRESET_DIR,
    ConfigError,
    check_output_dir,
    load_config,
    preset_env,
    read_yaml_mapping,
    resolve_config,
)
from configs.schema import Config, EnvConfig, PPOConfig, TrainConfig

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "configs" / "smoke.yaml"


class Handed(Exception):
    """Raised by the stub trainer: carries the config train.py resolved."""

    def __init__(self, cfg: Config) -> None:
        super().__init__("train() called")
        self.cfg = cfg


@pytest.fixture()
def stub_train(monkeypatch: pytest.MonkeyPatch) -> None:
    """agents.training.train records the config instead of training."""
    import agents.training

    def fake(cfg: Config, run_dir: Any = None, resume: bool = False, progress: bool = True) -> dict:
        raise Handed(cfg)

    monkeypatch.setattr(agents.training, "train", fake)


def handed(argv: list[str]) -> Config:
    """The config train.main would train with."""
    with pytest.raises(Handed) as exc:
        train.main(argv)
    return exc.value.cfg


# ---- the resolver -----------------------------------------------------------------------------------------------


def test_train_preset_keeps_the_config_env_and_set(stub_train: None, tmp_path: Path) -> None:
    """Regression: ``--preset`` used to replace the whole env section, dropping the file's env: and --set env.*."""
    cfg = handed(["--config", str(SMOKE), "--preset", "small", "--set", "env.max_steps=7", "--out", str(tmp_path)])
    assert cfg.env.max_steps == 7
    assert cfg.env.preset == "small" and cfg.env.catalog.n_items == 400
    cfg = handed(["--preset", "small", "--set", "env.user_model.no_click_utility=2.0", "--out", str(tmp_path)])
    assert cfg.env.user_model.no_click_utility == 2.0 and cfg.env.n_candidates == 20


def test_layers_apply_in_order(tmp_path: Path) -> None:
    """preset YAML, then the file's env:, then --set, then flags; the flag's preset wins over env.preset."""
    path = tmp_path / "c.yaml"
    path.write_text("env:\n  preset: small\n  max_steps: 12\n  slate_size: 4\ntrain:\n  out_dir: from-file\n",
                    encoding="utf-8")
    cfg = resolve_config(path, None, ["env.slate_size=3"], flags={"train": {"out_dir": "from-flag"}})
    small = preset_env("small")
    assert (cfg.env.preset, cfg.env.n_candidates, cfg.env.catalog.n_items) == ("small", 20, 400)  # the preset
    assert cfg.env.max_steps == 12  # the file over the preset
    assert cfg.env.slate_size == 3  # --set over the file
    assert cfg.train.out_dir == "from-flag"  # flags over everything
    assert cfg.env.user_model == small.user_model
    over = resolve_config(path, "default", [])
    assert (over.env.preset, over.env.n_candidates, over.env.max_steps) == ("default", 100, 12)
    assert resolve_config(None, None, ["env.preset=small"]).env == small
    assert resolve_config().env == preset_env("default") == EnvConfig()  # the default preset is the schema default


def test_env_base_is_used_only_when_no_preset_is_named() -> None:
    base = dataclasses.asdict(preset_env("small", {"max_steps": 9}))
    assert resolve_config(None, None, ["env.slate_size=2"], env_base=base).env == preset_env(
        "small", {"max_steps": 9, "slate_size": 2})
    assert resolve_config(None, "default", [], env_base=base).env == EnvConfig()


def test_calibrated_preset_directory(tmp_path: Path) -> None:
    folder = tmp_path / "cal"
    folder.mkdir()
    (folder / "env.yaml").write_text("preset: calibrated:test\nn_candidates: 12\nslate_size: 3\n", encoding="utf-8")
    cfg = resolve_config(None, str(folder), ["env.max_steps=8"])
    assert cfg.env.preset_dir == str(folder.resolve()) and cfg.env.preset == "calibrated:test"
    assert (cfg.env.n_candidates, cfg.env.slate_size, cfg.env.max_steps) == (12, 3, 8)


@pytest.mark.parametrize(
    ("preset", "message"),
    [
        ("nope", "env.preset: unknown preset 'nope'; known presets: ['adapt', 'default', 'small']"),
        ("no/such/dir", "env.preset: preset directory 'no/such/dir' does not exist"),
    ],
)
def test_bad_preset_is_named(preset: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        resolve_config(None, preset)


def test_preset_directory_without_env_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=re.escape("has no env.yaml")):
        resolve_config(None, str(tmp_path))


def test_envs_preset_config_delegates_to_the_resolver() -> None:
    from envs.presets import preset_config

    assert preset_config("small", {"max_steps": 3}) == preset_env("small", {"max_steps": 3})
    with pytest.raises(ValueError, match="unknown preset"):
        preset_config("nope")


def test_shipped_configs_and_presets_resolve() -> None:
    for path in sorted((REPO / "configs").glob("*.yaml")):
        if path.name != "plausibility.yaml":  # data (the plausibility range), not a run config
            resolve_config(path)
    for path in sorted(PRESET_DIR.glob("*.yaml")):
        assert preset_env(path.stem).preset == path.stem
    Config()  # the schema's defaults pass their own checks


def test_configs_import_nothing_downstream() -> None:
    """The import graph runs configs → encoders → envs → agents, one way: configs imports none of them."""
    code = ("import sys, configs, configs.loader, configs.schema; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('envs', 'agents', 'encoders')); "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


# ---- range checks ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("env.slate_size=0", "env.slate_size: must be >= 1, got 0"),
        ("env.slate_size=21", "env.slate_size: must be <= n_candidates (20), got 21"),
        ("env.n_candidates=0", "env.n_candidates: must be >= 1, got 0"),
        ("env.max_steps=0", "env.max_steps: must be >= 1, got 0"),
        ("env.n_candidates=390", "env.n_candidates: 390 candidates need a catalog of at least 440 items"),
        ("env.state_decay=1.5", "env.state_decay: must be in [0, 1], got 1.5"),
        ("env.catalog.n_items=0", "env.catalog.n_items: must be >= 1, got 0"),
        ("env.user_model.rho_mix=1.2", "env.user_model.rho_mix: must be in [0, 1], got 1.2"),
        ("env.user_model.rho_a=0", "env.user_model.rho_a: must be > 0, got 0.0"),
        ("env.user_model.n_train=0", "env.user_model.n_train: must be >= 1, got 0"),
        ("env.user_model.cascade_abandon=1", "env.user_model.cascade_abandon: must be in [0, 1), got 1.0"),
        ("env.user_model.budget_mean=-1", "env.user_model.budget_mean: must be > 0, got -1.0"),
        ("env.user_model.dwell_sigma=.nan", "env.user_model.dwell_sigma: must be a finite number, got nan"),
        ("env.reward.click=.inf", "env.reward.click: must be a finite number, got inf"),
        ("env.logging.epsilon=1.5", "env.logging.epsilon: must be in [0, 1], got 1.5"),
        ("env.logging.temperature=0", "env.logging.temperature: must be > 0, got 0.0"),
        ("env.logging.history_len=0", "env.logging.history_len: must be >= 1, got 0"),
        ("env.candidates.pool_size=0", "env.candidates.pool_size: must be >= 1, got 0"),
        ("env.candidates.cf_share=-0.1", "env.candidates.cf_share: must be >= 0, got -0.1"),
        ("env.user_model.session_intent=-0.5", "env.user_model.session_intent: must be >= 0, got -0.5"),
        ("encoder.hashing_dim=0", "encoder.hashing_dim: must be >= 1, got 0"),
        ("train.total_timesteps=0", "train.total_timesteps: must be >= 1, got 0"),
        ("train.max_minutes=0", "train.max_minutes: must be > 0, got 0.0"),
        ("train.seed=-1", "train.seed: must be >= 0, got -1"),
        ("train.eval_every=-5", "train.eval_every: must be >= 0, got -5"),
        ("train.run_name=a/b", "train.run_name: must be a plain folder name (no path separators), got 'a/b'"),
        ("train.ppo.n_envs=0", "train.ppo.n_envs: must be >= 1, got 0"),
        ("train.ppo.batch_size=1", "train.ppo.batch_size: must be >= 2, got 1"),
        ("train.ppo.gamma=1.01", "train.ppo.gamma: must be in [0, 1], got 1.01"),
        ("train.ppo.learning_rate=0", "train.ppo.learning_rate: must be > 0, got 0.0"),
        ("train.ppo.target_kl=-1", "train.ppo.target_kl: must be > 0, got -1.0"),
        ("train.ppo.learning_rate_end=-1e-4", "train.ppo.learning_rate_end: must be >= 0, got -0.0001"),
        ("train.policy.init_alpha=2", "train.policy.init_alpha: must be in [0, 1], got 2.0"),
        ("train.policy.temperature=0", "train.policy.temperature: must be > 0, got 0.0"),
        ("eval.episodes=0", "eval.episodes: must be >= 1, got 0"),
        ("eval.tune_episodes=0", "eval.tune_episodes: must be >= 1, got 0"),
        ("eval.first_seed=-1", "eval.first_seed: must be >= 0, got -1"),
        ("eval.bootstrap=10", "eval.bootstrap: use at least 100 resamples, got 10"),
        ("eval.alpha_grid=[]", "eval.alpha_grid: a non-empty list of numbers in [0, 1], got []"),
        ("eval.alpha_grid=[0.5,1.2]", "eval.alpha_grid: a non-empty list of numbers in [0, 1], got [0.5, 1.2]"),
        ("eval.alpha_grid=[.nan]", "eval.alpha_grid: a non-empty list of numbers in [0, 1], got [nan]"),
    ],
)
def test_impossible_values_name_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        resolve_config(None, "small", [override])
    assert str(exc.value) == message or str(exc.value).startswith(message), str(exc.value)


def test_cross_field_checks() -> None:
    with pytest.raises(ConfigError, match=re.escape("the four *_share values are all 0")):
        resolve_config(None, "small", [f"env.candidates.{k}_share=0" for k in ("llm", "cf", "popular", "random")])
    with pytest.raises(ConfigError, match=re.escape("train.ppo.n_steps: a rollout of n_envs × n_steps = 1 step")):
        resolve_config(None, None, ["train.ppo.n_envs=1", "train.ppo.n_steps=1"])
    # a catalog read from a file has its own size: the synthetic n_items does not bound N there
    assert resolve_config(None, "small", ["env.catalog.source=items.csv", "env.n_candidates=390"]).env.n_candidates \
        == 390


def test_checks_hold_for_configs_built_in_code() -> None:
    with pytest.raises(ConfigError, match="slate_size: must be <= n_candidates"):
        EnvConfig(n_candidates=5, slate_size=6)
    with pytest.raises(ConfigError, match="n_envs: must be >= 1"):
        PPOConfig(n_envs=0)
    with pytest.raises(ConfigError, match="total_timesteps"):
        dataclasses.replace(TrainConfig(), total_timesteps=-1)


def test_saved_config_is_checked_on_load(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("env:\n  max_steps: -3\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=re.escape("env.max_steps: must be >= 1, got -3")):
        load_config(path)


# ---- files and folders -------------------------------------------------------------------------------------------


def test_unreadable_yaml_is_one_clear_line(tmp_path: Path) -> None:
    latin = tmp_path / "latin1.yaml"
    latin.write_bytes("env:\n  preset: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1.yaml' is not UTF-8 text \(byte 0xe9 at offset 18\)"):
        read_yaml_mapping(latin)
    with pytest.raises(ConfigError, match="is a folder, not a YAML file"):
        read_yaml_mapping(tmp_path)
    broken = tmp_path / "broken.yaml"
    broken.write_text("env:\n  max_steps: [1,\n", encoding="utf-8")
    with pytest.raises(ConfigError) as exc:
        read_yaml_mapping(broken)
    assert "is not valid YAML" in str(exc.value) and "line" in str(exc.value) and "\n" not in str(exc.value)
    listed = tmp_path / "list.yaml"
    listed.write_text("- 1\n- 2\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="must hold a mapping at top level, got list"):
        read_yaml_mapping(listed)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "secret.yaml"
    path.write_text("env: {}\n", encoding="utf-8")
    path.chmod(0)
    with pytest.raises(ConfigError, match=re.escape("secret.yaml' cannot be read")):
        read_yaml_mapping(path)


def test_output_folder_checks(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"'.*afile' is a file, not a folder"):
        check_output_dir(afile, "--out")
    with pytest.raises(ConfigError, match=r"'.*afile' is a file, not a folder"):
        check_output_dir(afile / "deeper" / "still", "--out")
    assert check_output_dir(tmp_path / "new" / "folder", "--out") == tmp_path / "new" / "folder"
    assert not (tmp_path / "new").exists()  # a check, not a mkdir


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--set", "env.slate_size=0"], "env.slate_size: must be >= 1, got 0"),
        (["--set", "env.slate_size=99"], "env.slate_size: must be <= n_candidates (20), got 99"),
        (["--set", "env.max_steps=0"], "env.max_steps: must be >= 1, got 0"),
        (["--set", "env.n_candidates=0"], "env.n_candidates: must be >= 1, got 0"),
        (["--set", "train.ppo.n_envs=0"], "train.ppo.n_envs: must be >= 1, got 0"),
        (["--set", "train.total_timesteps=0"], "train.total_timesteps: must be >= 1, got 0"),
        (["--preset", "nope"], "env.preset: unknown preset 'nope'"),
        (["--name", "../escape"], "train.run_name: must be a plain folder name"),
    ],
)
def test_train_rejects_impossible_values_before_a_run_directory(stub_train: None, tmp_path: Path, argv: list[str],
                                                                message: str) -> None:
    out = tmp_path / "runs"
    with pytest.raises(SystemExit) as exc:
        train.main(["--config", str(SMOKE), "--out", str(out), "--name", "r", *argv])
    assert str(exc.value.code).startswith("train.py: error: ") and message in str(exc.value.code)
    assert "\n" not in str(exc.value.code)
    assert not out.exists()


def test_train_bad_paths_are_one_line_before_any_work(stub_train: None, tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x", encoding="utf-8")
    latin = tmp_path / "latin1.yaml"
    latin.write_bytes(b"train:\n  run_name: caf\xe9\n")
    (tmp_path / "runs" / "taken").mkdir(parents=True)
    cases = [
        (["--config", str(tmp_path / "missing.yaml")], "missing.yaml' does not exist"),
        (["--config", str(tmp_path)], "is a folder, not a YAML file"),
        (["--config", str(latin)], "is not UTF-8 text"),
        (["--out", str(afile)], f"--out '{afile}': '{afile}' is a file, not a folder"),
        (["--out", str(afile / "sub")], f"'{afile}' is a file, not a folder"),
        (["--out", str(tmp_path / "runs"), "--name", "taken"], "already exists; pick another --name"),
        (["--resume", str(tmp_path / "nowhere")], "not a run directory (no config.yaml)"),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit) as exc:
            train.main(argv)
        text = str(exc.value.code)
        assert text.startswith("train.py: error: ") and message in text and "\n" not in text, (argv, text)
    assert afile.read_text(encoding="utf-8") == "x"


def test_resume_takes_no_other_config(stub_train: None, tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("train:\n  total_timesteps: 100\n", encoding="utf-8")
    with pytest.raises(SystemExit, match="--resume continues a run with its saved config"):
        train.main(["--resume", str(run), "--set", "env.max_steps=3"])
    cfg = handed(["--resume", str(run), "--total-timesteps", "300"])
    assert cfg.train.total_timesteps == 300


# ---- the benches resolve configs the same way ---------------------------------------------------------------------


@pytest.mark.parametrize("module", ["bench.env_throughput", "bench.eval_throughput", "bench.headroom",
                                    "bench.train_throughput"])
def test_benches_use_the_resolver(monkeypatch: pytest.MonkeyPatch, module: str) -> None:
    import importlib

    bench = importlib.import_module(module)

    def fake_load_world(env: EnvConfig, *args: Any, **kwargs: Any) -> None:
        raise Handed(Config(env=env))

    monkeypatch.setattr(bench, "load_world", fake_load_world)
    argv = ["--set", "env.preset=small", "--set", "env.max_steps=7"]
    if module != "bench.train_throughput":
        argv = ["--preset", "small", "--set", "env.max_steps=7"]
    with pytest.raises(Handed) as exc:
        bench.main(argv)
    env = exc.value.cfg.env
    assert (env.preset, env.n_candidates, env.max_steps) == ("small", 20, 7)
    with pytest.raises(SystemExit):
        bench.main(["--set", "env.slate_size=0"])


def test_file_helpers_json_default_sha256_and_deep_merge(tmp_path: Path) -> None:
    """configs.fileio's shared helpers (one definition each) and the one nested-dict merge."""
    import hashlib
    import json
    from types import MappingProxyType

    import numpy as np

    from configs.fileio import atomic_write_bytes, json_default, sha256_file
    from configs.loader import deep_merge

    doc = {"i": np.int64(3), "f": np.float32(0.5), "b": np.bool_(True), "a": np.arange(3)}
    assert json.loads(json.dumps(doc, default=json_default)) == {"i": 3, "f": 0.5, "b": True, "a": [0, 1, 2]}
    with pytest.raises(TypeError, match="not JSON serialisable"):
        json.dumps({"x": object()}, default=json_default)
    blob = bytes(range(256)) * 5000  # more than one 1 MiB block
    atomic_write_bytes(tmp_path / "f.bin", blob)
    assert sha256_file(tmp_path / "f.bin") == hashlib.sha256(blob).hexdigest()
    base = {"a": {"x": 1, "y": 2}, "b": 1}
    assert deep_merge(base, {"a": MappingProxyType({"y": 3})}) == {"a": {"x": 1, "y": 3}, "b": 1}
    assert base == {"a": {"x": 1, "y": 2}, "b": 1}


def test_yaml_errors_point_at_the_line_and_column(tmp_path: Path) -> None:
    bad = tmp_path / "indent.yaml"
    bad.write_text("env:\n  max_steps: 1\n slate_size: 2\n", encoding="utf-8")  # line 3 is indented by one space
    with pytest.raises(ConfigError, match=r"expected <block end>, but found '<block mapping start>' at line 3, "
                                          r"column 2$"):
        read_yaml_mapping(bad)


def test_load_config_without_a_file_is_the_schema_default() -> None:
    assert load_config() == Config()
    assert load_config(None, ["env.max_steps=7"]).env.max_steps == 7


def test_preset_overrides_are_named_under_env() -> None:
    with pytest.raises(ConfigError, match=r"^env\.max_steps: must be >= 1, got 0"):
        preset_env("small", {"max_steps": 0})


def test_output_folder_refuses_an_empty_path_and_a_dangling_link(tmp_path: Path) -> None:
    for empty in ("", "  "):
        with pytest.raises(ConfigError, match=r"^--out: empty path$"):
            check_output_dir(empty, "--out")
    link = tmp_path / "gone"
    link.symlink_to(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match=r"'.*gone' is a dangling symbolic link"):
        check_output_dir(link / "run", "--out")


def test_override_values_may_hold_equals_signs_and_encoder_base_is_the_start() -> None:
    assert resolve_config(None, None, ["train.run_name=a=b"]).train.run_name == "a=b"  # split at the first '='
    cfg = resolve_config(None, None, ["encoder.hashing_dim=32"], encoder_base={"kind": "hashing", "hashing_dim": 16})
    assert (cfg.encoder.kind, cfg.encoder.hashing_dim) == ("hashing", 32)
    assert resolve_config(None, None, (), encoder_base={"kind": "hashing"}).encoder.kind == "hashing"


def test_exponent_notation_is_a_number_where_the_schema_asks_for_one(tmp_path: Path) -> None:
    """YAML 1.1 reads ``1e6`` and ``3e-4`` as strings; a config that writes them means numbers. A string field keeps
    the text, and an integer field still refuses a fraction."""
    cfg = resolve_config(None, None, ["train.total_timesteps=2e6", "train.ppo.learning_rate=3e-4",
                                      "train.ppo.target_kl=1E-2", "train.run_name=1e6"])
    assert cfg.train.total_timesteps == 2_000_000 and isinstance(cfg.train.total_timesteps, int)
    assert cfg.train.ppo.learning_rate == 3e-4 and cfg.train.ppo.target_kl == 0.01
    assert cfg.train.run_name == "1e6"
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  ppo:\n    learning_rate: 5e-4\n")
    assert resolve_config(str(path)).train.ppo.learning_rate == 5e-4
    with pytest.raises(ConfigError, match=r"^train\.total_timesteps: expected an integer, got 1500\.5$"):
        resolve_config(None, None, ["train.total_timesteps=1.5005e3"])
    with pytest.raises(ConfigError, match=r"^train\.ppo\.learning_rate: must be a finite number, got inf$"):
        resolve_config(None, None, ["train.ppo.learning_rate=1e999"])  # inf: not finite


def test_optional_fields_check_the_value_and_take_null() -> None:
    # `float | None`: a wrong value gets the float's message under the key; null is allowed.
    with pytest.raises(ConfigError, match=r"^train\.ppo\.target_kl: expected a number, got 'abc'$"):
        resolve_config(None, None, ["train.ppo.target_kl=abc"])
    assert resolve_config(None, None, ["train.ppo.target_kl=null"]).train.ppo.target_kl is None
    assert resolve_config(None, None, ["train.ppo.target_kl=0.02"]).train.ppo.target_kl == 0.02
