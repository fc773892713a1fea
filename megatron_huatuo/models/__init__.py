"""Architectures (registry, as data) and the one provider that builds megatron-core models from them.

``registry`` needs only the standard library; ``provider`` imports megatron-core when called.
"""
from megatron_huatuo.models.provider import (
    block_spec,
    build_model,
    build_model_chunks,
    have_transformer_engine,
    layer_spec,
    transformer_config,
)
from megatron_huatuo.models.registry import ARCHS, ArchSpec, arch_names, get_arch

__all__ = [
    "ARCHS",
    "ArchSpec",
    "arch_names",
    "block_spec",
    "build_model",
    "build_model_chunks",
    "get_arch",
    "have_transformer_engine",
    "layer_spec",
    "transformer_config",
]
