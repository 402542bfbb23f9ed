"""A rollout (lookahead) oracle: the non-myopic upper reference that plans over the batched core itself.

At every request the ranker copies each user's session (hidden state included) into ``J·M`` rows of a second core:
``J`` candidate slates (from a few hidden-state and observable rankers) times ``M`` independent futures. Each copy
shows its candidate slate, then follows a base ranker to the end of the session (or ``horizon`` requests); the real
user is shown the candidate with the highest mean return if it beats the base's own slate by a margin. This is the
rollout algorithm of approximate dynamic programming (Bertsekas, Tsitsiklis & Wu 1997; Tesauro & Galperin 1996):
with exact values it is never worse than its base ranker (whose own slate is a candidate), and usually better. The
``M`` futures use common random numbers across the candidates (future ``m`` of every candidate shares one key), so
the comparison between candidates is paired.

It reads the hidden state *and* simulates the future with the true dynamics: no deployable policy can see either,
so it is a ceiling, not a competitor. Its cost is ``J·M`` simulated sessions per request.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from agents.base import Ranker
from agents.rankers import check_current_request
from envs.core import BatchedCore
from envs.rng import splitmix64
from envs.spaces import validate_slate

#: A ranker factory: the core whose requests it ranks → the ranker.
RankerFactory = Callable[[BatchedCore], Ranker]

_FUTURE = np.uint64(0x9E3779B97F4A7C15)  # golden-ratio increment that separates the M futures' keys


class LookaheadRanker(Ranker):
    """Rollout lookahead over the simulator: per request, the candidate slate whose simulated futures return most.

    Formula: ``slate = argmax_j d_j`` over the candidates with ``d_j > z·se_j``, else candidate 0's slate, where
    ``d_j = (1/M) Σ_m (G_jm − G_0m)`` and ``se_j`` its standard error; ``G_jm`` is the return of a copy of the user's
    session that is shown candidate ``j``'s slate now and then ranked by ``base`` until the session ends (at most
    ``horizon`` requests including this one), under future ``m``'s random draws. Session returns are heavy-tailed,
    so without the margin ``z`` the argmax of a few noisy futures often leaves the base's slate for a worse one.
    Reads HIDDEN state (the copies carry it) and the true dynamics.

    Args:
        k: Slate size.
        core: The core whose current requests are ranked (the evaluation's core).
        sim: The planning core: same world, config and population as ``core``, exactly ``core.B·J·M`` rows
            (:func:`planning_core` makes it).
        candidates: ``J`` factories of the rankers whose slates are the candidates, each bound to ``core``; the
            first should be ``base``'s (then the lookahead is the rollout of ``base``).
        base: Factory of the ranker that continues every simulated future, bound to ``sim``.
        rollouts: ``M`` futures per candidate.
        horizon: Most requests simulated per future (``None``: to the session's end).
        margin: ``z``: how many standard errors a candidate must beat candidate 0 by (0: the plain argmax).
        seed: Separates the futures' keys from the real sessions' (and different seeds' futures from each other).
        name: Display name.

    Raises:
        ValueError: For no candidates, ``rollouts`` or ``horizon`` below 1, or a planning core of the wrong size.
    """

    reads_hidden_state = True

    def __init__(self, k: int, core: BatchedCore, sim: BatchedCore, candidates: Sequence[RankerFactory],
                 base: RankerFactory, rollouts: int = 16, horizon: int | None = None, margin: float = 1.0,
                 seed: int = 0, name: str = "lookahead-oracle") -> None:
        super().__init__(k)
        if not candidates:
            raise ValueError("the lookahead needs at least one candidate ranker")
        if rollouts < 1 or (horizon is not None and horizon < 1):
            raise ValueError(f"rollouts and horizon must be >= 1, got {rollouts} and {horizon}")
        self.n_cand, self.M = len(candidates), int(rollouts)
        if sim.B != core.B * self.n_cand * self.M:
            raise ValueError(f"the planning core has {sim.B} rows; {core.B} users x {self.n_cand} candidates x "
                             f"{self.M} futures need {core.B * self.n_cand * self.M}")
        self.core, self.sim, self.name = core, sim, name
        self.candidates = [make(core) for make in candidates]
        self.base = base(sim)
        self.horizon = core.T if horizon is None else int(horizon)
        self.seed = np.uint64(seed % 2**64)
        self.margin = float(margin)
        self.chosen = np.zeros(self.n_cand, np.int64)  # how often each candidate was shown (for the report)
        self.sim_steps = 0  # simulated user-requests, for the cost line

    def values(self, obs: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Simulate every candidate's futures from the current requests.

        Args:
            obs: ``core``'s current observation.

        Returns:
            ``(slates, values)``: int64 (J, B, K) the candidates' slates and float64 (B, J, M) the futures' returns.

        Raises:
            ValueError: If ``obs`` is not ``core``'s current request, or a candidate returns a bad slate.
        """
        core, sim, b, n_cand, m = self.core, self.sim, self.core.B, self.n_cand, self.M
        check_current_request(obs, core)
        slates = np.stack([validate_slate(c.act(obs), core.N, core.K) for c in self.candidates])  # (J, B, K)
        n = sim.B  # planning rows in (B, J, M) order
        user = np.repeat(np.arange(b), n_cand * m)
        future = np.tile(np.arange(1, m + 1, dtype=np.uint64), b * n_cand)  # common random numbers across J
        keys = splitmix64(core.keys[user] ^ splitmix64(future * _FUTURE + self.seed))
        sim.copy_rows(core, user, np.arange(n), keys)
        slate = np.ascontiguousarray(np.repeat(slates.transpose(1, 0, 2), m, axis=1).reshape(n, core.K))
        ret = np.zeros(n)
        alive = np.ones(n, bool)
        for h in range(self.horizon):
            if h:
                obs_sim = sim.observe()
                if h == 1:
                    self.base.reset(np.arange(n), obs_sim)
                slate = validate_slate(self.base.act(obs_sim), sim.N, sim.K)
            res = sim.step(slate)
            self.sim_steps += int(alive.sum())
            ret += np.where(alive, res.reward, 0.0)
            ended = res.terminated | res.truncated
            alive &= ~ended
            if not alive.any():
                break
            # an ended copy restarts (its outcomes are ignored), so that no row steps past its session's limits
            done = np.flatnonzero(ended)
            if done.size:
                sim.reset_rows(done, splitmix64(sim.keys[done]))
        return slates, ret.reshape(b, n_cand, m)

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """Per user, the candidate slate that beats candidate 0's by the most, if by ``margin`` standard errors:
        int64 (B, K)."""
        slates, ret = self.values(obs)
        diff = ret - ret[:, :1]  # (B, J, M) paired on the futures
        gain = diff.mean(axis=2)
        se = diff.std(axis=2, ddof=1) / np.sqrt(self.M) if self.M > 1 else np.zeros_like(gain)
        pick = np.argmax(np.where(gain > self.margin * se, gain, 0.0), axis=1)  # (B,), candidate 0 unless beaten
        self.chosen += np.bincount(pick, minlength=self.n_cand)
        return slates[pick, np.arange(self.core.B)]


def planning_core(core: BatchedCore, n_candidates: int, rollouts: int) -> BatchedCore:
    """The planning core of a :class:`LookaheadRanker` over ``core``: same world, config and population,
    ``core.B · n_candidates · rollouts`` rows."""
    return BatchedCore(core.world, core.cfg, core.B * n_candidates * rollouts, core.population, core.text_encoder)
