"""A/B arms: several ranking policies behind one service, each user assigned to one by a keyed hash of their id.

    runtime = ABRuntime.load("runs/ppo-1/export", log_key=KEY)
    runtime.set_arms(load_arms_file("arms.yaml"), log_dir="ab-logs")
    rec = runtime.recommend("u42", candidate_ids)          # rec.arm, rec.log_propensity

An arms file (YAML or JSON) lists the arms::

    arms:
      - {name: ppo, export: runs/ppo-1, share: 0.5, temperature: 1.0}          # an exported run (or its export/)
      - {name: tuned-alpha, kind: blend, alpha: 0.9, share: 0.5, temperature: 0.1}
      - {name: tuned-diverse, kind: diverse, alpha: 0.7, exposure_weight: 3, seen_weight: 0.5, cap: 2,
         share: 0.0, temperature: 0.1}

``kind`` is ``export`` (the default when ``export`` is given), ``blend`` (``α·llm_sim + (1−α)·cf_score``; ``alpha``
omitted: the serving artifact's fallback α, i.e. the run's tuned α) or ``diverse``
(:class:`agents.rankers.DiverseRanker`'s score and category cap). Each arm samples its slate from the Plackett-Luce
walk of :mod:`agents.slate_sampling` at its ``temperature`` (0: the deterministic mode). Shares must be ≥ 0 and sum
to 1. A user's arm is fixed by their pseudonym (:class:`agents.serving.privacy.UserIdHasher`, the deployment's log
key): its 64 bits read as u ∈ [0, 1) against the cumulative shares. With logging on
(:mod:`agents.serving.ablog`), every answer is logged with the slate's log-propensity under every arm.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agents.base import Ranker
from agents.serving.ablog import ServeLogWriter
from agents.serving.artifact import ItemTable, load_manifest
from agents.serving.errors import ExplanationUnavailableError, ModelTimeoutError, UnknownArmError
from agents.serving.messages import Event, Recommendation
from agents.serving.runners import OnnxModel
from agents.serving.runtime import FALLBACK_PARTS, Ranked, ServingRuntime
from agents.slate_mode import greedy_slate, greedy_slates
from agents.slate_sampling import greedy_log_prob, rpl_prefix_log_prob, rpl_sample, walk_one
from envs.spaces import F_CAT_EXPOSURE, F_CF, F_ITEM_SEEN, F_LLM

ARM_KINDS = ("export", "blend", "diverse")
SHARE_TOLERANCE = 1e-9
_KEYS = {"name", "kind", "export", "share", "temperature", "alpha", "exposure_weight", "seen_weight", "cap"}


@dataclass(frozen=True)
class ArmSpec:
    """One arm of an arms file (module docstring).

    Attributes:
        name: Unique name (what logs and reports call it).
        kind: ``export``, ``blend`` or ``diverse``.
        share: Share of users in [0, 1].
        temperature: Plackett-Luce temperature ≥ 0 (0: deterministic).
        export: Run or export directory (``export`` arms).
        alpha: α of ``blend`` / ``diverse`` arms (``None`` for ``blend``: the artifact's fallback α).
        exposure_weight: ``diverse``'s λ_c.
        seen_weight: ``diverse``'s λ_s.
        cap: ``diverse``'s category cap.
    """

    name: str
    kind: str
    share: float
    temperature: float
    export: str | None = None
    alpha: float | None = None
    exposure_weight: float = 3.0
    seen_weight: float = 0.5
    cap: int = 2

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return asdict(self)


def _number(arm: dict[str, Any], key: str, where: str, default: float | None = None) -> float | None:
    v = arm.get(key, default)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise ValueError(f"{where}: {key} must be a finite number, got {v!r}")
    return float(v)


def parse_arms(data: Any, base_dir: str | Path | None = None, check_exports: bool = True) -> list[ArmSpec]:
    """Validate an arms file's content (``{"arms": [...]}`` or the list itself).

    Args:
        data: The parsed YAML / JSON.
        base_dir: Relative ``export`` paths are resolved against it (the arms file's folder).
        check_exports: Require each ``export`` directory to exist.

    Returns:
        The arms, in file order.

    Raises:
        ValueError: Not a list of mappings, unknown keys or kind, a missing or duplicate name, a negative share,
            shares not summing to 1 (within 1e-9), a bad temperature or α.
        FileNotFoundError: An ``export`` directory that does not exist.
    """
    arms = data.get("arms") if isinstance(data, dict) else data
    if not isinstance(arms, list) or not arms:
        raise ValueError("an arms file must hold a non-empty list 'arms' of mappings")
    out: list[ArmSpec] = []
    seen: set[str] = set()
    for i, arm in enumerate(arms):
        where = f"arm {i + 1}"
        if not isinstance(arm, dict):
            raise ValueError(f"{where}: must be a mapping, got {type(arm).__name__}")
        extra = sorted(set(arm) - _KEYS)
        if extra:
            raise ValueError(f"{where}: unknown key(s) {extra}; allowed: {sorted(_KEYS)}")
        name = arm.get("name")
        if not isinstance(name, str) or not name.strip() or len(name) > 64 or any(c in name for c in "\n,"):
            raise ValueError(f"{where}: name must be a non-empty string of at most 64 characters, got {name!r}")
        where = f"arm {name!r}"
        if name in seen:
            raise ValueError(f"duplicate arm name {name!r}")
        seen.add(name)
        kind = arm.get("kind", "export" if "export" in arm else None)
        if kind not in ARM_KINDS:
            raise ValueError(f"{where}: unknown arm kind {kind!r}; choose from {list(ARM_KINDS)}")
        share = _number(arm, "share", where)
        if share is None:
            raise ValueError(f"{where}: share is required")
        if share < 0:
            raise ValueError(f"{where}: share must be >= 0, got {share}")
        temp = _number(arm, "temperature", where, 0.0)
        assert temp is not None
        if temp < 0:
            raise ValueError(f"{where}: temperature must be >= 0, got {temp}")
        export = arm.get("export")
        if kind == "export":
            if not isinstance(export, str) or not export:
                raise ValueError(f"{where}: an export arm needs 'export' (a run or export directory)")
            p = Path(export)
            if base_dir is not None and not p.is_absolute():
                p = Path(base_dir) / p
            if check_exports and not p.is_dir():
                raise FileNotFoundError(f"{where}: export directory {p} does not exist")
            export = str(p)
        elif export is not None:
            raise ValueError(f"{where}: 'export' is only for kind export")
        alpha = _number(arm, "alpha", where)
        if kind == "diverse" and alpha is None:
            raise ValueError(f"{where}: a diverse arm needs alpha")
        if alpha is not None and not 0.0 <= alpha <= 1.0:
            raise ValueError(f"{where}: alpha must be in [0, 1], got {alpha}")
        cap = arm.get("cap", 2)
        if isinstance(cap, bool) or not isinstance(cap, int) or cap < 1:
            raise ValueError(f"{where}: cap must be an integer >= 1, got {cap!r}")
        lc, ls = _number(arm, "exposure_weight", where, 3.0), _number(arm, "seen_weight", where, 0.5)
        assert lc is not None and ls is not None
        out.append(ArmSpec(name, kind, share, temp, export, alpha, lc, ls, cap))
    total = sum(a.share for a in out)
    if abs(total - 1.0) > SHARE_TOLERANCE:
        raise ValueError(f"arm shares must sum to 1 (within {SHARE_TOLERANCE:g}), got {total!r}: "
                         + ", ".join(f"{a.name}={a.share:g}" for a in out))
    return out


def load_arms_file(path: str | Path, check_exports: bool = True) -> list[ArmSpec]:
    """Read and validate an arms file (YAML or JSON; :func:`parse_arms`).

    Raises:
        FileNotFoundError: Missing file or export directory.
        ValueError: Unparsable or invalid content.
    """
    import yaml

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"arms file {p} does not exist")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise ValueError(f"{p}: not YAML/JSON: {exc}") from None
    try:
        return parse_arms(data, p.parent, check_exports)
    except ValueError as exc:
        raise ValueError(f"{p}: {exc}") from None


def cumulative_shares(arms: list[ArmSpec]) -> np.ndarray:
    """float64 (A,) cumulative shares, the last exactly 1."""
    cum = np.cumsum([a.share for a in arms], dtype=np.float64)
    cum[-1] = 1.0
    return cum


def assign(pseudonym: str, cum: np.ndarray) -> int:
    """The arm index of a user: the pseudonym's 64 hex bits as u ∈ [0, 1), the first arm whose cumulative share
    exceeds u (an arm with share 0 never gets users)."""
    u = int(pseudonym.rsplit(":", 1)[-1], 16) / 2.0 ** (4 * len(pseudonym.rsplit(":", 1)[-1]))
    return min(int(np.searchsorted(cum, u, side="right")), len(cum) - 1)


# ---- scorers: an arm's logits on a batch of observations --------------------------------------------------------


class ArmScorer:
    """An arm's per-candidate logits on batched observations (serving: B = 1; simulation and OPE: many).

    Attributes:
        cap: Category cap of its slate walk (``None``: none).
    """

    cap: int | None = None

    def score(self, obs: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(logits (B, N) float64, alpha (B,), beta (B,))``."""
        raise NotImplementedError

    def parts(self, obs: dict[str, np.ndarray]) -> tuple[np.ndarray, tuple[str, ...]]:
        """Additive parts of one request's logits (explanations): ``((N, P), names)``."""
        raise NotImplementedError


class BlendScorer(ArmScorer):
    """``α·llm_sim + (1 − α)·cf_score`` (:class:`agents.rankers.BlendRanker`)."""

    def __init__(self, alpha: float) -> None:
        self.alpha = float(alpha)

    def score(self, obs: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        f = np.asarray(obs["features"], dtype=np.float64)
        b = f.shape[0]
        return (self.alpha * f[:, :, F_LLM] + (1.0 - self.alpha) * f[:, :, F_CF], np.full(b, self.alpha),
                np.zeros(b))

    def parts(self, obs: dict[str, np.ndarray]) -> tuple[np.ndarray, tuple[str, ...]]:
        f = np.asarray(obs["features"], dtype=np.float64)
        return np.stack([self.alpha * f[:, F_LLM], (1.0 - self.alpha) * f[:, F_CF]], axis=-1), FALLBACK_PARTS


class DiverseScorer(BlendScorer):
    """:class:`agents.rankers.DiverseRanker`'s score: the blend standardised over the candidates, less λ_c·cat_exposure
    and λ_s·item_seen, walked under its category cap (here the soft 30-nat cap of the slate walk)."""

    def __init__(self, alpha: float, exposure_weight: float, seen_weight: float, cap: int) -> None:
        super().__init__(alpha)
        self.lc, self.ls, self.cap = float(exposure_weight), float(seen_weight), int(cap)

    def _split(self, f: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        llm, cf = self.alpha * f[..., F_LLM], (1.0 - self.alpha) * f[..., F_CF]
        base = llm + cf
        mu, sd = base.mean(axis=-1, keepdims=True), base.std(axis=-1, keepdims=True) + 1e-9
        llm_mu = llm.mean(axis=-1, keepdims=True)
        return ((llm - llm_mu) / sd, (cf - (mu - llm_mu)) / sd,
                -self.lc * f[..., F_CAT_EXPOSURE] - self.ls * f[..., F_ITEM_SEEN])

    def score(self, obs: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        f = np.asarray(obs["features"], dtype=np.float64)
        llm, cf, div = self._split(f)
        b = f.shape[0]
        return llm + cf + div, np.full(b, self.alpha), np.zeros(b)

    def parts(self, obs: dict[str, np.ndarray]) -> tuple[np.ndarray, tuple[str, ...]]:
        return np.stack(self._split(np.asarray(obs["features"], dtype=np.float64)), axis=-1), ("llm", "cf",
                                                                                              "diversity")


class ModelScorer(ArmScorer):
    """An exported run's ONNX graph (its logits, α, β and the manifest's category cap).

    Args:
        path: A run directory (its ``export/``) or an export directory.
        threads: ONNX Runtime intra-op threads.
    """

    def __init__(self, path: str | Path, threads: int | None = 1) -> None:
        root = Path(path)
        if not (root / "manifest.json").is_file() and (root / "export" / "manifest.json").is_file():
            root = root / "export"
        if not (root / "manifest.json").is_file():
            raise FileNotFoundError(f"{path} is neither an export directory nor a run with an export/ "
                                    "(python -m agents.export RUN_DIR)")
        self.root = root
        self.manifest = load_manifest(root)
        if self.manifest["format"] != "onnx":
            raise ValueError(f"{root}: A/B arms serve ONNX exports, this one is {self.manifest['format']}")
        self.items = ItemTable.load(root / self.manifest["files"]["items"], int(self.manifest["n_categories"]))
        self.input_names = list(self.manifest["inputs"])
        self.model = OnnxModel(root / self.manifest["files"]["model"], self.input_names, threads=threads)
        self.cap = self.manifest.get("category_cap")
        names = self.manifest.get("score_parts")
        self.part_names: tuple[str, ...] = tuple(names) if names and self.model.has_parts else ()

    def inputs(self, obs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The graph's inputs from batched observations (``item_emb`` from the export's item table if absent).

        Raises:
            ValueError: The graph reads ``session_sim`` and the observations lack it (it needs the session's clicks).
        """
        out = {}
        for n in self.input_names:
            if n == "session_sim" and n not in obs:
                raise ValueError(f"{self.root}: this arm's policy reads obs['session_sim'] (env.obs_session_sim); "
                                 "give it observations that carry it")
            if n == "item_emb" and n not in obs:
                out[n] = np.take(self.items.emb, np.asarray(obs["candidates"]), axis=0).astype(np.float32)
            elif n == "candidates":
                out[n] = np.asarray(obs[n], dtype=np.int64)
            else:
                out[n] = np.asarray(obs[n], dtype=np.float32)
        return out

    def score(self, obs: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        logits, alpha, beta = self.model.run_batch(self.inputs(obs))
        return np.asarray(logits, np.float64), np.asarray(alpha, np.float64), np.asarray(beta, np.float64)


def build_scorer(spec: ArmSpec, fallback_alpha: float, threads: int | None = 1) -> ArmScorer:
    """The scorer of one arm (an ``export`` arm loads its ONNX graph)."""
    if spec.kind == "export":
        assert spec.export is not None
        return ModelScorer(spec.export, threads)
    if spec.kind == "blend":
        return BlendScorer(fallback_alpha if spec.alpha is None else spec.alpha)
    assert spec.alpha is not None
    return DiverseScorer(spec.alpha, spec.exposure_weight, spec.seen_weight, spec.cap)


def sample_slates(scorer: ArmScorer, obs: dict[str, np.ndarray], groups: np.ndarray, k: int, temperature: float,
                  generator: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """An arm's slates on batched observations: ``(slates int64 (B, K), prefix log-propensities (B, K))``."""
    logits, _, beta = scorer.score(obs)
    if temperature > 0:
        return rpl_sample(logits, k, generator, groups, beta, scorer.cap, temperature)
    slates = greedy_slates(logits.astype(np.float32), k, groups, beta.astype(np.float32), scorer.cap)
    return slates, np.zeros(slates.shape)


def arm_prefix_log_prob(scorer: ArmScorer, obs: dict[str, np.ndarray], groups: np.ndarray, slates: np.ndarray,
                        temperature: float) -> np.ndarray:
    """log-propensities of ``slates`` (B, K) prefixes under an arm: float64 (B, K) (-inf where impossible)."""
    logits, _, beta = scorer.score(obs)
    if temperature > 0:
        return rpl_prefix_log_prob(logits, slates, groups, beta, scorer.cap, temperature)
    greedy = greedy_slates(logits.astype(np.float32), slates.shape[1], groups, beta.astype(np.float32), scorer.cap)
    return greedy_log_prob(greedy, slates)


class SampledRanker(Ranker):
    """An arm as a simulator ranker (the evaluation engine of ``evaluate.py``): the same scorer and temperature.

    Args:
        name: Display name.
        scorer: The arm's scorer.
        temperature: Its temperature.
        category: int64 (M,) item categories (the world's).
        k: Slate size.
        seed: Seed of the draws.
    """

    def __init__(self, name: str, scorer: ArmScorer, temperature: float, category: np.ndarray, k: int,
                 seed: int = 0) -> None:
        super().__init__(k)
        self.name, self.scorer, self.temperature = name, scorer, float(temperature)
        self.category = np.asarray(category, dtype=np.int64)
        self.gen = np.random.default_rng([seed, 0xAB])

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        groups = self.category[np.asarray(obs["candidates"])]
        return sample_slates(self.scorer, obs, groups, self.k, self.temperature, self.gen)[0]


# ---- the A/B runtime ----------------------------------------------------------------------------------------------


class ABRuntime(ServingRuntime):
    """A :class:`ServingRuntime` whose answers come from A/B arms (:meth:`set_arms`); without arms it serves as the
    plain runtime. The artifact it is loaded from supplies the item table, the observation constants and the
    fallback; every arm's export must have the same item table."""

    arms: tuple[ArmSpec, ...] | list[ArmSpec] = ()
    writer: ServeLogWriter | None = None

    def set_arms(self, arms: list[ArmSpec], log_dir: str | Path | None = None, seed: int | None = None,
                 threads: int | None = 1, **writer_kwargs: Any) -> None:
        """Configure the arms and (``log_dir``) the serving log.

        Args:
            arms: Validated arms (:func:`load_arms_file`).
            log_dir: Folder of the Parquet log (``None``: no logging, and no propensities under the other arms).
            seed: Seed of the slate draws (``None``: fresh entropy).
            threads: ONNX Runtime threads of each exported arm.
            **writer_kwargs: :class:`ServeLogWriter` limits (``max_rows``, ``max_bytes``, ``queue_size``, ``flush_s``).

        Raises:
            ValueError: An export whose item table differs from the serving artifact's, or duplicate names.
        """
        from prometheus_client import Counter

        scorers = [build_scorer(a, self.fallback_alpha, threads) for a in arms]
        for a, s in zip(arms, scorers, strict=True):
            if isinstance(s, ModelScorer) and s.items.fingerprint != self.items.fingerprint:
                raise ValueError(f"arm {a.name!r}: its export's item table ({s.items.fingerprint}) is not the served "
                                 f"one ({self.items.fingerprint}); arms must share one catalog")
        self.arms, self.scorers = list(arms), scorers
        self.obs_inputs = frozenset(self.input_names).union(
            *(s.input_names for s in scorers if isinstance(s, ModelScorer)))  # observations every arm can read
        self._cum = cumulative_shares(self.arms)
        self._index = {a.name: i for i, a in enumerate(self.arms)}
        self._gen = np.random.default_rng(seed)
        self._gen_lock = threading.Lock()
        if not hasattr(self, "_arm_counter"):
            self._arm_counter = Counter("recfeed_ab_recommend_total", "Recommendations answered, by A/B arm",
                                        ["arm"], registry=self.metrics.registry)
        self.writer = None
        if log_dir is not None:
            meta = {"arms": [a.to_dict() for a in self.arms], "items_fingerprint": self.items.fingerprint,
                    "slate_size": self.slate_size, "manifest_fallback_alpha": self.fallback_alpha}
            self.writer = ServeLogWriter(log_dir, [a.name for a in self.arms], meta, registry=self.metrics.registry,
                                         **writer_kwargs)

    def add_items(self, items: Sequence[Any], encoder: Any = None) -> list[str]:
        """:meth:`ServingRuntime.add_items`, then every exported arm reads the grown item table too (rows are only
        appended and the fingerprint is kept, so each arm's view of the old rows is unchanged)."""
        added = super().add_items(items, encoder)
        for s in getattr(self, "scorers", ()):
            if isinstance(s, ModelScorer):
                s.items = self.items
        return added

    def arm_of(self, user_id: str) -> str:
        """The arm ``user_id`` is assigned to."""
        return self.arms[assign(self.hash_user_id(user_id), self._cum)].name

    def _score_arm(self, i: int, obs: dict[str, np.ndarray], explain: bool
                   ) -> tuple[np.ndarray, float, float, str | None, float, np.ndarray | None, tuple[str, ...],
                              int | None]:
        sc = self.scorers[i]
        if isinstance(sc, ModelScorer):
            if explain and not sc.part_names:
                raise ExplanationUnavailableError(f"arm {self.arms[i].name!r} cannot explain its scores: its export "
                                                  "predates export version 3; re-export the run")
            scores, alpha, beta, reason, model_s, parts = self._score(obs, explain, sc.model)
            names = FALLBACK_PARTS if reason else sc.part_names
            return scores, alpha, beta, reason, model_s, parts, names, None if reason else sc.cap
        batch = {"features": obs["features"][None]}
        logits, alpha, beta = sc.score(batch)
        parts, names = sc.parts(obs) if explain else (None, ())
        return logits[0], float(alpha[0]), 0.0, None, 0.0, parts, names, sc.cap

    def _rank(self, user_id: str, obs: dict[str, np.ndarray], cand: np.ndarray, k: int, explain: bool,
              arm: str | None) -> Ranked:
        if not self.arms:
            return super()._rank(user_id, obs, cand, k, explain, arm)
        pseudonym = self.hash_user_id(user_id)
        if arm is None:
            i = assign(pseudonym, self._cum)
        elif arm in self._index:
            i = self._index[arm]
        else:
            raise UnknownArmError(f"unknown arm {arm!r}; this service runs {list(self._index)}")
        spec = self.arms[i]
        scores, alpha, beta, reason, model_s, parts, names, cap = self._score_arm(i, obs, explain)
        groups = self.items.category[cand]
        temp = spec.temperature
        if temp > 0:
            with self._gen_lock:
                u = self._gen.random(k)
            top, prefix = walk_one(scores, k, groups, beta, cap, temp, slate=None, uniforms=u)
        else:
            top = greedy_slate(scores, k, groups if beta > 0 or cap is not None else None, beta, cap)
            prefix = np.zeros(k)
        self._arm_counter.labels(spec.name).inc()
        log = None
        if self.writer is not None:
            lps = {}
            batch = {key: v[None] for key, v in obs.items()}
            for j, (other, sc) in enumerate(zip(self.arms, self.scorers, strict=True)):
                if j == i:
                    lps[other.name] = prefix
                    continue
                try:
                    logits, _, beta2 = sc.score(batch)
                    if other.temperature > 0:
                        lps[other.name] = walk_one(logits[0], k, groups, float(beta2[0]), sc.cap, other.temperature,
                                                   slate=top)[1]
                    else:
                        lps[other.name] = arm_prefix_log_prob(sc, batch, groups[None], top[None], 0.0)[0]
                except (ModelTimeoutError, ValueError, RuntimeError):
                    lps[other.name] = np.full(k, np.nan)
            log = {"arm": spec.name, "forced": arm is not None, "source": "fallback" if reason else "model",
                   "temperature": temp, "positions": top, "log_propensity": float(prefix[-1]),
                   "logits": np.asarray(scores, np.float64), "beta": float(beta), "cap": int(cap or 0),
                   "groups": groups, "lp": lps}
        return Ranked(top, scores, alpha, beta, reason, model_s, parts, names, arm=spec.name,
                      log_propensity=float(prefix[-1]), log=log)

    def _served(self, user_id: str, rec: Recommendation, ranked: Ranked, obs: dict[str, np.ndarray], step: int,
                session: int) -> None:
        if self.writer is None or ranked.log is None:
            return
        row = dict(ranked.log)
        row.update(ts=time.time(), user=self.hash_user_id(user_id), session=session, step=step,
                   request_id=rec.request_id, candidates=obs["candidates"], features=obs["features"],
                   context=obs["context"], user_state=obs["user"])
        if "session_sim" in obs:  # an arm reads it: logged so that the arm's propensities can be recomputed
            row["session_sim"] = obs["session_sim"]
        self.writer.log_request(row)

    def _observed(self, user_id: str, events: list[Event], applied: list[bool], request_ids: list[int]) -> None:
        if self.writer is None:
            return
        ok = [e for e, a in zip(events, applied, strict=True) if a]
        rows = self.items.lookup([e.item_id for e in ok])
        rids = [r for r, a in zip(request_ids, applied, strict=True) if a]
        pseudonym, now = self.hash_user_id(user_id), time.time()
        for e, row, rid in zip(ok, rows, rids, strict=True):
            self.writer.log_feedback({"ts": now, "user": pseudonym, "request_id": int(rid), "type": e.type,
                                      "item": int(row), "dwell_s": float(min(e.dwell_s, self.dwell_cap_s))})

    def health(self) -> dict[str, Any]:
        h = super().health()
        if self.arms:
            h["arms"] = {a.name: {"kind": a.kind, "share": a.share, "temperature": a.temperature}
                         for a in self.arms}
            h["logging"] = self.writer is not None
        return h

    def close(self) -> None:
        """Flush and close the serving log, then the runtime."""
        if getattr(self, "writer", None) is not None:
            self.writer.close()
        super().close()
