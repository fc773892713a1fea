"""Pieces shared by the checkpoint-conversion tests: tiny HF references and the megatron-side forward worker."""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from megatron_huatuo.models.registry import get_arch
from megatron_huatuo.training.manifest import write_manifest
from huatuo_testing import llama_config


def tiny_hf_llama(arch_name: str, seed: int = 0, normalise_head: bool = False):
    """A random HF LlamaForCausalLM with the sizes of ``arch_name`` (fp32)."""
    import transformers

    arch = get_arch(arch_name)
    config = llama_config(arch)
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():  # norms away from 1 so a swapped norm mapping is caught
            if "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
        if normalise_head:
            w = model.lm_head.weight
            w.copy_(torch.nn.functional.normalize(w, dim=1))
    return model


def save_as_baichuan(model, out: Path) -> dict:
    """The HF Llama's weights in Baichuan2's layout (W_pack = [q; k; v]); returns the saved tensors."""
    sd = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items() if "rotary" not in k}
    for i in range(model.config.num_hidden_layers):
        h = f"model.layers.{i}.self_attn."
        sd[h + "W_pack.weight"] = torch.cat([sd.pop(h + n + "_proj.weight") for n in "qkv"], dim=0)
    out.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(out / "model.safetensors"))
    return sd


def megatron_logits(ckpt_dir: str, arch_name: str, tensor_parallel: int, tokens: torch.Tensor) -> torch.Tensor:
    """Run in each spawned rank: load ``ckpt_dir`` into a TP=``tensor_parallel`` model through the trainer's
    ``checkpoint.pretrained`` loader (megatron-core's ``dist_checkpointing.load``), return full-vocab logits."""
    from megatron_huatuo.models.provider import build_model, transformer_config
    from megatron_huatuo.runtime import initialize
    from megatron_huatuo.training.checkpointing import load_pretrained

    arch = get_arch(arch_name)
    initialize(tensor_parallel=tensor_parallel)
    model = build_model(arch, transformer_config(arch, tensor_parallel=tensor_parallel), parallel_output=False)
    load_pretrained(ckpt_dir, [model])
    model.eval()
    positions = torch.arange(tokens.shape[1]).unsqueeze(0).expand_as(tokens)
    with torch.no_grad():
        return model(tokens, positions, None).detach().clone()


def save_training_style(root: str, arch_name: str, iteration: int, tokens: torch.Tensor) -> torch.Tensor:
    """Run in each rank: a random TP=2 model saved as the trainer lays out ``checkpoint.dir`` (``iter_%07d`` +
    marker, extra non-model entries beside ``"model"``); returns its full-vocab logits."""
    import torch.distributed as dist
    from megatron.core import dist_checkpointing
    from megatron_huatuo.models.provider import build_model, transformer_config
    from megatron_huatuo.runtime import initialize

    arch = get_arch(arch_name)
    initialize(tensor_parallel=2, seed=11)
    model = build_model(arch, transformer_config(arch, tensor_parallel=2), parallel_output=False).eval()
    target = Path(root) / f"iter_{iteration:07d}"
    if dist.get_rank() == 0:
        target.mkdir(parents=True)
    dist.barrier()
    dist_checkpointing.save({"model": model.sharded_state_dict(), "iteration": iteration,
                             "consumed_samples": 8}, str(target))
    dist.barrier()
    write_manifest(target, distributed=True)
    if dist.get_rank() == 0:
        (Path(root) / "latest_checkpointed_iteration.txt").write_text(f"{iteration}\n")
    positions = torch.arange(tokens.shape[1]).unsqueeze(0).expand_as(tokens)
    with torch.no_grad():
        return model(tokens, positions, None).detach().clone()


def load_tp1_tensors(ckpt_dir: str, arch_name: str, precision: str) -> dict:
    """Run in one spawned rank: every parameter of a TP1/PP1 model loaded from ``ckpt_dir`` by megatron-core's
    ``dist_checkpointing.load`` (strict: the checkpoint must hold exactly the model's keys)."""
    from megatron.core import dist_checkpointing
    from megatron_huatuo.models.provider import build_model, transformer_config
    from megatron_huatuo.runtime import initialize

    arch = get_arch(arch_name)
    initialize()
    model = build_model(arch, transformer_config(arch, precision=precision))
    loaded = dist_checkpointing.load({"model": model.sharded_state_dict()}, ckpt_dir, strict="raise_all")["model"]
    return {k: v.detach().clone() for k, v in loaded.items() if isinstance(v, torch.Tensor)}


def _global_params(chunk) -> dict:
    """A chunk's parameters keyed by TP1/PP1 names (its local layer index -> the layer's global number - 1)."""
    out = {}
    for name, param in chunk.named_parameters():
        if name.startswith("decoder.layers."):
            _, _, idx, rest = name.split(".", 3)
            name = f"decoder.layers.{chunk.decoder.layers[int(idx)].layer_number - 1}.{rest}"
        out[name] = param.detach().clone()
    return out


def save_pp2_vpp2(root: str, arch_name: str, iteration: int) -> dict:
    """Run in each of 2 ranks: a random PP=2 x VPP=2 model (2 chunks per rank, one layer each) saved as the trainer
    saves (``model0``/``model1`` via ``training.checkpointing.model_state``, ``iter_%07d`` + marker); returns this
    rank's parameters by global name."""
    import torch.distributed as dist
    from megatron.core import dist_checkpointing
    from megatron_huatuo.models.provider import build_model_chunks, transformer_config
    from megatron_huatuo.runtime import initialize
    from megatron_huatuo.training.checkpointing import model_state

    arch = get_arch(arch_name)
    initialize(pipeline_parallel=2, virtual_pipeline=2, seed=5)
    chunks = build_model_chunks(arch, transformer_config(arch, pipeline_parallel=2, virtual_pipeline=2))
    with torch.no_grad():  # norms away from 1 so a swapped norm mapping is caught
        for chunk in chunks:
            for name, p in chunk.named_parameters():
                if "norm" in name:
                    p.add_(0.1 * torch.randn_like(p))
    target = Path(root) / f"iter_{iteration:07d}"
    if dist.get_rank() == 0:
        target.mkdir(parents=True)
    dist.barrier()
    dist_checkpointing.save({**model_state(chunks), "iteration": iteration}, str(target))
    dist.barrier()
    write_manifest(target, distributed=True)
    if dist.get_rank() == 0:
        (Path(root) / "latest_checkpointed_iteration.txt").write_text(f"{iteration}\n")
    out = {}
    for chunk in chunks:
        out.update(_global_params(chunk))
    return out


def streaming_and_in_memory_imports(hf_dir: str, arch_name: str, precision: str, out: str) -> tuple:
    """Run in one spawned rank: the streaming import (``out``/streaming) and the in-memory reference import
    (``out``/in_memory) of ``hf_dir``, then both loaded by megatron-core into a TP1 model: (streaming, reference)."""
    import os

    from checkpoints_tools import convert
    from megatron_huatuo.runtime.distributed import free_port

    os.environ["MASTER_PORT"] = str(free_port())  # each call below creates and destroys its own process group
    convert.import_hf(hf_dir, arch_name, f"{out}/streaming")
    os.environ["MASTER_PORT"] = str(free_port())
    convert.import_hf_in_memory(hf_dir, arch_name, f"{out}/in_memory")
    os.environ["MASTER_PORT"] = str(free_port())
    streaming = load_tp1_tensors(f"{out}/streaming", arch_name, precision)
    reference = load_tp1_tensors(f"{out}/in_memory", arch_name, precision)
    return streaming, reference


def load_pretrained_pp2_vpp2(ckpt_dir: str, arch_name: str, trainer_loader: bool) -> dict:
    """Run in each of 2 ranks: a PP=2 x VPP=2 model loaded from ``ckpt_dir``; returns this rank's parameters by
    global name. ``trainer_loader``: the trainer's ``checkpoint.pretrained`` loader; else a direct
    ``dist_checkpointing.load`` of every chunk together (``model0``, ``model1``: keys are global)."""
    from megatron.core import dist_checkpointing
    from megatron_huatuo.models.provider import build_model_chunks, transformer_config
    from megatron_huatuo.runtime import initialize
    from megatron_huatuo.training.checkpointing import load_pretrained

    arch = get_arch(arch_name)
    initialize(pipeline_parallel=2, virtual_pipeline=2, seed=9)
    chunks = build_model_chunks(arch, transformer_config(arch, pipeline_parallel=2, virtual_pipeline=2))
    if trainer_loader:
        load_pretrained(ckpt_dir, chunks)
    else:
        loaded = dist_checkpointing.load({f"model{i}": c.sharded_state_dict() for i, c in enumerate(chunks)},
                                         ckpt_dir)
        for i, chunk in enumerate(chunks):
            chunk.load_state_dict(loaded[f"model{i}"])
    out = {}
    for chunk in chunks:
        out.update(_global_params(chunk))
    return out


def reshard_through(import_dir: str, root: str, arch_name: str, tensor_parallel: int, pipeline_parallel: int):
    """Run in each of TP x PP ranks: the import loaded at that layout by the trainer's ``checkpoint.pretrained``
    loader, then saved as the trainer lays out ``checkpoint.dir`` (``iter_0000001`` + marker)."""
    import torch.distributed as dist
    from megatron.core import dist_checkpointing
    from megatron_huatuo.models.provider import build_model_chunks, transformer_config
    from megatron_huatuo.runtime import initialize
    from megatron_huatuo.training.checkpointing import MARKER, iteration_dir, load_pretrained, model_state

    arch = get_arch(arch_name)
    initialize(tensor_parallel=tensor_parallel, pipeline_parallel=pipeline_parallel, seed=5)
    chunks = build_model_chunks(arch, transformer_config(arch, tensor_parallel=tensor_parallel,
                                                         pipeline_parallel=pipeline_parallel))
    load_pretrained(import_dir, chunks)
    target = iteration_dir(root, 1)
    if dist.get_rank() == 0:
        target.mkdir(parents=True)
    dist.barrier()
    dist_checkpointing.save(model_state(chunks), str(target))
    dist.barrier()
    write_manifest(target, distributed=True)
    if dist.get_rank() == 0:
        (Path(root) / MARKER).write_text("1\n")
