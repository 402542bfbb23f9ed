"""The compiled kernels (envs/kernels.py): their random streams equal envs/rng.py bit for bit, and the compiled
core equals its numpy reading (tests/reference_core.py)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from configs.schema import EnvConfig
from envs.core import BatchedCore
from envs.spaces import F_LLM
from envs.world import World


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
