"""The architectures we train, as data: one registry of typed :class:`ArchSpec` records.

Real sizes follow the released Hugging Face configs of Baichuan2-7B/13B-Base and Yi-34B; each has a ``tiny-``
twin with the same structure (norm, MLP, position scheme, GQA, NormHead) at toy width for CPU tests:

- 4 layers, so PP=2 and the interleaved schedule (PP=2 x VPP=2, one layer per chunk) are possible;
- head counts divisible by TP=2; ``tiny-baichuan2-13b`` has 6 heads, not a power of two, so the interleaved
  ALiBi slopes are exercised; ``tiny-yi`` keeps GQA (8 query heads, 2 KV groups);
- a 512-token vocabulary.

Any other model comes from its Hugging Face ``config.json`` (``megatron_huatuo.models.hf_config``): the registry
names are presets, not the list of what can be trained.

Nothing here imports megatron-core: the checkpoint converters and the data tools can read the registry alone.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, Dict, Literal, Optional

PositionEmbedding = Literal["rope", "alibi"]
# Which Hugging Face layout an arch exports to by default: baichuan2 (W_pack, NormHead), or the transformers model
# of that name (yi and llama are both LlamaForCausalLM).
Family = Literal["baichuan2", "yi", "llama", "mistral", "qwen2"]


@dataclass(frozen=True)
class ArchSpec:
    """One decoder-only architecture. Field names say what they are in the HF config where they differ."""

    name: str
    family: Family
    num_layers: int  # num_hidden_layers
    hidden_size: int
    num_attention_heads: int
    num_query_groups: int  # num_key_value_heads; == num_attention_heads means plain multi-head attention
    ffn_hidden_size: int  # intermediate_size of the SwiGLU MLP
    vocab_size: int
    max_position_embeddings: int  # the context the base model was trained with
    norm_eps: float  # RMSNorm epsilon
    position_embedding: PositionEmbedding
    rotary_base: float = 10000.0  # rope_theta; unused with ALiBi
    norm_head: bool = False  # output-layer rows L2-normalised in the forward pass (Baichuan2)
    tie_embeddings: bool = False
    init_method_std: float = 0.02  # initializer_range
    hf_architecture: str = ""  # the ``architectures`` entry of the HF config (for the checkpoint tools)
    qkv_bias: bool = False  # biases on q/k/v (Qwen2); no other linear layer has a bias
    # Llama-3 RoPE scaling ("rope_type": "llama3") factor; None = plain RoPE. megatron-core fixes the other three
    # llama3 parameters (low_freq_factor 1, high_freq_factor 4, original context 8192); configs differing are refused.
    rope_scaling_factor: Optional[float] = None
    kv_channels: Optional[int] = None  # head_dim when it is not hidden_size / num_attention_heads (Mistral-Nemo)

    def __post_init__(self) -> None:
        problems = []
        if self.kv_channels is None and self.hidden_size % self.num_attention_heads:
            problems.append(f"hidden_size {self.hidden_size} not divisible by heads {self.num_attention_heads}")
        if self.num_attention_heads % self.num_query_groups:
            problems.append(
                f"num_attention_heads {self.num_attention_heads} not divisible by "
                f"num_query_groups {self.num_query_groups}"
            )
        if self.position_embedding not in ("rope", "alibi"):
            problems.append(f"position_embedding must be 'rope' or 'alibi', got {self.position_embedding!r}")
        if self.family not in ("baichuan2", "yi", "llama", "mistral", "qwen2"):
            problems.append(f"unknown family {self.family!r}")
        if self.position_embedding == "alibi" and self.rope_scaling_factor is not None:
            problems.append("rope_scaling_factor given for an ALiBi arch")
        if problems:
            raise ValueError(f"arch {self.name!r}: " + "; ".join(problems))

    @property
    def head_dim(self) -> int:
        return self.kv_channels or self.hidden_size // self.num_attention_heads

    def to_json(self) -> Dict[str, Any]:
        """Every field, JSON-ready (written into import and training directories so tools can read it back)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_json(cls, data: Dict[str, Any], where: str = "") -> "ArchSpec":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{where}: unknown ArchSpec field(s) {unknown}")
        return cls(**data)

    @property
    def is_tiny(self) -> bool:
        return self.name.startswith("tiny-")

    def num_parameters(self) -> int:
        """Parameter count (embeddings, attention, MLP, norms, output layer), for logs and FLOP/MFU formulas."""
        h, f, v, n = self.hidden_size, self.ffn_hidden_size, self.vocab_size, self.num_layers
        q, kv = self.num_attention_heads * self.head_dim, self.num_query_groups * self.head_dim
        attn = h * (q + 2 * kv) + q * h + ((q + 2 * kv) if self.qkv_bias else 0)
        mlp = 3 * h * f
        per_layer = attn + mlp + 2 * h
        embed = v * h * (1 if self.tie_embeddings else 2)
        return n * per_layer + embed + h

    def flops_per_token(self, seq_length: int, training: bool = True) -> float:
        """Model FLOPs per token (PaLM appendix B convention, the basis of MFU).

        Forward = 2 x (multiply-adds of the QKV/output projections, the SwiGLU MLP and the output layer) plus
        attention scores and weighted sum, 2 x 2 x seq x hidden per layer (the full square, as PaLM and
        Megatron-LM count it). Training = 3 x forward (backward is twice the forward); activation recomputation
        is deliberately not counted (MFU, not hardware FLOPs utilisation).
        """
        h, f, v, n = self.hidden_size, self.ffn_hidden_size, self.vocab_size, self.num_layers
        q, kv = self.num_attention_heads * self.head_dim, self.num_query_groups * self.head_dim
        dense = h * (q + 2 * kv) + q * h + 3 * h * f
        attention = 2 * seq_length * q
        forward = 2 * (n * (dense + attention) + h * v)
        return float(3 * forward if training else forward)

    def with_overrides(self, **changes) -> "ArchSpec":
        """A copy with some fields changed (e.g. ``num_layers`` for a reduced-depth benchmark)."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise KeyError(f"unknown ArchSpec field(s) {unknown}; known: {sorted(known)}")
        return replace(self, **changes)


_BAICHUAN2_COMMON = dict(
    family="baichuan2",
    vocab_size=125696,
    max_position_embeddings=4096,
    norm_eps=1e-6,
    norm_head=True,
)

_ARCHS = [
    ArchSpec(
        name="baichuan2-7b",
        num_layers=32,
        hidden_size=4096,
        num_attention_heads=32,
        num_query_groups=32,
        ffn_hidden_size=11008,
        position_embedding="rope",
        rotary_base=10000.0,
        hf_architecture="BaichuanForCausalLM",
        **_BAICHUAN2_COMMON,
    ),
    ArchSpec(
        name="baichuan2-13b",
        num_layers=40,
        hidden_size=5120,
        num_attention_heads=40,
        num_query_groups=40,
        ffn_hidden_size=13696,
        position_embedding="alibi",
        hf_architecture="BaichuanForCausalLM",
        **_BAICHUAN2_COMMON,
    ),
    ArchSpec(
        name="yi-34b",
        family="yi",
        num_layers=60,
        hidden_size=7168,
        num_attention_heads=56,
        num_query_groups=8,
        ffn_hidden_size=20480,
        vocab_size=64000,
        max_position_embeddings=4096,
        norm_eps=1e-5,
        position_embedding="rope",
        rotary_base=5_000_000.0,
        hf_architecture="LlamaForCausalLM",
    ),
]

_TINY = dict(num_layers=4, vocab_size=512, max_position_embeddings=256)
_ARCHS += [
    replace(_ARCHS[0], name="tiny-baichuan2-7b", hidden_size=64, num_attention_heads=4, num_query_groups=4,
            ffn_hidden_size=128, **_TINY),
    replace(_ARCHS[1], name="tiny-baichuan2-13b", hidden_size=96, num_attention_heads=6, num_query_groups=6,
            ffn_hidden_size=160, **_TINY),
    replace(_ARCHS[2], name="tiny-yi", hidden_size=64, num_attention_heads=8, num_query_groups=2,
            ffn_hidden_size=128, **_TINY),
]

ARCHS: Dict[str, ArchSpec] = {a.name: a for a in _ARCHS}


def get_arch(name: str) -> ArchSpec:
    """The registered architecture called ``name``; a ``KeyError`` listing the known names otherwise."""
    try:
        return ARCHS[name]
    except KeyError:
        raise KeyError(f"unknown architecture {name!r}; known: {', '.join(sorted(ARCHS))}") from None


def arch_names(include_tiny: bool = True) -> list[str]:
    return sorted(n for n, a in ARCHS.items() if include_tiny or not a.is_tiny)


def find_arch(name: Optional[str]) -> Optional[ArchSpec]:
    """Like :func:`get_arch` but ``None`` for ``None``/unknown names (for optional lookups)."""
    return ARCHS.get(name) if name else None


# Special token ids of the presets' tokenizers (Baichuan2 and Yi both: <unk>/<pad> 0, <s> 1, </s> 2), written into
# an export's config.json / generation_config.json when no source config.json is known.
PRESET_TOKEN_IDS: Dict[str, int] = {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}
