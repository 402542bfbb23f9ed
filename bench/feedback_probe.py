"""Show the adjustment: scripted users click, the trained policy's α follows (issue #13, item 4).

``python -m bench.feedback_probe RUN_DIR [--sessions S] [--requests R] [--out DIR]`` plays scripted sessions to a
trained run's policy through the in-process serving runtime (exactly what production runs: the run is exported to
ONNX in a temporary folder, or ``--export DIR`` names an existing export of it, and
:class:`agents.serving.runtime.ServingRuntime` ranks and takes the feedback), and reports request by request the
policy's α and within-slate repulsion β and what the slate is made of.

Users and candidates:

* ``S`` held-out users of the run's world (a seeded permutation of the population, cycled), imported with
  ``set_user(pooled_state=…, cf_factor=…)``: the pooled prior-history state and the CF factor the simulator
  observes for them, the factor kept fixed within the session as the simulator keeps it (``--user-import
  history`` imports their logged history instead: pooled the same way, the CF factor folded in from the history
  and then from every click, as a live service would).
* Candidates: per session a pool built the way the simulator builds its pools (``envs/kernels.py``
  ``build_sessions``), from what the world exposes: the pool's shares (``env.candidates``) of the user's top items
  by observed LLM similarity and by observed CF score, draws from the most popular items, and uniform random
  items, history excluded, shuffled, the first ``pool_size`` kept. Each request shows N of the pool's items not
  clicked yet (N = the run's ``n_candidates``): the first N of a seeded permutation of the pool. All draws are
  seeded by ``(--seed, session, request)``, so the three behaviours meet the same users and the same candidates
  (common random numbers; only items clicked earlier in the session differ).

Behaviours (each user plays all three, as three separate users of the runtime):

* ``cf``: clicks the shown item that leans most to CF: the largest ``z(cf_score) − z(llm_sim)``, each feature
  standardised over the K shown items (the two features have different scales; the simulator's own evidence,
  ``clicked_cf_ema`` / ``clicked_llm_ema``, is likewise the clicked item against the slate's mean);
* ``llm``: clicks the item that leans most to the LLM similarity (the smallest of the same lean);
* ``none``: never clicks.

Each click is sent with ``--dwell`` seconds of dwell (default 40, about what the baselines' clicks get; 0 sends
none). Features are read from ``runtime.observation`` (what the policy sees) just before each ``recommend``.

Reported per request index 1..R and behaviour: mean α with a 95% percentile-bootstrap interval over sessions,
mean β, the slate's mean ``llm_sim`` and ``cf_score``, the distinct categories in the slate, clicks sent; and the
α gap cf − llm at request 5 (paired bootstrap interval over sessions). Writes ``feedback_probe.json``,
``feedback_probe.md`` and ``feedback_probe.png`` (α by request, one line per behaviour, shaded intervals) into
``RUN_DIR/report/`` (or ``--out``), atomically, and prints the table. The last line printed is the JSON summary
of the gap.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from configs.fileio import atomic_write_bytes, atomic_write_text, figure_png
from configs.loader import ConfigError

#: The scripted behaviours, in report order.
BEHAVIOURS: tuple[str, ...] = ("cf", "llm", "none")
#: Request index (1-based) at which the α gap cf − llm is reported.
GAP_AT = 5
REPORT_FILES = {"json": "feedback_probe.json", "markdown": "feedback_probe.md", "plot": "feedback_probe.png"}
_COLOURS = {"cf": "#DD8452", "llm": "#4C72B0", "none": "#7f7f7f"}


class ProbeError(RuntimeError):
    """The probe cannot run on this run directory (the message says why)."""


@dataclass(frozen=True)
class ProbeSettings:
    """What the probe plays.

    Attributes:
        sessions: Users S (each plays every behaviour).
        requests: Requests R per session (at most the run's ``max_steps``).
        seed: Seed of the users, pools, candidates and bootstrap.
        dwell_s: Dwell seconds sent with each click (0: none).
        population: World population the users come from.
        user_import: ``"sim"`` (pooled state + fixed CF factor, as the simulator observes) or ``"history"``.
        n_boot: Bootstrap resamples.
        gap_at: Request index (1-based) of the reported α gap.
    """

    sessions: int = 200
    requests: int = 10
    seed: int = 0
    dwell_s: float = 40.0
    population: str = "heldout"
    user_import: str = "sim"
    n_boot: int = 2000
    gap_at: int = GAP_AT

    def validate(self) -> None:
        """Raise ``ValueError`` naming the bad setting."""
        for name in ("sessions", "requests", "n_boot", "gap_at"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        if not (math.isfinite(self.dwell_s) and self.dwell_s >= 0):
            raise ValueError(f"dwell_s must be a finite number >= 0, got {self.dwell_s!r}")
        if self.user_import not in ("sim", "history"):
            raise ValueError(f"user_import must be 'sim' or 'history', got {self.user_import!r}")


# ---- users and candidates --------------------------------------------------------------------------------------


def probe_users(n_users: int, sessions: int, seed: int) -> np.ndarray:
    """int64 (S,) population indices: a seeded permutation of the population, cycled."""
    return np.resize(np.random.default_rng([seed, 0x05E7]).permutation(n_users), sessions).astype(np.int64)


def session_pool(world: Any, env_cfg: Any, user: int, population: str, reserve: int, rng: np.random.Generator
                 ) -> np.ndarray:
    """A user's session pool, built as the simulator builds it from the world's observable retrieval lists.

    Priority list: the ``llm_share`` of the user's top items by observed LLM similarity (pooled history state ·
    item embedding), the ``cf_share`` by observed CF score, ``popular_share`` draws from the 3× as many most popular
    items, then uniform random items; history excluded, duplicates dropped, cut at ``pool + reserve`` items,
    shuffled, the first ``pool`` kept (``pool = min(pool_size, M − H − reserve)``).

    Args:
        world: The run's world.
        env_cfg: The run's env config.
        user: Population index.
        population: Population name.
        reserve: Items kept back (the simulator keeps ``max_steps`` for consumed ones).
        rng: The session's generator.

    Returns:
        int64 (P,) catalog rows.
    """
    pop = world.populations[population]
    m = world.n_items
    hist = pop.history[user] if pop.history.ndim == 2 and pop.history.size else np.zeros(0, np.int64)
    hist = hist[hist >= 0]
    pool_n = min(max(int(env_cfg.candidates.pool_size), int(env_cfg.n_candidates)), m - len(hist) - reserve)
    if pool_n < env_cfg.n_candidates:
        raise ProbeError(f"catalog of {m} items is too small for N={env_cfg.n_candidates} candidates after a "
                         f"history of {len(hist)} and {reserve} reserve items")
    c = env_cfg.candidates
    shares = np.array([c.llm_share, c.cf_share, c.popular_share, c.random_share], np.float64)
    total = pool_n + reserve
    n_llm, n_cf, n_pop, _ = np.floor(shares / shares.sum() * total).astype(int)
    excluded = np.zeros(m, bool)
    excluded[hist] = True
    picked: list[np.ndarray] = []

    def take(order: np.ndarray, n: int) -> None:
        fresh = order[~excluded[order]][:n]
        excluded[fresh] = True
        picked.append(fresh)

    if n_llm > 0:
        take(np.argsort(-(world.item_emb @ pop.init_state[user]), kind="stable"), n_llm)
    if n_cf > 0 and pop.cf_user.size and world.item_factors.size:
        take(np.argsort(-(world.item_factors @ pop.cf_user[user]), kind="stable"), n_cf)
    if n_pop > 0:
        top = world.popular_items[: max(3 * n_pop, 1)]
        take(np.unique(top[rng.integers(0, len(top), n_pop)]), n_pop)
    rest = np.flatnonzero(~excluded)
    need = total - sum(len(p) for p in picked)
    picked.append(rng.permutation(rest)[:need])
    items = np.concatenate(picked).astype(np.int64)
    return items[rng.permutation(len(items))][:pool_n]


def request_candidates(pool: np.ndarray, consumed: set[int], n: int, rng: np.random.Generator) -> np.ndarray:
    """int64 (N,) the first N items of a seeded permutation of ``pool`` that are not in ``consumed``."""
    order = pool[rng.permutation(len(pool))]
    keep = order[[int(i) not in consumed for i in order]] if consumed else order
    if len(keep) < n:
        raise ProbeError(f"the session pool has {len(keep)} unclicked items, fewer than N={n}")
    return keep[:n]


def effective_alpha(alpha: float, features: np.ndarray, scale: str = "raw") -> float:
    """α on a common scale for one request (``features`` (N, F)): :func:`agents.ppo_ranker.effective_alpha`."""
    from agents.ppo_ranker import effective_alpha as rows

    return float(rows(alpha, features, scale))


def _zscore(x: np.ndarray) -> np.ndarray:
    return (x - x.mean()) / max(float(x.std()), 1e-6)


def pick_click(behaviour: str, shown_features: np.ndarray) -> int | None:
    """Slate position the scripted user clicks, or ``None``.

    Args:
        behaviour: ``"cf"``, ``"llm"`` or ``"none"``.
        shown_features: float32 (K, F) the features of the shown items, columns ``envs.spaces.FEATURE_NAMES``.

    Returns:
        ``cf``: the position of the largest ``z(cf_score) − z(llm_sim)`` over the slate; ``llm``: of the smallest;
        ``none``: ``None``.

    Raises:
        ValueError: For an unknown behaviour.
    """
    from envs.spaces import F_CF, F_LLM

    if behaviour == "none":
        return None
    lean = _zscore(shown_features[:, F_CF].astype(np.float64)) - _zscore(shown_features[:, F_LLM].astype(np.float64))
    if behaviour == "cf":
        return int(np.argmax(lean))
    if behaviour == "llm":
        return int(np.argmin(lean))
    raise ValueError(f"behaviour must be one of {BEHAVIOURS}, got {behaviour!r}")


# ---- loading ------------------------------------------------------------------------------------------------------


def _load_cfg(run: Path) -> Any:
    from agents.ppo_ranker import load_run_config

    try:
        return load_run_config(run)
    except (FileNotFoundError, ConfigError, ValueError, OSError) as exc:
        raise ProbeError(f"cannot read the run's config: {exc}") from exc


def load_run_world(run_dir: str | Path) -> tuple[Any, Any]:
    """The run's resolved config and its world.

    Raises:
        ProbeError: One line saying what cannot be loaded (no run directory, a bad config, a missing world).
    """
    from envs.presets import load_world

    cfg = _load_cfg(Path(run_dir))
    try:
        world = load_world(cfg.env, cfg.encoder, progress=False)
    except (FileNotFoundError, ValueError, KeyError, OSError, ImportError, RuntimeError) as exc:
        raise ProbeError(f"cannot load the world (catalog) of run {run_dir}: {type(exc).__name__}: {exc}") from exc
    return cfg, world


# ---- the probe ----------------------------------------------------------------------------------------------------


def _play(runtime: Any, world: Any, cfg: Any, settings: ProbeSettings, users: np.ndarray) -> dict[str, Any]:
    """Play every (session, behaviour); per-request arrays (S, R) per behaviour and event counts."""
    from agents.serving.messages import Event
    from envs.spaces import CONTEXT_NAMES, F_CF, F_LLM

    s_n, r_n = settings.sessions, settings.requests
    pop = world.populations[settings.population]
    ids = np.asarray(world.catalog.ids)
    category = world.catalog.category
    n = int(runtime.manifest["n_candidates"])
    alpha_scale = str(runtime.manifest.get("alpha_scale", "raw"))  # absent in exports before the standardised gate
    c_llm, c_cf = CONTEXT_NAMES.index("clicked_llm_ema"), CONTEXT_NAMES.index("clicked_cf_ema")
    keys = ("alpha", "alpha_eff", "slate_lean", "repulsion", "slate_llm_sim", "slate_cf_score", "slate_categories",
            "clicks", "click_lean",
            "ctx_clicked_llm_ema", "ctx_clicked_cf_ema")
    out = {b: {k: np.full((s_n, r_n), np.nan) for k in keys} for b in BEHAVIOURS}
    events = {b: {"sent": 0, "applied": 0} for b in BEHAVIOURS}
    fallbacks: dict[str, int] = {}
    for s, u in enumerate(users):
        pool = session_pool(world, cfg.env, int(u), settings.population, r_n,
                            np.random.default_rng([settings.seed, s, 0x9001]))
        hist = pop.history[u][pop.history[u] >= 0] if pop.history.size else np.zeros(0, np.int64)
        for b in BEHAVIOURS:
            uid = f"probe-{b}-{s}"
            if settings.user_import == "sim":
                runtime.set_user(uid, pooled_state=pop.init_state[u], cf_factor=pop.cf_user[u])
            else:
                runtime.set_user(uid, history=[str(x) for x in ids[hist]])
            consumed: set[int] = set()
            rec_arr = out[b]
            for r in range(r_n):
                cand = request_candidates(pool, consumed, n, np.random.default_rng([settings.seed, s, r, 0xFEED]))
                cids = [str(x) for x in ids[cand]]
                obs = runtime.observation(uid, cids)
                rec = runtime.recommend(uid, cids)
                if rec.source != "model":
                    fallbacks[rec.fallback_reason or "unknown"] = fallbacks.get(rec.fallback_reason or "unknown", 0) + 1
                where = {c: i for i, c in enumerate(cids)}
                pos = np.array([where[i] for i in rec.items])
                shown = obs["features"][pos]
                rec_arr["alpha"][s, r] = rec.alpha
                rec_arr["alpha_eff"][s, r] = effective_alpha(rec.alpha, obs["features"], alpha_scale)
                z_lean = (_zscore(obs["features"][:, F_CF].astype(np.float64))
                          - _zscore(obs["features"][:, F_LLM].astype(np.float64)))
                rec_arr["slate_lean"][s, r] = float(z_lean[pos].mean())
                rec_arr["repulsion"][s, r] = rec.repulsion
                rec_arr["slate_llm_sim"][s, r] = float(shown[:, F_LLM].mean())
                rec_arr["slate_cf_score"][s, r] = float(shown[:, F_CF].mean())
                rec_arr["slate_categories"][s, r] = len(np.unique(category[cand[pos]]))
                rec_arr["ctx_clicked_llm_ema"][s, r] = float(obs["context"][c_llm])
                rec_arr["ctx_clicked_cf_ema"][s, r] = float(obs["context"][c_cf])
                k = pick_click(b, shown)
                rec_arr["clicks"][s, r] = 0.0 if k is None else 1.0
                if k is None:
                    continue
                lean = _zscore(shown[:, F_CF].astype(np.float64)) - _zscore(shown[:, F_LLM].astype(np.float64))
                rec_arr["click_lean"][s, r] = float(lean[k])
                item = rec.items[k]
                events[b]["sent"] += 1
                events[b]["applied"] += runtime.observe(
                    uid, [Event("click", item, dwell_s=float(settings.dwell_s), request_id=rec.request_id)])
                consumed.add(int(cand[pos[k]]))
    if fallbacks:
        raise ProbeError(f"the serving runtime answered with its fallback blend instead of the policy {fallbacks} "
                         "(reason: count); the probe measures the policy, so it stops")
    return {"arrays": out, "events": events}


def _summarise(arrays: dict[str, dict[str, np.ndarray]], settings: ProbeSettings) -> tuple[list[dict], dict]:
    """Per (request, behaviour) rows and the α gap cf − llm (paired bootstrap over sessions)."""
    from agents.report import Bootstrap, percentile_ci

    boot = Bootstrap(settings.sessions, settings.n_boot, settings.seed)
    rows = []
    for r in range(settings.requests):
        for b in BEHAVIOURS:
            a = arrays[b]
            alpha = a["alpha"][:, r]
            lean = a["click_lean"][:, r]
            rows.append({
                "request": r + 1,
                "behaviour": b,
                "alpha": float(alpha.mean()),
                "alpha_ci95": list(percentile_ci(boot.means(alpha))),
                "alpha_eff": float(a["alpha_eff"][:, r].mean()),
                "slate_lean": float(a["slate_lean"][:, r].mean()),
                "repulsion": float(a["repulsion"][:, r].mean()),
                "slate_llm_sim": float(a["slate_llm_sim"][:, r].mean()),
                "slate_cf_score": float(a["slate_cf_score"][:, r].mean()),
                "slate_categories": float(a["slate_categories"][:, r].mean()),
                "clicks": int(a["clicks"][:, r].sum()),
                "click_lean": float(np.nanmean(lean)) if np.isfinite(lean).any() else None,
                "ctx_clicked_llm_ema": float(a["ctx_clicked_llm_ema"][:, r].mean()),
                "ctx_clicked_cf_ema": float(a["ctx_clicked_cf_ema"][:, r].mean()),
            })
    at = min(settings.gap_at, settings.requests)
    gaps = {}
    for key in ("alpha", "alpha_eff", "slate_lean"):
        by_request = []
        for r in range(settings.requests):
            d = arrays["cf"][key][:, r] - arrays["llm"][key][:, r]
            by_request.append({"request": r + 1, "cf_minus_llm": float(d.mean()),
                               "ci95": list(percentile_ci(boot.means(d)))})
        gaps[key] = {"request": at, **{k: v for k, v in by_request[at - 1].items() if k != "request"},
                     "abs": abs(by_request[at - 1]["cf_minus_llm"]), "by_request": by_request}
    gap = gaps["alpha"]
    gap["effective_alpha"] = gaps["alpha_eff"]
    gap["slate_lean"] = gaps["slate_lean"]
    return rows, gap


def run_probe(run_dir: str | Path, settings: ProbeSettings | None = None, export_dir: str | Path | None = None,
              fmt: str = "onnx", world: Any = None) -> dict[str, Any]:
    """Play the scripted sessions to a run's policy through the serving runtime; the JSON-ready report.

    Args:
        run_dir: A finished run directory (``config.yaml``, ``policy.safetensors`` + ``policy.json``).
        settings: What to play (default :class:`ProbeSettings`).
        export_dir: An existing export of this run (``python -m agents.export``); default: export to a temporary
            folder (removed afterwards).
        fmt: Export format when exporting (``onnx`` or ``torchscript``).
        world: The run's world (default: loaded from the run's config).

    Returns:
        ``{"run_dir", "settings", "export", "users", "rows": [...], "alpha_gap": {...}, "events": {...}}``; rows are
        one per (request, behaviour), request-major.

    Raises:
        ProbeError: The run, its world or its export cannot be used (one-line message).
        ValueError: Bad settings.
    """
    from agents.export import export_run
    from agents.serving.artifact import load_manifest
    from agents.serving.runtime import ServingRuntime

    settings = settings or ProbeSettings()
    settings.validate()
    run = Path(run_dir)
    if not run.is_dir():
        raise ProbeError(f"{run} is not a directory")
    if world is None:
        cfg, world = load_run_world(run)
    else:
        cfg = _load_cfg(run)
    if settings.population not in world.populations:
        raise ProbeError(f"the run's world has no population {settings.population!r} (it has "
                         f"{sorted(world.populations)})")
    if settings.requests > cfg.env.max_steps:
        raise ValueError(f"requests must be <= the run's max_steps ({cfg.env.max_steps}), got {settings.requests}")
    users = probe_users(world.populations[settings.population].size, settings.sessions, settings.seed)
    with tempfile.TemporaryDirectory(prefix="recfeed-probe-") as tmp:
        if export_dir is None:
            try:
                art = export_run(run, fmt, Path(tmp) / "export", world=world)  # type: ignore[arg-type]
            except (FileNotFoundError, ValueError) as exc:
                raise ProbeError(f"cannot export run {run}: {exc}") from exc
            export_info = {"format": fmt, "source": "temporary export (agents.export.export_run)"}
        else:
            art = Path(export_dir)
            try:
                manifest = load_manifest(art)
            except (FileNotFoundError, ValueError, OSError) as exc:
                raise ProbeError(f"cannot read the export {art}: {exc}") from exc
            if Path(manifest.get("run_dir", "")).resolve() != run.resolve():
                raise ProbeError(f"the export {art} was made from {manifest.get('run_dir')!r}, not from {run}")
            export_info = {"format": manifest["format"], "source": str(art)}
        runtime = ServingRuntime.load(art, time_budget_ms=60_000.0, session_timeout_s=1e9, clock=lambda: 1.0)
        try:
            played = _play(runtime, world, cfg, settings, users)
        finally:
            runtime.close()
    rows, gap = _summarise(played["arrays"], settings)
    return {
        "run_dir": str(run),
        "settings": asdict(settings),
        "setup": {"preset": cfg.env.preset, "encoder": world.encoder_name, "n_candidates": cfg.env.n_candidates,
                  "slate_size": cfg.env.slate_size, "candidates": "session pool as the simulator builds it (LLM / CF "
                  "top items, popular, random; history excluded); N per request from a seeded permutation of it, "
                  "clicked items excluded", "click": "cf: argmax z(cf_score) - z(llm_sim) over the slate; llm: argmin; "
                  "none: no click", "export": export_info},
        "users": users.tolist(),
        "rows": rows,
        "alpha_gap": gap,
        "events": played["events"],
    }


# ---- report -------------------------------------------------------------------------------------------------------


def _f(x: float | None, spec: str) -> str:
    return "–" if x is None or not math.isfinite(x) else format(x, spec)


def probe_table(result: dict[str, Any]) -> str:
    """The Markdown table: one row per (request, behaviour)."""
    lines = ["| request | behaviour | α (95% CI) | effective α | slate lean (z cf − z llm) | β | slate llm_sim | "
             "slate cf_score | categories | clicks |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in result["rows"]:
        lo, hi = row["alpha_ci95"]
        lines.append(f"| {row['request']} | {row['behaviour']} | {row['alpha']:.3f} ({lo:.3f}–{hi:.3f}) | "
                     f"{_f(row.get('alpha_eff'), '.3f')} | {_f(row.get('slate_lean'), '+.3f')} | "
                     f"{row['repulsion']:.2f} | {row['slate_llm_sim']:.3f} | {row['slate_cf_score']:.3f} | "
                     f"{row['slate_categories']:.1f} | {row['clicks']} |")
    return "\n".join(lines) + "\n"


def _gap_line(result: dict[str, Any]) -> str:
    g = result["alpha_gap"]
    lo, hi = g["ci95"]
    line = (f"α gap cf − llm at request {g['request']}: {g['cf_minus_llm']:+.4f} (95% CI {lo:+.4f} to {hi:+.4f}, "
            f"paired over {result['settings']['sessions']} sessions)")
    for key, label, spec in (("effective_alpha", "effective α", "+.3f"), ("slate_lean", "slate lean", "+.3f")):
        e = g.get(key)
        if e:
            line += (f"; {label} gap: {e['cf_minus_llm']:{spec}} ({e['ci95'][0]:{spec}} to {e['ci95'][1]:{spec}})")
    return line


def probe_markdown(result: dict[str, Any]) -> str:
    """``feedback_probe.md``: what was played, the table, the gap."""
    st, su = result["settings"], result["setup"]
    ev = ", ".join(f"{b}: {e['sent']} sent / {e['applied']} applied" for b, e in result["events"].items())
    head = [
        f"# Feedback probe: {result['run_dir']}",
        "",
        f"{st['sessions']} {st['population']} users (imported: {st['user_import']}) × {st['requests']} requests × "
        f"behaviours {', '.join(BEHAVIOURS)}; preset {su['preset']}, N = {su['n_candidates']}, "
        f"K = {su['slate_size']}; seed {st['seed']}; dwell {st['dwell_s']:g} s per click; policy served by "
        f"{su['export']['format']} ({su['export']['source']}).",
        "",
        f"Candidates: {su['candidates']}. Clicks: {su['click']} (features as the policy observes them).",
        f"Click events: {ev}.",
        "",
        "α: the policy's blend weight of llm_sim (1 − α on cf_score); β: its within-slate category repulsion; slate "
        "columns: means over the K shown items, then over sessions; 95% percentile-bootstrap intervals over sessions.",
        "",
        "",
    ]
    return "\n".join(head) + probe_table(result) + "\n" + _gap_line(result) + ".\n"


def probe_plot(result: dict[str, Any]) -> bytes:
    """PNG: α by request (one line per behaviour, shaded 95% intervals), and the slate's mean llm_sim / cf_score."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 3.8), layout="constrained")
    ax_a, ax_l, ax_c = fig.subplots(1, 3)
    for b in BEHAVIOURS:
        rows = [r for r in result["rows"] if r["behaviour"] == b]
        x = [r["request"] for r in rows]
        ax_a.plot(x, [r["alpha"] for r in rows], marker="o", ms=3, color=_COLOURS[b], label=b)
        ax_a.fill_between(x, [r["alpha_ci95"][0] for r in rows], [r["alpha_ci95"][1] for r in rows],
                          color=_COLOURS[b], alpha=0.2, linewidth=0)
        ax_l.plot(x, [r["slate_llm_sim"] for r in rows], marker="o", ms=3, color=_COLOURS[b], label=b)
        ax_c.plot(x, [r["slate_cf_score"] for r in rows], marker="o", ms=3, color=_COLOURS[b], label=b)
    g = result["alpha_gap"]
    ax_a.axvline(g["request"], color="#cccccc", lw=0.8, zorder=0)
    ax_a.set_title(f"policy α by request (gap cf − llm at {g['request']}: {g['cf_minus_llm']:+.3f})")
    ax_a.set_ylabel("α (weight of llm_sim)")
    ax_l.set_title("slate mean llm_sim")
    ax_c.set_title("slate mean cf_score")
    for ax in (ax_a, ax_l, ax_c):
        ax.set_xlabel("request in session")
        ax.legend(title="user clicks", fontsize=8)
    return figure_png(fig)


def write_probe(result: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Write ``feedback_probe.json``, ``.md`` and ``.png`` into ``out_dir`` atomically; name → path."""
    out = Path(out_dir)
    paths = {k: out / v for k, v in REPORT_FILES.items()}
    png = probe_plot(result)  # everything is built before the first file is written
    atomic_write_text(paths["json"], json.dumps(result, indent=2, allow_nan=False) + "\n")
    atomic_write_text(paths["markdown"], probe_markdown(result))
    atomic_write_bytes(paths["plot"], png)
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point (see the module docstring). Returns the exit status."""
    ap = argparse.ArgumentParser(prog="python -m bench.feedback_probe", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", help="a finished run directory (train.py)")
    d = ProbeSettings()
    ap.add_argument("--sessions", type=int, default=d.sessions, help="held-out users S (each plays every behaviour)")
    ap.add_argument("--requests", type=int, default=d.requests, help="requests R per session")
    ap.add_argument("--seed", type=int, default=d.seed, help="seed of users, pools, candidates, bootstrap")
    ap.add_argument("--dwell", type=float, default=d.dwell_s, help="dwell seconds sent with each click (0: none)")
    ap.add_argument("--users", default=d.population, help="world population the users come from")
    ap.add_argument("--user-import", choices=("sim", "history"), default=d.user_import,
                    help="sim: pooled state + fixed CF factor as the simulator observes; history: the logged history")
    ap.add_argument("--bootstrap", type=int, default=d.n_boot, help="bootstrap resamples")
    ap.add_argument("--gap-at", type=int, default=d.gap_at, help="request index of the reported α gap cf − llm")
    ap.add_argument("--export", default=None, help="an existing export of the run (default: a temporary ONNX export)")
    ap.add_argument("--format", choices=("onnx", "torchscript"), default="onnx", help="export format when exporting")
    ap.add_argument("--out", default=None, help="report folder (default RUN_DIR/report)")
    args = ap.parse_args(argv)
    settings = ProbeSettings(sessions=args.sessions, requests=args.requests, seed=args.seed, dwell_s=args.dwell,
                             population=args.users, user_import=args.user_import, n_boot=args.bootstrap,
                             gap_at=args.gap_at)
    try:
        settings.validate()
        result = run_probe(args.run_dir, settings, export_dir=args.export, fmt=args.format)
    except (ProbeError, ValueError) as exc:
        print(f"feedback_probe: error: {exc}", file=sys.stderr)
        return 2
    paths = write_probe(result, args.out or Path(args.run_dir) / "report")
    print(probe_table(result))
    print(_gap_line(result))
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    g = result["alpha_gap"]
    print(json.dumps({"run_dir": result["run_dir"], "alpha_gap_request": g["request"],
                      "alpha_gap_cf_minus_llm": g["cf_minus_llm"], "ci95": g["ci95"],
                      "effective_alpha_gap": g["effective_alpha"]["cf_minus_llm"],
                      "effective_alpha_ci95": g["effective_alpha"]["ci95"],
                      "slate_lean_gap": g["slate_lean"]["cf_minus_llm"]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
