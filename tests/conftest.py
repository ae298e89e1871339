"""Shared fixtures: quiet TensorFlow logs and the location of ../shared/data."""

import os
import pathlib

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = pathlib.Path(
    os.environ.get("KERAS_UNETPP_SHARED_DATA", REPO.parent / "shared" / "data")
)


@pytest.fixture
def shared_data():
    """Path to ../shared/data; skips the test when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data sets not found at {SHARED_DATA} (CI always has them)")
    return SHARED_DATA
