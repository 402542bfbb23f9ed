"""Seed sweeps and hyperparameter searches as Ray Tune trials: ``python -m agents.sweep --config SWEEP.yaml``.

A sweep file names a base training config, the settings to try (``grid:`` of dotted config keys → values, or
``random:`` key → distribution with ``samples: n``) and the training ``seeds``; every (setting, seed) pair is one
Tune trial that runs :func:`agents.training.train` into its own normal run directory (config, TensorBoard,
summary, model, report) under ``<out>/runs/<setting>__s<seed>``, which ``evaluate.py run:DIR`` reads. The sweep
ends with one table — per setting, the mean and 95% t-interval over seeds of every ranker's held-out return and
of PPO / tuned-diverse (:func:`bench.quality_protocol.aggregate`) — written as ``sweep.md``, ``sweep.csv``,
``sweep.json`` and ``sweep.png`` into the sweep folder.

A sweep file (every key but ``seeds`` is optional)::

    config: configs/quality.yaml     # base train config (values only), relative to the current folder
    preset: default                  # env preset (wins over env.preset in the config)
    set: [train.max_minutes=15]      # overrides for every trial
    grid:                            # all combinations ...
      train.ppo.learning_rate: [3.0e-4, 1.0e-4]
    random:                          # ... times `samples` draws of these (seeded by random_seed)
      train.ppo.ent_coef: {loguniform: [1.0e-4, 1.0e-2]}   # also uniform: [lo, hi], randint: [lo, hi), choice: [..]
    samples: 4
    random_seed: 0
    seeds: [0, 1, 2, 3, 4]
    cpus_per_trial: 1                # Tune's resource request; also the trial's torch and env-kernel threads
    max_concurrent: 2                # trials at a time (null: as many as the CPUs allow)
    num_cpus: null                   # CPUs of a local Ray (null: the machine's); ignored when joining a cluster
    out: runs/sweeps/quality         # the sweep folder

Settings are drawn here, not by Tune's searchers, so a sweep's trials and their folder names are the same at every
invocation: a re-run skips trials whose run directory holds ``summary.json`` and ``report/results.json``, and
re-runs the others — from the run's newest checkpoint (``train(resume=True)``) where it has one. Trials that raise
are reported (Tune's ERROR state, the error's last line) and the sweep still aggregates the finished ones.

Ray is imported only here (the ``recfeed[ray]`` extra). ``ray.init()`` starts a local Ray by default;
``--address`` or ``RAY_ADDRESS`` joins a running cluster (README: ``ray start --head`` / ``ray start --address``).
"""

from __future__ import annotations

import argparse
import csv
import io
import itertools
import json
import math
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from configs.fileio import figure_png
from configs.loader import (
    ConfigError,
    atomic_write_bytes,
    atomic_write_text,
    check_output_dir,
    from_dict,
    read_yaml_mapping,
    resolve_config,
)
from configs.schema import Config, FieldError

#: The ranker every setting's PPO is compared with (the quality bar's reference).
REFERENCE = "tuned-diverse"
#: Environment variables forwarded to every trial (the process of a trial may run on another node).
FORWARD_ENV_PREFIX = "RECFEED_"
#: Test hook: a trial whose run name equals this variable raises before training (forwarded like RECFEED_*).
FAULT_ENV = "RECFEED_SWEEP_FAULT"
DISTRIBUTIONS = ("uniform", "loguniform", "randint", "choice")
_SAFE = re.compile(r"[^A-Za-z0-9._=+,-]+")


@dataclass
class SweepSpec:
    """The scalar part of a sweep file (``grid`` and ``random`` are checked separately).

    Attributes:
        seeds: Training seeds (``train.seed``), distinct; each setting runs once per seed.
        config: Base train config file (values only), or ``None`` for the schema's defaults.
        preset: Env preset name or calibrated preset folder (``None``: ``env.preset`` of the config, else default).
        set: ``key.path=value`` overrides applied to every trial, before the setting's own values.
        samples: Draws of the ``random`` keys (each combined with every grid point).
        random_seed: Seed of those draws.
        cpus_per_trial: CPUs Tune reserves per trial; also the trial's torch and env-kernel threads.
        max_concurrent: Trials at a time (``None``: as many as the CPUs allow).
        num_cpus: CPUs of a local Ray (``None``: the machine's); not used when joining a cluster.
        out: The sweep folder.
        name: Title of the table (``None``: the sweep file's name).
    """

    seeds: list[int] = field(default_factory=list)
    config: str | None = None
    preset: str | None = None
    set: list[str] = field(default_factory=list)
    samples: int = 1
    random_seed: int = 0
    cpus_per_trial: float = 1.0
    max_concurrent: int | None = None
    num_cpus: int | None = None
    out: str = "runs/sweeps/sweep"
    name: str | None = None

    def __post_init__(self) -> None:
        if not self.seeds:
            raise FieldError("seeds", "name at least one training seed, e.g. [0, 1, 2]")
        if len(set(self.seeds)) != len(self.seeds):
            raise FieldError("seeds", f"must be distinct, got {self.seeds}")
        if any(s < 0 for s in self.seeds):
            raise FieldError("seeds", f"must be >= 0, got {self.seeds}")
        if self.samples < 1:
            raise FieldError("samples", f"must be >= 1, got {self.samples}")
        if not (self.cpus_per_trial > 0 and math.isfinite(self.cpus_per_trial)):
            raise FieldError("cpus_per_trial", f"must be > 0, got {self.cpus_per_trial}")
        if self.max_concurrent is not None and self.max_concurrent < 1:
            raise FieldError("max_concurrent", f"must be >= 1 or null, got {self.max_concurrent}")
        if self.num_cpus is not None and self.num_cpus < 1:
            raise FieldError("num_cpus", f"must be >= 1 or null, got {self.num_cpus}")
        if not self.out.strip():
            raise FieldError("out", "empty path")


@dataclass
class Trial:
    """One (setting, seed) pair.

    Attributes:
        setting: The setting's folder-safe label (``base`` without swept keys).
        values: The setting's swept values, dotted key → value.
        seed: The training seed.
        run_dir: Its run directory (absolute).
        overrides: Every ``key=value`` override of the trial (the sweep's ``set``, the setting, the seed); the run's
            folder goes in as ``train.out_dir`` / ``train.run_name`` (:func:`trial_config`).
    """

    setting: str
    values: dict[str, Any]
    seed: int
    run_dir: Path
    overrides: list[str]

    @property
    def name(self) -> str:
        """The run directory's name."""
        return self.run_dir.name


@dataclass
class Sweep:
    """A validated sweep: the spec, where its files are, and its trials in order."""

    spec: SweepSpec
    path: Path
    out: Path
    config: Path | None
    trials: list[Trial]

    @property
    def settings(self) -> list[str]:
        """The setting labels, in order, each once."""
        return list(dict.fromkeys(t.setting for t in self.trials))


# ---- the sweep file --------------------------------------------------------------------------------------------


def _check_key(key: Any, where: str) -> str:
    if not isinstance(key, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", key):
        raise ConfigError(f"{where}: {key!r} is not a dotted config key such as train.ppo.learning_rate")
    if key in ("train.seed", "train.run_name", "train.out_dir"):
        raise ConfigError(f"{where}.{key}: set by the sweep itself (seeds: and out:), not a key to sweep")
    return key


def _grid(data: Any) -> dict[str, list[Any]]:
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"grid: expected a mapping of dotted config keys to lists of values, got {data!r}")
    out = {}
    for key, values in data.items():
        _check_key(key, "grid")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"grid.{key}: expected a non-empty list of values, got {values!r}")
        out[key] = values
    return out


def _random(data: Any) -> dict[str, tuple[str, list[Any]]]:
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"random: expected a mapping of dotted config keys to distributions, got {data!r}")
    out = {}
    for key, dist in data.items():
        _check_key(key, "random")
        if not isinstance(dist, dict) or len(dist) != 1:
            raise ConfigError(f"random.{key}: expected one distribution such as {{loguniform: [1.0e-4, 1.0e-2]}}, "
                              f"got {dist!r}")
        ((kind, args),) = dist.items()
        if kind not in DISTRIBUTIONS:
            raise ConfigError(f"random.{key}: unknown distribution {kind!r}; known: {list(DISTRIBUTIONS)}")
        if not isinstance(args, list) or not args:
            raise ConfigError(f"random.{key}.{kind}: expected a list, got {args!r}")
        if kind != "choice":
            if len(args) != 2 or not all(isinstance(a, int | float) and not isinstance(a, bool) for a in args):
                raise ConfigError(f"random.{key}.{kind}: expected [low, high] numbers, got {args!r}")
            lo, hi = args
            if not lo < hi:
                raise ConfigError(f"random.{key}.{kind}: low must be below high, got {args!r}")
            if kind == "loguniform" and lo <= 0:
                raise ConfigError(f"random.{key}.loguniform: bounds must be > 0, got {args!r}")
            if kind == "randint" and not all(isinstance(a, int) for a in args):
                raise ConfigError(f"random.{key}.randint: bounds must be integers, got {args!r}")
        out[key] = (kind, args)
    return out


def _draw(kind: str, args: list[Any], rng: np.random.Generator) -> Any:
    if kind == "uniform":
        return float(rng.uniform(args[0], args[1]))
    if kind == "loguniform":
        return float(np.exp(rng.uniform(np.log(args[0]), np.log(args[1]))))
    if kind == "randint":
        return int(rng.integers(args[0], args[1]))
    return args[int(rng.integers(len(args)))]


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value) if not isinstance(value, list | dict) else json.dumps(value, separators=(",", ":"))


def _override(key: str, value: Any) -> str:
    """A ``key=value`` override whose value parses back (YAML flow style) to ``value``."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    if text.endswith("\n...") or text.endswith("..."):
        text = text.removesuffix("...").strip()
    return f"{key}={text}"


def setting_label(values: dict[str, Any]) -> str:
    """A folder-safe, stable name of a setting: ``base``, or ``<last key part>=<value>`` joined by ``,``.

    Keys whose last part is ambiguous within the setting keep their full dotted path; a label over 80 characters is
    shortened to a readable prefix plus a hash of the whole.
    """
    if not values:
        return "base"
    last = [k.rsplit(".", 1)[-1] for k in values]
    parts = []
    for key, short in zip(values, last, strict=True):
        name = short if last.count(short) == 1 else key
        parts.append(f"{name}={_fmt(values[key])}")
    label = _SAFE.sub("_", ",".join(parts))
    if len(label) > 80:
        import hashlib

        label = f"{label[:60]}~{hashlib.sha1(label.encode()).hexdigest()[:10]}"
    return label


def load_sweep(path: str | os.PathLike[str], out: str | None = None) -> Sweep:
    """Read and validate a sweep file; nothing is written and Ray is not started.

    Every setting is resolved as a full training config (:func:`configs.loader.resolve_config`), so an unknown key,
    a wrong type or a value out of range fails here, naming the sweep key and the config key.

    Args:
        path: The sweep YAML.
        out: Replaces the file's ``out`` (the ``--out`` flag).

    Returns:
        The sweep and its trials (settings in grid order × random draws, then seeds).

    Raises:
        ConfigError: Unreadable file, unknown or bad sweep key, a bad config key or value in a setting, or an output
            folder that cannot be one.
    """
    path = Path(path)
    data = read_yaml_mapping(path)
    grid = _grid(data.pop("grid", None))
    rand = _random(data.pop("random", None))
    if out is not None:
        data["out"] = out
    spec = from_dict(SweepSpec, data, "sweep")
    if spec.samples > 1 and not rand:
        raise ConfigError("sweep.samples: only used with random:; a grid is searched exhaustively")
    both = sorted(set(grid) & set(rand))
    if both:
        raise ConfigError(f"sweep: key(s) {both} are in both grid: and random:")
    config = Path(spec.config) if spec.config is not None else None
    if config is not None and not config.is_file():
        raise ConfigError(f"sweep.config: config file {spec.config!r} does not exist")
    sweep_out = check_output_dir(spec.out, "sweep.out").resolve()
    runs = sweep_out / "runs"

    rng = np.random.default_rng(spec.random_seed)
    draws = [{k: _draw(kind, args, rng) for k, (kind, args) in rand.items()} for _ in range(spec.samples if rand
                                                                                            else 1)]
    settings: list[dict[str, Any]] = []
    for point in itertools.product(*grid.values()):
        for draw in draws:
            settings.append({**dict(zip(grid, point, strict=True)), **draw})
    labels = [setting_label(s) for s in settings]
    dup = sorted({lab for lab in labels if labels.count(lab) > 1})
    if dup:
        raise ConfigError(f"sweep: settings {dup} repeat (same values twice in grid:, or draws that round alike)")
    trials = []
    for values, label in zip(settings, labels, strict=True):
        swept = [_override(k, v) for k, v in values.items()]
        where = "grid/random" if values else "sweep"
        try:
            resolve_config(config, spec.preset, [*spec.set, *swept])
        except ConfigError as exc:
            raise ConfigError(f"{where} setting {label}: {exc}") from None
        for seed in spec.seeds:
            run_dir = runs / f"{label}__s{seed}"
            trials.append(Trial(label, values, seed, run_dir,
                                [*spec.set, *swept, f"train.seed={seed}"]))
    return Sweep(spec, path.resolve(), sweep_out, config.resolve() if config else None, trials)


def trial_config(sweep: Sweep, trial: Trial) -> Config:
    """The trial's training config (torch threads = the trial's CPUs, at least one)."""
    cfg = resolve_config(sweep.config, sweep.spec.preset, trial.overrides,
                         flags={"train": {"out_dir": str(trial.run_dir.parent), "run_name": trial.run_dir.name}})
    cfg.train.torch_threads = max(1, int(sweep.spec.cpus_per_trial))
    return cfg


# ---- trial state -----------------------------------------------------------------------------------------------


def is_finished(run_dir: Path) -> bool:
    """A trial is finished when its run directory holds ``summary.json`` and ``report/results.json``."""
    return (run_dir / "summary.json").is_file() and (run_dir / "report" / "results.json").is_file()


def has_checkpoint(run_dir: Path) -> bool:
    """Whether an unfinished run directory can be resumed (its config and at least one checkpoint)."""
    from agents.checkpoints import CKPT_DIR, checkpoint_dirs

    return (run_dir / "config.yaml").is_file() and bool(checkpoint_dirs(run_dir / CKPT_DIR))


def run_trial(params: dict[str, Any]) -> dict[str, Any]:
    """The body of one trial (in a Ray worker process, possibly on another node): train into the run directory.

    A run directory with a checkpoint is resumed with its saved config; one without (a trial that died before its
    first checkpoint) is moved aside to ``<name>.failed-<time>`` (never deleted) and trained afresh. A run whose
    learning had ended (its final ``policy.safetensors`` is there: it died in the final evaluation) learns no further
    on resume, so a time-limited run keeps its time; one that died while learning gets ``train.max_minutes`` anew
    from its checkpoint (checkpoints count steps, not minutes).

    Args:
        params: ``run_dir``, ``config`` (the resolved training config as a mapping), ``threads`` and ``env``
            (``RECFEED_*`` variables of the driver).

    Returns:
        The figures reported to Tune (PPO's held-out return, its ratio to tuned-diverse, steps, whether resumed).
    """
    import torch as th

    from agents.training import train

    t0 = time.perf_counter()

    for key in [k for k in os.environ if k.startswith(FORWARD_ENV_PREFIX) and k not in params["env"]]:
        del os.environ[key]  # a worker process may outlive the invocation that set it (or inherit Ray's start env)
    os.environ.update(params["env"])
    threads = int(params["threads"])
    os.environ["RECFEED_ENV_THREADS"] = str(threads)
    th.set_num_threads(threads)
    run_dir = Path(params["run_dir"])
    if os.environ.get(FAULT_ENV) == run_dir.name:
        raise RuntimeError(f"{FAULT_ENV}: injected fault in trial {run_dir.name}")
    resume = run_dir.is_dir() and has_checkpoint(run_dir)
    if run_dir.exists() and not resume:
        os.replace(run_dir, run_dir.with_name(f"{run_dir.name}.failed-{time.strftime('%Y%m%d-%H%M%S')}"))
    if resume:
        from agents.checkpoints import CKPT_DIR, STATE_FILE, checkpoint_dirs
        from agents.ppo_ranker import WEIGHTS_FILE
        from configs.loader import load_config

        cfg = load_config(run_dir / "config.yaml")
        if (run_dir / WEIGHTS_FILE).is_file():  # learning had ended (a time limit, say): redo only the evaluation
            state = json.loads((checkpoint_dirs(run_dir / CKPT_DIR)[0] / STATE_FILE).read_text(encoding="utf-8"))
            cfg.train.total_timesteps = min(cfg.train.total_timesteps, int(state["num_timesteps"]))
    else:
        cfg = from_dict(Config, params["config"])
        run_dir.mkdir(parents=True)
    summary = train(cfg, run_dir, resume=resume, progress=False)
    ppo = summary["heldout"].get("ppo")
    return {"ppo_return": float(ppo["mean"]) if isinstance(ppo, dict) else float("nan"),
            "ratio_vs_tuned_diverse": summary.get("ratio_vs_tuned_diverse"),
            "total_timesteps": summary["total_timesteps"], "resumed": resume,
            "trial_seconds": round(time.perf_counter() - t0, 2), "node_id": params.get("node_id", ""),
            "hostname": os.uname().nodename if hasattr(os, "uname") else ""}


def _tune_trainable(params: dict[str, Any]) -> None:
    """Tune's function trainable: one :func:`run_trial`, its figures reported once."""
    import ray
    from ray import tune

    tune.report(run_trial({**params, "node_id": ray.get_runtime_context().get_node_id()}))


# ---- running ---------------------------------------------------------------------------------------------------


def _init_ray(spec: SweepSpec, address: str | None) -> Any:
    import ray

    if ray.is_initialized():
        return ray
    address = address or os.environ.get("RAY_ADDRESS") or None
    repo = str(Path(__file__).resolve().parents[1])
    # Trials import recfeed from this checkout on nodes that share its file system (the loopback test, a shared
    # home); other nodes need recfeed installed at their own path (README).
    runtime_env = {"env_vars": {"PYTHONPATH": os.pathsep.join(p for p in (repo, os.environ.get("PYTHONPATH")) if p)}}
    if address:
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=False)
    else:
        # address="local": our own Ray, not a `ray start` cluster that may run on this machine (which a bare
        # ray.init() would join, refusing num_cpus).
        ray.init(address="local", num_cpus=spec.num_cpus, runtime_env=runtime_env, log_to_driver=False,
                 include_dashboard=False)
    return ray


def run_sweep(sweep: Sweep, address: str | None = None) -> tuple[dict[str, str], dict[str, dict[str, Any]]]:
    """Run the sweep's unfinished trials as Ray Tune trials; skip the finished ones.

    Args:
        sweep: From :func:`load_sweep`.
        address: A Ray cluster to join (``None``: ``$RAY_ADDRESS``, else a local Ray on this machine).

    Returns:
        Per run name, its status (``"finished before"``, ``"trained"``, ``"resumed"`` or ``"failed: <error's last
        line>"``); and per trial run now, what it reported to Tune (held-out return, steps, ``trial_seconds``, the
        Ray ``node_id`` it ran on).
    """
    status: dict[str, str] = {}
    reported: dict[str, dict[str, Any]] = {}
    pending = []
    for trial in sweep.trials:
        if is_finished(trial.run_dir):
            status[trial.name] = "finished before"
        else:
            pending.append(trial)
    if not pending:
        return status, reported
    ray = _init_ray(sweep.spec, address)
    from ray import tune

    env = {k: v for k, v in os.environ.items() if k.startswith(FORWARD_ENV_PREFIX)}
    threads = max(1, int(sweep.spec.cpus_per_trial))
    by_name = {t.name: t for t in pending}
    space = {"trial": tune.grid_search([t.name for t in pending])}
    configs = {t.name: {"run_dir": str(t.run_dir), "config": _plain(trial_config(sweep, t)), "threads": threads,
                        "env": env} for t in pending}

    def trainable(params: dict[str, Any]) -> None:
        _tune_trainable(configs[params["trial"]])

    (sweep.out / "runs").mkdir(parents=True, exist_ok=True)
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": sweep.spec.cpus_per_trial}),
        param_space=space,
        tune_config=tune.TuneConfig(max_concurrent_trials=sweep.spec.max_concurrent, reuse_actors=True),
        run_config=tune.RunConfig(name="tune", storage_path=str(sweep.out), verbose=0,
                                  failure_config=tune.FailureConfig(max_failures=0, fail_fast=False)),
    )
    t0 = time.perf_counter()
    grid = tuner.fit()
    for result in grid:
        name = result.config["trial"]
        if result.metrics:
            reported[name] = {k: result.metrics[k] for k in ("ppo_return", "ratio_vs_tuned_diverse",
                                                             "total_timesteps", "resumed", "trial_seconds",
                                                             "node_id", "hostname") if k in result.metrics}
        if result.error is not None:
            lines = [ln for ln in str(result.error).strip().splitlines() if ln.strip()]
            status[name] = f"failed: {lines[-1] if lines else type(result.error).__name__}"
        elif is_finished(by_name[name].run_dir):
            status[name] = "resumed" if (result.metrics or {}).get("resumed") else "trained"
        else:
            status[name] = "failed: no summary.json after the trial"
    for name in by_name:
        status.setdefault(name, "failed: not run")
    print(f"[sweep] {len(pending)} trial(s) in {time.perf_counter() - t0:.0f}s on Ray "
          f"{ray.__version__}", file=sys.stderr, flush=True)
    return status, reported


def _plain(cfg: Config) -> dict[str, Any]:
    from configs.loader import to_dict

    return to_dict(cfg)


# ---- the table -------------------------------------------------------------------------------------------------


def summarize(sweep: Sweep, status: dict[str, str], reported: dict[str, dict[str, Any]] | None = None
              ) -> dict[str, Any]:
    """Aggregate the finished runs per setting and write ``sweep.{json,md,csv,png}`` into the sweep folder.

    Returns:
        The JSON written: ``settings`` (per setting: values, runs, :func:`bench.quality_protocol.aggregate`'s
        figures or ``None`` without a finished run), ``status`` per trial, ``trials`` (what the trials run in this
        invocation reported: node, seconds, return), ``files``.
    """
    from bench.quality_protocol import aggregate, markdown

    title = sweep.spec.name or sweep.path.stem
    rows: list[dict[str, Any]] = []
    for label in sweep.settings:
        trials = [t for t in sweep.trials if t.setting == label]
        done = [t.run_dir for t in trials if is_finished(t.run_dir)]
        rows.append({"setting": label, "values": trials[0].values, "seeds": [t.seed for t in trials],
                     "finished": len(done), "aggregate": aggregate(done) if done else None})
    out = {"sweep": str(sweep.path), "out": str(sweep.out), "title": title, "settings": rows, "status": status,
           "trials": reported or {}}
    files = {k: str(sweep.out / f"sweep.{k}") for k in ("json", "md", "csv", "png")}
    out["files"] = files
    failed = {k: v for k, v in status.items() if v.startswith("failed")}

    rankers = _rankers(rows)
    md = [f"## Sweep: {title}", "",
          f"{len(sweep.settings)} setting(s) × {len(sweep.spec.seeds)} seed(s); return per held-out session, mean "
          "over seeds (95% t-interval across seeds); ratio = PPO / tuned-diverse per seed.", ""]
    md.append("| setting | seeds done | " + " | ".join(rankers) + " | ratio vs tuned-diverse |")
    md.append("|---|---:|" + "---:|" * (len(rankers) + 1))
    for row in rows:
        agg = row["aggregate"]
        cells = [_ci(agg["return"].get(r)) if agg else "–" for r in rankers]
        ratio = _ci(agg["ratio_vs_tuned_diverse"], ".3f") if agg else "–"
        md.append(f"| {row['setting']} | {row['finished']}/{len(row['seeds'])} | " + " | ".join(cells)
                  + f" | {ratio} |")
    if failed:
        md += ["", "Failed trials (re-run the command to retry them):", ""]
        md += [f"- {k}: {v}" for k, v in failed.items()]
    for row in rows:
        if row["aggregate"]:
            md += ["", markdown(row["aggregate"], f"Setting {row['setting']}").rstrip()]
    atomic_write_text(files["md"], "\n".join(md) + "\n")

    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["setting", "figure", "mean", "ci95_low", "ci95_high", "n_seeds"])
    for row in rows:
        agg = row["aggregate"]
        if not agg:
            continue
        for name in rankers:
            if name in agg["return"]:
                d = agg["return"][name]
                w.writerow([row["setting"], f"return:{name}", d["mean"], *d["ci95"], agg["seeds"]])
        d = agg["ratio_vs_tuned_diverse"]
        w.writerow([row["setting"], "ratio_vs_tuned_diverse", d["mean"], *d["ci95"], agg["seeds"]])
    atomic_write_text(files["csv"], buf.getvalue())
    _plot(rows, title, Path(files["png"]))
    atomic_write_text(files["json"], json.dumps(out, indent=1, default=str) + "\n")
    return out


def _rankers(rows: list[dict[str, Any]]) -> list[str]:
    names: list[str] = []
    for row in rows:
        if row["aggregate"]:
            names += [n for n in row["aggregate"]["return"] if n not in names]
    return sorted(names, key=lambda n: (n != "ppo", n))


def _ci(d: dict[str, Any] | None, fmt: str = ".2f") -> str:
    if not d:
        return "–"
    return f"{d['mean']:{fmt}} ({d['ci95'][0]:{fmt}}–{d['ci95'][1]:{fmt}})"


def _plot(rows: list[dict[str, Any]], title: str, path: Path) -> None:
    """Held-out return by setting with 95% intervals: PPO and the two tuned baselines (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [r for r in rows if r["aggregate"]]
    names = [n for n in ("ppo", REFERENCE, "tuned-alpha") if any(n in r["aggregate"]["return"] for r in shown)]
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * len(shown) + 2), 4))
    x = np.arange(len(shown))
    for i, name in enumerate(names):
        means, lo, hi = [], [], []
        for r in shown:
            d = r["aggregate"]["return"].get(name)
            means.append(d["mean"] if d else np.nan)
            lo.append(d["mean"] - d["ci95"][0] if d else 0.0)
            hi.append(d["ci95"][1] - d["mean"] if d else 0.0)
        ax.errorbar(x + (i - (len(names) - 1) / 2) * 0.15, means, yerr=[lo, hi], fmt="o", capsize=4, label=name)
    ax.set_xticks(x, [r["setting"] for r in shown], rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("held-out return per session")
    ax.set_title(f"{title}: mean over seeds, 95% t-interval", fontsize=10)
    if names:
        ax.legend(fontsize=8)
    fig.tight_layout()
    png = figure_png(fig)
    plt.close(fig)
    atomic_write_bytes(path, png)


# ---- command line ----------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Validate the sweep, run its unfinished trials on Ray, write and print the table; returns the JSON."""
    ap = argparse.ArgumentParser(prog="python -m agents.sweep", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, help="the sweep file (YAML)")
    ap.add_argument("--address", default=None, help="a Ray cluster to join (default: $RAY_ADDRESS, else local)")
    ap.add_argument("--out", default=None, help="the sweep folder (replaces the file's out:)")
    ap.add_argument("--aggregate-only", action="store_true", help="train nothing; tabulate the finished runs")
    ap.add_argument("--dry-run", action="store_true", help="validate and list the trials; train nothing")
    args = ap.parse_args(argv)
    try:
        sweep = load_sweep(args.config, args.out)
    except ConfigError as exc:
        sys.exit(f"agents.sweep: error: {exc}")
    if args.dry_run:
        for t in sweep.trials:
            state = "finished" if is_finished(t.run_dir) else "to run"
            print(f"{t.name}\t{state}\t{' '.join(t.overrides)}")
        return {"trials": [t.name for t in sweep.trials]}
    if args.aggregate_only:
        status = {t.name: "finished before" if is_finished(t.run_dir) else "not run" for t in sweep.trials}
        reported: dict[str, dict[str, Any]] = {}
    else:
        status, reported = run_sweep(sweep, args.address)
    for name, state in status.items():
        print(f"[sweep] {name}: {state}", file=sys.stderr)
    out = summarize(sweep, status, reported)
    print(Path(out["files"]["md"]).read_text(encoding="utf-8"))
    failed = [k for k, v in status.items() if v.startswith("failed")]
    if failed:
        print(f"agents.sweep: {len(failed)} trial(s) failed: {failed}; run the same command again to retry them",
              file=sys.stderr)
    return out


if __name__ == "__main__":
    main()
