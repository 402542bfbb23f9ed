"""The evaluation report: statistics over episodes and what is written from them.

Percentile-bootstrap 95% intervals over episodes (one shared set of resamples, so ratios and differences stay
paired; coverage, a union, gets a grouped-jackknife interval instead), a paired t-test of each ranker against a
reference on the per-episode differences, the breakdown by hidden user type ρ_u, and the Markdown / CSV / JSON
tables and plots of :func:`write_report`. The episodes come from the engine, :mod:`agents.evaluation`.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import sparse, stats

from agents.evaluation import RHO_EDGES, RHO_LABELS, EpisodePlan, EpisodeStats
from configs.fileio import atomic_write_bytes, atomic_write_text, figure_png, json_default

#: Column label and number format of each metric in the Markdown table (``clicks`` is left to JSON/CSV).
TABLE_COLUMNS: dict[str, tuple[str, str]] = {
    "return": ("return", ".2f"),
    "ctr": ("CTR", ".3f"),
    "purchases": ("purchases", ".3f"),
    "dwell": ("dwell (s)", ".0f"),
    "length": ("length", ".1f"),
    "diversity": ("diversity", ".3f"),
    "coverage": ("coverage", ".3f"),
    "novelty": ("novelty", ".2f"),
    "ndcg": ("NDCG@K", ".3f"),
    "precision": ("P@K", ".3f"),
    "recall": ("R@K", ".3f"),
    "f1": ("F1@K", ".3f"),
    "precision_real": ("P@K real", ".4f"),
    "recall_real": ("R@K real", ".4f"),
    "f1_real": ("F1@K real", ".4f"),
    "oracle_share": ("oracle share", ".3f"),
}
#: Delete-a-group jackknife groups for the coverage interval.
COVERAGE_GROUPS = 20


# ---- statistics ---------------------------------------------------------------------------------------------


class Bootstrap:
    """One set of resampling indices shared by every quantity of a report (so comparisons stay paired).

    Args:
        n: Sample size (episodes).
        n_boot: Resamples R.
        seed: Seed of the resampling.
    """

    def __init__(self, n: int, n_boot: int, seed: int) -> None:
        if n < 1 or n_boot < 1:
            raise ValueError(f"need n >= 1 and n_boot >= 1, got n={n}, n_boot={n_boot}")
        self.n, self.n_boot = n, n_boot
        self.idx = np.random.default_rng([int(seed), 0xB007]).integers(0, n, (n_boot, n), dtype=np.int32)

    def means(self, x: np.ndarray) -> np.ndarray:
        """Mean of ``x`` (n,) in each resample: float64 (R,)."""
        x = np.asarray(x, dtype=np.float64)
        if x.shape != (self.n,):
            raise ValueError(f"expected shape ({self.n},), got {x.shape}")
        chunk = max(1, 4_000_000 // self.n)
        return np.concatenate([x[self.idx[i:i + chunk]].mean(axis=1) for i in range(0, self.n_boot, chunk)])


def percentile_ci(samples: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The central ``level`` percentile interval of bootstrap replicates (NaNs ignored)."""
    tail = 50.0 * (1.0 - level)
    lo, hi = np.nanpercentile(samples, [tail, 100.0 - tail])
    return float(lo), float(hi)


def bootstrap_ci(x: np.ndarray, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile-bootstrap interval of the mean of ``x`` (n,)."""
    x = np.asarray(x, dtype=np.float64)
    return percentile_ci(Bootstrap(len(x), n_boot, seed).means(x), level)


def paired_test(x: np.ndarray, ref: np.ndarray, boot: Bootstrap | None = None) -> dict[str, Any]:
    """Paired comparison of ``x`` against ``ref`` on the same episodes: ``d_e = x_e − ref_e``.

    The p-value is the two-sided paired t-test (``scipy.stats.ttest_rel``); when all differences are equal the
    test is degenerate and the p-value is 1 if they are 0, else 0.

    Args:
        x: (E,) the ranker's per-episode values.
        ref: (E,) the reference's values on the same episodes.
        boot: Shared resamples for the interval of the mean difference (``None``: no interval).

    Returns:
        ``{"diff": mean d, "ci95": [lo, hi] | None, "t": t | None, "p_value": p | None, "n": E}``
        (``None`` where undefined: E < 2, or ``t`` for equal differences).
    """
    x, ref = np.asarray(x, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    if x.shape != ref.shape or x.ndim != 1:
        raise ValueError(f"paired samples need equal 1-d shapes, got {x.shape} and {ref.shape}")
    d = x - ref
    out: dict[str, Any] = {"diff": float(d.mean()), "ci95": None, "t": None, "p_value": None, "n": len(d)}
    if boot is not None:
        out["ci95"] = list(percentile_ci(boot.means(d)))
    if len(d) < 2:
        return out
    if np.all(d == d[0]):
        out["p_value"] = 1.0 if d[0] == 0 else 0.0
        return out
    res = stats.ttest_rel(x, ref)
    out["t"], out["p_value"] = float(res.statistic), float(res.pvalue)
    return out


def coverage(shown: sparse.csr_matrix, groups: int = COVERAGE_GROUPS) -> dict[str, Any]:
    """Catalog coverage: the share of the M items shown in at least one episode, with a 95% interval.

    Resampling episodes with replacement biases a union downward (a resample holds ~63% distinct episodes), so
    the interval comes from the delete-a-group jackknife instead: episodes are split into ``groups`` groups by
    index modulo ``groups``, coverage is recomputed without each group, and the interval is
    ``share ± 1.96·se_jack`` clipped to [0, 1].

    Args:
        shown: bool sparse (E, M) items shown per episode.
        groups: Jackknife groups G (fewer when E < G).

    Returns:
        ``{"mean": share, "ci95": [lo, hi]}``.
    """
    n_ep, m = shown.shape
    total = shown.getnnz(axis=0)  # (M,) episodes that showed each item
    point = float((total > 0).sum() / m)
    g = min(groups, n_ep)
    if g < 2:
        return {"mean": point, "ci95": [point, point]}
    member = sparse.csr_matrix((np.ones(n_ep), (np.arange(n_ep) % g, np.arange(n_ep))), shape=(g, n_ep))
    per_group = (member @ shown.astype(np.float64)).toarray()  # (G, M)
    loo = ((total[None, :] - per_group) > 0).sum(axis=1) / m  # coverage without each group
    se = float(np.sqrt((g - 1) / g * ((loo - loo.mean()) ** 2).sum()))
    return {"mean": point, "ci95": [max(0.0, point - 1.96 * se), min(1.0, point + 1.96 * se)]}


def summarise(stats_by_ranker: dict[str, EpisodeStats], reference: str, n_boot: int = 2000, seed: int = 0,
              hidden: Sequence[str] = (), alpha_curve: dict[str, Any] | None = None,
              setup: dict[str, Any] | None = None) -> dict[str, Any]:
    """The report: metrics with 95% intervals, paired tests against ``reference``, breakdown by ρ_u.

    Args:
        stats_by_ranker: Name → per-episode outcomes, all over the same plan.
        reference: Name of the ranker every other one is tested against.
        n_boot: Bootstrap resamples.
        seed: Seed of the resampling.
        hidden: Names of rankers that read hidden state (marked in the table).
        alpha_curve: tuned-alpha's curve (``AlphaCurve.to_dict()``), kept for the plot.
        setup: Free-form description of the run (command, preset, world key …).

    Returns:
        ``{"rankers": {name: {metric: {"mean", "ci95"}}}, "paired": …, "by_rho": …, "per_seed": …,
        "alpha_curve": …, "timing": …, "setup": …}``, JSON-ready.

    Raises:
        ValueError: If ``reference`` is not among the rankers or the rankers saw different episodes.
    """
    names = list(stats_by_ranker)
    if reference not in stats_by_ranker:
        raise ValueError(f"reference {reference!r} is not among the evaluated rankers {names}")
    first = stats_by_ranker[names[0]]
    for name, s in stats_by_ranker.items():
        if not np.array_equal(s.users, first.users) or not np.array_equal(s.seeds, first.seeds):
            raise ValueError(f"ranker {name!r} was evaluated on other episodes than {names[0]!r}")
    n_ep = len(first.ret)
    boot = Bootstrap(n_ep, n_boot, seed)
    oracle = next((n for n in names if n == "oracle"), None)
    ref = stats_by_ranker[reference]
    rankers: dict[str, dict[str, Any]] = {}
    paired: dict[str, dict[str, Any]] = {}
    for name, s in stats_by_ranker.items():
        row = {m: {"mean": float(s.metric(m).mean()), "ci95": list(percentile_ci(boot.means(s.metric(m))))}
               for m in s.metric_names}
        row["coverage"] = coverage(s.shown)
        if oracle is not None:
            o = stats_by_ranker[oracle].ret
            share = boot.means(s.ret) / boot.means(o)
            row["oracle_share"] = {"mean": float(s.ret.mean() / o.mean()), "ci95": list(percentile_ci(share))}
        rankers[name] = row
        paired[name] = {m: paired_test(s.metric(m), ref.metric(m), boot) for m in s.metric_names}
    return {
        "rankers": rankers,
        "paired": {"reference": reference, "test": "two-sided paired t-test on per-episode differences",
                   "results": paired},
        "by_rho": _by_rho(stats_by_ranker, n_boot, seed),
        "per_seed": {name: {str(sd): float(s.ret[s.seeds == sd].mean()) for sd in np.unique(s.seeds)}
                     for name, s in stats_by_ranker.items()},
        "alpha_curve": alpha_curve,
        "hidden_state": [n for n in names if n in set(hidden)],
        "timing": {name: {"seconds": round(s.seconds, 3), "episodes_per_s": round(n_ep / max(s.seconds, 1e-9), 2)}
                   for name, s in stats_by_ranker.items()},
        "setup": {"episodes": n_ep, "bootstrap": n_boot, "bootstrap_seed": seed, **(setup or {})},
    }


def _by_rho(stats_by_ranker: dict[str, EpisodeStats], n_boot: int, seed: int) -> dict[str, Any]:
    """Return and CTR per hidden ρ_u bucket (every ranker met the same users, so buckets match)."""
    rho = next(iter(stats_by_ranker.values())).rho
    bucket = np.clip(np.digitize(rho, RHO_EDGES[1:-1]), 0, len(RHO_LABELS) - 1)
    out: dict[str, Any] = {"buckets": list(RHO_LABELS), "edges": list(RHO_EDGES), "results": {}}
    boots = {i: Bootstrap(int((bucket == i).sum()), n_boot, seed + 1 + i) for i in range(len(RHO_LABELS))
             if (bucket == i).any()}
    for name, s in stats_by_ranker.items():
        res: dict[str, Any] = {}
        for i, bt in boots.items():
            sel = bucket == i
            res[RHO_LABELS[i]] = {"n": int(sel.sum())} | {
                m: {"mean": float(s.metric(m)[sel].mean()), "ci95": list(percentile_ci(bt.means(s.metric(m)[sel])))}
                for m in ("return", "ctr")}
        out["results"][name] = res
    return out


# ---- reports ------------------------------------------------------------------------------------------------


def _fmt(x: float | None, spec: str) -> str:
    return "–" if x is None or not math.isfinite(x) else format(x, spec)


def markdown_table(results: dict[str, Any]) -> str:
    """The Markdown table of a report: mean ± half the 95% interval, Δ return vs the reference and its p."""
    ref = results["paired"]["reference"]
    names = list(results["rankers"])
    cols = [m for m in TABLE_COLUMNS if any(m in results["rankers"][n] for n in names)]
    k = results["setup"].get("slate_size", "K")
    header = [TABLE_COLUMNS[m][0].replace("@K", f"@{k}") for m in cols]
    lines = ["| ranker | " + " | ".join(header) + f" | Δ return vs {ref} | p |",
             "|---|" + "---:|" * (len(cols) + 2)]
    hidden = set(results.get("hidden_state", []))
    for name in names:
        row = results["rankers"][name]
        cells = []
        for m in cols:
            if m not in row:
                cells.append("–")
                continue
            spec = TABLE_COLUMNS[m][1]
            lo, hi = row[m]["ci95"]
            cells.append(f"{_fmt(row[m]['mean'], spec)} ± {_fmt((hi - lo) / 2, spec)}")
        pt = results["paired"]["results"][name]["return"]
        diff = "(reference)" if name == ref else f"{pt['diff']:+.2f}"
        p = "" if name == ref else _fmt(pt["p_value"], ".2g")
        label = f"{name} †" if name in hidden else name
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {diff} | {p} |")
    notes = ["", "Mean per session ± half the 95% bootstrap interval; p: two-sided paired t-test on per-session "
             f"differences against {ref} (same users, same seeds)."]
    if hidden:
        notes.append("† reads the simulator's hidden state (true click probabilities, or a PPO trained with "
                     "env.obs_hidden_taste the true taste or with train.policy.actor_hidden_state the user's hidden "
                     "state): an upper reference, not a deployable policy.")
    return "\n".join(lines + notes) + "\n"


def results_csv(results: dict[str, Any]) -> str:
    """One row per (ranker, metric): mean, interval, and the paired difference to the reference with its p."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["ranker", "metric", "mean", "ci95_lo", "ci95_hi", "reference", "diff_vs_reference", "diff_ci95_lo",
                "diff_ci95_hi", "p_value"])
    ref = results["paired"]["reference"]
    for name, row in results["rankers"].items():
        for metric, v in row.items():
            pt = results["paired"]["results"][name].get(metric)
            extra = [ref, pt["diff"], *(pt["ci95"] or [None, None]), pt["p_value"]] if pt else [ref, "", "", "", ""]
            w.writerow([name, metric, v["mean"], *v["ci95"], *extra])
    return buf.getvalue()


#: Prefix of a ranker's per-session returns in ``returns.npz`` (``ret:<ranker name>``).
RETURNS_PREFIX = "ret:"


def write_returns(stats: dict[str, EpisodeStats], plan: EpisodePlan, path: Path) -> None:
    """Every ranker's per-session return and the sessions' identity, as one ``.npz`` (written atomically).

    Arrays: ``keys`` uint64 (E,), ``users`` int64 (E,), ``seeds`` int64 (E,) (the plan: which sessions), and
    ``ret:<name>`` float64 (E,) per ranker, in the plan's order. Plain arrays only (read with ``allow_pickle=False``).

    Args:
        stats: Ranker name → its outcomes on ``plan``.
        plan: The sessions.
        path: File to write.
    """
    buf = io.BytesIO()
    np.savez(buf, keys=plan.keys, users=plan.users, seeds=plan.seeds,
             **{f"{RETURNS_PREFIX}{name}": np.asarray(st.ret, dtype=np.float64) for name, st in stats.items()})
    atomic_write_bytes(path, buf.getvalue())


def read_returns(path: Path) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The inverse of :func:`write_returns`: ``(session keys uint64 (E,), name → float64 (E,) returns)``.

    Raises:
        ValueError: If the file lacks the keys or a return's length differs from theirs.
    """
    with np.load(path, allow_pickle=False) as data:
        if "keys" not in data.files:
            raise ValueError(f"{path}: no 'keys' array: not a returns file written by recfeed")
        keys = data["keys"]
        rets = {f[len(RETURNS_PREFIX):]: data[f] for f in data.files if f.startswith(RETURNS_PREFIX)}
    bad = [n for n, r in rets.items() if r.shape != keys.shape]
    if bad:
        raise ValueError(f"{path}: returns of {bad} do not match the {len(keys)} sessions")
    return keys, rets


def write_report(results: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Write ``results.json``, ``results.csv``, ``results.md`` and ``plots/*.png`` atomically.

    Args:
        results: The output of :func:`summarise`.
        out_dir: Report folder (created).

    Returns:
        Name → path of every file written.
    """
    out = Path(out_dir)
    paths = {"json": out / "results.json", "csv": out / "results.csv", "markdown": out / "results.md"}
    atomic_write_text(paths["json"], json.dumps(results, indent=2, allow_nan=False, default=json_default) + "\n")
    atomic_write_text(paths["csv"], results_csv(results))
    atomic_write_text(paths["markdown"], markdown_table(results))
    for name, fig in _plots(results).items():
        paths[name] = out / "plots" / f"{name}.png"
        atomic_write_bytes(paths[name], figure_png(fig, bbox_inches="tight"))
    return paths


def _plots(results: dict[str, Any]) -> dict[str, Any]:
    """Figures (matplotlib ``Figure`` objects, no pyplot state): metrics, α curve, ρ breakdown."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    names = list(results["rankers"])
    hidden = set(results.get("hidden_state", []))
    colors = ["#b0b0b0" if n in hidden else "#4c72b0" for n in names]
    figs: dict[str, Any] = {}

    metrics = [m for m in TABLE_COLUMNS if m in results["rankers"][names[0]]]
    ncols = 5
    nrows = math.ceil(len(metrics) / ncols)
    fig = Figure(figsize=(3.2 * ncols, 0.28 * len(names) * nrows + 1.4 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    y = np.arange(len(names))
    for ax, m in zip(axes.ravel(), metrics, strict=False):
        means = np.array([results["rankers"][n][m]["mean"] for n in names])
        ci = np.array([results["rankers"][n][m]["ci95"] for n in names])
        err = np.abs(np.stack([means - ci[:, 0], ci[:, 1] - means]))
        ax.barh(y, means, xerr=err, color=colors, capsize=2)
        ax.set_yticks(y, names if ax in axes[:, 0] else [""] * len(names), fontsize=8)
        ax.invert_yaxis()
        ax.set_title(TABLE_COLUMNS[m][0].replace("@K", f"@{results['setup'].get('slate_size', 'K')}"), fontsize=9)
        ax.tick_params(axis="x", labelsize=7)
    for ax in axes.ravel()[len(metrics):]:
        ax.set_visible(False)
    fig.suptitle(f"{results['setup'].get('users', '')} users, {results['setup']['episodes']} sessions per ranker; "
                 "bars: mean, whiskers: 95% bootstrap interval (grey: reads hidden state)", fontsize=9)
    figs["metrics"] = fig

    curve = results.get("alpha_curve")
    if curve:
        fig = Figure(figsize=(5.5, 3.6))
        ax = fig.subplots()
        a = np.array(curve["alphas"])
        mean = np.array(curve["mean_return"])
        ci = np.array(curve["ci95"])
        ax.plot(a, mean, marker="o", color="#4c72b0", label="fixed-α blend (training users)")
        ax.fill_between(a, ci[:, 0], ci[:, 1], color="#4c72b0", alpha=0.2, label="95% bootstrap interval")
        ax.axvline(curve["best_alpha"], color="#c44e52", ls="--", label=f"tuned α = {curve['best_alpha']:g}")
        ax.set_xlabel("α   (score = α·llm_sim + (1−α)·cf_score)")
        ax.set_ylabel("return per session")
        ax.set_title(f"tuned-alpha grid search, {curve['episodes']} sessions per α", fontsize=9)
        ax.legend(fontsize=8)
        figs["alpha_curve"] = fig

    by_rho = results["by_rho"]
    labels = [b for b in by_rho["buckets"] if b in by_rho["results"][names[0]]]
    fig = Figure(figsize=(max(6.0, 0.6 * len(names) * len(labels) / 2 + 3), 3.8))
    ax = fig.subplots()
    width = 0.8 / len(names)
    x = np.arange(len(labels))
    cmap = colormaps["tab20"]  # dark shades first, then the light ones: neighbours stay distinct
    for i, n in enumerate(names):
        cells = [by_rho["results"][n][b]["return"] for b in labels]
        means = np.array([c["mean"] for c in cells])
        ci = np.array([c["ci95"] for c in cells])
        color = cmap((2 * i) % 20 + (2 * i) // 20 % 2)
        ax.bar(x + (i - (len(names) - 1) / 2) * width, means, width, color=color, label=n,
               yerr=np.abs(np.stack([means - ci[:, 0], ci[:, 1] - means])), capsize=1.5)
    counts = [by_rho["results"][names[0]][b]["n"] for b in labels]
    ax.set_xticks(x, [f"{b}\n(n={c})" for b, c in zip(labels, counts, strict=True)], fontsize=8)
    ax.set_ylabel("return per session")
    ax.set_title("return by hidden user type ρ_u (weight of the semantic taste)", fontsize=9)
    ax.legend(fontsize=7, ncols=2, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    figs["by_rho"] = fig
    return figs
