"""slurm/train.sbatch on a real local Slurm cluster: pre-emption signal -> checkpoint -> requeue -> exact resume.

The reference is the same 2-rank job run without interruption: a job that is stopped by USR1, requeued by the
batch script and resumed from its checkpoint must end with the identical loss. The trainer is the small
contract trainer beside this file (same launch contract as ``megatron_huatuo.train``), so the test measures the
batch script, not model speed. The cluster comes from ``scripts/local_slurm.sh`` (Debian packages, no systemd);
the tests skip, naming the reason, where it cannot be started (not root, no apt).
"""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from huatuo_testing import REPO_ROOT
from slurm_harness import job_state, node_count, wait_for

pytestmark = pytest.mark.slurm


def sbatch(env, tmp: Path, name: str, overrides: list[str]) -> str:
    recipe = tmp / f"{name}.yaml"
    recipe.write_text(f"save_dir: {tmp / name}\nsteps: 12\nsave_interval: 100\nseed: 3\n")
    out = subprocess.run(
        ["sbatch", "--parsable", f"--job-name={name}", "--nodes=1", "--ntasks=2", "--ntasks-per-node=2",
         "--cpus-per-task=1", f"--output={tmp}/{name}-%j.out", f"--chdir={REPO_ROOT}",
         str(REPO_ROOT / "slurm" / "train.sbatch"), str(recipe), *overrides],
        env=env, capture_output=True, text=True, check=True, cwd=tmp,
    )
    return out.stdout.strip().split(";")[0]


@pytest.mark.slow  # the same batch-script path is in the default suite with the real trainer (below)
def test_usr1_saves_requeues_and_resumes_to_the_same_loss(slurm_env, tmp_path):
    env = dict(slurm_env, HUATUO_LOG_DIR=str(tmp_path / "logs"))
    tmp_path.chmod(0o777)
    ref = sbatch(env, tmp_path, "ref", [])
    wait_for(lambda: job_state(env, ref) in ("COMPLETED", "FAILED", "GONE"), 180, "the reference job")
    assert job_state(env, ref) in ("COMPLETED", "GONE"), (tmp_path / f"ref-{ref}.out").read_text()
    ref_loss = (tmp_path / "ref" / "final_loss.txt").read_text()

    job = sbatch(env, tmp_path, "pre", ["step_sleep=0.5"])
    log = tmp_path / f"pre-{job}.out"
    rank_log = tmp_path / "logs" / f"pre-{job}" / "rank-0.log"
    wait_for(lambda: rank_log.exists() and "step 3 " in rank_log.read_text(), 120, "three training steps")
    subprocess.run(["scancel", "--signal=USR1", "--batch", job], env=env, check=True)
    wait_for(lambda: log.exists() and "requeueing job" in log.read_text(), 120, "the requeue")
    wait_for(lambda: (tmp_path / "pre" / "final_loss.txt").exists(), 240, "the requeued run to finish")

    text = log.read_text()
    assert "trainer exited rc=75" in text
    ranks = rank_log.read_text()
    assert re.search(r"restart=1 resume_step=([1-9]\d*)", ranks), ranks
    assert (tmp_path / "pre" / "final_loss.txt").read_text() == ref_loss


def test_step_array_expands_shards_and_requeues_a_stopped_task(slurm_env, tmp_path):
    env = dict(slurm_env)
    tmp_path.chmod(0o777)
    out = tmp_path / "out"
    job = subprocess.run(
        ["sbatch", "--parsable", "--array=0-1", "--cpus-per-task=1", f"--output={tmp_path}/step-%A_%a.out",
         f"--chdir={REPO_ROOT}", str(REPO_ROOT / "slurm" / "step.sbatch"), "slurm.echo_step",
         "--shard", "${SLURM_ARRAY_TASK_ID}/${SLURM_ARRAY_TASK_COUNT}", "--out", str(out), "--sleep", "30"],
        env=env, capture_output=True, text=True, check=True,
    ).stdout.strip().split(";")[0]
    wait_for(lambda: (out / "starts-1.log").exists(), 60, "array task 1 to start")
    subprocess.run(["scancel", "--signal=USR1", "--batch", f"{job}_1"], env=env, check=True)
    wait_for(lambda: (out / "shard-0-of-2.txt").exists() and (out / "shard-1-of-2.txt").exists(), 180,
             "both shards")
    assert (out / "shard-1-of-2.txt").read_text() == "1/2\n"
    assert (out / "starts-1.log").read_text().splitlines() == ["restart=0", "restart=1"]
    assert (out / "starts-0.log").read_text().splitlines() == ["restart=0"]


def _losses(log: Path) -> dict[int, float]:
    """step -> loss from the trainer's "train {json}" lines (a requeued run appends to the same log)."""
    import json

    out = {}
    for line in log.read_text(errors="replace").splitlines():
        head, sep, body = line.partition("train {")
        if sep and not head.strip():
            record = json.loads("{" + body)
            out[record["step"]] = record["loss"]
    return out


STEPS = 150  # ~0.07 s each on 2 CPU ranks: long enough for the signal to land mid-run


def _preemption_save(log: Path) -> int | None:
    """The iteration of the first checkpoint saved before the last step: the one the stop signal caused."""
    for match in re.finditer(r"saved checkpoint iteration (\d+)", log.read_text(errors="replace")):
        if int(match.group(1)) < STEPS:
            return int(match.group(1))
    return None


def test_real_trainer_preempted_on_slurm_resumes_to_the_same_losses(slurm_env, tmp_path):
    """megatron_huatuo.train itself (tiny Baichuan2, TP=2, gloo) under train.sbatch: USR1 -> exit 75 -> requeue.

    The reference job runs across two (fake) nodes, one rank each: the rendezvous goes to the first host of the
    allocation and ranks come from SLURM_PROCID. The pre-empted job runs both ranks on one node. Same TP=2 layout,
    so both must give the identical loss at every step.
    """
    env = dict(slurm_env, HUATUO_LOG_DIR=str(tmp_path / "logs"))
    env.pop("HUATUO_TRAIN_MODULE")
    tmp_path.chmod(0o777)
    recipe = REPO_ROOT / "megatron_huatuo" / "recipes" / "tiny-baichuan2-7b-tp2.yaml"

    nodes = min(node_count(env), 2)

    def submit(name, nodes=1):
        return subprocess.run(
            ["sbatch", "--parsable", f"--job-name={name}", f"--nodes={nodes}", "--ntasks=2",
             f"--ntasks-per-node={2 // nodes}",
             "--cpus-per-task=1", f"--output={tmp_path}/{name}-%j.out", f"--chdir={REPO_ROOT}",
             str(REPO_ROOT / "slurm" / "train.sbatch"), str(recipe), f"checkpoint.dir={tmp_path / name}",
             f"train.steps={STEPS}", "checkpoint.interval=0"],
            env=env, capture_output=True, text=True, check=True).stdout.strip().split(";")[0]

    ref = submit("ref", nodes)
    wait_for(lambda: job_state(env, ref) in ("COMPLETED", "FAILED", "GONE"), 240, "the reference training job")
    ref_log = tmp_path / "logs" / f"ref-{ref}" / "rank-1.log"  # the trainer logs from the last rank
    ref_losses = _losses(ref_log)
    assert sorted(ref_losses) == list(range(1, STEPS + 1)), ref_log.read_text()[-3000:]
    if nodes == 2:
        batch = (tmp_path / f"ref-{ref}.out").read_text()
        assert "nodes=2" in batch and "master=node1:" in batch, batch

    job = submit("pre")
    rank_log = tmp_path / "logs" / f"pre-{job}" / "rank-1.log"
    wait_for(lambda: rank_log.exists() and 3 in _losses(rank_log), 180, "three training steps")
    subprocess.run(["scancel", "--signal=USR1", "--batch", job], env=env, check=True)
    wait_for(lambda: job_state(env, job) in ("COMPLETED", "FAILED") or STEPS in _losses(rank_log), 300,
             "the requeued training job to finish")
    batch_log = (tmp_path / f"pre-{job}.out").read_text()
    assert "trainer exited rc=75" in batch_log and "requeueing job" in batch_log, batch_log
    losses = _losses(rank_log)
    assert _preemption_save(rank_log) is not None, "the signal came too late to test a resume"
    assert losses == ref_losses, (losses, ref_losses)
