"""Which part of a trained policy earns its margin: each learned component credited by its Shapley value.

``python -m bench.policy_anatomy RUN [--episodes E] [--seed S] [--json F]`` plays a trained run's policy on the same
held-out sessions (common random numbers: each session's user, key and draws are the same for every variant) with
every subset of its learned components put back at their start values
(:meth:`agents.policies.SlatePolicy.with_components_at_start`, :data:`agents.policies.LEARNED_COMPONENTS`):

* ``gate``: the learned shift of α (what the policy makes of the feedback for the blend's weight);
* ``residual``: the per-candidate residual (the MLP over each candidate and the state, and the linear feature path);
* ``repulsion``: the state-dependent within-slate category repulsion β;
* ``temperature``: the learned sharpness of the blend against the residual.

With all four at their start the policy's mode is the rule it was started at (``tuned-diverse`` on the default
preset: the run's training tunes it and a test checks the slates agree), so the 2⁴ = 16 variants span the way from
that rule to the trained policy. Each component's **Shapley value** is its margin added, averaged over the orders in
which the components can be switched on: the four values sum exactly to the policy's margin over the started rule,
and a component that adds only in combination with another shares that gain with it. The same is reported for the
session length (requests per session; on the default preset most of PPO's margin is users kept longer,
``bench.margin_split``). Intervals: percentile bootstrap over the sessions (one shared resampling, so every figure is
paired). The references ``--references`` (default: the run's started rule, ``tuned-diverse``, and
``tuned-pop-diverse``) play the same sessions, so "all at start" can be checked against the rule itself.

What the gate's worth is made of: the trained policy is played once more with the gate's learned logit held at
its mean over the states it visited (:meth:`agents.policies.SlatePolicy.with_constant_gate`; every other part
learned): a gate that only moved α to a better constant loses nothing there, one that follows the session's state
(the feedback) loses what that following is worth (``gate_state_dependence``, paired, with the logit's mean and SD).
And once with every head reading the mean state embedding (:meth:`agents.policies.SlatePolicy.with_constant_state`:
the gate at its mean logit, the residual and the repulsion at the mean of what they read of the user, the session's
context and the candidate set): each candidate is then scored from its own feature row only, a static re-scoring an
engineer could tabulate, so ``state_dependence`` (the trained policy − it) is what the policy's reading of the user
and the session is worth, and ``constant_state − start`` what the static re-scoring is worth over the rule. Last,
the start with only α moved by the gate's mean logit (``shifted_start − start``): what a better constant α is worth
to the rule, beside what the gate adds within the trained policy.

``--pool F [F …]`` reads such summaries (one per seed) and prints each component's mean Shapley value with its 95%
t-interval over them; ``--group LABEL F [F …]`` (repeatable) pools each group apart and ``--out PNG`` draws every
group's values side by side. The last line printed is the JSON summary (``--json``: also written there, atomically).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch as th

from agents.evaluation import run_episodes
from agents.policies import LEARNED_COMPONENTS
from agents.ppo_ranker import PPORanker
from agents.registry import check_specs, make_ranker
from agents.report import Bootstrap, percentile_ci
from bench.policy_readout import RequestRecorder
from bench.ppo_seeds import t_interval
from bench.term_probe import finish_summary, policy_core, run_setup
from configs.fileio import atomic_write_bytes, figure_png
from configs.schema import ConfigError

DEFAULT_REFERENCES = ("tuned-diverse", "tuned-pop-diverse")


def subsets(names: tuple[str, ...]) -> list[frozenset[str]]:
    """Every subset of ``names`` (the components left *learned*), the empty set first, the full set last."""
    return [frozenset(c) for r in range(len(names) + 1) for c in itertools.combinations(names, r)]


def shapley(values: dict[frozenset[str], np.ndarray], names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Shapley value of each player of the game ``values`` (subset of players → payoff, any array shape).

    ``φ_i = Σ_{S ∌ i} |S|!·(n − |S| − 1)!/n! · (v(S ∪ {i}) − v(S))``; the values sum to ``v(all) − v(∅)``.

    Args:
        values: The payoff of every subset of ``names`` (arrays of one shape: per session values stay per session).
        names: The players.

    Returns:
        Player → its value (the payoffs' shape).
    """
    n = len(names)
    out: dict[str, np.ndarray] = {}
    for name in names:
        others = tuple(x for x in names if x != name)
        total = np.zeros_like(np.asarray(values[frozenset(names)], dtype=np.float64))
        for s in subsets(others):
            weight = math.factorial(len(s)) * math.factorial(n - len(s) - 1) / math.factorial(n)
            total = total + weight * (np.asarray(values[s | {name}], np.float64) - np.asarray(values[s], np.float64))
        out[name] = total
    return out


def label(learned: frozenset[str]) -> str:
    """A variant's name: the components it keeps learned (``start``: none, ``ppo``: all)."""
    if not learned:
        return "start"
    if learned == frozenset(LEARNED_COMPONENTS):
        return "ppo"
    return "+".join(c for c in LEARNED_COMPONENTS if c in learned)


def _interval(x: np.ndarray, boot: Bootstrap) -> dict[str, Any]:
    """Mean of the per-session values ``x`` (E,) with its bootstrap interval."""
    return {"mean": float(x.mean()), "ci95": list(percentile_ci(boot.means(x)))}


def anatomy(ranker: PPORanker, returns: dict[frozenset[str], np.ndarray], lengths: dict[frozenset[str], np.ndarray],
            references: dict[str, np.ndarray], boot: Bootstrap, constant_gate: np.ndarray,
            shift: tuple[float, float], constant_state: np.ndarray, requests: int,
            shifted_start: np.ndarray) -> dict[str, Any]:
    """The summary of one run: every variant's return and length, each component's Shapley values, the references.

    Args:
        ranker: The run's ranker (for its name only).
        returns: Subset of learned components → float (E,) per-session returns.
        lengths: The same, requests per session.
        references: Reference name → float (E,) per-session returns on the same sessions.
        boot: The shared resampling.
        constant_gate: float (E,) the trained policy's returns with its gate's logit held at ``shift[0]``.
        shift: Mean and SD of the gate's learned logit over the requests the trained policy answered.
        constant_state: float (E,) the trained policy's returns with every head reading the mean state embedding.
        requests: How many requests the means are over.
        shifted_start: float (E,) the start (every component at its start value) with the gate's learned logit at
            ``shift[0]``: the rule with α moved by PPO's mean shift, a better constant α if that is what the gate is.
    """
    start, full = returns[frozenset()], returns[frozenset(LEARNED_COMPONENTS)]
    phi_ret, phi_len = shapley(returns, LEARNED_COMPONENTS), shapley(lengths, LEARNED_COMPONENTS)
    return {
        "ranker": ranker.name,
        "variants": {label(s): {"return": _interval(r, boot), "length": float(lengths[s].mean()),
                                "vs start": _interval(r - start, boot)} for s, r in returns.items()},
        "margin": _interval(full - start, boot),
        "shapley_return": {c: _interval(v, boot) for c, v in phi_ret.items()},
        "shapley_length": {c: _interval(v, boot) for c, v in phi_len.items()},
        "references": {name: {"return": _interval(r, boot), "start − it": _interval(start - r, boot),
                               "ppo − it": _interval(full - r, boot)} for name, r in references.items()},
        "gate_shift": {"mean": shift[0], "sd": shift[1], "requests": requests},
        "constant_gate": _interval(constant_gate, boot),
        "gate_state_dependence": _interval(full - constant_gate, boot),
        "constant_state": _interval(constant_state, boot),
        "state_dependence": _interval(full - constant_state, boot),
        "constant_state − start": _interval(constant_state - start, boot),
        "shifted_start − start": _interval(shifted_start - start, boot),
    }


def _fmt(p: dict[str, Any], digits: int = 3) -> str:
    lo, hi = p["ci95"]
    return f"{p['mean']:+.{digits}f} ({lo:+.{digits}f} to {hi:+.{digits}f})"


def print_summary(out: dict[str, Any]) -> None:
    """The tables of one run's summary."""
    print(f"\n{out['run']}: {out['episodes']} held-out sessions of seed {out['seed']} ({out['preset']})")
    print("| learned (the rest at start) | return | requests | vs start |\n|---|---:|---:|---:|")
    for name, v in out["variants"].items():
        print(f"| {name} | {v['return']['mean']:.3f} | {v['length']:.2f} | {_fmt(v['vs start'])} |")
    print(f"\nmargin of the trained policy over its start: {_fmt(out['margin'])}")
    print("| component | Shapley value, return | Shapley value, requests per session |\n|---|---:|---:|")
    for c in LEARNED_COMPONENTS:
        print(f"| {c} | {_fmt(out['shapley_return'][c])} | {_fmt(out['shapley_length'][c], 2)} |")
    g = out["gate_shift"]
    print(f"gate's learned logit over the requests answered: mean {g['mean']:+.3f}, SD {g['sd']:.3f}; held at its "
          f"mean: {out['constant_gate']['mean']:.3f}; the trained policy − that (the gate's state dependence): "
          f"{_fmt(out['gate_state_dependence'])}")
    print(f"every head at the mean state embedding: {out['constant_state']['mean']:.3f}; the trained policy − that "
          f"(its reading of the user and the session): {_fmt(out['state_dependence'])}; that − the start: "
          f"{_fmt(out['constant_state − start'])}")
    print(f"the start with α moved by the gate's mean logit − the start (a better constant α): "
          f"{_fmt(out['shifted_start − start'])}")
    for name, r in out["references"].items():
        print(f"{name}: {r['return']['mean']:.3f}; start − it {_fmt(r['start − it'])}; ppo − it {_fmt(r['ppo − it'])}")


def pool(summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """Each component's mean Shapley value over the summaries (seeds) with a 95% t-interval over them."""
    def part(values: list[float]) -> dict[str, Any]:
        x = np.asarray(values, np.float64)
        return {"mean": float(x.mean()), "ci95": t_interval(x), "per_file": [round(v, 4) for v in values]}

    out: dict[str, Any] = {"n": len(summaries), "runs": [s["run"] for s in summaries],
                           "margin": part([s["margin"]["mean"] for s in summaries]),
                           "gate_state_dependence": part([s["gate_state_dependence"]["mean"] for s in summaries]),
                           "gate_shift_sd": part([s["gate_shift"]["sd"] for s in summaries]),
                           "state_dependence": part([s["state_dependence"]["mean"] for s in summaries]),
                           "constant_state − start": part([s["constant_state − start"]["mean"] for s in summaries]),
                           "shifted_start − start": part([s["shifted_start − start"]["mean"] for s in summaries])}
    for key in ("shapley_return", "shapley_length"):
        out[key] = {c: part([s[key][c]["mean"] for s in summaries]) for c in LEARNED_COMPONENTS}
    names = set.intersection(*(set(s["references"]) for s in summaries)) if summaries else set()
    out["references"] = {n: {k: part([s["references"][n][k]["mean"] for s in summaries])
                             for k in ("start − it", "ppo − it")} for n in sorted(names)}
    return out


def print_pooled(p: dict[str, Any]) -> None:
    """The pooled table."""
    print(f"\n{p['n']} runs, t-intervals over them: margin over the start {_fmt(p['margin'])}")
    print("| component | Shapley value, return | per run | Shapley value, requests per session |\n|---|---:|---|---:|")
    for c in LEARNED_COMPONENTS:
        r, n = p["shapley_return"][c], p["shapley_length"][c]
        print(f"| {c} | {_fmt(r)} | {', '.join(f'{v:+.3f}' for v in r['per_file'])} | {_fmt(n, 2)} |")
    print(f"the gate's state dependence (the trained policy − it with the gate's logit at its mean): "
          f"{_fmt(p['gate_state_dependence'])}; the logit's SD over the requests {_fmt(p['gate_shift_sd'])}")
    print(f"its reading of the state (the trained policy − it with every head at the mean state): "
          f"{_fmt(p['state_dependence'])}; that static policy − the start {_fmt(p['constant_state − start'])}")
    print(f"the start with α moved by the gate's mean logit − the start: {_fmt(p['shifted_start − start'])}")
    for name, r in p["references"].items():
        print(f"{name}: start − it {_fmt(r['start − it'])}; ppo − it {_fmt(r['ppo − it'])}")


def plot_groups(groups: dict[str, dict[str, Any]]) -> bytes:
    """PNG bytes: per group of runs, each component's Shapley value on the return (bar: the mean over the runs, line:
    its 95% t-interval, dots: the runs), the gate's state dependence, the whole reading of the state, and what the
    gate's mean α shift alone adds to the start."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [*LEARNED_COMPONENTS, "gate's state\ndependence", "reading of\nthe state", "start with the\ngate's mean α"]
    fig, ax = plt.subplots(figsize=(9.0, 4.2))
    width = 0.8 / max(len(groups), 1)
    for g, (name, p) in enumerate(groups.items()):
        parts = [p["shapley_return"][c] for c in LEARNED_COMPONENTS] + [
            p["gate_state_dependence"], p["state_dependence"], p["shifted_start − start"]]
        x = np.arange(len(keys)) + (g - (len(groups) - 1) / 2) * width
        means = [q["mean"] for q in parts]
        lo = [q["mean"] - q["ci95"][0] for q in parts]
        hi = [q["ci95"][1] - q["mean"] for q in parts]
        bars = ax.bar(x, means, width * 0.9, label=f"{name} ({p['n']} runs; margin {p['margin']['mean']:+.2f})")
        ax.errorbar(x, means, yerr=[lo, hi], fmt="none", ecolor="black", lw=1, capsize=2)
        for xi, q in zip(x, parts, strict=True):
            ax.plot([xi] * len(q["per_file"]), q["per_file"], ".", color=bars.patches[0].get_facecolor(),
                    markeredgecolor="black", markeredgewidth=0.4, ms=5)
    ax.axhline(0.0, color="grey", lw=0.8)
    ax.set_xticks(np.arange(len(keys)), keys)
    ax.set_ylabel("return per session\n(Shapley value; last three: paired difference)", fontsize=9)
    ax.set_title("The trained policy's margin over the rule it starts at, by learned component", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return figure_png(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Play the variants, print the tables, return (and print last) the JSON summary."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", nargs="?", default=None, help="a trained run's directory (train.py)")
    ap.add_argument("--preset", default=None,
                    help="preset name or calibrated preset folder (default: the run's env.preset; a calibrated run "
                         "records where its preset came from, so name the folder: --preset presets/ml)")
    ap.add_argument("--seed", type=int, default=None,
                    help="seed of the held-out sessions and of the references' tuning (default: the run's train.seed)")
    ap.add_argument("--episodes", type=int, default=2000, help="held-out sessions (the same for every variant)")
    ap.add_argument("--references", default=",".join(DEFAULT_REFERENCES),
                    help="comma-separated ranker specs played on the same sessions ('' for none)")
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--boot", type=int, default=1000, help="bootstrap resamples of the intervals")
    ap.add_argument("--json", type=Path, default=None, help="also write the summary here, atomically")
    ap.add_argument("--pool", type=Path, nargs="+", default=None,
                    help="instead: pool the --json summaries of several runs (means, 95%% t-intervals over them)")
    ap.add_argument("--group", nargs="+", action="append", default=None, metavar=("LABEL", "F"),
                    help="instead: a label and the --json summaries of its runs, pooled apart (repeatable)")
    ap.add_argument("--out", type=Path, default=None, help="with --group: draw the groups' values here (PNG)")
    args = ap.parse_args(argv)
    if args.pool is not None or args.group is not None:
        if args.run is not None:
            ap.error("--pool and --group read finished summaries; they play no run")
        if args.pool is not None and args.group is not None:
            ap.error("--pool and --group: give one of them")
        if args.out is not None and (args.group is None or not args.out.parent.is_dir()):
            ap.error(f"--out goes with --group, in an existing folder: {args.out}")
        named = {"pooled": [str(f) for f in args.pool]} if args.pool is not None else {}
        for g in args.group or []:
            if len(g) < 2 or g[0] in named:
                ap.error(f"--group {' '.join(g)}: a new label and at least one summary file")
            named[g[0]] = g[1:]
        groups: dict[str, dict[str, Any]] = {}
        for name, files in named.items():
            try:
                groups[name] = pool([json.loads(Path(f).read_text(encoding="utf-8")) for f in files])
            except (OSError, ValueError, KeyError, TypeError) as exc:
                ap.error(f"{'--pool' if args.pool is not None else '--group ' + name}: {type(exc).__name__}: {exc}")
            if args.group is not None:
                print(f"\n## {name}")
            print_pooled(groups[name])
        if args.out is not None:
            atomic_write_bytes(args.out, plot_groups(groups))
            print(f"wrote {args.out}")
        result = groups["pooled"] if args.pool is not None else groups
        print(json.dumps(result))
        return {"pooled": result} if args.pool is not None else {"groups": result}
    if args.run is None:
        ap.error("name a run directory (or --pool summaries)")
    if args.json is not None and not args.json.parent.is_dir():
        ap.error(f"--json: folder {str(args.json.parent)!r} does not exist")
    if args.episodes < 2 or args.batch < 1 or args.boot < 1:
        ap.error(f"--episodes must be >= 2, --batch and --boot >= 1, got {args.episodes}, {args.batch}, {args.boot}")
    specs = [s.strip() for s in args.references.split(",") if s.strip()]
    try:
        check_specs(specs)
        cfg, world, core, plan, ctx, ranker, seed = run_setup(args.run, args.preset, args.seed, args.episodes,
                                                              args.batch)
    except (ConfigError, ValueError, FileNotFoundError) as exc:
        ap.error(str(exc))
    boot = Bootstrap(len(plan), args.boot, seed)
    cores: dict[tuple[bool, bool, bool], Any] = {}
    play_core = policy_core(ranker, core, world, cores)
    returns: dict[frozenset[str], np.ndarray] = {}
    lengths: dict[frozenset[str], np.ndarray] = {}
    recorder = RequestRecorder(ranker.policy, ranker.k)
    for learned in subsets(LEARNED_COMPONENTS):
        at_start = [c for c in LEARNED_COMPONENTS if c not in learned]
        variant = (recorder if not at_start
                   else PPORanker(ranker.policy.with_components_at_start(at_start), ranker.k, name=label(learned)))
        stats = run_episodes(play_core, variant, plan, on_step=recorder.on_step if variant is recorder else None)
        returns[learned], lengths[learned] = stats.ret, stats.length.astype(np.float64)
        print(f"{label(learned)}: {stats.ret.mean():.3f} per session, {stats.length.mean():.2f} requests", flush=True)
    shifts = np.concatenate(recorder.shifts).astype(np.float64)  # the gate's logit of every request answered
    shift = (float(shifts.mean()), float(shifts.std()))
    mean_state = th.as_tensor(np.concatenate(recorder.states).mean(axis=0, dtype=np.float64), dtype=th.float32)
    constant = PPORanker(ranker.policy.with_constant_gate(shift[0]), ranker.k, name="ppo, gate at its mean")
    constant_ret = run_episodes(play_core, constant, plan).ret
    print(f"ppo with its gate's logit at its mean ({shift[0]:+.3f}): {constant_ret.mean():.3f} per session", flush=True)
    static = PPORanker(ranker.policy.with_constant_state(mean_state, shift[0]), ranker.k,
                       name="ppo, every head at the mean state")
    static_ret = run_episodes(play_core, static, plan).ret
    print(f"ppo with every head at the mean state: {static_ret.mean():.3f} per session", flush=True)
    start = ranker.policy.with_components_at_start(LEARNED_COMPONENTS)  # the click-lean weight at its start too
    shifted = PPORanker(start.with_constant_gate(shift[0]), ranker.k, name="start, α shifted by the gate's mean")
    shifted_ret = run_episodes(play_core, shifted, plan).ret
    print(f"the start with α shifted by the gate's mean logit: {shifted_ret.mean():.3f} per session", flush=True)
    references = {}
    for spec in specs:
        ref = make_ranker(spec, ctx)
        references[spec] = run_episodes(policy_core(ref, core, world, cores), ref, plan).ret
        print(f"{spec}: {references[spec].mean():.3f} per session", flush=True)
    out: dict[str, Any] = {"run": args.run, "preset": cfg.env.preset, "seed": seed, "episodes": len(plan)}
    out.update(anatomy(ranker, returns, lengths, references, boot, constant_ret, shift, static_ret, len(shifts),
                       shifted_ret))
    print_summary(out)
    return finish_summary(out, args.json)


if __name__ == "__main__":
    main()
