"""What goes into and out of the runtime: feedback events and the answer to a request."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

EVENT_TYPES: tuple[str, ...] = ("click", "purchase", "dwell")
EventType = Literal["click", "purchase", "dwell"]
#: Why a feedback event was not applied (``recfeed_feedback_ignored_total{reason}``).
IGNORE_REASONS: tuple[str, ...] = ("not_shown",)


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
        explanation: Only when asked for (``explain``): ``{"alpha", "repulsion", "items": [{part: value, ...,
            "score": s}, ...]}``, one entry per item, whose parts sum to the item's score. A model answer has the
            manifest's ``score_parts`` (``llm``, ``cf``, ``diversity``, ``residual``, ``clip``); a fallback answer
            has ``llm`` = α·llm_sim and ``cf`` = (1 − α)·cf_score only.
        arm: The A/B arm that served (``None`` when the service runs no arms).
        log_propensity: log-probability of the slate under that arm (0 for a deterministic arm).
    """

    items: list[str]
    scores: list[float]
    alpha: float
    source: Literal["model", "fallback"]
    request_id: int
    repulsion: float = 0.0
    fallback_reason: str | None = None
    model_ms: float = 0.0
    explanation: dict[str, Any] | None = None
    arm: str | None = None
    log_propensity: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (with ``explanation`` only when it was asked for)."""
        out = {"items": self.items, "scores": self.scores, "alpha": self.alpha, "repulsion": self.repulsion,
               "source": self.source, "request_id": self.request_id, "fallback_reason": self.fallback_reason}
        if self.explanation is not None:
            out["explanation"] = self.explanation
        if self.arm is not None:
            out["arm"] = self.arm
            out["log_propensity"] = self.log_propensity
        return out
