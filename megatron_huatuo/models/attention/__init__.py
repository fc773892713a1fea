"""Core-attention backends (``model.attention_backend: auto | te | sdpa | flex | local``) as megatron-core
submodule specs: each is a class for ``SelfAttention.submodules.core_attention``, so projections, norms, tensor /
sequence / pipeline parallelism and checkpoints are megatron-core's and identical across backends.

- :mod:`.resolve`: names, the ``auto`` rule, checks, :func:`build_kwargs` (backend name + arch -> build_model kwargs);
- :mod:`.segments`: how isolated packed documents reach each backend (``model_inputs``, ``schedule_shape``);
- :mod:`.sdpa`, :mod:`.flex`, :mod:`.te`, and ``local`` (megatron-core's ``DotProductAttention`` /
  ``models/alibi.py``): the modules.
"""
from __future__ import annotations

from megatron_huatuo.models.attention.resolve import (
    BACKENDS,
    CONCRETE_BACKENDS,
    AttentionBackendError,
    build_kwargs,
    check_backend,
    have_flex_attention,
    resolve_backend,
)


def core_attention_class(backend: str, arch) -> type:
    """The ``core_attention`` class of a concrete ``backend`` for ``arch`` (RoPE or ALiBi)."""
    alibi = arch.position_embedding == "alibi"
    if backend == "local":
        if alibi:
            from megatron_huatuo.models.alibi import AlibiDotProductAttention

            return AlibiDotProductAttention
        from megatron.core.transformer.dot_product_attention import DotProductAttention

        return DotProductAttention
    if backend == "sdpa":
        if alibi:
            from megatron_huatuo.models.alibi import AlibiDotProductAttention

            return AlibiDotProductAttention  # SDPA with the ALiBi bias: the same module as local
        from megatron_huatuo.models.attention.sdpa import SdpaDotProductAttention

        return SdpaDotProductAttention
    if backend == "flex":
        from megatron_huatuo.models.attention.flex import FlexAlibiDotProductAttention, FlexDotProductAttention

        return FlexAlibiDotProductAttention if alibi else FlexDotProductAttention
    if backend == "te":
        from megatron_huatuo.models.attention.te import te_core_attention

        return te_core_attention(arch)
    raise AttentionBackendError(f"expected one of {'|'.join(CONCRETE_BACKENDS)} here (resolve 'auto' first), "
                                f"got {backend!r}")


__all__ = [
    "BACKENDS",
    "CONCRETE_BACKENDS",
    "AttentionBackendError",
    "build_kwargs",
    "check_backend",
    "core_attention_class",
    "have_flex_attention",
    "resolve_backend",
]
