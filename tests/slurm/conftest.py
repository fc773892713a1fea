"""The local Slurm cluster for every test in this folder: started once, stopped at the end if we started it."""
from __future__ import annotations

import os
import re
import subprocess

import pytest

from huatuo_testing import REPO_ROOT
from slurm_harness import LOCAL_SLURM


@pytest.fixture(scope="session")
def slurm_env():
    if os.geteuid() != 0:
        pytest.skip("the local Slurm cluster needs root (scripts/local_slurm.sh start)")
    was_up = subprocess.run(["bash", str(LOCAL_SLURM), "status"], capture_output=True).returncode == 0
    # Two fake nodes (one slurmd per node name, both on 127.0.0.1) so that train.sbatch runs a real multi-node job.
    proc = subprocess.run(["bash", str(LOCAL_SLURM), "start"], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, SLURM_NODES="2"))
    if proc.returncode != 0:
        pytest.skip(f"could not start a local Slurm cluster: {proc.stderr.strip()[-400:]}")
    match = re.search(r"export SLURM_CONF=(\S+)", proc.stdout)
    assert match, proc.stdout
    env = dict(os.environ, SLURM_CONF=match.group(1), HUATUO_HOME=str(REPO_ROOT),
               HUATUO_TRAIN_MODULE="slurm.contract_trainer",
               PYTHONPATH=f"{REPO_ROOT / 'tests'}:{REPO_ROOT}")
    yield env
    if not was_up:  # leave no daemons behind that this session started
        subprocess.run(["bash", str(LOCAL_SLURM), "stop"], capture_output=True, timeout=120)
