"""The real training CLI (2 gloo processes, TP2) gives the same losses with ``model.attention_backend`` local and
sdpa (slow); training with flex on CPU is refused naming the key. The trainer's isolated-document path with sdpa
also runs in the default suite through tests/bench (``gpu_throughput.py --smoke``, indexed documents)."""
from __future__ import annotations

import subprocess
import sys

import pytest

import training_harness as H
from huatuo_testing import DEMO_PAIRS, DEMO_SFT_EN, REPO_ROOT


@pytest.fixture(scope="module")
def demo_dataset(tmp_path_factory):
    """The bundled demo pairs + English SFT, tokenised with a 1200-piece tokenizer, packed (isolated) at 128."""
    from preprocessing.dataset.build import BuildConfig, build
    from preprocessing.train_tokenizer import TokenizerConfig, train_tokenizer

    root = tmp_path_factory.mktemp("backend-demo")
    train_tokenizer([REPO_ROOT / "demo" / "corpora", REPO_ROOT / "demo" / "sft"], root / "tok",
                    TokenizerConfig(vocab_size=1200))
    build(BuildConfig([str(DEMO_PAIRS)], [str(DEMO_SFT_EN)], str(root / "tok"), 128, 7, str(root / "ds")))
    return root / "ds"


def _records(overrides, backend):
    codes, outputs = H.run_trainer([*overrides, f"model.attention_backend={backend}", "train.steps=5"], timeout=300)
    assert codes == [0, 0], outputs[0][-3000:]
    assert f"attention backend {backend} ({backend})" in outputs[0]
    records = H.step_records(outputs[1])
    assert len(records) == 5
    return records


def _assert_same_training(local, sdpa):
    for a, b in zip(local, sdpa):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5, abs=1e-6), (a, b)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4), (a, b)
    assert local[-1]["loss"] < local[0]["loss"]  # it trains


@pytest.mark.slow  # ~56 CPU-seconds; the default suite covers the same path at model level (test_attention_backends)
def test_sdpa_trains_like_local_on_isolated_packed_documents(demo_dataset):
    """Packed rows of isolated documents (segment mask: dense for local, SegmentParams for sdpa), TP2."""
    overrides = ["data.type=one_stage", f"data.path={demo_dataset}", "model.vocab_size=1200", "train.seq_length=128",
                 "optimizer.lr=3e-3"]
    _assert_same_training(_records(overrides, "local"), _records(overrides, "sdpa"))


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["tiny-yi", "tiny-baichuan2-13b"])
def test_sdpa_trains_like_local_on_causal_rows(arch):
    """Synthetic rows (one causal sequence each): GQA and ALiBi, TP2 + sequence parallel."""
    overrides = [f"model.arch={arch}", "parallel.sp=true"]
    _assert_same_training(_records(overrides, "local"), _records(overrides, "sdpa"))


def test_flex_training_on_cpu_is_refused_naming_the_key():
    proc = subprocess.run([sys.executable, "-m", "megatron_huatuo.train", "--config", str(H.TINY_RECIPE),
                           "model.attention_backend=flex"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "model.attention_backend: flex cannot train on CPU" in proc.stderr and "Traceback" not in proc.stderr
