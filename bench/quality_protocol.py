"""One command per quality protocol of issue #13: train the seeds, evaluate, print the table with intervals.

``python -m bench.quality_protocol --preset default --seeds 0,1,2,3,4 --minutes 15 --parallel 2`` trains one run
per seed with ``train.py --config configs/quality.yaml`` (at most ``--minutes`` of learning each, ``--parallel``
runs at a time, each on ``--threads`` cores: that many torch threads and env-kernel threads, default 1; ``--parallel
1 --threads 2`` gives each run the whole of a 2-core machine), each run evaluated by ``train.py``
on the same held-out sessions (common random numbers) against the baselines, then aggregates the runs:

* per ranker, the mean return over the seeds and its 95% t-interval across seeds (the baselines vary with the
  seed only through their tuning on the training users);
* PPO / tuned-diverse (the quality bar's reference) and PPO / tuned-alpha per seed, with t-intervals;
* the paired per-session difference PPO − tuned-diverse of each run (bootstrap interval over its sessions);
* the share of the tuned-alpha → non-myopic ceiling (``tuned-oracle-diverse``) gap closed, and of the gap to the
  myopic oracle;
* α by hidden user type, and every run's plausibility flags;
* the same against each of the runs' ``eval.extra_references`` (``configs/quality.yaml``: tuned-session-diverse) and
  against each run's strongest hand-written ranker on its held-out sessions (picked on those sessions, so the
  comparison is the conservative one for PPO);
* when every run wrote its per-session returns (``report/returns.npz``) on the same sessions: the difference and the
  ratio to tuned-diverse with an interval over **seeds and sessions** (:func:`seeds_and_sessions_interval`). The
  t-interval across seeds holds the set of held-out sessions fixed (every run meets the same ones), so it leaves out
  how far those sessions' mean is from the population's; this one adds that part (a two-way random-effects ANOVA);
  and the same difference per hidden user type (ρ below or above 0.5, :func:`by_user_type`): where PPO's margin
  comes from, beside ``bench.headroom``'s value of adaptation per type.

``--against PREFIX`` compares the runs with another protocol's runs of the same seeds (``PREFIX-s<seed>``, e.g. an
earlier recipe or an ablation) session by session: PPO − their PPO over seeds and sessions, per seed and per hidden
user type (:func:`paired_with`), so that a change is judged on the same seeds and sessions, not across protocols.
``--against-runs DIR [DIR ...]`` names those runs one by one, in the order of the runs.

``--adaptation`` (the ``adapt`` bar's figure) replays, on every run's held-out sessions, the rule that knows each
user's hidden type (``bench.headroom``'s per-type tuned-diverse, chosen on the run's training-side sessions) and
reports PPO's share of its margin over tuned-diverse, paired session by session (:func:`adaptation_runs`,
``bench.adaptation_share``): the value of adaptation is then measured on the sessions PPO met, not taken from
another evaluation. ``--adaptation-reference SEED`` reads every run against one reference (tuned-diverse and the
per-type rule searched with that seed on ``--adaptation-tune-episodes`` sessions per point, default 4,000) instead of
each run's own: the bar's reading since session 51 (DESIGN_NOTES), as the searches move more between seeds than the
runs do.

``--steps N`` replaces the time limit by a step budget (``train.total_timesteps``, no time limit). A run is
deterministic given its seed and step count, while the steps that 15 minutes buy vary by a third with the machine's
load, so a step budget makes the protocol repeat exactly on one machine and compares sessions at equal samples.

``--make-train`` runs what ``make train`` runs instead, once per seed: ``train.py`` with its embedded defaults (no
``--config``, no time limit: the default budget of 1M steps), so that the ``make train`` bar is measured over
training seeds and not on seed 0 alone.

``--runs DIR [DIR ...]`` aggregates finished runs named one by one instead of training ``--seeds`` (it needs
``--table``): seeds of one recipe run by two protocols, e.g. two machines' sessions, pooled into one table with its
intervals over all their seeds. The runs must be of one world and of distinct training seeds.

A run whose ``summary.json`` exists is not trained again (re-running the command finishes a protocol that was
interrupted); ``--preset`` takes a preset name or a calibrated preset folder; ``--set`` passes config overrides to
every run. Writes ``<name>.json`` and ``<name>.md`` into ``--out`` (``--table STEM``: ``<STEM>.json`` and ``.md``, so
that aggregating another set of seeds of the same runs keeps the first table); the last printed line is the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from agents.report import RETURNS_PREFIX, read_returns
from bench.ppo_seeds import t_interval
from configs.loader import atomic_write_text, resolve_config
from configs.schema import ConfigError

REFERENCE, CEILING, MYOPIC = "tuned-diverse", "tuned-oracle-diverse", "oracle"
#: The hidden ρ that splits the per-type rows (``bench.headroom``'s columns): below, the user follows the crowd.
RHO_EDGE = 0.5
#: The last iterate's row in a run that saved another policy (the average, or an iterate chosen on training users).
LAST = "ppo-last"


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds must be comma-separated integers, got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"--seeds must name distinct seeds, got {text!r}")
    return seeds


def train_commands(args: argparse.Namespace) -> list[tuple[Path, list[str]]]:
    """``(run directory, train.py command)`` per seed."""
    out = []
    for seed in args.seeds:
        name = f"{args.name}-s{seed}"
        cmd = [sys.executable, "train.py", "--preset", args.preset, "--out", str(args.out), "--name", name, "--quiet",
               "--set", f"train.seed={seed}", "--set", f"train.torch_threads={args.threads}"]
        if args.steps is not None:  # a step budget, no time limit: the same runs whatever the machine's load
            cmd += ["--config", args.config, "--set", f"train.total_timesteps={args.steps}",
                    "--set", "train.max_minutes=null"]
        elif not args.make_train:
            cmd += ["--config", args.config, "--set", f"train.max_minutes={args.minutes:g}"]
        for item in args.set:
            cmd += ["--set", item]
        out.append((Path(args.out) / name, cmd))
    return out


def finished_runs(runs: Sequence[Path], error: Callable[[str], Any]) -> list[Path]:
    """The runs of ``--runs``, checked: each finished (``summary.json`` and ``report/results.json``), all of one
    world (``env.preset``, ``env.preset_dir``), no two of one training seed (pooled seeds must be independent).
    ``error`` reports what is wrong."""
    from agents.ppo_ranker import load_run_config

    seeds: dict[int, Path] = {}
    worlds: dict[tuple[str, str | None], Path] = {}
    for run in runs:
        missing = [f for f in ("summary.json", "report/results.json") if not (run / f).is_file()]
        if missing:
            error(f"--runs: {run} is not a finished run (no {' and no '.join(missing)})")
        try:
            cfg = load_run_config(run)
        except (FileNotFoundError, ValueError) as exc:
            error(f"--runs: {run}: {exc}")
        worlds.setdefault((cfg.env.preset, cfg.env.preset_dir), run)
        if len(worlds) > 1:
            (w0, r0), (w1, r1) = list(worlds.items())[:2]
            error(f"--runs: {r0} and {r1} are of different worlds (preset {w0[0]!r}, folder {w0[1]} against "
                  f"{w1[0]!r}, {w1[1]}); pooled runs must meet the same users")
        seed = cfg.train.seed
        if seed in seeds:
            error(f"--runs: {seeds[seed]} and {run} are both of training seed {seed}"
                  f"{' (the same run twice)' if seeds[seed].resolve() == run.resolve() else ''}; pooled runs must be "
                  "of distinct seeds")
        seeds[seed] = run
    return list(runs)


def run_all(jobs: list[tuple[Path, list[str]]], parallel: int, threads: int = 1) -> dict[str, Any]:
    """Run the training commands, ``parallel`` at a time with ``threads`` env-kernel threads each (the commands set
    the torch threads); skip runs that have finished. Returns per-run status."""
    status: dict[str, Any] = {}
    pending = []
    for run, cmd in jobs:
        if (run / "summary.json").is_file():
            status[run.name] = "finished before"
        else:
            pending.append((run, cmd))
    env = {**os.environ, "RECFEED_ENV_THREADS": str(threads)}
    active: list[tuple[Path, subprocess.Popen, Any, float]] = []
    while pending or active:
        while pending and len(active) < parallel:
            run, cmd = pending.pop(0)
            run.parent.mkdir(parents=True, exist_ok=True)
            log = open(run.parent / f"{run.name}.log", "w", encoding="utf-8")  # noqa: SIM115 (closed below)
            print(f"[protocol] start {run.name}: {' '.join(cmd[1:])}", flush=True)
            active.append((run, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), log,
                           time.perf_counter()))
        time.sleep(2.0)
        for item in list(active):
            run, proc, log, t0 = item
            if proc.poll() is not None:
                log.close()
                active.remove(item)
                ok = proc.returncode == 0 and (run / "summary.json").is_file()
                status[run.name] = "trained" if ok else f"failed (exit {proc.returncode}; see {log.name})"
                print(f"[protocol] {run.name}: {status[run.name]} in {time.perf_counter() - t0:.0f}s", flush=True)
    return status


def seeds_and_sessions_interval(x: np.ndarray) -> dict[str, Any]:
    """Mean of a seeds × sessions table and its 95% interval over both (crossed random effects, no replication).

    Every run meets the same sessions, so ``x[s, e] = μ + a_s + b_e + c_se`` (seed effect, session effect, their
    interaction) and the mean's variance is ``σ_a²/S + σ_b²/E + σ_c²/(SE)``. The components are estimated by the
    two-way ANOVA's mean squares (``MS_seeds``, ``MS_sessions``, ``MS_residual``: ``σ_a² = (MS_seeds − MS_residual)/E``
    and so on), each truncated at 0, and the degrees of freedom by Welch–Satterthwaite over the mean squares that
    enter. With no seed effect left the interval is the one over the sessions of the seed-averaged values; with no
    session effect it is close to the t-interval across seeds.

    Args:
        x: float (S, E) one value per training seed and held-out session (S >= 2, E >= 2).

    Returns:
        ``{"mean", "ci95": [lo, hi], "se", "df", "var_seeds", "var_sessions", "var_interaction"}``: the last three
        are the mean's variance parts ``σ_a²/S``, ``σ_b²/E`` and ``σ_c²/(SE)``.
    """
    n_s, n_e = x.shape
    grand = float(x.mean())
    rows, cols = x.mean(axis=1), x.mean(axis=0)
    ms = {"seeds": n_e * float(((rows - grand) ** 2).sum()) / (n_s - 1),
          "sessions": n_s * float(((cols - grand) ** 2).sum()) / (n_e - 1),
          "residual": float(((x - rows[:, None] - cols[None, :] + grand) ** 2).sum()) / ((n_s - 1) * (n_e - 1))}
    dof = {"seeds": n_s - 1, "sessions": n_e - 1, "residual": (n_s - 1) * (n_e - 1)}
    # Var(mean)·S·E as a combination of mean squares: MS_seeds + MS_sessions − MS_residual, dropping a component
    # (and its share of −MS_residual) where its estimate would be negative
    coef = {"seeds": 0.0, "sessions": 0.0, "residual": 1.0}
    for part in ("seeds", "sessions"):
        if ms[part] > ms["residual"]:
            coef[part], coef["residual"] = 1.0, coef["residual"] - 1.0
    total = sum(coef[k] * ms[k] for k in ms)
    se = float(np.sqrt(max(total, 0.0) / (n_s * n_e)))
    denom = sum((coef[k] * ms[k]) ** 2 / dof[k] for k in ms if coef[k])
    df = float(total ** 2 / denom) if denom > 0 else float(n_s - 1)
    half = float(stats.t.ppf(0.975, max(df, 1.0))) * se
    return {"mean": grand, "ci95": [grand - half, grand + half], "se": se, "df": df,
            "var_seeds": max(ms["seeds"] - ms["residual"], 0.0) / (n_s * n_e),
            "var_sessions": max(ms["sessions"] - ms["residual"], 0.0) / (n_s * n_e),
            "var_interaction": ms["residual"] / (n_s * n_e)}


def pooled_vs_reference(runs: list[Path], reference: str | list[str] = REFERENCE) -> dict[str, Any] | None:
    """PPO − ``reference`` and PPO / ``reference`` with intervals over seeds and sessions, from the runs' per-session
    returns; ``{"skipped": why}`` when a run lacks them or the runs met different sessions, ``None`` for one run.
    The ratio's interval is the difference's on the linearised values ``(ppo − r·ref) / mean(ref)`` (delta method).
    ``reference`` is one ranker for every run, or one per run (each run's strongest hand-written ranker).
    """
    if len(runs) < 2:
        return None
    refs = [reference] * len(runs) if isinstance(reference, str) else list(reference)
    paths = [r / "report" / "returns.npz" for r in runs]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        return {"skipped": f"no per-session returns (runs from before they were saved): {missing}"}
    try:
        loaded = [read_returns(p) for p in paths]
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        return {"skipped": f"unreadable per-session returns: {exc}"}
    keys = loaded[0][0]
    if any(k.shape != keys.shape or not np.array_equal(k, keys) for k, _ in loaded[1:]):
        return {"skipped": "the runs met different held-out sessions (eval settings differ)"}
    if any("ppo" not in rets or name not in rets for (_, rets), name in zip(loaded, refs, strict=True)):
        return {"skipped": f"a run lacks the returns of ppo or {reference}"}
    ppo = np.stack([rets["ppo"] for _, rets in loaded])  # (S, E)
    ref = np.stack([rets[name] for (_, rets), name in zip(loaded, refs, strict=True)])  # (S, E)
    ratio = float(ppo.mean() / ref.mean())
    lin = seeds_and_sessions_interval((ppo - ratio * ref) / ref.mean())
    half = (lin["ci95"][1] - lin["ci95"][0]) / 2
    return {"reference": reference, "sessions": int(ppo.shape[1]), "diff": seeds_and_sessions_interval(ppo - ref),
            "ratio": {"mean": ratio, "ci95": [ratio - half, ratio + half], "se": lin["se"], "df": lin["df"]}}


def heldout_rho(run: Path) -> np.ndarray:
    """The hidden ρ (U,) of the held-out users of ``run``'s world (the run's config; the world from the cache)."""
    from agents.ppo_ranker import load_run_config
    from envs.presets import load_world

    cfg = load_run_config(run)
    return load_world(cfg.env, cfg.encoder, progress=False).populations["heldout"].rho


def returns_table(runs: Sequence[Path],
                  names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """The runs' per-session returns of ``names``, stacked: ``(session keys uint64 (E,), users int64 (E,),
    name → float64 (S, E))``.

    Raises:
        ValueError: A run without per-session returns or without one of ``names``, an unreadable file, or runs that
            met different held-out sessions (the message says which).
    """
    loaded = []
    for run in runs:
        path = run / "report" / "returns.npz"
        if not path.is_file():
            raise ValueError(f"{run.name} has no per-session returns")
        try:
            with np.load(path, allow_pickle=False) as data:
                loaded.append({k: data[k] for k in ("keys", "users", *(RETURNS_PREFIX + n for n in names))})
        except KeyError as exc:
            raise ValueError(f"{run.name} has no returns of {str(exc.args[0]).removeprefix(RETURNS_PREFIX)}") from None
        except (OSError, ValueError, zipfile.BadZipFile) as exc:
            raise ValueError(f"unreadable per-session returns: {exc}") from None
    first = loaded[0]
    if any(not np.array_equal(d["keys"], first["keys"]) for d in loaded[1:]):
        raise ValueError("the runs met different held-out sessions (eval settings differ)")
    return first["keys"], first["users"], {n: np.stack([d[RETURNS_PREFIX + n] for d in loaded]) for n in names}


def _type_masks(rho: np.ndarray) -> dict[str, np.ndarray]:
    """The sessions of each hidden user type, by their user's ρ (E,): label → bool (E,)."""
    return {f"rho<{RHO_EDGE} (CF-leaning)": rho < RHO_EDGE, f"rho>={RHO_EDGE} (content-leaning)": rho >= RHO_EDGE}


def by_user_type(runs: list[Path], rho_of: Callable[[Path], np.ndarray] = heldout_rho) -> dict[str, Any] | None:
    """PPO − tuned-diverse per hidden user type, over seeds and sessions: where PPO's margin comes from.

    The sessions are split by their user's hidden ρ (``< RHO_EDGE``: the user follows the crowd, CF-leaning; else
    content-leaning), the split ``bench.headroom`` prints its per-type columns and value of adaptation by. Research
    only (ρ is hidden state), like the α by user type of the final table.

    Args:
        runs: The finished run directories (>= 2, all with ``report/returns.npz`` on the same sessions).
        rho_of: Run directory → ρ (U,) of its held-out users.

    Returns:
        ``{"edge", "groups": {label: {"sessions", "ppo", "tuned-diverse", "diff": seeds-and-sessions interval}}}``,
        ``{"skipped": why}``, or ``None`` for one run.
    """
    if len(runs) < 2:
        return None
    try:
        _, users, table = returns_table(runs, ("ppo", REFERENCE))
        rho = rho_of(runs[0])[users]
    except (OSError, ValueError, KeyError, IndexError) as exc:  # returns, or a config / world that does not load
        return {"skipped": str(exc)}
    ppo, ref = table["ppo"], table[REFERENCE]  # (S, E) each
    groups: dict[str, Any] = {}
    for label, mask in _type_masks(rho).items():
        if mask.sum() >= 2:
            groups[label] = {"sessions": int(mask.sum()), "ppo": float(ppo[:, mask].mean()),
                             REFERENCE: float(ref[:, mask].mean()),
                             "diff": seeds_and_sessions_interval(ppo[:, mask] - ref[:, mask])}
    return {"edge": RHO_EDGE, "groups": groups}


def paired_with(runs: list[Path], others: list[Path],
                rho_of: Callable[[Path], np.ndarray] = heldout_rho) -> dict[str, Any]:
    """PPO − the PPO of other runs of the same seeds (an earlier recipe, an ablation), paired on the held-out sessions.

    Both sets must have met the same sessions. Over seeds and sessions for all users (with two or more seeds), per
    seed, and per hidden user type as in :func:`by_user_type`: whether a change helps, and whom.

    Args:
        runs: The finished run directories, one per seed.
        others: The runs to compare with, the same seeds in the same order.
        rho_of: Run directory → ρ (U,) of its held-out users.

    Returns:
        ``{"against": [names], "per_seed": [S], "diff": interval or None, "groups": {label: {"sessions", "diff",
        "per_seed"}}}``, or ``{"skipped": why}``.
    """
    try:
        keys, users, new = returns_table(runs, ("ppo",))
        keys_old, _, old = returns_table(others, ("ppo",))
        if not np.array_equal(keys, keys_old) or new["ppo"].shape != old["ppo"].shape:
            raise ValueError("the two sets of runs met different held-out sessions")
        rho = rho_of(runs[0])[users]
    except (OSError, ValueError, KeyError, IndexError) as exc:
        return {"skipped": str(exc)}
    diff = new["ppo"] - old["ppo"]  # (S, E)
    out: dict[str, Any] = {"against": [o.name for o in others], "per_seed": diff.mean(axis=1).tolist(),
                           "diff": seeds_and_sessions_interval(diff) if len(runs) > 1 else None, "groups": {}}
    for label, mask in _type_masks(rho).items():
        if mask.sum() >= 2:
            out["groups"][label] = {"sessions": int(mask.sum()), "per_seed": diff[:, mask].mean(axis=1).tolist(),
                                    "diff": seeds_and_sessions_interval(diff[:, mask]) if len(runs) > 1 else None}
    return out


def aggregate(runs: list[Path]) -> dict[str, Any]:
    """The protocol's figures from finished run directories (see the module docstring)."""
    results = [json.loads((r / "report" / "results.json").read_text(encoding="utf-8")) for r in runs]
    summaries = [json.loads((r / "summary.json").read_text(encoding="utf-8")) for r in runs]
    names = [n for n in results[0]["rankers"] if all(n in r["rankers"] for r in results)]  # rows every run has
    per_seed = {n: np.array([r["rankers"][n]["return"]["mean"] for r in results]) for n in names}
    table = {n: {"mean": float(v.mean()), "ci95": t_interval(v), "per_seed": v.tolist()} for n, v in per_seed.items()}
    ppo = per_seed["ppo"]
    out: dict[str, Any] = {"runs": [str(r) for r in runs], "seeds": len(runs), "return": table}

    def ratio(ref: str) -> dict[str, Any]:
        x = ppo / per_seed[ref]
        return {"mean": float(x.mean()), "ci95": t_interval(x), "per_seed": x.tolist()}

    reference = against(runs, ppo, per_seed[REFERENCE], REFERENCE)
    out["ratio_vs_tuned_diverse"] = reference["ratio"]
    out["ratio_vs_tuned_alpha"] = ratio("tuned-alpha")
    out["diff_vs_tuned_diverse"] = reference["diff"]
    out["paired_vs_tuned_diverse_per_run"] = [r.get("paired_vs_tuned_diverse") for r in results]
    out["above_tuned_diverse_intervals_apart"] = reference["above_intervals_apart"]
    for key, top in (("gap_closed_to_ceiling", CEILING), ("gap_closed_to_oracle", MYOPIC)):
        if top in per_seed:
            gap = (ppo - per_seed["tuned-alpha"]) / (per_seed[top] - per_seed["tuned-alpha"])
            out[key] = {"mean": float(gap.mean()), "ci95": t_interval(gap), "per_seed": gap.tolist()}
    out["alpha_by_user_type"] = [s.get("alpha_by_user_type") for s in summaries]
    out["alpha_by_user_type_effective"] = [s.get("alpha_by_user_type_effective") for s in summaries]
    out["steps"] = [s["total_timesteps"] for s in summaries]
    out["learn_minutes"] = [round(s["learn_seconds"] / 60, 1) for s in summaries]
    flags = []
    for r in runs:
        p = r / "report" / "plausibility.json"
        if p.is_file():
            flags.append(json.loads(p.read_text(encoding="utf-8")).get("policy_flags", {}).get("ppo", []))
    out["plausibility_flags"] = flags
    pooled = reference.get("seeds_and_sessions")
    if pooled is not None:
        out["vs_tuned_diverse_seeds_and_sessions"] = pooled
        if "skipped" not in pooled:
            out["above_tuned_diverse_seeds_and_sessions"] = bool(pooled["diff"]["ci95"][0] > 0)
    # the runs' eval.extra_references (rows every run has), and per run the strongest hand-written ranker on its
    # held-out sessions (picked on those very sessions: the conservative comparison for PPO)
    extras = [n for n in results[0].get("extra_references", []) if all(n in r["rankers"] for r in results)]
    versus = {ref: against(runs, ppo, per_seed[ref], ref) for ref in extras}
    best = [(r.get("best_hand_written_heldout") or {}).get("name") for r in results]
    if all(best):
        strongest = np.array([r["rankers"][b]["return"]["mean"] for r, b in zip(results, best, strict=True)])
        versus["strongest hand-written per run"] = {"names": best, **against(runs, ppo, strongest, best)}
    if versus:
        out["vs_references"] = versus
    types = by_user_type(runs)
    if types is not None:
        out["by_user_type"] = types
    last = [LAST if LAST in r["rankers"] else "ppo" for r in results]  # "ppo": the run kept its last iterate
    if LAST in last:  # the runs chose their saved policy (train.select_episodes) or averaged it: what that did
        last_ret = np.array([r["rankers"][n]["return"]["mean"] for r, n in zip(results, last, strict=True)])
        out["vs_last_iterate"] = {"names": last, **against(runs, ppo, last_ret, last)}
        out["selected_iterate"] = [s.get("selected_iterate") for s in summaries]
    return out


def against(runs: list[Path], ppo: np.ndarray, ref: np.ndarray, name: str | list[str]) -> dict[str, Any]:
    """PPO against one reference: ratio and difference per seed with t-intervals across seeds, the verdict, and the
    interval over seeds and sessions (:func:`pooled_vs_reference`, when the runs saved their per-session returns).

    Args:
        runs: The finished run directories.
        ppo: float (S,) PPO's mean return per run.
        ref: float (S,) the reference's mean return per run.
        name: The reference's row, or one per run.
    """
    ratio, diff = ppo / ref, ppo - ref
    out: dict[str, Any] = {
        "ratio": {"mean": float(ratio.mean()), "ci95": t_interval(ratio), "per_seed": ratio.tolist()},
        "diff": {"mean": float(diff.mean()), "ci95": t_interval(diff), "per_seed": diff.tolist()},
        # one run has no interval across seeds (t_interval returns the point): no verdict, not a zero-width one
        "above_intervals_apart": bool(t_interval(diff)[0] > 0) if len(runs) > 1 else None}
    pooled = pooled_vs_reference(runs, name)
    if pooled is not None:
        out["seeds_and_sessions"] = pooled
    return out


def probe_runs(runs: list[Path]) -> dict[str, Any]:
    """The feedback probe's gaps per run (played now unless ``report/feedback_probe.json`` exists), with t-intervals
    across the runs: ``{"effective_alpha_gap", "slate_lean_gap": {"mean", "ci95", "per_seed"}}``."""
    from bench.feedback_probe import run_probe, write_probe

    gaps: dict[str, list[float]] = {"effective_alpha_gap": [], "slate_lean_gap": []}
    for run in runs:
        path = run / "report" / "feedback_probe.json"
        if not path.is_file():
            print(f"[protocol] feedback probe on {run.name}", flush=True)
            write_probe(run_probe(run), run / "report")
        gap = json.loads(path.read_text(encoding="utf-8"))["alpha_gap"]
        gaps["effective_alpha_gap"].append(float(gap["effective_alpha"]["cf_minus_llm"]))
        gaps["slate_lean_gap"].append(float(gap["slate_lean"]["cf_minus_llm"]))
    return {k: {"mean": float(np.mean(v)), "ci95": t_interval(np.array(v)), "per_seed": v} for k, v in gaps.items()}


def adaptation_share_file(common: tuple[int, int] | None = None) -> str:
    """The file in a run's ``report/`` that keeps its share of the value of adaptation: against its own references
    (``common`` ``None``) or against the one pair searched with ``common = (seed, episodes)``."""
    return "adaptation_share.json" if common is None else f"adaptation_share-common-s{common[0]}-e{common[1]}.json"


def adaptation_runs(runs: list[Path], common: tuple[int, int] | None = None) -> dict[str, Any]:
    """PPO's share of the value of adaptation per run, the per-type rule replayed on the run's own held-out sessions
    (:func:`bench.adaptation_share.analyse`; computed now unless the run's report holds it), and over the runs:
    ``{"reference", "share", "policy_diff", "value": {"mean", "ci95", "per_seed", "per_seed_ci95"}, "pooled_share",
    "by_user_type"}``, or ``{"skipped": why}`` when a run has no per-session returns to replay against.

    Each run is read against its own references (tuned-diverse and the per-type rule searched with its
    ``train.seed`` on its ``eval.tune_episodes``; ``report/adaptation_share.json``), or, with ``common = (seed,
    episodes)``, every run against one pair searched with that seed on that many sessions per point
    (``report/adaptation_share-common-s<seed>-e<episodes>.json``): the ``adapt`` bar's reading since session 51, in
    which the runs share one value of adaptation on their common sessions and differ only by their own returns.
    ``pooled_share`` is the mean margin over the mean value (every run meets the same sessions); the intervals are
    t-intervals across the runs, each run's own (bootstrap over sessions) is in ``per_run``."""
    from agents.ppo_ranker import load_run_config
    from bench.adaptation_share import analyse

    name = adaptation_share_file(common)
    switch_name = name.removesuffix(".json") + ".switch-returns.npz"  # the type switch's per-session returns
    per_run = []
    for run in runs:
        path = run / "report" / name
        done = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        fresh = "switch" in done and ("skipped" in done["switch"] or (run / "report" / switch_name).is_file())
        if not fresh:  # not replayed yet, or before the type switch was
            print(f"[protocol] the per-type rule and the type switch on {run.name}'s sessions (value of adaptation)",
                  flush=True)
            cfg = load_run_config(run)
            seed, episodes = (cfg.train.seed, cfg.eval.tune_episodes) if common is None else common
            try:
                res = analyse(run / "report", "ppo", run=run, tune_seed=seed, tune_episodes=episodes,
                              common=common is not None, switch_returns=run / "report" / switch_name)
            except (FileNotFoundError, ValueError) as exc:  # a run from before per-session returns, or another's
                return {"skipped": f"{run.name}: {exc}"}
            atomic_write_text(path, json.dumps(res, indent=1, default=float))
        per_run.append(json.loads(path.read_text(encoding="utf-8")))

    def across(rows: list[dict[str, Any]], key: str) -> dict[str, Any]:
        v = np.array([r[key]["mean"] for r in rows])
        return {"mean": float(v.mean()), "ci95": t_interval(v), "per_seed": v.tolist(),
                "per_seed_ci95": [list(r[key]["ci95"]) for r in rows]}  # each run's bootstrap over its sessions

    alls = [r["all"] for r in per_run]
    out: dict[str, Any] = {"reference": ("each run's own (its train.seed, its eval.tune_episodes)" if common is None
                                         else f"one for every run (tune seed {common[0]}, {common[1]} sessions per "
                                              "point)")}
    out.update({key: across(alls, key) for key in ("share", "policy_diff", "value")})
    out["pooled_share"] = out["policy_diff"]["mean"] / out["value"]["mean"]
    out["per_run"] = alls
    out["by_user_type"] = {label: {key: across([r["by_user_type"][label] for r in per_run], key)
                                   for key in ("share", "policy_diff", "value")}
                           for label in per_run[0]["by_user_type"]}
    switches = [r["switch"] for r in per_run]
    skipped = [sw["skipped"] for sw in switches if "skipped" in sw]
    if skipped:
        out["switch"] = {"skipped": skipped[0]}
    else:  # the type switch on the same sessions: its share, and PPO − it (t-intervals across the runs)
        def across_means(rows: list[dict[str, Any]]) -> dict[str, Any]:
            v = np.array([r["mean"] for r in rows])
            return {"mean": float(v.mean()), "ci95": t_interval(v), "per_seed": v.tolist(),
                    "per_seed_ci95": [list(r["ci95"]) for r in rows]}

        labels = ["all", *per_run[0]["by_user_type"]]
        out["switch"] = {
            "threshold": [sw["threshold"] for sw in switches],
            "return": [sw["return"] for sw in switches],
            "share": {label: across_means([(sw["all"] if label == "all" else sw["by_user_type"][label])["share"]
                                           for sw in switches]) for label in labels},
            "policy_minus_switch": {label: across_means([sw["policy_minus_switch"][label] for sw in switches])
                                    for label in labels}}
        if len(runs) > 1:
            out["switch"]["policy_minus_switch_seeds_and_sessions"] = switch_over_seeds_and_sessions(runs, switch_name)
    return out


def switch_over_seeds_and_sessions(runs: list[Path], switch_name: str) -> dict[str, Any]:
    """PPO − the type switch over seeds **and** sessions (:func:`seeds_and_sessions_interval`), for all users and by
    hidden type, from the runs' per-session returns and the switch's (``report/<switch_name>``, written by
    :func:`adaptation_runs`); ``{"skipped": why}`` where they are missing or of other sessions."""
    try:
        keys, users, table = returns_table(runs, ("ppo",))
        switch = []
        for run in runs:
            sw_keys, rets = read_returns(run / "report" / switch_name)
            if not np.array_equal(sw_keys, keys):
                return {"skipped": f"{run.name}: the switch's returns are of other sessions than PPO's"}
            switch.append(rets["tuned-switch"])
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        return {"skipped": f"no per-session returns of PPO and the switch: {exc}"}
    diff = table["ppo"] - np.stack(switch)  # (S, E)
    masks = {"all": np.ones(diff.shape[1], dtype=bool), **_type_masks(heldout_rho(runs[0])[users])}
    return {label: seeds_and_sessions_interval(diff[:, m]) for label, m in masks.items()}


def markdown(agg: dict[str, Any], title: str) -> str:
    """The protocol's table (Markdown)."""
    def ci(d: dict[str, Any], fmt: str = ".2f") -> str:
        sep = " to " if fmt.startswith("+") else "–"  # signed bounds: "-0.53 to +0.56", not "-0.53–+0.56"
        return f"{d['mean']:{fmt}} ({d['ci95'][0]:{fmt}}{sep}{d['ci95'][1]:{fmt}})"

    lines = [f"### {title}", "", f"{agg['seeds']} training seeds; steps per run {agg['steps']}; learning minutes "
             f"{agg['learn_minutes']}. Return per held-out session: mean over seeds (95% t-interval across seeds).",
             "", "| ranker | return | per seed |", "|---|---:|---|"]
    for name, row in agg["return"].items():
        lines.append(f"| {name} | {ci(row)} | {', '.join(f'{v:.2f}' for v in row['per_seed'])} |")
    lines += ["", "| figure | value (95% t-interval across seeds) | per seed |", "|---|---:|---|"]
    for key in ("ratio_vs_tuned_diverse", "diff_vs_tuned_diverse", "ratio_vs_tuned_alpha", "gap_closed_to_ceiling",
                "gap_closed_to_oracle"):
        if key in agg:
            d = agg[key]
            lines.append(f"| {key} | {ci(d, '.3f')} | {', '.join(f'{v:.3f}' for v in d['per_seed'])} |")
    paired = [p for p in agg["paired_vs_tuned_diverse_per_run"] if p]
    if paired:
        lines.append("| paired PPO − tuned-diverse per run (bootstrap 95% over sessions) | | "
                     + ", ".join(f"{p['diff']:+.2f} ({p['ci95'][0]:+.2f} to {p['ci95'][1]:+.2f})" for p in paired)
                     + " |")
    pooled = agg.get("vs_tuned_diverse_seeds_and_sessions")
    if pooled and "skipped" not in pooled:
        d, r = pooled["diff"], pooled["ratio"]
        lines.append(f"| PPO − tuned-diverse, 95% interval over seeds **and** the {pooled['sessions']} sessions | "
                     f"{d['mean']:+.3f} ({d['ci95'][0]:+.3f} to {d['ci95'][1]:+.3f}) | SE {d['se']:.3f}; variance "
                     f"parts: seeds {d['var_seeds']:.3g}, sessions {d['var_sessions']:.3g}, interaction "
                     f"{d['var_interaction']:.3g} |")
        lines.append(f"| PPO / tuned-diverse, the same | "
                     f"{r['mean']:.3f} ({r['ci95'][0]:.3f} to {r['ci95'][1]:.3f}) | |")
    for ref, v in agg.get("vs_references", {}).items():
        label = ref if "names" not in v else f"{ref} ({', '.join(v['names'])})"
        lines.append(f"| PPO / {label} | {ci(v['ratio'], '.3f')} | "
                     f"{', '.join(f'{x:.3f}' for x in v['ratio']['per_seed'])} |")
        lines.append(f"| PPO − {label} | {ci(v['diff'], '+.3f')} | "
                     f"{', '.join(f'{x:+.3f}' for x in v['diff']['per_seed'])} |")
        p = v.get("seeds_and_sessions")
        if p and "skipped" not in p:
            lines.append(f"| PPO − {ref}, 95% interval over seeds **and** sessions | {p['diff']['mean']:+.3f} "
                         f"({p['diff']['ci95'][0]:+.3f} to {p['diff']['ci95'][1]:+.3f}) | SE {p['diff']['se']:.3f} |")
    if "vs_last_iterate" in agg:
        v = agg["vs_last_iterate"]
        chosen = [f"{c['best_step']:,}" if c else "-" for c in agg.get("selected_iterate") or []]
        lines.append(f"| PPO − its last iterate (the saved policy's choice; step chosen per run: "
                     f"{', '.join(chosen) or 'averaged'}) | {ci(v['diff'], '+.3f')} | "
                     f"{', '.join(f'{x:+.3f}' for x in v['diff']['per_seed'])} |")
        p = v.get("seeds_and_sessions")
        if p and "skipped" not in p:
            lines.append(f"| PPO − its last iterate, 95% interval over seeds **and** sessions | "
                         f"{p['diff']['mean']:+.3f} ({p['diff']['ci95'][0]:+.3f} to {p['diff']['ci95'][1]:+.3f}) | |")
    for label, g in (agg.get("by_user_type") or {}).get("groups", {}).items():
        d = g["diff"]
        lines.append(f"| PPO − tuned-diverse, users with {label} ({g['sessions']} sessions; hidden), over seeds and "
                     f"sessions | {d['mean']:+.3f} ({d['ci95'][0]:+.3f} to {d['ci95'][1]:+.3f}) | PPO {g['ppo']:.2f}, "
                     f"tuned-diverse {g[REFERENCE]:.2f} |")
    pw = agg.get("paired_with")
    if pw:
        other = pw.get("prefix") or ", ".join(pw.get("against", [])) or "the other runs"
        if "skipped" in pw:
            lines.append(f"| PPO − the PPO of {other}, paired | not compared: {pw['skipped']} | |")
        else:
            rows = [("all users", pw["diff"], pw["per_seed"]),
                    *((f"users with {k} ({v['sessions']} sessions; hidden)", v["diff"], v["per_seed"])
                      for k, v in pw["groups"].items())]
            for label, d, per_seed in rows:
                cell = "(one seed)" if d is None else ci(d, "+.3f")
                lines.append(f"| PPO − the PPO of {other}, paired, {label}, over seeds and sessions | {cell} | "
                             f"{', '.join(f'{x:+.3f}' for x in per_seed)} |")
    if "probe" in agg:
        for key, label in (("effective_alpha_gap", "probe: effective α gap cf − llm at request 5"),
                           ("slate_lean_gap", "probe: slate-lean gap cf − llm at request 5")):
            d = agg["probe"][key]
            lines.append(f"| {label} | {ci(d, '+.3f')} | {', '.join(f'{v:+.3f}' for v in d['per_seed'])} |")
    if "skipped" in agg.get("adaptation", {}):
        lines.append(f"| value of adaptation on these sessions | not measured: {agg['adaptation']['skipped']} | |")
    elif "adaptation" in agg:
        ad = agg["adaptation"]
        lines.append(f"| references of the value of adaptation (tuned-diverse, the per-type rule) | "
                     f"{ad['reference']} | |")
        rows = [("all users", ad), *((f"users with {k} (hidden)", v) for k, v in ad["by_user_type"].items())]
        for label, v in rows:
            lines.append(f"| value of adaptation on these sessions (per-type rule − tuned-diverse), {label} | "
                         f"{ci(v['value'], '+.3f')} | {', '.join(f'{x:+.3f}' for x in v['value']['per_seed'])} |")
            # the share's numerator, shown where there is no share too: a run's loss on users for whom adapting is
            # worth nothing is the other half of the trade between user groups (BENCHMARKS "Session 56")
            lines.append(f"| PPO − the value's tuned-diverse, {label} | {ci(v['policy_diff'], '+.3f')} | "
                         f"{', '.join(f'{x:+.3f}' for x in v['policy_diff']['per_seed'])} |")
            # a share of nothing is no figure: every run's value must be above 0 over its sessions (a common
            # reference gives every run one value, so the t-interval across runs says nothing of it)
            if all(lo > 0 for lo, _ in v["value"]["per_seed_ci95"]):
                lines.append(f"| PPO's share of it, {label} | {ci(v['share'], '.2f')} | "
                             f"{', '.join(f'{x:.2f}' for x in v['share']['per_seed'])} |")
        lines.append(f"| PPO's share, pooled (mean margin / mean value) | {ad['pooled_share']:.2f} | per run, over its "
                     "sessions: " + ", ".join(f"{r['share']['mean']:.2f} ({r['share']['ci95'][0]:.2f}–"
                                              f"{r['share']['ci95'][1]:.2f})" for r in ad["per_run"]) + " |")
        sw = ad.get("switch", {})
        if "skipped" in sw:
            lines.append(f"| the type switch (tuned-switch) | not played: {sw['skipped']} | |")
        elif sw:
            share_all = sw["share"]["all"]
            own = [f"{x:.2f} ({lo:.2f}–{hi:.2f})" for x, (lo, hi) in zip(share_all["per_seed"],
                                                                         share_all["per_seed_ci95"], strict=True)]
            # one switch for every run (a common reference): one figure, its interval over the sessions
            value = (f"{own[0]} over the sessions" if len(set(own)) == 1 else ci(share_all, ".2f"))
            lines.append(f"| the type switch (tuned-switch, the same references; thresholds "
                         f"{', '.join(f'{t:g}' for t in sw['threshold'])}): its share of the value, all users | "
                         f"{value} | per run, over its sessions: {', '.join(own)} |")
            pooled_sw = sw.get("policy_minus_switch_seeds_and_sessions", {})
            if "skipped" in pooled_sw:
                lines.append(f"| PPO − the type switch over seeds and sessions | not measured: {pooled_sw['skipped']} "
                             "| |")
            for label, v in sw["policy_minus_switch"].items():
                users = label if label == "all" else "users with " + label
                lines.append(f"| PPO − the type switch, {users} | {ci(v, '+.3f')} | "
                             f"{', '.join(f'{x:+.3f}' for x in v['per_seed'])} |")
                if label in pooled_sw:
                    lines.append(f"| PPO − the type switch, {users}, 95% interval over seeds **and** sessions | "
                                 f"{ci(pooled_sw[label], '+.3f')} | |")
    eff = [a for a in agg.get("alpha_by_user_type_effective", []) if a]
    if eff:
        lines.append("\nEffective α (the LLM signal's share, both signals standardised) by hidden user type per run: "
                     + "; ".join(", ".join(f"{k.split(' ')[0]} {v:.2f}" for k, v in a.items() if v is not None)
                                 for a in eff) + ".")
    if pooled and "skipped" in pooled:
        lines.append(f"\nNo interval over seeds and sessions: {pooled['skipped']}.")
    d = agg["diff_vs_tuned_diverse"]
    verdict = ("across seeds: none (one run)" if agg["above_tuned_diverse_intervals_apart"] is None else
               f"across seeds **{agg['above_tuned_diverse_intervals_apart']}** ({d['ci95'][0]:+.2f} to "
               f"{d['ci95'][1]:+.2f})")
    if "above_tuned_diverse_seeds_and_sessions" in agg:
        dd = agg["vs_tuned_diverse_seeds_and_sessions"]["diff"]
        verdict += (f"; over seeds and sessions **{agg['above_tuned_diverse_seeds_and_sessions']}** "
                    f"({dd['ci95'][0]:+.2f} to {dd['ci95'][1]:+.2f})")
    for ref, v in agg.get("vs_references", {}).items():
        p = v.get("seeds_and_sessions")
        both = (f"; over seeds and sessions **{bool(p['diff']['ci95'][0] > 0)}**" if p and "skipped" not in p
                else "")
        verdict += f". Above {ref}: across seeds **{v['above_intervals_apart']}**{both}"
    lines.append(f"\nPPO above tuned-diverse with the interval of the difference above 0: {verdict}. "
                 f"α by hidden user type per run: "
                 + "; ".join(", ".join(f"{v:.2f}" for v in a.values() if v is not None)
                             for a in agg["alpha_by_user_type"] if a)
                 + f". Plausibility flags per run: {agg['plausibility_flags']}.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Train, aggregate, print and write the protocol's table."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="default", help="preset name or calibrated preset folder")
    ap.add_argument("--seeds", type=_seeds, default=_seeds("0,1,2,3,4"), help="training seeds, e.g. 0,1,2")
    ap.add_argument("--minutes", type=float, default=None,
                    help="learning minutes per run (train.max_minutes; default 15)")
    ap.add_argument("--steps", type=int, default=None,
                    help="a step budget per run instead of the time limit (train.total_timesteps, no time limit): a "
                         "run is deterministic given its seed and steps, so on one machine the protocol repeats "
                         "exactly, whatever the load")
    ap.add_argument("--parallel", type=int, default=2, help="runs at a time")
    ap.add_argument("--threads", type=int, default=1,
                    help="cores per run: its torch threads and env-kernel threads (train.torch_threads, "
                         "RECFEED_ENV_THREADS); keep --parallel x --threads within the machine's cores")
    ap.add_argument("--config", default=None, help="train.py config of every run (default configs/quality.yaml)")
    ap.add_argument("--make-train", action="store_true",
                    help="run make train's job per seed: train.py's embedded defaults, no --config, no time limit")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every run")
    ap.add_argument("--out", type=Path, default=Path("runs/protocol"), help="parent folder of the runs")
    ap.add_argument("--name", default=None,
                    help="run name prefix (default: protocol-<preset>; make-train-<preset> with --make-train)")
    ap.add_argument("--table", default=None, metavar="STEM",
                    help="file stem of the table's .json and .md in --out (default: --name); another stem keeps an "
                         "earlier table of the same runs, e.g. when aggregating another set of seeds")
    ap.add_argument("--aggregate-only", action="store_true", help="do not train; aggregate the finished runs")
    ap.add_argument("--runs", nargs="+", type=Path, default=None, metavar="DIR",
                    help="aggregate these finished runs instead of --seeds' (no training; needs --table), e.g. the "
                         "seeds of one recipe from two protocols pooled")
    ap.add_argument("--probe", action="store_true",
                    help="also play the feedback probe (bench.feedback_probe) on every run and aggregate its α gap")
    ap.add_argument("--adaptation", action="store_true",
                    help="also replay the per-type rule (bench.headroom's value of adaptation, reads the hidden ρ) on "
                         "every run's held-out sessions and report PPO's share of it, paired (bench.adaptation_share)")
    ap.add_argument("--adaptation-reference", type=int, default=None, metavar="SEED",
                    help="with --adaptation: read every run's share against one reference, tuned-diverse and the "
                         "per-type rule searched with this tuning seed (the adapt bar's reading: 11), instead of each "
                         "run's own searched with its train.seed")
    ap.add_argument("--adaptation-tune-episodes", type=int, default=4000, metavar="N",
                    help="training sessions per grid point of --adaptation-reference's searches (default 4000)")
    ap.add_argument("--against", default=None, metavar="PREFIX",
                    help="another protocol's runs, PREFIX-s<seed> (e.g. runs/protocol/protocol-adapt): PPO − their "
                         "PPO paired on the same seeds and held-out sessions, for all users and by hidden type")
    ap.add_argument("--against-runs", nargs="+", type=Path, default=None, metavar="DIR",
                    help="as --against, the other runs named one by one, in the order of the runs (e.g. with --runs, "
                         "when the seeds being compared come from several protocols)")
    args = ap.parse_args(argv)
    if args.against is not None and args.against_runs is not None:
        ap.error("--against PREFIX and --against-runs DIR... name the same thing: give one of them")
    if args.adaptation_reference is not None and (not args.adaptation or args.adaptation_reference < 0
                                                  or args.adaptation_tune_episodes < 1):
        ap.error("--adaptation-reference SEED reads --adaptation's share against one reference: it needs "
                 f"--adaptation, a SEED >= 0 and --adaptation-tune-episodes >= 1 (got {args.adaptation_reference}, "
                 f"{args.adaptation_tune_episodes}{'' if args.adaptation else ', no --adaptation'})")
    if args.make_train and (args.config is not None or args.minutes is not None or args.steps is not None):
        ap.error("--make-train runs train.py's own defaults: it takes neither --config nor --minutes nor --steps")
    if args.steps is not None and (args.minutes is not None or args.steps < 1):
        ap.error(f"--steps is a budget of >= 1 steps instead of --minutes, not with it (got --steps {args.steps}"
                 f"{'' if args.minutes is None else f' and --minutes {args.minutes:g}'})")
    args.config = args.config or "configs/quality.yaml"
    args.minutes = 15.0 if args.minutes is None else args.minutes
    if args.minutes <= 0 or args.parallel < 1 or args.threads < 1:
        ap.error("--minutes must be > 0, --parallel and --threads >= 1")
    if args.parallel * args.threads > (os.cpu_count() or 1):
        print(f"[protocol] warning: --parallel {args.parallel} x --threads {args.threads} exceeds this machine's "
              f"{os.cpu_count()} cores: the runs will contend (torch threads spin-wait on a busy core)",
              file=sys.stderr, flush=True)
    if not args.make_train and not Path(args.config).is_file():
        ap.error(f"--config {args.config} does not exist")
    args.name = args.name or f"{'make-train' if args.make_train else 'protocol'}-{Path(args.preset).name}"
    if args.table is not None and (not args.table or Path(args.table).name != args.table):
        ap.error(f"--table is a file stem inside --out, not a path: got {args.table!r}")
    if args.runs is not None:
        if args.table is None:
            ap.error("--runs needs --table STEM: the pooled table is written as <STEM>.json and .md in --out")
        done, status = finished_runs(args.runs, ap.error), {}
    else:
        if not args.aggregate_only:  # a bad preset, config or --set is named here, not in each run's log
            try:
                resolve_config(None if args.make_train else args.config, args.preset, args.set)
            except ConfigError as exc:
                ap.error(str(exc))
        jobs = train_commands(args)
        status = {} if args.aggregate_only else run_all(jobs, args.parallel, args.threads)
        done = [run for run, _ in jobs
                if (run / "report" / "results.json").is_file() and (run / "summary.json").is_file()]
    if not done:
        raise SystemExit(f"no finished run under {args.out} (status: {status})")
    if args.against_runs is not None and len(args.against_runs) != len(done):
        ap.error(f"--against-runs names {len(args.against_runs)} runs for {len(done)} finished runs: one each, in the "
                 "same order")
    agg = aggregate(done)
    if args.probe:
        agg["probe"] = probe_runs(done)
    if args.adaptation:
        common = (None if args.adaptation_reference is None
                  else (args.adaptation_reference, args.adaptation_tune_episodes))
        agg["adaptation"] = adaptation_runs(done, common)
    if args.against:
        others = [Path(f"{args.against}-s{run.name.rsplit('-s', 1)[1]}") for run in done]  # the same seeds
        agg["paired_with"] = {"prefix": args.against, **paired_with(done, others)}
    elif args.against_runs is not None:
        agg["paired_with"] = paired_with(done, args.against_runs)
    agg["status"] = status
    agg["command"] = " ".join(["python -m bench.quality_protocol", *(argv if argv is not None else sys.argv[1:])])
    budget = ("make train's job (train.py defaults)" if args.make_train
              else f"{args.steps:,} steps each" if args.steps is not None else f"≤ {args.minutes:g} min each")
    md = markdown(agg, f"Quality protocol: preset {args.preset}, {len(done)} seeds, {budget}")
    args.out.mkdir(parents=True, exist_ok=True)
    table = args.table or args.name
    atomic_write_text(args.out / f"{table}.json", json.dumps(agg, indent=1))
    atomic_write_text(args.out / f"{table}.md", md)
    print(md)
    print(json.dumps(agg))
    return agg


if __name__ == "__main__":
    main()
