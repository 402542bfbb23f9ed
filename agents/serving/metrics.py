"""Prometheus metrics of one serving runtime (``recfeed_*``, in the runtime's own registry)."""

from __future__ import annotations

from typing import Any

import numpy as np

from agents.serving.messages import EVENT_TYPES, IGNORE_REASONS
from envs.spaces import CONTEXT_NAMES


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
        self.users_erased = Counter("recfeed_users_erased_total", "User states erased on request (DELETE "
                                    "/users/{id}, ServingRuntime.forget_user)", registry=r)
        self.users_expired = Counter("recfeed_users_expired_total", "User states the in-process store forgot after "
                                     "their idle time (Redis expires its keys itself: see its expired_keys)",
                                     registry=r)
