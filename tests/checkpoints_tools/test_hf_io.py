"""The streaming safetensors reader/writer against the safetensors library itself (no megatron needed)."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from checkpoints_tools.hf_io import HFReader, plan_shards, write_hf


def sample():
    g = torch.Generator().manual_seed(0)
    return {"a.weight": torch.randn(5, 3, generator=g).to(torch.bfloat16), "b.bias": torch.randn(7, generator=g),
            "c.half": torch.randn(2, 2, 2, generator=g).half(), "d.ids": torch.arange(6, dtype=torch.int64)}


def test_reader_matches_safetensors_and_torch_bin(tmp_path):
    tensors = sample()
    (tmp_path / "st").mkdir()
    save_file(dict(list(tensors.items())[:2]), str(tmp_path / "st" / "model-00001.safetensors"))
    save_file(dict(list(tensors.items())[2:]), str(tmp_path / "st" / "model-00002.safetensors"))
    (tmp_path / "bin").mkdir()
    torch.save(tensors, tmp_path / "bin" / "pytorch_model.bin")
    for sub in ("st", "bin"):
        reader = HFReader(tmp_path / sub)
        assert reader.names == set(tensors)
        for name, t in tensors.items():
            got = reader(name)
            assert got.dtype == t.dtype and torch.equal(got, t), (sub, name)
            meta = reader.meta(name)
            assert meta.is_meta and meta.shape == t.shape and meta.dtype == t.dtype
        with pytest.raises(KeyError, match="not found"):
            reader("nope")
        reader.close()


def test_truncated_file_is_named(tmp_path):
    save_file({"x": torch.ones(100)}, str(tmp_path / "model.safetensors"))
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[:-8])
    reader = HFReader(tmp_path)
    with pytest.raises(ValueError, match="model.safetensors.*truncated"):
        reader("x")
    reader.close()


def test_writer_output_loads_with_safetensors(tmp_path):
    tensors = sample()
    floats = {k: v for k, v in tensors.items() if v.is_floating_point()}
    layout = [(k, tuple(v.shape)) for k, v in floats.items()]
    # 40 bytes per shard in float32: a(60 B) alone, b(28 B), c(32 B): three shards
    assert [len(s) for s in plan_shards(layout, torch.float32, 40)] == [1, 1, 1]
    write_hf(tmp_path, layout, iter(floats.items()), {"model_type": "x"}, dtype=torch.float32, shard_bytes=40)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert sorted(set(index["weight_map"].values())) == [f"model-0000{i}.safetensors" for i in (1, 2, 3)]
    back = {}
    for f in sorted(tmp_path.glob("*.safetensors")):
        back.update(load_file(str(f)))
    for k, v in floats.items():
        assert back[k].dtype == torch.float32 and torch.equal(back[k], v.float()), k
    with pytest.raises(RuntimeError, match="planned"):
        write_hf(tmp_path / "w", layout, iter(list(floats.items())[::-1]), {}, dtype=torch.float32)
