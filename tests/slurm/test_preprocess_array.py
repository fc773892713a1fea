"""The sharded preprocessing chain on a real local Slurm: ``python -m megatron_huatuo.slurm shards`` submits a
3-task job array of ``prepare --shard i/3`` (slurm/step.sbatch) and the ``merge`` job that waits for it with
``afterok``. The reference is the same ``prepare`` run unsharded on this machine: byte-identical outputs.
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from huatuo_testing import REPO_ROOT
from slurm_harness import job_state, wait_for

pytestmark = pytest.mark.slurm


def _sources(path):
    """Every bundled demo corpus (the demo's own source list), with absolute paths."""
    from megatron_huatuo.demo.pipeline import DEMO_SOURCES

    rows = [{"name": name, "kind": kind, "lang": lang, "path": str(REPO_ROOT / "demo" / rel),
             "text_field": text_field, "id_field": id_field}
            for name, kind, lang, rel, text_field, id_field in DEMO_SOURCES]
    path.write_text(json.dumps(rows))
    return path


def _reference(tmp_path):
    """(sources file, output directory of an unsharded ``prepare`` run on this machine)."""
    tmp_path.chmod(0o777)
    sources = _sources(tmp_path / "sources.json")
    ref = tmp_path / "ref"
    subprocess.run([sys.executable, "-m", "preprocessing", "prepare", "--sources", str(sources), "--out", str(ref),
                    "--quiet"], cwd=REPO_ROOT, check=True, capture_output=True)
    return sources, ref


def _submit_and_wait(env, tmp_path, job_name: str, launcher_args: list, jobs: int, timeout: float) -> None:
    """``slurm shards --job-name JOB_NAME ARGS``; wait for its last job; every one of ``jobs`` steps exited 0."""
    proc = subprocess.run(
        [sys.executable, "-m", "megatron_huatuo.slurm", "shards", "--cpus-per-task", "1", "--job-name", job_name,
         f"--sbatch-arg=--output={tmp_path}/%x-%A_%a.out", f"--sbatch-arg=--chdir={REPO_ROOT}", *launcher_args],
        env=env, cwd=REPO_ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    last = proc.stdout.strip().splitlines()[-1].split()[-1]
    wait_for(lambda: job_state(env, last) in ("COMPLETED", "FAILED", "CANCELLED", "GONE"), timeout, "the last job")
    logs = "\n".join(p.read_text() for p in sorted(tmp_path.glob(f"{job_name}*.out")))
    assert job_state(env, last) in ("COMPLETED", "GONE"), logs[-3000:]
    assert logs.count("step exited rc=0") == jobs, logs[-3000:]


def test_prepare_array_and_merge_equal_an_unsharded_run(slurm_env, tmp_path):
    sources, ref = _reference(tmp_path)
    out = tmp_path / "sharded"
    _submit_and_wait(slurm_env, tmp_path, "prep", [
        "--shards", "3", "--merge", f"preprocessing prepare-merge --out {out} --shards 3 --quiet",
        "--", "preprocessing", "prepare", "--sources", str(sources), "--out", str(out), "--quiet"],
        jobs=4, timeout=240)  # three shards, then the merge
    produced = sorted(p.name for p in ref.iterdir() if p.is_file())
    assert "documents.jsonl" in produced
    for name in produced:
        assert (out / name).read_bytes() == (ref / name).read_bytes(), name


@pytest.mark.slow  # ten jobs (about a minute); the chain's stages are covered in-process by test_staged_dedup.py
def test_staged_dedup_chain_equals_an_unsharded_run(slurm_env, tmp_path):
    """``shards --then ... --merge``: prepare x2 (+ signatures) -> pairs x3 -> decide -> write x2 -> join, each
    stage after the previous one with afterok; the bytes of an unsharded ``prepare``."""
    sources, ref = _reference(tmp_path)
    out = tmp_path / "staged"
    dedup = f"preprocessing prepare-dedup {{}} --out {out}"
    _submit_and_wait(slurm_env, tmp_path, "dedup", [
        "--shards", "2",
        "--then", "3: " + dedup.format("pairs") + " --shards 2 --partition {task}",
        "--then", dedup.format("decide") + " --shards 2 --partitions 3",
        "--then", "2: " + dedup.format("write"),
        "--merge", dedup.format("join") + " --shards 2",
        "--", "preprocessing", "prepare", "--sources", str(sources), "--out", str(out), "--quiet",
        "--dedup-partitions", "3"], jobs=2 + 3 + 1 + 2 + 1, timeout=600)
    for name in ("documents.jsonl", "rejects.jsonl", "report.json"):
        assert (out / name).read_bytes() == (ref / name).read_bytes(), name
