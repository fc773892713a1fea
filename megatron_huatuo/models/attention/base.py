"""The shared shell of our torch-kernel core attentions (sdpa, flex, ALiBi).

Each subclasses megatron-core's ``DotProductAttention`` for its contract, not its math: the same constructor
(so it drops into ``SelfAttention.submodules.core_attention``), the same (empty) sharded state, heads per
tensor-parallel rank, softmax scale and dropout; input query [sq, b, np, hn], key/value [sk, b, ng, hn]; output
context [sq, b, np * hn]. Only ``forward`` is replaced.
"""
from __future__ import annotations

import contextlib
from typing import Optional, Tuple

import torch
from megatron.core import tensor_parallel
from megatron.core.transformer.dot_product_attention import DotProductAttention
from torch import Tensor


class TorchCoreAttention(DotProductAttention):
    """Core attention computed by a fused torch kernel; subclasses implement ``forward``."""

    def __init__(self, config, layer_number, attn_mask_type, attention_type, attention_dropout=None,
                 softmax_scale=None, cp_comm_type=None, pg_collection=None):
        super().__init__(config, layer_number, attn_mask_type, attention_type, attention_dropout=attention_dropout,
                         softmax_scale=softmax_scale, cp_comm_type=cp_comm_type, pg_collection=pg_collection)
        name = type(self).__name__
        if self.config.apply_query_key_layer_scaling:
            raise ValueError(f"{name} does not support apply_query_key_layer_scaling")
        if self.config.softmax_type != "vanilla":
            raise ValueError(f"{name} supports softmax_type='vanilla' only, not {self.config.softmax_type!r}")

    @property
    def query_groups_ratio(self) -> int:
        """Query heads per key/value head on this rank (1 = plain multi-head attention)."""
        return self.num_attention_heads_per_partition // self.num_query_groups_per_partition

    def heads_first(self, query: Tensor, key: Tensor, value: Tensor, repeat_kv: bool) -> Tuple[Tensor, Tensor, Tensor]:
        """[s, b, h, d] -> [b, h, s, d]; ``repeat_kv`` copies each K/V head for its query heads (GQA for kernels
        that cannot broadcast them)."""
        if repeat_kv and self.query_groups_ratio > 1:
            key = key.repeat_interleave(self.query_groups_ratio, dim=2)
            value = value.repeat_interleave(self.query_groups_ratio, dim=2)
        return tuple(t.permute(1, 2, 0, 3) for t in (query, key, value))

    def merge_heads(self, context: Tensor) -> Tensor:
        """[b, h, s, d] -> [s, b, h * d] (what the output projection takes)."""
        sq, b = context.size(2), context.size(0)
        return context.permute(2, 0, 1, 3).reshape(sq, b, self.hidden_size_per_partition)

    def dropout_p(self) -> float:
        return self.attention_dropout.p if self.training else 0.0

    def dropout_rng(self):
        """The tensor-parallel RNG stream for attention dropout, as megatron-core's own core attention uses it
        (heads differ per TP rank; under sequence parallelism the default stream is already per rank)."""
        if self.dropout_p() > 0.0 and not self.config.sequence_parallel:
            return tensor_parallel.get_cuda_rng_tracker().fork()
        return contextlib.nullcontext()

    @staticmethod
    def check_extras(attention_bias: Optional[Tensor], packed_seq_params) -> None:
        from megatron_huatuo.models.attention.segments import SegmentParams

        if attention_bias is not None:
            raise ValueError("attention_bias is not supported by this core attention")
        if packed_seq_params is not None and not isinstance(packed_seq_params, SegmentParams):
            raise ValueError(f"packed_seq_params of type {type(packed_seq_params).__name__} (qkv_format="
                             f"{packed_seq_params.qkv_format!r}) needs the te backend; sdpa and flex take "
                             "isolated documents as SegmentParams")
