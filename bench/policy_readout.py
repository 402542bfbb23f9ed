"""What a trained policy's learned parts respond to: the residual per candidate feature, the gate per session column.

``python -m bench.policy_readout RUN [--episodes E] [--seed S] [--rows R] [--out PNG] [--json F]`` plays a trained
run's policy on ``E`` held-out sessions (its own slates), records every request it answers (the candidates' feature
rows, the state embedding, the session's context row, the gate's learned logit) and reads off:

* **the residual's shape**: for each candidate feature (``envs.spaces.FEATURE_NAMES``), the partial dependence of the
  learned residual (:meth:`agents.policies.SlatePolicy.residual_of`) on it: the residual averaged over ``R`` recorded
  (request, candidate) rows, each read at its own state, with that one feature set to each value of a grid spanning
  what the requests held (its 2nd to 98th percentile, or every value of a feature with few). The residual is divided
  by the learned 1/τ, so it is in the units of the rule's own score (the standardised blend, whose spread per request
  is 1, and the fixed penalties, ``−λ_c`` per unit of ``cat_exposure`` and ``−λ_s`` per unit of ``item_seen``): a
  curve that rises by 0.5 across a feature's range moves a candidate by half the blend's spread. Beside each curve, a
  linear reading: the least-squares weights of the residual on the features, both centred per request (only a
  candidate's standing against the request's others changes a slate), with its R², and the residual's spread per
  request;
* **the gate's inputs**: the learned logit's mean and SD over the requests and the least-squares weights, per SD of
  each session column (``envs.spaces.CONTEXT_NAMES``), of the logit on the context row, with its R² (the rest is what
  the gate reads of the user's pooled state and of the candidate set).

``bench.policy_anatomy`` says how much each part is worth; this says what it does. ``--out`` draws the curves and the
gate's weights; the last line printed is the JSON summary (``--json``: also written there, atomically).

``--evaluate E`` then asks whether the reading *is* the policy: on ``E`` other held-out sessions (evaluation seed
``seed + 1``, none of those the reading was fitted on; the fit used the policy's own scores, never a return) it plays
the rule the policy started at, the policy with every head at the mean state embedding and the gate at its mean logit
(the static policy, :meth:`agents.policies.SlatePolicy.with_constant_state`), that static policy with its residual
replaced by the linear reading (:meth:`~agents.policies.SlatePolicy.with_linear_residual`: a rule an engineer can
read: α shifted by the gate's mean logit, plus a weight per unit of each feature), the same rule written into the
start itself (the started rule plus those eight numbers, nothing else learned), and the trained policy, all on the
same sessions, with paired 95% bootstrap intervals. ``--rule-from F …`` also plays other runs' rules (their readouts'
``--json``) on this run's start: does a rule read off one run carry to another seed?
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch as th

from agents.evaluation import episode_plan, run_episodes
from agents.policies import LEARNED_COMPONENTS, SlatePolicy
from agents.ppo_ranker import PPORanker
from agents.report import Bootstrap, percentile_ci
from bench.term_probe import finish_summary, policy_core, run_setup
from configs.fileio import atomic_write_bytes, figure_png
from configs.schema import ConfigError
from envs.spaces import CONTEXT_NAMES, FEATURE_NAMES

#: Percentiles of a feature's recorded values that make its grid (a feature with at most ``FEW_VALUES`` distinct
#: values uses them all).
GRID_PERCENTILES = (2, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 98)
FEW_VALUES = 12


class RequestRecorder(PPORanker):
    """A :class:`PPORanker` that records, for every request of a live session it answers, the candidates' feature
    rows, the state embedding, the context row and the gate's learned logit (float32 arrays, one list entry per
    step). Pass :meth:`on_step` to :func:`agents.evaluation.run_episodes`: it keeps the rows that held a session."""

    def __init__(self, policy: SlatePolicy, k: int) -> None:
        super().__init__(policy, k)
        self.features: list[np.ndarray] = []
        self.states: list[np.ndarray] = []
        self.contexts: list[np.ndarray] = []
        self.shifts: list[np.ndarray] = []
        self._pending: tuple[np.ndarray, np.ndarray] | None = None

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """The policy's slates (int64 (B, K)); the request waits for :meth:`on_step`."""
        with th.no_grad():
            self._pending = (self.policy.state_embedding(obs).float().cpu().numpy(),
                             self.policy.gate_shift(obs).float().cpu().numpy())
        return super().act(obs)

    def on_step(self, obs: dict[str, np.ndarray], slate: np.ndarray, feedback: Any, active: np.ndarray) -> None:
        """The rows of the last request that held a session (``active`` (B,) bool) join the record."""
        assert self._pending is not None, "on_step before act"
        self.states.append(self._pending[0][active])
        self.shifts.append(self._pending[1][active])
        self.features.append(np.asarray(obs["features"], np.float32)[active])
        self.contexts.append(np.asarray(obs["context"], np.float32)[active])
        self._pending = None


def feature_grid(values: np.ndarray) -> np.ndarray:
    """The grid of one feature's partial dependence: its distinct values when few, else :data:`GRID_PERCENTILES` of
    ``values`` (float64 (G,), increasing, distinct)."""
    distinct = np.unique(values)
    if len(distinct) <= FEW_VALUES:
        return distinct.astype(np.float64)
    return np.unique(np.percentile(values, GRID_PERCENTILES))


def centred_fit(y: np.ndarray, x: np.ndarray, groups: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """Least-squares weights of ``y`` (R,) on the columns of ``x`` (R, P) and the fit's R², both centred within each
    group of rows (``groups`` (R,) int, e.g. the request; ``None``: over all rows). Constant columns get weight 0.

    Returns:
        ``(weights float64 (P,), r2)``.
    """
    y, x = np.asarray(y, np.float64), np.asarray(x, np.float64)
    if groups is None:
        groups = np.zeros(len(y), np.int64)
    _, inv, counts = np.unique(groups, return_inverse=True, return_counts=True)

    def centre(a: np.ndarray) -> np.ndarray:
        sums = np.zeros((len(counts), *a.shape[1:]))
        np.add.at(sums, inv, a)
        return a - (sums / counts.reshape(-1, *([1] * (a.ndim - 1))))[inv]

    yc, xc = centre(y), centre(x)
    live = xc.std(axis=0) > 1e-12
    w = np.zeros(x.shape[1])
    if live.any():
        w[live] = np.linalg.lstsq(xc[:, live], yc, rcond=None)[0]
    ss = float(np.square(yc).sum())
    r2 = 1.0 - float(np.square(yc - xc @ w).sum()) / ss if ss > 0 else 0.0
    return w, r2


def readout(policy: SlatePolicy, features: np.ndarray, states: np.ndarray, contexts: np.ndarray, shifts: np.ndarray,
            rows: int, seed: int) -> dict[str, Any]:
    """The summary: the residual's partial dependence and linear reading, the gate's logit against the context.

    Args:
        policy: The trained policy.
        features: float (Q, N, F) the recorded requests' candidate feature rows.
        states: float (Q, H) their state embeddings.
        contexts: float (Q, C) their context rows.
        shifts: float (Q,) the gate's learned logit at each.
        rows: How many (request, candidate) rows the partial dependence averages over (a seeded sample).
        seed: The sample's seed.
    """
    q, n, f = features.shape
    inv_t = float(policy.log_inv_temperature.detach().exp())
    flat = features.reshape(q * n, f)
    req = np.repeat(np.arange(q), n)
    with th.no_grad():
        dev = policy.device
        state_t = th.as_tensor(states, device=dev)

        def residual(x: np.ndarray, r: np.ndarray) -> np.ndarray:  # (R, F), request of each row → (R,) / inv_t
            out = [policy.residual_of(th.as_tensor(x[i:i + 65536], device=dev), state_t[r[i:i + 65536]])
                   .double().cpu().numpy() for i in range(0, len(x), 65536)]
            return np.concatenate(out) / inv_t

        res = residual(flat, req)  # every recorded row
        pick = np.random.default_rng(seed).choice(q * n, size=min(rows, q * n), replace=False)
        curves = {}
        for j, name in enumerate(FEATURE_NAMES):
            grid = feature_grid(flat[:, j])
            pd = []
            for v in grid:
                x = flat[pick].copy()
                x[:, j] = v
                pd.append(float(residual(x, req[pick]).mean()))
            curves[name] = {"grid": grid.tolist(), "pd": pd, "range": float(max(pd) - min(pd))}
    weights, r2 = centred_fit(res, flat, req)
    spread = float(res.reshape(q, n).std(axis=1).mean())
    base = (policy.base_weights.cpu().numpy().tolist() if getattr(policy, "base_weights", None) is not None
            else [0.0] * f)
    ctx_sd = contexts.std(axis=0)
    gate_w, gate_r2 = centred_fit(shifts, contexts / np.where(ctx_sd > 0, ctx_sd, 1.0))
    return {
        "requests": q, "rows": len(pick), "inv_temperature": inv_t,
        "residual": {"spread_per_request": spread, "linear_r2": r2,
                     "features": {name: {"weight": float(weights[j]), "rule_weight": float(base[j]),
                                         "sd": float(flat[:, j].std()), **curves[name]}
                                  for j, name in enumerate(FEATURE_NAMES)}},
        "gate": {"mean": float(shifts.mean()), "sd": float(shifts.std()), "context_r2": gate_r2,
                 "weights_per_sd": {name: float(gate_w[k]) for k, name in enumerate(CONTEXT_NAMES)}},
    }


def rule_of(summary: dict[str, Any]) -> tuple[float, list[float]]:
    """The linear rule a readout describes: the gate's mean logit and the residual's linear weights (F,).

    Raises:
        KeyError, TypeError, ValueError: For a summary that is not :func:`readout`'s (or lacks a feature column).
    """
    shift = float(summary["gate"]["mean"])
    weights = [float(summary["residual"]["features"][name]["weight"]) for name in FEATURE_NAMES]
    if not all(np.isfinite([shift, *weights])):
        raise ValueError("the rule's constants must be finite numbers")
    return shift, weights


def distil(ranker: PPORanker, summary: dict[str, Any], states: np.ndarray, core: Any, world: Any, plan: Any,
           seed: int, other_rules: dict[str, tuple[float, list[float]]] | None = None) -> dict[str, Any]:
    """The trained policy against its static version, that version's linear reading and the linear rule itself, on
    the sessions ``plan``.

    The linear rule is the start (the rule the policy started at: every learned part at its start value) with α moved
    by the gate's mean logit and the residual's linear weights added (:meth:`SlatePolicy.with_constant_gate`,
    :meth:`SlatePolicy.with_linear_residual`): the started rule plus eight numbers.

    Args:
        ranker: The trained run's ranker.
        summary: :func:`readout`'s result for it (the linear weights and the gate's mean logit).
        states: float (Q, H) the recorded state embeddings (their mean is the static policy's state).
        core: The held-out core.
        world: Its world.
        plan: The sessions to play (not the recorded ones).
        seed: The bootstrap's seed.
        other_rules: Name → another run's rule (:func:`rule_of`), each also played on this run's start.

    Returns:
        ``{"episodes", "returns": {name: mean}, "pairs": {"a − b": {"mean", "ci95"}}}``.
    """
    policy = ranker.policy
    shift, weights = rule_of(summary)
    start = policy.with_components_at_start(LEARNED_COMPONENTS)
    static = policy.with_constant_state(th.as_tensor(states.mean(axis=0)), shift)
    variants = {"start": start, "the rule": start.with_constant_gate(shift).with_linear_residual(weights),
                "static": static, "static, linear residual": static.with_linear_residual(weights), "ppo": policy}
    for name, (other_shift, other_weights) in (other_rules or {}).items():
        variants[f"the rule of {name}"] = start.with_constant_gate(other_shift).with_linear_residual(other_weights)
    play = policy_core(ranker, core, world, {})
    rets = {name: run_episodes(play, PPORanker(p, ranker.k, name=name), plan).ret for name, p in variants.items()}
    boot = Bootstrap(len(plan), 1000, seed)
    pairs = {}
    compared = [("the rule", "start"), ("static, linear residual", "the rule"), ("static", "static, linear residual"),
                ("ppo", "static"), ("ppo", "the rule"), ("ppo", "start")]
    compared += [(f"the rule of {name}", "start") for name in other_rules or {}]
    for a, b in compared:
        d = rets[a] - rets[b]
        pairs[f"{a} − {b}"] = {"mean": float(d.mean()), "ci95": list(percentile_ci(boot.means(d)))}
    return {"episodes": len(plan), "returns": {k: float(v.mean()) for k, v in rets.items()}, "pairs": pairs}


def print_summary(out: dict[str, Any]) -> None:
    """The tables."""
    r = out["residual"]
    print(f"\n{out['run']}: {out['requests']} requests of {out['episodes']} held-out sessions (seed {out['seed']}); "
          f"learned 1/τ {out['inv_temperature']:.2f}")
    print(f"residual (in units of the rule's score): spread per request {r['spread_per_request']:.3f} (the blend's: "
          f"1); linear reading R² {r['linear_r2']:.3f}")
    print("| feature | partial dependence: range over the grid | first → last grid value | linear weight (per unit) |"
          " the rule's fixed weight | feature SD |\n|---|---:|---|---:|---:|---:|")
    for name, v in r["features"].items():
        print(f"| {name} | {v['range']:.3f} | {v['pd'][0]:+.3f} at {v['grid'][0]:.3g} → {v['pd'][-1]:+.3f} at "
              f"{v['grid'][-1]:.3g} | {v['weight']:+.3f} | {v['rule_weight']:+.2f} | {v['sd']:.3f} |")
    g = out["gate"]
    weights = ", ".join(f"{k} {w:+.3f}" for k, w in g["weights_per_sd"].items())
    print(f"gate's learned logit: mean {g['mean']:+.3f}, SD {g['sd']:.3f}; on the context row R² "
          f"{g['context_r2']:.3f}; weights per SD: {weights}")
    if "distillation" in out:
        d = out["distillation"]
        returns = ", ".join(f"{k} {v:.3f}" for k, v in d["returns"].items())
        print(f"on {d['episodes']} other held-out sessions: {returns}")
        for name, p in d["pairs"].items():
            print(f"  {name}: {p['mean']:+.3f} ({p['ci95'][0]:+.3f} to {p['ci95'][1]:+.3f})")


def plot(out: dict[str, Any]) -> bytes:
    """PNG bytes: the residual's partial dependence per feature, and the gate's weights per context column."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    feats = out["residual"]["features"]
    fig, axes = plt.subplots(2, 4, figsize=(11.0, 5.6))
    for ax, (name, v) in zip(axes.flat, feats.items(), strict=False):
        ax.plot(v["grid"], np.asarray(v["pd"]) - v["pd"][0], marker=".")
        if v["rule_weight"]:
            ax.plot(v["grid"], v["rule_weight"] * (np.asarray(v["grid"]) - v["grid"][0]), ls="--", color="grey",
                    label="the rule's fixed weight")
            ax.legend(fontsize=7)
        ax.set_title(name, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("residual, from the grid's first value\n(units of the rule's score)", fontsize=8)
    ax = axes.flat[-1]
    g = out["gate"]["weights_per_sd"]
    ax.barh(list(g), list(g.values()))
    ax.axvline(0.0, color="grey", lw=0.8)
    ax.tick_params(labelsize=7)
    ax.set_title(f"gate's logit per SD (R² {out['gate']['context_r2']:.2f})", fontsize=9)
    fig.suptitle(f"{out['run']}: what the learned residual and gate respond to", fontsize=10)
    fig.tight_layout()
    return figure_png(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Play the run, print the tables, return (and print last) the JSON summary."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="a trained run's directory (train.py)")
    ap.add_argument("--preset", default=None,
                    help="preset name or calibrated preset folder (default: the run's env.preset; a calibrated run "
                         "records where its preset came from, so name the folder: --preset presets/ml)")
    ap.add_argument("--seed", type=int, default=None, help="seed of the held-out sessions (default: the run's)")
    ap.add_argument("--episodes", type=int, default=500, help="held-out sessions played")
    ap.add_argument("--rows", type=int, default=20000, help="(request, candidate) rows the curves average over")
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--json", type=Path, default=None, help="also write the summary here, atomically")
    ap.add_argument("--out", type=Path, default=None, help="draw the curves here (PNG), atomically")
    ap.add_argument("--evaluate", type=int, default=0,
                    help="also play the static policy and its linear reading on this many other held-out sessions")
    ap.add_argument("--rule-from", type=Path, nargs="+", default=None, metavar="JSON",
                    help="with --evaluate: also play the linear rule of each of these readouts (--json of other runs) "
                         "on this run's start")
    args = ap.parse_args(argv)
    for flag, path in (("--json", args.json), ("--out", args.out)):
        if path is not None and not path.parent.is_dir():
            ap.error(f"{flag}: folder {str(path.parent)!r} does not exist")
    if args.episodes < 1 or args.rows < 1 or args.batch < 1 or args.evaluate < 0:
        ap.error(f"--episodes, --rows and --batch must be >= 1 and --evaluate >= 0, got {args.episodes}, {args.rows}, "
                 f"{args.batch}, {args.evaluate}")
    other_rules: dict[str, tuple[float, list[float]]] = {}
    if args.rule_from is not None:
        if not args.evaluate:
            ap.error("--rule-from goes with --evaluate")
        for path in args.rule_from:
            try:
                other = json.loads(path.read_text(encoding="utf-8"))
                other_rules[str(other.get("run", path))] = rule_of(other)
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
                ap.error(f"--rule-from {path}: not a policy_readout summary ({type(exc).__name__}: {exc})")
    try:
        cfg, world, core, plan, _, ranker, seed = run_setup(args.run, args.preset, args.seed, args.episodes,
                                                            args.batch)
    except (ConfigError, ValueError, FileNotFoundError) as exc:
        ap.error(str(exc))
    recorder = RequestRecorder(ranker.policy, ranker.k)
    stats = run_episodes(policy_core(ranker, core, world, {}), recorder, plan, on_step=recorder.on_step)
    try:
        summary = readout(ranker.policy, np.concatenate(recorder.features), np.concatenate(recorder.states),
                          np.concatenate(recorder.contexts), np.concatenate(recorder.shifts), args.rows, seed)
    except ValueError as exc:
        ap.error(f"{args.run}: {exc}")
    out: dict[str, Any] = {"run": args.run, "preset": cfg.env.preset, "seed": seed, "episodes": len(plan),
                           "return": float(stats.ret.mean()), "session_requests": int(stats.length.sum()), **summary}
    if args.evaluate:
        out["distillation"] = distil(ranker, summary, np.concatenate(recorder.states), core, world,
                                     episode_plan(args.evaluate, [seed + 1], world.populations["heldout"].size), seed,
                                     other_rules)
    print_summary(out)
    if args.out is not None:
        atomic_write_bytes(args.out, plot(out))
        print(f"wrote {args.out}")
    return finish_summary(out, args.json)


if __name__ == "__main__":
    main()
