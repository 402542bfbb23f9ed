"""The user population: hidden tastes and traits, and what the service has observed of each user.

Hidden (the agent never sees it): a semantic taste in the LLM embedding space (the encoded persona), a
collaborative taste that text cannot see, the mixing weight ρ_u between them, price sensitivity and patience.
Observed: the prior history the service logged for the user, its pooled LLM embedding, and the CF user
factor fitted on the logs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from configs.schema import UserConfig

#: Gathered (users × H × D) cells above which :func:`pool_history` works in chunks of users.
POOL_CHUNK_CELLS = 1 << 26


@dataclass
class Population:
    """U simulated users.

    Attributes:
        name: ``"train"`` or ``"heldout"`` (or a calibrated population's name).
        persona: (U,) persona texts.
        sem_taste: float32 (U, D) L2-normalised semantic taste (the encoded persona).
        cf_taste: float32 (U, F) hidden collaborative taste (pairs with ``Catalog.cf_factor``).
        rho: float32 (U,) hidden weight of the semantic taste in the utility, in [0, 1].
        price_sens: float32 (U,) price sensitivity (> 0).
        patience: float32 (U,) multiplier of the initial time budget (> 0).
        history: int64 (U, H) prior consumed items from the logs, most recent last, -1 padded.
        init_state: float32 (U, D) pooled LLM embedding of the prior history (unnormalised; zeros if none).
        cf_user: float32 (U, F') CF user factors fitted on the logs (zeros before the fit).
        test_indptr: int64 (U + 1,) CSR row pointers of each user's held-out real items (calibrated worlds
            only: the real user's temporal test split; ``None`` for synthetic worlds).
        test_items: int64 (nnz,) item ids of the held-out real items, row ``u`` is
            ``test_items[test_indptr[u]:test_indptr[u + 1]]`` (``None`` when ``test_indptr`` is).
    """

    name: str
    persona: list[str]
    sem_taste: np.ndarray
    cf_taste: np.ndarray
    rho: np.ndarray
    price_sens: np.ndarray
    patience: np.ndarray
    history: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.int64))
    init_state: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    cf_user: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    test_indptr: np.ndarray | None = None
    test_items: np.ndarray | None = None

    def __post_init__(self) -> None:
        if (self.test_indptr is None) != (self.test_items is None):
            raise ValueError(f"population {self.name!r}: test_indptr and test_items go together")
        if self.test_indptr is not None and (
                self.test_indptr.shape != (len(self.rho) + 1,) or int(self.test_indptr[-1]) != len(self.test_items)):
            raise ValueError(f"population {self.name!r}: test_indptr must have U + 1 = {len(self.rho) + 1} entries "
                             f"ending at len(test_items) = {len(self.test_items)}, got shape {self.test_indptr.shape}")

    @property
    def has_test_items(self) -> bool:
        """Whether the population carries each user's held-out real items (calibrated worlds)."""
        return self.test_indptr is not None

    @property
    def size(self) -> int:
        """U."""
        return len(self.rho)


def sample_traits(cfg: UserConfig, n: int, cf_dim: int, seed: int) -> dict[str, np.ndarray]:
    """Draw the hidden traits of ``n`` users.

    ρ_u is bimodal: a share ``rho_mix`` of "content" users draws Beta(rho_a, rho_b), the rest
    Beta(rho_b, rho_a), so some users follow what text can describe and others follow the crowd.

    Args:
        cfg: User model settings.
        n: Number of users.
        cf_dim: Dimension of the hidden collaborative taste.
        seed: Seed.

    Returns:
        ``cf_taste`` (n, F), ``rho`` (n,), ``price_sens`` (n,), ``patience`` (n,), all float32.
    """
    rng = np.random.default_rng(seed)
    content = rng.random(n) < cfg.rho_mix
    rho = np.where(content, rng.beta(cfg.rho_a, cfg.rho_b, n), rng.beta(cfg.rho_b, cfg.rho_a, n))
    return {
        "cf_taste": rng.normal(0.0, 1.0, (n, cf_dim)).astype(np.float32),
        "rho": rho.astype(np.float32),
        "price_sens": (cfg.price_weight * rng.lognormal(0.0, 0.5, n)).astype(np.float32),
        "patience": rng.lognormal(0.0, 0.25, n).astype(np.float32),
    }


def pool_history(history: np.ndarray, item_emb: np.ndarray, decay: float) -> np.ndarray:
    """Pooled LLM state of each user's history: ``Σ_h decay^(age_h)·e_h`` (most recent weighs most).

    Args:
        history: int64 (U, H) item ids, most recent last, -1 padded.
        item_emb: float32 (M, D) item embeddings.
        decay: Weight kept per older item, in (0, 1].

    Returns:
        float32 (U, D), unnormalised (zeros for users without history).
    """
    u, h = history.shape
    if h == 0:
        return np.zeros((u, item_emb.shape[1]), np.float32)
    valid = history >= 0
    age = (h - 1 - np.arange(h))[None, :]
    w = np.where(valid, decay ** age, 0.0).astype(np.float32)
    idx = np.where(valid, history, 0)
    if u * h * item_emb.shape[1] <= POOL_CHUNK_CELLS:  # one gather (as always for small populations)
        return np.einsum("uh,uhd->ud", w, item_emb[idx]).astype(np.float32)
    out = np.empty((u, item_emb.shape[1]), np.float32)
    step = max(1, POOL_CHUNK_CELLS // (h * item_emb.shape[1]))
    for lo in range(0, u, step):  # large populations: bounded (chunk, H, D) gathers
        out[lo:lo + step] = np.einsum("uh,uhd->ud", w[lo:lo + step], item_emb[idx[lo:lo + step]])
    return out
