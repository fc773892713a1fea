"""Test stand-in for Baichuan2-13B's remote ``modeling_baichuan.py``: an independent plain-torch forward of the
published architecture (the released file is not available offline).

Pre-norm decoder: RMSNorm, ``W_pack`` = [q; k; v] projection, ALiBi in Baichuan's form (``slope_h * key_position``
added to every query row, causal mask; slopes of Press et al., interleaved for non-power-of-two head counts), no
rotary embedding, SwiGLU MLP (gate/up/down), final RMSNorm, NormHead (``lm_head`` rows L2-normalised).
"""
import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import CausalLMOutput

try:
    from .configuration_baichuan import BaichuanConfig
except ImportError:  # loaded as a top-level module
    from configuration_baichuan import BaichuanConfig


def _slopes(n):
    power = 2 ** math.floor(math.log2(n))
    base = [2.0 ** (-8.0 * (k + 1) / power) for k in range(power)]
    extra = [2.0 ** (-8.0 * (2 * k + 1) / (2 * power)) for k in range(n - power)]
    return base + extra


class _RMSNorm(nn.Module):
    def __init__(self, size, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class _Attention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.heads = config.num_attention_heads
        self.W_pack = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=False)
        self.o_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)

    def forward(self, x):
        b, s, h = x.shape
        q, k, v = (t.view(b, s, self.heads, h // self.heads).transpose(1, 2) for t in self.W_pack(x).chunk(3, -1))
        scores = q @ k.transpose(-1, -2) / math.sqrt(h // self.heads)
        slopes = torch.tensor(_slopes(self.heads), dtype=torch.float32)
        scores = scores + (slopes[:, None, None] * torch.arange(s, dtype=torch.float32)[None, None, :]).to(x.dtype)
        future = torch.ones(s, s, dtype=torch.bool).triu(1)
        probs = torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1)
        return self.o_proj((probs @ v).transpose(1, 2).reshape(b, s, h))


class _MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class _Layer(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.input_layernorm = _RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = _Attention(config)
        self.post_attention_layernorm = _RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = _MLP(config)

    def forward(self, x):
        x = x + self.self_attn(self.input_layernorm(x))
        return x + self.mlp(self.post_attention_layernorm(x))


class _Model(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(_Layer(config) for _ in range(config.num_hidden_layers))
        self.norm = _RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, input_ids):
        x = self.embed_tokens(input_ids)
        for layer in self.layers:
            x = layer(x)
        return self.norm(x)


class BaichuanForCausalLM(PreTrainedModel):
    config_class = BaichuanConfig
    base_model_prefix = "model"

    def __init__(self, config):
        super().__init__(config)
        self.model = _Model(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def _init_weights(self, module):
        pass  # every weight comes from the checkpoint

    def forward(self, input_ids=None, **kwargs):
        hidden = self.model(input_ids)
        return CausalLMOutput(logits=F.linear(hidden, F.normalize(self.lm_head.weight, dim=-1)))
