"""Packing variable-length samples, in order, into fixed ``seq_length`` rows.

Samples are packed whole and greedily: a row takes samples until the next one does not fit, then is padded.
A sample longer than ``seq_length`` is truncated to it (and counted). Within a row, sample j gets segment id j,
positions restart at 0 (unless ``isolate=False``, the original's behaviour, where the whole row is one segment
with running positions), labels are the next token within the sample, and the loss mask is the next token's
"trained" flag, zero on the last token of every sample and on padding (segment -1).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence

import numpy as np
import torch


@dataclass
class PackPlan:
    """Row ``r`` holds the samples at positions ``row_starts[r] .. row_starts[r+1]-1`` of the order (greedy packing
    consumes the order in contiguous runs, so one offset per row describes the whole plan)."""

    row_starts: np.ndarray  # int64, rows + 1 entries
    truncated: int  # samples cut to seq_length
    tokens: int  # real tokens placed (after truncation)

    @property
    def num_rows(self) -> int:
        return len(self.row_starts) - 1

    def positions(self, row: int) -> np.ndarray:
        """Positions into ``order`` of row ``row``."""
        return np.arange(self.row_starts[row], self.row_starts[row + 1], dtype=np.int64)

    @property
    def rows(self) -> List[np.ndarray]:
        """Every row's positions (small plans and tests; large ones use :meth:`positions`)."""
        return [self.positions(r) for r in range(self.num_rows)]

    def padding_ratio(self, seq_length: int) -> float:
        total = self.num_rows * seq_length
        return 1.0 - self.tokens / total if total else 0.0


def plan_packing(lengths: Sequence[int], order: Sequence[int], seq_length: int) -> PackPlan:
    """Greedy rows over ``order`` (sample ids into ``lengths``); rows hold positions into ``order``."""
    lens = np.minimum(np.asarray(lengths, dtype=np.int64)[np.asarray(order, dtype=np.int64)], seq_length)
    truncated = int((np.asarray(lengths, dtype=np.int64)[np.asarray(order, dtype=np.int64)] > seq_length).sum())
    starts: List[int] = []
    used = seq_length + 1  # forces a new row at the first sample
    for pos, n in enumerate(lens.tolist()):
        if used + n > seq_length:
            starts.append(pos)
            used = 0
        used += n
    starts.append(len(lens))
    if len(lens) == 0:
        starts = [0]
    return PackPlan(np.asarray(starts, dtype=np.int64), truncated, int(lens.sum()))


def pack_row(samples: Sequence[tuple], seq_length: int, pad_id: int, isolate: bool = True) -> dict:
    """One row from ``(token_ids, trained_mask)`` pairs (numpy arrays); dict per ``megatron_huatuo.data.sample``."""
    tokens = np.full(seq_length, pad_id, dtype=np.int64)
    labels = np.full(seq_length, pad_id, dtype=np.int64)
    loss = np.zeros(seq_length, dtype=np.float32)
    pos = np.zeros(seq_length, dtype=np.int64)
    seg = np.full(seq_length, -1, dtype=np.int64)
    at = 0
    for j, (ids, mask) in enumerate(samples):
        ids, mask = np.asarray(ids)[:seq_length], np.asarray(mask)[:seq_length]
        n = len(ids)
        if at + n > seq_length:
            raise ValueError(f"row overflow: {at} + {n} > {seq_length}")
        tokens[at:at + n] = ids
        labels[at:at + n - 1] = ids[1:]
        loss[at:at + n - 1] = mask[1:]
        pos[at:at + n] = np.arange(n) if isolate else np.arange(at, at + n)
        seg[at:at + n] = j if isolate else 0
        at += n
    if not isolate:
        pos[at:] = np.arange(at, seq_length)
    return {"tokens": torch.from_numpy(tokens), "labels": torch.from_numpy(labels),
            "loss_mask": torch.from_numpy(loss), "position_ids": torch.from_numpy(pos),
            "segment_ids": torch.from_numpy(seg)}
