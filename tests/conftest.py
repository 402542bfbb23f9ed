"""Shared fixtures: a small world built once per test session with the hashing encoder (fast, no model).

Tests that need the real transformer encoder use it explicitly; nothing here touches the network.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from configs.schema import EnvConfig
from encoders.hashing import HashingEncoder
from envs.presets import build_world, preset_config
from envs.world import World

REPO = Path(__file__).resolve().parents[1]
MOVIELENS = REPO.parent / "shared" / "data" / "ml-latest-small"


def require_movielens(path: Path | None = None) -> Path:
    """The real ml-latest-small directory; skips the calling test without it, or fails it under CI.

    Args:
        path: The directory (None: ``$RECFEED_MOVIELENS``, else :data:`MOVIELENS`).

    Returns:
        The directory (it holds ``ratings.csv``).

    Raises:
        pytest.skip.Exception: The data is missing (the reason names the path).
        pytest.fail.Exception: The data is missing and ``CI`` is ``true`` (CI must not pass by skipping).
    """
    path = Path(path or os.environ.get("RECFEED_MOVIELENS") or MOVIELENS)
    if (path / "ratings.csv").is_file():
        return path
    reason = f"ml-latest-small not found at {path} (research-use data, not in the repo; RECFEED_MOVIELENS=DIR)"
    if os.environ.get("CI", "").strip().lower() in ("true", "1", "yes"):
        pytest.fail(f"CI is set: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def small_cfg() -> EnvConfig:
    """The small preset's env config."""
    return preset_config("small")


@pytest.fixture(scope="session")
def small_world(small_cfg: EnvConfig) -> World:
    """The small preset's world, built with a 64-d hashing encoder (about a second)."""
    return build_world(small_cfg, HashingEncoder(dim=64), progress=False)
