"""User ids in logs: a keyed hash (HMAC-SHA256), never the id itself; docs/serving.md says what is kept where.

The key is per deployment (``--log-key-file`` or ``$RECFEED_LOG_KEY``): then the same user has the same
pseudonym in every process and after a restart, so logs can be joined, while someone who reads the logs without
the key cannot test a guessed id against them. Without a key each process draws a random one: pseudonyms then
hold within one process's lifetime only.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets

LOG_KEY_ENV = "RECFEED_LOG_KEY"
#: Hex digits of the HMAC kept in a pseudonym (64 bits: no collisions among billions of users in practice).
HASH_HEX = 16
#: Paths whose last segment is a user id (uvicorn's access log writes the path).
_USER_PATH = re.compile(r"^(/users/)([^?\s]+)")


class UserIdHasher:
    """``hasher(user_id)`` → ``"u:" + 16 hex digits`` of HMAC-SHA256(key, user_id).

    Args:
        key: The deployment's key (bytes or text; ``None``: ``$RECFEED_LOG_KEY`` if set, else a random key for
            this process).

    Raises:
        ValueError: For an empty key.
    """

    def __init__(self, key: bytes | str | None = None) -> None:
        if key is None:
            key = os.environ.get(LOG_KEY_ENV) or None
        self.per_process = key is None
        if key is None:
            key = secrets.token_bytes(32)
        raw = key.encode() if isinstance(key, str) else bytes(key)
        if not raw:
            raise ValueError("the log key must not be empty")
        self._key = raw

    def __call__(self, user_id: str) -> str:
        """The pseudonym of ``user_id``."""
        return "u:" + hmac.new(self._key, user_id.encode(), hashlib.sha256).hexdigest()[:HASH_HEX]

    def path(self, path: str) -> str:
        """``path`` with the user id of a ``/users/{id}`` path replaced by its pseudonym (others unchanged)."""
        from urllib.parse import unquote

        return _USER_PATH.sub(lambda m: m.group(1) + self(unquote(m.group(2))), path, count=1)


class HashUserPaths(logging.Filter):
    """A logging filter for uvicorn's access log: the ``/users/{id}`` path it writes carries the pseudonym.

    uvicorn logs ``(client, method, path, http_version, status)`` as the record's arguments; the path (the
    third) is rewritten. Other records pass unchanged.

    Args:
        hasher: The deployment's hasher.
    """

    def __init__(self, hasher: UserIdHasher) -> None:
        super().__init__("recfeed-hash-user-paths")
        self.hasher = hasher

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite the record's path argument if it names a user; always keep the record."""
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str) and args[2].startswith("/users/"):
            record.args = (*args[:2], self.hasher.path(args[2]), *args[3:])
        return True


def install_access_log_filter(hasher: UserIdHasher, logger_name: str = "uvicorn.access") -> HashUserPaths:
    """Attach :class:`HashUserPaths` to ``logger_name`` (replacing one attached before): the access log then
    never holds a raw user id.

    Returns:
        The filter attached.
    """
    logger = logging.getLogger(logger_name)
    for f in list(logger.filters):
        if isinstance(f, HashUserPaths):
            logger.removeFilter(f)
    flt = HashUserPaths(hasher)
    logger.addFilter(flt)
    return flt
