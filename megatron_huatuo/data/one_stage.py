"""The trainer's view of a one-stage dataset directory: priority-ordered, packed rows per the sample contract.

``build_one_stage_dataset(path, seq_length, seed)`` reads the directory with megatron-core's ``IndexedDataset``,
memory-maps the saved priority order and packing plan for ``seed`` and ``seq_length``
(:mod:`megatron_huatuo.data.order_index`; built and saved once when missing) and serves row ``i`` (wrapping when
``num_samples`` exceeds the row count). Everything is a pure function of the files and the seed, so every rank,
and every resumed run, sees the same rows.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
from megatron.core.datasets.indexed_dataset import IndexedDataset
from torch.utils.data import Dataset

from megatron_huatuo.data.indexed_files import check_prefix
from megatron_huatuo.data.one_stage_format import MASK_SUFFIX, read_manifest
from megatron_huatuo.data.order_index import load_or_build
from megatron_huatuo.data.packing import PackPlan, pack_row


def open_source(path: Path, src: dict) -> tuple[IndexedDataset, IndexedDataset]:
    """(tokens, loss mask) of one manifest source, checked against each other and the manifest."""
    prefix = str(Path(path) / src["prefix"])
    for checked in (prefix, prefix + MASK_SUFFIX):  # present and not truncated, else one line naming it
        check_prefix(checked, str(path))
    tok, mask = IndexedDataset(prefix), IndexedDataset(prefix + MASK_SUFFIX)
    if len(tok) != src["documents"] or not np.array_equal(tok.sequence_lengths, mask.sequence_lengths):
        raise ValueError(f"{prefix}: tokens/loss-mask files disagree with each other or with manifest.json")
    return tok, mask


class OneStageDataset(Dataset):
    def __init__(self, path: str | Path, seq_length: int, seed: int, num_samples: Optional[int] = None,
                 isolate: bool = True):
        self.path = Path(path)
        self.manifest = read_manifest(self.path)
        self.seq_length, self.seed, self.isolate = seq_length, seed, isolate
        self.pad_id = int(self.manifest["eos_id"])
        self.sources = self.manifest["sources"]
        self.tokens: List[IndexedDataset] = []
        self.masks: List[IndexedDataset] = []
        lengths = []
        for src in self.sources:
            tok, mask = open_source(self.path, src)
            self.tokens.append(tok)
            self.masks.append(mask)
            lengths.append(tok.sequence_lengths)
        sizes = [len(t) for t in self.tokens]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.lengths = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
        self.index = load_or_build(self.path, self.sources, self.lengths, seq_length, seed)
        self.order: np.ndarray = self.index.order
        self.plan: PackPlan = self.index.plan
        if self.plan.num_rows == 0:
            raise ValueError(f"{self.path}: no samples to pack")
        self.num_samples = num_samples if num_samples else self.plan.num_rows

    def __len__(self) -> int:
        return self.num_samples

    def document(self, gid: int):
        """(token ids, trained mask) of global document ``gid``."""
        k = int(np.searchsorted(self.offsets, gid, side="right") - 1)
        local = int(gid - self.offsets[k])
        return self.tokens[k][local].astype(np.int64), self.masks[k][local]

    def source_of(self, gid: int) -> str:
        return self.sources[int(np.searchsorted(self.offsets, gid, side="right") - 1)]["name"]

    def __getitem__(self, i: int) -> Dict:
        return pack_row([self.document(g) for g in self.row_documents(i)], self.seq_length, self.pad_id, self.isolate)

    def row_documents(self, i: int) -> list:
        """Global document ids packed into row ``i`` (wrapping), in order."""
        r = i % self.plan.num_rows
        return [int(g) for g in self.order[int(self.plan.row_starts[r]):int(self.plan.row_starts[r + 1])]]

    def mixture(self, buckets: int = 10) -> List[Dict[str, float]]:
        """Share of each source in each ``1/buckets`` of the training order (what the priority schedule does)."""
        src = np.searchsorted(self.offsets, self.order, side="right") - 1
        names = [s["name"] for s in self.sources]
        table = []
        for chunk in np.array_split(src, buckets):
            counts = np.bincount(chunk, minlength=len(names))
            table.append({n: round(float(c) / max(len(chunk), 1), 3) for n, c in zip(names, counts)})
        return table

    def stats(self) -> dict:
        return {"samples": int(len(self.order)), "packed_rows": self.plan.num_rows,
                "truncated": self.plan.truncated, "padding_ratio": round(self.plan.padding_ratio(self.seq_length), 4)}


def build_one_stage_dataset(path: str, seq_length: int, seed: int, num_samples: int | None = None,
                            isolate: bool = True) -> Dataset:
    """The trainer's entry point (see the module docstring); ``isolate=False`` is the original's shared attention."""
    return OneStageDataset(path, seq_length, seed, num_samples, isolate=isolate)
