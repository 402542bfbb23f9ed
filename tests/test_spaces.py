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


def test_validate_slate_converts_and_names_the_offending_row() -> None:
    # Integer-valued floats and narrower ints are accepted and come back as C-contiguous int64.
    for given in (np.array([[0.0, 1.0, 2.0]]), np.array([[0, 1, 2]], np.int32), np.array([[0, 1, 2]], np.uint8)):
        got = validate_slate(given, 10, 3)
        assert got.dtype == np.int64 and got.flags.c_contiguous and got.tolist() == [[0, 1, 2]]
    with pytest.raises(ValueError, match="integer"):
        validate_slate(np.array([[np.nan, 1.0, 2.0]]), 10, 3)
    with pytest.raises(ValueError, match=r"row 1 has entries outside \[0, 10\)"):
        validate_slate(np.array([[0, 1, 2], [3, 2, 10]]), 10, 3)
    with pytest.raises(ValueError, match="row 0 repeats"):  # the repeat is not the smallest entry
        validate_slate(np.array([[0, 3, 3]]), 10, 3)
    with pytest.raises(ValueError, match="row 0 repeats"):
        validate_slate(np.array([[5, 0, 3, 5]]), 10, 4)
