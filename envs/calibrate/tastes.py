"""What the calibration derives from a log before any fit: event order, semantic tastes, histories, item features."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp

from envs.data.cf_eval import interaction_matrix
from envs.data.interaction_log import InteractionLog
from envs.data.schema import EVENT_WEIGHTS, EVENTS

_RATING = EVENTS.index("rating")


def standardise_rows(x: np.ndarray) -> np.ndarray:
    """Each row minus its mean over its std (as the simulator standardises z_sem and z_cf).

    Args:
        x: float (U, M).

    Returns:
        float32 (U, M).
    """
    mu = x.mean(axis=1, keepdims=True)
    sd = x.std(axis=1, keepdims=True)
    return ((x - mu) / np.maximum(sd, 1e-6)).astype(np.float32)


def _standardise(x: np.ndarray) -> np.ndarray:
    sd = float(x.std())
    return ((x - x.mean()) / (sd if sd > 0 else 1.0)).astype(np.float32)


def event_order(log: InteractionLog) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each event's user, item and age within its user's time order.

    Args:
        log: The log.

    Returns:
        (users int64 (E,), items int64 (E,), age int64 (E,)): age 0 for the user's most recent event, 1 for the one
        before, ... (ties in timestamp by file order).
    """
    u, i = log.codes()
    ts = log.events["timestamp"].to_numpy(dtype=np.int64)
    order = np.lexsort((np.arange(u.size), ts, u))
    su = u[order]
    first = np.searchsorted(su, su, side="left")
    n = np.bincount(u, minlength=log.n_users)[su]
    age = np.empty(u.size, np.int64)
    age[order] = n - 1 - (np.arange(su.size) - first)
    return u, i, age


def taste_weights(log: InteractionLog, halflife: float, rating_weight: bool) -> np.ndarray:
    """Per-event weight in the semantic taste: recency decay times a preference weight.

    Args:
        log: The log.
        halflife: Items after which the weight halves (<= 0: no decay).
        rating_weight: Ratings weigh ``max(r − mean_u + 1, 0.1)`` (else 1); implicit events weigh
            :data:`envs.data.schema.EVENT_WEIGHTS`.

    Returns:
        float64 (E,) weights, aligned with ``log.events``.
    """
    u, _, age = event_order(log)
    codes = log.events["event"].cat.codes.to_numpy()
    value = log.events["value"].to_numpy(dtype=np.float64)
    per_event = np.array([EVENT_WEIGHTS.get(e, 1.0) for e in EVENTS])
    w = per_event[codes]
    rated = (codes == _RATING) & ~np.isnan(value)
    w[codes == _RATING] = 1.0
    if rating_weight and rated.any():
        n = np.bincount(u[rated], minlength=log.n_users)
        mean = np.bincount(u[rated], weights=value[rated], minlength=log.n_users) / np.maximum(n, 1)
        w[rated] = np.maximum(value[rated] - mean[u[rated]] + 1.0, 0.1)
    if halflife > 0:
        w = w * 0.5 ** (age / halflife)
    return w


def center_embeddings(item_emb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Item embeddings minus the catalog's mean embedding, re-normalised to unit length.

    Text-encoder embeddings share a common component (MiniLM on MovieLens: ``|ē| ≈ 0.64``). A pooled state
    ``s = Σ w_h e_h`` then carries ``(Σ w_h)·ē``, and ``s·e_i`` ranks items mostly by ``ē·e_i``, the same order
    for every user; centring removes it (docs/llm_signal.md).

    Args:
        item_emb: float (M, D) item embeddings.

    Returns:
        (float32 (M, D) centred unit rows (a row equal to the mean stays zero), float32 (D,) the mean subtracted).
    """
    emb = np.asarray(item_emb, np.float64)
    mean = emb.mean(axis=0)
    centred = emb - mean
    norm = np.linalg.norm(centred, axis=1, keepdims=True)
    out = np.where(norm > 1e-12, centred / np.where(norm > 1e-12, norm, 1.0), 0.0)
    return out.astype(np.float32), mean.astype(np.float32)


def semantic_taste(
    users: np.ndarray, items: np.ndarray, weights: np.ndarray, item_emb: np.ndarray, n_users: int, center: bool = True
) -> np.ndarray:
    """θ_u: the weighted mean embedding of each user's items (minus the catalog mean), L2-normalised.

    Args:
        users: int (E,) user indices.
        items: int (E,) item indices.
        weights: float (E,) weights (>= 0).
        item_emb: float32 (M, D) item embeddings.
        n_users: U.
        center: Subtract the catalog's mean embedding (MiniLM embeddings share a common component that would
            otherwise dominate θ·e; docs/calibration.md).

    Returns:
        float32 (U, D), unit rows (zero rows for users without events).
    """
    m = item_emb.shape[0]
    s = sp.csr_matrix((np.asarray(weights, np.float64), (users, items)), shape=(n_users, m))
    total = np.asarray(s.sum(axis=1)).ravel()
    theta = np.asarray(s @ item_emb.astype(np.float64)) / np.maximum(total, 1e-12)[:, None]
    if center:
        theta = np.where(total[:, None] > 0, theta - item_emb.mean(axis=0, dtype=np.float64), 0.0)
    norm = np.linalg.norm(theta, axis=1, keepdims=True)
    return (theta / np.where(norm > 0, norm, 1.0)).astype(np.float32)


def last_items(log: InteractionLog, length: int) -> np.ndarray:
    """Each user's last ``length`` distinct-event items in time order (most recent last), -1 padded on the left.

    Args:
        log: The log.
        length: H.

    Returns:
        int64 (U, H).
    """
    u, i, age = event_order(log)
    keep = age < length
    out = np.full((log.n_users, length), -1, np.int64)
    out[u[keep], length - 1 - age[keep]] = i[keep]
    return out


def item_features(log: InteractionLog, names: Sequence[str], rating_prior: float) -> tuple[np.ndarray, list[str]]:
    """Standardised item features the hidden quality is fitted from.

    Args:
        log: Training log.
        names: ``popularity`` (log1p distinct users) and / or ``rating`` (shrunk mean rating; skipped when the log
            has no ratings).
        rating_prior: Pseudo-ratings at the global mean in the shrunk mean.

    Returns:
        (float32 (Q, M) features, their names); Q may be 0.
    """
    feats, used = [], []
    for name in names:
        if name == "popularity":
            counts = np.asarray(interaction_matrix(log).sum(axis=0), dtype=np.float64).ravel()
            feats.append(_standardise(np.log1p(counts)))
            used.append(name)
        elif name == "rating":
            codes = log.events["event"].cat.codes.to_numpy()
            value = log.events["value"].to_numpy(dtype=np.float64)
            rated = (codes == _RATING) & ~np.isnan(value)
            if not rated.any():
                continue
            _, items = log.codes()
            n = np.bincount(items[rated], minlength=log.n_items)
            total = np.bincount(items[rated], weights=value[rated], minlength=log.n_items)
            mean = value[rated].mean()
            feats.append(_standardise((total + rating_prior * mean) / (n + rating_prior)))
            used.append(name)
    m = log.n_items
    return (np.stack(feats) if feats else np.zeros((0, m), np.float32)).astype(np.float32), used
