"""Train the PPO slate policy: ``python train.py [--config configs/X.yaml] [--preset P] [--set key=value ...]``.

The embedded default needs no argument. The config resolves as every script's does
(:func:`configs.loader.resolve_config`): the preset's env values, then the file's, then ``--set``, then the flags.
Ends by printing how the trained policy compares with the baselines on held-out users, and where the run, its
TensorBoard logs and plots are. ``--resume RUN_DIR`` continues a run from its last checkpoint; ``--init-from
RUN_DIR`` starts a new run (another world or config) from RUN_DIR's final policy.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from configs.loader import ConfigError, check_output_dir, load_config, resolve_config
from configs.schema import Config


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line arguments."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", help="YAML config (values only; see configs/schema.py)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config value, e.g. --set train.total_timesteps=200000 (repeatable)")
    ap.add_argument("--out", help="parent folder of run directories (train.out_dir)")
    ap.add_argument("--name", help="run directory name (train.run_name)")
    ap.add_argument("--preset", help="env preset: default, small, or a calibrated preset directory; the config's "
                                     "env: values and --set env.* apply on top of it")
    ap.add_argument("--resume", metavar="RUN_DIR", help="continue RUN_DIR from its last checkpoint")
    ap.add_argument("--init-from", metavar="RUN_DIR",
                    help="start this new run's policy from RUN_DIR's final policy (e.g. after python -m envs.update "
                         "changed the world); the optimizer starts fresh")
    ap.add_argument("--total-timesteps", type=int, help="with --resume: train up to this many steps in all")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    return ap.parse_args(argv)


def resolve(args: argparse.Namespace) -> tuple[Config, Path | None]:
    """The validated config of this run and, with ``--resume``, its run directory; nothing is written.

    Raises:
        ConfigError: Bad file, preset, key, type, value, or an output folder that cannot be one.
    """
    if args.resume:
        run_dir = Path(args.resume)
        if not (run_dir / "config.yaml").is_file():
            raise ConfigError(f"--resume {run_dir}: not a run directory (no config.yaml)")
        if args.init_from:
            raise ConfigError("--init-from starts a new run; --resume continues one: use one of them")
        if args.config or args.preset or args.overrides or args.out or args.name:
            raise ConfigError("--resume continues a run with its saved config: --config, --preset, --set, --out and "
                              "--name do not apply (only --total-timesteps)")
        extra = [f"train.total_timesteps={args.total_timesteps}"] if args.total_timesteps is not None else []
        return load_config(run_dir / "config.yaml", extra), run_dir
    flags: dict[str, Any] = {}
    if args.out is not None:
        flags["out_dir"] = args.out
    if args.name is not None:
        flags["run_name"] = args.name
    cfg = resolve_config(args.config, args.preset, args.overrides, flags={"train": flags} if flags else None)
    check_extra_references(cfg.eval.extra_references)
    what = "--out" if args.out is not None else "train.out_dir"
    out = check_output_dir(cfg.train.out_dir, what)
    if cfg.train.run_name is not None:
        run = out / cfg.train.run_name
        if run.exists():
            raise ConfigError(f"run directory {run} already exists; pick another --name (train.run_name) or use "
                              "--resume")
    if args.init_from and not (Path(args.init_from) / "policy.safetensors").is_file():
        raise ConfigError(f"--init-from {args.init_from}: not a run directory with a pickle-free policy "
                          "(policy.safetensors)")
    return cfg, None


def check_extra_references(specs: list[str]) -> None:
    """``eval.extra_references``: registry specs that are neither a run nor a row the final table already has.

    Raises:
        ConfigError: Naming the spec and why.
    """
    from agents.final_report import FINAL_BASELINES
    from agents.registry import parse_spec, valid_choices

    for spec in specs:
        try:
            name, _ = parse_spec(spec)
        except ValueError as exc:
            raise ConfigError(f"eval.extra_references: {exc}") from None
        if name == "run" or "@" in spec:
            raise ConfigError(f"eval.extra_references: {spec!r} is not a hand-written reference; choose from "
                              f"{valid_choices()} without run:DIR or @T")
        if spec in FINAL_BASELINES or specs.count(spec) > 1:
            raise ConfigError(f"eval.extra_references: {spec!r} is already a row of the final table")


def main(argv: list[str] | None = None) -> dict:
    """Entry point; returns the run summary."""
    args = parse_args(argv)
    try:
        cfg, run_dir = resolve(args)
    except ConfigError as exc:
        sys.exit(f"train.py: error: {exc}")
    from agents.checkpoints import CheckpointError
    from agents.final_report import print_summary
    from agents.training import train

    try:
        warm = {"init_from": args.init_from} if args.init_from else {}
        summary = train(cfg, run_dir, resume=run_dir is not None, progress=not args.quiet, **warm)
    except (ConfigError, CheckpointError, FileNotFoundError, FileExistsError, FloatingPointError) as exc:
        sys.exit(f"train.py: error: {exc}")  # FloatingPointError: an update left non-finite weights (RecPPO.train)
    print_summary(summary, Path(summary["paths"]["report"]) / "results.md")
    return summary


if __name__ == "__main__":
    main()
