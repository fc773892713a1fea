"""GPU performance settings of the trainer, in one place: what is on by default on CUDA, and why (docs/training.md).

- Fusions (``train.fusions``, default on with CUDA): megatron-core's fused SwiGLU (``bias_activation_fusion``:
  one kernel instead of silu, multiply and their saved intermediates; ``torch.compile``, no TE or Apex) and its
  fused vocabulary-parallel cross-entropy (``cross_entropy_loss_fusion``, ``native`` implementation); with
  Transformer Engine also the fused RoPE kernel, and with Apex's extension fused weight-gradient accumulation
  (megatron-core's softmax fusion needs Apex/TE kernels and is moot with the sdpa/flex/te attentions).
- Overlap (``parallel.overlap_grad_reduce`` / ``overlap_param_gather``, default on with CUDA; the second only
  with the distributed optimizer): data-parallel gradient reduce-scatter/all-reduce runs bucket by bucket while
  backward continues, and the distributed optimizer's parameter all-gather runs bucket by bucket during the next
  forward, instead of both blocking the step. ``parallel.bucket_size`` sets the bucket (megatron-core's default:
  40M elements, or 1M x DP when larger).
On CPU (gloo; tests) everything stays off unless a recipe asks for it.
"""
from __future__ import annotations

import contextlib
import importlib.util
from dataclasses import dataclass
from typing import List, Optional

import torch


@dataclass(frozen=True)
class PerformanceSettings:
    fusions: bool
    overlap_grad_reduce: bool
    overlap_param_gather: bool
    bucket_size: Optional[int]


def settings(recipe, cuda: Optional[bool] = None) -> PerformanceSettings:
    """The recipe's choices, ``null`` keys filled in for this machine (on with CUDA)."""
    cuda = torch.cuda.is_available() if cuda is None else cuda
    p, t = recipe.parallel, recipe.train
    overlap_param = p.overlap_param_gather if p.overlap_param_gather is not None else cuda and p.distributed_optimizer
    return PerformanceSettings(
        fusions=t.fusions if t.fusions is not None else cuda,
        overlap_grad_reduce=p.overlap_grad_reduce if p.overlap_grad_reduce is not None else cuda,
        overlap_param_gather=overlap_param,
        bucket_size=p.bucket_size,
    )


def fusion_fields(enabled: bool, transformer_impl: str, rope: bool) -> dict:
    """``TransformerConfig`` fields of the fused kernels available with this layer implementation.

    Cross-entropy uses megatron-core's ``native`` fused implementation with or without TE (the same kernel
    everywhere, checked equal to the unfused loss). Fused weight-gradient accumulation needs Apex's
    ``fused_weight_gradient_mlp_cuda`` for the output layer (a megatron-core linear under either spec), so it is
    only turned on where that extension is importable.
    """
    if not enabled:
        return {}
    fields = dict(bias_activation_fusion=True, cross_entropy_loss_fusion=True, cross_entropy_fusion_impl="native")
    if transformer_impl == "transformer_engine":
        fields["apply_rope_fusion"] = rope  # TE's fused RoPE kernel
        if importlib.util.find_spec("fused_weight_gradient_mlp_cuda") is not None:
            fields["gradient_accumulation_fusion"] = True
    return fields


def ddp_fields(perf: PerformanceSettings) -> dict:
    """``DistributedDataParallelConfig`` fields for the overlap settings."""
    return dict(overlap_grad_reduce=perf.overlap_grad_reduce, overlap_param_gather=perf.overlap_param_gather,
                bucket_size=perf.bucket_size)


def install_sync_funcs(config, models: List[torch.nn.Module], perf: PerformanceSettings) -> None:
    """Give megatron-core's pipeline schedules the DDP hooks overlap needs.

    With overlapped gradient reduce, every micro-batch but the last runs under ``no_sync`` (gradients accumulate
    locally; the last backward launches the bucket reductions), and with pipelining the schedule starts each
    chunk's reduce as soon as its last backward is done (``grad_sync_func``). With overlapped parameter gather,
    the schedule starts each chunk's all-gather before its first forward (``param_sync_func``).
    """
    def one_or_list(funcs):
        return funcs[0] if len(funcs) == 1 else funcs

    if perf.overlap_grad_reduce:
        config.no_sync_func = one_or_list([m.no_sync for m in models])
        config.grad_sync_func = one_or_list([m.start_grad_sync for m in models])
    if perf.overlap_param_gather:
        config.param_sync_func = one_or_list([m.start_param_sync for m in models])


@contextlib.contextmanager
def parameters_gathered(models: List[torch.nn.Module], perf: PerformanceSettings):
    """Model parameters complete on every rank inside the block (for saving a checkpoint).

    With overlapped parameter gather, the all-gather of the optimizer's update happens in the *next* forward,
    so right after a step each rank's model holds fresh values only for its own shard; the block gathers them
    synchronously first (as Megatron-LM does around its saves) and re-arms the overlap after.
    """
    if not perf.overlap_param_gather:
        yield
        return
    for model in models:
        model.disable_forward_pre_hook(param_sync=True)
    try:
        yield
    finally:
        for model in models:
            model.enable_forward_pre_hook()
