"""How well a trained run's type head reads the user's type, request by request, on its own sessions (#13).

A policy with a type head (``train.policy.type_head_weight``) reads each user's hidden type from the observation and
feeds that reading to its α gate; on ``adapt`` the reading of the first requests is where the type is worth most
(BENCHMARKS "Session 53"). This bench replays each run's policy on its own held-out sessions (the first
``--sessions`` of ``report/returns.npz``, checked against the stored returns first) and scores the head at every
request: right where ``σ(logit) < 0.5`` and the hidden ρ < 0.5 agree, per request index, with a 95% bootstrap interval
over sessions. Runs with different heads (``train.policy.type_head_input``) on the same sessions compare directly.

At a threshold ``p`` (``--threshold``; by default the run's ``train.policy.type_cap`` where it has one) it also gives,
per request and hidden type, the share of sessions the head reads as CF-leaning with probability above ``p``
(``σ(−logit) > p``, where the policy's category cap fires): of the CF-leaning users, the cap's reach; of the
content-leaning ones, its misfires (session 63: what the cap read by the head misses against the cap by the hidden
type).

    python -m bench.head_reading runs/protocol56/p56-adapt-s14 runs/protocol57/p57-adapt-request-s14 --json out.json
    python -m bench.head_reading runs/protocol61/p61-adapt-cap-s17 --requests 15 --threshold 0.9

Prints a Markdown table (one row per run), and with a threshold a second one; with ``--json`` also writes the figures
(atomically).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch as th

from agents.evaluation import EpisodePlan, run_episodes
from agents.policies import reads_cf_leaning
from agents.ppo_ranker import PPORanker, load_policy, load_run_config
from agents.type_switch import request_index
from bench.eval_blocks import report_returns
from bench.quality_protocol import RHO_EDGE
from configs.loader import atomic_write_text

#: Requests (1-based, from the first) whose reading the table shows.
REQUESTS = 6
#: Bootstrap resamples of the intervals.
BOOTSTRAP = 1000


def _share(hit: np.ndarray, met: np.ndarray, idx: np.ndarray) -> tuple[float, list[float]]:
    """Share of ``hit`` among ``met`` sessions (both ``(n,)`` bool) and its 95% bootstrap interval over the resamples
    ``idx`` ``(R, n)``; NaN where no session is met (a resample that meets none is left out of the interval)."""
    if not met.any():
        return math.nan, [math.nan, math.nan]
    h = (hit & met).astype(np.float64)
    count = met[idx].sum(axis=1)
    boot = h[idx].sum(axis=1)[count > 0] / count[count > 0]
    return float(h.sum() / met.sum()), [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))]


def read_run(run: Path, sessions: int = 4000, batch: int = 500, requests: int = REQUESTS, report: Path | None = None,
             name: str = "ppo", threshold: float | None = None) -> dict[str, Any]:
    """Replay ``run``'s policy on the first ``sessions`` of its held-out sessions and score its type head.

    Args:
        run: A finished run directory with a type head and ``report/returns.npz``.
        sessions: Held-out sessions played (at most the report's).
        batch: Users simulated at once.
        requests: Requests (1-based) scored.
        report: The ``evaluate.py`` report holding the run's held-out returns (``None``: the run's ``report/``).
        name: The run's name in that report (``ppo`` in a run's own report, ``run:DIR`` in ``evaluate.py``'s).
        threshold: The probability of a CF-leaning user above which a reading counts as firing the cap, in (0, 1);
            ``None``: the policy's ``type_cap`` where it has one, else no such figures.

    Returns:
        ``{"run", "sessions", "type_head_input", "threshold", "by_request": [{"request", "readings", "right", "ci95",
        "cf_readings", "cf_above", "cf_above_ci95", "content_readings", "content_above", "content_above_ci95"}]}``;
        the ``cf_*`` and ``content_*`` keys (the share of that hidden type read above ``threshold``, NaN where none of
        the type reaches the request) only with a threshold.

    Raises:
        ValueError: A policy without a type head, ``sessions`` < 1, a threshold outside (0, 1), or a policy that does
            not replay its stored returns.
        FileNotFoundError: A run without ``report/returns.npz``.
    """
    from envs.factory import make_core
    from envs.presets import load_world

    run = Path(run)
    if sessions < 1:
        raise ValueError(f"sessions must be >= 1, got {sessions}")
    cfg = load_run_config(run)
    world = load_world(cfg.env, cfg.encoder, progress=False)
    heldout, stored = report_returns(run / "report" if report is None else Path(report), (name,))
    n = min(int(sessions), len(heldout))
    plan = EpisodePlan(heldout.keys[:n], heldout.users[:n], heldout.seeds[:n])
    core = make_core(cfg.env, cfg.env.preset, None, world, "heldout", min(batch, n))
    policy = load_policy(run, device="cpu", n_items=core.M)
    if policy.type_net is None:
        raise ValueError(f"{run}'s policy has no type head (train.policy.type_head_weight > 0)")
    if threshold is None:
        threshold = policy.type_cap
    if threshold is not None and not 0.0 < float(threshold) < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    steps = cfg.env.max_steps
    # per session and request index: the head's reading was right (1), wrong (0), or the session had ended (-1)
    right = np.full((n, steps), -1, dtype=np.int8)
    # the same cells: the reading was above the threshold (1) or not (0); per session its hidden type
    above = np.full((n, steps), -1, dtype=np.int8)
    cf_session = np.zeros(n, dtype=bool)
    sessions_at = np.full(core.B, -1, dtype=np.int64)
    started = 0

    def score(obs: dict[str, np.ndarray], slate: np.ndarray, feedback: Any, active: np.ndarray) -> None:
        nonlocal started
        with th.no_grad():
            head = policy._type_logit(policy._encode(policy._prepare(obs))[0])  # (B,)
        logit = head.double().numpy()
        t = request_index(obs["context"], steps).clip(0, steps - 1)
        new = np.flatnonzero(active & (t == 0))
        sessions_at[new] = started + np.arange(len(new))
        started += len(new)
        rows = np.flatnonzero(active)
        cf = core.pop.rho[core.user[rows]] < RHO_EDGE
        right[sessions_at[rows], t[rows]] = ((logit[rows] < 0) == cf).astype(np.int8)
        cf_session[sessions_at[rows]] = cf
        if threshold is not None:  # where the policy's own cap would fire
            above[sessions_at[rows], t[rows]] = reads_cf_leaning(head, threshold).numpy()[rows].astype(np.int8)

    replay = run_episodes(core, PPORanker(policy, cfg.env.slate_size), plan, on_step=score).ret
    if not np.allclose(replay, stored[name][:n], rtol=1e-9, atol=1e-9):
        raise ValueError(f"{run}'s policy does not replay its stored held-out returns (largest difference "
                         f"{float(np.abs(replay - stored[name][:n]).max()):.3g}): is this its report?")
    rng = np.random.default_rng(0)
    idx = rng.integers(0, n, size=(BOOTSTRAP, n))
    by_request = []
    for t in range(min(requests, steps)):
        met = right[:, t] >= 0  # (n,)
        if not met.any():
            break
        share, ci = _share(right[:, t] == 1, met, idx)
        row: dict[str, Any] = {"request": t + 1, "readings": int(met.sum()), "right": share, "ci95": ci}
        if threshold is not None:
            for group, members in (("cf", cf_session), ("content", ~cf_session)):
                share, ci = _share(above[:, t] == 1, met & members, idx)
                row |= {f"{group}_readings": int((met & members).sum()), f"{group}_above": share,
                        f"{group}_above_ci95": ci}
        by_request.append(row)
    return {"run": str(run), "sessions": n, "type_head_input": getattr(policy, "type_head_input", "state"),
            "threshold": None if threshold is None else float(threshold), "by_request": by_request}


def markdown(results: list[dict[str, Any]]) -> str:
    """One row per run: the share read right at each request (95% interval over sessions)."""
    width = max(len(r["by_request"]) for r in results)
    lines = ["| run | head reads | " + " | ".join(f"request {t}" for t in range(1, width + 1)) + " |",
             "|---|---|" + "---:|" * width]
    for r in results:
        cells = [f"{100 * x['right']:.1f}% ({100 * x['ci95'][0]:.1f}–{100 * x['ci95'][1]:.1f})"
                 for x in r["by_request"]]
        cells += ["–"] * (width - len(cells))
        lines.append(f"| {Path(r['run']).name} | {r['type_head_input']} | " + " | ".join(cells) + " |")
    lines.append(f"\nShare of sessions whose type the head reads right (σ(logit) < 0.5 ⇔ ρ < {RHO_EDGE}) at each "
                 f"request, among those that reach it, on the run's first {results[0]['sessions']:,} held-out "
                 "sessions; 95% bootstrap interval over sessions.")
    fired = [r for r in results if r.get("threshold") is not None]
    if fired:
        lines += ["", "| run | read CF-leaning above p: of the … | " + " | ".join(
            f"request {t}" for t in range(1, width + 1)) + " |", "|---|---|" + "---:|" * width]
        for r in fired:
            for group, label in (("cf", "CF-leaning (the cap's reach)"), ("content", "content-leaning (misfires)")):
                shares = [x[f"{group}_above"] for x in r["by_request"]]
                cells = ["–" if math.isnan(v) else f"{100 * v:.1f}%" for v in shares]
                cells += ["–"] * (width - len(cells))
                lines.append(f"| {Path(r['run']).name} (p {r['threshold']:g}) | {label} | " + " | ".join(cells) + " |")
        lines.append("\nShare of each hidden type's sessions that the head reads as CF-leaning with probability above "
                     "p (σ(−logit) > p, where a policy's `type_cap` fires), among those that reach the request; the "
                     "JSON has each share's 95% bootstrap interval.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Command line: read each run's head, print the table, optionally write the JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path, help="finished run directories with a type head")
    ap.add_argument("--sessions", type=int, default=4000, help="held-out sessions played per run (default 4000)")
    ap.add_argument("--requests", type=int, default=REQUESTS, help=f"requests scored (default {REQUESTS})")
    ap.add_argument("--batch", type=int, default=500, help="users simulated at once")
    ap.add_argument("--threshold", type=float, default=None,
                    help="also give each type's share read as CF-leaning above this probability (default: the "
                         "run's train.policy.type_cap, where it has one)")
    ap.add_argument("--json", type=Path, default=None, help="write the figures here (atomically)")
    args = ap.parse_args(argv)
    if args.requests < 1:
        ap.error(f"--requests must be >= 1, got {args.requests}")
    results = []
    for run in args.runs:
        try:
            results.append(read_run(run, args.sessions, args.batch, args.requests, threshold=args.threshold))
        except (ValueError, FileNotFoundError) as e:
            ap.error(str(e))
    print(markdown(results))
    if args.json is not None:
        atomic_write_text(args.json, json.dumps({"runs": results, "sessions": args.sessions}, indent=1))
    return results


if __name__ == "__main__":
    main()
