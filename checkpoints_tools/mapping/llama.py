"""megatron-core GPTModel <-> Hugging Face Llama-shaped models (``LlamaForCausalLM``, ``MistralForCausalLM``,
``Qwen2ForCausalLM``: the same tensor names; Qwen2 adds q/k/v biases) weight mapping.

megatron-core fuses q/k/v into ``linear_qkv.weight`` laid out per query group:
``[groups x (heads_per_group*head_dim q | head_dim k | head_dim v), hidden]`` (a TP shard is a block of whole
groups), and gate/up into ``linear_fc1.weight = [gate; up]``. HF Llama keeps them separate. Norm weights live
under ``input_layernorm`` / ``pre_mlp_layernorm`` with the local spec used by ``megatron_huatuo.models``.
q/k/v biases (Qwen2) are fused into ``linear_qkv.bias`` in the same per-group layout as the weights. A tied arch
has no ``output_layer.weight`` (megatron-core reads the embedding) and its HF checkpoint no ``lm_head.weight``.
"""
from __future__ import annotations

import re
from typing import Callable, Dict, Iterator, Tuple

import torch

from megatron_huatuo.models.registry import ArchSpec

Getter = Callable[[str], torch.Tensor]
_LAYER = re.compile(r"decoder\.layers\.(\d+)\.(.+)")


def fuse_qkv(arch: ArchSpec, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """HF q [heads*hd, H], k/v [groups*hd, H] -> megatron's per-group interleaved ``linear_qkv`` weight; 1-D
    biases [heads*hd], [groups*hd] -> the ``linear_qkv`` bias in the same layout."""
    nh, ng, hd = arch.num_attention_heads, arch.num_query_groups, arch.head_dim
    tail = tuple(q.shape[1:])
    for name, t, rows in (("q", q, nh * hd), ("k", k, ng * hd), ("v", v, ng * hd)):
        if tuple(t.shape) != (rows, *tail):
            raise ValueError(f"{name}_proj has shape {tuple(t.shape)}, arch {arch.name} expects {(rows, *tail)}")
    hpg = nh // ng
    q = q.reshape(ng, hpg * hd, *tail)
    k = k.reshape(ng, hd, *tail)
    v = v.reshape(ng, hd, *tail)
    return torch.cat([q, k, v], dim=1).reshape(-1, *tail).contiguous()


def split_qkv(arch: ArchSpec, qkv: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inverse of :func:`fuse_qkv` (weights or biases)."""
    nh, ng, hd = arch.num_attention_heads, arch.num_query_groups, arch.head_dim
    hpg = nh // ng
    tail = tuple(qkv.shape[1:])
    g = qkv.reshape(ng, hpg + 2, hd, *tail)
    return (g[:, :hpg].reshape(nh * hd, *tail).contiguous(), g[:, hpg].reshape(ng * hd, *tail).contiguous(),
            g[:, hpg + 1].reshape(ng * hd, *tail).contiguous())


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
    if arch.qkv_bias:
        per_layer.insert(1, "self_attention.linear_qkv.bias")
    return (["embedding.word_embeddings.weight"]
            + [f"decoder.layers.{i}.{n}" for i in range(arch.num_layers) for n in per_layer]
            + ["decoder.final_layernorm.weight"] + ([] if arch.tie_embeddings else ["output_layer.weight"]))


def hf_tensor(arch: ArchSpec, get: Getter, name: str, qkv: Callable[[int], torch.Tensor] | None = None
              ) -> torch.Tensor:
    """The megatron tensor ``name``, built from HF Llama tensors read through ``get`` (only those it needs), so a
    streaming writer can ask for any parameter in any order.

    ``qkv(i)`` may supply layer i's fused megatron QKV (Baichuan's W_pack path); by default it is built from
    q/k/v_proj. A NormHead arch stores the HF ``lm_head`` as is (normalising is idempotent).
    """
    fixed = {"embedding.word_embeddings.weight": "model.embed_tokens.weight",
             "decoder.final_layernorm.weight": "model.norm.weight", "output_layer.weight": "lm_head.weight"}
    if name == "output_layer.weight" and arch.tie_embeddings:
        raise KeyError(f"arch {arch.name} ties the output layer to the embedding: no output_layer.weight")
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
    if rest == "self_attention.linear_qkv.bias" and arch.qkv_bias:
        return fuse_qkv(arch, get(h + "self_attn.q_proj.bias"), get(h + "self_attn.k_proj.bias"),
                        get(h + "self_attn.v_proj.bias"))
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
            if arch.qkv_bias:  # transformers' order: each projection's weight, then its bias
                qb, kb, vb = split_qkv(arch, get(m + "self_attention.linear_qkv.bias"))
                yield h + "self_attn.q_proj.bias", qb
            yield h + "self_attn.k_proj.weight", k
            if arch.qkv_bias:
                yield h + "self_attn.k_proj.bias", kb
            yield h + "self_attn.v_proj.weight", v
            if arch.qkv_bias:
                yield h + "self_attn.v_proj.bias", vb
        gate, up = get(m + "mlp.linear_fc1.weight").chunk(2, dim=0)
        yield h + "mlp.gate_proj.weight", gate.contiguous()
        yield h + "mlp.up_proj.weight", up.contiguous()
        for mname, hname in _layer_pairs(i).items():
            yield hname, get(mname)
    yield "model.norm.weight", get("decoder.final_layernorm.weight")
    if arch.tie_embeddings:  # transformers ties lm_head to the embedding and saves no lm_head.weight
        return
    from megatron_huatuo.models.norm_head import normalize_rows  # the model's own NormHead normalisation

    head = get("output_layer.weight")
    yield "lm_head.weight", normalize_rows(head) if (arch.norm_head and fold_norm_head) else head


CLASSES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}


def hf_config(arch: ArchSpec, dtype: str = "float32", fmt: str = "llama") -> dict:
    """config.json for transformers' ``LlamaForCausalLM`` / ``MistralForCausalLM`` / ``Qwen2ForCausalLM``
    (``fmt``), in the transformers 4.x spelling (``rope_theta`` + ``rope_scaling``) that 4.x and 5.x both read.
    RoPE archs only; q/k/v biases only as Qwen2 (Llama's ``attention_bias`` would add an o_proj bias too)."""
    if fmt not in CLASSES:
        raise ValueError(f"no Llama-shaped format {fmt!r}; known: {', '.join(CLASSES)}")
    if arch.position_embedding != "rope":
        raise ValueError(f"arch {arch.name} uses {arch.position_embedding}; --format {fmt} needs RoPE, "
                         "use --format baichuan")
    if arch.qkv_bias and fmt != "qwen2":
        raise ValueError(f"arch {arch.name} has q/k/v biases: only --format qwen2 can express them")
    scaling = None
    if arch.rope_scaling_factor is not None:
        from megatron_huatuo.models.hf_config import LLAMA3_FIXED

        scaling = {"rope_type": "llama3", "factor": arch.rope_scaling_factor, **LLAMA3_FIXED}
    config = {
        "architectures": [CLASSES[fmt]], "model_type": fmt,
        "vocab_size": arch.vocab_size, "hidden_size": arch.hidden_size,
        "intermediate_size": arch.ffn_hidden_size, "num_hidden_layers": arch.num_layers,
        "num_attention_heads": arch.num_attention_heads, "num_key_value_heads": arch.num_query_groups,
        "head_dim": arch.head_dim, "hidden_act": "silu", "rms_norm_eps": arch.norm_eps,
        "max_position_embeddings": arch.max_position_embeddings, "rope_theta": float(arch.rotary_base),
        "rope_scaling": scaling, "tie_word_embeddings": arch.tie_embeddings,
        "initializer_range": arch.init_method_std, "torch_dtype": dtype,
    }
    if fmt == "llama":
        config.update(attention_bias=False, mlp_bias=False)
    elif fmt == "mistral":
        config.update(sliding_window=None)
    else:
        config.update(use_sliding_window=False, sliding_window=None, max_window_layers=arch.num_layers)
    return config
