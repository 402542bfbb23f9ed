"""Slate validation (envs/spaces.py)."""

from __future__ import annotations

import numpy as np
import pytest

from envs.spaces import validate_slate


def test_invalid_slates_rejected_naming_the_row() -> None:
    with pytest.raises(ValueError, match="row 1 repeats"):
        validate_slate(np.array([[0, 1, 2], [3, 3, 4]]), 10, 3)
    with pytest.raises(ValueError, match=r"row 0 has entries outside \[0, 10\)"):
        validate_slate(np.array([[0, 1, 10], [3, 2, 4]]), 10, 3)
    with pytest.raises(ValueError, match="shape"):
        validate_slate(np.array([[0, 1]]), 10, 3)
    with pytest.raises(ValueError, match="integer"):
        validate_slate(np.array([[0.5, 1, 2]]), 10, 3)
