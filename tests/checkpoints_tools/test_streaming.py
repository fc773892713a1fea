"""The streaming import and export, checked against megatron-core's own save/load.

- the streaming import and the in-memory reference import (a real model saved by megatron-core's default
  ``torch_dist`` strategy) hold the same keys, shapes, dtypes and chunk layout in their DCP metadata, and
  megatron-core's ``dist_checkpointing.load`` (strict) gives equal tensors from both (fp32 Llama/GQA, bf16 W_pack);
- a PP=2 x VPP=2 checkpoint saved as the trainer saves (2 gloo processes, ``model0``/``model1``) exports, layer
  group by layer group, to HF tensors equal to the original parameters (fused q/k/v and gate/up split by hand here).
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

import ckpt_harness as H
from megatron_huatuo.models.registry import get_arch
from megatron_huatuo.runtime import run_distributed

transformers = pytest.importorskip("transformers")


def dcp_layout(path):
    """key -> (size, dtype, sorted chunk (offsets, sizes)) for tensors, key -> 'bytes' for objects."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    out = {}
    for key, meta in FileSystemReader(str(path)).read_metadata().state_dict_metadata.items():
        if isinstance(meta, TensorStorageMetadata):
            chunks = sorted((tuple(c.offsets), tuple(c.sizes)) for c in meta.chunks)
            out[key] = (tuple(meta.size), meta.properties.dtype, chunks)
        else:
            out[key] = "bytes"
    return out


@pytest.mark.parametrize("arch_name,dtype", [("tiny-yi", torch.float32), ("tiny-baichuan2-7b", torch.bfloat16)])
def test_streaming_import_equals_in_memory_import(tmp_path, arch_name, dtype):
    hf = H.tiny_hf_llama(arch_name, seed=1, normalise_head=arch_name.startswith("tiny-baichuan")).to(dtype)
    if arch_name.startswith("tiny-baichuan"):
        H.save_as_baichuan(hf, tmp_path / "hf")
    else:
        hf.save_pretrained(tmp_path / "hf")
    precision = {torch.float32: "fp32", torch.bfloat16: "bf16"}[dtype]
    (streaming, reference), = run_distributed(H.streaming_and_in_memory_imports, world_size=1,
                                              args=(str(tmp_path / "hf"), arch_name, precision, str(tmp_path)))
    assert dcp_layout(tmp_path / "streaming") == dcp_layout(tmp_path / "in_memory")
    assert set(streaming) == set(reference) and len(streaming) == 2 + 6 * get_arch(arch_name).num_layers + 1
    for name, tensor in reference.items():
        assert streaming[name].dtype == dtype and torch.equal(streaming[name], tensor), name
    # and the values are the HF model's, not only equal to each other (e.g. not both uninitialised)
    assert torch.equal(streaming["embedding.word_embeddings.weight"], hf.model.embed_tokens.weight.detach())
    assert torch.equal(streaming["decoder.layers.3.mlp.linear_fc2.weight"], hf.model.layers[3].mlp.down_proj.weight)
    info = json.loads((tmp_path / "streaming" / "huatuo_checkpoint.json").read_text())
    assert info["format"] == ("baichuan2" if arch_name.startswith("tiny-baichuan") else "llama")


@pytest.mark.slow
def test_export_of_a_pp2_vpp2_checkpoint(tmp_path):
    """Four layers over 2 pipeline ranks x 2 virtual stages: rank 0 holds layers 0 and 2, rank 1 layers 1 and 3."""
    arch_name = "tiny-yi"
    arch = get_arch(arch_name)
    per_rank = run_distributed(H.save_pp2_vpp2, world_size=2, args=(str(tmp_path / "run"), arch_name, 4))
    orig = {**per_rank[0], **per_rank[1]}
    assert set(per_rank[0]) & set(per_rank[1]) == set()  # each parameter lives on one rank
    assert "decoder.layers.2.mlp.linear_fc2.weight" in per_rank[0]
    assert "decoder.layers.1.mlp.linear_fc2.weight" in per_rank[1]
    proc = subprocess.run([sys.executable, "-m", "checkpoints_tools", "export", "--ckpt", str(tmp_path / "run"),
                           "--arch", arch_name, "--out", str(tmp_path / "hf")], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    hf = {}
    for f in sorted((tmp_path / "hf").glob("*.safetensors")):
        hf.update(load_file(str(f)))
    assert len(hf) == 2 + 9 * arch.num_layers + 1
    assert torch.equal(hf["model.embed_tokens.weight"], orig["embedding.word_embeddings.weight"])
    assert torch.equal(hf["model.norm.weight"], orig["decoder.final_layernorm.weight"])
    assert torch.equal(hf["lm_head.weight"], orig["output_layer.weight"])
    nh, ng, hd, h = arch.num_attention_heads, arch.num_query_groups, arch.head_dim, arch.hidden_size
    for i in range(arch.num_layers):
        m, p = f"decoder.layers.{i}.", f"model.layers.{i}."
        for mname, hname in (("self_attention.linear_proj", "self_attn.o_proj"), ("mlp.linear_fc2", "mlp.down_proj"),
                             ("input_layernorm", "input_layernorm"), ("pre_mlp_layernorm", "post_attention_layernorm")):
            assert torch.equal(hf[p + hname + ".weight"], orig[m + mname + ".weight"]), (i, hname)
        fc1 = orig[m + "mlp.linear_fc1.weight"]
        assert torch.equal(hf[p + "mlp.gate_proj.weight"], fc1[: arch.ffn_hidden_size])
        assert torch.equal(hf[p + "mlp.up_proj.weight"], fc1[arch.ffn_hidden_size:])
        # megatron's fused QKV, group by group: the group's query heads, then its key head, then its value head
        qkv = orig[m + "self_attention.linear_qkv.weight"]
        rows = (nh // ng + 2) * hd
        q = [qkv[g * rows: g * rows + (nh // ng) * hd] for g in range(ng)]
        k = [qkv[g * rows + (nh // ng) * hd: g * rows + (nh // ng + 1) * hd] for g in range(ng)]
        v = [qkv[g * rows + (nh // ng + 1) * hd: (g + 1) * rows] for g in range(ng)]
        assert torch.equal(hf[p + "self_attn.q_proj.weight"], torch.cat(q).reshape(nh * hd, h))
        assert torch.equal(hf[p + "self_attn.k_proj.weight"], torch.cat(k))
        assert torch.equal(hf[p + "self_attn.v_proj.weight"], torch.cat(v))

    # back through the streaming import, into the trainer's PP=2 x VPP=2 layout: the original parameters again
    proc = subprocess.run([sys.executable, "-m", "checkpoints_tools", "import", "--hf", str(tmp_path / "hf"),
                           "--arch", arch_name, "--out", str(tmp_path / "mc")], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    reloaded = run_distributed(H.load_pretrained_pp2_vpp2, world_size=2,
                               args=(str(tmp_path / "mc"), arch_name, False))
    for rank in (0, 1):
        assert set(reloaded[rank]) == set(per_rank[rank])
        for name, tensor in per_rank[rank].items():
            assert torch.equal(reloaded[rank][name], tensor), (rank, name)

    # the trainer's checkpoint.pretrained loader (all chunks in one load) gives the same parameters
    trained = run_distributed(H.load_pretrained_pp2_vpp2, world_size=2, args=(str(tmp_path / "mc"), arch_name, True))
    for rank in (0, 1):
        for name, tensor in per_rank[rank].items():
            assert torch.equal(trained[rank][name], tensor), (rank, name)
