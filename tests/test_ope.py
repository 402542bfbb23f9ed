"""Off-policy estimators of slate policies (agents/ope/) on a tiny bandit whose truth is known exactly:
N = 4 candidates, K = 2 positions, 12 ranked slates enumerated per context."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from agents.ope import (
    LoggingTerms,
    SlateLog,
    TargetTerms,
    estimate_all,
    estimator_terms,
    pi_weights,
    pl_conditionals,
    pl_marginals,
    pl_pinv_gram,
    pl_prefix_log_prob,
    pl_sample,
    position_rewards,
)

N, K, C, EPS = 4, 2, 3, 0.2
SLATES = np.array(list(itertools.permutations(range(N), K)), np.int64)  # (12, 2)


def _world(seed: int = 0) -> dict[str, np.ndarray]:
    """Logging and target logits per context, and per-position expected rewards of three shapes."""
    g = np.random.default_rng(seed)
    mu, pi = g.normal(size=(C, N)), 1.5 * g.normal(size=(C, N))
    item = g.uniform(0.0, 1.0, size=(C, K, N))  # additive: r_k = φ(k, s_k)
    pair = g.uniform(0.0, 1.0, size=(C, N, N))  # cascade: r_2 depends on (s_1, s_2)
    anything = g.uniform(0.0, 1.0, size=(C, len(SLATES), K))  # no structure
    return {"mu": mu, "pi": pi, "item": item, "pair": pair, "anything": anything}


def _expected_rewards(w: dict[str, np.ndarray], kind: str) -> np.ndarray:
    """(C, S, K) expected reward per position of each context × slate."""
    out = np.zeros((C, len(SLATES), K))
    for c in range(C):
        for i, s in enumerate(SLATES):
            if kind == "additive":
                out[c, i] = [w["item"][c, 0, s[0]], w["item"][c, 1, s[1]]]
            elif kind == "cascade":
                out[c, i] = [w["item"][c, 0, s[0]], w["pair"][c, s[0], s[1]]]
            else:
                out[c, i] = w["anything"][c, i]
    return out


def _exact_moments(logits: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Probabilities of the 12 slates, per-position marginals (K, N) and Γ (K·N, K·N) by enumeration."""
    p = np.exp(pl_prefix_log_prob(np.repeat(logits[None], len(SLATES), 0), SLATES, eps)[:, -1])
    ind = np.zeros((len(SLATES), K * N))
    ind[np.arange(len(SLATES))[:, None], np.arange(K) * N + SLATES] = 1.0
    return p, (p @ ind).reshape(K, N), (ind * p[:, None]).T @ ind


def _enumerated_log(w: dict[str, np.ndarray], rewards: np.ndarray) -> tuple[SlateLog, TargetTerms, LoggingTerms,
                                                                             np.ndarray, float]:
    """One row per (context, slate) with exact terms; returns the log, terms, row weights μ(s|c)/C and V(π)."""
    rows_c = np.repeat(np.arange(C), len(SLATES))
    slates = np.tile(SLATES, (C, 1))
    mu_logits, pi_logits = w["mu"][rows_c], w["pi"][rows_c]
    weight, truth = np.zeros(len(rows_c)), 0.0
    mu_marg, pi_marg, pinv = (np.zeros((len(rows_c), K, N)), np.zeros((len(rows_c), K, N)),
                              np.zeros((len(rows_c), K * N, K * N)))
    for c in range(C):
        pm, mm, gm = _exact_moments(w["mu"][c], EPS)
        pp, mp, _ = _exact_moments(w["pi"][c], 0.0)
        sl = slice(c * len(SLATES), (c + 1) * len(SLATES))
        weight[sl] = pm / C
        truth += float(pp @ rewards[c].sum(axis=1)) / C
        mu_marg[sl], pi_marg[sl], pinv[sl] = mm, mp, np.linalg.pinv(gm, hermitian=True)
    flat = rewards.reshape(-1, K)
    log = SlateLog(slates, flat, flat, mu_logits, EPS, {})
    target = TargetTerms(pl_prefix_log_prob(pi_logits, slates), pi_marg, pl_conditionals(pi_logits, slates))
    logging = LoggingTerms(pl_prefix_log_prob(mu_logits, slates, EPS), mu_marg, pinv)
    return log, target, logging, weight, truth


@pytest.mark.parametrize(("kind", "unbiased"), [
    ("anything", ("ips",)),
    ("cascade", ("ips", "rips", "cascade-dr")),
    ("additive", ("ips", "rips", "cascade-dr", "iips", "pi")),
])
def test_estimators_unbiased_where_their_assumption_holds(kind: str, unbiased: tuple[str, ...]) -> None:
    w = _world()
    log, target, logging, weight, truth = _enumerated_log(w, _expected_rewards(w, kind))
    # any reward model of (context, position, candidate), blind to the logged slate, keeps cascade-dr unbiased
    qhat = np.repeat(np.random.default_rng(1).normal(size=(C, K, N)), len(SLATES), axis=0)
    for name in unbiased:
        expected = float(weight @ estimator_terms(name, log, log.rewards, target, logging, qhat))
        assert expected == pytest.approx(truth, rel=1e-9, abs=1e-12), name


def test_decomposition_estimators_biased_when_their_assumption_fails() -> None:
    """The check above is not vacuous: on an unstructured reward IIPS, RIPS and PI miss the truth."""
    w = _world()
    log, target, logging, weight, truth = _enumerated_log(w, _expected_rewards(w, "anything"))
    for name in ("iips", "rips", "pi"):
        assert abs(float(weight @ estimator_terms(name, log, log.rewards, target, logging)) - truth) > 1e-3, name


def test_cascade_dr_with_the_true_reward_model_has_no_variance() -> None:
    """With Q̂ = the expected rewards of a one-position slate, cascade-dr's term is V(π | x) for every slate."""
    g = np.random.default_rng(3)
    mu, pi, r = g.normal(size=(1, N)), g.normal(size=(1, N)), g.uniform(size=N)
    slates = SLATES[:, :1]
    b = len(slates)
    log = SlateLog(slates, r[slates], r[slates], np.repeat(mu, b, 0), 0.0, {})
    target = TargetTerms(pl_prefix_log_prob(np.repeat(pi, b, 0), slates), None,
                         pl_conditionals(np.repeat(pi, b, 0), slates))
    logging = LoggingTerms(pl_prefix_log_prob(np.repeat(mu, b, 0), slates), None, None)
    terms = estimator_terms("cascade-dr", log, log.rewards, target, logging, np.tile(r, (b, 1, 1)))
    truth = float(np.exp(pi[0] - np.logaddexp.reduce(pi[0])) @ r)
    np.testing.assert_allclose(terms, truth, rtol=1e-12)


def test_snips_equals_ips_when_weights_average_one() -> None:
    g = np.random.default_rng(4)
    n = 50
    slates = np.tile(SLATES[:1], (n, 1))
    rewards = g.uniform(size=(n, K))
    w = g.gamma(2.0, size=n)
    w /= w.mean()
    log_lp = np.tile([np.log(0.3), np.log(0.05)], (n, 1))
    log = SlateLog(slates, rewards, rewards, np.zeros((n, N)), 0.0, {})
    target = TargetTerms(log_lp + np.log(w)[:, None], None, None)
    est = estimate_all(log, rewards, target, LoggingTerms(log_lp, None, None), ("ips", "snips"))
    assert est["snips"].value == pytest.approx(est["ips"].value, rel=1e-12)
    assert est["ips"].low < est["ips"].value < est["ips"].high


def test_pl_probabilities_sum_to_one_and_match_the_simulators_logging_policy() -> None:
    from envs.logging_policy import logging_policy
    from envs.spaces import F_LLM

    g = np.random.default_rng(5)
    logits = g.normal(size=(1, N))
    p = np.exp(pl_prefix_log_prob(np.repeat(logits, len(SLATES), 0), SLATES, EPS)[:, -1])
    assert p.sum() == pytest.approx(1.0, abs=1e-12)
    cond = pl_conditionals(np.repeat(logits, len(SLATES), 0), SLATES, EPS)
    np.testing.assert_allclose(cond.sum(axis=2), 1.0, atol=1e-12)
    # the conditional at position 2 times the prefix probability is the slate probability
    lp1 = pl_prefix_log_prob(np.repeat(logits, len(SLATES), 0), SLATES, EPS)[:, 0]
    np.testing.assert_allclose(np.exp(lp1) * cond[np.arange(len(SLATES)), 1, SLATES[:, 1]], p, rtol=1e-12)
    # recfeed's logging policy reports the same log-propensity
    b, f = 64, 7
    feats = g.normal(size=(b, 10, f)).astype(np.float32)
    keys = np.arange(b, dtype=np.uint64) + np.uint64(11)
    slate, lp = logging_policy({"features": feats}, keys, np.zeros(b, np.int64), 3, 0.2, 0.5)
    mine = pl_prefix_log_prob(feats[:, :, F_LLM].astype(np.float64) / 0.5, slate, 0.2)[:, -1]
    np.testing.assert_allclose(mine, lp, rtol=1e-9)


def test_monte_carlo_marginals_and_pinv_gram_match_enumeration() -> None:
    g = np.random.default_rng(6)
    logits = g.normal(size=(2, N))
    exact = [_exact_moments(row, EPS) for row in logits]
    marg = pl_marginals(logits, K, g, 4000, EPS)
    for i, (_, m, _) in enumerate(exact):
        np.testing.assert_allclose(marg[i], m, atol=0.01)
    pinv = pl_pinv_gram(logits, K, g, 4000, EPS)
    q = pl_marginals(np.zeros((2, N)), K, g, 10, 0.0).reshape(2, -1)  # a uniform target's marginals: exact
    for i, (_, _, gram) in enumerate(exact):
        np.testing.assert_allclose(pinv[i] @ q[i], np.linalg.pinv(gram, hermitian=True) @ q[i], rtol=0.05, atol=0.05)
    draws = pl_sample(logits, K, g, 2000, EPS)
    assert draws.shape == (2000, 2, K)
    assert (draws[..., 0] != draws[..., 1]).all()


def test_position_rewards() -> None:
    out = position_rewards(np.array([0.0, 2.5, 1.0]), np.array([-1, 1, 0]), 3)
    np.testing.assert_array_equal(out, [[0, 0, 0], [0, 2.5, 0], [1.0, 0, 0]])
    with pytest.raises(ValueError, match="reward but no click"):
        position_rewards(np.array([1.0]), np.array([-1]), 2)


def _small_inputs() -> tuple[SlateLog, TargetTerms, LoggingTerms]:
    n = 5
    slates = np.tile(SLATES[:1], (n, 1))
    r = np.ones((n, K))
    lp = np.full((n, K), -1.0)
    return SlateLog(slates, r, r, np.zeros((n, N)), 0.0, {}), TargetTerms(lp, None, None), LoggingTerms(lp, None, None)


def test_bad_inputs_raise_clear_errors() -> None:
    log, target, logging = _small_inputs()
    with pytest.raises(ValueError, match="rewards must be"):
        estimate_all(log, np.ones((4, K)), target, logging, ("ips",))
    with pytest.raises(ValueError, match="rewards contain NaN"):
        estimate_all(log, np.where(np.eye(5, K) > 0, np.nan, 1.0), target, logging, ("ips",))
    zero = LoggingTerms(np.where(np.eye(5, K) > 0, -np.inf, -1.0), None, None)
    with pytest.raises(ValueError, match="row 0 has logging propensity 0"):
        estimate_all(log, log.rewards, target, zero, ("ips",))
    with pytest.raises(ValueError, match="target prefix_logp contains NaN"):
        estimate_all(log, log.rewards, TargetTerms(np.full((5, K), np.nan), None, None), logging, ("ips",))
    with pytest.raises(ValueError, match="unknown estimator"):
        estimate_all(log, log.rewards, target, logging, ("dm",))
    with pytest.raises(ValueError, match="iips needs"):
        estimate_all(log, log.rewards, target, logging, ("iips",))
    with pytest.raises(ValueError, match="repeats a candidate"):
        SlateLog(np.array([[1, 1]]), np.zeros((1, K)), np.zeros((1, K)), np.zeros((1, N)), 0.0, {})
    with pytest.raises(ValueError, match="rewards must be"):
        SlateLog(np.array([[0, 1]]), np.zeros((1, 3)), np.zeros((1, K)), np.zeros((1, N)), 0.0, {})
    with pytest.raises(ValueError, match="logits contain NaN"):
        pl_prefix_log_prob(np.full((1, N), np.nan), np.array([[0, 1]]))
    with pytest.raises(ValueError, match="epsilon"):
        pl_prefix_log_prob(np.zeros((1, N)), np.array([[0, 1]]), 1.0)


def test_pi_weights_by_solve_match_the_pseudo_inverse() -> None:
    g = np.random.default_rng(7)
    logits = g.normal(size=(3, 6))
    slates = pl_sample(logits, 3, g, 1, EPS)[0]
    marg = [pl_marginals(1.5 * g.normal(size=(3, 6)), 3, g, 2000) for _ in range(2)]
    fast = pi_weights(logits, slates, marg, np.random.default_rng(8), 3000, EPS)
    pinv = pl_pinv_gram(logits, 3, np.random.default_rng(8), 3000, EPS)
    for m, wt in zip(marg, fast, strict=True):
        ref = np.array([pinv[i] @ m[i].ravel() for i in range(3)])
        np.testing.assert_allclose(wt, np.take_along_axis(ref, np.arange(3) * 6 + slates, axis=1).sum(axis=1),
                                   rtol=1e-6, atol=1e-8)


def test_pi_weight_of_the_logging_policy_is_one_with_the_control_variate() -> None:
    g = np.random.default_rng(9)
    logits = g.normal(size=(4, 6))
    slates = pl_sample(logits, 3, g, 1, EPS)[0]
    q = pl_marginals(logits, 3, g, 200, EPS)
    w = pi_weights(logits, slates, [q], g, 200, EPS, logging_marginals=q)[0]
    np.testing.assert_allclose(w, 1.0, atol=1e-9)


def test_logged_requests_round_trip_and_cli(small_world, small_cfg, tmp_path, capsys) -> None:
    import json

    from agents.ope import log_policy, logging_pl_policy, main, read_ope_log, write_ope_log

    frame, log = log_policy(small_world, small_cfg, logging_pl_policy(small_cfg), 300, seed=3)
    assert len(frame) == len(log) == 300
    # the frame's propensity is the logging policy's probability of the slate it shows
    lp = pl_prefix_log_prob(log.logging_logits, log.slates, log.logging_epsilon)[:, -1]
    np.testing.assert_allclose(frame["log_propensity"].to_numpy(), lp)
    np.testing.assert_allclose(log.rewards.sum(axis=1), frame["reward"].to_numpy(), rtol=1e-6)
    path = write_ope_log(frame, log, tmp_path / "log.parquet")
    _, back = read_ope_log(path)
    np.testing.assert_array_equal(back.slates, log.slates)
    np.testing.assert_allclose(back.obs["features"], log.obs["features"])
    assert main(["--logs", str(path), "--policy", "pl:0.5:0.2", "--samples", "64"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(out["pl:0.5:0.2"]["reward"]) == {"ips", "snips", "iips", "rips", "pi", "cascade-dr"}
    capsys.readouterr()
    assert main(["--logs", str(tmp_path / "missing.parquet"), "--policy", "run:nowhere"]) == 2
    assert "missing.parquet: no such file or folder" in capsys.readouterr().err  # the logs first, not the policy
    assert main(["--logs", str(path), "--policy", "greedy"]) == 2
    assert "unknown policy 'greedy'" in capsys.readouterr().err
    assert main(["--logs", str(path), "--policy", "run:somewhere"]) == 2  # a serving-log target on a rollout log
    assert "are for an A/B serving log folder" in capsys.readouterr().err
