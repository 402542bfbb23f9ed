"""The end of a training run: the trained policy against the baselines on held-out users, and what it learned.

:func:`final_comparison` writes ``RUN_DIR/report/`` (results.json / .md / .csv, plausibility, plots/*.png) with the
learned α by hidden user type and by step within the session, and every ranker's per-session returns
(``returns.npz``, :func:`agents.report.write_returns`), so that runs of several training seeds on the same held-out
sessions can be compared session by session; :func:`print_summary` is ``train.py``'s closing message.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from agents.baselines import RankerContext, make_ranker, tuning_cache_dir
from agents.evaluation import (
    RHO_EDGES,
    RHO_LABELS,
    Bootstrap,
    episode_plan,
    paired_test,
    run_episodes,
    summarise,
    write_report,
)
from agents.plausibility import write_plausibility
from agents.policies import SlatePolicy
from agents.ppo_ranker import PPORanker
from agents.registry import alpha_grid_kwargs
from agents.report import write_returns
from configs.schema import Config
from envs.factory import make_core
from envs.world import World

#: Baselines of the final comparison (the oracle reads hidden state; it is the upper reference).
FINAL_BASELINES = ("random", "greedy-llm", "greedy-cf", "tuned-alpha", "linucb", "diverse", "tuned-diverse",
                   "session-diverse", "oracle", "tuned-oracle-diverse")
#: The quality bar's reference (the strongest hand-written ranker) and the non-myopic ceiling (reads hidden state).
STRONGEST_HEURISTIC, CEILING = "tuned-diverse", "tuned-oracle-diverse"
#: The rankers that read the hidden state (upper references, never "hand-written").
HIDDEN = ("oracle", CEILING)
#: The row of the last iterate when the run's policy is an average of its weights or an earlier iterate chosen on
#: training users (``train.policy_average_halflife``, ``train.select_episodes``).
LAST_ITERATE = "ppo-last"


def best_hand_written(stats: dict[str, Any], n_boot: int, seed: int) -> dict[str, Any]:
    """The baseline with the highest mean return on these very sessions, and PPO's paired difference to it.

    Candidates: every ranker but PPO (and its last iterate) and those that read the hidden state (the heuristics,
    and LinUCB, which is fitted on logged impressions rather than written by hand; the name keeps "hand-written"
    for the heuristics that win in practice).

    tuned-diverse is the bar's reference because it is chosen on the training users; a ranker picked here, on the
    held-out sessions themselves, is an optimistic reference (chosen on the sessions it is scored on), so PPO's
    difference to it is the conservative one. It is often tuned-diverse itself (on a tie, e.g. when the tuning kept
    the hand-set start, it is named tuned-diverse).

    Args:
        stats: Per ranker, the :class:`agents.evaluation.EpisodeStats` of the same sessions (``"ppo"`` among them).
        n_boot: Bootstrap resamples.
        seed: Bootstrap seed.

    Returns:
        ``{"name", "return", "paired"}`` (``paired``: :func:`agents.report.paired_test` of PPO − it).
    """
    names = [n for n in stats if n not in ("ppo", LAST_ITERATE) and n not in HIDDEN]
    best = max(names, key=lambda n: (float(stats[n].ret.mean()), n == STRONGEST_HEURISTIC))
    ppo = stats["ppo"].ret
    return {"name": best, "return": float(stats[best].ret.mean()),
            "paired": paired_test(ppo, stats[best].ret, Bootstrap(len(ppo), n_boot, seed))}


def tuning_context(cfg: Config, world: World, core: Any, progress: bool) -> RankerContext:
    """The references' context of a run: tuning on the training users, its searches cached beside the world."""
    return RankerContext(world, cfg.env, core=core, seed=cfg.train.seed, batch=cfg.eval.batch, progress=progress,
                         tune_episodes=cfg.eval.tune_episodes, cache_dir=str(tuning_cache_dir(cfg.env, cfg.encoder)),
                         **alpha_grid_kwargs(cfg.eval.alpha_grid))


def final_comparison(cfg: Config, world: World, policy: SlatePolicy, curve: Any, run_dir: Path,
                     progress: bool, tuning: RankerContext | None = None,
                     last_iterate: SlatePolicy | None = None) -> dict[str, Any]:
    """PPO against the baselines on held-out users (common random numbers); α by user type and by step.

    Writes ``report/`` (results.json/.md/.csv, plots) and ``report/alpha.json``.

    Args:
        cfg: The run's configuration.
        world: The run's world (its ``heldout`` population is simulated).
        policy: The trained policy.
        curve: tuned-alpha's curve (:class:`agents.tuning.AlphaCurve`); the table's tuned-alpha and hand-set
            ``diverse`` rows use its ``best_alpha``.
        run_dir: The run folder (``report/`` is written in it).
        progress: Show progress bars.
        tuning: The run's tuning context (:func:`tuning_context`), whose searches training already ran (a
            ``"diverse"`` policy starts at tuned-diverse), so that the table's references are the very searches the
            policy started from; None builds one (its searches are re-read from the on-disk cache or run).
        last_iterate: When ``policy`` is an average of the weights (``train.policy_average_halflife``) or an earlier
            iterate chosen on training users (``train.select_episodes``), the last iterate: a row ``ppo-last`` on
            the same sessions, so that the table shows what the averaging or the choice did.
    """
    ec = cfg.eval
    core = make_core(cfg.env, cfg.env.preset, cfg.encoder, world, "heldout", ec.batch)
    plan = episode_plan(ec.episodes, ec.seed_list, world.populations["heldout"].size)
    # the same context with the held-out core: a copy keeps the searches already run
    ctx = tuning_context(cfg, world, core, progress) if tuning is None else replace(tuning, core=core)
    rankers = {}
    for spec in FINAL_BASELINES:
        if spec in ("tuned-alpha", "diverse"):  # both on the α tuned above (not tuned again)
            base = "fixed-alpha" if spec == "tuned-alpha" else "diverse"
            rankers[spec] = make_ranker(f"{base}:{curve.best_alpha:g}", ctx)
            rankers[spec].name = spec
        else:
            rankers[spec] = make_ranker(spec, ctx)
    for spec in ec.extra_references:  # eval.extra_references (train.py checked them before training)
        rankers[spec] = make_ranker(spec, ctx)
    ppo = PPORanker(policy, cfg.env.slate_size)
    alpha_rows: list[tuple[np.ndarray, ...]] = []  # (rho, step, alpha, effective alpha) per step

    def record_alpha(obs: dict[str, np.ndarray], slate: np.ndarray, feedback: Any, active: np.ndarray) -> None:
        assert ppo.last_alpha is not None and ppo.last_alpha_effective is not None
        rows = np.flatnonzero(active)
        alpha_rows.append((core.pop.rho[core.user[rows]], core.t[rows] - 1, ppo.last_alpha[rows],
                           ppo.last_alpha_effective[rows]))

    stats = {"ppo": run_episodes(core, ppo, plan, progress=progress, desc="ppo (held-out)", on_step=record_alpha)}
    if last_iterate is not None:
        stats[LAST_ITERATE] = run_episodes(core, PPORanker(last_iterate, cfg.env.slate_size), plan, progress=progress,
                                           desc=f"{LAST_ITERATE} (held-out)")
    for name, r in rankers.items():
        stats[name] = run_episodes(core, r, plan, progress=progress, desc=f"{name} (held-out)")
    results = summarise(stats, reference="tuned-alpha", n_boot=ec.bootstrap, seed=cfg.train.seed,
                        hidden=list(HIDDEN) + (["ppo", LAST_ITERATE] if cfg.env.obs_hidden_taste
                                                or cfg.train.policy.actor_hidden_state else []),
                        alpha_curve=curve.to_dict(),
                        setup={"users": "heldout", "preset": cfg.env.preset, "seeds": ec.seed_list})
    rho, step, alpha, alpha_eff = (np.concatenate(x) for x in zip(*alpha_rows, strict=True))
    results["alpha"] = alpha_by_type(rho, step, alpha, alpha_eff, min(cfg.env.max_steps, 20))
    r = results["rankers"]
    results["ratio_vs_tuned_alpha"] = r["ppo"]["return"]["mean"] / r["tuned-alpha"]["return"]["mean"]
    results["ratio_vs_tuned_diverse"] = r["ppo"]["return"]["mean"] / r[STRONGEST_HEURISTIC]["return"]["mean"]
    # the quality bar's paired comparison: PPO − tuned-diverse on the same sessions (per-session differences)
    results["paired_vs_tuned_diverse"] = paired_test(stats["ppo"].ret, stats[STRONGEST_HEURISTIC].ret,
                                                     Bootstrap(len(stats["ppo"].ret), ec.bootstrap, cfg.train.seed))
    results["best_hand_written_heldout"] = best_hand_written(stats, ec.bootstrap, cfg.train.seed)
    results["extra_references"] = list(ec.extra_references)  # so bench.quality_protocol can compare with each
    for key, top in (("gap_closed_to_oracle", "oracle"), ("gap_closed_to_ceiling", CEILING)):
        gap = r[top]["return"]["mean"] - r["tuned-alpha"]["return"]["mean"]
        if gap > 0:
            results[key] = (r["ppo"]["return"]["mean"] - r["tuned-alpha"]["return"]["mean"]) / gap
    results["tuned_parameters"] = {name: rankers[name].search.to_dict() for name in (STRONGEST_HEURISTIC, CEILING)
                                   if getattr(rankers[name], "search", None) is not None}
    for spec in ec.extra_references:  # the type switch's fit: its threshold and the training sessions' scores
        if spec.startswith("tuned-switch"):
            search = ctx.switch_search(spec.partition(":")[2] or "boosted")
            results["tuned_parameters"][spec] = {"threshold": search.threshold, "tuning": search.tuning,
                                                 "reader": search.reader, "fit_requests": search.fit_requests}
    out = run_dir / "report"
    write_report(results, out)
    write_returns(stats, plan, out / "returns.npz")
    write_plausibility(results, out, policies=["ppo"])  # report/plausibility.json / .md: flags figures out of range
    _alpha_plot(results["alpha"], out / "plots" / "alpha.png")
    return results


def _mean(x: np.ndarray) -> float | None:
    """Mean of the finite values of ``x`` (None when there are none)."""
    x = x[np.isfinite(x)]
    return float(x.mean()) if x.size else None


def alpha_by_type(rho: np.ndarray, step: np.ndarray, alpha: np.ndarray, alpha_eff: np.ndarray,
                  max_step: int) -> dict[str, Any]:
    """The learned α by hidden user type and by request within the session, raw and on the common scale.

    Args:
        rho: (n,) hidden ρ of the user of each recorded request.
        step: (n,) 0-based request index within its session.
        alpha: (n,) the policy's α.
        alpha_eff: (n,) the same α as the LLM signal's weight once both signals are standardised
            (:func:`agents.ppo_ranker.effective_alpha`); the comparable quantity across requests and presets.
        max_step: Requests reported by step (those with at least 20 records).

    Returns:
        ``{"by_rho", "by_rho_effective": {group label: mean or None}, "by_step": {t: {"all", "rho<0.5",
        "rho>=0.5", "effective rho<0.5", "effective rho>=0.5"}}, "corr_alpha_rho", "corr_effective_alpha_rho"}``.
    """
    by_rho: dict[str, float | None] = {}
    by_rho_eff: dict[str, float | None] = {}
    for lo, hi, label in zip(RHO_EDGES[:-1], RHO_EDGES[1:], RHO_LABELS, strict=True):
        sel = (rho >= lo) & ((rho < hi) | (hi == 1.0))
        by_rho[label] = _mean(alpha[sel])
        by_rho_eff[label] = _mean(alpha_eff[sel])
    by_step: dict[int, dict[str, float | None]] = {}
    for t in range(max_step):
        sel = step == t
        if sel.sum() >= 20:
            lo_t, hi_t = sel & (rho < 0.5), sel & (rho >= 0.5)
            by_step[t] = {"all": _mean(alpha[sel]), "rho<0.5": _mean(alpha[lo_t]), "rho>=0.5": _mean(alpha[hi_t]),
                          "effective rho<0.5": _mean(alpha_eff[lo_t]),
                          "effective rho>=0.5": _mean(alpha_eff[hi_t])}
    ok = np.isfinite(alpha_eff)
    return {"by_rho": by_rho, "by_rho_effective": by_rho_eff, "by_step": by_step,
            "corr_alpha_rho": _correlation(alpha, rho),
            "corr_effective_alpha_rho": _correlation(alpha_eff[ok], rho[ok])}


def _correlation(x: np.ndarray, y: np.ndarray) -> float | None:
    """Pearson correlation of two (n,) arrays in float64; None where it is undefined (a constant side)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        c = float(np.corrcoef(np.asarray(x, np.float64), np.asarray(y, np.float64))[0, 1]) if len(x) > 1 else np.nan
    return c if np.isfinite(c) else None


def _alpha_plot(alpha: dict[str, Any], path: Path) -> None:
    """Plot learned α by hidden user type and by step within the session."""

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from configs.fileio import atomic_write_bytes, figure_png

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
    labels = [k for k, v in alpha["by_rho"].items() if v is not None]
    a1.bar(range(len(labels)), [alpha["by_rho"][k] for k in labels], color="#4C72B0")
    a1.set_xticks(range(len(labels)), [k.split(" ")[1].strip("()") if " " in k else k for k in labels])
    a1.set_ylabel("mean learned α")
    a1.set_title("α by hidden user type (ρ_u)")
    steps = sorted(alpha["by_step"], key=int)
    for key, colour in (("effective rho<0.5", "#DD8452"), ("effective rho>=0.5", "#55A868")):
        ys = [alpha["by_step"][s].get(key) for s in steps]
        a2.plot([int(s) for s in steps], [np.nan if y is None else y for y in ys], label=key.split(" ")[1],
                color=colour)
    a2.set_xlabel("step in session")
    a2.set_ylabel("effective α (LLM share, both signals standardised)")
    a2.set_title("α within the session")
    a2.legend()
    fig.tight_layout()
    png = figure_png(fig)
    plt.close(fig)
    atomic_write_bytes(path, png)



def margin_verdict(ci95: tuple[float, float] | list[float]) -> str:
    """What one run's paired interval PPO − tuned-diverse says, in a line of ``train.py``'s closing message.

    Args:
        ci95: The 95% interval of the paired difference on the run's held-out sessions.
    """
    lo, hi = float(ci95[0]), float(ci95[1])
    if lo > 0:
        return "PPO is above tuned-diverse on these sessions, the interval clear of 0"
    if hi < 0:
        return "PPO is below tuned-diverse on these sessions, the interval clear of 0"
    return ("level with tuned-diverse within these sessions' noise: PPO's margin grows with the steps "
            "(BENCHMARKS.md, \"PPO\", session 46), and a bar is measured over seeds: python -m bench.quality_protocol")


def print_summary(summary: dict[str, Any], results_md: Path) -> None:
    """The closing message of ``train.py``: how PPO compares, and where everything is."""
    print()
    if results_md.is_file():
        print(results_md.read_text(encoding="utf-8"))
    h = summary["heldout"]
    ppo, tuned = h["ppo"]["mean"], h["tuned-alpha"]["mean"]
    print(f"PPO return per session on held-out users: {ppo:.3f} (95% CI {h['ppo']['ci95'][0]:.3f}–"
          f"{h['ppo']['ci95'][1]:.3f}); tuned-alpha {tuned:.3f} → {summary['ratio_vs_tuned_alpha']:.3f}×")
    if "ratio_vs_tuned_diverse" in summary:
        print(f"against the quality bar's reference, tuned-diverse: {h[STRONGEST_HEURISTIC]['mean']:.3f} → "
              f"{summary['ratio_vs_tuned_diverse']:.3f}×")
    pd = summary.get("paired_vs_tuned_diverse")
    if pd and pd.get("ci95"):
        print(f"  paired on the same sessions: PPO − tuned-diverse {pd['diff']:+.3f} (95% CI {pd['ci95'][0]:+.3f} to "
              f"{pd['ci95'][1]:+.3f}, p {pd['p_value']:.2g})")
        print(f"  {margin_verdict(pd['ci95'])}")
    best = summary.get("best_hand_written_heldout")
    if best and best["name"] != STRONGEST_HEURISTIC and best["paired"].get("ci95"):
        bp = best["paired"]
        print(f"  the best hand-written ranker on these held-out sessions (picked on them, so optimistic): "
              f"{best['name']} {best['return']:.3f}; PPO − {best['name']} {bp['diff']:+.3f} "
              f"(95% CI {bp['ci95'][0]:+.3f} to {bp['ci95'][1]:+.3f})")
    if summary.get("gap_closed_to_oracle") is not None:
        print(f"share of the tuned-alpha → myopic oracle gap closed: {summary['gap_closed_to_oracle']:.2f}")
    if summary.get("gap_closed_to_ceiling") is not None:
        print(f"share of the tuned-alpha → non-myopic ceiling ({CEILING}) gap closed: "
              f"{summary['gap_closed_to_ceiling']:.2f}")
    print("learned α by hidden user type: "
          + ", ".join(f"{k}: {v:.2f}" for k, v in summary["alpha_by_user_type"].items() if v is not None))
    eff = summary.get("alpha_by_user_type_effective") or {}
    if any(v is not None for v in eff.values()):
        print("  effective α (the LLM signal's share once both signals are standardised): "
              + ", ".join(f"{k}: {v:.2f}" for k, v in eff.items() if v is not None))
    p = summary["paths"]
    print(f"\nrun directory: {summary['run_dir']}\n  model:       {p['model']}\n  TensorBoard: tensorboard "
          f"--logdir {p['tensorboard']}\n  report:      {p['report']}/results.md\n  plots:       {p['plots']}")
