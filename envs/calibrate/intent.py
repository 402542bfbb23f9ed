"""The session intent (``UserConfig.session_intent``) fitted to how alike a real user's items are within a session.

Real users do not consume a random sample of their taste in each visit: a session has a theme. On ml-latest-small
(ratings split into sessions at 30-minute gaps) the centred item embeddings of two items in the same session have
a mean cosine 0.071 against 0.047 for two items of the same user in different sessions and 0.020 for items of two
users: the session adds about as much likeness (0.023) as the user does over the population (0.027). The
simulator's intent ``θ_s = θ_u + σ·ξ_s`` (renormalised) is the one hidden variable of that shape, and only a
session's own clicks reveal it.

The statistic is the **coherence ratio** ``(within − across) / (across − between)`` of those three mean cosines
(:func:`coherence`). :func:`fit_session_intent` draws, for every real user's real sessions (the same sizes), the
items the calibrated simulator would choose at session start (Plackett-Luce over the catalog with the
session-start utility, as the fidelity report's simulated choices), under a grid of σ with common random numbers,
and returns the σ whose simulated ratio equals the data's (linear interpolation on the grid).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from envs.dynamics import intent_factor

SIGMA_GRID = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 6.0)


@dataclass(frozen=True)
class Coherence:
    """Mean cosines of pairs of consumed items, and their ratio.

    Attributes:
        within: Two items of one session (one user).
        across: Two items of one user in different sessions.
        between: Two items of different users.
        ratio: ``(within − across) / (across − between)``: what a session adds to likeness, in units of what the
            user adds over the population (0 when sessions are random samples of the user's items).
        users: Users with at least two sessions of ``min_items``.
        sessions: Their sessions.
    """

    within: float
    across: float
    between: float
    ratio: float
    users: int
    sessions: int


def session_ids(users: np.ndarray, timestamps: np.ndarray, gap_seconds: float) -> np.ndarray:
    """Session index of each event: a user's events split where more than ``gap_seconds`` pass between two.

    Args:
        users: int (n,) user of each event.
        timestamps: int (n,) epoch seconds.
        gap_seconds: The gap that starts a new session.

    Returns:
        int64 (n,) session ids, unique over users (numbered in the order of user, then time).
    """
    order = np.lexsort((timestamps, users))
    u, t = np.asarray(users)[order], np.asarray(timestamps, np.int64)[order]
    new = np.ones(u.size, bool)
    new[1:] = (u[1:] != u[:-1]) | (np.diff(t) > gap_seconds)
    sid = np.empty(u.size, np.int64)
    sid[order] = np.cumsum(new) - 1
    return sid


def coherence(users: np.ndarray, sessions: np.ndarray, items: np.ndarray, item_emb: np.ndarray, *,
              min_items: int = 3, max_items: int = 400, seed: int = 0) -> Coherence:
    """The coherence of consumed items within sessions, across a user's sessions and between users.

    Sessions with fewer than ``min_items`` items are left out, then users with fewer than two sessions. Each user
    counts once (the mean over users of their within- and across-session means); a user with more than
    ``max_items`` items is read through a seeded sample of them. ``between`` pairs the items of a seeded sample
    of 4,000 events.

    Args:
        users: int (n,) user of each event.
        sessions: int (n,) session of each event (:func:`session_ids`).
        items: int (n,) item index of each event.
        item_emb: float (M, D) item embeddings (unit length: the means are cosines).
        min_items: Smallest session counted.
        max_items: Items read per user.
        seed: Seed of the samples.

    Returns:
        The three means, their ratio and the counts (ratio NaN when no user qualifies).
    """
    gen = np.random.default_rng(seed)
    users, sessions, items = (np.asarray(x, np.int64) for x in (users, sessions, items))
    _, inv, size = np.unique(sessions, return_inverse=True, return_counts=True)
    keep = size[inv] >= min_items
    users, sessions, items = users[keep], sessions[keep], items[keep]
    within, across, n_sessions = [], [], 0
    order = np.argsort(users, kind="stable")
    bounds = np.flatnonzero(np.diff(users[order])) + 1
    for part in np.split(order, bounds):
        sid = sessions[part]
        if np.unique(sid).size < 2:
            continue
        if part.size > max_items:
            part = np.sort(gen.choice(part, max_items, replace=False))
            sid = sessions[part]
        x = np.asarray(item_emb[items[part]], np.float64)
        sim = x @ x.T
        same = sid[:, None] == sid[None, :]
        np.fill_diagonal(same, False)
        diff = sid[:, None] != sid[None, :]
        if not same.any() or not diff.any():
            continue
        within.append(sim[same].mean())
        across.append(sim[diff].mean())
        n_sessions += np.unique(sid).size
    if not within:
        return Coherence(np.nan, np.nan, np.nan, np.nan, 0, 0)
    pick = gen.choice(users.size, min(4000, users.size), replace=False)
    x = np.asarray(item_emb[items[pick]], np.float64)
    other = users[pick][:, None] != users[pick][None, :]
    between = float((x @ x.T)[other].mean())
    w, a = float(np.mean(within)), float(np.mean(across))
    ratio = (w - a) / (a - between) if a > between else np.nan
    return Coherence(w, a, between, float(ratio), len(within), n_sessions)


@dataclass
class IntentFit:
    """What :func:`fit_session_intent` found.

    Attributes:
        sigma: The fitted σ (0 when the data's ratio is at or below the simulator's at σ = 0; the grid's largest
            value when above its ratio there).
        data: The data's coherence.
        grid: σ values tried.
        simulated: The simulated ratio at each.
    """

    sigma: float
    data: Coherence
    grid: list[float] = field(default_factory=list)
    simulated: list[float] = field(default_factory=list)


def simulated_ratio(sigmas: list[float] | tuple[float, ...], *, sem_taste: np.ndarray, rho: np.ndarray,
                    sem_mu: np.ndarray, sem_sd: np.ndarray, static_util: np.ndarray, item_emb: np.ndarray,
                    affinity_scale: float, session_sizes: list[np.ndarray], min_items: int = 3,
                    seed: int = 0) -> list[Coherence]:
    """The coherence of the items the simulator would choose in the given sessions, for each σ.

    Each session of user u draws its size's items without replacement (Gumbel top-k), and none the user drew in
    an earlier session, from the softmax over the catalog of the session-start utility
    ``a·ρ_u·(θ_s·e − μ_u)/s_u + static_u``. The intents' normals and the Gumbel noise are drawn once and shared by
    every σ (common random numbers).

    Args:
        sigmas: σ values.
        sem_taste: float (U, D) semantic tastes θ_u.
        rho: float (U,) ρ_u.
        sem_mu: float (U,) mean of ``θ_u·e`` over the catalog; ``sem_sd`` likewise.
        sem_sd: float (U,).
        static_util: float (U, M) the utility's non-semantic part.
        item_emb: float (M, D).
        affinity_scale: a.
        session_sizes: per user, int (n_u,) the sizes of the user's sessions.
        min_items: As in :func:`coherence`.
        seed: Seed of the draws.

    Returns:
        The coherence per σ (all NaN when no session is given).
    """
    gen = np.random.default_rng(seed)
    root = intent_factor(item_emb)
    emb = np.asarray(item_emb, np.float64)
    draws = []  # per user: (z (n_u, D), gumbel (n_u, M))
    for sizes in session_sizes:
        draws.append((gen.standard_normal((sizes.size, emb.shape[1])),
                      -np.log(-np.log(gen.random((sizes.size, emb.shape[0]))))))
    out = []
    for sigma in sigmas:
        us, ss, its = [], [], []
        sid = 0
        for u, sizes in enumerate(session_sizes):
            if sizes.size == 0:
                continue
            z, gumbel = draws[u]
            theta = np.asarray(sem_taste[u], np.float64)
            moved = theta[None, :] + sigma * z @ root  # (n_u, D) (root is symmetric)
            moved *= np.linalg.norm(theta) / np.linalg.norm(moved, axis=1, keepdims=True)
            util = affinity_scale * rho[u] * (moved @ emb.T - sem_mu[u]) / sem_sd[u] + static_util[u][None, :]
            keys = util + gumbel
            left = emb.shape[0]
            for j, k in enumerate(sizes):  # in time order; a user consumes an item once, as real users rate it once
                k = int(min(k, left))
                if k < 1:
                    break
                left -= k
                top = np.argpartition(-keys[j], k - 1)[:k]
                keys[j + 1:, top] = -np.inf
                us.append(np.full(k, u))
                ss.append(np.full(k, sid))
                its.append(top)
                sid += 1
        if not us:
            out.append(Coherence(np.nan, np.nan, np.nan, np.nan, 0, 0))
            continue
        out.append(coherence(np.concatenate(us), np.concatenate(ss), np.concatenate(its), item_emb,
                             min_items=min_items, seed=seed))
    return out


def fit_session_intent(data: Coherence, simulate: list[float], grid: tuple[float, ...] = SIGMA_GRID) -> IntentFit:
    """The σ at which the simulated coherence ratio meets the data's (linear interpolation on the grid).

    Args:
        data: The data's coherence.
        simulate: The simulated ratio at each grid value (:func:`simulated_ratio`), increasing in σ.
        grid: The σ values.

    Returns:
        The fit.
    """
    sim = np.asarray(simulate, np.float64)
    if not np.isfinite(data.ratio) or data.ratio <= sim[0]:
        sigma = 0.0
    elif data.ratio >= sim[-1]:
        sigma = float(grid[-1])
    else:
        sigma = float(np.interp(data.ratio, np.maximum.accumulate(sim), grid))
    return IntentFit(sigma=sigma, data=data, grid=list(grid), simulated=sim.tolist())


def sessions_read(users: np.ndarray, sessions: np.ndarray, *, min_items: int, max_sessions: int, max_size: int,
                  skip_first: bool = True, seed: int = 0) -> np.ndarray:
    """The events the fit reads: per user, up to ``max_sessions`` sessions of at least ``min_items`` events (a
    seeded sample when there are more), each cut to its first ``max_size`` events; the simulation's cost grows with
    every session and item it draws, so the data is cut alike.

    ``skip_first`` leaves out each user's first session: on MovieLens it is the sign-up flow, where everyone rates
    the same popular films (47% of ml-latest-small's ratings), which makes sessions look alike across users.

    Args:
        users: int (n,) user of each event.
        sessions: int (n,) session of each event (:func:`session_ids`: ids grow with time within a user).
        min_items: Smallest session kept.
        max_sessions: Sessions kept per user.
        max_size: Events kept per session (the first ones in event order).
        skip_first: Leave out each user's first session.
        seed: Seed of the sample of sessions.

    Returns:
        bool (n,) the events kept.
    """
    gen = np.random.default_rng(seed)
    users, sessions = np.asarray(users, np.int64), np.asarray(sessions, np.int64)
    keep = np.zeros(users.size, bool)
    if users.size == 0:
        return keep
    ids, first_event, size = np.unique(sessions, return_index=True, return_counts=True)
    owner = users[first_event]
    allowed = np.zeros(int(ids.max()) + 1, bool)
    order = np.lexsort((ids, owner))
    for part in np.split(order, np.flatnonzero(np.diff(owner[order])) + 1):
        mine = part[1:] if skip_first else part  # ids in time order: the first is the user's first session
        mine = mine[size[mine] >= min_items]
        if mine.size > max_sessions:
            mine = np.sort(gen.choice(mine, max_sessions, replace=False))
        allowed[ids[mine]] = True
    rank = np.zeros(users.size, np.int64)  # the event's place within its session, in event order
    o = np.argsort(sessions, kind="stable")
    s = sessions[o]
    start = np.r_[True, s[1:] != s[:-1]]
    rank[o] = np.arange(s.size) - np.maximum.accumulate(np.where(start, np.arange(s.size), 0))
    return allowed[sessions] & (rank < max_size)
