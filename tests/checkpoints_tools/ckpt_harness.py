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


# -- bring your own model: tiny transformers models of each supported model_type ---------------------------------
LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}


def byom_models() -> dict:
    """name -> (transformers class name, config kwargs): the shapes the bring-your-own-model tests import.

    llama: GQA 8/2, llama3 rope scaling, tied embeddings, 5 layers (an uneven 3 + 2 split at PP=2);
    mistral: GQA 4/2, no sliding window, head_dim 24 != hidden/heads (megatron-core's kv_channels);
    qwen2: q/k/v biases, GQA 4/2, 3 layers (2 + 1 at PP=2)."""
    common = dict(vocab_size=256, intermediate_size=96, rms_norm_eps=1e-5)
    return {
        "llama": ("LlamaForCausalLM", dict(common, hidden_size=64, num_hidden_layers=5, num_attention_heads=8,
                                           num_key_value_heads=2, max_position_embeddings=16384,
                                           tie_word_embeddings=True, rope_parameters=dict(LLAMA3_ROPE))),
        "mistral": ("MistralForCausalLM", dict(common, hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
                                               num_key_value_heads=2, head_dim=24, sliding_window=None,
                                               max_position_embeddings=512)),
        "qwen2": ("Qwen2ForCausalLM", dict(common, hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
                                           num_key_value_heads=2, max_position_embeddings=512,
                                           rope_parameters={"rope_type": "default", "rope_theta": 1e6})),
    }


def byom_hf_model(name: str, seed: int = 0):
    """A random fp32 transformers model of ``byom_models()[name]``, norms and biases away from their init so a
    swapped or dropped mapping shows in the logits."""
    import transformers

    cls_name, kwargs = byom_models()[name]
    cls = getattr(transformers, cls_name)
    torch.manual_seed(seed)
    model = cls(cls.config_class(**kwargs)).eval()
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if "norm" in pname:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            elif pname.endswith(".bias"):
                p.copy_(0.1 * torch.randn_like(p))
    return model


def _layout_logits(ckpt_dirs, tokens, tensor_parallel, pipeline_parallel, first_stage_layers):
    """Every import of ``ckpt_dirs`` (arch read from what it recorded) loaded by the trainer's loader at one
    layout; full-vocabulary logits from the last pipeline stage (None on other stages). ``first_stage_layers``: one
    value per directory (None: even split)."""
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from megatron_huatuo.models.hf_config import recorded_arch
    from megatron_huatuo.models.provider import build_model_chunks, transformer_config
    from megatron_huatuo.runtime import initialize
    from megatron_huatuo.training.checkpointing import load_pretrained

    initialize(tensor_parallel=tensor_parallel, pipeline_parallel=pipeline_parallel)
    out = []
    positions = torch.arange(tokens.shape[1]).unsqueeze(0).expand_as(tokens)
    for ckpt_dir, first in zip(ckpt_dirs, first_stage_layers):
        arch = recorded_arch(ckpt_dir)
        config = transformer_config(arch, tensor_parallel=tensor_parallel, pipeline_parallel=pipeline_parallel,
                                    num_layers_in_first_pipeline_stage=first)
        chunks = build_model_chunks(arch, config, parallel_output=False)
        load_pretrained(ckpt_dir, chunks)
        for chunk in chunks:
            chunk.eval()

        def forward_step(_iterator, model):
            return model(tokens, positions, None), lambda output, non_loss_data=True: output.detach().clone()

        with torch.no_grad():
            got = get_forward_backward_func()(
                forward_step_func=forward_step, data_iterator=iter([None]), model=chunks[0], num_microbatches=1,
                seq_length=tokens.shape[1], micro_batch_size=tokens.shape[0], forward_only=True,
                collect_non_loss_data=True)
        out.append(got[0] if got else None)
    return out


def byom_import_tp1_export(jobs, tokens):
    """Run in one spawned rank, for each (hf, import dir, export dir) of ``jobs``: ``import_hf(hf, None, ...)`` (no
    --arch: config.json decides), ``export(import dir, None, ...)`` (the arch the import recorded); returns the TP1
    logits of each import."""
    import os

    from checkpoints_tools import convert
    from megatron_huatuo.runtime.distributed import free_port

    for hf, imported, _ in jobs:
        os.environ["MASTER_PORT"] = str(free_port())  # each conversion creates and destroys its own process group
        convert.import_hf(hf, None, imported)
    for _, imported, exported in jobs:
        os.environ["MASTER_PORT"] = str(free_port())
        convert.export(imported, None, exported)
    os.environ["MASTER_PORT"] = str(free_port())
    return _layout_logits([imported for _, imported, _ in jobs], tokens, 1, 1, [None] * len(jobs))


def byom_parallel_and_train(ckpt_dirs, tokens, first_stage_layers, trainings):
    """Run in each of 2 ranks: logits of every import at TP=2 and at PP=2 with an uneven first stage, then the
    trainer (``training.loop.train``) for each recipe override list of ``trainings``; returns (tp2, pp2, this
    rank's losses per training)."""
    import os

    import torch.distributed as dist

    from megatron_huatuo.config.recipe import load_recipe
    from megatron_huatuo.runtime import destroy
    from megatron_huatuo.runtime.distributed import free_port
    from megatron_huatuo.training.loop import train

    tp2 = _layout_logits(ckpt_dirs, tokens, 2, 1, [None] * len(ckpt_dirs))
    pp2 = _layout_logits(ckpt_dirs, tokens, 1, 2, first_stage_layers)
    ports = [free_port() for _ in trainings] if dist.get_rank() == 0 else [None] * len(trainings)
    dist.broadcast_object_list(ports, src=0)  # each train() makes and destroys its own process group
    destroy()
    losses = []
    for port, overrides in zip(ports, trainings):
        os.environ["MASTER_PORT"] = str(port)
        losses.append(train(load_recipe(None, overrides, world_size=2), log=lambda _msg: None).losses)
    return tp2, pp2, losses
