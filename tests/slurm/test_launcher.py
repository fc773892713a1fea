"""The submit launcher: layout from TP x PP x DP, refusal of impossible layouts, quoting (no Slurm needed)."""
from __future__ import annotations

import shlex
import subprocess
import sys

from huatuo_testing import REPO_ROOT

RECIPES = REPO_ROOT / "megatron_huatuo" / "recipes"


def submit(*args):
    return subprocess.run([sys.executable, "-m", "megatron_huatuo.slurm", "submit", *map(str, args), "--dry-run"],
                          capture_output=True, text=True, cwd=REPO_ROOT)


def test_yi_34b_on_four_nodes_with_a_hostile_override_kept_as_one_argument():
    override = "checkpoint.dir=/lustre/my ckpts/yi;rm -rf $HOME"
    proc = submit(RECIPES / "yi-34b.yaml", "--data-parallel", 2, override)
    assert proc.returncode == 0, proc.stderr
    comment, command = proc.stdout.strip().splitlines()
    assert comment == "# 4 node(s) x 8 tasks = world 32 (TP 8 x PP 2 x DP 2)"
    argv = shlex.split(command)
    assert argv[:5] == ["sbatch", "--nodes=4", "--ntasks-per-node=8", "--job-name=huatuo-train", "--gpus-per-node=8"]
    assert argv[-3:] == [str(REPO_ROOT / "slurm" / "train.sbatch"), str(RECIPES / "yi-34b.yaml"), override]


def test_small_world_fits_one_node():
    proc = submit(RECIPES / "tiny-baichuan2-7b-tp2.yaml", "--gpus-per-node", 8, "--cpu")
    assert proc.returncode == 0, proc.stderr
    assert shlex.split(proc.stdout.splitlines()[1])[1:3] == ["--nodes=1", "--ntasks-per-node=2"]


def test_impossible_layouts_are_refused_naming_the_reason():
    proc = submit(RECIPES / "baichuan2-7b.yaml", "--data-parallel", 3)
    assert proc.returncode == 2 and "refused:" in proc.stderr and "global_batch" in proc.stderr
    proc = submit(RECIPES / "yi-34b.yaml", "--data-parallel", 1, "--gpus-per-node", 6)
    assert proc.returncode == 2 and "does not fill whole nodes of 6 GPUs" in proc.stderr


def shards(*args):
    return subprocess.run([sys.executable, "-m", "megatron_huatuo.slurm", "shards", *map(str, args)],
                          capture_output=True, text=True, cwd=REPO_ROOT)


def test_shards_array_then_dependent_merge_with_quoting_kept():
    out_dir = "/lustre/prep dir;x"
    proc = shards("--shards", 4, "--merge", f"preprocessing prepare-merge --out '{out_dir}' --shards 4", "--dry-run",
                  "--sbatch-arg=--mem=32G", "--", "preprocessing", "prepare", "--sources", "s.yaml", "--out", out_dir)
    assert proc.returncode == 0, proc.stderr
    _, array, merge = proc.stdout.strip().splitlines()
    array, merge = shlex.split(array), shlex.split(merge)
    step = str(REPO_ROOT / "slurm" / "step.sbatch")
    assert array[:3] == ["sbatch", "--parsable", "--array=0-3"] and "--mem=32G" in array
    assert array[array.index(step) + 1:] == ["preprocessing", "prepare", "--sources", "s.yaml", "--out", out_dir,
                                             "--shard", "${SLURM_ARRAY_TASK_ID}/${SLURM_ARRAY_TASK_COUNT}"]
    assert "--dependency=afterok:<ARRAY_JOB_ID>" in merge
    assert merge[merge.index(step) + 1:] == ["preprocessing", "prepare-merge", "--out", out_dir, "--shards", "4"]


def test_shards_refuses_inconsistent_requests():
    proc = shards("--shards", 3, "--merge", "preprocessing prepare-merge --shards 2", "--dry-run", "--", "preprocessing", "x")
    assert proc.returncode == 2 and "--shards 2 but the array has 3" in proc.stderr
    proc = shards("--shards", 2, "--dry-run", "--", "preprocessing", "prepare", "--shard", "0/2")
    assert proc.returncode == 2 and "must not carry --shard" in proc.stderr


def test_shards_chain_of_stages_each_waiting_for_the_previous():
    proc = shards("--shards", 2, "--dry-run",
                  "--then", "3: preprocessing prepare-dedup pairs --out prep --shards 2 --partition {task}",
                  "--then", "preprocessing prepare-dedup decide --out prep --shards 2 --partitions 3",
                  "--then", "2: preprocessing prepare-dedup write --out prep",
                  "--merge", "preprocessing prepare-dedup join --out prep --shards 2",
                  "--", "preprocessing", "prepare", "--sources", "s.yaml", "--out", "prep", "--dedup-partitions", "3")
    assert proc.returncode == 0, proc.stderr
    comment, *cmds = proc.stdout.strip().splitlines()
    assert comment == "# 2 array task(s), then 3 further stage(s), then the merge once all succeeded"
    cmds = [shlex.split(c) for c in cmds]
    step = str(REPO_ROOT / "slurm" / "step.sbatch")
    task = "${SLURM_ARRAY_TASK_ID}/${SLURM_ARRAY_TASK_COUNT}"
    assert [c[c.index(step) + 1:][-2:] for c in cmds] == [["--shard", task], ["--partition", task],
                                                         ["--partitions", "3"], ["--shard", task], ["--shards", "2"]]
    assert [next((a for a in c if a.startswith("--array=")), None) for c in cmds] == \
        ["--array=0-1", "--array=0-2", None, "--array=0-1", None]
    assert [next((a for a in c if a.startswith("--dependency=")), None) for c in cmds] == \
        [None, "--dependency=afterok:<ARRAY_JOB_ID>", "--dependency=afterok:<STAGE1_JOB_ID>",
         "--dependency=afterok:<STAGE2_JOB_ID>", "--dependency=afterok:<STAGE3_JOB_ID>"]
    proc = shards("--shards", 2, "--dry-run", "--then", "2: preprocessing x --shard 0/2", "--", "preprocessing", "y")
    assert proc.returncode == 2 and "stage 2: the stage command must not carry --shard" in proc.stderr
