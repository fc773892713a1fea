"""``te``: Transformer Engine's fused attention (cuDNN / flash-attention kernels), for clusters that have TE.

- RoPE archs: megatron-core's own ``TEDotProductAttention``.
- ALiBi archs: :class:`TEAlibiDotProductAttention`, which passes this tensor-parallel rank's slopes to TE
  (``core_attention_bias_type="alibi"``, ``alibi_slopes``). TE's convention (``get_alibi`` in TE's attention
  utils) is ``bias = -slope * |i - j|`` with bottom-right alignment; for the causal (j <= i) positions that remain
  this equals our ``slope * (j - i)``, and TE's default slopes are Press et al.'s with the same interleaving for
  non-power-of-two head counts, but TE would compute them for the *local* head count, which is wrong under TP,
  so the slopes are always passed explicitly.
- Isolated packing: THD (``packed_seq_params`` with ``cu_seqlens``; ``segments.model_inputs``), with the mask
  type turned into ``padding_causal`` as megatron-core does for THD.

Not run in this project's CI or device checks (neither machine has TE): the ``-m gpu`` tests compare it with
``local`` where TE is installed.
"""
from __future__ import annotations

from typing import Optional

import torch


def te_core_attention(arch) -> type:
    """The TE core-attention class for ``arch`` (imports Transformer Engine)."""
    from megatron.core.extensions.transformer_engine import TEDotProductAttention

    if arch.position_embedding != "alibi":
        return TEDotProductAttention
    return _alibi_class(TEDotProductAttention)


_ALIBI_CLASS: Optional[type] = None


def _alibi_class(base: type) -> type:
    global _ALIBI_CLASS
    if _ALIBI_CLASS is not None:
        return _ALIBI_CLASS
    import transformer_engine.pytorch as te
    from megatron.core.transformer.enums import AttnMaskType

    from megatron_huatuo.models.alibi import local_alibi_slopes

    class TEAlibiDotProductAttention(base):
        """megatron-core's ``TEDotProductAttention`` with TE's ALiBi bias from this rank's slopes."""

        def __init__(self, config, layer_number, attn_mask_type, attention_type, attention_dropout=None,
                     softmax_scale=None, cp_comm_type=None, pg_collection=None, **kwargs):
            super().__init__(config, layer_number, attn_mask_type, attention_type,
                             attention_dropout=attention_dropout, softmax_scale=softmax_scale,
                             cp_comm_type=cp_comm_type, pg_collection=pg_collection, **kwargs)
            tp = self.tp_group if getattr(self, "tp_group", None) is not None else pg_collection.tp
            slopes = local_alibi_slopes(config.num_attention_heads, tp.rank(), tp.size())
            self.register_buffer("alibi_slopes", slopes.to(torch.cuda.current_device()), persistent=False)

        def forward(self, query, key, value, attention_mask, attn_mask_type, attention_bias=None,
                    packed_seq_params=None, num_splits=None):
            if attention_bias is not None:
                raise ValueError("ALiBi attention computes its own bias; attention_bias must be None")
            # As megatron-core's wrapper: the PackedSeqParams fields this TE version takes, minus the
            # context-parallel ones (no context parallelism with ALiBi).
            keep = self.kept_packed_seq_params - {"cp_group", "local_cp_size"}
            packed = {k: getattr(packed_seq_params, k) for k in keep} if packed_seq_params is not None else {}
            mask_type = attn_mask_type if attn_mask_type is not None else self.attn_mask_type
            if packed.get("qkv_format", self.qkv_format) == "thd" and mask_type == AttnMaskType.causal:
                mask_type = AttnMaskType.padding_causal  # THD kernels need a padding mask type
            return te.DotProductAttention.forward(
                self, query, key, value, attention_mask, attn_mask_type=mask_type.name,
                core_attention_bias_type="alibi", alibi_slopes=self.alibi_slopes.float(), **packed)

    _ALIBI_CLASS = TEAlibiDotProductAttention
    return _ALIBI_CLASS
