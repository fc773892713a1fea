"""``python -m megatron_huatuo.slurm submit RECIPE.yaml [--data-parallel N] [--gpus-per-node 8] [--dry-run]``.

(``python -m megatron_huatuo.slurm shards ...`` submits a sharded job array and its merge: ``shards.py``.)

Nodes and tasks come from the recipe's TP x PP and the data-parallel size asked for: world = TP x PP x DP, one
task per GPU; a world larger than a node must fill whole nodes. The recipe is validated for that world size
(heads, layers, batch divisibility, data paths) before anything is submitted, so an impossible layout is refused
with the recipe's own message. ``sbatch`` gets its arguments as a list (no shell), and the printed command is
quoted with ``shlex``, so paths with spaces or shell metacharacters stay one argument.
"""
from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from megatron_huatuo.config.recipe import RecipeError, load_recipe

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Layout:
    nodes: int
    tasks_per_node: int
    gpus_per_node: int
    world_size: int


def plan(tp: int, pp: int, dp: int, gpus_per_node: int) -> Layout:
    world = tp * pp * dp
    if world <= gpus_per_node:
        return Layout(1, world, world, world)
    if world % gpus_per_node:
        raise RecipeError(f"TP x PP x DP = {tp} x {pp} x {dp} = {world} GPUs does not fill whole nodes of "
                          f"{gpus_per_node} GPUs")
    return Layout(world // gpus_per_node, gpus_per_node, gpus_per_node, world)


def sbatch_command(recipe_path: str, overrides: list[str], layout: Layout, args) -> list[str]:
    cmd = ["sbatch", f"--nodes={layout.nodes}", f"--ntasks-per-node={layout.tasks_per_node}",
           f"--job-name={args.job_name}"]
    if not args.cpu:
        cmd.append(f"--gpus-per-node={layout.gpus_per_node}")
    if args.time:
        cmd.append(f"--time={args.time}")
    if args.partition:
        cmd.append(f"--partition={args.partition}")
    cmd += list(args.sbatch_arg or [])
    cmd += [str(REPO_ROOT / "slurm" / "train.sbatch"), str(Path(recipe_path).resolve()), *overrides]
    return cmd


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["shards"]:
        from megatron_huatuo.slurm.shards import main as shards_main

        return shards_main(argv[1:])
    ap = argparse.ArgumentParser(prog="python -m megatron_huatuo.slurm", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    sub.add_parser("shards", help="a job array over --shard i/n and its dependent merge (see shards.py)",
                   add_help=False)
    s = sub.add_parser("submit", help="submit slurm/train.sbatch for a recipe")
    s.add_argument("recipe")
    s.add_argument("overrides", nargs="*", help="section.key=value, passed to the trainer")
    s.add_argument("--data-parallel", type=int, default=1)
    s.add_argument("--gpus-per-node", type=int, default=8)
    s.add_argument("--cpu", action="store_true", help="no --gpus-per-node (CPU/gloo test clusters)")
    s.add_argument("--job-name", default="huatuo-train")
    s.add_argument("--time", default=None)
    s.add_argument("--partition", default=None)
    s.add_argument("--sbatch-arg", action="append", help="any further sbatch option, e.g. --sbatch-arg=--exclusive")
    s.add_argument("--dry-run", action="store_true", help="print the sbatch command and submit nothing")
    args, extra = ap.parse_known_args(argv)
    bad = [a for a in extra if a.startswith("-") or "=" not in a]
    if bad:
        ap.error(f"unrecognized arguments: {' '.join(bad)}")
    args.overrides = list(args.overrides) + extra  # overrides may also follow the options
    try:
        probe = load_recipe(args.recipe, args.overrides)
        tp, pp = probe.parallel.tp, probe.parallel.pp
        layout = plan(tp, pp, args.data_parallel, args.gpus_per_node)
        load_recipe(args.recipe, args.overrides, world_size=layout.world_size)
    except RecipeError as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 2
    cmd = sbatch_command(args.recipe, args.overrides, layout, args)
    print(f"# {layout.nodes} node(s) x {layout.tasks_per_node} tasks = world {layout.world_size} "
          f"(TP {tp} x PP {pp} x DP {args.data_parallel})")
    print(shlex.join(cmd))
    if args.dry_run:
        return 0
    return subprocess.run(cmd).returncode
