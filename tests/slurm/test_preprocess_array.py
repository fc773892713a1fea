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


def test_prepare_array_and_merge_equal_an_unsharded_run(slurm_env, tmp_path):
    tmp_path.chmod(0o777)
    sources = _sources(tmp_path / "sources.json")
    ref = tmp_path / "ref"
    subprocess.run([sys.executable, "-m", "preprocessing", "prepare", "--sources", str(sources), "--out", str(ref),
                    "--quiet"], cwd=REPO_ROOT, check=True, capture_output=True)

    out = tmp_path / "sharded"
    proc = subprocess.run(
        [sys.executable, "-m", "megatron_huatuo.slurm", "shards", "--shards", "3", "--cpus-per-task", "1",
         "--job-name", "prep", f"--sbatch-arg=--output={tmp_path}/%x-%A_%a.out", f"--sbatch-arg=--chdir={REPO_ROOT}",
         "--merge", f"preprocessing prepare-merge --out {out} --shards 3 --quiet",
         "--", "preprocessing", "prepare", "--sources", str(sources), "--out", str(out), "--quiet"],
        env=slurm_env, cwd=REPO_ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    merge_job = proc.stdout.strip().splitlines()[-1].split()[-1]
    wait_for(lambda: job_state(slurm_env, merge_job) in ("COMPLETED", "FAILED", "CANCELLED", "GONE"), 240,
             "the merge job")
    logs = "\n".join(p.read_text() for p in sorted(tmp_path.glob("prep*.out")))
    assert job_state(slurm_env, merge_job) in ("COMPLETED", "GONE"), logs[-3000:]
    assert logs.count("step exited rc=0") == 4, logs[-3000:]  # three shards, then the merge
    produced = sorted(p.name for p in ref.iterdir() if p.is_file())
    assert "documents.jsonl" in produced
    for name in produced:
        assert (out / name).read_bytes() == (ref / name).read_bytes(), name


@pytest.mark.slow  # ten jobs (about 2 minutes); the chain's stages are covered in-process by test_staged_dedup.py
def test_staged_dedup_chain_equals_an_unsharded_run(slurm_env, tmp_path):
    """``shards --then ... --merge``: prepare x2 (+ signatures) -> pairs x3 -> decide -> write x2 -> join, each
    stage after the previous one with afterok; the bytes of an unsharded ``prepare``."""
    tmp_path.chmod(0o777)
    sources = _sources(tmp_path / "sources.json")
    ref = tmp_path / "ref"
    subprocess.run([sys.executable, "-m", "preprocessing", "prepare", "--sources", str(sources), "--out", str(ref),
                    "--quiet"], cwd=REPO_ROOT, check=True, capture_output=True)
    out = tmp_path / "staged"
    dedup = f"preprocessing prepare-dedup {{}} --out {out}"
    proc = subprocess.run(
        [sys.executable, "-m", "megatron_huatuo.slurm", "shards", "--shards", "2", "--cpus-per-task", "1",
         "--job-name", "dedup", f"--sbatch-arg=--output={tmp_path}/%x-%A_%a.out", f"--sbatch-arg=--chdir={REPO_ROOT}",
         "--then", "3: " + dedup.format("pairs") + " --shards 2 --partition {task}",
         "--then", dedup.format("decide") + " --shards 2 --partitions 3",
         "--then", "2: " + dedup.format("write"),
         "--merge", dedup.format("join") + " --shards 2",
         "--", "preprocessing", "prepare", "--sources", str(sources), "--out", str(out), "--quiet",
         "--dedup-partitions", "3"],
        env=slurm_env, cwd=REPO_ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    last = proc.stdout.strip().splitlines()[-1].split()[-1]
    wait_for(lambda: job_state(slurm_env, last) in ("COMPLETED", "FAILED", "CANCELLED", "GONE"), 600, "the join job")
    logs = "\n".join(p.read_text() for p in sorted(tmp_path.glob("dedup*.out")))
    assert job_state(slurm_env, last) in ("COMPLETED", "GONE"), logs[-3000:]
    assert logs.count("step exited rc=0") == 2 + 3 + 1 + 2 + 1, logs[-3000:]
    for name in ("documents.jsonl", "rejects.jsonl", "report.json"):
        assert (out / name).read_bytes() == (ref / name).read_bytes(), name
