"""``sdpa``: core attention through ``torch.nn.functional.scaled_dot_product_attention``.

- Causal rows (no mask): ``is_causal=True``: the flash kernel on Hopper; GQA key/value heads are broadcast by the
  kernel (``enable_gqa``), not copied.
- Isolated packing: the boolean mask from :class:`SegmentParams` (one tensor per forward, shared by all layers
  and kept once for backward) through the memory-efficient kernel, which does not store the [S, S] probabilities.
- A dense megatron-core mask (True = masked) is accepted too and inverted.
ALiBi architectures use :class:`megatron_huatuo.models.alibi.AlibiDotProductAttention`, which is this module with
the bias added.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from megatron.core.transformer.enums import AttnMaskType
from torch import Tensor

from megatron_huatuo.compat import SDPA_HAS_ENABLE_GQA
from megatron_huatuo.models.attention.base import TorchCoreAttention


class SdpaDotProductAttention(TorchCoreAttention):
    """Causal or segment-masked attention through torch's fused SDPA kernels."""

    def sdpa_mask(self, sq: int, sk: int, attention_mask: Optional[Tensor], packed_seq_params, causal: bool,
                  dtype, device):
        """(attn_mask for SDPA or None, is_causal). Subclasses fold a position bias in."""
        if packed_seq_params is not None:
            return packed_seq_params.allowed(), False
        if attention_mask is not None:
            return ~attention_mask.to(bool), False
        if causal and sq != sk:  # queries are the last sq positions; SDPA's is_causal would align them first
            return torch.ones(sq, sk, dtype=torch.bool, device=device).tril(sk - sq), False
        return None, causal

    def forward(self, query: Tensor, key: Tensor, value: Tensor, attention_mask: Optional[Tensor],
                attn_mask_type=None, attention_bias: Optional[Tensor] = None, packed_seq_params=None) -> Tensor:
        """query [sq, b, np, hn], key/value [sk, b, ng, hn] -> context [sq, b, np*hn]."""
        self.check_extras(attention_bias, packed_seq_params)
        sq, sk = query.size(0), key.size(0)
        # Without a mask, causal unless the layer was declared otherwise (as megatron-core's own core attention).
        causal = (attn_mask_type if attn_mask_type is not None else self.attn_mask_type) == AttnMaskType.causal
        mask, causal = self.sdpa_mask(sq, sk, attention_mask, packed_seq_params, causal, query.dtype, query.device)
        # GQA: the kernels that take a mask cannot broadcast K/V heads (torch falls back to the unfused math
        # kernel), so heads are copied there; the causal flash kernel broadcasts them itself.
        broadcast = mask is None and SDPA_HAS_ENABLE_GQA and self.query_groups_ratio > 1
        q, k, v = self.heads_first(query, key, value, repeat_kv=not broadcast)
        extra = {"enable_gqa": True} if broadcast else {}
        with self.dropout_rng():
            context = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout_p(),
                                                     is_causal=causal, scale=self.softmax_scale, **extra)
        return self.merge_heads(context)
