"""Our megatron-core model at TP1/PP1 in this one process, with the weights of a checkpoint: for scoring and checks.

``checkpoints_tools verify`` (logits against an HF export) and ``megatron_huatuo.eval --megatron-ckpt`` (benchmarks
straight from a training or import directory) both need the same thing: the model the trainer builds
(:func:`~megatron_huatuo.models.provider.build_model`, full-vocabulary logits), its weights loaded by the trainer's
own loader (megatron-core ``dist_checkpointing.load``, resharded from any saved TP/PP/VPP), in eval mode, and the
single-process model-parallel state torn down afterwards. Keeping that here means one place builds it (an extra
``build_model`` keyword, such as an attention backend, is passed through ``build_kwargs``).
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

import torch

from megatron_huatuo.models.registry import ArchSpec

PRECISION_OF = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


@contextlib.contextmanager
def tp1_model(path: str | Path, arch: ArchSpec, dtype: torch.dtype = torch.float32, *, trust: bool = False,
              manifest_checked: bool = False, **build_kwargs) -> Iterator:
    """Yield the loaded ``GPTModel`` (eval mode, on CUDA when available); model-parallel state exists inside.

    The directory is checked against its manifest (unless the caller already did: ``manifest_checked``) and read
    without arbitrary unpickling unless ``trust`` (``--trust-checkpoint``), as every load of a checkpoint is.
    """
    from megatron_huatuo.models.provider import build_model, transformer_config
    from megatron_huatuo.runtime import destroy, initialize
    from megatron_huatuo.training.checkpointing import load_pretrained

    if dtype not in PRECISION_OF:
        raise ValueError(f"dtype must be one of {list(PRECISION_OF)}, got {dtype}")
    try:
        initialize(tensor_parallel=1, pipeline_parallel=1)
        config = transformer_config(arch, precision=PRECISION_OF[dtype], perform_initialization=False)
        model = build_model(arch, config, parallel_output=False, **build_kwargs)
        load_pretrained(str(path), [model], trust=trust, manifest_checked=manifest_checked)
        model.eval()
        yield model
    finally:
        destroy()
