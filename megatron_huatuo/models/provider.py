"""The one place that turns an :class:`ArchSpec` into megatron-core objects.

- :func:`transformer_config` -> ``TransformerConfig`` (architecture + parallelism + precision + recomputation);
- :func:`layer_spec` -> the transformer-layer ``ModuleSpec`` (megatron-core local modules, or Transformer Engine
  modules) with the core attention of the chosen backend (``models/attention/``: local, sdpa, flex, te);
- :func:`build_model` -> one ``GPTModel`` chunk (NormHead output layer for Baichuan2);
- :func:`build_model_chunks` -> this rank's chunks (one, or one per virtual stage with the interleaved schedule).

Keeping construction here means a later move to megatron-core's ``HybridModel`` or another release touches one file.
"""
from __future__ import annotations

import copy
import dataclasses
import importlib.util
from typing import Any, List, Optional

import torch

from megatron_huatuo.models.layout import stage_layers
from megatron_huatuo.models.registry import ArchSpec, get_arch

PRECISIONS = ("fp32", "bf16", "fp16")
RECOMPUTE = ("none", "selective", "full")
TRANSFORMER_IMPLS = ("local", "transformer_engine")


def have_transformer_engine() -> bool:
    """True when Transformer Engine for PyTorch can be imported (and a GPU exists for it to run on)."""
    return torch.cuda.is_available() and importlib.util.find_spec("transformer_engine") is not None


def _as_arch(arch: ArchSpec | str) -> ArchSpec:
    return get_arch(arch) if isinstance(arch, str) else arch


def transformer_config(
    arch: ArchSpec | str,
    *,
    tensor_parallel: int = 1,
    pipeline_parallel: int = 1,
    virtual_pipeline: Optional[int] = None,
    context_parallel: int = 1,
    sequence_parallel: bool = False,
    precision: str = "fp32",
    fp8: Optional[str] = None,
    fp8_recipe: str = "delayed",
    recompute: str = "none",
    recompute_num_layers: Optional[int] = None,
    num_layers: Optional[int] = None,
    attention_dropout: float = 0.0,
    hidden_dropout: float = 0.0,
    **extra: Any,
):
    """A megatron-core ``TransformerConfig`` for ``arch``.

    ``precision``: fp32 | bf16 | fp16 (parameters and pipeline messages in that dtype; bf16 trains with fp32 main
    weights through the mixed-precision optimizer). ``fp8``: None | "hybrid" | "e4m3" (needs Transformer Engine;
    ``fp8_recipe`` is TE's scaling recipe). ``recompute``: none | selective (core attention) | full (whole layers,
    uniform, ``recompute_num_layers`` per group, default 1). ``num_layers`` overrides the depth (reduced-depth
    benchmarks). Any other keyword is a ``TransformerConfig`` field (unknown names are an error).
    """
    from megatron.core.transformer import TransformerConfig

    arch = _as_arch(arch)
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if recompute not in RECOMPUTE:
        raise ValueError(f"recompute must be one of {RECOMPUTE}, got {recompute!r}")
    if fp8 is not None:
        if fp8 not in ("hybrid", "e4m3"):
            raise ValueError(f"fp8 must be None, 'hybrid' or 'e4m3', got {fp8!r}")
        if not have_transformer_engine():
            raise RuntimeError(
                f"fp8={fp8!r} needs Transformer Engine on a CUDA machine (pip install 'megatron-huatuo[gpu]'); "
                "it is not importable here"
            )
    if sequence_parallel and tensor_parallel < 2:
        raise ValueError("sequence_parallel needs tensor_parallel >= 2")
    layers = num_layers or arch.num_layers
    for name, size in (("num_attention_heads", arch.num_attention_heads),
                       ("num_query_groups", arch.num_query_groups), ("ffn_hidden_size", arch.ffn_hidden_size),
                       ("vocab_size", arch.vocab_size)):
        if size % tensor_parallel:
            raise ValueError(f"arch {arch.name}: {name}={size} is not divisible by tensor_parallel={tensor_parallel}")
    first, last = extra.get("num_layers_in_first_pipeline_stage"), extra.get("num_layers_in_last_pipeline_stage")
    try:  # megatron-core's uneven-split rules, checked here with the recipe's key names
        stage_layers(layers, pipeline_parallel, virtual_pipeline, first, last)
    except ValueError as err:
        raise ValueError(f"arch {arch.name}: {err}") from None

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    kwargs: dict[str, Any] = dict(
        num_layers=layers,
        hidden_size=arch.hidden_size,
        num_attention_heads=arch.num_attention_heads,
        num_query_groups=arch.num_query_groups,
        ffn_hidden_size=arch.ffn_hidden_size,
        kv_channels=arch.head_dim,
        normalization="RMSNorm",
        layernorm_epsilon=arch.norm_eps,
        gated_linear_unit=True,
        activation_func=torch.nn.functional.silu,
        add_bias_linear=False,
        add_qkv_bias=arch.qkv_bias,
        init_method_std=arch.init_method_std,
        attention_dropout=attention_dropout,
        hidden_dropout=hidden_dropout,
        attention_softmax_in_fp32=True,
        apply_query_key_layer_scaling=False,
        tensor_model_parallel_size=tensor_parallel,
        pipeline_model_parallel_size=pipeline_parallel,
        virtual_pipeline_model_parallel_size=virtual_pipeline if virtual_pipeline and virtual_pipeline > 1 else None,
        context_parallel_size=context_parallel,
        sequence_parallel=sequence_parallel,
        params_dtype=dtype,
        pipeline_dtype=dtype,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        # gloo matches point-to-point messages between two ranks in posting order, and the batched path posts
        # sends and receives in an order that pairs an activation with a gradient when both pipeline
        # neighbours are the same rank (PP=2, interleaved): measured wrong losses. The unbatched path orders
        # even/odd ranks so they pair up, so CPU runs use it.
        batch_p2p_comm=torch.cuda.is_available(),
    )
    if fp8 is not None:
        kwargs.update(fp8=fp8, fp8_recipe=fp8_recipe)
    if recompute == "selective":
        kwargs.update(recompute_granularity="selective", recompute_modules=["core_attn"])
    elif recompute == "full":
        kwargs.update(recompute_granularity="full", recompute_method="uniform",
                      recompute_num_layers=recompute_num_layers or 1)
    known = {f.name for f in dataclasses.fields(TransformerConfig)}
    unknown = sorted(set(extra) - known)
    if unknown:
        raise TypeError(f"unknown TransformerConfig field(s): {unknown}")
    kwargs.update(extra)
    return TransformerConfig(**kwargs)


def layer_spec(arch: ArchSpec | str, config, *, transformer_impl: str = "local", masked_segments: bool = False,
               attention_backend: str = "local"):
    """The transformer-layer ``ModuleSpec`` for ``arch``.

    ``transformer_impl``: "local" (megatron-core's own modules; CPU and GPU) or "transformer_engine" (TE modules;
    required for FP8). ``attention_backend``: the core attention, one of local | sdpa | flex | te (resolve
    ``auto`` first: ``models.attention.build_kwargs``). ``masked_segments``: True when rows hold isolated
    documents (``models.attention.segments.model_inputs`` gives each backend its inputs). The attention is then
    declared ``arbitrary`` so fused causal kernels cannot ignore the mask (``te`` stays causal: THD documents);
    with False the model is plain causal and takes no mask.
    """
    from megatron.core.models.gpt.gpt_layer_specs import (
        get_gpt_layer_local_spec,
        get_gpt_layer_with_transformer_engine_spec,
    )
    from megatron.core.transformer.enums import AttnMaskType

    from megatron_huatuo.models.attention import core_attention_class

    arch = _as_arch(arch)
    if transformer_impl not in TRANSFORMER_IMPLS:
        raise ValueError(f"transformer_impl must be one of {TRANSFORMER_IMPLS}, got {transformer_impl!r}")
    if attention_backend == "te" and transformer_impl != "transformer_engine":
        raise ValueError("attention_backend='te' needs transformer_impl='transformer_engine'")
    if getattr(config, "fp8", None) and transformer_impl != "transformer_engine":
        raise ValueError("fp8 training needs transformer_impl='transformer_engine'")
    if getattr(config, "context_parallel_size", 1) > 1:
        if transformer_impl != "transformer_engine":
            raise ValueError("context_parallel > 1 needs transformer_impl='transformer_engine' (megatron-core's "
                             "local attention has no context parallelism)")
        if arch.position_embedding == "alibi":
            raise ValueError(f"arch {arch.name}: ALiBi attention does not support context_parallel > 1")
    if transformer_impl == "transformer_engine":
        if not have_transformer_engine():
            raise RuntimeError("transformer_impl='transformer_engine' but Transformer Engine is not importable here")
        spec = get_gpt_layer_with_transformer_engine_spec()
    else:
        spec = get_gpt_layer_local_spec(normalization="RMSNorm")
    spec = copy.deepcopy(spec)
    if transformer_impl == "local":
        from megatron_huatuo.models.norms import RMSNorm

        # megatron-core's torch norm refuses sequence parallelism; ours flags its weight for the TP grad sum.
        spec.submodules.input_layernorm = RMSNorm
        spec.submodules.pre_mlp_layernorm = RMSNorm
    attention = spec.submodules.self_attention
    attention.params = dict(attention.params or {})
    arbitrary = masked_segments and attention_backend != "te"
    attention.params["attn_mask_type"] = AttnMaskType.arbitrary if arbitrary else AttnMaskType.causal
    # The backend's core attention, under either spec (TE's linear layers and fused norms are kept).
    attention.submodules.core_attention = core_attention_class(attention_backend, arch)
    return spec


def block_spec(arch: ArchSpec | str, config, vp_stage: Optional[int] = None, *, transformer_impl: str = "local",
               masked_segments: bool = False, attention_backend: str = "local"):
    """The decoder-block spec of this pipeline stage: :func:`layer_spec` repeated, and our final norm.

    Given only a layer spec, megatron-core picks the final norm itself (Apex, else torch's, which refuses
    sequence parallelism); giving the block spec keeps the final norm consistent with the layers.
    """
    from megatron.core.transformer.transformer_block import TransformerBlockSubmodules, get_num_layers_to_build

    layer = layer_spec(arch, config, transformer_impl=transformer_impl, masked_segments=masked_segments,
                       attention_backend=attention_backend)
    if transformer_impl == "transformer_engine":
        from megatron.core.extensions.transformer_engine import TENorm as final_norm
    else:
        from megatron_huatuo.models.norms import RMSNorm as final_norm
    count = get_num_layers_to_build(config, vp_stage=vp_stage)
    return TransformerBlockSubmodules(layer_specs=[layer] * count, layer_norm=final_norm)


def build_model(
    arch: ArchSpec | str,
    config,
    pre_process: bool = True,
    post_process: bool = True,
    vp_stage: Optional[int] = None,
    *,
    transformer_impl: str = "local",
    masked_segments: bool = False,
    attention_backend: str = "local",
    max_sequence_length: Optional[int] = None,
    parallel_output: bool = True,
):
    """One megatron-core ``GPTModel`` (chunk) of ``arch`` on this rank's device.

    The caller's ``config`` decides parallelism and precision (see :func:`transformer_config`).
    ``pre_process``/``post_process``: whether this chunk holds the embedding / the final norm and output layer.
    Baichuan2 gets the NormHead output layer; ALiBi architectures get no rotary embedding.
    ``attention_backend``/``transformer_impl``/``masked_segments``: from ``models.attention.build_kwargs``.
    """
    from megatron_huatuo.compat import gpt_model_class
    from megatron_huatuo.models.norm_head import NormHeadColumnParallelLinear

    GPTModel = gpt_model_class()  # noqa: N806 (0.19's deprecation warning filtered: compat.py)

    arch = _as_arch(arch)
    if arch.norm_head and arch.tie_embeddings:
        raise ValueError(f"arch {arch.name}: NormHead cannot be tied to the input embedding")
    spec = block_spec(arch, config, vp_stage, transformer_impl=transformer_impl, masked_segments=masked_segments,
                      attention_backend=attention_backend)
    model = GPTModel(
        config=config,
        transformer_layer_spec=spec,
        vocab_size=arch.vocab_size,
        max_sequence_length=max_sequence_length or arch.max_position_embeddings,
        pre_process=pre_process,
        post_process=post_process,
        parallel_output=parallel_output,
        share_embeddings_and_output_weights=arch.tie_embeddings,
        position_embedding_type="rope" if arch.position_embedding == "rope" else "none",
        rotary_base=int(arch.rotary_base),
        rope_scaling=arch.rope_scaling_factor is not None,
        rope_scaling_factor=arch.rope_scaling_factor or 8.0,
        vp_stage=vp_stage,
    )
    if arch.norm_head and post_process:
        NormHeadColumnParallelLinear.adopt(model.output_layer)
    if torch.cuda.is_available():
        model.cuda(torch.cuda.current_device())
    return model


def build_model_chunks(arch: ArchSpec | str, config, **kwargs) -> List[torch.nn.Module]:
    """This rank's model chunks: one per virtual pipeline stage (one chunk without the interleaved schedule).

    Requires ``megatron_huatuo.runtime.initialize`` to have created the model-parallel groups.
    """
    from megatron.core import parallel_state as ps

    vpp = ps.get_virtual_pipeline_model_parallel_world_size()
    if vpp is None or vpp == 1:
        return [build_model(arch, config, ps.is_pipeline_first_stage(), ps.is_pipeline_last_stage(), **kwargs)]
    return [
        build_model(
            arch,
            config,
            ps.is_pipeline_first_stage(ignore_virtual=False, vp_stage=stage),
            ps.is_pipeline_last_stage(ignore_virtual=False, vp_stage=stage),
            vp_stage=stage,
            **kwargs,
        )
        for stage in range(vpp)
    ]
