"""The PPO slate policy: a learned, state-dependent correction of the fixed α blend.

Every candidate is scored with shared weights (permutation-equivariant in the N candidates)::

    logits_i = [α_θ(s)·llm_sim_i + (1 - α_θ(s))·cf_score_i] / τ + residual_θ(s, x_i)

* ``s`` is the state: ``obs["user"]`` (D), ``obs["context"]`` (C) and permutation-invariant summaries
  (mean and max over N) of the per-candidate inputs ``x_i``;
* ``x_i`` is the candidate's feature row (F), plus its embedding (D) when the observation carries
  ``item_emb``, plus a learned item-table embedding when ``use_item_table`` is on;
* ``α_θ(s) ∈ [0, 1]`` is a sigmoid gate on a state MLP, the residual an MLP over ``[x_i, state embedding]``.

**Residual on the diversity heuristic** (``base="diverse"``). The blend is standardised over the request's
candidates and the heuristic's fixed penalties are added, and the slate distribution gets the heuristic's category
cap (a soft cap, :class:`agents.distributions.PlackettLuceDistribution`)::

    logits_i = [z_i(α_θ(s)·llm_sim + (1 - α_θ(s))·cf_score) + w·f_i] / τ + residual_θ(s, x_i)

with ``w`` (F,) fixed (``-λ_c`` on ``cat_exposure``, ``-λ_s`` on ``item_seen``).

**Gate on standardised signals** (``gate="standardised"``, base ``"diverse"`` only). The raw blend's α mostly
reweights the two signals' scales (the CF score's spread is ~15× the cosine's, so the raw α sits near 1 and a move
of 0.01 is a large move of the effective weight). With this gate both signals are standardised over the request's
candidates first and α is the LLM signal's share of the weight::

    blend = z(α·z(llm_sim) + (1 − α)·z(cf_score)),   α = σ(logit α₀ + log sd(llm) − log sd(cf) + g_θ(s))

The prior ``logit α₀ + log sd(llm) − log sd(cf)`` (per request) is the share that the heuristic's fixed raw α₀ gives
the standardised LLM signal, so with ``g_θ = 0`` (its init) ``blend`` equals the heuristic's ``z(α₀·llm + (1 −
α₀)·cf)`` exactly (a standardisation ignores positive scale) and the initial mode stays ``tuned-diverse``'s slate;
PPO learns the shift ``g_θ(s)`` in logit units of the effective weight. Started at ``tuned-diverse``'s
parameters (α, λ_c, λ_s, cap) with a near-zero residual and repulsion, the policy's mode is that heuristic's slate,
so PPO starts from the strongest hand-written ranker and learns where to depart from it.

At initialisation the gate's weights are zero and its bias is ``logit(init_alpha)``, and the residual's
last layer has orthogonal gain ``residual_init_scale`` (near 0): the policy starts as the fixed-α blend
(its mode is the fixed-α greedy top-K) and PPO learns where to depart from it. The slate is drawn from a
:class:`agents.distributions.PlackettLuceDistribution` over the logits.

**A second base for the CF-leaning users** (``cf_rule_alpha``; ``train.policy.cf_rule_base``). With a type head,
the base can move, user by user, from the started rule (A, tuned-diverse) to the rule tuned for the CF-leaning users
on the training users (B, ``agents.tuning.diverse_by_group``): by the head's reading ``q = σ(s·(−ℓ − logit p))``
(ℓ the type logit, high for a content-leaning user; p the threshold, s the sharpness), the α prior's
logit, the click-lean weight and the penalty weights move by ``q`` times B's difference from A. So the policy
starts at a soft version of the engineer's type switch (``bench.type_switch``): A where the head is unsure or reads a
content-leaning user, B where it reads a CF-leaning one with a probability well above p; the category cap stays A's
(a slate-level constant of the distribution). The head's logit is detached here as everywhere.

**Explanations.** :meth:`SlatePolicy.score_parts` splits each logit into additive parts (the LLM and CF terms
of the blend, the fixed diversity penalty, the learned residual, the range clip; :data:`SCORE_PARTS`), computed
in the same pass as the logits; the exported graph returns them as its ``parts`` output (``docs/serving.md``,
"Explanations").

The critic is a separate MLP over the same state input (user, context, candidate summaries) unless
``share_state_net`` is set, in which case it reads the actor's state embedding. With ``obs["critic_state"]``
(``env.obs_critic_state``) the critic's MLP also reads the simulated user's hidden state (an asymmetric
actor-critic); the actor never does, so the slates, the export and serving do not depend on it.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.preprocessing import preprocess_obs
from stable_baselines3.common.type_aliases import PyTorchObs, Schedule
from torch import nn

from agents.distributions import EntropyEstimator, PlackettLuceDistribution
from agents.policy_ops import (
    RunningStandardiser,
    candidate_spread,
    catalog_ids,
    mlp,
    rows_linear,
    standardise_rows,
    symlog,
)
from envs.spaces import C_CLICKED_CF, C_CLICKED_LLM, CRITIC_STATE_NAMES, F_CF, F_LLM, F_POP

DEFAULT_INIT_ALPHA = 0.5
#: How far below the row's best logit a candidate's logit may go (nats; see ``SlatePolicy._actor``).
LOGIT_RANGE = 30.0
#: What the logits are a residual on: the fixed α blend, or the diversity heuristic (see the module docstring).
BASES = ("blend", "diverse")
#: What the gate α weighs (see :meth:`SlatePolicy._gate`): the raw signals, or the signals standardised over the
#: request's candidates (``"standardised"``: α is then the LLM signal's share on a common scale; base ``"diverse"``).
GATES = ("raw", "standardised")
#: What the type head reads (``SlatePolicy``'s ``type_head_input``).
TYPE_HEAD_INPUTS = ("state", "request")
#: Default slope of the CF-leaning users' rule's share in the type logit (``SlatePolicy``'s ``cf_rule_sharpness``):
#: at the threshold the share is 1/2, a logit 1 below it 0.88, an unsure head (logit 0) with p = 0.8 0.06.
CF_RULE_SHARPNESS = 2.0
#: The parts of a candidate's logit, in the order of :meth:`SlatePolicy.score_parts_tensor`'s last axis (see
#: :meth:`SlatePolicy.score_parts`): they sum to the logit.
SCORE_PARTS = ("llm", "cf", "diversity", "residual", "clip")
#: What training changes in the actor, in parts that :meth:`SlatePolicy.with_components_at_start` can put back at
#: their start values one by one (``bench.policy_anatomy`` credits PPO's margin to each).
LEARNED_COMPONENTS = ("gate", "residual", "repulsion", "temperature")


def _hidden_columns(names: Sequence[str] | None, on: bool) -> tuple[int, ...] | None:
    """Indices into ``CRITIC_STATE_NAMES`` of the hidden columns the actor reads (``None``: all of them).

    Raises:
        ValueError: ``names`` without ``actor_hidden_state``, empty, repeated, or naming no hidden column.
    """
    if names is None:
        return None
    if isinstance(names, str):
        names = [names]
    if not on:
        raise ValueError("actor_hidden_columns goes with actor_hidden_state=True")
    unknown = [n for n in names if n not in CRITIC_STATE_NAMES]
    if unknown or not names or len(set(names)) != len(names):
        raise ValueError(f"actor_hidden_columns must be distinct names of {list(CRITIC_STATE_NAMES)}, "
                         f"got {list(names)}")
    return tuple(CRITIC_STATE_NAMES.index(n) for n in names)


def _zero_valued(x: th.Tensor) -> th.Tensor:
    """``x − sg(x)``: zero in value, the gradient of ``x``."""
    return x - x.detach()


def reads_cf_leaning(type_logit: th.Tensor, p: float) -> th.Tensor:
    """Where a type head reads a CF-leaning user with probability above ``p``: ``σ(−ℓ) > p``, the rows on which
    ``type_cap`` fires.

    Args:
        type_logit: The type head's logit ℓ (B,) (σ(ℓ) estimates the user's ρ).
        p: The probability threshold, in (0, 1).

    Returns:
        A bool tensor (B,).
    """
    return -type_logit > math.log(p / (1.0 - p))


class SlatePolicy(ActorCriticPolicy):
    """Actor-critic slate policy for the Dict observation of :mod:`envs.spaces` and ``MultiDiscrete([N]*K)``.

    Works with SB3's ``PPO`` unchanged: ``PPO(SlatePolicy, env, policy_kwargs={...})``.

    Args:
        observation_space: ``Dict(user (D,), candidates (N,), features (N, F), context (C,) [, item_emb (N, D)]
            [, mask (N,)] [, critic_state (P,)])``. An optional ``mask`` key (nonzero = valid candidate) is honoured
            if present; ``critic_state`` is read by the critic only (not with ``share_state_net``).
        action_space: ``MultiDiscrete([N] * K)``.
        lr_schedule: Learning-rate schedule; ``lr_schedule(1)`` is the initial rate.
        hidden: Width of the state and critic MLPs.
        n_layers: Hidden layers in each MLP.
        candidate_hidden: Width of the per-candidate residual MLP (it runs N times per row: the main cost of a
            minibatch, so it is kept narrower than the state MLP; ``None``: ``hidden``).
        item_category: Category of every catalog item (M,). When given, slates are drawn with a learned,
            state-dependent within-slate repulsion β_θ(s) between candidates of one category (see
            :class:`agents.distributions.PlackettLuceDistribution`); independent per-candidate scores cannot
            express "not three cookbooks in one slate".
        repulsion_init: β at initialisation (small: start near the plain blend).
        temperature: τ dividing the blend at initialisation; ``log(1/τ)`` is then learned (one scalar), so PPO can
            sharpen the slate distribution without distorting the blend.
        init_alpha: α at initialisation, in (0, 1) (``None``: 0.5).
        residual_init_scale: Orthogonal gain of the residual head's last layer (near 0: start at the blend).
        use_item_table: Learn an item embedding table indexed by the candidate ids.
        n_items: Rows of the item table (``None``: ``observation_space["candidates"].high.max() + 1``).
        item_dim: Width of the item table.
        share_state_net: Critic reads the actor's state embedding instead of its own MLP.
        entropy_estimator: Slate-entropy estimate, ``"sample"``, ``"mode"`` or ``"action"`` (see the distribution).
        base: ``"blend"`` (the fixed-α blend) or ``"diverse"`` (the standardised blend plus ``base_weights``, with
            the category cap; see the module docstring).
        base_weights: (F,) fixed weights of the feature columns added to the standardised blend (``"diverse"``
            only; ``None``: zeros).
        category_cap: Soft cap on the slate's items per category (needs ``item_category``; ``None``: none).
        gate: ``"raw"`` (α weighs the raw signals) or ``"standardised"`` (α weighs the signals standardised over the
            request's candidates, started at the heuristic's effective weight; base ``"diverse"`` only; see the
            module docstring).
        gate_gain: Factor on the gate head's output (its logit shift): with Adam a gain g moves the gate ~g times
            faster at the same learning rate (the head starts at 0 either way).
        gate_context: Add a linear path from ``obs["context"]`` (the session's feedback EMAs, e.g. the click-weighted
            ``llm_sim`` / ``cf_score`` of clicked items) straight to the gate's logit shift (zero at init), beside
            the state embedding's.
        gate_only_signals: Hide the ``llm_sim`` and ``cf_score`` columns from the residual (its per-candidate
            input, the candidate summaries and the linear feature path), so that only the gate can reweight the two
            signals by state.
        gate_lean: Start value of a learned weight ``w`` on the clicks' lean in the standardised gate (``None``: no
            such term): ``α = σ(prior + w·lean + gain·head(h))``, ``lean = clicked_llm_ema / sd_llm − clicked_cf_ema /
            sd_cf`` over the request's candidates (:func:`agents.rankers.click_lean`), the feedback-adaptive α of
            the diversity heuristic (``DiverseRanker(lean_weight=w)``), so that a policy on that heuristic starts at
            its slates. Needs ``gate="standardised"``.
        session_base_weight: β of tuned-session-diverse in the diverse base: ``z(z(blend) + β·z(session_sim))``
            replaces ``z(blend)``, so a policy over an observation with ``session_sim`` (``env.obs_session_sim``)
            starts at that heuristic's slates (0: the plain diverse base). Needs ``base="diverse"``.
        pop_base_weight: w of tuned-pop-diverse in the diverse base: ``z(z(blend) + w·z(popularity))`` replaces
            ``z(blend)`` (with ``session_base_weight`` too, both terms join before the one re-standardisation), so
            the policy starts at that heuristic's slates (``train.policy.start: pop-diverse``; 0: the plain diverse
            base). Needs ``base="diverse"``.
        lean_gate_only: The two clicked-signal EMAs (``clicked_llm_ema``, ``clicked_cf_ema``: which signal the user's
            clicks lean to) reach the actor only through the gate's direct context path: they are zeroed in the
            input of the shared state net, so the residual, the gate's MLP path and the repulsion cannot read them
            (the critic's own trunk still does). Needs ``gate_context``.
        type_head_weight: > 0: a type head, an MLP over the state input that predicts the user's hidden ρ, fitted on
            ``obs["critic_state"]``'s ρ (``env.obs_critic_state``) by a binary cross-entropy of this weight added to
            PPO's loss; its logit (detached) joins the actor's state input and, by a learned weight
            (``type_gate_init`` at init), the gate's logit shift (see :meth:`_type_logit`). 0: none.
        type_loss_scale: ``type_head_weight / ent_coef`` (see :meth:`evaluate_actions`); set by
            ``agents.training.policy_kwargs``. 0: the head is not fitted.
        type_gate_init: The gate's weight on the type logit at init (0: the policy starts blind to it; > 0: α
            starts to follow the head's posterior as the head learns, lower where it reads a CF-leaning user).
        type_gate_lower_only: The gate reads the type logit only where it is negative (a CF-leaning user): α may
            fall for those users and is left alone for the others.
        type_gate_margin: >= 0, with ``type_gate_lower_only``: the gate reads ``min(logit + margin, 0)``, so only
            readings of a CF-leaning user with probability above ``σ(margin)`` move α.
        type_head_input: What the type head reads: ``"state"``, the whole state input (the user's LLM state, the
            context, the candidates' pooled columns); ``"request"``, the context and the candidates' pooled columns
            (mean, max and spread: needs ``pool_spread``) without the user's LLM state, each column standardised by
            running statistics (:class:`agents.policy_ops.RunningStandardiser`). On ``adapt`` such a head reads the
            type at 82% at the first request where a head over the raw state input reads 65–66% (BENCHMARKS
            "Session 57"). The standardised near-constant columns make the float32 logits 2e-4 from their float64
            evaluation (the export's parity allows 1e-3).
        cf_rule_alpha: The raw α of the CF-leaning users' rule (B), in (0, 1): with a type head (and base
            ``"diverse"``, gate ``"standardised"``) the base moves toward B by the head's reading of a CF-leaning
            user (see the module docstring). ``None``: no second base.
        cf_rule_lean: B's click-lean weight (needs ``gate_lean``, A's, which may be 0).
        cf_rule_weights: B's fixed feature weights (F,) (``None``: A's ``base_weights``).
        cf_rule_threshold: The probability of a CF-leaning user, in (0, 1), at which the base is half-way to B.
        cf_rule_sharpness: > 0, the share's slope s in the type logit (large: a hard switch at the threshold).
        type_cap: A category cap of one item per category on the requests where the type head reads a CF-leaning
            user with probability above this (in (0, 1); needs a type head and ``item_category``): the repulsion β
            gains the slate distribution's full-category penalty there (:attr:`PlackettLuceDistribution.CAP_PENALTY`),
            the cap of the rule tuned for those users, which a learned β does not reach from its start (BENCHMARKS
            "Session 60"). A hard threshold on the detached logit: no gradient flows through it. ``None``: off.
        actor_hidden_state: A research ablation: ``obs["critic_state"]`` (``env.obs_critic_state``: the user's hidden
            ρ, price sensitivity, budget left and fatigue) joins the *actor's* state input too (appended last), so
            the policy is told what no deployed ranker knows: an upper reference of what knowing that state is
            worth to the learner, never exportable or servable.
        actor_hidden_columns: With ``actor_hidden_state``, the names (``envs.spaces.CRITIC_STATE_NAMES``) of the hidden
            columns the actor reads, e.g. ``("rho",)``: what knowing the user's type alone is worth to the learner,
            the information the per-type rule of ``bench.headroom`` has (``None``: every column). The critic reads
            every column either way.
        feature_gate: A state-dependent weight per feature column: a linear head on the state embedding (zero at
            init) gives each request its own weights ``v_θ(s)`` (F,), and ``v_θ(s)·f_i`` joins the residual, as
            ``α_θ(s)`` gives each request its own blend. The linear feature path learns one weight per column for
            every user; with this gate the weights on, e.g., ``cat_exposure`` and ``item_seen`` (the heuristic's
            penalties) can differ by user and by what the session has shown, as the per-type rule's do.
        pool_spread: The state input pools the request's candidates by their spread too: beside each candidate
            column's mean and max, its standard deviation over the request's candidates and the correlation of the
            LLM and CF signals across them (:func:`candidate_spread`). On ``adapt`` these read the user's type at
            the first request, before any feedback, better than the mean and max alone (BENCHMARKS "Session 54").
        activation_fn: Hidden activation.
        ortho_init: Orthogonal initialisation of the hidden layers (gain √2), critic head gain 1.
        use_sde: Must be False (SB3's algorithms pass it).
        optimizer_class: Optimizer.
        optimizer_kwargs: Extra optimizer kwargs (default ``eps=1e-5`` for Adam, as SB3).
        normalize_images: Unused (no images); kept for SB3's constructor protocol.
        **kwargs: Other ``ActorCriticPolicy`` kwargs (``net_arch``, ``log_std_init`` …) are accepted and ignored.
    """

    action_dist: PlackettLuceDistribution

    def __init__(
        self,
        observation_space: spaces.Dict,
        action_space: spaces.MultiDiscrete,
        lr_schedule: Schedule,
        hidden: int = 128,
        n_layers: int = 2,
        candidate_hidden: int | None = None,
        item_category: list[int] | np.ndarray | None = None,
        repulsion_init: float = 0.05,
        temperature: float = 0.25,
        init_alpha: float | None = None,
        residual_init_scale: float = 0.01,
        use_item_table: bool = False,
        n_items: int | None = None,
        item_dim: int = 16,
        share_state_net: bool = False,
        entropy_estimator: EntropyEstimator = "sample",
        base: str = "blend",
        base_weights: list[float] | np.ndarray | None = None,
        category_cap: int | None = None,
        gate: str = "raw",
        gate_gain: float = 1.0,
        gate_context: bool = False,
        gate_only_signals: bool = False,
        lean_gate_only: bool = False,
        gate_lean: float | None = None,
        session_base_weight: float = 0.0,
        pop_base_weight: float = 0.0,
        type_head_weight: float = 0.0,
        type_loss_scale: float = 0.0,
        type_gate_init: float = 0.0,
        type_gate_lower_only: bool = False,
        type_gate_margin: float = 0.0,
        type_head_input: str = "state",
        cf_rule_alpha: float | None = None,
        cf_rule_lean: float = 0.0,
        cf_rule_weights: list[float] | np.ndarray | None = None,
        cf_rule_threshold: float = 0.8,
        cf_rule_sharpness: float = CF_RULE_SHARPNESS,
        type_cap: float | None = None,
        actor_hidden_state: bool = False,
        actor_hidden_columns: Sequence[str] | None = None,
        feature_gate: bool = False,
        pool_spread: bool = False,
        activation_fn: type[nn.Module] = nn.Tanh,
        ortho_init: bool = True,
        use_sde: bool = False,
        optimizer_class: type[th.optim.Optimizer] = th.optim.Adam,
        optimizer_kwargs: dict[str, Any] | None = None,
        normalize_images: bool = True,
        **kwargs: Any,
    ) -> None:
        if use_sde:
            raise ValueError("SlatePolicy has discrete slate actions: use_sde must be False")
        if not isinstance(observation_space, spaces.Dict):
            raise ValueError(f"SlatePolicy needs a Dict observation space, got {observation_space}")
        missing = {"user", "candidates", "features", "context"} - set(observation_space.spaces)
        if missing:
            raise ValueError(f"observation space lacks keys {sorted(missing)} (see envs/spaces.py)")
        if not isinstance(action_space, spaces.MultiDiscrete) or len(set(action_space.nvec.tolist())) != 1:
            raise ValueError(f"SlatePolicy needs MultiDiscrete([N] * K), got {action_space}")
        n_cand = int(observation_space["features"].shape[0])
        if int(action_space.nvec[0]) != n_cand:
            raise ValueError(f"action space picks among {action_space.nvec[0]} but the obs has N={n_cand}")
        alpha0 = DEFAULT_INIT_ALPHA if init_alpha is None else float(init_alpha)
        if not 0.0 < alpha0 < 1.0:
            raise ValueError(f"init_alpha must be in (0, 1), got {alpha0}")
        if n_layers < 1:
            raise ValueError(f"n_layers must be >= 1, got {n_layers}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")

        self.hidden = int(hidden)
        self.n_layers = int(n_layers)
        self.candidate_hidden = int(candidate_hidden) if candidate_hidden else self.hidden
        self.item_category_list = None if item_category is None else [int(c) for c in np.asarray(item_category)]
        if repulsion_init <= 0:
            raise ValueError(f"repulsion_init must be > 0, got {repulsion_init}")
        self.repulsion_init = float(repulsion_init)
        self.temperature = float(temperature)
        self.init_alpha = alpha0
        self.residual_init_scale = float(residual_init_scale)
        self.use_item_table = bool(use_item_table)
        if n_items is None and use_item_table:
            n_items = int(np.max(observation_space["candidates"].high)) + 1
        self.n_items = n_items
        self.item_dim = int(item_dim)
        self.share_state_net = bool(share_state_net)
        self.entropy_estimator: EntropyEstimator = entropy_estimator
        if base not in BASES:
            raise ValueError(f"base must be one of {BASES}, got {base!r}")
        self.base = base
        if gate not in GATES:
            raise ValueError(f"gate must be one of {GATES}, got {gate!r}")
        if gate == "standardised" and base != "diverse":
            raise ValueError("gate='standardised' goes with base='diverse' (the blend is standardised there)")
        self.gate = gate
        if not math.isfinite(gate_gain) or gate_gain <= 0:
            raise ValueError(f"gate_gain must be a finite number > 0, got {gate_gain}")
        self.gate_gain = float(gate_gain)
        self.gate_context = bool(gate_context)
        self.gate_only_signals = bool(gate_only_signals)
        if lean_gate_only and not gate_context:
            raise ValueError("lean_gate_only needs gate_context=True (the gate's direct context path is then the "
                             "actor's only view of the clicked-signal EMAs)")
        self.lean_gate_only = bool(lean_gate_only)
        if not (math.isfinite(type_head_weight) and type_head_weight >= 0 and math.isfinite(type_loss_scale)
                and type_loss_scale >= 0):
            raise ValueError(f"type_head_weight and type_loss_scale must be finite numbers >= 0, got "
                             f"{type_head_weight}, {type_loss_scale}")
        if type_head_weight > 0 and "critic_state" not in observation_space.spaces:
            raise ValueError("type_head_weight > 0 learns to predict the user's hidden ρ from obs['critic_state'] "
                             "(env.obs_critic_state): the observation space has no such key")
        self.type_head_weight = float(type_head_weight)
        self.type_loss_scale = float(type_loss_scale)
        if not math.isfinite(type_gate_init) or (type_gate_init != 0.0 and type_head_weight <= 0):
            raise ValueError(f"type_gate_init must be a finite number and needs type_head_weight > 0, got "
                             f"{type_gate_init}")
        self.type_gate_init = float(type_gate_init)
        self.type_gate_lower_only = bool(type_gate_lower_only)
        if not (math.isfinite(type_gate_margin) and type_gate_margin >= 0) or (type_gate_margin > 0
                                                                              and not type_gate_lower_only):
            raise ValueError(f"type_gate_margin must be a finite number >= 0 and goes with type_gate_lower_only, got "
                             f"{type_gate_margin}")
        self.type_gate_margin = float(type_gate_margin)
        if type_head_input not in TYPE_HEAD_INPUTS:
            raise ValueError(f"type_head_input must be one of {TYPE_HEAD_INPUTS}, got {type_head_input!r}")
        if type_head_input == "request" and (type_head_weight <= 0 or not pool_spread):
            raise ValueError("type_head_input='request' needs a type head (type_head_weight > 0) and pool_spread=True "
                             "(it reads the candidates' spread)")
        self.type_head_input = type_head_input
        if actor_hidden_state and "critic_state" not in observation_space.spaces:
            raise ValueError("actor_hidden_state reads obs['critic_state'] (env.obs_critic_state): the observation "
                             "space has no such key")
        self.actor_hidden_state = bool(actor_hidden_state)
        self.actor_hidden_columns = _hidden_columns(actor_hidden_columns, self.actor_hidden_state)
        self.feature_gate = bool(feature_gate)
        self.pool_spread = bool(pool_spread)
        if gate_lean is not None and (gate != "standardised" or not math.isfinite(gate_lean)):
            raise ValueError(f"gate_lean must be a finite number and goes with gate='standardised', got {gate_lean} "
                             f"with gate={gate!r}")
        self.gate_lean = None if gate_lean is None else float(gate_lean)
        if session_base_weight != 0.0 and (base != "diverse" or "session_sim" not in observation_space.spaces
                                           or not math.isfinite(session_base_weight)):
            raise ValueError(f"session_base_weight ({session_base_weight}) goes with base='diverse' and an observation "
                             "with session_sim (env.obs_session_sim)")
        self.session_base_weight = float(session_base_weight)
        if pop_base_weight != 0.0 and (base != "diverse" or not math.isfinite(pop_base_weight)):
            raise ValueError(f"pop_base_weight ({pop_base_weight}) goes with base='diverse' and must be finite")
        self.pop_base_weight = float(pop_base_weight)
        n_feat = int(observation_space["features"].shape[1])
        if base_weights is not None:
            if base != "diverse":
                raise ValueError("base_weights go with base='diverse'")
            if len(base_weights) != n_feat:
                raise ValueError(f"base_weights needs {n_feat} entries (one per feature column), got "
                                 f"{len(base_weights)}")
        self.base_weights_list = None if base_weights is None else [float(w) for w in base_weights]
        if category_cap is not None and (item_category is None or int(category_cap) < 1):
            raise ValueError("category_cap needs item_category and must be >= 1")
        self.category_cap = None if category_cap is None else int(category_cap)
        if cf_rule_alpha is not None:
            if not (type_head_weight > 0 and base == "diverse" and gate == "standardised" and gate_lean is not None):
                raise ValueError("cf_rule_alpha (a second base for the CF-leaning users) needs a type head "
                                 "(type_head_weight > 0), base='diverse', gate='standardised' and gate_lean (A's "
                                 "click-lean weight, 0 for none)")
            if not 0.0 < float(cf_rule_alpha) < 1.0:
                raise ValueError(f"cf_rule_alpha must be in (0, 1), got {cf_rule_alpha}")
            if not 0.0 < float(cf_rule_threshold) < 1.0:
                raise ValueError(f"cf_rule_threshold must be in (0, 1), got {cf_rule_threshold}")
            if not (math.isfinite(cf_rule_sharpness) and cf_rule_sharpness > 0):
                raise ValueError(f"cf_rule_sharpness must be a finite number > 0, got {cf_rule_sharpness}")
            if not math.isfinite(cf_rule_lean):
                raise ValueError(f"cf_rule_lean must be a finite number, got {cf_rule_lean}")
            if cf_rule_weights is not None and (len(cf_rule_weights) != n_feat
                                                or not np.all(np.isfinite(np.asarray(cf_rule_weights, float)))):
                raise ValueError(f"cf_rule_weights needs {n_feat} finite entries (one per feature column), got "
                                 f"{list(cf_rule_weights)}")
        elif cf_rule_weights is not None or cf_rule_lean != 0.0:
            raise ValueError("cf_rule_lean and cf_rule_weights go with cf_rule_alpha")
        self.cf_rule_alpha = None if cf_rule_alpha is None else float(cf_rule_alpha)
        self.cf_rule_lean = float(cf_rule_lean)
        self.cf_rule_weights = None if cf_rule_weights is None else [float(w) for w in cf_rule_weights]
        self.cf_rule_threshold = float(cf_rule_threshold)
        self.cf_rule_sharpness = float(cf_rule_sharpness)
        if type_cap is not None:
            if not (type_head_weight > 0 and item_category is not None):
                raise ValueError("type_cap (a category cap where the type head reads a CF-leaning user) needs a type "
                                 "head (type_head_weight > 0) and item_category")
            if not 0.0 < float(type_cap) < 1.0:
                raise ValueError(f"type_cap must be in (0, 1), got {type_cap}")
        self.type_cap = None if type_cap is None else float(type_cap)
        self.n_candidates = n_cand
        self.slate_size = len(action_space.nvec)
        for ignored in ("net_arch", "log_std_init", "full_std", "use_expln", "squash_output"):
            kwargs.pop(ignored, None)
        super().__init__(
            observation_space,
            action_space,
            lr_schedule,
            activation_fn=activation_fn,
            ortho_init=ortho_init,
            use_sde=False,
            optimizer_class=optimizer_class,
            optimizer_kwargs=optimizer_kwargs,
            normalize_images=normalize_images,
            **kwargs,
        )

    # ------------------------------------------------------------------ construction

    def _build(self, lr_schedule: Schedule) -> None:
        """Set the distribution, build the networks, initialise them and create the optimizer."""
        self.action_dist = PlackettLuceDistribution(
            self.n_candidates, self.slate_size, entropy_estimator=self.entropy_estimator,
            category_cap=self.category_cap,
        )
        obs_space = self.observation_space
        assert isinstance(obs_space, spaces.Dict)
        user_dim = int(obs_space["user"].shape[0])
        ctx_dim = int(obs_space["context"].shape[0])
        n_feat = int(obs_space["features"].shape[1])
        emb_dim = int(obs_space["item_emb"].shape[1]) if "item_emb" in obs_space.spaces else 0
        self.item_table: nn.Embedding | None = None
        if self.use_item_table:
            assert self.n_items is not None
            self.item_table = nn.Embedding(self.n_items, self.item_dim)
        # env.obs_session_sim: z(session_sim), the cosine with this session's clicks, is the candidate input's last
        # column, and reaches the logits through the residual MLP and a direct weight (zero at init)
        self.reads_session_sim = "session_sim" in obs_space.spaces
        # env.obs_hidden_taste (a research ablation): z(hidden_taste), the true taste utility, sits just before
        # session_sim (or last), with its own direct weight (zero at init)
        self.reads_hidden_taste = "hidden_taste" in obs_space.spaces
        self._taste_col = -1 - int(self.reads_session_sim)
        cand_dim = (n_feat + emb_dim + (self.item_dim if self.use_item_table else 0) + int(self.reads_hidden_taste)
                    + int(self.reads_session_sim))
        state_in = user_dim + ctx_dim + 2 * cand_dim + (cand_dim + 1 if self.pool_spread else 0)
        # env.obs_critic_state: the user's hidden state joins the critic's input only (an asymmetric actor-critic)
        self.reads_critic_state = "critic_state" in obs_space.spaces
        critic_extra = int(obs_space["critic_state"].shape[0]) if self.reads_critic_state else 0
        if self.actor_hidden_state and self.actor_hidden_columns is None:  # the hidden state is the state input's
            state_in += critic_extra  # last P columns, for actor and critic
            critic_extra = 0
        elif self.actor_hidden_state:  # some of its columns join the actor's state input; the critic reads them all
            state_in += len(self.actor_hidden_columns or ())
        elif critic_extra and self.share_state_net:
            raise ValueError("obs['critic_state'] (env.obs_critic_state) is for the critic only, and share_state_net "
                             "makes the critic read the actor's state embedding: set one of them off")
        act = self.activation_fn

        # type_head_weight > 0: a classifier of the user's hidden ρ from the state input, fitted on the training users'
        # hidden ρ (a supervised auxiliary loss); its logit joins the actor's state input and the gate (see _type_logit)
        self.type_net: nn.Module | None = None
        self.type_gate: nn.Parameter | None = None
        # type_head_input "request": the columns after the user's LLM state up to the spread (the context and the
        # pooled candidates, not the hidden columns of actor_hidden_state), standardised first
        type_in = state_in if self.type_head_input == "state" else ctx_dim + 3 * cand_dim + 1
        self._type_cols = (0, state_in) if self.type_head_input == "state" else (user_dim, user_dim + type_in)
        if self.type_head_weight > 0:
            head_in = [RunningStandardiser(type_in)] if self.type_head_input == "request" else []
            self.type_net = nn.Sequential(*head_in, *mlp(type_in, self.hidden, self.n_layers, act),
                                          nn.Linear(self.hidden, 1))
            self.type_gate = nn.Parameter(th.tensor(self.type_gate_init, dtype=th.float32))
        self.state_net = mlp(state_in + int(self.type_net is not None), self.hidden, self.n_layers, act)
        self.alpha_head = nn.Linear(self.hidden, 1)
        self._ctx_cols = (user_dim, user_dim + ctx_dim)  # where obs["context"] sits in the state input
        self.alpha_context: nn.Linear | None = nn.Linear(ctx_dim, 1, bias=False) if self.gate_context else None
        self.lean_weight: nn.Parameter | None = (
            None if self.gate_lean is None else nn.Parameter(th.tensor(self.gate_lean, dtype=th.float32)))
        # The residual MLP over [x_i, h]: its first layer is split as W_x·x_i + W_h·h so that W_h·h is computed
        # once per row (B, H) and broadcast over N, not once per candidate (same function, ~half the FLOPs).
        ch = self.candidate_hidden
        self.residual_cand = nn.Linear(cand_dim, ch)
        self.residual_state = nn.Linear(self.hidden, ch, bias=False)
        self.residual_net = nn.Sequential(act(), *mlp(ch, ch, self.n_layers - 1, act))
        self.residual_head = nn.Linear(ch, 1)
        # tanh → sigmoid folding in _residual: only for the [act, (Linear, act)*] layout built just above
        self._fold_tanh = act is nn.Tanh and all(
            isinstance(m, nn.Tanh) if i % 2 == 0 else isinstance(m, nn.Linear) and m.bias is not None
            for i, m in enumerate(self.residual_net)) and len(self.residual_net) % 2 == 1
        # A linear path from the raw features to the logits (zero at init): penalties such as "recently shown
        # category" or "already seen" are linear in the features, and PPO finds them much faster this way.
        self.feature_linear = nn.Linear(n_feat, 1, bias=False)
        # feature_gate: per-request weights of the feature columns from the state embedding, (F, H), zero at init
        # (a plain parameter: built without drawing from torch's RNG, so every other weight's init is unchanged)
        self.feature_gate_weight: nn.Parameter | None = (
            nn.Parameter(th.zeros(n_feat, self.hidden)) if self.feature_gate else None)
        self.session_weight: nn.Parameter | None = (
            nn.Parameter(th.zeros((), dtype=th.float32)) if self.reads_session_sim else None)
        self.taste_weight: nn.Parameter | None = (
            nn.Parameter(th.zeros((), dtype=th.float32)) if self.reads_hidden_taste else None)
        mask: th.Tensor | None = None
        if self.gate_only_signals:  # (F,) 0 on the two signals: the residual does not see them
            mask = th.ones(n_feat)
            mask[[F_LLM, F_CF]] = 0.0
        self.register_buffer("residual_feature_mask", mask)  # None: not a buffer (older policies have none)
        state_mask: th.Tensor | None = None
        if self.lean_gate_only:  # (S,) 0 on the two clicked-signal EMAs of obs["context"] (see _state)
            state_mask = th.ones(state_in + int(self.type_net is not None))
            state_mask[[user_dim + C_CLICKED_LLM, user_dim + C_CLICKED_CF]] = 0.0
        self.register_buffer("actor_state_mask", state_mask)
        self.log_inv_temperature = nn.Parameter(th.tensor(math.log(1.0 / self.temperature)))
        if self.base == "diverse":
            w = self.base_weights_list if self.base_weights_list is not None else [0.0] * n_feat
            self.register_buffer("base_weights", th.tensor(w, dtype=th.float32))
        if self.cf_rule_alpha is not None:  # B − A: the α prior's logit, the lean weight, the penalty weights (F,)
            a0, b0 = self.init_alpha, self.cf_rule_alpha
            self._cf_rule_alpha_shift = math.log(b0 / (1.0 - b0)) - math.log(a0 / (1.0 - a0))
            self._cf_rule_lean_shift = self.cf_rule_lean - float(self.gate_lean or 0.0)
            wb = self.cf_rule_weights if self.cf_rule_weights is not None else w
            self.register_buffer("cf_rule_weight_shift", th.tensor(wb, dtype=th.float32) - self.base_weights)
            self._cf_rule_center = math.log(self.cf_rule_threshold / (1.0 - self.cf_rule_threshold))
        self.value_trunk: nn.Module = (
            nn.Identity() if self.share_state_net else mlp(state_in + critic_extra, self.hidden, self.n_layers, act)
        )
        self.value_net = nn.Linear(self.hidden, 1)
        self.repulsion_head: nn.Linear | None = None
        self._n_categories_cache: tuple[tuple[int, int, int], int] | None = None  # see n_categories
        if self.item_category_list is not None:
            self.register_buffer("item_category", th.tensor(self.item_category_list, dtype=th.long))
            self.repulsion_head = nn.Linear(self.hidden, 1)

        if self.ortho_init:
            hidden = (self.state_net, self.residual_cand, self.residual_state, self.residual_net, self.value_trunk,
                      *(() if self.type_net is None else (self.type_net,)))
            for module in hidden:
                module.apply(lambda m: self.init_weights(m, gain=math.sqrt(2)))
            self.init_weights(self.value_net, gain=1.0)
        self.init_weights(self.residual_head, gain=self.residual_init_scale)
        nn.init.zeros_(self.feature_linear.weight)
        nn.init.zeros_(self.alpha_head.weight)
        if self.alpha_context is not None:
            nn.init.zeros_(self.alpha_context.weight)
        # raw gate: α = σ(bias) = init_alpha; standardised gate: the bias is the learned shift on the per-request
        # prior (see _gate), 0 at init
        alpha_bias = (0.0 if self.gate == "standardised"
                      else math.log(self.init_alpha / (1.0 - self.init_alpha)) / self.gate_gain)
        nn.init.constant_(self.alpha_head.bias, alpha_bias)
        if self.repulsion_head is not None:  # softplus(bias) = repulsion_init
            nn.init.zeros_(self.repulsion_head.weight)
            nn.init.constant_(self.repulsion_head.bias, math.log(math.expm1(self.repulsion_init)))
        if self.item_table is not None:
            nn.init.normal_(self.item_table.weight, std=0.1)

        self.optimizer = self.optimizer_class(self.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs)  # type: ignore[call-arg]

    def set_generator(self, generator: th.Generator | None) -> None:
        """Draw slates (and the sampled-entropy path) from ``generator`` (on the policy's device); ``None``:
        torch's default RNG. Not saved with the policy."""
        self.action_dist.set_generator(generator)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        """Everything :meth:`SlatePolicy.load` needs to rebuild this policy (SB3's save/load protocol)."""
        data = dict(
            observation_space=self.observation_space,
            action_space=self.action_space,
            normalize_images=self.normalize_images,
            lr_schedule=self._dummy_schedule,
            hidden=self.hidden,
            n_layers=self.n_layers,
            candidate_hidden=self.candidate_hidden,
            item_category=self.item_category_list,
            repulsion_init=self.repulsion_init,
            temperature=self.temperature,
            init_alpha=self.init_alpha,
            residual_init_scale=self.residual_init_scale,
            use_item_table=self.use_item_table,
            n_items=self.n_items,
            item_dim=self.item_dim,
            share_state_net=self.share_state_net,
            entropy_estimator=self.entropy_estimator,
            base=self.base,
            base_weights=self.base_weights_list,
            category_cap=self.category_cap,
            gate=self.gate,
            gate_gain=self.gate_gain,
            gate_context=self.gate_context,
            gate_only_signals=self.gate_only_signals,
            lean_gate_only=self.lean_gate_only,
            gate_lean=self.gate_lean,
            session_base_weight=self.session_base_weight,
            pop_base_weight=self.pop_base_weight,
            type_head_weight=self.type_head_weight,
            type_loss_scale=self.type_loss_scale,
            type_gate_init=self.type_gate_init,
            type_gate_lower_only=self.type_gate_lower_only,
            type_gate_margin=self.type_gate_margin,
            type_head_input=self.type_head_input,
            cf_rule_alpha=self.cf_rule_alpha,
            cf_rule_lean=self.cf_rule_lean,
            cf_rule_weights=self.cf_rule_weights,
            cf_rule_threshold=self.cf_rule_threshold,
            cf_rule_sharpness=self.cf_rule_sharpness,
            type_cap=self.type_cap,
            actor_hidden_state=self.actor_hidden_state,
            actor_hidden_columns=(None if self.actor_hidden_columns is None
                                  else [CRITIC_STATE_NAMES[i] for i in self.actor_hidden_columns]),
            feature_gate=self.feature_gate,
            pool_spread=self.pool_spread,
            activation_fn=self.activation_fn,
            ortho_init=self.ortho_init,
            optimizer_class=self.optimizer_class,
            optimizer_kwargs=self.optimizer_kwargs,
        )
        return data

    # ------------------------------------------------------------------ the network

    def _prepare(self, obs: PyTorchObs | dict[str, np.ndarray]) -> dict[str, th.Tensor]:
        """Obs (tensors or numpy, batched or not) → float tensors on the policy's device."""
        if not isinstance(obs, dict):
            raise ValueError(f"SlatePolicy expects a dict observation, got {type(obs)}")
        if not all(isinstance(v, th.Tensor) for v in obs.values()):
            obs, _ = self.obs_to_tensor({k: np.asarray(v) for k, v in obs.items()})  # type: ignore[arg-type]
        out = preprocess_obs(obs, self.observation_space, normalize_images=False)
        assert isinstance(out, dict)
        return out

    def _encode(self, obs: dict[str, th.Tensor], check: bool = True
                ) -> tuple[th.Tensor, th.Tensor, th.Tensor, th.Tensor | None]:
        """Shared encoding (``check``: see :meth:`_dist_for`).

        Returns:
            ``(state_in (B, S), cand (B, N, X), features (B, N, F), mask (B, N) bool or None)``.
        """
        features = obs["features"]
        seen = features if self.residual_feature_mask is None else features * self.residual_feature_mask
        parts = [symlog(seen)]
        if "item_emb" in obs:
            parts.append(obs["item_emb"])
        if self.item_table is not None:
            parts.append(self.item_table(catalog_ids(obs["candidates"], self.item_table.num_embeddings, check)))
        if self.taste_weight is not None:  # before session_sim: _actor_parts reads it back as cand[..., _taste_col]
            if "hidden_taste" not in obs:
                raise ValueError("this policy reads obs['hidden_taste'] (it was trained with env.obs_hidden_taste, "
                                 "a research ablation): play it on an env with env.obs_hidden_taste=true")
            parts.append(standardise_rows(obs["hidden_taste"]).unsqueeze(-1))
        if self.session_weight is not None:  # last: _actor_parts reads it back as cand[..., -1]
            if "session_sim" not in obs:
                raise ValueError("this policy reads obs['session_sim'] (it was trained with env.obs_session_sim): "
                                 "play it on an env with env.obs_session_sim=true")
            parts.append(standardise_rows(obs["session_sim"]).unsqueeze(-1))
        cand = th.cat(parts, dim=-1) if len(parts) > 1 else parts[0]  # (B, N, X)
        mask = obs["mask"] > 0.5 if "mask" in obs else None
        if mask is None:
            mean = cand.mean(dim=1)
            mx = cand.max(dim=1).values
        else:
            w = mask.unsqueeze(-1).to(cand.dtype)
            mean = (cand * w).sum(dim=1) / w.sum(dim=1).clamp(min=1.0)
            mx = cand.masked_fill(~mask.unsqueeze(-1), float("-inf")).max(dim=1).values
            mx = th.where(th.isfinite(mx), mx, th.zeros_like(mx))
        state_parts = [obs["user"], obs["context"], mean, mx]
        if self.pool_spread:
            state_parts.append(candidate_spread(cand, features, mask, F_LLM, F_CF))
        if self.actor_hidden_state:
            if "critic_state" not in obs:
                raise ValueError("this policy's actor reads obs['critic_state'] (it was trained with "
                                 "train.policy.actor_hidden_state, a research ablation): play it on an env with "
                                 "env.obs_critic_state=true")
            hidden = obs["critic_state"]  # (B, P)
            cols = self.actor_hidden_columns
            state_parts.append(hidden if cols is None else hidden[:, list(cols)])
        state_in = th.cat(state_parts, dim=-1)
        return state_in, cand, features, mask

    def _actor(
        self, state_in: th.Tensor, cand: th.Tensor, features: th.Tensor, type_logit: th.Tensor | None = None
    ) -> tuple[th.Tensor, th.Tensor, th.Tensor]:
        """Returns ``(logits (B, N), alpha (B,), state embedding (B, H))`` (:meth:`_actor_parts` without the parts)."""
        logits, alpha, h, _ = self._actor_parts(state_in, cand, features, with_parts=False, type_logit=type_logit)
        return logits, alpha, h

    def _actor_parts(
        self, state_in: th.Tensor, cand: th.Tensor, features: th.Tensor, with_parts: bool = True,
        type_logit: th.Tensor | None = None,
    ) -> tuple[th.Tensor, th.Tensor, th.Tensor, th.Tensor | None]:
        """The actor's logits and, with ``with_parts``, the parts of each logit (see :meth:`score_parts`), from one
        pass: the parts are extra (B, N) terms read off the intermediate values, so the logits are the same either
        way.

        Args:
            type_logit: The type head's logit (B,) of this state input when the caller has it (the update reuses it
                for the type loss); computed here otherwise, once for the state input and the gate.

        Returns:
            ``(logits (B, N), alpha (B,), state embedding (B, H), parts (B, N, P) or None)``,
            P = ``len(SCORE_PARTS)``.
        """
        if type_logit is None and self.type_net is not None:
            type_logit = self._type_logit(state_in)
        h = self._state(state_in, type_logit)  # (B, H)
        share = self.cf_rule_share(type_logit)  # (B,) or None
        alpha, sig_llm, sig_cf = self._gate(h, features, state_in, type_logit, share)  # (B,), (B, N), (B, N)
        a = alpha.unsqueeze(-1)
        blend = a * sig_llm + (1.0 - a) * sig_cf
        penalty: th.Tensor | None = None
        session_scale: th.Tensor | None = None  # (B, 1) the base's re-standardisation with its extra terms
        base_terms: th.Tensor | None = None  # (B, N) β·z(session_sim) + w·z(popularity), before that re-standardisation
        if self.base == "diverse":
            penalty = features @ self.base_weights
            if share is not None:  # toward the CF-leaning users' rule's penalties
                penalty = penalty + share.unsqueeze(-1) * (features @ self.cf_rule_weight_shift)
            z = standardise_rows(blend)
            if self.session_base_weight != 0.0:  # tuned-session-diverse's z(z(blend) + β·z(session_sim))
                base_terms = self.session_base_weight * cand[..., -1]
            if self.pop_base_weight != 0.0:  # tuned-pop-diverse's z(z(blend) + w·z(popularity))
                pop = self.pop_base_weight * standardise_rows(features[..., F_POP])
                base_terms = pop if base_terms is None else base_terms + pop
            if base_terms is not None:
                zs = z + base_terms
                session_scale = 1.0 / ((zs - zs.mean(dim=-1, keepdim=True)).square().mean(dim=-1, keepdim=True)
                                       .sqrt() + 1e-9)
                z = standardise_rows(zs)
        seen = features if self.residual_feature_mask is None else features * self.residual_feature_mask
        residual = self._residual(cand, h) + self._linear_features(seen, h)  # (B, N)
        if self.session_weight is not None:
            residual = residual + self.session_weight * cand[..., -1]
        if self.taste_weight is not None:
            residual = residual + self.taste_weight * cand[..., self._taste_col]
        inv_t = self.log_inv_temperature.exp()
        raw = (blend if penalty is None else z + penalty) * inv_t + residual
        # Candidates more than LOGIT_RANGE nats below the row's best are held there (their probability is < e^-30
        # either way): the per-group sums of the slate distribution, which later steps take by subtraction, then keep
        # their precision (at 60 nats the subtraction left rounding noise: entropy ~1e28, NaN gradients, a crash).
        logits = th.maximum(raw, raw.detach().amax(dim=-1, keepdim=True) - LOGIT_RANGE)
        if not with_parts:
            return logits, alpha, h, None
        llm_w = a * sig_llm  # (B, N) α·llm_sim (standardised gate: α·z(llm_sim))
        cf_w = (1.0 - a) * sig_cf  # (B, N) (1 − α)·cf_score (standardised gate: (1 − α)·z(cf_score))
        diversity = th.zeros_like(raw)
        if penalty is not None:
            # z is linear: z(b) = (b − mean b) / (std b + eps) splits into the α·llm and (1 − α)·cf terms, each
            # centred on its own row mean and divided by the blend's (std + eps)
            mean = blend.mean(dim=-1, keepdim=True)
            denom = (blend - mean).square().mean(dim=-1, keepdim=True).sqrt() + 1e-9
            llm_w = (llm_w - llm_w.mean(dim=-1, keepdim=True)) / denom
            cf_w = (cf_w - cf_w.mean(dim=-1, keepdim=True)) / denom
            diversity = penalty * inv_t
        learned = residual
        if session_scale is not None and base_terms is not None:  # z = (z(blend) + terms)·scale: the terms join the
            llm_w, cf_w = llm_w * session_scale, cf_w * session_scale  # residual's part
            learned = residual + base_terms * session_scale * inv_t
        parts = th.stack([llm_w * inv_t, cf_w * inv_t, diversity, learned, logits - raw], dim=-1)
        return logits, alpha, h, parts

    def _linear_features(self, seen: th.Tensor, h: th.Tensor) -> th.Tensor:
        """The linear feature path (B, N): ``w·f_i`` with the learned weights ``w`` (F,), plus ``v_θ(s)·f_i`` with
        the feature gate's per-request weights (B, F) from the state embedding ``h`` (B, H) when it is on."""
        out = self.feature_linear(seen).squeeze(-1)
        if self.feature_gate_weight is not None:
            out = out + (seen * (h @ self.feature_gate_weight.T).unsqueeze(-2)).sum(dim=-1)
        return out

    def _state(self, state_in: th.Tensor, type_logit: th.Tensor | None = None) -> th.Tensor:
        """The actor's state embedding (B, H) from the state input (B, S) (and the type logit (B,), with a type
        head: the given one, else computed), less what ``lean_gate_only`` hides."""
        if self.type_net is not None:
            if type_logit is None:
                type_logit = self._type_logit(state_in)
            state_in = th.cat([state_in, type_logit.detach().unsqueeze(-1)], dim=-1)
        return self.state_net(state_in if self.actor_state_mask is None else state_in * self.actor_state_mask)

    def _type_logit(self, state_in: th.Tensor) -> th.Tensor:
        """The type head's logit of the user's hidden ρ (B,) from the state input (observations only).

        Fitted by a supervised loss (:meth:`type_loss`) on the training users' hidden ρ, never by the policy
        gradient: the actor reads it detached, in its state input and, through a learned weight (``type_gate_init``
        at init), in the gate's logit shift. So at deployment the policy reads the observation only; the hidden
        state taught it what in the observation tells the user types apart (learning with privileged information)."""
        assert self.type_net is not None
        lo, hi = self._type_cols
        return self.type_net(state_in if self.type_head_input == "state" else state_in[:, lo:hi]).squeeze(-1)

    @property
    def type_standardiser(self) -> RunningStandardiser | None:
        """The running standardiser of the type head's input (``type_head_input="request"``), else ``None``."""
        first = self.type_net[0] if self.type_net is not None else None
        return first if isinstance(first, RunningStandardiser) else None

    def join_input_statistics(self, obs: dict[str, th.Tensor] | dict[str, np.ndarray], chunk: int = 4096) -> None:
        """Join a rollout's observations to the running statistics of the type head's standardised input (nothing
        without one).

        The update (:func:`agents.ppo_update.ppo_update`) calls it once before the run's first update and after
        each update with that update's rollout, so the statistics change between a rollout's update and the next
        collection, never between a collection and its update.

        Args:
            obs: Observations, each key (n, …) (a flattened rollout).
            chunk: Rows encoded at once.
        """
        norm = self.type_standardiser
        if norm is None:
            return
        n = len(next(iter(obs.values())))
        lo, hi = self._type_cols
        with th.no_grad():
            for start in range(0, n, chunk):
                part = {key: value[start:start + chunk] for key, value in obs.items()}
                norm.update(self._encode(self._prepare(part), check=False)[0][:, lo:hi])

    def type_loss(self, obs: PyTorchObs | dict[str, np.ndarray]) -> th.Tensor:
        """Per-row binary cross-entropy of the type head against the hidden ρ (``obs["critic_state"]``'s first
        column, a soft label in [0, 1]): float (B,)."""
        prepared = self._prepare(obs)
        logit = self._type_logit(self._encode(prepared)[0]) if self.type_net is not None else None
        return self._type_bce(logit, prepared)

    def _type_bce(self, type_logit: th.Tensor | None, obs: dict[str, th.Tensor]) -> th.Tensor:
        """Per-row cross-entropy (B,) of the type head's logit (B,) against the hidden ρ of ``obs``."""
        if type_logit is None or self.type_net is None or "critic_state" not in obs:
            raise ValueError("the type loss needs a policy with a type head and obs['critic_state'] "
                             "(env.obs_critic_state=true)")
        rho = obs["critic_state"][:, 0].clamp(0.0, 1.0)
        return nn.functional.binary_cross_entropy_with_logits(type_logit, rho, reduction="none")

    def cf_rule_share(self, type_logit: th.Tensor | None) -> th.Tensor | None:
        """How far the base has moved toward the CF-leaning users' rule, q (B,) in (0, 1), from the type head's logit
        (B,) (detached): ``σ(s·(−ℓ − logit p))`` (see the module docstring); ``None`` without that rule."""
        if self.cf_rule_alpha is None:
            return None
        assert type_logit is not None
        return th.sigmoid(self.cf_rule_sharpness * (-type_logit.detach() - self._cf_rule_center))

    def _gate(self, h: th.Tensor, features: th.Tensor, state_in: th.Tensor, type_logit: th.Tensor | None = None,
              share: th.Tensor | None = None) -> tuple[th.Tensor, th.Tensor, th.Tensor]:
        """The gate α (B,) and the two signals it weighs, (B, N) each (``type_logit``: as in :meth:`_state`;
        ``share``: :meth:`cf_rule_share` of it, computed here when the policy has that rule and it is not given).

        ``"raw"``: ``α = σ(gain·head(h))`` and the raw ``llm_sim``, ``cf_score`` columns.
        ``"standardised"``: the columns
        standardised over the request's candidates (:func:`standardise_rows`) and ``α = σ(logit α₀ + log(sd_llm + ε)
        − log(sd_cf + ε) + gain·head(h))`` (ε as in :func:`standardise_rows`), so that at ``head(h) = 0``
        ``α·z(llm) + (1 − α)·z(cf)`` is a positive multiple of ``α₀·llm + (1 − α₀)·cf`` minus its row mean.
        """
        llm, cf = features[..., F_LLM], features[..., F_CF]
        shift = self._gate_shift(h, state_in, type_logit)
        if self.gate == "raw":
            return th.sigmoid(shift), llm, cf
        eps = 1e-9
        sd_llm = (llm - llm.mean(dim=-1, keepdim=True)).square().mean(dim=-1, keepdim=True).sqrt() + eps  # (B, 1)
        sd_cf = (cf - cf.mean(dim=-1, keepdim=True)).square().mean(dim=-1, keepdim=True).sqrt() + eps
        prior = math.log(self.init_alpha / (1.0 - self.init_alpha)) + (sd_llm.log() - sd_cf.log()).squeeze(-1)
        lean_weight: th.Tensor | None = self.lean_weight
        if self.cf_rule_alpha is not None:  # toward the CF-leaning users' rule's α and click-lean weight
            if share is None:
                share = self.cf_rule_share(self._type_logit(state_in) if type_logit is None else type_logit)
            assert share is not None and lean_weight is not None
            prior = prior + share * self._cf_rule_alpha_shift
            lean_weight = lean_weight + share * self._cf_rule_lean_shift
        if lean_weight is not None:  # gate_lean: the heuristic's feedback-adaptive α (agents.rankers.click_lean)
            lo, _ = self._ctx_cols  # obs["context"] inside the state input
            lean = (state_in[:, lo + C_CLICKED_LLM] / sd_llm.squeeze(-1)
                    - state_in[:, lo + C_CLICKED_CF] / sd_cf.squeeze(-1))  # (B,)
            prior = prior + lean_weight * lean
        z_llm = (llm - llm.mean(dim=-1, keepdim=True)) / sd_llm
        z_cf = (cf - cf.mean(dim=-1, keepdim=True)) / sd_cf
        return th.sigmoid(prior + shift), z_llm, z_cf

    def _gate_shift(self, h: th.Tensor, state_in: th.Tensor, type_logit: th.Tensor | None = None) -> th.Tensor:
        """The gate's learned logit (B,): ``gain·(head(h) + type weight·type logit + context path)`` (see
        :meth:`_gate`; with ``gate="raw"`` α is its sigmoid, with ``"standardised"`` it shifts the per-request
        prior)."""
        shift = self.alpha_head(h).squeeze(-1)  # (B,)
        if self.type_gate is not None:  # the type head's (detached) logit of ρ, by a learned weight
            type_logit = (self._type_logit(state_in) if type_logit is None else type_logit).detach()
            if self.type_gate_lower_only:  # only where the head reads a CF-leaning user (ρ < 0.5), with a margin
                type_logit = (type_logit + self.type_gate_margin).clamp(max=0.0)
            shift = shift + self.type_gate * type_logit
        if self.alpha_context is not None:  # gate_context: the feedback EMAs straight to the gate
            lo, hi = self._ctx_cols
            shift = shift + self.alpha_context(state_in[:, lo:hi]).squeeze(-1)
        return self.gate_gain * shift if self.gate_gain != 1.0 else shift

    def _residual(self, cand: th.Tensor, h: th.Tensor) -> th.Tensor:
        """The per-candidate residual MLP ``head(net(W_x·x_i + W_h·h))`` → (B, N).

        It runs on (B, N, ch), the largest tensors of a minibatch. With tanh activations (the default) it is
        evaluated through ``tanh(z) = 2·σ(2z) − 1``, the affine parts folded into the neighbouring layers'
        (tiny) weights: ``W·tanh(z) + b = 2W·σ(2z) + (b − W·1)``. The same function (to float rounding, ~1e-7),
        but sigmoid costs a third of tanh on CPU and the folding adds no pass over (B, N, ch).

        Args:
            cand: (B, N, X) candidate inputs.
            h: (B, H) state embedding.

        Returns:
            (B, N) residual logits.
        """
        if not self._fold_tanh:
            pre = self.residual_cand(cand) + self.residual_state(h).unsqueeze(1)  # (B, N, ch)
            return self.residual_head(self.residual_net(pre)).squeeze(-1)
        b, n, _ = cand.shape
        first = self.residual_cand
        z2 = rows_linear(cand.reshape(b * n, -1), 2.0 * first.weight, 2.0 * first.bias)  # 2·(W_x·x_i + b)
        z2 = (z2.view(b, n, -1) + (2.0 * self.residual_state(h)).unsqueeze(1)).view(b * n, -1)  # (B·N, ch)
        s = th.sigmoid(z2)  # tanh(pre) = 2s − 1
        for layer in list(self.residual_net)[1:]:
            if isinstance(layer, nn.Linear):
                w, bias = layer.weight, layer.bias
                s = th.sigmoid(rows_linear(s, 4.0 * w, 2.0 * (bias - w.sum(dim=1))))  # σ(2·(W·(2s − 1) + b))
        head = self.residual_head
        return rows_linear(s, 2.0 * head.weight, head.bias - head.weight.sum(dim=1)).view(b, n)

    def _critic(self, state_in: th.Tensor, h: th.Tensor | None, obs: dict[str, th.Tensor]) -> th.Tensor:
        """Values (B, 1) from the state input (or, with ``share_state_net``, the actor's embedding), and the hidden
        ``obs["critic_state"]`` when the policy was built with it (``env.obs_critic_state``)."""
        if self.share_state_net:
            if h is None:
                h = self._state(state_in)
            return self.value_net(h)
        if self.reads_critic_state and not (self.actor_hidden_state and self.actor_hidden_columns is None):
            # (else state_in holds it already)
            if "critic_state" not in obs:
                raise ValueError("this policy's critic reads obs['critic_state'] (it was trained with "
                                 "env.obs_critic_state): values need an env with env.obs_critic_state=true (the actor, "
                                 "the slates, do not)")
            state_in = th.cat([state_in, obs["critic_state"]], dim=-1)
        return self.value_net(self.value_trunk(state_in))

    def _repulsion(self, h: th.Tensor, type_logit: th.Tensor | None = None) -> th.Tensor | None:
        """β_θ(s) >= 0 (B,) from the state embedding, or None without item categories; with ``type_cap``, plus the
        full-category penalty on the rows whose type logit (B,), which it then needs, reads a CF-leaning user above
        the threshold (``σ(−ℓ) > type_cap``)."""
        if self.repulsion_head is None:
            return None
        beta = nn.functional.softplus(self.repulsion_head(h)).squeeze(-1)
        if self.type_cap is None:
            return beta
        if type_logit is None:
            raise ValueError("a policy with type_cap needs the type head's logit for its repulsion")
        capped = reads_cf_leaning(type_logit.detach(), self.type_cap).to(beta.dtype)
        return beta + PlackettLuceDistribution.CAP_PENALTY * capped

    def _groups(self, obs: dict[str, th.Tensor], check: bool = True) -> th.Tensor | None:
        """Category (B, N) of each candidate, or None without item categories."""
        if self.repulsion_head is None:
            return None
        table = self.item_category
        return table[catalog_ids(obs["candidates"], table.numel(), check)]

    def n_categories(self) -> int:
        """G: one more than the largest id in the ``item_category`` buffer (1 without categories).

        Read from the buffer once per change of it (cached by the tensor's identity, storage and version counter:
        ``.to()`` and a re-registered buffer make a new tensor, ``load_state_dict`` and any in-place write move the
        version), so a forward pass on an accelerator does not wait for the device to learn it.
        """
        if self.repulsion_head is None:
            return 1
        table = self.item_category
        key = (id(table), table.data_ptr(), table._version)
        if self._n_categories_cache is None or self._n_categories_cache[0] != key:
            self._n_categories_cache = (key, int(table.max()) + 1 if table.numel() else 1)
        return self._n_categories_cache[1]

    def _dist_for(
        self, obs: dict[str, th.Tensor], check: bool = True
    ) -> tuple[PlackettLuceDistribution, th.Tensor, th.Tensor, th.Tensor | None]:
        """The slate distribution for prepared obs; also the state input, the state embedding and the type head's
        logit (B,) (None without a type head; its one pass per forward serves the actor and the type loss).

        ``check``: validate the inputs' values (candidate ids inside the catalog, no NaN logit, K valid candidates
        per row). Each such check reads the device; :meth:`evaluate_actions` skips them on an accelerator.
        """
        state_in, cand, features, mask = self._encode(obs, check)
        type_logit = self._type_logit(state_in) if self.type_net is not None else None
        logits, _, h = self._actor(state_in, cand, features, type_logit)
        beta = self._repulsion(h, type_logit)
        groups = self._groups(obs, check)
        dist = self.action_dist.proba_distribution(logits, mask, groups, beta, validate=check,
                                                   n_groups=None if groups is None else self.n_categories())
        return dist, state_in, h, type_logit

    # ------------------------------------------------------------------ SB3 interface

    def forward(self, obs: PyTorchObs, deterministic: bool = False) -> tuple[th.Tensor, th.Tensor, th.Tensor]:
        """Actions int64 (B, K), values (B, 1) and log-probabilities (B,) for a batch of observations."""
        prepared = self._prepare(obs)
        dist, state_in, h, _ = self._dist_for(prepared)
        actions, log_prob = dist.sample_with_log_prob(deterministic=deterministic)
        return actions, self._critic(state_in, h, prepared), log_prob

    def update_checks_inputs(self) -> bool:
        """Whether :meth:`evaluate_actions` validates its inputs' values (see :meth:`_dist_for`): always on the CPU and
        outside training mode; not in PPO's update on an accelerator, where each check would make the host wait for
        the device once per minibatch. Nothing goes unchecked there: the update re-scores the observations its
        collection checked when it acted on them, and weights that the update itself made diverge are refused once
        after it (:func:`agents.ppo_update.ppo_update`: :func:`agents.policy_ops.refuse_nonfinite_weights`), before
        a rollout, callback or checkpoint uses them."""
        return not self.training or self.device.type == "cpu"

    def evaluate_actions(self, obs: PyTorchObs, actions: th.Tensor) -> tuple[th.Tensor, th.Tensor, th.Tensor | None]:
        """Values (B, 1), log-probabilities (B,) of ``actions`` (B, K) and the entropy estimate (B,).

        With a type head, in training mode (SB3's update), the returned entropy carries the type head's loss with
        value zero: ``entropy − s·(bce − sg(bce))`` (``sg``: stop-gradient, ``s = type_loss_scale`` =
        ``type_head_weight / ent_coef``). Its value, and so SB3's logged entropy, is unchanged, and the
        gradient of SB3's loss ``… − ent_coef·mean(entropy)`` gains exactly ``type_head_weight·∇mean(bce)``: the
        supervised loss joins PPO's update without a fork of SB3's ``train``.
        """
        prepared = self._prepare(obs)
        dist, state_in, h, type_logit = self._dist_for(prepared, check=self.update_checks_inputs())
        log_prob, entropy = dist.log_prob_and_entropy(actions)
        if type_logit is not None and self.training and self.type_loss_scale > 0:
            entropy = entropy - self.type_loss_scale * _zero_valued(self._type_bce(type_logit, prepared))
        return self._critic(state_in, h, prepared), log_prob, entropy

    def get_distribution(self, obs: PyTorchObs) -> PlackettLuceDistribution:
        """The Plackett-Luce distribution over slates for a batch of observations."""
        return self._dist_for(self._prepare(obs))[0]

    def score_candidates(self, obs: dict[str, th.Tensor]) -> tuple[th.Tensor, th.Tensor, th.Tensor | None]:
        """What the slate distribution is built from, for already-prepared float observations.

        Returns:
            ``(logits (B, N), alpha (B,), repulsion β (B,) or None)`` (masked candidates are not filled here).
        """
        state_in, cand, features, _ = self._encode(obs)
        type_logit = self._type_logit(state_in) if self.type_net is not None else None
        logits, alpha, h = self._actor(state_in, cand, features, type_logit)
        return logits, alpha, self._repulsion(h, type_logit)

    def score_candidates_explained(
        self, obs: dict[str, th.Tensor]
    ) -> tuple[th.Tensor, th.Tensor, th.Tensor | None, th.Tensor]:
        """:meth:`score_candidates` plus the parts of each logit (:meth:`score_parts`), from the same pass.

        Returns:
            ``(logits (B, N), alpha (B,), repulsion β (B,) or None, parts (B, N, P))``; the parts' last axis is
            :data:`SCORE_PARTS`.
        """
        state_in, cand, features, _ = self._encode(obs)
        type_logit = self._type_logit(state_in) if self.type_net is not None else None
        logits, alpha, h, parts = self._actor_parts(state_in, cand, features, type_logit=type_logit)
        assert parts is not None
        return logits, alpha, self._repulsion(h, type_logit), parts

    def score_parts_tensor(self, obs: PyTorchObs | dict[str, np.ndarray]) -> th.Tensor:
        """:meth:`score_parts` as one tensor (B, N, P), the last axis in the order of :data:`SCORE_PARTS`."""
        return self.score_candidates_explained(self._prepare(obs))[3]

    def score_parts(self, obs: PyTorchObs | dict[str, np.ndarray]) -> dict[str, th.Tensor]:
        """Each candidate's logit split into additive parts: ``{name: (B, N)}`` for the names in :data:`SCORE_PARTS`.

        With ``inv_t = exp(log_inv_temperature)`` (the learned 1/τ) and ``α = α_θ(s)``:

        * ``llm``, ``cf``: the blend's two terms times ``inv_t``. Base ``"blend"``: ``α·llm_sim_i·inv_t`` and
          ``(1 − α)·cf_score_i·inv_t``. Base ``"diverse"``: the standardisation ``z`` is linear, so
          ``z_i(α·llm + (1 − α)·cf) = [α·(llm_i − mean llm) + (1 − α)·(cf_i − mean cf)] / (std + eps)`` with the
          blend's row std; ``llm`` is the first term, ``cf`` the second (each times ``inv_t``): a candidate
          whose LLM similarity is above the request's mean gets a positive ``llm`` part. With
          ``gate="standardised"`` the same split of ``z(α·z(llm) + (1 − α)·z(cf))``, ``llm`` and ``cf`` standing for
          their standardised columns.
        * ``diversity``: the fixed penalty of the diversity heuristic, ``base_weights·f_i·inv_t`` (``-λ_c`` on
          ``cat_exposure``, ``-λ_s`` on ``item_seen``); 0 for base ``"blend"``.
        * ``residual``: everything PPO learned beyond the gated blend and the fixed penalty: the residual MLP
          plus the learned linear feature term ``feature_linear·f_i`` (with ``feature_gate``, plus the state's own
          weights ``v_θ(s)·f_i``; not divided by τ, as in the logits). The
          linear term is counted here, not under ``diversity``: it is learned, spans every feature column (LLM
          and CF scores, popularity and price too) and its sign is free. With ``session_base_weight`` or
          ``pop_base_weight`` the base's fixed extra terms (``β·z(session_sim)``, ``w·z(popularity)``, re-standardised
          with the blend) are counted here too, and ``llm`` and ``cf`` carry that re-standardisation's scale.
        * ``clip``: what the hold at :data:`LOGIT_RANGE` below the row's best added (``>= 0``; 0 unless it binds).

        The parts sum to :meth:`candidate_logits` (to float rounding) and are computed in the same pass (the
        exported graph's ``parts`` output is this). Masked candidates are not filled here.
        """
        parts = self.score_parts_tensor(obs)
        return {name: parts[..., i] for i, name in enumerate(SCORE_PARTS)}

    def repulsion(self, obs: PyTorchObs | dict[str, np.ndarray]) -> th.Tensor | None:
        """The within-slate category repulsion β_θ(s) (B,), or None when the policy has no item categories."""
        state_in, _, _, _ = self._encode(self._prepare(obs))
        type_logit = self._type_logit(state_in) if self.type_net is not None else None
        return self._repulsion(self._state(state_in, type_logit), type_logit)

    def predict_values(self, obs: PyTorchObs) -> th.Tensor:
        """Values (B, 1)."""
        prepared = self._prepare(obs)
        state_in, _, _, _ = self._encode(prepared)
        return self._critic(state_in, None, prepared)

    def _predict(self, observation: PyTorchObs, deterministic: bool = False) -> th.Tensor:
        return self.get_distribution(observation).get_actions(deterministic=deterministic)

    # ------------------------------------------------------------------ interpretability

    def with_components_at_start(self, components: Iterable[str]) -> SlatePolicy:
        """A copy of this policy with the named parts of the actor put back at their start values.

        What each of :data:`LEARNED_COMPONENTS` is, and its start value (the value at which the policy's mode is the
        rule it was started at, ``agents.training``; the state net, which only these heads read, is left as is):

        * ``gate``: the learned shift of α: the gate head (weights 0, bias at its init), the context path and the
          type head's weight in the gate (0) and the click-lean weight (its start value ``gate_lean``), so α is the
          started rule's (``init_alpha``, or its per-request prior with ``gate="standardised"``);
        * ``residual``: the per-candidate residual MLP's output layer, the linear feature path (with the feature
          gate's weights) and the learned weights on ``session_sim`` / ``hidden_taste`` (all 0);
        * ``repulsion``: the within-slate category repulsion β (``repulsion_init``, state-independent);
        * ``temperature``: the learned 1/τ (``1 / temperature``).

        Args:
            components: Names from :data:`LEARNED_COMPONENTS` (any order; none: an unchanged copy).

        Returns:
            A deep copy (the same device and mode); this policy is not changed.

        Raises:
            ValueError: For a name not in :data:`LEARNED_COMPONENTS`.
        """
        names = set(components)
        unknown = sorted(names - set(LEARNED_COMPONENTS))
        if unknown:
            raise ValueError(f"unknown policy components {unknown}: the learned components are {LEARNED_COMPONENTS}")
        if "gate" in names:  # the learned logit at its init: 0 (standardised), else logit(init_alpha)
            out = self.with_constant_gate(0.0 if self.gate == "standardised"
                                          else math.log(self.init_alpha / (1.0 - self.init_alpha)))
        else:
            out = copy.deepcopy(self)
        if "residual" in names:  # a linear residual of weight 0
            out = out.with_linear_residual(np.zeros(out.feature_linear.in_features))
        with th.no_grad():
            if "gate" in names and out.lean_weight is not None and out.gate_lean is not None:
                out.lean_weight.fill_(out.gate_lean)
            if "repulsion" in names and out.repulsion_head is not None:
                out.repulsion_head.weight.zero_()
                out.repulsion_head.bias.fill_(math.log(math.expm1(out.repulsion_init)))
            if "temperature" in names:
                out.log_inv_temperature.fill_(math.log(1.0 / out.temperature))
        return out

    def gate_shift(self, obs: PyTorchObs | dict[str, np.ndarray]) -> th.Tensor:
        """The gate's learned, state-dependent logit (B,) (:meth:`_gate`): α's departure from the started rule's, in
        logit units (with ``gate="raw"`` it is α's whole logit); the click-lean term is not part of it."""
        state_in, _, _, _ = self._encode(self._prepare(obs))
        return self._gate_shift(self._state(state_in), state_in)

    def with_constant_gate(self, shift: float) -> SlatePolicy:
        """A copy of this policy whose gate's learned logit (:meth:`gate_shift`) is ``shift`` in every state: the gate
        head's weights, its context path and the type head's weight in the gate at 0, the head's bias at
        ``shift / gate_gain``; the click-lean weight and everything else as they are. With ``shift`` the mean of
        :meth:`gate_shift` over the states the policy visits, it is the policy without its gate's state dependence
        (``bench.policy_anatomy``)."""
        out = copy.deepcopy(self)
        with th.no_grad():
            out.alpha_head.weight.zero_()
            out.alpha_head.bias.fill_(float(shift) / out.gate_gain)
            if out.alpha_context is not None:
                out.alpha_context.weight.zero_()
            if out.type_gate is not None:
                out.type_gate.zero_()
        return out

    def state_embedding(self, obs: PyTorchObs | dict[str, np.ndarray]) -> th.Tensor:
        """The actor's state embedding h (B, H): what the gate, the residual and the repulsion read of the user, the
        session's context and the candidate set."""
        return self._state(self._encode(self._prepare(obs))[0])

    def residual_of(self, features: th.Tensor, state: th.Tensor) -> th.Tensor:
        """The learned residual (the residual MLP plus the linear feature path, :meth:`score_parts`' ``residual``
        without the base's fixed extra terms) of candidate feature rows read at given state embeddings.

        For reading what the residual responds to (``bench.policy_readout``): any feature value may be put in, not
        only those a request holds. Only for policies whose per-candidate input is the feature row alone (no item
        embeddings, item table, ``session_sim`` or ``hidden_taste``).

        Args:
            features: float (R, F) candidate feature rows (``obs["features"]``' columns).
            state: float (R, H) the state embedding each row is read at (:meth:`state_embedding`).

        Returns:
            float (R,).

        Raises:
            ValueError: For a policy whose candidates carry more than their feature row.
        """
        if (self.item_table is not None or self.session_weight is not None or self.taste_weight is not None
                or self.residual_cand.in_features != features.shape[-1]):
            raise ValueError("residual_of reads policies whose per-candidate input is the feature row alone; this one "
                             f"reads {self.residual_cand.in_features} columns per candidate")
        seen = features if self.residual_feature_mask is None else features * self.residual_feature_mask
        return (self._residual(symlog(seen).unsqueeze(1), state) + self._linear_features(seen.unsqueeze(1), state)
                ).squeeze(1)

    def with_linear_residual(self, weights: np.ndarray | list[float]) -> SlatePolicy:
        """A copy of this policy whose residual is ``weights·f_i`` in units of the base's score (the standardised
        blend and the fixed penalties): the residual MLP's output and the learned weights on ``session_sim`` /
        ``hidden_taste`` at 0, the linear feature path at ``weights / τ`` (the logits are ``base / τ + residual``).
        With the weights of ``bench.policy_readout``'s linear reading it is the policy's residual written as a rule.

        Args:
            weights: (F,) one weight per feature column.

        Raises:
            ValueError: For a wrong number of weights.
        """
        w = th.as_tensor(np.asarray(weights, np.float32), device=self.feature_linear.weight.device)
        if w.shape != (self.feature_linear.in_features,):
            raise ValueError(f"with_linear_residual needs {self.feature_linear.in_features} weights (one per feature "
                             f"column), got shape {tuple(w.shape)}")
        out = copy.deepcopy(self)
        with th.no_grad():
            out.residual_head.weight.zero_()
            out.residual_head.bias.zero_()
            for weight in (out.session_weight, out.taste_weight):
                if weight is not None:
                    weight.zero_()
            if out.feature_gate_weight is not None:
                out.feature_gate_weight.zero_()
            out.feature_linear.weight.copy_((w * out.log_inv_temperature.exp()).unsqueeze(0))
        return out

    def with_constant_state(self, state: th.Tensor, shift: float) -> SlatePolicy:
        """A copy of this policy whose heads read one state embedding ``state`` (H,) in every request: the gate's
        learned logit held at ``shift`` (:meth:`with_constant_gate`), the residual's state input ``W_h·h`` at
        ``W_h·state`` (folded into the candidate layer's bias), the repulsion at its value there. Each candidate is
        then scored from its own features only (the rule's blend and penalties, and the residual MLP over the
        candidate's feature row, which holds the session's per-item counters such as ``cat_exposure``); with the
        mean embedding and logit over the states the policy visits, what the policy loses is what its reading of the
        user and the session's state is worth (``bench.policy_anatomy``). The feature gate's weights at ``state``
        join the linear feature path."""
        out = self.with_constant_gate(shift)
        h = state.to(device=self.residual_state.weight.device, dtype=self.residual_state.weight.dtype)
        with th.no_grad():
            out.residual_cand.bias.add_(out.residual_state(h))
            out.residual_state.weight.zero_()
            if out.feature_gate_weight is not None:  # the gate's weights at that state join the linear path
                out.feature_linear.weight.add_((out.feature_gate_weight @ h).reshape(1, -1))
                out.feature_gate_weight.zero_()
            if out.repulsion_head is not None:
                out.repulsion_head.bias.copy_(out.repulsion_head(h))
                out.repulsion_head.weight.zero_()
        return out

    def alpha(self, obs: PyTorchObs | dict[str, np.ndarray]) -> th.Tensor:
        """The state-dependent blend weight α_θ(s) (B,), e.g. for ``train/alpha_mean`` (with ``gate="standardised"``
        the weight on the standardised LLM signal; see :meth:`_gate`)."""
        state_in, _, features, _ = self._encode(self._prepare(obs))
        return self._gate(self._state(state_in), features, state_in)[0]

    def candidate_logits(self, obs: PyTorchObs | dict[str, np.ndarray]) -> th.Tensor:
        """Per-candidate logits (B, N) (masked candidates at ``-inf`` when the obs has a ``mask``)."""
        state_in, cand, features, mask = self._encode(self._prepare(obs))
        logits, _, _ = self._actor(state_in, cand, features)
        return logits if mask is None else logits.masked_fill(~mask, float("-inf"))
