"""The live ranking runtime: an exported policy ranks candidates for a user who is updated by each event.

    runtime = ServingRuntime.load("runs/ppo-1/export")          # or store="redis://127.0.0.1:6379/0"
    rec = runtime.recommend("u42", ["item-00017", "item-00420", ...], k=10)
    runtime.observe("u42", [Event("click", rec.items[2], dwell_s=41.0, request_id=rec.request_id)])

Features, context and their updates mean what the simulator's do; docs/serving.md says how and why.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from agents.serving.artifact import (
    DEFAULT_DWELL_CAP_S,
    ItemTable,
    ObsConstants,
    load_manifest,
)
from agents.serving.errors import (
    CorruptStateError,
    ExplanationUnavailableError,
    InvalidRequestError,
    ModelTimeoutError,
)
from agents.serving.features import candidate_features, consume, fold_in, session_similarity
from agents.serving.messages import EVENT_TYPES, Event, Recommendation
from agents.serving.metrics import ServingMetrics
from agents.serving.privacy import UserIdHasher
from agents.serving.runners import PolicyModel, ThreadedModel, load_model
from agents.serving.session_updates import apply_event, record_slate
from agents.serving.state import (
    ARRAY_FIELDS,
    SCALAR_FIELDS,
    STATE_VERSION,
    UserState,
)
from agents.serving.stores import MemoryStore, RedisStore, StateStore
from agents.slate_mode import greedy_slate
from configs.fileio import sha256_file
from envs import features as obs_state
from envs.features import context_bounds
from envs.spaces import CONTEXT_NAMES, F_CF, F_LLM, FEATURE_NAMES
from envs.users import pool_history

log = logging.getLogger("agents.serving")

#: The parts of a fallback answer's score (the fixed-α blend): α·llm_sim and (1 − α)·cf_score.
FALLBACK_PARTS: tuple[str, ...] = ("llm", "cf")


@dataclass
class Ranked:
    """One request's ranking before it is recorded.

    Attributes:
        top: int64 (K,) positions into the candidates, best first.
        scores: float (N,) per-candidate scores.
        alpha: α used.
        beta: Within-slate category repulsion used.
        reason: Fallback reason or ``None``.
        model_s: Model seconds.
        parts: (N, P) score parts when explaining, else ``None``.
        part_names: Names of ``parts``' last axis.
        arm: A/B arm that served (``None`` without arms).
        log_propensity: log-probability of the slate under that arm (``None`` without arms).
        log: What the A/B log records of the request (arm runtimes only).
    """

    top: np.ndarray
    scores: np.ndarray
    alpha: float
    beta: float
    reason: str | None
    model_s: float
    parts: np.ndarray | None
    part_names: tuple[str, ...] = ()
    arm: str | None = None
    log_propensity: float | None = None
    log: dict[str, Any] | None = None


class ServingRuntime:
    """Live ranking with an exported policy (see the module docstring and docs/serving.md).

    Build it with :meth:`load`. Thread-safe: requests for different users run concurrently; updates of one
    user are atomic.

    Args:
        manifest: The artifact's manifest.
        items: Its item table.
        model: The policy model (``None``: every answer is the fallback, counted as ``no_model``).
        store: User-state store.
        time_budget_ms: Deadline of one model run.
        session_timeout_s: Idle time after which a user's next request starts a new session.
        cf_fold_in: Fold each positive event into the user's CF factor (off: the factor stays as imported or 0).
        max_candidates: Largest N per request.
        max_k: Largest K per request.
        clock: Wall clock (seconds); injectable for tests.
    """

    def __init__(self, manifest: dict[str, Any], items: ItemTable, model: PolicyModel | None, store: StateStore,
                 time_budget_ms: float = 10.0, session_timeout_s: float = 1800.0, cf_fold_in: bool = True,
                 max_candidates: int = 1000, max_k: int = 100, clock: Callable[[], float] = time.time) -> None:
        for name, value in (("time_budget_ms", time_budget_ms), ("session_timeout_s", session_timeout_s)):
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        for name, value in (("max_candidates", max_candidates), ("max_k", max_k)):
            if not (isinstance(value, int | np.integer) and not isinstance(value, bool) and value >= 1):
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        # explanations need an export with the graph's "parts" output (version 3) and a model that returns it
        parts = manifest.get("score_parts")
        explains = model is None or (callable(getattr(model, "run_explained", None))
                                     and getattr(model, "has_parts", True))
        self.score_parts: tuple[str, ...] | None = tuple(parts) if parts and explains else None
        if model is not None and not getattr(model, "enforces_deadline", False):
            model = ThreadedModel(model)  # a request never waits for a model past its deadline
        self.manifest, self.items, self.model, self.store = manifest, items, model, store
        self.const = ObsConstants.from_manifest(manifest)
        self.input_names: list[str] = list(manifest["inputs"])
        #: The observation keys the graphs read (an A/B runtime adds its arms'): ``item_emb`` and ``session_sim``
        #: are built only when one of them is here.
        self.obs_inputs: frozenset[str] = frozenset(self.input_names)
        self.slate_size = int(manifest["slate_size"])
        self.fallback_alpha = float(manifest["fallback_alpha"])
        cap = manifest.get("category_cap")  # absent in artifacts exported before the cap existed: none
        if cap is not None and (not isinstance(cap, int) or isinstance(cap, bool) or cap < 1):
            raise ValueError(f"manifest category_cap must be a positive integer or null, got {cap!r}")
        self.category_cap: int | None = cap
        self.time_budget_s = time_budget_ms / 1000.0
        self.session_timeout_s = float(session_timeout_s)
        self.cf_fold_in = cf_fold_in
        self.max_candidates, self.max_k = int(max_candidates), int(max_k)
        self.clock = clock
        self.metrics = ServingMetrics()
        self.metrics.users.set_function(self._store_size)
        self._gram_reg = items.cf_gram + self.const.cf_regularization * np.eye(items.cf_dim)
        self.dwell_cap_s = float(manifest["obs"].get("dwell_cap_s", DEFAULT_DWELL_CAP_S))
        self._ctx_lo, self._ctx_hi = context_bounds(self.const.max_steps, items.n_items, self.dwell_cap_s)
        self._started = time.time()
        if items.dim != int(manifest["dim"]) or items.n_items != int(manifest["n_items"]):
            raise ValueError("items.npz does not match the manifest (D or M differ)")
        self._items_lock = threading.Lock()  # serialises POST /items (readers never lock: copy-on-write)
        self.encoder: Any = None  # the run's text encoder, built by the first add_items
        self.hash_user_id = UserIdHasher()  # user ids in logs (load(log_key=...) sets the deployment's key)
        if hasattr(store, "on_expire"):
            store.on_expire = self.metrics.users_expired.inc

    # ---- construction ----------------------------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | Path, store: str | StateStore | None = None, *, time_budget_ms: float = 10.0,
             session_timeout_s: float = 1800.0, cf_fold_in: bool = True, max_candidates: int = 1000,
             max_k: int = 100, verify: bool = True, on_model_error: Literal["raise", "fallback"] = "raise",
             threads: int = 1, redis_prefix: str | None = None, redis_ttl_s: int | None = 30 * 86400,
             clock: Callable[[], float] = time.time, state_ttl_s: float | None = 30 * 86400,
             log_key: bytes | str | None = None) -> ServingRuntime:
        """Load an exported artifact directory (written by ``python -m agents.export``).

        Args:
            path: The artifact directory (``manifest.json``, ``items.npz``, ``policy.onnx`` / ``policy.pt``).
            store: ``None`` / ``"memory"`` (in-process), a ``redis://`` URL, or a store object.
            time_budget_ms: Deadline of one model run.
            session_timeout_s: Idle time that ends a session.
            cf_fold_in: Fold events into the CF factor.
            max_candidates: Largest N per request.
            max_k: Largest K per request.
            verify: Check the files' SHA-256 against the manifest.
            on_model_error: A model file that fails to load raises (``"raise"``) or leaves the runtime answering
                with the fallback blend only (``"fallback"``, counted as ``no_model``).
            threads: Model intra-op threads (ONNX Runtime's session option; for TorchScript
                ``torch.set_num_threads`` on the model's thread, which is process-global in torch).
            redis_prefix: Redis key prefix (default ``recfeed:s<state version>:<items fingerprint>:user:``: states
                hold item rows, so a different catalog or state format gets a different key space).
            redis_ttl_s: Expiry of idle users' Redis state (``None``: never).
            clock: Wall clock.
            state_ttl_s: Idle time after which the in-process store forgets a user (``None``: never; LRU only).
            log_key: Key of the user-id hash in logs (default ``$RECFEED_LOG_KEY``, else random per process;
                :class:`agents.serving.privacy.UserIdHasher`).

        Returns:
            The runtime.

        Raises:
            FileNotFoundError: Missing files.
            ValueError: Unsupported manifest, hash mismatch, or (with ``on_model_error="raise"``) a broken model.
        """
        root = Path(path)
        m = load_manifest(root)
        model_file, items_file = root / m["files"]["model"], root / m["files"]["items"]
        if verify:
            for f in (items_file, model_file):
                if f.is_file() and sha256_file(f) != m["sha256"][f.name]:
                    raise ValueError(f"{f} does not match the SHA-256 in the manifest (modified or corrupt)")
        items = ItemTable.load(items_file, int(m["n_categories"]))
        model: PolicyModel | None
        try:
            model = load_model(model_file, m["format"], m["inputs"], threads=threads)
        except Exception as exc:
            if on_model_error == "raise":
                raise ValueError(f"cannot load the model {model_file}: {exc}") from exc
            model = None
        st: StateStore
        if store is None or store == "memory":
            st = MemoryStore(ttl_s=state_ttl_s, clock=clock)
        elif isinstance(store, str):
            if not store.startswith(("redis://", "rediss://", "unix://")):
                raise ValueError(f"store must be 'memory' or a redis:// URL, got {store!r}")
            prefix = redis_prefix or f"recfeed:s{STATE_VERSION}:{items.fingerprint}:user:"
            st = RedisStore(store, prefix=prefix, ttl_s=redis_ttl_s)
        else:
            st = store
        runtime = cls(m, items, model, st, time_budget_ms=time_budget_ms, session_timeout_s=session_timeout_s,
                      cf_fold_in=cf_fold_in, max_candidates=max_candidates, max_k=max_k, clock=clock)
        if log_key is not None:
            runtime.hash_user_id = UserIdHasher(log_key)
        runtime.warm_up()
        return runtime

    def warm_up(self) -> None:
        """Run the model once on a cold user (first runs allocate; keep that off the first request's clock)."""
        if self.model is None:
            return
        n = int(self.manifest["n_candidates"])
        obs = self.build_observation(self._new_state(), np.arange(min(n, self.items.n_items), dtype=np.int64))
        # a model that fails here fails (and is counted) on requests too
        with contextlib.suppress(Exception):
            self.model.run({k: obs[k][None] for k in self.input_names}, time.perf_counter() + 60.0)

    def _store_size(self) -> float:
        n = self.store.size()
        return -1.0 if n is None else float(n)

    def _new_state(self) -> UserState:
        return UserState.new(self.items.dim, self.items.cf_dim, self.items.n_categories)

    # ---- features ----------------------------------------------------------------------------------------------

    def _check(self, st: UserState) -> None:
        """Refuse a stored state that does not fit this artifact (a tampered or foreign Redis value)."""
        if self.store.kind == "memory":  # states this process made itself
            return
        it = self.items
        d, f, c, k = it.dim, it.cf_dim, it.n_categories, len(st.slate_items)
        ok = (st.state.shape == (d,) and st.cf_factor.shape == (f,) and st.cf_a.shape == (f, f)
              and st.cf_b.shape == (f,) and st.exposure.shape == st.cat_clicks.shape == (c,)
              and st.seen_items.shape == st.seen_counts.shape
              and st.ctx.shape == (len(obs_state.ACC_NAMES),) and st.ctx.dtype == np.float32
              and st.slate_llm.shape == st.slate_cf.shape == (k,) and st.sess_sum.shape == (d,))
        for rows in (st.seen_items, st.slate_items, st.cf_items):
            ok = ok and (len(rows) == 0 or (int(rows.min()) >= 0 and int(rows.max()) < it.n_items))
        if not ok:
            raise CorruptStateError("a stored user state does not fit this artifact (shapes or item rows)")

    def _touch(self, st: UserState, now: float) -> None:
        """Check the state; start a new session when the last one went idle."""
        self._check(st)
        if st.last_active and now - st.last_active > self.session_timeout_s:
            st.reset_session()
        st.last_active = now

    def build_observation(self, st: UserState, cand: np.ndarray) -> dict[str, np.ndarray]:
        """The observation the policy sees for ``cand`` (no state change).

        Each context column is clipped to the range it takes in the simulator (:func:`context_bounds`).

        Args:
            st: The user's state.
            cand: int64 (N,) catalog rows.

        Returns:
            ``user (D,)``, ``candidates (N,)`` int64, ``features (N, F)``, ``context (C,)`` float32, and ``item_emb
            (N, D)`` and ``session_sim (N,)`` when the graph needs them.
        """
        return self._observe(st, cand)[0]

    def _observe(self, st: UserState, cand: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """:meth:`build_observation` and which context columns were out of range before clipping: bool (C,)."""
        it, c = self.items, self.const
        self._refresh_cf(st)
        feats = np.empty((len(cand), len(FEATURE_NAMES)), np.float32)
        norm = np.linalg.norm(st.state)  # float32, as the simulator's state_norm
        inv_norm = np.float32(1.0) / norm if norm > 0 else np.float32(0.0)
        user = st.state * inv_norm
        p = st.cf_factor.astype(np.float64)
        cf_mu, cf_inv_sd = 0.0, 0.0
        if p.any():
            cf_mu = float(it.cf_mean @ p)
            cf_inv_sd = 1.0 / max(math.sqrt(max(float(p @ it.cf_cov @ p), 0.0)), 1e-6)
        candidate_features(cand, it.emb, st.state, inv_norm, it.factors, p, cf_mu, cf_inv_sd, it.features,
                            it.category, st.exposure, st.cat_clicks, st.seen_items, st.seen_counts, feats)
        raw = np.empty(len(CONTEXT_NAMES), np.float32)
        obs_state.write_context(st.ctx, st.t, c.max_steps, c.max_steps - 1, raw)
        out_of_range = (raw < self._ctx_lo) | (raw > self._ctx_hi)
        context = np.clip(raw, self._ctx_lo, self._ctx_hi).astype(np.float32) if out_of_range.any() else raw
        obs = {"user": user, "candidates": cand, "features": feats, "context": context}
        if "item_emb" in self.obs_inputs:
            obs["item_emb"] = np.take(it.emb, cand, axis=0)
        if "session_sim" in self.obs_inputs:
            obs["session_sim"] = session_similarity(cand, it.emb, st.sess_sum)
        return obs, out_of_range

    def observation(self, user_id: str, candidate_ids: Sequence[str]) -> dict[str, np.ndarray]:
        """The observation ``recommend`` would build now (read-only; for debugging and parity checks)."""
        cand = self.items.lookup(candidate_ids)
        st = self.store.get(user_id) or self._new_state()
        self._check(st)
        if st.last_active and self.clock() - st.last_active > self.session_timeout_s:
            st.reset_session()
        return self.build_observation(st, cand)

    # ---- recommend ---------------------------------------------------------------------------------------------

    def _validate(self, user_id: str, candidate_ids: Sequence[str], k: int | None) -> tuple[np.ndarray, int]:
        if not isinstance(user_id, str) or not user_id:
            raise InvalidRequestError("user_id must be a non-empty string")
        n = len(candidate_ids)
        if n == 0:
            raise InvalidRequestError("candidate_ids is empty")
        if n > self.max_candidates:
            raise InvalidRequestError(f"{n} candidates is over the limit of {self.max_candidates}")
        k = min(self.slate_size, n) if k is None else int(k)
        if not 1 <= k <= min(n, self.max_k):
            raise InvalidRequestError(f"k must be in [1, min(N={n}, {self.max_k})], got {k}")
        cand = self.items.lookup(candidate_ids)
        if len(set(candidate_ids)) != n:
            raise InvalidRequestError("candidate_ids repeats an item")
        return cand, k

    def _score(self, obs: dict[str, np.ndarray], explain: bool = False, model: PolicyModel | None = None
               ) -> tuple[np.ndarray, float, float, str | None, float, np.ndarray | None]:
        """``(scores (N,), alpha, repulsion β, fallback_reason or None, model seconds, parts)``.

        ``parts`` is ``None`` unless ``explain``: then (N, P), the model's ``parts`` output (P =
        ``self.score_parts``) from the same run as the scores, or for a fallback answer (N, 2), the blend's
        α·llm_sim and (1 − α)·cf_score (:data:`FALLBACK_PARTS`). ``model``: run this model instead of the
        runtime's (an A/B arm's; it must enforce its own deadline, as ONNX models do).
        """
        reason: str | None = "no_model"
        model_s = 0.0
        parts: np.ndarray | None = None
        model = self.model if model is None else model  # an A/B arm's own model
        if model is not None:
            names = getattr(model, "input_names", None) or self.input_names  # an arm's graph reads its own
            inputs = {n: obs[n][None] for n in names}
            t0 = time.perf_counter()
            try:
                if explain:
                    logits, alpha, beta, parts = model.run_explained(inputs, t0 + self.time_budget_s)
                else:
                    logits, alpha, beta = model.run(inputs, t0 + self.time_budget_s)
                finite = np.all(np.isfinite(logits)) and math.isfinite(alpha) and math.isfinite(beta) and beta >= 0
                if parts is not None:
                    finite = finite and parts.shape == (len(logits), len(self.score_parts or ())) and bool(
                        np.all(np.isfinite(parts)))
                reason = None if finite else "invalid_output"
            except ModelTimeoutError:
                reason = "timeout"
            except Exception:
                reason = "error"
            model_s = time.perf_counter() - t0
            self.metrics.model_seconds.observe(model_s)
            if reason is None:
                return logits, alpha, beta, None, model_s, parts
        a = self.fallback_alpha
        f = obs["features"]
        if explain:
            parts = np.stack([a * f[:, F_LLM], (1.0 - a) * f[:, F_CF]], axis=-1)
        return a * f[:, F_LLM] + (1.0 - a) * f[:, F_CF], a, 0.0, reason, model_s, parts if explain else None

    def _explanation(self, parts: np.ndarray, scores: np.ndarray, names: Sequence[str], alpha: float,
                     beta: float) -> dict[str, Any]:
        """The ``explanation`` of a :class:`Recommendation`: ``parts`` (K, P) and ``scores`` (K,) of the slate."""
        items = [{**{n: float(v) for n, v in zip(names, row, strict=True)}, "score": float(s)}
                 for row, s in zip(parts.tolist(), scores.tolist(), strict=True)]
        return {"alpha": float(alpha), "repulsion": float(beta), "items": items}

    def _rank(self, user_id: str, obs: dict[str, np.ndarray], cand: np.ndarray, k: int, explain: bool,
              arm: str | None) -> Ranked:
        """Score and order one request's candidates (the A/B runtime, ``agents/serving/arms.py``, overrides it).

        Raises:
            InvalidRequestError: ``arm`` given to a service without arms.
        """
        if arm is not None:
            raise InvalidRequestError(f"unknown arm {arm!r}: this service runs no A/B arms (start it with --arms)")
        scores, alpha, beta, reason, model_s, parts = self._score(obs, explain)
        cap = None if reason else self.category_cap  # the fixed-α fallback is a plain top-K
        top = greedy_slate(scores, k, self.items.category[cand] if beta > 0 or cap is not None else None, beta, cap)
        names = FALLBACK_PARTS if reason else (self.score_parts or ())
        return Ranked(top, scores, float(alpha), float(beta), reason, model_s, parts, tuple(names))

    def _served(self, user_id: str, rec: Recommendation, ranked: Ranked, obs: dict[str, np.ndarray], step: int,
                session: int) -> None:
        """Called once per recorded answer, after the user's update is stored (the A/B runtime logs it here)."""

    def recommend(self, user_id: str, candidate_ids: Sequence[str], k: int | None = None,
                  record: bool = True, explain: bool = False, arm: str | None = None) -> Recommendation:
        """Rank ``candidate_ids`` for ``user_id`` and (``record``) count the answer as a slate shown.

        Args:
            user_id: Any non-empty string.
            candidate_ids: N distinct catalog item ids.
            k: Slate size (default: the training K, at most N).
            record: Update the session counters as the simulator does for a shown slate.
            explain: Add each item's score split into its parts (``Recommendation.explanation``): for a model
                answer the graph's ``parts`` output from the same run (LLM, CF, diversity penalty, learned
                residual, range clip; they sum to the score), for a fallback answer the blend's LLM and CF terms.
            arm: Serve this A/B arm instead of the user's assigned one (only with arms; otherwise, and for an
                unknown arm, :class:`InvalidRequestError`).

        Returns:
            The recommendation.

        Raises:
            UnknownItemsError: Unknown item ids.
            InvalidRequestError: Empty or too long candidate list, repeated ids, k out of range, ``explain`` not
                a bool.
            ExplanationUnavailableError: ``explain`` with an artifact exported before version 3 (nothing changes).
        """
        t0 = time.perf_counter()
        if not isinstance(explain, bool):
            raise InvalidRequestError(f"explain must be true or false, got {explain!r}")
        if explain and self.score_parts is None:
            raise ExplanationUnavailableError(
                "this artifact cannot explain its scores: its graph has no 'parts' output (exported before "
                "export version 3); re-export the run with `python -m agents.export RUN_DIR`")
        cand, k = self._validate(user_id, candidate_ids, k)
        out_of_range: list[np.ndarray] = []

        def fn(st: UserState) -> Recommendation:
            now = self.clock()
            if record:
                self._touch(st, now)
                if st.t >= self.const.max_steps:  # the simulator truncates sessions here
                    st.reset_session()
            else:
                self._check(st)
                if st.last_active and now - st.last_active > self.session_timeout_s:
                    st = st.copy()
                    st.reset_session()
            obs, oor = self._observe(st, cand)
            out_of_range[:] = [oor]  # a retried transaction keeps the last attempt's
            step, session = st.t, st.sessions
            r = self._rank(user_id, obs, cand, k, explain, arm)
            top = r.top
            rid = st.n_requests
            if record:
                record_slate(st, cand[top], obs["features"][top], self.items.category, self.const.obs_decay)
            explanation = None
            if r.parts is not None:
                explanation = self._explanation(r.parts[top], r.scores[top], r.part_names, r.alpha, r.beta)
            rec = Recommendation(items=[str(x) for x in self.items.ids[cand[top]]],
                                 scores=[float(s) for s in r.scores[top]], alpha=float(r.alpha), repulsion=r.beta,
                                 source="fallback" if r.reason else "model", request_id=rid,
                                 fallback_reason=r.reason, model_ms=r.model_s * 1000.0, explanation=explanation,
                                 arm=r.arm, log_propensity=r.log_propensity)
            pending[:] = [(rec, r, obs, step, session)] if record else []
            return rec

        pending: list[tuple[Recommendation, Ranked, dict[str, np.ndarray], int, int]] = []
        if record:
            rec = self.store.transact(user_id, fn, self._new_state)
        else:
            rec = fn(self.store.get(user_id) or self._new_state())
        if pending:
            self._served(user_id, *pending[0])
        m = self.metrics
        m.by_source[rec.source].inc()
        if rec.fallback_reason:
            m.by_reason[rec.fallback_reason].inc()
        m.alpha.observe(rec.alpha)
        if out_of_range and out_of_range[0].any():
            for col in np.flatnonzero(out_of_range[0]):
                m.by_context[col].inc()
        m.recommend_seconds.observe(time.perf_counter() - t0)
        return rec

    # ---- feedback ------------------------------------------------------------------------------------------------

    def observe(self, user_id: str, events: Iterable[Event | dict[str, Any]]) -> int:
        """Apply a batch of feedback events to ``user_id`` at once, in order, atomically.

        An event for an item not shown to the user in the current session is not applied (counted in
        ``recfeed_feedback_ignored_total{reason="not_shown"}``): the simulator's user only reacts to the slates
        it is shown. A dwell above the simulator's cap (``dwell_cap_s``) is applied as the cap (counted in
        ``recfeed_feedback_dwell_clipped_total``).

        Args:
            user_id: The user.
            events: :class:`Event` objects or dicts with the same fields.

        Returns:
            Events applied (the batch's length less those not applied).

        Raises:
            UnknownItemsError: Unknown item ids (nothing is applied).
            InvalidRequestError: Malformed events (nothing is applied).
        """
        t0 = time.perf_counter()
        if not isinstance(user_id, str) or not user_id:
            raise InvalidRequestError("user_id must be a non-empty string")
        evs = [e if isinstance(e, Event) else Event(**e) for e in events]
        for e in evs:
            if e.type not in EVENT_TYPES:
                raise InvalidRequestError(f"event type must be one of {EVENT_TYPES}, got {e.type!r}")
            if not (isinstance(e.dwell_s, int | float) and math.isfinite(e.dwell_s) and e.dwell_s >= 0):
                raise InvalidRequestError(f"dwell_s must be a finite number >= 0, got {e.dwell_s!r}")
        rows = self.items.lookup([e.item_id for e in evs])
        cap = self.dwell_cap_s
        clipped = [e.dwell_s > cap for e in evs]

        resolved: list[int] = []  # the request each event is for (its request_id, else the last slate's)

        def fn(st: UserState) -> list[bool]:
            self._touch(st, self.clock())
            resolved[:] = [st.slate_id if e.request_id is None else int(e.request_id) for e in evs]
            return [apply_event(st, e, int(row), min(e.dwell_s, cap), self.items.category, self.const, self._consume,
                                self.items.emb)
                    for e, row in zip(evs, rows, strict=True)]

        applied = self.store.transact(user_id, fn, self._new_state) if evs else []
        if any(applied):
            self._observed(user_id, evs, applied, resolved)
        m = self.metrics
        for e, ok, clip in zip(evs, applied, clipped, strict=True):
            if ok:
                m.by_event[e.type].inc()
                if clip:
                    m.dwell_clipped.inc()
            else:
                m.by_ignore["not_shown"].inc()
        m.observe_seconds.observe(time.perf_counter() - t0)
        return sum(applied)

    def _observed(self, user_id: str, events: list[Event], applied: list[bool], request_ids: list[int]) -> None:
        """Called after a feedback batch is stored, with which events were applied and the request each is for (the
        A/B runtime logs them here)."""

    def _consume(self, st: UserState, item: int, keep: float, weight: float) -> None:
        """Pool ``item`` into the state (``keep``, ``weight``) and fold it into the CF factor's equations."""
        fold = bool(self.cf_fold_in and not st.cf_pinned and self.items.cf_dim > 0)
        q = self.items.factors64[item]
        if consume(st.state, self.items.emb[item], keep, weight, fold, st.cf_a, st.cf_b, q, st.cf_items, item,
                    self.const.cf_alpha):
            st.cf_items = np.append(st.cf_items, np.int32(item))
        if fold:
            st.cf_dirty = True  # solved when next needed (once per request, not once per event)

    def _refresh_cf(self, st: UserState) -> None:
        """Solve the fold-in if events changed its accumulators since the last solve."""
        if st.cf_dirty:
            st.cf_factor = fold_in(self._gram_reg, st.cf_a, st.cf_b)
            st.cf_dirty = False

    # ---- user management --------------------------------------------------------------------------------------------

    def set_user(self, user_id: str, history: Sequence[str] = (), pooled_state: np.ndarray | None = None,
                 cf_factor: np.ndarray | None = None) -> None:
        """Import a known user (e.g. from logs), replacing any state held for them.

        Args:
            user_id: The user.
            history: Item ids consumed, oldest first: pooled like the simulator's prior history
                (``envs.users.pool_history`` with ``state_decay``) and folded into the CF factor.
            pooled_state: float (D,) an unnormalised pooled state to use instead of pooling ``history``.
            cf_factor: float (F',) a CF user factor (e.g. the offline fit's) to use instead of the fold-in; it is
                then kept fixed.

        Raises:
            UnknownItemsError: Unknown history items.
            ValueError: Wrong shapes.
        """
        rows = self.items.lookup(list(history)) if len(history) else np.zeros(0, np.int64)
        st = self._new_state()
        if pooled_state is not None:
            ps = np.asarray(pooled_state, np.float32)
            if ps.shape != st.state.shape:
                raise ValueError(f"pooled_state must have shape {st.state.shape}, got {ps.shape}")
            st.state = ps.copy()
        elif len(rows):
            st.state = pool_history(rows[None], self.items.emb, self.const.state_decay)[0]
        if cf_factor is not None:
            cf = np.asarray(cf_factor, np.float32)
            if cf.shape != st.cf_factor.shape:
                raise ValueError(f"cf_factor must have shape {st.cf_factor.shape}, got {cf.shape}")
            st.cf_factor, st.cf_pinned = cf.copy(), True
        else:
            for r in rows:  # fold the history into the CF equations (the pooled state is set above)
                self._consume(st, int(r), 1.0, 0.0)
        st.last_active = self.clock()

        def fn(old: UserState) -> None:
            for name in (*ARRAY_FIELDS, *SCALAR_FIELDS):
                setattr(old, name, getattr(st, name))

        self.store.transact(user_id, fn, self._new_state)

    def end_session(self, user_id: str) -> None:
        """End the user's session now (the next request starts a new one)."""
        self.store.transact(user_id, lambda st: st.reset_session(), self._new_state)

    def forget_user(self, user_id: str) -> bool:
        """Erase everything held for ``user_id`` (pooled state, CF factor and its fold-in, session): their next
        request starts as a new user's.

        Args:
            user_id: The user.

        Returns:
            Whether a state was held (``False``: unknown, or already expired).

        Raises:
            InvalidRequestError: For an empty or non-string id.
        """
        if not isinstance(user_id, str) or not user_id:
            raise InvalidRequestError("user_id must be a non-empty string")
        erased = bool(self.store.delete(user_id))
        if erased:
            self.metrics.users_erased.inc()
        log.info("forget user %s: %s", self.hash_user_id(user_id), "erased" if erased else "not held")
        return erased

    def user_state(self, user_id: str) -> UserState | None:
        """A snapshot of the user's state (``None`` if unknown), its CF factor solved."""
        st = self.store.get(user_id)
        if st is not None:
            self._refresh_cf(st)
        return st

    def add_items(self, items: Sequence[Any], encoder: Any = None) -> list[str]:
        """Add new items (cold start) while serving: encoded with the run's encoder, zero CF factors, popularity 0,
        flagged new (``agents/serving/catalog.py``); then rankable like any other. Thread-safe: the item table is
        replaced copy-on-write (rows are only appended), so concurrent requests see the old or the new table.

        Args:
            items: :class:`agents.serving.catalog.NewItem` s.
            encoder: The encoder (default: the one the manifest names, built once, with its disk cache).

        Returns:
            The ids added.

        Raises:
            InvalidRequestError: Bad items (``DuplicateItemsError``, ``EncoderMismatchError``,
                ``ItemsUnavailableError`` among them); nothing is added then.
        """
        from agents.serving.catalog import check_new_items, encode_items, extend_table, run_encoder

        with self._items_lock:
            table = self.items
            codes = check_new_items(table, items)
            if encoder is None:
                self.encoder = encoder = self.encoder or run_encoder(self.manifest)
            enc = encoder
            emb = encode_items(enc, self.manifest["encoder"]["name"], table.dim, [it.text for it in items])
            new = extend_table(table, items, codes, emb)
            self._ctx_lo, self._ctx_hi = context_bounds(self.const.max_steps, new.n_items, self.dwell_cap_s)
            self.items = new  # one reference swap: a request reads the old or the new table
        log.info("added %d new item(s); the catalog has %d", len(items), new.n_items)
        return [it.id for it in items]

    def health(self) -> dict[str, Any]:
        """Liveness and configuration summary."""
        store_ok = self.store.ping()
        return {"status": "ok" if store_ok else "degraded", "model": "ok" if self.model is not None else "missing",
                "format": self.manifest["format"], "store": self.store.kind, "store_ok": store_ok,
                "n_items": self.items.n_items, "slate_size": self.slate_size,
                "fallback_alpha": self.fallback_alpha, "time_budget_ms": self.time_budget_s * 1000.0,
                "encoder": self.manifest["encoder"]["name"], "uptime_s": round(time.time() - self._started, 1)}

    def close(self) -> None:
        """Release the store's connections and stop the model thread (if any)."""
        self.store.close()
        close_model = getattr(self.model, "close", None)
        if close_model is not None:
            close_model()
