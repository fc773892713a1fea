"""SIGTERM/SIGUSR1 -> "stop after this step": the loop finishes the step, saves a checkpoint and exits 75.

Slurm sends SIGUSR1 (``--signal``) before the time limit and SIGTERM on pre-emption. The handler only sets a flag;
the loop all-reduces it (MAX) after every step so that all ranks agree on the same last step even when the signal
reaches them at slightly different moments.
"""
from __future__ import annotations

import signal
from typing import Optional

EXIT_REQUEUE = 75  # EX_TEMPFAIL: the Slurm scripts requeue on this code


class StopRequest:
    def __init__(self, signals=(signal.SIGTERM, signal.SIGUSR1)):
        self.received: Optional[int] = None
        self._previous = {}
        for sig in signals:
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame):  # noqa: ARG002 - signal handler signature
        self.received = signum

    def agreed(self) -> bool:
        """True on every rank when any rank received a stop signal (collective: call on all ranks)."""
        import torch
        import torch.distributed as dist

        flag = torch.tensor([1 if self.received is not None else 0], dtype=torch.int32)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
