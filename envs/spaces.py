"""Observation and action layout shared by the env, the rankers, the policy and the serving runtime.

Every consumer indexes features by these names, never by bare numbers.
"""

from __future__ import annotations

from copy import deepcopy

import gymnasium as gym
import numpy as np
from gymnasium.vector.utils import batch_space

#: Per-candidate features, columns of ``obs["features"]`` (…, N, F).
FEATURE_NAMES: tuple[str, ...] = (
    "llm_sim",  # cosine of the LLM-encoded user state and the item embedding, in [-1, 1]
    "cf_score",  # matrix-factorisation score, standardised over the catalog for this user
    "popularity",  # log1p(logged clicks) / log1p(max logged clicks), in [0, 1]
    "price",  # log1p(price) / log1p(max price), in [0, 1]
    "cat_exposure",  # decayed impressions of the item's category this session, / slate size
    "cat_clicks",  # decayed clicks on the item's category this session
    "item_seen",  # times this very item was already shown this session
)
F_LLM, F_CF, F_POP, F_PRICE, F_CAT_EXPOSURE, F_CAT_CLICKS, F_ITEM_SEEN = range(len(FEATURE_NAMES))

#: Session context, ``obs["context"]`` (…, C).
CONTEXT_NAMES: tuple[str, ...] = (
    "t_frac",  # step / max_steps
    "click_ema",  # EMA of "the last slate got a click"
    "click_rate",  # clicks / steps so far
    "last_click",  # 1 if the last slate got a click
    "last_click_rank",  # rank of the last click / K (1 when none)
    "clicked_llm_ema",  # EMA of the clicked item's llm_sim minus the slate's mean llm_sim
    "clicked_cf_ema",  # EMA of the clicked item's cf_score minus the slate's mean cf_score
    "purchase_rate",  # purchases / steps so far
    "dwell_ema",  # EMA of dwell minutes per step
    "skip_streak",  # consecutive slates without a click / 5, capped at 1
)
(
    C_T_FRAC,
    C_CLICK_EMA,
    C_CLICK_RATE,
    C_LAST_CLICK,
    C_LAST_CLICK_RANK,
    C_CLICKED_LLM,
    C_CLICKED_CF,
    C_PURCHASE_RATE,
    C_DWELL_EMA,
    C_SKIP_STREAK,
) = range(len(CONTEXT_NAMES))

#: The critic's privileged input, ``obs["critic_state"]`` (…, P) (``env.obs_critic_state``): the simulated user's
#: hidden state, for the value function during training only (the actor never reads it; export and serving drop it).
CRITIC_STATE_NAMES: tuple[str, ...] = (
    "rho",  # the user's hidden weight of the semantic taste in the utility, in [0, 1]
    "log_price_sens",  # log of the user's hidden price sensitivity
    "budget",  # the session's hidden time budget left, / user_model.budget_mean
    "fatigue_mean",  # the hidden per-category fatigue, mean over categories
    "fatigue_max",  # and its maximum
)


def observation_space(
    n_items: int, n_candidates: int, dim: int, with_item_embeddings: bool = False, with_session_sim: bool = False,
    with_hidden_taste: bool = False, with_critic_state: bool = False,
) -> gym.spaces.Dict:
    """The single-user observation space.

    Args:
        n_items: Catalog size M (candidate ids are in ``[0, M)``).
        n_candidates: N.
        dim: Embedding dimension D.
        with_item_embeddings: Add ``item_emb`` (N, D).
        with_session_sim: Add ``session_sim`` (N,): each candidate's cosine with this session's clicked items
            (``env.obs_session_sim``).
        with_hidden_taste: Add ``hidden_taste`` (N,): each candidate's true taste utility, the hidden state
            (``env.obs_hidden_taste``, a research ablation).
        with_critic_state: Add ``critic_state`` (P,): the user's hidden state for the critic only
            (``env.obs_critic_state``, :data:`CRITIC_STATE_NAMES`).

    Returns:
        ``Dict(user (D,), candidates (N,) int64, features (N, F), context (C,) [, item_emb (N, D)]
        [, session_sim (N,)] [, hidden_taste (N,)] [, critic_state (P,)])``.
    """
    spaces: dict[str, gym.spaces.Space] = {
        "user": gym.spaces.Box(-1.0, 1.0, (dim,), np.float32),
        "candidates": gym.spaces.Box(0, n_items - 1, (n_candidates,), np.int64),
        "features": gym.spaces.Box(-np.inf, np.inf, (n_candidates, len(FEATURE_NAMES)), np.float32),
        "context": gym.spaces.Box(-np.inf, np.inf, (len(CONTEXT_NAMES),), np.float32),
    }
    if with_item_embeddings:
        spaces["item_emb"] = gym.spaces.Box(-1.0, 1.0, (n_candidates, dim), np.float32)
    if with_session_sim:  # a cosine, unbounded in the space only for float rounding's sake
        spaces["session_sim"] = gym.spaces.Box(-np.inf, np.inf, (n_candidates,), np.float32)
    if with_hidden_taste:
        spaces["hidden_taste"] = gym.spaces.Box(-np.inf, np.inf, (n_candidates,), np.float32)
    if with_critic_state:
        spaces["critic_state"] = gym.spaces.Box(-np.inf, np.inf, (len(CRITIC_STATE_NAMES),), np.float32)
    return gym.spaces.Dict(spaces)


class SlateSpace(gym.spaces.MultiDiscrete):
    """Slates: K distinct positions into N candidates, ``MultiDiscrete([N] * K)`` restricted to distinct entries.

    A :class:`gymnasium.spaces.MultiDiscrete` subclass, so code that knows only MultiDiscrete (SB3's policies,
    ``gymnasium.spaces.utils.flatten``) still accepts it, but :meth:`sample` draws K *distinct* positions (a
    uniformly random ordered K-subset) from the space's own generator (``space.seed(s)`` reproduces the draws)
    and :meth:`contains` also checks distinctness. With ``batch=B`` the space holds (B, K) slates, distinct per
    row: the vector env's ``action_space``, and what :func:`gymnasium.vector.utils.batch_space` makes of a
    single slate space (registered below).

    Equality is MultiDiscrete's (same ``nvec``, ``start``, dtype): a slate space equals the plain
    ``MultiDiscrete([N] * K)`` it restricts, so checkpoints saved against either load against the other.

    Args:
        n_candidates: N.
        slate_size: K (``1 <= K <= N``).
        batch: B for a batched (B, K) space; ``None`` for one slate (K,).
        seed: Seed (or generator) of the space's sampler.

    Raises:
        ValueError: If not ``1 <= K <= N`` or ``batch < 1``.
    """

    def __init__(self, n_candidates: int, slate_size: int, batch: int | None = None,
                 seed: int | np.random.Generator | None = None) -> None:
        n, k = int(n_candidates), int(slate_size)
        if not 1 <= k <= n:
            raise ValueError(f"a slate space needs 1 <= slate_size <= n_candidates, got K={k}, N={n}")
        if batch is not None and int(batch) < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        self.n_candidates, self.slate_size = n, k
        self.batch = None if batch is None else int(batch)
        shape = (k,) if self.batch is None else (self.batch, k)
        super().__init__(np.full(shape, n, dtype=np.int64), dtype=np.int64, seed=seed)

    def sample(self, mask: np.ndarray | None = None, probability: np.ndarray | None = None) -> np.ndarray:
        """Draw slates of K distinct positions.

        Without arguments every ordered K-subset is equally likely. ``mask`` and ``probability`` are per
        *candidate* (not MultiDiscrete's tuple of per-position masks, which cannot express distinctness):

        Args:
            mask: int8 / bool (N,) or (B, N): 1 where a candidate may be shown; the slate is drawn uniformly among
                the allowed ones (at least K per row).
            probability: float (N,) or (B, N) non-negative weights (at least K positive per row): positions are
                filled one by one, each by a candidate not yet placed, with probability proportional to its weight
                (Plackett-Luce; what ``Generator.choice(N, K, replace=False, p=w / w.sum())`` draws).

        Returns:
            int64 (K,) or, for a batched space, (B, K).

        Raises:
            ValueError: Both arguments given, a tuple (per-position) mask, a wrong shape or dtype, negative or
                non-finite weights, or a row with fewer than K allowed candidates (naming the row).
        """
        if mask is not None and probability is not None:
            raise ValueError("give at most one of mask and probability")
        rows = 1 if self.batch is None else self.batch
        n, k = self.n_candidates, self.slate_size
        keys = self.np_random.random((rows, n))  # uniform keys; the K smallest, in order, are a uniform slate
        if mask is not None or probability is not None:
            name = "mask" if mask is not None else "probability"
            w = self._candidate_weights(mask if mask is not None else probability, name, rows)
            with np.errstate(divide="ignore", invalid="ignore"):  # weight 0: inf (or nan), drawn never
                keys = -np.log1p(-keys) / w  # exponential race: the smallest keys are successive weighted draws
        out = np.argsort(keys, axis=1, kind="stable")[:, :k].astype(np.int64)
        return out[0] if self.batch is None else out

    def _candidate_weights(self, arg: object, name: str, rows: int) -> np.ndarray:
        """Check a candidate mask / weight array and return float64 (rows, N) weights (0 = never drawn)."""
        n, k = self.n_candidates, self.slate_size
        if isinstance(arg, tuple):
            raise ValueError(
                f"SlateSpace.sample takes one {name} over the N={n} candidates, shape ({n},) or (B, {n}), not "
                f"MultiDiscrete's tuple of per-position {name}s (a slate's positions are not independent)"
            )
        arr = np.asarray(arg)
        if arr.shape not in ((n,), (rows, n)):
            want = f"({n},)" if self.batch is None else f"({n},) or ({rows}, {n})"
            raise ValueError(f"{name} must have shape {want}, got {arr.shape}")
        if name == "mask":
            if arr.dtype != np.bool_ and not (arr.dtype.kind in "iu" and np.isin(arr, (0, 1)).all()):
                raise ValueError(f"mask must hold 0/1 (int8 or bool), got dtype {arr.dtype}")
            w = arr.astype(np.float64)
        else:
            if arr.dtype.kind not in "fiu":
                raise ValueError(f"probability must hold numbers, got dtype {arr.dtype}")
            w = arr.astype(np.float64)
            if not np.isfinite(w).all() or (w < 0).any():
                raise ValueError("probability must be finite and >= 0")
        w = np.broadcast_to(w, (rows, n))
        short = (w > 0).sum(axis=1) < k
        if short.any():
            row = int(np.flatnonzero(short)[0])
            raise ValueError(f"{name} row {row} allows {int((w[row] > 0).sum())} candidates, fewer than K={k}")
        return w

    def contains(self, x: object) -> bool:
        """Whether ``x`` is a slate (or, batched, a (B, K) block of slates) of in-range, distinct positions."""
        if not super().contains(x):
            return False
        arr = np.sort(np.asarray(x).reshape(-1, self.slate_size), axis=1)
        return not bool((arr[:, 1:] == arr[:, :-1]).any())

    def __getitem__(self, index: int | tuple[int, ...]) -> gym.spaces.Discrete | gym.spaces.MultiDiscrete:
        """A row of a batched slate space is a :class:`SlateSpace`; anything else is MultiDiscrete's subspace."""
        if self.batch is not None and isinstance(index, int | np.integer):
            row = SlateSpace(self.n_candidates, self.slate_size)
            row.np_random.bit_generator.state = self.np_random.bit_generator.state
            return row
        return super().__getitem__(index)

    def __repr__(self) -> str:
        """``SlateSpace(n_candidates=N, slate_size=K[, batch=B])``."""
        batch = "" if self.batch is None else f", batch={self.batch}"
        return f"SlateSpace(n_candidates={self.n_candidates}, slate_size={self.slate_size}{batch})"


@batch_space.register(SlateSpace)
def _batch_slate_space(space: SlateSpace, n: int = 1) -> SlateSpace:
    """B copies of a single slate space: a (B, K) slate space (MultiDiscrete's rule would give a Box)."""
    if space.batch is not None:
        raise ValueError(f"cannot batch the already batched {space!r}")
    return SlateSpace(space.n_candidates, space.slate_size, batch=n, seed=deepcopy(space.np_random))


def action_space(n_candidates: int, slate_size: int) -> SlateSpace:
    """A slate: K distinct positions into the request's N candidates (see :class:`SlateSpace`)."""
    return SlateSpace(n_candidates, slate_size)


def validate_slate(slate: np.ndarray, n_candidates: int, slate_size: int) -> np.ndarray:
    """Check a batched slate and return it as int64 (B, K).

    Args:
        slate: (B, K) integer positions into the N candidates.
        n_candidates: N.
        slate_size: K.

    Returns:
        The slate as a C-contiguous int64 (B, K) array.

    Raises:
        ValueError: Wrong shape, non-integer values, out-of-range entries or duplicates, naming the row.
    """
    arr = np.asarray(slate)
    if arr.ndim != 2 or arr.shape[1] != slate_size:
        raise ValueError(f"slate must have shape (B, {slate_size}), got {arr.shape}")
    if arr.dtype.kind not in "iu":
        if arr.dtype.kind == "f" and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
            arr = arr.astype(np.int64)
        else:
            raise ValueError(f"slate must hold integer candidate positions, got dtype {arr.dtype}")
    arr = np.ascontiguousarray(arr, dtype=np.int64)
    bad = (arr < 0) | (arr >= n_candidates)
    if bad.any():
        row = int(np.flatnonzero(bad.any(axis=1))[0])
        raise ValueError(
            f"slate row {row} has entries outside [0, {n_candidates}): {arr[row].tolist()}"
        )
    srt = np.sort(arr, axis=1)
    dup = (srt[:, 1:] == srt[:, :-1]).any(axis=1)
    if dup.any():
        row = int(np.flatnonzero(dup)[0])
        raise ValueError(
            f"slate row {row} repeats a candidate: {arr[row].tolist()} (a slate holds {slate_size} distinct positions; "
            "for an agent that samples each position independently, make the env with repair='dedupe')"
        )
    return arr


def dedupe_slate(slate: np.ndarray, n_candidates: int) -> np.ndarray:
    """Replace repeated entries of each row by the lowest unused positions (``repair="dedupe"``).

    Meant for raw MultiDiscrete samples (e.g. SB3's ``check_env``), never for a policy's output.

    Args:
        slate: (B, K) integer positions.
        n_candidates: N.

    Returns:
        (B, K) int64 slate with distinct entries per row; the first occurrence of each entry is kept.
    """
    arr = np.array(slate, dtype=np.int64, copy=True)
    for row in np.flatnonzero([len(set(r)) < len(r) for r in arr.tolist()]):
        seen: set[int] = set()
        free = (c for c in range(n_candidates) if c not in set(arr[row].tolist()))
        for k, c in enumerate(arr[row].tolist()):
            if c in seen:
                arr[row, k] = next(free)
            seen.add(c)
    return arr
