"""Does a first slate made to tell the user's type apart pay for itself? (issue #13, session 54)

Session 53 found `adapt`'s remaining headroom in the first requests: a policy told each user's type from the second
request on keeps most of what being told from the first is worth, while the session's own reading of the type is
66–74% right there. What the first click says of the type depends on the first slate: a slate of items that both
user types like (tuned-diverse's blend) makes the click say little; a **mixed slate**, the best items of each
type's own rule interleaved, makes which half is clicked say which type the user is. This bench measures both
sides of that trade with hand-written rules, on the preset's held-out sessions:

1. the rules: ``tuned-diverse`` (A), the best diversity-heuristic point of the CF-leaning users (B) and of the
   content-leaning ones (C) (``bench.headroom.diverse_by_group`` with one edge at ρ = 0.5, on training users);
2. per variant, a first request (the rule's own slate, or the mixed slate: B's and C's slates interleaved, B's
   first, each item once) followed by a **switch** (``bench.type_switch``): the default rule (A, or C) or B on
   the requests whose type classifier reads a CF-leaning user above a threshold. The classifier is fitted on
   training users' requests played by that variant's first request and default rule, the threshold chosen on
   training sessions; so each variant reads the type as well as a logistic rule can after its own first slate;
3. the type classifier's accuracy at each of the first requests on the held-out sessions, played by the variant's
   first request and default rule without the switch, as the classifier was fitted (the reading the mixed slate is
   for), and each variant's return against tuned-diverse, split by hidden type (common random numbers);
4. with ``--runs RUN [RUN ...]`` (trained runs of the preset): PPO − the best variant paired on the runs' own
   held-out sessions.

``python -m bench.probe_first --preset adapt`` prints a table; the last line is a JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from agents.base import Feedback, Ranker
from agents.evaluation import episode_plan, run_episodes
from agents.report import Bootstrap
from agents.tuning import TUNE_SEED, diverse_ranker
from agents.type_switch import (
    FIT_SEED_OFFSET,
    RHO_EDGE,
    THRESHOLDS,
    SwitchRanker,
    TypeClassifier,
    fit_classifier,
    played_requests,
    request_index,
)
from bench.env_throughput import config_and_world
from bench.headroom import add_world_args
from bench.type_switch import (
    by_type_cells,
    by_type_row,
    checked_runs_plan,
    ppo_against,
    print_ppo_against,
    type_rules,
)
from envs.factory import make_core
from envs.spaces import C_LAST_CLICK, CONTEXT_NAMES

#: Requests (1-based) at which the type classifier's accuracy is reported.
READ_AT: tuple[int, ...] = (1, 2, 3, 4, 5, 10)


def interleave(first: np.ndarray, second: np.ndarray, k: int) -> np.ndarray:
    """Two rankings of each row's candidates merged turn about, ``first``'s first, each candidate once.

    Args:
        first: int (B, K) a slate per row (positions into the row's candidates).
        second: int (B, K) another.
        k: Slate size K.

    Returns:
        int64 (B, K): ``first[0], second[0], first[1], …`` with a candidate already taken skipped (the next one of
        the same ranking fills in), so each row's K positions are distinct.
    """
    out = np.empty((len(first), k), np.int64)
    for row in range(len(first)):
        taken: list[int] = []
        queues = [list(first[row]), list(second[row])]
        turn = 0
        while len(taken) < k:
            queue = queues[turn] if queues[turn] else queues[1 - turn]
            item = int(queue.pop(0))
            if item not in taken:
                taken.append(item)
                turn = 1 - turn
        out[row] = taken
    return out


class FirstRequest(Ranker):
    """``rule``'s slates, except at each session's first request: the mixed slate of ``first`` and ``second``.

    Args:
        rule: The rule of every later request.
        first: The ranking whose items open the mixed slate (the CF-leaning users' rule B).
        second: The other (the content-leaning users' rule C).
        max_steps: The session length T (the first request is the one whose ``t_frac`` reads request 1).
        name: Display name.
    """

    def __init__(self, rule: Ranker, first: Ranker, second: Ranker, max_steps: int, name: str) -> None:
        super().__init__(rule.k)
        self.rule, self.first, self.second, self.max_steps, self.name = rule, first, second, max_steps, name

    def reset(self, rows: np.ndarray, obs: dict[str, np.ndarray]) -> None:
        """Pass the new sessions on to the later requests' rule."""
        self.rule.reset(rows, obs)

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """int64 (B, K): the mixed slate on rows at their first request, ``rule``'s on the others."""
        slate = self.rule.act(obs)
        opening = request_index(obs["context"], self.max_steps) == 0  # (B,)
        if opening.any():
            sub = {key: v[opening] for key, v in obs.items()}
            slate[opening] = interleave(self.first.act(sub), self.second.act(sub), self.k)
        return slate

    def update(self, obs: dict[str, np.ndarray], slate: np.ndarray, feedback: Feedback) -> None:
        """Pass the feedback on to the later requests' rule."""
        self.rule.update(obs, slate, feedback)


def accuracy_by_request(classifier: TypeClassifier, x: np.ndarray, cf: np.ndarray, t: np.ndarray) -> dict[str, float]:
    """The classifier's share of requests whose type it reads right (probability 0.5), at each of :data:`READ_AT`."""
    right = (classifier.proba(x) > 0.5) == cf
    return {str(r): float(right[t == r - 1].mean()) for r in READ_AT if (t == r - 1).any()}


def first_click_share(x: np.ndarray, t: np.ndarray) -> float:
    """The share of sessions whose first slate got a click, among those that reached a second request: the
    ``last_click`` context column of :func:`agents.type_switch.type_features` (whose rows end with the context and the
    click lean) at request 2."""
    context_start = x.shape[1] - len(CONTEXT_NAMES) - 1
    return float(x[t == 1, context_start + C_LAST_CLICK].mean())


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the bench; print the table and the JSON summary (last line)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_world_args(ap, preset="adapt")
    ap.add_argument("--fit-episodes", type=int, default=3000, help="training sessions each classifier is fitted on")
    ap.add_argument("--runs", nargs="+", type=Path, default=[], metavar="RUN",
                    help="trained runs of the preset: PPO − the best variant paired on their held-out sessions")
    args = ap.parse_args(argv)
    for flag in ("episodes", "tune_episodes", "fit_episodes"):
        if getattr(args, flag) < 1:
            ap.error(f"--{flag.replace('_', '-')} must be at least 1, got {getattr(args, flag)}")
    full, world = config_and_world(ap, args, progress=True)
    cfg = full.env
    try:  # refuse bad runs before the minutes of tuning
        runs_sessions = checked_runs_plan(args.runs, cfg.preset, world.populations["heldout"].size)
    except ValueError as exc:
        ap.error(str(exc))
    k, category, steps = cfg.slate_size, world.catalog.category, cfg.max_steps
    points = type_rules(world, full, args.seed, args.tune_episodes)
    tune_seed = args.seed + TUNE_SEED
    rules = {name: diverse_ranker(k, category, points[name], name=label)
             for name, label in (("A", "tuned-diverse"), ("B", "rule B (ρ<0.5's)"), ("C", "rule C (ρ≥0.5's)"))}

    train_core = make_core(cfg, cfg.preset, None, world, "train", min(args.batch, 256))
    core = make_core(cfg, cfg.preset, None, world, "heldout", args.batch)
    n_train = world.populations["train"].size
    fit_plan = episode_plan(args.fit_episodes, [tune_seed + FIT_SEED_OFFSET], n_train)
    tune_plan = episode_plan(args.tune_episodes, [tune_seed], n_train)
    plan = episode_plan(args.episodes, [args.seed], world.populations["heldout"].size)

    played: dict[str, Ranker] = {"tuned-diverse": rules["A"]}
    reading: dict[str, dict[str, Any]] = {}
    for default in ("A", "C"):
        for opening in ("own", "mixed"):
            print(f"variant: {opening} first, switch {default}/B", file=sys.stderr, flush=True)
            rule = rules[default]
            base = rule if opening == "own" else FirstRequest(rule, rules["B"], rules["C"], steps,
                                                             name=f"mixed first, then {default}")
            classifier = fit_classifier(train_core, base, fit_plan)
            label = f"{opening} first, switch {default}/B"
            tuning = {p: float(run_episodes(train_core, _switched(base, rules, default, classifier, p),
                                            tune_plan).ret.mean()) for p in THRESHOLDS}
            best = max(THRESHOLDS, key=lambda p: tuning[p])
            played[label] = _switched(base, rules, default, classifier, best)
            played[label].name = label
            x, cf_rows, t = played_requests(core, base, plan)
            reading[label] = {"threshold": best, "tuning": {str(p): v for p, v in tuning.items()},
                              "accuracy": accuracy_by_request(classifier, x, cf_rows, t),
                              "first_click": first_click_share(x, t)}
    played["mixed first, then tuned-diverse"] = FirstRequest(rules["A"], rules["B"], rules["C"], steps,
                                                             name="mixed first, then tuned-diverse")

    stats = {name: run_episodes(core, r, plan, progress=True, desc=name) for name, r in played.items()}
    ref = stats["tuned-diverse"].ret
    cf = stats["tuned-diverse"].rho < RHO_EDGE
    boot = Bootstrap(len(plan), 2000, args.seed)
    rows: dict[str, Any] = {}
    print(f"{'ranker':32s} {'return':>7s} {'ρ<0.5':>7s} {'ρ≥0.5':>7s}  − tuned-diverse: all, ρ<0.5, ρ≥0.5 (95%)"
          f"   type read right at request {', '.join(map(str, READ_AT))}")
    for name, s in stats.items():
        rows[name] = figs = {**by_type_row(s.ret, ref, boot, cf), **reading.get(name, {})}
        cells = by_type_cells(figs)
        acc = " ".join(f"{v:.0%}" for v in figs.get("accuracy", {}).values())
        acc += f"   first slate clicked {figs['first_click']:.0%}" if "first_click" in figs else ""
        print(f"{name:32s} {figs['return']:7.3f} {figs['cf']:7.3f} {figs['content']:7.3f}  {cells}   {acc}")
    summary: dict[str, Any] = {"preset": args.preset, "rules": points, "heldout": rows, "sessions": len(plan),
                               "cf_share": float(cf.mean())}
    if runs_sessions is not None:
        best_name = max(reading, key=lambda n: rows[n]["return"])
        on_runs = run_episodes(core, played[best_name], runs_sessions)
        summary["runs"] = {"against": best_name, "rule_return": float(on_runs.ret.mean()),
                           **ppo_against(on_runs.ret, runs_sessions, args.runs, on_runs.rho < RHO_EDGE,
                                         seed=args.seed)}
        print(f"\nPPO − {best_name!r} on the runs' {len(runs_sessions)} held-out sessions (rule "
              f"{on_runs.ret.mean():.3f}): all, ρ<0.5, ρ≥0.5 (95%)")
        print_ppo_against(summary["runs"], width=32)
    print(json.dumps(summary))
    return summary


def _switched(base: Ranker, rules: dict[str, Ranker], default: str, classifier: TypeClassifier,
              threshold: float) -> Ranker:
    """``base``'s first request (its own rule's, or the mixed slate), then the switch between ``default`` and B."""
    switch = SwitchRanker(rules[default], rules["B"], classifier, threshold)
    if isinstance(base, FirstRequest):
        return FirstRequest(switch, base.first, base.second, base.max_steps, name=base.name)
    return switch


if __name__ == "__main__":
    main()
