"""Feature-hashing text encoder: deterministic, dependency-free, no semantics beyond shared words.

For tests and explicit opt-in (``encoder.kind: hashing``) only; never a fallback for a missing model.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

import numpy as np

from encoders.base import check_texts

_WORD = re.compile(r"\w+")


def _hash64(feature: str) -> int:
    """A 64-bit hash of a feature that is the same on every machine and every run (unlike ``hash``)."""
    return int.from_bytes(hashlib.blake2b(feature.encode("utf-8"), digest_size=8).digest(), "little")


class HashingEncoder:
    """Hashes lowercase word n-grams into signed buckets, with sublinear term frequency and L2 norm.

    A text's vector is ``Σ_f sign(f) · (1 + log tf(f))`` over its distinct n-grams ``f``, each added to bucket
    ``h(f) mod D`` with a sign taken from another bit of the same blake2b hash, then L2-normalised. A text with
    no word characters (or, rarely, whose signed buckets all cancel) maps to the all-zero row.

    Args:
        dim: Output dimension D.
        ngram: Smallest and largest n-gram length in words, ``(1, 2)`` for unigrams and bigrams.

    Raises:
        ValueError: ``dim`` < 1 or an invalid ``ngram`` range.
    """

    def __init__(self, dim: int = 256, ngram: tuple[int, int] = (1, 2)) -> None:
        if dim < 1:
            raise ValueError(f"HashingEncoder: dim must be >= 1, got {dim}")
        low, high = ngram
        if not 1 <= low <= high:
            raise ValueError(f"HashingEncoder: ngram must satisfy 1 <= low <= high, got {ngram}")
        self.dim = dim
        self.ngram = (low, high)
        # "v1" names the tokenisation and hashing scheme: bump it when either changes, so caches miss.
        self.name = f"hashing-v1:dim={dim}:ngram={low}-{high}"

    def _ngrams(self, text: str) -> list[str]:
        words = _WORD.findall(text.lower())
        low, high = self.ngram
        return [" ".join(words[i : i + n]) for n in range(low, high + 1) for i in range(len(words) - n + 1)]

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Encodes texts.

        Args:
            texts: n texts.

        Returns:
            float32 (n, D), L2-normalised rows (all-zero where nothing is left to normalise).
        """
        texts = check_texts(texts)
        n, dim = len(texts), self.dim
        feature_ids: dict[str, int] = {}
        rows: list[int] = []
        feats: list[int] = []
        for i, text in enumerate(texts):
            for gram in self._ngrams(text):
                rows.append(i)
                feats.append(feature_ids.setdefault(gram, len(feature_ids)))
        if not rows:
            return np.zeros((n, dim), dtype=np.float32)

        n_feats = len(feature_ids)
        hashes = np.fromiter((_hash64(f) for f in feature_ids), dtype=np.uint64, count=n_feats)  # (F,)
        # Term frequency per (text, feature) pair.
        pairs, tf = np.unique(np.asarray(rows, np.int64) * n_feats + np.asarray(feats, np.int64), return_counts=True)
        row, h = pairs // n_feats, hashes[pairs % n_feats]
        bucket = ((h >> np.uint64(1)) % np.uint64(dim)).astype(np.int64)
        sign = np.where(h & np.uint64(1), -1.0, 1.0)
        weights = sign * (1.0 + np.log(tf))
        out = np.bincount(row * dim + bucket, weights=weights, minlength=n * dim).reshape(n, dim)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        np.divide(out, norms, out=out, where=norms > 0)
        return out.astype(np.float32)
