"""Where does a policy with the CF-leaning users' second base gain and lose? (issue #13, session 58)

``train.policy.cf_rule_base`` moves a policy's base from tuned-diverse (A) to the rule tuned for the CF-leaning users
(B) by its type head's reading, ``q = σ(2·(−ℓ − logit p))`` (``agents.policies``). A run with it can lose on the
content-leaning users for two reasons: the share leaks onto them where the head misreads them (B costs a
content-leaning user about 10 a session), or what PPO learned on top of the base serves them worse. This bench replays
the run's trained policy on its own held-out sessions with the share replaced, the rest of the policy as trained:

* **share off**: q = 0 (base A for every user: the learned policy without its second base);
* **share hard**: q = 1 where the head's soft share is above 1/2 (its probability of a CF-leaning user above p), else 0;
* **share by the hidden type** (research: reads the simulator's ρ): q = 1 for ρ < 0.5, else 0: what a perfect reader of
  the type would give this policy;

beside the run's PPO as trained (its stored returns, checked by a replay of the first sessions). Each row gives the
return for all users and per hidden type and its difference from the run's PPO, with a bootstrap interval over
sessions; with ``--against RUN`` (a run evaluated on the same sessions, e.g. the same seed without the second base)
that run's PPO is a row too. The table also gives the mean soft share at each of the first requests, per hidden type.

    python -m bench.cf_rule_split runs/protocol58/p58-adapt-cfrule-s14 --against runs/protocol57/p57-adapt-request-s14

``--install`` asks the same of a run trained *without* the second base (the recipe, ``configs/quality-adapt.yaml``):
rule B (``RankerContext.cf_rule_search`` with ``--tune-seed`` / ``--tune-episodes``, the common reference's by default)
is installed after training as that base with a hard share at each of ``--thresholds`` (B's α prior, click-lean weight
and penalties where the head reads a CF-leaning user above p; the category cap stays the run's own, ``type_cap``), and
by the hidden type; each paired with the run as trained on training users' sessions (``--seed``, 777 as the other
screens), so that nothing is chosen on held-out sessions. Would the confidently read users gain from B's whole base?
Two more rows place the run against the engineer's type switch on the same sessions: the switch itself
(``tuned-switch``, fitted with the same searches) and the run's PPO only where its head reads a CF-leaning user above
each threshold, tuned-diverse elsewhere (the switch with the run's head as its reader and PPO as its rule B): what
the run's own choices are worth on the requests its head is unsure of.

    python -m bench.cf_rule_split runs/protocol61/p61-adapt-cap-s17 --install --thresholds 0.9,0.95

Prints a Markdown table; the last printed line is the JSON.
"""

from __future__ import annotations

import argparse
import copy
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch as th
from torch import nn

from agents.base import Ranker
from agents.evaluation import EpisodePlan, episode_plan, run_episodes
from agents.policies import SlatePolicy
from agents.ppo_ranker import PPORanker, load_policy, load_run_config
from agents.report import Bootstrap
from agents.type_switch import SwitchRanker, TypeClassifier, request_index
from bench.cli import print_analysis
from bench.eval_blocks import report_returns
from bench.gate_calibration import COMMON_REFERENCE, SCREEN_SEED, comma_numbers
from bench.quality_protocol import RHO_EDGE
from bench.type_switch import by_type_row, by_type_table
from envs.spaces import CRITIC_STATE_NAMES

#: Sessions on which the policy must replay its stored returns before the other rows are trusted.
REPLAY_SESSIONS = 200
#: How each row sets the share (``"trained"``: as the policy computes it).
MODES = ("trained", "off", "hard", "hidden")
#: Requests (from the first) whose mean share the table reports.
SHARE_REQUESTS = 6
_RHO = CRITIC_STATE_NAMES.index("rho")


class ShareRanker(Ranker):
    """A policy with the CF-leaning users' second base, its share set per :data:`MODES`.

    Args:
        policy: A policy with ``cf_rule_alpha`` (copied; the original is not changed).
        k: Slate size.
        mode: One of :data:`MODES`.
    """

    def __init__(self, policy: SlatePolicy, k: int, mode: str = "trained") -> None:
        super().__init__(k)
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if policy.cf_rule_alpha is None:
            raise ValueError("the policy has no second base (train.policy.cf_rule_base)")
        self.mode, self.name = mode, f"share {mode}"
        self.reads_hidden_state = mode == "hidden"
        self.policy = copy.deepcopy(policy)
        trained = self.policy.cf_rule_share
        self._hidden: th.Tensor | None = None  # (B,) 1 for a CF-leaning user, set per request (mode "hidden")
        self.last_share: np.ndarray | None = None  # (B,) the trained share of the last request (its soft share)

        def share(logit: th.Tensor | None) -> th.Tensor | None:
            soft = trained(logit)
            assert soft is not None
            self.last_share = soft.double().cpu().numpy()  # each pass of a request reads the same rows
            if mode == "off":
                return th.zeros_like(soft)
            if mode == "hard":
                return (soft > 0.5).to(soft.dtype)
            if mode == "hidden":
                assert self._hidden is not None
                return self._hidden.to(device=soft.device, dtype=soft.dtype)
            return soft

        self.policy.cf_rule_share = share  # type: ignore[method-assign]
        self.ranker = PPORanker(self.policy, k)

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """Slates (B, K) of the policy with its share set per :attr:`mode`."""
        if self.mode == "hidden":
            self._hidden = th.as_tensor(obs["critic_state"][:, _RHO] < RHO_EDGE, dtype=th.float32)
        return self.ranker.act(obs)


def analyse(run: Path, against: Path | None = None, sessions: int | None = None, batch: int = 500,
            bootstrap: int = 2000) -> dict[str, Any]:
    """The run's policy with its share as trained, off, hard and by the hidden type, on its held-out sessions.

    Args:
        run: A run directory trained with ``train.policy.cf_rule_base`` and evaluated (``report/returns.npz``).
        against: Another run evaluated on the same sessions, whose PPO joins the table (``None``: none).
        sessions: Play only the first this many sessions (``None``: all).
        batch: Users simulated at once.
        bootstrap: Resamples of the intervals.

    Returns:
        ``{"run", "sessions", "cf_sessions", "rows": {name: {"return", "cf", "content", "diff", "diff_cf",
        "diff_content"}}, "share_by_request": [{"request", "cf", "content"}]}``; each ``diff*`` is ``{"mean",
        "ci95"}`` against the run's PPO.

    Raises:
        ValueError: A run without the second base, other sessions, or a policy that does not replay its returns.
        FileNotFoundError: A report without ``returns.npz``.
    """
    from envs.factory import make_core
    from envs.presets import load_world

    cfg = load_run_config(run)
    if not cfg.env.obs_critic_state:
        raise ValueError(f"{run}'s env has no critic_state: the hidden-type row needs it (env.obs_critic_state)")
    plan, rets = report_returns(run / "report", ("ppo",))
    n = len(plan) if sessions is None else min(int(sessions), len(plan))
    if n < 1:
        raise ValueError(f"sessions must be >= 1, got {sessions}")
    plan = EpisodePlan(plan.keys[:n], plan.users[:n], plan.seeds[:n])
    rows: dict[str, np.ndarray] = {"PPO as trained (stored)": rets["ppo"][:n]}
    world = load_world(cfg.env, cfg.encoder, progress=False)
    core = make_core(cfg.env, cfg.env.preset, None, world, "heldout", min(batch, n))
    policy = load_policy(run, device="cpu", n_items=core.M)
    k = cfg.env.slate_size
    m = min(REPLAY_SESSIONS, n)
    replay = run_episodes(core, ShareRanker(policy, k), EpisodePlan(plan.keys[:m], plan.users[:m], plan.seeds[:m])).ret
    if not np.allclose(replay, rows["PPO as trained (stored)"][:m], rtol=1e-9, atol=1e-9):
        raise ValueError(f"{run}'s policy does not replay its stored returns (largest difference "
                         f"{float(np.abs(replay - rows['PPO as trained (stored)'][:m]).max()):.3g})")
    steps = cfg.env.max_steps
    total, seen = np.zeros((2, steps)), np.zeros((2, steps))  # per hidden side (CF-leaning, content) and request

    def tally(obs: dict[str, np.ndarray], slate: np.ndarray, feedback: Any, active: np.ndarray) -> None:
        assert trained.last_share is not None
        request = request_index(obs["context"][active], steps).clip(0, steps - 1)
        side = (obs["critic_state"][active, _RHO] >= RHO_EDGE).astype(np.int64)
        np.add.at(total, (side, request), trained.last_share[active])
        np.add.at(seen, (side, request), 1.0)

    trained = ShareRanker(policy, k, "trained")
    run_episodes(core, trained, plan, on_step=tally)
    labels = {"off": "share off (base A only)", "hard": "share hard (1 where the head's share > 1/2)",
              "hidden": "share by the hidden type (research)"}
    for mode, label in labels.items():
        rows[label] = run_episodes(core, ShareRanker(policy, k, mode), plan).ret
    if against is not None:
        other, other_rets = report_returns(against / "report", ("ppo",))
        if len(other) < n or not np.array_equal(other.keys[:n], plan.keys):
            raise ValueError(f"{against} was evaluated on other held-out sessions than {run}")
        rows[f"{against.name}'s PPO"] = other_rets["ppo"][:n]
    ref = rows["PPO as trained (stored)"]
    cf = world.populations["heldout"].rho[plan.users] < RHO_EDGE  # (E,)
    boot = Bootstrap(n, bootstrap, 0)
    out = {name: by_type_row(r, ref, boot, cf) for name, r in rows.items()}
    shares = [{"request": t + 1, "cf": float(total[0, t] / seen[0, t]), "content": float(total[1, t] / seen[1, t])}
              for t in range(min(steps, SHARE_REQUESTS)) if seen[0, t] > 0 and seen[1, t] > 0]
    return {"run": str(run), "sessions": n, "cf_sessions": int(cf.sum()), "rows": out, "share_by_request": shares}


class HeadReader(TypeClassifier):
    """A run's type head as a type switch's reader: its probability of a CF-leaning user, ``σ(−ℓ)``, per row."""

    def __init__(self, policy: SlatePolicy) -> None:
        if policy.type_net is None:
            raise ValueError("the policy has no type head to read the user's type with")
        self.policy, self.features, self.n_fit = policy, None, 0

    def read(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """float64 (B,) the head's probability of a CF-leaning user for each row."""
        pol = self.policy
        with th.no_grad():
            logit = pol._type_logit(pol._encode(pol._prepare(obs))[0])  # (B,)
        return th.sigmoid(-logit).double().cpu().numpy()


def install_rule(policy: SlatePolicy, rule: dict[str, float], threshold: float) -> SlatePolicy:
    """A copy of a policy trained without the second base, with rule B installed as that base after training.

    The share is hard: 1 where the type head reads a CF-leaning user with probability above ``threshold``, else 0
    (``ShareRanker``'s ``"trained"`` mode plays it as installed, ``"off"`` plays the run as trained). B's α is clipped
    into [0.02, 0.98] as ``train.policy.cf_rule_base`` clips it; the category cap is the policy's own.

    Args:
        policy: A policy with a type head, base ``"diverse"`` and the standardised gate, and no second base.
        rule: B's point of the diversity rule (``alpha``, ``lean_weight``, ``exposure_weight``, ``seen_weight``).
        threshold: The head's probability of a CF-leaning user above which B is the base, in (0, 1).

    Raises:
        ValueError: A policy that has the second base already or cannot take one, or a threshold outside (0, 1).
    """
    from agents.training import penalty_weights

    if policy.cf_rule_alpha is not None:
        raise ValueError("the policy was trained with its second base: analyse it without --install")
    if policy.type_net is None or policy.base != "diverse" or policy.gate != "standardised":
        raise ValueError("installing rule B needs a type head, base 'diverse' and the standardised gate "
                         "(configs/quality-adapt.yaml's policy)")
    if not 0.0 < float(threshold) < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    out = copy.deepcopy(policy)
    a0, b0 = out.init_alpha, float(np.clip(rule["alpha"], 0.02, 0.98))
    lean_a = 0.0 if out.lean_weight is None else float(out.lean_weight.detach())
    if out.lean_weight is None:  # A without a click-lean term: its weight is 0, B's moves it by the share
        out.lean_weight = nn.Parameter(th.zeros((), device=out.base_weights.device), requires_grad=False)
    out.cf_rule_alpha = b0
    out._cf_rule_alpha_shift = math.log(b0 / (1.0 - b0)) - math.log(a0 / (1.0 - a0))
    out._cf_rule_lean_shift = float(rule.get("lean_weight", 0.0)) - lean_a
    weights = th.as_tensor(penalty_weights(rule), dtype=out.base_weights.dtype, device=out.base_weights.device)
    out.register_buffer("cf_rule_weight_shift", weights - out.base_weights)
    center = math.log(threshold / (1.0 - threshold))
    out.cf_rule_share = (  # type: ignore[method-assign]
        lambda logit: None if logit is None else (-logit.detach() - center > 0).to(logit.dtype))
    return out


def install_screen(run: Path, thresholds: Sequence[float] = (0.9,), episodes: int = 4000, seed: int = SCREEN_SEED,
                   tune_seed: int = COMMON_REFERENCE[0], tune_episodes: int = COMMON_REFERENCE[1], batch: int = 500,
                   bootstrap: int = 2000) -> dict[str, Any]:
    """Rule B installed after training (:func:`install_rule`) in a run trained without it, on training users.

    Args:
        run: A finished run directory of a policy with a type head and no second base (``env.obs_critic_state``).
        thresholds: The hard share's thresholds, each a row.
        episodes: Training users' sessions.
        seed: Their session seed.
        tune_seed: The seed of the searches that give B (tuned-diverse's, then B's from its point).
        tune_episodes: Sessions per point of those searches.
        batch: Users simulated at once.
        bootstrap: Resamples of the intervals.

    Returns:
        ``{"run", "rule", "sessions", "cf_sessions", "seed", "rows": {name: by-type row}}``, each row's ``diff*``
        paired with the run as trained on the same sessions.

    Raises:
        ValueError: As :func:`install_rule`, a run without the critic's state, or an installed base that does not
            play as the run when its share is off.
    """
    from agents.registry import RankerContext, alpha_grid_kwargs
    from agents.tuning import diverse_ranker, tuning_cache_dir
    from envs.factory import make_core
    from envs.presets import load_world

    cfg = load_run_config(run)
    if not cfg.env.obs_critic_state:
        raise ValueError(f"{run}'s env has no critic_state: the hidden-type row needs it (env.obs_critic_state)")
    world = load_world(cfg.env, cfg.encoder, progress=False)
    core = make_core(cfg.env, cfg.env.preset, None, world, "train", min(batch, episodes))
    ctx = RankerContext(world, cfg.env, seed=tune_seed, tune_episodes=tune_episodes, batch=256,
                        cache_dir=str(tuning_cache_dir(cfg.env, cfg.encoder)), **alpha_grid_kwargs(cfg.eval.alpha_grid))
    rule = ctx.cf_rule_search()
    policy = load_policy(run, device="cpu", n_items=core.M)
    k = cfg.env.slate_size
    plan = episode_plan(episodes, [seed], world.populations["train"].size)
    trained = run_episodes(core, PPORanker(policy, k), plan).ret  # (E,)
    first = install_rule(policy, rule, float(thresholds[0]))
    off = run_episodes(core, ShareRanker(first, k, "off"), plan).ret
    if not np.allclose(off, trained, rtol=1e-9, atol=1e-9):
        raise ValueError(f"rule B installed with its share off does not play as {run}'s policy (largest difference "
                         f"{float(np.abs(off - trained).max()):.3g})")
    rows: dict[str, np.ndarray] = {"PPO as trained": trained}
    for p in thresholds:
        rows[f"B where the head reads CF-leaning above {p:g}"] = run_episodes(
            core, ShareRanker(install_rule(policy, rule, float(p)), k, "trained"), plan).ret
    rows["B by the hidden type (research)"] = run_episodes(core, ShareRanker(first, k, "hidden"), plan).ret
    a = diverse_ranker(k, world.catalog.category, ctx.diverse_search().best, name="tuned-diverse")
    for p in thresholds:
        rows[f"PPO where the head reads CF-leaning above {p:g}, tuned-diverse elsewhere"] = run_episodes(
            core, SwitchRanker(a, PPORanker(policy, k), HeadReader(policy), float(p)), plan).ret
    switch = ctx.switch_search()
    rows[f"the type switch (tuned-switch, threshold {switch.threshold:g})"] = run_episodes(core, switch.ranker,
                                                                                          plan).ret
    cf = world.populations["train"].rho[plan.users] < RHO_EDGE  # (E,)
    boot = Bootstrap(len(plan), bootstrap, 0)
    return {"run": str(run), "rule": rule, "sessions": len(plan), "cf_sessions": int(cf.sum()), "seed": seed,
            "rows": {name: by_type_row(r, trained, boot, cf) for name, r in rows.items()}}


def install_markdown(res: dict[str, Any]) -> str:
    """The installed rule's rows, paired with the run as trained."""
    rule = ", ".join(f"{k} {v:g}" for k, v in res["rule"].items())
    return "\n".join([f"{res['run']}: {res['sessions']} training users' sessions (seed {res['seed']}, "
                      f"{res['cf_sessions']} CF-leaning); rule B: {rule}", "",
                      *by_type_table(res["rows"], "PPO as trained")])


def markdown(res: dict[str, Any]) -> str:
    """One row per way of setting the share, and the mean share by request."""
    lines = [f"{res['run']}: {res['sessions']} held-out sessions ({res['cf_sessions']} CF-leaning)", "",
             *by_type_table(res["rows"], "PPO as trained")]
    share = "; ".join(f"{s['request']}: {s['cf']:.2f} / {s['content']:.2f}" for s in res["share_by_request"])
    lines += ["", f"Mean share of the CF-leaning users' rule by request, CF-leaning / content-leaning users: {share}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Print the table and the JSON."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path, help="a run trained with train.policy.cf_rule_base, evaluated")
    ap.add_argument("--against", type=Path, default=None, help="a run evaluated on the same sessions (its PPO a row)")
    ap.add_argument("--sessions", type=int, default=None, help="play only the first N sessions (default: all)")
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--bootstrap", type=int, default=2000)
    ap.add_argument("--install", action="store_true",
                    help="a run trained without the second base: install rule B after training (training users)")
    ap.add_argument("--thresholds", type=comma_numbers, default=[0.9],
                    help="with --install: the hard share's thresholds, comma-separated (default 0.9)")
    ap.add_argument("--episodes", type=int, default=4000, help="with --install: training users' sessions")
    ap.add_argument("--seed", type=int, default=SCREEN_SEED, help="with --install: their session seed")
    ap.add_argument("--tune-seed", type=int, default=COMMON_REFERENCE[0], help="with --install: B's search seed")
    ap.add_argument("--tune-episodes", type=int, default=COMMON_REFERENCE[1],
                    help="with --install: sessions per point of B's search")
    args = ap.parse_args(argv)
    if args.install:
        if args.against is not None or args.sessions is not None:
            ap.error("--against and --sessions read held-out reports; --install plays training users")
        return print_analysis(ap, lambda: install_screen(args.run, args.thresholds, args.episodes, args.seed,
                                                         args.tune_seed, args.tune_episodes, args.batch,
                                                         args.bootstrap), install_markdown)
    return print_analysis(ap, lambda: analyse(args.run, args.against, args.sessions, args.batch, args.bootstrap),
                          markdown)


if __name__ == "__main__":
    main()
