"""``python -m megatron_huatuo.slurm shards``: a job array over ``--shard i/n``, further stages, and a merge job.

    python -m megatron_huatuo.slurm shards --shards 8 [--then "[N:] MODULE ARGS" ...] \\
        [--merge "preprocessing prepare-merge --out prep --shards 8"] \\
        [--cpus-per-task 8] [--time 4:00:00] [--partition p] [--sbatch-arg=--mem=64G] [--dry-run] \\
        -- preprocessing prepare --sources sources.yaml --out prep

Every array task runs ``slurm/step.sbatch MODULE ARGS --shard ${SLURM_ARRAY_TASK_ID}/${SLURM_ARRAY_TASK_COUNT}``
(the step script expands the two literals per task, requeues only its own task on pre-emption). A stage whose
arguments contain ``{task}`` gets that literal there instead of a ``--shard`` at the end (e.g. ``--partition
{task}``). Each ``--then`` stage (in order; ``N:`` makes it an array of N tasks, else one job) and then the merge are
submitted with ``--dependency=afterok:<previous job>``: a stage starts once every task of the one before has
succeeded (a requeued task delays it; a failed one leaves it pending with reason DependencyNeverSatisfied, never
running on partial output). ``sbatch`` gets argument lists, never a shell string, and ``--dry-run`` prints
shlex-quoted commands.
"""
from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

REPO_ROOT = Path(__file__).resolve().parents[2]
STEP = REPO_ROOT / "slurm" / "step.sbatch"
SHARD_ARG = "${SLURM_ARRAY_TASK_ID}/${SLURM_ARRAY_TASK_COUNT}"
TASK = "{task}"
ARRAY_ID = "<ARRAY_JOB_ID>"
_STAGE = re.compile(r"^\s*(\d+)\s*:(.*)$", re.S)


class ShardsError(ValueError):
    """A sharded submission that cannot work; the message says why."""


@dataclass
class Stage:
    """One job of the chain: ``tasks`` array tasks (None: a single job) running ``argv`` (MODULE ARGS)."""

    tasks: Optional[int]
    argv: List[str]

    @classmethod
    def parse(cls, spec: str) -> "Stage":
        """``"32: MODULE ARGS"`` (an array of 32) or ``"MODULE ARGS"`` (one job); ARGS shell-split."""
        m = _STAGE.match(spec)
        tasks, rest = (int(m.group(1)), m.group(2)) if m else (None, spec)
        return cls(tasks, shlex.split(rest))


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


def _job_id(k: int) -> str:
    """The placeholder for the job id of stage k (0: the first array) until it is submitted."""
    return ARRAY_ID if k == 0 else f"<STAGE{k}_JOB_ID>"


def _stage_command(stage: Stage, k: int, name: str, args) -> list:
    if not stage.argv:
        raise ShardsError(f"stage {k + 1} has no command (MODULE ARGS)")
    argv = list(stage.argv)
    if stage.tasks is not None:
        if stage.tasks < 1:
            raise ShardsError(f"stage {k + 1}: an array needs at least 1 task, got {stage.tasks}")
        if any(TASK in a for a in argv):
            argv = [a.replace(TASK, SHARD_ARG) for a in argv]
        elif _value_of(argv, "--shard") is not None:
            raise ShardsError(f"stage {k + 1}: the stage command must not carry --shard: each array task gets its own")
        else:
            argv += ["--shard", SHARD_ARG]
    head = ["sbatch", "--parsable"]
    if k:
        head.append(f"--dependency=afterok:{_job_id(k - 1)}")
    if stage.tasks is not None:
        head.append(f"--array=0-{stage.tasks - 1}")
    return head + [f"--job-name={name}", *_common(args), str(STEP), *argv]


def chain(stages: Sequence[Stage], args) -> list[list]:
    """The sbatch argv of every stage, in order; stage k > 0 depends on ``_job_id(k - 1)``."""
    if not stages or not stages[0].argv:
        raise ShardsError("no stage command after '--' (e.g. -- preprocessing prepare --sources s.yaml --out prep)")
    names = [args.job_name] + [f"{args.job_name}-{k}" for k in range(1, len(stages))]
    if len(stages) > 1 and stages[-1].tasks is None and getattr(args, "merge", None):
        names[-1] = f"{args.job_name}-merge"
    return [_stage_command(s, k, n, args) for k, (s, n) in enumerate(zip(stages, names))]


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m megatron_huatuo.slurm shards", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shards", type=int, required=True, help="array size n (tasks get --shard i/n)")
    ap.add_argument("--then", action="append", default=[], metavar='"[N:] MODULE ARGS"',
                    help="a further stage after the array, in order (repeatable): 'N:' makes it an array of N tasks "
                         "(each gets --shard i/N, or {task} replaced), else one job; each waits for the previous")
    ap.add_argument("--merge", default=None, help="the last step's MODULE ARGS as one string (shell-split)")
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
        if args.shards < 1:
            raise ShardsError(f"--shards must be >= 1, got {args.shards}")
        merge = shlex.split(args.merge) if args.merge else []
        declared = _value_of(merge, "--shards") if merge else None
        if declared is not None and declared != str(args.shards):
            raise ShardsError(f"the merge command says --shards {declared} but the array has {args.shards} shards")
        stages = [Stage(args.shards, argv[cut + 1:])] + [Stage.parse(t) for t in args.then]
        stages += [Stage(None, merge)] if merge else []
        cmds = chain(stages, args)
    except ShardsError as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 2
    later = len(cmds) - 1 - (1 if merge else 0)
    print(f"# {args.shards} array task(s)" + (f", then {later} further stage(s)" if later else "")
          + (", then the merge once all succeeded" if merge else ""))
    for cmd in cmds:
        print(shlex.join(cmd))
    if args.dry_run:
        return 0
    ids: list[str] = []
    for k, cmd in enumerate(cmds):
        if k:
            cmd = [a.replace(_job_id(k - 1), ids[-1]) for a in cmd]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            print(done.stderr, file=sys.stderr, end="")
            return done.returncode
        ids.append(done.stdout.strip().split(";")[0])
        kind = "array job" if k == 0 else ("merge job" if merge and k == len(cmds) - 1 else f"stage {k + 1} job")
        print(f"{kind} {ids[-1]}")
    return 0
