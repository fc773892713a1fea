"""``python -m megatron_huatuo.slurm shards``: a job array over ``--shard i/n`` and its dependent merge job.

    python -m megatron_huatuo.slurm shards --shards 8 [--merge "preprocessing prepare-merge --out prep --shards 8"] \\
        [--cpus-per-task 8] [--time 4:00:00] [--partition p] [--sbatch-arg=--mem=64G] [--dry-run] \\
        -- preprocessing prepare --sources sources.yaml --out prep

Every array task runs ``slurm/step.sbatch MODULE ARGS --shard ${SLURM_ARRAY_TASK_ID}/${SLURM_ARRAY_TASK_COUNT}``
(the step script expands the two literals per task, requeues only its own task on pre-emption). The merge job is
submitted with ``--dependency=afterok:<array job>``: it starts once every shard has succeeded (a requeued shard
delays it; a failed shard leaves it pending with reason DependencyNeverSatisfied, never merging partial output).
``sbatch`` gets argument lists, never a shell string, and ``--dry-run`` prints shlex-quoted commands.
"""
from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from pathlib import Path
from typing import List, Optional, Sequence

REPO_ROOT = Path(__file__).resolve().parents[2]
STEP = REPO_ROOT / "slurm" / "step.sbatch"
SHARD_ARG = "${SLURM_ARRAY_TASK_ID}/${SLURM_ARRAY_TASK_COUNT}"
ARRAY_ID = "<ARRAY_JOB_ID>"


class ShardsError(ValueError):
    """A sharded submission that cannot work; the message says why."""


def _common(args) -> List[str]:
    opts = [f"--cpus-per-task={args.cpus_per_task}"]
    if args.time:
        opts.append(f"--time={args.time}")
    if args.partition:
        opts.append(f"--partition={args.partition}")
    return opts + list(args.sbatch_arg or [])


def _value_of(argv: Sequence[str], flag: str) -> Optional[str]:
    for i, a in enumerate(argv):
        if a == flag and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    return None


def commands(stage: Sequence[str], merge: Sequence[str], shards: int, args) -> tuple[list, Optional[list]]:
    """The array's and the merge's sbatch argv (the merge's dependency names ``ARRAY_ID`` until submitted)."""
    if shards < 1:
        raise ShardsError(f"--shards must be >= 1, got {shards}")
    if not stage:
        raise ShardsError("no stage command after '--' (e.g. -- preprocessing prepare --sources s.yaml --out prep)")
    if _value_of(stage, "--shard") is not None:
        raise ShardsError("the stage command must not carry --shard: each array task gets its own")
    declared = _value_of(merge, "--shards") if merge else None
    if declared is not None and declared != str(shards):
        raise ShardsError(f"the merge command says --shards {declared} but the array has {shards} shards")
    array = ["sbatch", "--parsable", f"--array=0-{shards - 1}", f"--job-name={args.job_name}", *_common(args),
             str(STEP), *stage, "--shard", SHARD_ARG]
    merge_cmd = None
    if merge:
        merge_cmd = ["sbatch", "--parsable", f"--dependency=afterok:{ARRAY_ID}", f"--job-name={args.job_name}-merge",
                     *_common(args), str(STEP), *merge]
    return array, merge_cmd


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m megatron_huatuo.slurm shards", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shards", type=int, required=True, help="array size n (tasks get --shard i/n)")
    ap.add_argument("--merge", default=None, help="the merge step's MODULE ARGS as one string (shell-split)")
    ap.add_argument("--job-name", default="huatuo-shards")
    ap.add_argument("--cpus-per-task", type=int, default=8)
    ap.add_argument("--time", default=None)
    ap.add_argument("--partition", default=None)
    ap.add_argument("--sbatch-arg", action="append", help="any further sbatch option, e.g. --sbatch-arg=--mem=64G")
    ap.add_argument("--dry-run", action="store_true", help="print the sbatch commands and submit nothing")
    return ap


def main(argv: Sequence[str]) -> int:
    argv = list(argv)
    if "--" not in argv:
        parser().error("put the stage command after '--': ... -- MODULE ARGS")
    cut = argv.index("--")
    args = parser().parse_args(argv[:cut])
    try:
        array, merge = commands(argv[cut + 1:], shlex.split(args.merge) if args.merge else [], args.shards, args)
    except ShardsError as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 2
    print(f"# {args.shards} array task(s)" + (", then the merge once all succeeded" if merge else ""))
    print(shlex.join(array))
    if merge:
        print(shlex.join(merge))
    if args.dry_run:
        return 0
    done = subprocess.run(array, capture_output=True, text=True)
    if done.returncode:
        print(done.stderr, file=sys.stderr, end="")
        return done.returncode
    array_id = done.stdout.strip().split(";")[0]
    print(f"array job {array_id}")
    if merge:
        merge = [a.replace(ARRAY_ID, array_id) for a in merge]
        done = subprocess.run(merge, capture_output=True, text=True)
        if done.returncode:
            print(done.stderr, file=sys.stderr, end="")
            return done.returncode
        print(f"merge job {done.stdout.strip().split(';')[0]}")
    return 0
