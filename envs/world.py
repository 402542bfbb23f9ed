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
from envs.ann import AnnIndex, exact_top, fingerprint, recall_at
from envs.catalog import Catalog
from envs.factored import FactoredTables, dense_table_bytes, factor_arrays, item_moments
from envs.topk import top_k
from envs.users import Population

#: Above this catalog size the Gram matrix (4·M² bytes) is not materialised.
GRAM_MAX_ITEMS = 12_000
#: Queries whose approximate lists are checked against exact search when an index is built (``meta["ann"]``).
RECALL_QUERIES = 256
#: Item arrays saved as separate ``.npy`` files (memory-mappable: ``World.load(mmap=True)``).
ITEM_ARRAYS = ("item_emb", "item_factors", "cat_cf_factor")


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


#: Cells of one float64 block of :func:`matmul_t` (128 MB).
MATMUL_BLOCK_CELLS = 1 << 24


def matmul_t(a: np.ndarray, b: np.ndarray, dtype: type = np.float32) -> np.ndarray:
    """``a @ b.T`` computed in float64 and rounded once to ``dtype``, in blocks of items.

    A float32 BLAS product rounds differently with the kernel the library picks for a shape, its thread count and
    the CPU (seen: a Ray worker's tables differed from the driver's by one unit in the last place), so two
    processes would simulate slightly different worlds. In float64 those differences stay ~1e-16 relative and
    vanish in the single rounding to float32 (except at a rounding boundary, ~1e-9 of the values), so the tables
    are the same in every process of every machine.

    Args:
        a: (U, D) rows.
        b: (M, D) rows.
        dtype: Output dtype (float32, or float64 to keep the exact product).

    Returns:
        (U, M) array of ``dtype``.
    """
    u, m = a.shape[0], b.shape[0]
    out = np.empty((u, m), dtype)
    a64 = np.asarray(a, np.float64)
    step = max(256, MATMUL_BLOCK_CELLS // max(u, 1))
    for lo in range(0, m, step):
        out[:, lo:lo + step] = a64 @ np.asarray(b[lo:lo + step], np.float64).T
    return out


def _standardise_rows(x: np.ndarray) -> np.ndarray:
    mu = x.mean(axis=1, keepdims=True)
    sd = x.std(axis=1, keepdims=True)
    return ((x - mu) / np.maximum(sd, 1e-6)).astype(np.float32)


def _load_npy(path: Path, mmap: bool) -> np.ndarray:
    """An ``.npy`` array, memory-mapped read-only when asked (an empty array cannot be mapped: read instead)."""
    if mmap:
        try:
            return np.load(path, mmap_mode="r")
        except ValueError:
            pass
    return np.load(path)


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
    folder: Path | None = field(default=None, repr=False)
    _tables: dict[tuple, PopulationTables | FactoredTables] = field(default_factory=dict, repr=False)
    _indexes: dict[str, AnnIndex] = field(default_factory=dict, repr=False)
    _moments: dict[str, tuple[str, tuple[np.ndarray, np.ndarray]]] = field(default_factory=dict, repr=False)

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
        return matmul_t(self.item_emb, self.item_emb)

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

    def tables(self, population: str, top_k: int, affinity_scale: float, quality_weight: float,
               budget_mb: float | None = None, ann_min_items: int | None = None,
               ann_nprobe: int = 16) -> PopulationTables | FactoredTables:
        """The lookup tables of a population, computed once and kept in memory.

        Dense (U, M) tables (:class:`PopulationTables`) when they fit ``budget_mb``, else the factored path
        (:class:`envs.factored.FactoredTables`: O(U·D + M·D), the per-slot values computed at session start).

        Args:
            population: Population name.
            top_k: Length L of the per-user retrieval lists.
            affinity_scale: ``a`` in the utility.
            quality_weight: ``q`` in the utility.
            budget_mb: Largest dense packed table (``16·U·M`` bytes) in MiB; ``None``: always dense.
            ann_min_items: Catalog size from which the retrieval lists of the factored path come from the
                approximate index (:mod:`envs.ann`); ``None``: always exact. The dense path is always exact.
            ann_nprobe: Cells the approximate index scans per query.

        Returns:
            The tables.

        Raises:
            KeyError: For an unknown population, naming the known ones.
            ValueError: For a negative budget or ``ann_min_items`` < 1.
        """
        if population not in self.populations:
            raise KeyError(f"unknown user population {population!r}; this world has {sorted(self.populations)}")
        if budget_mb is not None and not budget_mb >= 0:
            raise ValueError(f"table_budget_mb must be >= 0, got {budget_mb}")
        if ann_min_items is not None and ann_min_items < 1:
            raise ValueError(f"ann_min_items must be >= 1, got {ann_min_items}")
        pop = self.populations[population]
        factored = self.is_factored(pop.size, budget_mb)
        approx = factored and ann_min_items is not None and self.n_items >= ann_min_items
        key = (population, top_k, affinity_scale, quality_weight, factored, approx, ann_nprobe if approx else 0)
        if key not in self._tables:
            if factored:
                self._tables[key] = self._factored_tables(pop, top_k, affinity_scale, quality_weight,
                                                          ann_min_items if approx else None, ann_nprobe)
            else:
                self._tables[key] = self._compute_tables(pop, top_k, affinity_scale, quality_weight)
        return self._tables[key]

    def is_factored(self, n_users: int, budget_mb: float | None) -> bool:
        """Whether a population of ``n_users`` takes the factored path under ``budget_mb`` (MiB; None: never)."""
        return budget_mb is not None and dense_table_bytes(n_users, self.n_items) > budget_mb * 2**20

    def _factored_tables(self, pop: Population, length: int, affinity_scale: float, quality_weight: float,
                         ann_min_items: int | None, nprobe: int) -> FactoredTables:
        factors, sem_mu, sem_sd = factor_arrays(pop, self.catalog, self.item_emb, self.item_factors,
                                                self.log_price, affinity_scale, quality_weight, self.item_moments)
        llm_top = self.retrieve("item_emb", self.item_emb, factors.init_state, length, ann_min_items, nprobe,
                                label=f"llm_top/{pop.name}")
        if factors.item_factors.shape[1]:
            cf_top = self.retrieve("item_factors", self.item_factors, factors.cf_user, length, ann_min_items, nprobe,
                                   label=f"cf_top/{pop.name}")
        else:  # before the CF fit the dense path's cf_obs is all zero: its lists are selection order
            cf_top = top_k(np.zeros((1, self.n_items), np.float32), length, ties="partition").repeat(pop.size, 0)
        return FactoredTables(sem_mu=sem_mu, sem_sd=sem_sd, llm_top=llm_top, cf_top=cf_top,
                              packed=np.empty((pop.size, self.n_items, 0), np.float32), factors=factors,
                              approximate=ann_min_items is not None)

    def item_moments(self, name: str, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """:func:`envs.factored.item_moments` of ``vectors``, computed once per (name, vectors) and kept."""
        fp = fingerprint(vectors)
        hit = self._moments.get(name)
        if hit is None or hit[0] != fp:
            hit = self._moments[name] = (fp, item_moments(vectors))
        return hit[1]

    def retrieve(self, name: str, vectors: np.ndarray, queries: np.ndarray, k: int, ann_min_items: int | None,
                 nprobe: int = 16, label: str | None = None) -> np.ndarray:
        """Top-``k`` items by inner product ``queries · vectors`` per query: exact, or from the cached
        approximate index when ``ann_min_items`` is set and the catalog is at least that large (then the recall
        of the approximate lists against exact search, on a sample of the queries, goes to ``meta["ann"]``).

        Args:
            name: Name of the item vectors (the index's file name in the world folder).
            vectors: float32 (M, d).
            queries: float32 (Q, d).
            k: List length.
            ann_min_items: See :meth:`tables`.
            nprobe: Cells scanned per query.
            label: Key of the recall in ``meta["ann"]`` (default ``name``).

        Returns:
            int64 (Q, min(k, M)).
        """
        if ann_min_items is None or len(vectors) < ann_min_items:
            return exact_top(queries, vectors, k)
        live = np.flatnonzero(queries.any(axis=1))
        # all-zero queries (cold users) score every item 0: exact search's list for them is one fixed list
        out = np.empty((len(queries), min(k, len(vectors))), np.int64)
        out[:] = top_k(np.zeros((1, len(vectors)), np.float32), k, ties="partition")
        if live.size:
            out[live] = self.index(name, vectors, nprobe).search(queries[live], k)
            sample = np.random.default_rng(0).choice(live, min(RECALL_QUERIES, live.size), replace=False)
            self.meta.setdefault("ann", {})[label or name] = {
                "recall": round(recall_at(out[sample], exact_top(queries[sample], vectors, k)), 4),
                "L": int(out.shape[1]), "nprobe": int(self._indexes[name].nprobe),
                "nlist": int(self._indexes[name].index.nlist)}
        return out

    def index(self, name: str, vectors: np.ndarray, nprobe: int = 16) -> AnnIndex:
        """The approximate index of ``vectors``: in memory, else read from the world folder (if its fingerprint
        matches), else built (and written to the folder when the world has one)."""
        fp = fingerprint(vectors)
        idx = self._indexes.get(name)
        path = self.folder / f"ann_{name}.faiss" if self.folder is not None else None
        # low-dimensional vectors (the CF factors) scan more cells: each costs d/64 of a 256-d one, and the
        # inner-product cells of unnormalised factors hold the best items less tightly (recall 0.53 at nprobe 16)
        nprobe = nprobe * max(1, 64 // max(vectors.shape[1], 1))
        if idx is None or idx.fingerprint != fp:
            idx = AnnIndex.load(path, fp) if path is not None else None
            if idx is None:
                idx = AnnIndex.build(vectors, nprobe=nprobe)
                if path is not None:
                    idx.save(path)
            self._indexes[name] = idx
        idx.index.nprobe = idx.nprobe = nprobe
        return idx

    def _compute_tables(self, pop: Population, length: int, affinity_scale: float,
                        quality_weight: float) -> PopulationTables:
        sem_aff = matmul_t(pop.sem_taste, self.item_emb)  # float64 products: the same tables in every process
        cf_true = _standardise_rows(matmul_t(pop.cf_taste, self.catalog.cf_factor, np.float64))
        static = (
            affinity_scale * (1.0 - pop.rho)[:, None] * cf_true
            + quality_weight * self.catalog.quality[None, :]
            - pop.price_sens[:, None] * self.log_price[None, :]
        ).astype(np.float32)
        state_sim = matmul_t(pop.init_state, self.item_emb)
        if self.item_factors.size and np.any(pop.cf_user):
            cf_obs = _standardise_rows(matmul_t(pop.cf_user, self.item_factors, np.float64))
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
                if pop.has_test_items:  # calibrated worlds: each user's held-out real items (CSR)
                    arrays[f"pop_{name}_test_indptr"] = pop.test_indptr
                    arrays[f"pop_{name}_test_items"] = pop.test_items
            for name in ITEM_ARRAYS:  # one .npy each, so that a node can memory-map them (``load(mmap=True)``)
                np.save(tmp / f"{name}.npy", arrays.pop(name))
            np.savez(tmp / "arrays.npz", **arrays)
            for name, idx in self._indexes.items():  # the approximate indexes travel with the world
                idx.save(tmp / f"ann_{name}.faiss")
            meta = {
                "encoder_name": self.encoder_name,
                "ids": cat.ids,
                "texts": cat.texts,
                "category_names": cat.category_names,
                "personas": {n: p.persona for n, p in self.populations.items()},
                "meta": self.meta,
            }
            (tmp / "world.json").write_text(json.dumps(meta), encoding="utf-8")
        self.folder = Path(directory)

    @classmethod
    def load(cls, directory: str | Path, mmap: bool = False) -> World:
        """Read a world written by :meth:`save` (approximate indexes are read from the folder when first needed).

        Args:
            directory: The world folder.
            mmap: Memory-map the item arrays (``item_emb``, ``item_factors``, the hidden CF factors) read-only
                instead of reading them: processes of one node then share one copy through the page cache.

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
            for name in ITEM_ARRAYS:  # worlds saved before the item arrays moved out keep them in the npz
                if name not in arrays:
                    arrays[name] = _load_npy(src / f"{name}.npy", mmap)
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
            for a in ("test_indptr", "test_items"):  # optional: absent in synthetic and older calibrated worlds
                fields[a] = arrays.get(f"pop_{name}_{a}")
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
            folder=src,
        )
