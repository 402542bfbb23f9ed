"""Invariants of the Plackett-Luce slate distribution (agents/distributions.py)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch as th

from agents.distributions import PlackettLuceDistribution


def _all_slates(n: int, k: int) -> th.Tensor:
    """Every ranked slate of k distinct candidates out of n: (n!/(n-k)!, k)."""
    return th.tensor(list(itertools.permutations(range(n), k)), dtype=th.long)


def _exact_probs(logits: th.Tensor, k: int) -> tuple[th.Tensor, th.Tensor]:
    """Probabilities (S,) of all slates (S, k) for one row of logits (N,), by the PL formula in float64."""
    slates = _all_slates(logits.shape[0], k)
    dist = PlackettLuceDistribution(logits.shape[0], k).proba_distribution(
        logits.double().expand(slates.shape[0], -1)
    )
    return slates, dist.log_prob(slates).exp()


def _brute_force_probs(logits: list[float], k: int) -> dict[tuple[int, ...], float]:
    """The Plackett-Luce probability of every ranked slate, from the definition in plain Python floats (no torch,
    nothing of the class under test): each position picks among the candidates not yet placed ∝ exp(logit)."""
    w = [math.exp(x) for x in logits]
    out = {}
    for slate in itertools.permutations(range(len(w)), k):
        p, left = 1.0, sum(w)
        for c in slate:
            p *= w[c] / left
            left -= w[c]
        out[slate] = p
    return out


def _brute_force_path_entropy(probs: dict[tuple[int, ...], float], path: tuple[int, ...]) -> float:
    """Sum over positions k of the entropy of the k-th pick given the ``path``'s first k picks, each conditional
    read off the enumerated slate probabilities by marginalising."""
    total = 0.0
    for k in range(len(path)):
        prefix = path[:k]
        cond: dict[int, float] = {}
        for slate, p in probs.items():
            if slate[:k] == prefix:
                cond[slate[k]] = cond.get(slate[k], 0.0) + p
        z = sum(cond.values())
        total -= sum(q / z * math.log(q / z) for q in cond.values() if q > 0)
    return total


@pytest.mark.parametrize("k", [2, 3])
def test_probabilities_of_all_slates_sum_to_one(k: int) -> None:
    gen = th.Generator().manual_seed(k)
    for _ in range(5):
        logits = 2.0 * th.randn(4, generator=gen)
        _, probs = _exact_probs(logits, k)
        assert abs(float(probs.sum()) - 1.0) < 1e-5
        # float32 path agrees with float64
        slates = _all_slates(4, k)
        p32 = PlackettLuceDistribution(4, k).proba_distribution(logits.expand(slates.shape[0], -1)).log_prob(slates)
        assert abs(float(p32.exp().sum()) - 1.0) < 1e-5


def test_log_prob_matches_hand_computation() -> None:
    logits = th.tensor([[0.0, 1.0, 2.0, -1.0]])
    dist = PlackettLuceDistribution(4, 2).proba_distribution(logits)
    e = logits[0].exp()
    expected = (e[2] / e.sum()) * (e[0] / (e.sum() - e[2]))
    assert th.allclose(dist.log_prob(th.tensor([[2, 0]])).exp(), expected.reshape(1), atol=1e-6)


@pytest.mark.parametrize("k", [2, 3])
def test_sampled_frequencies_match_probabilities(k: int) -> None:
    th.manual_seed(1234)
    logits = th.tensor([1.0, 0.2, -0.5, 0.6])
    slates, probs = _exact_probs(logits, k)
    n_samples = 20_000
    dist = PlackettLuceDistribution(4, k).proba_distribution(logits.expand(n_samples, -1))
    samples = dist.sample()
    codes = (samples * th.tensor([16, 4, 1][-k:])).sum(dim=1)
    slate_codes = (slates * th.tensor([16, 4, 1][-k:])).sum(dim=1)
    freq = (codes.unsqueeze(1) == slate_codes.unsqueeze(0)).double().mean(dim=0)
    assert float(freq.sum()) == pytest.approx(1.0)  # no sample outside the slate set (no duplicates)
    # 4-sigma binomial bound per slate
    sigma = (probs * (1 - probs) / n_samples).sqrt()
    assert bool(((freq - probs).abs() <= 4 * sigma + 1e-4).all()), (freq, probs)
    chi2 = float(((freq - probs) ** 2 / probs).sum() * n_samples)
    dof = slates.shape[0] - 1
    assert chi2 < dof + 5 * (2 * dof) ** 0.5


def test_explicit_generator_makes_sampling_reproducible() -> None:
    logits = th.randn(64, 30)
    a = PlackettLuceDistribution(30, 5, generator=th.Generator().manual_seed(7)).proba_distribution(logits).sample()
    b = PlackettLuceDistribution(30, 5, generator=th.Generator().manual_seed(7)).proba_distribution(logits).sample()
    c = PlackettLuceDistribution(30, 5, generator=th.Generator().manual_seed(8)).proba_distribution(logits).sample()
    assert th.equal(a, b)
    assert not th.equal(a, c)


def test_mode_has_the_highest_log_prob() -> None:
    gen = th.Generator().manual_seed(3)
    for k in (2, 3):
        logits = th.randn(1, 4, generator=gen)
        slates = _all_slates(4, k)
        dist = PlackettLuceDistribution(4, k).proba_distribution(logits)
        mode = dist.mode()
        lp_mode = dist.log_prob(mode)
        all_lp = PlackettLuceDistribution(4, k).proba_distribution(logits.expand(slates.shape[0], -1)).log_prob(slates)
        is_mode = (slates == mode).all(dim=1)
        assert int(is_mode.sum()) == 1 and float(lp_mode) == pytest.approx(float(all_lp[is_mode]), abs=1e-6)
        assert bool((all_lp[~is_mode] < lp_mode).all())  # distinct logits: every other slate is strictly less likely
        assert th.equal(mode[0], th.argsort(logits[0], descending=True)[:k])


def test_samples_never_repeat_a_candidate() -> None:
    th.manual_seed(0)
    n, k, b = 200, 20, 2000
    # peaked logits make near-ties between a few candidates, the case a buggy sampler would duplicate
    logits = th.zeros(b, n)
    logits[:, :3] = 30.0
    dist = PlackettLuceDistribution(n, k).proba_distribution(logits)
    for _ in range(3):
        s = dist.sample()
        assert s.shape == (b, k) and s.dtype == th.long
        srt = s.sort(dim=1).values
        assert not bool((srt[:, 1:] == srt[:, :-1]).any())
        assert bool(((s >= 0) & (s < n)).all())


def test_masked_candidates_are_never_sampled() -> None:
    th.manual_seed(1)
    b, n, k = 4000, 12, 4
    logits = th.randn(b, n) * 3.0
    logits[:, :3] += 10.0  # the masked ones would be favourites
    mask = th.rand(b, n) > 0.4
    mask[:, 3 : 3 + k] = True  # at least K valid per row
    mask[:, :3] = False
    dist = PlackettLuceDistribution(n, k).proba_distribution(logits, mask)
    s = dist.sample()
    assert bool(mask.gather(1, s).all())
    assert bool(mask.gather(1, dist.mode()).all())
    # masked picks have zero probability; valid ones a finite log-prob
    assert bool(th.isfinite(dist.log_prob(s)).all())
    bad = s.clone()
    bad[:, 0] = 0
    assert bool(th.isneginf(dist.log_prob(bad)).all())


def test_mask_with_too_few_valid_candidates_is_rejected() -> None:
    mask = th.ones(3, 5, dtype=th.bool)
    mask[1, :3] = False
    with pytest.raises(ValueError, match="row 1"):
        PlackettLuceDistribution(5, 3).proba_distribution(th.zeros(3, 5), mask)


def test_float32_actions_accepted() -> None:
    logits = th.randn(8, 6)
    dist = PlackettLuceDistribution(6, 3).proba_distribution(logits)
    a = dist.sample()
    assert th.allclose(dist.log_prob(a.float()), dist.log_prob(a))


def test_repeated_candidate_has_zero_probability() -> None:
    dist = PlackettLuceDistribution(5, 2).proba_distribution(th.zeros(1, 5))
    assert bool(th.isneginf(dist.log_prob(th.tensor([[1, 1]]))).all())


def test_entropy_estimate_is_unbiased_and_differentiable() -> None:
    th.manual_seed(5)
    logits = th.randn(1, 4) * 1.5
    for k in (2, 3):
        brute = _brute_force_probs(logits[0].tolist(), k)
        exact = -sum(p * math.log(p) for p in brute.values())
        n = 20_000
        big = logits.expand(n, -1).clone().requires_grad_(True)
        dist = PlackettLuceDistribution(4, k).proba_distribution(big)
        h = dist.entropy()
        assert h.shape == (n,)
        assert abs(float(h.detach().mean()) - exact) < 0.02
        h.mean().backward()
        assert big.grad is not None and bool(th.isfinite(big.grad).all())
        # the "mode" estimator is the path entropy along the top-K slate, the same on every call (no draws)
        # (64 copies of the row: an estimator that drew a path would give other values on some of them)
        d2 = PlackettLuceDistribution(4, k, entropy_estimator="mode").proba_distribution(logits.expand(64, -1))
        top = tuple(th.argsort(logits[0], descending=True)[:k].tolist())
        want = _brute_force_path_entropy(brute, top)
        assert abs(want - exact) > 0.05  # the mode's path entropy is not the slate entropy: the check can fail
        for _ in range(2):
            assert th.allclose(d2.entropy().double(), th.full((64,), want, dtype=th.float64), atol=1e-5)


def test_entropy_with_mask_has_finite_gradients() -> None:
    logits = th.randn(16, 10, requires_grad=True)
    mask = th.ones(16, 10, dtype=th.bool)
    mask[:, :4] = False
    dist = PlackettLuceDistribution(10, 3).proba_distribution(logits, mask)
    (dist.entropy().sum() + dist.log_prob(dist.sample()).sum()).backward()
    assert logits.grad is not None and bool(th.isfinite(logits.grad).all())
    assert bool((logits.grad[:, :4] == 0).all())


def test_params_helpers() -> None:
    logits = th.randn(5, 7)
    dist = PlackettLuceDistribution(7, 3)
    actions, lp = dist.log_prob_from_params(logits)
    assert actions.shape == (5, 3) and lp.shape == (5,)
    assert th.allclose(lp, dist.proba_distribution(logits).log_prob(actions))
    det = dist.actions_from_params(logits, deterministic=True)
    assert th.equal(det, th.topk(logits, 3, dim=1).indices)
    assert dist.proba_distribution_net(11)(th.zeros(2, 11)).shape == (2, 7)


def _repulsive(logits: th.Tensor, groups: th.Tensor, beta: float, k: int) -> PlackettLuceDistribution:
    b, n = logits.shape
    return PlackettLuceDistribution(n, k).proba_distribution(logits, groups=groups.expand(b, n),
                                                             repulsion=th.full((b,), beta))


def test_repulsion_probabilities_sum_to_one_and_match_hand_computation() -> None:
    th.manual_seed(3)
    logits = th.randn(1, 4)
    groups = th.tensor([[0, 0, 1, 1]])
    slates = _all_slates(4, 3)
    dist = _repulsive(logits.expand(len(slates), 4), groups, 0.7, 3)
    lp = dist.log_prob(slates)
    assert abs(float(lp.exp().sum()) - 1.0) < 1e-5
    # hand: (0, 1, 2): s0 - lse(s), then s1 - 0.7 - lse(s1 - 0.7, s2, s3), then s2 - lse(s2, s3)
    s = logits[0]
    second = th.stack([s[1] - 0.7, s[2], s[3]])
    hand = (s[0] - th.logsumexp(s, 0)) + (s[1] - 0.7 - th.logsumexp(second, 0)) + (s[2] - th.logsumexp(s[2:], 0))
    idx = next(i for i, sl in enumerate(slates.tolist()) if sl == [0, 1, 2])
    assert abs(float(lp[idx]) - float(hand)) < 1e-5


def test_repulsion_sampling_matches_probabilities_and_lowers_repeats() -> None:
    th.manual_seed(5)
    logits = th.tensor([[1.0, 0.9, 0.2, 0.1]])
    groups = th.tensor([[0, 0, 1, 1]])
    slates = _all_slates(4, 2)
    exact = _repulsive(logits.expand(len(slates), 4), groups, 1.5, 2).log_prob(slates).exp()
    draws = _repulsive(logits.expand(20000, 4), groups, 1.5, 2).sample()
    codes = draws[:, 0] * 4 + draws[:, 1]
    freq = th.bincount(codes, minlength=16).float() / len(draws)
    assert float((freq[slates[:, 0] * 4 + slates[:, 1]] - exact).abs().max()) < 0.015
    plain = PlackettLuceDistribution(4, 2).proba_distribution(logits.expand(20000, 4)).sample()
    same = lambda d: float((groups[0][d[:, 0]] == groups[0][d[:, 1]]).float().mean())  # noqa: E731
    assert same(draws) < same(plain) - 0.1


def test_repulsion_mode_is_sequential_greedy_and_zero_beta_is_plain() -> None:
    logits = th.tensor([[3.0, 2.9, 2.0, 0.0]])
    groups = th.tensor([[0, 0, 1, 1]])
    assert _repulsive(logits, groups, 2.0, 2).mode().tolist() == [[0, 2]]
    assert _repulsive(logits, groups, 0.0, 2).mode().tolist() == [[0, 1]]
    th.manual_seed(0)
    a = th.randn(6, 5)
    g = th.randint(0, 3, (6, 5))
    acts = PlackettLuceDistribution(5, 3).proba_distribution(a).sample()
    plain = PlackettLuceDistribution(5, 3).proba_distribution(a).log_prob(acts)
    zero = PlackettLuceDistribution(5, 3).proba_distribution(a, groups=g, repulsion=th.zeros(6)).log_prob(acts)
    assert th.allclose(plain, zero, atol=1e-6)


def _reference_path(logits: th.Tensor, groups: th.Tensor, beta: th.Tensor,
                    path: th.Tensor, cap: int | None = None) -> tuple[th.Tensor, th.Tensor]:
    """The definition, step by step over the N candidates: log-probability (B,) and path entropy (B,) of
    ``path`` (B, K) under repulsive Plackett-Luce (masked candidates at -inf in ``logits``), with the soft cap's
    30 nats on groups that already have ``cap`` picks."""
    b, n = logits.shape
    placed = th.zeros(b, n, dtype=th.bool)
    counts = th.zeros(b, int(groups.max()) + 1, dtype=logits.dtype)
    log_prob = th.zeros(b, dtype=logits.dtype)
    entropy = th.zeros(b, dtype=logits.dtype)
    for k in range(path.shape[1]):
        c = counts.gather(1, groups)
        pen = beta.unsqueeze(1) * c + (30.0 * (c >= cap) if cap is not None else 0.0)
        eff = (logits - pen).masked_fill(placed, float("-inf"))
        logp = th.log_softmax(eff, dim=1)
        log_prob = log_prob + logp.gather(1, path[:, k : k + 1]).squeeze(1)
        entropy = entropy - (logp.exp() * logp.masked_fill(th.isinf(logp), 0.0)).sum(dim=1)
        placed = placed.scatter(1, path[:, k : k + 1], True)
        counts = counts.scatter_add(1, groups.gather(1, path[:, k : k + 1]), th.ones(b, 1, dtype=logits.dtype))
    return log_prob, entropy


@pytest.mark.parametrize(("scale", "cap"), [(0.5, None), (3.0, None), (8.0, None), (1.0, 1), (3.0, 2)])
def test_log_prob_entropy_and_gradients_match_the_stepwise_definition(scale: float, cap: int | None) -> None:
    gen = th.Generator().manual_seed(11)
    b, n, k = 64, 20, 6
    base = th.randn(b, n, generator=gen) * scale
    mask = th.rand(b, n, generator=gen) > 0.2
    mask[:, :k] = True
    groups = th.randint(0, 4, (b, n), generator=gen)
    beta0 = th.rand(b, generator=gen) * 2.0
    logits = base.clone().requires_grad_(True)
    beta = beta0.clone().requires_grad_(True)
    dist = PlackettLuceDistribution(n, k, generator=gen, category_cap=cap).proba_distribution(logits, mask, groups,
                                                                                               beta)
    path = dist.sample()
    lp, ent = dist.log_prob(path), dist._path_entropy(path)
    (lp.sum() + 0.3 * ent.sum()).backward()
    ref_logits = base.double().masked_fill(~mask, float("-inf")).requires_grad_(True)
    ref_beta = beta0.double().requires_grad_(True)
    ref_lp, ref_ent = _reference_path(ref_logits, groups, ref_beta, path, cap)
    (ref_lp.sum() + 0.3 * ref_ent.sum()).backward()
    assert th.allclose(lp.double(), ref_lp, atol=1e-4)
    assert th.allclose(ent.double(), ref_ent, atol=1e-4)
    assert logits.grad is not None and beta.grad is not None and ref_logits.grad is not None
    assert th.allclose(logits.grad.double(), ref_logits.grad.nan_to_num(0.0), atol=1e-4)
    assert th.allclose(beta.grad.double(), ref_beta.grad, atol=1e-4)
    # the rollout's one-pass sample + log-probability agrees with log_prob
    with th.no_grad():
        acts, lp2 = dist.sample_with_log_prob()
        assert th.allclose(lp2, dist.log_prob(acts), atol=1e-5)
        assert bool(mask.gather(1, acts).all())
        assert all(len(set(row)) == k for row in acts.tolist())


def _assert_frequencies_match(draws: th.Tensor, slates: th.Tensor, probs: th.Tensor, n: int) -> None:
    """Sampled 3-slates' frequencies (draws (D, 3) out of n candidates) equal the exact probabilities ``probs`` of
    ``slates`` (S, 3) within 4.5 binomial standard deviations (+1e-4) for every slate."""
    n_draws = draws.shape[0]
    codes = draws[:, 0] * n * n + draws[:, 1] * n + draws[:, 2]
    freq = th.bincount(codes, minlength=n ** 3).double() / n_draws
    expected = th.zeros(n ** 3, dtype=th.float64)
    expected[slates[:, 0] * n * n + slates[:, 1] * n + slates[:, 2]] = probs.double()
    sigma = (expected * (1 - expected) / n_draws).sqrt()
    assert bool(((freq - expected).abs() <= 4.5 * sigma + 1e-4).all())


@pytest.mark.parametrize("sampler", ["compiled", "torch"])
def test_repulsive_sampling_with_mask_matches_probabilities(sampler: str) -> None:
    th.manual_seed(9)
    logits = th.tensor([[0.8, 0.7, 0.1, -0.3, 0.5, 2.0]])
    mask = th.tensor([[True, True, True, True, True, False]])
    groups = th.tensor([[0, 0, 1, 1, 2, 2]])
    slates = _all_slates(6, 3)
    n_draws = 40_000
    exact = _repulsive(logits.expand(len(slates), 6), groups, 0.9, 3)
    exact = exact.proba_distribution(exact.logits, mask.expand(len(slates), 6), groups.expand(len(slates), 6),
                                     th.full((len(slates),), 0.9))
    probs = exact.log_prob(slates).exp()
    assert abs(float(probs.sum()) - 1.0) < 1e-5
    dist = PlackettLuceDistribution(6, 3).proba_distribution(
        logits.expand(n_draws, 6), mask.expand(n_draws, 6), groups.expand(n_draws, 6), th.full((n_draws,), 0.9))
    draws, log_prob = dist._sample_groups_cpu(True) if sampler == "compiled" else dist._sample_groups_torch(True)
    assert log_prob is not None and th.allclose(log_prob, dist.log_prob(draws), atol=1e-5)
    _assert_frequencies_match(draws, slates, probs, n=6)


@pytest.mark.parametrize(("repulsion", "scale", "cap"),
                         [(True, 1.0, None), (True, 6.0, None), (False, 2.0, None), (True, 1.0, 1), (True, 4.0, 2)])
def test_compiled_path_terms_match_the_torch_ops_with_gradients(repulsion: bool, scale: float,
                                                                 cap: int | None) -> None:
    """On CPU the per-group path arithmetic runs in compiled kernels; values and gradients (logits and β) must be
    the torch ops', for sampled paths, invalid ones (a repeated or masked pick) and masked candidates."""
    gen = th.Generator().manual_seed(5)
    b, n, k = 48, 16, 5
    base = th.randn(b, n, generator=gen, dtype=th.float64) * scale
    mask = th.rand(b, n, generator=gen) > 0.25
    mask[:, :k] = True
    groups = th.randint(0, 4, (b, n), generator=gen) if repulsion else None
    beta0 = th.rand(b, generator=gen, dtype=th.float64) * 2.0 if repulsion else None
    path = PlackettLuceDistribution(n, k, generator=gen).proba_distribution(base, mask, groups, beta0).sample()
    path[0, 1] = path[0, 0]  # a repeat
    path[1, 2] = int((~mask[1]).nonzero()[0, 0]) if bool((~mask[1]).any()) else path[1, 2]  # a masked pick
    weights = th.randn(b, generator=gen, dtype=th.float64)
    results = []
    for compiled in (True, False):
        logits = base.clone().requires_grad_(True)
        beta = beta0.clone().requires_grad_(True) if beta0 is not None else None
        dist = PlackettLuceDistribution(n, k, category_cap=cap).proba_distribution(logits, mask, groups, beta)
        dist.use_compiled = compiled
        lp, ent = dist.log_prob(path), dist._path_entropy(path)
        finite = th.isfinite(lp)
        ((lp.masked_fill(~finite, 0.0) * weights).sum() + (0.7 * ent * weights.flip(0)).sum()).backward()
        results.append((lp, ent, logits.grad, None if beta is None else beta.grad))
    (lp_c, ent_c, gl_c, gb_c), (lp_t, ent_t, gl_t, gb_t) = results
    assert bool(th.isneginf(lp_c[0])) and bool(th.isneginf(lp_t[0]))
    assert th.equal(th.isfinite(lp_c), th.isfinite(lp_t))
    fin = th.isfinite(lp_t)
    assert th.allclose(lp_c[fin], lp_t[fin], rtol=1e-10, atol=1e-10)
    assert th.allclose(ent_c, ent_t, rtol=1e-10, atol=1e-10)
    assert gl_c is not None and gl_t is not None
    assert th.allclose(gl_c, gl_t, rtol=1e-4, atol=1e-8)  # float64 rounding, amplified by cancellation
    if repulsion:
        assert gb_c is not None and gb_t is not None
        assert th.allclose(gb_c, gb_t, rtol=1e-4, atol=1e-8)


def test_compiled_path_terms_gradcheck() -> None:
    from agents.distributions import _PathTermsCPU

    gen = th.Generator().manual_seed(3)
    b, n, k, n_g = 4, 7, 4, 3
    logits = (th.randn(b, n, generator=gen, dtype=th.float64) * 2.0).requires_grad_(True)
    beta = th.rand(b, generator=gen, dtype=th.float64).requires_grad_(True)
    groups = th.randint(0, n_g, (b, n), generator=gen)
    path = th.stack([th.randperm(n, generator=gen)[:k] for _ in range(b)])
    for entropy in (True, False):
        def f(s: th.Tensor, bt: th.Tensor, entropy: bool = entropy) -> tuple[th.Tensor, th.Tensor]:
            log_p, ent, _ = _PathTermsCPU.apply(s, bt, groups, path, n_g, entropy)
            return log_p, ent
        assert th.autograd.gradcheck(f, (logits, beta))

        def f_cap(s: th.Tensor, bt: th.Tensor, entropy: bool = entropy) -> tuple[th.Tensor, th.Tensor]:
            log_p, ent, _ = _PathTermsCPU.apply(s, bt, groups, path, n_g, entropy, 1, 30.0)
            return log_p, ent
        assert th.autograd.gradcheck(f_cap, (logits, beta))
    with pytest.raises(IndexError):
        _PathTermsCPU.apply(logits, beta, groups, path + n, n_g, False)


@pytest.mark.parametrize("sampler", ["compiled", "torch"])
def test_soft_category_cap_sampling_matches_probabilities_and_caps_the_mode(sampler: str) -> None:
    """With ``category_cap`` a group that has filled its cap is 30 nats down: sampled frequencies follow the exact
    probabilities (which sum to one), almost no slate exceeds the cap while an open group is left, and the mode is
    the capped greedy walk (the diversity heuristic's rule), falling back to a full group only when nothing else is
    left."""
    th.manual_seed(4)
    logits = th.tensor([[2.0, 1.9, 1.8, 0.1, -0.2, 0.3]])
    groups = th.tensor([[0, 0, 0, 1, 1, 2]])
    slates = _all_slates(6, 3)
    n_draws = 40_000

    def dist_for(b: int) -> PlackettLuceDistribution:
        return PlackettLuceDistribution(6, 3, category_cap=1).proba_distribution(
            logits.expand(b, 6), groups=groups.expand(b, 6), repulsion=th.full((b,), 0.2))

    probs = dist_for(len(slates)).log_prob(slates).exp()
    assert abs(float(probs.sum()) - 1.0) < 1e-6
    dist = dist_for(n_draws)
    draws, log_prob = dist._sample_groups_cpu(True) if sampler == "compiled" else dist._sample_groups_torch(True)
    assert log_prob is not None and th.allclose(log_prob, dist.log_prob(draws), atol=1e-5)
    _assert_frequencies_match(draws, slates, probs, n=6)
    g = groups[0][draws]
    distinct = (g[:, 0] != g[:, 1]) & (g[:, 0] != g[:, 2]) & (g[:, 1] != g[:, 2])
    assert float(distinct.float().mean()) > 0.999  # three groups, cap 1: one of each
    assert dist_for(1).mode().tolist() == [[0, 5, 3]]  # best of group 0, then group 2 (0.3), then group 1
    uncapped = PlackettLuceDistribution(6, 3).proba_distribution(logits, groups=groups, repulsion=th.full((1,), 0.2))
    assert uncapped.mode().tolist() == [[0, 1, 2]]
    # two groups, cap 1, K = 3: the third pick has to come from a full group, and it is the best one left
    two = PlackettLuceDistribution(4, 3, category_cap=1).proba_distribution(
        th.tensor([[1.0, 0.5, 0.2, -1.0]]), groups=th.tensor([[0, 0, 1, 1]]), repulsion=th.zeros(1))
    assert two.mode().tolist() == [[0, 2, 1]]
    assert th.isfinite(two.log_prob(two.mode())).all()


def test_category_cap_is_validated() -> None:
    with pytest.raises(ValueError, match="category_cap"):
        PlackettLuceDistribution(5, 2, category_cap=0)


def test_nan_logits_are_a_clear_error_not_an_out_of_range_slate() -> None:
    logits = th.zeros(3, 5)
    logits[1, 2] = float("nan")
    with pytest.raises(ValueError, match=r"NaN \(row 1\)"):
        PlackettLuceDistribution(5, 2).proba_distribution(logits)


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "torch-ops"])
def test_a_known_group_count_gives_what_reading_it_gives(compiled: bool) -> None:
    """``n_groups`` (a bound the caller knows, here larger than the groups in the batch: empty groups add exact zeros)
    spares the read of the device and changes no value: log-probabilities, entropies, their gradients, samples."""
    th.manual_seed(5)
    b, n, k = 64, 9, 3
    logits0 = th.randn(b, n) * 2
    groups = th.randint(0, 4, (b, n))
    beta = th.rand(b) * 2
    slates = th.argsort(th.rand(b, n), dim=1)[:, :k]
    out = []
    for n_groups in (None, 7):
        logits = logits0.clone().requires_grad_(True)
        dist = PlackettLuceDistribution(n, k, entropy_estimator="action", category_cap=2)
        dist.use_compiled = compiled
        dist.proba_distribution(logits, groups=groups, repulsion=beta, n_groups=n_groups)
        assert dist._n_groups() == (int(groups.max()) + 1 if n_groups is None else n_groups)
        log_p, ent = dist.log_prob_and_entropy(slates)
        (log_p.sum() + ent.sum()).backward()
        dist.set_generator(th.Generator().manual_seed(3))
        out.append((log_p.detach(), ent.detach(), logits.grad, dist.sample()))
    for x, y in zip(out[0][:3], out[1][:3], strict=True):  # equal up to the order of a float64 sum's terms
        assert th.allclose(x.double(), y.double(), rtol=1e-6, atol=1e-6)
    assert th.equal(out[0][3], out[1][3])
    with pytest.raises(ValueError, match="n_groups must be >= 1"):
        PlackettLuceDistribution(n, k).proba_distribution(logits0, groups=groups, repulsion=beta, n_groups=0)


def test_validate_false_skips_only_the_value_checks() -> None:
    """``validate=False`` (PPO's update on an accelerator, whose observations were checked when collected) leaves out
    the checks that read the device; the shapes are still checked."""
    logits = th.zeros(2, 5)
    logits[1, 2] = float("nan")
    mask = th.ones(2, 5, dtype=th.bool)
    mask[0, 1:] = False  # one valid candidate, K = 2
    dist = PlackettLuceDistribution(5, 2)
    with pytest.raises(ValueError, match="NaN"):
        dist.proba_distribution(logits, mask)
    with pytest.raises(ValueError, match="fewer than slate_size"):
        dist.proba_distribution(logits.nan_to_num(0.0), mask)
    assert dist.proba_distribution(logits, mask, validate=False).logits is not None
    with pytest.raises(ValueError, match="logits must have shape"):
        dist.proba_distribution(th.zeros(2, 4), validate=False)


@pytest.mark.parametrize("repulsion", [False, True])
def test_action_entropy_is_the_scored_slates_path_entropy_from_one_pass(repulsion: bool) -> None:
    """``"action"`` scores the given slates once: their log-probabilities as :meth:`log_prob` gives them, and their path
    entropies (values and gradients) as the other estimators compute them along a path; over slates drawn from the
    distribution that is an unbiased estimate of the slate entropy."""
    th.manual_seed(11)
    b, n, k = 20_000, 4, 2
    row = th.randn(1, n) * 1.5
    kwargs = {}
    if repulsion:
        kwargs = {"groups": th.tensor([[0, 0, 1, 1]]).expand(b, -1), "repulsion": th.full((b,), 0.7)}
    big = row.expand(b, -1).clone().requires_grad_(True)
    dist = PlackettLuceDistribution(n, k, entropy_estimator="action").proba_distribution(big, None, **kwargs)
    slates = dist.sample()
    lp, ent = dist.log_prob_and_entropy(slates)
    ref = PlackettLuceDistribution(n, k).proba_distribution(big, None, **kwargs)
    lp_ref, ent_ref = ref.log_prob(slates), ref._path_entropy(slates)
    assert th.allclose(lp, lp_ref) and th.allclose(ent, ent_ref)
    (g,) = th.autograd.grad((lp + ent).sum(), big)
    (g_ref,) = th.autograd.grad((lp_ref + ent_ref).sum(), big)
    assert th.allclose(g, g_ref, atol=1e-6)
    if not repulsion:  # the brute force knows no repulsion
        exact = -sum(p * math.log(p) for p in _brute_force_probs(row[0].tolist(), k).values())
        assert abs(float(ent.detach().mean()) - exact) < 0.02
    # the other estimators do not read the slates for the entropy: "mode" gives one value on every row
    mode = PlackettLuceDistribution(n, k, entropy_estimator="mode").proba_distribution(big, None, **kwargs)
    _, ent_mode = mode.log_prob_and_entropy(slates)
    assert float(ent_mode.detach().std()) < 1e-5 and float(ent.detach().std()) > 0.05
