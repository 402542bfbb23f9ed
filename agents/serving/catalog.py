"""New items while serving (cold start): validate, encode with the run's encoder, append to the item table.

A new item gets what the simulator gives an item without interaction history (``env.catalog.new_item_share``,
``envs/shift.py``): its text embedding, **zero CF factors** (so its ``cf_score`` is ``p_u·0`` standardised over the
catalog, as the policy saw new items in training), **popularity 0**, its price scaled as the world's prices are
(``log1p(price) / log1p(max catalog price)``, held at 1 above the catalog's maximum: the policy never saw more), and
the ``is_new`` flag. The table is replaced copy-on-write (:func:`extend_table` returns a new one), rows are only
ever appended, so user states holding item rows and requests running during the swap stay valid.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from agents.serving.artifact import ItemTable
from agents.serving.errors import InvalidRequestError

#: Most items one request may add.
MAX_NEW_ITEMS = 1000


class DuplicateItemsError(InvalidRequestError):
    """Item ids repeated within the request or already in the catalog (HTTP 409 ``duplicate_items``).

    Attributes:
        duplicates: The offending ids (request order, deduplicated).
    """

    def __init__(self, duplicates: list[str], where: str) -> None:
        super().__init__(f"{len(duplicates)} item id(s) {where}: {duplicates[:10]}")
        self.duplicates = duplicates


class EncoderMismatchError(InvalidRequestError):
    """The encoder available here is not the one the run's embeddings were made with (HTTP 409)."""


class ItemsUnavailableError(InvalidRequestError):
    """The artifact cannot take new items (exported before ``items.npz`` held raw prices and categories; HTTP 409)."""


@dataclass(frozen=True)
class NewItem:
    """An item to add.

    Attributes:
        id: Item id (new to the catalog).
        text: Its description (what the encoder embeds); non-empty.
        category: One of the catalog's category names.
        price: Price >= 0 (finite).
    """

    id: str
    text: str
    category: str
    price: float


def check_new_items(table: ItemTable, items: Sequence[NewItem]) -> np.ndarray:
    """Validate ``items`` against ``table``; return their category codes, int64 (n,).

    Raises:
        ItemsUnavailableError: The table has no category names or raw prices.
        InvalidRequestError: No items, too many, an empty text, an unknown category, a bad price.
        DuplicateItemsError: An id repeated in the request or already in the catalog.
    """
    if not table.category_names or table.price is None:
        raise ItemsUnavailableError("this artifact cannot take new items: its items.npz predates raw prices and "
                                    "category names (re-export the run with this recfeed)")
    if not 1 <= len(items) <= MAX_NEW_ITEMS:
        raise InvalidRequestError(f"give 1 to {MAX_NEW_ITEMS} items, got {len(items)}")
    ids = [it.id for it in items]
    seen: set[str] = set()
    repeated = list(dict.fromkeys(i for i in ids if i in seen or seen.add(i)))  # type: ignore[func-returns-value]
    if repeated:
        raise DuplicateItemsError(repeated, "repeated in the request")
    known = list(dict.fromkeys(i for i in ids if i in table.index))
    if known:
        raise DuplicateItemsError(known, "already in the catalog")
    names = {n: c for c, n in enumerate(table.category_names)}
    codes = np.empty(len(items), np.int64)
    for r, it in enumerate(items):
        if not isinstance(it.id, str) or not it.id:
            raise InvalidRequestError(f"item {r}: the id must be a non-empty string")
        if not isinstance(it.text, str) or not it.text.strip():
            raise InvalidRequestError(f"item {it.id!r}: empty text (a new item is ranked by its text)")
        if it.category not in names:
            raise InvalidRequestError(f"item {it.id!r}: unknown category {it.category!r}; the catalog's are "
                                      f"{list(table.category_names)}")
        if isinstance(it.price, bool) or not isinstance(it.price, int | float) or not math.isfinite(it.price) \
                or it.price < 0:
            raise InvalidRequestError(f"item {it.id!r}: price must be a finite number >= 0, got {it.price!r}")
        codes[r] = names[it.category]
    return codes


def run_encoder(manifest: dict[str, Any]) -> Any:
    """The run's encoder as the manifest names it (kind, model folder, hashing dim), with its disk cache.

    Raises:
        EncoderMismatchError: It cannot be built here (a missing model folder, an unknown kind).
    """
    e = manifest["encoder"]
    try:
        from configs.schema import EncoderConfig
        from encoders.factory import make_encoder

        return make_encoder(EncoderConfig(kind=e["kind"], model_path=e.get("model_path"),
                                          hashing_dim=e.get("hashing_dim") or 256, progress=False))
    except Exception as exc:  # a missing model folder, an unknown kind
        raise EncoderMismatchError(f"cannot build the run's encoder {e.get('name')!r}: {exc}") from exc


def encode_items(encoder: Any, expected_name: str, dim: int, texts: list[str]) -> np.ndarray:
    """Encode ``texts`` with ``encoder``, which must be the run's (``expected_name``): float32 (n, D).

    Raises:
        EncoderMismatchError: Another encoder, or vectors of another dimension.
    """
    if encoder is None:
        raise EncoderMismatchError("no encoder is available to embed new items")
    if encoder.name != expected_name:
        raise EncoderMismatchError(f"encoder {encoder.name!r} is not the run's ({expected_name!r}): its vectors "
                                   "would not be comparable with the catalog's")
    emb = np.asarray(encoder.encode(texts), np.float32)
    if emb.shape != (len(texts), dim):
        raise EncoderMismatchError(f"the encoder returned shape {emb.shape}, expected ({len(texts)}, {dim})")
    return emb


def extend_table(table: ItemTable, items: Sequence[NewItem], codes: np.ndarray, emb: np.ndarray) -> ItemTable:
    """A new table: ``table``'s rows, then ``items`` (zero factors, popularity 0, scaled price, ``is_new``).

    The fingerprint (the Redis key space of user states) is kept: rows are only appended, so states stay valid.
    """
    assert table.price is not None
    k = len(items)
    scale = max(float(np.log1p(table.price.max())), 1e-6) if len(table.price) else 1.0
    price = np.array([it.price for it in items], np.float32)
    feats = np.zeros((k, table.features.shape[1]), np.float32)
    feats[:, 1] = np.minimum(np.log1p(price) / scale, 1.0)  # column 0, popularity, stays 0
    ids = np.concatenate([table.ids, np.array([it.id for it in items], dtype=str)])  # numpy widens the dtype
    index = dict(table.index)
    index.update({it.id: table.n_items + r for r, it in enumerate(items)})
    is_new = table.is_new if table.is_new is not None else np.zeros(table.n_items, bool)
    return ItemTable(ids=ids, index=index, emb=np.concatenate([table.emb, emb]),
                     factors=np.concatenate([table.factors, np.zeros((k, table.cf_dim), np.float32)]),
                     features=np.concatenate([table.features, feats]),
                     category=np.concatenate([table.category, codes]), n_categories=table.n_categories,
                     fingerprint=table.fingerprint, category_names=table.category_names,
                     price=np.concatenate([table.price, price]), is_new=np.concatenate([is_new, np.ones(k, bool)]))
