"""import (HF -> megatron-core dist_checkpointing) and export (dist checkpoint -> HF safetensors + config.json).

Both stream (a few tensors in memory, never the model; ``checkpoints_tools.streaming``) and run in one process at
TP1/PP1: megatron-core's dist_checkpointing stores global tensors, so an imported
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

from megatron_huatuo.atomic import atomic_directory, single_writer
from megatron_huatuo.models.registry import ArchSpec, get_arch
from megatron_huatuo.training.manifest import verify_manifest, write_manifest
from checkpoints_tools.hf_io import HFReader, write_hf
from checkpoints_tools.mapping import baichuan2, llama
from checkpoints_tools.streaming import GroupLoader, build_meta_model, model_params, save_streaming

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
    trust: bool = False  # --trust-checkpoint: no manifest needed, megatron-core's unrestricted unpickling


def _single_process_model(arch: ArchSpec, dtype: torch.dtype):
    """A real TP1/PP1 GPTModel without random init (its weights are overwritten): the in-memory reference."""
    from megatron_huatuo.models.provider import build_model, transformer_config

    config = transformer_config(arch, precision=_PRECISION[dtype], perform_initialization=False)
    return build_model(arch, config)


@dataclass
class _ImportJob:
    reader: HFReader
    arch: ArchSpec
    family: object  # the mapping module (llama or baichuan2)
    dtype: torch.dtype
    out: Path

    def source(self, name: str) -> torch.Tensor:
        return self.family.hf_tensor(self.arch, self.reader, name)

    def check_shapes(self, params: dict) -> None:
        """Map every parameter on ``meta`` tensors (header shapes, no data) before anything is written, so a
        missing tensor or a shape that contradicts the arch is reported by name up front, not from inside
        megatron-core's writer half-way through the save."""
        for name, param in params.items():
            used: list = []

            def meta(hf_name: str) -> torch.Tensor:
                used.append(hf_name)
                return self.reader.meta(hf_name)

            try:
                mapped = self.family.hf_tensor(self.arch, meta, name)
            except (KeyError, RuntimeError, ValueError) as err:
                raise ValueError(f"{self.reader.dir}: cannot build {name} from {', '.join(used)} ({err})") from None
            if tuple(mapped.shape) != tuple(param.shape):
                found = ", ".join(f"{n} {tuple(self.reader.meta(n).shape)}" for n in used)
                raise ValueError(f"{self.reader.dir}: {found} give {name} the shape {tuple(mapped.shape)}, "
                                 f"arch {self.arch.name} expects {tuple(param.shape)}")

    def write_info(self, arch_name: str, hf_dir: str) -> None:
        (self.out / INFO).write_text(json.dumps(
            {"arch": arch_name, "vocab_size": self.arch.vocab_size, "source": str(hf_dir),
             "format": self.family.__name__.rsplit(".", 1)[-1]}, indent=2))


def _prepare_import(hf_dir: str, arch_name: str, out: str) -> _ImportJob:
    """Checks shared by both import paths: arch vs HF sizes, layout detection, an empty output directory."""
    reader = HFReader(hf_dir)
    try:
        embed = reader.meta("model.embed_tokens.weight")
        arch = get_arch(arch_name)
        if embed.shape[1] != arch.hidden_size:
            raise ValueError(f"{hf_dir}: hidden size {embed.shape[1]} does not match arch {arch.name} "
                             f"({arch.hidden_size})")
        if embed.shape[0] != arch.vocab_size:
            arch = arch.with_overrides(vocab_size=embed.shape[0])
        family = baichuan2 if "model.layers.0.self_attn.W_pack.weight" in reader.names else llama
        out_path = Path(out)
        if out_path.exists() and (not out_path.is_dir() or any(out_path.iterdir())):
            raise FileExistsError(f"output directory {out_path} is not empty")  # before any heavy work
    except BaseException:
        reader.close()
        raise
    return _ImportJob(reader, arch, family, embed.dtype, out_path)


@single_writer("out")  # before reading anything: a second writer stops at once
def import_hf(hf_dir: str, arch_name: str, out: str) -> Path:
    """Write ``out`` (dist_checkpointing of ``{"model": sharded_state_dict}``) + ``huatuo_checkpoint.json``,
    streaming: tensors are read, mapped and written one at a time (see ``checkpoints_tools.streaming``)."""
    from megatron_huatuo.runtime import destroy, initialize

    job = _prepare_import(hf_dir, arch_name, out)
    try:
        with atomic_directory(out) as tmp:  # a failure half-way leaves no output directory behind
            job.out = tmp
            initialize(tensor_parallel=1, pipeline_parallel=1)
            model = build_meta_model(job.arch, job.dtype)
            job.check_shapes(model_params(model))
            save_streaming(model, job.source, tmp)
            job.write_info(arch_name, hf_dir)
            write_manifest(tmp)  # last: sizes + checksums of everything above (megatron_huatuo/training/manifest.py)
    finally:
        job.reader.close()
        destroy()
    return Path(out)


@single_writer("out")
def import_hf_in_memory(hf_dir: str, arch_name: str, out: str) -> Path:
    """The non-streaming import (a real model filled in RAM, saved by megatron-core's default strategy): kept only
    as the reference that tests and ``bench/convert_memory.py`` compare the streaming import with."""
    from megatron.core import dist_checkpointing
    from megatron_huatuo.runtime import destroy, initialize

    job = _prepare_import(hf_dir, arch_name, out)
    try:
        with atomic_directory(out) as tmp:
            job.out = tmp
            initialize(tensor_parallel=1, pipeline_parallel=1)
            model = _single_process_model(job.arch, job.dtype)
            params = model_params(model)
            with torch.no_grad():
                for name, param in params.items():
                    tensor = job.source(name)
                    if param.shape != tensor.shape:
                        raise ValueError(f"{hf_dir}: {name} has shape {tuple(tensor.shape)}, model expects "
                                         f"{tuple(param.shape)}")
                    param.copy_(tensor)
            dist_checkpointing.save({"model": model.sharded_state_dict()}, str(tmp))
            job.write_info(arch_name, hf_dir)
            write_manifest(tmp)
    finally:
        job.reader.close()
        destroy()
    return Path(out)


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


def _embedding_meta(path: Path, trust: bool = False):
    from megatron_huatuo.training import dcp_io

    for key, meta in dcp_io.load_tensors_metadata(path, trust=trust).items():
        if key.endswith("embedding.word_embeddings.weight"):
            return meta
    raise ValueError(f"{path}: no embedding.word_embeddings.weight in the checkpoint")


@single_writer("out")
def export(ckpt: str, arch_name: str, out: str, options: ExportOptions = ExportOptions()) -> Path:
    from megatron_huatuo.runtime import destroy, initialize

    path = resolve_checkpoint(ckpt, options.iteration)
    verify_manifest(path, trust=options.trust)  # before any byte of it is interpreted
    meta = _embedding_meta(path, options.trust)
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
    tok = Path(options.tokenizer) if options.tokenizer else None
    if tok is not None and not tok.is_dir():
        raise FileNotFoundError(f"tokenizer directory not found: {tok}")
    try:
        with atomic_directory(out) as tmp:  # complete HF directory or none
            initialize(tensor_parallel=1, pipeline_parallel=1)
            model = build_meta_model(arch, meta.dtype)
            placeholders = {k: v.detach() for k, v in model_params(model).items()}
            # the same mapping on meta tensors gives the HF layout, so each safetensors header is written first
            layout = [(n, tuple(t.shape)) for n, t in family.mcore_to_hf(arch, lambda n: placeholders[n].to("meta"))]
            tensors = family.mcore_to_hf(arch, GroupLoader(model, path, options.trust))
            write_hf(tmp, layout, tensors, config, dtype=out_dtype)
            for f in (tok.iterdir() if tok is not None else ()):
                if f.is_file() and f.name != "config.json":
                    shutil.copy2(f, tmp / f.name)
    finally:
        destroy()
    return Path(out)
