"""``inspect``: the mixture PNG, per-source loss-mask coverage, and decoded rows marked on mask boundaries."""
from __future__ import annotations

import json

import pytest
import sentencepiece as spm

from megatron_huatuo.data.one_stage import build_one_stage_dataset
from megatron_huatuo.data.tokenizer import Tokenizer
from preprocessing.dataset.cli import main
from preprocessing.dataset.inspection import mark_spans


def test_mark_spans_by_hand(tiny_tokenizer):
    sp = spm.SentencePieceProcessor(model_file=str(tiny_tokenizer / "tokenizer.model"))
    tok = Tokenizer(tiny_tokenizer)
    prompt, answer, nxt = sp.encode("<问>：高血压怎么办\n") + sp.encode("<答>："), sp.encode("限盐。"), sp.encode("\n")
    ids = prompt + answer + [sp.eos_id()] + nxt
    mask = [0] * len(prompt) + [1] * (len(answer) + 1) + [0] * len(nxt)
    expected = ("[masked]" + sp.decode(prompt) + "[/masked]" + "[trained]" + sp.decode(answer) + "</s>[/trained]"
                + "[masked]" + sp.decode(nxt) + "[/masked]")
    assert mark_spans(ids, mask, tok.decode) == expected
    assert mark_spans([5, 6, 7], [1, 1, 1], lambda s: "-".join(map(str, s))) == "[trained]5-6-7[/trained]"
    assert mark_spans([], [], tok.decode) == ""
    with pytest.raises(ValueError):
        mark_spans([1, 2], [1], tok.decode)


def test_decode_row_marks_each_answer_exactly(dataset_dir, tiny_tokenizer, capsys):
    sp = spm.SentencePieceProcessor(model_file=str(tiny_tokenizer / "tokenizer.model"))
    seed = json.loads((dataset_dir / "manifest.json").read_text())["seed"]
    ds = build_one_stage_dataset(str(dataset_dir), 512, seed=seed)
    assert main(["inspect", str(dataset_dir), "--decode", "0"]) == 0
    out = capsys.readouterr().out
    samples = out.split("--- row 0 sample ")[1:]
    gids = ds.row_documents(0)
    assert len(samples) == len(gids)
    for text, gid in zip(samples, gids):
        ids, mask = ds.document(gid)
        trained = [int(t) for t, m in zip(ids, mask) if m]
        spans = [s.split("[/trained]")[0] for s in text.split("[trained]")[1:]]
        # Trained spans are exactly the mask-1 tokens: their decodings, joined, re-encode nothing else.
        assert "".join(spans) == "".join(Tokenizer(tiny_tokenizer).decode(run) for run in _runs(ids, mask, 1))
        assert sp.eos_id() in trained and text.count("</s>[/trained]") == trained.count(sp.eos_id())


def _runs(ids, mask, flag):
    run, out = [], []
    for t, m in zip(ids, mask):
        if m == flag:
            run.append(int(t))
        elif run:
            out.append(run)
            run = []
    if run:
        out.append(run)
    return out


def test_plot_and_coverage(dataset_dir, tmp_path, capsys):
    png = tmp_path / "mix.png"
    assert main(["inspect", str(dataset_dir), "--plot", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    out = capsys.readouterr().out
    manifest = json.loads((dataset_dir / "manifest.json").read_text(encoding="utf-8"))
    web = next(s for s in manifest["sources"] if s["name"] == "web")
    assert f"web {web['trained_tokens'] / web['tokens']:.3f}" in out
    assert 0 < web["trained_tokens"] < web["tokens"]


def test_decode_row_out_of_range_is_a_clear_error(dataset_dir, capsys):
    assert main(["inspect", str(dataset_dir), "--decode", "100000"]) == 2
    assert "--decode 100000" in capsys.readouterr().err
