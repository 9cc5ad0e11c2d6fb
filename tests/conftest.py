"""Shared test helpers.

Real data and weights live outside the project, in ``../shared`` (see
``../shared/data/README.md``). A test that needs them calls ``require_shared(path)`` (or
takes the ``shared_dir`` fixture): when the path is absent the test is skipped with the
reason, except when ``CATDIFF_REQUIRE_SHARED=1`` is set, where it fails, so that a machine
that is meant to have the data cannot pass by skipping.

Other test files use ``from conftest import require_shared, SHARED_DIR`` or the fixtures.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DIR = Path(__file__).resolve().parents[1].parent / "shared"


def require_shared(path: str | os.PathLike = "") -> Path:
    """``path`` (relative to ``../shared``, or absolute), skipping or failing the calling
    test when it does not exist."""
    full = SHARED_DIR / path  # an absolute path replaces SHARED_DIR
    if not full.exists():
        reason = f"shared data not found: {full}"
        if os.environ.get("CATDIFF_REQUIRE_SHARED") == "1":
            pytest.fail(f"{reason} (CATDIFF_REQUIRE_SHARED=1)", pytrace=False)
        pytest.skip(reason)
    return full


@pytest.fixture
def shared_dir() -> Path:
    """The ``../shared`` folder (skip, or fail under CATDIFF_REQUIRE_SHARED=1, if absent)."""
    return require_shared()
