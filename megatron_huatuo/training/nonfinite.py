"""Non-finite guard: a step whose loss or gradient is NaN/Inf is skipped, a run that keeps producing them stops.

Why: megatron-core's fp32/bf16 optimizers (no loss scaler) apply whatever gradient they get. One NaN gradient (a
corrupt batch, an overflow) turns every weight into NaN, and the run then trains on, saves NaN checkpoints and moves
``latest`` onto them while reporting ``skipped: false``. Here, before the optimizer step, every rank checks the norm
of each of its local gradient tensors (non-finite also when the squares overflow, as megatron-core's own grad norm
would) and the last pipeline stage checks the loss; one all-reduce gives every rank the same verdict. A non-finite
step is skipped as Megatron-LM skips an fp16 overflow step: no optimizer update, no scheduler step, the iteration
and the data position move on (the bad batch is consumed). After ``train.max_nonfinite_steps`` consecutive skipped
steps the weights themselves are the likely cause, so the run stops (:class:`NonFiniteError`, exit code 3)
without saving. A checkpoint save refuses a model with any NaN/Inf parameter (:func:`check_finite_parameters`),
so ``latest`` never names one.
"""
from __future__ import annotations

from typing import Iterable, List, Optional

import torch
import torch.distributed as dist

EXIT_NONFINITE = 3
_CHUNK = 2**26  # elements per isfinite() pass: bounds the temporary boolean tensor


class NonFiniteError(RuntimeError):
    """Training cannot continue (or save) because the loss, the gradients or the weights are not finite."""

    exit_code = EXIT_NONFINITE


def _any_rank(flag: bool, device) -> bool:
    """True on every rank when ``flag`` is True on any rank (collective)."""
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def _local_grads(models) -> List[torch.Tensor]:
    """The gradients megatron-core's DDP accumulated (``main_grad``, views into its grad buffers) or ``.grad``."""
    out = []
    for model in models:
        for param in model.parameters():
            grad = getattr(param, "main_grad", None)
            if grad is None:
                grad = param.grad
            if grad is not None:
                out.append(grad)
    return out


def grads_finite(models) -> bool:
    """Whether every local gradient tensor has a finite 2-norm (local: call :class:`NonFiniteGuard` to agree)."""
    grads = _local_grads(models)
    if not grads:
        return True
    norms = torch.stack([torch.linalg.vector_norm(g, dtype=torch.float32) for g in grads])
    return bool(torch.isfinite(norms).all())


def tensors_finite(tensors: Iterable[torch.Tensor]) -> bool:
    for t in tensors:
        flat = t.detach().reshape(-1)
        for start in range(0, flat.numel(), _CHUNK):
            if not bool(torch.isfinite(flat[start:start + _CHUNK]).all()):
                return False
    return True


def check_finite_parameters(chunks, why: str) -> None:
    """Raise :class:`NonFiniteError` on every rank when any rank holds a NaN/Inf parameter (collective)."""
    params = [p for chunk in chunks for p in chunk.parameters()]
    device = params[0].device if params else torch.device("cpu")
    if _any_rank(not tensors_finite(params), device):
        raise NonFiniteError(f"the model has NaN/Inf parameters: {why}")


class NonFiniteGuard:
    """Counts skipped steps; :meth:`step_is_finite` decides a step, :meth:`stop_if_exceeded` ends a run after
    ``limit`` skipped steps in a row."""

    def __init__(self, limit: int, where: str = ""):
        self.limit = limit
        self.where = where  # what to name in the stop message (the checkpoint directory)
        self.streak = 0
        self.total = 0

    def step_is_finite(self, models, loss_sum: Optional[torch.Tensor], device) -> bool:
        """Collective: False on every rank when any rank's gradients or the loss (last stage) are not finite."""
        bad = not grads_finite(models)
        if loss_sum is not None:
            bad = bad or not bool(torch.isfinite(loss_sum).all())
        finite = not _any_rank(bad, device)
        if finite:
            self.streak = 0
        return finite

    def count_skip(self) -> None:
        self.streak += 1
        self.total += 1

    def stop_if_exceeded(self, iteration: int, latest: Optional[int]) -> None:
        """Raise :class:`NonFiniteError` once ``limit`` consecutive steps were skipped (``latest``: for the message)."""
        if self.streak >= self.limit:
            first = iteration - self.streak + 1
            kept = f"the last checkpoint is iteration {latest}" if latest is not None else "no checkpoint was saved"
            raise NonFiniteError(
                f"{self.streak} consecutive steps ({first}-{iteration}) had a NaN/Inf loss or gradient norm "
                f"(train.max_nonfinite_steps={self.limit}): stopping without saving; {kept}{self.where}")
