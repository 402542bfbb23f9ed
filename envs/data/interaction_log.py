"""The interaction log: events plus the item table, with user / item index maps and CF weights."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Literal

import numpy as np
import pandas as pd

from envs.data.columns import _validate_events, _validate_items, check_item_references
from envs.data.files import _Raw
from envs.data.schema import (
    EVENT_COLUMNS,
    EVENT_DTYPE,
    EVENT_WEIGHTS,
    EVENTS,
    ITEM_COLUMNS,
    POSITIVE_RATING,
    LogFormatError,
    OnBadRows,
    ReadReport,
    _check_on_bad,
)


@dataclass(eq=False)
class InteractionLog:
    """Events plus the item table, with index maps user id <-> 0..U-1 and item id <-> 0..M-1.

    Treat instances as immutable: derive new logs with :meth:`with_events` / :meth:`reindexed`.

    Attributes:
        events: Events frame (:data:`EVENT_COLUMNS`, index = source row numbers).
        items: Items frame (:data:`ITEM_COLUMNS`); row order is the item index.
        user_ids: object (U,) user ids; position = user index. Every event's user is among them.
        source: Where the log came from (a spec or path), for reports.
        reports: What the readers skipped.
    """

    events: pd.DataFrame
    items: pd.DataFrame
    user_ids: np.ndarray
    source: str = ""
    reports: list[ReadReport] = field(default_factory=list)

    def __post_init__(self) -> None:
        missing = [c for c in EVENT_COLUMNS if c not in self.events.columns]
        missing += [c for c in ITEM_COLUMNS if c not in self.items.columns]
        if missing:
            raise ValueError(f"InteractionLog needs columns {missing}; use InteractionLog.from_frames to validate")
        if self.events["event"].dtype != EVENT_DTYPE:
            raise ValueError("events['event'] must have dtype envs.data.EVENT_DTYPE; use InteractionLog.from_frames")
        self.user_ids = np.asarray(self.user_ids, dtype=object)
        if pd.Index(self.user_ids).has_duplicates:
            raise ValueError("user_ids has duplicates")
        if self.item_index_map.has_duplicates:
            raise ValueError("items['id'] has duplicates")
        if (self.user_index(self.events["user"]) < 0).any():
            raise ValueError("events reference users missing from user_ids")
        if (self.item_index(self.events["item"]) < 0).any():
            raise ValueError("events reference items missing from the item table; see check_item_references")

    @classmethod
    def from_frames(
        cls,
        events: pd.DataFrame,
        items: pd.DataFrame,
        *,
        on_bad_rows: OnBadRows = "error",
        on_missing_items: OnBadRows = "error",
        event_aliases: Mapping[str, str] | None = None,
        source: str = "",
        reports: list[ReadReport] | None = None,
    ) -> InteractionLog:
        """Validate in-memory frames as the readers validate files, then build the log.

        Args:
            events: Frame with at least user, item, event, timestamp (value optional), any dtypes the readers
                accept. Row numbers in messages are the frame index if it is named ``row``, else positions + 1.
            items: Frame with at least id, text (category, price optional).
            on_bad_rows: ``"error"`` or ``"skip"``.
            on_missing_items: ``"error"`` or ``"skip"`` for events whose item is not in ``items``.
            event_aliases: As in :func:`envs.data.readers.read_events`.
            source: Stored in :attr:`source`.
            reports: Earlier read reports to carry along.

        Returns:
            The log; users indexed in sorted id order.
        """
        _check_on_bad(on_bad_rows)
        ev_report, it_report = ReadReport("<events frame>"), ReadReport("<items frame>")

        def raw_of(frame: pd.DataFrame, name: str) -> _Raw:
            rows = frame.index.to_numpy() if frame.index.name == "row" else np.arange(1, len(frame) + 1)
            return _Raw(frame.reset_index(drop=True), name, np.asarray(rows, dtype=np.int64))

        if len(events) == 0:
            raise LogFormatError("no events", path="<events frame>")
        if len(items) == 0:
            raise LogFormatError("no items", path="<items frame>")
        ev = _validate_events(raw_of(events, "<events frame>"), on_bad_rows, ev_report, event_aliases)
        it = _validate_items(raw_of(items, "<items frame>"), on_bad_rows, it_report)
        ev = check_item_references(ev, it, on_missing_items=on_missing_items, report=ev_report)
        return cls.build(ev, it, source=source, reports=[*(reports or []), ev_report, it_report])

    @classmethod
    def build(
        cls, events: pd.DataFrame, items: pd.DataFrame, *, source: str = "", reports: list[ReadReport] | None = None
    ) -> InteractionLog:
        """Build from frames already in the schema (as the readers return them); users in sorted id order."""
        users = np.sort(np.asarray(pd.unique(events["user"].to_numpy()), dtype=object))
        return cls(events, items, users, source=source, reports=list(reports or []))

    # -- sizes and maps ----------------------------------------------------------------------------------------

    @property
    def n_users(self) -> int:
        """U."""
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        """M (the item table, including items without events)."""
        return len(self.items)

    @property
    def n_events(self) -> int:
        """E."""
        return len(self.events)

    @property
    def item_ids(self) -> np.ndarray:
        """object (M,) item ids; position = item index."""
        return self.items["id"].to_numpy(dtype=object)

    @cached_property
    def user_index_map(self) -> pd.Index:
        """pd.Index over user ids (``get_loc`` / ``get_indexer`` give user indices)."""
        return pd.Index(self.user_ids)

    @cached_property
    def item_index_map(self) -> pd.Index:
        """pd.Index over item ids."""
        return pd.Index(self.item_ids)

    def user_index(self, ids: Sequence[str] | pd.Series | np.ndarray) -> np.ndarray:
        """int64 (n,) user indices of ids (-1 for unknown)."""
        return self.user_index_map.get_indexer(pd.Index(np.asarray(ids, dtype=object))).astype(np.int64)

    def item_index(self, ids: Sequence[str] | pd.Series | np.ndarray) -> np.ndarray:
        """int64 (n,) item indices of ids (-1 for unknown)."""
        return self.item_index_map.get_indexer(pd.Index(np.asarray(ids, dtype=object))).astype(np.int64)

    def codes(self) -> tuple[np.ndarray, np.ndarray]:
        """(users int64 (E,), items int64 (E,)): each event's user and item index."""
        return self.user_index(self.events["user"]), self.item_index(self.events["item"])

    # -- derived logs ------------------------------------------------------------------------------------------

    def with_events(self, events: pd.DataFrame) -> InteractionLog:
        """A log over a subset of the events, sharing the user and item maps (e.g. a train / test split)."""
        return InteractionLog(events, self.items, self.user_ids, source=self.source, reports=self.reports)

    def reindexed(self) -> InteractionLog:
        """A log whose user map holds exactly the users with events (sorted); the item table is unchanged."""
        return InteractionLog.build(self.events, self.items, source=self.source, reports=self.reports)

    # -- CF input ----------------------------------------------------------------------------------------------

    def interaction_weights(
        self,
        mode: Literal["weighted", "binary"] = "weighted",
        event_weights: Mapping[str, float] | None = None,
        rating_threshold: float = POSITIVE_RATING,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Unique (user, item, weight) triples for :func:`envs.cf.fit_als`.

        ``weighted``: view / click / cart / purchase weigh ``event_weights`` (default :data:`EVENT_WEIGHTS`);
        a rating ``r >= rating_threshold`` weighs ``1 + (r - rating_threshold)``, a lower one 0 (left out).
        Events on one (user, item) pair add up. ``binary``: weight 1 for every pair with any event.

        Args:
            mode: ``"weighted"`` or ``"binary"``.
            event_weights: Overrides for implicit event weights.
            rating_threshold: Lowest positive rating.

        Returns:
            (users int64 (P,), items int64 (P,), weights float32 (P,)), pairs sorted by (user, item), weights > 0.
        """
        if mode not in ("weighted", "binary"):
            raise ValueError(f"mode must be 'weighted' or 'binary', got {mode!r}")
        u, i = self.codes()
        if mode == "binary":
            w = np.ones(u.size, dtype=np.float64)
        else:
            table = {**EVENT_WEIGHTS, **(event_weights or {})}
            unknown = set(table) - set(EVENTS)
            if unknown:
                raise ValueError(f"unknown events in event_weights: {sorted(unknown)}")
            per_event = np.array([table.get(e, 0.0) for e in EVENTS], dtype=np.float64)
            codes = self.events["event"].cat.codes.to_numpy()
            w = per_event[codes]
            is_rating = codes == EVENTS.index("rating")
            r = self.events["value"].to_numpy(dtype=np.float64)
            w[is_rating] = np.where(r[is_rating] >= rating_threshold, 1.0 + r[is_rating] - rating_threshold, 0.0)
        keep = w > 0
        key = u[keep] * np.int64(self.n_items) + i[keep]
        pairs, inv = np.unique(key, return_inverse=True)
        weights = np.bincount(inv, weights=w[keep], minlength=pairs.size)
        if mode == "binary":
            weights = np.ones_like(weights)
        return pairs // self.n_items, pairs % self.n_items, weights.astype(np.float32)

    def summary(self) -> dict:
        """Counts for reports: events, users, items, items with events, events per type, time range."""
        ev = self.events
        return {
            "events": self.n_events,
            "users": self.n_users,
            "items": self.n_items,
            "items_with_events": int(ev["item"].nunique()),
            "by_event": {k: int(v) for k, v in ev["event"].value_counts(sort=False).items() if v},
            "first_timestamp": int(ev["timestamp"].min()) if len(ev) else None,
            "last_timestamp": int(ev["timestamp"].max()) if len(ev) else None,
        }
