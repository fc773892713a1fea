"""A tiny data-parallel trainer that honours the trainer contract, for exercising slurm/train.sbatch.

The contract (docs/training.md) is: ``python -m <module> --config recipe.yaml [key=value ...]``, ranks from the
launcher's environment, on SIGUSR1/SIGTERM finish the step, save a complete checkpoint and exit 75, and resume
from the latest complete checkpoint on the next start. This stand-in keeps to exactly that with a 2-rank gloo
linear regression, so the Slurm tests measure the batch script (signal forwarding, requeue, append logs) in
seconds. Ranks come from ``megatron_huatuo.runtime.read_launch_env`` - the same Slurm-variable parsing the real
trainer uses. Once ``megatron_huatuo.train`` exists the tests run it too (see test_training_jobs.py).
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import yaml

from megatron_huatuo.runtime.distributed import read_launch_env

EXIT_REQUEUE = 75


def parse(argv: list[str]) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)
    cfg = yaml.safe_load(Path(args.config).read_text()) or {}
    for item in args.overrides:
        key, _, value = item.partition("=")
        cfg[key] = yaml.safe_load(value)
    return cfg


def latest_complete(save_dir: Path) -> Path | None:
    done = [p for p in save_dir.glob("step_*") if (p / "COMPLETE").exists()]
    return max(done, key=lambda p: int(p.name.split("_")[1]), default=None)


def main(argv: list[str] | None = None) -> int:
    cfg = parse(sys.argv[1:] if argv is None else argv)
    stop = {"sig": 0}
    signal.signal(signal.SIGUSR1, lambda s, f: stop.update(sig=s))
    signal.signal(signal.SIGTERM, lambda s, f: stop.update(sig=s))

    env = read_launch_env()
    dist.init_process_group("gloo", init_method=f"tcp://{env.master_addr}:{env.master_port}", rank=env.rank,
                            world_size=env.world_size, timeout=timedelta(minutes=2))
    rank, world = dist.get_rank(), dist.get_world_size()
    save_dir = Path(cfg["save_dir"])
    steps, interval, pause = int(cfg.get("steps", 20)), int(cfg.get("save_interval", 5)), float(cfg.get("step_sleep", 0))

    torch.manual_seed(int(cfg.get("seed", 0)))
    model = torch.nn.Linear(8, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    start = 0
    ckpt = latest_complete(save_dir)
    if ckpt is not None:
        state = torch.load(ckpt / f"rank{rank}.pt")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        start = state["step"]
    print(f"rank {rank}/{world} local {env.local_rank} via {env.launcher} restart="
          f"{os.environ.get('SLURM_RESTART_COUNT', '0')} resume_step={start}", flush=True)

    def save(step: int) -> None:
        path = save_dir / f"step_{step}"
        path.mkdir(parents=True, exist_ok=True)
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step}, path / f"rank{rank}.pt")
        dist.barrier()
        if rank == 0:
            (path / "COMPLETE").write_text("ok\n")
        dist.barrier()

    target = torch.arange(8, dtype=torch.float32)
    loss = torch.tensor(0.0)
    for step in range(start, steps):
        gen = torch.Generator().manual_seed(1000 * step + rank)
        x = torch.randn(16, 8, generator=gen)
        loss = torch.nn.functional.mse_loss(model(x).squeeze(-1), x @ target)
        opt.zero_grad()
        loss.backward()
        for p in model.parameters():
            dist.all_reduce(p.grad)
            p.grad /= world
        opt.step()
        reduced = loss.detach().clone()
        dist.all_reduce(reduced)
        if rank == 0:
            print(f"step {step + 1} loss {reduced.item() / world:.8f}", flush=True)
        time.sleep(pause)
        flag = torch.tensor(float(stop["sig"] != 0))
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if (step + 1) % interval == 0 or flag.item() > 0 or step + 1 == steps:
            save(step + 1)
        if flag.item() > 0 and step + 1 < steps:
            print(f"rank {rank}: stop signal, saved step {step + 1}, exiting {EXIT_REQUEUE}", flush=True)
            dist.barrier()  # no rank tears gloo down while another still talks to it (seen: abort at exit)
            dist.destroy_process_group()
            return EXIT_REQUEUE
    final = loss.detach().clone()
    dist.all_reduce(final)
    if rank == 0:
        (save_dir / "final_loss.txt").write_text(f"{final.item() / world:.8f}\n")
        print(f"final_loss {final.item() / world:.8f}", flush=True)
    dist.barrier()  # no rank tears gloo down while another still talks to it (seen: abort at exit)
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
