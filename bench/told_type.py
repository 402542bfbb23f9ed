"""Does PPO on ``adapt`` lack the user's type, or the skill to act on it? (issue #13, session 53)

Each ``adapt`` run trades one user group against the other (BENCHMARKS "Session 51"). Two explanations fit: PPO
cannot learn one policy good for both groups (an optimisation limit), or it cannot tell the groups apart early enough
in a session (an information limit). The research ablation ``train.policy.actor_hidden_columns: [rho]`` tells the
actor each user's hidden ρ, the one thing the per-type rule of ``bench.headroom`` knows, and the quality protocol
measures what that is worth to the learner. This bench asks the follow-up question: is the told policy any good with
the type *read from the session* instead? It plays the told policy on its own held-out sessions three ways, paired
with an observation-only run of the same sessions (a run with the type head, ``train.policy.type_head_weight``):

* **told** (ρ true): a replay of the told run's stored returns, checked session by session on the first sessions;
* **soft**: ρ replaced by the other run's type head reading, ``σ(logit)`` (its fitted estimate of ρ from what the
  service observes);
* **hard**: ρ replaced by the mean ρ of the training users of the side the head reads (below or above 0.5);
* with ``--told-from T …``: ρ true from the session's T-th request on, the head's soft reading before it: how soon a
  reader must know the type for the told policy to keep its gain (T = 1 is the told row).

Each row gives the return for all users and per hidden type, and the difference from the observation-only run's PPO
with a bootstrap interval over sessions. A told policy that gains with the estimate would be a deployable two-stage
recipe (a policy taught with the type, an estimator in front of it); one that loses shows that what it learned rests
on knowing the type from the session's first request. Research only: the told policy's rows read the hidden ρ.

    python -m bench.told_type runs/protocol53/p53-adapt-rho-s0 runs/protocol52/p52-adapt-s0

Both runs must have been evaluated on the same held-out sessions (a protocol's runs are: ``report/returns.npz``),
or ``--report DIR`` names one ``evaluate.py`` report holding both as ``run:TOLD`` and ``run:ESTIMATOR``. Prints a
Markdown table; the last printed line is the JSON.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import torch as th

from agents.base import Ranker
from agents.evaluation import EpisodePlan, run_episodes
from agents.policies import SlatePolicy
from agents.ppo_ranker import PPORanker, load_policy, load_run_config
from agents.report import Bootstrap
from agents.type_switch import request_index
from bench.cli import print_analysis
from bench.eval_blocks import report_returns
from bench.quality_protocol import RHO_EDGE
from bench.type_switch import by_type_row, by_type_table
from envs.spaces import CRITIC_STATE_NAMES

#: Sessions on which the told policy must replay its stored returns before its other rows are trusted.
REPLAY_SESSIONS = 200
MODES = ("told", "soft", "hard")
#: Requests of a session (from the first) whose type-head accuracy the table reports.
HEAD_REQUESTS = 10
_RHO = CRITIC_STATE_NAMES.index("rho")


def type_reading(estimator: SlatePolicy, obs: dict[str, np.ndarray]) -> np.ndarray:
    """The estimator's type head reading of ρ per row: ``σ(logit)``, float64 (B,) in (0, 1)."""
    assert estimator.type_net is not None
    with th.no_grad():
        prepared = estimator._prepare(obs)
        logit = estimator._type_logit(estimator._encode(prepared)[0]).double().cpu().numpy()
    return 1.0 / (1.0 + np.exp(-logit))


class EstimatedTypeRanker(Ranker):
    """A policy told the hidden ρ, playing with ρ as given (``told``) or replaced by an estimator's reading.

    Args:
        told: A policy whose actor reads ``critic_state``'s ρ (``actor_hidden_columns: [rho]``).
        estimator: A policy with a type head reading observations only (unused for ``told``).
        k: Slate size.
        mode: ``"told"``, ``"soft"`` (ρ := σ(logit)) or ``"hard"`` (ρ := ``sides[0]`` where σ(logit) < 0.5, else
            ``sides[1]``).
        sides: The ρ given for a CF-leaning and a content-leaning reading (``hard``).
        told_from: With ``soft``: the true ρ from the session's ``told_from``-th request on (1-based; the request
            index is ``context.t_frac · max_steps``), the reading before it. ``None``: never the true ρ.
        max_steps: The env's ``max_steps`` (needed with ``told_from``).
    """

    reads_hidden_state = True

    def __init__(self, told: SlatePolicy, estimator: SlatePolicy | None, k: int, mode: str = "told",
                 sides: tuple[float, float] = (0.0, 1.0), told_from: int | None = None,
                 max_steps: int | None = None) -> None:
        super().__init__(k)
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if mode != "told" and estimator is None:
            raise ValueError(f"mode {mode!r} needs an estimator")
        if told_from is not None and (mode != "soft" or told_from < 1 or max_steps is None or max_steps < 1):
            raise ValueError(f"told_from goes with mode 'soft', is >= 1 and needs max_steps >= 1, got told_from "
                             f"{told_from}, mode {mode!r}, max_steps {max_steps}")
        self.policy = PPORanker(told, k)
        self.estimator, self.mode, self.sides = estimator, mode, sides
        self.told_from, self.max_steps = told_from, max_steps
        self.name = f"told ρ ({mode})" if told_from is None else f"told ρ from request {told_from}"
        self.last_reading: np.ndarray | None = None  # (B,) σ(logit) of the last request (soft and hard)

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """Slates (B, K) of the told policy, given ρ per :attr:`mode`."""
        if self.mode != "told":
            assert self.estimator is not None
            rho = self.last_reading = type_reading(self.estimator, obs)  # (B,)
            if self.mode == "hard":
                rho = np.where(rho < RHO_EDGE, self.sides[0], self.sides[1])
            state = np.array(obs["critic_state"], copy=True)  # (B, P)
            if self.told_from is not None:
                assert self.max_steps is not None
                told = request_index(obs["context"], self.max_steps) >= self.told_from - 1  # (B,)
                rho = np.where(told, state[:, _RHO], rho)
            state[:, _RHO] = rho
            obs = {**obs, "critic_state": state}
        return self.policy.act(obs)


def _check_told(policy: SlatePolicy, run: Path) -> None:
    if not getattr(policy, "actor_hidden_state", False) or policy.actor_hidden_columns != (_RHO,):  # type: ignore[attr-defined]
        raise ValueError(f"{run}'s actor is not told ρ alone: train it with train.policy.actor_hidden_state=true "
                         "and train.policy.actor_hidden_columns=[rho]")


def _check_estimator(policy: SlatePolicy, run: Path) -> None:
    if policy.type_net is None or getattr(policy, "actor_hidden_state", False):
        raise ValueError(f"{run} has no type head reading observations only: train it with "
                         "train.policy.type_head_weight > 0 and without train.policy.actor_hidden_state")


def _returns(told: Path, estimator: Path, report: Path | None) -> tuple[EpisodePlan, np.ndarray, np.ndarray]:
    """The shared sessions and the stored returns (E,) of the told run's and the estimator run's PPO on them."""
    if report is not None:
        plan, rets = report_returns(report, (f"run:{told}", f"run:{estimator}"))
        return plan, rets[f"run:{told}"], rets[f"run:{estimator}"]
    plan, told_rets = report_returns(told / "report", ("ppo",))
    other, est_rets = report_returns(estimator / "report", ("ppo",))
    if other.keys.shape != plan.keys.shape or not np.array_equal(other.keys, plan.keys):
        raise ValueError(f"{told} and {estimator} were evaluated on different held-out sessions: evaluate both in "
                         "one evaluate.py report and pass it with --report")
    return plan, told_rets["ppo"], est_rets["ppo"]


def analyse(told: Path, estimator: Path, report: Path | None = None, sessions: int | None = None,
            batch: int = 500, bootstrap: int = 2000, told_from: tuple[int, ...] = ()) -> dict[str, Any]:
    """The told policy with ρ true, soft and hard-estimated, paired with the estimator run's PPO.

    Args:
        told: Run directory of the policy told ρ.
        estimator: Run directory of an observation-only policy with a type head, evaluated on the same sessions.
        report: One ``evaluate.py`` report holding both runs (``None``: each run's own ``report/``).
        sessions: Play only the first this many sessions (``None``: all).
        batch: Users simulated at once.
        bootstrap: Resamples of the intervals.
        told_from: Requests (1-based) from which to tell the true ρ, one row each (the soft reading before).

    Returns:
        ``{"sessions", "sides", "rows": {name: {"return", "cf", "content", "diff", "diff_cf", "diff_content"}},
        "head_accuracy_by_request": [{"request", "readings", "accuracy"}]}``; each ``diff*`` is ``{"mean", "ci95"}``
        against the estimator run's PPO; the accuracy is the head's (σ(logit) < 0.5 against ρ < 0.5) at each of the
        first :data:`HEAD_REQUESTS` requests of the sessions the told policy played with the soft reading.

    Raises:
        ValueError: A run of the wrong kind, different sessions, or a told policy that does not replay its returns.
        FileNotFoundError: A report without ``returns.npz``.
    """
    from envs.factory import make_core
    from envs.presets import load_world

    cfg = load_run_config(told)
    if not cfg.env.obs_critic_state:
        raise ValueError(f"{told}'s env has no critic_state: it cannot be a run told ρ")
    other = load_run_config(estimator).env
    if (other.preset, other.preset_dir) != (cfg.env.preset, cfg.env.preset_dir):
        raise ValueError(f"{estimator} was trained on preset {other.preset_dir or other.preset!r}, {told} on "
                         f"{cfg.env.preset_dir or cfg.env.preset!r}: the type head must read the same world")
    plan, told_ret, est_ret = _returns(told, estimator, report)
    n = len(plan) if sessions is None else min(int(sessions), len(plan))
    if n < 1:
        raise ValueError(f"sessions must be >= 1, got {sessions}")
    plan = EpisodePlan(plan.keys[:n], plan.users[:n], plan.seeds[:n])
    told_ret, est_ret = told_ret[:n], est_ret[:n]
    world = load_world(cfg.env, cfg.encoder, progress=False)
    core = make_core(cfg.env, cfg.env.preset, None, world, "heldout", min(batch, n))
    told_pol = load_policy(told, device="cpu", n_items=core.M)
    est_pol = load_policy(estimator, device="cpu", n_items=core.M)
    _check_told(told_pol, told)
    _check_estimator(est_pol, estimator)
    k = cfg.env.slate_size
    m = min(REPLAY_SESSIONS, n)
    replay = run_episodes(core, EstimatedTypeRanker(told_pol, None, k),
                          EpisodePlan(plan.keys[:m], plan.users[:m], plan.seeds[:m])).ret
    if not np.allclose(replay, told_ret[:m], rtol=1e-9, atol=1e-9):
        raise ValueError(f"{told}'s policy does not replay its stored returns (largest difference "
                         f"{float(np.abs(replay - told_ret[:m]).max()):.3g}): is this its report?")
    train_rho = world.populations["train"].rho
    sides = (float(train_rho[train_rho < RHO_EDGE].mean()), float(train_rho[train_rho >= RHO_EDGE].mean()))
    rows = {"told ρ (true)": told_ret}
    steps = cfg.env.max_steps
    hits, seen = np.zeros(steps), np.zeros(steps)  # per 0-based request index: right readings, readings

    def tally(obs: dict[str, np.ndarray], slate: np.ndarray, feedback: Any, active: np.ndarray) -> None:
        assert soft.last_reading is not None
        request = request_index(obs["context"][active], steps).clip(0, steps - 1)
        right = (soft.last_reading[active] < RHO_EDGE) == (obs["critic_state"][active, _RHO] < RHO_EDGE)
        hits[:] += np.bincount(request, weights=right, minlength=steps)
        seen[:] += np.bincount(request, minlength=steps)

    soft = EstimatedTypeRanker(told_pol, est_pol, k, "soft")
    rows["told ρ (soft: the type head's reading)"] = run_episodes(core, soft, plan, on_step=tally).ret
    rows["told ρ (hard: the type head's reading)"] = run_episodes(
        core, EstimatedTypeRanker(told_pol, est_pol, k, "hard", sides), plan).ret
    for t in told_from:
        ranker = EstimatedTypeRanker(told_pol, est_pol, k, "soft", told_from=t, max_steps=cfg.env.max_steps)
        rows[f"told ρ from request {t} (the head's reading before)"] = run_episodes(core, ranker, plan).ret
    rows["the estimator run's PPO (observations only)"] = est_ret
    cf = world.populations["heldout"].rho[plan.users] < RHO_EDGE  # (E,)
    boot = Bootstrap(n, bootstrap, 0)

    out = {name: by_type_row(r, est_ret, boot, cf) for name, r in rows.items()}
    shown = [t for t in range(min(steps, HEAD_REQUESTS)) if seen[t] > 0]
    accuracy = [{"request": t + 1, "readings": int(seen[t]), "accuracy": float(hits[t] / seen[t])} for t in shown]
    return {"told": str(told), "estimator": str(estimator), "sessions": n, "cf_sessions": int(cf.sum()),
            "sides": list(sides), "rows": out, "head_accuracy_by_request": accuracy}


def markdown(res: dict[str, Any]) -> str:
    """One row per way of playing the told policy, and the estimator run's PPO."""
    lines = [f"{res['sessions']} held-out sessions ({res['cf_sessions']} CF-leaning); hard: ρ := "
             f"{res['sides'][0]:.2f} / {res['sides'][1]:.2f}", "",
             *by_type_table(res["rows"], "the estimator run's PPO")]
    acc = ", ".join(f"{a['accuracy']:.0%}" for a in res["head_accuracy_by_request"])
    lines += ["", f"The type head reads the type right (ρ < 0.5 or not) at requests 1, 2, …: {acc}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Print the table and the JSON."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("told", type=Path, help="run told ρ (train.policy.actor_hidden_columns=[rho])")
    ap.add_argument("estimator", type=Path, help="an observation-only run with a type head, on the same sessions")
    ap.add_argument("--report", type=Path, help="one evaluate.py report holding both runs as run:DIR rankers")
    ap.add_argument("--sessions", type=int, help="play only the first this many sessions")
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--bootstrap", type=int, default=2000)
    ap.add_argument("--told-from", default="", metavar="T,T,...",
                    help="requests (1-based) from which the true ρ is told, one row each; the head's reading before")
    args = ap.parse_args(argv)
    try:
        told_from = tuple(int(x) for x in args.told_from.split(",") if x.strip())
    except ValueError:
        ap.error(f"--told-from must be comma-separated integers, got {args.told_from!r}")
    if any(t < 1 for t in told_from):
        ap.error(f"--told-from takes requests >= 1, got {args.told_from!r}")
    return print_analysis(ap, lambda: analyse(args.told, args.estimator, args.report, args.sessions, args.batch,
                                              args.bootstrap, told_from), markdown)


if __name__ == "__main__":
    main()
