"""The ending that the analysis commands of ``bench/`` share: compute, refuse bad input by name, print table and JSON.

An analysis command reads finished runs or reports, so what can go wrong is a missing file or a file that does not
hold what the command needs (``FileNotFoundError``, ``ValueError``). Both become an ``argparse`` error (usage line,
the message, exit status 2) rather than a traceback; the table goes to stdout, then the JSON as the last line, which
is what the protocol scripts and the documentation's commands read.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any, TypeVar

R = TypeVar("R")


def print_analysis(ap: argparse.ArgumentParser, compute: Callable[[], R], markdown: Callable[[R], str]) -> R:
    """Run ``compute``, then print ``markdown`` of its result and the result as one JSON line.

    Args:
        ap: The command's parser: a missing file or a ``ValueError`` from ``compute`` ends the command through
            ``ap.error`` with the message.
        compute: The analysis, its arguments bound.
        markdown: The result as a Markdown table (or lines).

    Returns:
        The result (numpy scalars in it are printed as floats).
    """
    try:
        res = compute()
    except (FileNotFoundError, ValueError) as exc:
        ap.error(str(exc))
    print(markdown(res))
    print(json.dumps(res, default=_json_scalar))
    return res


def _json_scalar(x: Any) -> float:
    """numpy (and other) scalars as floats; anything else is refused as ``json`` would."""
    try:
        return float(x)
    except (TypeError, ValueError):
        raise TypeError(f"Object of type {type(x).__name__} is not JSON serializable") from None
