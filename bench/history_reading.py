"""How well can the user's type be read from the whole session so far, not only from the current request? (#13)

Sessions 53–54 placed `adapt`'s remaining headroom in the reading of the user's type in a session's first requests:
told the type, the learner keeps both user groups' gains (141% of the value of adaptation), and the observation-only
runs return what a policy told the type from the fourth request on returns. The readers measured so far see one
request at a time: the policy's type head and the type switch's logistic classifier read the current request's
candidates and the session context, whose memory of the feedback is a few exponential averages (the click lean, the
click rate, the dwell). This bench asks whether the session's full record reads the type better, which bounds what
a richer memory in the policy (a recurrent state, a longer context) could buy.

The sessions are played by the common reference's tuned-diverse (rule A of ``bench.type_switch``: the slates PPO
starts from; a different ranker shows different slates, so the figures are of these slates). At each request
``t = 1, 2, …`` (among the sessions that reach it) three readers of "CF-leaning user" (hidden ρ < 0.5) are fitted on
training users and scored on held-out users:

- ``request``: a logistic regression on the current request's statistics (``agents.type_switch.type_features``: the
  candidates' LLM and CF signals, the context, the click lean), fitted per request index;
- ``history (linear)``: a logistic regression on those and, for every earlier request of the session, what it
  showed and what the user did (:func:`response_row`: a click, its rank, the clicked item's LLM and CF signal as
  z-scores over the request's candidates and raw, a purchase, the dwell, the slate's mean signals);
- ``history (boosted)``: gradient-boosted trees (scikit-learn's ``HistGradientBoostingClassifier``) on the same
  columns: a non-linear reader of the whole record.

Each reader's share of held-out sessions read right at 0.5 and its log-loss are printed with a 95% interval over
sessions (bootstrap). A reader that sees the whole record and reads no better than ``request`` says that the
context's averages already hold what the session tells of the type, for these slates.

``python -m bench.history_reading --preset adapt --seed 11 --tune-episodes 4000`` prints a table; the last line is a
JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from agents.base import Feedback, Ranker
from agents.evaluation import episode_plan, run_episodes
from agents.rankers import z_rows
from agents.tuning import TUNE_SEED, diverse_ranker
from agents.type_switch import (
    FIT_SEED_OFFSET,
    RHO_EDGE,
    BoostedClassifier,
    TypeClassifier,
    request_index,
    type_features,
)
from bench.env_throughput import config_and_world
from bench.headroom import add_world_args
from bench.type_switch import type_rules
from envs.core import BatchedCore
from envs.factory import make_core
from envs.spaces import F_CF, F_LLM

#: The requests (1-based) at which the readers are fitted and scored.
REQUESTS: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 8, 10)
#: Names of :func:`response_row`'s columns.
RESPONSE_COLUMNS: tuple[str, ...] = ("clicked", "click_rank", "clicked_llm_z", "clicked_cf_z", "clicked_llm",
                                     "clicked_cf", "purchases", "dwell", "slate_llm", "slate_cf")
#: Bootstrap resamples of the held-out sessions for the intervals.
BOOTSTRAP = 1000


def response_row(obs: dict[str, np.ndarray], slate: np.ndarray, feedback: Feedback) -> np.ndarray:
    """What one request showed and what each user did with it: float64 (B, len(RESPONSE_COLUMNS)).

    Args:
        obs: The request's observation (``features`` (B, N, F)).
        slate: int64 (B, K) candidate indices shown.
        feedback: The users' response (``clicks`` (B, K), at most one per row).

    Returns:
        Per row: clicked (0/1), the click's rank / K (1 without a click), the clicked item's LLM and CF signals as
        z-scores over the request's candidates and raw (0 without a click), purchases, dwell (minutes), and the
        slate's mean LLM and CF signals.
    """
    f = obs["features"].astype(np.float64)
    llm, cf = f[:, :, F_LLM], f[:, :, F_CF]
    shown = np.take_along_axis
    s_llm, s_cf = shown(llm, slate, axis=1), shown(cf, slate, axis=1)  # (B, K)
    z_llm, z_cf = shown(z_rows(llm), slate, axis=1), shown(z_rows(cf), slate, axis=1)
    clicks = feedback.clicks.astype(np.float64)  # (B, K)
    clicked = clicks.any(axis=1).astype(np.float64)
    k = slate.shape[1]
    rank = np.where(clicked > 0, clicks.argmax(axis=1) / k, 1.0)
    return np.c_[clicked, rank, (clicks * z_llm).sum(1), (clicks * z_cf).sum(1), (clicks * s_llm).sum(1),
                 (clicks * s_cf).sum(1), feedback.purchases.sum(axis=1), feedback.dwell.sum(axis=1) / 60.0,
                 s_llm.mean(1), s_cf.mean(1)]


@dataclass
class Record:
    """Every request of a set of sessions, in order.

    Attributes:
        session: int64 (n,) the session of each request (0-based, in the order sessions started).
        t: int64 (n,) the request's 0-based index in its session.
        request: float64 (n, p) :func:`agents.type_switch.type_features` of the request.
        response: float64 (n, r) :func:`response_row` of it.
        cf: bool (n,) its user's hidden type (ρ < :data:`agents.type_switch.RHO_EDGE`).
    """

    session: np.ndarray
    t: np.ndarray
    request: np.ndarray
    response: np.ndarray
    cf: np.ndarray


def record(core: BatchedCore, ranker: Ranker, n: int, seed: int) -> Record:
    """Play ``n`` sessions of ``core``'s population (:func:`agents.evaluation.episode_plan` with ``seed``) with
    ``ranker`` and keep every request. A row's sessions follow one another; a request at index 0 starts a new one."""
    plan = episode_plan(n, [seed], core.pop.size)
    row_session = np.full(core.B, -1, dtype=np.int64)
    started = 0
    parts: dict[str, list[np.ndarray]] = {name: [] for name in ("session", "t", "request", "response", "cf")}

    def on_step(obs: dict[str, np.ndarray], slate: np.ndarray, feedback: Feedback, active: np.ndarray) -> None:
        nonlocal started
        t = request_index(obs["context"], core.cfg.max_steps)
        new = np.flatnonzero(active & (t == 0))
        row_session[new] = started + np.arange(len(new))
        started += len(new)
        parts["session"].append(row_session[active])
        parts["t"].append(t[active])
        parts["request"].append(type_features(obs)[active])
        parts["response"].append(response_row(obs, slate, feedback)[active])
        parts["cf"].append(core.pop.rho[core.user[active]] < RHO_EDGE)

    run_episodes(core, ranker, plan, on_step=on_step)
    return Record(**{name: np.concatenate(v) for name, v in parts.items()})


def at_request(rec: Record, t: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The sessions that reach request ``t`` (1-based): what each reader sees there.

    Returns:
        ``(request, history, cf)``: float64 (s, p) the request's statistics; float64 (s, p + (t − 1)·r) those and
        the responses to the session's earlier requests in order; bool (s,) the hidden type.
    """
    order = np.lexsort((rec.t, rec.session))
    sess, tt = rec.session[order], rec.t[order]
    here = np.flatnonzero(tt == t - 1)
    reached = sess[here]
    # a session's requests are contiguous after the sort, so request j of the session at ``here`` is here - (t-1) + j
    cols = [rec.response[order][here - (t - 1) + j] for j in range(t - 1)]
    for j in range(t - 1):
        assert np.array_equal(sess[here - (t - 1) + j], reached)
    request = rec.request[order][here]
    return request, np.concatenate([request, *cols], axis=1), rec.cf[order][here]


def _scores(p: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> dict[str, Any]:
    """Share right at 0.5 and log-loss, each with a bootstrap 95% interval over sessions."""
    p = np.clip(p, 1e-6, 1 - 1e-6)
    right = ((p > 0.5) == y).astype(np.float64)
    loss = -(y * np.log(p) + (~y) * np.log1p(-p))
    idx = rng.integers(0, len(y), size=(BOOTSTRAP, len(y)))
    out: dict[str, Any] = {}
    for name, v in (("right", right), ("log_loss", loss)):
        boot = v[idx].mean(axis=1)
        out[name] = float(v.mean())
        out[f"{name}_ci"] = [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))]
    out["_right"] = right  # per session, for the paired differences
    return out


def readers(train: Record, test: Record, t: int, seed: int) -> dict[str, Any]:
    """The three readers at request ``t``, fitted on ``train`` and scored on ``test``."""
    req_tr, hist_tr, y_tr = at_request(train, t)
    req_te, hist_te, y_te = at_request(test, t)
    rng = np.random.default_rng(seed)
    probs = {"request": TypeClassifier(req_tr, y_tr, l2=1e-2).proba(req_te),
             "history (linear)": TypeClassifier(hist_tr, y_tr, l2=1e-2).proba(hist_te)}
    probs["history (boosted)"] = BoostedClassifier(hist_tr, y_tr, seed=seed).proba(hist_te)
    idx = rng.integers(0, len(y_te), size=(BOOTSTRAP, len(y_te)))
    out: dict[str, Any] = {"train_sessions": len(y_tr), "heldout_sessions": len(y_te),
                           "cf_share": float(y_te.mean()), "columns": int(hist_tr.shape[1])}
    base = None
    for name, p in probs.items():
        s = _scores(p, y_te, np.random.default_rng(seed))
        right = s.pop("_right")
        if base is None:
            base = right
        else:
            d = (right - base)[idx].mean(axis=1)
            s["right_minus_request"] = float((right - base).mean())
            s["right_minus_request_ci"] = [float(np.percentile(d, 2.5)), float(np.percentile(d, 97.5))]
        out[name] = s
    return out


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the bench; print the table and the JSON summary (last line)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_world_args(ap, preset="adapt")
    ap.add_argument("--train-sessions", type=int, default=8000, help="training users' sessions the readers fit on")
    ap.add_argument("--requests", default=",".join(map(str, REQUESTS)),
                    help="requests (1-based, comma separated) at which the readers are fitted and scored")
    args = ap.parse_args(argv)
    for flag in ("episodes", "train_sessions", "tune_episodes"):
        if getattr(args, flag) < 1:
            ap.error(f"--{flag.replace('_', '-')} must be at least 1, got {getattr(args, flag)}")
    try:
        requests = sorted({int(x) for x in args.requests.split(",") if x.strip()})
    except ValueError:
        ap.error(f"--requests must be comma-separated integers, got {args.requests!r}")
    if not requests or requests[0] < 1:
        ap.error(f"--requests must name requests from 1 on, got {args.requests!r}")
    full, world = config_and_world(ap, args)
    cfg = full.env
    point = type_rules(world, full, args.seed, args.tune_episodes)["A"]
    rule = diverse_ranker(cfg.slate_size, world.catalog.category, point, name="tuned-diverse")
    train = record(make_core(cfg, cfg.preset, None, world, "train", args.batch), rule, args.train_sessions,
                   args.seed + TUNE_SEED + FIT_SEED_OFFSET)
    test = record(make_core(cfg, cfg.preset, None, world, "heldout", args.batch), rule, args.episodes, args.seed)
    rows = {t: readers(train, test, t, args.seed) for t in requests}
    names = ("request", "history (linear)", "history (boosted)")
    print(f"rule A (tuned-diverse): {point}")
    print(f"{'request':>7s} {'sessions':>8s} " + " ".join(f"{n:>26s}" for n in names) + "   (share read right, 95% CI)")
    for t, row in rows.items():
        cells = [f"{row[n]['right']:6.1%} ({row[n]['right_ci'][0]:.1%}-{row[n]['right_ci'][1]:.1%})" for n in names]
        print(f"{t:7d} {row['heldout_sessions']:8d} " + " ".join(f"{c:>26s}" for c in cells))
    summary = {"preset": args.preset, "seed": args.seed, "tune_episodes": args.tune_episodes, "rule": point,
               "train_sessions": args.train_sessions, "heldout_sessions": args.episodes,
               "response_columns": list(RESPONSE_COLUMNS), "requests": {str(t): r for t, r in rows.items()}}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
