"""Serving an exported policy: the live runtime (:class:`ServingRuntime`) and its HTTP service (``app``).

``python -m agents.serve RUN_DIR`` (or ``python -m agents.serving RUN_DIR``) serves it; docs/serving.md has the
API, the meaning of every feature and the design. Modules: ``runtime`` (the runtime), ``app`` (FastAPI + CLI),
``artifact`` (manifest, item table), ``state`` (user state + codec), ``stores`` (memory / Redis), ``runners``
(ONNX / TorchScript), ``features`` (observation kernels), ``metrics``, ``messages`` and ``errors``.
"""

from agents.serving.artifact import ItemTable, ObsConstants, load_manifest
from agents.serving.errors import (
    CorruptStateError,
    InvalidRequestError,
    ModelTimeoutError,
    StoreConflictError,
    UnknownItemsError,
)
from agents.serving.messages import EVENT_TYPES, Event, Recommendation
from agents.serving.runners import OnnxModel, PolicyModel, ThreadedModel, TorchScriptModel, run_exported
from agents.serving.runtime import ServingRuntime
from agents.serving.state import UserState, decode_state, encode_state
from agents.serving.stores import MemoryStore, RedisStore, StateStore
from agents.slate_mode import greedy_slate, greedy_slates, is_greedy_path

__all__ = [
    "EVENT_TYPES",
    "CorruptStateError",
    "Event",
    "InvalidRequestError",
    "ItemTable",
    "MemoryStore",
    "ModelTimeoutError",
    "ObsConstants",
    "OnnxModel",
    "PolicyModel",
    "Recommendation",
    "RedisStore",
    "ServingRuntime",
    "StateStore",
    "StoreConflictError",
    "ThreadedModel",
    "TorchScriptModel",
    "UnknownItemsError",
    "UserState",
    "decode_state",
    "encode_state",
    "greedy_slate",
    "greedy_slates",
    "is_greedy_path",
    "load_manifest",
    "run_exported",
]
