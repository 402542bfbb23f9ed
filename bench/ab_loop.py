"""A loopback A/B run (issue #17, "Done when"): two arms behind the HTTP service, simulated users, report, OPE.

    python -m bench.ab_loop --run RUN_DIR [--sessions 400] [--out DIR]

1. Tunes ``tuned-alpha`` and ``tuned-diverse`` on the training users (as ``evaluate.py`` does; the searches are
   cached per world) and writes an arms file: the run's export (PPO, sampled at ``--ppo-temperature``) and
   ``tuned-alpha`` (sampled at ``--blend-temperature``), half the users each, and ``tuned-diverse`` with share 0
   (never served; its propensities are logged).
2. Serves them with ``uvicorn`` on 127.0.0.1 (a free port) with the serving log on, and drives it over HTTP with
   held-out users of the run's simulator: each session is one simulator episode (the user's prior state imported
   in process with ``set_user``, as the service has no import endpoint), the env's response model clicks, buys and
   dwells on the served slates, and the feedback goes back over HTTP.
3. Reports the arms (``agents.ab_report``), and checks that the arm difference in return per session agrees with the
   paired difference of the same two rankers from ``evaluate.py``'s machinery on held-out users (its specs
   ``run:RUN@T`` and ``tuned-alpha@T``, built by ``agents.registry.make_ranker`` with the same scorers and
   temperatures, run by ``agents.evaluation.evaluate_rankers``, compared by ``agents.report.summarise``): the
   evaluation's difference must lie in the A/B interval.
4. Gives the log to ``agents.ope`` to value ``tuned-diverse`` at ``--diverse-temperature`` (and each ``--target``)
   and reports whether its on-policy per-request reward (measured in the simulator) lies in each estimator's 95 %
   interval, with the effective sample size of the whole-slate importance weights; the check is
   ``--check-estimator``'s (SNIPS by default, chosen before any run: no reward-structure assumption).

Prints Markdown and a JSON line; exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import socket
import sys
import threading
import time
from pathlib import Path

import numpy as np

from agents.ab_report import compare_arms, markdown, session_table
from agents.evaluation import episode_plan, evaluate_rankers
from agents.ope.cli import served_estimates
from agents.ope.served import Target, served_log
from agents.ppo_ranker import load_run_config
from agents.registry import RankerContext, make_ranker
from agents.report import percentile_ci, summarise
from agents.serving.ablog import RewardWeights, read_ab_logs
from agents.serving.app import create_app
from agents.serving.arms import ABRuntime, arm_prefix_log_prob, load_arms_file
from agents.tuning import tuning_cache_dir
from configs.fileio import atomic_write_text
from configs.schema import Config
from envs.factory import make_core
from envs.presets import load_world
from envs.rec_env import RecEnv
from envs.world import World


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def drive(base_url: str, runtime: ABRuntime, world: World, cfg: Config, users: np.ndarray, seed: int) -> int:
    """Play one simulator episode per entry of ``users`` through the HTTP service; returns requests sent."""
    import httpx

    env = RecEnv(config=cfg.env, world=world, population="heldout")
    pop = world.populations["heldout"]
    ids = world.catalog.ids
    n = 0
    with httpx.Client(base_url=base_url, timeout=30.0) as client:
        for e, u in enumerate(users):
            obs, _ = env.reset(seed=seed * 1_000_003 + e, options={"user": int(u)})
            uid = f"heldout-{int(u)}-s{seed}-e{e}"
            runtime.set_user(uid, pooled_state=pop.init_state[u], cf_factor=pop.cf_user[u])
            done = False
            while not done:
                cids = [ids[int(i)] for i in obs["candidates"]]
                r = client.post("/recommend", json={"user_id": uid, "candidate_ids": cids})
                r.raise_for_status()
                rec = r.json()
                pos = np.array([cids.index(i) for i in rec["items"]])
                obs, _, term, trunc, info = env.step(pos)
                n += 1
                done = term or trunc
                if info["click"]:
                    item = rec["items"][int(info["click_rank"])]
                    events = [{"type": "click", "item_id": item, "dwell_s": float(info["dwell"]),
                               "request_id": rec["request_id"]}]
                    if info["purchase"]:
                        events.append({"type": "purchase", "item_id": item, "request_id": rec["request_id"]})
                    client.post("/feedback", json={"user_id": uid, "events": events}).raise_for_status()
    return n


def main(argv: list[str] | None = None) -> int:
    """CLI (module docstring)."""
    ap = argparse.ArgumentParser(prog="python -m bench.ab_loop", description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, help="trained run directory with an export/ (python -m agents.export)")
    ap.add_argument("--out", default="reports/ab_loop", help="folder of the arms file, the log and the JSON")
    ap.add_argument("--sessions", type=int, default=400, help="simulated sessions served over HTTP")
    ap.add_argument("--eval-episodes", type=int, default=2000, help="episodes of the in-simulator evaluation")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-steps", type=int, default=None,
                    help="requests per simulated session (default: the run's env.max_steps); 1 makes the logged "
                    "contexts independent of the arm that served, the setting in which a per-request off-policy "
                    "estimate equals the on-policy per-request value")
    ap.add_argument("--ppo-temperature", type=float, default=1.0)
    ap.add_argument("--blend-temperature", type=float, default=0.1)
    ap.add_argument("--diverse-temperature", type=float, default=0.2)
    ap.add_argument("--tune-episodes", type=int, default=400)
    ap.add_argument("--bootstrap", type=int, default=2000)
    ap.add_argument("--check-estimator", default="snips", choices=["ips", "snips", "iips", "rips", "cascade-dr"],
                    help="the estimator whose interval must cover the on-policy value")
    ap.add_argument("--target", action="append", default=[],
                    help="another policy to value from the log (an evaluate.py SPEC@T, e.g. fixed-alpha:0.8@0.2); "
                    "repeatable")
    ap.add_argument("--samples", type=int, default=128, help="Monte Carlo slates per request (OPE marginals)")
    args = ap.parse_args(argv)
    t_start = time.time()
    run = Path(args.run)
    export = run / "export" if (run / "export" / "manifest.json").is_file() else run
    cfg = load_run_config(run)
    world = load_world(cfg.env, cfg.encoder, progress=False)
    if args.max_steps is not None:
        if args.max_steps < 1:
            ap.error(f"--max-steps must be >= 1, got {args.max_steps}")
        cfg = dataclasses.replace(cfg, env=dataclasses.replace(cfg.env, max_steps=args.max_steps))
    core = make_core(cfg.env, cfg.env.preset, cfg.encoder, world, "heldout", 64)
    ctx = RankerContext(world, cfg.env, core=core, seed=args.seed, tune_episodes=args.tune_episodes, batch=64,
                        encoder=cfg.encoder, progress=False, cache_dir=tuning_cache_dir(cfg.env, cfg.encoder))
    alpha = float(ctx.alpha_curve().best_alpha)
    div = ctx.diverse_search().best
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    logs = out / "logs"
    if logs.exists() and any(logs.iterdir()):
        print(f"error: {logs} is not empty (the report would mix runs); choose another --out", file=sys.stderr)
        return 2
    arms_file = out / "arms.json"
    atomic_write_text(arms_file, json.dumps({"arms": [
        {"name": "ppo", "export": str(export.resolve()), "share": 0.5, "temperature": args.ppo_temperature},
        {"name": "tuned-alpha", "kind": "blend", "alpha": alpha, "share": 0.5,
         "temperature": args.blend_temperature},
        {"name": "tuned-diverse", "kind": "diverse", "alpha": float(div["alpha"]),
         "exposure_weight": float(div["exposure_weight"]), "seen_weight": float(div["seen_weight"]),
         "cap": int(div["cap"]), "share": 0.0, "temperature": args.diverse_temperature},
    ]}, indent=2))

    # ---- serve and drive ----------------------------------------------------------------------------------------
    import uvicorn

    runtime = ABRuntime.load(export, log_key=f"ab-loop-{args.seed}")
    runtime.set_arms(load_arms_file(arms_file), log_dir=logs, seed=args.seed, flush_s=5.0)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(runtime), host="127.0.0.1", port=port, log_level="warning",
                                           access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    users = np.random.default_rng([args.seed, 0xAB]).integers(0, world.populations["heldout"].size, args.sessions)
    t0 = time.time()
    n_req = drive(f"http://127.0.0.1:{port}", runtime, world, cfg, users, args.seed)
    serve_s = time.time() - t0
    server.should_exit = True
    thread.join(60)
    runtime.close()

    # ---- A/B report ---------------------------------------------------------------------------------------------
    rw = cfg.env.reward
    ab = read_ab_logs(logs, RewardWeights(rw.click, rw.purchase, rw.dwell))
    report = compare_arms(session_table(ab.frame), "tuned-alpha", args.bootstrap, args.seed)
    print(f"served {n_req} requests in {args.sessions} sessions over HTTP in {serve_s:.0f} s "
          f"(arms file {arms_file})\n")
    print(markdown(report))

    # ---- the same two rankers in evaluate.py's engine -------------------------------------------------------------
    specs = {"ppo": f"run:{run}@{args.ppo_temperature:g}", "tuned-alpha": f"tuned-alpha@{args.blend_temperature:g}",
             "tuned-diverse": f"tuned-diverse@{args.diverse_temperature:g}"}
    rankers = {name: make_ranker(spec, ctx) for name, spec in specs.items()}  # evaluate.py's specs and factory
    plan = episode_plan(args.eval_episodes, [args.seed + 100], world.populations["heldout"].size)
    stats = evaluate_rankers(core, rankers, plan)
    res = summarise(stats, "tuned-alpha", args.bootstrap, seed=args.seed)
    ev = res["paired"]["results"]["ppo"]["return"]
    ab_d = report["diff"]["ppo"]["return"]
    agree = ab_d["ci95"][0] <= ev["diff"] <= ab_d["ci95"][1]
    print(f"\nreturn per session, ppo − tuned-alpha: A/B {ab_d['diff']:+.3f} [{ab_d['ci95'][0]:+.3f}, "
          f"{ab_d['ci95'][1]:+.3f}] ({report['arms']['ppo']['sessions']} + {report['arms']['tuned-alpha']['sessions']}"
          f" sessions); evaluate.py engine, paired {ev['diff']:+.3f} [{ev['ci95'][0]:+.3f}, {ev['ci95'][1]:+.3f}] "
          f"({ev['n']} episodes): {'AGREE' if agree else 'DISAGREE'}")

    # ---- OPE of the third policy (and any --target) ------------------------------------------------------------------
    slog = served_log(ab)
    ests = ["ips", "snips", "iips", "rips", "cascade-dr"]
    gen = np.random.default_rng(args.seed)
    ope: dict[str, dict] = {}
    extra = {spec: make_ranker(spec, ctx) for spec in args.target if spec not in specs.values()}
    if extra:
        stats.update(evaluate_rankers(core, extra, plan))
    targets = {"tuned-diverse": rankers["tuned-diverse"], **extra}
    for name, ranker in targets.items():
        st = stats[name]
        idx = gen.integers(0, len(st.ret), (args.bootstrap, len(st.ret)))
        per_req = float(st.ret.sum() / st.length.sum())
        truth_ci = percentile_ci(st.ret[idx].sum(axis=1) / st.length[idx].sum(axis=1))
        target = Target(name, ranker.scorer, ranker.temperature)
        lw = arm_prefix_log_prob(ranker.scorer, slog.log.obs, slog.groups, slog.log.slates,
                                 ranker.temperature)[:, -1] - slog.logged_prefix[:, -1]
        w = np.exp(lw)
        ess = float(w.sum() ** 2 / (w ** 2).sum()) if w.sum() > 0 else 0.0
        est = served_estimates(slog, [target], ests, args.samples, args.seed)[name]["reward"]
        print(f"\n{ranker.name}, per-request reward: on-policy {per_req:.4f} [{truth_ci[0]:.4f}, {truth_ci[1]:.4f}] "
              f"({int(st.length.sum())} requests); off-policy from {len(slog.log)} logged requests, effective sample "
              f"size of the whole-slate weights {ess:.1f} (mean weight {w.mean():.3f}):\n")
        print("| estimator | estimate | 95% CI | on-policy value inside |\n|---|---|---|---|")
        covered = {}
        for e in ests:
            r = est[e]
            covered[e] = bool(r["low"] <= per_req <= r["high"])
            print(f"| {e} | {r['value']:.4f} | [{r['low']:.4f}, {r['high']:.4f}] | {'yes' if covered[e] else 'no'} |")
        ope[ranker.name] = {"truth": {"value": per_req, "ci95": list(truth_ci)}, "estimates": est,
                            "covered": covered, "ess": ess, "mean_weight": float(w.mean())}
    covered = ope[rankers["tuned-diverse"].name]["covered"]
    ok = agree and covered[args.check_estimator]
    summary = {"requests": n_req, "sessions": args.sessions, "serve_s": serve_s, "ab": report,
               "eval_paired_return": ev, "agree": agree, "tuned_alpha": alpha, "tuned_diverse": div, "ope": ope,
               "wall_s": time.time() - t_start, "command": "python -m bench.ab_loop " + " ".join(
                   argv if argv is not None else sys.argv[1:])}
    atomic_write_text(out / "ab_loop.json", json.dumps(summary, indent=2, default=float))
    print(f"\nchecks: arm difference agrees with evaluate.py's: {agree}; OPE ({args.check_estimator}) covers "
          f"tuned-diverse's on-policy value: {covered[args.check_estimator]}; wall {summary['wall_s']:.0f} s")
    print(json.dumps({"agree": agree, "ope_covered": {k: v["covered"] for k, v in ope.items()},
                      "ess": {k: round(v["ess"], 1) for k, v in ope.items()}, "ok": ok}))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
