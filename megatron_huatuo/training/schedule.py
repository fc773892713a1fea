"""One call of megatron-core's pipeline schedule over a list of micro-batches, for training steps and validation.

Every model chunk (one per virtual pipeline stage) reads its own iterator over the same micro-batches, and the
schedule's message shape is the attention backend's (``models/attention/segments.schedule_shape``: THD rows are
sent as ``[B*S, 1, H]``), so both callers must pass it the same way.
"""
from __future__ import annotations

from typing import Callable, List, Sequence, Tuple


def run_micro_batches(forward_step: Callable, micro_batches: Sequence[dict], models: List, shape: Tuple[int, int],
                      forward_only: bool) -> list:
    """``forward_backward_func`` over ``micro_batches``; returns its per-micro-batch outputs (last stage)."""
    from megatron.core.pipeline_parallel import get_forward_backward_func

    iterators = [iter(micro_batches) for _ in models]
    return get_forward_backward_func()(
        forward_step_func=forward_step,
        data_iterator=iterators if len(models) > 1 else iterators[0],
        model=models if len(models) > 1 else models[0],
        num_microbatches=len(micro_batches), seq_length=shape[0], micro_batch_size=shape[1],
        forward_only=forward_only)
