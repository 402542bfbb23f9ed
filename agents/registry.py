"""The ranker registry: ranker specs (``fixed-alpha:0.5``, ``run:DIR`` …), their checks, and ``make_ranker(spec, ctx)``.

Specs (see :data:`SPECS`): ``random``, ``popular``, ``greedy-llm``, ``greedy-cf``, ``fixed-alpha:A``, ``scored``,
``tuned-alpha``, ``online-alpha:A``, ``strategy-alpha:A``, ``linucb[:C]``, ``diverse:A``, ``tuned-diverse``,
``session-diverse``, ``tuned-session-diverse``, ``tuned-pop-diverse``, ``tuned-switch[:READER]``, ``oracle``,
``tuned-oracle-diverse``, ``run:DIR``. Rankers that
learn before the evaluation do so on the TRAINING population only (:mod:`agents.tuning`, :mod:`agents.fitting`), with
seeds derived from the context's seed (never the global RNG); :class:`RankerContext` runs each tuning or fit once and
shares it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agents.base import Ranker
from agents.fitting import FIT_SEED, Impressions, collect_impressions
from agents.rankers import (
    BlendRanker,
    DiverseRanker,
    LinUCBRanker,
    OnlineAlphaRanker,
    OracleRanker,
    PopularRanker,
    RandomRanker,
    ScoredRanker,
    StrategyAlphaRanker,
    TunedAlphaRanker,
    TunedDiverseRanker,
    TunedOracleDiverseRanker,
    TunedPopDiverseRanker,
    TunedSessionDiverseRanker,
)
from agents.tuning import (
    ALPHA_GRID,
    DIVERSE_GRID,
    POP_WEIGHTS,
    SESSION_DIVERSE_RULE,
    SESSION_WEIGHTS,
    TUNE_SEED,
    AlphaCurve,
    ParamSearch,
    diverse_by_group,
    diverse_ranker,
    session_diverse_ranker,
    tune_alpha,
    tune_diverse,
    tune_oracle_diverse,
    tune_pop_diverse,
    tune_session_diverse,
)
from agents.type_switch import CF_LEANING_RHO, READERS, SwitchRanker, SwitchSearch, tune_switch
from configs.schema import EncoderConfig, EnvConfig
from envs.core import BatchedCore
from envs.factory import make_core
from envs.world import World

#: ``tuned-switch``'s type classifier is fitted on this many training sessions per tuning session.
SWITCH_FIT_FACTOR = 4

#: Spec syntax → what it is; the order of the error message listing the valid choices.
SPECS: dict[str, str] = {
    "random": "uniformly random slate",
    "popular": "most logged clicks first",
    "greedy-llm": "top-K by LLM similarity (α = 1)",
    "greedy-cf": "top-K by CF score (α = 0)",
    "fixed-alpha:A": "top-K by A·llm_sim + (1-A)·cf_score, A in [0, 1]",
    "scored": "top-K by sigmoid(W·x + b), W, b fitted on logged impressions",
    "tuned-alpha": "fixed-alpha with α grid-searched on the training users",
    "online-alpha:A": "fixed-α blend whose user vector takes a gradient step on each click and skip",
    "strategy-alpha:A": "per-user LLM/CF weight updated by new = A·current + (1-A)·signal",
    "linucb[:C]": "LinUCB over the candidate features, per user, exploration C (default 0.1)",
    "diverse:A": "fixed-alpha:A with penalties on recently shown categories and items, at most 2 per category",
    "tuned-diverse": "diverse with α, its feedback-adaptive weight, category cap and penalty weights searched on the "
                     "training users",
    "session-diverse": "the hand-set rule of tuned-diverse's axes plus a weight on each candidate's cosine with the "
                       "items clicked so far this session (tuning.SESSION_DIVERSE_RULE: the point a search found on "
                       "the default preset in session 17); no search",
    "tuned-session-diverse": "tuned-diverse plus a weight on each candidate's cosine with the items clicked so far "
                             "this session, searched with tuned-diverse's axes on the training users",
    "tuned-pop-diverse": "tuned-diverse plus a popularity prior (a weight on each candidate's standardised "
                         "popularity), searched with tuned-diverse's axes on the training users",
    "tuned-switch[:READER]": "the engineer's type switch: tuned-diverse, or the diversity rule tuned for the "
                             "CF-leaning training users where a classifier of the request (READER boosted, the "
                             "default, or logistic; fitted on training users' hidden type) reads a CF-leaning user "
                             "above a threshold chosen on training users",
    "oracle": "true click probability (reads the simulator's hidden state)",
    "tuned-oracle-diverse": "true utility with a category cap and exposure penalty tuned on the training users "
                            "(non-myopic upper reference; reads the simulator's hidden state)",
    "run:DIR": "a trained PPO run directory (train.py)",
    "SPEC@T": "fixed-alpha:A, greedy-llm, greedy-cf, tuned-alpha, diverse:A, tuned-diverse or run:DIR sampling its "
              "slate from its Plackett-Luce walk at temperature T > 0 (the A/B arms' stochastic serving; run:DIR "
              "needs its export/)",
}
#: Specs that take a ``@T`` suffix (:func:`split_temperature`).
_SAMPLABLE = ("fixed-alpha", "greedy-llm", "greedy-cf", "tuned-alpha", "diverse", "tuned-diverse", "run")
_NEEDS_ALPHA = ("fixed-alpha", "online-alpha", "strategy-alpha", "diverse")
_NO_ARG = ("random", "popular", "greedy-llm", "greedy-cf", "scored", "tuned-alpha", "tuned-diverse",
           "session-diverse", "tuned-session-diverse", "tuned-pop-diverse", "oracle", "tuned-oracle-diverse")


def valid_choices() -> str:
    """The spec syntaxes, comma separated (for error messages and ``--help``)."""
    return ", ".join(SPECS)


def split_temperature(spec: str) -> tuple[str, float | None]:
    """``"tuned-alpha@0.1"`` → ``("tuned-alpha", 0.1)``; a spec without ``@T`` → ``(spec, None)``.

    Raises:
        ValueError: A temperature that is not a finite number > 0, or ``@T`` on a ranker that cannot sample.
    """
    base, sep, t = spec.strip().rpartition("@")
    if not sep:
        return spec.strip(), None
    try:
        temp = float(t)
    except ValueError:
        temp = float("nan")
    if not (math.isfinite(temp) and temp > 0):
        raise ValueError(f"ranker {spec!r}: the temperature after '@' must be a finite number > 0")
    if base.partition(":")[0] not in _SAMPLABLE:
        raise ValueError(f"ranker {spec!r}: only {', '.join(_SAMPLABLE)} can sample at a temperature")
    return base, temp


def run_dir_of(spec: str) -> str | None:
    """The directory of a ``run:DIR`` or ``run:DIR@T`` spec, else ``None``."""
    base = split_temperature(spec)[0] if "@" in spec else spec.strip()
    return base.split(":", 1)[1] if base.startswith("run:") else None


def parse_spec(spec: str) -> tuple[str, str | None]:
    """Split and check a ranker spec.

    Args:
        spec: e.g. ``"fixed-alpha:0.5"``, ``"linucb"``, ``"run:runs/ppo-1"``.

    Returns:
        ``(name, argument or None)``.

    Raises:
        ValueError: For an unknown name or a bad argument; the message lists the valid choices.
    """
    name, sep, arg = split_temperature(spec)[0].partition(":")  # a "@T" suffix is checked and set aside
    bad = f"; valid choices: {valid_choices()}"
    if name in _NO_ARG:
        if sep:
            raise ValueError(f"ranker {name!r} takes no argument, got {spec!r}{bad}")
        return name, None
    if name in _NEEDS_ALPHA:
        try:
            alpha = float(arg)
        except ValueError:
            raise ValueError(f"ranker {spec!r} needs α in [0, 1], as in '{name}:0.5'{bad}") from None
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"ranker {spec!r}: α must be in [0, 1], got {alpha}{bad}")
        return name, arg
    if name == "linucb":
        if sep:
            try:
                ok = float(arg) >= 0.0
            except ValueError:
                ok = False
            if not ok:
                raise ValueError(f"ranker {spec!r}: the exploration weight must be a number >= 0{bad}")
        return name, arg or None
    if name == "run":
        if not arg:
            raise ValueError(f"ranker {spec!r} needs a run directory, as in 'run:runs/my-run'{bad}")
        return name, arg
    if name == "tuned-switch":
        if sep and arg not in READERS:
            raise ValueError(f"ranker {spec!r}: the type reader must be one of {', '.join(READERS)}{bad}")
        return name, arg or None
    raise ValueError(f"unknown ranker {spec!r}; valid choices: {valid_choices()}")


def check_specs(specs: list[str]) -> None:
    """Validate a list of specs before any expensive work: syntax, duplicates, run directories.

    Raises:
        ValueError: Empty list, duplicates, or a bad spec (listing the valid choices).
        FileNotFoundError: A ``run:DIR`` whose directory does not exist.
    """
    if not specs:
        raise ValueError(f"no rankers given; valid choices: {valid_choices()}")
    dup = sorted({s for s in specs if specs.count(s) > 1})
    if dup:
        raise ValueError(f"rankers listed twice: {dup}")
    for spec in specs:
        name, arg = parse_spec(spec)
        if name == "run" and arg is not None and not Path(arg).is_dir():
            raise FileNotFoundError(f"run directory {arg!r} (ranker {spec!r}) does not exist")


def alpha_grid_kwargs(alpha_grid: Sequence[float] | None) -> dict[str, Any]:
    """:class:`RankerContext` keywords that search the references on ``alpha_grid`` (``eval.alpha_grid``).

    Args:
        alpha_grid: The α axis of tuned-alpha's curve and of tuned-diverse's search (and its variants'), or ``None``
            for the defaults (:data:`ALPHA_GRID`, :data:`DIVERSE_GRID`).

    Returns:
        ``{}`` for ``None``; else ``alphas`` and ``diverse_grid`` with that α axis (the other axes unchanged).
    """
    if alpha_grid is None:
        return {}
    axis = tuple(float(a) for a in alpha_grid)
    return {"alphas": axis, "diverse_grid": {**DIVERSE_GRID, "alpha": axis}}


@dataclass
class RankerContext:
    """What the factory needs to build any ranker.

    Attributes:
        world: The world.
        env_cfg: Env config (K, N, logging settings).
        core: The evaluation core (the oracles read its hidden state); required for ``oracle`` and
            ``tuned-oracle-diverse``.
        seed: Seed of the rankers' own randomness; training-side seeds are derived from it.
        train_population: Population that tuning and fitting use.
        alphas: tuned-alpha's grid.
        tune_episodes: Sessions per grid point for tuned-alpha, tuned-diverse and tuned-oracle-diverse.
        fit_sessions: Logged sessions for ``scored`` and ``linucb``.
        batch: Users simulated at once while tuning and fitting.
        encoder: Encoder config (text observation mode only).
        device: Torch device for ``run:DIR``.
        progress: Show progress bars while tuning and fitting.
        diverse_grid: tuned-diverse's axes (``None``: :data:`DIVERSE_GRID`).
        oracle_grid: tuned-oracle-diverse's axes (``None``: :data:`ORACLE_DIVERSE_GRID`).
        cache_dir: JSON cache of tuned-alpha's curve and the tuned-diverse and tuned-oracle-diverse searches
            (``None``: none; see :func:`tuning_cache_dir`).
    """

    world: World
    env_cfg: EnvConfig
    core: BatchedCore | None = None
    seed: int = 0
    train_population: str = "train"
    alphas: tuple[float, ...] = ALPHA_GRID
    tune_episodes: int = 400
    fit_sessions: int = 600
    batch: int = 256
    encoder: EncoderConfig | None = None
    device: str = "auto"
    progress: bool = False
    diverse_grid: dict[str, tuple[float, ...]] | None = None
    oracle_grid: dict[str, tuple[float, ...]] | None = None
    cache_dir: str | None = None
    _impressions: Impressions | None = field(default=None, repr=False)
    _alpha_curve: AlphaCurve | None = field(default=None, repr=False)
    _diverse: ParamSearch | None = field(default=None, repr=False)
    _oracle_diverse: ParamSearch | None = field(default=None, repr=False)
    _session_diverse: ParamSearch | None = field(default=None, repr=False)
    _pop_diverse: ParamSearch | None = field(default=None, repr=False)
    _cf_rule: dict[str, float] | None = field(default=None, repr=False)
    _switch: dict[str, SwitchSearch] = field(default_factory=dict, repr=False)

    def impressions(self) -> Impressions:
        """Logged impressions on the training users (collected once, shared by ``scored`` and ``linucb``)."""
        if self._impressions is None:
            self._impressions = collect_impressions(self.world, self.env_cfg, self.fit_sessions,
                                                    self.seed + FIT_SEED, self.batch, self.train_population,
                                                    self.encoder, self.progress)
        return self._impressions

    def alpha_curve(self) -> AlphaCurve:
        """tuned-alpha's grid search on the training users (run once, shared by tuned-alpha and tuned-diverse)."""
        if self._alpha_curve is None:
            self._alpha_curve = tune_alpha(self.world, self.env_cfg, self.alphas, self.tune_episodes,
                                           self.seed + TUNE_SEED, self.batch, self.train_population, self.encoder,
                                           self.progress, self.cache_dir)
        return self._alpha_curve

    def diverse_search(self) -> ParamSearch:
        """tuned-diverse's search on the training users, from ``diverse:<tuned-alpha's α>`` (run once)."""
        if self._diverse is None:
            self._diverse = tune_diverse(self.world, self.env_cfg, self.alpha_curve().best_alpha, self.diverse_grid,
                                         self.tune_episodes, self.seed + TUNE_SEED, self.batch,
                                         self.train_population, self.encoder, self.progress, self.cache_dir)
        return self._diverse

    def session_diverse_search(self) -> ParamSearch:
        """tuned-session-diverse's search on the training users, from tuned-diverse's point (run once)."""
        if self._session_diverse is None:
            grid = None if self.diverse_grid is None else {"session_weight": SESSION_WEIGHTS, **self.diverse_grid}
            self._session_diverse = tune_session_diverse(self.world, self.env_cfg, self.diverse_search().best, grid,
                                                         self.tune_episodes, self.seed + TUNE_SEED, self.batch,
                                                         self.train_population, self.encoder, self.progress,
                                                         self.cache_dir)
        return self._session_diverse

    def cf_rule_search(self) -> dict[str, float]:
        """The diversity heuristic's point for the CF-leaning training users (hidden ρ < :data:`CF_LEANING_RHO`), by
        tuned-diverse's protocol from tuned-diverse's point (:func:`agents.tuning.diverse_by_group`; run once, cached
        beside tuned-diverse's search): rule B of ``bench.type_switch``, the second base of
        ``train.policy.cf_rule_base``."""
        if self._cf_rule is None:
            by_group = diverse_by_group(self.world, self.env_cfg, self.diverse_search().best, self.diverse_grid,
                                        (CF_LEANING_RHO,), self.tune_episodes, self.seed + TUNE_SEED, self.batch,
                                        self.train_population, cache_dir=self.cache_dir)
            self._cf_rule = dict(by_group["per_group"][0])
        return self._cf_rule

    def switch_search(self, reader: str = "boosted") -> SwitchSearch:
        """``tuned-switch``'s fit on the training users (run once per reader): tuned-diverse (A), the CF-leaning
        users' rule (B, :meth:`cf_rule_search`), a type classifier fitted on :data:`SWITCH_FIT_FACTOR` ×
        ``tune_episodes`` training sessions played by A and the threshold chosen on ``tune_episodes`` sessions of the
        tuning seed (:func:`agents.type_switch.tune_switch`). Not cached on disk: the classifier is refitted (a
        fitted model is not a JSON search result, and recfeed unpickles nothing)."""
        if reader not in self._switch:
            k, category = self.env_cfg.slate_size, self.world.catalog.category
            a = diverse_ranker(k, category, self.diverse_search().best, name="tuned-diverse")
            b = diverse_ranker(k, category, self.cf_rule_search(), name="cf-leaning rule")
            core = make_core(self.env_cfg, self.env_cfg.preset, self.encoder, self.world, self.train_population,
                             min(self.batch, 256))
            self._switch[reader] = tune_switch(core, a, b, SWITCH_FIT_FACTOR * self.tune_episodes,
                                               self.tune_episodes, self.seed + TUNE_SEED, reader,
                                               classifier_seed=self.seed)
        return self._switch[reader]

    def pop_diverse_search(self) -> ParamSearch:
        """tuned-pop-diverse's search on the training users, from tuned-diverse's point (run once)."""
        if self._pop_diverse is None:
            grid = None if self.diverse_grid is None else {"pop_weight": POP_WEIGHTS, **self.diverse_grid}
            self._pop_diverse = tune_pop_diverse(self.world, self.env_cfg, self.diverse_search().best, grid,
                                                 self.tune_episodes, self.seed + TUNE_SEED, self.batch,
                                                 self.train_population, self.encoder, self.progress, self.cache_dir)
        return self._pop_diverse

    def oracle_diverse_search(self) -> ParamSearch:
        """tuned-oracle-diverse's search on the training users (run once)."""
        if self._oracle_diverse is None:
            self._oracle_diverse = tune_oracle_diverse(self.world, self.env_cfg, self.oracle_grid, self.tune_episodes,
                                                       self.seed + TUNE_SEED, self.batch, self.train_population,
                                                       self.encoder, self.progress, self.cache_dir)
        return self._oracle_diverse


def make_ranker(spec: str, ctx: RankerContext) -> Ranker:
    """Build the ranker named by ``spec`` (see :data:`SPECS`).

    Args:
        spec: e.g. ``"random"``, ``"fixed-alpha:0.5"``, ``"linucb:0.2"``, ``"run:runs/ppo-1"``.
        ctx: World, config, evaluation core and seeds.

    Returns:
        The ranker, its ``name`` set to the spec.

    Raises:
        ValueError: For an unknown or malformed spec (listing the valid choices), or an oracle without a core.
        FileNotFoundError: For ``run:DIR`` when DIR does not exist.
        ImportError: For ``run:DIR`` when the PPO ranker module (``agents/ppo_ranker.py``) is not available.
    """
    name, arg = parse_spec(spec)
    k = ctx.env_cfg.slate_size
    ranker: Ranker
    temperature = split_temperature(spec)[1]
    if temperature is not None:
        return _sampled(spec, name, arg, temperature, ctx)
    if name == "random":
        ranker = RandomRanker(k, ctx.seed)
    elif name == "popular":
        ranker = PopularRanker(k)
    elif name == "greedy-llm":
        ranker = BlendRanker(k, 1.0, name="greedy-llm")
    elif name == "greedy-cf":
        ranker = BlendRanker(k, 0.0, name="greedy-cf")
    elif name == "fixed-alpha":
        ranker = BlendRanker(k, float(arg))
    elif name == "scored":
        ranker = ScoredRanker.fit(ctx.impressions(), k)
    elif name == "tuned-alpha":
        ranker = TunedAlphaRanker(k, ctx.alpha_curve())
    elif name == "diverse":
        ranker = DiverseRanker(k, float(arg), ctx.world.catalog.category)
    elif name == "tuned-diverse":
        ranker = TunedDiverseRanker(k, ctx.world.catalog.category, ctx.diverse_search())
    elif name == "session-diverse":
        ranker = session_diverse_ranker(k, ctx.world.catalog.category, ctx.world.item_emb, SESSION_DIVERSE_RULE,
                                        name="session-diverse")
    elif name == "tuned-session-diverse":
        ranker = TunedSessionDiverseRanker(k, ctx.world.catalog.category, ctx.world.item_emb,
                                           ctx.session_diverse_search())
    elif name == "tuned-pop-diverse":
        ranker = TunedPopDiverseRanker(k, ctx.world.catalog.category, ctx.pop_diverse_search())
    elif name == "tuned-switch":
        fitted = ctx.switch_search(arg or "boosted").ranker  # a fresh switch (its own count) around the fitted parts
        ranker = SwitchRanker(fitted.a, fitted.b, fitted.classifier, fitted.threshold)
    elif name == "online-alpha":
        ranker = OnlineAlphaRanker(k, float(arg), ctx.world.item_emb)
    elif name == "strategy-alpha":
        ranker = StrategyAlphaRanker(k, float(arg))
    elif name == "linucb":
        ranker = LinUCBRanker.fit(ctx.impressions(), k, exploration=float(arg) if arg else 0.1)
    elif name in ("oracle", "tuned-oracle-diverse"):
        if ctx.core is None:
            raise ValueError(f"{name} reads the evaluation core's hidden state: give RankerContext a core")
        if name == "oracle":
            ranker = OracleRanker(k, ctx.core)
        else:
            ranker = TunedOracleDiverseRanker(k, ctx.core, ctx.oracle_diverse_search())
    else:  # run:DIR (parse_spec admits nothing else)
        ranker = load_run(str(arg), ctx.device, n_items=ctx.world.n_items)
    ranker.name = spec
    return ranker


def _sampled(spec: str, name: str, arg: str | None, temperature: float, ctx: RankerContext) -> Ranker:
    """A ``SPEC@T`` ranker: the spec's scorer (:mod:`agents.serving.arms`) sampled at ``temperature``."""
    from agents.serving.arms import ArmScorer, BlendScorer, DiverseScorer, ModelScorer, SampledRanker

    scorer: ArmScorer
    if name in ("fixed-alpha", "greedy-llm", "greedy-cf", "tuned-alpha"):
        alpha = {"greedy-llm": 1.0, "greedy-cf": 0.0}.get(name)
        if alpha is None:
            alpha = float(arg) if name == "fixed-alpha" else ctx.alpha_curve().best_alpha
        scorer = BlendScorer(alpha)
    elif name == "diverse":
        scorer = DiverseScorer(float(arg), 3.0, 0.5, 2)  # DiverseRanker's defaults
    elif name == "tuned-diverse":
        p = ctx.diverse_search().best
        if p.get("lean_weight", 0.0) != 0.0:
            raise ValueError(f"{spec!r}: tuned-diverse's α follows the clicks here (lean_weight "
                             f"{p['lean_weight']:g}), which the sampled scorers do not implement; use tuned-diverse")
        scorer = DiverseScorer(p["alpha"], p["exposure_weight"], p["seen_weight"], int(p["cap"]))
    else:  # run
        if not Path(str(arg)).is_dir():
            raise FileNotFoundError(f"run directory {arg!r} does not exist")
        scorer = ModelScorer(str(arg), threads=None)
        if scorer.items.n_items != ctx.world.n_items:
            raise ValueError(f"ranker {spec!r}: its export has {scorer.items.n_items} items, the world "
                             f"{ctx.world.n_items}")
    return SampledRanker(spec, scorer, temperature, ctx.world.catalog.category, ctx.env_cfg.slate_size, ctx.seed)


def load_run(run_dir: str, device: str = "auto", n_items: int | None = None) -> Ranker:
    """The ranker of a PPO run directory, through ``agents.ppo_ranker.load_run_ranker`` (imported lazily).

    ``n_items``: the evaluation world's catalog size; a policy trained on another catalog is an error.

    Raises:
        FileNotFoundError: If ``run_dir`` does not exist.
        ImportError: If ``agents/ppo_ranker.py`` is not available.
    """
    if not Path(run_dir).is_dir():
        raise FileNotFoundError(f"run directory {run_dir!r} does not exist")
    try:
        from agents.ppo_ranker import load_run_ranker
    except ModuleNotFoundError as exc:
        if exc.name != "agents.ppo_ranker":
            raise
        raise ImportError(f"cannot load run {run_dir!r}: agents/ppo_ranker.py (the PPO ranker) is not available "
                          "in this checkout") from exc
    return load_run_ranker(run_dir, device=device, n_items=n_items)
