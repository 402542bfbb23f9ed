"""Preprocessing of interaction logs by configurable rules, each reported; per-user features; the temporal split.

Settings: :class:`configs.data.PreprocessConfig`; why the rules are what they are: docs/calibration.md.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from configs.data import PreprocessConfig
from envs.data.interaction_log import InteractionLog
from envs.data.schema import EVENTS, ReadReport

__all__ = ["PreprocessConfig", "PreprocessReport", "PreprocessStep", "preprocess", "temporal_split", "user_features"]

_RATING = EVENTS.index("rating")
_DWELL_EVENTS = (EVENTS.index("view"), EVENTS.index("click"))


@dataclass
class PreprocessStep:
    """One rule's effect.

    Attributes:
        rule: Short rule name (``dedupe``, ``bots``, ...).
        reason: Why rows were dropped / filled, with the thresholds used.
        dropped: Event rows dropped.
        filled: Rows (events or items) whose missing value was filled.
        detail: Extra facts (e.g. how many users were flagged as bots).
    """

    rule: str
    reason: str
    dropped: int = 0
    filled: int = 0
    detail: str = ""


@dataclass
class PreprocessReport:
    """What :func:`preprocess` did.

    Attributes:
        rows_in: Events in.
        rows_out: Events out.
        users_in: Users in.
        users_out: Users out.
        items_with_events_in: Distinct items with events, in.
        items_with_events_out: Distinct items with events, out.
        steps: One entry per rule, in order.
        read_reports: What the readers skipped before preprocessing.
        seconds: Wall time.
    """

    rows_in: int
    rows_out: int = 0
    users_in: int = 0
    users_out: int = 0
    items_with_events_in: int = 0
    items_with_events_out: int = 0
    steps: list[PreprocessStep] = field(default_factory=list)
    read_reports: list[ReadReport] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def dropped(self) -> int:
        """Total event rows dropped by the rules."""
        return sum(s.dropped for s in self.steps)

    def to_markdown(self) -> str:
        """The report as Markdown: totals, the rules table, then the read skips."""
        lines = [
            f"Events {self.rows_in} -> {self.rows_out} ({self.dropped} dropped); users {self.users_in} -> "
            f"{self.users_out}; items with events {self.items_with_events_in} -> {self.items_with_events_out}.",
            "",
            "| rule | dropped rows | filled | why |",
            "|---|---:|---:|---|",
        ]
        for s in self.steps:
            why = s.reason + (f" ({s.detail})" if s.detail else "")
            lines.append(f"| {s.rule} | {s.dropped} | {s.filled} | {why} |")
        skipped = [r for r in self.read_reports if r.skipped]
        if skipped:
            lines += ["", "Rows skipped while reading:", ""]
            lines += [r.to_markdown() + "\n" for r in skipped]
        return "\n".join(lines).rstrip() + "\n"

    __str__ = to_markdown

    def as_dict(self) -> dict:
        """JSON-friendly dict."""
        d = asdict(self)
        d["read_reports"] = [asdict(r) for r in self.read_reports]
        return d


def _bot_users(user_codes: np.ndarray, ts: np.ndarray, max_per_minute: int) -> np.ndarray:
    """Users with more than ``max_per_minute`` events inside any 60-second window.

    Args:
        user_codes: int64 (E,) user codes.
        ts: int64 (E,) timestamps.
        max_per_minute: Threshold.

    Returns:
        int64 (k,) flagged user codes.
    """
    if ts.size == 0:
        return np.zeros(0, np.int64)
    order = np.lexsort((ts, user_codes))
    u, t = user_codes[order], ts[order] - ts.min()
    stride = np.int64(t.max()) + 61
    if u.max() > (np.iinfo(np.int64).max // stride) - 1:
        raise ValueError("timestamp span too large for the bot rule; filter implausible timestamps first: "
                         "PreprocessConfig(min_timestamp=..., max_future_seconds=...) or, on the command line, "
                         "--set preprocess.min_timestamp=631152000 --set preprocess.max_future_seconds=86400")
    key = u * stride + t
    in_window = np.searchsorted(key, key + 60, side="left") - np.arange(key.size)  # events in [t, t + 60)
    return np.unique(u[in_window > max_per_minute])


def preprocess(log: InteractionLog, cfg: PreprocessConfig | None = None) -> tuple[InteractionLog, PreprocessReport]:
    """Clean a log by the rules of ``cfg``, in this order, each reporting what it dropped (or filled) and why.

    1. missing values: a ``rating`` event without a value is dropped or filled (``missing_rating``); an empty
       item text is filled from the item's category and id (``missing_text``). Dwell (``value`` of view /
       click), price and category are optional and stay NaN / NA.
    2. implausible timestamps: before ``min_timestamp`` (1990-01-01) or after ``now + max_future_seconds``.
    3. implausible values: a rating outside ``rating_range``; a dwell < 0 or above ``max_dwell_seconds``.
    4. duplicates: several rows with one (user, item, event, timestamp) keep the last in file order.
    5. bots: a user with more than ``max_events_per_user_per_minute`` events in any 60-second window loses all
       their events.
    6. rare items: events of items with fewer than ``min_events_per_item`` events (items stay in the table).
    7. inactive users: users with fewer than ``min_events_per_user`` events (one pass each for 6 and 7, not a
       k-core).

    Args:
        log: The log (not modified).
        cfg: Rules; defaults when None.

    Returns:
        (clean log, report). The clean log keeps the item table and its order; users are re-indexed.

    Raises:
        ValueError: When the rules leave no events.
    """
    cfg = cfg or PreprocessConfig()
    t0 = time.perf_counter()
    ev = log.events
    items = log.items
    report = PreprocessReport(
        rows_in=len(ev),
        users_in=int(ev["user"].nunique()),
        items_with_events_in=int(ev["item"].nunique()),
        read_reports=list(log.reports),
    )

    def drop(mask: np.ndarray, rule: str, reason: str, detail: str = "") -> None:
        nonlocal ev
        report.steps.append(PreprocessStep(rule, reason, dropped=int(mask.sum()), detail=detail))
        if mask.any():
            ev = ev[~mask]

    # 1. missing values
    codes = ev["event"].cat.codes.to_numpy()
    value = ev["value"].to_numpy(dtype=np.float64)
    no_rating = (codes == _RATING) & np.isnan(value)
    if cfg.missing_rating == "drop":
        drop(no_rating, "missing rating", "rating event without a value")
    else:
        rated = (codes == _RATING) & ~np.isnan(value)
        global_mean = float(value[rated].mean()) if rated.any() else np.nan
        fill = np.full(len(ev), global_mean)
        if cfg.missing_rating == "user_mean" and no_rating.any():
            means = pd.Series(value[rated]).groupby(ev["user"].to_numpy()[rated]).mean()
            fill = means.reindex(ev["user"].to_numpy()).fillna(global_mean).to_numpy()
        if no_rating.any() and np.isnan(global_mean):
            drop(no_rating, "missing rating", "rating event without a value (nothing to fill from)")
        else:
            ev = ev.copy()
            ev.loc[no_rating, "value"] = fill[no_rating]
            how = "the user's mean rating" if cfg.missing_rating == "user_mean" else "the global mean rating"
            report.steps.append(
                PreprocessStep(
                    "missing rating", f"rating without value, filled with {how}", filled=int(no_rating.sum())
                )
            )
    empty_text = (items["text"].str.strip().str.len() == 0).to_numpy(dtype=bool)
    if cfg.missing_text == "fill":
        if empty_text.any():
            cat = items["category"]
            filled = ("Item " + items["id"] + ".").where(cat.isna(), "Item " + items["id"] + ". Category: " + cat + ".")
            items = items.assign(text=items["text"].where(~empty_text, filled))
        report.steps.append(
            PreprocessStep("missing text", "empty item text filled from id and category", filled=int(empty_text.sum()))
        )
    elif empty_text.any():
        report.steps.append(PreprocessStep("missing text", "empty item texts kept", detail=f"{empty_text.sum()} items"))

    # 2. implausible timestamps
    ts = ev["timestamp"].to_numpy()
    if cfg.min_timestamp is not None:
        when = pd.Timestamp(cfg.min_timestamp, unit="s", tz="UTC").strftime("%Y-%m-%d")
        drop(ts < cfg.min_timestamp, "too old", f"timestamp before {when}")
    if cfg.max_future_seconds is not None:
        now = int(time.time()) if cfg.now is None else int(cfg.now)
        limit = now + cfg.max_future_seconds
        drop(
            ev["timestamp"].to_numpy() > limit,
            "future",
            f"timestamp after now + {cfg.max_future_seconds} s",
            detail=f"now = {pd.Timestamp(now, unit='s', tz='UTC').isoformat()}",
        )

    # 3. implausible values
    codes = ev["event"].cat.codes.to_numpy()
    value = ev["value"].to_numpy(dtype=np.float64)
    if cfg.rating_range is not None:
        lo, hi = cfg.rating_range
        drop((codes == _RATING) & ((value < lo) | (value > hi)), "rating range", f"rating outside [{lo}, {hi}]")
        codes = ev["event"].cat.codes.to_numpy()
        value = ev["value"].to_numpy(dtype=np.float64)
    dwell = np.isin(codes, _DWELL_EVENTS) & ~np.isnan(value)
    bad_dwell = dwell & (value < 0)
    why = "negative dwell"
    if cfg.max_dwell_seconds is not None:
        bad_dwell |= dwell & (value > cfg.max_dwell_seconds)
        why = f"dwell < 0 or > {cfg.max_dwell_seconds:g} s on a view / click"
    drop(bad_dwell, "dwell range", why)

    # 4. duplicates
    if cfg.dedupe:
        dup = ev.duplicated(["user", "item", "event", "timestamp"], keep="last").to_numpy()
        drop(dup, "dedupe", "repeated (user, item, event, timestamp); the last row in file order kept")

    # 5. bots
    if cfg.max_events_per_user_per_minute is not None:
        ucodes, uniq = pd.factorize(ev["user"])
        bots = _bot_users(ucodes.astype(np.int64), ev["timestamp"].to_numpy(), cfg.max_events_per_user_per_minute)
        shown = ", ".join(map(str, uniq[bots[:5]])) + (", …" if bots.size > 5 else "")
        drop(
            np.isin(ucodes, bots),
            "bots",
            f"all events of users with > {cfg.max_events_per_user_per_minute} events in some 60 s window",
            detail=f"{bots.size} user(s)" + (f": {shown}" if bots.size else ""),
        )

    # 6. rare items, 7. inactive users
    if cfg.min_events_per_item > 1:
        n_item = ev.groupby("item", sort=False, observed=True)["item"].transform("size").to_numpy()
        drop(n_item < cfg.min_events_per_item, "rare items", f"item with < {cfg.min_events_per_item} events")
    if cfg.min_events_per_user > 1:
        n_user = ev.groupby("user", sort=False, observed=True)["user"].transform("size").to_numpy()
        low = n_user < cfg.min_events_per_user
        drop(
            low,
            "inactive users",
            f"user with < {cfg.min_events_per_user} events",
            detail=f"{ev['user'][low].nunique()} user(s)",
        )

    if len(ev) == 0:
        raise ValueError(
            "preprocessing left no events; relax the rules that dropped them: PreprocessConfig(...) or, on the "
            f"command line, --set preprocess.<rule>=... (e.g. --set preprocess.min_events_per_user=1):\n"
            f"{report.to_markdown()}"
        )
    out = InteractionLog.build(ev, items, source=log.source, reports=log.reports)
    report.rows_out = out.n_events
    report.users_out = out.n_users
    report.items_with_events_out = int(ev["item"].nunique())
    report.seconds = time.perf_counter() - t0
    return out, report


def user_features(log: InteractionLog, session_gap: int = 1800) -> pd.DataFrame:
    """Per-user behaviour features.

    ``browsing_seconds``: the sum of dwell values of the user's view / click events when the user has any;
    otherwise a session-span estimate: events split into sessions at gaps longer than ``session_gap`` seconds,
    and the time from first to last event of each session summed (a one-event session counts 0).
    ``browsing_source`` says which one was used ("dwell" / "sessions").

    Args:
        log: The log.
        session_gap: Seconds of inactivity that start a new session.

    Returns:
        DataFrame indexed by user id in ``log.user_ids`` order, columns: n_events, n_views, n_clicks, n_carts,
        n_purchases, n_ratings, mean_rating (NaN without ratings), browsing_seconds, browsing_source,
        n_sessions, active_days (distinct UTC days with events), first_timestamp, last_timestamp (0 without
        events).
    """
    U = log.n_users
    u, _ = log.codes()
    codes = log.events["event"].cat.codes.to_numpy().astype(np.int64)
    ts = log.events["timestamp"].to_numpy(dtype=np.int64)
    value = log.events["value"].to_numpy(dtype=np.float64)
    counts = np.bincount(u * len(EVENTS) + codes, minlength=U * len(EVENTS)).reshape(U, len(EVENTS))
    rated = (codes == _RATING) & ~np.isnan(value)
    n_rated = np.bincount(u[rated], minlength=U)
    rating_sum = np.bincount(u[rated], weights=value[rated], minlength=U)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_rating = np.where(n_rated > 0, rating_sum / np.maximum(n_rated, 1), np.nan)
    dwell = np.isin(codes, _DWELL_EVENTS) & ~np.isnan(value)
    dwell_sum = np.bincount(u[dwell], weights=value[dwell], minlength=U)
    has_dwell = np.bincount(u[dwell], minlength=U) > 0

    order = np.lexsort((ts, u))
    su, st = u[order], ts[order]
    new = np.ones(su.size, dtype=bool)
    new[1:] = (su[1:] != su[:-1]) | (st[1:] - st[:-1] > session_gap)
    starts = np.flatnonzero(new)
    ends = np.append(starts[1:], su.size) - 1
    span = (st[ends] - st[starts]).astype(np.float64)
    session_span = np.bincount(su[starts], weights=span, minlength=U)
    n_sessions = np.bincount(su[starts], minlength=U)

    day_keys = np.unique(u * np.int64(1 << 32) + ts // 86_400)
    active_days = np.bincount(day_keys // np.int64(1 << 32), minlength=U)
    first = np.zeros(U, dtype=np.int64)
    last = np.zeros(U, dtype=np.int64)
    if su.size:
        user_first = np.flatnonzero(np.r_[True, su[1:] != su[:-1]])
        user_last = np.append(user_first[1:], su.size) - 1
        first[su[user_first]] = st[user_first]
        last[su[user_last]] = st[user_last]
    return pd.DataFrame(
        {
            "n_events": counts.sum(axis=1),
            "n_views": counts[:, EVENTS.index("view")],
            "n_clicks": counts[:, EVENTS.index("click")],
            "n_carts": counts[:, EVENTS.index("cart")],
            "n_purchases": counts[:, EVENTS.index("purchase")],
            "n_ratings": counts[:, _RATING],
            "mean_rating": mean_rating,
            "browsing_seconds": np.where(has_dwell, dwell_sum, session_span),
            "browsing_source": np.where(has_dwell, "dwell", "sessions"),
            "n_sessions": n_sessions,
            "active_days": active_days,
            "first_timestamp": first,
            "last_timestamp": last,
        },
        index=pd.Index(log.user_ids, name="user"),
    )


def temporal_split(
    log: InteractionLog, holdout_frac: float = 0.2, min_events: int = 5
) -> tuple[InteractionLog, InteractionLog]:
    """Hold out each user's last events in time.

    A user with ``n >= min_events`` events gives their last ``max(1, floor(holdout_frac * n))`` events (by
    timestamp; ties in file order) to test; a user with fewer events stays in train entirely. Both logs share
    ``log``'s user and item maps, so indices agree.

    Args:
        log: The log.
        holdout_frac: Fraction of each user's events held out, in (0, 1).
        min_events: Users with fewer events are not split.

    Returns:
        (train, test).
    """
    if not 0.0 < holdout_frac < 1.0:
        raise ValueError(f"holdout_frac must be in (0, 1), got {holdout_frac}")
    u, _ = log.codes()
    ts = log.events["timestamp"].to_numpy(dtype=np.int64)
    order = np.lexsort((np.arange(u.size), ts, u))  # by user, time, file order
    su = u[order]
    n_user = np.bincount(u, minlength=log.n_users)
    first = np.searchsorted(su, su, side="left")
    rank = np.arange(su.size) - first  # position within the user's time order
    n = n_user[su]
    n_test = np.where(n >= min_events, np.maximum(1, np.floor(holdout_frac * n).astype(np.int64)), 0)
    test_sorted = rank >= n - n_test
    is_test = np.zeros(u.size, dtype=bool)
    is_test[order] = test_sorted
    ev = log.events
    return log.with_events(ev[~is_test]), log.with_events(ev[is_test])
