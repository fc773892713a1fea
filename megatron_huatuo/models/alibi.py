"""ALiBi attention (Baichuan2-13B) as a megatron-core core-attention module of ours.

megatron-core (0.16-0.19) has no ALiBi and its ``DotProductAttention`` refuses an attention bias, so
:class:`AlibiDotProductAttention` is our SDPA core attention (``models/attention/sdpa.py``: megatron-core's
``DotProductAttention`` contract, same place in the layer spec: ``SelfAttention.submodules.core_attention``) with
the bias folded into SDPA's additive mask. It is the ``local`` and ``sdpa`` backend of ALiBi archs; ``flex`` adds
the same bias inside FlexAttention (``models/attention/flex.py``) and ``te`` passes the slopes to Transformer
Engine. It computes::

    scores[b, h, i, j] = (q_i . k_j) / sqrt(head_dim) + slope_h * (j - i)      (masked where j > i or masked)
    probs = softmax(scores),   context = probs @ v

through ``torch.nn.functional.scaled_dot_product_attention`` with the bias as its additive mask (the bias is
computed in fp32 and cast to the activation dtype, as Baichuan's own code stores its ALiBi mask).

- Slopes (Press et al., "Train Short, Test Long"): for n heads, a power of two, ``slope_k = 2^(-8 k / n)``,
  k = 1..n. Otherwise the slopes of the nearest lower power of two m, followed by every other slope of 2m
  (the interleaved extras) until there are n; this is what Baichuan2-13B uses for its 40 heads.
- Tensor parallel: heads are split over TP ranks in order, so rank r keeps slopes[r*n/tp : (r+1)*n/tp].
- Masks: with no ``attention_mask`` the causal mask is applied; with the boolean [B, 1, S, S] mask the trainer
  builds from ``segment_ids`` (True = masked), or the same mask derived from ``SegmentParams``, that mask is used
  as is. Because the bias is ``slope*(j-i)``
  and a segment's tokens are contiguous, the bias inside a packed segment equals the bias of that document
  alone (softmax is invariant to a per-row constant), i.e. ALiBi distances are measured within the segment.
- Baichuan's code adds ``slope*j`` (one row for all queries) instead of ``slope*(j-i)``: the difference is a
  constant per query row, which softmax ignores, so the probabilities are the same.
"""
from __future__ import annotations

import math
import weakref
from typing import List, Optional

import torch
from torch import Tensor

from megatron_huatuo.models.attention.sdpa import SdpaDotProductAttention


def alibi_slopes(num_heads: int) -> List[float]:
    """The ALiBi slope of every head, in head order (interleaved extras for a non-power-of-two count)."""
    if num_heads < 1:
        raise ValueError(f"num_heads must be positive, got {num_heads}")

    def power_of_two_slopes(n: int) -> List[float]:
        start = 2.0 ** (-8.0 / n)
        return [start ** (k + 1) for k in range(n)]

    if num_heads & (num_heads - 1) == 0:
        return power_of_two_slopes(num_heads)
    closest = 2 ** int(math.floor(math.log2(num_heads)))
    extra = alibi_slopes(2 * closest)[0::2][: num_heads - closest]
    return power_of_two_slopes(closest) + extra


def local_alibi_slopes(num_heads: int, tp_rank: int, tp_size: int) -> Tensor:
    """The slopes of the heads that tensor-parallel rank ``tp_rank`` of ``tp_size`` owns (fp32 tensor)."""
    if num_heads % tp_size:
        raise ValueError(f"{num_heads} attention heads cannot be split over tensor_parallel={tp_size}")
    per_rank = num_heads // tp_size
    slopes = alibi_slopes(num_heads)[tp_rank * per_rank : (tp_rank + 1) * per_rank]
    return torch.tensor(slopes, dtype=torch.float32)


def alibi_bias(slopes: Tensor, seq_q: int, seq_k: int, device=None) -> Tensor:
    """Bias [heads, seq_q, seq_k] = slope * (j - i), queries aligned to the end of the keys."""
    q_pos = torch.arange(seq_k - seq_q, seq_k, device=device, dtype=torch.float32)
    k_pos = torch.arange(seq_k, device=device, dtype=torch.float32)
    distance = k_pos.view(1, -1) - q_pos.view(-1, 1)
    return slopes.to(device=device, dtype=torch.float32).view(-1, 1, 1) * distance


class AlibiDotProductAttention(SdpaDotProductAttention):
    """Core attention with the ALiBi bias of this rank's heads: the ``local`` and ``sdpa`` backends of ALiBi archs."""

    # (key, weakref to the mask or None, bias): the one bias shared by all layers of the current forward.
    _bias_cache: Optional[tuple] = None

    def __init__(self, config, layer_number, attn_mask_type, attention_type, attention_dropout=None,
                 softmax_scale=None, cp_comm_type=None, pg_collection=None):
        super().__init__(config, layer_number, attn_mask_type, attention_type, attention_dropout=attention_dropout,
                         softmax_scale=softmax_scale, cp_comm_type=cp_comm_type, pg_collection=pg_collection)
        slopes = local_alibi_slopes(config.num_attention_heads, self.tp_group.rank(), self.tp_group.size())
        # A buffer (not a parameter): it follows the module to its device, is never trained and not checkpointed.
        self.register_buffer("alibi_slopes", slopes, persistent=False)

    def _masked_bias(self, sq: int, sk: int, attention_mask: Optional[Tensor], causal: bool, dtype, device) -> Tensor:
        """ALiBi bias with the mask folded in, [1 or b, np, sq, sk] in ``dtype``.

        Every layer of a forward pass gets the same bias (same heads on this rank, same mask), and SDPA keeps
        its mask alive for backward; so the last bias is cached at class level and shared by all layers
        instead of one copy per layer (at 4K context with 10 local heads that is 335 MB in bf16 per copy).
        The cache entry is reused only for the very same mask tensor, unmodified (weakref + version).
        """
        key = (sq, sk, causal, dtype, str(device), self.config.num_attention_heads, self.tp_group.rank(),
               self.tp_group.size(), None if attention_mask is None else attention_mask._version)
        cached = AlibiDotProductAttention._bias_cache
        if cached is not None:
            cached_key, mask_ref, bias = cached
            same_mask = (attention_mask is None and mask_ref is None) or (
                attention_mask is not None and mask_ref is not None and mask_ref() is attention_mask)
            if cached_key == key and same_mask:
                return bias
        # Built in fp32 and cast once: slope * distance reaches thousands at 4K context.
        bias = alibi_bias(self.alibi_slopes, sq, sk, device=device).unsqueeze(0)  # [1, np, sq, sk]
        mask = attention_mask
        if mask is None and causal:
            mask = torch.ones(sq, sk, dtype=torch.bool, device=device).triu(sk - sq + 1)
        if mask is not None:
            # The most negative finite value rather than -inf, so a fully masked row cannot produce NaN
            # (the segment mask never masks a token's own position anyway).
            bias = bias.masked_fill(mask.to(torch.bool), torch.finfo(dtype).min)
        bias = bias.to(dtype)
        mask_ref = None if attention_mask is None else weakref.ref(attention_mask)
        AlibiDotProductAttention._bias_cache = (key, mask_ref, bias)
        return bias

    def sdpa_mask(self, sq: int, sk: int, attention_mask: Optional[Tensor], packed_seq_params, causal: bool,
                  dtype, device):
        """The bias with the mask folded in (the segment mask of ``SegmentParams`` or the dense mask)."""
        mask = packed_seq_params.masked() if packed_seq_params is not None else attention_mask
        return self._masked_bias(sq, sk, mask, causal, dtype, device), False
