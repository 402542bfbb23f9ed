"""The env's public API as Gymnasium and stable-baselines3 use it: the slate action space, the checkers on the
registered ids, stock SB3 agents, rendering, and the reset protocol."""

from __future__ import annotations

import dataclasses
import itertools
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.error import ResetNeeded
from gymnasium.vector.utils import batch_space

import envs
import envs.spaces as spaces
from configs.schema import EnvConfig
from envs.world import World

IDS = ("recfeed/SlateRec-small-v0", "recfeed/SlateRec-v0")


def distinct_rows(a: np.ndarray) -> bool:
    """Whether every row of (..., K) holds K distinct entries."""
    srt = np.sort(a.reshape(-1, a.shape[-1]), axis=1)
    return not bool((srt[:, 1:] == srt[:, :-1]).any())


# ---- the slate space -------------------------------------------------------------------------------------------


def test_slate_space_samples_distinct_seeded_slates() -> None:
    space = envs.spaces.action_space(20, 5)
    assert isinstance(space, gym.spaces.MultiDiscrete) and isinstance(space, spaces.SlateSpace)
    assert space == gym.spaces.MultiDiscrete([20] * 5)  # what SB3 and saved checkpoints compare against
    space.seed(7)
    draws = np.stack([space.sample() for _ in range(10_000)])
    assert draws.shape == (10_000, 5) and draws.dtype == np.int64
    assert distinct_rows(draws) and draws.min() == 0 and draws.max() == 19
    assert all(d in space for d in draws[:100])
    space.seed(7)
    assert np.array_equal(np.stack([space.sample() for _ in range(100)]), draws[:100])  # space.seed reproduces
    space.seed(8)
    assert not np.array_equal(np.stack([space.sample() for _ in range(100)]), draws[:100])


def test_slate_space_draws_every_ordered_slate_equally_often() -> None:
    space = spaces.SlateSpace(5, 2, seed=3)
    slates = list(itertools.permutations(range(5), 2))
    n = 40_000
    codes = [int(a) * 5 + int(b) for a, b in (space.sample() for _ in range(n))]
    freq = np.bincount(codes, minlength=25)[[a * 5 + b for a, b in slates]] / n
    p = 1 / len(slates)
    assert freq.sum() == pytest.approx(1.0)  # nothing outside the 20 ordered slates (no repeats)
    assert np.abs(freq - p).max() < 4.5 * np.sqrt(p * (1 - p) / n)


def test_slate_space_contains_checks_distinctness_range_shape_and_dtype() -> None:
    space = spaces.SlateSpace(10, 3)
    assert np.array([0, 4, 9]) in space
    assert np.array([0, 4, 4]) not in space  # a plain MultiDiscrete([10] * 3) would accept it
    assert gym.spaces.MultiDiscrete([10] * 3).contains(np.array([0, 4, 4]))
    assert np.array([0, 4, 10]) not in space and np.array([-1, 4, 5]) not in space
    assert np.array([0, 4]) not in space and np.array([0.0, 4.0, 5.0]) not in space
    with pytest.raises(ValueError, match="1 <= slate_size <= n_candidates"):
        spaces.SlateSpace(3, 4)


def test_batched_slate_space_is_a_slate_space_per_row() -> None:
    single = spaces.SlateSpace(20, 5, seed=1)
    batched = batch_space(single, 64)  # MultiDiscrete's own rule would make this a Box
    assert isinstance(batched, spaces.SlateSpace) and batched.shape == (64, 5) and batched.batch == 64
    block = batched.sample()
    assert block.shape == (64, 5) and distinct_rows(block) and block in batched
    bad = block.copy()
    bad[17, 1] = bad[17, 0]
    assert bad not in batched
    assert isinstance(batched[3], spaces.SlateSpace) and batched[3].shape == (5,)
    again = batch_space(spaces.SlateSpace(20, 5, seed=1), 64)
    assert np.array_equal(again.sample(), block)  # the batched space starts from the single one's generator


def test_slate_space_sample_mask_and_probability() -> None:
    space = spaces.SlateSpace(8, 3, seed=0)
    mask = np.array([1, 0, 1, 0, 1, 1, 0, 0], np.int8)
    got = np.stack([space.sample(mask=mask) for _ in range(500)])
    assert distinct_rows(got) and set(np.unique(got).tolist()) == {0, 2, 4, 5}
    weights = np.array([8.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    got = np.stack([space.sample(probability=weights) for _ in range(4000)])
    assert distinct_rows(got) and set(np.unique(got).tolist()) == {0, 1, 2}
    first = np.bincount(got[:, 0], minlength=3)[:3] / len(got)  # the first pick ∝ weight
    np.testing.assert_allclose(first, [0.8, 0.1, 0.1], atol=0.03)
    batched = spaces.SlateSpace(8, 3, batch=2, seed=0)
    rows_mask = np.ones((2, 8), np.int8)
    rows_mask[1, 3:] = 0
    assert set(batched.sample(mask=rows_mask)[1].tolist()) == {0, 1, 2}
    with pytest.raises(ValueError, match="not MultiDiscrete's tuple of per-position masks"):
        space.sample(mask=(mask, mask, mask))
    with pytest.raises(ValueError, match="mask row 0 allows 2 candidates, fewer than K=3"):
        space.sample(mask=np.array([1, 1, 0, 0, 0, 0, 0, 0], np.int8))
    with pytest.raises(ValueError, match=r"mask must have shape \(8,\)"):
        space.sample(mask=np.ones(7, np.int8))
    with pytest.raises(ValueError, match="mask must hold 0/1"):
        space.sample(mask=np.full(8, 2, np.int8))
    with pytest.raises(ValueError, match="probability must be finite and >= 0"):
        space.sample(probability=-weights)
    with pytest.raises(ValueError, match="at most one of mask and probability"):
        space.sample(mask=mask, probability=weights)



def test_slate_space_bounds_k_and_batch() -> None:
    # K = 1 and K = N are slate spaces (a single pick, a full permutation); batch=1 is a (1, K) block.
    assert spaces.SlateSpace(5, 1, seed=0).sample().shape == (1,)
    full = spaces.SlateSpace(5, 5, seed=0).sample()
    assert sorted(full.tolist()) == [0, 1, 2, 3, 4]
    one = spaces.SlateSpace(5, 2, batch=1, seed=0)
    assert one.shape == (1, 2) and one.sample().shape == (1, 2)
    for bad in (0, -3):
        with pytest.raises(ValueError, match=f"batch must be >= 1, got {bad}"):
            spaces.SlateSpace(5, 2, batch=bad)
    with pytest.raises(ValueError, match="1 <= slate_size <= n_candidates"):
        spaces.SlateSpace(5, 0)


def test_slate_space_subspaces_follow_multidiscrete() -> None:
    # Only a row of a *batched* space is a slate space; an entry of a single slate is MultiDiscrete's Discrete(N).
    single = spaces.SlateSpace(10, 3)
    assert single[0] == gym.spaces.Discrete(10) and not isinstance(single[0], spaces.SlateSpace)
    batched = spaces.SlateSpace(10, 3, batch=4)
    assert batched[1, 2] == gym.spaces.Discrete(10)
    assert repr(single) == "SlateSpace(n_candidates=10, slate_size=3)"
    assert repr(batched) == "SlateSpace(n_candidates=10, slate_size=3, batch=4)"


def test_slate_space_sample_argument_checks_per_row_and_shape() -> None:
    single = spaces.SlateSpace(8, 3, seed=0)
    with pytest.raises(ValueError, match=r"mask must have shape \(8,\), got \(2, 8\)"):
        single.sample(mask=np.ones((2, 8), np.int8))  # a single space takes one row, not a block
    with pytest.raises(ValueError, match=r"probability must have shape \(8,\), got \(7,\)"):
        single.sample(probability=np.ones(7))
    with pytest.raises(ValueError, match="probability must hold numbers"):
        single.sample(probability=np.array(["1"] * 8))
    batched = spaces.SlateSpace(8, 3, batch=2, seed=0)
    with pytest.raises(ValueError, match=r"must have shape \(8,\) or \(2, 8\), got \(3, 8\)"):
        batched.sample(mask=np.ones((3, 8), np.int8))
    rows_mask = np.ones((2, 8), np.int8)
    rows_mask[1, 2:] = 0  # row 1 allows 2 < K candidates, though the block allows 10
    with pytest.raises(ValueError, match="mask row 1 allows 2 candidates, fewer than K=3"):
        batched.sample(mask=rows_mask)


def test_slate_space_sampling_with_zero_weights_warns_nothing() -> None:
    space = spaces.SlateSpace(8, 3, seed=0)
    mask = np.array([1, 0, 1, 0, 1, 1, 0, 0], np.int8)
    weights = np.array([8.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # weight 0 is a division by zero inside the draw; it must stay silent
        for _ in range(200):
            space.sample(mask=mask)
            space.sample(probability=weights)



def test_observation_space_layout() -> None:
    space = spaces.observation_space(50, 6, 4)
    assert set(space.spaces) == {"user", "candidates", "features", "context"}  # item_emb only when asked for
    want = {"user": ((4,), np.float32, -1.0, 1.0), "candidates": ((6,), np.int64, 0, 49),
            "features": ((6, len(spaces.FEATURE_NAMES)), np.float32, -np.inf, np.inf),
            "context": ((len(spaces.CONTEXT_NAMES),), np.float32, -np.inf, np.inf)}
    for key, (shape, dtype, low, high) in want.items():
        box = space[key]
        assert (box.shape, box.dtype) == (shape, dtype), key
        assert (box.low == low).all() and (box.high == high).all(), key
    obs = space.sample()
    obs["candidates"][0] = 50  # candidate ids are in [0, M)
    assert obs not in space
    with_emb = spaces.observation_space(50, 6, 4, with_item_embeddings=True)["item_emb"]
    assert (with_emb.shape, with_emb.dtype) == ((6, 4), np.float32)
    assert (with_emb.low == -1.0).all() and (with_emb.high == 1.0).all()


def test_dedupe_slate_keeps_first_occurrences_and_the_callers_array() -> None:
    given = np.array([[3, 3, 0, 3], [1, 2, 0, 4], [5, 5, 5, 5]], np.int64)
    kept = given.copy()
    got = spaces.dedupe_slate(given, 6)
    # Repeats become the lowest positions unused in the row, in order; rows without repeats are left alone.
    assert got.tolist() == [[3, 1, 0, 2], [1, 2, 0, 4], [5, 0, 1, 2]]
    assert got.dtype == np.int64 and np.array_equal(given, kept)  # a new array: the agent's actions are not edited
    assert spaces.dedupe_slate(np.array([[2.0, 2.0]]), 3).dtype == np.int64


# ---- the registered ids as gym.make returns them -----------------------------------------------------------


@pytest.mark.parametrize("env_id", IDS)
def test_registered_ids_pass_gymnasium_and_sb3_checkers(env_id: str, small_world: World) -> None:
    """No ``repair``: the sampled actions the checkers step are slates. The render checks run too (check_env makes
    the env again through its spec for each declared render mode)."""
    from gymnasium.utils.env_checker import check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    env = gym.make(env_id, world=small_world)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(infinity|unconventional shape).*")  # unbounded features
        check_env(env.unwrapped)
        sb3_check_env(env)
    assert isinstance(env.action_space, spaces.SlateSpace)


@pytest.mark.parametrize("env_id", IDS)
def test_ten_thousand_action_space_samples_are_accepted_by_step(env_id: str, small_world: World) -> None:
    env = gym.make(env_id, world=small_world)
    env.action_space.seed(0)
    env.reset(seed=0)
    ends = 0
    for _ in range(10_000):
        _, _, terminated, truncated, _ = env.step(env.action_space.sample())
        if terminated or truncated:
            ends += 1
            env.reset()
    assert ends > 100  # many sessions, not one long one


@pytest.mark.parametrize("mode", ["vector_entry_point", "sync"])
def test_vector_envs_batch_the_slate_space(mode: str, small_cfg: EnvConfig, small_world: World) -> None:
    cfg = dataclasses.replace(small_cfg, max_steps=3)  # sessions end (and autoreset) within the loop
    venv = gym.make_vec("recfeed/SlateRec-small-v0", num_envs=4, vectorization_mode=mode, config=cfg,
                        world=small_world)
    venv.reset(seed=0)
    venv.action_space.seed(0)
    for _ in range(20):
        act = venv.action_space.sample()
        assert act.shape == (4, 5) and distinct_rows(act)
        venv.step(act)
    assert isinstance(venv.single_action_space, spaces.SlateSpace) and venv.single_action_space.shape == (5,)
    assert isinstance(venv.action_space, spaces.SlateSpace) and venv.action_space.shape == (4, 5)


# ---- stock agents that know only MultiDiscrete -----------------------------------------------------------------


def test_stock_sb3_policy_without_repair_gets_a_clear_error(small_world: World) -> None:
    """The default stays strict (a repeated candidate is an error naming the row, and it says what to do)."""
    from stable_baselines3 import PPO

    model = PPO("MultiInputPolicy", gym.make("recfeed/SlateRec-small-v0", world=small_world), n_steps=64,
                batch_size=64, device="cpu", seed=0)
    with pytest.raises(ValueError, match=r"slate row 0 repeats a candidate.*repair='dedupe'"):
        model.learn(256)


@pytest.mark.parametrize("algo", ["PPO", "A2C"])
def test_stock_sb3_agents_train_with_repair_dedupe(algo: str, small_world: World) -> None:
    import stable_baselines3 as sb3

    env = gym.make("recfeed/SlateRec-small-v0", world=small_world, repair="dedupe")
    kwargs = {"n_steps": 64, "batch_size": 64, "n_epochs": 2} if algo == "PPO" else {"n_steps": 16}
    model = getattr(sb3, algo)("MultiInputPolicy", env, device="cpu", seed=0, **kwargs)
    model.learn(320)
    assert model.num_timesteps >= 320


def test_sb3_make_vec_env_and_rgb_render(small_world: World) -> None:
    """SB3's make_vec_env asks for render_mode="rgb_array"; each env draws a uint8 (H, W, 3) picture."""
    from stable_baselines3.common.env_util import make_vec_env

    venv = make_vec_env("recfeed/SlateRec-small-v0", n_envs=2, seed=0, env_kwargs={"world": small_world})
    assert venv.get_attr("render_mode") == ["rgb_array", "rgb_array"]
    venv.reset()
    frames = venv.get_images()
    assert all(f.dtype == np.uint8 and f.ndim == 3 and f.shape[2] == 3 for f in frames)
    venv.step(np.stack([venv.action_space.sample() for _ in range(2)]))
    after = venv.get_images()
    assert all(a.shape == b.shape and not np.array_equal(a, b) for a, b in zip(frames, after, strict=True))


# ---- rendering ----------------------------------------------------------------------------------------------------


def test_rgb_render_shows_each_step_and_ansi_reports_the_session(small_cfg: EnvConfig, small_world: World) -> None:
    env = envs.RecEnv(config=small_cfg, world=small_world, render_mode="rgb_array")
    text = envs.RecEnv(config=small_cfg, world=small_world, render_mode="ansi")
    with pytest.raises(ResetNeeded, match=r"render\(\) called before reset\(\)"):
        env.render()
    env.reset(seed=4)
    text.reset(seed=4)
    frames = [env.render()]
    total, clicks = 0.0, 0
    for t in range(1, 4):
        slate = np.arange(small_cfg.slate_size)
        _, r, _, _, info = env.step(slate)
        text.step(slate)
        total += r
        clicks += int(info["click"])
        frames.append(env.render())
        shown = text.render()
        assert f"step {t}/{small_cfg.max_steps}" in shown and f"return {total:.2f}" in shown
        assert f"clicks {clicks}" in shown
        assert ("last slate: no click" in shown) != info["click"]
        assert len(shown.splitlines()) == 2 + small_cfg.slate_size
    for f in frames:
        assert isinstance(f, np.ndarray) and f.dtype == np.uint8 and f.shape == frames[0].shape and f.shape[2] == 3
    assert all(not np.array_equal(a, b) for a, b in itertools.pairwise(frames))
    with pytest.raises(ValueError, match="render_mode must be None or one of"):
        envs.RecEnv(config=small_cfg, world=small_world, render_mode="human")


def test_rendering_leaves_the_trajectory_alone_and_is_off_without_a_render_mode(small_cfg: EnvConfig,
                                                                                small_world: World) -> None:
    plain = envs.RecEnv(config=small_cfg, world=small_world)
    drawn = envs.RecEnv(config=small_cfg, world=small_world, render_mode="rgb_array")
    a, _ = plain.reset(seed=9)
    b, _ = drawn.reset(seed=9)
    for _ in range(small_cfg.max_steps):
        act = np.argsort(-a["features"][:, spaces.F_LLM])[: small_cfg.slate_size]
        a, ra, ta, ua, ia = plain.step(act)
        b, rb, tb, ub, ib = drawn.step(act)
        drawn.render()
        assert ra == rb and (ta, ua) == (tb, ub) and ia["click_rank"] == ib["click_rank"]
        assert all(np.array_equal(a[k], b[k]) for k in a)
        if ta or ua:
            break
    assert plain.render() is None and plain._view is None and plain._features is None  # nothing kept for it


# ---- the reset protocol -----------------------------------------------------------------------------------------


def test_step_before_reset_or_after_the_session_ended_raises(small_cfg: EnvConfig, small_world: World) -> None:
    env = envs.RecEnv(config=dataclasses.replace(small_cfg, max_steps=3), world=small_world)
    with pytest.raises(ResetNeeded, match=r"before reset\(\)"):
        env.step(np.arange(small_cfg.slate_size))
    env.reset(seed=0)
    for _ in range(3):
        _, _, terminated, truncated, _ = env.step(np.arange(small_cfg.slate_size))
    assert truncated and not terminated
    with pytest.raises(ResetNeeded, match="after the session truncated at step 3"):
        env.step(np.arange(small_cfg.slate_size))
    assert int(env.core.t[0]) == 3  # the refused step did not run
    env.reset()
    env.step(np.arange(small_cfg.slate_size))  # a new session steps again


def test_step_after_termination_raises_through_gym_make(small_cfg: EnvConfig, small_world: World) -> None:
    """gymnasium's OrderEnforcing only covers "before reset"; the env itself refuses to step a user who left."""
    um = dataclasses.replace(small_cfg.user_model, budget_mean=0.5)  # users leave after a request or two
    env = gym.make("recfeed/SlateRec-small-v0", config=dataclasses.replace(small_cfg, user_model=um),
                   world=small_world)
    env.reset(seed=0)
    terminated = truncated = False
    for _ in range(small_cfg.max_steps):
        _, _, terminated, truncated, _ = env.step(env.action_space.sample())
        if terminated or truncated:
            break
    assert terminated and not truncated
    with pytest.raises(ResetNeeded, match="after the session terminated"):
        env.step(env.action_space.sample())


@pytest.mark.expensive
@pytest.mark.parametrize("env_id", IDS)
def test_registered_ids_pass_the_checkers_with_no_arguments(env_id: str) -> None:
    """Literally ``gym.make(id)``: the transformer-encoded world (built and cached on first use: minutes)."""
    from gymnasium.utils.env_checker import check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    env = gym.make(env_id)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(infinity|unconventional shape).*")
        check_env(env.unwrapped)
        sb3_check_env(env)
    env.reset(seed=0)
    env.step(env.action_space.sample())  # the README's example
