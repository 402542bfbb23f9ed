"""The text-encoder contract shared by every encoder in recfeed."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np


class EncoderError(RuntimeError):
    """An encoder cannot be built or cannot produce embeddings."""


class ModelNotFoundError(EncoderError, FileNotFoundError):
    """A model folder is missing or holds no usable model (catchable as ``FileNotFoundError`` too)."""


@runtime_checkable
class TextEncoder(Protocol):
    """Maps texts to L2-normalised float32 vectors.

    Attributes:
        name: Identity of the encoder and its weights, stable across machines; the embedding cache keys on it,
            so it must change whenever the vectors for the same text could change.
        dim: Output dimension D.
    """

    name: str
    dim: int

    def encode(self, texts: list[str]) -> np.ndarray:
        """Encodes texts.

        Args:
            texts: The texts, n of them (an empty list is allowed).

        Returns:
            float32 (n, D), row i the L2-normalised embedding of ``texts[i]``; (0, D) for an empty list.
        """
        ...


def check_texts(texts: Sequence[str]) -> list[str]:
    """Validates an ``encode`` argument and returns it as a list.

    Args:
        texts: Should be a sequence of strings.

    Returns:
        The texts as a list.

    Raises:
        TypeError: ``texts`` is a single string (a classic slip that would encode each character) or holds a
            non-string.
    """
    if isinstance(texts, str):
        raise TypeError("encode() takes a list of texts, got a single str; wrap it: encode([text])")
    texts = list(texts)
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"encode(): texts[{i}] is {type(text).__name__}, expected str")
    return texts
