"""DATA's one-stage dataset directory (demo pairs + SFT, a 1200-piece tokenizer) trains through the real CLI
under TP2 with the vocabulary override. Slow: tokenizer training + dataset build + 2-process run."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from megatron_huatuo.runtime import free_port

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_one_stage_directory_trains(tmp_path):
    from preprocessing.train_tokenizer import TokenizerConfig, train_tokenizer

    tok = tmp_path / "tok"
    train_tokenizer([ROOT / "demo" / "corpora", ROOT / "demo" / "sft"], tok, TokenizerConfig(vocab_size=1200))
    subprocess.run([sys.executable, "-m", "preprocessing.dataset", "build", "--pairs", "demo/rewritten/pairs.jsonl",
                    "--sft", "demo/sft/dialogues.en.sharegpt.jsonl", "--tokenizer", str(tok), "--seq-length", "128",
                    "--seed", "7", "--out", str(tmp_path / "ds")], cwd=ROOT, check=True, capture_output=True)
    port = free_port()
    procs = []
    for rank in range(2):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(port), OMP_NUM_THREADS="1")
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "megatron_huatuo.train", "--config",
             str(ROOT / "megatron_huatuo" / "recipes" / "tiny-baichuan2-7b-tp2.yaml"), "data.type=one_stage",
             f"data.path={tmp_path / 'ds'}", "model.vocab_size=1200", "train.seq_length=128", "train.steps=4"],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    try:
        outputs = [p.communicate(timeout=240)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [0, 0], outputs[0][-3000:]
    losses = [json.loads(l[6:])["loss"] for l in outputs[1].splitlines() if l.startswith("train {")]
    assert len(losses) == 4 and all(0 < x < 12 for x in losses) and losses[-1] < losses[0]
