"""Off-policy evaluation from the A/B serving log (``agents/serving/ablog.py``) and of exported runs.

The logging policy of a served request is the arm that served it: its logits, β, cap and temperature are in the
log, so its prefix propensities (logged), per-position marginals and conditionals are exact or Rao-Blackwellised
(:mod:`agents.slate_sampling`). Targets are arms like the served ones: ``run:DIR[@T]`` (an exported run's ONNX graph
on the logged observations: its slate propensities are computed on the logged candidates), ``blend:A[@T]``,
``diverse:A:LC:LS:CAP[@T]``, or ``arm:NAME`` (an arm of the log, rebuilt from its spec). ``T`` defaults to 1. PI is
not available on served logs (its Γ_μ for the repulsive walk is not implemented); the other five estimators are.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agents.ope.estimators import LoggingTerms, TargetTerms
from agents.ope.logs import SlateLog, position_rewards
from agents.serving.ablog import ABLog, RewardWeights, read_ab_logs
from agents.serving.arms import ArmScorer, ArmSpec, BlendScorer, DiverseScorer, ModelScorer, build_scorer
from agents.slate_sampling import rpl_conditionals, rpl_marginals, rpl_prefix_log_prob

SERVED_ESTIMATORS = ("ips", "snips", "iips", "rips", "cascade-dr")


@dataclass
class ServedLog:
    """A served log ready for the estimators.

    Attributes:
        log: The requests (positions, per-position rewards and clicks, observations).
        logits: float64 (n, N) the serving arm's logits.
        groups: int64 (n, N) candidate categories.
        beta: float64 (n,) repulsion.
        cap: int64 (n,) category cap (0: none).
        temperature: float64 (n,) > 0.
        logged_prefix: float64 (n, K) the logged prefix log-propensities under the serving arm.
        arms: The arms' specs (from the log's metadata).
        dropped: Requests left out (deterministic arm, or a candidate count other than the most common one).
    """

    log: SlateLog
    logits: np.ndarray
    groups: np.ndarray
    beta: np.ndarray
    cap: np.ndarray
    temperature: np.ndarray
    logged_prefix: np.ndarray
    arms: list[ArmSpec]
    dropped: int
    weights: np.ndarray | None = None
    serving: np.ndarray | None = None
    fallback_alpha: float = 1.0

    def logging_terms(self, generator: np.random.Generator, n_samples: int = 256) -> LoggingTerms:
        """The serving arms' prefix propensities (as logged) and marginals.

        The marginals average the exact conditionals along ``n_samples`` sampled slates and the logged one (so a
        logged (position, item) never gets a marginal that underflowed to 0 in the sampled prefixes; the logged
        slate is one more draw from the same policy, so the average stays consistent).
        """
        k = self.log.slates.shape[1]
        marg = rpl_marginals(self.logits, k, generator, self.groups, self.beta, self.cap, self.temperature,
                             n_samples)
        own = rpl_conditionals(self.logits, self.log.slates, self.groups, self.beta, self.cap, self.temperature)
        marg = (n_samples * marg + own) / (n_samples + 1)
        if self.weights is None:
            return LoggingTerms(self.logged_prefix, marg, None)
        # the mixture of arms: Σ_a w_a·marginals_a, the serving arm's from its logged logits, the others re-scored
        assert self.serving is not None
        mix = np.zeros_like(marg)
        for a, spec in enumerate(self.arms):
            w = self.weights[:, a]
            if not w.any():
                continue
            mine = self.serving == a
            if mine.all():
                mix += w[:, None, None] * marg
                continue
            scorer = build_scorer(spec, self.fallback_alpha, None)
            logits, _, beta = scorer.score(self.log.obs)
            cap = 0 if scorer.cap is None else int(scorer.cap)
            m_a = rpl_marginals(logits, k, generator, self.groups, beta, cap, spec.temperature, n_samples)
            m_a[mine] = marg[mine]
            mix += w[:, None, None] * m_a
        return LoggingTerms(self.logged_prefix, mix, None)


def served_log(source: str | Path | ABLog, reward: RewardWeights | None = None, logging: str = "mixture"
               ) -> ServedLog:
    """The stochastic requests of an A/B log as a :class:`ServedLog`.

    Args:
        source: The log folder or a read log.
        reward: Reward weights.
        logging: ``"mixture"``: a request's logging policy is the share-weighted mixture of the arms,
            ``μ(s|x) = Σ_a share_a·μ_a(s|x)`` (assignment is a hash of the id, independent of the request: the
            estimator for several loggers of Agarwal et al., WSDM 2017, with the propensities under every arm that
            the log holds); a forced request (``"arm"`` in the body) keeps its arm's. ``"arm"``: the arm that served.
            The mixture covers every slate any arm could show, where one arm's support is narrow (the other arm's
            users then carry the weight); it is exact when a request's context does not depend on the arm (one
            request per session), an approximation with longer sessions (the context then tells the arms apart).

    Raises:
        ValueError: No request served at a temperature > 0; an unknown ``logging``; a mixture with a
            deterministic arm.
    """
    if logging not in ("mixture", "arm"):
        raise ValueError(f"logging must be 'mixture' or 'arm', got {logging!r}")
    ab = source if isinstance(source, ABLog) else read_ab_logs(source, reward)
    f = ab.frame
    n_cand = f["candidates"].map(len).to_numpy()
    keep = (f["temperature"].to_numpy() > 0) & np.isfinite(f["log_propensity"].to_numpy())
    if not keep.any():
        raise ValueError("the log holds no request served at a temperature > 0: a deterministic arm's log cannot "
                         "value another policy")
    common = int(np.bincount(n_cand[keep]).argmax())
    keep &= n_cand == common
    g = f[keep].reset_index(drop=True)
    k = len(g["positions"].iloc[0])

    def stack(col: str, dtype: type) -> np.ndarray:
        return np.stack(g[col].to_numpy()).astype(dtype)

    slates = stack("positions", np.int64)
    rewards = position_rewards(g["reward"].to_numpy(), g["click_rank"].to_numpy(), k)
    cr = g["click_rank"].to_numpy()
    clicks = np.zeros((len(g), k))
    clicks[np.flatnonzero(cr >= 0), cr[cr >= 0]] = 1.0
    nf = int(g["n_features"].iloc[0])
    obs = {"features": stack("features", np.float32).reshape(len(g), common, nf),
           "context": stack("context", np.float32), "user": stack("user_state", np.float32),
           "candidates": stack("candidates", np.int64)}
    if "session_sim" in g.columns and g["session_sim"].notna().all():  # logged when an arm reads it
        obs["session_sim"] = stack("session_sim", np.float32)
    logits = stack("logits", np.float64)
    temp = g["temperature"].to_numpy(np.float64)
    log = SlateLog(slates, rewards, clicks, logits / temp[:, None], 0.0, obs)
    served = np.stack([np.asarray(row[f"lp.{arm}"], np.float64) for _, row in g.iterrows()
                       for arm in [row["arm"]]])
    arms = [ArmSpec(**a) for a in ab.meta.get("arms", [])]
    fallback_alpha = float(ab.meta.get("manifest_fallback_alpha", 1.0))
    weights = serving = None
    if logging == "mixture" and arms:
        names = [a.name for a in arms]
        shares = np.array([a.share for a in arms])
        if any(a.temperature <= 0 for a in arms if a.share > 0):
            raise ValueError("the mixture of arms needs every arm with a share to sample (temperature > 0); use "
                             "--logging arm")
        serving = g["arm"].map({n: i for i, n in enumerate(names)}).to_numpy()
        weights = np.tile(shares, (len(g), 1))
        forced = g["forced"].to_numpy(bool)
        weights[forced] = np.eye(len(arms))[serving[forced]]
        per_arm = np.stack([np.stack(g[f"lp.{n}"].to_numpy()).astype(np.float64) for n in names], axis=1)  # (n,A,K)
        with np.errstate(divide="ignore"):
            lw = np.log(weights)[:, :, None] + per_arm
        lw = np.where(np.isnan(lw) & (weights[:, :, None] == 0), -np.inf, lw)
        bad = np.isnan(lw).any(axis=(1, 2))
        mix = np.logaddexp.reduce(np.where(np.isnan(lw), -np.inf, lw), axis=1)
        served = np.where(bad[:, None], served, mix)  # an arm's propensity missing (its model failed): own arm's
    return ServedLog(log, logits, stack("groups", np.int64), g["beta"].to_numpy(np.float64),
                     g["cap"].to_numpy(np.int64), temp, served, arms, int((~keep).sum()), weights, serving,
                     fallback_alpha)


@dataclass
class Target:
    """A target policy for served logs: a scorer and its temperature."""

    name: str
    scorer: ArmScorer
    temperature: float

    def terms(self, slog: ServedLog, generator: np.random.Generator, n_samples: int = 256) -> TargetTerms:
        """Its prefix log-propensities, marginals and conditionals on the logged requests."""
        logits, _, beta = self.scorer.score(slog.log.obs)
        k = slog.log.slates.shape[1]
        cap, groups, t = self.scorer.cap, slog.groups, self.temperature
        return TargetTerms(rpl_prefix_log_prob(logits, slog.log.slates, groups, beta, cap, t),
                           rpl_marginals(logits, k, generator, groups, beta, cap, t, n_samples),
                           rpl_conditionals(logits, slog.log.slates, groups, beta, cap, t))


def parse_target(spec: str, arms: list[ArmSpec] | None = None, fallback_alpha: float | None = None) -> Target:
    """A target from ``run:DIR[@T]``, ``blend:A[@T]``, ``diverse:A:LC:LS:CAP[@T]`` or ``arm:NAME`` (module docstring).

    Raises:
        ValueError: Unknown syntax, bad numbers, T ≤ 0, an unknown arm.
        FileNotFoundError: ``run:DIR`` without an export.
    """
    syntax = "served-log targets: run:DIR[@T], blend:A[@T], diverse:A:LC:LS:CAP[@T], arm:NAME"
    if spec.startswith("arm:"):
        name = spec[4:]
        match = [a for a in arms or [] if a.name == name]
        if not match:
            raise ValueError(f"unknown arm {name!r}: the log's arms are {[a.name for a in arms or []]}")
        a = match[0]
        if a.temperature <= 0:
            raise ValueError(f"arm {name!r} is deterministic (temperature 0): give it a temperature, e.g. "
                             f"{spec}@0.1 is not supported; use blend:/diverse:/run: with @T")
        return Target(spec, build_scorer(a, fallback_alpha if fallback_alpha is not None else 1.0), a.temperature)
    body, _, t_text = spec.partition("@")
    try:
        temp = float(t_text) if t_text else 1.0
    except ValueError:
        raise ValueError(f"bad temperature in {spec!r}; {syntax}") from None
    if not (np.isfinite(temp) and temp > 0):
        raise ValueError(f"the temperature of {spec!r} must be > 0 (a deterministic target has no overlap with the "
                         "logged slates)")
    kind, _, arg = body.partition(":")
    if kind == "run" and arg:
        return Target(spec, ModelScorer(arg), temp)
    try:
        nums = [float(x) for x in arg.split(":")] if arg else []
    except ValueError:
        raise ValueError(f"bad number in {spec!r}; {syntax}") from None
    if kind == "blend" and len(nums) == 1 and 0 <= nums[0] <= 1:
        return Target(spec, BlendScorer(nums[0]), temp)
    if kind == "diverse" and len(nums) == 4 and 0 <= nums[0] <= 1 and nums[3] >= 1:
        return Target(spec, DiverseScorer(nums[0], nums[1], nums[2], int(nums[3])), temp)
    raise ValueError(f"unknown or malformed target {spec!r}; {syntax}")
