"""``python -m envs.calibrate``: the command line of :func:`envs.calibrate.calibrate`."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

from configs.data import CalibrationConfig, PreprocessConfig
from configs.loader import ConfigError, apply_overrides, from_dict
from configs.schema import EncoderConfig
from envs.calibrate.pipeline import calibrate
from envs.data.readers import load_logs

_SECTIONS = ("env", "encoder", "calibrate", "preprocess")


def _parse_sets(items: Sequence[str]) -> dict[str, dict[str, Any]]:
    data: dict[str, Any] = {}
    apply_overrides(data, items)
    unknown = sorted(set(data) - set(_SECTIONS))
    if unknown:
        raise ConfigError(f"--set keys must start with one of {list(_SECTIONS)} (e.g. env.n_candidates=50, "
                          f"calibrate.heldout_users=0); got {unknown}")
    for k, v in data.items():
        if not isinstance(v, dict):
            raise ConfigError(f"--set {k}=...: name a key inside the section, e.g. {k}.<key>=value")
    return data


def check_data_spec(spec: str) -> None:
    """Reject a malformed ``--data`` spec before any work, with the accepted forms in the message.

    Raises:
        ValueError: Not ``movielens:PATH`` or ``logs:ITEMS,EVENTS`` with non-empty paths.
    """
    kind, sep, rest = spec.partition(":")
    ok = bool(sep) and ((kind == "movielens" and rest.strip()) or (kind == "logs" and all(
        p.strip() for p in rest.partition(",")[::2]) and "," in rest))
    if not ok:
        raise ValueError(f"bad --data {spec!r}: use movielens:PATH (a MovieLens directory, e.g. "
                         "movielens:../shared/data/ml-latest-small) or logs:ITEMS,EVENTS (an item table and an "
                         "events file, CSV / Parquet / JSONL)")


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m envs.calibrate`` (every reader option an error message suggests is here)."""
    p = argparse.ArgumentParser(prog="python -m envs.calibrate",
                                description="Calibrate simulated users on real logs; write a preset directory.")
    p.add_argument("--data", required=True, help="movielens:PATH or logs:ITEMS,EVENTS")
    p.add_argument("--out", required=True, help="preset directory to write (env.yaml, world/, fidelity.*)")
    p.add_argument("--encoder", choices=("transformer", "hashing"), default="transformer",
                   help="item text encoder (default: the cached MiniLM transformer)")
    p.add_argument("--holdout", type=float, default=None, help="share of each user's last events held out (0.2)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override: env.<EnvConfig key>, encoder.<key>, calibrate.<key>, preprocess.<key>")
    p.add_argument("--on-bad-rows", choices=("error", "skip"), default="error", help="reader policy for bad rows")
    p.add_argument("--on-missing-items", choices=("error", "skip"), default=None,
                   help="reader policy for events whose item is not in the item table (default: error; MovieLens: "
                        "as --on-bad-rows)")
    p.add_argument("--encoding", default=None,
                   help="text encoding of the log files, e.g. latin-1 (default: UTF-8; MovieLens: each layout's own)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    return p


def reader_options(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of :func:`envs.data.readers.load_logs` that the command line sets."""
    opts: dict[str, Any] = {"on_bad_rows": args.on_bad_rows}
    if args.on_missing_items is not None:
        opts["on_missing_items"] = args.on_missing_items
    if args.encoding is not None:
        opts["encoding"] = args.encoding
    return opts


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m envs.calibrate --data SPEC --out DIR [...]``: write a calibrated preset and its report.

    Args:
        argv: Command line (None: sys.argv[1:]).

    Returns:
        0 on success (errors exit with status 2 and a one-line message).
    """
    p = build_parser()
    args = p.parse_args(argv)
    t0 = time.perf_counter()

    def say(msg: str) -> None:
        if not args.quiet:
            print(f"[calibrate {time.perf_counter() - t0:6.1f}s] {msg}", file=sys.stderr, flush=True)

    try:
        check_data_spec(args.data)
        sets = _parse_sets(args.set)
        cal = sets.get("calibrate", {})
        if args.holdout is not None:
            cal["holdout"] = args.holdout
        cfg = from_dict(CalibrationConfig, cal, "calibrate")
        enc_cfg = from_dict(EncoderConfig, {"kind": args.encoder, "progress": not args.quiet,
                                            **sets.get("encoder", {})}, "encoder")
        prep_cfg = from_dict(PreprocessConfig, sets.get("preprocess", {}), "preprocess")
        if "preset_dir" in sets.get("env", {}):
            raise ConfigError("env.preset_dir cannot be set: preset_config adds it when the preset is loaded")
        say(f"reading {args.data}")
        log = load_logs(args.data, **reader_options(args))
        read_s = time.perf_counter() - t0
        say(f"read {log.n_events} events, {log.n_users} users, {log.n_items} items in {read_s:.1f} s")
        from encoders.factory import make_encoder

        encoder = make_encoder(enc_cfg)
        command = "python -m envs.calibrate " + " ".join(argv if argv is not None else sys.argv[1:])
        report = calibrate(log, cfg, encoder, args.out, env_overrides=sets.get("env", {}), preprocess_cfg=prep_cfg,
                           progress=say, extra_timings={"read": read_s}, command=command)
    except (ValueError, FileNotFoundError, NotADirectoryError, ConfigError) as exc:
        p.error(str(exc))
    print(json.dumps({"out": str(args.out), "models": report["models"], "timings": report["timings"]}))
    return 0
