"""Maximum-inner-product retrieval over item vectors: exact (chunked) for small catalogs, faiss IVF above a size.

The per-user retrieval lists of large worlds (``llm_top``, ``cf_top``, the organic-history candidates) come from
here. Exact search scores a chunk of queries against all M items at a time, so memory stays O(chunk·M), never
U·M. The approximate index is a faiss ``IndexIVFFlat`` over the items reduced from inner product to L2 (below;
k-means cells, ``nprobe`` cells scanned per query); it is built once per (world, vectors) and cached in the world
folder (``World.save`` / ``World.index``). :func:`recall_at` measures the approximate lists against exact search.

The MIPS -> L2 reduction (Bachrach et al. 2014): with ``R = max_i ‖x_i‖``, the items become
``x̃_i = [x_i, sqrt(R² − ‖x_i‖²)]`` (d + 1 columns, all of norm R) and the queries ``q̃ = [q, 0]``, so
``‖q̃ − x̃_i‖² = ‖q‖² + R² − 2 q·x_i``: the L2 order is the inner-product order exactly. Inner-product IVF cells
over unnormalised vectors (the ALS factors) hold the best items poorly (an item of large norm scores high with
queries far from its cell's centroid): at 1M items, ``cf_top`` over 16-d ALS factors had recall 0.32 that way;
L2 cells over the reduced vectors are ordinary Voronoi cells of points on one sphere.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from envs.topk import top_k

#: Queries scored at once by exact search: the (chunk, M) float32 score block is the peak extra memory.
EXACT_CHUNK_CELLS = 32_000_000

#: Items added to the approximate index per call (bounds the reduced (chunk, d + 1) float32 copy).
ADD_CHUNK = 65_536


def exact_top(queries: np.ndarray, items: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` items of highest inner product with each query, exactly, in chunks of queries.

    Args:
        queries: float32 (Q, d).
        items: float32 (M, d).
        k: List length (clipped to M).

    Returns:
        int64 (Q, min(k, M)) item ids, best first (ties: :func:`envs.topk.top_k` ``"partition"``).
    """
    q, m = len(queries), len(items)
    k = min(k, m)
    out = np.empty((q, k), np.int64)
    chunk = max(1, EXACT_CHUNK_CELLS // max(m, 1))
    for lo in range(0, q, chunk):
        scores = queries[lo:lo + chunk] @ items.T
        out[lo:lo + chunk] = top_k(scores, k, ties="partition")
    return out


def fingerprint(vectors: np.ndarray) -> str:
    """A cheap identity of an item-vector array: shape, dtype and a hash of a strided sample of rows."""
    step = max(1, len(vectors) // 4096)
    h = hashlib.sha1(np.ascontiguousarray(vectors[::step]).tobytes())
    h.update(repr((vectors.shape, str(vectors.dtype))).encode())
    return h.hexdigest()[:16]


@dataclass
class AnnIndex:
    """A faiss IVF-flat index over M item vectors, searched by inner product through the MIPS -> L2 reduction.

    Attributes:
        index: The faiss index (L2 metric over the reduced (M, d + 1) vectors: :func:`mips_items`).
        fingerprint: :func:`fingerprint` of the vectors it was built on.
        nprobe: Cells scanned per query.
    """

    index: object
    fingerprint: str
    nprobe: int

    #: What a saved index holds; one saved with another kind (the inner-product cells of before) is stale.
    KIND = "ivf-flat-l2-mips-nonzero"

    @classmethod
    def build(cls, vectors: np.ndarray, nprobe: int = 16, seed: int = 0) -> AnnIndex:
        """Train the k-means cells on a sample of the items and add all of them.

        Only the items of nonzero vector are indexed (with their catalog ids): an all-zero vector scores 0 with every
        query, and ALS leaves the factors of items without interactions at zero (most of a 1M catalog with a few
        thousand users); the reduction would put all of them on one point and waste the cells. ``nlist =
        round(sqrt(n))`` cells for the n indexed items (clipped to [1, 4096] and to n/39); k-means on at most 40
        points per cell, 10 iterations, so that building stays O(n·sqrt(n)·d) and a 1M-item catalog indexes in tens
        of seconds.

        Args:
            vectors: float32 (M, d) item vectors.
            nprobe: Cells scanned per query (more: higher recall, slower).
            seed: k-means seed.

        Returns:
            The index.

        Raises:
            ValueError: For an empty catalog or ``nprobe`` < 1.
        """
        import faiss

        if nprobe < 1:
            raise ValueError(f"ann nprobe must be >= 1, got {nprobe}")
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        m, d = vectors.shape
        if m == 0 or d == 0:
            raise ValueError(f"cannot index {m} item vectors of dimension {d}")
        sq = np.einsum("md,md->m", vectors, vectors, dtype=np.float64)  # (M,) squared norms
        keep = np.flatnonzero(sq > 0)
        if keep.size == 0:  # nothing to tell apart: index them all (every query scores 0 everywhere)
            keep = np.arange(m)
        n = keep.size
        nlist = int(max(1, min(4096, round(np.sqrt(n)), n // 39)))  # faiss wants >= 39 training points per cell
        quantizer = faiss.IndexFlatL2(d + 1)
        index = faiss.IndexIVFFlat(quantizer, d + 1, nlist, faiss.METRIC_L2)
        index.cp.niter = 10
        index.cp.seed = seed
        index.cp.max_points_per_centroid = 40
        gen = np.random.default_rng(seed)
        r2 = float(sq.max())
        sample = keep if n <= 40 * nlist else keep[np.sort(gen.choice(n, 40 * nlist, replace=False))]
        index.train(mips_items(vectors[sample], sq[sample], r2))
        for lo in range(0, n, ADD_CHUNK):  # the (chunk, d + 1) copies bound the extra memory
            ids = keep[lo:lo + ADD_CHUNK]
            index.add_with_ids(mips_items(vectors[ids], sq[ids], r2), ids.astype(np.int64))
        index.nprobe = min(nprobe, nlist)
        return cls(index=index, fingerprint=fingerprint(vectors), nprobe=index.nprobe)

    def search(self, queries: np.ndarray, k: int, chunk: int = 8192) -> np.ndarray:
        """Approximate top-``k`` items by inner product, in chunks of queries.

        Args:
            queries: float32 (Q, d).
            k: List length (clipped to the index size).
            chunk: Queries per faiss call (bounds the (chunk, k) result buffers).

        Returns:
            int64 (Q, k) item ids, best first. Where a query's scanned cells hold fewer than k items the list is
            padded with its own first id (the session kernel skips repeats), or item 0 if it found none.
        """
        k = min(k, self.index.ntotal)
        out = np.empty((len(queries), k), np.int64)
        for lo in range(0, len(queries), chunk):
            q = np.asarray(queries[lo:lo + chunk], np.float32)
            q = np.concatenate([q, np.zeros((len(q), 1), np.float32)], axis=1)  # (chunk, d + 1): [q, 0]
            _, ids = self.index.search(q, k)
            first = np.where(ids[:, :1] >= 0, ids[:, :1], 0)
            out[lo:lo + chunk] = np.where(ids >= 0, ids, first)
        return out

    def save(self, path: Path) -> None:
        """Write the index (``path``) and its fingerprint (``path`` + ``.json``), each atomically."""
        import faiss

        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        try:
            faiss.write_index(self.index, tmp)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        from configs.fileio import atomic_write_text

        atomic_write_text(path.with_suffix(path.suffix + ".json"),
                          json.dumps({"fingerprint": self.fingerprint, "nprobe": self.nprobe, "kind": self.KIND}))

    @classmethod
    def load(cls, path: Path, expect: str) -> AnnIndex | None:
        """The index saved at ``path`` if its fingerprint is ``expect`` and its kind :attr:`KIND`, else ``None``
        (missing or stale)."""
        meta_path = path.with_suffix(path.suffix + ".json")
        if not path.is_file() or not meta_path.is_file():
            return None
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if meta.get("fingerprint") != expect or meta.get("kind") != cls.KIND:
            return None
        import faiss

        try:
            index = faiss.read_index(str(path))
        except RuntimeError:
            return None
        index.nprobe = int(meta.get("nprobe", 16))
        return cls(index=index, fingerprint=expect, nprobe=index.nprobe)


def mips_items(vectors: np.ndarray, sq_norms: np.ndarray, r2: float) -> np.ndarray:
    """Item vectors with the MIPS -> L2 column ``sqrt(R² − ‖x‖²)`` appended.

    Args:
        vectors: (n, d) item vectors.
        sq_norms: (n,) their squared norms.
        r2: ``R²``, the largest squared norm over the whole catalog.

    Returns:
        float32 (n, d + 1), C-contiguous.
    """
    out = np.empty((len(vectors), vectors.shape[1] + 1), np.float32)
    out[:, :-1] = vectors
    out[:, -1] = np.sqrt(np.maximum(r2 - sq_norms, 0.0))
    return out


def recall_at(approx: np.ndarray, exact: np.ndarray) -> float:
    """Mean share of each exact top-L list found in the approximate list of the same row: (Q, L) each."""
    if exact.size == 0:
        return 1.0
    hits = [np.intersect1d(a, e).size / e.shape[0] for a, e in zip(approx, exact, strict=True)]
    return float(np.mean(hits))
