"""Helpers of the Slurm tests: the local cluster script, job states, waiting (no Slurm objects mocked)."""
from __future__ import annotations

import re
import subprocess
import time

from huatuo_testing import REPO_ROOT

LOCAL_SLURM = REPO_ROOT / "scripts" / "local_slurm.sh"


def node_count(env) -> int:
    out = subprocess.run(["sinfo", "-h", "-N", "-o", "%N"], env=env, capture_output=True, text=True)
    return len(set(out.stdout.split()))


def job_state(env, job: str) -> str:
    out = subprocess.run(["scontrol", "show", "job", job], env=env, capture_output=True, text=True)
    match = re.search(r"JobState=(\S+)", out.stdout)
    return match.group(1) if match else "GONE"


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
