"""Run a function in N local processes joined in a gloo group: the multi-process harness for CPU tests.

Tests (models, training, checkpoints) need "the same computation under TP=2 / PP=2" on a laptop. This starts
``world_size`` fresh interpreters with torchrun's environment variables (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT`` on a free port), so code under test initialises exactly as
it would under torchrun (``megatron_huatuo.runtime.distributed.initialize``), and returns every rank's result.

``fn`` must be importable by name (a module-level function) because the workers are spawned, not forked.
Results travel back through ``torch.save`` files in a temporary directory, so they may hold tensors.
"""
from __future__ import annotations

import os
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable, List, Sequence

import torch
import torch.multiprocessing as mp

from megatron_huatuo.runtime.distributed import destroy, free_port


def _worker(local_rank: int, fn: Callable, args: Sequence[Any], world_size: int, port: int, out_dir: str,
            threads: int) -> None:
    os.environ.update(
        RANK=str(local_rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(local_rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(threads)
    out = Path(out_dir) / f"rank{local_rank}.pt"
    try:
        result = fn(*args)
        torch.save({"ok": True, "result": result}, out)
    except BaseException:  # report any failure to the parent, then let the process die with it
        torch.save({"ok": False, "error": traceback.format_exc()}, out)
        raise
    finally:
        destroy()


def run_distributed(fn: Callable, world_size: int = 2, args: Sequence[Any] = (), threads: int = 1,
                    timeout: float = 300.0) -> List[Any]:
    """Call ``fn(*args)`` in ``world_size`` spawned processes; return their results ordered by rank.

    Raises ``RuntimeError`` with the failing ranks' tracebacks when any rank fails, and kills every rank
    still running after ``timeout`` seconds (a deadlocked collective must fail a test, not hang it).
    """
    with tempfile.TemporaryDirectory(prefix="huatuo-spawn-") as out_dir:
        error = None
        context = mp.start_processes(
            _worker,
            args=(fn, tuple(args), world_size, free_port(), out_dir, threads),
            nprocs=world_size,
            join=False,
            start_method="spawn",
        )
        deadline = time.monotonic() + timeout
        try:
            while not context.join(timeout=1.0):
                if time.monotonic() > deadline:
                    error = TimeoutError(f"ranks still running after {timeout:.0f} s; killed")
                    break
        except Exception as exc:  # ProcessRaisedException / ProcessExitedException
            error = exc
        finally:
            for process in context.processes:
                if process.is_alive():
                    process.kill()
                process.join()
        results, failures = [], []
        for rank in range(world_size):
            path = Path(out_dir) / f"rank{rank}.pt"
            if not path.exists():
                failures.append(f"rank {rank}: exited without a result")
                continue
            payload = torch.load(path, weights_only=False)
            if payload["ok"]:
                results.append(payload["result"])
            else:
                failures.append(f"rank {rank}:\n{payload['error']}")
        if failures or error is not None:
            details = failures + ([str(error)] if isinstance(error, TimeoutError) or not failures else [])
            raise RuntimeError("distributed run failed:\n" + "\n".join(details))
        return results
