"""import (HF -> megatron-core dist_checkpointing) and export (dist checkpoint -> HF safetensors + config.json).

Both run in one process at TP1/PP1: megatron-core's dist_checkpointing stores global tensors, so an imported
directory loads into any TP/PP layout (the trainer's ``checkpoint.pretrained``) and any training checkpoint
(any TP/PP/VPP; the model keys are global, whatever the ``"model"``/``"model0"`` container name) loads back here.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from megatron_huatuo.models.registry import ArchSpec, get_arch
from checkpoints_tools.hf_io import HFReader, write_hf
from checkpoints_tools.mapping import baichuan2, llama

MARKER = "latest_checkpointed_iteration.txt"
INFO = "huatuo_checkpoint.json"
_PRECISION = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
_DTYPE_NAME = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


@dataclass(frozen=True)
class ExportOptions:
    fmt: Optional[str] = None  # llama | baichuan; default: llama for RoPE archs, baichuan for ALiBi
    vocab_size: Optional[int] = None
    iteration: Optional[int] = None
    tokenizer: Optional[str] = None
    dtype: Optional[str] = None  # float32 | bfloat16 | float16; default: the checkpoint's


def _single_process_model(arch: ArchSpec, dtype: torch.dtype):
    """A TP1/PP1 GPTModel without random init (its weights are overwritten)."""
    from megatron_huatuo.runtime import initialize
    from megatron_huatuo.models.provider import build_model, transformer_config

    initialize(tensor_parallel=1, pipeline_parallel=1)
    config = transformer_config(arch, precision=_PRECISION[dtype], perform_initialization=False)
    return build_model(arch, config)


def _model_params(model) -> dict:
    return {k: v for k, v in model.state_dict(keep_vars=True).items() if not k.endswith("_extra_state")}


def import_hf(hf_dir: str, arch_name: str, out: str) -> Path:
    """Write ``out`` (dist_checkpointing of ``{"model": sharded_state_dict}``) + ``huatuo_checkpoint.json``."""
    from megatron.core import dist_checkpointing
    from megatron_huatuo.runtime import destroy

    reader = HFReader(hf_dir)
    embed = reader("model.embed_tokens.weight")
    arch = get_arch(arch_name)
    if embed.shape[1] != arch.hidden_size:
        raise ValueError(f"{hf_dir}: hidden size {embed.shape[1]} does not match arch {arch.name} ({arch.hidden_size})")
    if embed.shape[0] != arch.vocab_size:
        arch = arch.with_overrides(vocab_size=embed.shape[0])
    family = baichuan2 if "model.layers.0.self_attn.W_pack.weight" in reader.names else llama
    out_path = Path(out)
    if out_path.exists() and any(out_path.iterdir()):
        raise FileExistsError(f"output directory {out_path} is not empty")
    out_path.mkdir(parents=True, exist_ok=True)
    try:
        model = _single_process_model(arch, embed.dtype)
        params = _model_params(model)
        seen = set()
        with torch.no_grad():
            for name, tensor in family.hf_to_mcore(arch, reader):
                if name not in params:
                    raise KeyError(f"mapping produced {name!r}, which the megatron model lacks")
                if params[name].shape != tensor.shape:
                    raise ValueError(f"{hf_dir}: {name} has shape {tuple(tensor.shape)}, model expects "
                                     f"{tuple(params[name].shape)}")
                params[name].copy_(tensor)
                seen.add(name)
        missing = set(params) - seen
        if missing:
            raise ValueError(f"{hf_dir}: no weights for {sorted(missing)}")
        dist_checkpointing.save({"model": model.sharded_state_dict()}, str(out_path))
    finally:
        reader.close()
        destroy()
    (out_path / INFO).write_text(json.dumps(
        {"arch": arch_name, "vocab_size": arch.vocab_size, "source": str(hf_dir),
         "format": family.__name__.rsplit(".", 1)[-1]}, indent=2))
    return out_path


def resolve_checkpoint(ckpt: str, iteration: Optional[int] = None) -> Path:
    """An import directory as is; a training ``checkpoint.dir`` -> its ``iter_%07d`` (latest or ``iteration``)."""
    root = Path(ckpt)
    if not root.is_dir():
        raise FileNotFoundError(f"checkpoint directory not found: {root}")
    if iteration is None and (root / MARKER).exists():
        text = (root / MARKER).read_text().strip()
        try:
            iteration = int(text)
        except ValueError:
            raise ValueError(f"{root / MARKER}: expected an iteration number, got {text!r}") from None
    if iteration is not None:
        root = root / f"iter_{iteration:07d}"
        if not root.is_dir():
            raise FileNotFoundError(f"checkpoint iteration directory not found: {root}")
    if not (root / "metadata.json").exists():
        raise FileNotFoundError(f"{root} is not a dist_checkpointing directory (no metadata.json)")
    return root


def _embedding_meta(path: Path):
    from megatron.core import dist_checkpointing

    for key, meta in dist_checkpointing.load_tensors_metadata(str(path)).items():
        if key.endswith("embedding.word_embeddings.weight"):
            return meta
    raise ValueError(f"{path}: no embedding.word_embeddings.weight in the checkpoint")


def export(ckpt: str, arch_name: str, out: str, options: ExportOptions = ExportOptions()) -> Path:
    from megatron.core import dist_checkpointing
    from megatron_huatuo.runtime import destroy

    path = resolve_checkpoint(ckpt, options.iteration)
    meta = _embedding_meta(path)
    arch = get_arch(arch_name)
    vocab = options.vocab_size or meta.global_shape[0]
    if vocab != arch.vocab_size:
        arch = arch.with_overrides(vocab_size=vocab)
    fmt = options.fmt or ("llama" if arch.position_embedding == "rope" else "baichuan")
    family = {"llama": llama, "baichuan": baichuan2}.get(fmt)
    if family is None:
        raise ValueError(f"--format must be llama or baichuan, got {fmt!r}")
    if fmt == "baichuan" and arch.family != "baichuan2":
        raise ValueError(f"--format baichuan needs a Baichuan2 arch, got {arch.name}")
    out_dtype = getattr(torch, options.dtype) if options.dtype else meta.dtype
    config = family.hf_config(arch, _DTYPE_NAME[out_dtype])
    try:
        model = _single_process_model(arch, meta.dtype)
        loaded = dist_checkpointing.load({"model": model.sharded_state_dict()}, str(path))
        model.load_state_dict(loaded["model"], strict=False)
        params = {k: v.detach() for k, v in _model_params(model).items()}
        write_hf(out, family.mcore_to_hf(arch, params.__getitem__), config, dtype=out_dtype)
    finally:
        destroy()
    if options.tokenizer:
        tok = Path(options.tokenizer)
        if not tok.is_dir():
            raise FileNotFoundError(f"tokenizer directory not found: {tok}")
        for f in tok.iterdir():
            if f.is_file() and f.name != "config.json":
                shutil.copy2(f, Path(out) / f.name)
    return Path(out)
