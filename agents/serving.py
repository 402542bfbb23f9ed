"""The live ranking runtime: an exported policy ranks candidates for a user who is updated by each event.

    ranker = Ranker.load("runs/ppo-1/export")                     # in-process user store
    ranker = Ranker.load("runs/ppo-1/export", store="redis://127.0.0.1:6379/0")
    rec = ranker.recommend("u42", ["item-00017", "item-00420", ...], k=10)
    rec.items, rec.scores, rec.alpha, rec.source                  # source: "model" or "fallback"
    ranker.observe("u42", [Event("click", rec.items[2], dwell_s=41.0, request_id=rec.request_id)])

This is the serving counterpart of :class:`agents.base.Ranker` (the batched interface of the simulator): it
keeps one user's state between requests, builds the observation the policy was trained on, and answers
within a time budget.

**Features mean what the simulator means** (``envs/core.py``, ``BatchedCore.observe`` and ``step``; columns
from ``envs/spaces.py``):

* ``user``: the pooled LLM state ``s`` normalised (zeros for a new user). ``s ← state_decay·s + click_weight·e``
  on a click and ``s ← s + purchase_weight·e`` on a purchase (the simulator adds both weights in one step, a
  purchase always following its click): O(D) per event.
* ``llm_sim``: ``cos(s, e_i)``; ``popularity``, ``price``: the world's scaled item features.
* ``cf_score``: ``p_u·q_i`` standardised over the whole catalog (mean and std in closed form from the item
  factors' mean and covariance: O(F'²) per request). ``p_u`` is the ALS fold-in of the user's positive events
  against the exported item factors, with the offline fit's regularisation and confidence
  (``c = cf_alpha·w``, click w = 1, purchase w = 1 more, as ``envs/cf.py`` fits), or a factor imported with
  :meth:`Ranker.set_user` (then kept fixed, as the simulator keeps it within a session). A new user has
  ``p_u = 0``: every ``cf_score`` is 0 until the first positive event.
* ``cat_exposure``, ``cat_clicks``, ``item_seen`` and the context (``envs.spaces.CONTEXT_NAMES``): decayed by
  ``OBS_DECAY`` per answered request, over the current session. Every answered ``recommend`` counts as a slate
  shown to the user (pass ``record=False`` for a preview that changes nothing). The slate-level context
  (``click_ema``, ``click_rate``, ``last_click``, ``last_click_rank``, ``clicked_*_ema``, ``skip_streak``)
  counts the first click on the last slate (the simulator allows one click per request); every click moves
  the pooled state, the CF factor and ``cat_clicks``. ``t_frac`` is ``t / max_steps``.

A session ends after ``session_timeout_s`` without requests or events, after ``max_steps`` answered requests
(the training horizon: the policy never saw a longer session, and the per-session state stays bounded), or on
:meth:`Ranker.end_session`: the
session counters restart at zero while the pooled state and the CF factor (the user's history) are kept, as a
simulated session starts from the pooled prior history.

**Feedback** counts only for items shown to the user in the current session (others are not applied, and
counted); a dwell above the simulator's cap is applied as the cap; each context column is clipped to the range
it takes in the simulator (:func:`context_bounds`), and out-of-range columns are counted.

**Time budget.** The model runs with a deadline (``time_budget_ms``). ONNX Runtime runs are cancelled at the
deadline by a watchdog thread (``RunOptions.terminate``); TorchScript cannot be interrupted, so it runs on a
thread of its own (:class:`ThreadedModel`) and a request does not wait for it past the deadline. On a timeout,
an exception, or non-finite output, the fixed-α blend ``α·llm_sim + (1 − α)·cf_score`` with the manifest's
fallback α answers, and ``recfeed_fallback_total{reason}`` counts it.

**User state** lives in an in-process store (striped locks, LRU-bounded) or in Redis (one hash per user; an
optimistic read then a Lua compare-and-set on a version, retried on conflict, so concurrent feedback for one user
loses no event, across threads and processes). It is serialised compactly without pickle (a JSON header + raw arrays).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import operator
import queue
import struct
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

import numba
import numpy as np

from envs.spaces import (
    CONTEXT_NAMES,
    F_CAT_CLICKS,
    F_CAT_EXPOSURE,
    F_CF,
    F_ITEM_SEEN,
    F_LLM,
    F_POP,
    F_PRICE,
    FEATURE_NAMES,
)
from envs.users import pool_history

R = TypeVar("R")

EVENT_TYPES: tuple[str, ...] = ("click", "purchase", "dwell")
#: Why a feedback event was not applied (``recfeed_feedback_ignored_total{reason}``).
IGNORE_REASONS: tuple[str, ...] = ("not_shown",)
#: The simulator's dwell cap when a manifest does not record one (``configs.schema.UserConfig.dwell_cap``).
DEFAULT_DWELL_CAP_S = 900.0
EventType = Literal["click", "purchase", "dwell"]

#: Context accumulators kept per session (``UserState.ctx``), in this order.
ACC_NAMES: tuple[str, ...] = ("n_clicks", "n_purchases", "click_ema", "last_click", "last_rank", "llm_ema", "cf_ema",
                              "dwell_ema", "skip_streak")
A_CLICKS, A_PURCHASES, A_CLICK_EMA, A_LAST_CLICK, A_LAST_RANK, A_LLM_EMA, A_CF_EMA, A_DWELL_EMA, A_SKIP = range(
    len(ACC_NAMES))

STATE_MAGIC = b"RFUS"
STATE_VERSION = 2
SUPPORTED_EXPORT_VERSIONS = (1,)


class UnknownItemsError(KeyError):
    """Some item ids are not in the exported catalog.

    Attributes:
        unknown: The unknown ids (in request order, deduplicated).
    """

    def __init__(self, unknown: list[str]) -> None:
        super().__init__(f"{len(unknown)} unknown item id(s): {unknown[:10]}")
        self.unknown = unknown

    def __str__(self) -> str:
        return str(self.args[0])


class CorruptStateError(ValueError):
    """A stored user state that does not fit the loaded artifact."""


class InvalidRequestError(ValueError):
    """A request that is well-formed but cannot be answered (duplicates, k out of range, too many candidates)."""


# ---- events, answers -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    """One piece of feedback.

    Attributes:
        type: ``"click"``, ``"purchase"`` (of a clicked item) or ``"dwell"`` (time spent, reported later).
        item_id: Catalog item id.
        dwell_s: Seconds spent on the item (with a click or a dwell event; 0 if unknown).
        request_id: The ``request_id`` of the recommendation the item was shown in (optional: default, the last
            slate if it holds the item).
    """

    type: EventType
    item_id: str
    dwell_s: float = 0.0
    request_id: int | None = None


@dataclass
class Recommendation:
    """The answer to one request.

    Attributes:
        items: K item ids, best first.
        scores: Their scores (the policy's logits, or the fallback blend). With category repulsion the order is
            the policy's greedy walk (see :func:`greedy_slates`), so the scores need not decrease.
        alpha: The α the answer used (the policy's α_θ(s), or the fallback α).
        repulsion: The within-slate category repulsion β_θ(s) it used (0 without one, and for the fallback).
        source: ``"model"`` or ``"fallback"``.
        request_id: Per-user request counter; feedback may quote it.
        fallback_reason: Why the fallback answered (``timeout``, ``error``, ``invalid_output``, ``no_model``).
        model_ms: Time spent in the model (0 when it was not run).
    """

    items: list[str]
    scores: list[float]
    alpha: float
    source: Literal["model", "fallback"]
    request_id: int
    repulsion: float = 0.0
    fallback_reason: str | None = None
    model_ms: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {"items": self.items, "scores": self.scores, "alpha": self.alpha, "repulsion": self.repulsion,
                "source": self.source, "request_id": self.request_id, "fallback_reason": self.fallback_reason}


# ---- the exported artifact -----------------------------------------------------------------------------------


@dataclass
class ItemTable:
    """The exported catalog side of the features.

    Attributes:
        ids: (M,) item ids.
        index: id → row.
        emb: float32 (M, D) L2-normalised embeddings.
        factors: float32 (M, F') CF item factors.
        features: float32 (M, 2) scaled popularity and price.
        category: int64 (M,).
        n_categories: C.
        fingerprint: Short hash of the item table (names the Redis key space: item rows are stored in states).
    """

    ids: np.ndarray
    index: dict[str, int]
    emb: np.ndarray
    factors: np.ndarray
    features: np.ndarray
    category: np.ndarray
    n_categories: int
    fingerprint: str
    cf_mean: np.ndarray = field(init=False)  # float64 (F',) mean of the factors over the catalog
    cf_cov: np.ndarray = field(init=False)  # float64 (F', F') their population covariance
    cf_gram: np.ndarray = field(init=False)  # float64 (F', F') QᵀQ
    factors64: np.ndarray = field(init=False)  # float64 (M, F') the factors, for the fold-in

    def __post_init__(self) -> None:
        q = self.factors.astype(np.float64)
        self.factors64 = q
        self.cf_mean = q.mean(axis=0) if len(q) else np.zeros(q.shape[1])
        centred = q - self.cf_mean
        self.cf_cov = centred.T @ centred / max(len(q), 1)
        self.cf_gram = q.T @ q

    @classmethod
    def load(cls, path: str | Path, n_categories: int | None = None) -> ItemTable:
        """Read ``items.npz`` (no pickle)."""
        raw = Path(path).read_bytes()
        import io

        with np.load(io.BytesIO(raw), allow_pickle=False) as z:
            ids = z["ids"]
            cat = z["category"].astype(np.int64)
            c = int(n_categories if n_categories is not None else len(z["category_names"]))
            return cls(ids=ids, index={str(s): i for i, s in enumerate(ids.tolist())},
                       emb=np.ascontiguousarray(z["item_emb"], np.float32),
                       factors=np.ascontiguousarray(z["item_factors"], np.float32),
                       features=np.ascontiguousarray(z["item_features"], np.float32), category=cat, n_categories=c,
                       fingerprint=hashlib.sha256(raw).hexdigest()[:12])

    @property
    def n_items(self) -> int:
        """M."""
        return len(self.ids)

    @property
    def dim(self) -> int:
        """D."""
        return int(self.emb.shape[1])

    @property
    def cf_dim(self) -> int:
        """F'."""
        return int(self.factors.shape[1])

    def lookup(self, item_ids: Sequence[str]) -> np.ndarray:
        """Rows of ``item_ids``: int64 (n,).

        Raises:
            UnknownItemsError: Naming the ids that are not in the catalog.
        """
        index = self.index
        try:
            if len(item_ids) == 1:
                return np.array([index[item_ids[0]]], np.int64)
            return np.array(operator.itemgetter(*item_ids)(index), np.int64)
        except (KeyError, TypeError):
            unknown = list(dict.fromkeys(i for i in item_ids if not isinstance(i, str) or i not in index))
            raise UnknownItemsError([str(u) for u in unknown]) from None


@dataclass(frozen=True)
class ObsConstants:
    """The simulator's observation constants the runtime needs (from the manifest).

    Attributes:
        obs_decay: Decay per request of the exposure / click counters and context EMAs (``envs.core.OBS_DECAY``).
        state_decay: Weight kept by the pooled state on a click.
        click_weight: Pool weight of a click.
        purchase_weight: Extra pool weight of a purchase.
        max_steps: The session length ``t_frac`` is measured against.
        cf_regularization: ALS λ of the fold-in.
        cf_alpha: ALS confidence scale.
    """

    obs_decay: float
    state_decay: float
    click_weight: float
    purchase_weight: float
    max_steps: int
    cf_regularization: float
    cf_alpha: float

    @classmethod
    def from_manifest(cls, m: dict[str, Any]) -> ObsConstants:
        """From ``manifest.json``."""
        o, cf = m["obs"], m["cf"]
        return cls(obs_decay=float(o["obs_decay"]), state_decay=float(o["state_decay"]),
                   click_weight=float(o["click_weight"]), purchase_weight=float(o["purchase_weight"]),
                   max_steps=int(o["max_steps"]), cf_regularization=float(cf["regularization"]),
                   cf_alpha=float(cf["alpha"]))


# ---- per-user state --------------------------------------------------------------------------------------------


_ARRAY_FIELDS = ("state", "cf_factor", "cf_a", "cf_b", "cf_items", "exposure", "cat_clicks", "seen_items",
                 "seen_counts", "ctx", "slate_items", "slate_llm", "slate_cf")
_SCALAR_FIELDS = ("cf_pinned", "cf_dirty", "t", "n_requests", "slate_id", "slate_clicked", "last_active", "n_events",
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
        ctx: float64 (len(ACC_NAMES),) context accumulators (see :data:`ACC_NAMES`).
        t: Requests answered this session.
        n_requests: Requests answered ever (the ``request_id`` counter).
        slate_id: ``request_id`` of the last recorded slate (-1: none this session).
        slate_items: int32 (k,) its items, best first.
        slate_llm: float32 (k,) their ``llm_sim`` as served, minus the slate's mean (the click's evidence).
        slate_cf: float32 (k,) their ``cf_score`` as served, minus the slate's mean.
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
                 ctx=np.zeros(len(ACC_NAMES)), slate_items=np.zeros(0, np.int32), slate_llm=np.zeros(0, np.float32),
                 slate_cf=np.zeros(0, np.float32))
        st.reset_session()
        return st

    def reset_session(self) -> None:
        """Start a new session: counters and context to zero; pooled state and CF factor kept."""
        self.exposure[:] = 0.0
        self.cat_clicks[:] = 0.0
        self.seen_items = np.zeros(0, np.int32)
        self.seen_counts = np.zeros(0, np.float32)
        self.ctx[:] = 0.0
        self.ctx[A_LAST_RANK] = 1.0
        self.t = 0
        self.slate_id = -1
        self.slate_items = np.zeros(0, np.int32)
        self.slate_llm = np.zeros(0, np.float32)
        self.slate_cf = np.zeros(0, np.float32)
        self.slate_clicked = False
        self.sessions += 1

    def copy(self) -> UserState:
        """A deep copy."""
        out = UserState(**{k: getattr(self, k).copy() for k in _ARRAY_FIELDS})
        for k in _SCALAR_FIELDS:
            setattr(out, k, getattr(self, k))
        return out


def encode_state(st: UserState) -> bytes:
    """Serialise: ``RFUS`` + uint32 header length + JSON header (scalars, array layout) + raw array bytes."""
    arrays = [np.ascontiguousarray(getattr(st, name)) for name in _ARRAY_FIELDS]
    header = {"v": STATE_VERSION, **{k: getattr(st, k) for k in _SCALAR_FIELDS},
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
    missing = [k for k in (*_SCALAR_FIELDS, "a") if k not in header]
    if missing or len(header["a"]) != len(_ARRAY_FIELDS):
        raise CorruptStateError(f"user state header lacks {missing or 'array layouts'}")
    buf = bytearray(blob[8 + hlen:])
    layout = [(np.dtype(dt), [int(x) for x in shape]) for dt, shape in header["a"]]
    if sum(math.prod(shape) * dt.itemsize for dt, shape in layout) != len(buf):
        raise CorruptStateError("user state is truncated or has trailing bytes")
    off = 0
    values: dict[str, Any] = {}
    for name, (dtype, shape) in zip(_ARRAY_FIELDS, layout, strict=True):
        count = math.prod(shape)
        values[name] = np.frombuffer(buf, dtype, count=count, offset=off).reshape(shape)
        off += count * dtype.itemsize
    for k in _SCALAR_FIELDS:
        values[k] = header[k]
    return UserState(**values)


# ---- stores ----------------------------------------------------------------------------------------------------


class StateStore(Protocol):
    """Where user states live. ``transact`` is an atomic read-modify-write of one user."""

    kind: str

    def transact(self, user_id: str, fn: Callable[[UserState], R], new: Callable[[], UserState]) -> R:
        """Apply ``fn`` to the user's state (``new()`` if absent) and store the result atomically."""
        ...

    def get(self, user_id: str) -> UserState | None:
        """A snapshot of the user's state (``None`` if absent); changing it changes nothing stored."""
        ...

    def delete(self, user_id: str) -> None:
        """Forget a user."""
        ...

    def ping(self) -> bool:
        """The store is reachable."""
        ...

    def size(self) -> int | None:
        """Users held (``None`` if unknown)."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


class _Stripes:
    """A fixed set of locks; a user maps to one by hash (bounded memory for any number of users)."""

    def __init__(self, n: int = 256) -> None:
        self.locks = [threading.Lock() for _ in range(n)]

    def __call__(self, user_id: str) -> threading.Lock:
        return self.locks[hash(user_id) % len(self.locks)]


class MemoryStore:
    """In-process user states, least-recently-used first out beyond ``max_users``.

    Updates of one user are serialised by a striped lock; different users proceed concurrently.

    Args:
        max_users: Users kept (the oldest are forgotten beyond it; a few KB each).
    """

    kind = "memory"

    def __init__(self, max_users: int = 100_000) -> None:
        if max_users < 1:
            raise ValueError(f"max_users must be >= 1, got {max_users}")
        self.max_users = max_users
        self._users: OrderedDict[str, UserState] = OrderedDict()
        self._lock = threading.Lock()
        self._stripes = _Stripes()
        self.evictions = 0

    def transact(self, user_id: str, fn: Callable[[UserState], R], new: Callable[[], UserState]) -> R:
        """See :class:`StateStore`."""
        with self._stripes(user_id):
            with self._lock:
                st = self._users.get(user_id)
                if st is not None:
                    self._users.move_to_end(user_id)
            created = st is None
            if st is None:
                st = new()
            result = fn(st)
            if created:
                with self._lock:
                    self._users[user_id] = st
                    while len(self._users) > self.max_users:
                        self._users.popitem(last=False)
                        self.evictions += 1
            return result

    def get(self, user_id: str) -> UserState | None:
        """See :class:`StateStore`."""
        with self._stripes(user_id):
            st = self._users.get(user_id)
            return None if st is None else st.copy()


    def delete(self, user_id: str) -> None:
        """See :class:`StateStore`."""
        with self._stripes(user_id), self._lock:
            self._users.pop(user_id, None)

    def ping(self) -> bool:
        """Always reachable."""
        return True

    def size(self) -> int:
        """Users held."""
        return len(self._users)

    def close(self) -> None:
        """Nothing to release."""


class StoreConflictError(RuntimeError):
    """A Redis transaction kept conflicting with concurrent writers."""


#: Compare-and-set of a user's state: KEYS[1] the hash, ARGV = expected version ('' if absent), new version,
#: new state, TTL seconds (0: none). Returns 1 if written, 0 on a concurrent change.
_CAS_LUA = """
local v = redis.call('HGET', KEYS[1], 'v')
if (v or '') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'v', ARGV[2], 's', ARGV[3])
if tonumber(ARGV[4]) > 0 then redis.call('EXPIRE', KEYS[1], ARGV[4]) end
return 1
"""


class RedisStore:
    """User states in Redis: a hash ``{prefix}{user_id}`` with the serialised state ``s`` and a version ``v``.

    An update is optimistic: read ``v`` and ``s`` (HMGET), apply ``fn``, then write through a Lua
    compare-and-set that stores the new state only if ``v`` is unchanged (two round trips). A write that meets
    a concurrent one re-reads and re-applies ``fn``, so no update is lost, across threads and processes. Within
    a process, a striped lock also serialises updates of one user (fewer retries).

    Args:
        url: ``redis://host:port/db`` (``rediss://`` for TLS; credentials in the URL or ``REDIS_PASSWORD``).
        prefix: Key prefix.
        ttl_s: Expiry of an idle user's state (``None``: never).
        max_retries: Transaction attempts before :class:`StoreConflictError`.
        socket_timeout_s: Redis socket timeout.
    """

    kind = "redis"

    def __init__(self, url: str, prefix: str = "recfeed:user:", ttl_s: int | None = 30 * 86400,
                 max_retries: int = 50, socket_timeout_s: float = 2.0) -> None:
        import os

        import redis

        kwargs: dict[str, Any] = {"socket_timeout": socket_timeout_s, "socket_connect_timeout": socket_timeout_s}
        if os.environ.get("REDIS_PASSWORD") and "@" not in url:
            kwargs["password"] = os.environ["REDIS_PASSWORD"]
        self._redis = redis.Redis.from_url(url, **kwargs)
        self._cas = self._redis.register_script(_CAS_LUA)
        self.prefix, self.ttl_s, self.max_retries = prefix, ttl_s, max_retries
        self._stripes = _Stripes()
        self.conflicts = 0

    def _key(self, user_id: str) -> str:
        return self.prefix + user_id

    def transact(self, user_id: str, fn: Callable[[UserState], R], new: Callable[[], UserState]) -> R:
        """See :class:`StateStore`."""
        key = self._key(user_id)
        ttl = self.ttl_s or 0
        with self._stripes(user_id):
            for _ in range(self.max_retries):
                version, blob = self._redis.hmget(key, ["v", "s"])
                st = decode_state(blob) if blob else new()
                result = fn(st)
                old = version.decode() if version else ""
                if self._cas(keys=[key], args=[old, str(int(old or 0) + 1), encode_state(st), ttl]):
                    return result
                self.conflicts += 1
        raise StoreConflictError(f"user {user_id!r}: {self.max_retries} conflicting concurrent updates in a row")

    def get(self, user_id: str) -> UserState | None:
        """See :class:`StateStore`."""
        blob = self._redis.hget(self._key(user_id), "s")
        return decode_state(blob) if blob else None

    def delete(self, user_id: str) -> None:
        """See :class:`StateStore`."""
        self._redis.delete(self._key(user_id))

    def ping(self) -> bool:
        """Redis answers PING."""
        try:
            return bool(self._redis.ping())
        except Exception:
            return False

    def size(self) -> int | None:
        """Unknown (counting keys would scan Redis)."""
        return None

    def close(self) -> None:
        """Close the connection pool."""
        self._redis.close()


# ---- the model -------------------------------------------------------------------------------------------------


class ModelTimeoutError(TimeoutError):
    """The model did not answer within its time budget."""


class _Watchdog:
    """Cancels ONNX Runtime runs that pass their deadline.

    One daemon thread checks the runs in flight every ``period_s``. It keeps polling while requests keep coming
    and blocks after ``idle_s`` without any, so a busy server never pays for waking it (registering a run is a
    dict insert under a lock) and an idle one costs nothing.
    """

    def __init__(self, period_s: float, idle_s: float = 1.0) -> None:
        self.period_s, self.idle_s = period_s, idle_s
        self._inflight: dict[int, tuple[float, Any]] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._next = 0
        self._last_start = 0.0
        self._thread = threading.Thread(target=self._loop, name="recfeed-model-watchdog", daemon=True)
        self._thread.start()

    def start(self, deadline: float, run_options: Any) -> int:
        with self._lock:
            self._next += 1
            self._inflight[self._next] = (deadline, run_options)
            token = self._next
            self._last_start = time.perf_counter()
        if not self._wake.is_set():
            self._wake.set()
        return token

    def finish(self, token: int) -> None:
        with self._lock:
            self._inflight.pop(token, None)

    def _loop(self) -> None:
        while True:
            self._wake.wait()
            time.sleep(self.period_s)
            now = time.perf_counter()
            with self._lock:
                for deadline, ro in self._inflight.values():
                    if now >= deadline:
                        ro.terminate = True
                if not self._inflight and now - self._last_start > self.idle_s:
                    self._wake.clear()


class PolicyModel(Protocol):
    """What the runtime needs from a model: ``run(inputs, deadline) -> (logits (N,), alpha, repulsion β)``.

    A model whose class sets ``enforces_deadline = True`` returns or raises by its deadline itself (ONNX Runtime:
    cancelled by the watchdog); any other model is run by the runtime on a :class:`ThreadedModel`.
    """

    def run(self, inputs: dict[str, np.ndarray], deadline: float) -> tuple[np.ndarray, float, float]:
        """Run on one request (batch of 1) before ``deadline`` (``time.perf_counter()`` seconds).

        Raises:
            ModelTimeoutError: When the deadline passed.
        """
        ...


class OnnxModel:
    """An exported ``policy.onnx`` under ONNX Runtime (CPU), cancelled at the deadline.

    ONNX Runtime checks the terminate flag between graph nodes (and between a loop's iterations), so a run ends
    at the first node boundary after its deadline.

    Args:
        path: The ONNX file.
        input_names: Graph inputs (manifest ``inputs``).
        threads: Intra-op threads (1: the request is tiny; the server's other work needs the cores).
        watchdog_period_s: How often the watchdog checks deadlines.
    """

    enforces_deadline = True

    def __init__(self, path: str | Path, input_names: list[str], threads: int = 1,
                 watchdog_period_s: float = 0.002) -> None:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self._ort = ort
        self.session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        self.input_names = list(input_names)
        self.outputs = [o.name for o in self.session.get_outputs()]
        if self.outputs[:2] != ["logits", "alpha"]:
            raise ValueError(f"{path}: graph outputs {self.outputs}, expected logits, alpha[, repulsion]")
        self.outputs = self.outputs[:3]  # a graph without the repulsion output (hand-made) has β = 0
        self._watchdog = _Watchdog(watchdog_period_s)

    def run(self, inputs: dict[str, np.ndarray], deadline: float) -> tuple[np.ndarray, float, float]:
        """See :class:`PolicyModel`."""
        ro = self._ort.RunOptions()
        token = self._watchdog.start(deadline, ro)
        try:
            out = self.session.run(self.outputs, inputs, ro)
        except Exception as exc:
            if ro.terminate:
                raise ModelTimeoutError("model cancelled at its deadline") from exc
            raise
        finally:
            self._watchdog.finish(token)
        if time.perf_counter() > deadline:
            raise ModelTimeoutError("model answered after its deadline")
        return out[0][0], float(out[1][0]), float(out[2][0]) if len(out) > 2 else 0.0


class TorchScriptModel:
    """An exported ``policy.pt`` under TorchScript (CPU).

    A TorchScript run cannot be interrupted, so the runtime runs it on its own thread (:class:`ThreadedModel`)
    and answers with the fallback at the deadline without waiting for it.

    Args:
        path: The TorchScript file.
        input_names: Graph inputs (manifest ``inputs``).
        threads: Torch intra-op threads, set by :meth:`init_thread` on the thread that runs the model (``None``:
            leave torch's setting alone). ``torch.set_num_threads`` is process-global: it also sets the thread
            count of any other torch work in this process that starts later.
    """

    def __init__(self, path: str | Path, input_names: list[str], threads: int | None = 1) -> None:
        import torch as th

        if threads is not None and threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        self._th = th
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            self.module = th.jit.load(str(path), map_location="cpu")
        self.input_names = list(input_names)
        self.threads = threads

    def init_thread(self) -> None:
        """Set torch's intra-op thread count on the calling thread (the thread that will run the model).

        Torch reads the count lazily per thread (a thread that already ran torch ops keeps its count), so it is
        set on the model's own thread, before its first run.
        """
        if self.threads is not None:
            self._th.set_num_threads(self.threads)

    def run(self, inputs: dict[str, np.ndarray], deadline: float) -> tuple[np.ndarray, float, float]:
        """See :class:`PolicyModel`."""
        th = self._th
        with th.inference_mode():
            logits, alpha, beta = self.module(*(th.from_numpy(inputs[n]) for n in self.input_names))
        if time.perf_counter() > deadline:
            raise ModelTimeoutError("model answered after its deadline")
        return logits[0].numpy(), float(alpha[0]), float(beta[0])


class _Job:
    """One call handed to a :class:`ThreadedModel`'s thread."""

    __slots__ = ("deadline", "done", "error", "fn", "result")

    def __init__(self, fn: Callable[[], Any], deadline: float) -> None:
        self.fn, self.deadline = fn, deadline
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None


class ThreadedModel:
    """Runs a model that cannot be cancelled on a thread of its own, so a request never waits past its deadline.

    :meth:`run` hands the call to the model thread and waits for it until the deadline; a call still running
    then is left to finish on that thread (its answer is dropped) and :class:`ModelTimeoutError` is raised. Calls
    queue behind a running one; a queued call whose deadline has passed before it starts is not run at all, so a
    stuck model wastes at most the one call it is stuck in. The runtime wraps every model that does not enforce
    its own deadline (``enforces_deadline``) in one.

    Args:
        model: The model (``run(inputs, deadline)``; an optional ``init_thread()`` runs first on the model thread).
        name: The thread's name.
    """

    enforces_deadline = True

    def __init__(self, model: PolicyModel, name: str = "recfeed-model") -> None:
        self.model = model
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        init_error: BaseException | None = None
        init = getattr(self.model, "init_thread", None)
        if init is not None:
            try:
                init()
            except Exception as exc:  # every call reports it
                init_error = exc
        while True:
            job = self._jobs.get()
            if job is None:
                return
            if init_error is not None:
                job.error = init_error
            elif time.perf_counter() >= job.deadline:
                job.error = ModelTimeoutError("the deadline passed before the model thread was free")
            else:
                try:
                    job.result = job.fn()
                except BaseException as exc:
                    job.error = exc
            job.done.set()

    def call(self, fn: Callable[[], R], deadline: float = math.inf) -> R:
        """Run ``fn()`` on the model thread; wait for it until ``deadline`` (``time.perf_counter()`` seconds).

        Raises:
            ModelTimeoutError: The call did not finish by the deadline (it is not waited for).
        """
        job = _Job(fn, deadline)
        self._jobs.put(job)
        wait = None if math.isinf(deadline) else max(deadline - time.perf_counter(), 0.0)
        if not job.done.wait(wait):
            raise ModelTimeoutError("the model did not answer by its deadline (its call was not waited for)")
        if job.error is not None:
            raise job.error
        return job.result

    def run(self, inputs: dict[str, np.ndarray], deadline: float) -> tuple[np.ndarray, float, float]:
        """See :class:`PolicyModel`."""
        return self.call(lambda: self.model.run(inputs, deadline), deadline)

    def close(self) -> None:
        """Stop the model thread once its queued calls are done (a call stuck in the model keeps it alive)."""
        self._jobs.put(None)


# ---- metrics ----------------------------------------------------------------------------------------------------


class ServingMetrics:
    """Prometheus metrics of one runtime, in their own registry (``recfeed_*``).

    Args:
        registry: A ``prometheus_client.CollectorRegistry`` (default: a new one).
    """

    def __init__(self, registry: Any = None) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

        disable_created_metrics()  # no *_created series: they double the text and no dashboard reads them
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        ms = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0)
        self.recommend = Counter("recfeed_recommend_total", "Recommendations answered, by source",
                                 ["source"], registry=r)
        self.fallback = Counter("recfeed_fallback_total", "Recommendations answered by the fixed-alpha blend, "
                                "by reason", ["reason"], registry=r)
        self.recommend_seconds = Histogram("recfeed_recommend_seconds", "In-process recommend() latency",
                                           buckets=ms, registry=r)
        self.model_seconds = Histogram("recfeed_model_seconds", "Model run time", buckets=ms, registry=r)
        self.observe_seconds = Histogram("recfeed_observe_seconds", "In-process observe() latency (one batch)",
                                         buckets=ms, registry=r)
        self.events = Counter("recfeed_feedback_events_total", "Feedback events applied, by type", ["type"],
                              registry=r)
        self.alpha = Histogram("recfeed_alpha", "Blend weight alpha used per recommendation",
                               buckets=tuple(np.round(np.linspace(0.1, 1.0, 10), 2)), registry=r)
        self.users = Gauge("recfeed_store_users", "Users held by the in-process store (-1: not known)",
                           registry=r)
        self.ignored = Counter("recfeed_feedback_ignored_total", "Feedback events not applied, by reason "
                               "(not_shown: the item was not shown to the user this session)", ["reason"],
                               registry=r)
        self.dwell_clipped = Counter("recfeed_feedback_dwell_clipped_total", "Dwell values above the simulator's "
                                     "cap (manifest obs.dwell_cap_s), applied as the cap", registry=r)
        self.out_of_range = Counter("recfeed_context_out_of_range_total", "Answered requests whose context column "
                                    "was outside the simulator's range (clipped to it), by column", ["feature"],
                                    registry=r)
        # children looked up once (labels() costs a lock and a dict lookup per call)
        self.by_source = {source: self.recommend.labels(source) for source in ("model", "fallback")}
        self.by_reason = {r: self.fallback.labels(r) for r in ("timeout", "error", "invalid_output", "no_model")}
        self.by_event = {t: self.events.labels(t) for t in EVENT_TYPES}
        self.by_ignore = {r: self.ignored.labels(r) for r in IGNORE_REASONS}
        self.by_context = [self.out_of_range.labels(n) for n in CONTEXT_NAMES]


# ---- the runtime -------------------------------------------------------------------------------------------------


def load_manifest(path: str | Path) -> dict[str, Any]:
    """Read and check ``manifest.json`` of an artifact directory.

    Raises:
        FileNotFoundError: If the directory has no manifest.
        ValueError: For an unsupported version or a layout that differs from ``envs/spaces.py``.
    """
    p = Path(path) / "manifest.json"
    if not p.is_file():
        raise FileNotFoundError(f"{Path(path)} is not an exported policy (no manifest.json); run "
                                "`python -m agents.export RUN_DIR` first")
    m = json.loads(p.read_text(encoding="utf-8"))
    if m.get("version") not in SUPPORTED_EXPORT_VERSIONS:
        raise ValueError(f"export version {m.get('version')} is not supported (this runtime reads "
                         f"{SUPPORTED_EXPORT_VERSIONS})")
    if tuple(m["feature_names"]) != FEATURE_NAMES or tuple(m["context_names"]) != CONTEXT_NAMES:
        raise ValueError("the exported feature/context layout differs from envs/spaces.py of this runtime")
    return m


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fold_in(gram_reg: np.ndarray, cf_a: np.ndarray, cf_b: np.ndarray) -> np.ndarray:
    """ALS user factor from the accumulators: ``(QᵀQ + λI + Σ(c−1)qqᵀ)⁻¹ Σ c q``: float32 (F',)."""
    if not cf_b.any():
        return np.zeros(len(cf_b), np.float32)
    return np.linalg.solve(gram_reg + cf_a, cf_b).astype(np.float32)


def context_bounds(max_steps: int, n_items: int, dwell_cap_s: float) -> tuple[np.ndarray, np.ndarray]:
    """The range each context column (``envs.spaces.CONTEXT_NAMES``) takes in the simulator: float64 (C,) each.

    From the simulator's rules (``envs/kernels.py``, the observation and the step): ``t_frac = t / max_steps``
    with ``t < max_steps``; ``click_ema``, ``click_rate``, ``last_click``, ``purchase_rate`` (at most one click
    and one purchase per request) and ``skip_streak`` (capped) in [0, 1]; ``last_click_rank`` (rank / K, or 1) in
    [0, 1]; ``clicked_llm_ema``, an EMA of a cosine minus the slate's mean, in [-2, 2]; ``clicked_cf_ema``, the
    same of a score standardised over the M catalog items (``|z| <= sqrt(M - 1)``), in ``±2·sqrt(M - 1)``;
    ``dwell_ema``, an EMA of dwell minutes, each at most the simulator's ``dwell_cap`` / 60.

    Args:
        max_steps: The session length of the training env.
        n_items: M.
        dwell_cap_s: The simulator's dwell cap in seconds.

    Returns:
        ``(low, high)``.
    """
    cf = 2.0 * math.sqrt(max(n_items - 1, 0))
    bounds = {"t_frac": (0.0, (max_steps - 1) / max_steps), "click_ema": (0.0, 1.0), "click_rate": (0.0, 1.0),
              "last_click": (0.0, 1.0), "last_click_rank": (0.0, 1.0), "clicked_llm_ema": (-2.0, 2.0),
              "clicked_cf_ema": (-cf, cf), "purchase_rate": (0.0, 1.0), "dwell_ema": (0.0, dwell_cap_s / 60.0),
              "skip_streak": (0.0, 1.0)}
    lo, hi = zip(*(bounds[n] for n in CONTEXT_NAMES), strict=True)
    return np.array(lo, np.float64), np.array(hi, np.float64)


def greedy_slates(logits: np.ndarray, k: int, groups: np.ndarray | None = None,
                  beta: np.ndarray | None = None) -> np.ndarray:
    """The policy's deterministic slate: top-K by logit, or, with category repulsion, the greedy walk of
    ``agents.distributions.PlackettLuceDistribution.mode`` (pick ``argmax_j logits_j − β·(earlier picks of j's
    group)`` over the candidates not yet placed, K times).

    Args:
        logits: float32 (B, N).
        k: K.
        groups: int (B, N) candidate groups (categories), or None.
        beta: float32 (B,) repulsion β >= 0, or None.

    Returns:
        int64 (B, K) positions, best first.
    """
    b, n = logits.shape
    if groups is None or beta is None or not np.any(beta > 0):
        if k < n:
            part = np.argpartition(-logits, k - 1, axis=1)[:, :k]
            order = np.argsort(-np.take_along_axis(logits, part, axis=1), axis=1, kind="stable")
            return np.take_along_axis(part, order, axis=1).astype(np.int64)
        return np.argsort(-logits, axis=1, kind="stable").astype(np.int64)
    groups = np.asarray(groups, np.int64)
    n_groups = int(groups.max()) + 1
    counts = np.zeros((b, n_groups), np.float32)
    placed = np.zeros((b, n), bool)
    rows = np.arange(b)
    out = np.empty((b, k), np.int64)
    beta32 = np.asarray(beta, np.float32)[:, None]
    for step in range(k):
        eff = logits - beta32 * np.take_along_axis(counts, groups, axis=1)
        eff[placed] = -np.inf
        pick = eff.argmax(axis=1)
        out[:, step] = pick
        placed[rows, pick] = True
        counts[rows, groups[rows, pick]] += 1.0
    return out


def greedy_slate(logits: np.ndarray, k: int, groups: np.ndarray | None = None, beta: float = 0.0) -> np.ndarray:
    """:func:`greedy_slates` for one request (the serving hot path): ``logits`` float32 (N,), ``groups`` int (N,)
    → int64 (K,). The same float32 arithmetic, so the same slate (a compiled loop, :func:`_greedy_walk`)."""
    n = len(logits)
    if groups is not None and beta > 0:
        out = np.empty(k, np.int64)
        _greedy_walk(np.ascontiguousarray(logits, np.float32), k, np.ascontiguousarray(groups, np.int64),
                     np.float32(beta), out)
        return out
    top = np.argpartition(-logits, k - 1)[:k] if k < n else np.arange(n)
    return top[np.argsort(-logits[top], kind="stable")].astype(np.int64)


def is_greedy_path(path: np.ndarray, logits: np.ndarray, groups: np.ndarray | None, beta: float,
                   tol: float) -> bool:
    """``path`` (K,) is a greedy walk over ``logits`` (N,) up to ties within ``tol`` (see :func:`greedy_slates`)."""
    placed = np.zeros(len(logits), bool)
    counts: dict[int, int] = {}
    for a in np.asarray(path, np.int64):
        pen = np.zeros(len(logits)) if groups is None else beta * np.array([counts.get(int(g), 0) for g in groups])
        eff = np.where(placed, -np.inf, logits - pen)
        if placed[a] or eff[a] < eff.max() - tol:
            return False
        placed[a] = True
        if groups is not None:
            counts[int(groups[a])] = counts.get(int(groups[a]), 0) + 1
    return True


@numba.njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})  # reassociation lets the dot use SIMD
def _candidate_features(cand: np.ndarray, emb: np.ndarray, state: np.ndarray, inv_norm: np.float32,
                        factors: np.ndarray, p: np.ndarray, cf_mu: float, cf_inv_sd: float,
                        static: np.ndarray, category: np.ndarray, exposure: np.ndarray, cat_clicks: np.ndarray,
                        seen_items: np.ndarray, seen_counts: np.ndarray, out: np.ndarray) -> None:
    """Write the (N, F) features of ``cand`` into ``out`` in one pass (columns of ``envs.spaces.FEATURE_NAMES``).

    The numpy reading: ``llm = emb[cand] @ state · inv_norm`` (0 when ``inv_norm`` is 0),
    ``cf = (factors[cand] @ p − cf_mu) · cf_inv_sd`` (0 when ``cf_inv_sd`` is 0), ``static[cand]`` (popularity,
    price), ``exposure[category[cand]]``, ``cat_clicks[category[cand]]``, and the count of ``cand`` in the sorted
    ``seen_items`` (0 if absent). ``tests/test_serving.py`` checks it against the simulator's observations.
    """
    n_seen = seen_items.shape[0]
    for n in range(cand.shape[0]):
        i = cand[n]
        llm = np.float32(0.0)
        if inv_norm != 0:
            acc = np.float32(0.0)
            for d in range(emb.shape[1]):
                acc += emb[i, d] * state[d]
            llm = acc * inv_norm
        out[n, F_LLM] = llm
        cf = 0.0
        if cf_inv_sd != 0:
            acc64 = 0.0
            for f in range(factors.shape[1]):
                acc64 += factors[i, f] * p[f]
            cf = (acc64 - cf_mu) * cf_inv_sd
        out[n, F_CF] = cf
        out[n, F_POP] = static[i, 0]
        out[n, F_PRICE] = static[i, 1]
        c = category[i]
        out[n, F_CAT_EXPOSURE] = exposure[c]
        out[n, F_CAT_CLICKS] = cat_clicks[c]
        lo, hi = 0, n_seen
        while lo < hi:  # binary search in the sorted seen items
            mid = (lo + hi) // 2
            if seen_items[mid] < i:
                lo = mid + 1
            else:
                hi = mid
        out[n, F_ITEM_SEEN] = seen_counts[lo] if lo < n_seen and seen_items[lo] == i else np.float32(0.0)


@numba.njit(cache=True, nogil=True)
def _consume(state: np.ndarray, emb: np.ndarray, keep: float, weight: float, fold_in: bool, cf_a: np.ndarray,
             cf_b: np.ndarray, q: np.ndarray, cf_items: np.ndarray, item: int, c: float) -> bool:
    """A click or purchase of ``item``, in place, in one compiled call (a feedback event's whole O(D + F'²) cost).

    ``state ← keep·state + weight·emb`` (float32, as the simulator's pooled-state update); then, when
    ``fold_in``, the fold-in's normal equations: ``cf_a += wa·q qᵀ``, ``cf_b += c·q`` with ``wa = c − 1`` for an
    item not yet in ``cf_items`` (implicit ALS: its zero-preference term is replaced) and ``wa = c`` after.

    Returns:
        Whether ``item`` was new to ``cf_items`` (the caller appends it).
    """
    k32, w32 = np.float32(keep), np.float32(weight)
    for d in range(state.shape[0]):
        state[d] = k32 * state[d] + w32 * emb[d]
    if not fold_in:
        return False
    first = True
    for x in cf_items:
        if x == item:
            first = False
            break
    wa = c - 1.0 if first else c
    for i in range(q.shape[0]):
        cf_b[i] += c * q[i]
        for j in range(q.shape[0]):
            cf_a[i, j] += wa * q[i] * q[j]
    return first


@numba.njit(cache=True, nogil=True)
def _greedy_walk(logits: np.ndarray, k: int, groups: np.ndarray, beta: np.float32, out: np.ndarray) -> None:
    """The sequential walk of :func:`greedy_slates` for one request (float32, first index on ties)."""
    n = logits.shape[0]
    n_groups = 0
    for j in range(n):
        n_groups = max(n_groups, groups[j] + 1)
    counts = np.zeros(n_groups, np.float32)
    placed = np.zeros(n, np.bool_)
    for step in range(k):
        best, best_v = -1, np.float32(0.0)
        for j in range(n):
            if placed[j]:
                continue
            v = logits[j] - beta * counts[groups[j]]
            if best < 0 or v > best_v:
                best, best_v = j, v
        out[step] = best
        placed[best] = True
        counts[groups[best]] += np.float32(1.0)


class Ranker:
    """Live ranking with an exported policy (see the module docstring).

    Build it with :meth:`load`. Thread-safe: requests for different users run concurrently; updates of one
    user are atomic.

    Args:
        manifest: The artifact's manifest.
        items: Its item table.
        model: The policy model (``None``: every answer is the fallback, counted as ``no_model``).
        store: User-state store.
        time_budget_ms: Deadline of one model run.
        session_timeout_s: Idle time after which a user's next request starts a new session.
        cf_fold_in: Fold each positive event into the user's CF factor (off: the factor stays as imported or 0).
        max_candidates: Largest N per request.
        max_k: Largest K per request.
        clock: Wall clock (seconds); injectable for tests.
    """

    def __init__(self, manifest: dict[str, Any], items: ItemTable, model: PolicyModel | None, store: StateStore,
                 time_budget_ms: float = 10.0, session_timeout_s: float = 1800.0, cf_fold_in: bool = True,
                 max_candidates: int = 1000, max_k: int = 100, clock: Callable[[], float] = time.time) -> None:
        for name, value in (("time_budget_ms", time_budget_ms), ("session_timeout_s", session_timeout_s)):
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        for name, value in (("max_candidates", max_candidates), ("max_k", max_k)):
            if not (isinstance(value, int | np.integer) and not isinstance(value, bool) and value >= 1):
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if model is not None and not getattr(model, "enforces_deadline", False):
            model = ThreadedModel(model)  # a request never waits for a model past its deadline
        self.manifest, self.items, self.model, self.store = manifest, items, model, store
        self.const = ObsConstants.from_manifest(manifest)
        self.input_names: list[str] = list(manifest["inputs"])
        self.slate_size = int(manifest["slate_size"])
        self.fallback_alpha = float(manifest["fallback_alpha"])
        self.time_budget_s = time_budget_ms / 1000.0
        self.session_timeout_s = float(session_timeout_s)
        self.cf_fold_in = cf_fold_in
        self.max_candidates, self.max_k = int(max_candidates), int(max_k)
        self.clock = clock
        self.metrics = ServingMetrics()
        self.metrics.users.set_function(self._store_size)
        self._gram_reg = items.cf_gram + self.const.cf_regularization * np.eye(items.cf_dim)
        self.dwell_cap_s = float(manifest["obs"].get("dwell_cap_s", DEFAULT_DWELL_CAP_S))
        self._ctx_lo, self._ctx_hi = context_bounds(self.const.max_steps, items.n_items, self.dwell_cap_s)
        self._started = time.time()
        if items.dim != int(manifest["dim"]) or items.n_items != int(manifest["n_items"]):
            raise ValueError("items.npz does not match the manifest (D or M differ)")

    # ---- construction ----------------------------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | Path, store: str | StateStore | None = None, *, time_budget_ms: float = 10.0,
             session_timeout_s: float = 1800.0, cf_fold_in: bool = True, max_candidates: int = 1000,
             max_k: int = 100, verify: bool = True, on_model_error: Literal["raise", "fallback"] = "raise",
             threads: int = 1, redis_prefix: str | None = None, redis_ttl_s: int | None = 30 * 86400,
             clock: Callable[[], float] = time.time) -> Ranker:
        """Load an exported artifact directory (written by ``python -m agents.export``).

        Args:
            path: The artifact directory (``manifest.json``, ``items.npz``, ``policy.onnx`` / ``policy.pt``).
            store: ``None`` / ``"memory"`` (in-process), a ``redis://`` URL, or a store object.
            time_budget_ms: Deadline of one model run.
            session_timeout_s: Idle time that ends a session.
            cf_fold_in: Fold events into the CF factor.
            max_candidates: Largest N per request.
            max_k: Largest K per request.
            verify: Check the files' SHA-256 against the manifest.
            on_model_error: A model file that fails to load raises (``"raise"``) or leaves the runtime answering
                with the fallback blend only (``"fallback"``, counted as ``no_model``).
            threads: Model intra-op threads (ONNX Runtime's session option; for TorchScript
                ``torch.set_num_threads`` on the model's thread, which is process-global in torch).
            redis_prefix: Redis key prefix (default ``recfeed:s<state version>:<items fingerprint>:user:``: states
                hold item rows, so a different catalog or state format gets a different key space).
            redis_ttl_s: Expiry of idle users' Redis state.
            clock: Wall clock.

        Returns:
            The runtime.

        Raises:
            FileNotFoundError: Missing files.
            ValueError: Unsupported manifest, hash mismatch, or (with ``on_model_error="raise"``) a broken model.
        """
        root = Path(path)
        m = load_manifest(root)
        model_file, items_file = root / m["files"]["model"], root / m["files"]["items"]
        if verify:
            for f in (items_file, model_file):
                if f.is_file() and _sha256(f) != m["sha256"][f.name]:
                    raise ValueError(f"{f} does not match the SHA-256 in the manifest (modified or corrupt)")
        items = ItemTable.load(items_file, int(m["n_categories"]))
        model: PolicyModel | None
        try:
            if m["format"] == "onnx":
                model = OnnxModel(model_file, m["inputs"], threads=threads)
            elif m["format"] == "torchscript":
                model = TorchScriptModel(model_file, m["inputs"], threads=threads)
            else:
                raise ValueError(f"unknown export format {m['format']!r}")
        except Exception as exc:
            if on_model_error == "raise":
                raise ValueError(f"cannot load the model {model_file}: {exc}") from exc
            model = None
        st: StateStore
        if store is None or store == "memory":
            st = MemoryStore()
        elif isinstance(store, str):
            if not store.startswith(("redis://", "rediss://", "unix://")):
                raise ValueError(f"store must be 'memory' or a redis:// URL, got {store!r}")
            prefix = redis_prefix or f"recfeed:s{STATE_VERSION}:{items.fingerprint}:user:"
            st = RedisStore(store, prefix=prefix, ttl_s=redis_ttl_s)
        else:
            st = store
        ranker = cls(m, items, model, st, time_budget_ms=time_budget_ms, session_timeout_s=session_timeout_s,
                     cf_fold_in=cf_fold_in, max_candidates=max_candidates, max_k=max_k, clock=clock)
        ranker.warm_up()
        return ranker

    def warm_up(self) -> None:
        """Run the model once on a cold user (first runs allocate; keep that off the first request's clock)."""
        if self.model is None:
            return
        n = int(self.manifest["n_candidates"])
        obs = self.build_observation(self._new_state(), np.arange(min(n, self.items.n_items), dtype=np.int64))
        # a model that fails here fails (and is counted) on requests too
        with contextlib.suppress(Exception):
            self.model.run({k: obs[k][None] for k in self.input_names}, time.perf_counter() + 60.0)

    def _store_size(self) -> float:
        n = self.store.size()
        return -1.0 if n is None else float(n)

    def _new_state(self) -> UserState:
        return UserState.new(self.items.dim, self.items.cf_dim, self.items.n_categories)

    # ---- features ----------------------------------------------------------------------------------------------

    def _check(self, st: UserState) -> None:
        """Refuse a stored state that does not fit this artifact (a tampered or foreign Redis value)."""
        if self.store.kind == "memory":  # states this process made itself
            return
        it = self.items
        d, f, c, k = it.dim, it.cf_dim, it.n_categories, len(st.slate_items)
        ok = (st.state.shape == (d,) and st.cf_factor.shape == (f,) and st.cf_a.shape == (f, f)
              and st.cf_b.shape == (f,) and st.exposure.shape == st.cat_clicks.shape == (c,)
              and st.seen_items.shape == st.seen_counts.shape and st.ctx.shape == (len(ACC_NAMES),)
              and st.slate_llm.shape == st.slate_cf.shape == (k,))
        for rows in (st.seen_items, st.slate_items, st.cf_items):
            ok = ok and (len(rows) == 0 or (int(rows.min()) >= 0 and int(rows.max()) < it.n_items))
        if not ok:
            raise CorruptStateError("a stored user state does not fit this artifact (shapes or item rows)")

    def _touch(self, st: UserState, now: float) -> None:
        """Check the state; start a new session when the last one went idle."""
        self._check(st)
        if st.last_active and now - st.last_active > self.session_timeout_s:
            st.reset_session()
        st.last_active = now

    def build_observation(self, st: UserState, cand: np.ndarray) -> dict[str, np.ndarray]:
        """The observation the policy sees for ``cand`` (no state change).

        Each context column is clipped to the range it takes in the simulator (:func:`context_bounds`).

        Args:
            st: The user's state.
            cand: int64 (N,) catalog rows.

        Returns:
            ``user (D,)``, ``candidates (N,)`` int64, ``features (N, F)``, ``context (C,)`` float32, and ``item_emb
            (N, D)`` when the graph needs it.
        """
        return self._observe(st, cand)[0]

    def _observe(self, st: UserState, cand: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """:meth:`build_observation` and which context columns were out of range before clipping: bool (C,)."""
        it, c = self.items, self.const
        self._refresh_cf(st)
        feats = np.empty((len(cand), len(FEATURE_NAMES)), np.float32)
        norm = np.linalg.norm(st.state)  # float32, as the simulator's state_norm
        inv_norm = np.float32(1.0) / norm if norm > 0 else np.float32(0.0)
        user = st.state * inv_norm
        p = st.cf_factor.astype(np.float64)
        cf_mu, cf_inv_sd = 0.0, 0.0
        if p.any():
            cf_mu = float(it.cf_mean @ p)
            cf_inv_sd = 1.0 / max(math.sqrt(max(float(p @ it.cf_cov @ p), 0.0)), 1e-6)
        _candidate_features(cand, it.emb, st.state, inv_norm, it.factors, p, cf_mu, cf_inv_sd, it.features,
                            it.category, st.exposure, st.cat_clicks, st.seen_items, st.seen_counts, feats)
        a = st.ctx
        steps = max(st.t, 1)
        t_frac = min(st.t, c.max_steps - 1) / c.max_steps
        raw = np.array([t_frac, a[A_CLICK_EMA], a[A_CLICKS] / steps, a[A_LAST_CLICK], a[A_LAST_RANK], a[A_LLM_EMA],
                        a[A_CF_EMA], a[A_PURCHASES] / steps, a[A_DWELL_EMA], min(a[A_SKIP] / 5.0, 1.0)], np.float64)
        out_of_range = (raw < self._ctx_lo) | (raw > self._ctx_hi)
        context = np.clip(raw, self._ctx_lo, self._ctx_hi).astype(np.float32) if out_of_range.any() else raw.astype(
            np.float32)
        obs = {"user": user, "candidates": cand, "features": feats, "context": context}
        if "item_emb" in self.input_names:
            obs["item_emb"] = np.take(it.emb, cand, axis=0)
        return obs, out_of_range

    def observation(self, user_id: str, candidate_ids: Sequence[str]) -> dict[str, np.ndarray]:
        """The observation ``recommend`` would build now (read-only; for debugging and parity checks)."""
        cand = self.items.lookup(candidate_ids)
        st = self.store.get(user_id) or self._new_state()
        self._check(st)
        if st.last_active and self.clock() - st.last_active > self.session_timeout_s:
            st.reset_session()
        return self.build_observation(st, cand)

    # ---- recommend ---------------------------------------------------------------------------------------------

    def _validate(self, user_id: str, candidate_ids: Sequence[str], k: int | None) -> tuple[np.ndarray, int]:
        if not isinstance(user_id, str) or not user_id:
            raise InvalidRequestError("user_id must be a non-empty string")
        n = len(candidate_ids)
        if n == 0:
            raise InvalidRequestError("candidate_ids is empty")
        if n > self.max_candidates:
            raise InvalidRequestError(f"{n} candidates is over the limit of {self.max_candidates}")
        k = min(self.slate_size, n) if k is None else int(k)
        if not 1 <= k <= min(n, self.max_k):
            raise InvalidRequestError(f"k must be in [1, min(N={n}, {self.max_k})], got {k}")
        cand = self.items.lookup(candidate_ids)
        if len(set(candidate_ids)) != n:
            raise InvalidRequestError("candidate_ids repeats an item")
        return cand, k

    def _score(self, obs: dict[str, np.ndarray]) -> tuple[np.ndarray, float, float, str | None, float]:
        """``(scores (N,), alpha, repulsion β, fallback_reason or None, model seconds)``."""
        reason: str | None = "no_model"
        model_s = 0.0
        if self.model is not None:
            inputs = {n: obs[n][None] for n in self.input_names}
            t0 = time.perf_counter()
            try:
                logits, alpha, beta = self.model.run(inputs, t0 + self.time_budget_s)
                finite = np.all(np.isfinite(logits)) and math.isfinite(alpha) and math.isfinite(beta) and beta >= 0
                reason = None if finite else "invalid_output"
            except ModelTimeoutError:
                reason = "timeout"
            except Exception:
                reason = "error"
            model_s = time.perf_counter() - t0
            self.metrics.model_seconds.observe(model_s)
            if reason is None:
                return logits, alpha, beta, None, model_s
        a = self.fallback_alpha
        f = obs["features"]
        return a * f[:, F_LLM] + (1.0 - a) * f[:, F_CF], a, 0.0, reason, model_s

    def recommend(self, user_id: str, candidate_ids: Sequence[str], k: int | None = None,
                  record: bool = True) -> Recommendation:
        """Rank ``candidate_ids`` for ``user_id`` and (``record``) count the answer as a slate shown.

        Args:
            user_id: Any non-empty string.
            candidate_ids: N distinct catalog item ids.
            k: Slate size (default: the training K, at most N).
            record: Update the session counters as the simulator does for a shown slate.

        Returns:
            The recommendation.

        Raises:
            UnknownItemsError: Unknown item ids.
            InvalidRequestError: Empty or too long candidate list, repeated ids, k out of range.
        """
        t0 = time.perf_counter()
        cand, k = self._validate(user_id, candidate_ids, k)
        out_of_range: list[np.ndarray] = []

        def fn(st: UserState) -> Recommendation:
            now = self.clock()
            if record:
                self._touch(st, now)
                if st.t >= self.const.max_steps:  # the simulator truncates sessions here
                    st.reset_session()
            else:
                self._check(st)
                if st.last_active and now - st.last_active > self.session_timeout_s:
                    st = st.copy()
                    st.reset_session()
            obs, oor = self._observe(st, cand)
            out_of_range[:] = [oor]  # a retried transaction keeps the last attempt's
            scores, alpha, beta, reason, model_s = self._score(obs)
            top = greedy_slate(scores, k, self.items.category[cand] if beta > 0 else None, beta)
            rid = st.n_requests
            if record:
                self._record_slate(st, cand[top], obs["features"][top])
            return Recommendation(items=[str(x) for x in self.items.ids[cand[top]]],
                                  scores=[float(s) for s in scores[top]], alpha=float(alpha), repulsion=beta,
                                  source="fallback" if reason else "model", request_id=rid, fallback_reason=reason,
                                  model_ms=model_s * 1000.0)

        if record:
            rec = self.store.transact(user_id, fn, self._new_state)
        else:
            rec = fn(self.store.get(user_id) or self._new_state())
        m = self.metrics
        m.by_source[rec.source].inc()
        if rec.fallback_reason:
            m.by_reason[rec.fallback_reason].inc()
        m.alpha.observe(rec.alpha)
        if out_of_range and out_of_range[0].any():
            for col in np.flatnonzero(out_of_range[0]):
                m.by_context[col].inc()
        m.recommend_seconds.observe(time.perf_counter() - t0)
        return rec

    def _record_slate(self, st: UserState, items: np.ndarray, feats: np.ndarray) -> None:
        """The request-level update of a shown slate (``BatchedCore.step`` before the response is known)."""
        d = np.float32(self.const.obs_decay)
        k = len(items)
        cats = self.items.category[items]
        st.exposure *= d
        # as envs.dynamics.category_counts(cats, 1/K) for one row (bincount, same summation order)
        st.exposure += np.bincount(cats, weights=np.full(k, 1.0 / k), minlength=self.items.n_categories).astype(
            np.float32)
        st.cat_clicks *= d
        items32 = items.astype(np.int32)
        seen = st.seen_items
        if len(seen):
            pos = np.minimum(np.searchsorted(seen, items32), len(seen) - 1)
            hit = seen[pos] == items32
            st.seen_counts[pos[hit]] += 1.0  # a slate's items are distinct: no repeated index
            new = items32[~hit]
        else:
            new = items32
        if len(new):
            merged = np.concatenate([seen, new])
            order = np.argsort(merged, kind="stable")
            st.seen_items = merged[order]
            st.seen_counts = np.concatenate([st.seen_counts, np.ones(len(new), np.float32)])[order]
        a = st.ctx
        a[A_CLICK_EMA] *= d
        a[A_DWELL_EMA] *= d
        a[A_LAST_CLICK] = 0.0
        a[A_LAST_RANK] = 1.0
        a[A_SKIP] += 1.0
        st.slate_id = st.n_requests
        st.slate_items = items.astype(np.int32)
        llm, cf = feats[:, F_LLM], feats[:, F_CF]
        st.slate_llm = llm - llm.mean()  # float32, as the simulator's clicked-minus-mean evidence
        st.slate_cf = cf - cf.mean()
        st.slate_clicked = False
        st.t += 1
        st.n_requests += 1

    # ---- feedback ------------------------------------------------------------------------------------------------

    def observe(self, user_id: str, events: Iterable[Event | dict[str, Any]]) -> int:
        """Apply a batch of feedback events to ``user_id`` at once, in order, atomically.

        An event for an item not shown to the user in the current session is not applied (counted in
        ``recfeed_feedback_ignored_total{reason="not_shown"}``): the simulator's user only reacts to the slates
        it is shown. A dwell above the simulator's cap (``dwell_cap_s``) is applied as the cap (counted in
        ``recfeed_feedback_dwell_clipped_total``).

        Args:
            user_id: The user.
            events: :class:`Event` objects or dicts with the same fields.

        Returns:
            Events applied (the batch's length less those not applied).

        Raises:
            UnknownItemsError: Unknown item ids (nothing is applied).
            InvalidRequestError: Malformed events (nothing is applied).
        """
        t0 = time.perf_counter()
        if not isinstance(user_id, str) or not user_id:
            raise InvalidRequestError("user_id must be a non-empty string")
        evs = [e if isinstance(e, Event) else Event(**e) for e in events]
        for e in evs:
            if e.type not in EVENT_TYPES:
                raise InvalidRequestError(f"event type must be one of {EVENT_TYPES}, got {e.type!r}")
            if not (isinstance(e.dwell_s, int | float) and math.isfinite(e.dwell_s) and e.dwell_s >= 0):
                raise InvalidRequestError(f"dwell_s must be a finite number >= 0, got {e.dwell_s!r}")
        rows = self.items.lookup([e.item_id for e in evs])
        cap = self.dwell_cap_s
        clipped = [e.dwell_s > cap for e in evs]

        def fn(st: UserState) -> list[bool]:
            self._touch(st, self.clock())
            return [self._apply(st, e, int(row), min(e.dwell_s, cap)) for e, row in zip(evs, rows, strict=True)]

        applied = self.store.transact(user_id, fn, self._new_state) if evs else []
        m = self.metrics
        for e, ok, clip in zip(evs, applied, clipped, strict=True):
            if ok:
                m.by_event[e.type].inc()
                if clip:
                    m.dwell_clipped.inc()
            else:
                m.by_ignore["not_shown"].inc()
        m.observe_seconds.observe(time.perf_counter() - t0)
        return sum(applied)

    def _consume(self, st: UserState, item: int, keep: float, weight: float) -> None:
        """Pool ``item`` into the state (``keep``, ``weight``) and fold it into the CF factor's equations."""
        fold = bool(self.cf_fold_in and not st.cf_pinned and self.items.cf_dim > 0)
        q = self.items.factors64[item]
        if _consume(st.state, self.items.emb[item], keep, weight, fold, st.cf_a, st.cf_b, q, st.cf_items, item,
                    self.const.cf_alpha):
            st.cf_items = np.append(st.cf_items, np.int32(item))
        if fold:
            st.cf_dirty = True  # solved when next needed (once per request, not once per event)

    def _refresh_cf(self, st: UserState) -> None:
        """Solve the fold-in if events changed its accumulators since the last solve."""
        if st.cf_dirty:
            st.cf_factor = fold_in(self._gram_reg, st.cf_a, st.cf_b)
            st.cf_dirty = False

    def _apply(self, st: UserState, e: Event, item: int, dwell_s: float) -> bool:
        """One event (``BatchedCore.step``'s response-dependent part, for this user), with its dwell clipped.

        Returns:
            Whether it was applied (not: the item was not shown this session).
        """
        seen = st.seen_items
        pos = int(np.searchsorted(seen, item))
        if pos >= len(seen) or seen[pos] != item:
            return False
        c = self.const
        d = c.obs_decay
        a = st.ctx
        st.n_events += 1
        in_slate = -1
        if st.slate_id >= 0 and (e.request_id is None or e.request_id == st.slate_id):
            hits = np.flatnonzero(st.slate_items == item)
            in_slate = int(hits[0]) if len(hits) else -1
        if e.type == "click":
            self._consume(st, item, c.state_decay, c.click_weight)
            st.cat_clicks[self.items.category[item]] += 1.0
            if in_slate >= 0 and not st.slate_clicked:
                st.slate_clicked = True
                a[A_CLICKS] += 1.0
                a[A_CLICK_EMA] += 1.0 - d
                a[A_LAST_CLICK] = 1.0
                a[A_LAST_RANK] = in_slate / len(st.slate_items)
                a[A_SKIP] = 0.0
                a[A_LLM_EMA] = d * a[A_LLM_EMA] + (1 - d) * float(st.slate_llm[in_slate])
                a[A_CF_EMA] = d * a[A_CF_EMA] + (1 - d) * float(st.slate_cf[in_slate])
            if dwell_s > 0:
                a[A_DWELL_EMA] += (1 - d) * dwell_s / 60.0
        elif e.type == "purchase":
            self._consume(st, item, 1.0, c.purchase_weight)
            a[A_PURCHASES] += 1.0
        else:  # dwell
            a[A_DWELL_EMA] += (1 - d) * dwell_s / 60.0
        return True

    # ---- user management --------------------------------------------------------------------------------------------

    def set_user(self, user_id: str, history: Sequence[str] = (), pooled_state: np.ndarray | None = None,
                 cf_factor: np.ndarray | None = None) -> None:
        """Import a known user (e.g. from logs), replacing any state held for them.

        Args:
            user_id: The user.
            history: Item ids consumed, oldest first: pooled like the simulator's prior history
                (``envs.users.pool_history`` with ``state_decay``) and folded into the CF factor.
            pooled_state: float (D,) an unnormalised pooled state to use instead of pooling ``history``.
            cf_factor: float (F',) a CF user factor (e.g. the offline fit's) to use instead of the fold-in; it is
                then kept fixed.

        Raises:
            UnknownItemsError: Unknown history items.
            ValueError: Wrong shapes.
        """
        rows = self.items.lookup(list(history)) if len(history) else np.zeros(0, np.int64)
        st = self._new_state()
        if pooled_state is not None:
            ps = np.asarray(pooled_state, np.float32)
            if ps.shape != st.state.shape:
                raise ValueError(f"pooled_state must have shape {st.state.shape}, got {ps.shape}")
            st.state = ps.copy()
        elif len(rows):
            st.state = pool_history(rows[None], self.items.emb, self.const.state_decay)[0]
        if cf_factor is not None:
            cf = np.asarray(cf_factor, np.float32)
            if cf.shape != st.cf_factor.shape:
                raise ValueError(f"cf_factor must have shape {st.cf_factor.shape}, got {cf.shape}")
            st.cf_factor, st.cf_pinned = cf.copy(), True
        else:
            for r in rows:  # fold the history into the CF equations (the pooled state is set above)
                self._consume(st, int(r), 1.0, 0.0)
        st.last_active = self.clock()

        def fn(old: UserState) -> None:
            for name in (*_ARRAY_FIELDS, *_SCALAR_FIELDS):
                setattr(old, name, getattr(st, name))

        self.store.transact(user_id, fn, self._new_state)

    def end_session(self, user_id: str) -> None:
        """End the user's session now (the next request starts a new one)."""
        self.store.transact(user_id, lambda st: st.reset_session(), self._new_state)

    def user_state(self, user_id: str) -> UserState | None:
        """A snapshot of the user's state (``None`` if unknown), its CF factor solved."""
        st = self.store.get(user_id)
        if st is not None:
            self._refresh_cf(st)
        return st

    def health(self) -> dict[str, Any]:
        """Liveness and configuration summary."""
        store_ok = self.store.ping()
        return {"status": "ok" if store_ok else "degraded", "model": "ok" if self.model is not None else "missing",
                "format": self.manifest["format"], "store": self.store.kind, "store_ok": store_ok,
                "n_items": self.items.n_items, "slate_size": self.slate_size,
                "fallback_alpha": self.fallback_alpha, "time_budget_ms": self.time_budget_s * 1000.0,
                "encoder": self.manifest["encoder"]["name"], "uptime_s": round(time.time() - self._started, 1)}

    def close(self) -> None:
        """Release the store's connections and stop the model thread (if any)."""
        self.store.close()
        close_model = getattr(self.model, "close", None)
        if close_model is not None:
            close_model()
