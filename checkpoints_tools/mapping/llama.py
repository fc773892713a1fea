"""megatron-core GPTModel <-> Hugging Face Llama (``LlamaForCausalLM``) weight mapping.

megatron-core fuses q/k/v into ``linear_qkv.weight`` laid out per query group:
``[groups x (heads_per_group*head_dim q | head_dim k | head_dim v), hidden]`` (a TP shard is a block of whole
groups), and gate/up into ``linear_fc1.weight = [gate; up]``. HF Llama keeps them separate. Norm weights live
under ``input_layernorm`` / ``pre_mlp_layernorm`` with the local spec used by ``megatron_huatuo.models``.
"""
from __future__ import annotations

import re
from typing import Callable, Dict, Iterator, Tuple

import torch

from megatron_huatuo.models.registry import ArchSpec

Getter = Callable[[str], torch.Tensor]
_LAYER = re.compile(r"decoder\.layers\.(\d+)\.(.+)")


def fuse_qkv(arch: ArchSpec, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """HF q [heads*hd, H], k/v [groups*hd, H] -> megatron's per-group interleaved ``linear_qkv`` weight."""
    nh, ng, hd = arch.num_attention_heads, arch.num_query_groups, arch.head_dim
    hidden = q.shape[-1]
    for name, t, rows in (("q", q, nh * hd), ("k", k, ng * hd), ("v", v, ng * hd)):
        if t.shape != (rows, hidden):
            raise ValueError(f"{name}_proj has shape {tuple(t.shape)}, arch {arch.name} expects {(rows, hidden)}")
    hpg = nh // ng
    q = q.reshape(ng, hpg * hd, hidden)
    k = k.reshape(ng, hd, hidden)
    v = v.reshape(ng, hd, hidden)
    return torch.cat([q, k, v], dim=1).reshape(-1, hidden).contiguous()


def split_qkv(arch: ArchSpec, qkv: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inverse of :func:`fuse_qkv`."""
    nh, ng, hd = arch.num_attention_heads, arch.num_query_groups, arch.head_dim
    hpg = nh // ng
    hidden = qkv.shape[-1]
    g = qkv.reshape(ng, hpg + 2, hd, hidden)
    return (g[:, :hpg].reshape(nh * hd, hidden).contiguous(), g[:, hpg].reshape(ng * hd, hidden).contiguous(),
            g[:, hpg + 1].reshape(ng * hd, hidden).contiguous())


def _layer_pairs(i: int) -> Dict[str, str]:
    m, h = f"decoder.layers.{i}.", f"model.layers.{i}."
    return {
        m + "self_attention.linear_proj.weight": h + "self_attn.o_proj.weight",
        m + "mlp.linear_fc2.weight": h + "mlp.down_proj.weight",
        m + "input_layernorm.weight": h + "input_layernorm.weight",
        m + "pre_mlp_layernorm.weight": h + "post_attention_layernorm.weight",
    }


def mcore_names(arch: ArchSpec) -> list:
    """The megatron parameter names of a TP1/PP1 ``GPTModel`` of ``arch``, in model order."""
    per_layer = ["self_attention.linear_qkv.weight", "self_attention.linear_proj.weight", "mlp.linear_fc1.weight",
                 "mlp.linear_fc2.weight", "input_layernorm.weight", "pre_mlp_layernorm.weight"]
    return (["embedding.word_embeddings.weight"]
            + [f"decoder.layers.{i}.{n}" for i in range(arch.num_layers) for n in per_layer]
            + ["decoder.final_layernorm.weight", "output_layer.weight"])


def hf_tensor(arch: ArchSpec, get: Getter, name: str, qkv: Callable[[int], torch.Tensor] | None = None
              ) -> torch.Tensor:
    """The megatron tensor ``name``, built from HF Llama tensors read through ``get`` (only those it needs), so a
    streaming writer can ask for any parameter in any order.

    ``qkv(i)`` may supply layer i's fused megatron QKV (Baichuan's W_pack path); by default it is built from
    q/k/v_proj. A NormHead arch stores the HF ``lm_head`` as is (normalising is idempotent).
    """
    fixed = {"embedding.word_embeddings.weight": "model.embed_tokens.weight",
             "decoder.final_layernorm.weight": "model.norm.weight", "output_layer.weight": "lm_head.weight"}
    if name in fixed:
        return get(fixed[name])
    match = _LAYER.fullmatch(name)
    if match is None or int(match.group(1)) >= arch.num_layers:
        raise KeyError(f"no Hugging Face source for megatron parameter {name!r} (arch {arch.name})")
    i, rest = int(match.group(1)), match.group(2)
    h = f"model.layers.{i}."
    if rest == "self_attention.linear_qkv.weight":
        if qkv is not None:
            return qkv(i)
        return fuse_qkv(arch, get(h + "self_attn.q_proj.weight"), get(h + "self_attn.k_proj.weight"),
                        get(h + "self_attn.v_proj.weight"))
    if rest == "mlp.linear_fc1.weight":
        return torch.cat([get(h + "mlp.gate_proj.weight"), get(h + "mlp.up_proj.weight")], dim=0)
    pairs = _layer_pairs(i)
    if name not in pairs:
        raise KeyError(f"no Hugging Face source for megatron parameter {name!r} (arch {arch.name})")
    return get(pairs[name])


def hf_to_mcore(arch: ArchSpec, get: Getter, qkv: Callable[[int], torch.Tensor] | None = None
                ) -> Iterator[Tuple[str, torch.Tensor]]:
    """Yield (megatron name, tensor) for every parameter, in model order (see :func:`hf_tensor`)."""
    for name in mcore_names(arch):
        yield name, hf_tensor(arch, get, name, qkv)


def mcore_to_hf(arch: ArchSpec, get: Getter, fold_norm_head: bool = True, fused_qkv: bool = False
                ) -> Iterator[Tuple[str, torch.Tensor]]:
    """Yield (HF name, tensor) from megatron tensors read through ``get(name)``, one layer at a time.

    ``fold_norm_head``: for a NormHead arch written as plain Llama, write the row-normalised head (Llama's
    head is a plain linear). ``fused_qkv``: write Baichuan's ``self_attn.W_pack.weight = [q; k; v]`` instead of
    q/k/v_proj (Baichuan2 has no GQA).
    """
    yield "model.embed_tokens.weight", get("embedding.word_embeddings.weight")
    for i in range(arch.num_layers):
        m, h = f"decoder.layers.{i}.", f"model.layers.{i}."
        q, k, v = split_qkv(arch, get(m + "self_attention.linear_qkv.weight"))
        if fused_qkv:
            yield h + "self_attn.W_pack.weight", torch.cat([q, k, v], dim=0)
        else:
            yield h + "self_attn.q_proj.weight", q
            yield h + "self_attn.k_proj.weight", k
            yield h + "self_attn.v_proj.weight", v
        gate, up = get(m + "mlp.linear_fc1.weight").chunk(2, dim=0)
        yield h + "mlp.gate_proj.weight", gate.contiguous()
        yield h + "mlp.up_proj.weight", up.contiguous()
        for mname, hname in _layer_pairs(i).items():
            yield hname, get(mname)
    yield "model.norm.weight", get("decoder.final_layernorm.weight")
    from megatron_huatuo.models.norm_head import normalize_rows  # the model's own NormHead normalisation

    head = get("output_layer.weight")
    yield "lm_head.weight", normalize_rows(head) if (arch.norm_head and fold_norm_head) else head


def hf_config(arch: ArchSpec, dtype: str = "float32") -> dict:
    """config.json for ``LlamaForCausalLM`` (RoPE archs only: Llama has no ALiBi)."""
    if arch.position_embedding != "rope":
        raise ValueError(f"arch {arch.name} uses {arch.position_embedding}; Llama format needs RoPE, use --format baichuan")
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": arch.vocab_size, "hidden_size": arch.hidden_size,
        "intermediate_size": arch.ffn_hidden_size, "num_hidden_layers": arch.num_layers,
        "num_attention_heads": arch.num_attention_heads, "num_key_value_heads": arch.num_query_groups,
        "head_dim": arch.head_dim, "hidden_act": "silu", "rms_norm_eps": arch.norm_eps,
        "max_position_embeddings": arch.max_position_embeddings, "rope_theta": float(arch.rotary_base),
        "rope_scaling": None, "tie_word_embeddings": arch.tie_embeddings, "attention_bias": False,
        "mlp_bias": False, "initializer_range": arch.init_method_std, "torch_dtype": dtype,
    }
