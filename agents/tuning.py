"""Tuning of the baselines on the TRAINING users: tuned-alpha's α grid search, the parameter searches of
tuned-diverse and tuned-oracle-diverse (exhaustive or coordinate ascent, cached as JSON), and their grids.

Every point of a search meets the same sessions (common random numbers), drawn from the tuning seeds
(``seed + TUNE_SEED``), never the evaluation's.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from agents.base import Ranker
from agents.evaluation import episode_plan, run_episodes
from agents.rankers import BlendRanker, DiverseRanker, OracleDiverseRanker, PopDiverseRanker, SessionDiverseRanker
from agents.report import Bootstrap, percentile_ci
from configs.fileio import atomic_write_text
from configs.loader import to_dict
from configs.schema import EncoderConfig, EnvConfig
from envs.core import BatchedCore
from envs.factory import make_core
from envs.presets import default_world_dir, world_key
from envs.world import World

#: The α grid of the references before session 40: 0, 0.1, …, 1 (``--set eval.alpha_grid=[0,0.1,…,1]`` reproduces
#: the figures of earlier sessions).
COARSE_ALPHA_GRID: tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(11))
#: The α axis of ``tuned-alpha`` and of ``tuned-diverse``'s search (and its variants'): the coarse grid plus seven
#: points between 0.9 and 1. recfeed's CF feature is a standardised score (spread ~1–3 over a request's candidates)
#: and its LLM feature a cosine (spread ~0.2), so the LLM signal's share of the standardised weight
#: (:func:`agents.ppo_ranker.effective_alpha`) moves from about 0.4 to 1 between raw α 0.9 and 1, where the coarse
#: grid has no point; the tuned rules sit there (0.96–0.97 on the default preset), and on the coarse grid the
#: references were 0.5 per session weaker than they can be (BENCHMARKS "Session 40").
ALPHA_GRID: tuple[float, ...] = (*COARSE_ALPHA_GRID[:-1], 0.92, 0.94, 0.95, 0.96, 0.97, 0.98, 0.99, 1.0)
#: The tuning seed offset (keeps the training-side sessions apart from the evaluation seeds): tuning sessions are
#: ``episode_plan(episodes, [seed + TUNE_SEED], U)``.
TUNE_SEED = 1_000_003


@dataclass
class AlphaCurve:
    """Return per session of the fixed-α blend over a grid of α, on one population.

    Attributes:
        alphas: The grid.
        mean_return: Mean return per α.
        ci95: 95% bootstrap interval per α.
        best_alpha: The α of the highest mean return (the first on ties).
        episodes: Sessions per α (the same sessions for every α).
        population: Where it was measured (training users).
        seed: Seed of the sessions.
    """

    alphas: list[float]
    mean_return: list[float]
    ci95: list[list[float]]
    best_alpha: float
    episodes: int
    population: str
    seed: int

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AlphaCurve:
        """The inverse of :meth:`to_dict` (for the JSON cache).

        Raises:
            ValueError: If keys are missing or unknown, or the lists do not match the grid.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        if set(data) != names:
            raise ValueError(f"an α curve needs the keys {sorted(names)}, got {sorted(data)}")
        curve = cls(**data)
        if not len(curve.alphas) == len(curve.mean_return) == len(curve.ci95) or curve.best_alpha not in curve.alphas:
            raise ValueError("an α curve's returns and intervals must match its grid, and its best α be on it")
        return curve


def tune_alpha(world: World, env_cfg: EnvConfig, alphas: tuple[float, ...] = ALPHA_GRID, episodes: int = 400,
               seed: int = TUNE_SEED, batch: int = 256, population: str = "train",
               encoder: EncoderConfig | None = None, progress: bool = False,
               cache_dir: str | Path | None = None) -> AlphaCurve:
    """Grid-search α of the fixed blend on ``population`` (the training users, never the held-out ones).

    Every α meets the same sessions (common random numbers), so the curve's differences are paired. With
    ``cache_dir`` the curve is cached like the parameter searches (keyed by the world and everything the curve
    depends on; the batch size is not, since results do not depend on it): a second run of the same world reads it.

    Args:
        world: The world.
        env_cfg: Env config.
        alphas: The grid.
        episodes: Sessions per α.
        seed: Seed of the sessions.
        batch: Users simulated at once.
        population: Population to tune on.
        encoder: Encoder config (text observation mode only).
        progress: Show a progress bar.
        cache_dir: Folder of the tuning cache (``None``: no cache).

    Returns:
        The curve; ``best_alpha`` is its argmax.
    """
    if not alphas:
        raise ValueError("the α grid is empty")
    spec = {"alphas": [float(a) for a in alphas], "episodes": episodes, "seed": seed, "population": population}
    path = _search_cache_path(cache_dir, "alpha", world, env_cfg, spec) if cache_dir is not None else None
    cached = _read_cached(path, AlphaCurve.from_dict)
    if cached is not None:
        return cached
    core = make_core(env_cfg, env_cfg.preset, encoder, world, population, min(batch, episodes))
    plan = episode_plan(episodes, [seed], world.populations[population].size)
    boot = Bootstrap(len(plan), 1000, seed)
    returns = [run_episodes(core, BlendRanker(env_cfg.slate_size, a), plan, progress=progress,
                            desc=f"tuning α={a:g}").ret for a in alphas]
    means = [float(r.mean()) for r in returns]
    curve = AlphaCurve(alphas=[float(a) for a in alphas], mean_return=means,
                       ci95=[[float(x) for x in percentile_ci(boot.means(r))] for r in returns],
                       best_alpha=float(alphas[int(np.argmax(means))]), episodes=episodes, population=population,
                       seed=seed)
    if path is not None:
        atomic_write_text(path, json.dumps(curve.to_dict(), indent=1))
    return curve


# ---- parameter searches: tuned-diverse and tuned-oracle-diverse -------------------------------------------

#: The axes of ``tuned-diverse``'s search (parameters of :class:`DiverseRanker`; caps above K mean no cap). The
#: feedback-adaptive α's weight comes first: coordinate ascent sweeps the axes in this order, and from α = 1 (a
#: frequent first pick) no weight moves the blend, so sweeping α first can strand the search there.
DIVERSE_GRID: dict[str, tuple[float, ...]] = {
    "lean_weight": (0.0, 0.5, 1.0, 2.0, 4.0, 8.0),
    "alpha": ALPHA_GRID,
    "cap": (1, 2, 3, 5),
    "exposure_weight": (0.0, 0.5, 1.0, 2.0, 3.0, 5.0, 8.0),
    "seen_weight": (0.0, 0.25, 0.5, 1.0, 2.0),
}
#: :class:`DiverseRanker`'s hand-set defaults, the start of ``tuned-diverse``'s search (α: tuned-alpha's value).
DIVERSE_DEFAULTS: dict[str, float] = {"cap": 2, "exposure_weight": 3.0, "seen_weight": 0.5, "lean_weight": 0.0}
#: The axes of ``tuned-oracle-diverse``'s search; its start is the myopic oracle (no penalty, no cap).
ORACLE_DIVERSE_GRID: dict[str, tuple[float, ...]] = {
    "cap": (1, 2, 3, 5, 1000),
    "exposure_weight": (0.0, 0.25, 0.5, 1.0, 2.0, 4.0),
}
#: Grids with at most this many points are searched exhaustively; larger ones by coordinate ascent.
EXHAUSTIVE_MAX = 64
#: After the search the start and this many of the best points on the tuning sessions meet fresh sessions of the same
#: users (validation); the best there is the result. Session returns are heavy-tailed, so on 400 sessions the best of
#: ~60 points is partly luck: the default preset's old pick gained +0.76 on its tuning sessions and lost 0.37 to its
#: start on 2,000 fresh training sessions and 0.55 on held-out users (BENCHMARKS.md, "Session 10").
VALIDATE_TOP = 3
#: Validation sessions per tuning session: a few points on many sessions, so that the pick is not luck again.
VALIDATION_FACTOR = 5
#: The validation sessions' seed is the tuning seed plus this.
VALIDATION_SEED_OFFSET = 7_919


@dataclass
class ParamSearch:
    """A search over a grid of ranker parameters on one population (common random numbers for every point).

    Attributes:
        kind: What was tuned (``"diverse"``, ``"oracle-diverse"``).
        axes: Grid values per parameter, in search order.
        method: ``"exhaustive"`` (every grid point) or ``"coordinate"`` (coordinate ascent from ``start``).
        start: The point the search started from (a coordinate search never ends below it).
        start_mean: Its mean return on the tuning sessions.
        best: The result: of ``validation_points``, the one of the highest mean return on the validation sessions
            (on ties, the earlier; the start comes first).
        best_mean: Its mean return on the tuning sessions.
        best_ci95: 95% bootstrap interval of that mean.
        points: Every point evaluated on the tuning sessions, in evaluation order.
        means: Mean return of each point there.
        episodes: Tuning sessions per point (the same sessions for every point); the validation has
            :data:`VALIDATION_FACTOR` times as many.
        population: Where it was measured (training users).
        seed: Seed of the tuning sessions (the validation sessions': ``seed + VALIDATION_SEED_OFFSET``).
        validation_points: The start, then the best :data:`VALIDATE_TOP` other points on the tuning sessions.
        validation_means: Mean return of each on the validation sessions.
    """

    kind: str
    axes: dict[str, list[float]]
    method: str
    start: dict[str, float]
    start_mean: float
    best: dict[str, float]
    best_mean: float
    best_ci95: list[float]
    points: list[dict[str, float]]
    means: list[float]
    episodes: int
    population: str
    seed: int
    validation_points: list[dict[str, float]]
    validation_means: list[float]

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ParamSearch:
        """The inverse of :meth:`to_dict` (for the JSON cache).

        Raises:
            ValueError: If keys are missing or unknown.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        if set(data) != names:
            raise ValueError(f"a parameter search needs the keys {sorted(names)}, got {sorted(data)}")
        return cls(**data)


def coordinate_search(evaluate: Callable[[dict[str, float]], np.ndarray], axes: dict[str, tuple[float, ...]],
                      start: dict[str, float], select: np.ndarray | None = None, exhaustive_max: int = EXHAUSTIVE_MAX,
                      max_rounds: int = 4,
                      memo: dict[tuple[float, ...], np.ndarray] | None = None
                      ) -> tuple[dict[str, float], list[tuple[dict[str, float], float]]]:
    """Maximise the mean of ``evaluate(point)`` over a grid: every point when the grid is small, else coordinate
    ascent (sweep one axis at a time with the others fixed; move only on a strict gain; stop after a round
    without a move or after ``max_rounds``).

    Either way the returned point has the highest mean of all evaluated points (coordinate ascent moves to the
    best point of each sweep, and the current point only gets better), and it is never below ``start``.

    Args:
        evaluate: Point → per-episode returns (E,) on fixed sessions (common random numbers across points).
        axes: Grid values per parameter, in sweep order.
        start: Starting point; every value must be on its axis.
        select: bool (E,) episodes that count (e.g. one ρ group; default all).
        exhaustive_max: Grids of at most this many points are searched exhaustively.
        max_rounds: Rounds of coordinate ascent at most.
        memo: Shared cache point → returns (lets several searches over the same sessions share evaluations).

    Returns:
        ``(best point, [(point, mean) for every point evaluated by this search, in order])``.

    Raises:
        ValueError: For an empty axis, or a start value that is not on its axis.
    """
    names = list(axes)
    for name in names:
        if not axes[name]:
            raise ValueError(f"the grid axis {name!r} is empty")
        if name not in start or start[name] not in axes[name]:
            raise ValueError(f"the start value of {name!r} ({start.get(name)!r}) is not on its axis {axes[name]}")
    memo = {} if memo is None else memo
    seen: dict[tuple[float, ...], float] = {}

    def mean_of(point: dict[str, float]) -> float:
        key = tuple(point[n] for n in names)
        if key not in seen:
            if key not in memo:
                memo[key] = np.asarray(evaluate(dict(point)), dtype=np.float64)
            ret = memo[key]
            seen[key] = float(ret.mean() if select is None else ret[select].mean())
        return seen[key]

    best = dict(start)
    best_mean = mean_of(best)
    if int(np.prod([len(axes[n]) for n in names])) <= exhaustive_max:
        for values in itertools.product(*(axes[n] for n in names)):
            point = dict(zip(names, values, strict=True))
            if mean_of(point) > best_mean:
                best, best_mean = point, mean_of(point)
    else:
        for _ in range(max_rounds):
            moved = False
            for name in names:
                for value in axes[name]:
                    point = {**best, name: value}
                    if mean_of(point) > best_mean:
                        best, best_mean, moved = point, mean_of(point), True
            if not moved:
                break
    evaluated = [(dict(zip(names, key, strict=True)), m) for key, m in seen.items()]
    return best, evaluated


def validation_candidates(start: dict[str, float], evaluated: list[tuple[dict[str, float], float]],
                          top: int) -> list[dict[str, float]]:
    """The points a search's result is picked from: ``start``, then the ``top`` best other points of ``evaluated``
    by their mean on the tuning sessions (on ties, the one evaluated first).

    Args:
        start: The search's start.
        evaluated: ``(point, mean)`` of every point the search evaluated (:func:`coordinate_search`).
        top: How many besides the start.

    Returns:
        ``[start, …]``, at most ``top + 1`` distinct points.
    """
    others = [(p, m) for p, m in evaluated if p != start]
    order = sorted(range(len(others)), key=lambda i: (-others[i][1], i))
    return [dict(start)] + [dict(others[i][0]) for i in order[:top]]


def _user_model_key(env_cfg: EnvConfig) -> dict[str, Any]:
    """The user model in a search's cache key; ``session_intent`` only when set (searches cached before it keep
    their files)."""
    data = to_dict(env_cfg.user_model)
    if not data.get("session_intent"):
        data.pop("session_intent", None)
    return data


def _search_cache_path(cache_dir: str | Path, kind: str, world: World, env_cfg: EnvConfig,
                       spec: dict[str, Any]) -> Path:
    """The cache file of one search: keyed by the world (its config key) and everything the search depends on."""
    world_id = world.meta.get("config_key") or world_key(env_cfg, world.encoder_name)
    key = {"kind": kind, "world": world_id, "preset_dir": env_cfg.preset_dir, "obs_mode": env_cfg.obs_mode,
           "env": {k: getattr(env_cfg, k) for k in ("n_candidates", "slate_size", "max_steps")},
           "user_model": _user_model_key(env_cfg), "reward": to_dict(env_cfg.reward), **spec}
    digest = hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return Path(cache_dir) / f"{kind}-{digest}.json"


T = TypeVar("T")


def _read_cached(path: Path | None, from_dict: Callable[[dict[str, Any]], T]) -> T | None:
    """The cache entry at ``path`` read with ``from_dict``; ``None`` when there is none or it is damaged (the caller
    then runs the tuning again and overwrites it)."""
    if path is None or not path.is_file():
        return None
    try:
        return from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, TypeError, json.JSONDecodeError):
        return None


def cached_search(cache_dir: str | Path | None, kind: str, world: World, env_cfg: EnvConfig, spec: dict[str, Any],
                  compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """A search's JSON result from the tuning cache, else ``compute()`` written there (atomically).

    For searches outside this module (``bench.headroom``'s per-type rules) that want the cache the references use:
    keyed like them by the world and everything the search depends on (``spec``).

    Args:
        cache_dir: The cache folder (:func:`tuning_cache_dir`), or ``None``: compute, cache nothing.
        kind: The search's name (the file's prefix).
        world: The world searched.
        env_cfg: Its env config.
        spec: Everything else the result depends on (JSON-serialisable).
        compute: Runs the search; returns a JSON-serialisable dict.
    """
    path = _search_cache_path(cache_dir, kind, world, env_cfg, spec) if cache_dir is not None else None
    cached = _read_cached(path, dict)
    if cached is not None:
        return cached
    result = compute()
    if path is not None:
        atomic_write_text(path, json.dumps(result, indent=1, default=float))
    return result


def search_family(kind: str, factory: Callable[[BatchedCore, dict[str, float]], Ranker],
                  default_grid: dict[str, tuple[float, ...]], grid: dict[str, tuple[float, ...]] | None,
                  start: dict[str, float], world: World, env_cfg: EnvConfig, episodes: int, seed: int, batch: int,
                  population: str, encoder: EncoderConfig | None, progress: bool,
                  cache_dir: str | Path | None, also: dict[str, float] | None = None) -> ParamSearch:
    """Search the parameters of a ranker family on ``population``: the one protocol of every ParamSearch-tuned
    ranker. Checks ``grid`` (default ``default_grid``) against ``default_grid``'s axes, clips its caps to K (caps
    above K all mean "no cap"), puts ``start`` on the grid, then runs (or loads from ``cache_dir``) one
    :func:`coordinate_search` of ``factory``'s rankers on ``episodes`` tuning sessions and picks its result among the
    start and the best :data:`VALIDATE_TOP` points by their return on ``VALIDATION_FACTOR·episodes`` fresh
    validation sessions of the same users (:func:`validation_candidates`).

    Args:
        kind: The family's name (part of the cache key and of ``ParamSearch.kind``).
        factory: ``(core, point) → ranker``; the core is the search's own (on ``population``), for rankers that
            read it.
        default_grid: The family's axes (each needs a ``cap`` axis) and their default values.
        grid: Axes to search instead (the same names), or ``None``.
        start: Where the search starts; put on the grid.
        world: The world.
        env_cfg: Env config.
        episodes: Tuning sessions per point.
        seed: Seed of the tuning sessions.
        batch: Users simulated at once.
        population: Population to tune on.
        encoder: Encoder config (text observation mode only).
        progress: Show progress bars.
        cache_dir: JSON cache folder (see :func:`tune_diverse`), or ``None``.
        also: A hand-set point (every axis) that meets the validation sessions beside the start and the search's best
            points, wherever the search went; put on the grid. ``None``: none.

    Returns:
        The search; ``best`` holds the chosen parameters.

    Raises:
        ValueError: For a grid with missing or unknown axes, or an empty axis.
    """
    axes = dict(default_grid if grid is None else grid)
    if set(axes) != set(default_grid):
        raise ValueError(f"the {kind} grid needs the axes {sorted(default_grid)}, got {sorted(axes)}")
    axes["cap"] = tuple(sorted({min(int(c), env_cfg.slate_size) for c in axes["cap"]}))
    if also is not None:
        also = {n: float(min(int(also[n]), env_cfg.slate_size)) if n == "cap" else float(also[n]) for n in axes}
    axes = {n: tuple(sorted(set(v) | {start[n]} | ({also[n]} if also else set()))) for n, v in axes.items()}
    spec = {"axes": {n: list(v) for n, v in axes.items()}, "start": start, "episodes": episodes, "seed": seed,
            "population": population, "validation": [VALIDATE_TOP, VALIDATION_FACTOR, VALIDATION_SEED_OFFSET]}
    if also is not None:  # part of the cache key only when given (earlier searches keep theirs)
        spec["also"] = also
    path = _search_cache_path(cache_dir, kind, world, env_cfg, spec) if cache_dir is not None else None
    cached = _read_cached(path, ParamSearch.from_dict)
    if cached is not None:
        return cached
    core = make_core(env_cfg, env_cfg.preset, encoder, world, population, min(batch, episodes))
    n_users = world.populations[population].size
    plan = episode_plan(episodes, [seed], n_users)
    valid_plan = episode_plan(VALIDATION_FACTOR * episodes, [seed + VALIDATION_SEED_OFFSET], n_users)
    memo: dict[tuple[float, ...], np.ndarray] = {}

    def evaluate(point: dict[str, float]) -> np.ndarray:
        return run_episodes(core, factory(core, point), plan, progress=progress, desc=f"tuning {kind} {point}").ret

    _, evaluated = coordinate_search(evaluate, axes, start, memo=memo)
    candidates = validation_candidates(start, evaluated, VALIDATE_TOP)
    if also is not None and also not in candidates:  # the hand-set point is validated wherever the search went
        names = list(axes)
        key = tuple(also[n] for n in names)
        if key not in memo:
            memo[key] = evaluate(also)
            evaluated.append((dict(also), float(memo[key].mean())))
        candidates.insert(1, dict(also))
    valid_means = [float(run_episodes(core, factory(core, p), valid_plan, progress=progress,
                                      desc=f"validating {kind} {p}").ret.mean()) for p in candidates]
    best = candidates[int(np.argmax(valid_means))]  # the first on ties: the start
    names = list(axes)
    exhaustive = int(np.prod([len(v) for v in axes.values()])) <= EXHAUSTIVE_MAX
    best_ret = memo[tuple(best[n] for n in names)]
    result = ParamSearch(
        kind=kind, axes={n: [float(x) for x in v] for n, v in axes.items()},
        method="exhaustive" if exhaustive else "coordinate", start={n: float(v) for n, v in start.items()},
        start_mean=float(memo[tuple(start[n] for n in names)].mean()), best={n: float(v) for n, v in best.items()},
        best_mean=float(best_ret.mean()),
        best_ci95=list(percentile_ci(Bootstrap(len(plan), 1000, seed).means(best_ret))),
        points=[{n: float(v) for n, v in p.items()} for p, _ in evaluated], means=[m for _, m in evaluated],
        episodes=episodes, population=population, seed=seed,
        validation_points=[{n: float(v) for n, v in p.items()} for p in candidates], validation_means=valid_means)
    if path is not None:
        atomic_write_text(path, json.dumps(result.to_dict(), indent=1))
    return result


def diverse_ranker(k: int, category: np.ndarray, point: dict[str, float], name: str | None = None) -> DiverseRanker:
    """The :class:`DiverseRanker` of one grid point ``{alpha, cap, exposure_weight, seen_weight[, lean_weight]}``."""
    return DiverseRanker(k, float(point["alpha"]), category, exposure_weight=float(point["exposure_weight"]),
                         seen_weight=float(point["seen_weight"]), cap=int(point["cap"]), name=name,
                         lean_weight=float(point.get("lean_weight", 0.0)))


def tune_diverse(world: World, env_cfg: EnvConfig, alpha: float, grid: dict[str, tuple[float, ...]] | None = None,
                 episodes: int = 400, seed: int = TUNE_SEED, batch: int = 256, population: str = "train",
                 encoder: EncoderConfig | None = None, progress: bool = False,
                 cache_dir: str | Path | None = None) -> ParamSearch:
    """Tune the diversity heuristic's α, category cap, exposure and seen weights on ``population`` (training users).

    The protocol of :func:`tune_alpha`: every grid point meets the same sessions (common random numbers). The
    search starts at ``diverse:<alpha>`` with the hand-set defaults (:data:`DIVERSE_DEFAULTS`), and the result is
    the best on fresh validation sessions of the start and the search's best :data:`VALIDATE_TOP` points (so on
    those sessions it is never worse than the hand-set heuristic); grids of at most :data:`EXHAUSTIVE_MAX` points
    are searched exhaustively, larger ones by coordinate ascent (:func:`coordinate_search`: about 30–60 points for
    :data:`DIVERSE_GRID`).

    Args:
        world: The world.
        env_cfg: Env config.
        alpha: Start α (tuned-alpha's value); added to the α axis if missing.
        grid: Axes ``alpha, cap, exposure_weight, seen_weight`` (default :data:`DIVERSE_GRID`).
        episodes: Sessions per point.
        seed: Seed of the sessions.
        batch: Users simulated at once.
        population: Population to tune on.
        encoder: Encoder config (text observation mode only).
        progress: Show progress bars.
        cache_dir: Folder of a JSON cache of results, keyed by the world and the search's settings (``None``:
            no cache; :func:`tuning_cache_dir` is the usual place).

    Returns:
        The search; ``best`` holds the tuned parameters.

    Raises:
        ValueError: For a grid with missing or unknown axes, or an empty axis.
    """
    k = env_cfg.slate_size
    if grid is not None and "lean_weight" not in grid:  # a grid without the axis: the fixed blend only
        grid = {"lean_weight": (0.0,), **grid}
    start = {"alpha": float(alpha), **DIVERSE_DEFAULTS}
    start["cap"] = min(int(start["cap"]), k)
    category = world.catalog.category
    return search_family("diverse", lambda core, p: diverse_ranker(k, category, p), DIVERSE_GRID, grid, start,
                         world, env_cfg, episodes, seed, batch, population, encoder, progress, cache_dir)


def _search_with_axis(kind: str, axis: str, values: tuple[float, ...],
                      factory: Callable[[BatchedCore, dict[str, float]], Ranker], start: dict[str, float],
                      grid: dict[str, tuple[float, ...]] | None, world: World, env_cfg: EnvConfig, episodes: int,
                      seed: int, batch: int, population: str, encoder: EncoderConfig | None, progress: bool,
                      cache_dir: str | Path | None, also: dict[str, float] | None = None) -> ParamSearch:
    """:func:`search_family` over tuned-diverse's axes plus one more, ``axis`` (default ``values``), from
    tuned-diverse's point ``start`` with ``axis`` at 0; a ``grid`` without the lean axis searches the fixed blend (as
    :func:`tune_diverse`)."""
    if grid is not None and "lean_weight" not in grid:
        grid = {"lean_weight": (0.0,), **grid}
    return search_family(kind, factory, {axis: values, **DIVERSE_GRID}, grid, {axis: 0.0, **start}, world, env_cfg,
                         episodes, seed, batch, population, encoder, progress, cache_dir, also=also)


#: β's axis of :func:`tune_session_diverse` (0: tuned-diverse itself, the search's start).
SESSION_WEIGHTS: tuple[float, ...] = (0.0, 0.25, 0.5, 1.0, 2.0)
#: A hand-set session-diverse rule that :func:`tune_session_diverse` always validates beside its own best points: the
#: point seed 0's search found on the default preset in session 17 (1.18× tuned-diverse on held-out users), which
#: searches from other starts did not reach.
SESSION_DIVERSE_RULE: dict[str, float] = {"session_weight": 0.5, "lean_weight": 1.0, "alpha": 0.9, "cap": 2,
                                          "exposure_weight": 2.0, "seen_weight": 0.25}


def session_diverse_ranker(k: int, category: np.ndarray, item_emb: np.ndarray, point: dict[str, float],
                           name: str | None = None) -> SessionDiverseRanker:
    """The :class:`SessionDiverseRanker` of one grid point (:func:`diverse_ranker`'s axes and ``session_weight``)."""
    return SessionDiverseRanker(k, float(point["alpha"]), category, item_emb, float(point["session_weight"]),
                                exposure_weight=float(point["exposure_weight"]),
                                seen_weight=float(point["seen_weight"]), cap=int(point["cap"]), name=name,
                                lean_weight=float(point.get("lean_weight", 0.0)))


def tune_session_diverse(world: World, env_cfg: EnvConfig, start: dict[str, float],
                         grid: dict[str, tuple[float, ...]] | None = None, episodes: int = 400,
                         seed: int = TUNE_SEED, batch: int = 256, population: str = "train",
                         encoder: EncoderConfig | None = None, progress: bool = False,
                         cache_dir: str | Path | None = None) -> ParamSearch:
    """Tune ``session-diverse``: β (``session_weight``) searched together with tuned-diverse's axes, from
    tuned-diverse's point with β = 0, by :func:`search_family`'s protocol (so its pick is never worse than
    tuned-diverse on the validation sessions); :data:`SESSION_DIVERSE_RULE` meets the validation sessions too.

    Args:
        world: The world.
        env_cfg: Env config.
        start: tuned-diverse's parameters (its search's ``best``).
        grid: Axes ``session_weight`` and :data:`DIVERSE_GRID`'s (default :data:`SESSION_WEIGHTS` and those).
        episodes: Sessions per point.
        seed: Seed of the sessions.
        batch: Users simulated at once.
        population: Population to tune on.
        encoder: Encoder config (text observation mode only).
        progress: Show progress bars.
        cache_dir: JSON cache folder (see :func:`tune_diverse`), or ``None``.

    Returns:
        The search; ``best`` holds β and the heuristic's parameters.
    """
    k, category, emb = env_cfg.slate_size, world.catalog.category, world.item_emb
    return _search_with_axis("session-diverse", "session_weight", SESSION_WEIGHTS,
                             lambda core, p: session_diverse_ranker(k, category, emb, p), start, grid, world, env_cfg,
                             episodes, seed, batch, population, encoder, progress, cache_dir,
                             also=SESSION_DIVERSE_RULE)


#: The popularity prior's axis of :func:`tune_pop_diverse` (0: tuned-diverse itself, the search's start).
POP_WEIGHTS: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.5, 1.0)


def pop_diverse_ranker(k: int, category: np.ndarray, point: dict[str, float],
                       name: str | None = None) -> PopDiverseRanker:
    """The :class:`PopDiverseRanker` of one grid point (:func:`diverse_ranker`'s axes and ``pop_weight``)."""
    return PopDiverseRanker(k, float(point["alpha"]), category, float(point["pop_weight"]),
                            exposure_weight=float(point["exposure_weight"]), seen_weight=float(point["seen_weight"]),
                            cap=int(point["cap"]), name=name, lean_weight=float(point.get("lean_weight", 0.0)))


def tune_pop_diverse(world: World, env_cfg: EnvConfig, start: dict[str, float],
                     grid: dict[str, tuple[float, ...]] | None = None, episodes: int = 400,
                     seed: int = TUNE_SEED, batch: int = 256, population: str = "train",
                     encoder: EncoderConfig | None = None, progress: bool = False,
                     cache_dir: str | Path | None = None) -> ParamSearch:
    """Tune ``pop-diverse``: the popularity prior's weight searched together with tuned-diverse's axes, from
    tuned-diverse's point with weight 0, by :func:`search_family`'s protocol (so its pick is never worse than
    tuned-diverse on the validation sessions). The same search as ``bench.term_probe --retune --terms popularity
    --betas`` :data:`POP_WEIGHTS` (session 38).

    Args:
        world: The world.
        env_cfg: Env config.
        start: tuned-diverse's parameters (its search's ``best``).
        grid: Axes ``pop_weight`` and :data:`DIVERSE_GRID`'s (default :data:`POP_WEIGHTS` and those).
        episodes: Sessions per point.
        seed: Seed of the sessions.
        batch: Users simulated at once.
        population: Population to tune on.
        encoder: Encoder config (text observation mode only).
        progress: Show progress bars.
        cache_dir: JSON cache folder (see :func:`tune_diverse`), or ``None``.

    Returns:
        The search; ``best`` holds the prior's weight and the heuristic's parameters.
    """
    k, category = env_cfg.slate_size, world.catalog.category
    return _search_with_axis("pop-diverse", "pop_weight", POP_WEIGHTS,
                             lambda core, p: pop_diverse_ranker(k, category, p), start, grid, world, env_cfg,
                             episodes, seed, batch, population, encoder, progress, cache_dir)


def oracle_diverse_ranker(k: int, core: BatchedCore, point: dict[str, float],
                          name: str | None = None) -> OracleDiverseRanker:
    """The :class:`OracleDiverseRanker` of one grid point ``{cap, exposure_weight}`` reading ``core``."""
    return OracleDiverseRanker(k, core, exposure_weight=float(point["exposure_weight"]), cap=int(point["cap"]),
                               name=name)


def tune_oracle_diverse(world: World, env_cfg: EnvConfig, grid: dict[str, tuple[float, ...]] | None = None,
                        episodes: int = 400, seed: int = TUNE_SEED, batch: int = 256, population: str = "train",
                        encoder: EncoderConfig | None = None, progress: bool = False,
                        cache_dir: str | Path | None = None) -> ParamSearch:
    """Tune :class:`OracleDiverseRanker`'s cap and λ_c on ``population`` (training users), like :func:`tune_diverse`.

    The search starts at the myopic oracle (λ_c = 0, no cap) and picks its result on validation sessions, so there
    the result is never below it.

    Args:
        world: The world.
        env_cfg: Env config.
        grid: Axes ``cap, exposure_weight`` (default :data:`ORACLE_DIVERSE_GRID`).
        episodes: Sessions per point.
        seed: Seed of the sessions.
        batch: Users simulated at once.
        population: Population to tune on.
        encoder: Encoder config (text observation mode only).
        progress: Show progress bars.
        cache_dir: JSON cache folder (see :func:`tune_diverse`).

    Returns:
        The search; ``best`` holds the tuned parameters.

    Raises:
        ValueError: For a grid with missing or unknown axes, or an empty axis.
    """
    k = env_cfg.slate_size
    return search_family("oracle-diverse", lambda core, p: oracle_diverse_ranker(k, core, p), ORACLE_DIVERSE_GRID,
                         grid, {"cap": k, "exposure_weight": 0.0}, world, env_cfg, episodes, seed, batch, population,
                         encoder, progress, cache_dir)


# ---- the diversity heuristic per hidden ρ group (the value of adaptation; the CF-leaning users' rule) -------------

#: Default ρ_u group edges of the value of adaptation (the thirds of ``agents.evaluation.RHO_EDGES``).
RHO_EDGES: tuple[float, ...] = (1 / 3, 2 / 3)
#: A ρ group with fewer training sessions than this keeps the single tuned choice.
MIN_GROUP_EPISODES = 30


def rho_groups(rho: np.ndarray, edges: Sequence[float] = RHO_EDGES) -> np.ndarray:
    """The ρ group of each value: ``i`` for ``edges[i-1] <= ρ < edges[i]`` (inner edges, increasing).

    Args:
        rho: (E,) hidden ρ_u values.
        edges: Inner edges (G − 1 of them for G groups).

    Returns:
        int64 (E,) in [0, G).

    Raises:
        ValueError: If the edges are not strictly increasing inside (0, 1).
    """
    e = np.asarray(edges, dtype=np.float64)
    if e.ndim != 1 or (e.size and (e[0] <= 0.0 or e[-1] >= 1.0 or np.any(np.diff(e) <= 0))):
        raise ValueError(f"ρ group edges must be strictly increasing inside (0, 1), got {list(edges)}")
    return np.searchsorted(e, np.asarray(rho, dtype=np.float64), side="right").astype(np.int64)


def diverse_by_group(world: World, cfg: EnvConfig, start: dict[str, float],
                     grid: dict[str, tuple[float, ...]] | None = None, edges: Sequence[float] = RHO_EDGES,
                     episodes: int = 1000, seed: int = TUNE_SEED, batch: int = 256, population: str = "train",
                     min_count: int = MIN_GROUP_EPISODES, cache_dir: str | Path | None = None) -> dict[str, Any]:
    """The best diversity-heuristic parameters of each hidden ρ group on ``population`` (training users).

    Per group, the protocol of tuned-diverse itself (:func:`agents.tuning.search_family`) on that group's sessions:
    one :func:`agents.tuning.coordinate_search` over the group's tuning sessions, starting from ``start`` (the single
    tuned-diverse choice) and sharing evaluations with the other groups; then the choice among ``start`` and the
    search's :data:`~agents.tuning.VALIDATE_TOP` best other points by their return on the group's sessions among
    ``VALIDATION_FACTOR·episodes`` fresh validation sessions. So on the validation sessions each group's choice is at
    least as good as ``start`` within the group, and it is not the luckiest of many points on the tuning sessions.

    Args:
        world: The world.
        cfg: Env config.
        start: The single tuned choice ``{alpha, cap, exposure_weight, seen_weight}``.
        grid: Axes (default ``agents.tuning.DIVERSE_GRID``, caps clipped to K).
        edges: Inner ρ group edges.
        episodes: Training sessions per point (the validation has ``VALIDATION_FACTOR`` times as many).
        seed: Seed of the sessions.
        batch: Users simulated at once.
        population: Population the choices are made on.
        min_count: A group with fewer sessions keeps ``start``.
        cache_dir: The tuning cache (:func:`agents.tuning.tuning_cache_dir`; ``None``: search every time).

    Returns:
        ``{"single": start, "per_group": [point per group], "counts": [sessions per group], "points": n,
        "validation_points": [[point, ...] per group], "validation_means": [[group mean, ...] per group]}``.
    """
    k = cfg.slate_size
    start = {**start, "cap": min(int(start["cap"]), k)}
    axes = dict(DIVERSE_GRID if grid is None else grid)
    axes["cap"] = tuple(sorted({min(int(c), k) for c in axes["cap"]}))
    axes = {n: tuple(sorted(set(v) | {start[n]})) for n, v in axes.items()}
    spec = {"start": start, "axes": {n: list(v) for n, v in axes.items()}, "edges": list(edges), "episodes": episodes,
            "seed": seed, "population": population, "min_count": min_count,
            "validation": [VALIDATE_TOP, VALIDATION_FACTOR, VALIDATION_SEED_OFFSET]}
    return cached_search(cache_dir, "diverse-by-group", world, cfg, spec,
                         lambda: _diverse_by_group(world, cfg, start, axes, edges, episodes, seed, batch, population,
                                                   min_count))


def _diverse_by_group(world: World, cfg: EnvConfig, start: dict[str, float], axes: dict[str, tuple[float, ...]],
                      edges: Sequence[float], episodes: int, seed: int, batch: int, population: str,
                      min_count: int) -> dict[str, Any]:
    """:func:`diverse_by_group`'s search itself, on the resolved start and axes."""
    k = cfg.slate_size
    core = make_core(cfg, cfg.preset, None, world, population, min(batch, episodes))
    pop = world.populations[population]
    plan = episode_plan(episodes, [seed], pop.size)
    valid_plan = episode_plan(VALIDATION_FACTOR * episodes, [seed + VALIDATION_SEED_OFFSET], pop.size)
    groups = rho_groups(pop.rho[plan.users], edges)
    valid_groups = rho_groups(pop.rho[valid_plan.users], edges)
    memo: dict[tuple[float, ...], np.ndarray] = {}
    valid_memo: dict[tuple[float, ...], np.ndarray] = {}
    category = world.catalog.category

    def evaluate(point: dict[str, float]) -> np.ndarray:
        return run_episodes(core, diverse_ranker(k, category, point), plan).ret

    def validate(point: dict[str, float]) -> np.ndarray:
        key = tuple(point[n] for n in axes)
        if key not in valid_memo:
            valid_memo[key] = run_episodes(core, diverse_ranker(k, category, point), valid_plan).ret
        return valid_memo[key]

    per_group, valid_points, valid_means = [], [], []
    for g in range(len(edges) + 1):
        sel, valid_sel = groups == g, valid_groups == g
        if sel.sum() < min_count or valid_sel.sum() < min_count:
            per_group.append(dict(start))
            valid_points.append([])
            valid_means.append([])
            continue
        _, evaluated = coordinate_search(evaluate, axes, start, select=sel, memo=memo)
        candidates = validation_candidates(start, evaluated, VALIDATE_TOP)
        means = [float(validate(p)[valid_sel].mean()) for p in candidates]
        per_group.append(candidates[int(np.argmax(means))])  # the first on ties: the start
        valid_points.append(candidates)
        valid_means.append(means)
    return {"single": dict(start), "per_group": per_group,
            "counts": [int((groups == g).sum()) for g in range(len(edges) + 1)], "points": len(memo),
            "validation_points": valid_points, "validation_means": valid_means}


def tuning_cache_dir(env_cfg: EnvConfig, encoder: EncoderConfig | None = None) -> Path:
    """Where tuning results are cached by default: ``<world cache folder>/tuning``."""
    return default_world_dir(env_cfg, encoder or EncoderConfig()) / "tuning"
