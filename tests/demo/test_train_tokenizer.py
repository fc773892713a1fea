"""The demo SentencePiece tokenizer: template markers are single tokens, transformers loads it identically,
training is deterministic, bad input names the file."""
from __future__ import annotations

import pytest

from preprocessing.train_tokenizer import DEFAULT_SYMBOLS, TokenizerConfig, train_tokenizer

SAMPLES = ["<问>：高血压怎么治疗？\n<答>：限盐、规律运动。", "<|im_start|>user\nWhat is gout?<|im_end|>", "罕见字龘 and 😀 123"]


@pytest.fixture(scope="module")
def demo_tokenizer(tmp_path_factory, repo_root):
    out = tmp_path_factory.mktemp("tok")
    train_tokenizer([repo_root / "demo" / "corpora", repo_root / "demo" / "sft"], out, TokenizerConfig(vocab_size=1200))
    return out


def test_markers_are_single_tokens_and_text_round_trips(demo_tokenizer):
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(demo_tokenizer / "tokenizer.model"))
    assert sp.get_piece_size() == 1200
    assert [sp.id_to_piece(i) for i in range(4)] == ["<unk>", "<s>", "</s>", "<pad>"]
    for symbol in DEFAULT_SYMBOLS:
        assert len(sp.encode(symbol)) == 1, symbol
    for text in SAMPLES:
        assert sp.decode(sp.encode(text)) == text  # identity normalisation keeps the full-width colon
    assert "：" in sp.decode(sp.encode("<答>："))


def test_transformers_loads_it_with_the_same_ids(demo_tokenizer):
    import sentencepiece as spm
    from transformers import AutoTokenizer

    sp = spm.SentencePieceProcessor(model_file=str(demo_tokenizer / "tokenizer.model"))
    hf = AutoTokenizer.from_pretrained(str(demo_tokenizer))
    assert (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id) == (1, 2, 3)
    for text in SAMPLES:
        assert hf(text)["input_ids"] == sp.encode(text)
        assert hf.decode(sp.encode(text)) == text


def test_deterministic(tmp_path, repo_root):
    inputs = [repo_root / "demo" / "sft"]
    a = train_tokenizer(inputs, tmp_path / "a", TokenizerConfig(vocab_size=1200))
    b = train_tokenizer(inputs, tmp_path / "b", TokenizerConfig(vocab_size=1200))
    assert a.read_bytes() == b.read_bytes()
    with pytest.raises(ValueError, match="--vocab-size 300 is too small"):
        train_tokenizer(inputs, tmp_path / "c", TokenizerConfig(vocab_size=300))


def test_bad_input_names_the_file(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{oops\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad.jsonl:2: invalid JSON"):
        train_tokenizer([bad], tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        train_tokenizer([tmp_path / "missing.txt"], tmp_path / "out")
