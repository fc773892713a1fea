"""``flex``: core attention through ``torch.nn.attention.flex_attention``.

FlexAttention generates one fused kernel from two small functions, so neither the ALiBi bias nor the document
mask is ever materialised as an [S, S] tensor:

- ``score_mod`` adds ``slope[h] * (kv - q)`` to each score (ALiBi archs; ``h`` is the head index on this
  tensor-parallel rank, so the slopes are this rank's slice, interleaved for non-power-of-two head counts);
- the ``BlockMask`` lists which 128 x 128 tiles hold any allowed (query, key) pair and, inside partial tiles,
  which pairs: causal for plain rows, causal within a segment for isolated packing (built once per forward
  from ``segment_ids``, see :class:`~megatron_huatuo.models.attention.segments.SegmentParams`). Tiles above the
  diagonal or across documents are skipped, so packed rows of short documents cost less than a full row.

On CUDA the kernel is ``torch.compile(flex_attention)`` (Triton). Guards: all layers of a rank share one
``score_mod`` function and one slopes tensor, and the mask functions are one code object, so layers and
micro-batches do not recompile. On CPU torch runs FlexAttention eagerly and forward only (its backward raises
``NotImplementedError``): CPU tests check the forward; ``resolve_backend`` refuses to train with ``flex`` on CPU.
No attention dropout (FlexAttention has none; refused at recipe validation).
"""
from __future__ import annotations

import warnings
from typing import Callable, Dict, Optional, Tuple

import torch
from megatron.core.transformer.enums import AttnMaskType
from torch import Tensor

from megatron_huatuo.models.attention.base import TorchCoreAttention

_KERNEL: Dict[bool, Callable] = {}
_CAUSAL_MASKS: Dict[Tuple[int, str], object] = {}
_SCORE_MODS: Dict[tuple, Callable] = {}


def flex_kernel(device: torch.device) -> Callable:
    """``flex_attention``, compiled for CUDA devices (one compiled callable per process), eager elsewhere."""
    from torch.nn.attention.flex_attention import flex_attention

    cuda = device.type == "cuda"
    if cuda not in _KERNEL:
        if not cuda:  # eager on purpose (CPU: tests and scoring only); torch would warn on every process
            warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
        _KERNEL[cuda] = torch.compile(flex_attention, dynamic=False) if cuda else flex_attention
    return _KERNEL[cuda]


def _causal(b, h, q_idx, kv_idx):
    return q_idx >= kv_idx


def causal_block_mask(seq: int, device: torch.device):
    """The causal ``BlockMask`` for rows of ``seq`` tokens (broadcast over batch and heads), cached."""
    from torch.nn.attention.flex_attention import create_block_mask

    key = (seq, str(device))
    if key not in _CAUSAL_MASKS:
        _CAUSAL_MASKS[key] = create_block_mask(_causal, None, None, seq, seq, device=device)
    return _CAUSAL_MASKS[key]


def document_block_mask(segment_ids: Tensor):
    """``BlockMask`` of rows of packed documents: token i sees j when j <= i in the same segment ([B, S] ids)."""
    from torch.nn.attention.flex_attention import create_block_mask

    batch, seq = segment_ids.shape

    def same_document_causal(b, h, q_idx, kv_idx):
        return (segment_ids[b, q_idx] == segment_ids[b, kv_idx]) & (q_idx >= kv_idx)

    return create_block_mask(same_document_causal, batch, None, seq, seq, device=segment_ids.device)


def alibi_score_mod(num_heads: int, tp_rank: int, tp_size: int, device: torch.device) -> Callable:
    """``score + slope[h] * (kv - q)`` for this rank's heads; one function (and slopes tensor) per rank/device."""
    from megatron_huatuo.models.alibi import local_alibi_slopes

    key = (num_heads, tp_rank, tp_size, str(device))
    if key not in _SCORE_MODS:
        slopes = local_alibi_slopes(num_heads, tp_rank, tp_size).to(device)

        def alibi(score, b, h, q_idx, kv_idx):
            return score + slopes[h] * (kv_idx - q_idx)

        _SCORE_MODS[key] = alibi
    return _SCORE_MODS[key]


class FlexDotProductAttention(TorchCoreAttention):
    """Causal or document-masked attention through FlexAttention (RoPE archs: no score modification)."""

    def __init__(self, config, layer_number, attn_mask_type, attention_type, attention_dropout=None,
                 softmax_scale=None, cp_comm_type=None, pg_collection=None):
        super().__init__(config, layer_number, attn_mask_type, attention_type, attention_dropout=attention_dropout,
                         softmax_scale=softmax_scale, cp_comm_type=cp_comm_type, pg_collection=pg_collection)
        if self.attention_dropout.p > 0.0:
            raise ValueError("flex attention has no attention dropout: use the sdpa backend, or dropout 0")

    def score_mod(self, device: torch.device) -> Optional[Callable]:
        return None

    def forward(self, query: Tensor, key: Tensor, value: Tensor, attention_mask: Optional[Tensor],
                attn_mask_type=None, attention_bias: Optional[Tensor] = None, packed_seq_params=None) -> Tensor:
        """query [sq, b, np, hn], key/value [sk, b, ng, hn] -> context [sq, b, np*hn]."""
        self.check_extras(attention_bias, packed_seq_params)
        if attention_mask is not None:
            raise ValueError("flex takes isolated documents as segment ids (SegmentParams from "
                             "megatron_huatuo.models.attention.model_inputs), not a dense attention_mask")
        sq, sk = query.size(0), key.size(0)
        if sq != sk:
            raise ValueError(f"flex attention runs full sequences (training, scoring): sq={sq} != sk={sk}")
        q, k, v = self.heads_first(query, key, value, repeat_kv=False)
        if packed_seq_params is not None:
            block_mask = packed_seq_params.block_mask()
        elif (attn_mask_type if attn_mask_type is not None else self.attn_mask_type) == AttnMaskType.causal:
            block_mask = causal_block_mask(sq, q.device)
        else:  # declared unmasked and given no mask: full attention, as megatron-core's core attention does
            block_mask = None
        context = flex_kernel(q.device)(q, k, v, score_mod=self.score_mod(q.device), block_mask=block_mask,
                                        scale=self.softmax_scale, enable_gqa=self.query_groups_ratio > 1)
        return self.merge_heads(context)


class FlexAlibiDotProductAttention(FlexDotProductAttention):
    """FlexAttention with the ALiBi bias of this rank's heads as its ``score_mod`` (Baichuan2-13B)."""

    def score_mod(self, device: torch.device) -> Optional[Callable]:
        return alibi_score_mod(self.config.num_attention_heads, self.tp_group.rank(), self.tp_group.size(), device)
