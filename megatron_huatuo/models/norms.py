"""RMSNorm for megatron-core's local (non-Transformer-Engine) layer spec, with sequence parallelism.

megatron-core's ``WrappedTorchNorm`` (the local norm when Apex is absent) refuses ``sequence_parallel``: under
sequence parallelism each TP rank normalises a different slice of the sequence, so the norm weight's gradient
is partial and must be summed over the TP group. megatron-core's gradient finaliser does that for every
parameter flagged ``sequence_parallel = True``, which is all this class adds to ``torch.nn.RMSNorm``.
"""
from __future__ import annotations

import torch


class RMSNorm(torch.nn.RMSNorm):
    """``torch.nn.RMSNorm`` with megatron-core's norm constructor signature and the sequence-parallel flag."""

    def __init__(self, config, hidden_size: int, eps: float = 1e-5, **_unused):
        if config.normalization != "RMSNorm":
            raise ValueError(f"RMSNorm module built for normalization={config.normalization!r}")
        device = torch.cuda.current_device() if torch.cuda.is_available() else "cpu"
        super().__init__(hidden_size, eps=eps, device=device, dtype=config.params_dtype)
        setattr(self.weight, "sequence_parallel", bool(config.sequence_parallel))
