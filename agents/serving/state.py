"""One user's serving state and its compact codec (a JSON header + raw arrays; no pickle)."""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from agents.serving.errors import CorruptStateError
from envs.features import new_accumulators, reset_session

STATE_MAGIC = b"RFUS"
STATE_VERSION = 4  # 3: float32 accumulators in envs.features.ACC_NAMES order; 4: the session's click sum


ARRAY_FIELDS = ("state", "cf_factor", "cf_a", "cf_b", "cf_items", "exposure", "cat_clicks", "seen_items",
                 "seen_counts", "ctx", "slate_items", "slate_llm", "slate_cf", "sess_sum")
SCALAR_FIELDS = ("cf_pinned", "cf_dirty", "t", "n_requests", "slate_id", "slate_clicked", "last_active", "n_events",
                  "sessions")


@dataclass
class UserState:
    """One user's serving state.

    Attributes:
        state: float32 (D,) pooled LLM state, unnormalised (long-term).
        cf_factor: float32 (F',) CF user factor (long-term).
        cf_a: float64 (F', F') fold-in accumulator ``Σ_i (c_i − 1) q_i q_iᵀ``.
        cf_b: float64 (F',) fold-in accumulator ``Σ_i c_i q_i``.
        cf_items: int32 (P,) items with a positive event (their first event carries the ``−1``).
        cf_pinned: The factor was imported (kept fixed; events do not refold it).
        cf_dirty: Events changed the fold-in accumulators since ``cf_factor`` was solved.
        exposure: float32 (C,) decayed impressions per category this session, / slate size.
        cat_clicks: float32 (C,) decayed clicks per category this session.
        seen_items: int32 (S,) sorted items shown this session.
        seen_counts: float32 (S,) how often each was shown.
        ctx: float32 (A,) the session's context accumulators (``envs.features.ACC_NAMES``).
        t: Requests answered this session.
        n_requests: Requests answered ever (the ``request_id`` counter).
        slate_id: ``request_id`` of the last recorded slate (-1: none this session).
        slate_items: int32 (k,) its items, best first.
        slate_llm: float32 (k,) their ``llm_sim`` as served, minus the slate's mean (the click's evidence).
        slate_cf: float32 (k,) their ``cf_score`` as served, minus the slate's mean.
        sess_sum: float32 (D,) the sum of the embeddings of the items clicked this session (``session_sim``'s
            direction, ``env.obs_session_sim``).
        slate_clicked: The last slate already got a click.
        last_active: Wall-clock time of the last request or event.
        n_events: Events observed ever.
        sessions: Sessions started.
    """

    state: np.ndarray
    cf_factor: np.ndarray
    cf_a: np.ndarray
    cf_b: np.ndarray
    cf_items: np.ndarray
    exposure: np.ndarray
    cat_clicks: np.ndarray
    seen_items: np.ndarray
    seen_counts: np.ndarray
    ctx: np.ndarray
    slate_items: np.ndarray
    slate_llm: np.ndarray
    slate_cf: np.ndarray
    sess_sum: np.ndarray
    cf_pinned: bool = False
    cf_dirty: bool = False
    t: int = 0
    n_requests: int = 0
    slate_id: int = -1
    slate_clicked: bool = False
    last_active: float = 0.0
    n_events: int = 0
    sessions: int = 0

    @classmethod
    def new(cls, dim: int, cf_dim: int, n_categories: int) -> UserState:
        """A user never seen before: zero pooled state and CF factor, an empty session."""
        st = cls(state=np.zeros(dim, np.float32), cf_factor=np.zeros(cf_dim, np.float32),
                 cf_a=np.zeros((cf_dim, cf_dim)), cf_b=np.zeros(cf_dim), cf_items=np.zeros(0, np.int32),
                 exposure=np.zeros(n_categories, np.float32), cat_clicks=np.zeros(n_categories, np.float32),
                 seen_items=np.zeros(0, np.int32), seen_counts=np.zeros(0, np.float32),
                 ctx=new_accumulators(1)[0], slate_items=np.zeros(0, np.int32), slate_llm=np.zeros(0, np.float32),
                 slate_cf=np.zeros(0, np.float32), sess_sum=np.zeros(dim, np.float32))
        st.reset_session()
        return st

    def reset_session(self) -> None:
        """Start a new session: counters and context to zero; pooled state and CF factor kept."""
        reset_session(self.ctx, self.exposure, self.cat_clicks)
        self.seen_items = np.zeros(0, np.int32)
        self.seen_counts = np.zeros(0, np.float32)
        self.t = 0
        self.slate_id = -1
        self.slate_items = np.zeros(0, np.int32)
        self.slate_llm = np.zeros(0, np.float32)
        self.slate_cf = np.zeros(0, np.float32)
        self.slate_clicked = False
        self.sess_sum = np.zeros_like(self.sess_sum)
        self.sessions += 1

    def copy(self) -> UserState:
        """A deep copy."""
        out = UserState(**{k: getattr(self, k).copy() for k in ARRAY_FIELDS})
        for k in SCALAR_FIELDS:
            setattr(out, k, getattr(self, k))
        return out


def encode_state(st: UserState) -> bytes:
    """Serialise: ``RFUS`` + uint32 header length + JSON header (scalars, array layout) + raw array bytes."""
    arrays = [np.ascontiguousarray(getattr(st, name)) for name in ARRAY_FIELDS]
    header = {"v": STATE_VERSION, **{k: getattr(st, k) for k in SCALAR_FIELDS},
              "a": [[a.dtype.str, list(a.shape)] for a in arrays]}
    h = json.dumps(header, separators=(",", ":")).encode()
    return b"".join([STATE_MAGIC, struct.pack("<I", len(h)), h, *(a.tobytes() for a in arrays)])


def decode_state(blob: bytes) -> UserState:
    """Inverse of :func:`encode_state`.

    Raises:
        CorruptStateError: For a blob that is not a serialised state of this version.
    """
    if blob[:4] != STATE_MAGIC or len(blob) < 8:
        raise CorruptStateError("not a recfeed user state")
    (hlen,) = struct.unpack_from("<I", blob, 4)
    try:
        header = json.loads(blob[8:8 + hlen])
    except ValueError as exc:
        raise CorruptStateError(f"user state header is not JSON: {exc}") from None
    if not isinstance(header, dict) or header.get("v") != STATE_VERSION:
        raise CorruptStateError(f"user state version {header.get('v') if isinstance(header, dict) else '?'} "
                                f"is not {STATE_VERSION}")
    missing = [k for k in (*SCALAR_FIELDS, "a") if k not in header]
    if missing or len(header["a"]) != len(ARRAY_FIELDS):
        raise CorruptStateError(f"user state header lacks {missing or 'array layouts'}")
    buf = bytearray(blob[8 + hlen:])
    layout = [(np.dtype(dt), [int(x) for x in shape]) for dt, shape in header["a"]]
    if sum(math.prod(shape) * dt.itemsize for dt, shape in layout) != len(buf):
        raise CorruptStateError("user state is truncated or has trailing bytes")
    off = 0
    values: dict[str, Any] = {}
    for name, (dtype, shape) in zip(ARRAY_FIELDS, layout, strict=True):
        count = math.prod(shape)
        values[name] = np.frombuffer(buf, dtype, count=count, offset=off).reshape(shape)
        off += count * dtype.itemsize
    for k in SCALAR_FIELDS:
        values[k] = header[k]
    return UserState(**values)
