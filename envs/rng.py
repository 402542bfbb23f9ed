"""Counter-based random streams, vectorised over user rows.

Each simulated user row owns a 64-bit episode key. A random number is a pure function of
``(key, step, purpose, slot)`` through the splitmix64 finaliser, so a row's trajectory depends only on its
own key: the batched env equals single envs stepped alone, and no per-row Generator sits on the hot path.
"""

from __future__ import annotations

import numpy as np
from scipy.special import ndtri

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30 = np.uint64(30)
_S27 = np.uint64(27)
_S31 = np.uint64(31)
_S11 = np.uint64(11)
_INV_2_53 = 1.0 / float(1 << 53)

# Purposes: distinct constants so streams for different uses never coincide.
USER = 1
BUDGET = 2
CHOICE = 3
DWELL = 4
PURCHASE = 5
SATISFACTION = 6
CANDIDATES = 7
POOL = 8
RANKER = 9
LOGGING = 10
INTENT = 11


def splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser (Steele et al. 2014), elementwise on uint64 arrays.

    Args:
        x: uint64 array of any shape.

    Returns:
        uint64 array of the same shape, well mixed.
    """
    with np.errstate(over="ignore"):
        z = x + _GOLDEN
        z = (z ^ (z >> _S30)) * _M1
        z = (z ^ (z >> _S27)) * _M2
        return z ^ (z >> _S31)


def next_key(keys: np.ndarray) -> np.ndarray:
    """The key of the next episode of each row: uint64 (B,) → uint64 (B,)."""
    return splitmix64(keys ^ np.uint64(0xD1B54A32D192ED03))


def bits(keys: np.ndarray, step: np.ndarray | int, purpose: int, slots: int | None = None) -> np.ndarray:
    """Random 64-bit words for each row.

    Args:
        keys: uint64 (B,) episode keys.
        step: int (B,) or scalar step counters.
        purpose: One of the module's purpose constants.
        slots: ``None`` for one word per row, else the number of words per row.

    Returns:
        uint64 (B,) or (B, slots).
    """
    with np.errstate(over="ignore"):
        base = splitmix64(
            keys ^ splitmix64(np.asarray(step, dtype=np.uint64) * np.uint64(0x632BE59BD9B4E019) + np.uint64(purpose))
        )
        if slots is None:
            return base
        return splitmix64(base[:, None] + np.arange(1, slots + 1, dtype=np.uint64)[None, :] * _GOLDEN)


def uniform(keys: np.ndarray, step: np.ndarray | int, purpose: int, slots: int | None = None) -> np.ndarray:
    """Uniform floats in [0, 1): float64 (B,) or (B, slots); see :func:`bits`."""
    return (bits(keys, step, purpose, slots) >> _S11).astype(np.float64) * _INV_2_53


def normal(keys: np.ndarray, step: np.ndarray | int, purpose: int, slots: int | None = None) -> np.ndarray:
    """Standard normal floats by the inverse CDF: float64 (B,) or (B, slots); see :func:`bits`."""
    u = uniform(keys, step, purpose, slots)
    return ndtri(np.clip(u, 1e-12, 1.0 - 1e-12))


def integers(keys: np.ndarray, step: np.ndarray | int, purpose: int, high: int, slots: int | None = None) -> np.ndarray:
    """Integers in [0, high): int64 (B,) or (B, slots); see :func:`bits` (bias below 2⁻³⁰ for high < 2³⁴)."""
    return (bits(keys, step, purpose, slots) % np.uint64(high)).astype(np.int64)


def keys_from_seed(seed: int | None, n: int = 1) -> np.ndarray:
    """Episode keys for ``n`` rows from one integer seed (row i as if seeded with ``seed + i``).

    Args:
        seed: Integer seed, or ``None`` for fresh OS entropy.
        n: Number of rows.

    Returns:
        uint64 (n,).
    """
    if seed is None:
        return np.random.default_rng().integers(0, 2**63, size=n, dtype=np.uint64)
    return np.array([key_from_generator(np.random.default_rng(seed + i)) for i in range(n)], dtype=np.uint64)


def key_from_generator(gen: np.random.Generator) -> np.uint64:
    """One episode key drawn from a numpy Generator (the env's ``np_random``)."""
    return np.uint64(gen.integers(0, 2**63, dtype=np.uint64))
