"""The session intent's fit (envs/calibrate/intent.py): sessions from timestamps, the events read, the coherence
statistic on fabricated embeddings, the interpolation, and calibration end to end on logs whose sessions have a
theme and logs whose sessions do not."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import GENRES, write_genre_log

from configs.data import CalibrationConfig
from configs.schema import EncoderConfig
from encoders.factory import make_encoder
from envs.calibrate import calibrate
from envs.calibrate.intent import (
    SIGMA_GRID,
    Coherence,
    coherence,
    fit_session_intent,
    session_ids,
    sessions_read,
)
from envs.data import load_logs
from envs.presets import preset_config


def test_session_ids_split_at_gaps_and_users() -> None:
    users = np.array([1, 0, 0, 0, 1, 0])
    t = np.array([0, 100, 0, 5000, 10, 200])  # user 0: 0, 100, 200 | 5000; user 1: 0, 10
    s = session_ids(users, t, gap_seconds=1800)
    assert s[2] == s[1] == s[5] != s[3]
    assert s[0] == s[4] and s[0] not in (s[1], s[3])


def test_sessions_read_skips_first_sessions_and_caps_sizes() -> None:
    users = np.array([0] * 9 + [1] * 4)
    sessions = np.array([0, 0, 0, 1, 1, 1, 1, 2, 2, 3, 3, 3, 3])
    keep = sessions_read(users, sessions, min_items=3, max_sessions=5, max_size=3)
    # user 0: session 0 (the first) skipped, session 1 cut to 3, session 2 too small; user 1: only a first session
    assert keep.tolist() == [False] * 3 + [True, True, True, False] + [False] * 6
    keep = sessions_read(users, sessions, min_items=3, max_sessions=5, max_size=10, skip_first=False)
    assert keep.tolist() == [True] * 7 + [False, False] + [True] * 4
    one = sessions_read(users, sessions, min_items=3, max_sessions=1, max_size=10, skip_first=False)
    assert np.unique(sessions[one & (users == 0)]).size == 1


def _clustered(theme: bool, seed: int = 0) -> tuple[np.ndarray, ...]:
    """Users with a taste direction; each session's items sit near a session theme (or near the taste only)."""
    gen = np.random.default_rng(seed)
    d, m = 16, 2000
    emb = gen.normal(size=(m, d))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    users, sessions, items = [], [], []
    sid = 0
    for u in range(60):
        taste = gen.normal(size=d)
        for _ in range(4):
            want = taste / np.linalg.norm(taste) + (1.5 * gen.normal(size=d) / np.sqrt(d) if theme else 0.0)
            score = emb @ want + gen.gumbel(size=m) * 0.3
            top = np.argsort(-score)[:6]
            users += [u] * 6
            sessions += [sid] * 6
            items += top.tolist()
            sid += 1
    return np.array(users), np.array(sessions), np.array(items), emb


def test_coherence_sees_session_themes() -> None:
    themed = coherence(*_clustered(True))
    plain = coherence(*_clustered(False))
    assert themed.users == plain.users == 60 and themed.sessions == 240
    assert themed.within > themed.across > themed.between
    assert themed.ratio > 0.5 > abs(plain.ratio)


def test_fit_interpolates_and_clips_to_the_grid() -> None:
    grid = (0.0, 1.0, 2.0)
    sim = [0.0, 0.4, 1.0]
    data = Coherence(0.1, 0.05, 0.0, 0.7, 50, 200)
    assert fit_session_intent(data, sim, grid).sigma == pytest.approx(1.5)
    assert fit_session_intent(Coherence(0, 0, 0, -0.2, 50, 200), sim, grid).sigma == 0.0
    assert fit_session_intent(Coherence(0, 0, 0, 3.0, 50, 200), sim, grid).sigma == 2.0
    assert fit_session_intent(Coherence(0, 0, 0, float("nan"), 0, 0), sim, grid).sigma == 0.0


def _write_sessions(root: Path, theme: bool, seed: int = 0) -> Path:
    """An ml-latest-small-format log whose users rate in sessions of 6 (hours apart), each session from one genre
    (``theme``) or from the user's two liked genres (not)."""
    gen = np.random.default_rng(seed)
    n_items = 360
    genre = np.arange(n_items) % len(GENRES)
    rows = []
    for u in range(48):
        liked = gen.choice(len(GENRES), 2, replace=False)
        seen: set[int] = set()
        t = 1_100_000_000 + int(gen.integers(0, 10**6))
        for _ in range(6):
            pick = [int(gen.choice(liked))] if theme else list(liked)
            pool = [i for i in np.flatnonzero(np.isin(genre, pick)) if i not in seen]
            for i in gen.choice(pool, 6, replace=False):
                seen.add(int(i))
                rows.append((u + 1, int(i), float(gen.choice([3.0, 4.0, 5.0])), t))
                t += 60
            t += 6 * 3600
    return write_genre_log(root, n_items, rows)


def test_calibration_fits_a_larger_intent_to_themed_sessions(tmp_path: Path) -> None:
    encoder = make_encoder(EncoderConfig(kind="hashing", hashing_dim=64, cache_dir=str(tmp_path / "cache")))
    cfg = CalibrationConfig(heldout_users=0.0, history_len=5, sim_sessions=1, rho_grid=5, fit_rounds=2,
                            session_intent=True)
    env = {"n_candidates": 8, "slate_size": 2, "max_steps": 4}
    sigma = {}
    for theme in (True, False):
        log = load_logs(f"movielens:{_write_sessions(tmp_path / f'ml{theme}', theme)}")
        report = calibrate(log, cfg, encoder, tmp_path / f"p{theme}", env_overrides=env)
        fitted = report["fit"]["session_intent"]
        assert fitted["fitted"] and fitted["users"] >= 10 and len(fitted["simulated"]) == len(SIGMA_GRID)
        sigma[theme] = fitted["sigma"]
        assert preset_config(str(tmp_path / f"p{theme}")).user_model.session_intent == sigma[theme]
        assert f"| session intent σ | {sigma[theme]}, fitted: coherence" in (tmp_path / f"p{theme}" /
                                                                            "fidelity.md").read_text()
        if theme:
            assert fitted["ratio"] > 0.5  # one genre per session: far more alike within than across
    assert sigma[True] > sigma[False]
    # an explicit value wins; the fit can be turned off
    log = load_logs(f"movielens:{tmp_path / 'mlTrue'}")
    over = calibrate(log, cfg, encoder, tmp_path / "q", env_overrides=env | {"user_model": {"session_intent": 0.3}})
    assert over["fit"]["session_intent"] == {"sigma": 0.3, "fitted": False}
    assert "| session intent σ | 0.3 (not fitted) |" in (tmp_path / "q" / "fidelity.md").read_text()
    off = calibrate(log, CalibrationConfig(heldout_users=0.0, history_len=5, sim_sessions=1, rho_grid=5,
                                           fit_rounds=2), encoder, tmp_path / "r", env_overrides=env)
    assert off["fit"]["session_intent"] == {"sigma": 0.0, "fitted": False}


@pytest.mark.parametrize(("key", "value", "message"), [
    ("session_gap_minutes", 0.0, "calibrate.session_gap_minutes must be > 0, got 0.0"),
    ("session_min_items", 1, "calibrate.session_min_items must be >= 2, got 1"),
    ("session_max", 0, "calibrate.session_max must be >= 1, got 0"),
    ("session_max_items", 0, "calibrate.session_max_items must be >= 1, got 0"),
])
def test_bad_session_settings_are_clear_errors(key: str, value: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CalibrationConfig(**{key: value})


def test_the_command_line_settings_reach_the_config() -> None:
    from configs.loader import from_dict
    from envs.calibrate.cli import _parse_sets

    sets = _parse_sets(["calibrate.session_intent=true", "calibrate.session_gap_minutes=60"])
    cfg = from_dict(CalibrationConfig, sets["calibrate"], "calibrate")
    assert cfg.session_intent is True and cfg.session_gap_minutes == 60.0
    assert CalibrationConfig().session_intent is False  # off by default (docs/calibration.md)


def test_simulated_ratio_grows_with_the_intent_and_is_nan_without_sessions() -> None:
    from envs.calibrate.intent import simulated_ratio

    gen = np.random.default_rng(1)
    u, d, m = 40, 16, 400
    emb = gen.normal(size=(m, d))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    taste = gen.normal(size=(u, d))
    taste /= np.linalg.norm(taste, axis=1, keepdims=True)
    aff = taste @ emb.T
    kw = dict(sem_taste=taste, rho=np.ones(u), sem_mu=aff.mean(axis=1), sem_sd=aff.std(axis=1),
              static_util=np.zeros((u, m)), item_emb=emb, affinity_scale=3.0)
    out = simulated_ratio([0.0, 3.0], session_sizes=[np.array([6, 6, 6])] * u, **kw)
    assert out[0].sessions == 3 * u and out[1].ratio > out[0].ratio + 0.3
    empty = simulated_ratio([0.0], session_sizes=[np.array([], np.int64)] * u, **kw)
    assert np.isnan(empty[0].ratio) and empty[0].sessions == 0
