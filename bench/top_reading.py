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
with the taste's own top K (K the slate size). Beside these scores, each reading's *slate* is measured on the same
requests: tuned-diverse with the reading added (β 1, its other parameters tuned-diverse's) picks a slate, with its
penalties and category cap, as does each trained policy of ``--runs`` (its mode slate), and the mean true taste of
the slate's items, and their mean true utility (the taste less this moment's fatigue and repeat penalties), are
reported beside those of the slate tuned-diverse shows (every shadow ranker is told the played
sessions' feedback, as the played ranker is). Session 42 found the observed reading worth nothing to the best
hand-written ranker while an independent error of the same R² is worth 1.09–1.17×, and named "it fits the bulk, not
the top" as a likely reason without measuring it: this measures it. The last line is the JSON summary.

``python -m bench.top_reading --figure runs/s43/top-s*.json --worth runs/s42/voi-s*.json --out PNG`` puts each
reading's worth to the best hand-written ranker (from ``bench.term_probe --retune --json`` files of the same seeds:
``taste``, ``noisy-taste:σ``, ``observed-taste``) against what it knows, twice: by its R² with the taste over all
candidates, and by its partial R² beyond the blend among the blend's top candidates (where the slate is picked). The
PNG is written atomically.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from agents.base import Ranker
from agents.evaluation import run_episodes
from agents.rankers import DiverseRanker, z_rows
from agents.registry import load_run
from agents.tuning import diverse_ranker
from bench.information_curve import Point, read_points
from bench.term_probe import (
    UTILITY_SIGN,
    Term,
    TermDiverseRanker,
    finish_summary,
    fit_observed_taste,
    fit_sessions,
    heldout_setup,
    hidden_term,
    noisy_taste_term,
    observed_taste_term,
    policy_core,
)
from configs.fileio import atomic_write_bytes, figure_png
from configs.schema import ConfigError
from envs.core import BatchedCore

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

    def __init__(self, base: DiverseRanker, core: BatchedCore, readings: dict[str, Term], top: int,
                 shadows: dict[str, Ranker] | None = None) -> None:
        super().__init__(base.k)
        self.base, self.readings, self.top, self.name = base, readings, top, f"{base.name} (recording)"
        self.shadows = dict(shadows or {})  # rankers that pick a slate on the same requests, never played
        # Σ over requests of the slate's mean true taste (z) and mean true utility (z: the taste less the fatigue
        # and repeat penalties of this moment, what the user's choice weighs)
        self.slate_z = {name: [0.0, 0.0] for name in ["played", *self.shadows]}
        self.utility = hidden_term(core, *UTILITY_SIGN)
        self.taste = hidden_term(core, "semantic", "static")
        self.all = {name: _Pooled() for name in ["blend", *readings]}
        self.at_top = {name: _Pooled() for name in ["blend", *readings]}
        self.topk: dict[str, dict[float | str, list[float]]] = {
            name: {key: [0.0, 0.0] for key in (*BETAS, "alone")} for name in readings}  # [Σ true z, Σ overlap]
        self.blend_topk = [0.0, 0.0]
        self.requests = 0

    def reset(self, rows: np.ndarray, obs: dict[str, np.ndarray]) -> None:
        self.base.reset(rows, obs)
        for shadow in self.shadows.values():
            shadow.reset(rows, obs)

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
        slate = self.base.act(obs)
        u = self.utility(obs) if self.shadows else None
        for name, picked in (("played", slate), *((n, r.act(obs)) for n, r in self.shadows.items())):
            acc = self.slate_z[name]
            acc[0] += float(np.take_along_axis(t, picked, axis=1).mean(axis=1).sum())
            if u is not None:
                acc[1] += float(np.take_along_axis(u, picked, axis=1).mean(axis=1).sum())
        return slate

    def update(self, obs: dict[str, np.ndarray], slate: np.ndarray, feedback: Any) -> None:
        self.base.update(obs, slate, feedback)
        for shadow in self.shadows.values():
            shadow.update(obs, slate, feedback)

    def summary(self) -> dict[str, Any]:
        """Per reading: ``r2``, ``partial_r2`` (beyond the blend), the same among the blend's top candidates, and
        per β (and ``alone``) the mean true z of the top K and their overlap with the taste's top K; under
        ``"slates"``, the mean true taste (``true_z``) and true utility (``utility_z``, with shadow rankers only) of
        the slate each ranker picks (``"played"``: tuned-diverse's), both standardised over the request."""
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
        out["slates"] = {name: {"true_z": z / n, "utility_z": uz / n} for name, (z, uz) in self.slate_z.items()}
        return out


@dataclass(frozen=True)
class Known:
    """One reading on one seed's sessions: what it knows of the taste and what it is worth."""

    source: str  # "seed S"
    name: str  # "taste", "noisy:σ" or "observed"
    r2: float  # with the taste over all candidates
    partial_r2_top: float  # beyond the blend, among the blend's top candidates
    worth: Point  # bench.term_probe's ratio to tuned-diverse and its paired interval


def match_worth(top_files: list[str], worth_files: list[str]) -> list[Known]:
    """Pair each reading of ``top_files`` (this module's summaries) with its worth in ``worth_files``
    (``bench.term_probe --retune --json`` summaries) on the same seed: ``taste`` with ``taste``, ``noisy:σ`` with
    ``noisy-taste:σ`` (independent error), ``observed`` with ``observed-taste``. Readings without a worth are skipped.

    Raises:
        ValueError: A file that is not a summary of its kind (the message names it).
    """
    worth: dict[tuple[str, str, float | None], Point] = {}
    for path in worth_files:
        for p in read_points(path):
            if p.sigma is None or p.rank is not None or p.name.startswith("history-"):
                continue
            kind = "observed" if p.name == "observed-taste" else "noisy"  # taste: noisy at σ 0
            worth[(p.source, kind, None if kind == "observed" else p.sigma)] = p
    out: list[Known] = []
    for path in top_files:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
            source, readings = f"seed {data['seed']}", dict(data["readings"])
        except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}: cannot read a bench.top_reading summary ({exc!r})") from None
        for name, row in readings.items():
            kind, _, sigma = name.partition(":")
            if kind == "observed":
                key: tuple[str, str, float | None] = (source, "observed", None)
            elif kind in ("taste", "noisy"):
                key = (source, "noisy", float(sigma) if sigma else 0.0)
            else:
                continue
            if key in worth:
                try:
                    out.append(Known(source, name, float(row["r2"]), float(row["partial_r2_top"]), worth[key]))
                except (KeyError, TypeError, ValueError) as exc:
                    raise ValueError(f"{path}: reading {name!r} lacks a field the figure reads ({exc!r})") from None
    return out


def plot(known: list[Known], out: Path, top: int = 20) -> None:
    """Two panels, worth against R² over all candidates and against partial R² at the top; written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10.0, 4.4), sharey=True)
    sources = sorted({k.source for k in known})
    panels = (("r2", "R² with the taste over all of a request's candidates"),
              ("partial_r2_top", f"partial R² beyond tuned-diverse's blend, among its top {top} candidates"))
    for ax, (attr, xlabel) in zip(axes, panels, strict=True):
        for i, src in enumerate(sources):
            told = sorted((getattr(k, attr), k.worth.ratio) for k in known if k.source == src and k.name != "observed")
            if told:
                xs, ys = zip(*told, strict=True)
                ax.plot(xs, ys, "o-", color="tab:orange", lw=1.2, ms=4, alpha=0.4 + 0.6 / (i + 1),
                        label="told the taste with an independent error (a line per seed)" if i == 0 else None)
            for k in (k for k in known if k.source == src and k.name == "observed"):
                x, w = getattr(k, attr), k.worth
                ax.errorbar(x, w.ratio, yerr=[[w.ratio - w.ci[0]], [w.ci[1] - w.ratio]], fmt="D", color="tab:green",
                            ms=6, capsize=2, lw=0.8,
                            label="told the observation's best reading of the taste" if i == 0 else None)
        ax.axhline(1.0, color="grey", lw=0.8, ls=":")
        ax.set_xlabel(xlabel, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("return / tuned-diverse's, held-out sessions")
    axes[0].legend(fontsize=8, loc="upper left")
    fig.suptitle("A reading of the taste: its worth to the best hand-written ranker against what it knows",
                 fontsize=10)
    fig.tight_layout()
    png = figure_png(fig)
    plt.close(fig)
    atomic_write_bytes(out, png)


def figure_main(args: argparse.Namespace, ap: argparse.ArgumentParser) -> list[Known]:
    """``--figure``: pair the files, print the table, draw."""
    if not args.worth or args.out is None:
        ap.error("--figure needs --worth (bench.term_probe --retune --json files) and --out PNG")
    if not args.out.parent.is_dir():
        ap.error(f"--out: folder {str(args.out.parent)!r} does not exist")
    try:
        known = match_worth(args.figure, args.worth)
    except ValueError as exc:
        ap.error(str(exc))
    if not known:
        ap.error("--figure: no reading of these files has a worth in the --worth files (the same seeds; terms taste, "
                 "noisy-taste:σ, observed-taste)")
    print("| seed | reading | R² | partial R² at the top | worth (95% interval) |\n|---|---|---:|---:|---:|")
    for k in sorted(known, key=lambda k: (k.source, k.name != "observed", -k.r2)):
        print(f"| {k.source} | {k.name} | {k.r2:.3f} | {k.partial_r2_top:.3f} | {k.worth.ratio:.3f} "
              f"({k.worth.ci[0]:.3f}–{k.worth.ci[1]:.3f}) |")
    plot(known, args.out, args.top)
    print(f"wrote {args.out}")
    return known


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
    ap.add_argument("--runs", default=None,
                    help="comma-separated trained run directories: each picks its slate on the same requests")
    ap.add_argument("--json", type=Path, default=None, help="also write the summary to this file, atomically")
    ap.add_argument("--figure", nargs="+", default=None, metavar="TOP_JSON",
                    help="draw instead of measuring: this module's --json summaries (see the module's text)")
    ap.add_argument("--worth", nargs="+", default=None, metavar="PROBE_JSON",
                    help="with --figure: bench.term_probe --retune --json summaries of the same seeds")
    ap.add_argument("--out", type=Path, default=None, help="with --figure: the PNG")
    args = ap.parse_args(argv)
    if args.figure is not None:
        return {"known": figure_main(args, ap)}
    if args.worth is not None or args.out is not None:
        ap.error("--worth and --out go with --figure")
    runs = [r.strip() for r in (args.runs or "").split(",") if r.strip()]
    missing = [r for r in runs if not Path(r).is_dir()]
    if missing:
        ap.error(f"--runs: no such run directory: {', '.join(missing)}")
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
    train_core, fit_plan = fit_sessions(cfg, world, args.seed, args.tune_episodes, args.batch)
    w, fit = fit_observed_taste(train_core, base, fit_plan)
    readings: dict[str, Term] = {"observed": observed_taste_term(w),
                                 **{f"noisy:{s:g}": noisy_taste_term(core, s) for s in sigmas},
                                 "taste": hidden_term(core, "semantic", "static")}
    shadows: dict[str, Ranker] = {f"tuned-diverse + {name}": TermDiverseRanker(base, term, 1.0)
                                  for name, term in readings.items()}
    for run in runs:
        ranker = load_run(run, n_items=world.n_items)
        if policy_core(ranker, core, world, {}) is not core:
            ap.error(f"--runs: {run} reads an observation column this env lacks (a research ablation); evaluate it "
                     "with bench.term_probe --runs")
        shadows[f"run:{run}"] = ranker
    rec = _TopRecorder(base, core, readings, args.top, shadows)
    run_episodes(core, rec, plan)
    table = rec.summary()
    print(f"tuned-diverse {point}; the observed reading's fit: R² {fit['r2']:.3f} on {fit['candidates']:,} training "
          f"candidates; {rec.requests:,} held-out requests of {len(plan)} sessions, K = {core.K}, top {args.top}")
    head = " | ".join(f"top {core.K} of blend + {b:g}·x: true z, overlap" for b in BETAS)
    print(f"| reading | R² | partial R² beyond the blend | R² in the blend's top {args.top} | partial R² there | "
          f"top {core.K} alone: true z, overlap | {head} |")
    for name, row in table.items():
        if name == "slates":
            continue
        cells = [f"{row[key]:.3f}" for key in ("r2", "partial_r2", "r2_top", "partial_r2_top")]
        tk = row["topk"]
        if name == "blend":  # its own top K (blend + β·blend is the blend)
            cells += [f"{tk['0']['true_z']:.2f}, {tk['0']['overlap']:.2f}"] + ["—"] * len(BETAS)
        else:
            cells += [f"{c['true_z']:.2f}, {c['overlap']:.2f}" for c in [tk["alone"], *(tk[str(b)] for b in BETAS)]]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print("| slate picked on the same requests | its items' mean true taste (z) | mean true utility (z) |\n"
          "|---|---:|---:|")
    for name, z in table["slates"].items():
        print(f"| {'tuned-diverse (played)' if name == 'played' else name} | {z['true_z']:.3f} | "
              f"{z['utility_z']:.3f} |")
    out = {"preset": cfg.env.preset, "seed": args.seed, "episodes": len(plan), "requests": rec.requests,
           "top": args.top, "k": core.K, "tuned_diverse": point, "observed_fit": {"r2": fit["r2"],
           "r2_blend": fit["r2_blend"], "candidates": fit["candidates"]}, "readings": table}
    return finish_summary(out, args.json)


if __name__ == "__main__":
    main()
