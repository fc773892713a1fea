"""The RoPE families against Hugging Face transformers' Llama, weights copied by name from the megatron model.

Yi is a Llama; Baichuan2-7B is a Llama whose ``lm_head`` rows are normalised (NormHead), so HF Llama with the
normalised head weight is an independent reference for both. (Baichuan2-13B's ALiBi model exists only as remote
code on the Hub, so it is checked against the plain-torch reference in ``test_parallel_equivalence``.)
The megatron side comes from the shared 2-process run of ``models_harness`` (``runs`` fixture).
"""
from __future__ import annotations

import json

import pytest
import torch

import models_harness as H
from megatron_huatuo.models.registry import get_arch
from huatuo_testing import llama_config, shared_file

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def runs():
    return H.family_runs()


def hf_llama_state_dict(arch, sd):
    """megatron-core GPTModel names -> HF Llama names (fused QKV split per query group, [gate; up] split)."""
    nh, ng, hd = arch.num_attention_heads, arch.num_query_groups, arch.head_dim
    hpg = nh // ng
    out = {"model.embed_tokens.weight": sd["embedding.word_embeddings.weight"],
           "model.norm.weight": sd["decoder.final_layernorm.weight"]}
    head = sd["output_layer.weight"]
    out["lm_head.weight"] = head / head.norm(dim=1, keepdim=True) if arch.norm_head else head
    for i in range(arch.num_layers):
        m, h = f"decoder.layers.{i}.", f"model.layers.{i}."
        qkv = sd[m + "self_attention.linear_qkv.weight"].view(ng, hpg + 2, hd, arch.hidden_size)
        out[h + "self_attn.q_proj.weight"] = qkv[:, :hpg].reshape(nh * hd, -1)
        out[h + "self_attn.k_proj.weight"] = qkv[:, hpg].reshape(ng * hd, -1)
        out[h + "self_attn.v_proj.weight"] = qkv[:, hpg + 1].reshape(ng * hd, -1)
        out[h + "self_attn.o_proj.weight"] = sd[m + "self_attention.linear_proj.weight"]
        gate, up = sd[m + "mlp.linear_fc1.weight"].chunk(2, dim=0)
        out[h + "mlp.gate_proj.weight"], out[h + "mlp.up_proj.weight"] = gate, up
        out[h + "mlp.down_proj.weight"] = sd[m + "mlp.linear_fc2.weight"]
        out[h + "input_layernorm.weight"] = sd[m + "input_layernorm.weight"]
        out[h + "post_attention_layernorm.weight"] = sd[m + "pre_mlp_layernorm.weight"]
    return out


@pytest.mark.parametrize("family", ["tiny-baichuan2-7b", "tiny-yi"])
def test_logits_match_hf_llama(runs, family):
    arch = get_arch(family)
    result = runs[0][family]
    config = llama_config(arch)
    model = transformers.LlamaForCausalLM(config).eval()
    missing, unexpected = model.load_state_dict(hf_llama_state_dict(arch, result["weights"]), strict=False)
    assert not unexpected and all("rotary" in k for k in missing), (missing, unexpected)
    with torch.no_grad():
        hf_logits = model(result["tokens"]).logits
    torch.testing.assert_close(result["logits_causal"], hf_logits, rtol=1e-4, atol=2e-5)


def test_registry_matches_released_baichuan2_7b_config():
    config = json.loads(shared_file("model_configs/baichuan2-7b.config.json").read_text())
    arch = get_arch("baichuan2-7b")
    assert (arch.hidden_size, arch.num_layers, arch.num_attention_heads) == (
        config["hidden_size"], config["num_hidden_layers"], config["num_attention_heads"])
    assert (arch.ffn_hidden_size, arch.vocab_size, arch.norm_eps) == (
        config["intermediate_size"], config["vocab_size"], config["rms_norm_eps"])
    assert (arch.max_position_embeddings, arch.tie_embeddings, arch.init_method_std) == (
        config["max_position_embeddings"], config["tie_word_embeddings"], config["initializer_range"])
    assert arch.hf_architecture == config["architectures"][0]
