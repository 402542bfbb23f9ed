"""Calibration from real logs (envs.calibrate): end to end on a generated MovieLens-format fixture, the preset
loading into an env, the taste helpers, the command line and bad input; and the fidelity target on the real
ml-latest-small. The ρ / a / q fit is tested in test_calibrate_fitting.py.

Every fixture is generated in tmp_path with the hashing encoder (seconds); only the last test reads the real data
(skips without it, fails without it under CI).
"""

from __future__ import annotations

import inspect
import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from conftest import require_movielens

import envs.calibrate.cli
import envs.calibrate.pipeline
import envs.core
import envs.data.columns
import envs.data.files
import envs.data.movielens
import envs.data.preprocess
from configs.data import CalibrationConfig, PreprocessConfig
from configs.loader import from_dict
from configs.schema import EncoderConfig, EnvConfig
from encoders.factory import make_encoder
from envs.calibrate import METRICS, MODELS, calibrate
from envs.calibrate.cli import _parse_sets, build_parser, check_data_spec, main
from envs.calibrate.fidelity import _draw_choices
from envs.calibrate.tastes import center_embeddings, event_order, last_items, semantic_taste
from envs.data import load_logs
from envs.factored import FactoredTables
from envs.presets import load_world, preset_config
from envs.world import World

GENRES = ["Action", "Comedy", "Drama", "Horror", "Romance", "Sci-Fi"]
TINY_ENV = ["env.n_candidates=10", "env.slate_size=3", "env.max_steps=5", "calibrate.history_len=5",
            "calibrate.sim_sessions=2", "calibrate.rho_grid=6", "calibrate.fit_rounds=2"]


def write_movielens(root: Path, n_users: int = 40, n_items: int = 90, per_user: int = 24, seed: int = 0) -> Path:
    """A small ml-latest-small-format directory: users prefer some genres, rate in time order."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    item_genres = [rng.choice(len(GENRES), size=rng.integers(1, 3), replace=False) for _ in range(n_items)]
    movies = pd.DataFrame({
        "movieId": np.arange(1, n_items + 1),
        "title": [f"Movie Number {j}, The ({1980 + j % 40})" for j in range(n_items)],
        "genres": ["|".join(GENRES[g] for g in gs) for gs in item_genres],
    })
    movies.to_csv(root / "movies.csv", index=False)
    first = np.array([gs[0] for gs in item_genres])
    rows = []
    for u in range(n_users):
        liked = rng.choice(len(GENRES), size=2, replace=False)
        logits = np.where(np.isin(first, liked), 2.0, 0.0) + rng.normal(0, 0.5, n_items)
        p = np.exp(logits) / np.exp(logits).sum()
        n = per_user + int(rng.integers(0, 10))
        items = rng.choice(n_items, size=n, replace=False, p=p)
        t0 = 1_100_000_000 + int(rng.integers(0, 10**7))
        for k, i in enumerate(items):
            rating = float(np.clip(np.round(2 * (3.5 + rng.normal(0, 1))) / 2, 0.5, 5.0))
            rows.append((u + 1, int(i) + 1, rating, t0 + 3600 * k))
    pd.DataFrame(rows, columns=["userId", "movieId", "rating", "timestamp"]).to_csv(root / "ratings.csv", index=False)
    pd.DataFrame({"userId": [1, 2], "movieId": [1, 2], "tag": ["funny", "dark"], "timestamp": [1, 2]}).to_csv(
        root / "tags.csv", index=False
    )
    return root


@pytest.fixture(scope="module")
def tiny_preset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, int]:
    base = tmp_path_factory.mktemp("calib")
    data = write_movielens(base / "ml")
    out = base / "preset"
    code = main(["--data", f"movielens:{data}", "--out", str(out), "--encoder", "hashing", "--quiet",
                 "--set", f"encoder.cache_dir={base / 'cache'}", *[x for s in TINY_ENV for x in ("--set", s)]])
    return out, json.loads((out / "fidelity.json").read_text()), code


def test_end_to_end_writes_a_loadable_preset(tiny_preset: tuple[Path, dict, int]) -> None:
    out, report, code = tiny_preset
    assert code == 0
    for name in ("env.yaml", "fidelity.json", "fidelity.md", "world/world.json", "world/arrays.npz",
                 "plots/popularity.png", "plots/genre_mix.png", "plots/activity.png", "plots/ranking.png"):
        assert (out / name).is_file(), name
    assert "preset_dir" not in (out / "env.yaml").read_text()
    cfg = preset_config(str(out))
    assert cfg.preset_dir == str(out.resolve()) and cfg.preset.startswith("calibrated:movielens:")
    assert (cfg.n_candidates, cfg.slate_size, cfg.max_steps) == (10, 3, 5)
    assert cfg.user_model.affinity_scale == report["fit"]["affinity_scale"] > 0
    assert cfg.user_model.no_click_utility == report["fit"]["no_click_utility"]
    world = load_world(cfg)
    assert set(world.populations) == {"train", "heldout"}
    assert world.populations["train"].size + world.populations["heldout"].size == report["split"]["users"]
    assert world.catalog.cf_factor.shape == (world.n_items, cfg.catalog.cf_dim)
    assert np.allclose(np.linalg.norm(world.populations["train"].sem_taste, axis=1), 1.0, atol=1e-5)

    from envs import RecVectorEnv

    env = RecVectorEnv(num_envs=4, config=cfg, world=world)
    obs, _ = env.reset(seed=0)
    assert obs["candidates"].shape == (4, 10)
    for _ in range(6):
        obs, reward, terminated, truncated, _ = env.step(np.tile(np.arange(3), (4, 1)))
        assert terminated.dtype == truncated.dtype == bool
        assert np.isfinite(reward).all()
    heldout = RecVectorEnv(num_envs=2, config=cfg, world=world, population="heldout")
    heldout.reset(seed=1)
    heldout.step(np.tile(np.arange(3), (2, 1)))


def test_fidelity_json_has_the_four_models_and_metrics(tiny_preset: tuple[Path, dict, int]) -> None:
    out, report, _ = tiny_preset
    assert set(report["models"]) == set(MODELS) == {"simulator", "mf", "popularity", "llm_sim"}
    for model in MODELS:
        assert set(report["models"][model]) == set(METRICS) == {"auc", "ndcg@10", "recall@10"}
        for v in report["models"][model].values():
            assert 0.0 <= v <= 1.0
    assert {"split", "distributions", "timings"} <= set(report)
    assert report["split"]["holdout"] == 0.2 and report["split"]["users_evaluated"] > 0
    dist = report["distributions"]
    assert set(dist) >= {"popularity", "genre_mix", "activity"}
    shares = dist["genre_mix"]["shares"]
    assert set(shares) == {"real", "simulated_choices", "simulated_sessions"}
    assert sum(shares["real"]) == pytest.approx(1.0, abs=1e-3)
    # simulated choices draw as many items per user as the real user held out
    assert dist["popularity"]["simulated_choices"]["events"] == dist["popularity"]["real"]["events"]
    assert report["timings"]["total"] > 0
    md = (out / "fidelity.md").read_text()
    assert "| simulator |" in md and "| llm_sim |" in md and "plots/popularity.png" in md
    assert report["item_embeddings"]["centred"] is True and "mean" not in report["item_embeddings"]


def test_calibration_past_the_table_budget_reports_what_the_dense_tables_give(
    tiny_preset: tuple[Path, dict, int], tmp_path: Path
) -> None:
    """A log whose per-user tables exceed ``env.table_budget_mb`` (forced with 0) calibrates on the factored
    path: the fidelity report reads the factors a block of users at a time and matches the dense report."""
    _, dense, _ = tiny_preset
    data = write_movielens(tmp_path / "ml")  # the fixture's log
    out = tmp_path / "preset"
    code = main(["--data", f"movielens:{data}", "--out", str(out), "--encoder", "hashing", "--quiet",
                 "--set", f"encoder.cache_dir={tmp_path / 'cache'}", "--set", "env.table_budget_mb=0",
                 *[x for s in TINY_ENV for x in ("--set", s)]])
    assert code == 0
    report = json.loads((out / "fidelity.json").read_text())
    cfg = preset_config(str(out))
    assert isinstance(envs.core.BatchedCore(load_world(cfg), cfg, 1).tables, FactoredTables)
    # equal on this log up to float rounding, which can reorder near-ties (a retrieval list, a top-10) on some
    # machine: hence tolerances far above rounding and below what a wrong score moves (no CF term: AUC −0.03)
    for model in MODELS:
        for metric in METRICS:
            assert report["models"][model][metric] == pytest.approx(dense["models"][model][metric], abs=0.01)
    assert report["fit"]["no_click_utility"] == pytest.approx(dense["fit"]["no_click_utility"], rel=0.02)
    got, want = report["distributions"]["popularity"], dense["distributions"]["popularity"]
    assert got["simulated_choices"]["events"] == want["simulated_choices"]["events"] == want["real"]["events"]
    assert got["simulated_choices"]["gini"] == pytest.approx(want["simulated_choices"]["gini"], abs=0.02)


def test_fidelity_ranking_on_a_sample_of_users(tmp_path: Path) -> None:
    data = write_movielens(tmp_path / "ml", n_users=30, n_items=60, seed=4)
    log = load_logs(f"movielens:{data}")
    encoder = make_encoder(EncoderConfig(kind="hashing", hashing_dim=64, cache_dir=str(tmp_path / "cache")))
    env = {"n_candidates": 8, "slate_size": 2, "max_steps": 4}
    cfg = CalibrationConfig(history_len=5, sim_sessions=1, rho_grid=5, fit_rounds=2, fidelity_users=12)
    report = calibrate(log, cfg, encoder, tmp_path / "p", env_overrides=env, progress=None)
    split = report["split"]
    assert split["users_with_held_out"] == 30 and split["fidelity_users"] == 12 and 0 < split["users_evaluated"] <= 12
    assert "a seeded sample of 12 of the 30 users" in (tmp_path / "p" / "fidelity.md").read_text()
    with pytest.raises(ValueError, match="fidelity_users"):
        CalibrationConfig(fidelity_users=-1)


def test_simulated_choices_do_not_depend_on_the_block_size() -> None:
    gen = np.random.default_rng(0)
    util = gen.normal(size=(7, 30)).astype(np.float32)
    exclude = (sp.random(7, 30, density=0.3, random_state=1, format="csr") > 0).tocsr()
    n_draw = gen.integers(0, 12, 7)
    n_draw[2] = 30  # more than the user may draw: capped at the items not excluded
    users, items = _draw_choices([(0, 7, util)], exclude, n_draw, seed=5)
    blocks = [(lo, min(lo + 3, 7), util[lo:lo + 3]) for lo in range(0, 7, 3)]
    b_users, b_items = _draw_choices(blocks, exclude, n_draw, seed=5)
    np.testing.assert_array_equal(b_users, users)
    np.testing.assert_array_equal(b_items, items)
    allowed = ~exclude.toarray()
    for u in range(7):
        mine = items[users == u]
        assert mine.size == min(n_draw[u], allowed[u].sum()) == np.unique(mine).size
        assert allowed[u, mine].all()


def test_calibrate_function_and_explicit_override(tmp_path: Path) -> None:
    data = write_movielens(tmp_path / "ml", n_users=20, n_items=70, seed=3)
    log = load_logs(f"movielens:{data}")
    encoder = make_encoder(EncoderConfig(kind="hashing", hashing_dim=64, cache_dir=str(tmp_path / "cache")))
    cfg = CalibrationConfig(heldout_users=0.0, history_len=5, sim_sessions=1, rho_grid=5, fit_rounds=2)
    env = {"n_candidates": 8, "slate_size": 2, "max_steps": 4, "user_model": {"no_click_utility": 2.5}}
    lines: list[str] = []
    report = calibrate(log, cfg, encoder, tmp_path / "p", env_overrides=env, progress=lines.append)
    assert any("preprocessed" in x for x in lines) and any("held-out ranking" in x for x in lines)
    assert report["fit"]["no_click_utility"] == 2.5  # explicit values win over the calibration
    cfg_env = preset_config(str(tmp_path / "p"))
    assert cfg_env.user_model.no_click_utility == 2.5
    world = load_world(cfg_env)
    # heldout_users = 0: both populations are all the real users
    assert world.populations["train"].size == world.populations["heldout"].size == log.n_users
    with pytest.raises(ValueError, match="preset_dir"):
        calibrate(log, cfg, encoder, tmp_path / "q", env_overrides={"preset_dir": "x"})


def test_semantic_taste_and_history_helpers(tmp_path: Path) -> None:
    emb = np.eye(4, dtype=np.float32)[[0, 1, 2, 3, 0]]  # (M=5, D=4)
    theta = semantic_taste(np.array([0, 0, 1]), np.array([0, 4, 1]), np.array([1.0, 1.0, 2.0]), emb, 3, center=False)
    assert np.allclose(theta[0], [1, 0, 0, 0]) and np.allclose(theta[1], [0, 1, 0, 0]) and not theta[2].any()
    centred = semantic_taste(np.array([0]), np.array([1]), np.array([1.0]), emb, 1, center=True)
    assert centred[0, 1] > 0 and centred[0, 0] < 0  # the catalog mean (mostly dimension 0) is taken out
    shared = np.array([[3.0, 1.0, 0.0], [3.0, -1.0, 0.0], [3.0, 0.0, 1.0], [3.0, 0.0, -1.0]], np.float32)
    cen, mean = center_embeddings(shared / np.linalg.norm(shared, axis=1, keepdims=True))  # (4, 3), (3,)
    assert cen[:, 0] == pytest.approx(np.zeros(4), abs=1e-6)  # the shared direction is gone
    assert np.linalg.norm(cen, axis=1) == pytest.approx(np.ones(4), abs=1e-6) and mean[0] > 0.9
    assert cen[0] @ cen[1] == pytest.approx(-1.0, abs=1e-6)  # raw cosine 0.8: opposite once centred
    same, _ = center_embeddings(np.tile([[0.6, 0.8]], (3, 1)))
    assert not same.any()  # a row equal to the mean stays zero (no NaN)
    data = write_movielens(tmp_path / "ml", n_users=3, n_items=30, per_user=6, seed=1)
    log = load_logs(f"movielens:{data}")
    u, i, age = event_order(log)
    hist = last_items(log, 4)
    for user in range(log.n_users):
        mine = i[u == user][np.argsort(-age[u == user])]  # oldest first
        assert hist[user].tolist() == mine[-4:].tolist()  # most recent last


def test_generic_logs_with_implicit_events_and_prices(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    n_items, n_users = 70, 25
    cats = ["shoes", "hats", "bags"]
    pd.DataFrame({
        "id": [f"sku{j}" for j in range(n_items)],
        "text": [f"A {['red', 'blue', 'green'][j % 3]} {cats[j % 3][:-1]} number {j}" for j in range(n_items)],
        "category": [cats[j % 3] for j in range(n_items)],
        "price": rng.uniform(5, 80, n_items).round(2),
    }).to_csv(tmp_path / "items.csv", index=False)
    rows = []
    for u in range(n_users):
        fav = u % 3
        items = rng.choice(n_items, size=18, replace=False, p=np.where(np.arange(n_items) % 3 == fav, 3.0, 1.0)
                           / np.where(np.arange(n_items) % 3 == fav, 3.0, 1.0).sum())
        for k, i in enumerate(items):
            event = ["view", "click", "purchase"][int(rng.integers(0, 3))]
            rows.append((f"user{u}", f"sku{i}", event, 1_600_000_000 + 600 * k + 86_400 * u, ""))
    pd.DataFrame(rows, columns=["user", "item", "event", "timestamp", "value"]).to_csv(tmp_path / "ev.csv",
                                                                                      index=False)
    out = tmp_path / "preset"
    code = main(["--data", f"logs:{tmp_path / 'items.csv'},{tmp_path / 'ev.csv'}", "--out", str(out), "--quiet",
                 "--encoder", "hashing", "--set", f"encoder.cache_dir={tmp_path / 'cache'}",
                 *[x for s in TINY_ENV for x in ("--set", s)]])
    assert code == 0
    cfg = preset_config(str(out))
    assert cfg.catalog.source == str(tmp_path / "items.csv")
    report = json.loads((out / "fidelity.json").read_text())
    assert report["fit"]["quality_features"] == ["popularity"]  # no ratings in the log
    world = load_world(cfg)
    assert world.catalog.price.max() > 5 and world.catalog.category_names == sorted(cats)


# The observed LLM signal (docs/llm_signal.md): embeddings with a strong common component


def write_popular_movielens(root: Path, n_users: int = 60, n_items: int = 200, per_user: int = 20,
                            seed: int = 0) -> tuple[Path, np.ndarray]:
    """An ml-latest-small-format directory with one genre per movie, users who like two genres, and item popularity.

    Returns:
        (the directory, float (M,) each movie's popularity logit; movie ``j`` is ``Movie Number j``).
    """
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    genre = rng.integers(0, len(GENRES), n_items)
    pop = rng.normal(size=n_items)
    pd.DataFrame({"movieId": np.arange(1, n_items + 1),
                  "title": [f"Movie Number {j} ({1980 + j % 40})" for j in range(n_items)],
                  "genres": [GENRES[g] for g in genre]}).to_csv(root / "movies.csv", index=False)
    rows = []
    for u in range(n_users):
        logits = 3.0 * np.isin(genre, rng.choice(len(GENRES), size=2, replace=False)) + pop
        p = np.exp(logits - logits.max())
        for k, i in enumerate(rng.choice(n_items, size=per_user, replace=False, p=p / p.sum())):
            rows.append((u + 1, int(i) + 1, float(rng.integers(1, 11)) / 2, 1_100_000_000 + 3600 * k + 10**6 * u))
    pd.DataFrame(rows, columns=["userId", "movieId", "rating", "timestamp"]).to_csv(root / "ratings.csv", index=False)
    return root, pop


class CommonComponentEncoder:
    """A test encoder shaped like MiniLM on MovieLens: every vector shares a large common direction (``|ē| ≈ 0.9``);
    the genre sits in a few dimensions; how far a movie leans on the common direction (its "genericness") falls with
    its popularity, so the closeness to the catalog mean ranks the unpopular movies first."""

    dim = 16

    def __init__(self, popularity: np.ndarray) -> None:
        self.popularity = popularity
        self.name = "test-common-component-v1"

    def encode(self, texts: list[str]) -> np.ndarray:
        """float32 (n, 16) unit vectors: common direction, one-hot genre, item noise (see the class docstring)."""
        genres = [g.lower() for g in GENRES]
        out = np.zeros((len(texts), self.dim), np.float32)
        for r, text in enumerate(texts):
            j = int(re.search(r"Movie Number (\d+)", text).group(1))
            v = np.zeros(self.dim)
            v[0] = 3.0 * (1.0 - 0.5 * np.tanh(self.popularity[j]))
            for g in re.search(r"Genres: ([^.]*)", text).group(1).split(", "):
                v[1 + genres.index(g)] += 1.0
            v[1 + len(GENRES):] = 0.3 * np.random.default_rng(j).normal(size=self.dim - 1 - len(GENRES))
            out[r] = v / np.linalg.norm(v)
        return out


@pytest.fixture(scope="module")
def common_component_presets(tmp_path_factory: pytest.TempPathFactory) -> dict[bool, tuple[Path, dict]]:
    """The same log calibrated with and without centring the item embeddings: {centred: (preset dir, report)}."""
    base = tmp_path_factory.mktemp("common")
    data, pop = write_popular_movielens(base / "ml")
    log = load_logs(f"movielens:{data}")
    env = {"n_candidates": 10, "slate_size": 3, "max_steps": 5}
    out = {}
    for centred in (True, False):
        cfg = CalibrationConfig(history_len=5, sim_sessions=1, rho_grid=5, fit_rounds=2, center_embeddings=centred)
        report = calibrate(log, cfg, CommonComponentEncoder(pop), base / f"p{centred}", env_overrides=env)
        out[centred] = (base / f"p{centred}", report)
    return out


def test_centred_observed_llm_signal_ranks_held_out_items_above_random(
    common_component_presets: dict[bool, tuple[Path, dict]],
) -> None:
    """With a strong common component the uncentred pooled state ranks items by closeness to the catalog mean
    (no better than random here); centred, the observed llm_sim ranks each user's held-out items well."""
    centred = common_component_presets[True][1]["models"]["llm_sim"]["auc"]
    raw = common_component_presets[False][1]["models"]["llm_sim"]["auc"]
    assert common_component_presets[False][1]["item_embeddings"]["raw_mean_norm"] > 0.8
    assert centred > 0.65, centred
    assert raw < 0.58, raw
    assert centred - raw > 0.15
    sim = common_component_presets[True][1]["models"]["simulator"]["auc"]
    assert sim > 0.65  # the hidden utility still ranks them (the fit follows the centred embeddings)


def test_centred_world_is_what_the_env_and_the_serving_table_read(
    common_component_presets: dict[bool, tuple[Path, dict]], tmp_path: Path,
) -> None:
    """The centred embeddings are the world's item_emb; init_state, the env's state_sim and the exported item table
    (what serving pools a user's history with) are all built from them; without centring the world keeps the
    encoder's vectors bit for bit."""
    from agents.export import write_items
    from envs.calibrate.tastes import center_embeddings
    from envs.users import pool_history

    out, _ = common_component_presets[True]
    cfg = preset_config(str(out))
    world = load_world(cfg)
    emb = world.item_emb  # (M, D)
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert np.linalg.norm(emb.mean(axis=0)) < 0.2  # the raw catalog mean is ~0.9 long
    info = world.meta["item_emb"]
    assert info["centred"] is True and len(info["mean"]) == emb.shape[1]
    raw_out, _ = common_component_presets[False]
    raw = load_world(preset_config(str(raw_out)))
    assert raw.meta["item_emb"] == {"centred": False, "raw_mean_norm": info["raw_mean_norm"]}
    np.testing.assert_array_equal(center_embeddings(raw.item_emb)[0], emb)
    np.testing.assert_allclose(np.asarray(info["mean"], np.float32), raw.item_emb.mean(axis=0), atol=1e-6)
    for pop in world.populations.values():
        np.testing.assert_array_equal(pop.init_state, pool_history(pop.history, emb, cfg.state_decay))
    tab = world.tables("train", 8, cfg.user_model.affinity_scale, cfg.user_model.quality_weight)
    np.testing.assert_allclose(tab.state_sim, world.populations["train"].init_state @ emb.T, rtol=1e-5, atol=1e-6)
    write_items(world, tmp_path / "items.npz")
    with np.load(tmp_path / "items.npz") as z:
        np.testing.assert_array_equal(z["item_emb"], emb)


def test_default_presets_worlds_are_not_centred(small_cfg: EnvConfig, small_world: World) -> None:
    """Centring is the calibration's: the built-in presets' world keys are the ones before it, and their worlds
    hold the encoder's vectors and the history pooled from them."""
    from encoders.hashing import HashingEncoder
    from envs.presets import world_key
    from envs.users import pool_history

    enc = HashingEncoder(dim=64)
    assert world_key(preset_config("default"), enc.name) == "783c843dc019d9c9"
    assert world_key(preset_config("default"), "transformer:model:33fac7a9c422") == "3ef433fdef456828"
    assert world_key(preset_config("small"), enc.name) == "3b21def4043ec455"
    # the session intent is drawn at each session's start, not built into the world; the user model's other
    # fields are
    default = preset_config("default")
    with_intent = replace(default, user_model=replace(default.user_model, session_intent=2.0))
    assert world_key(with_intent, enc.name) == world_key(default, enc.name)
    other = replace(default, user_model=replace(default.user_model, seed=default.user_model.seed + 1))
    assert world_key(other, enc.name) != world_key(default, enc.name)
    np.testing.assert_array_equal(small_world.item_emb, enc.encode(small_world.catalog.texts).astype(np.float32))
    for pop in small_world.populations.values():
        np.testing.assert_array_equal(pop.init_state,
                                      pool_history(pop.history, small_world.item_emb, small_cfg.state_decay))
    assert "item_emb" not in small_world.meta


@pytest.mark.parametrize("spec", ["bogus", "movielens:", "logs:onlyitems.csv", "logs:,events.csv", "csv:x"])
def test_bad_data_spec_is_a_clear_error(spec: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValueError, match="movielens:PATH"):
        check_data_spec(spec)
    with pytest.raises(SystemExit) as exc:
        main(["--data", spec, "--out", str(tmp_path / "out"), "--quiet"])
    assert exc.value.code == 2
    assert "movielens:PATH" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # rejected before any work


def test_missing_directory_and_bad_set_are_clear_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--data", f"movielens:{tmp_path / 'nope'}", "--out", str(tmp_path / "o"), "--quiet",
              "--encoder", "hashing"])
    assert "no such directory" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--data", f"movielens:{tmp_path}", "--out", str(tmp_path / "o"), "--set", "n_candidates=5"])
    assert "--set keys must start with one of" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--data", f"movielens:{tmp_path}", "--out", str(tmp_path / "o"), "--set", "calibrate.holdout=2"])
    assert "holdout" in capsys.readouterr().err


# What the user can type: every option an error message suggests exists on the command line


def _suggested_flag(message: str) -> list[str]:
    """The first ``on the command line, --flag value`` a message suggests, as argv items ([] if none)."""
    m = re.search(r"on the command line, (--[a-z-]+) ([^\s,;)]+)", message)
    return [m.group(1), m.group(2)] if m else []


@pytest.mark.parametrize("layout", ["logs", "movielens"])
def test_following_the_suggested_flags_reads_the_log(layout: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """Latin-1 text, an unknown event / a non-numeric rating and an unknown item: each error names a flag to type,
    and typing the flags it names, one after the other, gets the log read."""
    if layout == "logs":
        _write_bytes(tmp_path / "items.csv", "id,text\ni1,Caf\xe9 cr\xe8me\ni2,Tea\n".encode("latin-1"))
        _write_bytes(tmp_path / "ev.csv", b"user,item,event,timestamp\nu,i1,view,1600000000\nu,i2,swipe,1600000001\n"
                     b"u,i9,view,1600000002\nu,i2,view,1600000003\n")
        spec = f"logs:{tmp_path / 'items.csv'},{tmp_path / 'ev.csv'}"
        expected = ["--encoding", "latin-1", "--on-bad-rows", "skip", "--on-missing-items", "skip"]
    else:
        root = write_movielens(tmp_path / "ml", n_users=3, n_items=20, per_user=3)
        movies = (root / "movies.csv").read_bytes().replace(b"Movie Number 1,", "Movie N\xba 1,".encode("latin-1"))
        (root / "movies.csv").write_bytes(movies)
        with (root / "ratings.csv").open("a") as f:
            f.write("1,2,four,1100000000\n1,99,4.0,1100000001\n")
        spec = f"movielens:{root}"
        expected = ["--encoding", "latin-1", "--on-bad-rows", "skip"]  # missing movies follow --on-bad-rows
    read: list = []
    monkeypatch.setattr(envs.calibrate.cli, "calibrate", lambda log, *a, **k: read.append(log) or {"models": {},
                                                                                                  "timings": {}})
    argv = ["--data", spec, "--out", str(tmp_path / "out"), "--quiet", "--encoder", "hashing"]
    typed: list[str] = []
    for _ in range(4):
        try:
            assert main(argv + typed) == 0
            break
        except SystemExit as exc:
            assert exc.code == 2
            flag = _suggested_flag(capsys.readouterr().err)
            assert flag, "the error suggests no command-line flag"
            typed += flag
    assert typed == expected and len(read) == 1 and read[0].n_events >= 2


def _write_bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_every_suggestion_in_the_data_modules_is_accepted_by_the_cli() -> None:
    """Scans the messages of the real-data modules for command-line suggestions; each must parse and validate."""
    modules = (envs.data.files, envs.data.columns, envs.data.movielens, envs.data.preprocess, envs.calibrate.pipeline)
    source = "\n".join(inspect.getsource(m) for m in modules)
    hints = re.findall(r"option_hint\('([a-z_]+)', '([^']+)'\)", source)
    assert {h[0] for h in hints} == {"on_bad_rows", "on_missing_items", "encoding"}
    parser = build_parser()
    for name, value in hints:
        args = parser.parse_args(["--data", "logs:a,b", "--out", "o", f"--{name.replace('_', '-')}", value])
        assert getattr(args, name) == value
    sets = re.findall(r"--set ([a-z_]+\.[a-z_]+=[0-9]+)", source)
    assert len(sets) >= 3, sets
    configs = {"calibrate": CalibrationConfig, "preprocess": PreprocessConfig}
    for item in sets:
        for section, values in _parse_sets([item]).items():
            from_dict(configs[section], values, section)  # a known key with a valid value


@pytest.mark.expensive
def test_movielens_simulator_ranks_at_least_as_well_as_mf(tmp_path: Path) -> None:
    """The target: on ml-latest-small's temporal 80/20 split the simulator's NDCG@10 and AUC are >= the ALS's, and
    the observed llm_sim ranks the held-out items well above random."""
    code = main(["--data", f"movielens:{require_movielens()}", "--out", str(tmp_path / "ml"), "--quiet"])
    assert code == 0
    models = json.loads((tmp_path / "ml" / "fidelity.json").read_text())["models"]
    assert models["simulator"]["ndcg@10"] >= models["mf"]["ndcg@10"] > models["popularity"]["ndcg@10"]
    assert models["simulator"]["auc"] >= models["mf"]["auc"] > models["popularity"]["auc"]
    assert models["mf"]["ndcg@10"] > 0.11 and models["simulator"]["auc"] > 0.88
    # the observed LLM signal (centred embeddings) ranks the held-out items well above random (0.67 uncentred)
    assert models["llm_sim"]["auc"] > 0.75


def test_calibrated_world_keeps_held_out_real_items_and_evaluate_reports_them(
        tiny_preset: tuple[Path, dict, int], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Each simulated user carries its real user's held-out items (not met in train); evaluate scores slates on them;
    a world folder written before (no such arrays) still loads, without them."""
    import shutil

    import evaluate

    out, report, _ = tiny_preset
    world = World.load(out / "world")
    n_held = 0
    for pop in world.populations.values():
        assert pop.has_test_items and pop.test_indptr.shape == (pop.size + 1,)
        for u in range(pop.size):
            row = pop.test_items[pop.test_indptr[u]:pop.test_indptr[u + 1]]
            assert row.size > 0  # every fixture user has 24 ratings, so a test split
            assert np.all(np.diff(row) > 0) and row.min() >= 0 and row.max() < world.n_items
            assert not set(row.tolist()) & set(pop.history[u][pop.history[u] >= 0].tolist())  # not seen in train
            n_held += row.size
    assert 0 < n_held <= report["split"]["test_events"]

    rep = tmp_path / "report"
    evaluate.main(["--preset", str(out), "--encoder", "hashing", "--episodes", "12", "--seeds", "1", "--rankers",
                   "random,greedy-llm", "--reference", "random", "--no-progress", "--out", str(rep),
                   "--set", "eval.bootstrap=100", "--set", f"encoder.cache_dir={tmp_path / 'cache'}"])
    results = json.loads((rep / "results.json").read_text())
    for row in results["rankers"].values():
        for m in ("precision_real", "recall_real", "f1_real"):
            assert 0.0 <= row[m]["mean"] <= 1.0
    assert "P@3 real" in capsys.readouterr().out

    old = tmp_path / "old_world"
    shutil.copytree(out / "world", old)
    arrays = dict(np.load(old / "arrays.npz"))
    np.savez(old / "arrays.npz", **{k: v for k, v in arrays.items() if "_test_" not in k})
    assert not any(p.has_test_items for p in World.load(old).populations.values())
