"""Build round trip read by megatron-core's own IndexedDataset, rerun identity, and the trainer's Dataset."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import sentencepiece as spm
import torch
from megatron.core.datasets.indexed_dataset import IndexedDataset

from huatuo_testing import DEMO_PAIRS, DEMO_SFT_EN, REPO_ROOT
from megatron_huatuo.data.one_stage import build_one_stage_dataset
from megatron_huatuo.data.sample import SAMPLE_KEYS
from preprocessing.dataset.build import BuildConfig, build

PAIRS, SFT = DEMO_PAIRS, DEMO_SFT_EN


def test_files_read_back_with_megatron_core(dataset_dir, tiny_tokenizer):
    sp = spm.SentencePieceProcessor(model_file=str(tiny_tokenizer / "tokenizer.model"))
    manifest = json.loads((dataset_dir / "manifest.json").read_text(encoding="utf-8"))
    by_name = {s["name"]: s for s in manifest["sources"]}
    rows = [json.loads(line) for line in PAIRS.read_text(encoding="utf-8").splitlines() if line.strip()]
    web = [r for r in rows if r["kind"] == "web"]
    tok, mask = IndexedDataset(str(dataset_dir / "web")), IndexedDataset(str(dataset_dir / "web_loss_mask"))
    assert len(tok) == len(mask) == len(web) == by_name["web"]["documents"]
    assert by_name["web"]["priority"] == 32 and by_name["sft"]["epochs"] == 3
    first = tok[0].tolist()
    expected = sp.encode(f"<问>：{web[0]['question']}\n") + sp.encode("<答>：") + sp.encode(web[0]["answer"])
    assert first == expected + [sp.eos_id()]
    m = mask[0].tolist()
    n_prompt = len(expected) - len(sp.encode(web[0]["answer"]))
    assert m == [0] * n_prompt + [1] * (len(first) - n_prompt)
    assert int(tok.sequence_lengths.sum()) == by_name["web"]["tokens"]


def test_rerun_after_a_killed_run_is_byte_identical(tmp_path, tiny_tokenizer, dataset_dir):
    out = tmp_path / "ds"
    (tmp_path / ".ds.tmp-99999").mkdir()  # leftover of a killed run
    (tmp_path / ".ds.tmp-99999" / "web.bin").write_bytes(b"partial")
    cmd = [sys.executable, "-m", "preprocessing.dataset", "build", "--pairs", str(PAIRS), "--sft", str(SFT),
           "--tokenizer", str(tiny_tokenizer), "--seq-length", "512", "--seed", "7", "--out", str(out)]
    subprocess.run(cmd, check=True, cwd=REPO_ROOT, capture_output=True)
    _assert_same_files(out, dataset_dir)
    a, b = (json.loads((d / "manifest.json").read_text()) for d in (out, dataset_dir))
    assert a["sources"] == b["sources"]


def _assert_same_files(a, b):
    names = sorted(str(p.relative_to(b)) for p in b.rglob("*") if p.is_file())
    assert names == sorted(str(p.relative_to(a)) for p in a.rglob("*") if p.is_file())
    assert any(n.startswith("order_index/") for n in names)
    for name in names:
        if name != "manifest.json":
            assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_any_worker_count_gives_the_same_files(tmp_path, tiny_tokenizer, dataset_dir, monkeypatch):
    from preprocessing.dataset import shards

    monkeypatch.setattr(shards, "MIN_RANGE_BYTES", 4096)  # many small ranges, so shards really are merged
    assert len(shards.plan_ranges([str(PAIRS), str(SFT)], 3)) > 6
    build(BuildConfig([str(PAIRS)], [str(SFT)], str(tiny_tokenizer), 512, 7, str(tmp_path / "w3"), workers=3))
    _assert_same_files(tmp_path / "w3", dataset_dir)


def test_packed_rows_follow_the_contract_and_the_priority_order(dataset_dir):
    ds = build_one_stage_dataset(str(dataset_dir), 512, seed=5)
    again = build_one_stage_dataset(str(dataset_dir), 512, seed=5)
    seen = []
    for i in range(len(ds)):
        row = ds[i]
        assert set(row) == set(SAMPLE_KEYS) and all(v.shape == (512,) for v in row.values())
        assert all(torch.equal(row[k], again[i][k]) for k in SAMPLE_KEYS)
        seg = row["segment_ids"]
        for j in range(int(seg.max()) + 1):
            idx = (seg == j).nonzero().flatten()
            gid = ds.row_documents(i)[j]
            tokens, mask = ds.document(gid)
            n = len(idx)
            assert row["tokens"][idx].tolist() == tokens[:n].tolist()
            assert row["labels"][idx[:-1]].tolist() == tokens[1:n].tolist()
            assert row["loss_mask"][idx].tolist() == mask[1:n].tolist() + [0]
            assert row["position_ids"][idx].tolist() == list(range(n))
            seen.append(gid)
        assert float(row["loss_mask"][seg < 0].sum()) == 0
    assert seen == ds.order.tolist()  # every sample packed, in priority order, each exactly its epochs
    names = [ds.source_of(g) for g in ds.order.tolist()]
    k = len(names) // 10
    assert names[:k].count("sft") < names[-k:].count("sft")
    assert len(build_one_stage_dataset(str(dataset_dir), 512, seed=5, num_samples=len(ds) + 3)) == len(ds) + 3


def test_inspect_prints_the_mixture(dataset_dir, capsys):
    from preprocessing.dataset.cli import main

    assert main(["inspect", str(dataset_dir)]) == 0
    out = capsys.readouterr().out
    assert "source share per 10 % of training" in out and "90-100" in out
    ds = build_one_stage_dataset(str(dataset_dir), 512, seed=7)
    table = ds.mixture(10)
    assert all(abs(sum(row.values()) - 1) < 0.01 for row in table)
    assert table[0]["web"] > table[-1]["web"] and table[0]["sft"] < table[-1]["sft"]


def test_bad_directory_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        build_one_stage_dataset(str(tmp_path), 64, seed=1)


def test_shards_and_build_merge_write_the_unsharded_files(tmp_path, tiny_tokenizer, dataset_dir, monkeypatch, capsys):
    from preprocessing.dataset import shards
    from preprocessing.dataset.build import merge_shards, shards_dir
    from preprocessing.dataset.cli import main
    from preprocessing.sharding import Shard, ShardError

    monkeypatch.setattr(shards, "MIN_RANGE_BYTES", 4096)  # many ranges, spread over the shards
    assert len(shards.plan_ranges([str(PAIRS), str(SFT)], 3)) > 6
    out = tmp_path / "ds"
    cfg = BuildConfig([str(PAIRS)], [str(SFT)], str(tiny_tokenizer), 512, 7, str(out), workers=2)
    for s in (Shard(0, 3), Shard(2, 3)):
        build(cfg, s)
    with pytest.raises(ShardError, match=r"shard 1/3 has not finished \(rerun it with --shard 1/3\)"):
        merge_shards(out, 3)
    build(BuildConfig([str(PAIRS)], [str(SFT)], str(tiny_tokenizer), 256, 7, str(out)), Shard(1, 3))
    with pytest.raises(ShardError, match="shard 1 ran with other settings or inputs than shard 0"):
        merge_shards(out, 3)
    build(cfg, Shard(1, 3))  # the rerun replaces the mismatched shard
    assert main(["build-merge", "--out", str(out), "--shards", "3"]) == 0, capsys.readouterr().err
    names = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    ref = sorted(str(p.relative_to(dataset_dir)) for p in dataset_dir.rglob("*") if p.is_file())
    assert [n for n in names if "/" not in n] == [n for n in ref if "/" not in n]
    assert any(n.startswith("order_index/") for n in names) and set(names) <= set(ref)  # other tests add indexes
    for name in names:  # the manifest too
        assert (out / name).read_bytes() == (dataset_dir / name).read_bytes(), name
    assert sorted(p.name for p in shards_dir(out).iterdir()) == [s.name for s in Shard(0, 3).all()]
