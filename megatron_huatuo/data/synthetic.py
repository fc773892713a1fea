"""Synthetic samples for tests and benchmarks: random tokens in the trainer's sample format.

Each index is generated from ``seed`` and the index alone, so any rank or a resumed run sees the same row.
``repeat > 0`` cycles that many distinct rows, a learnable signal (loss must fall on it).
"""
from __future__ import annotations

import torch
from torch.utils.data import Dataset


class SyntheticDataset(Dataset):
    def __init__(self, vocab_size: int, seq_length: int, num_samples: int, seed: int = 0, repeat: int = 0):
        self.vocab_size, self.seq_length, self.num_samples = vocab_size, seq_length, num_samples
        self.seed, self.repeat = seed, repeat

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> dict:
        row = index % self.repeat if self.repeat > 0 else index
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + row)
        ids = torch.randint(0, self.vocab_size, (self.seq_length + 1,), generator=gen)
        return dict(tokens=ids[:-1].clone(), labels=ids[1:].clone(),
                    loss_mask=torch.ones(self.seq_length, dtype=torch.float32),
                    position_ids=torch.arange(self.seq_length),
                    segment_ids=torch.zeros(self.seq_length, dtype=torch.long))
