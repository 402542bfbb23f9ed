"""The interest drift (``UserConfig.drift_rate``) fitted to how a real session's items follow one another.

Within a session the simulated user's semantic taste moves toward each item it liked: ``θ ← (1 − η)·θ + η·e``,
renormalised (:mod:`envs.dynamics`). So two items chosen one after the other are more alike than two chosen ten
apart, and the more so the larger η. Real sessions show that shape: on ml-latest-small (the train split's sessions
as the fit reads them: 30-minute gaps, centred MiniLM embeddings) two items rated one after the other have a mean
cosine 0.109, ten apart 0.076; on the same users and session sizes the simulator's decay stays under 0.004 for any
η up to 0.2 (the default 0.08 among them) and the fit gives η = 0.42 (docs/calibration.md).

The statistic is the **lag decay**: the mean cosine of two items one event apart within a session minus that of
two items ``LAGS[-1]`` apart (:func:`lag_profile`). :func:`simulated_lag_profiles` draws, for the real sessions'
sizes, the items a calibrated simulated user would choose one after the other (the softmax over the catalog of the
utility ``a·ρ_u·(θ·e − μ_u)/s_u + static_u``, the items already chosen in the session left out), moving θ toward
each choice with η, for a grid of η under common random numbers; :func:`fit_drift_rate` returns the η whose
simulated decay equals the data's (linear interpolation on the grid).

Shortcuts, named: every consumed item counts as liked (the simulator drifts away from a disappointing one and not
at all for the rest); the session starts from the user's taste θ_u (a fitted session intent is not drawn); and the
order of a log's events within a session is taken as the order of choice, which on MovieLens partly reflects the
site's rating pages (docs/calibration.md).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: Drift rates η the simulation tries.
DRIFT_GRID: tuple[float, ...] = (0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.7)
#: Lags (events apart within a session) of the profile; the decay is the first's cosine minus the last's.
LAGS: tuple[int, ...] = (1, 2, 3, 5, 10)
#: Sessions the simulation draws at most (a seeded sample of the real ones): its cost grows with each.
MAX_SIM_SESSIONS = 2000


@dataclass(frozen=True)
class LagProfile:
    """Mean cosine of two items of one session by how many events apart they were consumed.

    Attributes:
        lags: The lags.
        cosine: Mean cosine per lag (NaN where no session is long enough).
        pairs: Pairs per lag.
    """

    lags: tuple[int, ...]
    cosine: tuple[float, ...]
    pairs: tuple[int, ...]

    @property
    def decay(self) -> float:
        """``cosine[first lag] − cosine[last lag]``: how much more alike neighbours are than distant items."""
        return float(self.cosine[0] - self.cosine[-1])


@dataclass
class DriftFit:
    """The fitted drift rate and what it was fitted from.

    Attributes:
        rate: The fitted η (the grid's ends when the data's decay is outside the simulated range).
        data: The log's lag profile.
        grid: The η tried.
        simulated: The simulated decay per η.
        sessions: Sessions simulated.
    """

    rate: float
    data: LagProfile
    grid: list[float]
    simulated: list[float]
    sessions: int


def _unit(item_emb: np.ndarray) -> np.ndarray:
    emb = np.asarray(item_emb, np.float64)
    return emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)


def lag_profile(sessions: np.ndarray, items: np.ndarray, item_emb: np.ndarray,
                lags: Sequence[int] = LAGS) -> LagProfile:
    """The lag profile of consumed items.

    Args:
        sessions: int (n,) session of each event, the events of a session contiguous and in the order consumed.
        items: int (n,) item of each event.
        item_emb: float (M, D) item embeddings (cosines: they need not be unit).
        lags: Lags, ascending, >= 1.

    Returns:
        The profile.

    Raises:
        ValueError: For lags that are not ascending positive integers, or arrays of different lengths.
    """
    lags = tuple(int(x) for x in lags)
    if not lags or lags[0] < 1 or any(b <= a for a, b in itertools.pairwise(lags)):
        raise ValueError(f"lags must be ascending integers >= 1, got {lags}")
    sessions, items = np.asarray(sessions), np.asarray(items, np.int64)
    if sessions.shape != items.shape:
        raise ValueError(f"sessions {sessions.shape} and items {items.shape} differ in length")
    emb = _unit(item_emb)
    cos, pairs = [], []
    for lag in lags:
        same = sessions[lag:] == sessions[:-lag] if sessions.size > lag else np.zeros(0, bool)
        a, b = items[lag:][same], items[:-lag][same]
        pairs.append(int(a.size))
        cos.append(float(np.einsum("ij,ij->i", emb[a], emb[b]).mean()) if a.size else float("nan"))
    return LagProfile(lags=lags, cosine=tuple(cos), pairs=tuple(pairs))


def simulated_lag_profiles(rates: Sequence[float], *, sem_taste: np.ndarray, rho: np.ndarray, sem_mu: np.ndarray,
                           sem_sd: np.ndarray, static_util: np.ndarray, item_emb: np.ndarray, affinity_scale: float,
                           session_users: np.ndarray, session_sizes: np.ndarray, lags: Sequence[int] = LAGS,
                           max_sessions: int = MAX_SIM_SESSIONS, seed: int = 0) -> list[LagProfile]:
    """The lag profile of the items the simulator would choose one after the other in the given sessions, per η.

    All sessions advance together, one choice per step (vectorised over sessions); each step's Gumbel matrix is
    drawn from the same seed for every η (common random numbers), so the profiles differ by the drift alone.

    Args:
        rates: η values.
        sem_taste: float (U, D) semantic tastes θ_u (unit norm, as the world holds them).
        rho: float (U,) ρ_u.
        sem_mu: float (U,) mean of ``θ_u·e`` over the catalog; ``sem_sd`` likewise.
        sem_sd: float (U,).
        static_util: float (U, M) the utility's non-semantic part, or anything whose ``[users]`` gives those rows
            (the factored path's rows on demand: only the sampled sessions' users are read).
        item_emb: float (M, D) unit item embeddings (as the world holds them).
        affinity_scale: a.
        session_users: int (S,) the user (row of the arrays above) of each session.
        session_sizes: int (S,) its number of choices (at most M).
        lags: As in :func:`lag_profile`.
        max_sessions: A seeded sample of this many sessions when there are more.
        seed: Seed of the sample and the draws.

    Returns:
        The profile per η (NaN cosines when no session is long enough).
    """
    gen = np.random.default_rng(seed)
    users, sizes = np.asarray(session_users, np.int64), np.asarray(session_sizes, np.int64)
    if users.size > max_sessions:
        pick = np.sort(gen.choice(users.size, max_sessions, replace=False))
        users, sizes = users[pick], sizes[pick]
    emb = np.asarray(item_emb, np.float32)
    m = emb.shape[0]
    sizes = np.minimum(sizes, m)
    steps = int(sizes.max()) if sizes.size else 0
    scale = (affinity_scale * np.asarray(rho, np.float64)[users] / np.asarray(sem_sd, np.float64)[users])[:, None]
    base_aff = np.asarray(sem_taste, np.float32)[users] @ emb.T  # (S, M) θ_u·e
    static = np.asarray(static_util[users], np.float64) - scale * np.asarray(sem_mu, np.float64)[users][:, None]
    draw_seed = int(gen.integers(2**63))  # step j's Gumbel matrix comes from (draw_seed, j): the same for every η
    out = []
    for rate in rates:
        aff = base_aff.astype(np.float64)  # (S, M) θ·e, drifting
        used = np.zeros(aff.shape, bool)
        chosen = np.full((users.size, steps), -1, np.int64)
        for j in range(steps):
            live = np.flatnonzero(sizes > j)  # sessions still choosing (sizes do not depend on η)
            keys = static[live] + scale[live] * aff[live] + np.random.default_rng([draw_seed, j]).gumbel(
                size=(live.size, m))
            keys[used[live]] = -np.inf
            pick = keys.argmax(axis=1)
            chosen[live, j] = pick
            used[live, pick] = True
            if rate > 0:
                theta_e = aff[live, pick]
                norm = np.sqrt(np.maximum((1 - rate) ** 2 + 2 * (1 - rate) * rate * theta_e + rate**2, 1e-16))
                gram = (emb[pick] @ emb.T).astype(np.float64)  # (live, M) e_choice·e
                aff[live] = ((1 - rate) * aff[live] + rate * gram) / norm[:, None]
        sid = np.repeat(np.arange(users.size), steps).reshape(users.size, steps)
        took = chosen >= 0
        out.append(lag_profile(sid[took], chosen[took], emb, lags))
    return out


def fit_drift_rate(data: LagProfile, simulated: Sequence[float], grid: Sequence[float] = DRIFT_GRID,
                   sessions: int = 0) -> DriftFit:
    """The η whose simulated lag decay equals the data's: linear interpolation on the grid (the simulated decays
    made non-decreasing first), the grid's ends outside the simulated range.

    Args:
        data: The log's profile.
        simulated: The simulated decay (:attr:`LagProfile.decay`) per η of ``grid``.
        grid: The η tried, ascending.
        sessions: Sessions simulated (reported).

    Returns:
        The fit.

    Raises:
        ValueError: When ``simulated`` and ``grid`` differ in length, or the data's or a simulated decay is NaN.
    """
    if len(simulated) != len(grid):
        raise ValueError(f"{len(simulated)} simulated decays for a grid of {len(grid)}")
    sim = np.asarray(simulated, np.float64)
    if not np.isfinite(data.decay) or not np.isfinite(sim).all():
        raise ValueError("the lag decay is undefined: no session is longer than the largest lag")
    mono = np.maximum.accumulate(sim)
    if data.decay <= mono[0]:
        rate = float(grid[0])
    elif data.decay >= mono[-1]:
        rate = float(grid[-1])
    else:
        rate = float(np.interp(data.decay, mono, grid))
    return DriftFit(rate=rate, data=data, grid=[float(g) for g in grid], simulated=sim.tolist(), sessions=sessions)
