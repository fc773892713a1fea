"""Reading Hugging Face checkpoint directories tensor by tensor, and writing safetensors + config.json, both
streaming: memory holds about one tensor, never the model.

Reading ``*.safetensors``: the header (JSON: dtype, shape, byte range per tensor) is parsed here and each tensor is
read with ``readinto`` into a fresh buffer. Memory-mapping the files (``safe_open``) would count every page read so
far in the process's resident set until the file is closed, so a 14 GB model would show ~14 GB RSS even though
nothing is kept. ``pytorch_model*.bin`` (Baichuan2's released format) is opened with ``torch.load(mmap=True)`` per
tensor: the tensor is copied out and the file mapping dropped, for the same reason (unpickling the index of a
``.bin`` file takes milliseconds).

Writing: the layout (names, shapes, dtypes) is known before any data (the caller runs its mapping on ``meta``
tensors), so each shard's safetensors header is written first and tensors are appended as they are produced.
"""
from __future__ import annotations

import json
import struct
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Dict, Iterable, List, Tuple

import torch

# safetensors dtype names (https://github.com/huggingface/safetensors, format description)
_ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
              "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
              "BOOL": torch.bool}
_ST_NAMES = {v: k for k, v in _ST_DTYPES.items()}


@dataclass(frozen=True)
class _Entry:
    file: Path
    dtype: torch.dtype
    shape: Tuple[int, ...]
    start: int  # absolute byte offset in the file
    length: int


def read_safetensors_header(path: Path) -> Dict[str, _Entry]:
    """Parse one ``.safetensors`` header; errors name the file and the tensor."""
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise ValueError(f"{path}: not a safetensors file (shorter than 8 bytes)")
        (size,) = struct.unpack("<Q", raw)
        try:
            header = json.loads(f.read(size))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{path}: unreadable safetensors header ({err})") from None
    entries = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = _ST_DTYPES.get(info.get("dtype"))
        if dtype is None:
            raise ValueError(f"{path}: tensor {name!r} has unsupported dtype {info.get('dtype')!r}")
        begin, end = info["data_offsets"]
        shape = tuple(info["shape"])
        numel = 1
        for d in shape:
            numel *= d
        if end - begin != numel * dtype.itemsize:
            raise ValueError(f"{path}: tensor {name!r} byte range {begin}..{end} does not match shape {shape}")
        entries[name] = _Entry(path, dtype, shape, 8 + size + begin, end - begin)
    return entries


class HFReader:
    """``reader(name) -> tensor`` over all weight files of ``hf_dir``; ``names`` lists what is there."""

    def __init__(self, hf_dir: str | Path):
        self.dir = Path(hf_dir)
        if not self.dir.is_dir():
            raise FileNotFoundError(f"Hugging Face directory not found: {self.dir}")
        self._stack = ExitStack()
        self._entries: Dict[str, _Entry] = {}
        self._files: Dict[Path, BinaryIO] = {}
        self._bins: Dict[str, Path] = {}
        for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
            if (self.dir / index).exists():  # a shard the index names but the directory lacks: say which
                weight_map = json.loads((self.dir / index).read_text()).get("weight_map", {})
                missing = sorted({f for f in weight_map.values() if not (self.dir / f).exists()})
                if missing:
                    raise FileNotFoundError(f"{self.dir}: {index} names missing shard file(s): {', '.join(missing)}")
        files = sorted(self.dir.glob("*.safetensors"))
        if files:
            for f in files:
                self._entries.update(read_safetensors_header(f))
                self._files[f] = self._stack.enter_context(open(f, "rb", buffering=0))
        else:
            for f in sorted(self.dir.glob("pytorch_model*.bin")):
                for k in self._load_bin(f):
                    self._bins[k] = f
        if not self._entries and not self._bins:
            raise FileNotFoundError(f"{self.dir}: no *.safetensors or pytorch_model*.bin weight files")

    @staticmethod
    def _load_bin(path: Path) -> dict:
        try:
            return torch.load(str(path), map_location="cpu", mmap=True, weights_only=True)
        except Exception as err:  # torch raises several types for a damaged or non-zip file
            raise ValueError(f"{path}: cannot read as a torch checkpoint ({err})") from None

    @property
    def names(self) -> set:
        return set(self._entries) | set(self._bins)

    def config(self) -> dict:
        path = self.dir / "config.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def meta(self, name: str) -> torch.Tensor:
        """A ``meta`` tensor with the stored shape and dtype (no data read)."""
        if name in self._entries:
            e = self._entries[name]
            return torch.empty(e.shape, dtype=e.dtype, device="meta")
        return self(name).to("meta")

    def __call__(self, name: str) -> torch.Tensor:
        entry = self._entries.get(name)
        if entry is not None:
            out = torch.empty(entry.shape, dtype=entry.dtype)
            view = out.reshape(-1).view(torch.uint8).numpy() if out.numel() else bytearray()
            f = self._files[entry.file]
            f.seek(entry.start)
            got = f.readinto(view)
            if got != entry.length:
                raise ValueError(f"{entry.file}: tensor {name!r} is truncated ({got} of {entry.length} bytes)")
            return out
        path = self._bins.get(name)
        if path is None:
            raise KeyError(f"{self.dir}: tensor {name!r} not found in the checkpoint")
        return self._load_bin(path)[name].clone()  # the mapping of the whole file goes with the dict

    def close(self) -> None:
        self._stack.close()


Layout = List[Tuple[str, Tuple[int, ...]]]


def plan_shards(layout: Layout, dtype: torch.dtype, shard_bytes: int) -> List[Layout]:
    """Split (name, shape) entries, in order, into shards of at most ``shard_bytes`` (a larger tensor alone)."""
    shards: List[Layout] = [[]]
    size = 0
    for name, shape in layout:
        n = dtype.itemsize
        for d in shape:
            n *= d
        if size and size + n > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append((name, tuple(shape)))
        size += n
    return [s for s in shards if s]


def _header(entries: Layout, dtype: torch.dtype) -> bytes:
    meta, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, shape in entries:
        n = dtype.itemsize
        for d in shape:
            n *= d
        meta[name] = {"dtype": _ST_NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(meta, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the format allows space padding; keeps the data 8-byte aligned
    return struct.pack("<Q", len(raw)) + raw


def write_hf(out_dir: str | Path, layout: Layout, tensors: Iterable[Tuple[str, torch.Tensor]], config: dict,
             dtype: torch.dtype, shard_bytes: int = 5 * 2**30) -> None:
    """Write ``model-XXXXX.safetensors`` shards + ``model.safetensors.index.json`` + ``config.json``.

    ``layout`` is the (name, shape) of every tensor ``tensors`` will yield, in the same order (cast to ``dtype``
    on the way out); each tensor is written as soon as it arrives, so memory holds one tensor.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shards = plan_shards(layout, dtype, shard_bytes)
    weight_map: Dict[str, str] = {}
    total = 0
    it = iter(tensors)
    for index, entries in enumerate(shards):
        file_name = f"model-{index + 1:05d}.safetensors"
        with open(out / file_name, "wb") as f:
            f.write(_header(entries, dtype))
            for name, shape in entries:
                got = next(it, None)
                if got is None or got[0] != name or tuple(got[1].shape) != shape:
                    found = None if got is None else (got[0], tuple(got[1].shape))
                    raise RuntimeError(f"export mapping yielded {found}, planned {(name, shape)}")
                t = got[1].to(dtype).contiguous()
                if t.numel():
                    f.write(t.reshape(-1).view(torch.uint8).numpy())
                total += t.numel() * dtype.itemsize
                weight_map[name] = file_name
                del got, t
    if next(it, None) is not None:
        raise RuntimeError("export mapping yielded more tensors than planned")
    (out / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    (out / "config.json").write_text(json.dumps(config, indent=2))
