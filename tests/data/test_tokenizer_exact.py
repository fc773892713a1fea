"""The segment-cached SentencePiece encoder gives exactly ``sp.encode`` (fuzz over awkward whitespace/CJK/bytes, and
the edge cases of natural corpora: empty and whitespace-only texts, CRLF, control characters, emoji, literal ``▁``,
long single lines, texts holding the private-use character the encoder joins texts with)."""
from __future__ import annotations

import json
import random

from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as pb

from megatron_huatuo.data.tokenizer import Tokenizer

ALPHABET = list("ab cde  \n\n\t。，、；：？！（）.,;:?!▁é中文血压") + ["  ", "   ", "\u2581 ", " \u2581", "😀", "\x00", "Ω",
                                                                  "\r\n", "\x7f", "\ue000", "\uec5b"]
CJK = list("高血压患者应限制钠盐摄入，。、；：？！（）") + ["\ue000", "1", "a", " ", "\n"]


def _edge_texts():
    """Texts natural corpora hold that break tokenisers (and both encoder paths: CJK-dense and Latin/code)."""
    from huatuo_testing import shared_file

    zh = shared_file("corpora/zh/infectious_disease_textbook.txt").read_text(encoding="utf-8")
    en = "\n".join(json.loads(shared_file("corpora/en/pubmed_abstracts_299.json").read_text(encoding="utf-8")))
    rng = random.Random(3)
    return (["", " ", "   ", "\n", "\n\n\n", "\t", " \t \n ", "\r\n", "a\r\nb\r\n", "\u3000", "\u2581", "\u2581\u2581 \u2581",
             "".join(chr(c) for c in range(32)) + "\x7f", "😀🧬💉 emoji 𠀀 😀", "ﬁ ①②③ ｆｕｌｌ é e\u0301 \ufeff\u200b",
             zh[:60000].replace("\n", ""),  # one CJK line longer than a joined encoder call
             en[:60000].replace("\n", " "),  # one Latin line longer than a joined encoder call
             zh[:300] + "\ue000" + zh[300:600], en[:300] + "\ue000" + en[300:600], "\ue000", "\uec5b" + en[:50]]
            + ["".join(rng.choice(CJK) for _ in range(rng.randint(1, 80))) for _ in range(200)])


def _random_texts(seed: int, n: int):
    rng = random.Random(seed)
    return ["".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 40))) for _ in range(n)]


def _check(model_path, texts):
    sp = spm.SentencePieceProcessor(model_file=str(model_path))
    tok = Tokenizer(model_path)
    ref = [sp.encode(t) for t in texts]
    assert tok.encode_batch(texts) == ref
    assert tok.encode_batch(texts) == ref  # second pass: all from the cache
    assert tok.eos_id == sp.eos_id() and tok.vocab_size == sp.get_piece_size()
    ids, lengths = tok.encode_flat(texts)
    assert lengths.tolist() == list(map(len, ref))
    assert ids.tolist() == [i for r in ref for i in r]
    seg = tok.segment_cache  # every cut it makes is between two characters no merging piece holds side by side
    assert seg.fast
    proto = pb.ModelProto()
    proto.ParseFromString(Path(model_path).read_bytes())
    held = {p.piece[i:i + 2] for p in proto.pieces if p.type in (1, 4, 5) for i in range(len(p.piece) - 1)}
    for t in texts[::7]:
        t = (" " + t) if seg.dummy_prefix and t else t
        if t and seg.sep not in t:
            cuts = seg.pairs.cuts(np.frombuffer(t.encode("utf-32-le", "surrogatepass"), dtype=np.uint32))
            assert cuts[0] == 0 and all(0 < c < len(t) for c in cuts[1:])
            assert not [t[c - 1:c + 1] for c in cuts[1:] if t[c - 1:c + 1].replace(" ", "\u2581") in held]


def test_tiny_tokenizer_fuzz(tiny_tokenizer):
    _check(tiny_tokenizer / "tokenizer.model", _random_texts(0, 400))


@pytest.mark.parametrize("name", ["llama2", "baichuan2", "yi"])
def test_real_tokenizers_fuzz_and_corpus(name):
    from huatuo_testing import shared_file

    model = shared_file(f"tokenizers/{name}/tokenizer.model")
    texts = _random_texts(1, 600)
    texts += json.loads(shared_file("corpora/en/pubmed_abstracts_299.json").read_text(encoding="utf-8"))[:60]
    texts += shared_file("corpora/zh/infectious_disease_textbook.txt").read_text(encoding="utf-8").split("\n")[:200]
    _check(model, texts + _edge_texts())


def test_model_that_could_act_across_cuts_is_encoded_whole(tiny_tokenizer, tmp_path):
    """Whitespace removal rewrites text across cut points: the encoder must not cut (and stays exact)."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    proto = pb.ModelProto()
    proto.ParseFromString((tiny_tokenizer / "tokenizer.model").read_bytes())
    proto.normalizer_spec.remove_extra_whitespaces = True
    model = tmp_path / "rmws.model"
    model.write_bytes(proto.SerializeToString())
    tok = Tokenizer(model)
    assert not tok.segment_cache.fast
    sp = spm.SentencePieceProcessor(model_file=str(model))
    texts = _random_texts(2, 200)
    assert tok.encode_batch(texts) == [sp.encode(t) for t in texts]
    ids, lengths = tok.encode_flat(texts)
    assert lengths.tolist() == [len(sp.encode(t)) for t in texts]


def test_hash_collisions_stay_exact(tiny_tokenizer, monkeypatch):
    """Segments are found by a 64-bit hash and then compared code point by code point: with a hash that makes
    every segment of one length collide, hits are still exact (the losers are encoded apart)."""
    from megatron_huatuo.data import segment_cache

    monkeypatch.setattr(segment_cache.SegmentCache, "_hashes",
                        lambda self, cp, starts, ends: (ends - starts).astype(np.uint64) * np.uint64(2) + np.uint64(1))
    model = tiny_tokenizer / "tokenizer.model"
    sp = spm.SentencePieceProcessor(model_file=str(model))
    tok = Tokenizer(model)
    texts = _random_texts(4, 300)
    for _ in range(2):  # cold, then from the cache
        ids, lengths = tok.encode_flat(texts)
        assert lengths.tolist() == [len(sp.encode(t)) for t in texts]
        assert ids.tolist() == [i for t in texts for i in sp.encode(t)]


def test_table_growth_and_cache_reset_stay_exact(tiny_tokenizer, monkeypatch):
    """A hash table that starts at 4 slots grows many times, and a cache of at most 50 segments is cleared
    between batches: the ids do not change."""
    from megatron_huatuo.data import segment_cache

    monkeypatch.setattr(segment_cache, "_CACHE_ROWS", 50)
    monkeypatch.setattr(segment_cache._HashTable.__init__, "__defaults__", (2,))
    model = tiny_tokenizer / "tokenizer.model"
    sp = spm.SentencePieceProcessor(model_file=str(model))
    tok = Tokenizer(model)
    texts = _random_texts(5, 240)
    for i in range(0, len(texts), 40):
        batch = texts[i:i + 40]
        assert tok.encode_batch(batch) == [sp.encode(t) for t in batch]
