"""The trainer reads a built one-stage dataset through its recipe and the loss goes down (slow: ~40 s)."""
from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest

from huatuo_testing import REPO_ROOT
from preprocessing.dataset.build import BuildConfig, build


@pytest.mark.slow
def test_tiny_training_run_on_packed_priority_data(tmp_path, tiny_tokenizer):
    out = tmp_path / "ds"
    build(BuildConfig([str(REPO_ROOT / "demo" / "rewritten" / "pairs.jsonl")],
                      [str(REPO_ROOT / "demo" / "sft" / "dialogues.en.sharegpt.jsonl")], str(tiny_tokenizer), 256, 1,
                      str(out)))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "1", "--master-port", str(port),
           "-m", "megatron_huatuo.train", "--config", str(REPO_ROOT / "megatron_huatuo/recipes/tiny-baichuan2-7b-tp2.yaml"),
           "parallel.tp=1", "data.type=one_stage", f"data.path={out}", "model.vocab_size=1200",
           "train.seq_length=256", "train.steps=8"]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    losses = [json.loads(line.split(" ", 1)[1])["loss"] for line in (proc.stdout + proc.stderr).splitlines()
              if line.startswith("train {")]
    assert len(losses) == 8 and losses[-1] < losses[0] - 1.0
