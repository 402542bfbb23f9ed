"""Where does a reading of the taste know it: over the bulk of a request's candidates, or at the top?

``python -m bench.top_reading --preset default --seed 0 --episodes 500 --json F`` plays one seed's held-out
sessions with tuned-diverse (as ``bench.term_probe`` does) and scores every request's candidates by readings of the
user's true taste (semantic + static, standardised over the request: ``term_probe``'s ``taste``):

* ``blend``: tuned-diverse's own standardised blend of the two signals (what the rule already weighs);
* ``observed``: the observation's best linear reading of the taste (``term_probe``'s ``observed-taste``, fitted with
  the hidden taste as target on the same fresh training sessions, so the same weights);
* ``noisy:σ``: the true taste through an independent error of size σ (``term_probe``'s ``noisy-taste:σ``); on the
  default preset σ 0.7 has the observed reading's R² (session 42);
* ``taste``: the truth itself (every figure at its maximum: the scale).

For each it reports the R² with the taste over all candidates; the part of the taste it explains *beyond the blend*
(partial R²: the taste and the reading both residualised on the blend) over all candidates and among the blend's
top ``--top`` candidates (where the rule picks its slate); and, added to the blend (``z(blend) + β·reading``, the
form every ``term_probe --retune`` ranker has), the true taste (z) of the K best-scored candidates and their overlap
with the taste's own top K (K the slate size). Session 42 found the observed reading worth nothing to the best
hand-written ranker while an independent error of the same R² is worth 1.09–1.17×, and named "it fits the bulk, not
the top" as a likely reason without measuring it: this measures it. The last line is the JSON summary.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from agents.base import Ranker
from agents.evaluation import episode_plan, run_episodes
from agents.rankers import DiverseRanker, z_rows
from agents.tuning import TUNE_SEED, VALIDATION_FACTOR, diverse_ranker
from bench.term_probe import (
    FIT_SEED_OFFSET,
    Term,
    finish_summary,
    fit_observed_taste,
    heldout_setup,
    hidden_term,
    noisy_taste_term,
    observed_taste_term,
)
from configs.schema import ConfigError
from envs.core import BatchedCore
from envs.factory import make_core

#: β of ``z(blend) + β·reading`` whose top K is scored (0: the blend alone).
BETAS: tuple[float, ...] = (0.5, 1.0, 2.0)


@dataclass
class _Pooled:
    """Sums over candidates (all readings standardised per request, so uncentred sums are covariances) of the
    taste ``t``, the blend ``b`` and one reading ``x``: what the pooled R² and the partial R² beyond ``b`` need."""

    s: dict[str, float] = field(default_factory=lambda: dict.fromkeys(("tt", "xx", "bb", "tx", "tb", "xb"), 0.0))

    def add(self, t: np.ndarray, x: np.ndarray, b: np.ndarray) -> None:
        for key, (u, v) in {"tt": (t, t), "xx": (x, x), "bb": (b, b), "tx": (t, x), "tb": (t, b),
                            "xb": (x, b)}.items():
            self.s[key] += float(np.sum(u * v))

    def r2(self) -> float:
        """The squared correlation of the reading with the taste."""
        s = self.s
        return s["tx"] ** 2 / (s["tt"] * s["xx"]) if s["tt"] > 0 and s["xx"] > 0 else 0.0

    def partial_r2(self) -> float:
        """The squared partial correlation of the reading with the taste given the blend (0 for the blend)."""
        s = self.s
        if s["bb"] <= 0:
            return self.r2()
        tt, xx = s["tt"] - s["tb"] ** 2 / s["bb"], s["xx"] - s["xb"] ** 2 / s["bb"]
        tx = s["tx"] - s["tb"] * s["xb"] / s["bb"]
        return tx**2 / (tt * xx) if tt > 1e-9 * s["tt"] and xx > 1e-9 * s["xx"] else 0.0


def _centred_rows(x: np.ndarray) -> np.ndarray:
    return x - x.mean(axis=1, keepdims=True)


class _TopRecorder(Ranker):
    """Plays ``base`` and, at every request, scores the candidates by each reading (see the module's text).

    Every row is recorded: the rows that idle at the plan's tail replay real sessions of the same population, so
    they are valid requests too (as ``bench.term_probe``'s fit records them)."""

    def __init__(self, base: DiverseRanker, core: BatchedCore, readings: dict[str, Term], top: int) -> None:
        super().__init__(base.k)
        self.base, self.readings, self.top, self.name = base, readings, top, f"{base.name} (recording)"
        self.taste = hidden_term(core, "semantic", "static")
        self.all = {name: _Pooled() for name in ["blend", *readings]}
        self.at_top = {name: _Pooled() for name in ["blend", *readings]}
        self.topk: dict[str, dict[float | str, list[float]]] = {
            name: {key: [0.0, 0.0] for key in (*BETAS, "alone")} for name in readings}  # [Σ true z, Σ overlap]
        self.blend_topk = [0.0, 0.0]
        self.requests = 0

    def reset(self, rows: np.ndarray, obs: dict[str, np.ndarray]) -> None:
        self.base.reset(rows, obs)

    def _topk(self, score: np.ndarray, t: np.ndarray, best: np.ndarray, acc: list[float]) -> None:
        k = self.k
        idx = np.argpartition(-score, k - 1, axis=1)[:, :k]
        acc[0] += float(np.take_along_axis(t, idx, axis=1).mean(axis=1).sum())
        acc[1] += float((np.sort(idx, axis=1)[:, :, None] == best[:, None, :]).any(axis=2).mean(axis=1).sum())

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        t = self.taste(obs)  # (B, N), standardised per request
        b = z_rows(self.base.blend(obs))
        k = self.k
        best = np.sort(np.argpartition(-t, k - 1, axis=1)[:, :k], axis=1)
        top = np.argpartition(-b, self.top - 1, axis=1)[:, :self.top]  # the blend's top candidates
        t_top, b_top = (_centred_rows(np.take_along_axis(v, top, axis=1)) for v in (t, b))
        values = {"blend": b, **{name: term(obs) for name, term in self.readings.items()}}
        for name, x in values.items():
            self.all[name].add(t, x, b)
            self.at_top[name].add(t_top, _centred_rows(np.take_along_axis(x, top, axis=1)), b_top)
            if name == "blend":
                self._topk(b, t, best, self.blend_topk)
                continue
            for beta in BETAS:
                self._topk(b + beta * x, t, best, self.topk[name][beta])
            self._topk(x, t, best, self.topk[name]["alone"])
        self.requests += len(t)
        return self.base.act(obs)

    def update(self, obs: dict[str, np.ndarray], slate: np.ndarray, feedback: Any) -> None:
        self.base.update(obs, slate, feedback)

    def summary(self) -> dict[str, Any]:
        """Per reading: ``r2``, ``partial_r2`` (beyond the blend), the same among the blend's top candidates, and
        per β (and ``alone``) the mean true z of the top K and their overlap with the taste's top K."""
        n = max(self.requests, 1)
        out: dict[str, Any] = {}
        for name in self.all:
            row: dict[str, Any] = {"r2": self.all[name].r2(), "partial_r2": self.all[name].partial_r2(),
                                   "r2_top": self.at_top[name].r2(), "partial_r2_top": self.at_top[name].partial_r2()}
            if name == "blend":
                row["topk"] = {"0": {"true_z": self.blend_topk[0] / n, "overlap": self.blend_topk[1] / n}}
            else:
                row["topk"] = {str(key): {"true_z": acc[0] / n, "overlap": acc[1] / n}
                               for key, acc in self.topk[name].items()}
            out[name] = row
        return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Fit the observed reading, play the held-out sessions, print the table and the JSON summary (last line)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default=None,
                    help="preset name or calibrated preset folder (default: the config's env.preset, else default)")
    ap.add_argument("--config", default=None, help="config file (its eval and tuning settings)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the sessions and of tuned-diverse's tuning")
    ap.add_argument("--episodes", type=int, default=500, help="held-out sessions recorded")
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--sigmas", default="0.7", help="comma-separated σ of the noisy readings (default 0.7)")
    ap.add_argument("--top", type=int, default=20, help="the blend's top candidates of the partial R² at the top")
    ap.add_argument("--tune-episodes", type=int, default=400,
                    help="as bench.term_probe's: the observed reading is fitted on 5× as many fresh training sessions")
    ap.add_argument("--json", type=Path, default=None, help="also write the summary to this file, atomically")
    args = ap.parse_args(argv)
    if args.json is not None and not args.json.parent.is_dir():
        ap.error(f"--json: folder {str(args.json.parent)!r} does not exist")
    try:
        sigmas = [float(s) for s in args.sigmas.split(",") if s.strip()]
    except ValueError:
        ap.error(f"--sigmas: not a comma-separated list of numbers: {args.sigmas!r}")
    if not sigmas or any(not np.isfinite(s) or s < 0 for s in sigmas):
        ap.error(f"--sigmas: finite numbers >= 0, got {args.sigmas!r}")
    if args.episodes < 1 or args.batch < 1 or args.tune_episodes < 2:
        ap.error("--episodes and --batch must be >= 1 and --tune-episodes >= 2")
    try:
        cfg, world, core, plan, ctx = heldout_setup(args.config, args.preset, args.seed, args.episodes, args.batch)
    except ConfigError as exc:
        ap.error(str(exc))
    if not core.K <= args.top <= core.N:
        ap.error(f"--top must be in {core.K}..{core.N} (the slate size to the request's candidates), got {args.top}")
    point = ctx.diverse_search().best
    base = diverse_ranker(cfg.env.slate_size, world.catalog.category, point, name="tuned-diverse")
    fit_plan = episode_plan(VALIDATION_FACTOR * args.tune_episodes, [args.seed + TUNE_SEED + FIT_SEED_OFFSET],
                            world.populations["train"].size)
    train_core = make_core(cfg.env, cfg.env.preset, cfg.encoder, world, "train", args.batch)
    w, fit = fit_observed_taste(train_core, base, fit_plan)
    readings: dict[str, Term] = {"observed": observed_taste_term(w),
                                 **{f"noisy:{s:g}": noisy_taste_term(core, s) for s in sigmas},
                                 "taste": hidden_term(core, "semantic", "static")}
    rec = _TopRecorder(base, core, readings, args.top)
    run_episodes(core, rec, plan)
    table = rec.summary()
    print(f"tuned-diverse {point}; the observed reading's fit: R² {fit['r2']:.3f} on {fit['candidates']:,} training "
          f"candidates; {rec.requests:,} held-out requests of {len(plan)} sessions, K = {core.K}, top {args.top}")
    head = " | ".join(f"top {core.K} of blend + {b:g}·x: true z, overlap" for b in BETAS)
    print(f"| reading | R² | partial R² beyond the blend | R² in the blend's top {args.top} | partial R² there | "
          f"top {core.K} alone: true z, overlap | {head} |")
    for name, row in table.items():
        cells = [f"{row[key]:.3f}" for key in ("r2", "partial_r2", "r2_top", "partial_r2_top")]
        tk = row["topk"]
        if name == "blend":  # its own top K (blend + β·blend is the blend)
            cells += [f"{tk['0']['true_z']:.2f}, {tk['0']['overlap']:.2f}"] + ["—"] * len(BETAS)
        else:
            cells += [f"{c['true_z']:.2f}, {c['overlap']:.2f}" for c in [tk["alone"], *(tk[str(b)] for b in BETAS)]]
        print(f"| {name} | " + " | ".join(cells) + " |")
    out = {"preset": cfg.env.preset, "seed": args.seed, "episodes": len(plan), "requests": rec.requests,
           "top": args.top, "k": core.K, "tuned_diverse": point, "observed_fit": {"r2": fit["r2"],
           "r2_blend": fit["r2_blend"], "candidates": fit["candidates"]}, "readings": table}
    return finish_summary(out, args.json)


if __name__ == "__main__":
    main()
