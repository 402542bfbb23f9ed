"""``Sessions``: the B rows of a :class:`~envs.core.BatchedCore` playing sessions back to back, an ended row
starting the next session (from a queue of (key, user), or the row's own key chain). The one refill loop of the
vector env's autoreset, the evaluation engine's episode plan and the world build's logging phase."""

from __future__ import annotations

import numpy as np

from envs import rng
from envs.core import BatchedCore, StepResult


class Sessions:
    """Which session each row of a core plays, and the refill of rows whose session ended.

    Two sources of next sessions:

    * a queue (``keys`` given): row r starts entry r; after a step the rows whose session ended take the next
      entries in ascending row order; once the queue runs dry they go idle (``session`` -1). Rows beyond the
      queue's length replay its first entries, idle from the start. The core still steps idle rows: ignore
      their results.
    * chained (no ``keys``): :meth:`start` is given one key per row; a row whose session ended starts the
      session keyed ``rng.next_key(key)``, its user drawn from that key. Rows never go idle.

    Per step: act on the observation, :meth:`step`, read :attr:`ended` and :attr:`session` (still the ended
    sessions' numbers), :meth:`refill`, observe.

    Args:
        core: The batched simulator.
        keys: uint64 (E,) the queue's episode keys, or ``None`` for chained sessions.
        users: int (E,) the queue's population users (default: drawn from the keys).

    Attributes:
        core: The core.
        session: int64 (B,) the session each row plays (its queue index; chained: the order in which sessions
            started), -1 for an idle row.
        ended: int64 (e,) ascending: the rows whose (active) session ended at the last :meth:`step`, until
            :meth:`refill`.

    Raises:
        ValueError: For an empty queue, users without keys, or users not one per key.
    """

    def __init__(self, core: BatchedCore, keys: np.ndarray | None = None, users: np.ndarray | None = None) -> None:
        if keys is None and users is not None:
            raise ValueError("a session queue needs keys: users were given without keys")
        if keys is not None:
            keys = np.asarray(keys, dtype=np.uint64).reshape(-1)
            if keys.size == 0:
                raise ValueError("the session queue is empty")
            if users is not None:
                users = np.asarray(users, dtype=np.int64).reshape(-1)
                if users.shape != keys.shape:
                    raise ValueError(f"the session queue has {keys.size} keys but {users.size} users")
        self.core, self._keys, self._users = core, keys, users
        self.session = np.full(core.B, -1, np.int64)
        self.ended = np.zeros(0, np.int64)
        self._next = 0  # number of the next session to start

    @property
    def chained(self) -> bool:
        """True when ended rows restart from their own key chain (no queue)."""
        return self._keys is None

    @property
    def active(self) -> np.ndarray:
        """bool (B,): rows playing a session (a new array)."""
        return self.session >= 0

    def start(self, keys: np.ndarray | None = None, users: np.ndarray | None = None) -> None:
        """Start a session in every row.

        Args:
            keys: Chained only: uint64 (B,) the rows' first episode keys.
            users: Chained only: int (B,) their users (default: drawn from the keys).

        Raises:
            ValueError: Keys or users given to a queue, or chained keys missing.
        """
        b = self.core.B
        rows = np.arange(b)
        if self._keys is None:
            if keys is None:
                raise ValueError("chained sessions start from one key per row: give start() keys")
            self.core.reset_rows(rows, keys, users)
            self.session = rows.astype(np.int64)
            self._next = b
        else:
            if keys is not None or users is not None:
                raise ValueError("a session queue starts from its own entries: start() takes no keys or users")
            n = self._keys.size
            entry = rows % n  # rows beyond the queue replay its first entries, idle
            self.core.reset_rows(rows, self._keys[entry], None if self._users is None else self._users[entry])
            self.session = np.where(rows < n, rows, -1).astype(np.int64)
            self._next = min(b, n)
        self.ended = np.zeros(0, np.int64)

    def step(self, slate: np.ndarray) -> StepResult:
        """Step every row of the core and note the active rows whose session ended (:attr:`ended`).

        Args:
            slate: int (B, K) positions into each row's candidates.

        Returns:
            The core's step result (all B rows).

        Raises:
            RuntimeError: If sessions that ended at the previous step were not refilled.
        """
        if self.ended.size:
            raise RuntimeError(f"rows {self.ended.tolist()[:10]} ended at the last step: call refill() before "
                               "stepping again")
        res = self.core.step(slate)
        done = res.terminated | res.truncated
        if self._keys is not None:
            done &= self.session >= 0
        self.ended = np.flatnonzero(done)
        return res

    def refill(self) -> np.ndarray:
        """Start the next sessions in the rows that ended (:attr:`ended`, in ascending row order).

        Returns:
            int64 (r,) the rows that started a session: all ended rows when chained, else the first of them
            while the queue lasts (the others go idle).
        """
        ended, self.ended = self.ended, np.zeros(0, np.int64)
        if ended.size == 0:
            return ended
        if self._keys is None:
            restart = ended
            self.core.reset_rows(restart, rng.next_key(self.core.keys[restart]))
        else:
            take = min(ended.size, self._keys.size - self._next)
            restart = ended[:take]
            self.session[ended[take:]] = -1
            if take:
                span = slice(self._next, self._next + take)
                self.core.reset_rows(restart, self._keys[span], None if self._users is None else self._users[span])
        self.session[restart] = np.arange(self._next, self._next + restart.size)
        self._next += restart.size
        return restart
