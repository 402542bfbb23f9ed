"""Real interaction logs: strict readers (CSV, Parquet, JSONL, MovieLens), the interaction log, preprocessing and
held-out ranking evaluation. The schema and the rules are in docs/calibration.md.

Modules: ``schema`` (columns, errors, read reports), ``files`` (raw records with row numbers), ``columns``
(validation), ``readers`` (public readers), ``interaction_log``, ``movielens``, ``preprocess``, ``cf_eval``.
"""

from envs.data.interaction_log import InteractionLog
from envs.data.movielens import movielens_item_text, read_movielens, split_movielens_title
from envs.data.readers import load_logs, read_events, read_items, read_logs
from envs.data.schema import (
    EVENT_COLUMNS,
    EVENT_DTYPE,
    EVENT_WEIGHTS,
    EVENTS,
    ITEM_COLUMNS,
    POSITIVE_RATING,
    TIMESTAMP_MAX,
    TIMESTAMP_MIN,
    LogFormatError,
    ReadReport,
)

__all__ = [
    "EVENTS",
    "EVENT_COLUMNS",
    "EVENT_DTYPE",
    "EVENT_WEIGHTS",
    "ITEM_COLUMNS",
    "POSITIVE_RATING",
    "TIMESTAMP_MAX",
    "TIMESTAMP_MIN",
    "InteractionLog",
    "LogFormatError",
    "ReadReport",
    "load_logs",
    "movielens_item_text",
    "read_events",
    "read_items",
    "read_logs",
    "read_movielens",
    "split_movielens_title",
]
