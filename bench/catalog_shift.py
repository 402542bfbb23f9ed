"""Incremental learning after a catalog shift: a warm-started policy against training from scratch.

    python -m bench.catalog_shift --source-run RUN_DIR --out DIR [--share 0.2] [--steps 1200000] [--minutes 12]

1. the source run's world (its config's preset, from the world cache) gets ``share·M`` new items: synthetic items
   from the catalog generator with another seed, encoded with the run's encoder; cold (zero CF factors,
   popularity 0) — ``python -m envs.update --add-items`` (``DIR/world-shifted``);
2. the logging policy serves the training users one more round of sessions on that world (simulated logs,
   ``DIR/logs.parquet``), and ``python -m envs.update --logs`` folds the new items they clicked into the CF factors
   and adds the clicks to popularity (``DIR/world-updated``, a preset directory);
3. two arms train on the updated world with the source run's config and seed, side by side: ``warm``
   (``train.py --init-from RUN_DIR``) and ``scratch``; each writes its held-out return every ``--eval-every``
   steps (``eval.jsonl``; the same held-out sessions for both);
4. prints the return-vs-steps table of both arms (and the wall minutes since each arm's start) as Markdown.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from configs.fileio import atomic_write_text
from configs.loader import load_config
from configs.schema import CatalogConfig


def new_items_table(n: int, seed: int, path: Path) -> Path:
    """``n`` synthetic items (id ``new-XXXXX``, text, category, price) as JSONL."""
    from envs.catalog import generate_catalog

    cat = generate_catalog(CatalogConfig(n_items=n, seed=seed))
    rows = pd.DataFrame({"id": [f"new-{i:05d}" for i in range(n)], "text": cat.texts,
                         "category": [cat.category_names[c] for c in cat.category], "price": cat.price})
    rows.to_json(path, orient="records", lines=True)
    return path


def main(argv: list[str] | None = None) -> int:
    """CLI entry point (see the module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--source-run", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--share", type=float, default=0.2, help="new items as a share of the old catalog")
    ap.add_argument("--steps", type=int, default=1_200_000)
    ap.add_argument("--minutes", type=float, default=12.0, help="time box of each arm's learning")
    ap.add_argument("--eval-every", type=int, default=100_000)
    ap.add_argument("--arms", default="warm,scratch")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="extra train.py --set")
    args = ap.parse_args(argv)
    src, out = Path(args.source_run), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = load_config(src / "config.yaml")
    py = sys.executable
    from encoders.factory import make_encoder
    from envs.presets import default_world_dir, load_world, run_logging_phase, world_key
    from envs.rollout_log import write_rollout_log
    from envs.update import main as update_main

    shifted, updated = out / "world-shifted", out / "world-updated"
    if not updated.exists():
        enc = make_encoder(cfg.encoder)
        world = load_world(cfg.env, cfg.encoder, encoder=enc, progress=False)
        base = default_world_dir(cfg.env, cfg.encoder) / world_key(cfg.env, enc.name)
        n_new = round(args.share * world.n_items)
        table = new_items_table(n_new, cfg.env.catalog.seed + 1, out / "new_items.jsonl")
        if not shifted.exists():
            flags = ["--world", str(base), "--add-items", str(table), "--out", str(shifted), "--as-preset",
                     "--preset", cfg.env.preset or "default", "--encoder-kind", cfg.encoder.kind,
                     "--hashing-dim", str(cfg.encoder.hashing_dim)]
            assert update_main(flags) == 0
        from configs.loader import preset_env
        from envs.world import World

        scfg = preset_env(str(shifted))
        sworld = World.load(shifted / "world")
        t0 = time.perf_counter()
        logs = run_logging_phase(sworld, scfg, "train", seed=cfg.env.user_model.seed + 17)
        write_rollout_log(logs, out / "logs.parquet")
        clicked = logs.loc[logs["click_rank"] >= 0, "clicked_item"].to_numpy()
        print(f"simulated logs: {len(logs)} requests, {len(clicked)} clicks, {int(sworld.new_items[clicked].sum())} on "
              f"new items ({time.perf_counter() - t0:.0f}s)", flush=True)
        assert update_main(["--world", str(shifted), "--logs", str(out / "logs.parquet"), "--out", str(updated)]) == 0
    # the source run's config without its env section (the updated preset directory is the env)
    import yaml

    data = yaml.safe_load((src / "config.yaml").read_text(encoding="utf-8"))
    data.pop("env", None)
    data["train"].pop("run_name", None)
    atomic_write_text(out / "train.yaml", yaml.safe_dump(data, sort_keys=False))
    common = ["--config", str(out / "train.yaml"), "--preset", str(updated), "--out", str(out), "--quiet",
              "--set", f"train.total_timesteps={args.steps}", "--set", f"train.max_minutes={args.minutes}",
              "--set", f"train.eval_every={args.eval_every}", "--set", f"train.checkpoint_every={args.eval_every * 4}"]
    for o in args.overrides:
        common += ["--set", o]
    procs, starts = {}, {}
    for arm in args.arms.split(","):
        flags = [*common, "--name", f"arm-{arm}"] + (["--init-from", str(src)] if arm == "warm" else [])
        if (out / f"arm-{arm}" / "summary.json").is_file():
            continue
        log = (out / f"arm-{arm}.log").open("w")
        starts[arm] = time.time()
        procs[arm] = subprocess.Popen(["nice", "-n", "19", py, "train.py", *flags], stdout=log, stderr=log,
                                      env={**os.environ, "OMP_NUM_THREADS": "1"})
    for arm, p in procs.items():
        if p.wait() != 0:
            print(f"arm {arm} failed: see {out / f'arm-{arm}.log'}", file=sys.stderr)
            return 1
        atomic_write_text(out / f"arm-{arm}" / "bench_start.json", json.dumps({"start": starts[arm]}))
    step0 = out / "step0.json"
    if not step0.is_file():
        atomic_write_text(step0, json.dumps(step0_returns(out, src)))
    print(curve_table(out, args.arms.split(",")))
    return 0


def step0_returns(out: Path, src: Path) -> dict[str, float]:
    """Held-out return of each arm's policy before any update, on the sessions ``eval.jsonl`` uses: ``warm`` (the
    source policy on the updated world) and ``scratch`` (a new run's start: PPO's seeded initialisation on the
    tuned-diverse base, as ``train.py`` builds it)."""
    import torch as th

    from agents.checkpoints import new_ppo
    from agents.evaluation import episode_plan, run_episodes
    from agents.final_report import tuning_context
    from agents.ppo_ranker import PPORanker
    from agents.training import make_venv, policy_kwargs
    from agents.warm_start import warm_start_model
    from envs.factory import make_core
    from envs.presets import load_world

    cfg = load_config(out / "arm-scratch" / "config.yaml")
    world = load_world(cfg.env, cfg.encoder, progress=False)
    tc = cfg.train
    core = make_core(cfg.env, cfg.env.preset, cfg.encoder, world, "heldout", cfg.eval.batch)
    plan = episode_plan(tc.eval_episodes, [tc.seed + 7], world.populations["heldout"].size)
    summary = json.loads((out / "arm-scratch" / "summary.json").read_text())
    venv = make_venv(cfg, world, tc.seed)
    th.manual_seed(tc.seed)
    diverse = tuning_context(cfg, world, None, False).diverse_search().best
    scratch = new_ppo(cfg, venv, th.device("cpu"), None, policy_kwargs(cfg, summary["tuned_alpha"], world, diverse))
    warm, _ = warm_start_model(cfg, src, venv, world, th.device("cpu"), None)
    return {name: float(run_episodes(core, PPORanker(m.policy, cfg.env.slate_size), plan).ret.mean())
            for name, m in (("warm", warm), ("scratch", scratch))}


def curve_table(out: Path, arms: list[str]) -> str:
    """Markdown: held-out return per evaluation step for each arm, with wall minutes since the arm's start."""
    curves = {}
    for arm in arms:
        rows = [json.loads(x) for x in (out / f"arm-{arm}" / "eval.jsonl").read_text().splitlines() if x.strip()]
        start_f = out / f"arm-{arm}" / "bench_start.json"
        start = json.loads(start_f.read_text())["start"] if start_f.is_file() else rows[0]["time"]
        curves[arm] = {r["step"]: (r["return"], (r["time"] - start) / 60, r["return_tuned_alpha"]) for r in rows}
    steps = sorted(set().union(*[set(c) for c in curves.values()]))
    step0 = out / "step0.json"
    if step0.is_file():
        s0 = json.loads(step0.read_text())
        for a in arms:
            if a in s0:
                curves[a][0] = (s0[a], 0.0, next(iter(curves[a].values()))[2])
        steps = [0, *steps]
    head = "| step | " + " | ".join(f"{a}: return (min)" for a in arms) + " | tuned-alpha |"
    lines = [head, "|" + "---:|" * (len(arms) + 2)]
    for s in steps:
        cells = [f"{curves[a][s][0]:.2f} ({curves[a][s][1]:.1f})" if s in curves[a] else "–" for a in arms]
        ref = next((curves[a][s][2] for a in arms if s in curves[a]), float("nan"))
        lines.append(f"| {s:,} | " + " | ".join(cells) + f" | {ref:.2f} |")
    for a in arms:
        summ = out / f"arm-{a}" / "summary.json"
        if summ.is_file():
            d = json.loads(summ.read_text())
            lines.append(f"\n{a}: {d['total_timesteps']:,} steps, {d['steps_per_s']:,.0f} steps/s, final held-out "
                         f"{json.dumps({k: round(v['mean'], 2) for k, v in d['heldout'].items()})}")
    return "\n".join(lines)


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    sys.exit(main())
