"""Reading Hugging Face checkpoint directories tensor by tensor, and writing safetensors + config.json.

Reading uses safetensors ``safe_open`` (one tensor in memory at a time, memory-mapped), or ``torch.load(mmap=True)``
for ``pytorch_model*.bin`` (Baichuan2's released format), so importing needs about one model copy in RAM
(the megatron model being filled), not two.
"""
from __future__ import annotations

import json
from contextlib import ExitStack
from pathlib import Path
from typing import Dict, Iterable, Tuple

import torch


class HFReader:
    """``reader(name) -> tensor`` over all weight files of ``hf_dir``; ``names`` lists what is there."""

    def __init__(self, hf_dir: str | Path):
        self.dir = Path(hf_dir)
        if not self.dir.is_dir():
            raise FileNotFoundError(f"Hugging Face directory not found: {self.dir}")
        self._stack = ExitStack()
        self._where: Dict[str, object] = {}
        files = sorted(self.dir.glob("*.safetensors"))
        if files:
            from safetensors import safe_open
            for f in files:
                handle = self._stack.enter_context(safe_open(str(f), framework="pt"))
                for k in handle.keys():
                    self._where[k] = handle
        else:
            for f in sorted(self.dir.glob("pytorch_model*.bin")):
                sd = torch.load(str(f), map_location="cpu", mmap=True, weights_only=True)
                for k in sd:
                    self._where[k] = sd
        if not self._where:
            raise FileNotFoundError(f"{self.dir}: no *.safetensors or pytorch_model*.bin weight files")

    @property
    def names(self) -> set:
        return set(self._where)

    def config(self) -> dict:
        path = self.dir / "config.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def __call__(self, name: str) -> torch.Tensor:
        src = self._where.get(name)
        if src is None:
            raise KeyError(f"{self.dir}: tensor {name!r} not found in the checkpoint")
        return src.get_tensor(name) if hasattr(src, "get_tensor") else src[name]

    def close(self) -> None:
        self._stack.close()


def write_hf(out_dir: str | Path, tensors: Iterable[Tuple[str, torch.Tensor]], config: dict,
             dtype: torch.dtype | None = None, shard_bytes: int = 5 * 2**30) -> None:
    """Write ``model-XXXXX.safetensors`` shards (at most ``shard_bytes`` each, flushed as they fill, so peak extra
    memory is one shard) + ``model.safetensors.index.json`` + ``config.json``."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shards, current, size, weight_map = [], {}, 0, {}

    def flush():
        nonlocal current, size
        if current:
            name = f"model-{len(shards) + 1:05d}.safetensors"
            save_file(current, str(out / name), metadata={"format": "pt"})
            shards.append(list(current))
            for k in current:
                weight_map[k] = name
            current, size = {}, 0

    total = 0
    for name, t in tensors:
        t = (t.to(dtype) if dtype is not None else t).contiguous().clone()
        if size and size + t.numel() * t.element_size() > shard_bytes:
            flush()
        current[name] = t
        size += t.numel() * t.element_size()
        total += t.numel() * t.element_size()
    flush()
    (out / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    (out / "config.json").write_text(json.dumps(config, indent=2))
