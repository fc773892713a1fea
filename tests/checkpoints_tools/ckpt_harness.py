"""Pieces shared by the checkpoint-conversion tests: tiny HF references and the megatron-side forward worker."""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from megatron_huatuo.models.registry import get_arch
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
    """Run in each spawned rank: load ``ckpt_dir`` into a TP=``tensor_parallel`` model, return full-vocab logits."""
    from megatron.core import dist_checkpointing
    from megatron_huatuo.models.provider import build_model, transformer_config
    from megatron_huatuo.runtime import initialize

    arch = get_arch(arch_name)
    initialize(tensor_parallel=tensor_parallel)
    model = build_model(arch, transformer_config(arch, tensor_parallel=tensor_parallel), parallel_output=False)
    model.load_state_dict(dist_checkpointing.load({"model": model.sharded_state_dict()}, ckpt_dir)["model"],
                          strict=False)
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
    if dist.get_rank() == 0:
        (Path(root) / "latest_checkpointed_iteration.txt").write_text(f"{iteration}\n")
    positions = torch.arange(tokens.shape[1]).unsqueeze(0).expand_as(tokens)
    with torch.no_grad():
        return model(tokens, positions, None).detach().clone()
