"""The seam between datasets and the trainer: what one training sample is.

Every dataset the trainer reads (plain pre-training documents, loss-masked SFT, priority-ordered packed rows)
returns, per index, a dict of 1-D tensors of length ``seq_length``:

- ``tokens``        int64  input ids
- ``labels``        int64  next-token targets (``tokens`` shifted by one within the row)
- ``loss_mask``     float32 1.0 where the label is trained, 0.0 where masked (user turns, prompts, padding)
- ``position_ids``  int64  positions; restart at 0 at every document start when samples are isolated
- ``segment_ids``   int64  which packed document each token belongs to (0, 1, 2, ...; padding gets -1).
                            The trainer turns it into the attention mask: a token attends to earlier tokens of
                            its own segment only. A dataset that lets packed documents see each other (the
                            original HuatuoGPT-II packing) returns a single segment for the whole row.

Batches are the default ``torch.utils.data`` collation of these dicts ([micro_batch, seq_length] each).
"""
from __future__ import annotations

import torch

SAMPLE_KEYS = ("tokens", "labels", "loss_mask", "position_ids", "segment_ids")


def attention_mask_from_segments(segment_ids: torch.Tensor) -> torch.Tensor:
    """Boolean mask [B, 1, S, S] in megatron-core's convention (True = masked out).

    Token i may attend to token j when j <= i and both belong to the same non-padding segment.
    """
    seg = segment_ids
    same = seg.unsqueeze(-1) == seg.unsqueeze(-2)
    causal = torch.ones(seg.shape[-1], seg.shape[-1], dtype=torch.bool, device=seg.device).tril()
    allowed = same & causal
    # Padding tokens (segment -1) still attend to themselves so that softmax rows are never empty.
    allowed |= torch.eye(seg.shape[-1], dtype=torch.bool, device=seg.device)
    return (~allowed).unsqueeze(1)
