"""New (cold-start) items in the simulator (envs/shift.py) and the incremental world update (envs/update.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from encoders.hashing import HashingEncoder
from envs.cf import fit_als
from envs.presets import build_world, preset_config, world_key
from envs.rollout_log import ROLLOUT_COLUMNS, write_rollout_log
from envs.shift import new_item_mask, sessions_with_new_items
from envs.update import add_items, fold_in_rows, main, update_world
from envs.world import World


@pytest.fixture(scope="module")
def cold_world() -> World:
    """The small preset with a fifth of its items new."""
    cfg = preset_config("small", {"catalog": {"new_item_share": 0.2}})
    return build_world(cfg, HashingEncoder(dim=64), progress=False)


def test_new_items_have_zero_factors_and_popularity(cold_world: World) -> None:
    new = cold_world.new_items
    assert new.sum() == 80  # 20% of 400
    assert not cold_world.item_factors[new].any()
    assert not cold_world.popularity[new].any()
    assert not cold_world.item_features[new, 0].any()  # the observed popularity feature
    assert cold_world.item_factors[~new].any(axis=1).mean() > 0.9  # old items were fitted
    for pop in cold_world.populations.values():  # nobody consumed a new item before the logs
        h = pop.history[pop.history >= 0]
        assert not new[h].any()
    # the hidden utility still sees them: their true attributes are drawn like the others'
    assert cold_world.catalog.quality[new].std() > 0.5


def test_new_item_share_zero_keeps_the_world_key() -> None:
    base = preset_config("small")
    zero = preset_config("small", {"catalog": {"new_item_share": 0.0}})
    some = preset_config("small", {"catalog": {"new_item_share": 0.1}})
    assert world_key(base, "h") == world_key(zero, "h") != world_key(some, "h")
    assert not new_item_mask(400, 0.0, 7).any()
    with pytest.raises(ValueError, match="new_item_share"):
        preset_config("small", {"catalog": {"new_item_share": 1.0}})


def test_world_saves_new_items(cold_world: World, tmp_path) -> None:
    cold_world.save(tmp_path / "w")
    back = World.load(tmp_path / "w")
    np.testing.assert_array_equal(back.new_items, cold_world.new_items)
    cands = np.array([[int(np.flatnonzero(cold_world.new_items)[0]), 1], [2, 3]])
    cands[1] = np.flatnonzero(~cold_world.new_items)[:2]
    assert sessions_with_new_items(cands, back.new_items).tolist() == [True, False]


def _synthetic(n_users: int = 120, n_items: int = 80, rank: int = 4, seed: int = 0):
    gen = np.random.default_rng(seed)
    p, q = gen.normal(size=(n_users, rank)), gen.normal(size=(n_items, rank))
    logits = p @ q.T
    users, items = np.nonzero(logits > np.quantile(logits, 0.8))
    return users, items, np.ones(len(users), np.float32)


def test_fold_in_recovers_a_held_out_users_factors() -> None:
    users, items, w = _synthetic()
    kw = dict(factors=4, regularization=0.1, iterations=30, alpha=10.0, seed=0)
    full = fit_als(users, items, w, 120, 80, **kw)
    u = 7
    rest = users != u
    part = fit_als(users[rest], items[rest], w[rest], 120, 80, **kw)  # the model without user u's data
    import scipy.sparse as sp

    row = sp.csr_matrix((10.0 * w[~rest], (np.zeros((~rest).sum(), int), items[~rest])), shape=(1, 80))
    x = fold_in_rows(part.item_factors, row, 0.1)[0]
    # factors rotate between fits: compare the scores over the catalog
    corr = np.corrcoef(x @ part.item_factors.T, full.user_factors[u] @ full.item_factors.T)[0, 1]
    assert corr > 0.9
    # against the full fit's own item factors the fold-in is ALS's last user step: the full fit's factor
    y = fold_in_rows(full.item_factors, row, 0.1)[0]
    np.testing.assert_allclose(y, full.user_factors[u], atol=0.05 * np.abs(full.user_factors[u]).max())
    assert not fold_in_rows(full.item_factors, sp.csr_matrix((1, 80)), 0.1).any()  # no data: zero


def _log(world: World, rows: list[tuple[str, int, int, bool]]) -> pd.DataFrame:
    """A rollout log of single clicks: (population, user, item, purchase)."""
    data = {c: [] for c in ROLLOUT_COLUMNS}
    for s, (pop, user, item, buy) in enumerate(rows):
        data["population"].append(pop)
        data["user"].append(user)
        data["session"].append(s)
        data["step"].append(0)
        data["candidates"].append(np.array([item, (item + 1) % world.n_items]))
        data["slate"].append(np.array([item]))
        data["log_propensity"].append(np.nan)
        data["click_rank"].append(0)
        data["clicked_item"].append(item)
        data["purchase"].append(buy)
        data["dwell"].append(30.0)
        data["reward"].append(1.0)
    return pd.DataFrame(data)


def test_update_folds_in_clicked_new_items_and_adds_popularity(cold_world: World) -> None:
    cfg = preset_config("small", {"catalog": {"new_item_share": 0.2}})
    new = np.flatnonzero(cold_world.new_items)
    old = np.flatnonzero(~cold_world.new_items)
    rows = [("train", u, int(new[0]), u % 2 == 0) for u in range(30)] + [("train", 3, int(old[0]), False)] * 4
    before_pop, before_f = cold_world.popularity.copy(), cold_world.item_factors.copy()
    upd, report = update_world(cold_world, cfg, _log(cold_world, rows))
    np.testing.assert_array_equal(cold_world.popularity, before_pop)  # the source is untouched
    np.testing.assert_array_equal(cold_world.item_factors, before_f)
    assert upd.popularity[new[0]] == 30 and upd.popularity[old[0]] == before_pop[old[0]] + 4
    assert upd.item_factors[new[0]].any() and not upd.new_items[new[0]]
    assert upd.new_items.sum() == cold_world.new_items.sum() - 1
    np.testing.assert_array_equal(upd.item_factors[old], before_f[old])  # fitted items keep their factors
    assert report["items_folded"] == 1 and report["clicks"] == 34
    # the folded-in item scores high for the users who clicked it
    users = upd.populations["train"].cf_user
    s = users[:30] @ upd.item_factors.T
    assert (s[:, new[0]] > np.median(s, axis=1)).mean() > 0.8
    # histories end with the clicks; the observed features see the popularity
    assert upd.populations["train"].history[0, -1] == new[0]
    assert upd.item_features[new[0], 0] > 0


def test_update_rejects_bad_logs(cold_world: World) -> None:
    cfg = preset_config("small")
    with pytest.raises(ValueError, match="outside the catalog"):
        update_world(cold_world, cfg, _log(cold_world, [("train", 0, 10_000, False)]))
    with pytest.raises(ValueError, match="outside population"):
        update_world(cold_world, cfg, _log(cold_world, [("train", 10_000, 1, False)]))
    with pytest.raises(ValueError, match="population"):
        update_world(cold_world, cfg, _log(cold_world, [("nobody", 0, 1, False)]))
    with pytest.raises(ValueError, match="population indices"):
        update_world(cold_world, cfg, _log(cold_world, [("train", 0, 1, False)]).assign(user=["u:abc"]))


def test_add_items_appends_cold_items(cold_world: World) -> None:
    enc = HashingEncoder(dim=64)
    table = pd.DataFrame({"id": ["n1", "n2"], "text": ["a sci-fi novel", "a cookbook"],
                          "category": ["scifi", "cooking"], "price": [10.0, 20.0]})
    out = add_items(cold_world, table, enc)
    assert out.n_items == cold_world.n_items + 2 and out.new_items[-2:].all()
    assert not out.item_factors[-2:].any() and not out.popularity[-2:].any()
    assert out.catalog.category_names[out.catalog.category[-1]] == "cooking"
    np.testing.assert_allclose(out.item_emb[-2:], enc.encode(["a sci-fi novel", "a cookbook"]))
    with pytest.raises(ValueError, match="already in the catalog"):
        add_items(cold_world, table.assign(id=["item-00001", "n3"]), enc)
    with pytest.raises(ValueError, match="unknown categor"):
        add_items(cold_world, table.assign(category=["scifi", "poetry"]), enc)
    with pytest.raises(ValueError, match="encoder"):
        add_items(cold_world, table, HashingEncoder(dim=32))
    with pytest.raises(ValueError, match="empty text"):
        add_items(cold_world, table.assign(text=["ok", " "]), enc)


def test_cli_writes_a_new_folder_and_leaves_the_source(cold_world: World, tmp_path, capsys) -> None:
    src = tmp_path / "w"
    cold_world.save(src)
    before = (src / "arrays.npz").read_bytes()
    new = int(np.flatnonzero(cold_world.new_items)[0])
    log = write_rollout_log(_log(cold_world, [("train", u, new, False) for u in range(10)]), tmp_path / "l.parquet")
    args = ["--world", str(src), "--logs", str(log), "--preset", "small", "--set", "catalog.new_item_share=0.2"]
    assert main([*args, "--out", str(tmp_path / "w2"), "--as-preset"]) == 0
    upd = World.load(tmp_path / "w2" / "world")
    assert (tmp_path / "w2" / "env.yaml").is_file() and (tmp_path / "w2" / "update.json").is_file()
    assert upd.popularity[new] == 10 and upd.item_factors[new].any()
    assert (src / "arrays.npz").read_bytes() == before
    preset_config(str(tmp_path / "w2"))  # a loadable preset directory
    with pytest.raises(SystemExit):
        main([*args, "--out", str(tmp_path / "w2")])  # exists: refused
    assert "exists" in capsys.readouterr().err


def test_new_items_in_a_factored_world() -> None:
    """Cold items and the scalable path together: the list-free logging log is remapped, the core steps."""
    import dataclasses

    from envs.core import BatchedCore

    cfg = dataclasses.replace(preset_config("small", {"catalog": {"new_item_share": 0.2}}), table_budget_mb=0.0)
    world = build_world(cfg, HashingEncoder(dim=32), progress=False)
    assert set(world.meta["tables"].values()) == {"factored"} and world.meta["new_items"] == 80
    new = world.new_items
    assert not world.item_factors[new].any() and not world.popularity[new].any()
    assert world.item_factors[~new].any(axis=1).mean() > 0.9
    core = BatchedCore(world, cfg, 16)
    core.reset_rows(np.arange(16), np.arange(16, dtype=np.uint64))
    core.observe()
    assert np.isfinite(core.step(np.tile(np.arange(cfg.slate_size), (16, 1))).reward).all()
