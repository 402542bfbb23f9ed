"""The fidelity report: held-out ranking of the simulator against MF and popularity, distribution checks
(popularity curve, genre mix, activity), plots and ``fidelity.md``."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from configs.fileio import atomic_write_bytes, figure_png
from configs.schema import EnvConfig
from envs.catalog import Catalog
from envs.cf import MFModel
from envs.data.cf_eval import evaluate_scores, interaction_matrix
from envs.data.interaction_log import InteractionLog
from envs.data.preprocess import PreprocessReport
from envs.factored import FactoredTables
from envs.world import PopulationTables, World

#: Model keys of ``fidelity.json``: the simulator's hidden utility, the ALS, popularity, and the observed LLM
#: similarity ``llm_sim`` (pooled history state · item embedding: the signal ``greedy-llm`` and α weigh).
MODELS: tuple[str, ...] = ("simulator", "mf", "popularity", "llm_sim")
#: Metric keys per model in ``fidelity.json``.
METRICS: tuple[str, ...] = ("auc", "ndcg@10", "recall@10")


#: Real users per block of session-start scores (bounds the (block, M) arrays on large catalogs).
SCORE_BLOCK = 256


class SessionStartScores:
    """Every real user's session-start utility and observed LLM similarity over the catalog, a block of users
    at a time, from each population's tables: the dense ones, or, past ``env.table_budget_mb``, the factored
    path's factors (:meth:`envs.factored.FactoredTables.catalog_rows`, equal up to float rounding). Nothing of
    size U×M is held, so the report runs on catalogs whose dense tables would not fit.

    The tables are taken from a one-row core of each population, so the env's later cores reuse them.

    Args:
        world: The calibrated world.
        cfg: Its env config.
        users: Real user indices per distinct population.
        n_users: U, real users (a user in no population scores 0 everywhere).
    """

    def __init__(self, world: World, cfg: EnvConfig, users: dict[str, np.ndarray], n_users: int) -> None:
        from envs.core import BatchedCore

        self.n_users, self.n_items = n_users, world.n_items
        self._affinity_scale = cfg.user_model.affinity_scale
        self._where = np.full(n_users, -1, np.int64)  # population index per real user
        self._row = np.zeros(n_users, np.int64)  # the user's row in it
        self._parts: list[tuple[PopulationTables | FactoredTables, np.ndarray]] = []
        for j, (name, idx) in enumerate(users.items()):
            self._parts.append((BatchedCore(world, cfg, 1, population=name).tables, world.populations[name].rho))
            self._where[idx] = j
            self._row[idx] = np.arange(len(idx))

    def utility(self, users: np.ndarray) -> np.ndarray:
        """float32 (b, M): the hidden session-start utility (no fatigue, no repeats) of a block of real users
        (int (b,))."""
        return self._rows(users, observed=False)

    def observed(self, users: np.ndarray) -> np.ndarray:
        """float32 (b, M): the observed ``state_sim = s_u·e_i`` of a block of real users (int (b,)): the env's
        ``llm_sim`` feature times ``‖s_u‖``, the same order per user."""
        return self._rows(users, observed=True)

    def _rows(self, users: np.ndarray, observed: bool) -> np.ndarray:
        users = np.asarray(users, np.int64)
        out = np.zeros((users.size, self.n_items), np.float32)
        for j, (tab, rho) in enumerate(self._parts):
            sel = np.flatnonzero(self._where[users] == j)
            if sel.size == 0:
                continue
            rows = self._row[users[sel]]
            factored = isinstance(tab, FactoredTables)
            if observed:
                out[sel] = tab.catalog_rows(rows, (3,))[..., 0] if factored else tab.state_sim[rows]
                continue
            if factored:
                packed = tab.catalog_rows(rows, (0, 1))
                sem, static = packed[..., 0], packed[..., 1]
            else:
                sem, static = tab.sem_aff[rows], tab.static_util[rows]
            out[sel] = self._affinity_scale * rho[rows, None] * (sem - tab.sem_mu[rows, None]) / tab.sem_sd[rows, None]
            out[sel] += static
        return out

    def blocks(self, size: int = SCORE_BLOCK) -> Iterator[tuple[int, int, np.ndarray]]:
        """``(lo, hi, utility float32 (hi - lo, M))`` for consecutive blocks of real users, in order."""
        for lo in range(0, self.n_users, size):
            hi = min(lo + size, self.n_users)
            yield lo, hi, self.utility(np.arange(lo, hi))


def rank_held_out(world: World, env: EnvConfig, users: dict[str, np.ndarray], n_users: int, mf: MFModel,
                  popularity: np.ndarray, train: InteractionLog, test: InteractionLog, max_users: int = 0,
                  seed: int = 0) -> tuple[dict[str, dict[str, float]], int, SessionStartScores]:
    """Held-out ranking of the simulator's session-start utility, the ALS alone, popularity and the observed LLM
    similarity (what the service sees of the text signal).

    Args:
        world: The calibrated world.
        env: Its env config.
        users: Real user indices per distinct population.
        n_users: U, real users.
        mf: The ALS fitted on train.
        popularity: float (M,) distinct train users per item.
        train: Train split.
        test: Held-out split.
        max_users: Evaluate at most this many users, a uniform sample (seeded) of those with held-out items
            (``calibrate.fidelity_users``; 0: all). The four models meet the same users.
        seed: Seed of that sample.

    Returns:
        (``{model: {metric: value}}`` rounded to 4 places, users evaluated, the session-start scores).
    """
    scores = SessionStartScores(world, env, users, n_users)
    sample = np.unique(test.codes()[0])
    if 0 < max_users < sample.size:
        sample = np.sort(np.random.default_rng(seed).choice(sample, max_users, replace=False))
    uf, itf = mf.user_factors, mf.item_factors
    pop_scores = popularity.astype(np.float64)
    models = {
        "simulator": evaluate_scores(scores.utility, train, test, users=sample),
        "mf": evaluate_scores(lambda ub: uf[ub] @ itf.T, train, test, users=sample),
        "popularity": evaluate_scores(lambda ub: np.broadcast_to(pop_scores, (len(ub), pop_scores.size)), train,
                                      test, users=sample),
        "llm_sim": evaluate_scores(scores.observed, train, test, users=sample),
    }
    n_eval = int(models["simulator"]["users"])
    return {k: {m_: round(float(v[m_]), 4) for m_ in METRICS} for k, v in models.items()}, n_eval, scores


def distribution_checks(world: World, env: EnvConfig, users: dict[str, np.ndarray], scores: SessionStartScores,
                        train: InteractionLog, test: InteractionLog, n_train_events: np.ndarray, sim_sessions: int,
                        seed: int, models: dict[str, dict[str, float]], out: Path) -> tuple[dict[str, Any], list[str]]:
    """Real held-out consumption against simulated choices and simulated sessions; the plots.

    Args:
        world: The calibrated world.
        env: Its env config.
        users: Real user indices per distinct population.
        scores: The simulator's session-start scores (:func:`rank_held_out`).
        train: Train split.
        test: Held-out split.
        n_train_events: int (U,) train events per real user (the real activity).
        sim_sessions: Env sessions per user under the logging policy.
        seed: Seed of the draws and the sessions.
        models: The ranking metrics (for the ranking plot).
        out: The preset directory (plots go to ``out/plots``).

    Returns:
        (the distributions for ``fidelity.json``, the plot paths relative to ``out``).
    """
    import dataclasses

    from envs.presets import run_logging_phase

    n_users = scores.n_users
    seen_train = interaction_matrix(train)
    held = (interaction_matrix(test) > seen_train).tocsr()
    _, real_i = held.nonzero()
    sims = {"simulated_choices": _draw_choices(scores.blocks(), seen_train, np.diff(held.indptr), seed)}
    env_sim = dataclasses.replace(env, logging=dataclasses.replace(env.logging, sessions_per_user=sim_sessions))
    su, si = [], []
    # These few sessions compute the Gram rows they need from the embeddings (World.gram_block's path for large
    # catalogs) instead of materialising the 4·M² byte matrix (380 MB, seconds, for MovieLens) on this world.
    world.__dict__["gram"] = None
    try:
        for j, (name, idx) in enumerate(users.items()):
            frame = run_logging_phase(world, env_sim, name, seed=seed + 17 * j)
            clicks = frame[frame["click_rank"] >= 0]
            su.append(idx[clicks["user"].to_numpy(dtype=np.int64)])
            si.append(clicks["clicked_item"].to_numpy(dtype=np.int64))
    finally:
        world.__dict__.pop("gram", None)
    sims["simulated_sessions"] = (np.concatenate(su), np.concatenate(si))
    sim_activity = np.bincount(sims["simulated_sessions"][0], minlength=n_users)
    dist = _distributions(real_i, sims, n_train_events, sim_activity, world.catalog)
    dist["activity"]["simulated_sessions_per_user"] = sim_sessions
    plots = _plots(out, dist, models, n_train_events, sim_activity)
    return {k: v for k, v in dist.items() if not k.startswith("_")}, plots


def _gini(counts: np.ndarray) -> float:
    x = np.sort(np.asarray(counts, np.float64))
    if x.sum() <= 0:
        return 0.0
    n = x.size
    return float((2 * np.arange(1, n + 1) - n - 1) @ x / (n * x.sum()))


def _popularity_stats(counts: np.ndarray) -> dict[str, float]:
    total = counts.sum()
    top = np.sort(counts)[::-1]
    k1 = max(1, round(0.01 * counts.size))
    k10 = max(1, round(0.10 * counts.size))
    return {
        "events": int(total),
        "gini": round(_gini(counts), 4),
        "top1pct_share": round(float(top[:k1].sum() / max(total, 1)), 4),
        "top10pct_share": round(float(top[:k10].sum() / max(total, 1)), 4),
        "coverage": round(float((counts > 0).mean()), 4),
    }


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    if a.size < 3 or np.all(a == a[0]) or np.all(b == b[0]):
        return float("nan")
    return round(float(spearmanr(a, b).statistic), 4)


def _draw_choices(blocks: Iterable[tuple[int, int, np.ndarray]], exclude: sp.csr_matrix, n_draw: np.ndarray,
                  seed: int) -> tuple[np.ndarray, ...]:
    """Each user draws ``n_draw[u]`` items without replacement from softmax(util[u]) over non-excluded items.

    Gumbel-top-k: the k largest of ``util + Gumbel noise`` are a sample without replacement from the softmax.
    The blocks draw their noise in turn from one generator, so the draw does not depend on the block size.

    Args:
        blocks: ``(lo, hi, float32 (hi - lo, M) utilities)`` covering the users in order (e.g.
            :meth:`SessionStartScores.blocks`).
        exclude: bool (U, M) items that cannot be drawn.
        n_draw: int (U,) items per user.
        seed: Seed.

    Returns:
        (users int64 (n,), items int64 (n,)).
    """
    gen = np.random.default_rng(seed)
    users_out, items_out = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for lo, hi, util in blocks:
        keys = util - np.log(-np.log(gen.random(util.shape, dtype=np.float32) + np.float32(1e-12)))
        keys[exclude[lo:hi].toarray().astype(bool)] = -np.inf
        n = np.minimum(n_draw[lo:hi], np.isfinite(keys).sum(axis=1))
        width = int(n.max()) if n.size else 0
        if width == 0:
            continue
        top = np.argpartition(-keys, width - 1, axis=1)[:, :width]
        order = np.argsort(-np.take_along_axis(keys, top, axis=1), axis=1)
        top = np.take_along_axis(top, order, axis=1)
        take = np.arange(width)[None, :] < n[:, None]
        users_out.append(np.broadcast_to(np.arange(lo, hi)[:, None], top.shape)[take].astype(np.int64))
        items_out.append(top[take].astype(np.int64))
    return np.concatenate(users_out), np.concatenate(items_out)


def _distributions(real_items: np.ndarray, sims: dict[str, tuple[np.ndarray, np.ndarray]], real_activity: np.ndarray,
                   sim_activity: np.ndarray, catalog: Catalog) -> dict[str, Any]:
    """Popularity curve, genre mix and activity statistics, real against each simulated source."""
    m, c = catalog.n_items, catalog.n_categories
    names = catalog.category_names
    real_counts = np.bincount(real_items, minlength=m)
    sources = {"real": real_counts, **{k: np.bincount(v[1], minlength=m) for k, v in sims.items()}}
    pop = {k: _popularity_stats(v) for k, v in sources.items()}
    for k in sims:
        pop[k]["spearman_vs_real"] = _spearman(real_counts, sources[k])
    mix = {k: np.bincount(catalog.category[v > 0].repeat(v[v > 0]), minlength=c) for k, v in sources.items()}
    shares = {k: (v / max(v.sum(), 1)).round(4).tolist() for k, v in mix.items()}
    tv = {k: round(0.5 * float(np.abs(np.array(shares[k]) - np.array(shares["real"])).sum()), 4) for k in sims}

    def quantiles(x: np.ndarray) -> dict[str, float | None]:
        med = float(np.median(x)) if x.size else 0.0
        qs = np.quantile(x, [0.1, 0.25, 0.5, 0.75, 0.9]) if x.size else np.zeros(5)
        return {"median": round(med, 3), "mean": round(float(x.mean()) if x.size else 0.0, 3),
                **{f"q{int(p * 100)}_over_median": round(float(v / med), 3) if med > 0 else None
                   for p, v in zip((0.1, 0.25, 0.5, 0.75, 0.9), qs, strict=True)},
                "cv": round(float(x.std() / x.mean()), 3) if x.size and x.mean() > 0 else None}

    return {
        "popularity": pop,
        "genre_mix": {"categories": names, "shares": shares, "tv_distance_vs_real": tv},
        "activity": {
            "real": quantiles(real_activity.astype(np.float64)),
            "simulated_sessions": quantiles(sim_activity.astype(np.float64)),
            "spearman_real_vs_simulated": _spearman(real_activity, sim_activity),
        },
        "_counts": sources,  # for the plots; dropped before writing JSON
        "_mix": mix,
    }


def _save_figure(fig: Any, path: Path) -> None:
    atomic_write_bytes(path, figure_png(fig, dpi=90))


def _plots(out: Path, dist: dict[str, Any], models: dict[str, dict[str, float]], real_activity: np.ndarray,
           sim_activity: np.ndarray) -> list[str]:
    """Write the PNGs under ``out/plots``; returns their paths relative to ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = {"real": "real (held-out)", "simulated_choices": "simulated choices",
              "simulated_sessions": "simulated sessions (logging policy)"}
    colors = {"real": "black", "simulated_choices": "tab:blue", "simulated_sessions": "tab:orange"}
    written = []

    fig, ax = plt.subplots(figsize=(6.4, 4.2), layout="constrained")
    for k, counts in dist["_counts"].items():
        y = np.sort(counts)[::-1].astype(np.float64)
        y = y[y > 0] / counts.sum()
        x = np.unique(np.geomspace(1, max(y.size, 1), 200).astype(np.int64))  # log-spaced ranks: a light figure
        ax.loglog(x, y[x - 1], label=labels.get(k, k), color=colors.get(k))
    ax.set_xlabel("item rank")
    ax.set_ylabel("share of consumption")
    ax.set_title("Item popularity curve")
    ax.legend()
    _save_figure(fig, out / "plots" / "popularity.png")
    plt.close(fig)
    written.append("plots/popularity.png")

    names = dist["genre_mix"]["categories"]
    shares = dist["genre_mix"]["shares"]
    order = np.argsort(-np.array(shares["real"]))
    fig, ax = plt.subplots(figsize=(max(6.4, 0.45 * len(names)), 4.2), layout="constrained")
    width = 0.8 / len(shares)
    for j, (k, v) in enumerate(shares.items()):
        ax.bar(np.arange(len(names)) + j * width, np.array(v)[order], width, label=labels.get(k, k),
               color=colors.get(k))
    ax.set_xticks(np.arange(len(names)) + 0.4 - width / 2)
    ax.set_xticklabels([names[i] for i in order], rotation=60, ha="right")
    ax.set_ylabel("share of consumption")
    ax.set_title("Genre mix of consumption (first genre)")
    ax.legend()
    _save_figure(fig, out / "plots" / "genre_mix.png")
    plt.close(fig)
    written.append("plots/genre_mix.png")

    fig, ax = plt.subplots(figsize=(6.4, 4.2), layout="constrained")
    act_labels = {"real": "real (train events)", "simulated_sessions": "simulated sessions (clicks)"}
    for k, x in (("real", real_activity), ("simulated_sessions", sim_activity)):
        x = np.sort(np.asarray(x, np.float64))
        mean = x.mean() if x.size and x.mean() > 0 else 1.0
        ax.step(x / mean, np.arange(1, x.size + 1) / max(x.size, 1), where="post", label=act_labels[k],
                color=colors.get(k))
    ax.set_xscale("symlog", linthresh=0.1)
    ax.set_xlim(left=0)
    ax.set_xlabel("activity / mean activity (symlog: users without clicks sit at 0)")
    ax.set_ylabel("share of users (CDF)")
    ax.set_title("Activity per user")
    ax.legend()
    _save_figure(fig, out / "plots" / "activity.png")
    plt.close(fig)
    written.append("plots/activity.png")

    fig, axes = plt.subplots(1, len(METRICS), figsize=(11.2, 3.6), layout="constrained")
    for ax, metric in zip(axes, METRICS, strict=True):
        vals = [models[k][metric] for k in MODELS]
        ax.bar(MODELS, vals, color=["tab:green", "tab:blue", "tab:gray", "tab:purple"])
        ax.set_title(metric)
        for j, v in enumerate(vals):
            ax.text(j, v, f"{v:.3f}", ha="center", va="bottom", fontsize=8)
        ax.tick_params(axis="x", rotation=20)
    fig.suptitle("Held-out ranking of the real users' next items")
    _save_figure(fig, out / "plots" / "ranking.png")
    plt.close(fig)
    written.append("plots/ranking.png")
    return written


def _fitted_row(entry: dict | None, value: str, describe: Callable[[dict], str]) -> str:
    """A fitted parameter's row of the fidelity table: its value, and what it was fitted from (``describe``) or
    "(not fitted)"; reports written before the parameter had a fit have no entry."""
    if not entry:
        return "(not fitted)"
    if not entry.get("fitted"):
        return f"{entry[value]} (not fitted)"
    return f"{entry[value]}, fitted: {describe(entry)}"


def _intent_fit(intent: dict) -> str:
    sim = ", ".join(f"{g:g}: {r}" for g, r in zip(intent["grid"], intent["simulated"], strict=True))
    return (f"coherence within / across / between sessions {intent['within']} / {intent['across']} / "
            f"{intent['between']}, ratio {intent['ratio']} ({intent['users']} users, {intent['sessions']} sessions, "
            f"{intent['gap_minutes']:g}-minute gaps); simulated ratio by σ {sim}")


def _drift_fit(drift: dict) -> str:
    prof = ", ".join(f"{lag}: {c}" for lag, c in zip(drift["lags"], drift["cosine"], strict=True))
    sim = ", ".join(f"{g:g}: {d}" for g, d in zip(drift["grid"], drift["simulated"], strict=True))
    return (f"mean cosine of two items of a session by events apart {prof}, decay {drift['decay']} "
            f"({drift['gap_minutes']:g}-minute gaps); simulated decay by η {sim} ({drift['sessions_simulated']} "
            f"sessions)")


def fidelity_markdown(report: dict[str, Any], prep: PreprocessReport | None = None) -> str:
    """The fidelity report as Markdown (what ``fidelity.md`` holds).

    Args:
        report: The dict :func:`calibrate` returns.
        prep: The preprocessing report (its table is included when given).

    Returns:
        Markdown text.
    """
    sp_, fit, dist = report["split"], report["fit"], report["distributions"]
    emb = report.get("item_embeddings") or {}
    lines = [
        f"# Fidelity of the calibrated preset `{report['preset']}`",
        "",
        f"Encoder `{report['encoder']}`." + (f" Command: `{report['command']}`" if report.get("command") else ""),
        "",
        "## Held-out ranking",
        "",
        f"Temporal split: each user's last {sp_['holdout']:.0%} of events in time held out; train "
        f"{sp_['train_events']} / test {sp_['test_events']} events; {sp_['users_evaluated']} users evaluated"
        + (f" (a seeded sample of {sp_['fidelity_users']} of the {sp_['users_with_held_out']} users with held-out "
           "items, `calibrate.fidelity_users`)"
           if 0 < sp_.get("fidelity_users", 0) < sp_.get("users_with_held_out", 0) else "") + " over "
        f"the items they had not consumed in train ({sp_['items']} items). `simulator`: the simulated user's "
        "session-start utility (the order of its click probabilities); `mf`: the same ALS alone; `popularity`: "
        "distinct train users per item; `llm_sim`: the *observed* LLM similarity of the pooled history state "
        "to the item (the env's `llm_sim` feature, what `greedy-llm` ranks by and the α blend weighs)"
        + (f", computed on item embeddings {'centred on the catalog mean' if emb.get('centred') else 'not centred'}"
           f" (raw |mean| {emb.get('raw_mean_norm')})" if emb else "") + ".",
        "",
        "| model | " + " | ".join(METRICS) + " |",
        "|---|" + "---:|" * len(METRICS),
    ]
    for k in MODELS:
        lines.append(f"| {k} | " + " | ".join(f"{report['models'][k][m]:.4f}" for m in METRICS) + " |")
    lines += [
        "",
        "![ranking](plots/ranking.png)",
        "",
        "## Fitted response parameters",
        "",
        f"Maximum likelihood on {fit['choices']} validation choices ({fit['users_with_choices']} users; each "
        f"user's last {sp_['validation']:.0%} of train events, the rest refitted): log-likelihood per choice "
        f"{fit['loglik_per_choice']:.3f}.",
        "",
        "| parameter | value |",
        "|---|---|",
        f"| affinity_scale a | {fit['affinity_scale']} |",
        f"| quality features → coefficients | {', '.join(f'{n} {c:+.3f}' for n, c in zip(fit['quality_features'], fit['quality_coef'], strict=True)) or 'none'} |",  # noqa: E501
        f"| quality_weight (std of the fitted combination) | {fit['quality_weight']} |",
        f"| ρ_u: mean, 10 / 50 / 90 % | {fit['rho']['mean']:.3f}, {fit['rho']['q10']:.3f} / "
        f"{fit['rho']['q50']:.3f} / {fit['rho']['q90']:.3f} ({fit['rho']['prior']} prior) |",
        f"| no_click_utility | {fit['no_click_utility']} (random-slate first-request CTR "
        f"{fit['random_slate_ctr']}, target {fit['target_random_ctr']}) |",
        f"| ALS | {fit['als']} |",
        f"| semantic taste | {fit['taste']} |",
        f"| session intent σ | {_fitted_row(fit.get('session_intent'), 'sigma', _intent_fit)} |",
        f"| drift rate η | {_fitted_row(fit.get('drift_rate'), 'rate', _drift_fit)} |",
        "",
        "## Distributions, simulated against real",
        "",
        "Real = the held-out consumption (test items new to the user). Simulated choices = each simulated user "
        "draws as many items as the real user held out, without replacement, from its choice probabilities over "
        f"the items not in its train set. Simulated sessions = {dist['activity'].get('simulated_sessions_per_user')} "
        "env sessions per user under the logging policy (ε-uniform + Plackett-Luce on LLM similarity), "
        "consumption = clicks.",
        "",
        "| source | events | gini | top 1% items' share | top 10% share | coverage | Spearman vs real | genre TV distance |",  # noqa: E501
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for k, v in dist["popularity"].items():
        rho_s = v.get("spearman_vs_real")
        tv = dist["genre_mix"]["tv_distance_vs_real"].get(k)
        lines.append(f"| {k} | {v['events']} | {v['gini']:.3f} | {v['top1pct_share']:.3f} | {v['top10pct_share']:.3f} "
                     f"| {v['coverage']:.3f} | {'' if rho_s is None else f'{rho_s:.3f}'} | "
                     f"{'' if tv is None else f'{tv:.3f}'} |")
    act = dist["activity"]
    lines += [
        "",
        "![popularity](plots/popularity.png) ![genres](plots/genre_mix.png)",
        "",
        "Activity per user (real: train events; simulated: clicks in the sessions; patience scales with real "
        f"activity): Spearman {act['spearman_real_vs_simulated']}.",
        "",
        "| source | median | mean | q10 / median | q90 / median | cv |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for k in ("real", "simulated_sessions"):
        v = act[k]
        lines.append(f"| {k} | {v['median']} | {v['mean']} | {v['q10_over_median']} | {v['q90_over_median']} | "
                     f"{v['cv']} |")
    lines += ["", "![activity](plots/activity.png)", "", "## Timings (seconds)", "",
              "| step | s |", "|---|---:|"]
    lines += [f"| {k} | {v} |" for k, v in report["timings"].items()]
    if prep is not None:
        lines += ["", "## Preprocessing", "", prep.to_markdown()]
    return "\n".join(lines).rstrip() + "\n"
