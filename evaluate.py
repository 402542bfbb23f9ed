"""Evaluate rankers on the same simulated users: metrics with 95% intervals, paired tests, plots.

    python evaluate.py --rankers random,popular,fixed-alpha:0.5,tuned-alpha,linucb,oracle \\
        --episodes 1000 --seeds 2 --users heldout --out reports/baselines
    python evaluate.py --config configs/eval_baselines.yaml --set eval.bootstrap=5000

Every ranker meets the same sessions (same users, same episode keys: common random numbers), so the
comparisons are paired. ``tuned-alpha``, ``scored`` and ``linucb`` learn on the training users only. Writes
``results.json``, ``results.csv``, ``results.md``, ``returns.npz`` (every ranker's return per session,
:func:`agents.report.write_returns`) and ``plots/*.png`` into ``--out`` (atomically) and prints the Markdown table.
The engine is :mod:`agents.evaluation`, the report :mod:`agents.report`, the rankers are :mod:`agents.rankers`, built
from specs by :mod:`agents.registry`.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path
from typing import Any

from agents.evaluation import episode_plan, evaluate_rankers
from agents.plausibility import plausibility_markdown, write_plausibility
from agents.ppo_ranker import MODEL_FILE, WEIGHTS_FILE
from agents.rankers import TunedAlphaRanker
from agents.registry import RankerContext, alpha_grid_kwargs, check_specs, make_ranker, run_dir_of, valid_choices
from agents.report import markdown_table, summarise, write_report, write_returns
from agents.runinfo import SIGNATURE_FILE, describe, mismatch, read_signature, signature
from agents.tuning import tuning_cache_dir
from configs import loader
from configs.loader import (
    ConfigError,
    apply_overrides,
    check_output_dir,
    from_dict,
    load_config,
    read_yaml_mapping,
    to_dict,
)
from configs.schema import Config, EvalConfig
from envs.factory import make_core
from envs.presets import load_world


def build_parser() -> argparse.ArgumentParser:
    """The command line (flags win over ``--set``, which wins over ``--config``)."""
    ap = argparse.ArgumentParser(prog="evaluate.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", help="YAML with eval:, env:, encoder: sections (configs/schema.py)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config value, e.g. eval.bootstrap=5000 or env.max_steps=30 (repeatable)")
    ap.add_argument("--rankers", help=f"comma-separated ranker specs; valid: {valid_choices()}")
    ap.add_argument("--episodes", type=int, help="sessions per seed")
    ap.add_argument("--seeds", type=int, help="number of evaluation seeds (seeds F..F+S-1, F the first seed)")
    ap.add_argument("--first-seed", type=int,
                    help="the first evaluation seed (eval.first_seed, 0): a later one plays sessions that no run's "
                         "own report met (a run's table meets seeds 0..eval.seeds-1)")
    ap.add_argument("--users", choices=["heldout", "train"], help="population to evaluate on")
    ap.add_argument("--reference", help="ranker the paired tests compare against (default tuned-alpha)")
    ap.add_argument("--out", help="report folder")
    ap.add_argument("--preset", help="env preset (configs/presets/<name>.yaml or a calibrated preset directory) under "
                                     "the config's env: section; default: a run:DIR's own env, else 'default'")
    ap.add_argument("--encoder", choices=["transformer", "hashing"],
                    help="text encoder (hashing: fast, for smoke runs only)")
    ap.add_argument("--tune-episodes", type=int,
                    help="training sessions per grid point of the tuned references' searches (eval.tune_episodes)")
    ap.add_argument("--tune-seed", type=int, default=0,
                    help="seed of the rankers' own randomness and of the tuned references' training-user sessions; "
                         "train.py uses the run's train.seed, so --tune-seed S compares a run of seed S with the "
                         "references it was reported against")
    ap.add_argument("--fit-sessions", type=int, default=600,
                    help="logged training sessions that scored and linucb are fitted on")
    ap.add_argument("--device", default="auto", help="torch device for run:DIR rankers")
    ap.add_argument("--no-progress", action="store_true", help="no progress bars")
    return ap


def resolve_config(args: argparse.Namespace) -> tuple[Config, str | None]:
    """The validated config of this evaluation, and a note (the default reference changed, the env was adopted).

    The config resolves as every script's does (:func:`configs.loader.resolve_config`): the preset's env
    values (``--preset``, else ``env.preset``), then the file's ``env`` values and ``--set env.*``, then the flags.
    With ``run:DIR`` rankers and no preset named, the env (and encoder) start from the run's own config instead of
    the ``default`` preset, so ``evaluate.py --rankers ...,run:DIR`` evaluates the run where it was trained. Every
    run's signature (agents/runinfo.py) must then agree with the others' and with this env; the world-dependent
    keys are checked again by :func:`check_runs` once the world is loaded.

    Raises:
        ConfigError: Bad file, unknown key, wrong type, bad count, an explicit reference not evaluated, an ``--out``
            that cannot be a folder, or a run that does not fit the env (one line naming both sides).
        ValueError: Unknown ranker (listing the valid choices) or preset.
        FileNotFoundError: A ``run:DIR`` whose directory, config or model is missing.
        ImportError: ``run:DIR`` without the PPO ranker module.
    """
    data = apply_overrides(read_yaml_mapping(args.config) if args.config else {}, args.set)
    for section in ("eval", "env"):
        if not isinstance(data.setdefault(section, {}), dict):
            raise ConfigError(f"{section}: expected a mapping, got {data[section]!r}")
    explicit_reference = args.reference is not None or "reference" in data["eval"]
    flags = {"rankers": args.rankers, "episodes": args.episodes, "seeds": args.seeds, "first_seed": args.first_seed,
             "users": args.users,
             "reference": args.reference, "out": args.out, "tune_episodes": args.tune_episodes}
    ev_flags: dict[str, Any] = {k: v for k, v in flags.items() if v is not None}
    # the rankers first: a bad spec or a missing run directory is named before any run is read
    specs = from_dict(EvalConfig, {**data["eval"], **ev_flags}, "eval").rankers
    check_specs(specs)
    runs = list(dict.fromkeys(d for d in map(run_dir_of, specs) if d is not None))
    if runs and importlib.util.find_spec("agents.ppo_ranker") is None:
        raise ImportError("run:DIR rankers need agents/ppo_ranker.py (the PPO ranker), which is not in this checkout")
    sigs = {run: _run_signature(run) for run in runs}
    for other in runs[1:]:
        why = mismatch(sigs[other], sigs[runs[0]], f"run:{other}", f"run:{runs[0]}")
        if why:
            raise ConfigError(f"the runs were trained on different envs: {why}")
    env_base = encoder_base = None
    notes = []
    if runs:
        run_cfg = load_config(Path(runs[0]) / "config.yaml")
        encoder_base = to_dict(run_cfg.encoder)
        if args.preset is None and "preset" not in data["env"]:
            env_base = to_dict(run_cfg.env)
            notes.append(f"evaluating on the env of run:{runs[0]} ({describe(sigs[runs[0]])}), with any env.* "
                         "values given on top; --preset names another")
    cli: dict[str, Any] = {"eval": ev_flags}
    if args.encoder:
        cli["encoder"] = {"kind": args.encoder}
    cfg = loader.resolve_config(args.config, args.preset, args.set, flags=cli, env_base=env_base,
                                encoder_base=encoder_base)
    ev = cfg.eval
    if args.fit_sessions < 1:
        raise ConfigError("--fit-sessions must be >= 1")
    if args.tune_seed < 0:
        raise ConfigError(f"--tune-seed must be >= 0, got {args.tune_seed}")
    check_output_dir(ev.out, "--out" if args.out is not None else "eval.out")
    env_sig = signature(cfg)
    for run in runs:
        why = mismatch(sigs[run], env_sig, f"run:{run}")
        if why:
            raise ConfigError(why)
    if ev.reference not in ev.rankers:
        if explicit_reference:
            raise ConfigError(f"eval.reference: {ev.reference!r} is not among the rankers {ev.rankers}")
        notes.append(f"reference {ev.reference!r} was not evaluated; using {ev.rankers[0]!r}")
        ev.reference = ev.rankers[0]
    return cfg, "; ".join(notes) or None


def _run_signature(run_dir: str) -> dict[str, Any]:
    """The signature of a ``run:DIR`` (derived from its config for older runs), after checking it is complete."""
    run = Path(run_dir)
    # the policy itself is read from policy.safetensors / policy.json (a run with only SB3's model.zip is refused
    # when loaded, with the command that converts it)
    for names in (("config.yaml",), (WEIGHTS_FILE, MODEL_FILE)):
        if not any((run / name).is_file() for name in names):
            raise FileNotFoundError(f"run:{run_dir} is not a finished recfeed run: {run / names[0]} is missing")
    sig = read_signature(run)
    if "derived_from" in sig:
        print(f"note: run:{run_dir} has no {SIGNATURE_FILE} (trained before signatures); checking it against what "
              f"{' and '.join(sig['derived_from'])} say", file=sys.stderr)
    return sig


def check_runs(cfg: Config, world: Any, runs: list[str]) -> None:
    """Every run's signature against the loaded world's (encoder identity, world key, catalog size, dimension).

    Raises:
        ConfigError: One line naming the run and the env, on the first that does not fit.
    """
    env_sig = signature(cfg, world)
    for run in runs:
        why = mismatch(read_signature(run), env_sig, f"run:{run}")
        if why:
            raise ConfigError(why)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the evaluation; returns the results dict (also written to ``<out>/results.json``)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        cfg, note = resolve_config(args)
    except (ConfigError, ValueError, FileNotFoundError, ImportError) as exc:
        parser.error(str(exc))
    if note:
        print(f"note: {note}", file=sys.stderr)
    ev, progress = cfg.eval, not args.no_progress
    world = load_world(cfg.env, cfg.encoder, progress=progress)
    try:
        check_runs(cfg, world, list(dict.fromkeys(d for d in map(run_dir_of, ev.rankers) if d is not None)))
    except ConfigError as exc:
        parser.error(str(exc))
    plan = episode_plan(ev.episodes, ev.seed_list, world.populations[ev.users].size)
    core = make_core(cfg.env, cfg.env.preset, cfg.encoder, world, ev.users, min(ev.batch, len(plan)))
    # the searches are read from (and written to) the tuning cache beside the world, which train.py's final table
    # shares: a run's own references are not searched again
    ctx = RankerContext(world, cfg.env, core=core, seed=args.tune_seed, tune_episodes=ev.tune_episodes,
                        fit_sessions=args.fit_sessions, batch=ev.batch, encoder=cfg.encoder, device=args.device,
                        progress=progress, cache_dir=str(tuning_cache_dir(cfg.env, cfg.encoder)),
                        **alpha_grid_kwargs(ev.alpha_grid))
    rankers = {spec: make_ranker(spec, ctx) for spec in ev.rankers}
    stats = evaluate_rankers(core, rankers, plan, progress=progress)
    tuned = rankers.get("tuned-alpha")
    setup = {
        "command": "python evaluate.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "preset": cfg.env.preset, "world": world.meta.get("config_key"), "encoder": world.encoder_name,
        "users": ev.users, "episodes_per_seed": ev.episodes, "seeds": ev.seed_list, "batch": core.B,
        "tune_seed": args.tune_seed,
        "n_items": core.M, "n_candidates": core.N, "slate_size": core.K, "tune_episodes": ev.tune_episodes,
        "fit_sessions": args.fit_sessions, "note": note,
    }
    results = summarise(stats, ev.reference, ev.bootstrap, seed=0,
                        hidden=[n for n, r in rankers.items() if r.reads_hidden_state],
                        alpha_curve=tuned.curve.to_dict() if isinstance(tuned, TunedAlphaRanker) else None,
                        setup=setup)
    paths = write_report(results, ev.out)
    # every ranker's return per session, as train.py's report writes them (the plan is seed-major, so a run's own
    # held-out sessions, eval.seeds 0..S-1 of its config, are the first of a larger evaluation's, and --first-seed F
    # plays the sessions after them)
    paths["returns"] = Path(ev.out) / "returns.npz"
    write_returns(stats, plan, paths["returns"])
    plaus = write_plausibility(results, ev.out, policies=[n for n in rankers if n.startswith("run:") and "@" not in n])
    print(markdown_table(results))
    print(plausibility_markdown(plaus))
    print("wrote " + ", ".join([*(str(p) for p in paths.values()), *plaus["paths"].values()]))
    return results


if __name__ == "__main__":
    main()
