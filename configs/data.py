"""Configs of the real-data work: log preprocessing rules and calibration settings (``--set preprocess.<key>``,
``--set calibrate.<key>`` on ``python -m envs.calibrate``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

_JAN_1990 = 631152000


@dataclass
class PreprocessConfig:
    """Rules of :func:`envs.data.preprocess.preprocess` (None disables a rule).

    Attributes:
        missing_rating: A rating event without value: ``"drop"`` it, or fill with the user's mean rating
            (``"user_mean"``, global mean for users without any) or the global mean (``"global_mean"``).
        missing_text: ``"fill"`` an empty item text with ``"Item <id>. Category: <category>."``, or ``"keep"``.
        min_timestamp: Events before this (epoch seconds; 1990-01-01 UTC) are implausible.
        max_future_seconds: Events later than ``now`` plus this are implausible (None: no upper bound).
        now: The reference "now" (epoch seconds); None means the wall clock at the call.
        rating_range: Inclusive valid rating range.
        max_dwell_seconds: Largest plausible dwell on a view / click; negative dwell is always implausible.
        dedupe: Drop repeated (user, item, event, timestamp) rows, keeping the last.
        max_events_per_user_per_minute: Bot rule threshold.
        min_events_per_item: Drop events of items with fewer events than this (after the rules above).
        min_events_per_user: Drop users with fewer events than this (after the item rule).
    """

    missing_rating: Literal["drop", "user_mean", "global_mean"] = "drop"
    missing_text: Literal["fill", "keep"] = "fill"
    min_timestamp: int | None = _JAN_1990
    max_future_seconds: int | None = 86_400
    now: int | None = None
    rating_range: tuple[float, float] | None = (0.5, 5.0)
    max_dwell_seconds: float | None = 4 * 3600.0
    dedupe: bool = True
    max_events_per_user_per_minute: int | None = 100
    min_events_per_item: int = 1
    min_events_per_user: int = 5

    def __post_init__(self) -> None:
        if self.missing_rating not in ("drop", "user_mean", "global_mean"):
            raise ValueError(f"missing_rating must be drop / user_mean / global_mean, got {self.missing_rating!r}")
        if self.missing_text not in ("fill", "keep"):
            raise ValueError(f"missing_text must be fill / keep, got {self.missing_text!r}")
        if self.rating_range is not None and not self.rating_range[0] <= self.rating_range[1]:
            raise ValueError(f"rating_range must be (low, high) with low <= high, got {self.rating_range}")
        for name in ("max_events_per_user_per_minute", "min_events_per_item", "min_events_per_user"):
            v = getattr(self, name)
            if v is not None and v < 0:
                raise ValueError(f"{name} must be >= 0, got {v}")


@dataclass
class CalibrationConfig:
    """Settings of :func:`envs.calibrate.calibrate` (``--set calibrate.<key>=value`` on the command line).

    Attributes:
        holdout: Share of each user's last events (in time) held out for the fidelity report.
        validation: Share of each user's last *train* events cut off to fit ρ, a and q.
        min_events: Users with fewer events are not split (they stay in train entirely).
        als_factors: ALS latent dimension F (also the catalog's ``cf_dim``).
        als_regularization: ALS L2 weight.
        als_alpha: ALS confidence scale.
        als_iterations: ALS sweeps.
        taste_halflife: Items after which a consumed item's weight in the semantic taste halves (<= 0: no decay).
        taste_rating_weight: Weigh rated items by ``max(r − mean_u + 1, 0.1)`` in the semantic taste.
        taste_center: Subtract the catalog's mean embedding before normalising the taste.
        center_embeddings: Store centred item embeddings in the world (each minus the catalog's mean embedding,
            re-normalised to unit length), so the observed LLM state, ``llm_sim`` and the exported item table are
            built from them. Text-encoder embeddings share a large common component (``|ē| ≈ 0.64`` for MiniLM on
            MovieLens) that otherwise makes ``cos(pooled state, e)`` rank items by closeness to the catalog mean,
            whoever the user (docs/llm_signal.md).
        quality_features: Item features the hidden quality is fitted from: ``popularity`` (log distinct users),
            ``rating`` (mean rating shrunk toward the global mean by ``rating_prior`` pseudo-ratings).
        rating_prior: Pseudo-ratings of the shrunk mean rating.
        rho_grid: Grid points for ρ_u on [0, 1].
        fit_rounds: Alternations of the (a, q) Newton fit and the ρ grid search.
        partition_sample: Catalog items in the softmax's partition function during the fit (<= 0: all): the
            half most popular in the fit split always, the other half a uniform draw from the rest, importance
            weighted. On MovieLens (9,742 items) 2,048 columns give a, q and mean ρ within ±0.01 of the exact fit,
            about 4 times faster; a plain uniform sample of 2,048 was off by 0.08 in a.
        rho_prior: ``"population"`` (empirical Bayes: posterior mean under the fitted population prior) or
            ``"flat"`` (per-user maximum likelihood on the grid).
        heldout_users: Share of real users in the ``heldout`` population (0: both populations hold everyone).
        history_len: Prior-history items per user (most recent last).
        patience_exponent: ``patience_u = (n_u / median n) ** patience_exponent``, clipped to [0.25, 4].
        target_random_ctr: Expected first-request CTR of a random slate; sets ``no_click_utility``.
        sim_sessions: Env sessions per user for the distribution checks.
        fidelity_users: Users the fidelity report's held-out ranking evaluates at most: a seeded uniform sample of
            the users with held-out items when there are more (0: all). Its cost is O(users·M·log M) (33 s for
            5,000 users of a 40,000-item catalog on a 2-core CPU: BENCHMARKS.md, "Calibration at scale"); over
            20,000 users a metric's standard error is at most 0.0035 (each lies in [0, 1]: a per-user sd ≤ 0.5).
        session_intent: Fit ``env.user_model.session_intent`` to the log's sessions (``envs.calibrate.intent``);
            false (the default) leaves it 0. Off by default: on ml-latest-small the fit reaches the top of its grid,
            because the simulator's choices cannot be as alike within a session as real ones at any σ
            (docs/calibration.md). An explicit ``--set env.user_model.session_intent=...`` wins either way.
        drift_rate: Fit ``env.user_model.drift_rate`` to how a log's sessions' items follow one another
            (``envs.calibrate.drift``); false (the default) leaves the configured value. Off by default: on
            ml-latest-small the order within a session partly reflects the site's rating pages, and the fitted
            rate (0.42) changes no reference's standing (docs/calibration.md). An explicit
            ``--set env.user_model.drift_rate=...`` wins either way.
        session_gap_minutes: A user's events more than this apart belong to different sessions.
        session_min_items: Sessions with fewer events are not read by the intent's and the drift's fits.
        session_max: Sessions read per user (a seeded sample when there are more).
        session_max_items: Events read per session (its first ones).
        session_skip_first: Leave each user's first session out of the fit (MovieLens's sign-up flow).
        seed: Seed of the user split and the simulations.
    """

    holdout: float = 0.2
    validation: float = 0.2
    min_events: int = 5
    als_factors: int = 64
    als_regularization: float = 10.0
    als_alpha: float = 1.0
    als_iterations: int = 15
    taste_halflife: float = 30.0
    taste_rating_weight: bool = True
    taste_center: bool = True
    center_embeddings: bool = True
    quality_features: list[str] = field(default_factory=lambda: ["popularity", "rating"])
    rating_prior: float = 5.0
    rho_grid: int = 21
    fit_rounds: int = 4
    partition_sample: int = 2048
    rho_prior: str = "population"
    heldout_users: float = 0.2
    history_len: int = 20
    patience_exponent: float = 0.5
    target_random_ctr: float = 0.12
    sim_sessions: int = 3
    fidelity_users: int = 20_000
    session_intent: bool = False
    drift_rate: bool = False
    session_gap_minutes: float = 30.0
    session_min_items: int = 3
    session_max: int = 8
    session_max_items: int = 40
    session_skip_first: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("holdout", "validation"):
            v = getattr(self, name)
            if not 0.0 < v < 1.0:
                raise ValueError(f"calibrate.{name} must be in (0, 1), got {v}")
        if not 0.0 <= self.heldout_users < 1.0:
            raise ValueError(f"calibrate.heldout_users must be in [0, 1), got {self.heldout_users}")
        if self.rho_grid < 2:
            raise ValueError(f"calibrate.rho_grid must be >= 2, got {self.rho_grid}")
        if self.rho_prior not in ("population", "flat"):
            raise ValueError(f"calibrate.rho_prior must be 'population' or 'flat', got {self.rho_prior!r}")
        unknown = set(self.quality_features) - {"popularity", "rating"}
        if unknown:
            raise ValueError(f"calibrate.quality_features: unknown {sorted(unknown)}; use popularity, rating")
        if not 0.0 < self.target_random_ctr < 1.0:
            raise ValueError(f"calibrate.target_random_ctr must be in (0, 1), got {self.target_random_ctr}")
        if not self.session_gap_minutes > 0:
            raise ValueError(f"calibrate.session_gap_minutes must be > 0, got {self.session_gap_minutes}")
        if self.fidelity_users < 0:
            raise ValueError(f"calibrate.fidelity_users must be >= 0 (0: all users), got {self.fidelity_users}")
        if self.session_min_items < 2:
            raise ValueError(f"calibrate.session_min_items must be >= 2, got {self.session_min_items}")
        for name in ("als_factors", "als_iterations", "history_len", "sim_sessions", "fit_rounds", "session_max",
                     "session_max_items"):
            if getattr(self, name) < 1:
                raise ValueError(f"calibrate.{name} must be >= 1, got {getattr(self, name)}")
