"""The engineer's type switch: read the user's type from what a service observes, answer with the rule for that type.

On a preset whose users want clearly different rules (``adapt``), a hand-written ranker can infer each user's type
within the session and switch its rule (``bench.type_switch``, session 25; a boosted reader, session 57):

1. two rules of the diversity heuristic: ``tuned-diverse`` (A) and the best point for the CF-leaning training users
   (B, :meth:`agents.registry.RankerContext.cf_rule_search`);
2. a **type classifier** on what a service observes at each request, fitted on the training users' requests under A
   and labelled with their hidden ρ < :data:`RHO_EDGE` (a label only a simulator has, as PPO's type head is trained
   on; the fitted rule reads observations only): a logistic regression on :func:`type_features`, or gradient-boosted
   trees (scikit-learn's ``HistGradientBoostingClassifier``) on :func:`reading_features`;
3. the **switch** (:class:`SwitchRanker`): B on the requests whose probability of a CF-leaning user exceeds a
   threshold chosen on training sessions (:func:`pick_threshold`; "never", A's slates, when no threshold beats A
   there).

:func:`tune_switch` does 2–3 on the training users; the registry's ``tuned-switch`` is its ranker, so the quality
protocol's "strongest hand-written rule" includes it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch as th

from agents.base import Feedback, Ranker
from agents.evaluation import EpisodePlan, episode_plan, run_episodes
from agents.fitting import fit_logistic
from agents.policy_ops import candidate_spread, symlog
from agents.rankers import click_lean, z_rows
from envs.core import BatchedCore
from envs.spaces import C_T_FRAC, F_CF, F_LLM, F_POP, F_PRICE

#: Hidden ρ below this: a CF-leaning user (the split of ``bench.headroom``'s value of adaptation on ``adapt``, and
#: the edge of :meth:`agents.registry.RankerContext.cf_rule_search`).
CF_LEANING_RHO = 0.5

#: The classifiers' label: hidden ρ below this.
RHO_EDGE = CF_LEANING_RHO
#: Switch thresholds searched on the training sessions (probability of a CF-leaning user).
THRESHOLDS: tuple[float, ...] = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
#: The switch's "never" (a threshold above every probability: A's slates exactly).
NEVER = 2.0
#: Seed offset of the training sessions the classifier is fitted on (apart from the tuning sessions).
FIT_SEED_OFFSET = 77
#: The type readers (``tuned-switch:READER``, ``bench.type_switch --reader``).
READERS: tuple[str, ...] = ("logistic", "boosted")


def type_features(obs: dict[str, np.ndarray]) -> np.ndarray:
    """What a service observes of a request, per row: float64 (B, 9 + C + 1).

    The candidates' LLM and CF signals (mean, spread, max), their standardised correlation, mean popularity and
    price, the session context (C) and the click lean (:func:`agents.rankers.click_lean`).
    """
    f = obs["features"].astype(np.float64)
    llm, cf = f[:, :, F_LLM], f[:, :, F_CF]
    sd_llm, sd_cf = llm.std(axis=1) + 1e-9, cf.std(axis=1) + 1e-9
    return np.c_[llm.mean(1), sd_llm, llm.max(1), cf.mean(1), sd_cf, cf.max(1), (z_rows(llm) * z_rows(cf)).mean(1),
                 f[:, :, F_POP].mean(1), f[:, :, F_PRICE].mean(1), obs["context"].astype(np.float64),
                 click_lean(obs["context"], sd_llm, sd_cf)]


def reading_features(obs: dict[str, np.ndarray]) -> np.ndarray:
    """:func:`type_features` and the policy's pooling of the candidates, per row: float64 (B, 9 + C + 1 + 3F + 1).

    The pooling is each column of ``symlog(features)`` averaged, maxed and its standard deviation over the request's
    candidates, and the LLM–CF correlation (:func:`agents.policy_ops.candidate_spread`): what a policy with
    ``train.policy.pool_spread`` reads of the candidates.
    """
    f = th.as_tensor(obs["features"], dtype=th.float64)
    cand = symlog(f)  # (B, N, F)
    pooled = th.cat([cand.mean(dim=1), cand.max(dim=1).values, candidate_spread(cand, f, None, F_LLM, F_CF)], dim=-1)
    return np.c_[type_features(obs), pooled.numpy()]


class TypeClassifier:
    """Logistic regression of "CF-leaning user" (ρ < :data:`RHO_EDGE`) on :func:`type_features`, standardised.

    Args:
        x: float (n, p) features of training requests.
        y: bool (n,) their users' hidden type.
        l2: Ridge weight.
        features: What the classifier reads of an observation (:meth:`read`); ``x`` are its rows.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, l2: float = 1e-3,
                 features: Callable[[dict[str, np.ndarray]], np.ndarray] = type_features) -> None:
        self.features, self.n_fit = features, len(x)
        self.mu, self.sd = x.mean(axis=0), x.std(axis=0) + 1e-9
        self.w = fit_logistic(self._design(x), y, l2=l2)

    def _design(self, x: np.ndarray) -> np.ndarray:
        return np.c_[(x - self.mu) / self.sd, np.ones(len(x))]

    def proba(self, x: np.ndarray) -> np.ndarray:
        """float64 (n,) probability of a CF-leaning user."""
        return 1.0 / (1.0 + np.exp(-self._design(x) @ self.w))

    def read(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """float64 (B,) probability of a CF-leaning user for each row of a batched observation."""
        return self.proba(self.features(obs))


class BoostedClassifier(TypeClassifier):
    """Gradient-boosted trees (scikit-learn's ``HistGradientBoostingClassifier``) of "CF-leaning user" on
    :func:`reading_features` (by default): a non-linear reader of the same observation.

    The trees fit and read on one OpenMP thread, not on OpenMP's default of every core: when another job holds one
    of two cores, scikit-learn's threads wait on each other at every node. Beside another process fitting trees a
    fit on two threads took 7× as long as on one, beside a protocol's replay 21–78×, where alone two threads are
    only 1.4× faster (``bench.reader_threads``, BENCHMARKS "Evaluation", session 64). The readings do not depend on
    the thread count (to 1e-12, tested).

    Args:
        x: float (n, p) features of training requests.
        y: bool (n,) their users' hidden type (both classes present).
        seed: The trees' random state (early stopping's validation split).
        features: What the classifier reads of an observation.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, seed: int = 0,
                 features: Callable[[dict[str, np.ndarray]], np.ndarray] = reading_features) -> None:
        from sklearn.ensemble import HistGradientBoostingClassifier  # imported here: only this reader needs it
        from threadpoolctl import ThreadpoolController

        self.features, self.n_fit = features, len(x)
        self.model = HistGradientBoostingClassifier(max_iter=400, learning_rate=0.05, early_stopping=True,
                                                    validation_fraction=0.15, random_state=seed)
        # The thread pools are found once, here (scikit-learn's OpenMP is loaded by now): ``threadpool_limits``
        # scans every loaded library on each call, about 5 ms, more than a read of 500 rows (BENCHMARKS "Evaluation").
        self._pools = ThreadpoolController()
        with self._one_thread():
            self.model.fit(x, np.asarray(y, dtype=bool))

    def _one_thread(self) -> Any:
        """A context that bounds OpenMP (scikit-learn's trees) to :data:`READER_THREADS` threads."""
        return self._pools.limit(limits=READER_THREADS, user_api="openmp")

    def proba(self, x: np.ndarray) -> np.ndarray:
        """float64 (n,) probability of a CF-leaning user."""
        with self._one_thread():
            return self.model.predict_proba(x)[:, 1].astype(np.float64)


#: OpenMP threads of :class:`BoostedClassifier`'s fit and reading (see its docstring for why one).
READER_THREADS = 1


class NeverReads(TypeClassifier):
    """The reader of a switch whose training users are all of one type: probability 0 for every row."""

    def __init__(self) -> None:
        self.features, self.n_fit = type_features, 0

    def proba(self, x: np.ndarray) -> np.ndarray:
        """float64 (n,) zeros."""
        return np.zeros(len(x))

    def read(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """float64 (B,) zeros (nothing is computed)."""
        return np.zeros(len(obs["context"]))


class SwitchRanker(Ranker):
    """Rule A, or rule B on the rows whose classifier probability of a CF-leaning user exceeds ``threshold``.

    Args:
        a: The default rule (tuned-diverse, or a run's PPO: ``bench.type_switch --override``).
        b: The CF-leaning users' rule.
        classifier: The type classifier.
        threshold: p; above 1 it never switches (A's slates exactly).

    Both rules see every row's session start and feedback (:meth:`reset`, :meth:`update`), whichever answered.
    """

    def __init__(self, a: Ranker, b: Ranker, classifier: TypeClassifier, threshold: float) -> None:
        super().__init__(a.k)
        self.a, self.b, self.classifier, self.threshold = a, b, classifier, float(threshold)
        self.name = f"switch:{threshold:g}"
        self.switched = 0  # rows answered by B over all calls (a batch's idle rows included)

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """A's slate, or B's on the rows read as CF-leaning: int64 (B, K)."""
        use_b = self.classifier.read(obs) > self.threshold  # (B,)
        self.switched += int(use_b.sum())
        slate = self.a.act(obs)
        if use_b.any():
            slate[use_b] = self.b.act({k: v[use_b] for k, v in obs.items()})
        return slate

    def reset(self, rows: np.ndarray, obs: dict[str, np.ndarray]) -> None:
        """New sessions in ``rows``: both rules forget them."""
        self.a.reset(rows, obs)
        self.b.reset(rows, obs)

    def update(self, obs: dict[str, np.ndarray], slate: np.ndarray, feedback: Feedback) -> None:
        """Both rules learn from the response (the online ones; the diversity rules read it from the next request)."""
        self.a.update(obs, slate, feedback)
        self.b.update(obs, slate, feedback)


def request_index(context: np.ndarray, max_steps: int) -> np.ndarray:
    """The 0-based index of each row's request in its session, from ``obs["context"]`` (B, C): int64 (B,)."""
    return np.rint(context[:, C_T_FRAC] * max_steps).astype(np.int64)


def played_requests(core: BatchedCore, ranker: Ranker, plan: EpisodePlan,
                    features: Callable[[dict[str, np.ndarray]], np.ndarray] = type_features,
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every request of ``plan``'s sessions played by ``ranker`` on ``core``: what a service observes of it, its
    user's hidden type and its place in the session.

    Returns:
        ``(x, cf, t)``: float64 (n, p) ``features`` (:func:`type_features` by default), bool (n,) hidden
        ρ < :data:`RHO_EDGE`, int64 (n,) the request's 0-based index in its session.
    """
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    ts: list[np.ndarray] = []

    def on_step(obs: dict[str, np.ndarray], slate: np.ndarray, feedback: Any, active: np.ndarray) -> None:
        xs.append(features(obs)[active])
        ys.append(core.pop.rho[core.user[active]] < RHO_EDGE)
        ts.append(request_index(obs["context"], core.cfg.max_steps)[active])

    run_episodes(core, ranker, plan, on_step=on_step)
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(ts)


def fit_classifier(core: BatchedCore, rule: Ranker, plan: EpisodePlan, reader: str = "logistic",
                   seed: int = 0) -> TypeClassifier:
    """The type classifier, fitted on every request of ``plan``'s sessions played by ``rule`` on ``core``.

    Args:
        reader: ``"logistic"`` (:class:`TypeClassifier` on :func:`type_features`) or ``"boosted"``
            (:class:`BoostedClassifier` on :func:`reading_features`).
        seed: The boosted reader's random state.

    Raises:
        ValueError: An unknown reader, or requests of one type of user only (nothing to tell apart).
    """
    if reader not in READERS:
        raise ValueError(f"reader must be one of {READERS}, got {reader!r}")
    x, cf, _ = played_requests(core, rule, plan, reading_features if reader == "boosted" else type_features)
    if cf.all() or not cf.any():
        raise ValueError(f"the type classifier needs requests of CF-leaning users (hidden ρ < {RHO_EDGE}) and of "
                         f"others; all {len(cf)} training requests were of one type")
    return BoostedClassifier(x, cf, seed=seed) if reader == "boosted" else TypeClassifier(x, cf)


def pick_threshold(core: BatchedCore, a: Ranker, b: Ranker, classifier: TypeClassifier,
                   plan: EpisodePlan) -> tuple[float, dict[str, float]]:
    """The switch's threshold: the best of :data:`THRESHOLDS` and "never" by mean return on ``plan``'s sessions.

    Args:
        core: Training users.
        a: Rule A (answers below the threshold).
        b: Rule B.
        classifier: The type classifier.
        plan: Training sessions, met by every threshold (common random numbers).

    Returns:
        ``(threshold, tuning)``: the pick (:data:`NEVER` when no threshold beats A) and the mean return of each
        candidate, keyed ``"never"`` and ``str(p)``.
    """
    tuning = {"never": float(run_episodes(core, a, plan).ret.mean())}
    for p in THRESHOLDS:
        tuning[str(p)] = float(run_episodes(core, SwitchRanker(a, b, classifier, p), plan).ret.mean())
    best = max(tuning, key=lambda key: tuning[key])
    return (NEVER if best == "never" else float(best)), tuning


@dataclass
class SwitchSearch:
    """A fitted type switch (:func:`tune_switch`).

    Attributes:
        ranker: The switch, at the chosen threshold.
        threshold: The chosen threshold (:data:`NEVER`: it never switches).
        tuning: Mean return on the training sessions per candidate threshold (``"never"`` and ``str(p)``).
        reader: ``"logistic"`` or ``"boosted"``.
        fit_requests: Training requests the classifier was fitted on.
    """

    ranker: SwitchRanker
    threshold: float
    tuning: dict[str, float] = field(default_factory=dict)
    reader: str = "boosted"
    fit_requests: int = 0


def tune_switch(core: BatchedCore, a: Ranker, b: Ranker, fit_episodes: int, tune_episodes: int, seed: int,
                reader: str = "boosted", classifier_seed: int = 0) -> SwitchSearch:
    """Fit the type classifier on training requests played by ``a`` and choose the switch's threshold.

    Args:
        core: Training users (their hidden ρ labels the classifier's requests).
        a: Rule A (tuned-diverse).
        b: Rule B (the CF-leaning users' rule).
        fit_episodes: Training sessions whose requests the classifier is fitted on (seed ``seed +``
            :data:`FIT_SEED_OFFSET`, apart from the threshold's).
        tune_episodes: Training sessions that choose the threshold (seed ``seed``).
        seed: The tuning sessions' seed (a run's ``train.seed + TUNE_SEED``).
        reader: ``"logistic"`` or ``"boosted"``.
        classifier_seed: The boosted reader's random state.

    Returns:
        The switch and its tuning.

    Where the training users are all of one type there is nothing to read: the switch never switches (A's slates,
    threshold :data:`NEVER`, ``tuning`` holds A's mean alone), as an engineer's rule for such users would.

    Raises:
        ValueError: An unknown reader.
    """
    if reader not in READERS:
        raise ValueError(f"reader must be one of {READERS}, got {reader!r}")
    fit_plan = episode_plan(fit_episodes, [seed + FIT_SEED_OFFSET], core.pop.size)
    tune_plan = episode_plan(tune_episodes, [seed], core.pop.size)
    cf_share = float((core.pop.rho < RHO_EDGE).mean())
    if cf_share in (0.0, 1.0):
        tuning = {"never": float(run_episodes(core, a, tune_plan).ret.mean())}
        return SwitchSearch(SwitchRanker(a, b, NeverReads(), NEVER), NEVER, tuning, reader, 0)
    classifier = fit_classifier(core, a, fit_plan, reader, classifier_seed)
    threshold, tuning = pick_threshold(core, a, b, classifier, tune_plan)
    return SwitchSearch(SwitchRanker(a, b, classifier, threshold), threshold, tuning, reader, classifier.n_fit)
