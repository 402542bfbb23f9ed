"""The evaluation engine and its statistics (agents/evaluation.py, agents/report.py).

Hand-computed cases for the bootstrap, the paired test and the slate metrics; a scripted fake core for the
engine's bookkeeping; the small world for common random numbers and determinism.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from scipy import sparse

from agents.base import Ranker
from agents.evaluation import (
    episode_plan,
    evaluate_rankers,
    held_out_relevance,
    intra_list_diversity,
    item_novelty,
    ndcg_at_k,
    precision_recall_f1,
    run_episodes,
)
from agents.rankers import BlendRanker, OracleRanker, RandomRanker
from agents.report import Bootstrap, bootstrap_ci, coverage, markdown_table, paired_test, summarise, write_report
from configs.schema import Config, EnvConfig
from envs.core import BatchedCore, StepResult
from envs.spaces import CONTEXT_NAMES, FEATURE_NAMES
from envs.world import World

# ---- statistics on hand-computed cases -------------------------------------------------------------------------


def test_bootstrap_two_point_sample() -> None:
    """x = [0, 1]: a resample mean is 0, 1/2, 1 with probabilities 1/4, 1/2, 1/4, so the 95% interval is [0, 1]."""
    boot = Bootstrap(2, 20_000, seed=3)
    means = boot.means(np.array([0.0, 1.0]))
    assert set(np.unique(means)) <= {0.0, 0.5, 1.0}
    assert np.mean(means == 0.5) == pytest.approx(0.5, abs=0.02)
    assert np.mean(means == 0.0) == pytest.approx(0.25, abs=0.02)
    assert bootstrap_ci(np.array([0.0, 1.0]), 20_000, seed=3) == (0.0, 1.0)


def test_bootstrap_skewed_sample() -> None:
    """x = [0, 0, 0, 1]: P(mean = 0) = (3/4)^4 ≈ 0.32 > 2.5%, P(mean >= 3/4) ≈ 0.051 and P(mean = 1) ≈ 0.004."""
    lo, hi = bootstrap_ci(np.array([0.0, 0.0, 0.0, 1.0]), 20_000, seed=0)
    assert (lo, hi) == (0.0, 0.75)


def test_bootstrap_constant_and_seeded() -> None:
    assert bootstrap_ci(np.full(10, 2.5), 500, seed=1) == (2.5, 2.5)
    x = np.random.default_rng(0).normal(size=50)
    assert bootstrap_ci(x, 500, seed=7) == bootstrap_ci(x, 500, seed=7)
    assert bootstrap_ci(x, 500, seed=7) != bootstrap_ci(x, 500, seed=8)
    with pytest.raises(ValueError, match="expected shape"):
        Bootstrap(5, 10, 0).means(np.zeros(4))


def test_paired_t_test_by_hand() -> None:
    """d = [1, 2, 3, 4]: mean 2.5, sd √(5/3), t = 2.5 / (sd / 2) ≈ 3.873 with 3 degrees of freedom.

    For 3 degrees of freedom the two-sided p-value has a closed form: p = 1 − (2/π)(θ + sin θ cos θ),
    θ = arctan(t / √3).
    """
    x = np.array([3.0, 5.0, 7.0, 9.0])
    ref = np.array([2.0, 3.0, 4.0, 5.0])
    out = paired_test(x, ref, Bootstrap(4, 1000, 0))
    t = 2.5 / (math.sqrt(5.0 / 3.0) / 2.0)
    theta = math.atan(t / math.sqrt(3.0))
    p = 1.0 - 2.0 / math.pi * (theta + math.sin(theta) * math.cos(theta))
    assert out["diff"] == 2.5
    assert out["t"] == pytest.approx(t, rel=1e-9)
    assert out["p_value"] == pytest.approx(p, rel=1e-9)
    assert out["n"] == 4
    lo, hi = out["ci95"]
    assert 1.0 <= lo <= 2.5 <= hi <= 4.0


def test_paired_test_sees_what_an_unpaired_view_hides() -> None:
    """Episodes differ wildly, the ranker is consistently a little better: paired, that is significant."""
    rng = np.random.default_rng(0)
    base = rng.normal(0.0, 10.0, 200)
    better = base + 0.3 + rng.normal(0.0, 0.1, 200)
    assert paired_test(better, base)["p_value"] < 1e-6
    assert bootstrap_ci(better - base, 1000, 0)[0] > 0.0
    # the two means' own intervals overlap heavily
    assert bootstrap_ci(better, 1000, 0)[0] < bootstrap_ci(base, 1000, 0)[1]


def test_paired_test_degenerate_cases() -> None:
    x = np.array([1.0, 2.0, 3.0])
    same = paired_test(x, x)
    assert same["diff"] == 0.0 and same["p_value"] == 1.0 and same["t"] is None
    shifted = paired_test(x + 1.0, x)
    assert shifted["diff"] == 1.0 and shifted["p_value"] == 0.0
    assert paired_test(np.array([1.0]), np.array([0.0]))["p_value"] is None
    with pytest.raises(ValueError, match="equal 1-d shapes"):
        paired_test(x, x[:2])


def test_ndcg_by_hand() -> None:
    rel = np.array([[0.1, 0.4, 0.2], [0.0, 0.0, 0.0]])
    ideal = 0.4 + 0.2 / math.log2(3)
    out = ndcg_at_k(rel, np.array([[0, 1], [0, 1]]))
    assert out[0] == pytest.approx((0.1 + 0.4 / math.log2(3)) / ideal)
    assert out[1] == 1.0  # nothing relevant: every slate is ideal
    assert ndcg_at_k(rel[:1], np.array([[1, 2]]))[0] == pytest.approx(1.0)


def _per_request_prf(slates: list[list[int]], relevant: set[int], k: int) -> tuple[float, float, float]:
    """The definition, literally: per-request P and R against the session's set, averaged; F1 of the means."""
    p = [len(set(s) & relevant) / k for s in slates]
    r = [len(set(s) & relevant) / len(relevant) if relevant else 0.0 for s in slates]
    mp, mr = sum(p) / len(p), sum(r) / len(r)
    return mp, mr, (2 * mp * mr / (mp + mr) if mp + mr else 0.0)


def test_precision_recall_f1_by_hand() -> None:
    """Three hand-made sessions (K = 2, M = 6): the sparse computation equals the per-request definition."""
    sessions = [([[0, 1], [1, 2], [2, 3]], [1]),  # item 1 clicked; shown in 2 of 3 slates
                ([[0, 1], [0, 2]], []),  # no click
                ([[4, 5]], [4, 4])]  # click and purchase of item 4: one relevant item
    ep, it, rep, rit = [], [], [], []
    for e, (slates, rel) in enumerate(sessions):
        for s in slates:
            ep += [e] * len(s)
            it += s
        rep += [e] * len(rel)
        rit += rel
    shown = sparse.csr_matrix((np.ones(len(ep)), (ep, it)), shape=(3, 6))
    relevant = sparse.csr_matrix((np.ones(len(rep)), (rep, rit)), shape=(3, 6))
    p, r, f1 = precision_recall_f1(shown, relevant, np.array([3.0, 2.0, 1.0]), 2)
    assert p == pytest.approx([1 / 3, 0.0, 0.5])
    assert r == pytest.approx([2 / 3, 0.0, 1.0])
    assert f1 == pytest.approx([4 / 9, 0.0, 2 / 3])
    for e, (slates, rel) in enumerate(sessions):
        assert (p[e], r[e], f1[e]) == pytest.approx(_per_request_prf(slates, set(rel), 2))


def test_intra_list_diversity_by_hand() -> None:
    emb = np.eye(3, dtype=np.float32)
    items = np.array([[0, 1, 2], [0, 0, 0], [0, 0, 1]])
    # orthogonal: every pair 1; identical: 0; (e0, e0, e1): pairs 0, 1, 1 → 2/3
    assert intra_list_diversity(emb, items) == pytest.approx([1.0, 0.0, 2.0 / 3.0])
    assert intra_list_diversity(emb, items[:, :1]).tolist() == [0.0, 0.0, 0.0]


def test_novelty_by_hand() -> None:
    """Add-one smoothed click shares: c = [3, 0, 1, 0] → p = (c + 1) / 8 → −log2 p = [1, 3, 2, 3] bits."""
    assert item_novelty(np.array([3.0, 0.0, 1.0, 0.0])) == pytest.approx([1.0, 3.0, 2.0, 3.0])


def test_coverage_and_its_interval() -> None:
    same = sparse.csr_matrix(np.tile([True, True, False, False], (10, 1)))
    assert coverage(same) == {"mean": 0.5, "ci95": [0.5, 0.5]}
    rare = np.tile([True, False, False, False], (10, 1))
    rare[3, 2] = True  # one item hangs on one episode: the jackknife sees it
    cov = coverage(sparse.csr_matrix(rare))
    assert cov["mean"] == 0.5
    assert cov["ci95"][0] < 0.5 < cov["ci95"][1]


# ---- the engine on a scripted core (hand-checked episodes) ------------------------------------------------------


class ScriptedCore:
    """A stand-in for BatchedCore with a fixed script.

    Every session lasts two requests; user u sees candidates ``[u, u+1, u+2]`` with true click probabilities
    ``[0.5, 0.1, 0.3]``; the first request gets a click on rank 0 (reward 1, dwell 10 s, a purchase for user 1),
    the second none, then the user leaves. Item embeddings are orthogonal; logged clicks ``[3, 0, 1, 0]``.
    """

    N, K, M = 3, 2, 4

    def __init__(self, batch: int) -> None:
        self.B = batch
        self.world = SimpleNamespace(item_emb=np.eye(4, dtype=np.float32), popularity=np.array([3.0, 0.0, 1.0, 0.0]))
        self.pop = SimpleNamespace(rho=np.array([0.2, 0.9]))
        self.user = np.zeros(batch, np.int64)
        self.keys = np.zeros(batch, np.uint64)
        self.t = np.zeros(batch, np.int64)
        self.cands = np.zeros((batch, self.N), np.int64)

    def reset_rows(self, rows: np.ndarray, keys: np.ndarray, users: np.ndarray) -> None:
        self.user[rows], self.keys[rows], self.t[rows] = users, keys, 0

    def observe(self) -> dict[str, np.ndarray]:
        self.cands = self.user[:, None] + np.arange(self.N)[None, :]
        return {"user": np.zeros((self.B, 4), np.float32), "candidates": self.cands.copy(),
                "features": np.zeros((self.B, self.N, len(FEATURE_NAMES)), np.float32),
                "context": np.zeros((self.B, len(CONTEXT_NAMES)), np.float32)}

    def true_click_probs(self) -> np.ndarray:
        return np.tile([0.5, 0.1, 0.3], (self.B, 1))

    def step(self, slate: np.ndarray) -> StepResult:
        b, k = self.B, self.K
        first = self.t == 0
        clicks = np.zeros((b, k), bool)
        clicks[:, 0] = first
        purchases = clicks & (self.user == 1)[:, None]
        dwell = np.where(clicks, 10.0, 0.0).astype(np.float32)
        reward = first.astype(np.float32)
        self.t += 1
        z = np.zeros(b, np.float32)
        return StepResult(reward=reward, terminated=self.t >= 2, truncated=np.zeros(b, bool),
                          items=np.take_along_axis(self.cands, slate, axis=1), click_rank=np.where(first, 0, -1),
                          clicks=clicks, purchases=purchases, dwell=dwell, reward_click=reward, reward_purchase=z,
                          reward_dwell=z)


class FirstTwo(Ranker):
    """Always the first two candidates; records its resets."""

    name = "first-two"

    def __init__(self) -> None:
        super().__init__(2)
        self.resets: list[list[int]] = []

    def reset(self, rows: np.ndarray, obs: dict[str, np.ndarray]) -> None:
        self.resets.append(sorted(np.asarray(rows).tolist()))

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        return np.tile(np.array([0, 1], np.int64), (len(obs["candidates"]), 1))


@pytest.mark.parametrize("batch", [1, 2, 5])
def test_engine_metrics_on_scripted_episodes(batch: int) -> None:
    """Three sessions (users 0, 1, 0), any batch size: the same hand-checked per-episode numbers."""
    plan = episode_plan(3, [0], 2)
    plan = type(plan)(plan.keys, np.array([0, 1, 0]), plan.seeds)
    ranker = FirstTwo()
    st = run_episodes(ScriptedCore(batch), ranker, plan)  # type: ignore[arg-type]
    assert st.ret.tolist() == [1.0, 1.0, 1.0]
    assert st.length.tolist() == [2.0, 2.0, 2.0]
    assert st.metric("ctr").tolist() == [0.5, 0.5, 0.5]
    assert st.purchases.tolist() == [0.0, 1.0, 0.0]
    assert st.dwell.tolist() == [10.0, 10.0, 10.0]
    ndcg = (0.5 + 0.1 / math.log2(3)) / (0.5 + 0.3 / math.log2(3))
    assert st.ndcg == pytest.approx([ndcg] * 3)
    assert st.diversity == pytest.approx([1.0] * 3)
    # user 0 sees items 0, 1 (1 and 3 bits), user 1 sees 1, 2 (3 and 2 bits)
    assert st.novelty == pytest.approx([2.0, 2.5, 2.0])
    assert st.rho.tolist() == [0.2, 0.9, 0.2]
    assert st.shown.toarray().astype(int).tolist() == [[1, 1, 0, 0], [0, 1, 1, 0], [1, 1, 0, 0]]
    # each user clicks their first item on the first request and sees it again on the second: P = 2/4, R = 2/2
    assert st.metric("precision") == pytest.approx([0.5] * 3)
    assert st.metric("recall") == pytest.approx([1.0] * 3)
    assert st.metric("f1") == pytest.approx([2 / 3] * 3)
    assert coverage(st.shown)["mean"] == 0.75
    assert ranker.resets[0] == list(range(batch))
    assert sum(len(r) for r in ranker.resets[1:]) == max(0, 3 - batch)  # refills as sessions end


def test_engine_names_a_ranker_with_bad_slates() -> None:
    class Repeats(FirstTwo):
        name = "repeats"

        def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
            return np.zeros((len(obs["candidates"]), 2), np.int64)

    with pytest.raises(ValueError, match=r"ranker 'repeats' returned a bad slate.*repeats a candidate"):
        run_episodes(ScriptedCore(2), Repeats(), episode_plan(2, [0], 2))  # type: ignore[arg-type]


# ---- plans, common random numbers, determinism on the small world ------------------------------------------------


def test_episode_plan() -> None:
    a = episode_plan(10, [0, 1], 10)
    assert len(a) == 20 and a.keys.dtype == np.uint64
    assert sorted(a.users[:10].tolist()) == list(range(10))  # a permutation per seed
    assert a.seeds.tolist() == [0] * 10 + [1] * 10
    b = episode_plan(10, [0, 1], 10)
    assert np.array_equal(a.keys, b.keys) and np.array_equal(a.users, b.users)
    assert not set(a.keys[:10].tolist()) & set(a.keys[10:].tolist())
    assert np.array_equal(episode_plan(4, [1], 10).keys, a.keys[10:14])  # a seed's episodes do not depend on others
    with pytest.raises(ValueError):
        episode_plan(0, [0], 10)


def test_episodes_do_not_depend_on_the_batch(small_world: World, small_cfg: EnvConfig) -> None:
    """Common random numbers: an episode's outcome depends on its key and user, not on its row or the batch."""
    plan = episode_plan(24, [5], small_world.populations["heldout"].size)
    k = small_cfg.slate_size
    runs = [run_episodes(BatchedCore(small_world, small_cfg, b, population="heldout"), BlendRanker(k, 0.7), plan)
            for b in (5, 24, 32)]
    for st in runs[1:]:
        assert np.array_equal(st.ret, runs[0].ret)
        assert np.array_equal(st.length, runs[0].length)
        assert np.allclose(st.ndcg, runs[0].ndcg)


def test_step_rewards_are_each_requests_reward_in_its_session(small_world: World, small_cfg: EnvConfig) -> None:
    """``per_step=True``: row e of ``step_reward`` is episode e's rewards request by request, in plan order whatever
    the batch (3 rows start most episodes mid-run): they sum to its return, the requests past its length are 0, and
    without the flag nothing is recorded."""
    plan = episode_plan(20, [3], small_world.populations["heldout"].size)
    k = small_cfg.slate_size
    stats = [run_episodes(BatchedCore(small_world, small_cfg, b, population="heldout"), BlendRanker(k, 0.7), plan,
                          per_step=True) for b in (3, 20)]
    plain = run_episodes(BatchedCore(small_world, small_cfg, 3, population="heldout"), BlendRanker(k, 0.7), plan)
    assert plain.step_reward is None
    for st in stats:
        r = st.step_reward
        assert r is not None and r.shape == (len(plan), small_cfg.max_steps)
        np.testing.assert_allclose(r.sum(axis=1), st.ret, rtol=1e-9, atol=1e-9)
        past = np.arange(small_cfg.max_steps)[None, :] >= st.length[:, None]
        assert np.all(r[past] == 0.0) and st.length.max() >= 2 and np.count_nonzero(r[~past]) > len(plan)
    np.testing.assert_array_equal(stats[0].step_reward, stats[1].step_reward)  # rows differ, episodes do not


def test_evaluation_is_deterministic_and_paired(small_world: World, small_cfg: EnvConfig) -> None:
    plan = episode_plan(30, [0, 1], small_world.populations["heldout"].size)
    k = small_cfg.slate_size

    def run() -> dict:
        core = BatchedCore(small_world, small_cfg, 16, population="heldout")
        rankers = {"random": RandomRanker(k, seed=0), "greedy": BlendRanker(k, 1.0), "oracle": OracleRanker(k, core)}
        return evaluate_rankers(core, rankers, plan)

    first, second = run(), run()
    for name in first:
        assert np.array_equal(first[name].ret, second[name].ret)
        assert np.array_equal(first[name].users, plan.users)
    res = summarise(first, "greedy", n_boot=300, seed=0, hidden=["oracle"])
    assert summarise(second, "greedy", n_boot=300, seed=0, hidden=["oracle"])["rankers"] == res["rankers"]
    for name, row in res["rankers"].items():
        assert {"return", "ctr", "purchases", "dwell", "length", "diversity", "coverage", "novelty", "ndcg",
                "oracle_share"} <= set(row)
        for v in row.values():
            assert v["ci95"][0] <= v["mean"] + 1e-12 and v["mean"] <= v["ci95"][1] + 1e-12, name
    assert res["rankers"]["oracle"]["oracle_share"]["mean"] == 1.0
    assert res["rankers"]["oracle"]["ndcg"]["mean"] == pytest.approx(1.0)
    assert res["paired"]["results"]["greedy"]["return"]["p_value"] == 1.0
    assert set(res["by_rho"]["results"]["random"]) <= set(res["by_rho"]["buckets"])
    with pytest.raises(ValueError, match="reference 'nope'"):
        summarise(first, "nope")


def test_write_report(tmp_path: Path, small_world: World, small_cfg: EnvConfig) -> None:
    plan = episode_plan(12, [0], small_world.populations["heldout"].size)
    core = BatchedCore(small_world, small_cfg, 12, population="heldout")
    k = small_cfg.slate_size
    st = evaluate_rankers(core, {"a": BlendRanker(k, 0.2), "oracle": OracleRanker(k, core)}, plan)
    curve = {"alphas": [0.0, 1.0], "mean_return": [1.0, 2.0], "ci95": [[0.5, 1.5], [1.5, 2.5]], "best_alpha": 1.0,
             "episodes": 5, "population": "train", "seed": 1}
    res = summarise(st, "a", n_boot=200, hidden=["oracle"], alpha_curve=curve, setup={"slate_size": k})
    paths = write_report(res, tmp_path / "rep")
    assert json.loads(paths["json"].read_text())["rankers"]["a"]["return"]["mean"] == res["rankers"]["a"]["return"][
        "mean"]
    assert paths["csv"].read_text().splitlines()[0].startswith("ranker,metric,mean,ci95_lo,ci95_hi")
    table = paths["markdown"].read_text()
    assert table == markdown_table(res) and "oracle †" in table and "(reference)" in table
    header = table.splitlines()[0]
    assert all(f"| {c}@{k} |" in header for c in ("NDCG", "P", "R", "F1")), header
    for m in ("precision", "recall", "f1"):
        row = res["rankers"]["oracle"][m]
        assert 0.0 <= row["ci95"][0] <= row["mean"] <= row["ci95"][1] <= 1.0
        assert m in res["paired"]["results"]["oracle"]
    # every click is a relevant item in the slate it was clicked in: precision >= clicks / (K · length)
    o = st["oracle"]
    assert np.all(o.precision >= o.clicks / (k * np.maximum(o.length, 1)) - 1e-12)
    assert np.all((o.recall > 0) == (o.clicks > 0))
    for name in ("metrics", "alpha_curve", "by_rho"):
        assert paths[name].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in (tmp_path / "rep").rglob("*.tmp")]


# ---- signs and populations of the reports --------------------------------------------------------------------------


def test_paired_differences_are_ranker_minus_reference(small_world: World, small_cfg: EnvConfig) -> None:
    """Rankers of known order (oracle > greedy-llm > random on return): every paired difference is the ranker's
    per-episode value minus the reference's, so the better ranker gets a positive Δ in results and table."""
    plan = episode_plan(40, [0], small_world.populations["heldout"].size)
    k = small_cfg.slate_size
    core = BatchedCore(small_world, small_cfg, 20, population="heldout")
    st = evaluate_rankers(core, {"random": RandomRanker(k, seed=0), "oracle": OracleRanker(k, core)}, plan)
    assert st["oracle"].ret.mean() > st["random"].ret.mean()  # the known order
    res = summarise(st, "random", n_boot=200, seed=0)
    for m in ("return", "ctr", "ndcg", "length"):
        want = float((st["oracle"].metric(m) - st["random"].metric(m)).mean())
        assert res["paired"]["results"]["oracle"][m]["diff"] == pytest.approx(want, abs=1e-12), m
    up = res["paired"]["results"]["oracle"]["return"]
    assert up["diff"] > 0 and up["ci95"][0] > 0 and up["t"] > 0
    assert res["paired"]["results"]["random"]["return"]["diff"] == 0.0
    assert f"| {up['diff']:+.2f} |" in markdown_table(res) and up["diff"] >= 0.005
    down = summarise(st, "oracle", n_boot=200, seed=0)["paired"]["results"]["random"]["return"]
    assert down["diff"] == pytest.approx(-up["diff"], abs=1e-12) and down["ci95"][1] < 0 and down["t"] < 0


def test_final_comparison_uses_the_alpha_it_is_given_on_held_out_users(tmp_path: Path, small_world: World,
                                                                        small_cfg: EnvConfig) -> None:
    """train.py's final table: tuned-alpha is the blend at the tuned α handed in (0.2 here, not 0.5 or another
    re-tuning), simulated on the held-out population, and the headline ratio is PPO over that row."""
    import torch as th

    from agents.final_report import final_comparison
    from agents.policies import SlatePolicy
    from agents.rankers import BlendRanker
    from agents.training import make_venv, policy_kwargs
    from agents.tuning import AlphaCurve
    from configs.loader import from_dict

    # the blend-based policy: its α is what this test reads (the default, a residual on tuned-diverse, starts at that
    # heuristic's α instead)
    cfg = from_dict(Config, {"train": {"ppo": {"n_envs": 2}, "device": "cpu", "policy": {"base": "blend"}},
                             "eval": {"episodes": 30, "seeds": 1, "batch": 15, "bootstrap": 100}})
    cfg.env = small_cfg
    venv = make_venv(cfg, small_world, 0)
    policy = SlatePolicy(venv.observation_space, venv.action_space, lambda _: 1e-3,
                         **policy_kwargs(cfg, 0.2, small_world))
    gen = th.Generator().manual_seed(0)
    with th.no_grad():  # an untrained policy's α is one constant; make it vary with the state, as a trained one's does
        for p in policy.parameters():
            p.add_(0.05 * th.randn(p.shape, generator=gen))
    curve = AlphaCurve(alphas=[0.2, 0.5], mean_return=[2.0, 1.0], ci95=[[1.9, 2.1], [0.9, 1.1]], best_alpha=0.2,
                       episodes=10, population="train", seed=1)
    res = final_comparison(cfg, small_world, policy, curve, tmp_path, progress=False)
    held = small_world.populations["heldout"]
    plan = episode_plan(30, [0], held.size)
    k = small_cfg.slate_size

    def mean(alpha: float, population: str) -> float:
        core = BatchedCore(small_world, small_cfg, 7, population=population)
        return float(run_episodes(core, BlendRanker(k, alpha), plan).ret.mean())

    tuned = mean(0.2, "heldout")
    assert tuned != mean(0.5, "heldout") and tuned != mean(0.2, "train")  # the test can tell them apart
    rows = res["rankers"]
    assert rows["tuned-alpha"]["return"]["mean"] == pytest.approx(tuned, rel=1e-12)
    assert res["ratio_vs_tuned_alpha"] == pytest.approx(rows["ppo"]["return"]["mean"] / tuned, rel=1e-12)
    assert res["paired"]["reference"] == "tuned-alpha" and res["setup"]["users"] == "heldout"
    assert res["alpha_curve"]["best_alpha"] == 0.2
    from agents.evaluation import RHO_EDGES, RHO_LABELS

    bucket = np.clip(np.digitize(held.rho[plan.users], RHO_EDGES[1:-1]), 0, len(RHO_LABELS) - 1)
    counts = {label: row["n"] for label, row in res["by_rho"]["results"]["ppo"].items()}
    assert counts == {RHO_LABELS[i]: int((bucket == i).sum()) for i in np.unique(bucket)}
    assert json.loads((tmp_path / "report" / "results.json").read_text())["rankers"]["tuned-alpha"] == rows[
        "tuned-alpha"]


def test_the_report_names_stay_importable_from_the_engine_module() -> None:
    """agents.final_report imports summarise and write_report from agents.evaluation: the engine module hands them
    out from agents.report (lazily: the report reads the engine), and nothing else."""
    import agents.evaluation as engine
    import agents.report as report
    from agents.evaluation import summarise as s
    from agents.evaluation import write_report as w

    assert s is report.summarise and w is report.write_report and engine.Bootstrap is report.Bootstrap
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        engine.nothing  # noqa: B018


# ---- precision / recall / F1 against held-out real items (calibrated worlds) ----------------------------------


def test_held_out_relevance_by_hand() -> None:
    """Users 0..2 hold out {1, 3}, {} and {4}; episodes of users 2, 0, 1: the slates' P/R/F1 by definition."""
    indptr, items = np.array([0, 2, 2, 3]), np.array([1, 3, 4])
    held = held_out_relevance(indptr, items, np.array([2, 0, 1]), 6)
    assert held.toarray().tolist() == [[0, 0, 0, 0, 1, 0], [0, 1, 0, 1, 0, 0], [0] * 6]
    sessions = [[[4, 5], [0, 4]], [[0, 1], [1, 3], [2, 5]], [[1, 3]]]
    ep, it = [], []
    for e, slates in enumerate(sessions):
        for s in slates:
            ep += [e] * len(s)
            it += s
    shown = sparse.csr_matrix((np.ones(len(ep)), (ep, it)), shape=(3, 6))
    p, r, f1 = precision_recall_f1(shown, held, np.array([2.0, 3.0, 1.0]), 2)
    for e, (slates, rel) in enumerate(zip(sessions, [{4}, {1, 3}, set()], strict=True)):
        assert (p[e], r[e], f1[e]) == pytest.approx(_per_request_prf(slates, rel, 2))
    assert p == pytest.approx([0.5, 0.5, 0.0]) and r == pytest.approx([1.0, 0.5, 0.0])


def test_population_test_items_must_be_a_consistent_csr(small_world: World) -> None:
    pop = small_world.populations["heldout"]
    assert not pop.has_test_items  # a synthetic world has no real users
    with pytest.raises(ValueError, match="go together"):
        dataclasses.replace(pop, test_indptr=np.zeros(pop.size + 1, np.int64))
    with pytest.raises(ValueError, match="U \\+ 1"):
        dataclasses.replace(pop, test_indptr=np.zeros(pop.size, np.int64), test_items=np.zeros(0, np.int64))


def test_real_metrics_only_where_the_population_has_held_out_items(small_world: World, small_cfg: EnvConfig) -> None:
    """Synthetic: no ``*_real`` metric anywhere. Every item held out: P@K real = 1 and R@K real = K / M exactly."""
    k, m = small_cfg.slate_size, small_world.n_items
    plan = episode_plan(12, [0], small_world.populations["heldout"].size)
    core = BatchedCore(small_world, small_cfg, 8, population="heldout")
    synth = evaluate_rankers(core, {"random": RandomRanker(k, seed=0)}, plan)["random"]
    assert synth.precision_real is None and "f1_real" not in synth.metric_names
    with pytest.raises(KeyError, match="f1_real"):
        synth.metric("f1_real")
    res = summarise({"random": synth}, "random", n_boot=50, seed=0)
    assert not {"precision_real", "recall_real", "f1_real"} & set(res["rankers"]["random"])
    assert "real" not in markdown_table(res)

    u = core.pop.size
    core.pop = dataclasses.replace(core.pop, test_indptr=np.arange(u + 1, dtype=np.int64) * m,
                                   test_items=np.tile(np.arange(m, dtype=np.int64), u))
    real = evaluate_rankers(core, {"random": RandomRanker(k, seed=0)}, plan)["random"]
    assert np.array_equal(real.ret, synth.ret)  # the held-out items change the metrics, not the sessions
    assert real.metric("precision_real") == pytest.approx(np.ones(len(plan)))
    assert real.metric("recall_real") == pytest.approx(np.full(len(plan), k / m))
    res = summarise({"random": real}, "random", n_boot=50, seed=0)
    assert res["rankers"]["random"]["precision_real"]["mean"] == pytest.approx(1.0)
    assert f"P@{k} real" in markdown_table({**res, "setup": {**res["setup"], "slate_size": k}})
