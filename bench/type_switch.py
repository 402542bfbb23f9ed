"""Can a hand-written ranker infer the user's type within the session and switch its rule? (issue #13, session 25)

On a preset whose users want clearly different rules (``adapt``), the value of adaptation is what a fixed ranker
gains by knowing each user's hidden ρ (``bench.headroom``). This bench asks how much of it an engineer's rule gets
*without* that knowledge, from what the session shows:

1. the two rules: ``tuned-diverse`` (A) and the best diversity-heuristic point for the CF-leaning users (B,
   ``bench.headroom.diverse_by_group`` with one edge at ρ = 0.5, on the training users);
2. a **type classifier** on what a service observes at each request (the candidates' signal spreads and means, the
   session's context, its click lean): a logistic regression (:func:`agents.fitting.fit_logistic`) fitted on the
   training users' requests under A, labelled with their hidden ρ < 0.5 (a label only a simulator has; the fitted
   rule reads observations only); ``--reader boosted`` fits gradient-boosted trees (scikit-learn's
   ``HistGradientBoostingClassifier``) on those statistics and the policy's pooling of the candidates (each
   symlog feature column's mean, max and spread, and the LLM–CF correlation: :func:`reading_features`) instead, a
   non-linear reader (session 57: it reads the type at the first request 4–6 points better);
3. the **switch**: B for the requests whose classifier probability of a CF-leaning user exceeds p, else A; p chosen
   on training sessions, the choice evaluated on the held-out sessions against tuned-diverse (common random
   numbers), split by hidden type;
4. which of B's parameters carry its gain on the CF-leaning users: A with B's α (and click-lean weight) only;
5. with ``--runs RUN [RUN ...]`` (trained runs of the preset, one per training seed, e.g. a quality protocol's): the
   switch on the runs' own held-out sessions (their ``report/returns.npz``), and PPO − switch paired on them, per
   run and over seeds and sessions, split by hidden type: PPO against the strongest hand-written use of the type;
6. with ``--runs`` and ``--override``: **PPO with the engineer's override** (session 32), the switch with each run's
   PPO in place of rule A: B on the requests whose probability of a CF-leaning user, by a classifier (``--reader``'s)
   fitted on the run's own requests on training users, exceeds a threshold chosen on training sessions (or never,
   when no threshold beats PPO there); the hybrid − PPO paired on the runs' held-out sessions, by hidden type. What it
   gains is what PPO leaves on the table for the users it could tell apart (a learner with the CF-leaning users'
   rule as a second base would aim at it). PPO is replayed from the saved policy on the first sessions and checked
   against its stored returns first.

``python -m bench.type_switch --preset adapt`` prints a table; the last line is a JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from agents.base import Ranker
from agents.evaluation import EpisodePlan, episode_plan, run_episodes
from agents.policies import SlatePolicy
from agents.ppo_ranker import PPORanker, load_policy
from agents.registry import RankerContext
from agents.report import Bootstrap, percentile_ci
from agents.tuning import TUNE_SEED, diverse_by_group, diverse_ranker, tuning_cache_dir
from agents.type_switch import (  # the switch itself: agents (the registry's tuned-switch)
    FIT_SEED_OFFSET,
    NEVER,
    READERS,
    RHO_EDGE,
    SwitchRanker,
    fit_classifier,
    pick_threshold,
    tune_switch,
)
from bench.env_throughput import config_and_world
from bench.headroom import add_world_args
from bench.quality_protocol import returns_table, seeds_and_sessions_interval
from configs.loader import load_config
from configs.schema import Config
from envs.core import BatchedCore
from envs.factory import make_core
from envs.world import World


def _diff(x: np.ndarray, ref: np.ndarray, boot: Bootstrap, sel: np.ndarray) -> dict[str, Any]:
    d = np.where(sel, x - ref, 0.0)
    means = boot.means(d) / np.maximum(boot.means(sel.astype(float)), 1e-12)
    return {"mean": float((x - ref)[sel].mean()), "ci95": list(percentile_ci(means))}


def type_rules(world: World, full: Config, seed: int, tune_episodes: int) -> dict[str, dict[str, float]]:
    """The diversity-heuristic points of the type switch, searched on training users (cached beside the world):
    ``A`` tuned-diverse, ``B`` the best for the CF-leaning users and ``C`` for the content-leaning ones (hidden ρ
    either side of :data:`RHO_EDGE`, ``bench.headroom.diverse_by_group``).

    Args:
        world: The world.
        full: The resolved config (its env and encoder name the cache).
        seed: The tuning seed (a run's ``train.seed``; the sessions are ``seed + TUNE_SEED``'s).
        tune_episodes: Training sessions per searched point.
    """
    cfg, cache = full.env, tuning_cache_dir(full.env, full.encoder)
    ctx = RankerContext(world, cfg, seed=seed, tune_episodes=tune_episodes, batch=256, cache_dir=str(cache))
    point_a = ctx.diverse_search().best  # a run's own search, when it has one
    by_type = diverse_by_group(world, cfg, point_a, None, (RHO_EDGE,), tune_episodes, seed + TUNE_SEED,
                               cache_dir=cache)
    return {"A": point_a, "B": by_type["per_group"][0], "C": by_type["per_group"][1]}


def by_type_row(ret: np.ndarray, ref: np.ndarray, boot: Bootstrap, cf: np.ndarray) -> dict[str, Any]:
    """One ranker's row of a table split by hidden type: its mean return (all, CF-leaning, content-leaning users) and
    its paired difference from ``ref`` in each, with a bootstrap interval over sessions.

    Args:
        ret: float (E,) the ranker's return per session.
        ref: float (E,) the reference's on the same sessions.
        boot: The bootstrap over the E sessions.
        cf: bool (E,) the sessions whose user is CF-leaning (hidden ρ < :data:`RHO_EDGE`).
    """
    return {"return": float(ret.mean()), "cf": float(ret[cf].mean()), "content": float(ret[~cf].mean()),
            "diff": _diff(ret, ref, boot, np.ones_like(cf)), "diff_cf": _diff(ret, ref, boot, cf),
            "diff_content": _diff(ret, ref, boot, ~cf)}


def by_type_table(rows: dict[str, dict[str, Any]], against: str) -> list[str]:
    """Markdown lines of a table of :func:`by_type_row` rows: each row's return (all, CF-leaning, content-leaning
    users) and its three paired differences from ``against`` (the reference's name, in the header)."""
    def cell(x: dict[str, Any]) -> str:
        return f"{x['mean']:+.3f} ({x['ci95'][0]:+.2f} to {x['ci95'][1]:+.2f})"

    lines = [f"| policy | return | CF-leaning | content-leaning | − {against}: all | CF-leaning | content-leaning |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['return']:.3f} | {r['cf']:.3f} | {r['content']:.3f} | {cell(r['diff'])} | "
                     f"{cell(r['diff_cf'])} | {cell(r['diff_content'])} |")
    return lines


def by_type_cells(row: dict[str, Any]) -> str:
    """The three paired differences of a :func:`by_type_row`, as table text."""
    return ", ".join(f"{row[c]['mean']:+.3f} ({row[c]['ci95'][0]:+.2f} to {row[c]['ci95'][1]:+.2f})"
                     for c in ("diff", "diff_cf", "diff_content"))


def print_ppo_against(figures: dict[str, Any], width: int) -> None:
    """Print :func:`ppo_against`'s figures: a line per run, then over seeds and sessions (two or more runs)."""
    parts = [(Path(r).name, figs) for r, figs in figures["per_run"].items()]
    if "over_seeds_and_sessions" in figures:
        parts.append(("over seeds and sessions", figures["over_seeds_and_sessions"]))
    for label, figs in parts:
        print(f"{label:{width}s} " + ", ".join(f"{figs[g]['mean']:+.3f} ({figs[g]['ci95'][0]:+.2f} to "
                                               f"{figs[g]['ci95'][1]:+.2f})" for g in ("all", "cf", "content")))


def runs_plan(runs: Sequence[Path], preset: str, n_heldout: int) -> EpisodePlan:
    """The held-out sessions the runs' final reports were evaluated on (one plan, shared by every run).

    Raises:
        ValueError: A run without a config, of another preset, or whose evaluation met other sessions.
    """
    plans = []
    for run in runs:
        if not (run / "config.yaml").is_file():
            raise ValueError(f"--runs: {run} is not a run directory (no config.yaml)")
        cfg = load_config(run / "config.yaml")
        if cfg.env.preset != preset:
            raise ValueError(f"--runs: {run} was trained on preset {cfg.env.preset!r}, not {preset!r}")
        plans.append((cfg.eval.episodes, tuple(cfg.eval.seed_list)))
    if len(set(plans)) != 1:
        raise ValueError(f"--runs: the runs were evaluated on different held-out sessions (episodes, seeds): {plans}")
    episodes, seeds = plans[0]
    return episode_plan(episodes, list(seeds), n_heldout)


def runs_ppo(runs: Sequence[Path], plan: EpisodePlan) -> np.ndarray:
    """PPO's return per run and session of ``plan``: float64 (S, E), from the runs' ``report/returns.npz``.

    Raises:
        ValueError: A run without returns of PPO (:func:`bench.quality_protocol.returns_table`), or returns of other
            sessions than ``plan``'s.
    """
    keys, _, table = returns_table(runs, ("ppo",))
    if keys.shape != plan.keys.shape or not np.array_equal(keys, plan.keys):
        raise ValueError("--runs: the runs' per-session returns are of other sessions than their eval settings name")
    return table["ppo"]


def checked_runs_plan(runs: Sequence[Path], preset: str, n_heldout: int) -> EpisodePlan | None:
    """:func:`runs_plan` with every run's PPO returns read against it (:func:`runs_ppo`), so that a command refuses
    bad ``--runs`` before its minutes of tuning; ``None`` when ``runs`` is empty.

    Raises:
        ValueError: As :func:`runs_plan` and :func:`runs_ppo`.
    """
    if not runs:
        return None
    plan = runs_plan(runs, preset, n_heldout)
    runs_ppo(runs, plan)
    return plan


def ppo_against(rule: np.ndarray, plan: EpisodePlan, runs: Sequence[Path], cf: np.ndarray,
                bootstrap: int = 2000, seed: int = 0) -> dict[str, Any]:
    """PPO − ``rule`` paired on ``plan``'s sessions: per run (a bootstrap over sessions) and over seeds and
    sessions, for all users and split by hidden type.

    Args:
        rule: float (E,) the rule's return per session of ``plan``.
        plan: The sessions (E of them), those of the runs' ``report/returns.npz``.
        runs: Run directories (S >= 1; two or more for the interval over seeds and sessions).
        cf: bool (E,) the sessions whose user is CF-leaning (hidden ρ < :data:`RHO_EDGE`).
        bootstrap: Bootstrap resamples of the sessions per run.
        seed: Bootstrap seed.

    Returns:
        ``{"per_run": {run: {group: {"mean", "ci95"}}}, "over_seeds_and_sessions": {group: {...}}}`` with the
        groups ``all``, ``cf`` and ``content`` (the second key only for two or more runs).

    Raises:
        ValueError: As :func:`runs_ppo`.
    """
    groups = {"all": np.ones_like(cf), "cf": cf, "content": ~cf}
    boot = Bootstrap(len(plan), bootstrap, seed)
    ppo = runs_ppo(runs, plan)  # (S, E)
    diffs = ppo - rule  # (S, E)
    per_run = {str(run): {g: _diff(row, rule, boot, m) for g, m in groups.items()}
               for run, row in zip(runs, ppo, strict=True)}
    out: dict[str, Any] = {"per_run": per_run}
    if len(runs) > 1:
        out["over_seeds_and_sessions"] = {g: seeds_and_sessions_interval(diffs[:, m]) for g, m in groups.items()}
    return out


#: Sessions of the runs' plan on which a saved policy must replay its stored returns before ``--override`` uses it.
REPLAY_SESSIONS = 200


def _subplan(plan: EpisodePlan, n: int) -> EpisodePlan:
    return EpisodePlan(plan.keys[:n], plan.users[:n], plan.seeds[:n])


def playable_policy(run: Path, core: BatchedCore) -> SlatePolicy:
    """``run``'s saved policy on the CPU, checked to read only observations ``core`` makes.

    Raises:
        ValueError: It reads one the core does not make (the run's env settings were not passed with ``--set``).
    """
    policy = load_policy(run, device="cpu", n_items=core.M)
    missing = sorted(set(policy.observation_space.spaces) - set(core.observe()))
    if missing:
        raise ValueError(f"--override: {run}'s policy reads {missing}, which this core does not observe (pass the "
                         f"run's env settings with --set, e.g. env.obs_critic_state=true)")
    return policy


def override_run(run: Path, rule_b: Ranker, train_core: BatchedCore, core: BatchedCore, fit_plan: EpisodePlan,
                 tune_plan: EpisodePlan, plan: EpisodePlan, stored: np.ndarray, reader: str = "logistic",
                 classifier_seed: int = 0) -> dict[str, Any]:
    """One run's PPO with the engineer's override (item 6 of the module docstring).

    Args:
        run: The run directory (its saved policy is played on the CPU).
        rule_b: The CF-leaning users' rule.
        train_core: Training users (the classifier's requests and the threshold's sessions).
        core: Held-out users.
        fit_plan: Training sessions whose requests, played by PPO, the classifier is fitted on.
        tune_plan: Training sessions that choose the threshold.
        plan: The run's held-out sessions.
        stored: float (E,) PPO's stored return per session of ``plan`` (``report/returns.npz``).
        reader: The classifier (``"logistic"`` or ``"boosted"``, as the switch's ``--reader``).
        classifier_seed: The boosted reader's random state.

    Returns:
        ``{"threshold" (None: never), "tuning" {threshold: return}, "ret" float (E,), "switched"}``: ``ret`` the
        hybrid's return per session of ``plan``; ``switched`` the share of its answered requests that B answered.

    Raises:
        ValueError: The saved policy reads an observation the core does not make, or does not replay its stored
            returns.
    """
    ppo = PPORanker(playable_policy(run, core), core.K)
    head = _subplan(plan, min(REPLAY_SESSIONS, len(plan)))
    replay = run_episodes(core, ppo, head).ret
    if not np.allclose(replay, stored[: len(head)], rtol=1e-5, atol=1e-6):
        raise ValueError(f"--override: {run}'s saved policy does not replay its stored returns "
                         f"(max gap {np.abs(replay - stored[: len(head)]).max():.3g})")
    classifier = fit_classifier(train_core, ppo, fit_plan, reader, classifier_seed)
    best, tuning = pick_threshold(train_core, ppo, rule_b, classifier, tune_plan)
    hybrid = SwitchRanker(ppo, rule_b, classifier, best)
    answered = [0, 0]  # requests answered, of them by B

    def count(obs: dict[str, np.ndarray], slate: np.ndarray, feedback: Any, active: np.ndarray) -> None:
        answered[0] += int(active.sum())
        answered[1] += int((classifier.read(obs)[active] > hybrid.threshold).sum())

    stats = run_episodes(core, hybrid, plan, on_step=count)
    return {"threshold": None if best == NEVER else best, "tuning": tuning, "ret": stats.ret,
            "switched": answered[1] / max(answered[0], 1)}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the bench; print the table and the JSON summary (last line)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_world_args(ap, preset="adapt")
    ap.add_argument("--fit-episodes", type=int, default=3000, help="training sessions the classifier is fitted on")
    ap.add_argument("--reader", choices=READERS, default="logistic",
                    help="the type classifier: a logistic regression on the request's statistics, or gradient-boosted "
                         "trees on those and the candidates' pooled columns (--fit-episodes 8000 in BENCHMARKS)")
    ap.add_argument("--runs", nargs="+", type=Path, default=[], metavar="RUN",
                    help="trained runs of the preset: PPO − switch paired on their held-out sessions")
    ap.add_argument("--override", action="store_true",
                    help="with --runs: each run's PPO with the engineer's override (B above a classifier threshold "
                         "fitted and chosen on training users), paired with PPO on the runs' held-out sessions")
    args = ap.parse_args(argv)
    if args.override and not args.runs:
        ap.error("--override needs --runs")
    full, world = config_and_world(ap, args, progress=True)
    cfg = full.env
    try:  # refuse bad runs before the minutes of tuning
        runs_sessions = checked_runs_plan(args.runs, cfg.preset, world.populations["heldout"].size)
        if args.override:
            probe = make_core(cfg, cfg.preset, None, world, "heldout", 1)
            for run in args.runs:
                playable_policy(run, probe)
    except ValueError as exc:
        ap.error(str(exc))
    k, category = cfg.slate_size, world.catalog.category
    points = type_rules(world, full, args.seed, args.tune_episodes)
    point_a, point_b = points["A"], points["B"]
    tune_seed = args.seed + TUNE_SEED
    rule_a = diverse_ranker(k, category, point_a, name="tuned-diverse")
    rule_b = diverse_ranker(k, category, point_b, name="rule B (ρ<0.5's)")

    train_core = make_core(cfg, cfg.preset, None, world, "train", min(args.batch, 256))
    n_train = world.populations["train"].size
    search = tune_switch(train_core, rule_a, rule_b, args.fit_episodes, args.tune_episodes, tune_seed, args.reader,
                         classifier_seed=args.seed)
    tune_plan = episode_plan(args.tune_episodes, [tune_seed], n_train)
    best, tuning, switch = search.threshold, search.tuning, search.ranker

    core = make_core(cfg, cfg.preset, None, world, "heldout", args.batch)
    plan = episode_plan(args.episodes, [args.seed], world.populations["heldout"].size)
    alpha_only = diverse_ranker(k, category, {**point_a, "alpha": point_b["alpha"],
                                              "lean_weight": point_b.get("lean_weight", 0.0)}, name="A with B's α")
    stats = {r.name: run_episodes(core, r, plan) for r in (rule_a, rule_b, switch, alpha_only)}
    ref = stats["tuned-diverse"].ret
    cf = stats["tuned-diverse"].rho < RHO_EDGE
    boot = Bootstrap(len(plan), 2000, args.seed)
    rows: dict[str, Any] = {}
    print(f"{'ranker':24s} {'return':>7s} {'ρ<0.5':>7s} {'ρ≥0.5':>7s}   − tuned-diverse: all, ρ<0.5, ρ≥0.5 (95%)")
    for name, s in stats.items():
        rows[name] = figs = by_type_row(s.ret, ref, boot, cf)
        print(f"{name:24s} {figs['return']:7.3f} {figs['cf']:7.3f} {figs['content']:7.3f}   {by_type_cells(figs)}")
    summary = {"preset": args.preset, "reader": args.reader, "rule_a": point_a, "rule_b": point_b,
               "threshold": best, "tuning": {str(p): v for p, v in tuning.items()},
               "heldout": rows, "sessions": len(plan), "cf_share": float(cf.mean())}
    if runs_sessions is not None:
        on_runs = run_episodes(core, switch, runs_sessions)
        summary["runs"] = {"switch_return": float(on_runs.ret.mean()),
                           **ppo_against(on_runs.ret, runs_sessions, args.runs, on_runs.rho < RHO_EDGE,
                                         seed=args.seed)}
        print(f"\nPPO − {switch.name} on the runs' {len(runs_sessions)} held-out sessions (switch "
              f"{on_runs.ret.mean():.3f}): all, ρ<0.5, ρ≥0.5 (95%)")
        print_ppo_against(summary["runs"], width=24)
        if args.override:
            summary["override"] = override_summary(args, rule_b, train_core, core, runs_sessions,
                                                   on_runs.rho < RHO_EDGE, tune_plan, n_train, tune_seed)
    print(json.dumps(summary))
    return summary


def override_summary(args: argparse.Namespace, rule_b: Ranker, train_core: BatchedCore, core: BatchedCore,
                     plan: EpisodePlan, cf: np.ndarray, tune_plan: EpisodePlan, n_train: int,
                     tune_seed: int) -> dict[str, Any]:
    """``--override`` over the runs: per run the threshold, the share of requests B answered and hybrid − PPO by
    hidden type; over seeds and sessions with two or more runs. Prints a table."""
    groups = {"all": np.ones_like(cf), "cf": cf, "content": ~cf}
    boot = Bootstrap(len(plan), 2000, args.seed)
    ppo = runs_ppo(args.runs, plan)  # (S, E)
    fit_plan = episode_plan(args.fit_episodes, [tune_seed + FIT_SEED_OFFSET], n_train)
    per_run: dict[str, Any] = {}
    diffs = []
    print("\nPPO with the override − PPO on the runs' held-out sessions: all, ρ<0.5, ρ≥0.5 (95%)")
    for run, stored in zip(args.runs, ppo, strict=True):
        out = override_run(run, rule_b, train_core, core, fit_plan, tune_plan, plan, stored, args.reader, args.seed)
        diffs.append(out["ret"] - stored)
        figs = {g: _diff(out["ret"], stored, boot, m) for g, m in groups.items()}
        per_run[str(run)] = {"threshold": out["threshold"], "tuning": out["tuning"], "switched": out["switched"],
                             "return": float(out["ret"].mean()), **figs}
        print(f"{Path(run).name:24s} " + ", ".join(f"{figs[g]['mean']:+.3f} ({figs[g]['ci95'][0]:+.2f} to "
                                                   f"{figs[g]['ci95'][1]:+.2f})" for g in groups)
              + f"   threshold {out['threshold']}, B answered {out['switched']:.1%} of requests")
    summary: dict[str, Any] = {"per_run": per_run}
    if len(args.runs) > 1:
        d = np.stack(diffs)
        over = {g: seeds_and_sessions_interval(d[:, m]) for g, m in groups.items()}
        summary["over_seeds_and_sessions"] = over
        print(f"{'over seeds and sessions':24s} " + ", ".join(f"{over[g]['mean']:+.3f} ({over[g]['ci95'][0]:+.2f} to "
                                                              f"{over[g]['ci95'][1]:+.2f})" for g in groups))
    return summary


if __name__ == "__main__":
    main()
