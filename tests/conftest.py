"""Shared test fixtures.

Real third-party data (tokenizers, corpora, SFT sets) lives in ``../shared/data`` beside the checkout and is never
committed; tests that need it take the ``shared_data`` fixture and are skipped with a clear reason when it is absent.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from huatuo_testing import REPO_ROOT, shared_data_dir, shared_file  # noqa: F401  (re-exported for old imports)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = shared_data_dir()
    if not path.is_dir():
        pytest.skip(f"shared test data not found at {path} (set HUATUO_SHARED_DATA to point at it)")
    return path


def pytest_collection_modifyitems(config, items):
    """GPU tests are skipped cleanly when CUDA is unavailable, even if selected explicitly with -m gpu."""
    import torch

    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs CUDA; this machine has none")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """``make test`` runs the suite on 2 pytest-xdist workers: each test file stays on one worker (its module
    fixtures are built once), and every test of ``tests/slurm`` goes to the same worker, because they share the one
    local Slurm cluster that a worker's session starts and stops."""
    from xdist.scheduler import LoadScopeScheduling

    class FileScopeSlurmTogether(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return "tests/slurm/" if path.startswith("tests/slurm/") else path

    return FileScopeSlurmTogether(config, log)
