"""Would a category cap that follows the session help tuned-diverse? Paired probes on one population.

``python -m bench.cap_probe --preset presets/ml`` ranks the same sessions with tuned-diverse (tuned on the training
users, ``agents/tuning.py``, the search cached beside the world) and with variants of its category cap that a
learned policy could express only with a state-dependent cap (session 16):

* ``soft=μ``: the cap becomes a penalty: a candidate whose category already fills ``cap`` (or more) slots of the
  slate loses ``μ·(count − cap + 1)`` standardised units instead of being skipped, so a clearly better item can
  take a second slot;
* ``relax=r`` (with ``thresh=t``): a category whose observed decayed clicks (``cat_clicks``) exceed ``t`` may take
  ``cap + r`` slots: the clicked categories get room;
* ``bonus=ν``: ``ν·cat_clicks`` is added to the score (the opposite sign of ``bench.term_probe``'s ``cat_clicks``).

Variants combine (``relax=1,bonus=0.5``). Everything reads the observation only. ``--users train`` measures on
training users (where the variants would be chosen), ``heldout`` on the held-out ones. The last line is a JSON
object with every paired difference.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import numpy as np

from agents.evaluation import episode_plan, run_episodes
from agents.final_report import tuning_context
from agents.rankers import DiverseRanker
from agents.report import Bootstrap, paired_test
from agents.tuning import diverse_ranker
from configs.loader import resolve_config
from configs.schema import ConfigError
from envs.factory import make_core
from envs.presets import load_world
from envs.spaces import F_CAT_CLICKS

#: The variants measured by default (session 16, BENCHMARKS.md).
DEFAULT_VARIANTS = ("soft=0.5", "soft=1", "soft=2", "soft=4", "relax=1", "relax=1,thresh=0.5", "relax=2",
                    "bonus=0.25", "bonus=0.5", "bonus=1", "relax=1,bonus=0.5")
#: A variant's keys (:class:`CapVariantRanker`'s arguments; their defaults give tuned-diverse's slates).
KEYS = ("soft", "relax", "thresh", "bonus")
#: The evaluation seed offset of the training users' sessions (not the tuning's sessions).
TRAIN_SESSIONS_OFFSET = 101


class CapVariantRanker(DiverseRanker):
    """tuned-diverse with a session-dependent category cap (see the module's text).

    Args:
        base: The heuristic whose blend, penalties and cap are kept.
        soft: μ of the soft cap (``inf``: the hard cap, skipped unless nothing else is left).
        relax: Extra slots for a category with ``cat_clicks > thresh``.
        thresh: The clicks threshold of ``relax``.
        bonus: ν of ``ν·cat_clicks`` added to the score.
    """

    def __init__(self, base: DiverseRanker, soft: float = float("inf"), relax: float = 0.0, thresh: float = 0.0,
                 bonus: float = 0.0) -> None:
        super().__init__(base.k, base.alpha, base.category, base.exposure_weight, base.seen_weight, base.cap,
                         name=base.name, lean_weight=base.lean_weight)
        self.soft, self.relax, self.thresh, self.bonus = float(soft), int(relax), float(thresh), float(bonus)

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """Greedy top-K under the variant's cap: int64 (B, K)."""
        clicks = obs["features"][:, :, F_CAT_CLICKS].astype(np.float64)  # (B, N)
        cap = self.cap + self.relax * (clicks > self.thresh)  # (B, N) the cap of each candidate's category
        return self.greedy(self.penalised(obs) + self.bonus * clicks, self.category[obs["candidates"]], cap,
                           self.soft)


def parse_variant(text: str) -> dict[str, float]:
    """``"relax=1,thresh=0.5"`` → ``{"relax": 1.0, "thresh": 0.5}``.

    Raises:
        ValueError: An unknown key, a value that is not a number, a negative value or an empty variant (named).
    """
    out: dict[str, float] = {}
    for part in (p.strip() for p in text.split(",")):
        key, sep, value = (x.strip() for x in part.partition("="))
        if not sep or key not in KEYS:
            raise ValueError(f"variant {text!r}: {part!r} is not KEY=VALUE with KEY one of {', '.join(KEYS)}")
        try:
            v = float(value)
        except ValueError:
            raise ValueError(f"variant {text!r}: {value!r} is not a number") from None
        if not v >= 0 or (key == "relax" and v != int(v)):
            raise ValueError(f"variant {text!r}: {key} must be >= 0{' and whole' if key == 'relax' else ''}")
        out[key] = v
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Measure the variants; print a line each and a JSON summary."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="default", help="preset name or calibrated preset folder")
    ap.add_argument("--config", default=None, help="train.py config (its references' tuning settings)")
    ap.add_argument("--seed", type=int, default=0, help="training seed whose tuned-diverse search is used")
    ap.add_argument("--users", choices=("train", "heldout"), default="train", help="population of the sessions")
    ap.add_argument("--episodes", type=int, default=2000, help="sessions (paired across variants)")
    ap.add_argument("--batch", type=int, default=256, help="users simulated at once")
    ap.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS), help="e.g. soft=1 relax=1,thresh=0.5")
    args = ap.parse_args(argv)
    if args.episodes < 2 or args.batch < 1:
        ap.error(f"--episodes must be >= 2 and --batch >= 1, got {args.episodes} and {args.batch}")
    try:
        variants = [(v, parse_variant(v)) for v in args.variants]
    except ValueError as exc:
        ap.error(str(exc))
    try:
        cfg = resolve_config(args.config, args.preset, [f"train.seed={args.seed}"])
    except ConfigError as exc:
        ap.error(str(exc))
    world = load_world(cfg.env, cfg.encoder)
    core = make_core(cfg.env, cfg.env.preset, cfg.encoder, world, args.users, args.batch)
    offset = 0 if args.users == "heldout" else TRAIN_SESSIONS_OFFSET
    plan = episode_plan(args.episodes, [args.seed + offset], world.populations[args.users].size)
    point = tuning_context(cfg, world, core, progress=False).diverse_search().best
    base = diverse_ranker(cfg.env.slate_size, world.catalog.category, point, name="tuned-diverse")
    ref = run_episodes(core, base, plan).ret
    boot = Bootstrap(len(plan), 1000, args.seed)
    out: dict[str, Any] = {"preset": args.preset, "users": args.users, "tuned_diverse": point,
                           "tuned_diverse_return": float(ref.mean()), "episodes": len(plan), "variants": {}}
    print(f"tuned-diverse {point}: {ref.mean():.3f} on {len(plan)} {args.users} sessions", flush=True)
    for text, params in variants:
        ret = run_episodes(core, CapVariantRanker(base, **params), plan).ret
        test = paired_test(ret, ref, boot)
        out["variants"][text] = {"return": float(ret.mean()), **test}
        print(f"  {text:<22} {ret.mean():.3f}, paired {test['diff']:+.3f} "
              f"(95% CI {test['ci95'][0]:+.3f} to {test['ci95'][1]:+.3f})", flush=True)
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
