"""On-disk embedding cache keyed by (encoder name, text), in one sqlite file per cache folder.

The cache is an optimisation and never the reason a run fails: a corrupt or truncated database file is moved
aside with a warning and recreated empty; a read or write that fails for another reason (disk full, a lock
held past the busy timeout) is skipped with a warning and the embeddings are computed as if not cached.
Several processes may read and write the same folder at once (WAL journal, busy timeout, one transaction per
write batch, so a crash never leaves a half-written row).
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import time
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from encoders.base import EncoderError, TextEncoder, check_texts

DB_FILENAME = "embeddings.sqlite3"
BUSY_TIMEOUT_S = 60.0
"""How long a reader or writer waits for another process's lock before giving up on that operation."""
_QUERY_CHUNK = 500  # keys per IN (...) query, well below sqlite's bound-parameter limit


def default_cache_dir() -> Path:
    """The cache folder used when none is configured: ``$RECFEED_CACHE``, else ``~/.cache/recfeed``."""
    env = os.environ.get("RECFEED_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "recfeed"


def _key(name: str, text: str) -> bytes:
    return hashlib.sha256(f"{name}\0{text}".encode("utf-8", "surrogatepass")).digest()


def _is_corruption(exc: sqlite3.DatabaseError) -> bool:
    # A corrupt or not-a-database file raises the base DatabaseError (SQLITE_CORRUPT / SQLITE_NOTADB); locks,
    # I/O errors and a full disk raise its subclass OperationalError and say nothing about the file's state.
    return type(exc) is sqlite3.DatabaseError


class EmbeddingCache:
    """Embedding vectors on disk, keyed by ``sha256(encoder name + "\\0" + text)``.

    Opening runs sqlite's ``quick_check`` (its cost grows with the file: a fraction of a second for hundreds of
    MB). Not thread-safe: use one instance per thread or process.

    Args:
        directory: Cache folder (created if missing); ``None`` means :func:`default_cache_dir`.

    Attributes:
        path: The database file, ``<directory>/embeddings.sqlite3``.
    """

    def __init__(self, directory: str | Path | None = None) -> None:
        folder = Path(directory).expanduser() if directory is not None else default_cache_dir()
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / DB_FILENAME
        try:
            self._conn = self._open()
        except sqlite3.DatabaseError as exc:
            if not _is_corruption(exc):
                raise
            self._move_aside(exc)
            self._conn = self._open()

    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        try:
            self._enable_wal(conn)
            conn.execute("PRAGMA synchronous=NORMAL")  # durable enough for a cache, and never corrupting under WAL
            conn.execute(
                "CREATE TABLE IF NOT EXISTS embeddings (key BLOB PRIMARY KEY, dim INTEGER NOT NULL, vec BLOB NOT NULL)"
                " WITHOUT ROWID"
            )
            check = conn.execute("PRAGMA quick_check").fetchall()
            if check != [("ok",)]:
                raise sqlite3.DatabaseError(f"quick_check failed: {check[:3]}")
        except BaseException:
            conn.close()
            raise
        return conn

    @staticmethod
    def _enable_wal(conn: sqlite3.Connection) -> None:
        # Switching a new file to WAL while another process opens it fails with "database is locked" at once,
        # without the busy handler: retry until the busy timeout.
        deadline = time.monotonic() + BUSY_TIMEOUT_S
        while True:
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    def _move_aside(self, exc: sqlite3.DatabaseError) -> None:
        aside = self.path.with_name(f"{DB_FILENAME}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
        try:
            os.replace(self.path, aside)
        except FileNotFoundError:  # another process moved it aside first
            return
        for suffix in ("-wal", "-shm"):  # the journal belongs to the corrupt file
            self.path.with_name(DB_FILENAME + suffix).unlink(missing_ok=True)
        warnings.warn(
            f"Embedding cache {self.path} is corrupt ({exc}); moved it to {aside} and started an empty cache",
            RuntimeWarning,
            stacklevel=3,
        )

    def _handle(self, exc: sqlite3.DatabaseError, action: str) -> None:
        """Recovers from a failed read or write: recreate a corrupt file, or warn and go on without the cache."""
        if _is_corruption(exc):
            self._conn.close()
            self._move_aside(exc)
            self._conn = self._open()
        else:
            warnings.warn(f"Embedding cache {self.path}: {action} skipped ({exc})", RuntimeWarning, stacklevel=3)

    def get(self, name: str, texts: Iterable[str]) -> dict[str, np.ndarray]:
        """Looks texts up.

        Args:
            name: Encoder name (see :class:`~encoders.base.TextEncoder`).
            texts: Texts to look up.

        Returns:
            The texts found, each mapped to its float32 (D,) vector (read-only).
        """
        by_key = {_key(name, text): text for text in texts}
        keys = list(by_key)
        found: dict[str, np.ndarray] = {}
        try:
            for start in range(0, len(keys), _QUERY_CHUNK):
                chunk = keys[start : start + _QUERY_CHUNK]
                query = f"SELECT key, dim, vec FROM embeddings WHERE key IN ({','.join('?' * len(chunk))})"
                for key, dim, blob in self._conn.execute(query, chunk):
                    if len(blob) == 4 * dim:
                        found[by_key[key]] = np.frombuffer(blob, dtype="<f4")
        except sqlite3.DatabaseError as exc:
            self._handle(exc, "read")
            return {}
        return found

    def put(self, name: str, texts: Sequence[str], vectors: np.ndarray) -> None:
        """Stores vectors, all in one transaction.

        Args:
            name: Encoder name.
            texts: n texts.
            vectors: (n, D) their vectors (stored as float32).

        Raises:
            ValueError: ``vectors`` is not (len(texts), D).
        """
        vectors = np.ascontiguousarray(vectors, dtype="<f4")
        if vectors.ndim != 2 or len(vectors) != len(texts):
            raise ValueError(f"EmbeddingCache.put: expected vectors of shape ({len(texts)}, D), got {vectors.shape}")
        dim = vectors.shape[1]
        rows = [(_key(name, text), dim, vec.tobytes()) for text, vec in zip(texts, vectors, strict=True)]
        try:
            with self._conn:  # commits, or rolls back on error
                self._conn.execute("BEGIN IMMEDIATE")
                self._conn.executemany("INSERT OR REPLACE INTO embeddings (key, dim, vec) VALUES (?, ?, ?)", rows)
        except sqlite3.DatabaseError as exc:
            self._handle(exc, "write")

    def __len__(self) -> int:
        return self._conn.execute("SELECT COUNT(*) FROM embeddings").fetchone()[0]

    def close(self) -> None:
        """Closes the database (the last connection to close folds the WAL journal back into the file)."""
        self._conn.close()

    def __enter__(self) -> EmbeddingCache:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class CachedEncoder:
    """A :class:`~encoders.base.TextEncoder` that serves vectors from an :class:`EmbeddingCache` and encodes only
    the texts it has not seen (each distinct text once).

    Args:
        encoder: The encoder to wrap; its ``name`` keys the cache.
        cache: The cache.

    Attributes:
        name: The wrapped encoder's name.
        dim: The wrapped encoder's D.
        hits: Distinct texts served from the cache so far (counted per ``encode`` call).
        misses: Distinct texts encoded by the wrapped encoder so far.
    """

    def __init__(self, encoder: TextEncoder, cache: EmbeddingCache) -> None:
        self.encoder = encoder
        self.cache = cache
        self.name = encoder.name
        self.dim = encoder.dim
        self.hits = 0
        self.misses = 0

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Encodes texts through the cache.

        Args:
            texts: n texts (duplicates allowed).

        Returns:
            float32 (n, D), row i for ``texts[i]``.

        Raises:
            EncoderError: The wrapped encoder returned a wrong shape.
        """
        texts = check_texts(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        unique = list(dict.fromkeys(texts))
        vectors = {t: v for t, v in self.cache.get(self.name, unique).items() if v.shape == (self.dim,)}
        todo = [t for t in unique if t not in vectors]
        self.hits += len(unique) - len(todo)
        self.misses += len(todo)
        if todo:
            new = self.encoder.encode(todo)
            if new.shape != (len(todo), self.dim):
                raise EncoderError(
                    f"{self.name}: encode() returned shape {new.shape} for {len(todo)} texts, expected "
                    f"({len(todo)}, {self.dim})"
                )
            self.cache.put(self.name, todo, new)
            vectors.update(zip(todo, new, strict=True))
        return np.stack([vectors[t] for t in texts]).astype(np.float32, copy=False)
