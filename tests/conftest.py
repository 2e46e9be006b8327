"""Checks that hold for the whole test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(autouse=True, scope="session")
def no_files_left_in_the_working_directory():
    """Tests write into their tmp_path only: nothing may appear in the directory pytest runs in
    (evaluate-*.json, skill PNGs, mlflow.db, mlartifacts/, mlruns/ were left there)."""
    cwd = Path.cwd()
    before = set(os.listdir(cwd))
    yield
    left = sorted(set(os.listdir(cwd)) - before - {".pytest_cache"})
    assert not left, f"the tests left {left} in {cwd}"
