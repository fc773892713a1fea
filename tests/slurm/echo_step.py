"""A stand-in pipeline step for slurm/step.sbatch tests: records its shard and start, optionally sleeps, then
writes its output through tmp + rename (as every real step does)."""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

ap = argparse.ArgumentParser()
ap.add_argument("--shard", required=True)
ap.add_argument("--out", required=True)
ap.add_argument("--sleep", type=float, default=0.0)
args = ap.parse_args()
out = Path(args.out)
out.mkdir(parents=True, exist_ok=True)
index, count = args.shard.split("/")
with open(out / f"starts-{index}.log", "a") as fh:
    fh.write(f"restart={os.environ.get('SLURM_RESTART_COUNT', '0')}\n")
restarted = os.environ.get("SLURM_RESTART_COUNT", "0") != "0"
if not restarted:
    time.sleep(args.sleep)
tmp = out / f"shard-{index}-of-{count}.txt.tmp"
tmp.write_text(f"{index}/{count}\n")
tmp.replace(out / f"shard-{index}-of-{count}.txt")
