"""Helpers every test area imports (``from huatuo_testing import shared_file``).

They live here rather than in ``conftest.py`` because several test folders have their own ``conftest.py`` and a
plain ``from conftest import ...`` would pick whichever one Python imported first.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """``$HUATUO_SHARED_DATA`` or ``<checkout>/../shared/data``."""
    env = os.environ.get("HUATUO_SHARED_DATA")
    return Path(env) if env else (REPO_ROOT.parent / "shared" / "data")


def shared_file(relative: str) -> Path:
    """Path of one shared data file, or skip the calling test naming the missing file."""
    path = shared_data_dir() / relative
    if not path.exists():
        pytest.skip(f"shared test data file missing: {path}")
    return path
