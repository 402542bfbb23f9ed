"""Train the PPO slate policy: ``python train.py [--config configs/X.yaml] [--set key=value ...] [--out DIR]``.

The embedded default needs no argument. Ends by printing how the trained policy compares with the baselines
on held-out users, and where the run, its TensorBoard logs and plots are. ``--resume RUN_DIR`` continues a run
from its last checkpoint.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from configs.loader import ConfigError, load_config


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line arguments."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", help="YAML config (values only; see configs/schema.py)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config value, e.g. --set train.total_timesteps=200000 (repeatable)")
    ap.add_argument("--out", help="parent folder of run directories (train.out_dir)")
    ap.add_argument("--name", help="run directory name (train.run_name)")
    ap.add_argument("--preset", help="env preset: default, small, or a calibrated preset directory")
    ap.add_argument("--resume", metavar="RUN_DIR", help="continue RUN_DIR from its last checkpoint")
    ap.add_argument("--total-timesteps", type=int, help="with --resume: train up to this many steps in all")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    """Entry point; returns the run summary."""
    args = parse_args(argv)
    from agents.training import CheckpointError, print_summary, train

    try:
        if args.resume:
            run_dir = Path(args.resume)
            if not (run_dir / "config.yaml").is_file():
                raise ConfigError(f"--resume {run_dir}: not a run directory (no config.yaml)")
            extra = [f"train.total_timesteps={args.total_timesteps}"] if args.total_timesteps else []
            cfg = load_config(run_dir / "config.yaml", extra)
            summary = train(cfg, run_dir, resume=True, progress=not args.quiet)
        else:
            overrides = list(args.overrides)
            if args.out:
                overrides.append(f"train.out_dir={args.out}")
            if args.name:
                overrides.append(f"train.run_name={args.name}")
            cfg = load_config(args.config, overrides)
            if args.preset:
                from envs.presets import preset_config

                cfg.env = preset_config(args.preset)
            summary = train(cfg, progress=not args.quiet)
    except (ConfigError, CheckpointError, FileNotFoundError, FileExistsError) as exc:
        sys.exit(f"train.py: error: {exc}")
    print_summary(summary, Path(summary["paths"]["report"]) / "results.md")
    return summary


if __name__ == "__main__":
    main()
