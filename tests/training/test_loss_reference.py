"""The trainer's loss is sum(loss*mask)/sum(mask) over the whole global batch (2 DP ranks x 2 micro-batches),
checked against one plain TP1 forward of the same weights (loaded through checkpoint.pretrained) on the same rows
of a Megatron .bin/.idx dataset whose rows have different numbers of trained tokens."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from megatron_huatuo.runtime import free_port, run_distributed

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

    port = free_port()
    procs = []
    for rank in range(2):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(port), OMP_NUM_THREADS="1")
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "megatron_huatuo.train", "--config",
             str(ROOT / "megatron_huatuo" / "recipes" / "tiny-baichuan2-7b-tp2.yaml"), "parallel.tp=1",
             "train.steps=1", f"train.global_batch={ROWS}", "train.micro_batch=1", f"train.seq_length={SEQ}",
             "data.type=indexed", f"data.prefixes=[{prefix}]", f"checkpoint.pretrained={ckpt}"],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    try:
        outputs = [p.communicate(timeout=180)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [0, 0], outputs[0][-3000:]
    records = [json.loads(l[6:]) for l in outputs[1].splitlines() if l.startswith("train {")]
    assert records[0]["loss"] == pytest.approx(expected, rel=1e-5)
