"""Text → vector: the transformer encoder (default), the hashing encoder (explicit opt-in), the disk cache."""

from encoders.base import EncoderError, ModelNotFoundError, TextEncoder
from encoders.cache import CachedEncoder, EmbeddingCache, default_cache_dir
from encoders.factory import make_encoder
from encoders.hashing import HashingEncoder
from encoders.transformer import TransformerEncoder

__all__ = [
    "CachedEncoder",
    "EmbeddingCache",
    "EncoderError",
    "HashingEncoder",
    "ModelNotFoundError",
    "TextEncoder",
    "TransformerEncoder",
    "default_cache_dir",
    "make_encoder",
]
