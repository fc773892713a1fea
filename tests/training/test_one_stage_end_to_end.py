"""DATA's one-stage dataset directory (demo pairs + SFT, a 1200-piece tokenizer) trains through the real CLI
under TP2 with the vocabulary override. Slow: tokenizer training + dataset build + 2-process run."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import training_harness as H

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.parametrize("isolate", [True, False], ids=["isolated-segments", "shared-attention-causal"])
def test_one_stage_directory_trains(tmp_path, isolate):
    from preprocessing.train_tokenizer import TokenizerConfig, train_tokenizer

    tok = tmp_path / "tok"
    train_tokenizer([ROOT / "demo" / "corpora", ROOT / "demo" / "sft"], tok, TokenizerConfig(vocab_size=1200))
    subprocess.run([sys.executable, "-m", "preprocessing.dataset", "build", "--pairs", "demo/rewritten/pairs.jsonl",
                    "--sft", "demo/sft/dialogues.en.sharegpt.jsonl", "--tokenizer", str(tok), "--seq-length", "128",
                    "--seed", "7", "--out", str(tmp_path / "ds")], cwd=ROOT, check=True, capture_output=True)
    codes, outputs = H.run_trainer(
        ["data.type=one_stage", f"data.path={tmp_path / 'ds'}", "model.vocab_size=1200", "train.seq_length=128",
         "train.steps=4", f"data.isolate={str(isolate).lower()}"], timeout=240)
    assert codes == [0, 0], outputs[0][-3000:]
    losses = [r["loss"] for r in H.step_records(outputs[1])]
    assert len(losses) == 4 and all(0 < x < 12 for x in losses) and losses[-1] < losses[0]
