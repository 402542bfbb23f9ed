"""Scale (#16): the factored table path agrees with the dense one, never holds U×M, ANN retrieval recall, the
world's index cache, and the config checks."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from configs.schema import EncoderConfig, EnvConfig, FieldError
from encoders.hashing import HashingEncoder
from envs.ann import AnnIndex, exact_top, recall_at
from envs.core import BatchedCore
from envs.factored import FactoredTables, item_moments, user_stats
from envs.presets import build_world, load_world, organic_history, preset_config, world_key
from envs.world import PopulationTables, World


def _factored(cfg: EnvConfig, **kw: object) -> EnvConfig:
    return dataclasses.replace(cfg, table_budget_mb=0.0, **kw)


def test_item_moments_give_the_catalog_statistics_exactly() -> None:
    gen = np.random.default_rng(0)
    items = gen.normal(size=(1000, 8)).astype(np.float32)
    users = gen.normal(size=(20, 8)).astype(np.float32)
    mu, sd = user_stats(users, *item_moments(items))
    scores = users.astype(np.float64) @ items.T.astype(np.float64)
    np.testing.assert_allclose(mu, scores.mean(axis=1), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(sd, scores.std(axis=1), rtol=1e-9)


def test_dense_and_factored_tables_agree(small_cfg: EnvConfig, small_world: World) -> None:
    dense = BatchedCore(small_world, small_cfg, 64)
    fact = BatchedCore(small_world, _factored(small_cfg), 64)
    td, tf = dense.tables, fact.tables
    assert isinstance(td, PopulationTables) and isinstance(tf, FactoredTables)
    np.testing.assert_allclose(tf.sem_mu, td.sem_mu, atol=1e-5)
    np.testing.assert_allclose(tf.sem_sd, td.sem_sd, rtol=1e-4)
    u, m = td.packed.shape[:2]
    users, items = np.repeat(np.arange(u), m), np.tile(np.arange(m), u)
    np.testing.assert_allclose(tf.values(users, items).reshape(u, m, 4), td.packed, atol=1e-4)
    rows = np.array([3, 0, u - 1, 3])  # any order, repeats allowed
    np.testing.assert_allclose(tf.catalog_rows(rows), td.packed[rows], atol=1e-4)
    np.testing.assert_allclose(tf.catalog_rows(rows, (3, 0)), td.packed[rows][..., [3, 0]], atol=1e-4)
    with pytest.raises(ValueError, match="columns are 0-3"):
        tf.catalog_rows(rows, (4,))
    # exact retrieval on both paths: the lists agree but for near-ties that float rounding may swap
    assert (tf.llm_top == td.llm_top).mean() > 0.99
    assert (tf.cf_top == td.cf_top).mean() > 0.99
    rows, keys = np.arange(64), np.arange(64, dtype=np.uint64) + 11
    dense.reset_rows(rows, keys)
    fact.reset_rows(rows, keys)
    # rows whose sessions start alike: the same slot items and the same pool positions (a near-tie that rounding
    # orders differently in a retrieval list can change the pool / reserve split with the same slot items)
    same = (dense.slot_items == fact.slot_items).all(axis=1) & (dense.pool_slots == fact.pool_slots).all(axis=1)
    assert same.mean() > 0.9
    for name in ("sem_aff", "static_util", "cf_obs", "state_sim"):
        np.testing.assert_allclose(getattr(fact, name)[same], getattr(dense, name)[same], atol=1e-4, err_msg=name)
    for name in ("sem_mu", "sem_sd", "budget", "state"):
        np.testing.assert_allclose(getattr(fact, name), getattr(dense, name), rtol=1e-4, atol=1e-5, err_msg=name)
    # a few steps with the same slates: the responses agree but where rounding flips a draw
    agree = []
    still = same.copy()  # rows whose sessions have not parted yet: once rounding flips a draw, a row's paths differ
    for _ in range(3):
        obs_d, obs_f = dense.observe(), fact.observe()
        slate = np.tile(np.arange(small_cfg.slate_size), (64, 1))
        np.testing.assert_allclose(obs_f["features"][still], obs_d["features"][still], atol=1e-4)
        rd, rf = dense.step(slate), fact.step(slate)
        agree.append((rd.click_rank == rf.click_rank)[same].mean())
        still &= (rd.click_rank == rf.click_rank) & (rd.purchases == rf.purchases).all(axis=1)
    assert np.mean(agree) > 0.9 and still.mean() > 0.8


def test_factored_world_never_holds_a_users_by_items_array(tmp_path: Path) -> None:
    cfg = _factored(preset_config("small"), ann_min_items=100)  # tiny budget and the approximate index
    world = build_world(cfg, HashingEncoder(dim=32), progress=False)
    assert set(world.meta["tables"].values()) == {"factored"}
    core = BatchedCore(world, cfg, 32)
    core.reset_rows(np.arange(32), np.arange(32, dtype=np.uint64))
    for _ in range(5):
        core.observe()
        res = core.step(np.tile(np.arange(cfg.slate_size), (32, 1)))
        assert np.isfinite(res.reward).all()
    m = world.n_items
    held = [world.item_emb, world.item_factors, world.popularity]
    for pop in world.populations.values():
        held += [getattr(pop, f.name) for f in dataclasses.fields(pop) if isinstance(getattr(pop, f.name), np.ndarray)]
    for tab in world._tables.values():
        assert isinstance(tab, FactoredTables) and tab.packed.size == 0
        held += [tab.sem_mu, tab.sem_sd, tab.llm_top, tab.cf_top, *tab.factors]
    for arr in held:  # items × small or users × small: never a (U, M) dimension pair
        assert arr.ndim <= 2
        assert not (arr.ndim == 2 and arr.shape[0] != m and arr.shape[1] == m), arr.shape
        assert not (arr.ndim == 2 and arr.shape[0] == m and arr.shape[1] > 512), arr.shape
    assert world.gram is None or m <= 12_000  # Gram only under its budget: the core does not read it here
    org = organic_history(world, cfg, "train", seed=3)
    assert org.shape == (world.populations["train"].size, cfg.logging.organic_per_user)
    assert org.min() >= 0 and org.max() < m
    assert all(len(set(row)) == len(row) for row in org.tolist())  # without replacement
    assert "llm_top/train" in world.meta["ann"] and 0.0 <= world.meta["ann"]["llm_top/train"]["recall"] <= 1.0


def test_ann_recall_against_exact_search() -> None:
    gen = np.random.default_rng(1)
    centres = gen.normal(size=(40, 32)).astype(np.float32)
    items = centres[gen.integers(0, 40, 5000)] + 0.5 * gen.normal(size=(5000, 32)).astype(np.float32)
    queries = items[:300] + 0.3 * gen.normal(size=(300, 32)).astype(np.float32)
    idx = AnnIndex.build(items, nprobe=16)
    approx = idx.search(queries, 20)
    assert approx.shape == (300, 20) and approx.min() >= 0 and approx.max() < 5000
    assert recall_at(approx, exact_top(queries, items, 20)) > 0.7  # loose: holds on any machine
    with pytest.raises(ValueError, match="nprobe"):
        AnnIndex.build(items, nprobe=0)


def test_world_round_trip_keeps_the_index_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = _factored(preset_config("small"), ann_min_items=100, cache_dir=str(tmp_path / "worlds"))
    enc = EncoderConfig(kind="hashing", hashing_dim=32, cache_dir=str(tmp_path / "enc"), progress=False)
    world = load_world(cfg, enc, progress=False)
    folder = world.folder
    assert folder is not None and (folder / "ann_item_emb.faiss").is_file() and (folder / "item_emb.npy").is_file()
    first = BatchedCore(world, cfg, 8).tables

    def no_build(*args: object, **kw: object) -> None:
        raise AssertionError("the cached index should have been read")

    monkeypatch.setattr(AnnIndex, "build", classmethod(no_build))
    again = World.load(folder, mmap=True)
    assert isinstance(again.item_emb, np.memmap)
    np.testing.assert_array_equal(again.item_emb, world.item_emb)
    second = BatchedCore(again, cfg, 8).tables
    np.testing.assert_array_equal(second.llm_top, first.llm_top)
    np.testing.assert_array_equal(second.cf_top, first.cf_top)
    assert load_world(cfg, enc, progress=False).folder == folder  # the cache entry, not a rebuild


def test_bad_scale_config_is_named() -> None:
    for key, value in (("table_budget_mb", -1.0), ("gram_budget_mb", -5.0), ("ann_min_items", 0), ("ann_nprobe", 0)):
        with pytest.raises(FieldError, match=key):
            EnvConfig(**{key: value})


def test_bad_tables_arguments_are_named(small_world: World) -> None:
    with pytest.raises(ValueError, match="table_budget_mb"):
        small_world.tables("train", 4, 1.0, 1.0, budget_mb=-1.0)
    with pytest.raises(ValueError, match="ann_min_items"):
        small_world.tables("train", 4, 1.0, 1.0, budget_mb=0.0, ann_min_items=0)


def test_world_key_of_dense_builds_is_unchanged() -> None:
    cfg = preset_config("default")
    assert world_key(cfg, "enc") == world_key(dataclasses.replace(cfg, gram_budget_mb=10.0), "enc")
    assert world_key(cfg, "enc") != world_key(dataclasses.replace(cfg, table_budget_mb=1.0), "enc")


def test_batched_encoding_equals_one_call(monkeypatch: pytest.MonkeyPatch) -> None:
    from envs import presets

    texts = [f"item {i} about topic {i % 7} and style {i % 3}" for i in range(50)]
    enc = HashingEncoder(dim=16)
    monkeypatch.setattr(presets, "ENCODE_BATCH", 8)
    np.testing.assert_array_equal(presets.encode_in_batches(enc, texts, progress=False), enc.encode(texts))


def test_logging_log_without_lists_keeps_what_the_fit_reads(small_cfg: EnvConfig, small_world: World) -> None:
    from envs.presets import run_logging_phase

    full = run_logging_phase(small_world, small_cfg, "heldout", seed=5)
    light = run_logging_phase(small_world, small_cfg, "heldout", seed=5, lists=False)
    assert "candidates" not in light.columns and "slate" not in light.columns
    for col in ("user", "session", "step", "click_rank", "clicked_item", "purchase"):
        np.testing.assert_array_equal(light[col].to_numpy(), full[col].to_numpy(), err_msg=col)


def _no_gram(world: World) -> World:
    """A copy of ``world`` without the Gram matrix (as for catalogs above its budget)."""
    import copy

    out = copy.deepcopy(world)
    out.__dict__["gram"] = None
    return out


def _run(core: BatchedCore, steps: int, seed: int) -> list[tuple[np.ndarray, ...]]:
    """Step ``core`` with fixed random slates, restarting ended rows; what each step returned and left behind."""
    b, n, k = core.B, core.N, core.K
    gen = np.random.default_rng(seed)
    core.reset_rows(np.arange(b), np.arange(b, dtype=np.uint64) + 100)
    out = []
    for t in range(steps):
        obs = core.observe()
        res = core.step(np.argsort(gen.random((b, n)), axis=1)[:, :k])
        out.append((obs["features"], res.click_rank, res.reward, core.sem_aff.copy(), core.state_sim.copy()))
        done = np.flatnonzero(res.terminated | res.truncated)
        if done.size:
            core.reset_rows(done, np.arange(done.size, dtype=np.uint64) + 1000 * (t + 1))
    return out


@pytest.mark.parametrize("factored", [False, True])
def test_slot_embedding_copy_gives_the_gathers_trajectories(small_cfg: EnvConfig, small_world: World,
                                                            factored: bool) -> None:
    """Without a Gram matrix the clicks read each row's float32 copy of its slot embeddings: the same floats as
    the gather from the item table, so every output and state array is identical, bit for bit."""
    world = _no_gram(small_world)
    cfg = _factored(small_cfg) if factored else small_cfg
    copy_core = BatchedCore(world, dataclasses.replace(cfg, slot_emb_dtype="float32"), 32)
    gather_core = BatchedCore(world, dataclasses.replace(cfg, slot_emb_budget_mb=0.0), 32)
    assert copy_core._slot_emb.shape == (32, copy_core.S, copy_core.D) and gather_core._slot_emb.size == 0
    clicks = 0
    for a, b in zip(_run(copy_core, 40, 1), _run(gather_core, 40, 1), strict=True):
        for x, y in zip(a, b, strict=True):
            np.testing.assert_array_equal(x, y)
        clicks += int((a[1] >= 0).sum())
    assert clicks > 50  # the click path ran
    rows = np.arange(32)
    np.testing.assert_array_equal(copy_core._slot_emb[rows[:, None], np.arange(copy_core.S)],
                                  world.item_emb[copy_core.slot_items])


def test_int8_slot_embeddings_approximate_the_similarities(small_cfg: EnvConfig, small_world: World) -> None:
    """The int8 copy: each row within half a step of its scale, similarities within ~1e-3, trajectories close."""
    world = _no_gram(small_world)
    cfg = _factored(small_cfg, slot_emb_dtype="int8")
    q = BatchedCore(world, cfg, 32)
    exact = BatchedCore(world, dataclasses.replace(cfg, slot_emb_dtype="float32"), 32)
    assert q._slot_emb.dtype == np.int8 and q._slot_scale.shape == (32, q.S)
    run_q, run_x = _run(q, 30, 2), _run(exact, 30, 2)
    e = world.item_emb[q.slot_items]  # (B, S, D)
    deq = q._slot_emb.astype(np.float32) * q._slot_scale[:, :, None]
    assert np.all(np.abs(deq - e) <= 0.5001 * q._slot_scale[:, :, None])
    sims_x = np.einsum("bsd,bd->bs", e, e[:, 0])
    sims_q = np.einsum("bsd,bd->bs", deq, e[:, 0])
    assert np.abs(sims_q - sims_x).max() < 5e-3 * np.abs(e).max() * np.sqrt(e.shape[2])
    first = next(t for t in range(30) if (run_x[t][1] >= 0).any())  # until then, identical
    for t in range(first):
        np.testing.assert_array_equal(run_q[t][1], run_x[t][1])
    agree = np.mean([(a[1] == b[1]).mean() for a, b in zip(run_q, run_x, strict=True)])
    assert agree > 0.9  # rounding of the similarities flips a few draws later on


def test_slot_emb_dtype_auto_is_int8_on_large_catalogs_only() -> None:
    from envs.core import slot_emb_dtype

    assert slot_emb_dtype("auto", 19_999, 20_000) == "float32"
    assert slot_emb_dtype("auto", 20_000, 20_000) == "int8"
    assert slot_emb_dtype("float32", 10**6, 20_000) == "float32"
    with pytest.raises(ValueError, match="slot_emb_dtype"):
        slot_emb_dtype("float16", 10, 20)
    with pytest.raises(FieldError, match="slot_emb_budget_mb"):
        EnvConfig(slot_emb_budget_mb=-1.0)


def test_ann_mips_reduction_keeps_the_inner_product_order() -> None:
    """Unnormalised low-dimensional vectors (like ALS factors: most zero, the rest of spread norms): scanning every
    cell gives the exact inner-product lists (the L2 order of the reduced vectors is the inner-product order), and
    a partial scan most of them."""
    gen = np.random.default_rng(4)
    centres = gen.normal(size=(60, 16))
    items = centres[gen.integers(0, 60, 20_000)] + 0.4 * gen.normal(size=(20_000, 16))
    items = (items * np.exp(gen.normal(scale=0.3, size=(20_000, 1)))).astype(np.float32)
    items[gen.random(20_000) < 0.6] = 0.0  # ALS leaves items without interactions at zero
    queries = gen.normal(size=(300, 16)).astype(np.float32)
    exact = exact_top(queries, items, 50)
    idx = AnnIndex.build(items, nprobe=16)
    idx.index.nprobe = idx.index.nlist
    np.testing.assert_array_equal(np.sort(idx.search(queries, 50), axis=1), np.sort(exact, axis=1))
    idx.index.nprobe = 16
    assert recall_at(idx.search(queries, 50), exact) > 0.9
    assert not np.isin(idx.search(queries, 50), np.flatnonzero(~items.any(axis=1))).any()  # zeros not indexed


def test_stale_inner_product_index_is_rebuilt(tmp_path: Path) -> None:
    items = np.random.default_rng(0).normal(size=(2000, 8)).astype(np.float32)
    idx = AnnIndex.build(items)
    idx.save(tmp_path / "ann_x.faiss")
    from envs.ann import fingerprint

    assert AnnIndex.load(tmp_path / "ann_x.faiss", fingerprint(items)) is not None
    meta = tmp_path / "ann_x.faiss.json"
    meta.write_text(meta.read_text().replace(AnnIndex.KIND, "ivf-flat-ip"))  # as saved before the reduction
    assert AnnIndex.load(tmp_path / "ann_x.faiss", fingerprint(items)) is None


def test_world_tables_do_not_depend_on_the_rows_computed_together() -> None:
    """The tables' products are float64 rounded once (``envs.world.matmul_t``): a subset of users (a Ray worker's
    shard) or another block size gives the very same float32 values as the whole population, and they equal the
    exactly rounded product."""
    from envs import world as world_mod

    rng = np.random.default_rng(3)
    a = rng.normal(size=(37, 48)).astype(np.float32)
    b = rng.normal(size=(530, 48)).astype(np.float32)
    full = world_mod.matmul_t(a, b)
    assert full.dtype == np.float32 and full.shape == (37, 530)
    want = (a.astype(np.float64) @ b.astype(np.float64).T).astype(np.float32)
    np.testing.assert_array_equal(full, want)
    rows = np.array([5, 0, 36, 11])
    np.testing.assert_array_equal(world_mod.matmul_t(a[rows], b), full[rows])
    old = world_mod.MATMUL_BLOCK_CELLS
    try:
        world_mod.MATMUL_BLOCK_CELLS = 1  # blocks of 256 items
        np.testing.assert_array_equal(world_mod.matmul_t(a, b), full)
    finally:
        world_mod.MATMUL_BLOCK_CELLS = old
    assert world_mod.matmul_t(a, b, np.float64).dtype == np.float64
