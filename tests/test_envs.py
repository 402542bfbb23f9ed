"""The simulator: determinism, batched == single, dynamics, response model, slate validation, API checks."""

from __future__ import annotations

import dataclasses
import os
import time

import gymnasium as gym
import numpy as np
import pytest
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import envs
from configs.schema import EnvConfig
from envs.core import BatchedCore
from envs.response import cascade_click_probs, mnl_click_probs, position_weights, sample_choice
from envs.sb3 import SB3VecEnv
from envs.spaces import F_CAT_EXPOSURE, F_ITEM_SEEN, F_LLM, validate_slate
from envs.world import World


def greedy(obs: dict[str, np.ndarray], k: int) -> np.ndarray:
    return np.argsort(-obs["features"][:, :, F_LLM], axis=1, kind="stable")[:, :k]


def rollout(env: envs.RecVectorEnv, steps: int, seed: int) -> list[tuple[np.ndarray, ...]]:
    obs, _ = env.reset(seed=seed)
    out = []
    for _ in range(steps):
        obs, rew, term, trunc, info = env.step(greedy(obs, env.core.K))
        out.append((obs["features"].copy(), obs["candidates"].copy(), rew, term, trunc, info["click_rank"]))
    return out


def test_same_seed_same_trajectory(small_cfg: EnvConfig, small_world: World) -> None:
    a = rollout(envs.RecVectorEnv(16, config=small_cfg, world=small_world), 40, seed=5)
    b = rollout(envs.RecVectorEnv(16, config=small_cfg, world=small_world), 40, seed=5)
    c = rollout(envs.RecVectorEnv(16, config=small_cfg, world=small_world), 40, seed=6)
    for x, y in zip(a, b, strict=True):
        for u, v in zip(x, y, strict=True):
            assert np.array_equal(u, v)
    assert not all(np.array_equal(x[1], y[1]) for x, y in zip(a, c, strict=True))


def test_returned_observations_belong_to_the_caller(small_cfg: EnvConfig, small_world: World) -> None:
    """The env writes every observation into new arrays and never reads them back: later steps leave kept
    observations as they were, and scribbling on one does not change the trajectory."""
    env = envs.RecVectorEnv(16, config=small_cfg, world=small_world)
    clean = rollout(envs.RecVectorEnv(16, config=small_cfg, world=small_world), 40, seed=5)
    obs, _ = env.reset(seed=5)
    kept: list[dict[str, np.ndarray]] = []
    ends = 0
    for want in clean:
        act = greedy(obs, env.core.K)
        obs, _, term, trunc, info = env.step(act)
        assert np.array_equal(obs["features"], want[0]) and np.array_equal(obs["candidates"], want[1])
        assert np.array_equal(info["click_rank"], want[5])
        ends += int((term | trunc).sum())
        kept.append({k: v.copy() for k, v in obs.items()})  # what the env returned, for the next step's slate
        for v in obs.values():  # the caller may change what it got ...
            v[...] = -7
        kept[-1], obs = obs, kept[-1]
    assert ends > 0  # rows were refreshed in place by the autoreset
    for got in kept:  # ... and later steps leave it alone
        for k, v in got.items():
            assert (v == -7).all(), k


def test_batched_env_equals_single_envs(small_cfg: EnvConfig, small_world: World) -> None:
    b = 6
    vec = envs.RecVectorEnv(b, config=small_cfg, world=small_world)
    singles = [envs.RecEnv(config=small_cfg, world=small_world) for _ in range(b)]
    obs, _ = vec.reset(seed=11)
    sobs = [s.reset(seed=11 + i)[0] for i, s in enumerate(singles)]
    ends = 0
    for _ in range(70):
        for i in range(b):
            assert np.array_equal(obs["candidates"][i], sobs[i]["candidates"])
            np.testing.assert_allclose(obs["features"][i], sobs[i]["features"], rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(obs["context"][i], sobs[i]["context"], rtol=1e-5, atol=1e-6)
        act = greedy(obs, vec.core.K)
        obs, rew, term, trunc, info = vec.step(act)
        for i, s in enumerate(singles):
            o, r, te, tr, inf = s.step(act[i])
            assert inf["click_rank"] == info["click_rank"][i]
            assert (te, tr) == (term[i], trunc[i])
            np.testing.assert_allclose(r, rew[i], rtol=1e-5)
            if te or tr:
                ends += 1
                np.testing.assert_allclose(info["final_obs"][i]["features"], o["features"], rtol=1e-5, atol=1e-6)
                o, _ = s.reset()
            sobs[i] = o
    assert ends > b  # autoreset was exercised


def test_invalid_slates_rejected_naming_the_row() -> None:
    with pytest.raises(ValueError, match="row 1 repeats"):
        validate_slate(np.array([[0, 1, 2], [3, 3, 4]]), 10, 3)
    with pytest.raises(ValueError, match=r"row 0 has entries outside \[0, 10\)"):
        validate_slate(np.array([[0, 1, 10], [3, 2, 4]]), 10, 3)
    with pytest.raises(ValueError, match="shape"):
        validate_slate(np.array([[0, 1]]), 10, 3)
    with pytest.raises(ValueError, match="integer"):
        validate_slate(np.array([[0.5, 1, 2]]), 10, 3)



def test_validate_slate_converts_and_names_the_offending_row() -> None:
    # Integer-valued floats and narrower ints are accepted and come back as C-contiguous int64.
    for given in (np.array([[0.0, 1.0, 2.0]]), np.array([[0, 1, 2]], np.int32), np.array([[0, 1, 2]], np.uint8)):
        got = validate_slate(given, 10, 3)
        assert got.dtype == np.int64 and got.flags.c_contiguous and got.tolist() == [[0, 1, 2]]
    with pytest.raises(ValueError, match="integer"):
        validate_slate(np.array([[np.nan, 1.0, 2.0]]), 10, 3)
    with pytest.raises(ValueError, match=r"row 1 has entries outside \[0, 10\)"):
        validate_slate(np.array([[0, 1, 2], [3, 2, 10]]), 10, 3)
    with pytest.raises(ValueError, match="row 0 repeats"):  # the repeat is not the smallest entry
        validate_slate(np.array([[0, 3, 3]]), 10, 3)
    with pytest.raises(ValueError, match="row 0 repeats"):
        validate_slate(np.array([[5, 0, 3, 5]]), 10, 4)


def test_env_step_rejects_bad_slate_and_dedupe_repairs(small_cfg: EnvConfig, small_world: World) -> None:
    env = envs.RecEnv(config=small_cfg, world=small_world)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="row 0 repeats"):
        env.step(np.zeros(small_cfg.slate_size, np.int64))
    repaired = envs.RecEnv(config=small_cfg, world=small_world, repair="dedupe")
    repaired.reset(seed=0)
    _, _, _, _, info = repaired.step(np.zeros(small_cfg.slate_size, np.int64))
    assert len(set(info["slate_items"].tolist())) == small_cfg.slate_size


def test_gymnasium_and_sb3_checkers_pass(small_cfg: EnvConfig, small_world: World) -> None:
    from gymnasium.utils.env_checker import check_env

    with pytest.warns(UserWarning):  # the checkers warn about unbounded Box features; not an error
        check_env(envs.RecEnv(config=small_cfg, world=small_world, repair="dedupe"), skip_render_check=True)
        sb3_check_env(envs.RecEnv(config=small_cfg, world=small_world, repair="dedupe"))


def test_registered_ids_and_vector_entry_point(small_cfg: EnvConfig, small_world: World) -> None:
    assert "recfeed/SlateRec-v0" in gym.registry and "recfeed/SlateRec-small-v0" in gym.registry
    venv = gym.make_vec("recfeed/SlateRec-small-v0", num_envs=3, vectorization_mode="vector_entry_point",
                        world=small_world)
    obs, _ = venv.reset(seed=0)
    assert obs["features"].shape == (3, small_cfg.n_candidates, 7)
    env = gym.make("recfeed/SlateRec-small-v0", world=small_world)
    o, _ = env.reset(seed=0)
    assert env.observation_space.contains(o)


def test_sb3_adapter_terminal_observation_and_truncation(small_cfg: EnvConfig, small_world: World) -> None:
    cfg = dataclasses.replace(small_cfg, max_steps=4)
    venv = SB3VecEnv(envs.RecVectorEnv(5, config=cfg, world=small_world))
    venv.seed(3)
    obs = venv.reset()
    saw_done = False
    for _ in range(6):
        venv.step_async(greedy(obs, cfg.slate_size).astype(np.float32))  # SB3 hands float actions
        obs, rew, dones, infos = venv.step_wait()
        assert rew.shape == (5,) and dones.shape == (5,)
        for i in np.flatnonzero(dones):
            saw_done = True
            assert set(infos[i]["terminal_observation"]) == {"user", "candidates", "features", "context"}
            length = infos[i]["episode"]["l"]
            assert length == 4 if infos[i]["TimeLimit.truncated"] else 1 <= length <= 4  # the limit truncates at 4
    assert saw_done
    assert venv.pop_stats()["steps"] == 30


def make_core(cfg: EnvConfig, world: World, b: int = 64, **um: float | str) -> BatchedCore:
    cfg = dataclasses.replace(cfg, user_model=dataclasses.replace(cfg.user_model, **um))
    core = BatchedCore(world, cfg, b)
    core.reset_rows(np.arange(b), np.arange(b, dtype=np.uint64) * np.uint64(977) + np.uint64(1))
    core.observe()
    return core


def test_fatigue_rises_with_repeats_and_recovers(small_cfg: EnvConfig, small_world: World) -> None:
    core = make_core(small_cfg, small_world)
    k = small_cfg.slate_size
    # Show the same category again and again: pick, per row, the candidates of its most common category.
    cats = small_world.catalog.category
    before = core.fatigue.copy()
    for _ in range(3):
        obs = core.observe()
        c = cats[obs["candidates"]]
        target = np.array([np.bincount(row).argmax() for row in c])
        score = (c == target[:, None]).astype(float) + 1e-3 * obs["features"][:, :, F_LLM]
        core.step(np.argsort(-score, axis=1)[:, :k])
    rows = np.arange(core.B)
    high = core.fatigue[rows, target]
    assert np.all(high > before[rows, target])
    assert np.all(high > np.median(core.fatigue, axis=1))
    assert np.all(core.observe()["features"][:, :, F_CAT_EXPOSURE].max(axis=1) > 0)
    # Recovery, through the core: slates without the tired category leave its fatigue to decay geometrically.
    rec = np.float32(small_cfg.user_model.fatigue_recovery)
    assert rec < 1
    ok = np.ones(core.B, bool)  # rows that had K candidates outside their tired category at every step
    for _ in range(4):
        obs = core.observe()
        away = cats[obs["candidates"]] != target[:, None]
        ok &= away.sum(axis=1) >= k
        core.step(np.argsort(~away, axis=1, kind="stable")[:, :k])  # candidates of other categories first
    assert ok.sum() >= core.B // 2, ok.sum()
    after = core.fatigue[rows, target]
    expected = high.copy()
    for _ in range(4):
        expected *= rec  # the kernel's float32 update: no gain for a category that was not shown
    np.testing.assert_allclose(after[ok], expected[ok], rtol=1e-6)
    assert np.all(after[ok] < high[ok])


def test_repeated_items_are_marked_seen(small_cfg: EnvConfig, small_world: World) -> None:
    core = make_core(small_cfg, small_world, b=8)
    obs = core.observe()
    shown = obs["candidates"][:, : small_cfg.slate_size].copy()
    core.step(np.tile(np.arange(small_cfg.slate_size), (8, 1)))
    feats = core.observe()["features"]
    seen_now = feats[:, :, F_ITEM_SEEN]
    cands = core.cands
    for i in range(8):
        was_shown = np.isin(cands[i], shown[i])
        assert np.all(seen_now[i][was_shown] == 1) and np.all(seen_now[i][~was_shown] == 0)  # shown once


def test_bad_slates_end_sessions_sooner(small_cfg: EnvConfig, small_world: World) -> None:
    def mean_length(pick_worst: bool) -> float:
        core = make_core(small_cfg, small_world, b=128)
        alive = np.ones(core.B, bool)
        length = np.zeros(core.B)
        for _ in range(small_cfg.max_steps):
            core.observe()
            u = core.candidate_utility()
            order = np.argsort(u if pick_worst else -u, axis=1)[:, : small_cfg.slate_size]
            res = core.step(order)
            length += alive
            alive &= ~(res.terminated | res.truncated)
        return float(length.mean())

    assert mean_length(pick_worst=True) < 0.8 * mean_length(pick_worst=False)


def test_drift_moves_taste_toward_liked_items(small_cfg: EnvConfig, small_world: World) -> None:
    core = make_core(small_cfg, small_world, b=256, satisfaction_noise=0.0)
    sem_before = core.sem_aff.copy()
    slate = np.tile(np.arange(small_cfg.slate_size), (core.B, 1))
    rel = core.utility(np.take_along_axis(core.cand_slots, slate, axis=1)) - small_cfg.user_model.no_click_utility
    res = core.step(slate)
    rows = np.flatnonzero(res.click_rank >= 0)
    slot = core.cand_slots[rows, res.click_rank[rows]]
    liked = rel[rows, res.click_rank[rows]] > small_cfg.user_model.like_threshold
    assert liked.sum() >= 3
    # the hidden taste's affinity to a liked item rises; to the catalog's other items it moves by the exact
    # renormalised drift, so the relative order of unrelated items is kept
    assert np.all(core.sem_aff[rows, slot][liked] > sem_before[rows, slot][liked])
    disliked = rel[rows, res.click_rank[rows]] < small_cfg.user_model.like_threshold - 1.5
    if disliked.any():
        assert np.all(core.sem_aff[rows, slot][disliked] < sem_before[rows, slot][disliked])


def test_pooled_state_matches_its_definition(small_cfg: EnvConfig, small_world: World) -> None:
    core = make_core(small_cfg, small_world, b=32)
    for _ in range(5):
        obs = core.observe()
        core.step(greedy(obs, small_cfg.slate_size))
    obs = core.observe()
    emb = small_world.item_emb[obs["candidates"]]  # (B, N, D)
    expected = np.einsum("bnd,bd->bn", emb, obs["user"])
    np.testing.assert_allclose(obs["features"][:, :, F_LLM], expected, atol=1e-4)


def test_click_rate_falls_with_rank(small_cfg: EnvConfig, small_world: World) -> None:
    core = make_core(small_cfg, small_world, b=512)
    k = small_cfg.slate_size
    clicks = np.zeros(k)
    gen = np.random.default_rng(0)
    for _ in range(20):
        core.observe()
        res = core.step(np.argsort(gen.random((core.B, small_cfg.n_candidates)), axis=1)[:, :k])
        clicks += res.clicks.sum(axis=0)
        done = np.flatnonzero(res.terminated | res.truncated)
        core.reset_rows(done, core.keys[done] + np.uint64(12345))
    assert np.all(np.diff(clicks[:3]) < 0) and clicks[0] > 2 * clicks[-1], clicks


def test_choice_models_hand_checked() -> None:
    w = position_weights(3, 1.0)
    np.testing.assert_allclose(w, [1.0, 0.5, 1 / 3])
    p = mnl_click_probs(np.zeros((1, 3)), w, 0.0)
    np.testing.assert_allclose(p, [[1 / (1 + 11 / 6), 0.5 / (1 + 11 / 6), (1 / 3) / (1 + 11 / 6)]])
    pc = cascade_click_probs(np.zeros((1, 2)), np.ones(2), 0.0, abandon=0.0)
    np.testing.assert_allclose(pc, [[0.5, 0.25]])
    assert sample_choice(np.array([[0.2, 0.3]]), np.array([0.1]))[0] == 0
    assert sample_choice(np.array([[0.2, 0.3]]), np.array([0.45]))[0] == 1
    assert sample_choice(np.array([[0.2, 0.3]]), np.array([0.6]))[0] == -1


def test_cascade_choice_model_runs(small_cfg: EnvConfig, small_world: World) -> None:
    core = make_core(small_cfg, small_world, b=64, choice_model="cascade")
    res = core.step(np.tile(np.arange(small_cfg.slate_size), (64, 1)))
    assert res.clicks.sum(axis=1).max() <= 1 and res.clicks.any()


def test_candidates_distinct_and_exclude_consumed(small_cfg: EnvConfig, small_world: World) -> None:
    core = make_core(small_cfg, small_world, b=64)
    hist = small_world.populations["train"].history[core.user]
    consumed: list[set[int]] = [set(h[h >= 0].tolist()) for h in hist]
    for _ in range(15):
        obs = core.observe()
        for i in range(core.B):
            row = obs["candidates"][i].tolist()
            assert len(set(row)) == len(row)
            assert not consumed[i] & set(row)
        res = core.step(greedy(obs, small_cfg.slate_size))
        for i in np.flatnonzero(res.click_rank >= 0):
            consumed[i].add(int(res.items[i, res.click_rank[i]]))


def test_reward_components_add_up(small_cfg: EnvConfig, small_world: World) -> None:
    env = envs.RecEnv(config=small_cfg, world=small_world)
    env.reset(seed=1)
    total = 0.0
    for _ in range(10):
        _, r, te, tr, info = env.step(np.arange(small_cfg.slate_size))
        assert r == pytest.approx(info["reward_click"] + info["reward_purchase"] + info["reward_dwell"], rel=1e-5)
        assert info["reward_click"] == pytest.approx(small_cfg.reward.click * info["click"])
        total += r
        if te or tr:
            break
    assert total > 0


def test_catalog_too_small_is_a_clear_error(small_world: World) -> None:
    cfg = EnvConfig(n_candidates=390, slate_size=5, max_steps=30)
    with pytest.raises(ValueError, match="too small for N=390"):
        BatchedCore(small_world, cfg, 2)


def test_unknown_population_is_a_clear_error(small_cfg: EnvConfig, small_world: World) -> None:
    with pytest.raises(KeyError, match="unknown user population 'nobody'"):
        BatchedCore(small_world, small_cfg, 2, population="nobody")


def test_text_mode_encodes_a_prompt_of_the_recent_history(small_cfg: EnvConfig, small_world: World) -> None:
    from encoders.hashing import HashingEncoder

    enc = HashingEncoder(dim=64)  # the small world's item embeddings come from the same encoder
    cfg = dataclasses.replace(small_cfg, obs_mode="text")
    core = BatchedCore(small_world, cfg, 4, text_encoder=enc)
    core.reset_rows(np.arange(4), np.arange(4, dtype=np.uint64) + np.uint64(99))
    obs = core.observe()
    prompts = core.prompts()
    assert all(p.startswith("User context: recently enjoyed") and "Task: recommend" in p for p in prompts)
    np.testing.assert_allclose(obs["user"], enc.encode(prompts), atol=1e-6)
    emb = small_world.item_emb[obs["candidates"]]
    np.testing.assert_allclose(obs["features"][:, :, F_LLM], np.einsum("bnd,bd->bn", emb, obs["user"]), atol=1e-5)
    res = core.step(greedy(obs, cfg.slate_size))
    core.observe()
    for i in np.flatnonzero(res.click_rank >= 0):  # a click shows up in the next prompt
        title = small_world.catalog.texts[res.items[i, res.click_rank[i]]].split(".")[0]
        assert title in core.prompts()[i]


def test_rollouts_log_to_parquet_and_the_cf_fit_reads_them(small_cfg: EnvConfig, small_world: World,
                                                           tmp_path) -> None:
    from envs.presets import fit_world_from_logs, run_logging_phase
    from envs.rollout_log import ROLLOUT_COLUMNS as LOG_COLUMNS
    from envs.rollout_log import read_rollout_log as read_log

    frame = run_logging_phase(small_world, small_cfg, "train", seed=3, batch_size=64)
    path = tmp_path / "train.parquet"
    from envs.rollout_log import write_rollout_log as write_log

    write_log(frame, path)
    back = read_log(path)
    assert list(back.columns) == list(LOG_COLUMNS) and len(back) == len(frame)
    assert np.all(back["log_propensity"] < 0) and np.all(np.isfinite(back["log_propensity"]))
    clicked = back[back["click_rank"] >= 0]
    assert np.array_equal(clicked["clicked_item"].to_numpy(),
                          np.array([s[r] for s, r in zip(clicked["slate"], clicked["click_rank"], strict=True)]))
    heldout = run_logging_phase(small_world, small_cfg, "heldout", seed=4, batch_size=64)
    import copy

    world = copy.deepcopy(small_world)
    fit_world_from_logs(world, small_cfg, {"train": back, "heldout": heldout})
    assert world.popularity.sum() == (back["click_rank"] >= 0).sum() + (heldout["click_rank"] >= 0).sum()
    assert np.abs(world.item_factors).sum() > 0


def test_compiled_random_streams_are_bit_identical_to_envs_rng() -> None:
    from envs import rng
    from envs.kernels import _argsort_uniform, rng_bits, rng_normal

    keys = np.random.default_rng(0).integers(0, 2**63, 40, dtype=np.uint64)
    for step, purpose in ((0, rng.POOL), (3, rng.CHOICE), (17, rng.CANDIDATES)):
        assert np.array_equal(rng_bits(keys, step, purpose, 33), rng.bits(keys, step, purpose, 33))
    many = np.random.default_rng(1).integers(0, 2**64 - 1, 200_000, dtype=np.uint64)
    steps = np.arange(many.size) % 50
    for purpose in (rng.SATISFACTION, rng.DWELL):  # normals: scipy's ndtri called from the kernel, same bits
        z = rng_normal(many, steps, purpose)
        assert np.array_equal(z, rng.normal(many, steps, purpose)) and np.abs(z).max() > 4
    u = rng.uniform(keys, 2, rng.POOL, slots=301)
    order, count = np.empty(301, np.int64), np.zeros(302, np.int64)
    for row in u:
        _argsort_uniform(row, order, count)
        assert np.array_equal(order, np.argsort(row))


SESSION_ARRAYS = ("user", "keys", "t", "slot_items", "pool_slots", "reserve_ptr", "sem_aff", "static_util", "cf_obs",
                  "state_sim", "seen", "sem_mu", "sem_sd", "a_rho", "price_sens", "budget", "state", "state_norm",
                  "fatigue", "exposure", "cat_clicks", "recent", "n_clicks", "n_purchases", "click_ema",
                  "last_click", "last_rank", "llm_ema", "cf_ema", "dwell_ema", "skip_streak")


def assert_same_state(a: BatchedCore, b: BatchedCore) -> None:
    for name in SESSION_ARRAYS:
        x, y = getattr(a, name), getattr(b, name)
        if x.dtype.kind in "iub":
            assert np.array_equal(x, y), name
        else:
            np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("variant", ["mnl", "cascade", "no-gram"])
def test_compiled_core_matches_its_numpy_reading(small_cfg: EnvConfig, small_world: World, variant: str) -> None:
    """The compiled session start and step equal ``tests/reference_core.py`` on every state array and output,
    over sessions that end and restart (and with the catalog's similarities computed instead of read from the
    Gram matrix)."""
    import copy

    import reference_core as ref

    from envs import rng

    world = small_world
    cfg = small_cfg
    if variant == "cascade":
        cfg = dataclasses.replace(cfg, user_model=dataclasses.replace(cfg.user_model, choice_model="cascade"))
    if variant == "no-gram":
        world = copy.deepcopy(small_world)
        world.__dict__["gram"] = None  # as for catalogs above GRAM_MAX_ITEMS
    b = 48
    fast, slow = BatchedCore(world, cfg, b), BatchedCore(world, cfg, b)
    keys = rng.keys_from_seed(3, b)
    users = rng.integers(keys, 0, rng.USER, fast.pop.size)
    fast.reset_rows(np.arange(b), keys)
    ref.reset_rows(slow, np.arange(b), keys, users)
    assert_same_state(fast, slow)
    g = np.random.default_rng(0)
    ends = clicks = 0
    for _ in range(60):
        of, os_ = fast.observe(), ref.observe(slow)
        for name in ("candidates", "features", "context", "user"):
            np.testing.assert_allclose(of[name], os_[name], rtol=1e-4, atol=1e-5, err_msg=name)
        slate = np.argsort(g.random((b, fast.N)) - 0.3 * of["features"][:, :, F_LLM], axis=1)[:, : fast.K]
        rf, rs = fast.step(slate), ref.step(slow, slate)
        for name, want in rs.items():
            got = getattr(rf, name)
            if got.dtype.kind in "iub":
                assert np.array_equal(got, want), name
            else:
                np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5, err_msg=name)
        assert_same_state(fast, slow)
        clicks += int((rf.click_rank >= 0).sum())
        done = np.flatnonzero(rf.terminated | rf.truncated)
        ends += done.size
        if done.size:
            nk = rng.next_key(fast.keys[done])
            fast.reset_rows(done, nk)
            ref.reset_rows(slow, done, nk, rng.integers(nk, 0, rng.USER, fast.pop.size))
    assert ends > b and clicks > b  # sessions ended and restarted, users clicked


def test_kernel_threads_do_not_change_results(small_cfg: EnvConfig, small_world: World,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows split over 3 threads (session starts, steps, feature gathers) give the single thread's trajectory."""
    runs = []
    for threads in ("1", "3"):
        monkeypatch.setenv("RECFEED_ENV_THREADS", threads)
        env = envs.RecVectorEnv(200, config=small_cfg, world=small_world)
        assert env.core.threads == int(threads)
        runs.append(rollout(env, 25, seed=2))
    for x, y in zip(*runs, strict=True):
        for u, v in zip(x, y, strict=True):
            assert np.array_equal(u, v)
    monkeypatch.setenv("RECFEED_ENV_THREADS", "zero")
    with pytest.raises(ValueError, match="RECFEED_ENV_THREADS"):
        envs.RecVectorEnv(4, config=small_cfg, world=small_world)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_kernel_threads_work_in_a_forked_child(small_cfg: EnvConfig, small_world: World,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A child forked after the parent's kernels used their thread pool steps the env too (no deadlock)."""
    monkeypatch.setenv("RECFEED_ENV_THREADS", "2")
    env = envs.RecVectorEnv(200, config=small_cfg, world=small_world)
    want = rollout(env, 3, seed=4)  # the parent's pool now exists
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: same rollout, report whether it matches
        ok = False
        try:
            got = rollout(envs.RecVectorEnv(200, config=small_cfg, world=small_world), 3, seed=4)
            ok = all(np.array_equal(u, v) for x, y in zip(want, got, strict=True) for u, v in zip(x, y, strict=True))
        finally:
            os.write(write, b"1" if ok else b"0")
            os._exit(0)
    os.close(write)
    deadline = time.monotonic() + 60
    while os.waitpid(pid, os.WNOHANG) == (0, 0):
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            pytest.fail("the forked child did not finish its rollout within 60 s")
        time.sleep(0.05)
    assert os.read(read, 1) == b"1"


def test_reset_rows_rejects_bad_rows_keys_and_users(small_cfg: EnvConfig, small_world: World) -> None:
    """The compiled session start does not bounds-check, so bad indices must be refused before it runs."""
    core = make_core(small_cfg, small_world, b=8)
    before = core.slot_items.copy()
    key = np.array([1], np.uint64)
    with pytest.raises(ValueError, match=r"rows must be distinct indices in \[0, 8\)"):
        core.reset_rows(np.array([8]), key)
    with pytest.raises(ValueError, match="rows must be distinct"):
        core.reset_rows(np.array([-1]), key)
    with pytest.raises(ValueError, match="rows must be distinct"):
        core.reset_rows(np.array([2, 2]), np.array([1, 2], np.uint64))
    with pytest.raises(ValueError, match="got 1 keys for 2 rows"):
        core.reset_rows(np.array([1, 2]), key)
    with pytest.raises(ValueError, match="got 1 users for 2 rows"):
        core.reset_rows(np.array([1, 2]), np.array([1, 2], np.uint64), users=np.array([0]))
    with pytest.raises(ValueError, match="user index out of range"):
        core.reset_rows(np.array([1]), key, users=np.array([core.pop.size]))
    assert np.array_equal(core.slot_items, before)  # nothing was written
