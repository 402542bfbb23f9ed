"""A simulated world: catalog, item embeddings, user populations and the CF model fitted on logged data.

A world is built once per configuration (``envs.presets.build_world``) and cached on disk; the envs only read
it. Per-population lookup tables of shape (U, M) are derived lazily so that a session's start is a row
copy, not a matrix product (see DESIGN_NOTES.md, "The hot path").
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from configs.fileio import atomic_dir
from envs.catalog import Catalog
from envs.topk import top_k
from envs.users import Population

#: Above this catalog size the Gram matrix (4·M² bytes) is not materialised.
GRAM_MAX_ITEMS = 12_000


@dataclass
class PopulationTables:
    """Per-user × per-item tables of one population, float32 (U, M) unless noted.

    Attributes:
        sem_aff: Hidden semantic affinity ``θ_u·e_i`` at session start.
        sem_mu: float32 (U,) mean of ``sem_aff`` over the catalog.
        sem_sd: float32 (U,) std of ``sem_aff`` over the catalog.
        static_util: The part of the utility that does not drift:
            ``a·(1-ρ_u)·z_cf + q·quality_i − p_u·(log1p(price_i) − mean)``.
        state_sim: Observed ``s_u·e_i`` for the pooled prior-history state ``s_u`` (unnormalised).
        cf_obs: Observed CF score ``P_u·Q_i``, standardised per user over the catalog.
        llm_top: int64 (U, L) items with the highest observed LLM similarity (history excluded later).
        cf_top: int64 (U, L) items with the highest observed CF score.
        packed: float32 (U, M, 4): ``sem_aff, static_util, cf_obs, state_sim`` interleaved, the four
            (U, M) tables above being views of it. A session start gathers all four for ~300 items of one
            user, and one 16-byte cell per item is one cache miss instead of four (see DESIGN_NOTES.md).
    """

    sem_aff: np.ndarray
    sem_mu: np.ndarray
    sem_sd: np.ndarray
    static_util: np.ndarray
    state_sim: np.ndarray
    cf_obs: np.ndarray
    llm_top: np.ndarray
    cf_top: np.ndarray
    packed: np.ndarray


def _standardise_rows(x: np.ndarray) -> np.ndarray:
    mu = x.mean(axis=1, keepdims=True)
    sd = x.std(axis=1, keepdims=True)
    return ((x - mu) / np.maximum(sd, 1e-6)).astype(np.float32)


@dataclass
class World:
    """Everything the simulator reads.

    Attributes:
        catalog: The items.
        item_emb: float32 (M, D) L2-normalised item embeddings.
        populations: ``{"train": …, "heldout": …}``.
        item_factors: float32 (M, F') CF item factors fitted on the logs (zeros before the fit).
        popularity: float32 (M,) logged clicks per item.
        encoder_name: Identity of the encoder that made the embeddings.
        meta: Free-form provenance (config hash, log sizes, fit times).
        new_items: bool (M,) items without logged interactions when the CF model was fitted (zero factors,
            popularity 0; ``env.catalog.new_item_share``, ``envs/shift.py``); empty when there are none.
    """

    catalog: Catalog
    item_emb: np.ndarray
    populations: dict[str, Population]
    item_factors: np.ndarray
    popularity: np.ndarray
    encoder_name: str
    meta: dict = field(default_factory=dict)
    new_items: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    _tables: dict[tuple[str, int, float, float], PopulationTables] = field(default_factory=dict, repr=False)

    @property
    def n_items(self) -> int:
        """M."""
        return self.catalog.n_items

    @property
    def dim(self) -> int:
        """D."""
        return int(self.item_emb.shape[1])

    @cached_property
    def gram(self) -> np.ndarray | None:
        """float32 (M, M) item Gram matrix ``E Eᵀ``; ``None`` above :data:`GRAM_MAX_ITEMS`."""
        if self.n_items > GRAM_MAX_ITEMS:
            return None
        return (self.item_emb @ self.item_emb.T).astype(np.float32)

    def gram_block(self, items: np.ndarray, others: np.ndarray) -> np.ndarray:
        """``e_items[r] · e_others[r, s]``: float32 (r, S) for items int (r,) and others int (r, S).

        Read from the Gram matrix when it is materialised, else computed from the embeddings.
        """
        g = self.gram
        if g is not None:
            return g.ravel()[items[:, None] * self.n_items + others]
        return np.einsum("rd,rsd->rs", self.item_emb[items], self.item_emb[others]).astype(np.float32)

    @cached_property
    def log_price(self) -> np.ndarray:
        """float32 (M,) ``log1p(price)`` centred on its catalog mean."""
        lp = np.log1p(self.catalog.price.astype(np.float64))
        return (lp - lp.mean()).astype(np.float32)

    @cached_property
    def item_features(self) -> np.ndarray:
        """float32 (M, 2) observable static features: popularity and price, each scaled to [0, 1]."""
        pop = np.log1p(self.popularity) / max(np.log1p(self.popularity.max()), 1e-6)
        price = np.log1p(self.catalog.price) / max(np.log1p(self.catalog.price.max()), 1e-6)
        return np.stack([pop, price], axis=1).astype(np.float32)

    @cached_property
    def popular_items(self) -> np.ndarray:
        """int64 (M,) items by logged popularity, most popular first (ties by id)."""
        return np.argsort(-self.popularity, kind="stable").astype(np.int64)

    def tables(self, population: str, top_k: int, affinity_scale: float, quality_weight: float) -> PopulationTables:
        """The (U, M) lookup tables of a population, computed once and kept in memory.

        Args:
            population: Population name.
            top_k: Length L of the per-user retrieval lists.
            affinity_scale: ``a`` in the utility.
            quality_weight: ``q`` in the utility.

        Returns:
            The tables.

        Raises:
            KeyError: For an unknown population, naming the known ones.
        """
        if population not in self.populations:
            raise KeyError(f"unknown user population {population!r}; this world has {sorted(self.populations)}")
        key = (population, top_k, affinity_scale, quality_weight)
        if key not in self._tables:
            self._tables[key] = self._compute_tables(self.populations[population], top_k, affinity_scale,
                                                     quality_weight)
        return self._tables[key]

    def _compute_tables(self, pop: Population, length: int, affinity_scale: float,
                        quality_weight: float) -> PopulationTables:
        sem_aff = (pop.sem_taste @ self.item_emb.T).astype(np.float32)
        cf_true = _standardise_rows(pop.cf_taste @ self.catalog.cf_factor.T)
        static = (
            affinity_scale * (1.0 - pop.rho)[:, None] * cf_true
            + quality_weight * self.catalog.quality[None, :]
            - pop.price_sens[:, None] * self.log_price[None, :]
        ).astype(np.float32)
        state_sim = (pop.init_state @ self.item_emb.T).astype(np.float32)
        if self.item_factors.size and np.any(pop.cf_user):
            cf_obs = _standardise_rows(pop.cf_user @ self.item_factors.T)
        else:
            cf_obs = np.zeros((pop.size, self.n_items), np.float32)
        packed = np.empty((pop.size, self.n_items, 4), np.float32)
        for j, table in enumerate((sem_aff, static, cf_obs, state_sim)):
            packed[:, :, j] = table
        return PopulationTables(
            sem_aff=packed[:, :, 0],
            sem_mu=sem_aff.mean(axis=1).astype(np.float32),
            sem_sd=np.maximum(sem_aff.std(axis=1), 1e-6).astype(np.float32),
            static_util=packed[:, :, 1],
            state_sim=packed[:, :, 3],
            cf_obs=packed[:, :, 2],
            llm_top=top_k(state_sim, length, ties="partition"),  # cold users' (all-zero) lists: selection order
            cf_top=top_k(cf_obs, length, ties="partition"),
            packed=packed,
        )

    # ---- persistence -------------------------------------------------------------------------------------

    def save(self, directory: str | Path) -> None:
        """Write the world to ``directory`` atomically (a temp folder renamed into place).

        Args:
            directory: Destination folder (replaced if it exists).
        """
        with atomic_dir(directory) as tmp:
            cat = self.catalog
            arrays = {
                "item_emb": self.item_emb,
                "item_factors": self.item_factors,
                "popularity": self.popularity,
                "cat_category": cat.category,
                "cat_price": cat.price,
                "cat_quality": cat.quality,
                "cat_cf_factor": cat.cf_factor,
                "cat_themes": cat.themes,
            }
            if self.new_items.any():
                arrays["new_items"] = self.new_items
            for name, pop in self.populations.items():
                for attr in ("sem_taste", "cf_taste", "rho", "price_sens", "patience", "history", "init_state",
                             "cf_user"):
                    arrays[f"pop_{name}_{attr}"] = getattr(pop, attr)
            np.savez(tmp / "arrays.npz", **arrays)
            meta = {
                "encoder_name": self.encoder_name,
                "ids": cat.ids,
                "texts": cat.texts,
                "category_names": cat.category_names,
                "personas": {n: p.persona for n, p in self.populations.items()},
                "meta": self.meta,
            }
            (tmp / "world.json").write_text(json.dumps(meta), encoding="utf-8")

    @classmethod
    def load(cls, directory: str | Path) -> World:
        """Read a world written by :meth:`save`.

        Raises:
            FileNotFoundError: If the folder or its files are missing.
            ValueError: If the files are corrupt.
        """
        src = Path(directory)
        if not (src / "world.json").is_file() or not (src / "arrays.npz").is_file():
            raise FileNotFoundError(f"{src} is not a recfeed world folder (needs world.json and arrays.npz)")
        try:
            meta = json.loads((src / "world.json").read_text(encoding="utf-8"))
            arrays = dict(np.load(src / "arrays.npz"))
        except (OSError, ValueError, json.JSONDecodeError) as exc:
            raise ValueError(f"world folder {src} is corrupt: {exc}") from exc
        cat = Catalog(
            ids=meta["ids"],
            texts=meta["texts"],
            category=arrays["cat_category"],
            category_names=meta["category_names"],
            price=arrays["cat_price"],
            quality=arrays["cat_quality"],
            cf_factor=arrays["cat_cf_factor"],
            themes=arrays["cat_themes"],
        )
        pops = {}
        for name, persona in meta["personas"].items():
            fields = {a: arrays[f"pop_{name}_{a}"] for a in ("sem_taste", "cf_taste", "rho", "price_sens",
                                                            "patience", "history", "init_state", "cf_user")}
            pops[name] = Population(name=name, persona=persona, **fields)
        return cls(
            catalog=cat,
            item_emb=arrays["item_emb"],
            populations=pops,
            item_factors=arrays["item_factors"],
            popularity=arrays["popularity"],
            encoder_name=meta["encoder_name"],
            meta=meta.get("meta", {}),
            new_items=arrays.get("new_items", np.zeros(0, bool)).astype(bool),
        )
