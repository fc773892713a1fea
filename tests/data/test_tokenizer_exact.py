"""The segment-cached SentencePiece encoder gives exactly ``sp.encode`` (fuzz over awkward whitespace/CJK/bytes, and
the edge cases of natural corpora: empty and whitespace-only texts, CRLF, control characters, emoji, literal ``▁``,
long single lines, texts holding the private-use character the encoder joins texts with)."""
from __future__ import annotations

import json
import random

import pytest
import sentencepiece as spm

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
    seg = tok.segment_cache  # its cuts cover every text exactly and are all proved safe
    assert seg.segment is not None and seg.sep is not None
    for t in texts:
        if seg.sep in t:
            continue  # encoded whole (the separator would be a cut of its own)
        parts = seg.segments(t)
        assert "".join(parts) == ((" " + t) if seg.dummy_prefix and t else t)
        for left, right in zip(parts, parts[1:]):
            if left and right:  # every cut is one the model proved safe
                x, y = left[-1], right[0]
                assert (x not in seg.before and y in seg.before) or (x in seg.after and y not in seg.after), (x, y)


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
    assert tok.segment_cache.segment is None
    sp = spm.SentencePieceProcessor(model_file=str(model))
    texts = _random_texts(2, 200)
    assert tok.encode_batch(texts) == [sp.encode(t) for t in texts]
    ids, lengths = tok.encode_flat(texts)
    assert lengths.tolist() == [len(sp.encode(t)) for t in texts]
