"""Trust in datasets: one build per output, the compatibility record, truncated files, empty inputs, a full disk,
and the trainer's refusal of token ids past the model's vocabulary (in process and at TP2 through the real CLI)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm
from megatron.core.datasets.indexed_dataset import IndexedDataset

from huatuo_testing import DEMO_PAIRS, DEMO_SFT_EN, REPO_ROOT
from megatron_huatuo.config.recipe import DataConfig
from megatron_huatuo.data.compatibility import VocabularyMismatch, check_dataset_fits, prefix_manifest_path
from megatron_huatuo.data.indexed_files import TruncatedDataset, check_prefix
from megatron_huatuo.locking import lock_path
from preprocessing.dataset.cli import main as dataset_main


def _build_args(tok, out, *extra):
    return ["build", "--pairs", str(DEMO_PAIRS), "--sft", str(DEMO_SFT_EN), "--tokenizer", str(tok),
            "--seq-length", "512", "--seed", "7", "--out", str(out), *extra]


def _all_ids(prefix) -> np.ndarray:
    ds = IndexedDataset(str(prefix))
    return np.concatenate([ds[i] for i in range(len(ds))]) if len(ds) else np.zeros(0, np.int64)


def test_two_concurrent_builds_one_refused_naming_the_other_which_completes(tmp_path, tiny_tokenizer, dataset_dir,
                                                                            capsys):
    out = tmp_path / "ds"
    first = subprocess.Popen([sys.executable, "-m", "preprocessing.dataset", *_build_args(tiny_tokenizer, out)],
                             cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:  # the first build holds the lock once its holder record is in the lock file
            try:
                if json.loads(lock_path(out).read_text() or "{}").get("pid") == first.pid:
                    break
            except (OSError, ValueError):
                pass
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()
            time.sleep(0.02)
        first.send_signal(signal.SIGSTOP)  # pause it mid-build: the second build arrives while it works
        assert dataset_main(_build_args(tiny_tokenizer, out)) == 2
        err = capsys.readouterr().err
        assert f"pid {first.pid}" in err and str(out) in err and len(err.strip().splitlines()) == 1
    finally:
        first.send_signal(signal.SIGCONT)
    _, first_err = first.communicate(timeout=120)
    assert first.returncode == 0, first_err  # the first one was not disturbed (today: "No such file or directory")
    for name in ("web.bin", "web.idx", "sft_loss_mask.bin"):
        assert (out / name).read_bytes() == (dataset_dir / name).read_bytes()


def test_build_and_tokenize_record_what_the_trainer_checks(tmp_path, tiny_tokenizer, dataset_dir):
    sp = spm.SentencePieceProcessor(model_file=str(tiny_tokenizer / "tokenizer.model"))
    manifest = json.loads((dataset_dir / "manifest.json").read_text())
    largest = max(int(_all_ids(dataset_dir / s["prefix"]).max()) for s in manifest["sources"])
    assert manifest["format_version"] == 2 and manifest["max_token_id"] == largest
    assert (manifest["vocab_size"], manifest["eos_id"]) == (sp.get_piece_size(), sp.eos_id())
    assert (manifest["template"], manifest["seq_length"]) == ("huatuo", 512)
    assert len(manifest["tokenizer_sha256"]) == 64

    prefix = tmp_path / "plain"
    assert dataset_main(["tokenize", "--input", str(DEMO_PAIRS), "--tokenizer", str(tiny_tokenizer),
                         "--json-keys", "answer", "--output-prefix", str(prefix)]) == 0
    record = json.loads(prefix_manifest_path(f"{prefix}_answer_document").read_text())
    assert record["max_token_id"] == int(_all_ids(f"{prefix}_answer_document").max())
    assert record["tokenizer_sha256"] == manifest["tokenizer_sha256"]  # same tokenizer, same fingerprint
    assert record["bin_bytes"] == os.path.getsize(f"{prefix}_answer_document.bin")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(  # no scratch, lock or temporary file left
        f"plain_answer_document{s}" for s in (".bin", ".idx", ".manifest.json"))


def test_truncated_bin_or_idx_is_one_line_naming_file_and_sizes(tmp_path, dataset_dir, capsys):
    ds = tmp_path / "ds"
    shutil.copytree(dataset_dir, ds)
    size = os.path.getsize(ds / "web.bin")
    os.truncate(ds / "web.bin", size - 10)
    assert dataset_main(["inspect", str(ds)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"{ds / 'web.bin'}: expected {size} bytes" in err and f"found {size - 10}: truncated" in err
    os.truncate(ds / "web.bin", size)
    idx_size = os.path.getsize(ds / "sft.idx")
    os.truncate(ds / "sft.idx", idx_size - 8)
    with pytest.raises(TruncatedDataset, match=f"sft.idx: expected {idx_size} bytes"):
        check_prefix(ds / "sft")
    # the trainer's datasets open through the same check
    from megatron_huatuo.data.indexed import IndexedDocumentsDataset

    with pytest.raises(TruncatedDataset, match="sft.idx"):
        IndexedDocumentsDataset([str(ds / "sft")], 16)


def test_empty_inputs_are_refused_unless_allowed(tmp_path, tiny_tokenizer, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n  \n")
    args = ["build", "--pairs", str(empty), "--sft", str(DEMO_SFT_EN), "--tokenizer", str(tiny_tokenizer),
            "--seq-length", "256", "--out", str(tmp_path / "ds")]
    assert dataset_main(args) == 2
    assert f"input {empty} is empty" in capsys.readouterr().err and not (tmp_path / "ds").exists()
    assert dataset_main(args + ["--allow-empty"]) == 0
    prefix = tmp_path / "t"
    tok_args = ["tokenize", "--input", str(empty), str(DEMO_PAIRS), "--json-keys", "answer", "--tokenizer",
                str(tiny_tokenizer), "--output-prefix", str(prefix)]
    assert dataset_main(tok_args) == 2 and "--allow-empty" in capsys.readouterr().err
    assert dataset_main(tok_args + ["--allow-empty"]) == 0
    assert len(IndexedDataset(f"{prefix}_answer_document")) == len(DEMO_PAIRS.read_text().splitlines())
    # nothing at all is refused even with the flag: megatron-core cannot open an empty dataset
    assert dataset_main(["tokenize", "--input", str(empty), "--tokenizer", str(tiny_tokenizer), "--output-prefix",
                         str(prefix), "--allow-empty"]) == 2
    assert "no rows in any input file" in capsys.readouterr().err


def _can_mount_tmpfs(where: Path) -> bool:
    probe = subprocess.run(["unshare", "-m", "sh", "-c", f"mount -t tmpfs -o size=64k tmpfs {where}"],
                           capture_output=True)
    return probe.returncode == 0


def test_a_full_disk_is_one_line_no_space_left_on_the_output(tmp_path, tiny_tokenizer):
    mnt = tmp_path / "small"
    mnt.mkdir()
    if shutil.which("unshare") is None or not _can_mount_tmpfs(mnt):
        pytest.skip("needs root (unshare -m + a 48 KiB tmpfs) to fill a disk")
    out = mnt / "ds"
    cmd = " ".join([f"mount -t tmpfs -o size=48k tmpfs {mnt} &&", sys.executable, "-m", "preprocessing.dataset",
                    *_build_args(tiny_tokenizer, out), "; echo rc=$?; ls -A", str(mnt)])
    proc = subprocess.run(["unshare", "-m", "sh", "-c", cmd], cwd=REPO_ROOT, capture_output=True, text=True)
    assert "rc=1" in proc.stdout, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: no space left on {out}"), proc.stderr
    assert proc.stdout.split("rc=1", 1)[1].strip() == ""  # nothing partial left on the full filesystem


def _random_prefix(path: Path, high: int, seed: int = 0) -> str:
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder
    import torch

    rng = np.random.default_rng(seed)
    builder = IndexedDatasetBuilder(f"{path}.bin", dtype=np.uint16)
    for _ in range(20):
        builder.add_item(torch.from_numpy(rng.integers(0, high, 40).astype(np.int64)))
        builder.end_document()
    builder.finalize(f"{path}.idx")
    return str(path)


def test_check_scans_without_a_record_split_over_ranks_and_trusts_a_record(tmp_path, dataset_dir):
    prefix = _random_prefix(tmp_path / "docs", 2048)
    data = DataConfig(type="indexed", prefixes=[prefix])
    largest = int(_all_ids(prefix).max())
    logs = []
    found = check_dataset_fits(data, 4096, "model.vocab_size", log=logs.append, reduce_max=lambda x: x)
    assert found["max_token_id"] == largest and "scanned 800 tokens" in logs[0]
    parts = [check_dataset_fits(data, 4096, "v", reduce_max=lambda x: x, part=(r, 3))["max_token_id"]
             for r in range(3)]
    assert max(parts) == largest and len(set(parts)) > 1  # each rank read another slice
    with pytest.raises(VocabularyMismatch) as err:
        check_dataset_fits(data, 512, "model.vocab_size", reduce_max=lambda x: x)
    msg = str(err.value)
    assert f"token id {largest}" in msg and "vocabulary has 512 entries (model.vocab_size)" in msg
    assert f"{prefix}.bin" in msg and "\n" not in msg
    # a one-stage directory carries its record: no scan
    logs.clear()
    manifest = json.loads((dataset_dir / "manifest.json").read_text())
    one_stage = DataConfig(type="one_stage", path=str(dataset_dir))
    found = check_dataset_fits(one_stage, 4096, "v", log=logs.append, reduce_max=lambda x: x)
    assert found["max_token_id"] == manifest["max_token_id"] and not any("scanned" in line for line in logs)
    with pytest.raises(VocabularyMismatch, match=f"manifest.json"):
        check_dataset_fits(one_stage, manifest["max_token_id"], "v", reduce_max=lambda x: x)


def test_vocabulary_mismatch_is_refused_at_tp2_by_the_trainer(tmp_path):
    """Dataset ids up to 2047 (a 2048-token tokenizer), recipe vocabulary 512: today this trains silently at TP2."""
    sys.path.insert(0, str(REPO_ROOT / "tests" / "training"))
    import training_harness as H

    prefix = _random_prefix(tmp_path / "docs", 2048)
    largest = int(_all_ids(prefix).max())
    codes, outputs = H.run_trainer(["data.type=indexed", f"data.prefixes=[{prefix}]", "train.steps=1"], timeout=180)
    assert codes == [2, 2], outputs[0][-2000:]
    for text in outputs:
        errors = [line for line in text.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and f"token id {largest}" in errors[0] and "512 entries" in errors[0]
        assert f"{prefix}.bin" in errors[0] and "train {" not in text
