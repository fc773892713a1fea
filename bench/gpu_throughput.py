"""Trainer throughput on GPUs: runs the real CLI on synthetic data and summarises its per-step metrics.

Usage (one node): python bench/gpu_throughput.py --recipe megatron_huatuo/recipes/baichuan2-7b.yaml --gpus 8 \\
    --steps 20 [dotted.key=value ...]
Reports the median tokens/s, TFLOP/s per GPU and MFU over the steps after --warmup (first steps include
allocation and compilation). Synthetic data and no checkpoints, so only the training step is measured.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", required=True)
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={args.gpus}", "-m", "megatron_huatuo.train",
           "--config", args.recipe, f"train.steps={args.steps}", "data.type=synthetic", "checkpoint.dir=",
           "checkpoint.pretrained=", "logging.interval=1", "logging.tensorboard_dir=", *args.overrides]
    print(" ".join(cmd), flush=True)
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    records = [json.loads(line[6:]) for line in proc.stdout.splitlines() if line.startswith("train {")]
    if proc.returncode != 0 or not records:
        print(proc.stdout[-5000:])
        return proc.returncode or 1
    steady = records[args.warmup:] or records
    summary = {key: statistics.median(r[key] for r in steady) for key in ("tokens_per_s", "tflops_per_gpu", "mfu")
               if all(key in r for r in steady)}
    summary["steps_measured"] = len(steady)
    summary["last_loss"] = records[-1]["loss"]
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
