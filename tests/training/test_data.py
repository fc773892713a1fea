"""Trainer-side datasets and sampler against hand-computed expectations."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from megatron_huatuo.data.builder import ResumableDistributedSampler
from megatron_huatuo.data.indexed import IndexedDocumentsDataset
from megatron_huatuo.data.synthetic import SyntheticDataset

DOCS = [[1, 2, 3, 4, 5], [6, 7], [8, 9, 10, 11, 12, 13, 14], [15, 16, 17]]


@pytest.fixture()
def prefix(tmp_path):
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    path = tmp_path / "docs"
    builder = IndexedDatasetBuilder(str(path) + ".bin", dtype=np.int32)
    for doc in DOCS:
        builder.add_item(torch.tensor(doc, dtype=torch.int32))
        builder.end_document()
    builder.finalize(str(path) + ".idx")
    return str(path)


def test_indexed_rows_follow_the_token_stream(prefix):
    seq = 4
    ds = IndexedDocumentsDataset([prefix, prefix], seq)  # two prefixes: the stream is the documents twice
    stream = [t for doc in DOCS + DOCS for t in doc]
    doc_of = [i for i, doc in enumerate(DOCS + DOCS) for _ in doc]
    pos_of = [p for doc in DOCS + DOCS for p in range(len(doc))]
    assert len(ds) == (len(stream) - 1) // seq
    for index in range(len(ds)):
        row = ds[index]
        window = slice(index * seq, index * seq + seq)
        assert row["tokens"].tolist() == stream[window]
        assert row["labels"].tolist() == stream[index * seq + 1: index * seq + seq + 1]
        assert row["position_ids"].tolist() == pos_of[window]
        docs = doc_of[index * seq: index * seq + seq + 1]
        # segments number the documents inside the row from 0; no target across a document boundary
        first = docs[0]
        assert row["segment_ids"].tolist() == [d - first for d in docs[:-1]]
        assert row["loss_mask"].tolist() == [float(docs[i] == docs[i + 1]) for i in range(seq)]


def test_indexed_missing_prefix_names_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.bin"):
        IndexedDocumentsDataset([str(tmp_path / "nope")], 4)


def test_sampler_splits_global_batches_and_resumes():
    def take(consumed, rank, dp, n):
        it = iter(ResumableDistributedSampler(10, consumed, 2, rank, dp))
        return [next(it) for _ in range(n)]

    assert take(0, 0, 2, 4) == [0, 1, 4, 5]
    assert take(0, 1, 2, 4) == [2, 3, 6, 7]
    assert take(8, 0, 2, 4) == [8, 9, 2, 3]  # wraps around the 10 rows
    assert take(4, 0, 1, 2) == [4, 5]


def test_synthetic_rows_depend_on_seed_and_index_only():
    a, b = SyntheticDataset(512, 8, 100, seed=3), SyntheticDataset(512, 8, 100, seed=3)
    assert torch.equal(a[7]["tokens"], b[7]["tokens"])
    assert torch.equal(a[7]["labels"][:-1], a[7]["tokens"][1:])
    assert torch.equal(SyntheticDataset(512, 8, 100, seed=3, repeat=2)[4]["tokens"], a[0]["tokens"])
