"""Calibrated presets from real interaction logs: one simulated user per real user, response parameters fitted by
maximum likelihood, and a fidelity report. ``python -m envs.calibrate --data SPEC --out DIR``; the method is in
docs/calibration.md.

Modules: ``pipeline`` (:func:`calibrate`, its steps), ``tastes`` (event order, semantic tastes, item features),
``fitting`` (the ρ / a / q fit), ``fidelity`` (ranking, distributions, plots, fidelity.md), ``cli``.
"""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before numpy loads: implicit's ALS wants one BLAS thread

from configs.data import CalibrationConfig
from envs.calibrate.cli import build_parser, check_data_spec, main
from envs.calibrate.fidelity import METRICS, MODELS, fidelity_markdown
from envs.calibrate.fitting import ResponseFit, fit_response
from envs.calibrate.pipeline import FORMAT, calibrate

__all__ = [
    "FORMAT",
    "METRICS",
    "MODELS",
    "CalibrationConfig",
    "ResponseFit",
    "build_parser",
    "calibrate",
    "check_data_spec",
    "fidelity_markdown",
    "fit_response",
    "main",
]
