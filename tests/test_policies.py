"""The SB3 slate policy (agents/policies.py): consistency, equivariance, initial blend, save/load, learning.

Independent of the simulator: fake observations from ``envs.spaces.observation_space`` and a tiny probe env
defined here (one-step contextual bandit whose optimum only the residual can find).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import DummyVecEnv

from agents.policies import SlatePolicy
from agents.policy_ops import candidate_spread, standardise_rows
from envs.spaces import F_CAT_CLICKS, F_CF, F_ITEM_SEEN, F_LLM, FEATURE_NAMES, action_space, observation_space

N_ITEMS, N_CAND, DIM, K = 50, 8, 16, 3


def _lr(_: float) -> float:
    return 3e-4


def _fake_obs(
    space: gym.spaces.Dict, batch: int, seed: int = 0
) -> dict[str, np.ndarray]:
    """A batch (B, …) of observations from ``space`` with plausible feature values."""
    space.seed(seed)
    obs = {k: np.stack([space[k].sample() for _ in range(batch)]) for k in space.spaces}
    rng = np.random.default_rng(seed)
    n = space["features"].shape[0]
    feats = rng.uniform(0.0, 1.0, (batch, n, len(FEATURE_NAMES))).astype(np.float32)
    feats[..., F_LLM] = rng.uniform(-1.0, 1.0, (batch, n))
    feats[..., F_CF] = rng.normal(0.0, 1.0, (batch, n))
    feats[..., F_ITEM_SEEN] = rng.integers(0, 3, (batch, n))
    obs["features"] = feats
    user = rng.normal(size=obs["user"].shape)
    obs["user"] = (user / np.linalg.norm(user, axis=-1, keepdims=True)).astype(np.float32)
    obs["context"] = rng.uniform(0.0, 1.0, obs["context"].shape).astype(np.float32)
    if "item_emb" in obs:
        emb = rng.normal(size=obs["item_emb"].shape)
        obs["item_emb"] = (emb / np.linalg.norm(emb, axis=-1, keepdims=True)).astype(np.float32)
    if "mask" in obs:
        obs["mask"] = np.ones_like(obs["mask"])
    if "session_sim" in obs:
        obs["session_sim"] = rng.uniform(-1.0, 1.0, obs["session_sim"].shape).astype(np.float32)
    return obs


def _policy(space: gym.spaces.Dict | None = None, k: int = K, **kwargs: Any) -> SlatePolicy:
    space = space or observation_space(N_ITEMS, N_CAND, DIM)
    return SlatePolicy(space, action_space(space["features"].shape[0], k), _lr, **kwargs)


def _tensor(policy: SlatePolicy, obs: dict[str, np.ndarray]) -> dict[str, th.Tensor]:
    t, _ = policy.obs_to_tensor(obs)
    assert isinstance(t, dict)
    return t


# ---------------------------------------------------------------------------------------------- probe env


class GoodItemProbeEnv(gym.Env):
    """One-step contextual bandit over the recfeed observation layout.

    Each candidate is "good" with probability 1/2, and good exactly when its ``cat_clicks`` feature is > 0;
    the reward is the number of distinct good candidates in the slate. The LLM / CF columns are noise, so
    the fixed-α blend is no better than random (expected reward K/2 = 1); the optimum picks good ones
    (expected ``E[min(K, #good)]`` = 1.875 for N = 6, K = 2). Only the residual can learn it.
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self, n_candidates: int = 6, slate_size: int = 2, n_items: int = 50, dim: int = 16) -> None:
        self.n, self.k = n_candidates, slate_size
        self.observation_space = observation_space(n_items, n_candidates, dim)
        self.action_space = action_space(n_candidates, slate_size)
        self._n_items, self._dim = n_items, dim
        self._good = np.zeros(n_candidates, dtype=bool)

    def _obs(self) -> dict[str, np.ndarray]:
        rng = self.np_random
        n = self.n
        good = rng.random(n) < 0.5
        feats = rng.uniform(0.0, 1.0, (n, len(FEATURE_NAMES))).astype(np.float32)
        feats[:, F_LLM] = rng.uniform(-1.0, 1.0, n)
        feats[:, F_CF] = rng.normal(0.0, 1.0, n)
        feats[:, F_CAT_CLICKS] = np.where(good, rng.uniform(0.2, 1.0, n), 0.0)
        feats[:, F_ITEM_SEEN] = rng.integers(0, 3, n)
        user = rng.normal(size=self._dim)
        self._good = good
        return {
            "user": (user / np.linalg.norm(user)).astype(np.float32),
            "candidates": rng.choice(self._n_items, n, replace=False).astype(np.int64),
            "features": feats,
            "context": rng.uniform(0.0, 1.0, len(self.observation_space["context"].low)).astype(np.float32),
        }

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[dict, dict]:
        super().reset(seed=seed)
        return self._obs(), {}

    def step(self, action: np.ndarray) -> tuple[dict, float, bool, bool, dict]:
        picked = np.unique(np.asarray(action, dtype=np.int64))
        reward = float(self._good[picked].sum())
        return self._obs(), reward, True, False, {}


def _probe_vec_env(n_envs: int, seed: int) -> DummyVecEnv:
    env = DummyVecEnv([GoodItemProbeEnv for _ in range(n_envs)])
    env.seed(seed)
    return env


def _probe_eval(policy: SlatePolicy, n: int = 2000, seed: int = 99) -> float:
    """Mean reward of the policy's mode on n fresh probe observations."""
    env = GoodItemProbeEnv()
    env.reset(seed=seed)
    obs_list, good = [], []
    for _ in range(n):
        obs_list.append(env._obs())
        good.append(env._good.copy())
    obs = {key: np.stack([o[key] for o in obs_list]) for key in obs_list[0]}
    actions, _ = policy.predict(obs, deterministic=True)
    return float(np.take_along_axis(np.stack(good), actions, axis=1).sum(axis=1).mean())


# ---------------------------------------------------------------------------------------------- tests


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """Small nets on a shared 2-core machine: one intra-op thread is ~10x faster than two under load."""
    before = th.get_num_threads()
    th.set_num_threads(1)
    yield
    th.set_num_threads(before)


def test_probe_env_passes_check_env() -> None:
    from stable_baselines3.common.env_checker import check_env

    check_env(GoodItemProbeEnv(), warn=False)


def test_forward_shapes_and_valid_slates() -> None:
    policy = _policy()
    obs = _tensor(policy, _fake_obs(policy.observation_space, 32))
    actions, values, log_prob = policy(obs)
    assert actions.shape == (32, K) and actions.dtype == th.long
    assert values.shape == (32, 1) and log_prob.shape == (32,)
    srt = actions.sort(dim=1).values
    assert not bool((srt[:, 1:] == srt[:, :-1]).any())
    det, _, _ = policy(obs, deterministic=True)
    assert th.equal(det, policy.get_distribution(obs).mode())
    assert th.allclose(values, policy.predict_values(obs))
    alpha = policy.alpha(obs)
    assert alpha.shape == (32,) and bool(((alpha >= 0) & (alpha <= 1)).all())


@pytest.mark.parametrize("share_state_net", [False, True])
def test_evaluate_actions_agrees_with_get_distribution(share_state_net: bool) -> None:
    th.manual_seed(0)
    policy = _policy(share_state_net=share_state_net, residual_init_scale=1.0)
    obs = _tensor(policy, _fake_obs(policy.observation_space, 64, seed=1))
    actions = policy.get_distribution(obs).sample().float()  # the rollout buffer hands back float32
    values, log_prob, entropy = policy.evaluate_actions(obs, actions)
    expected = policy.get_distribution(obs).log_prob(actions)
    assert th.allclose(log_prob, expected, atol=1e-6)
    assert th.allclose(values, policy.predict_values(obs), atol=1e-6)
    assert entropy is not None and entropy.shape == (64,) and bool((entropy > 0).all())
    # PPO's loss backpropagates through all three
    (log_prob.mean() + values.mean() + entropy.mean()).backward()
    assert all(p.grad is not None for p in policy.residual_net.parameters())


@pytest.mark.parametrize("extras", [{}, {"item_emb": True}, {"use_item_table": True}, {"session_sim": True},
                                    {"pool_spread": True, "use_item_table": True}])
def test_policy_is_permutation_equivariant(extras: dict[str, bool]) -> None:
    th.manual_seed(0)
    space = observation_space(N_ITEMS, N_CAND, DIM, with_item_embeddings=bool(extras.get("item_emb")),
                              with_session_sim=bool(extras.get("session_sim")))
    policy = _policy(space, residual_init_scale=1.0, use_item_table=bool(extras.get("use_item_table")),
                     pool_spread=bool(extras.get("pool_spread")))
    if policy.session_weight is not None:
        with th.no_grad():
            policy.session_weight.fill_(0.7)
    obs = _fake_obs(space, 16, seed=2)
    perm = np.random.default_rng(3).permutation(N_CAND)
    permuted = dict(obs)
    for key in ("candidates", "features", "item_emb", "session_sim"):
        if key in obs:
            permuted[key] = obs[key][:, perm]
    with th.no_grad():
        logits = policy.candidate_logits(obs)
        logits_p = policy.candidate_logits(permuted)
        assert th.allclose(logits_p, logits[:, perm], atol=1e-5)
        assert th.allclose(policy.alpha(obs), policy.alpha(permuted), atol=1e-6)
        values = policy.predict_values(_tensor(policy, obs))
        assert th.allclose(values, policy.predict_values(_tensor(policy, permuted)), atol=1e-6)


@pytest.mark.parametrize("init_alpha", [0.5, 0.3, 0.8])
def test_initial_mode_is_the_fixed_alpha_greedy_slate(init_alpha: float) -> None:
    th.manual_seed(0)
    policy = _policy(init_alpha=init_alpha)  # default residual_init_scale (0.01) and temperature
    b = 256
    obs = _fake_obs(policy.observation_space, b, seed=4)
    # give each row a blend whose values are 0.2 apart, so "equal to the greedy top-K" is a sharp check
    rng = np.random.default_rng(5)
    target = np.stack([rng.permutation(np.linspace(-0.7, 0.7, N_CAND)) for _ in range(b)])
    llm = obs["features"][..., F_LLM]
    obs["features"][..., F_CF] = (target - init_alpha * llm) / (1.0 - init_alpha)
    blend = init_alpha * obs["features"][..., F_LLM] + (1 - init_alpha) * obs["features"][..., F_CF]
    greedy = np.argsort(-blend, axis=1)[:, :K]
    with th.no_grad():
        alpha = policy.alpha(obs)
        assert th.allclose(alpha, th.full_like(alpha, init_alpha), atol=1e-6)
        actions, _ = policy.predict(obs, deterministic=True)
        np.testing.assert_array_equal(actions, greedy)
        residual = policy.candidate_logits(obs).numpy() - blend / policy.temperature
        assert np.abs(residual).max() < 0.2


def test_explicit_generator_makes_stochastic_slates_reproducible() -> None:
    policy = _policy()
    obs = _fake_obs(policy.observation_space, 64, seed=9)
    draws = []
    for seed in (1, 1, 2):
        policy.set_generator(th.Generator(device=policy.device).manual_seed(seed))
        draws.append(policy.predict(obs, deterministic=False)[0])
    policy.set_generator(None)
    np.testing.assert_array_equal(draws[0], draws[1])
    assert not np.array_equal(draws[0], draws[2])


def test_mask_key_is_honoured() -> None:
    space = observation_space(N_ITEMS, N_CAND, DIM)
    space = gym.spaces.Dict({**space.spaces, "mask": gym.spaces.MultiBinary(N_CAND)})
    policy = _policy(space)
    obs = _fake_obs(space, 500, seed=6)
    obs["mask"][:, :3] = 0
    obs["features"][:, :3, F_LLM] = 5.0  # masked candidates would be the favourites
    obs["features"][:, :3, F_CF] = 5.0
    for deterministic in (True, False):
        actions, _ = policy.predict(obs, deterministic=deterministic)
        assert actions.min() >= 3


def test_bad_spaces_are_rejected() -> None:
    space = observation_space(N_ITEMS, N_CAND, DIM)
    with pytest.raises(ValueError, match="N=8"):
        SlatePolicy(space, action_space(N_CAND + 1, K), _lr)
    with pytest.raises(ValueError, match="Dict"):
        SlatePolicy(space["features"], action_space(N_CAND, K), _lr)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="init_alpha"):
        SlatePolicy(space, action_space(N_CAND, K), _lr, init_alpha=1.0)


def test_policy_save_load_round_trip(tmp_path: Path) -> None:
    th.manual_seed(0)
    policy = _policy(hidden=32, temperature=0.5, init_alpha=0.3, use_item_table=True, residual_init_scale=1.0)
    path = tmp_path / "policy.pt"
    policy.save(str(path))
    loaded = SlatePolicy.load(str(path), device="cpu")  # compared with the CPU original (a GPU would be "auto")
    assert (loaded.hidden, loaded.temperature, loaded.init_alpha, loaded.use_item_table) == (32, 0.5, 0.3, True)
    obs = _fake_obs(policy.observation_space, 8, seed=7)
    with th.no_grad():
        assert th.equal(policy.candidate_logits(obs), loaded.candidate_logits(obs))


def test_candidate_spread_is_the_population_std_and_correlation_over_the_unmasked_candidates() -> None:
    """Each column's standard deviation over the candidates and the LLM–CF correlation, as numpy computes them; with a
    mask, those of the unmasked candidates alone (the masked ones' values do not matter)."""
    rng = np.random.default_rng(0)
    cand, feats = rng.normal(size=(4, 9, 3)), rng.normal(size=(4, 9, len(FEATURE_NAMES)))
    feats[..., F_CF] += 0.8 * feats[..., F_LLM]  # a correlation well away from 0
    got = candidate_spread(th.tensor(cand), th.tensor(feats), None, F_LLM, F_CF).numpy()
    assert got.shape == (4, 4)
    np.testing.assert_allclose(got[:, :3], cand.std(axis=1), atol=1e-7)
    corr = [np.corrcoef(feats[b, :, F_LLM], feats[b, :, F_CF])[0, 1] for b in range(4)]
    np.testing.assert_allclose(got[:, 3], corr, atol=1e-7)
    mask = rng.random((4, 9)) > 0.4
    mask[:, :3] = True
    noisy_cand, noisy_feats = cand.copy(), feats.copy()
    noisy_cand[~mask], noisy_feats[~mask] = 1e3, -1e3
    masked = candidate_spread(th.tensor(noisy_cand), th.tensor(noisy_feats), th.tensor(mask), F_LLM, F_CF).numpy()
    for b in range(4):
        alone = candidate_spread(th.tensor(cand[b:b + 1, mask[b]]), th.tensor(feats[b:b + 1, mask[b]]), None,
                                 F_LLM, F_CF).numpy()
        np.testing.assert_allclose(masked[b:b + 1], alone, atol=1e-7)
    same = np.ones((1, 5, 3))  # candidates all alike: a spread of 0, no NaN
    flat = candidate_spread(th.tensor(same), th.tensor(np.ones((1, 5, len(FEATURE_NAMES)))), None, F_LLM, F_CF)
    assert bool(th.isfinite(flat).all()) and float(flat.abs().max()) < 1e-3


def test_pool_spread_adds_the_candidates_spread_to_the_state_and_round_trips(tmp_path: Path) -> None:
    """``pool_spread``: the state input is the plain policy's with the candidates' spread after it (X + 1 columns:
    :func:`candidate_spread` of the candidate rows the policy pools), the actor's α and the critic's value read it,
    and save / load keeps the setting."""
    th.manual_seed(0)
    plain = _policy(hidden=32)
    policy = _policy(hidden=32, pool_spread=True)
    gen = th.Generator().manual_seed(3)
    with th.no_grad():  # away from the init, where α's head is 0
        for p in policy.parameters():
            p.add_(0.3 * th.randn(p.shape, generator=gen))
    obs = _fake_obs(policy.observation_space, 16, seed=3)
    t = _tensor(policy, obs)
    with th.no_grad():
        base, _, _, _ = plain._encode(t)
        state, cand, features, mask = policy._encode(t)
        assert state.shape[1] == base.shape[1] + cand.shape[-1] + 1
        np.testing.assert_array_equal(state[:, :base.shape[1]].numpy(), base.numpy())
        np.testing.assert_allclose(state[:, base.shape[1]:].numpy(),
                                   candidate_spread(cand, features, mask, F_LLM, F_CF).numpy(), atol=1e-6)
        # the same pooled means and maxima (of symlog(features), what the policy pools), a wider spread: the two
        # middle LLM values pushed apart by as much each way, the upper one staying below the largest
        moved = {k: v.copy() for k, v in obs.items()}
        y = np.sign(obs["features"][..., F_LLM]) * np.log1p(np.abs(obs["features"][..., F_LLM]))  # (B, N)
        order, rows = np.argsort(y, axis=1), np.arange(len(y))
        low, high = order[:, N_CAND // 2 - 1], order[:, N_CAND // 2]
        d = 0.5 * (y.max(axis=1) - y[rows, high])  # (B,) > 0
        y[rows, low] -= d
        y[rows, high] += d
        moved["features"][..., F_LLM] = np.sign(y) * np.expm1(np.abs(y))
        t2 = _tensor(policy, moved)
        np.testing.assert_allclose(plain._encode(t2)[0].numpy(), base.numpy(), atol=1e-5)  # the plain state: the same
        assert (policy.alpha(t2) - policy.alpha(t)).abs().min() > 1e-6  # every row's α moves
        assert (policy.predict_values(t2) - policy.predict_values(t)).abs().min() > 1e-6
    path = tmp_path / "policy.pt"
    policy.save(str(path))
    loaded = SlatePolicy.load(str(path), device="cpu")
    assert loaded.pool_spread and not plain.pool_spread
    with th.no_grad():
        assert th.equal(policy.candidate_logits(obs), loaded.candidate_logits(obs))


def test_ppo_save_load_round_trip(tmp_path: Path) -> None:
    env = _probe_vec_env(2, seed=0)
    kwargs = {"hidden": 32, "temperature": 0.5, "init_alpha": 0.3, "use_item_table": True, "n_layers": 1}
    model = PPO(SlatePolicy, env, n_steps=32, batch_size=32, n_epochs=2, policy_kwargs=kwargs, seed=0, device="cpu")
    model.learn(64)
    model.save(tmp_path / "model")
    loaded = PPO.load(tmp_path / "model", device="cpu")
    assert isinstance(loaded.policy, SlatePolicy)
    assert loaded.policy.temperature == 0.5 and loaded.policy.init_alpha == 0.3 and loaded.policy.n_layers == 1
    obs = _fake_obs(model.observation_space, 16, seed=8)  # type: ignore[arg-type]
    a1, _ = model.predict(obs, deterministic=True)
    a2, _ = loaded.predict(obs, deterministic=True)
    np.testing.assert_array_equal(a1, a2)
    with th.no_grad():
        assert th.equal(model.policy.candidate_logits(obs), loaded.policy.candidate_logits(obs))  # type: ignore[union-attr]


def _train_probe(total_timesteps: int, seed: int = 0) -> tuple[float, float, float]:
    """(blend-start reward, trained reward, seconds) of PPO on the probe env."""
    env = _probe_vec_env(8, seed=seed)
    model = PPO(
        SlatePolicy,
        env,
        n_steps=64,
        batch_size=128,
        n_epochs=6,
        learning_rate=2e-3,
        ent_coef=0.0,
        gamma=0.0,
        policy_kwargs={"hidden": 64, "n_layers": 2},
        seed=seed,
        device="cpu",
    )
    before = _probe_eval(model.policy)  # type: ignore[arg-type]
    t0 = time.perf_counter()
    model.learn(total_timesteps)
    return before, _probe_eval(model.policy), time.perf_counter() - t0  # type: ignore[arg-type]


def test_ppo_learns_probe_fast() -> None:
    """3k steps: clearly better than the blend it starts from (random / blend-greedy 1.0, optimum 1.875)."""
    before, after, _ = _train_probe(3072)
    assert before < 1.1
    assert after > 1.5, (before, after)


@pytest.mark.expensive
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ppo_learns_probe_near_optimal(seed: int) -> None:
    """8k steps, several seeds: within 0.06 of the optimum (1.8715 on the evaluation draws)."""
    before, after, _ = _train_probe(8192, seed=seed)
    assert before < 1.1
    assert after > 1.81, (before, after)


def test_category_repulsion_is_consistent_and_round_trips(tmp_path: Path) -> None:
    categories = np.arange(N_ITEMS) % 4
    policy = _policy(item_category=categories, repulsion_init=2.0, residual_init_scale=1.0)
    obs = _fake_obs(observation_space(N_ITEMS, N_CAND, DIM), 16, seed=4)
    t = _tensor(policy, obs)
    dist = policy.get_distribution(t)
    actions = dist.sample()
    _, log_prob, entropy = policy.evaluate_actions(t, actions.float())
    assert th.allclose(log_prob, policy.get_distribution(t).log_prob(actions), atol=1e-5)
    assert entropy is not None and bool(th.isfinite(entropy).all())
    beta = policy.repulsion(t)
    assert beta is not None and th.allclose(beta, th.full_like(beta, 2.0), atol=1e-5)
    # with a strong repulsion the mode spreads over categories more than the plain top-K of the logits
    mode = dist.mode().numpy()
    cats = categories[obs["candidates"][np.arange(16)[:, None], mode]]
    logits = policy.candidate_logits(t).detach().numpy()
    plain = categories[np.take_along_axis(obs["candidates"], np.argsort(-logits, axis=1)[:, :K], axis=1)]
    distinct = lambda c: np.mean([len(set(r)) for r in c.tolist()])  # noqa: E731
    assert distinct(cats) >= distinct(plain)
    policy.save(str(tmp_path / "p.pt"))
    loaded = SlatePolicy.load(str(tmp_path / "p.pt"), device="cpu")  # compared with the CPU original
    assert th.allclose(loaded.get_distribution(_tensor(loaded, obs)).log_prob(actions), log_prob, atol=1e-5)


@pytest.mark.parametrize("use_item_table", [False, True])
def test_folded_residual_equals_the_tanh_mlp_with_its_gradients(use_item_table: bool) -> None:
    """The residual is evaluated as sigmoids with folded weights; it must be the plain tanh MLP, gradients too."""
    th.manual_seed(0)
    policy = _policy(use_item_table=use_item_table, residual_init_scale=1.0, candidate_hidden=8, n_layers=3)
    assert policy._fold_tanh
    obs = _tensor(policy, _fake_obs(policy.observation_space, 16))
    state_in, cand, _, _ = policy._encode(obs)
    h = policy.state_net(state_in)

    def grads(out: th.Tensor) -> list[th.Tensor]:
        policy.zero_grad()
        (out * th.linspace(-1.0, 1.0, out.numel()).view_as(out)).sum().backward(retain_graph=True)
        return [p.grad.clone() if p.grad is not None else th.zeros_like(p) for p in policy.parameters()]

    folded = policy._residual(cand, h)
    g_folded = grads(folded)
    pre = policy.residual_cand(cand) + policy.residual_state(h).unsqueeze(1)
    plain = policy.residual_head(policy.residual_net(pre)).squeeze(-1)
    g_plain = grads(plain)
    assert th.allclose(folded, plain, atol=1e-5)
    for a, b in zip(g_folded, g_plain, strict=True):
        assert th.allclose(a, b, atol=1e-5, rtol=1e-4)
    with th.no_grad():
        assert th.allclose(policy._residual(cand, h), folded, atol=1e-6)


@pytest.mark.parametrize("bad_id", [N_ITEMS, N_ITEMS + 10, -1])
@pytest.mark.parametrize("kind", ["item_table", "categories"])
def test_candidate_ids_outside_the_catalog_are_an_error_not_clamped(kind: str, bad_id: int) -> None:
    """An id the policy's item table / category table does not have means another world: a clear error."""
    kwargs: dict[str, Any] = ({"use_item_table": True} if kind == "item_table"
                              else {"item_category": np.arange(N_ITEMS) % 4})
    policy = _policy(**kwargs)
    obs = _fake_obs(observation_space(N_ITEMS, N_CAND, DIM), 4, seed=5)
    with th.no_grad():
        policy.get_distribution(_tensor(policy, obs)).mode()  # in range: fine
        obs["candidates"][2, 3] = bad_id
        with pytest.raises(ValueError, match=rf"candidate id {bad_id} \(row 2\) is outside the policy's catalog "
                                             rf"\[0, {N_ITEMS}\)"):
            policy.get_distribution(_tensor(policy, obs)).mode()


@pytest.mark.parametrize("gate", ["raw", "standardised", "lean"])
@pytest.mark.parametrize(("cap", "exposure", "seen"), [(2, 0.0, 0.5), (1, 1.0, 1.0), (3, 3.0, 0.0)])
def test_diverse_base_starts_at_the_diversity_heuristic(cap: int, exposure: float, seen: float, gate: str,
                                                        tmp_path: Path) -> None:
    """A residual on the diversity heuristic (``base="diverse"``) with a zero residual and a negligible repulsion:
    its mode is the heuristic's slate (standardised blend, exposure / seen penalties, greedy under the category
    cap) on every row, with either gate (the standardised gate starts at the heuristic's effective weight) and with
    the heuristic's feedback-adaptive α (``"lean"``: the standardised gate with ``gate_lean``, against
    ``DiverseRanker(lean_weight=...)`` on sessions whose clicks lean either way); the plain-blend policy's mode is
    not; the settings survive a save / load."""
    from agents.baselines import DiverseRanker
    from agents.ppo_ranker import build_policy, policy_settings
    from envs.spaces import F_CAT_EXPOSURE

    categories = np.arange(N_ITEMS) % 3
    weights = np.zeros(len(FEATURE_NAMES))
    weights[F_CAT_EXPOSURE], weights[F_ITEM_SEEN] = -exposure, -seen
    kwargs = dict(item_category=categories, init_alpha=0.8, residual_init_scale=0.0, repulsion_init=1e-6)
    from envs.spaces import C_CLICKED_CF, C_CLICKED_LLM

    lean = 2.0 if gate == "lean" else None
    policy = _policy(base="diverse", base_weights=weights.tolist(), category_cap=cap, gate=gate if lean is None
                     else "standardised", gate_gain=3.0, gate_context=gate == "standardised",
                     gate_only_signals=gate == "standardised", lean_gate_only=gate == "standardised", gate_lean=lean,
                     **kwargs)
    obs = _fake_obs(observation_space(N_ITEMS, N_CAND, DIM), 256, seed=8)
    rng = np.random.default_rng(8)
    obs["context"][:, C_CLICKED_LLM] = rng.normal(0.0, 0.3, 256)  # clicks that lean either way
    obs["context"][:, C_CLICKED_CF] = rng.normal(0.0, 0.5, 256)
    heuristic = DiverseRanker(K, 0.8, categories, exposure_weight=exposure, seen_weight=seen, cap=cap,
                              lean_weight=lean or 0.0).act(obs)
    with th.no_grad():
        mode = policy.get_distribution(_tensor(policy, obs)).mode().numpy()
        plain = _policy(**kwargs).get_distribution(_tensor(policy, obs)).mode().numpy()
    np.testing.assert_array_equal(mode, heuristic)
    assert (plain != heuristic).any(axis=1).mean() > 0.5
    if lean is not None:  # the lean moves the slates: the fixed blend's differ on many rows
        fixed = DiverseRanker(K, 0.8, categories, exposure_weight=exposure, seen_weight=seen, cap=cap).act(obs)
        assert (fixed != heuristic).any(axis=1).mean() > 0.2
    loaded = build_policy(policy_settings(policy), dict(policy.state_dict()))
    assert loaded.base == "diverse" and loaded.category_cap == cap
    assert loaded.gate == ("standardised" if lean is not None else gate) and loaded.gate_lean == lean
    assert loaded.gate_gain == 3.0 and loaded.gate_context == loaded.gate_only_signals == (gate == "standardised")
    assert loaded.lean_gate_only == (gate == "standardised")
    with th.no_grad():  # the gain leaves the initial α where init_alpha / the heuristic's weight puts it
        if gate == "raw":
            np.testing.assert_allclose(policy.alpha(_tensor(policy, obs)).numpy(), 0.8, rtol=1e-5)
    with th.no_grad():
        np.testing.assert_array_equal(loaded.get_distribution(_tensor(loaded, obs)).mode().numpy(), heuristic)


def test_diverse_base_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="base must be one of"):
        _policy(base="oracle")
    with pytest.raises(ValueError, match="base_weights needs"):
        _policy(base="diverse", base_weights=[0.0])
    with pytest.raises(ValueError, match="base_weights go with"):
        _policy(base_weights=[0.0] * len(FEATURE_NAMES))
    with pytest.raises(ValueError, match="category_cap needs item_category"):
        _policy(category_cap=2)
    with pytest.raises(ValueError, match="gate must be one of"):
        _policy(gate="zscore")
    with pytest.raises(ValueError, match="gate_lean must be a finite number and goes with gate='standardised'"):
        _policy(base="diverse", gate_lean=1.0)
    with pytest.raises(ValueError, match="gate='standardised' goes with base='diverse'"):
        _policy(gate="standardised")
    with pytest.raises(ValueError, match="gate_gain must be"):
        _policy(gate_gain=0.0)


@pytest.mark.parametrize("gate", ["raw", "standardised"])
def test_lean_gate_only_leaves_the_click_lean_to_the_gate(gate: str) -> None:
    """With ``lean_gate_only`` the two clicked-signal EMAs move α (through the direct context path) and the critic,
    and nothing else of the actor: the residual, the repulsion and the gate's MLP path read the same state whatever
    the user's click lean; every other context column still reaches them. It needs the direct path."""
    from envs.spaces import C_CLICKED_CF, C_CLICKED_LLM, C_SKIP_STREAK, F_CAT_EXPOSURE

    weights = [0.0] * len(FEATURE_NAMES)
    weights[F_CAT_EXPOSURE] = -0.5
    policy = _policy(base="diverse", base_weights=weights, gate=gate, init_alpha=0.7, gate_context=True,
                     lean_gate_only=True, item_category=np.arange(N_ITEMS) % 3, residual_init_scale=1.0)
    th.manual_seed(0)
    with th.no_grad():
        policy.alpha_context.weight.normal_(std=0.5)
        policy.alpha_head.weight.normal_(std=0.1)  # the MLP path to the gate: it must not see the lean either
        policy.repulsion_head.weight.normal_()
    obs = _fake_obs(observation_space(N_ITEMS, N_CAND, DIM), 16, seed=3)
    leaned = {k: v.copy() for k, v in obs.items()}
    leaned["context"][:, C_CLICKED_CF] += 0.8
    leaned["context"][:, C_CLICKED_LLM] -= 0.5
    tired = {k: v.copy() for k, v in obs.items()}
    tired["context"][:, C_SKIP_STREAK] += 0.8

    def readout(o: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        t = _tensor(policy, o)
        state_in, _, _, _ = policy._encode(policy._prepare(t))
        with th.no_grad():
            h = policy._state(state_in)
            return {"alpha": policy.alpha(t).numpy(), "residual": policy.score_parts(t)["residual"].numpy(),
                    "repulsion": policy.repulsion(t).numpy(), "gate_mlp": policy.alpha_head(h).numpy(),
                    "value": policy.predict_values(t).numpy()}

    base, lean, tire = readout(obs), readout(leaned), readout(tired)
    for name in ("residual", "repulsion", "gate_mlp"):
        np.testing.assert_array_equal(lean[name], base[name], err_msg=name)
        assert np.abs(tire[name] - base[name]).max() > 1e-6, name  # other context columns still reach them
    # the gate reads the lean through its direct path only: its logit moves by exactly that path's change
    w = policy.alpha_context.weight.detach().numpy()[0]
    want = w[C_CLICKED_CF] * 0.8 - w[C_CLICKED_LLM] * 0.5

    def logit(a: np.ndarray) -> np.ndarray:
        return np.log(a.astype(np.float64) / (1.0 - a))

    np.testing.assert_allclose(logit(lean["alpha"]) - logit(base["alpha"]), want, atol=2e-3)
    assert abs(want) > 0.05
    assert np.abs(lean["value"] - base["value"]).max() > 1e-6  # and so does the critic
    with pytest.raises(ValueError, match="lean_gate_only needs gate_context"):
        _policy(lean_gate_only=True)


def test_standardised_gate_weighs_the_standardised_signals() -> None:
    """With ``gate="standardised"`` α is the LLM signal's share once both signals are standardised: at init it is
    the share the raw α₀ gives it (``α₀·sd_llm / (α₀·sd_llm + (1 − α₀)·sd_cf)``, per request, i.e. the feedback
    probe's effective α of the raw gate), its blend is ``z(α·z(llm) + (1 − α)·z(cf))`` also after the gate moved,
    and the gate's shift moves it in logit units whatever the two signals' spreads."""
    from agents.policies import standardise_rows
    from bench.feedback_probe import effective_alpha
    from envs.spaces import C_CLICKED_LLM

    weights = [0.0] * len(FEATURE_NAMES)
    policy = _policy(base="diverse", base_weights=weights, gate="standardised", init_alpha=0.9,
                     residual_init_scale=0.0, gate_context=True)
    obs = _fake_obs(observation_space(N_ITEMS, N_CAND, DIM), 32, seed=4)
    obs["features"][:, :, F_CF] *= 15.0  # the CF score's spread dwarfs the cosine's, as in the simulator
    t = _tensor(policy, obs)
    with th.no_grad():
        alpha = policy.alpha(t).numpy()
    want = [effective_alpha(0.9, obs["features"][b]) for b in range(32)]
    np.testing.assert_allclose(alpha, want, rtol=1e-4)
    assert float(np.mean(alpha)) < 0.5  # far below the raw 0.9: most of the raw weight only undid the scales
    with th.no_grad():
        policy.alpha_head.bias.fill_(2.0)
        parts = policy.score_parts(t)
        moved = policy.alpha(t)
        policy.gate_gain = 0.5
        half = policy.alpha(t)
        policy.gate_gain = 1.0
        policy.alpha_head.bias.fill_(0.0)
        assert policy.alpha_context is not None
        policy.alpha_context.weight[0, C_CLICKED_LLM] = 3.0  # the context path: more LLM weight after LLM clicks
        ctx_moved = policy.alpha(t).numpy()
    logit = np.log(alpha / (1 - alpha))
    np.testing.assert_allclose(np.log(moved.numpy() / (1 - moved.numpy())), logit + 2.0, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.log(half.numpy() / (1 - half.numpy())), logit + 1.0, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.log(ctx_moved / (1 - ctx_moved)), logit + 3.0 * obs["context"][:, C_CLICKED_LLM],
                               rtol=1e-4, atol=1e-4)
    f = t["features"]
    a = moved.unsqueeze(-1)
    blend = a * standardise_rows(f[..., F_LLM]) + (1 - a) * standardise_rows(f[..., F_CF])
    inv_t = float(policy.log_inv_temperature.detach().exp())
    np.testing.assert_allclose((parts["llm"] + parts["cf"]).numpy(), (standardise_rows(blend) * inv_t).numpy(),
                               rtol=1e-4, atol=1e-4)


def test_very_sharp_logits_keep_a_finite_entropy_and_gradients() -> None:
    """A policy whose logits have sharpened far (a large learned inverse temperature): the slate entropy, the
    log-probabilities and their gradients stay finite (the candidates far below the best are held at
    LOGIT_RANGE below it), so PPO's loss cannot turn NaN there."""
    from agents.policies import LOGIT_RANGE

    categories = np.arange(N_ITEMS) % 4
    policy = _policy(item_category=categories, category_cap=2, base="diverse")
    with th.no_grad():
        policy.log_inv_temperature.fill_(math.log(400.0))
    t = _tensor(policy, _fake_obs(observation_space(N_ITEMS, N_CAND, DIM), 64, seed=2))
    logits = policy.candidate_logits(t).detach()
    spread = (logits.max(dim=1).values - logits.min(dim=1).values)
    assert float(spread.max()) == pytest.approx(LOGIT_RANGE, abs=1e-3)  # clipped: unclipped it is ~400 × the z range
    actions = policy.get_distribution(t).sample()
    _, log_prob, entropy = policy.evaluate_actions(t, actions.float())
    assert entropy is not None and bool(th.isfinite(entropy).all()) and bool(th.isfinite(log_prob).all())
    (entropy.sum() - log_prob.sum()).backward()
    assert all(bool(th.isfinite(p.grad).all()) for p in policy.parameters() if p.grad is not None)


@pytest.mark.parametrize(("base", "inv_t", "extras"), [("blend", 4.0, {}), ("diverse", 4.0, {}),
                                                         ("diverse", 4.0, {"gate_standardised": True}),
                                                         ("diverse", 60.0, {"use_item_table": True}),
                                                         ("blend", 60.0, {"with_item_emb": True}),
                                                         ("diverse", 4.0, {"feature_gate": True})])
def test_score_parts_sum_to_the_logits(base: str, inv_t: float, extras: dict[str, bool]) -> None:
    """The parts of each logit (LLM, CF, diversity penalty, learned residual, range clip) sum to
    ``candidate_logits``, for both bases, on a policy whose every weight is perturbed away from its
    initialisation; the logits of the explained pass are bit-identical to ``_actor``'s; each part is what it
    claims to be (``llm`` is α·llm_sim·inv_t for the plain blend, the diversity part the fixed penalty, the clip
    non-negative and nonzero only where it binds)."""
    from agents.policies import LOGIT_RANGE, SCORE_PARTS, standardise_rows
    from envs.spaces import F_CAT_EXPOSURE

    with_emb = extras.get("with_item_emb", False)
    space = observation_space(N_ITEMS, N_CAND, DIM, with_item_embeddings=True) if with_emb else None
    kwargs: dict[str, Any] = dict(item_category=np.arange(N_ITEMS) % 3,
                                  use_item_table=extras.get("use_item_table", False),
                                  feature_gate=extras.get("feature_gate", False))
    if base == "diverse":
        weights = np.zeros(len(FEATURE_NAMES))
        weights[F_CAT_EXPOSURE], weights[F_ITEM_SEEN] = -0.7, -1.3
        kwargs.update(base="diverse", base_weights=weights.tolist(), category_cap=2,
                      gate="standardised" if extras.get("gate_standardised") else "raw")
    policy = _policy(space, **kwargs)
    gen = th.Generator().manual_seed(3)
    with th.no_grad():
        for p in policy.parameters():
            p.add_(0.3 * th.randn(p.shape, generator=gen))
        policy.log_inv_temperature.fill_(math.log(inv_t))
        if policy.feature_gate_weight is not None:  # (F, H) weights on every feature: kept to the logits' scale
            policy.feature_gate_weight.mul_(0.05)
    obs = _fake_obs(space or observation_space(N_ITEMS, N_CAND, DIM), 64, seed=5)
    t = _tensor(policy, obs)
    with th.no_grad():
        logits = policy.candidate_logits(t)
        parts = policy.score_parts(t)
        state_in, cand, features, _ = policy._encode(t)
        ref, ref_alpha, _ = policy._actor(state_in, cand, features)
        got, got_alpha, _, stacked = policy._actor_parts(state_in, cand, features)
    assert list(parts) == list(SCORE_PARTS)
    assert th.equal(got, ref) and th.equal(got_alpha, ref_alpha)  # the same operations: bit-identical
    total = sum(parts.values())
    # 1e-5 at a realistic temperature; float32 rounding grows with the logits' scale (∝ inv_t) for the sharp one
    np.testing.assert_allclose(total.numpy(), logits.numpy(), rtol=0, atol=1e-5 * max(1.0, inv_t / 4.0))
    np.testing.assert_array_equal(th.stack(list(parts.values()), dim=-1).numpy(), stacked.numpy())
    clip = parts["clip"]
    assert bool((clip >= 0).all())
    binds = clip > 0
    at_floor = logits <= logits.amax(dim=-1, keepdim=True) - LOGIT_RANGE + 1e-4
    assert bool((~binds | at_floor).all())
    assert bool(binds.any()) == (inv_t > 30)  # the range clip binds only for the sharp policy
    with th.no_grad():
        alpha = policy.alpha(t).unsqueeze(-1)
    f = t["features"]
    if base == "blend":
        np.testing.assert_allclose(parts["llm"].numpy(), (alpha * f[..., F_LLM] * inv_t).numpy(), rtol=1e-5)
        np.testing.assert_allclose(parts["cf"].numpy(), ((1 - alpha) * f[..., F_CF] * inv_t).numpy(), rtol=1e-5,
                                   atol=1e-6)
        assert bool((parts["diversity"] == 0).all())
    else:
        penalty = (-0.7 * f[..., F_CAT_EXPOSURE] - 1.3 * f[..., F_ITEM_SEEN]) * inv_t
        np.testing.assert_allclose(parts["diversity"].numpy(), penalty.numpy(), rtol=1e-5, atol=1e-5)
        # centred per row: the LLM and CF parts each sum to 0 over the candidates
        np.testing.assert_allclose(parts["llm"].sum(-1).numpy(), 0.0, atol=1e-4)
        np.testing.assert_allclose(parts["cf"].sum(-1).numpy(), 0.0, atol=1e-4)
        # and they are the α·llm and (1 − α)·cf terms: a larger α moves weight from the CF to the LLM part
        sig_llm, sig_cf = f[..., F_LLM], f[..., F_CF]
        if policy.gate == "standardised":
            sig_llm, sig_cf = standardise_rows(sig_llm), standardise_rows(sig_cf)
        blend = alpha * sig_llm + (1 - alpha) * sig_cf
        sd = blend.std(dim=-1, unbiased=False, keepdim=True)
        llm = alpha * (sig_llm - sig_llm.mean(-1, keepdim=True)) / sd * inv_t
        np.testing.assert_allclose(parts["llm"].numpy(), llm.numpy(), rtol=1e-4, atol=1e-4)
    assert bool((parts["residual"].abs() > 1e-3).any())  # the perturbed residual takes part


def test_session_sim_input_starts_silent_then_steers_the_logits_and_round_trips() -> None:
    """A policy over an observation with ``session_sim`` (``env.obs_session_sim``): with a zero residual its
    logits are those of the same policy without it (the direct weight starts at 0); the weight then adds
    ``w·z(session_sim)``; gradients reach it; it survives a save / load."""
    from agents.ppo_ranker import build_policy, policy_settings

    plain_space = observation_space(N_ITEMS, N_CAND, DIM)
    space = observation_space(N_ITEMS, N_CAND, DIM, with_session_sim=True)
    kwargs: dict[str, Any] = dict(residual_init_scale=0.0, item_category=np.arange(N_ITEMS) % 3)
    th.manual_seed(1)
    policy = _policy(space, **kwargs)
    th.manual_seed(1)
    plain = _policy(plain_space, **kwargs)
    assert policy.session_weight is not None and plain.session_weight is None
    obs = _fake_obs(space, 32, seed=6)
    plain_obs = {k: v for k, v in obs.items() if k != "session_sim"}
    with th.no_grad():
        base = policy.candidate_logits(obs)
        np.testing.assert_allclose(base.numpy(), plain.candidate_logits(plain_obs).numpy(), atol=1e-6)
        policy.session_weight.fill_(2.0)
        moved = policy.candidate_logits(obs)
    z = standardise_rows(th.as_tensor(obs["session_sim"]))
    np.testing.assert_allclose((moved - base).numpy(), (2.0 * z).numpy(), atol=1e-5)
    policy.candidate_logits(obs).sum().backward()
    assert policy.session_weight.grad is not None and policy.session_weight.grad.abs() > 0
    loaded = build_policy(policy_settings(policy), dict(policy.state_dict()))
    assert loaded.session_weight is not None and float(loaded.session_weight.detach()) == 2.0


def test_feature_gate_starts_silent_then_weighs_each_request_s_features_by_its_state() -> None:
    """``feature_gate``: built from the same seed, the policy's weights and logits are those of the policy without
    it (the gate's weights start at 0 and draw nothing from the RNG); moved, it adds ``(W·h_b)·f_i`` to each
    candidate of row ``b``, so two requests with the same candidates but other states weigh them differently; the
    policy gradient reaches it from its zero start; it survives a save / load; the anatomy's resets account for
    it (``residual`` at start removes it, a constant state folds it into the linear path exactly)."""
    from agents.ppo_ranker import build_policy, policy_settings

    weights = np.zeros(len(FEATURE_NAMES))
    weights[F_ITEM_SEEN] = -0.5
    kwargs: dict[str, Any] = dict(item_category=np.arange(N_ITEMS) % 3, base="diverse",
                                  base_weights=weights.tolist(), category_cap=2)
    th.manual_seed(4)
    plain = _policy(**kwargs)
    th.manual_seed(4)
    policy = _policy(feature_gate=True, **kwargs)
    assert plain.feature_gate_weight is None and policy.feature_gate_weight is not None
    shared = plain.state_dict()
    assert all(th.equal(v, shared[k]) for k, v in policy.state_dict().items() if k != "feature_gate_weight")
    obs = _fake_obs(policy.observation_space, 16, seed=2)
    t = _tensor(policy, obs)
    with th.no_grad():
        base = policy.candidate_logits(t)
        assert th.equal(base, plain.candidate_logits(t))

    gen = th.Generator().manual_seed(9)
    with th.no_grad():
        policy.feature_gate_weight.copy_(0.5 * th.randn(policy.feature_gate_weight.shape, generator=gen))
        moved = policy.candidate_logits(t)
        state_in, _, features, _ = policy._encode(t)
        h = policy._state(state_in)
        per_row = h @ policy.feature_gate_weight.T  # (B, F): each request's own weights
        expected = (features * per_row.unsqueeze(1)).sum(-1)
    assert not th.allclose(per_row[0], per_row[1])  # other states, other weights
    # no clip binds at this scale: the logits move by exactly the gate's term
    np.testing.assert_allclose((moved - base).numpy(), expected.numpy(), atol=1e-4)

    loaded = build_policy(policy_settings(policy), dict(policy.state_dict()))
    assert loaded.feature_gate
    with th.no_grad():
        assert th.equal(loaded.candidate_logits(t), moved)
        reset = policy.with_components_at_start(["residual"])
        assert reset.feature_gate_weight is not None and not bool(reset.feature_gate_weight.any())
        folded = policy.with_constant_state(h[0], 0.0)
        lin, lin_folded = policy._linear_features(features, h), folded._linear_features(features, h)
    np.testing.assert_allclose(lin_folded[0].numpy(), lin[0].numpy(), atol=1e-5)  # row 0 was read at h[0]

    # the policy gradient reaches the gate's weights from their zero start (the twin without it, now with it)
    th.manual_seed(4)
    fresh = _policy(feature_gate=True, **kwargs)
    actions = fresh.get_distribution(t).get_actions(deterministic=True)
    _, log_prob, _ = fresh.evaluate_actions(t, actions)
    log_prob.sum().backward()
    assert fresh.feature_gate_weight is not None and fresh.feature_gate_weight.grad is not None
    assert bool((fresh.feature_gate_weight.grad.abs() > 0).any())


def test_hidden_taste_input_has_its_own_column_and_weight_beside_session_sim() -> None:
    """A policy over an observation with ``hidden_taste`` (``env.obs_hidden_taste``, the research ablation) and
    ``session_sim``: silent at init (the logits of the policy without either column, given a zero residual); the
    taste weight adds ``w·z(hidden_taste)`` and the session weight ``v·z(session_sim)``, each reading its own
    column; gradients reach the taste weight; it survives a save / load; a missing column is named."""
    from agents.ppo_ranker import build_policy, policy_settings

    plain_space = observation_space(N_ITEMS, N_CAND, DIM)
    space = observation_space(N_ITEMS, N_CAND, DIM, with_session_sim=True, with_hidden_taste=True)
    kwargs: dict[str, Any] = dict(residual_init_scale=0.0, item_category=np.arange(N_ITEMS) % 3)
    th.manual_seed(1)
    policy = _policy(space, **kwargs)
    th.manual_seed(1)
    plain = _policy(plain_space, **kwargs)
    assert policy.taste_weight is not None and policy.session_weight is not None and plain.taste_weight is None
    obs = _fake_obs(space, 32, seed=8)
    plain_obs = {k: v for k, v in obs.items() if k not in ("session_sim", "hidden_taste")}
    with th.no_grad():
        base = policy.candidate_logits(obs)
        np.testing.assert_allclose(base.numpy(), plain.candidate_logits(plain_obs).numpy(), atol=1e-6)
        policy.taste_weight.fill_(1.5)
        taste = policy.candidate_logits(obs)
        policy.session_weight.fill_(-0.5)
        both = policy.candidate_logits(obs)
    z_taste = standardise_rows(th.as_tensor(obs["hidden_taste"]))
    z_sess = standardise_rows(th.as_tensor(obs["session_sim"]))
    np.testing.assert_allclose((taste - base).numpy(), (1.5 * z_taste).numpy(), atol=1e-5)
    np.testing.assert_allclose((both - taste).numpy(), (-0.5 * z_sess).numpy(), atol=1e-5)
    policy.candidate_logits(obs).sum().backward()
    assert policy.taste_weight.grad is not None and policy.taste_weight.grad.abs() > 0
    loaded = build_policy(policy_settings(policy), dict(policy.state_dict()))
    assert loaded.taste_weight is not None and float(loaded.taste_weight.detach()) == 1.5
    with pytest.raises(ValueError, match=r"env\.obs_hidden_taste=true"):
        policy.candidate_logits({k: v for k, v in obs.items() if k != "hidden_taste"})


def test_session_base_starts_at_tuned_session_diverse_and_its_parts_sum_to_the_logits() -> None:
    """``session_base_weight`` β: the diverse base becomes ``z(z(blend) + β·z(session_sim))``, so with a zero
    residual the policy's mode is tuned-session-diverse's slate (the heuristic reading the same column) on every
    row; the score parts still sum to the logits; β without the diverse base or without the column is refused."""
    from agents.rankers import DiverseRanker, z_rows
    from bench.term_probe import TermDiverseRanker
    from envs.spaces import F_CAT_EXPOSURE

    space = observation_space(N_ITEMS, N_CAND, DIM, with_session_sim=True)
    categories = np.arange(N_ITEMS) % 3
    weights = np.zeros(len(FEATURE_NAMES))
    weights[F_CAT_EXPOSURE], weights[F_ITEM_SEEN] = -1.0, -0.5
    policy = _policy(space, base="diverse", base_weights=weights.tolist(), category_cap=2, item_category=categories,
                     init_alpha=0.8, residual_init_scale=0.0, repulsion_init=1e-6, session_base_weight=0.7)
    obs = _fake_obs(space, 128, seed=9)
    base = DiverseRanker(K, 0.8, categories, exposure_weight=1.0, seen_weight=0.5, cap=2)
    heuristic = TermDiverseRanker(base, lambda o: z_rows(o["session_sim"]), 0.7).act(obs)
    with th.no_grad():
        mode = policy.get_distribution(_tensor(policy, obs)).mode().numpy()
        parts = policy.score_parts_tensor(_tensor(policy, obs))
        logits = policy.candidate_logits(obs)
    np.testing.assert_array_equal(mode, heuristic)
    assert (base.act(obs) != heuristic).any(axis=1).mean() > 0.3  # the session term moves the slates
    np.testing.assert_allclose(parts.sum(dim=-1).numpy(), logits.numpy(), atol=1e-4)
    with pytest.raises(ValueError, match="session_base_weight"):
        _policy(observation_space(N_ITEMS, N_CAND, DIM), base="diverse", base_weights=weights.tolist(),
                session_base_weight=0.7)
    with pytest.raises(ValueError, match="session_base_weight"):
        _policy(space, session_base_weight=0.7)


def test_pop_base_starts_at_tuned_pop_diverse_and_its_parts_sum_to_the_logits() -> None:
    """``pop_base_weight`` w: the diverse base becomes ``z(z(blend) + w·z(popularity))``, so with a zero residual the
    policy's mode is ``PopDiverseRanker``'s slate on every row (the heuristic ``train.policy.start: pop-diverse``
    starts at), with the session term too when both are set; the score parts still sum to the logits; the weight
    survives a save and load; w without the diverse base is refused."""
    from agents.ppo_ranker import build_policy, policy_settings
    from agents.rankers import DiverseRanker, PopDiverseRanker, z_rows
    from bench.term_probe import TermDiverseRanker
    from envs.spaces import F_CAT_EXPOSURE, F_POP

    space = observation_space(N_ITEMS, N_CAND, DIM)
    categories = np.arange(N_ITEMS) % 3
    weights = np.zeros(len(FEATURE_NAMES))
    weights[F_CAT_EXPOSURE], weights[F_ITEM_SEEN] = -1.0, -0.5
    policy = _policy(space, base="diverse", base_weights=weights.tolist(), category_cap=2, item_category=categories,
                     init_alpha=0.8, residual_init_scale=0.0, repulsion_init=1e-6, pop_base_weight=0.6)
    obs = _fake_obs(space, 128, seed=4)
    heuristic = PopDiverseRanker(K, 0.8, categories, 0.6, exposure_weight=1.0, seen_weight=0.5, cap=2).act(obs)
    with th.no_grad():
        mode = policy.get_distribution(_tensor(policy, obs)).mode().numpy()
        parts = policy.score_parts_tensor(_tensor(policy, obs))
        logits = policy.candidate_logits(obs)
    np.testing.assert_array_equal(mode, heuristic)
    plain = DiverseRanker(K, 0.8, categories, exposure_weight=1.0, seen_weight=0.5, cap=2)
    assert (plain.act(obs) != heuristic).any(axis=1).mean() > 0.3  # the prior moves the slates
    np.testing.assert_allclose(parts.sum(dim=-1).numpy(), logits.numpy(), atol=1e-4)

    both_space = observation_space(N_ITEMS, N_CAND, DIM, with_session_sim=True)
    both = _policy(both_space, base="diverse", base_weights=weights.tolist(), category_cap=2,
                   item_category=categories, init_alpha=0.8, residual_init_scale=0.0, repulsion_init=1e-6,
                   session_base_weight=0.7, pop_base_weight=0.6)
    both_obs = _fake_obs(both_space, 64, seed=5)
    term = TermDiverseRanker(plain, lambda o: 0.7 * z_rows(o["session_sim"]) + 0.6 * z_rows(o["features"][:, :, F_POP]),
                             1.0)
    with th.no_grad():
        both_mode = both.get_distribution(_tensor(both, both_obs)).mode().numpy()
        both_parts = both.score_parts_tensor(_tensor(both, both_obs))
        both_logits = both.candidate_logits(both_obs)
    np.testing.assert_array_equal(both_mode, term.act(both_obs))
    np.testing.assert_allclose(both_parts.sum(dim=-1).numpy(), both_logits.numpy(), atol=1e-4)

    loaded = build_policy(policy_settings(policy), dict(policy.state_dict()))
    assert loaded.pop_base_weight == 0.6
    np.testing.assert_allclose(loaded.candidate_logits(obs).detach().numpy(), logits.numpy(), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="pop_base_weight"):
        _policy(space, pop_base_weight=0.6)


_HOST_READS = ("__bool__", "__int__", "__float__", "__index__", "item", "tolist", "numpy", "cpu")


def test_the_update_on_an_accelerator_reads_nothing_back_from_the_device(monkeypatch: pytest.MonkeyPatch) -> None:
    """PPO's update re-scores observations its collection checked, so on an accelerator (where each check makes the
    host wait for the device, once per minibatch) ``evaluate_actions`` leaves the checks out and knows the category
    count without reading it: on the torch-op path that a GPU runs, no tensor is read back to the host once the
    count is cached. The values are those of the checked pass."""
    policy = _policy(item_category=np.arange(N_ITEMS) % 4, category_cap=2, base="diverse", use_item_table=True,
                     residual_init_scale=1.0)
    policy.action_dist.use_compiled = False  # the path any device but the CPU takes
    policy.set_training_mode(True)
    assert policy.update_checks_inputs()  # on the CPU the checks stay (they cost no wait there)
    t = _tensor(policy, _fake_obs(observation_space(N_ITEMS, N_CAND, DIM), 32, seed=6))
    actions = policy.get_distribution(t).sample().float()
    th.manual_seed(1)  # the entropy estimate draws a slate
    checked = policy.evaluate_actions(t, actions)
    monkeypatch.setattr(SlatePolicy, "update_checks_inputs", lambda self: not self.training)  # as on an accelerator
    reads: list[str] = []
    for name in _HOST_READS:
        original = getattr(th.Tensor, name)

        def counted(self: th.Tensor, *args: Any, _name: str = name, _f: Any = original, **kwargs: Any) -> Any:
            reads.append(_name)
            return _f(self, *args, **kwargs)

        monkeypatch.setattr(th.Tensor, name, counted)
    th.manual_seed(1)
    unchecked = policy.evaluate_actions(t, actions)
    assert reads == [], reads
    monkeypatch.undo()
    for x, y in zip(checked, unchecked, strict=True):
        assert x is not None and y is not None and th.equal(x, y)
    policy.set_training_mode(False)  # outside the update (scoring someone's logged slates) the checks stay
    assert SlatePolicy.update_checks_inputs(policy)


def test_the_category_count_follows_the_buffer() -> None:
    """``n_categories`` is read from the ``item_category`` buffer once per change of it: a state dict with another
    table (same catalog size) moves it."""
    policy = _policy(item_category=np.arange(N_ITEMS) % 4)
    assert policy.n_categories() == 4
    state = policy.state_dict()
    state["item_category"] = th.as_tensor(np.arange(N_ITEMS) % 6)
    policy.load_state_dict(state)
    assert policy.n_categories() == 6
    with th.no_grad():
        policy.item_category.zero_()
    assert policy.n_categories() == 1
    policy.item_category = th.as_tensor(np.arange(N_ITEMS) % 5)  # a buffer replaced by another tensor
    assert policy.n_categories() == 5
    assert _policy().n_categories() == 1  # no categories: one group


def test_the_running_standardiser_pools_its_batches_and_then_follows_a_drift() -> None:
    """:class:`RunningStandardiser`: the identity before any row joins; after batches of different sizes its mean and
    variance are those of all their rows (below the horizon); past the horizon the old rows weigh as ``horizon``
    rows, so a shifted input pulls the mean most of the way within a few horizons; the forward pass never moves the
    statistics; bad settings are refused."""
    from agents.policy_ops import RunningStandardiser

    rng = np.random.default_rng(0)
    norm = RunningStandardiser(3, horizon=1000)
    x = th.tensor(rng.normal(size=(5, 3)), dtype=th.float32)
    np.testing.assert_allclose(norm(x).numpy(), x.numpy(), rtol=1e-6)
    rows = [rng.normal(loc=[1.0, -2.0, 5.0], scale=[0.5, 3.0, 0.01], size=(n, 3)) for n in (7, 50, 1, 200)]
    for r in rows:
        norm.update(th.tensor(r, dtype=th.float32))
    every = np.concatenate(rows)
    np.testing.assert_allclose(norm.mean.numpy(), every.mean(axis=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(norm.var.numpy(), every.var(axis=0), rtol=1e-4, atol=1e-9)
    assert float(norm.count) == len(every) and not norm.empty
    out = norm(th.tensor(every, dtype=th.float32)).double().numpy()
    np.testing.assert_allclose(out.mean(axis=0), 0.0, atol=1e-4)
    np.testing.assert_allclose(out.std(axis=0), 1.0, atol=1e-3)
    assert float(norm.count) == len(every)  # the forward pass joined nothing
    for _ in range(5):  # 5 horizons of a shifted input
        norm.update(th.tensor(rng.normal(loc=[11.0, -2.0, 5.0], size=(1000, 3)), dtype=th.float32))
    assert float(norm.count) == 1000 and float(norm.mean[0]) > 10.5
    for bad in ({"dim": 0}, {"dim": 2, "horizon": 0.5}, {"dim": 2, "eps": 0.0}):
        with pytest.raises(ValueError, match="RunningStandardiser needs"):
            RunningStandardiser(**bad)
