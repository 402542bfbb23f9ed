"""Off-policy evaluation of slate (ranking) policies from logged requests with logging propensities.

A logged request is a context x (the observation: candidates, features, user state), the ranked slate
s = (s_1, …, s_K) of K distinct positions out of the request's N candidates that the logging policy μ drew, and
the response: per-position rewards r_k (recfeed's reward, or the click indicator, sits at the clicked position;
the user clicks at most once per request). The value of a target policy π is the expected per-request reward
``V(π) = E_x E_{s~π(·|x)} [Σ_k r_k]`` over the logged contexts' distribution. Every estimator below returns that
value and a 95 % normal interval from its per-request terms (delta method for the self-normalised one).

Estimators (each needs μ(s|x) > 0 wherever π(s|x) > 0): ``ips`` (whole-slate weights; no reward assumption),
``snips`` (self-normalised), ``iips`` (per-position marginals; independent / position-based rewards; Li et al.,
KDD 2018), ``rips`` (prefix weights; cascade rewards; McInerney et al., KDD 2020), ``pi`` (pseudo-inverse;
rewards additive over slot × item; Swaminathan et al., NeurIPS 2017) and ``cascade-dr`` (RIPS with a per-position
reward model as control variate; Kiyohara et al., WSDM 2022). Policies are Plackett-Luce over per-candidate logits,
optionally mixed with a uniform slate (recfeed's logging policy): slate and prefix probabilities are exact,
per-position marginals and PI's moments are Rao-Blackwellised Monte Carlo. Formulas, assumptions, why this is numpy
and not Open Bandit Pipeline, the log format (rollout log + ``<log>.obs.npz``) and the validation against the
simulator: ``docs/ope.md``.
"""

from __future__ import annotations

from agents.ope.cli import main
from agents.ope.estimators import (
    Estimate,
    LoggingTerms,
    TargetTerms,
    cascade_dr_terms,
    estimate_all,
    estimator_terms,
    fit_position_reward_model,
    fit_qhat,
    logging_terms,
    target_terms,
)
from agents.ope.logs import (
    PLPolicy,
    SlateLog,
    blend_policy,
    log_policy,
    logging_pl_policy,
    on_policy_value,
    parse_policy,
    position_rewards,
    read_ope_log,
    sidecar_path,
    write_ope_log,
)
from agents.ope.plackett_luce import (
    ESTIMATORS,
    OBS_KEYS,
    Z95,
    pi_weights,
    pl_conditionals,
    pl_marginals,
    pl_pinv_gram,
    pl_prefix_log_prob,
    pl_sample,
)

__all__ = [
    "ESTIMATORS",
    "OBS_KEYS",
    "Z95",
    "Estimate",
    "LoggingTerms",
    "PLPolicy",
    "SlateLog",
    "TargetTerms",
    "blend_policy",
    "cascade_dr_terms",
    "estimate_all",
    "estimator_terms",
    "fit_position_reward_model",
    "fit_qhat",
    "log_policy",
    "logging_pl_policy",
    "logging_terms",
    "main",
    "on_policy_value",
    "parse_policy",
    "pi_weights",
    "pl_conditionals",
    "pl_marginals",
    "pl_pinv_gram",
    "pl_prefix_log_prob",
    "pl_sample",
    "position_rewards",
    "read_ope_log",
    "sidecar_path",
    "target_terms",
    "write_ope_log",
]
