"""The segment-cached SentencePiece encoder gives exactly ``sp.encode`` (fuzz over awkward whitespace/CJK/bytes)."""
from __future__ import annotations

import json
import random

import pytest
import sentencepiece as spm

from megatron_huatuo.data.tokenizer import Tokenizer

ALPHABET = list("ab cde  \n\n\t。，、；：？！（）.,;:?!▁é中文血压") + ["  ", "   ", "\u2581 ", " \u2581", "😀", "\x00", "Ω"]


def _random_texts(seed: int, n: int):
    rng = random.Random(seed)
    return ["".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 40))) for _ in range(n)]


def _check(model_path, texts):
    sp = spm.SentencePieceProcessor(model_file=str(model_path))
    tok = Tokenizer(model_path)
    assert tok.encode_batch(texts) == [sp.encode(t) for t in texts]
    assert tok.encode_batch(texts) == [sp.encode(t) for t in texts]  # second pass: all from the cache
    assert tok.eos_id == sp.eos_id() and tok.vocab_size == sp.get_piece_size()
    ids, lengths = tok.encode_flat(texts)
    assert lengths.tolist() == [len(sp.encode(t)) for t in texts]
    assert ids.tolist() == [i for t in texts for i in sp.encode(t)]
    seg = tok.segment_cache  # its cuts cover every text exactly and are all proved safe
    assert seg.segment is not None
    for t in texts:
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
    _check(model, texts)


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
