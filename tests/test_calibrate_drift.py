"""The drift rate's fit (envs/calibrate/drift.py): the lag profile on fabricated sequences, the simulated profiles'
response to η, the interpolation, and calibration end to end on logs whose sessions wander and logs whose do not."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import GENRES, write_genre_log

from configs.data import CalibrationConfig
from configs.schema import EncoderConfig
from encoders.factory import make_encoder
from envs.calibrate import calibrate
from envs.calibrate.drift import DRIFT_GRID, LagProfile, fit_drift_rate, lag_profile, simulated_lag_profiles
from envs.data import load_logs
from envs.presets import preset_config


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_lag_profile_counts_pairs_within_sessions_only() -> None:
    emb = np.eye(4)  # items 0..3 orthogonal: a pair's cosine is 1 when it is the same item
    sessions = np.array([0, 0, 0, 1, 1])
    items = np.array([0, 0, 1, 2, 2])
    prof = lag_profile(sessions, items, 3.0 * emb, lags=(1, 2))  # cosines: the scale does not matter
    assert prof.pairs == (3, 1)  # lag 1: (0,0), (0,1), (2,2); lag 2: (0,1); nothing across sessions
    assert prof.cosine == pytest.approx((2 / 3, 0.0))
    assert prof.decay == pytest.approx(2 / 3)
    assert np.isnan(lag_profile(sessions, items, emb, lags=(1, 5)).cosine[1])
    for bad in ((), (0, 1), (2, 1)):
        with pytest.raises(ValueError, match="lags must be ascending"):
            lag_profile(sessions, items, emb, lags=bad)
    with pytest.raises(ValueError, match="differ in length"):
        lag_profile(sessions, items[:3], emb)


def test_lag_profile_sees_a_session_that_wanders() -> None:
    gen = np.random.default_rng(0)
    emb = _unit(gen.normal(size=(3000, 16)))
    walk_s, walk_i, iid_i = [], [], []
    for s in range(80):
        x = _unit(gen.normal(size=16))
        for _ in range(12):  # each item near the last: a random walk through the catalog
            x = _unit(x + 0.5 * _unit(gen.normal(size=16)))
            walk_i.append(int(np.argmax(emb @ x)))
            walk_s.append(s)
        iid_i += gen.integers(0, 3000, 12).tolist()
    walk = lag_profile(np.array(walk_s), np.array(walk_i), emb)
    iid = lag_profile(np.array(walk_s), np.array(iid_i), emb)
    assert walk.decay > 0.2 and abs(iid.decay) < 0.05
    assert walk.cosine[0] > walk.cosine[2] > walk.cosine[-1]


def _world(u: int = 30, m: int = 300, d: int = 16, seed: int = 1) -> dict[str, np.ndarray | float]:
    gen = np.random.default_rng(seed)
    emb = _unit(gen.normal(size=(m, d)))
    taste = _unit(gen.normal(size=(u, d)))
    aff = taste @ emb.T
    return dict(sem_taste=taste, rho=np.ones(u), sem_mu=aff.mean(axis=1), sem_sd=aff.std(axis=1),
                static_util=np.zeros((u, m)), item_emb=emb, affinity_scale=3.0)


def test_simulated_decay_grows_with_the_drift_and_draws_are_shared() -> None:
    kw = _world()
    users, sizes = np.repeat(np.arange(30), 3), np.full(90, 12)
    out = simulated_lag_profiles([0.0, 0.5, 0.0], session_users=users, session_sizes=sizes, **kw)
    assert out[0] == out[2]  # the same draws for every η: the profiles differ by the drift alone
    assert out[1].decay > out[0].decay + 0.1
    assert out[0].pairs[0] == 90 * 11 and out[0].pairs[-1] == 90 * 2
    few = simulated_lag_profiles([0.0], session_users=users, session_sizes=sizes, max_sessions=10, **kw)
    assert few[0].pairs[0] == 10 * 11  # a sample of the sessions
    short = simulated_lag_profiles([0.3], session_users=users[:4], session_sizes=np.array([3, 2, 5, 1]), **kw)
    assert short[0].pairs[0] == 2 + 1 + 4 and np.isnan(short[0].cosine[-1])


def test_fit_interpolates_clips_and_refuses_undefined_decays() -> None:
    grid = (0.0, 0.2, 0.4)
    sim = [0.0, 0.02, 0.06]

    def data(decay: float) -> LagProfile:
        return LagProfile(lags=(1, 10), cosine=(0.1, 0.1 - decay), pairs=(100, 50))

    assert fit_drift_rate(data(0.04), sim, grid).rate == pytest.approx(0.3)
    assert fit_drift_rate(data(-0.01), sim, grid).rate == 0.0
    assert fit_drift_rate(data(0.5), sim, grid).rate == 0.4
    assert fit_drift_rate(data(0.01), [0.0, -0.01, 0.02], grid).rate == pytest.approx(0.3)  # made non-decreasing
    with pytest.raises(ValueError, match="undefined"):
        fit_drift_rate(data(float("nan")), sim, grid)
    with pytest.raises(ValueError, match="3 simulated decays for a grid of 2"):
        fit_drift_rate(data(0.01), sim, grid[:2])


def _write_sessions(root: Path, wander: bool, seed: int = 0, size: int = 14) -> Path:
    """An ml-latest-small-format log whose users rate in sessions of ``size`` (hours apart) from their three liked
    genres: each next film keeps the last one's genre with probability 0.85 (``wander``: the session drifts through
    its genres) or takes any liked genre (not)."""
    gen = np.random.default_rng(seed)
    n_items = 720
    genre = np.arange(n_items) % len(GENRES)
    rows = []
    for u in range(40):
        liked = gen.choice(len(GENRES), 3, replace=False)
        seen: set[int] = set()
        t = 1_100_000_000 + int(gen.integers(0, 10**6))
        for _ in range(4):
            g = int(gen.choice(liked))
            for _ in range(size):
                if not wander or gen.random() > 0.85:
                    g = int(gen.choice(liked))
                i = int(gen.choice([i for i in np.flatnonzero(genre == g) if i not in seen]))
                seen.add(i)
                rows.append((u + 1, i, float(gen.choice([3.0, 4.0, 5.0])), t))
                t += 60
            t += 6 * 3600
    return write_genre_log(root, n_items, rows)


def test_calibration_fits_a_larger_drift_to_wandering_sessions(tmp_path: Path) -> None:
    encoder = make_encoder(EncoderConfig(kind="hashing", hashing_dim=64, cache_dir=str(tmp_path / "cache")))
    cfg = CalibrationConfig(heldout_users=0.0, history_len=5, sim_sessions=1, rho_grid=5, fit_rounds=2,
                            drift_rate=True, holdout=0.1)
    env = {"n_candidates": 8, "slate_size": 2, "max_steps": 4}
    rate, decay = {}, {}
    for wander in (True, False):
        log = load_logs(f"movielens:{_write_sessions(tmp_path / f'ml{wander}', wander)}")
        report = calibrate(log, cfg, encoder, tmp_path / f"p{wander}", env_overrides=env)
        fitted = report["fit"]["drift_rate"]
        assert fitted["fitted"] and len(fitted["simulated"]) == len(DRIFT_GRID) and fitted["pairs"][-1] > 100
        rate[wander], decay[wander] = fitted["rate"], fitted["decay"]
        assert preset_config(str(tmp_path / f"p{wander}")).user_model.drift_rate == rate[wander]
        assert f"| drift rate η | {rate[wander]}, fitted: mean cosine" in (tmp_path / f"p{wander}" /
                                                                          "fidelity.md").read_text()
    assert decay[True] > decay[False] + 0.05 and rate[True] > rate[False]
    # an explicit value wins; off by default
    log = load_logs(f"movielens:{tmp_path / 'mlTrue'}")
    over = calibrate(log, cfg, encoder, tmp_path / "q", env_overrides=env | {"user_model": {"drift_rate": 0.3}})
    assert over["fit"]["drift_rate"] == {"rate": 0.3, "fitted": False}
    assert "| drift rate η | 0.3 (not fitted) |" in (tmp_path / "q" / "fidelity.md").read_text()
    off = calibrate(log, CalibrationConfig(heldout_users=0.0, history_len=5, sim_sessions=1, rho_grid=5,
                                           fit_rounds=2), encoder, tmp_path / "r", env_overrides=env)
    assert off["fit"]["drift_rate"] == {"rate": preset_config("default").user_model.drift_rate, "fitted": False}
    assert CalibrationConfig().drift_rate is False
    # sessions too short for the profile's last lag: not fitted, said so, left as configured
    said: list[str] = []
    short = calibrate(load_logs(f"movielens:{_write_sessions(tmp_path / 'short', True, size=8)}"), cfg, encoder,
                      tmp_path / "s", env_overrides=env, progress=said.append)
    assert short["fit"]["drift_rate"]["fitted"] is False and any("too few to fit" in m for m in said)


def test_drift_fit_past_the_table_budget_reads_the_sampled_users_rows(tmp_path: Path) -> None:
    """Factored tables (forced with a zero budget) give the drift fit its users' rows on demand: the same fit as the
    dense tables, up to float rounding (which can flip a near-tie of the simulated choices)."""
    encoder = make_encoder(EncoderConfig(kind="hashing", hashing_dim=64, cache_dir=str(tmp_path / "cache")))
    cfg = CalibrationConfig(heldout_users=0.0, history_len=5, sim_sessions=1, rho_grid=5, fit_rounds=2,
                            drift_rate=True, holdout=0.1)
    log = load_logs(f"movielens:{_write_sessions(tmp_path / 'ml', True)}")
    env = {"n_candidates": 8, "slate_size": 2, "max_steps": 4}
    dense = calibrate(log, cfg, encoder, tmp_path / "dense", env_overrides=env)["fit"]["drift_rate"]
    said: list[str] = []
    factored = calibrate(log, cfg, encoder, tmp_path / "factored", env_overrides=env | {"table_budget_mb": 0.0},
                         progress=said.append)["fit"]["drift_rate"]
    assert not any("exceed env.table_budget_mb" in m for m in said)
    assert factored["fitted"] and dense["fitted"]
    np.testing.assert_allclose(factored["simulated"], dense["simulated"], atol=0.02)
    assert factored["rate"] == pytest.approx(dense["rate"], abs=0.05)
