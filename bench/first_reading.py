"""What a session's first request tells of the user's type, by what a reader pools of it (issue #13, session 54).

At the first request nothing has been clicked yet; what a ranker knows of the user is the request itself: the user's
LLM state and the candidates' feature rows. The policy's state pools the candidate rows by their mean and max
(``agents/policies.py``); ``train.policy.pool_spread`` adds their spread. This bench fits a logistic reading of
"CF-leaning user" (hidden ρ < 0.5, the split of the value of adaptation on ``adapt``) on the first requests of
training users and scores it on held-out users, per set of pooled statistics:

- ``mean+max``: each column of ``symlog(features)`` (what the policy reads) averaged and maxed over the candidates;
- ``mean+max+user``: with the user's LLM state;
- ``spread``: each column's standard deviation over the candidates alone;
- ``mean+max+spread``: the pooling of ``pool_spread`` (:func:`agents.policy_ops.candidate_spread`: the standard
  deviations and the LLM–CF correlation);
- ``mean+max+spread+user``;
- ``type_features``: ``bench.type_switch``'s request statistics (the type switch's classifier).

A logistic regression is a floor for what a network can read, not a ceiling: the figures rank the pooled statistics.
``python -m bench.first_reading --preset adapt`` prints a table; the last line is a JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch as th

from agents.evaluation import episode_plan
from agents.policy_ops import candidate_spread, symlog
from agents.type_switch import RHO_EDGE, TypeClassifier, type_features
from bench.env_throughput import config_and_world
from bench.headroom import add_world_args
from configs.schema import EnvConfig
from envs.factory import make_core
from envs.spaces import F_CF, F_LLM
from envs.world import World

#: Seed offset of the held-out users' first requests (the training users' use ``--seed``).
HELDOUT_SEED_OFFSET = 1


def first_requests(world: World, cfg: EnvConfig, population: str, n: int, seed: int
                   ) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The first request of ``n`` sessions of ``population``: those of :func:`agents.evaluation.episode_plan` with
    one seed (the users a permutation of the population, cycled).

    Returns:
        ``(obs, cf)``: the batched observation (n, …) and bool (n,) hidden ρ < :data:`RHO_EDGE`.
    """
    core = make_core(cfg, cfg.preset, None, world, population, n)
    plan = episode_plan(n, [seed], world.populations[population].size)
    core.reset_rows(np.arange(n), plan.keys, plan.users)
    obs = {key: np.array(v) for key, v in core.observe().items()}
    return obs, core.pop.rho[core.user[np.arange(n)]] < RHO_EDGE


def pooled(obs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Each reader's statistics of a batch of requests: name → float64 (n, p)."""
    f = th.as_tensor(obs["features"], dtype=th.float64)
    cand = symlog(f)  # (n, N, F), the policy's candidate rows without item embeddings
    mean_max = th.cat([cand.mean(dim=1), cand.max(dim=1).values], dim=-1).numpy()
    spread = candidate_spread(cand, f, None, F_LLM, F_CF).numpy()  # (n, F + 1)
    user = obs["user"].astype(np.float64)
    return {"mean+max": mean_max, "mean+max+user": np.c_[mean_max, user], "spread": spread[:, :-1],
            "mean+max+spread": np.c_[mean_max, spread], "mean+max+spread+user": np.c_[mean_max, spread, user],
            "type_features": type_features(obs)}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the bench; print the table and the JSON summary (last line)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_world_args(ap, preset="adapt")
    ap.add_argument("--train-sessions", type=int, default=8000, help="training users' first requests fitted on")
    args = ap.parse_args(argv)
    for flag in ("episodes", "train_sessions"):
        if getattr(args, flag) < 1:
            ap.error(f"--{flag.replace('_', '-')} must be at least 1, got {getattr(args, flag)}")
    full, world = config_and_world(ap, args)
    cfg = full.env
    obs_tr, y_tr = first_requests(world, cfg, "train", args.train_sessions, args.seed)
    obs_te, y_te = first_requests(world, cfg, "heldout", args.episodes, args.seed + HELDOUT_SEED_OFFSET)
    x_tr, x_te = pooled(obs_tr), pooled(obs_te)
    rows: dict[str, Any] = {}
    print(f"{'pooled statistics':24s} {'columns':>7s} {'train':>6s} {'held-out':>8s}   (right share; "
          f"{y_te.mean():.0%} of the held-out users CF-leaning)")
    for name in x_tr:
        reader = TypeClassifier(x_tr[name], y_tr, l2=1e-2)
        right = {"train": float(((reader.proba(x_tr[name]) > 0.5) == y_tr).mean()),
                 "heldout": float(((reader.proba(x_te[name]) > 0.5) == y_te).mean())}
        rows[name] = {"columns": int(x_tr[name].shape[1]), **right}
        print(f"{name:24s} {rows[name]['columns']:7d} {right['train']:6.1%} {right['heldout']:8.1%}")
    summary = {"preset": args.preset, "train_sessions": args.train_sessions, "heldout_sessions": args.episodes,
               "cf_share_heldout": float(y_te.mean()), "readers": rows}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
