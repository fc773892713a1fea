"""HuatuoGPT-II template and loss mask against a hand-written expectation built with SentencePiece directly."""
from __future__ import annotations

import json

import pytest
import sentencepiece as spm

from megatron_huatuo.data.templates import Tokenizer, encode_conversation, get_template
from preprocessing.dataset.formats import FormatError, read_rows, to_turns


def test_single_and_multi_turn_mask(tiny_tokenizer):
    sp = spm.SentencePieceProcessor(model_file=str(tiny_tokenizer / "tokenizer.model"))
    tok = Tokenizer(tiny_tokenizer)
    eos = sp.eos_id()
    turns = [("user", "高血压怎么办"), ("assistant", "限盐。"), ("user", "还有呢"), ("assistant", "多运动。")]
    ids, mask = encode_conversation(turns, tok, get_template("huatuo"))
    # Hand-written: "<问>：q\n<答>：" masked, answer + EOS trained, "\n" + next user turn masked.
    expected = [(sp.encode("<问>：高血压怎么办\n"), 0), (sp.encode("<答>："), 0), (sp.encode("限盐。"), 1), ([eos], 1),
                (sp.encode("\n"), 0), (sp.encode("<问>：还有呢\n"), 0), (sp.encode("<答>："), 0),
                (sp.encode("多运动。"), 1), ([eos], 1)]
    assert ids == [t for piece, _ in expected for t in piece]
    assert mask == [m for piece, m in expected for _ in piece]
    trained = [t for t, m in zip(ids, mask) if m]
    assert sp.decode([t for t in trained if t != eos]) == "限盐。多运动。"
    assert trained.count(eos) == 2 and ids[-1] == eos and sp.bos_id() not in ids
    # The markers are single tokens of this tokenizer, so the mask boundary falls on them exactly.
    assert sp.piece_to_id("<问>") in ids and sp.piece_to_id("<答>") in ids


def test_formats_to_one_schema():
    qa = [("user", "q"), ("assistant", "a")]
    assert to_turns({"question": "q", "answer": "a", "kind": "web"}) == qa
    assert to_turns({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}) == qa
    assert to_turns({"instruction": "q", "input": "", "output": "a"}) == qa
    assert to_turns(["q", "a"]) == qa
    assert to_turns({"instruction": ["q", "q"], "output": ["a", "a"]}) == qa + qa


def test_bad_row_names_file_and_line(tmp_path):
    f = tmp_path / "bad.jsonl"
    f.write_text(json.dumps({"question": "q", "answer": "a"}) + "\n\n" + json.dumps({"conversations": [
        {"from": "gpt", "value": "a"}, {"from": "human", "value": "q"}]}) + "\n", encoding="utf-8")
    with pytest.raises(FormatError, match=r"bad\.jsonl:3: .*alternate"):
        list(read_rows(f))


def test_pairs_row_without_kind_names_the_line(tmp_path, tiny_tokenizer):
    from preprocessing.dataset.build import BuildConfig, build

    f = tmp_path / "p.jsonl"
    f.write_text(json.dumps({"question": "q", "answer": "a", "kind": "web"}) + "\n" + json.dumps({"question": "q", "answer": "a"}) + "\n", encoding="utf-8")
    with pytest.raises(FormatError, match=r"p\.jsonl:2: .*kind"):
        build(BuildConfig([str(f)], [], str(tiny_tokenizer), 64, 1, str(tmp_path / "out")))
    assert not (tmp_path / "out").exists()


def test_real_baichuan2_and_yi_tokenizers_mask_on_token_boundaries():
    from huatuo_testing import shared_file

    turns = [("user", "高血压怎么办？"), ("assistant", "限盐、控制体重。"), ("user", "药呢"), ("assistant", "遵医嘱。")]
    b_path = shared_file("tokenizers/baichuan2/tokenizer.model")
    sp = spm.SentencePieceProcessor(model_file=str(b_path))
    ids, mask = encode_conversation(turns, Tokenizer(b_path), get_template("baichuan2"))
    assert ids[0] == 195 and ids.count(195) == 2 and ids.count(196) == 2  # Baichuan2's user/assistant ids
    assert all(m == 0 for t, m in zip(ids, mask) if t in (195, 196))
    trained = [t for t, m in zip(ids, mask) if m]
    assert sp.decode([t for t in trained if t != sp.eos_id()]) == "限盐、控制体重。遵医嘱。"
    assert ids[-1] == sp.eos_id() and mask[-1] == 1

    y_path = shared_file("tokenizers/yi/tokenizer.model")
    sp = spm.SentencePieceProcessor(model_file=str(y_path))
    ids, mask = encode_conversation(turns, Tokenizer(y_path), get_template("yi"))
    start, end = sp.piece_to_id("<|im_start|>"), sp.piece_to_id("<|im_end|>")
    trained = [t for t, m in zip(ids, mask) if m]
    assert sp.decode([t for t in trained if t != end]) == "限盐、控制体重。遵医嘱。"
    assert trained.count(end) == 2 and start not in trained and ids[-1] == end


def test_hf_tokenizer_directory_gives_the_same_ids(tiny_tokenizer, tmp_path):
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(str(tiny_tokenizer)).save_pretrained(str(tmp_path / "hf"))
    assert (tmp_path / "hf" / "tokenizer.json").exists()
    turns = [("user", "高血压怎么办"), ("assistant", "限盐。")]
    template = get_template("huatuo")
    assert encode_conversation(turns, Tokenizer(tmp_path / "hf"), template) == \
        encode_conversation(turns, Tokenizer(tiny_tokenizer), template)
