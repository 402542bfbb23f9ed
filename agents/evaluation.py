"""The evaluation engine: rankers meet the same simulated users, episode for episode, and per-episode metrics.

Common random numbers: an :class:`EpisodePlan` fixes, for every episode e, its 64-bit key and its user. The
simulator draws every random number of a session from the key (``envs/rng.py``), so each ranker faces the very
same users with the very same luck, and the per-episode differences between two rankers are paired.

Per episode the engine records the return, clicks, purchases, dwell, session length, and three slate metrics
averaged over the session's steps:

* NDCG@K against the oracle's ordering (Järvelin & Kekäläinen, 2002), with the simulator's true click
  probability of each candidate (``BatchedCore.true_click_probs``) as graded relevance;
* intra-list diversity, the mean pairwise ``1 − cos`` of the slate's item embeddings (Ziegler et al., 2005);
* novelty, the mean ``−log2 p_i`` of the shown items, ``p_i`` their add-one smoothed share of logged clicks
  (Zhou et al., 2010);

plus precision@K, recall@K and F1@K against the session's own clicked or purchased items
(:func:`precision_recall_f1`), and the set of items shown, for catalog coverage. In a calibrated world, whose
simulated users each stand for a real user, the same three metrics are also computed against that real user's
held-out items (the calibration's temporal test split, ``Population.test_items``): ``precision_real``,
``recall_real`` and ``f1_real`` (:data:`REAL_METRICS`), which do not depend on the simulator's responses.
The statistics and the written report (bootstrap intervals, paired tests, tables, plots) are
:mod:`agents.report`'s.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import sparse
from tqdm.auto import tqdm

from agents.base import Feedback, Ranker
from envs import rng
from envs.core import BatchedCore
from envs.sessions import Sessions
from envs.spaces import validate_slate

#: Per-episode metrics (arrays of shape (E,)); ``coverage`` and ``oracle_share`` are computed over episodes.
EPISODE_METRICS: tuple[str, ...] = (
    "return", "ctr", "clicks", "purchases", "dwell", "length", "diversity", "novelty", "ndcg", "precision", "recall",
    "f1",
)
METRICS: tuple[str, ...] = (*EPISODE_METRICS, "coverage", "oracle_share")
#: Per-episode metrics against each user's held-out real items: only where the population carries them.
REAL_METRICS: tuple[str, ...] = ("precision_real", "recall_real", "f1_real")
#: Hidden user types for the breakdown: ρ_u (weight of the semantic taste) in thirds.
RHO_EDGES: tuple[float, ...] = (0.0, 1 / 3, 2 / 3, 1.0)
RHO_LABELS: tuple[str, ...] = ("rho<1/3 (CF-driven)", "1/3<=rho<2/3 (mixed)", "rho>=2/3 (content-driven)")
_KEY_SALT = np.uint64(0x5EED0FE7A1)  # separates evaluation keys from the logging phase's


# ---- the plan and the engine --------------------------------------------------------------------------------


@dataclass(frozen=True)
class EpisodePlan:
    """Which session each episode is: the same for every ranker (common random numbers).

    Attributes:
        keys: uint64 (E,) episode keys.
        users: int64 (E,) population indices.
        seeds: int64 (E,) the evaluation seed each episode belongs to.
    """

    keys: np.ndarray
    users: np.ndarray
    seeds: np.ndarray

    def __len__(self) -> int:
        return len(self.keys)


def episode_plan(episodes: int, seeds: Sequence[int], n_users: int) -> EpisodePlan:
    """``episodes`` sessions per seed; within a seed the users are a permutation of the population, cycled.

    Args:
        episodes: Episodes per seed (E / S).
        seeds: Evaluation seeds (S of them).
        n_users: Population size U.

    Returns:
        The plan of E = episodes·S episodes, seed-major.

    Raises:
        ValueError: For no episodes, no seeds or an empty population.
    """
    if episodes < 1 or len(seeds) < 1 or n_users < 1:
        raise ValueError(f"need episodes >= 1, seeds and users, got {episodes} episodes, {len(seeds)} seeds, "
                         f"{n_users} users")
    keys, users, seed_of = [], [], []
    for s in seeds:
        base = rng.splitmix64(np.uint64(s) ^ _KEY_SALT)
        keys.append(rng.splitmix64(np.arange(episodes, dtype=np.uint64) ^ base))
        users.append(np.resize(np.random.default_rng([int(s), 0xE7A1]).permutation(n_users), episodes))
        seed_of.append(np.full(episodes, s, np.int64))
    return EpisodePlan(np.concatenate(keys), np.concatenate(users).astype(np.int64), np.concatenate(seed_of))


@dataclass
class EpisodeStats:
    """Per-episode outcomes of one ranker over a plan, all (E,) in plan order.

    Attributes:
        ret: float64 return (sum of rewards).
        clicks: float64 clicks.
        purchases: float64 purchases.
        dwell: float64 dwell seconds.
        length: float64 requests served.
        ndcg: float64 NDCG@K vs the oracle ordering, mean over steps.
        diversity: float64 intra-list diversity, mean over steps.
        novelty: float64 novelty in bits, mean over steps.
        precision: float64 precision@K against the session's clicked or purchased items, mean over steps
            (:func:`precision_recall_f1`).
        recall: float64 recall@K against the same set, mean over steps.
        f1: float64 F1@K, the harmonic mean of the episode's ``precision`` and ``recall``.
        users: int64 population indices.
        rho: float64 hidden ρ_u of each episode's user (for the breakdown only).
        seeds: int64 evaluation seed of each episode.
        shown: bool sparse (E, M): items shown in each episode.
        seconds: Wall time of the run.
        precision_real: float64 precision@K against the user's held-out real items (calibrated worlds; else
            ``None``).
        recall_real: float64 recall@K against the same items, or ``None``.
        f1_real: float64 F1@K of those two, or ``None``.
        step_reward: float64 (E, T) the reward of each episode's t-th request (0 past its end; T the env's
            ``max_steps``), or ``None`` unless :func:`run_episodes` was asked for it (``per_step=True``).
    """

    ret: np.ndarray
    clicks: np.ndarray
    purchases: np.ndarray
    dwell: np.ndarray
    length: np.ndarray
    ndcg: np.ndarray
    diversity: np.ndarray
    novelty: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    users: np.ndarray
    rho: np.ndarray
    seeds: np.ndarray
    shown: sparse.csr_matrix
    seconds: float
    precision_real: np.ndarray | None = None
    recall_real: np.ndarray | None = None
    f1_real: np.ndarray | None = None
    step_reward: np.ndarray | None = None

    @property
    def metric_names(self) -> tuple[str, ...]:
        """:data:`EPISODE_METRICS`, plus :data:`REAL_METRICS` where the run had held-out real items."""
        return EPISODE_METRICS + (REAL_METRICS if self.precision_real is not None else ())

    def metric(self, name: str) -> np.ndarray:
        """The per-episode values of one of :data:`EPISODE_METRICS`: float64 (E,)."""
        if name == "return":
            return self.ret
        if name == "ctr":
            return self.clicks / np.maximum(self.length, 1.0)
        if name not in self.metric_names:
            raise KeyError(f"unknown per-episode metric {name!r}; choose from {list(self.metric_names)}")
        return getattr(self, name)


def ndcg_at_k(relevance: np.ndarray, slate: np.ndarray) -> np.ndarray:
    """NDCG@K of each slate with graded relevances, against the ideal (relevance-sorted) slate.

    ``DCG = Σ_k rel[slate_k] / log2(k + 2)``; ``NDCG = DCG / DCG(ideal)`` (1 when all relevances are 0).

    Args:
        relevance: (B, N) relevance of each candidate (here: true click probabilities).
        slate: int (B, K) positions.

    Returns:
        float64 (B,) in [0, 1].
    """
    k = slate.shape[1]
    disc = 1.0 / np.log2(np.arange(k) + 2.0)
    dcg = np.take_along_axis(relevance, slate, axis=1) @ disc
    ideal = -np.sort(-relevance, axis=1)[:, :k] @ disc
    return np.where(ideal > 0, dcg / np.where(ideal > 0, ideal, 1.0), 1.0)


def precision_recall_f1(shown: sparse.csr_matrix, relevant: sparse.csr_matrix, length: np.ndarray,
                        k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision@K, recall@K and F1@K of each session against the items its user clicked or purchased in it.

    The relevant set ``R_e`` of session e is the items clicked or purchased in it. Per request t with slate
    ``S_t`` (K items), ``P_t = |S_t ∩ R_e| / K`` and ``R_t = |S_t ∩ R_e| / |R_e|`` (0 when ``R_e`` is empty); the
    session's precision@K and recall@K are their means over its T requests, and F1@K is
    ``2·P·R / (P + R)`` of those two means (0 when both are 0). Recall is per request because the session-level
    "share of ``R_e`` shown in some slate" is 1 by construction (an item is clicked only where it is shown).
    Since ``Σ_t |S_t ∩ R_e| = Σ_{i ∈ R_e} n_e(i)`` with ``n_e(i)`` the slates of session e that showed i, the
    whole computation is two sparse products, no per-step work.

    Relevance here is the simulated user's own response to the slates, so these metrics are partly circular (a
    ranker earns them by being clicked, as CTR does); they are reported beside return, not instead of it.

    Args:
        shown: (E, M) how many of session e's slates showed item i (float or int counts).
        relevant: (E, M) nonzero where item i was clicked or purchased in session e.
        length: (E,) requests T of each session.
        k: Slate size K.

    Returns:
        ``(precision, recall, f1)``, each float64 (E,) in [0, 1].
    """
    rel = sparse.csr_matrix(relevant, copy=True)
    rel.sum_duplicates()
    rel.eliminate_zeros()
    rel.data = np.ones(len(rel.data))
    hits = np.asarray(sparse.csr_matrix(shown).multiply(rel).sum(axis=1), dtype=np.float64).ravel()  # Σ_t |S_t ∩ R|
    steps = np.maximum(np.asarray(length, dtype=np.float64), 1.0)
    n_rel = np.diff(rel.indptr).astype(np.float64)
    precision = hits / (k * steps)
    recall = np.where(n_rel > 0, hits / (np.maximum(n_rel, 1.0) * steps), 0.0)
    total = precision + recall
    f1 = np.where(total > 0, 2.0 * precision * recall / np.where(total > 0, total, 1.0), 0.0)
    return precision, recall, f1


def held_out_relevance(indptr: np.ndarray, items: np.ndarray, users: np.ndarray, n_items: int) -> sparse.csr_matrix:
    """Each episode's relevant set for the ``*_real`` metrics: its user's held-out real items.

    Args:
        indptr: int (U + 1,) CSR row pointers of the population's held-out items (``Population.test_indptr``).
        items: int (nnz,) their item ids (``Population.test_items``).
        users: int (E,) population index of each episode.
        n_items: Catalog size M.

    Returns:
        float64 sparse (E, M), 1 where the item is one of the episode's user's held-out real items.
    """
    per_user = sparse.csr_matrix((np.ones(len(items)), np.asarray(items, np.int64), np.asarray(indptr, np.int64)),
                                 shape=(len(indptr) - 1, n_items))
    return per_user[np.asarray(users, np.int64)]


def intra_list_diversity(unit_emb: np.ndarray, items: np.ndarray) -> np.ndarray:
    """Mean pairwise ``1 − cos(e_i, e_j)`` over the slate's item pairs (i ≠ j).

    Uses ``Σ_{i≠j} x_i·x_j = |Σ_i x_i|² − Σ_i |x_i|²``: O(B·K·D), no (B, K, K) block.

    Args:
        unit_emb: (M, D) item embeddings with L2-normalised rows (see :func:`unit_rows`).
        items: int (B, K) catalog ids.

    Returns:
        float64 (B,); 0 for K = 1.
    """
    k = items.shape[1]
    if k < 2:
        return np.zeros(len(items))
    x = unit_emb[items]  # (B, K, D)
    pair_cos = (x.sum(axis=1) ** 2).sum(axis=1) - (x**2).sum(axis=(1, 2))
    return 1.0 - pair_cos.astype(np.float64) / (k * (k - 1))


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero): float32, same shape."""
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.where(norm > 0, norm, 1.0)).astype(np.float32)


def item_novelty(popularity: np.ndarray) -> np.ndarray:
    """Self-information of each item, ``−log2 p_i`` with ``p_i = (c_i + 1) / (Σ c + M)``: float64 (M,)."""
    c = np.asarray(popularity, dtype=np.float64)
    return -np.log2((c + 1.0) / (c.sum() + len(c)))


def run_episodes(core: BatchedCore, ranker: Ranker, plan: EpisodePlan, progress: bool = False,
                 desc: str | None = None,
                 on_step: Callable[[dict[str, np.ndarray], np.ndarray, Feedback, np.ndarray], None] | None = None,
                 per_step: bool = False) -> EpisodeStats:
    """Run ``ranker`` over every episode of ``plan`` on ``core`` (B rows refilled from the plan as sessions end).

    The rows play the plan as a queue (:class:`envs.sessions.Sessions`): when a session ends the next episode
    starts in its row (the ranker's ``reset`` is told), and rows left without an episode idle until the last
    session ends.

    Args:
        core: The batched simulator (its population is the evaluated one).
        ranker: The ranker.
        plan: Episodes to play.
        progress: Show a progress bar.
        desc: Progress bar label (default the ranker's name).
        on_step: Called after each step with ``(obs, slate, feedback, active (B,) bool)``.
        per_step: Also record each episode's reward request by request (``EpisodeStats.step_reward``).

    Returns:
        The per-episode outcomes.

    Raises:
        ValueError: When the ranker returns a malformed slate (the message names the ranker), or for an empty plan.
    """
    t0 = time.perf_counter()
    b, n_ep, m = core.B, len(plan), core.M
    pop_rho = core.pop.rho.astype(np.float64)
    novelty = item_novelty(core.world.popularity)
    unit_emb = unit_rows(core.world.item_emb)
    sessions = Sessions(core, plan.keys, plan.users)  # rows beyond the plan replay its first episodes, unrecorded
    sessions.start()
    sums = {name: np.zeros(b) for name in ("ret", "clicks", "purchases", "dwell", "length", "ndcg", "diversity",
                                           "novelty")}
    out = {name: np.zeros(n_ep) for name in sums}
    step_reward = np.zeros((n_ep, core.cfg.max_steps)) if per_step else None
    shown_ep: list[np.ndarray] = []
    shown_item: list[np.ndarray] = []
    rel_ep: list[np.ndarray] = []
    rel_item: list[np.ndarray] = []
    obs = _copy(core.observe())
    ranker.reset(np.arange(b), obs)
    bar = tqdm(total=n_ep, desc=desc or ranker.name, disable=not progress, leave=False)
    while (active := sessions.active).any():
        try:
            slate = validate_slate(ranker.act(obs), core.N, core.K)
        except ValueError as exc:
            raise ValueError(f"ranker {ranker.name!r} returned a bad slate: {exc}") from exc
        items = np.take_along_axis(obs["candidates"], slate, axis=1)
        sums["ndcg"] += ndcg_at_k(core.true_click_probs(), slate)
        sums["diversity"] += intra_list_diversity(unit_emb, items)
        sums["novelty"] += novelty[items].mean(axis=1)
        res = sessions.step(slate)
        feedback = Feedback.from_step(res)
        if on_step is not None:
            on_step(obs, slate, feedback, active)
        ranker.update(obs, slate, feedback)
        if step_reward is not None:  # the request's index in its session is the steps served before it
            step_reward[sessions.session[active], sums["length"][active].astype(np.int64)] = feedback.reward[active]
        sums["ret"] += feedback.reward
        sums["clicks"] += feedback.clicks.any(axis=1)
        sums["purchases"] += feedback.purchases.sum(axis=1)
        sums["dwell"] += feedback.dwell.sum(axis=1)
        sums["length"] += 1.0
        shown_ep.append(np.repeat(sessions.session[active], core.K))
        shown_item.append(items[active].ravel())
        r, c = np.nonzero((feedback.clicks | feedback.purchases)[active])  # the session's relevant items
        rel_ep.append(sessions.session[active][r])
        rel_item.append(items[active][r, c])
        done = sessions.ended
        if done.size:
            for name, acc in sums.items():
                out[name][sessions.session[done]] = acc[done]
                acc[done] = 0.0
            bar.update(len(done))
        restart = sessions.refill()
        obs = _copy(core.observe())
        if restart.size:
            ranker.reset(restart, obs)
    bar.close()
    ep = np.concatenate(shown_ep)
    counts = sparse.csr_matrix((np.ones(len(ep)), (ep, np.concatenate(shown_item))), shape=(n_ep, m))
    counts.sum_duplicates()  # slates of each session that showed each item
    shown = counts.astype(bool)
    rep = np.concatenate(rel_ep)
    relevant = sparse.csr_matrix((np.ones(len(rep)), (rep, np.concatenate(rel_item))), shape=(n_ep, m))
    precision, recall, f1 = precision_recall_f1(counts, relevant, out["length"], core.K)
    real: dict[str, np.ndarray] = {}
    if getattr(core.pop, "test_indptr", None) is not None:  # calibrated world: also vs each user's held-out items
        held = held_out_relevance(core.pop.test_indptr, core.pop.test_items, plan.users, m)
        real = dict(zip(REAL_METRICS, precision_recall_f1(counts, held, out["length"], core.K), strict=True))
    steps = np.maximum(out["length"], 1.0)
    return EpisodeStats(
        ret=out["ret"], clicks=out["clicks"], purchases=out["purchases"], dwell=out["dwell"], length=out["length"],
        ndcg=out["ndcg"] / steps, diversity=out["diversity"] / steps, novelty=out["novelty"] / steps,
        precision=precision, recall=recall, f1=f1,
        users=plan.users.copy(), rho=pop_rho[plan.users], seeds=plan.seeds.copy(), shown=shown,
        seconds=time.perf_counter() - t0, step_reward=step_reward, **real,
    )


def _copy(obs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The core returns its own buffers, which the step overwrites; rankers get a snapshot."""
    return {k: v.copy() for k, v in obs.items()}


def evaluate_rankers(core: BatchedCore, rankers: dict[str, Ranker], plan: EpisodePlan,
                     progress: bool = False) -> dict[str, EpisodeStats]:
    """Run every ranker over the same plan on the same core (paired episodes).

    Args:
        core: The batched simulator over the evaluated population.
        rankers: Name → ranker (names become the report's row labels).
        plan: The episodes.
        progress: Show a progress bar per ranker.

    Returns:
        Name → per-episode outcomes.
    """
    return {name: run_episodes(core, r, plan, progress=progress, desc=name) for name, r in rankers.items()}


#: Names of :mod:`agents.report` that this module held before the split, still importable from here
#: (``agents.final_report`` imports ``summarise`` and ``write_report`` from ``agents.evaluation``).
_REPORT_NAMES = frozenset({
    "COVERAGE_GROUPS", "TABLE_COLUMNS", "Bootstrap", "bootstrap_ci", "coverage", "markdown_table", "paired_test",
    "percentile_ci", "results_csv", "summarise", "write_report",
})


def __getattr__(name: str) -> Any:
    """The report's names, loaded on first use (a plain import here would be circular: the report reads the engine)."""
    if name in _REPORT_NAMES:
        from agents import report

        return getattr(report, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
