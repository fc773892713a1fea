"""The architecture registry holds the sizes the issue fixes, and tiny twins of the same structure."""
from __future__ import annotations

import pytest

from megatron_huatuo.models.registry import ARCHS, arch_names, get_arch


def test_real_architectures():
    b7, b13, yi = get_arch("baichuan2-7b"), get_arch("baichuan2-13b"), get_arch("yi-34b")
    assert (b7.hidden_size, b7.num_layers, b7.num_attention_heads, b7.ffn_hidden_size) == (4096, 32, 32, 11008)
    assert (b7.norm_eps, b7.position_embedding, b7.vocab_size, b7.norm_head, b7.tie_embeddings) == (
        1e-6, "rope", 125696, True, False)
    assert (b13.hidden_size, b13.num_layers, b13.num_attention_heads, b13.ffn_hidden_size) == (5120, 40, 40, 13696)
    assert (b13.position_embedding, b13.norm_head, b13.max_position_embeddings) == ("alibi", True, 4096)
    assert (yi.hidden_size, yi.num_layers, yi.num_attention_heads, yi.num_query_groups) == (7168, 60, 56, 8)
    assert (yi.ffn_hidden_size, yi.vocab_size, yi.rotary_base, yi.norm_eps) == (20480, 64000, 5_000_000.0, 1e-5)
    assert (yi.norm_head, yi.tie_embeddings) == (False, False)


@pytest.mark.parametrize("name,billions", [("baichuan2-7b", 7.5), ("baichuan2-13b", 13.9), ("yi-34b", 34.4)])
def test_parameter_counts_match_published_sizes(name, billions):
    assert get_arch(name).num_parameters() / 1e9 == pytest.approx(billions, abs=0.06)


@pytest.mark.parametrize("real,tiny", [("baichuan2-7b", "tiny-baichuan2-7b"),
                                       ("baichuan2-13b", "tiny-baichuan2-13b"), ("yi-34b", "tiny-yi")])
def test_tiny_twins_keep_the_structure(real, tiny):
    r, t = get_arch(real), get_arch(tiny)
    assert (t.family, t.position_embedding, t.norm_head, t.tie_embeddings) == (
        r.family, r.position_embedding, r.norm_head, r.tie_embeddings)
    assert t.rotary_base == r.rotary_base and t.norm_eps == r.norm_eps
    assert t.num_layers % 4 == 0  # PP=2 x VPP=2
    assert t.num_attention_heads % 2 == 0 and t.num_query_groups % 2 == 0  # TP=2
    assert (t.num_query_groups < t.num_attention_heads) == (r.num_query_groups < r.num_attention_heads)


def test_tiny_13b_has_a_non_power_of_two_head_count():
    heads = get_arch("tiny-baichuan2-13b").num_attention_heads
    assert heads & (heads - 1) != 0


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(KeyError, match="unknown architecture 'llama-7b'; known: baichuan2-13b, baichuan2-7b"):
        get_arch("llama-7b")
    assert arch_names(include_tiny=False) == ["baichuan2-13b", "baichuan2-7b", "yi-34b"]
    assert len(ARCHS) == 6


def test_overrides_are_checked():
    assert get_arch("yi-34b").with_overrides(num_layers=2).num_layers == 2
    with pytest.raises(KeyError, match="num_layer"):
        get_arch("yi-34b").with_overrides(num_layer=2)


def test_flops_per_token_follows_the_palm_formula():
    # PaLM: 6 N + 12 L H T with N the matmul parameters (no embedding lookup, no norms) and T the sequence.
    arch = get_arch("baichuan2-7b")
    matmul_params = arch.num_parameters() - arch.vocab_size * arch.hidden_size - (2 * arch.num_layers + 1) * arch.hidden_size
    expected = 6 * matmul_params + 12 * arch.num_layers * arch.hidden_size * 4096
    assert arch.flops_per_token(4096) == pytest.approx(expected, rel=1e-12)
    assert arch.flops_per_token(4096, training=False) == pytest.approx(expected / 3, rel=1e-12)
    # 6 x 6.99e9 (32 layers x 202.4M + 515M output layer) + 12 x 32 x 4096 x 4096 = 41.95e9 + 6.44e9
    assert arch.flops_per_token(4096) / 1e9 == pytest.approx(48.39, abs=0.01)
