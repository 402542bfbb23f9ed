"""Is it the category cap? A trained `adapt` policy given the CF-leaning users' cap of one where its head reads them
(issue #13, session 60).

On `adapt` the recipe's PPO is above the engineer's type switch for the content-leaning users and below it for the
CF-leaning ones, and ``bench.margin_split --by-type`` places that loss at requests 4–15, where both read the type
well, not at the first requests, where the reading is weakest. The switch's rule for those users (B, the diversity
rule tuned for them) differs from the policy's start (A, tuned-diverse) in α, the click-lean weight, the penalties
and the category cap: one item per category in B, two in A. The policy can move α and the penalties by its type head's
reading; the cap is a constant of its slate distribution, which only the state-dependent repulsion β can reach (a
second pick of a category costs β, so a β far above the logits' range is a cap of one). This bench replays trained
runs with nothing changed but that: β raised by :data:`CAP_BETA` (the distribution's own cap penalty) on requests
where the run's type head reads a CF-leaning user with probability above ``p`` (each of ``--thresholds``), and, as a
research row, where the user's hidden ρ is below 0.5 (a perfect reader); each paired with the run as trained on the
same held-out sessions, for all users and per hidden type, and over the runs (mean, 95% t-interval across them).

    python -m bench.type_cap runs/protocol57/p57-adapt-request-s14 runs/protocol57/p57-adapt-request-s15 \\
        --thresholds 0.8,0.9,0.95 --episodes 10000 --eval-seed 100

Prints a Markdown table; the last printed line is the JSON.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path
from typing import Any

import numpy as np
import torch as th

from agents.base import Ranker
from agents.distributions import PlackettLuceDistribution
from agents.evaluation import episode_plan, run_episodes
from agents.policies import SlatePolicy
from agents.ppo_ranker import PPORanker, load_policy, load_run_config
from agents.report import Bootstrap
from agents.runinfo import mismatch, read_signature
from agents.type_switch import RHO_EDGE
from bench.cli import print_analysis
from bench.ppo_seeds import t_interval
from bench.type_switch import by_type_row, by_type_table
from envs.spaces import CRITIC_STATE_NAMES

#: The repulsion added where the cap applies: the distribution's own penalty of a full category (nats).
CAP_BETA = PlackettLuceDistribution.CAP_PENALTY
_RHO = CRITIC_STATE_NAMES.index("rho")


class TypeCapRanker(Ranker):
    """A trained policy whose repulsion β is raised by :data:`CAP_BETA` where the user reads (or is) CF-leaning.

    With a threshold this is the policy's own ``type_cap`` set after training (replacing any it was trained with).

    Args:
        policy: A policy with a type head and item categories (copied; the original is not changed).
        k: Slate size.
        threshold: Raise β where the head's probability of a CF-leaning user, ``σ(−ℓ)``, is above it; ``None``: where
            the hidden ρ is below :data:`RHO_EDGE` (research: needs ``obs["critic_state"]``).
    """

    def __init__(self, policy: SlatePolicy, k: int, threshold: float | None) -> None:
        super().__init__(k)
        if policy.type_net is None or policy.repulsion_head is None:
            raise ValueError("the policy needs a type head (train.policy.type_head_weight) and item categories")
        if threshold is not None and not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {threshold}")
        self.threshold = threshold
        self.reads_hidden_state = threshold is None
        self.name = ("cap by the hidden type (research)" if threshold is None
                     else f"cap where the head reads p > {threshold:g}")
        self.policy = copy.deepcopy(policy)
        self.policy.type_cap = threshold  # the policy's own option (train.policy.type_cap), set after training
        self._cf: th.Tensor | None = None  # (B,) 1.0 for a CF-leaning user by the hidden ρ, set per request
        if threshold is None:
            repulsion = self.policy._repulsion

            def raised(h: th.Tensor, type_logit: th.Tensor | None = None) -> th.Tensor | None:
                beta = repulsion(h, type_logit)
                assert beta is not None and self._cf is not None
                return beta + CAP_BETA * self._cf.to(device=beta.device, dtype=beta.dtype)

            self.policy._repulsion = raised  # type: ignore[method-assign]
        self.ranker = PPORanker(self.policy, k)

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """Slates (B, K) of the policy with the cap applied per :attr:`threshold`."""
        if self.threshold is None:
            self._cf = th.as_tensor(obs["critic_state"][:, _RHO] < RHO_EDGE, dtype=th.float32)
        return self.ranker.act(obs)


def analyse(runs: list[Path], thresholds: tuple[float, ...] = (0.8, 0.9, 0.95), episodes: int = 10000,
            eval_seed: int = 100, batch: int = 500, bootstrap: int = 1000) -> dict[str, Any]:
    """Each run as trained and with the cap per threshold and by the hidden type, on the same held-out sessions.

    Args:
        runs: Trained run directories of one world, with a type head (the ``adapt`` recipe).
        thresholds: The head's probabilities of a CF-leaning user above which the cap applies.
        episodes: Held-out sessions.
        eval_seed: Their evaluation seed (100: none of the protocols' sessions).
        batch: Users simulated at once.
        bootstrap: Resamples of each run's intervals over sessions.

    Returns:
        ``{"sessions", "cf_sessions", "eval_seed", "runs": {run: {row: by_type_row}}, "over_runs": {row: {"diff",
        "diff_cf", "diff_content": {"mean", "ci95", "per_seed"}}}}``; every difference is against the run as
        trained.

    Raises:
        ValueError: No runs, runs of other worlds, a policy without a type head, or an env without ``critic_state``.
    """
    from envs.factory import make_core
    from envs.presets import load_world

    if not runs:
        raise ValueError("name at least one run")
    first = read_signature(runs[0])
    for run in runs[1:]:
        why = mismatch(read_signature(run), first, str(run), str(runs[0]))
        if why:
            raise ValueError(f"the runs were trained on different worlds: {why}")
    cfg = load_run_config(runs[0])
    if not cfg.env.obs_critic_state:
        raise ValueError(f"{runs[0]}'s env has no critic_state: the hidden-type row needs it (env.obs_critic_state)")
    world = load_world(cfg.env, cfg.encoder, progress=False)
    core = make_core(cfg.env, cfg.env.preset, None, world, "heldout", min(batch, episodes))
    plan = episode_plan(episodes, [eval_seed], world.populations["heldout"].size)
    cf = world.populations["heldout"].rho[plan.users] < RHO_EDGE  # (E,)
    boot = Bootstrap(len(plan), bootstrap, 0)
    k = cfg.env.slate_size
    per_run: dict[str, dict[str, Any]] = {}
    for run in runs:
        policy = load_policy(run, device="cpu", n_items=core.M)
        trained = run_episodes(core, PPORanker(policy, k), plan).ret
        rows = {"as trained": by_type_row(trained, trained, boot, cf)}
        for p in [*thresholds, None]:
            ranker = TypeCapRanker(policy, k, p)
            rows[ranker.name] = by_type_row(run_episodes(core, ranker, plan).ret, trained, boot, cf)
        per_run[str(run)] = rows
        print(f"[type_cap] {run}: " + ", ".join(f"{n} {r['diff']['mean']:+.3f}" for n, r in rows.items()), flush=True)
    names = list(next(iter(per_run.values())))[1:]
    over = {name: {col: _across([per_run[r][name][col]["mean"] for r in per_run])
                   for col in ("diff", "diff_cf", "diff_content")} for name in names}
    return {"sessions": len(plan), "cf_sessions": int(cf.sum()), "eval_seed": eval_seed, "cap_beta": CAP_BETA,
            "runs": per_run, "over_runs": over}


def _across(values: list[float]) -> dict[str, Any]:
    v = np.asarray(values, dtype=np.float64)
    return {"mean": float(v.mean()), "ci95": t_interval(v), "per_seed": v.tolist()}


def markdown(res: dict[str, Any]) -> str:
    """A table per run, then the differences over the runs."""
    lines = [f"{len(res['runs'])} runs on {res['sessions']} held-out sessions (evaluation seed {res['eval_seed']}, "
             f"{res['cf_sessions']} CF-leaning); the cap: β + {res['cap_beta']:g}"]
    for run, rows in res["runs"].items():
        lines += ["", f"**{run}**", "", *by_type_table(rows, "as trained")]

    def cell(x: dict[str, Any]) -> str:
        return f"{x['mean']:+.3f} ({x['ci95'][0]:+.3f} to {x['ci95'][1]:+.3f})"

    lines += ["", "| over the runs (t-interval across them) | − as trained: all | CF-leaning | content-leaning |",
              "|---|---:|---:|---:|"]
    for name, row in res["over_runs"].items():
        lines.append(f"| {name} | {cell(row['diff'])} | {cell(row['diff_cf'])} | {cell(row['diff_content'])} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Print the table and the JSON."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", type=Path, nargs="+", help="trained runs with a type head, of one world")
    ap.add_argument("--thresholds", default="0.8,0.9,0.95",
                    help="the head's probabilities of a CF-leaning user above which the cap applies")
    ap.add_argument("--episodes", type=int, default=10000, help="held-out sessions")
    ap.add_argument("--eval-seed", type=int, default=100, help="their evaluation seed")
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--bootstrap", type=int, default=1000)
    args = ap.parse_args(argv)
    try:
        thresholds = tuple(float(x) for x in args.thresholds.split(",") if x.strip())
    except ValueError:
        ap.error(f"--thresholds: comma-separated numbers in (0, 1), got {args.thresholds!r}")
    if not all(0.0 < p < 1.0 for p in thresholds) or args.episodes < 2 or args.eval_seed < 0:
        ap.error(f"--thresholds in (0, 1), --episodes >= 2 and --eval-seed >= 0, got {args.thresholds!r}, "
                 f"{args.episodes}, {args.eval_seed}")
    return print_analysis(ap, lambda: analyse(list(args.runs), thresholds, args.episodes, args.eval_seed, args.batch,
                                              args.bootstrap), markdown)


if __name__ == "__main__":
    main()
