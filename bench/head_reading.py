"""How well a trained run's type head reads the user's type, request by request, on its own sessions (#13).

A policy with a type head (``train.policy.type_head_weight``) reads each user's hidden type from the observation and
feeds that reading to its α gate; on ``adapt`` the reading of the first requests is where the type is worth most
(BENCHMARKS "Session 53"). This bench replays each run's policy on its own held-out sessions (the first
``--sessions`` of ``report/returns.npz``, checked against the stored returns first) and scores the head at every
request: right where ``σ(logit) < 0.5`` and the hidden ρ < 0.5 agree, per request index, with a 95% bootstrap interval
over sessions. Runs with different heads (``train.policy.type_head_input``) on the same sessions compare directly.

    python -m bench.head_reading runs/protocol56/p56-adapt-s14 runs/protocol57/p57-adapt-request-s14 --json out.json

Prints a Markdown table (one row per run); with ``--json`` also writes the figures (atomically).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch as th

from agents.evaluation import EpisodePlan, run_episodes
from agents.ppo_ranker import PPORanker, load_policy, load_run_config
from agents.type_switch import request_index
from bench.eval_blocks import report_returns
from bench.quality_protocol import RHO_EDGE
from configs.loader import atomic_write_text

#: Requests (1-based, from the first) whose reading the table shows.
REQUESTS = 6
#: Bootstrap resamples of the intervals.
BOOTSTRAP = 1000


def read_run(run: Path, sessions: int = 4000, batch: int = 500, requests: int = REQUESTS, report: Path | None = None,
             name: str = "ppo") -> dict[str, Any]:
    """Replay ``run``'s policy on the first ``sessions`` of its held-out sessions and score its type head.

    Args:
        run: A finished run directory with a type head and ``report/returns.npz``.
        sessions: Held-out sessions played (at most the report's).
        batch: Users simulated at once.
        requests: Requests (1-based) scored.
        report: The ``evaluate.py`` report holding the run's held-out returns (``None``: the run's ``report/``).
        name: The run's name in that report (``ppo`` in a run's own report, ``run:DIR`` in ``evaluate.py``'s).

    Returns:
        ``{"run", "sessions", "type_head_input", "by_request": [{"request", "readings", "right", "ci95"}]}``.

    Raises:
        ValueError: A policy without a type head, ``sessions`` < 1, or one that does not replay its stored returns.
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
    steps = cfg.env.max_steps
    # per session and request index: the head's reading was right (1), wrong (0), or the session had ended (-1)
    right = np.full((n, steps), -1, dtype=np.int8)
    sessions_at = np.full(core.B, -1, dtype=np.int64)
    started = 0

    def score(obs: dict[str, np.ndarray], slate: np.ndarray, feedback: Any, active: np.ndarray) -> None:
        nonlocal started
        with th.no_grad():
            logit = policy._type_logit(policy._encode(policy._prepare(obs))[0]).double().numpy()  # (B,)
        t = request_index(obs["context"], steps).clip(0, steps - 1)
        new = np.flatnonzero(active & (t == 0))
        sessions_at[new] = started + np.arange(len(new))
        started += len(new)
        rows = np.flatnonzero(active)
        cf = core.pop.rho[core.user[rows]] < RHO_EDGE
        right[sessions_at[rows], t[rows]] = ((logit[rows] < 0) == cf).astype(np.int8)

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
        hit = np.where(met, right[:, t], 0).astype(np.float64)
        boot = hit[idx].sum(axis=1) / np.maximum(met[idx].sum(axis=1), 1)
        by_request.append({"request": t + 1, "readings": int(met.sum()), "right": float(hit.sum() / met.sum()),
                           "ci95": [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))]})
    return {"run": str(run), "sessions": n, "type_head_input": getattr(policy, "type_head_input", "state"),
            "by_request": by_request}


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
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Command line: read each run's head, print the table, optionally write the JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path, help="finished run directories with a type head")
    ap.add_argument("--sessions", type=int, default=4000, help="held-out sessions played per run (default 4000)")
    ap.add_argument("--requests", type=int, default=REQUESTS, help=f"requests scored (default {REQUESTS})")
    ap.add_argument("--batch", type=int, default=500, help="users simulated at once")
    ap.add_argument("--json", type=Path, default=None, help="write the figures here (atomically)")
    args = ap.parse_args(argv)
    if args.requests < 1:
        ap.error(f"--requests must be >= 1, got {args.requests}")
    results = []
    for run in args.runs:
        try:
            results.append(read_run(run, args.sessions, args.batch, args.requests))
        except (ValueError, FileNotFoundError) as e:
            ap.error(str(e))
    print(markdown(results))
    if args.json is not None:
        atomic_write_text(args.json, json.dumps({"runs": results, "sessions": args.sessions}, indent=1))
    return results


if __name__ == "__main__":
    main()
