"""The architectures we train, as data: one registry of typed :class:`ArchSpec` records.

Real sizes follow the released Hugging Face configs of Baichuan2-7B/13B-Base and Yi-34B; each has a ``tiny-``
twin with the same structure (norm, MLP, position scheme, GQA, NormHead) at toy width for CPU tests:

- 4 layers, so PP=2 and the interleaved schedule (PP=2 x VPP=2, one layer per chunk) are possible;
- head counts divisible by TP=2; ``tiny-baichuan2-13b`` has 6 heads, not a power of two, so the interleaved
  ALiBi slopes are exercised; ``tiny-yi`` keeps GQA (8 query heads, 2 KV groups);
- a 512-token vocabulary.

Nothing here imports megatron-core: the checkpoint converters and the data tools can read the registry alone.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Dict, Literal, Optional

PositionEmbedding = Literal["rope", "alibi"]


@dataclass(frozen=True)
class ArchSpec:
    """One decoder-only architecture. Field names say what they are in the HF config where they differ."""

    name: str
    family: Literal["baichuan2", "yi"]
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

    def __post_init__(self) -> None:
        problems = []
        if self.hidden_size % self.num_attention_heads:
            problems.append(f"hidden_size {self.hidden_size} not divisible by heads {self.num_attention_heads}")
        if self.num_attention_heads % self.num_query_groups:
            problems.append(
                f"num_attention_heads {self.num_attention_heads} not divisible by "
                f"num_query_groups {self.num_query_groups}"
            )
        if self.position_embedding not in ("rope", "alibi"):
            problems.append(f"position_embedding must be 'rope' or 'alibi', got {self.position_embedding!r}")
        if problems:
            raise ValueError(f"arch {self.name!r}: " + "; ".join(problems))

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def is_tiny(self) -> bool:
        return self.name.startswith("tiny-")

    def num_parameters(self) -> int:
        """Parameter count (embeddings, attention, MLP, norms, output layer), for logs and FLOP/MFU formulas."""
        h, f, v, n = self.hidden_size, self.ffn_hidden_size, self.vocab_size, self.num_layers
        kv = self.num_query_groups * self.head_dim
        attn = h * (h + 2 * kv) + h * h
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
        kv = self.num_query_groups * self.head_dim
        dense = h * (h + 2 * kv) + h * h + 3 * h * f
        attention = 2 * seq_length * h
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
