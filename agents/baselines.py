"""The stable import path of the baselines: re-exports of the ranker classes, the registry, tuning and fitting.

The code lives in rooms that say what they hold: :mod:`agents.rankers` (the ranker classes),
:mod:`agents.registry` (specs, :class:`RankerContext`, :func:`make_ranker`), :mod:`agents.tuning` (α grid
search, parameter searches, their grids and cache) and :mod:`agents.fitting` (logged impressions, logistic
regression). New code imports from those; every name importable from ``agents.baselines`` before the split
stays importable from here.
"""

from __future__ import annotations

# The stable import path (agents/training.py, agents/final_report.py and outside code import from here): keep these
# re-exports.
from agents.fitting import (
    FIT_SEED,
    Impressions,
    _LoggingPolicyRanker,
    collect_impressions,
    examined_slots,
    fit_logistic,
)
from agents.fitting import FIT_SEED as _FIT_SEED
from agents.fitting import examined_slots as _examined
from agents.rankers import (
    BlendRanker,
    DiverseRanker,
    LinUCBRanker,
    OnlineAlphaRanker,
    OracleDiverseRanker,
    OracleRanker,
    PopularRanker,
    RandomRanker,
    ScoredRanker,
    StrategyAlphaRanker,
    TunedAlphaRanker,
    TunedDiverseRanker,
    TunedOracleDiverseRanker,
    _with_bias,
)
from agents.registry import (
    _NEEDS_ALPHA,
    _NO_ARG,
    SPECS,
    RankerContext,
    check_specs,
    load_run,
    make_ranker,
    parse_spec,
    valid_choices,
)
from agents.tuning import (
    ALPHA_GRID,
    DIVERSE_DEFAULTS,
    DIVERSE_GRID,
    EXHAUSTIVE_MAX,
    ORACLE_DIVERSE_GRID,
    TUNE_SEED,
    AlphaCurve,
    ParamSearch,
    _search_cache_path,
    coordinate_search,
    diverse_ranker,
    oracle_diverse_ranker,
    tune_alpha,
    tune_diverse,
    tune_oracle_diverse,
    tuning_cache_dir,
)
from agents.tuning import TUNE_SEED as _TUNE_SEED

# Every name importable from agents.baselines before the split (private ones included), kept importable.
__all__ = [
    "ALPHA_GRID",
    "DIVERSE_DEFAULTS",
    "DIVERSE_GRID",
    "EXHAUSTIVE_MAX",
    "FIT_SEED",
    "ORACLE_DIVERSE_GRID",
    "SPECS",
    "TUNE_SEED",
    "_FIT_SEED",
    "_NEEDS_ALPHA",
    "_NO_ARG",
    "_TUNE_SEED",
    "AlphaCurve",
    "BlendRanker",
    "DiverseRanker",
    "Impressions",
    "LinUCBRanker",
    "OnlineAlphaRanker",
    "OracleDiverseRanker",
    "OracleRanker",
    "ParamSearch",
    "PopularRanker",
    "RandomRanker",
    "RankerContext",
    "ScoredRanker",
    "StrategyAlphaRanker",
    "TunedAlphaRanker",
    "TunedDiverseRanker",
    "TunedOracleDiverseRanker",
    "_LoggingPolicyRanker",
    "_examined",
    "_search_cache_path",
    "_with_bias",
    "check_specs",
    "collect_impressions",
    "coordinate_search",
    "diverse_ranker",
    "examined_slots",
    "fit_logistic",
    "load_run",
    "make_ranker",
    "oracle_diverse_ranker",
    "parse_spec",
    "tune_alpha",
    "tune_diverse",
    "tune_oracle_diverse",
    "tuning_cache_dir",
    "valid_choices",
]
