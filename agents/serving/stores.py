"""Where user states live: in process (striped locks, LRU) or in Redis (optimistic read + Lua compare-and-set,
with a lease against starvation)."""

from __future__ import annotations

import math
import os
import random
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from agents.serving.errors import StoreConflictError
from agents.serving.state import UserState, decode_state, encode_state

R = TypeVar("R")


class StateStore(Protocol):
    """Where user states live. ``transact`` is an atomic read-modify-write of one user."""

    kind: str

    def transact(self, user_id: str, fn: Callable[[UserState], R], new: Callable[[], UserState]) -> R:
        """Apply ``fn`` to the user's state (``new()`` if absent) and store the result atomically."""
        ...

    def get(self, user_id: str) -> UserState | None:
        """A snapshot of the user's state (``None`` if absent); changing it changes nothing stored."""
        ...

    def delete(self, user_id: str) -> bool:
        """Forget a user; whether a state was held for them."""
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
    """In-process user states, least-recently-used first out beyond ``max_users``, forgotten after ``ttl_s`` idle.

    Updates of one user are serialised by a striped lock; different users proceed concurrently.

    **Expiry** (no background thread): a user whose last write (``transact``: a recorded request, feedback,
    an import, a session end) is more than ``ttl_s`` old is treated as absent when next read or written (and
    dropped then), and each write also drops up to ``sweep_batch`` expired users from the least-recently-written
    end, so idle users do not pile up between their own visits. A read (``get``) does not refresh a user, as a
    Redis ``HGET`` does not refresh its key's TTL.

    Args:
        max_users: Users kept (the oldest are forgotten beyond it; a few KB each).
        ttl_s: Idle time after which a user is forgotten (``None``: kept until evicted or deleted).
        clock: Wall clock in seconds (injectable for tests).
        sweep_batch: Expired users dropped per write at most.

    Attributes:
        on_expire: Called with the number of users that expired (lazily or by a sweep), if set.
    """

    kind = "memory"

    def __init__(self, max_users: int = 100_000, ttl_s: float | None = None, clock: Callable[[], float] = time.time,
                 sweep_batch: int = 16) -> None:
        if max_users < 1:
            raise ValueError(f"max_users must be >= 1, got {max_users}")
        if ttl_s is not None and not (isinstance(ttl_s, int | float) and not isinstance(ttl_s, bool)
                                      and math.isfinite(ttl_s) and ttl_s > 0):
            raise ValueError(f"ttl_s must be None or a finite number > 0, got {ttl_s!r}")
        if sweep_batch < 1:
            raise ValueError(f"sweep_batch must be >= 1, got {sweep_batch}")
        self.max_users = max_users
        self.ttl_s = None if ttl_s is None else float(ttl_s)
        self.clock = clock
        self.sweep_batch = sweep_batch
        self._users: OrderedDict[str, UserState] = OrderedDict()  # least recently written first
        self._written: dict[str, float] = {}  # user → time of the last write
        self._lock = threading.Lock()
        self._stripes = _Stripes()
        self.evictions = 0
        self.expired = 0
        self.on_expire: Callable[[int], None] | None = None

    def _stale(self, user_id: str, now: float) -> bool:
        """The user is held but idle for longer than ``ttl_s`` (caller holds ``_lock``)."""
        return self.ttl_s is not None and now - self._written.get(user_id, now) > self.ttl_s

    def _drop(self, user_id: str) -> bool:
        """Forget one user (caller holds ``_lock``); whether it was held."""
        self._written.pop(user_id, None)
        return self._users.pop(user_id, None) is not None

    def _expired(self, n: int) -> None:
        if n:
            self.expired += n
            if self.on_expire is not None:
                self.on_expire(n)

    def sweep(self, limit: int | None = None) -> int:
        """Drop up to ``limit`` (default ``sweep_batch``) expired users, oldest first.

        Returns:
            Users dropped.
        """
        if self.ttl_s is None:
            return 0
        now, n, limit = self.clock(), 0, self.sweep_batch if limit is None else limit
        with self._lock:
            while n < limit and self._users:
                oldest = next(iter(self._users))
                if not self._stale(oldest, now):
                    break  # written in order: everyone after it is younger
                self._drop(oldest)
                n += 1
        self._expired(n)
        return n

    def transact(self, user_id: str, fn: Callable[[UserState], R], new: Callable[[], UserState]) -> R:
        """See :class:`StateStore`."""
        with self._stripes(user_id):
            now = self.clock()
            expired = 0
            with self._lock:
                st = self._users.get(user_id)
                if st is not None and self._stale(user_id, now):
                    self._drop(user_id)
                    st, expired = None, 1
                if st is not None:
                    self._users.move_to_end(user_id)
                    self._written[user_id] = now
            self._expired(expired)
            created = st is None
            if st is None:
                st = new()
            result = fn(st)
            if created:
                with self._lock:
                    self._users[user_id] = st
                    self._written[user_id] = now
                    while len(self._users) > self.max_users:
                        oldest, _ = self._users.popitem(last=False)
                        self._written.pop(oldest, None)
                        self.evictions += 1
        self.sweep()
        return result

    def get(self, user_id: str) -> UserState | None:
        """See :class:`StateStore`."""
        with self._stripes(user_id):
            expired = False
            with self._lock:
                st = self._users.get(user_id)
                if st is not None and self._stale(user_id, self.clock()):
                    self._drop(user_id)
                    st, expired = None, True
            self._expired(int(expired))
            return None if st is None else st.copy()

    def delete(self, user_id: str) -> bool:
        """See :class:`StateStore` (an expired user counts as expired, not deleted: ``False``)."""
        with self._stripes(user_id):
            with self._lock:
                stale = user_id in self._users and self._stale(user_id, self.clock())
                held = self._drop(user_id)
            self._expired(int(stale))
            return held and not stale

    def ping(self) -> bool:
        """Always reachable."""
        return True

    def size(self) -> int:
        """Users held (expired users not yet dropped included)."""
        return len(self._users)

    def close(self) -> None:
        """Nothing to release."""


#: Compare-and-set of a user's state. KEYS[1] the hash, KEYS[2] the user's lease; ARGV = expected version ('' if
#: absent), new version, new state, TTL seconds (0: none), the caller's lease token ('' if it holds none). Refused
#: (0) when the version changed or another writer holds the lease; written (1) otherwise, releasing the caller's
#: lease.
_CAS_LUA = """
local lease = redis.call('GET', KEYS[2])
if lease and lease ~= ARGV[5] then return 0 end
local v = redis.call('HGET', KEYS[1], 'v')
if (v or '') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'v', ARGV[2], 's', ARGV[3])
if tonumber(ARGV[4]) > 0 then redis.call('EXPIRE', KEYS[1], ARGV[4]) end
if lease then redis.call('DEL', KEYS[2]) end
return 1
"""

#: Release a lease if the caller still holds it: KEYS[1] the lease, ARGV[1] the caller's token.
_RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class RedisStore:
    """User states in Redis: a hash ``{prefix}{user_id}`` with the serialised state ``s`` and a version ``v``.

    An update is optimistic: read ``v`` and ``s`` (HMGET), apply ``fn``, then write through a Lua
    compare-and-set that stores the new state only if ``v`` is unchanged (two round trips). A write that meets
    a concurrent one re-reads and re-applies ``fn``, so no update is lost, across threads and processes. Within
    a process, a striped lock also serialises updates of one user (fewer retries).

    Optimistic writers can starve one another: under contention one of them may lose every race. So a writer
    waits a random, growing while after each conflict (jittered exponential backoff, desynchronising the
    contenders), and after ``lease_after`` conflicts in a row it takes the user's *lease*
    (``{prefix}{user_id}:lease``, ``SET NX PX``): while the lease is held every other writer's compare-and-set
    is refused, so the holder's next attempt goes through, and the write releases it. A holder that dies loses
    its lease after ``lease_ms``.

    Args:
        url: ``redis://host:port/db`` (``rediss://`` for TLS; credentials in the URL or ``REDIS_PASSWORD``).
        prefix: Key prefix.
        ttl_s: Expiry of an idle user's state (``None``: never).
        max_retries: Transaction attempts before :class:`StoreConflictError`.
        socket_timeout_s: Redis socket timeout.
        lease_after: Conflicts in a row before a writer takes the user's lease (``None``: never).
        lease_ms: How long a lease lives if its holder never writes.
        backoff_ms: The first backoff's upper bound; it doubles with each conflict, up to ``backoff_cap_ms``.
        backoff_cap_ms: The largest backoff.
    """

    kind = "redis"

    def __init__(self, url: str, prefix: str = "recfeed:user:", ttl_s: int | None = 30 * 86400,
                 max_retries: int = 50, socket_timeout_s: float = 2.0, lease_after: int | None = 8,
                 lease_ms: int = 2000, backoff_ms: float = 0.5, backoff_cap_ms: float = 20.0) -> None:
        if max_retries < 1:
            raise ValueError(f"max_retries must be at least 1, got {max_retries}")
        if lease_after is not None and not 0 <= lease_after < max_retries:
            raise ValueError(f"lease_after must be in [0, max_retries={max_retries}) or None, got {lease_after}")
        if lease_ms <= 0 or backoff_ms < 0 or backoff_cap_ms < backoff_ms:
            raise ValueError(f"need lease_ms > 0 and 0 <= backoff_ms <= backoff_cap_ms, got {lease_ms}, "
                             f"{backoff_ms}, {backoff_cap_ms}")
        import redis

        kwargs: dict[str, Any] = {"socket_timeout": socket_timeout_s, "socket_connect_timeout": socket_timeout_s}
        if os.environ.get("REDIS_PASSWORD") and "@" not in url:
            kwargs["password"] = os.environ["REDIS_PASSWORD"]
        self._redis = redis.Redis.from_url(url, **kwargs)
        self._cas = self._redis.register_script(_CAS_LUA)
        self._release = self._redis.register_script(_RELEASE_LUA)
        self.prefix, self.ttl_s, self.max_retries = prefix, ttl_s, max_retries
        self.lease_after, self.lease_ms = lease_after, lease_ms
        self.backoff_ms, self.backoff_cap_ms = backoff_ms, backoff_cap_ms
        self._stripes = _Stripes()
        self._rng = random.Random()
        self.conflicts = 0
        self.leases = 0

    def _key(self, user_id: str) -> str:
        return self.prefix + user_id

    def transact(self, user_id: str, fn: Callable[[UserState], R], new: Callable[[], UserState]) -> R:
        """See :class:`StateStore`. Raises :class:`StoreConflictError` after ``max_retries`` refused writes."""
        key = self._key(user_id)
        lease_key = key + ":lease"
        ttl = self.ttl_s or 0
        token = ""  # the lease this call holds, if any
        with self._stripes(user_id):
            try:
                for attempt in range(self.max_retries):
                    if not token and self.lease_after is not None and attempt >= self.lease_after:
                        candidate = uuid.uuid4().hex
                        if self._redis.set(lease_key, candidate, nx=True, px=self.lease_ms):
                            token = candidate
                            self.leases += 1
                    version, blob = self._redis.hmget(key, ["v", "s"])
                    st = decode_state(blob) if blob else new()
                    result = fn(st)
                    old = version.decode() if version else ""
                    if self._cas(keys=[key, lease_key], args=[old, str(int(old or 0) + 1), encode_state(st), ttl,
                                                              token]):
                        token = ""  # the write released it
                        return result
                    self.conflicts += 1
                    if token:  # the lease ran out before the write, and another writer got in: start over
                        self._release(keys=[lease_key], args=[token])
                        token = ""
                    else:
                        cap = min(self.backoff_cap_ms, self.backoff_ms * 2.0 ** attempt)
                        time.sleep(self._rng.uniform(0.0, cap) / 1000.0)
            finally:
                if token:  # fn raised, or the lease ran out before the write: let the others on
                    self._release(keys=[lease_key], args=[token])
        raise StoreConflictError(f"user {user_id!r}: {self.max_retries} conflicting concurrent updates in a row")

    def get(self, user_id: str) -> UserState | None:
        """See :class:`StateStore`."""
        blob = self._redis.hget(self._key(user_id), "s")
        return decode_state(blob) if blob else None

    def delete(self, user_id: str) -> bool:
        """See :class:`StateStore` (a key Redis already expired is not held: ``False``)."""
        return bool(self._redis.delete(self._key(user_id)))

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
