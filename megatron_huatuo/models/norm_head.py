"""NormHead (Baichuan2): an output layer whose weight rows are L2-normalised in every forward pass.

``logits = h @ normalize(W, dim=1).T``, with ``W`` [vocab, hidden] the stored (trainable) weight. The layer is
megatron-core's ``ColumnParallelLinear`` with a different forward: vocabulary rows are split over tensor-parallel
ranks, so each rank normalises its own rows and no communication is added. The stored weight, its name
(``output_layer.weight``) and its sharded-checkpoint layout are unchanged, so checkpoints and converters treat
it like any untied output layer.

Decision (see docs/models.md): we always normalise in the forward pass, in training and in evaluation, and
store the raw weight. Baichuan's own code normalises every forward in training and, in eval, once at first use
(then reuses the normalised copy); both give logits from the normalised weight, and so do we. An exported raw
weight therefore gives Baichuan's code the same logits in either mode (normalising is idempotent).
"""
from __future__ import annotations

from typing import Optional

import torch
from megatron.core.tensor_parallel import ColumnParallelLinear

NORM_EPS = 1e-12  # torch.nn.functional.normalize's default, which Baichuan's NormHead uses


def normalize_rows(weight: torch.Tensor) -> torch.Tensor:
    """Each row divided by its L2 norm (computed in fp32, returned in the weight's dtype)."""
    w = weight.float()
    return torch.nn.functional.normalize(w, p=2.0, dim=1, eps=NORM_EPS).to(weight.dtype)


class NormHeadColumnParallelLinear(ColumnParallelLinear):
    """``ColumnParallelLinear`` that multiplies by the row-normalised weight."""

    def forward(self, input_: torch.Tensor, weight: Optional[torch.Tensor] = None, runtime_gather_output=None):
        if weight is not None:
            raise ValueError("NormHead owns its weight; it cannot be tied to the input embedding")
        return super().forward(input_, weight=normalize_rows(self.weight), runtime_gather_output=runtime_gather_output)

    @classmethod
    def adopt(cls, layer: ColumnParallelLinear) -> "NormHeadColumnParallelLinear":
        """Turn the output layer ``GPTModel`` built into a NormHead in place, keeping its parameters and
        process groups: only the forward changes, so re-running megatron-core's constructor is unnecessary."""
        if not isinstance(layer, ColumnParallelLinear):
            raise TypeError(f"NormHead wraps a ColumnParallelLinear, got {type(layer).__name__}")
        if layer.weight is None:
            raise ValueError("NormHead needs an untied output layer with its own weight")
        layer.__class__ = cls
        # The fused weight-gradient kernel accumulates into ``weight.main_grad`` of the tensor it multiplies by;
        # ours is the normalised copy, so let autograd carry the gradient back to the stored weight instead.
        layer.gradient_accumulation_fusion = False
        return layer
