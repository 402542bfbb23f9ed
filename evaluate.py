"""Evaluate rankers on the same simulated users: metrics with 95% intervals, paired tests, plots.

    python evaluate.py --rankers random,popular,fixed-alpha:0.5,tuned-alpha,linucb,oracle \\
        --episodes 1000 --seeds 2 --users heldout --out reports/baselines
    python evaluate.py --config configs/eval_baselines.yaml --set eval.bootstrap=5000

Every ranker meets the same sessions (same users, same episode keys: common random numbers), so the
comparisons are paired. ``tuned-alpha``, ``scored`` and ``linucb`` learn on the training users only. Writes
``results.json``, ``results.csv``, ``results.md`` and ``plots/*.png`` into ``--out`` (atomically) and prints the
Markdown table. The engine is :mod:`agents.evaluation`, the rankers are :mod:`agents.baselines`.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from typing import Any

from agents.baselines import RankerContext, TunedAlphaRanker, check_specs, make_ranker, valid_choices
from agents.evaluation import episode_plan, evaluate_rankers, markdown_table, summarise, write_report
from agents.plausibility import plausibility_markdown, write_plausibility
from configs.loader import ConfigError, apply_overrides, from_dict, read_yaml_mapping
from configs.schema import Config
from envs.presets import load_world, preset_config
from envs.rec_env import make_core


def build_parser() -> argparse.ArgumentParser:
    """The command line (flags win over ``--set``, which wins over ``--config``)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", help="YAML with eval:, env:, encoder: sections (configs/schema.py)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config value, e.g. eval.bootstrap=5000 or env.max_steps=30 (repeatable)")
    ap.add_argument("--rankers", help=f"comma-separated ranker specs; valid: {valid_choices()}")
    ap.add_argument("--episodes", type=int, help="sessions per seed")
    ap.add_argument("--seeds", type=int, help="number of evaluation seeds (seeds 0..S-1)")
    ap.add_argument("--users", choices=["heldout", "train"], help="population to evaluate on")
    ap.add_argument("--reference", help="ranker the paired tests compare against (default tuned-alpha)")
    ap.add_argument("--out", help="report folder")
    ap.add_argument("--preset", help="env preset (configs/presets/<name>.yaml) under the config's env: section")
    ap.add_argument("--encoder", choices=["transformer", "hashing"],
                    help="text encoder (hashing: fast, for smoke runs only)")
    ap.add_argument("--tune-episodes", type=int, default=400, help="training sessions per α for tuned-alpha")
    ap.add_argument("--fit-sessions", type=int, default=600,
                    help="logged training sessions that scored and linucb are fitted on")
    ap.add_argument("--device", default="auto", help="torch device for run:DIR rankers")
    ap.add_argument("--no-progress", action="store_true", help="no progress bars")
    return ap


def resolve_config(args: argparse.Namespace) -> tuple[Config, str | None]:
    """The validated config of this evaluation, and a note when the default reference had to change.

    The env section starts from the preset (``--preset``, else ``env.preset``, else ``default``); the config
    file's other ``env`` values and ``--set env.*`` apply on top of it.

    Raises:
        ConfigError: Bad file, unknown key, wrong type, bad count, or an explicit reference not evaluated.
        ValueError: Unknown ranker (listing the valid choices) or preset.
        FileNotFoundError: A ``run:DIR`` whose directory is missing.
        ImportError: ``run:DIR`` without the PPO ranker module.
    """
    data = read_yaml_mapping(args.config) if args.config else {}
    apply_overrides(data, args.set)
    for section in ("eval", "env", "encoder"):
        if not isinstance(data.setdefault(section, {}), dict):
            raise ConfigError(f"{section}: expected a mapping, got {data[section]!r}")
    explicit_reference = args.reference is not None or "reference" in data["eval"]
    flags = {"rankers": args.rankers, "episodes": args.episodes, "seeds": args.seeds, "users": args.users,
             "reference": args.reference, "out": args.out}
    data["eval"].update({k: v for k, v in flags.items() if v is not None})
    if args.encoder:
        data["encoder"]["kind"] = args.encoder
    env_data = data.pop("env")
    preset = args.preset or env_data.pop("preset", None) or "default"
    env_data.pop("preset", None)
    cfg = from_dict(Config, data)
    cfg.env = preset_config(preset, env_data)
    ev = cfg.eval
    for key in ("episodes", "seeds", "batch"):
        if getattr(ev, key) < 1:
            raise ConfigError(f"eval.{key}: must be >= 1, got {getattr(ev, key)}")
    if ev.bootstrap < 100:
        raise ConfigError(f"eval.bootstrap: use at least 100 resamples, got {ev.bootstrap}")
    if args.tune_episodes < 1 or args.fit_sessions < 1:
        raise ConfigError("--tune-episodes and --fit-sessions must be >= 1")
    check_specs(ev.rankers)
    if any(s.startswith("run:") for s in ev.rankers) and importlib.util.find_spec("agents.ppo_ranker") is None:
        raise ImportError("run:DIR rankers need agents/ppo_ranker.py (the PPO ranker), which is not in this checkout")
    note = None
    if ev.reference not in ev.rankers:
        if explicit_reference:
            raise ConfigError(f"eval.reference: {ev.reference!r} is not among the rankers {ev.rankers}")
        note = f"reference {ev.reference!r} was not evaluated; using {ev.rankers[0]!r}"
        ev.reference = ev.rankers[0]
    return cfg, note


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
    plan = episode_plan(ev.episodes, list(range(ev.seeds)), world.populations[ev.users].size)
    core = make_core(cfg.env, cfg.env.preset, cfg.encoder, world, ev.users, min(ev.batch, len(plan)))
    ctx = RankerContext(world, cfg.env, core=core, seed=0, tune_episodes=args.tune_episodes,
                        fit_sessions=args.fit_sessions, batch=ev.batch, encoder=cfg.encoder, device=args.device,
                        progress=progress)
    rankers = {spec: make_ranker(spec, ctx) for spec in ev.rankers}
    stats = evaluate_rankers(core, rankers, plan, progress=progress)
    tuned = rankers.get("tuned-alpha")
    setup = {
        "command": "python evaluate.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "preset": cfg.env.preset, "world": world.meta.get("config_key"), "encoder": world.encoder_name,
        "users": ev.users, "episodes_per_seed": ev.episodes, "seeds": list(range(ev.seeds)), "batch": core.B,
        "n_items": core.M, "n_candidates": core.N, "slate_size": core.K, "tune_episodes": args.tune_episodes,
        "fit_sessions": args.fit_sessions, "note": note,
    }
    results = summarise(stats, ev.reference, ev.bootstrap, seed=0,
                        hidden=[n for n, r in rankers.items() if r.reads_hidden_state],
                        alpha_curve=tuned.curve.to_dict() if isinstance(tuned, TunedAlphaRanker) else None,
                        setup=setup)
    paths = write_report(results, ev.out)
    plaus = write_plausibility(results, ev.out, policies=[n for n in rankers if n.startswith("run:")])
    print(markdown_table(results))
    print(plausibility_markdown(plaus))
    print("wrote " + ", ".join([*(str(p) for p in paths.values()), *plaus["paths"].values()]))
    return results


if __name__ == "__main__":
    main()
