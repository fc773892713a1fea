"""``tokenize`` against independent references: megatron-core's IndexedDataset reader and IndexedDatasetBuilder,
the tokenizer library's own encode + EOS, and megatron-core's dtype rule. (Byte identity with Megatron-LM's
``tools/preprocess_data.py`` itself is checked by ``bench/tokenize_throughput.py``, which needs a checkout.)"""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import sentencepiece as spm
import torch
from megatron.core.datasets.indexed_dataset import DType, IndexedDataset, IndexedDatasetBuilder

from huatuo_testing import REPO_ROOT
from preprocessing.dataset import shards
from preprocessing.dataset.formats import FormatError
from preprocessing.dataset.tokenize import TokenizeConfig, tokenize

DOCS = ["Hypertension is common.  Salt   matters!", "高血压怎么办？限盐。", "", "a\nb\tc ▁ d", " leading space",
        ["first sentence.", "", "second one"], [], "😀 emoji and é", "   ", "crlf\r\nline\r\n", "\x00\x01\x7f ctrl",
        "\ue000 private use \uec5b", ["\ue000", " "]]


def _write(path, docs, key="text"):
    path.write_text("".join(json.dumps({key: d, "id": i}, ensure_ascii=False) + "\n" for i, d in enumerate(docs)),
                    encoding="utf-8")
    return path


def _reference_documents(sp, docs):
    """Megatron-LM's Encoder.encode with --append-eod, written independently: per doc (ids, sentence lengths)."""
    out = []
    for d in docs:
        sents = d if isinstance(d, list) else [d]
        ids, lens = [], []
        for s in sents:
            s_ids = sp.encode(s)
            if s_ids:
                ids += s_ids
                lens.append(len(s_ids))
        if ids:
            ids.append(sp.eos_id())
            lens[-1] += 1
        out.append((ids, lens))
    return out


def test_tokenize_matches_megatron_core_reader_and_builder(tmp_path, tiny_tokenizer):
    model = tiny_tokenizer / "tokenizer.model"
    sp = spm.SentencePieceProcessor(model_file=str(model))
    src = _write(tmp_path / "in.jsonl", DOCS)
    rep = tokenize(TokenizeConfig([str(src)], str(model), str(tmp_path / "out")))
    prefix = str(tmp_path / "out_text_document")
    assert rep["outputs"]["text"]["prefix"] == prefix
    ref = _reference_documents(sp, DOCS)

    ds = IndexedDataset(prefix)
    assert ds.index.dtype == DType.optimal_dtype(sp.get_piece_size()) == np.uint16
    assert len(ds.document_indices) == len(DOCS) + 1
    seqs = iter(range(len(ds)))
    for d, (ids, lens) in enumerate(ref):
        a, b = ds.document_indices[d], ds.document_indices[d + 1]
        assert b - a == len(lens)
        got = [t for _ in range(a, b) for t in ds[next(seqs)].tolist()]
        assert got == ids
        assert ds.sequence_lengths[a:b].tolist() == lens

    # The same documents through megatron-core's own writer give the same bytes.
    builder = IndexedDatasetBuilder(str(tmp_path / "ref.bin"), dtype=DType.optimal_dtype(sp.get_piece_size()))
    for ids, lens in ref:
        builder.add_document(torch.tensor(ids, dtype=torch.int64), lens)
    builder.finalize(str(tmp_path / "ref.idx"))
    for ext in (".bin", ".idx"):
        assert (tmp_path / f"ref{ext}").read_bytes() == open(prefix + ext, "rb").read(), ext


def test_large_vocab_uses_int32_and_any_worker_count_is_identical(tmp_path, monkeypatch):
    from huatuo_testing import shared_file

    model = shared_file("tokenizers/baichuan2/tokenizer.model")
    sp = spm.SentencePieceProcessor(model_file=str(model))
    abstracts = json.loads(shared_file("corpora/en/pubmed_abstracts_299.json").read_text(encoding="utf-8"))[:120]
    src = _write(tmp_path / "in.jsonl", abstracts + DOCS)
    monkeypatch.setattr(shards, "MIN_RANGE_BYTES", 8192)
    assert len(shards.plan_ranges([str(src)], 3)) > 5
    for w in (1, 3):
        tokenize(TokenizeConfig([str(src)], str(model), str(tmp_path / f"w{w}"), workers=w))
    ds = IndexedDataset(str(tmp_path / "w1_text_document"))
    assert ds.index.dtype == DType.optimal_dtype(sp.get_piece_size()) == np.int32
    assert ds[0].tolist() == sp.encode(abstracts[0]) + [sp.eos_id()]
    for ext in (".bin", ".idx"):
        assert (tmp_path / f"w1_text_document{ext}").read_bytes() == (tmp_path / f"w3_text_document{ext}").read_bytes()


def test_hf_directory_matches_megatron_core_huggingface_wrapper(tmp_path, tiny_tokenizer):
    from megatron.core.tokenizers import MegatronTokenizer
    from transformers import AutoTokenizer

    hf = tmp_path / "hf"
    AutoTokenizer.from_pretrained(str(tiny_tokenizer)).save_pretrained(str(hf))
    mtok = MegatronTokenizer.from_pretrained(tokenizer_path=str(hf), metadata_path={"library": "huggingface"},
                                             use_fast=True)
    docs = [d for d in DOCS if isinstance(d, str)]
    src = _write(tmp_path / "in.jsonl", docs)
    tokenize(TokenizeConfig([str(src)], str(hf), str(tmp_path / "out")))
    ds = IndexedDataset(str(tmp_path / "out_text_document"))
    assert ds.index.dtype == DType.optimal_dtype(mtok.vocab_size)
    got = [ds[i].tolist() for i in range(len(ds))]
    expected = [mtok.tokenize(d) + [mtok.eod] for d in docs if mtok.tokenize(d)]
    assert got == expected


def test_cli_names_bad_line_and_leaves_no_output(tmp_path, tiny_tokenizer):
    src = tmp_path / "bad.jsonl"
    src.write_text('{"text": "ok"}\n\n{"body": "no text key"}\n', encoding="utf-8")
    with pytest.raises(FormatError, match=r"bad\.jsonl:3: no key 'text'"):
        tokenize(TokenizeConfig([str(src)], str(tiny_tokenizer), str(tmp_path / "out")))
    assert [p.name for p in tmp_path.iterdir()] == ["bad.jsonl"]
    proc = subprocess.run([sys.executable, "-m", "preprocessing.dataset", "tokenize", "--input", str(src),
                           "--tokenizer", str(tiny_tokenizer), "--output-prefix", str(tmp_path / "out"),
                           "--json-keys", "body"], cwd=REPO_ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and "bad.jsonl:1: no key 'body'" in proc.stderr


def test_trainer_reads_tokenized_documents(tmp_path, tiny_tokenizer):
    """The ``data.type: indexed`` dataset of the trainer reads the output: rows are the EOD-separated stream."""
    from megatron_huatuo.data.indexed import IndexedDocumentsDataset

    sp = spm.SentencePieceProcessor(model_file=str(tiny_tokenizer / "tokenizer.model"))
    docs = ["高血压怎么办？限盐、控制体重。" * 3, "Hypertension: reduce salt.", "多运动。"]
    tokenize(TokenizeConfig([str(_write(tmp_path / "in.jsonl", docs))], str(tiny_tokenizer), str(tmp_path / "c")))
    stream = [t for d in docs for t in sp.encode(d) + [sp.eos_id()]]
    ds = IndexedDocumentsDataset([str(tmp_path / "c_text_document")], seq_length=8)
    assert len(ds) == (len(stream) - 1) // 8
    for i in range(len(ds)):
        assert ds[i]["tokens"].tolist() == stream[i * 8:i * 8 + 8]
        assert ds[i]["labels"].tolist() == stream[i * 8 + 1:i * 8 + 9]
