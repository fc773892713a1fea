"""The trainer's loss is sum(loss*mask)/sum(mask) over the whole global batch (2 DP ranks x 2 micro-batches),
checked against one plain TP1 forward of the same weights (loaded through checkpoint.pretrained) on the same rows
of a Megatron .bin/.idx dataset whose rows have different numbers of trained tokens."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from megatron_huatuo.runtime import run_distributed

import training_harness as H

ROOT = Path(__file__).resolve().parents[2]
SEQ, ROWS = 16, 4


def test_first_step_loss_is_token_weighted_over_global_batch(tmp_path):
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    gen = np.random.default_rng(0)
    prefix = str(tmp_path / "docs")
    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=np.int32)
    for length in [3, 17, 5, 2, 30, 4, 9, 12, 6]:
        builder.add_item(torch.from_numpy(gen.integers(0, 512, length).astype(np.int32)))
        builder.end_document()
    builder.finalize(prefix + ".idx")
    ckpt = tmp_path / "pretrained"
    ckpt.mkdir()
    (expected,) = run_distributed(H.reference_loss, world_size=1, args=(str(ckpt), prefix, SEQ, ROWS))

    codes, outputs = H.run_trainer(
        ["parallel.tp=1", "train.steps=1", f"train.global_batch={ROWS}", "train.micro_batch=1",
         f"train.seq_length={SEQ}", "data.type=indexed", f"data.prefixes=[{prefix}]", f"checkpoint.pretrained={ckpt}"],
        timeout=180)
    assert codes == [0, 0], outputs[0][-3000:]
    records = H.step_records(outputs[1])
    assert records[0]["loss"] == pytest.approx(expected, rel=1e-5)
