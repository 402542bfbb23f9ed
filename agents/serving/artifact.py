"""The exported artifact as the runtime reads it: the manifest, the item table, the observation constants."""

from __future__ import annotations

import hashlib
import io
import json
import operator
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from agents.serving.errors import UnknownItemsError
from envs.spaces import CONTEXT_NAMES, FEATURE_NAMES

SUPPORTED_EXPORT_VERSIONS = (1, 2, 3)  # 2 adds "category_cap" (the slate mode's soft cap); 3 the "parts" output
#: The simulator's dwell cap when a manifest does not record one (``configs.schema.UserConfig.dwell_cap``).
DEFAULT_DWELL_CAP_S = 900.0


@dataclass
class ItemTable:
    """The exported catalog side of the features.

    Attributes:
        ids: (M,) item ids.
        index: id → row.
        emb: float32 (M, D) L2-normalised embeddings.
        factors: float32 (M, F') CF item factors.
        features: float32 (M, 2) scaled popularity and price.
        category: int64 (M,).
        n_categories: C.
        fingerprint: Short hash of the item table (names the Redis key space: item rows are stored in states).
        category_names: (C,) category names (empty for an artifact exported before they were kept).
        price: float32 (M,) raw prices (``None`` for an artifact exported before they were kept): the scale of a
            new item's price feature (``POST /items``, ``agents/serving/catalog.py``).
        is_new: bool (M,) items without interaction history (zero CF factors, popularity 0): the world's new items
            and those added while serving; ``None`` when the artifact does not say.
    """

    ids: np.ndarray
    index: dict[str, int]
    emb: np.ndarray
    factors: np.ndarray
    features: np.ndarray
    category: np.ndarray
    n_categories: int
    fingerprint: str
    category_names: tuple[str, ...] = ()
    price: np.ndarray | None = None
    is_new: np.ndarray | None = None
    cf_mean: np.ndarray = field(init=False)  # float64 (F',) mean of the factors over the catalog
    cf_cov: np.ndarray = field(init=False)  # float64 (F', F') their population covariance
    cf_gram: np.ndarray = field(init=False)  # float64 (F', F') QᵀQ
    factors64: np.ndarray = field(init=False)  # float64 (M, F') the factors, for the fold-in

    def __post_init__(self) -> None:
        q = self.factors.astype(np.float64)
        self.factors64 = q
        self.cf_mean = q.mean(axis=0) if len(q) else np.zeros(q.shape[1])
        centred = q - self.cf_mean
        self.cf_cov = centred.T @ centred / max(len(q), 1)
        self.cf_gram = q.T @ q

    @classmethod
    def load(cls, path: str | Path, n_categories: int | None = None) -> ItemTable:
        """Read ``items.npz`` (no pickle)."""
        raw = Path(path).read_bytes()
        with np.load(io.BytesIO(raw), allow_pickle=False) as z:
            ids = z["ids"]
            cat = z["category"].astype(np.int64)
            names = tuple(str(n) for n in z["category_names"].tolist()) if "category_names" in z.files else ()
            c = int(n_categories if n_categories is not None else len(names))
            price = np.asarray(z["price"], np.float32) if "price" in z.files else None
            is_new = np.asarray(z["is_new"], bool) if "is_new" in z.files else None
            return cls(ids=ids, index={str(s): i for i, s in enumerate(ids.tolist())},
                       emb=np.ascontiguousarray(z["item_emb"], np.float32),
                       factors=np.ascontiguousarray(z["item_factors"], np.float32),
                       features=np.ascontiguousarray(z["item_features"], np.float32), category=cat, n_categories=c,
                       fingerprint=hashlib.sha256(raw).hexdigest()[:12], category_names=names, price=price,
                       is_new=is_new)

    @property
    def n_items(self) -> int:
        """M."""
        return len(self.ids)

    @property
    def dim(self) -> int:
        """D."""
        return int(self.emb.shape[1])

    @property
    def cf_dim(self) -> int:
        """F'."""
        return int(self.factors.shape[1])

    def lookup(self, item_ids: Sequence[str]) -> np.ndarray:
        """Rows of ``item_ids``: int64 (n,).

        Raises:
            UnknownItemsError: Naming the ids that are not in the catalog.
        """
        index = self.index
        try:
            if len(item_ids) == 1:
                return np.array([index[item_ids[0]]], np.int64)
            return np.array(operator.itemgetter(*item_ids)(index), np.int64)
        except (KeyError, TypeError):
            unknown = list(dict.fromkeys(i for i in item_ids if not isinstance(i, str) or i not in index))
            raise UnknownItemsError([str(u) for u in unknown]) from None


@dataclass(frozen=True)
class ObsConstants:
    """The simulator's observation constants the runtime needs (from the manifest).

    Attributes:
        obs_decay: Decay per request of the exposure / click counters and context EMAs (``envs.core.OBS_DECAY``).
        state_decay: Weight kept by the pooled state on a click.
        click_weight: Pool weight of a click.
        purchase_weight: Extra pool weight of a purchase.
        max_steps: The session length ``t_frac`` is measured against.
        cf_regularization: ALS λ of the fold-in.
        cf_alpha: ALS confidence scale.
    """

    obs_decay: float
    state_decay: float
    click_weight: float
    purchase_weight: float
    max_steps: int
    cf_regularization: float
    cf_alpha: float

    @classmethod
    def from_manifest(cls, m: dict[str, Any]) -> ObsConstants:
        """From ``manifest.json``."""
        o, cf = m["obs"], m["cf"]
        return cls(obs_decay=float(o["obs_decay"]), state_decay=float(o["state_decay"]),
                   click_weight=float(o["click_weight"]), purchase_weight=float(o["purchase_weight"]),
                   max_steps=int(o["max_steps"]), cf_regularization=float(cf["regularization"]),
                   cf_alpha=float(cf["alpha"]))


def load_manifest(path: str | Path) -> dict[str, Any]:
    """Read and check ``manifest.json`` of an artifact directory.

    Raises:
        FileNotFoundError: If the directory has no manifest.
        ValueError: For an unsupported version or a layout that differs from ``envs/spaces.py``.
    """
    p = Path(path) / "manifest.json"
    if not p.is_file():
        raise FileNotFoundError(f"{Path(path)} is not an exported policy (no manifest.json); run "
                                "`python -m agents.export RUN_DIR` first")
    m = json.loads(p.read_text(encoding="utf-8"))
    if m.get("version") not in SUPPORTED_EXPORT_VERSIONS:
        raise ValueError(f"export version {m.get('version')} is not supported (this runtime reads "
                         f"{SUPPORTED_EXPORT_VERSIONS})")
    if tuple(m["feature_names"]) != FEATURE_NAMES or tuple(m["context_names"]) != CONTEXT_NAMES:
        raise ValueError("the exported feature/context layout differs from envs/spaces.py of this runtime")
    return m
