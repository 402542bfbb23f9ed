"""Builds the configured encoder, wrapped in the on-disk cache."""

from __future__ import annotations

from configs.schema import EncoderConfig
from encoders.base import TextEncoder
from encoders.cache import CachedEncoder, EmbeddingCache
from encoders.hashing import HashingEncoder
from encoders.transformer import TransformerEncoder


def make_encoder(cfg: EncoderConfig) -> CachedEncoder:
    """Builds the encoder ``cfg`` describes, behind an :class:`EmbeddingCache`.

    Args:
        cfg: Encoder settings; ``cfg.cache_dir`` ``None`` means ``$RECFEED_CACHE`` or ``~/.cache/recfeed``.

    Returns:
        A cached :class:`~encoders.base.TextEncoder` (its ``hits`` / ``misses`` count cache use).

    Raises:
        ValueError: Unknown ``cfg.kind``.
        ModelNotFoundError: ``kind`` is ``"transformer"`` and the model folder is missing or empty.
    """
    inner: TextEncoder
    if cfg.kind == "transformer":
        inner = TransformerEncoder(cfg.model_path, cfg.device, cfg.batch_size, cfg.max_length, cfg.progress)
    elif cfg.kind == "hashing":
        inner = HashingEncoder(cfg.hashing_dim)
    else:
        raise ValueError(f"encoder.kind: expected 'transformer' or 'hashing', got {cfg.kind!r}")
    return CachedEncoder(inner, EmbeddingCache(cfg.cache_dir))
