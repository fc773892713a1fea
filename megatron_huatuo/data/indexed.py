"""Plain pre-training documents from Megatron ``.bin/.idx`` prefixes (read with megatron-core's IndexedDataset).

The documents of all prefixes, in order, form one token stream cut into rows of ``seq_length + 1`` tokens
(GPT-style packing). Each row keeps document boundaries: ``segment_ids`` number the documents inside the row
and ``position_ids`` restart at every document start, so the trainer's segment mask isolates documents.
Which rows a step sees is decided by the sampler, not here; this class is a pure function of the files.
"""
from __future__ import annotations

from typing import List, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from megatron_huatuo.data.indexed_files import check_prefix


class IndexedDocumentsDataset(Dataset):
    def __init__(self, prefixes: Sequence[str], seq_length: int):
        from megatron.core.datasets.indexed_dataset import IndexedDataset

        self.seq_length = seq_length
        self.datasets = []
        lengths: List[np.ndarray] = []
        for prefix in prefixes:
            check_prefix(prefix, "data.prefixes")  # present and not truncated, else one line naming the file
            ds = IndexedDataset(prefix)
            self.datasets.append(ds)
            lengths.append(np.asarray(ds.sequence_lengths, dtype=np.int64))
        self.doc_ds = np.concatenate([np.full(len(l), i, dtype=np.int64) for i, l in enumerate(lengths)])
        self.doc_idx = np.concatenate([np.arange(len(l), dtype=np.int64) for l in lengths])
        all_lengths = np.concatenate(lengths)
        self.doc_start = np.concatenate([[0], np.cumsum(all_lengths)])
        total = int(self.doc_start[-1])
        self.num_rows = max(0, (total - 1) // seq_length)
        if self.num_rows == 0:
            raise ValueError(f"data.prefixes: {list(prefixes)} hold {total} tokens, fewer than seq_length+1")

    def __len__(self) -> int:
        return self.num_rows

    def __getitem__(self, index: int) -> dict:
        S = self.seq_length
        start, end = index * S, index * S + S + 1
        pieces, segs, pos = [], [], []
        doc = int(np.searchsorted(self.doc_start, start, side="right") - 1)
        seg = 0
        while start < end:
            doc_begin, doc_end = int(self.doc_start[doc]), int(self.doc_start[doc + 1])
            take = min(end, doc_end) - start
            if take > 0:
                ds = self.datasets[self.doc_ds[doc]]
                pieces.append(np.asarray(ds.get(int(self.doc_idx[doc]), offset=start - doc_begin, length=take),
                                         dtype=np.int64))
                segs.append(np.full(take, seg, dtype=np.int64))
                pos.append(np.arange(start - doc_begin, start - doc_begin + take, dtype=np.int64))
                seg += 1
                start += take
            doc += 1
        ids = torch.from_numpy(np.concatenate(pieces))
        segment = torch.from_numpy(np.concatenate(segs))
        positions = torch.from_numpy(np.concatenate(pos))
        loss_mask = (segment[1:] == segment[:-1]).float()  # no target across a document boundary
        return dict(tokens=ids[:-1], labels=ids[1:], loss_mask=loss_mask, position_ids=positions[:-1],
                    segment_ids=segment[:-1])
