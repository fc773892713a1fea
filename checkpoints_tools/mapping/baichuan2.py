"""megatron-core GPTModel <-> Baichuan2's own Hugging Face layout (remote code ``BaichuanForCausalLM``).

Baichuan2 is Llama-shaped except: q/k/v are one ``self_attn.W_pack.weight = [q; k; v]`` (no GQA), the head
is NormHead (raw weight stored, normalised in the forward, as in ``megatron_huatuo.models.norm_head``), and the
13B model uses ALiBi (no rotary). The modeling file itself is Baichuan's remote code (``modeling_baichuan.py``
from the released checkpoint); we write the weights and a config.json whose ``auto_map`` points at it.
"""
from __future__ import annotations

from typing import Iterator, Tuple

import torch

from megatron_huatuo.models.registry import ArchSpec
from checkpoints_tools.mapping import llama


def w_pack_to_qkv(arch: ArchSpec, w_pack: torch.Tensor) -> torch.Tensor:
    """Baichuan ``W_pack`` [3*H, H] -> megatron's per-group interleaved ``linear_qkv``."""
    if arch.num_query_groups != arch.num_attention_heads:
        raise ValueError(f"W_pack has no GQA, but arch {arch.name} has {arch.num_query_groups} query groups")
    q, k, v = w_pack.chunk(3, dim=0)
    return llama.fuse_qkv(arch, q, k, v)


def hf_tensor(arch: ArchSpec, get: llama.Getter, name: str) -> torch.Tensor:
    """One megatron tensor from Baichuan's layout (see :func:`llama.hf_tensor`)."""
    return llama.hf_tensor(arch, get, name,
                           qkv=lambda i: w_pack_to_qkv(arch, get(f"model.layers.{i}.self_attn.W_pack.weight")))


def hf_to_mcore(arch: ArchSpec, get: llama.Getter) -> Iterator[Tuple[str, torch.Tensor]]:
    for name in llama.mcore_names(arch):
        yield name, hf_tensor(arch, get, name)


def mcore_to_hf(arch: ArchSpec, get: llama.Getter) -> Iterator[Tuple[str, torch.Tensor]]:
    """Raw NormHead weight (Baichuan's code normalises it itself)."""
    return llama.mcore_to_hf(arch, get, fold_norm_head=False, fused_qkv=True)


def hf_config(arch: ArchSpec, dtype: str = "float32") -> dict:
    """config.json in Baichuan2's released form; 7B (RoPE) and 13B (ALiBi) differ in model class names."""
    rope = arch.position_embedding == "rope"
    prefix = "configuration_baichuan.BaichuanConfig", "modeling_baichuan.BaichuanForCausalLM"
    return {
        "architectures": ["BaichuanForCausalLM"], "model_type": "baichuan",
        "auto_map": {"AutoConfig": prefix[0], "AutoModelForCausalLM": prefix[1]},
        "vocab_size": arch.vocab_size, "hidden_size": arch.hidden_size,
        "intermediate_size": arch.ffn_hidden_size, "num_hidden_layers": arch.num_layers,
        "num_attention_heads": arch.num_attention_heads, "hidden_act": "silu",
        "rms_norm_eps": arch.norm_eps, "initializer_range": arch.init_method_std,
        ("max_position_embeddings" if rope else "model_max_length"): arch.max_position_embeddings,
        "model_max_length": arch.max_position_embeddings,
        "tie_word_embeddings": False, "use_cache": True, "torch_dtype": dtype,
        "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2,
    }
