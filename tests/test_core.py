"""BatchedCore (envs/core.py): dynamics (fatigue, drift, session length), the response as the core samples it,
candidates, text mode, row checks, and the row-split threads."""

from __future__ import annotations

import dataclasses
import os
import time

import numpy as np
import pytest
from conftest import greedy, make_core, rollout

import envs
from configs.schema import EnvConfig
from envs.core import BatchedCore
from envs.spaces import F_CAT_EXPOSURE, F_ITEM_SEEN, F_LLM
from envs.world import World


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


def test_utility_parts_sum_to_the_utility_and_move_as_the_session_does(small_cfg: EnvConfig,
                                                                        small_world: World) -> None:
    """``utility_parts``: semantic + static − fatigue − repeat is ``utility`` bit for bit; showing a slate leaves the
    static part of every candidate as it was and raises the fatigue and repeat penalties of what was shown."""
    core = make_core(small_cfg, small_world, b=32)
    slots = core.cand_slots.copy()
    before = core.utility_parts(slots)
    assert set(before) == {"semantic", "static", "fatigue", "repeat"}
    assert np.array_equal(before["semantic"] + before["static"] - before["fatigue"] - before["repeat"],
                          core.utility(slots))
    assert all(v.dtype == np.float32 and v.shape == slots.shape for v in before.values())
    shown = np.tile(np.arange(small_cfg.slate_size), (core.B, 1))
    res = core.step(shown)
    alive = ~(res.terminated | res.truncated)
    assert alive.sum() >= 8
    after = core.utility_parts(slots)
    assert np.array_equal(after["static"][alive], before["static"][alive])
    k = small_cfg.slate_size
    assert np.all(after["repeat"][alive][:, :k] > before["repeat"][alive][:, :k])
    assert np.all(after["fatigue"][alive][:, :k] > before["fatigue"][alive][:, :k])
    assert np.array_equal(after["semantic"] + after["static"] - after["fatigue"] - after["repeat"], core.utility(slots))


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


def test_hidden_taste_is_the_true_taste_utility_of_the_candidates(small_cfg: EnvConfig, small_world: World) -> None:
    """``env.obs_hidden_taste`` (a research ablation): ``hidden_taste`` is each candidate's ``semantic + static``
    true utility (the hidden state), after every step (the semantic taste drifts with clicks) and after a partial
    re-observation of the rows whose sessions ended; the rest of the observation and the sessions are those of a
    core without it (the column draws no random numbers)."""
    on = dataclasses.replace(small_cfg, obs_hidden_taste=True)
    core, plain = make_core(on, small_world, b=32), make_core(small_cfg, small_world, b=32)
    obs, ref = core.observe(), plain.observe()
    assert "hidden_taste" not in ref
    restarted = 0
    for _ in range(12):
        np.testing.assert_array_equal(obs["features"], ref["features"])
        parts = core.utility_parts(core.cand_slots)
        np.testing.assert_allclose(obs["hidden_taste"], parts["semantic"] + parts["static"], rtol=1e-6, atol=1e-6)
        assert obs["hidden_taste"].std(axis=1).min() > 0  # it varies over each row's candidates
        slate = greedy(obs, core.K)
        res, ref_res = core.step(slate), plain.step(slate)
        np.testing.assert_array_equal(res.click_rank, ref_res.click_rank)
        done = np.flatnonzero(res.terminated | res.truncated)
        restarted += done.size
        for c in (core, plain):
            c.reset_rows(done, done.astype(np.uint64) + np.uint64(5000))
        if done.size:  # the rows that restarted are re-observed alone, then the whole batch
            part = core.observe(done)
            want = core.utility_parts(core.cand_slots[done], done)
            np.testing.assert_allclose(part["hidden_taste"][done], want["semantic"] + want["static"], rtol=1e-6,
                                       atol=1e-6)
        obs, ref = core.observe(), plain.observe()
    assert restarted > 0


@pytest.mark.parametrize("gram_budget_mb", [64, 0])  # the item Gram matrix, or the embeddings
def test_session_sim_is_the_cosine_with_this_sessions_clicks(small_cfg: EnvConfig, small_world: World,
                                                             gram_budget_mb: int) -> None:
    """``env.obs_session_sim``: ``session_sim`` is each candidate's cosine with the sum of the embeddings of the
    items clicked so far in the row's session (0 before any click), recomputed here from the catalog's embeddings;
    it starts over with a row's new session and travels with ``copy_rows``. Off (the default): no such key, and the
    rest of the observation is the same either way."""
    off = dataclasses.replace(small_cfg, gram_budget_mb=gram_budget_mb)
    on = dataclasses.replace(off, obs_session_sim=True)
    core, plain = make_core(on, small_world, b=32), make_core(off, small_world, b=32)
    emb = small_world.item_emb.astype(np.float64)
    clicked: list[list[int]] = [[] for _ in range(32)]
    obs, ref = core.observe(), plain.observe()
    assert "session_sim" not in ref and (obs["session_sim"] == 0.0).all()
    any_clicks = 0
    for _ in range(6):
        np.testing.assert_array_equal(obs["features"], ref["features"])
        slate = greedy(obs, core.K)
        res, _ = core.step(slate), plain.step(slate)
        for row in np.flatnonzero(res.click_rank >= 0):
            clicked[row].append(int(res.items[row, res.click_rank[row]]))
            any_clicks += 1
        done = np.flatnonzero(res.terminated | res.truncated)
        for c in (core, plain):
            c.reset_rows(done, done.astype(np.uint64) + np.uint64(5000))
        for row in done:
            clicked[row] = []
        obs, ref = core.observe(), plain.observe()
        for row in range(32):
            c = emb[clicked[row]].sum(axis=0) if clicked[row] else np.zeros(emb.shape[1])
            norm = np.linalg.norm(c)
            want = emb[obs["candidates"][row]] @ (c / norm) if norm > 0 else np.zeros(core.N)
            np.testing.assert_allclose(obs["session_sim"][row], want, atol=2e-5)
    assert any_clicks > 10
    copy = make_core(on, small_world, b=4)
    copy.copy_rows(core, np.array([3, 7, 11, 20]), np.arange(4))
    np.testing.assert_array_equal(copy.sess_sim, core.sess_sim[[3, 7, 11, 20]])
    np.testing.assert_array_equal(copy.sess_norm2, core.sess_norm2[[3, 7, 11, 20]])


def test_session_intent_moves_the_hidden_taste_per_session(small_cfg: EnvConfig, small_world: World) -> None:
    """``user_model.session_intent``: each session's hidden affinities are ``θ_s·e`` for the definition's
    ``θ_s = ‖θ‖·(θ + σ·ξ)/‖θ + σ·ξ‖``, ``ξ = L·z`` with z the session key's INTENT normals; σ = 0 is the user's
    own taste; the observation does not change; a row's intent does not depend on the rows started with it."""
    from envs import rng
    from envs.dynamics import intent_factor

    plain = make_core(small_cfg, small_world, b=48)
    moved = make_core(small_cfg, small_world, b=48, session_intent=0.8)
    np.testing.assert_array_equal(moved.user, plain.user)
    np.testing.assert_array_equal(moved.obs_features, plain.obs_features)  # hidden: nothing observed moves
    theta = small_world.populations[small_cfg.users].sem_taste
    np.testing.assert_allclose(plain.sem_aff, np.einsum("bd,bsd->bs", theta[plain.user],
                                                        small_world.item_emb[plain.slot_items]), atol=1e-5)
    z = rng.normal(moved.keys, 0, rng.INTENT, small_world.dim)
    theta_s = theta[moved.user] + 0.8 * z @ intent_factor(small_world.item_emb).T
    theta_s *= (np.linalg.norm(theta[moved.user], axis=1) / np.linalg.norm(theta_s, axis=1))[:, None]
    want = np.einsum("bd,bsd->bs", theta_s, small_world.item_emb[moved.slot_items])
    np.testing.assert_allclose(moved.sem_aff, want, atol=1e-5)
    assert np.abs(moved.sem_aff - plain.sem_aff).max() > 0.1
    # the same user's sessions under different keys want different things, more so for a larger σ
    corr = []
    for sigma in (0.3, 1.5):
        a = make_core(small_cfg, small_world, b=48, session_intent=sigma)
        corr.append(np.mean([np.corrcoef(a.sem_aff[i], plain.sem_aff[i])[0, 1] for i in range(48)]))
    assert 1.0 > corr[0] > corr[1]
    # one row started alone gets the values it got in the batch
    alone = BatchedCore(small_world, dataclasses.replace(
        small_cfg, user_model=dataclasses.replace(small_cfg.user_model, session_intent=0.8)), 4)
    alone.reset_rows(np.array([2]), moved.keys[[7]])
    np.testing.assert_array_equal(alone.sem_aff[2], moved.sem_aff[7])


def test_intent_factor_is_the_square_root_of_the_embeddings_second_moment(small_world: World) -> None:
    from envs.dynamics import intent_factor

    e = small_world.item_emb.astype(np.float64)
    root = intent_factor(e)
    np.testing.assert_allclose(root, root.T, atol=1e-7)
    np.testing.assert_allclose(root @ root, e.T @ e / len(e), atol=1e-5)
    assert abs(np.trace(root @ root) - 1.0) < 1e-4  # unit embeddings: E‖ξ‖² = 1
