"""The errors the serving runtime raises (the HTTP app maps each to a status, docs/serving.md)."""

from __future__ import annotations


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


class ExplanationUnavailableError(InvalidRequestError):
    """``explain`` was asked of an artifact that cannot explain (exported before version 3: its graph has no
    ``parts`` output). Nothing was changed; the HTTP service answers 409 ``explain_unavailable``."""


class UnknownArmError(InvalidRequestError):
    """A request named an A/B arm the service does not run (HTTP 422 ``unknown_arm``)."""


class StoreConflictError(RuntimeError):
    """A Redis transaction kept conflicting with concurrent writers."""


class ModelTimeoutError(TimeoutError):
    """The model did not answer within its time budget."""
