"""TransformerConfig from the registry, and the errors for impossible or unsupported settings."""
from __future__ import annotations

import pytest
import torch

from megatron_huatuo.models.provider import have_transformer_engine, layer_spec, transformer_config


def test_real_size_configs():
    cfg = transformer_config("yi-34b", tensor_parallel=8, pipeline_parallel=4, sequence_parallel=True,
                             precision="bf16", recompute="selective")
    assert (cfg.hidden_size, cfg.num_layers, cfg.num_attention_heads, cfg.num_query_groups) == (7168, 60, 56, 8)
    assert (cfg.ffn_hidden_size, cfg.kv_channels, cfg.layernorm_epsilon) == (20480, 128, 1e-5)
    assert cfg.normalization == "RMSNorm" and cfg.gated_linear_unit and not cfg.add_bias_linear
    assert cfg.params_dtype == torch.bfloat16 and cfg.bf16 and cfg.pipeline_dtype == torch.bfloat16
    assert cfg.recompute_granularity == "selective" and cfg.sequence_parallel
    full = transformer_config("baichuan2-13b", tensor_parallel=4, recompute="full", recompute_num_layers=2)
    assert (full.recompute_granularity, full.recompute_method, full.recompute_num_layers) == ("full", "uniform", 2)
    assert transformer_config("baichuan2-7b", num_layers=2).num_layers == 2


@pytest.mark.skipif(have_transformer_engine(), reason="Transformer Engine is installed here")
def test_fp8_without_transformer_engine_is_a_clear_error():
    with pytest.raises(RuntimeError, match="fp8='hybrid' needs Transformer Engine"):
        transformer_config("tiny-yi", fp8="hybrid")
    cfg = transformer_config("tiny-yi")
    with pytest.raises(RuntimeError, match="Transformer Engine is not importable"):
        layer_spec("tiny-yi", cfg, transformer_impl="transformer_engine")


@pytest.mark.parametrize(
    "arch,kwargs,match",
    [
        ("baichuan2-7b", dict(tensor_parallel=3), "num_attention_heads=32 is not divisible by tensor_parallel=3"),
        ("yi-34b", dict(tensor_parallel=14), "num_query_groups=8 is not divisible by tensor_parallel=14"),
        ("tiny-yi", dict(pipeline_parallel=3), "4 layers cannot be split evenly over pp\\*vpp=3"),
        ("tiny-yi", dict(pipeline_parallel=2, virtual_pipeline=4), "virtual_pipeline=4"),
        ("tiny-yi", dict(sequence_parallel=True), "sequence_parallel needs tensor_parallel >= 2"),
        ("tiny-yi", dict(precision="fp64"), "precision must be one of"),
        ("tiny-yi", dict(recompute="some"), "recompute must be one of"),
        ("tiny-yi", dict(fp8="e5m2"), "fp8 must be None"),
    ],
)
def test_impossible_settings_fail_fast(arch, kwargs, match):
    with pytest.raises(ValueError, match=match):
        transformer_config(arch, **kwargs)


def test_unknown_transformer_config_field_is_named():
    with pytest.raises(TypeError, match="hiden_dropout"):
        transformer_config("tiny-yi", hiden_dropout=0.1)
    assert transformer_config("tiny-yi", masked_softmax_fusion=True).masked_softmax_fusion


def test_alibi_arch_gets_our_core_attention_and_masked_segments_the_arbitrary_mask():
    from megatron.core.transformer.enums import AttnMaskType

    from megatron_huatuo.models.alibi import AlibiDotProductAttention

    spec = layer_spec("tiny-baichuan2-13b", transformer_config("tiny-baichuan2-13b"), masked_segments=True)
    attention = spec.submodules.self_attention
    assert attention.submodules.core_attention is AlibiDotProductAttention
    assert attention.params["attn_mask_type"] == AttnMaskType.arbitrary
    plain = layer_spec("tiny-yi", transformer_config("tiny-yi")).submodules.self_attention
    assert plain.submodules.core_attention is not AlibiDotProductAttention
    assert plain.params["attn_mask_type"] == AttnMaskType.causal


def test_context_parallel_needs_transformer_engine():
    cfg = transformer_config("tiny-yi", context_parallel=2)
    with pytest.raises(ValueError, match="context_parallel > 1 needs transformer_impl='transformer_engine'"):
        layer_spec("tiny-yi", cfg)
