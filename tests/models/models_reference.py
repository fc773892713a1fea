"""An independent plain-torch implementation of our three architectures, for checking megatron-core's.

Written from the papers / Hugging Face modelling conventions, not from our provider: RMSNorm, SwiGLU, RoPE
(rotate-half, as Llama and Baichuan2-7B), ALiBi (Baichuan2-13B's form: ``slope * key_position`` added to every
query row, causal mask), GQA, NormHead. It reads weights by megatron-core parameter name (the fused QKV is split
per query group; the fused SwiGLU input projection is [gate; up]).
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F


def reference_slopes(n: int) -> List[float]:
    """ALiBi slopes written from the paper's recipe (closed form, no recursion)."""
    def geometric(count: int) -> List[float]:
        return [2.0 ** (-8.0 * k / count) for k in range(1, count + 1)]

    m = 1
    while m * 2 <= n:
        m *= 2
    if m == n:
        return geometric(n)
    extras = [2.0 ** (-8.0 * k / (2 * m)) for k in range(1, 2 * m + 1, 2)]  # odd k = the even indices 0, 2, ...
    return geometric(m) + extras[: n - m]


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def _rope(x: torch.Tensor, base: float) -> torch.Tensor:
    """x [b, heads, s, d] -> rotated, positions 0..s-1."""
    d, s = x.shape[-1], x.shape[-2]
    inv_freq = 1.0 / (base ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
    angles = torch.arange(s, dtype=torch.float64)[:, None] * inv_freq[None, :]
    emb = torch.cat([angles, angles], dim=-1)
    cos, sin = emb.cos().to(x.dtype), emb.sin().to(x.dtype)
    x1, x2 = x[..., : d // 2], x[..., d // 2 :]
    rotated = torch.cat([-x2, x1], dim=-1)
    return x * cos + rotated * sin


def reference_logits(arch, sd: Dict[str, torch.Tensor], tokens: torch.Tensor,
                     mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Logits [b, s, vocab] of ``tokens`` [b, s]; ``mask`` [b, 1, s, s] bool (True = masked) or causal."""
    b, s = tokens.shape
    h, nh, ng = arch.hidden_size, arch.num_attention_heads, arch.num_query_groups
    hd, hpg = h // nh, nh // ng
    x = sd["embedding.word_embeddings.weight"][tokens]  # [b, s, h]
    if mask is None:
        mask = torch.ones(s, s, dtype=torch.bool).triu(1)[None, None]
    if arch.position_embedding == "alibi":
        slopes = torch.tensor(reference_slopes(nh))
        bias = slopes[:, None, None] * torch.arange(s, dtype=torch.float32)[None, None, :]  # [nh, 1, s]
    for layer in range(arch.num_layers):
        p = f"decoder.layers.{layer}."
        y = _rms_norm(x, sd[p + "input_layernorm.weight"], arch.norm_eps)
        qkv = (y @ sd[p + "self_attention.linear_qkv.weight"].T).view(b, s, ng, hpg + 2, hd)
        q = qkv[:, :, :, :hpg].reshape(b, s, nh, hd).transpose(1, 2)
        k = qkv[:, :, :, hpg].transpose(1, 2).repeat_interleave(hpg, dim=1)
        v = qkv[:, :, :, hpg + 1].transpose(1, 2).repeat_interleave(hpg, dim=1)
        if arch.position_embedding == "rope":
            q, k = _rope(q, arch.rotary_base), _rope(k, arch.rotary_base)
        scores = q @ k.transpose(-1, -2) / math.sqrt(hd)
        if arch.position_embedding == "alibi":
            scores = scores + bias[None]
        scores = scores.masked_fill(mask, float("-inf"))
        attn = torch.softmax(scores, dim=-1) @ v  # [b, nh, s, hd]
        x = x + attn.transpose(1, 2).reshape(b, s, h) @ sd[p + "self_attention.linear_proj.weight"].T
        y = _rms_norm(x, sd[p + "pre_mlp_layernorm.weight"], arch.norm_eps)
        gate, up = (y @ sd[p + "mlp.linear_fc1.weight"].T).chunk(2, dim=-1)
        x = x + (F.silu(gate) * up) @ sd[p + "mlp.linear_fc2.weight"].T
    x = _rms_norm(x, sd["decoder.final_layernorm.weight"], arch.norm_eps)
    head = sd["output_layer.weight"]
    if arch.norm_head:
        head = head / head.norm(dim=1, keepdim=True)
    return x @ head.T
