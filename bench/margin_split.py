"""Where a ranker's margin over another comes from, request by request: better requests or longer sessions.

``python -m bench.margin_split --config RUN/config.yaml --seed S --rankers run:RUN,tuned-oracle-diverse`` plays each
ranker and the base (``--base``, default tuned-diverse, as the quality bar's reference) on the same held-out
sessions (common random numbers: each session's user, key and draws are the same for every ranker), records each
session's reward request by request (``run_episodes(per_step=True)``) and splits each ranker's margin in mean return
over the base, exactly, in two:

* **better requests**: ``Σ_t ½(a_X[t] + a_B[t])·(m_X[t] − m_B[t])``, the reward per served request gained at each
  request index t, weighed by how many sessions reach it;
* **longer sessions**: ``Σ_t (a_X[t] − a_B[t])·½(m_X[t] + m_B[t])``, the requests gained because sessions last
  longer (a user leaves when the time budget runs out, which a click refills and a slate without one drains
  faster), valued at the reward they bring;

with ``a_X[t]`` the share of sessions that reach request t under ranker X and ``m_X[t]`` its mean reward per session
that does (the symmetric split: the two parts sum to the margin, and neither order of the two effects is favoured).
``m_X[t]`` averages over the sessions that reach t, which differ between rankers (one that keeps more users keeps
some who would have left); the split does not remove that selection, so late bands of "better requests" are
read with it in mind.
95% intervals over sessions come from one shared bootstrap (the sessions resampled in pairs). The table gives the
parts per band of request indices too, so a margin earned late in the session (a non-myopic policy: it spends
early requests to keep the user) reads apart from one earned from the first request (a better myopic ranking).

``--by-type`` repeats the split on each hidden user type's sessions (ρ below or above ``agents.type_switch.RHO_EDGE``,
the quality protocol's CF-leaning / content-leaning split; research only, ρ is hidden): where, request by request, a
policy gains or loses against a rule for each kind of user. ``--tune-episodes`` and ``--eval-seed`` set the
references' search budget and the held-out sessions' evaluation seed apart from ``--seed`` (the references' tuning
seed), so a run can be split against the ``adapt`` bar's common references (``--seed 11 --tune-episodes 4000``).

``--over-rankers`` reads the rankers as runs of one recipe (one per training seed) and adds each part's mean over them
with its 95% t-interval (per type too with ``--by-type``), as ``--pool`` does over files.

``--json`` writes the summary atomically; ``--out PNG`` draws ``a_X[t]`` and ``m_X[t]`` for every ranker.
``--pool F [F …]`` reads such summaries (one per seed, each of its own run and sessions) and prints, per ranker
(runs matched by position; the first k, k the fewest any file has), each part's mean over the files with its
95% t-interval over them.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agents.evaluation import run_episodes
from agents.registry import check_specs, make_ranker
from agents.report import Bootstrap, percentile_ci
from bench.ppo_seeds import t_interval
from bench.quality_protocol import _type_masks
from bench.term_probe import finish_summary, heldout_setup, policy_core
from configs.fileio import atomic_write_bytes, figure_png
from configs.schema import ConfigError

#: Bands of request indices (1-based, inclusive) of the printed table; the last runs to the session's cap.
BANDS: tuple[tuple[int, int], ...] = ((1, 1), (2, 3), (4, 6), (7, 10), (11, 15), (16, 25), (26, 10**9))


@dataclass(frozen=True)
class Split:
    """A ranker's margin over the base, split per request index (each float64 (T,) or (R, T) per resample).

    Attributes:
        requests: Part from better requests, per request index.
        sessions: Part from longer sessions, per request index.
    """

    requests: np.ndarray
    sessions: np.ndarray


def survival_and_reward(step_reward: np.ndarray, length: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per request index t: the share of sessions that reach it, and their mean reward there.

    Args:
        step_reward: float (E, T) each session's reward request by request (0 past its end).
        length: float (E,) each session's requests.

    Returns:
        ``(a float64 (T,), s float64 (T,))``: ``a[t]`` the share of sessions with more than t requests, ``s[t]`` the
        mean over *all* sessions of the reward at request t (so ``s[t] = a[t]·m[t]`` and ``Σ s`` is the mean return).
    """
    t = np.arange(step_reward.shape[1])
    return (length[:, None] > t[None, :]).mean(axis=0), step_reward.mean(axis=0)


def split_margin(a_x: np.ndarray, s_x: np.ndarray, a_b: np.ndarray, s_b: np.ndarray) -> Split:
    """The symmetric split of ``Σ s_x − Σ s_b`` into better requests and longer sessions (see the module's text).

    Works on (T,) or (R, T) arrays alike. Where one side has no session left at t, its reward per request is taken
    to be the other's (it has no requests there to be better or worse), so that index adds to the sessions part only.

    Args:
        a_x: float (…, T) share of the ranker's sessions reaching each request.
        s_x: float (…, T) its mean reward per session at each request.
        a_b: float (…, T) the base's shares.
        s_b: float (…, T) the base's mean rewards.

    Returns:
        The two parts per request index; ``requests + sessions`` sums to ``s_x − s_b`` at each t.
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        m_x = np.where(a_x > 0, s_x / a_x, np.nan)
        m_b = np.where(a_b > 0, s_b / a_b, np.nan)
    m_x, m_b = np.where(np.isnan(m_x), m_b, m_x), np.where(np.isnan(m_b), m_x, m_b)
    m_x, m_b = np.nan_to_num(m_x), np.nan_to_num(m_b)  # neither side reaches t: both parts 0 there
    return Split(requests=0.5 * (a_x + a_b) * (m_x - m_b), sessions=(a_x - a_b) * 0.5 * (m_x + m_b))


def _boot_curves(step_reward: np.ndarray, length: np.ndarray, boot: Bootstrap,
                 chunk: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """:func:`survival_and_reward` in every resample of ``boot``: float64 (R, T) each."""
    a, s = [], []
    for i in range(0, boot.n_boot, chunk):
        idx = boot.idx[i:i + chunk]  # (r, E)
        ai, si = zip(*(survival_and_reward(step_reward[j], length[j]) for j in idx), strict=True)
        a.append(np.stack(ai))
        s.append(np.stack(si))
    return np.concatenate(a), np.concatenate(s)


def band_sums(x: np.ndarray, bands: tuple[tuple[int, int], ...] = BANDS) -> np.ndarray:
    """Sum ``x`` (…, T) over each band of 1-based request indices: float64 (…, len(bands))."""
    t_max = x.shape[-1]
    return np.stack([x[..., lo - 1:min(hi, t_max)].sum(axis=-1) for lo, hi in bands], axis=-1)


def margin_table(name: str, base: str, split: Split, boot_split: Split, bands: tuple[tuple[int, int], ...] = BANDS
                 ) -> dict[str, Any]:
    """The summary of one ranker's split: totals and per band, each with its 95% interval over sessions.

    Args:
        name: The ranker.
        base: The base's name.
        split: The split on the sessions, float (T,) parts.
        boot_split: The split in every resample, float (R, T) parts.
        bands: Bands of request indices.

    Returns:
        ``{"ranker", "base", "margin", "requests", "sessions" (each {"value", "ci95"}), "bands": [{"from", "to",
        "requests", "sessions"}, …]}`` (bands past the last request left out).
    """
    def part(v: float, reps: np.ndarray) -> dict[str, Any]:
        return {"value": float(v), "ci95": list(percentile_ci(reps))}

    total = split.requests + split.sessions
    boot_total = boot_split.requests + boot_split.sessions
    out: dict[str, Any] = {"ranker": name, "base": base, "margin": part(total.sum(), boot_total.sum(axis=1)),
                           "requests": part(split.requests.sum(), boot_split.requests.sum(axis=1)),
                           "sessions": part(split.sessions.sum(), boot_split.sessions.sum(axis=1)), "bands": []}
    t_max = len(total)
    req, ses = band_sums(split.requests, bands), band_sums(split.sessions, bands)
    boot_req, boot_ses = band_sums(boot_split.requests, bands), band_sums(boot_split.sessions, bands)
    for i, (lo, hi) in enumerate(bands):
        if lo > t_max:
            break
        out["bands"].append({"from": lo, "to": min(hi, t_max), "requests": part(req[i], boot_req[:, i]),
                             "sessions": part(ses[i], boot_ses[:, i])})
    return out


def _fmt(p: dict[str, Any]) -> str:
    return f"{p['value']:+.3f} ({p['ci95'][0]:+.3f} to {p['ci95'][1]:+.3f})"


def print_table(row: dict[str, Any]) -> None:
    """Print one ranker's split as a markdown table."""
    print(f"\n{row['ranker']} − {row['base']}: {_fmt(row['margin'])} = better requests {_fmt(row['requests'])} + "
          f"longer sessions {_fmt(row['sessions'])}")
    print("| requests | better requests | longer sessions |\n|---|---:|---:|")
    for b in row["bands"]:
        span = f"{b['from']}" if b["from"] == b["to"] else f"{b['from']}–{b['to']}"
        print(f"| {span} | {_fmt(b['requests'])} | {_fmt(b['sessions'])} |")


def pool(summaries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each split's parts averaged over summaries (seeds), with 95% t-intervals over them.

    The i-th split of every summary is pooled with the others' i-th (a protocol's seeds list their runs alike), so a
    run's name may differ between files; their bases must agree. Splits past the fewest any summary has are left out
    (one seed's file may hold more rankers).

    Args:
        summaries: :func:`main`'s JSON summaries.

    Returns:
        Per split position: ``{"rankers": names, "base", "n", "margin", "requests", "sessions" (each {"value",
        "ci95"}), "bands": [{"from", "to", "requests", "sessions"}, …]}`` (bands every summary has).

    Raises:
        ValueError: No summaries, or different bases.
    """
    if not summaries:
        raise ValueError("no summaries to pool")
    bases = {s["base"] for s in summaries}
    if len(bases) != 1:
        raise ValueError(f"summaries with different bases: {sorted(bases)}")

    def part(values: list[float]) -> dict[str, Any]:
        x = np.asarray(values, dtype=np.float64)
        return {"value": float(x.mean()), "ci95": t_interval(x)}

    out = []
    for i in range(min(len(s["splits"]) for s in summaries)):
        rows = [s["splits"][i] for s in summaries]
        n_bands = min(len(r["bands"]) for r in rows)
        bands = [{"from": rows[0]["bands"][j]["from"], "to": max(r["bands"][j]["to"] for r in rows),
                  **{k: part([r["bands"][j][k]["value"] for r in rows]) for k in ("requests", "sessions")}}
                 for j in range(n_bands)]
        out.append({"rankers": [r["ranker"] for r in rows], "base": rows[0]["base"], "n": len(rows),
                    **{k: part([r[k]["value"] for r in rows]) for k in ("margin", "requests", "sessions")},
                    "bands": bands})
    return out


def over_rankers(rows: list[dict[str, Any]], base: str, title: str) -> dict[str, Any]:
    """Each part of ``rows`` (:func:`margin_table` rows of one recipe's runs against ``base`` on the same sessions)
    averaged over the runs with its 95% t-interval over them (:func:`pool`'s reading; printed)."""
    row = pool([{"base": base, "splits": [r]} for r in rows])[0]
    row["ranker"] = f"the mean over {title} (t-intervals over the rankers)"
    print_table(row)
    return row


def split_by_type(played: dict[str, tuple[np.ndarray, np.ndarray]], base: str, specs: list[str], rho: np.ndarray,
                  n_boot: int, seed: int) -> dict[str, Any]:
    """Each ranker's split against ``base`` on each hidden user type's sessions (printed as it goes).

    Args:
        played: Ranker → (float (E, T) reward per request, float (E,) requests), every ranker on the same sessions.
        base: The base's name (in ``played``).
        specs: The rankers to split.
        rho: float (E,) the hidden ρ of each session's user.
        n_boot: Bootstrap resamples (over each type's sessions).
        seed: Seed of the resampling.

    Returns:
        Type label → ``{"sessions", "returns": name → mean, "splits": [margin_table rows]}``.
    """
    out: dict[str, Any] = {}
    for label, sel in _type_masks(rho).items():
        if sel.sum() < 2:
            out[label] = {"sessions": int(sel.sum()), "splits": []}
            continue
        boot = Bootstrap(int(sel.sum()), n_boot, seed)
        curves = {n: survival_and_reward(played[n][0][sel], played[n][1][sel]) for n in [base, *specs]}
        boots = {n: _boot_curves(played[n][0][sel], played[n][1][sel], boot) for n in [base, *specs]}
        rows = []
        for spec in specs:
            row = margin_table(f"{spec} [{label}]", base, split_margin(*curves[spec], *curves[base]),
                               split_margin(*boots[spec], *boots[base]))
            print_table(row)
            rows.append(row)
        out[label] = {"sessions": int(sel.sum()),
                      "returns": {n: float(played[n][0][sel].sum(axis=1).mean()) for n in [base, *specs]},
                      "splits": rows}
    return out


def plot(curves: dict[str, tuple[np.ndarray, np.ndarray]], title: str) -> bytes:
    """PNG bytes: per ranker, the share of sessions reaching each request and the mean reward of those that do."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7.5, 6.5), sharex=True)
    for name, (a, s) in curves.items():
        t = np.arange(1, len(a) + 1)
        live = a >= 0.02  # the reward per request of the last few percent of sessions is noise
        label = f"PPO ({Path(name[4:]).name})" if name.startswith("run:") else name
        top.plot(t, a, label=label)
        with np.errstate(invalid="ignore", divide="ignore"):
            bottom.plot(t[live], (s / a)[live], label=label)
    top.set_ylabel("share of sessions reaching request t")
    bottom.set_ylabel("mean reward at request t\n(sessions that reach it)")
    bottom.set_xlabel("request t of the session")
    top.set_title(title, fontsize=10)
    top.legend(fontsize=8)
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
    return figure_png(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Play the rankers, print each one's split against the base, return (and print last) the JSON summary."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default=None,
                    help="preset name or calibrated preset folder (default: the config's env.preset, else default)")
    ap.add_argument("--config", default=None, help="config file (a run's config.yaml: its env, tuning and eval)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the held-out sessions and of the references' tuning")
    ap.add_argument("--eval-seed", type=int, default=None,
                    help="evaluation seed of the held-out sessions (default: --seed)")
    ap.add_argument("--tune-episodes", type=int, default=None,
                    help="training sessions per point of the references' searches (default: the config's "
                         "eval.tune_episodes)")
    ap.add_argument("--over-rankers", action="store_true",
                    help="the rankers are runs of one recipe: also give each part's mean over them (t-intervals)")
    ap.add_argument("--by-type", action="store_true",
                    help="also split on each hidden user type's sessions (CF-leaning / content-leaning)")
    ap.add_argument("--rankers", help="comma-separated ranker specs (evaluate.py's), e.g. run:DIR")
    ap.add_argument("--base", default="tuned-diverse", help="the ranker each margin is taken over")
    ap.add_argument("--episodes", type=int, default=2000, help="held-out sessions (the same for every ranker)")
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--boot", type=int, default=1000, help="bootstrap resamples of the intervals")
    ap.add_argument("--json", type=Path, default=None, help="also write the summary here, atomically")
    ap.add_argument("--out", type=Path, default=None, help="write the curves' figure (PNG) here, atomically")
    ap.add_argument("--pool", type=Path, nargs="+", default=None,
                    help="instead: pool the --json summaries of several seeds (means, 95%% t-intervals over them)")
    args = ap.parse_args(argv)
    if args.pool is not None:
        if args.rankers is not None:
            ap.error("--pool reads finished summaries; it plays no --rankers")
        try:
            pooled = pool([json.loads(Path(f).read_text(encoding="utf-8")) for f in args.pool])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            ap.error(f"--pool: {type(exc).__name__}: {exc}")
        for row in pooled:
            names = list(dict.fromkeys(row["rankers"]))
            row["ranker"] = names[0] + (f" and {len(names) - 1} more" if len(names) > 1 else "") + \
                f" ({row['n']} files, t-intervals over them)"
            print_table(row)
        print(json.dumps(pooled))
        return {"pooled": pooled}
    if args.rankers is None:
        ap.error("--rankers: name at least one ranker (or --pool summaries)")
    for flag, path in (("--json", args.json), ("--out", args.out)):
        if path is not None and not path.parent.is_dir():
            ap.error(f"{flag}: folder {str(path.parent)!r} does not exist")
    if args.episodes < 2 or args.batch < 1 or args.boot < 1:
        ap.error(f"--episodes must be >= 2, --batch and --boot >= 1, got {args.episodes}, {args.batch}, {args.boot}")
    if args.tune_episodes is not None and args.tune_episodes < 1:
        ap.error(f"--tune-episodes must be >= 1, got {args.tune_episodes}")
    if args.eval_seed is not None and args.eval_seed < 0:
        ap.error(f"--eval-seed must be >= 0, got {args.eval_seed}")
    specs = [s.strip() for s in args.rankers.split(",") if s.strip()]
    if not specs:
        ap.error("--rankers: name at least one ranker")
    try:
        check_specs([args.base, *specs])
        overrides = [] if args.tune_episodes is None else [f"eval.tune_episodes={args.tune_episodes}"]
        cfg, world, core, plan, ctx = heldout_setup(args.config, args.preset, args.seed, args.episodes, args.batch,
                                                    eval_seed=args.eval_seed, overrides=overrides)
    except (ConfigError, ValueError, FileNotFoundError) as exc:
        ap.error(str(exc))
    boot = Bootstrap(len(plan), args.boot, args.seed)
    cores: dict[tuple[bool, bool, bool], Any] = {}
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    boots: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    returns: dict[str, float] = {}
    played: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # (step rewards (E, T), lengths (E,)) for --by-type
    for spec in [args.base, *specs]:
        ranker = make_ranker(spec, ctx)
        stats = run_episodes(policy_core(ranker, core, world, cores), ranker, plan, per_step=True)
        assert stats.step_reward is not None
        curves[spec] = survival_and_reward(stats.step_reward, stats.length)
        boots[spec] = _boot_curves(stats.step_reward, stats.length, boot)
        returns[spec] = float(stats.ret.mean())
        if args.by_type:
            played[spec] = (stats.step_reward, stats.length)
        print(f"{spec}: {stats.ret.mean():.3f} per session, {stats.length.mean():.2f} requests, "
              f"{stats.ret.sum() / stats.length.sum():.3f} per request", flush=True)
    out: dict[str, Any] = {"preset": cfg.env.preset, "config": args.config, "seed": args.seed,
                           "eval_seed": args.seed if args.eval_seed is None else args.eval_seed,
                           "tune_episodes": cfg.eval.tune_episodes, "episodes": len(plan), "base": args.base,
                           "returns": returns, "splits": []}
    a_b, s_b = curves[args.base]
    ba_b, bs_b = boots[args.base]
    for spec in specs:
        row = margin_table(spec, args.base, split_margin(*curves[spec], a_b, s_b),
                           split_margin(*boots[spec], ba_b, bs_b))
        print_table(row)
        out["splits"].append(row)
    if args.by_type:
        out["by_type"] = split_by_type(played, args.base, specs, core.pop.rho[plan.users], args.boot, args.seed)
    if args.over_rankers and len(specs) > 1:
        groups = [("all users", out)] + [(label, t) for label, t in out.get("by_type", {}).items() if t["splits"]]
        for label, holder in groups:
            holder["over_rankers"] = over_rankers(holder["splits"], args.base, f"{len(specs)} rankers, {label}")
    out["curves"] = {k: {"reach": a.tolist(), "reward": s.tolist()} for k, (a, s) in curves.items()}
    if args.out is not None:
        atomic_write_bytes(args.out, plot(curves, f"{cfg.env.preset}, seed {args.seed}: {len(plan):,} held-out "
                                                  f"sessions, the same for every ranker"))
        print(f"wrote {args.out}")
    return finish_summary(out, args.json)


if __name__ == "__main__":
    main()
