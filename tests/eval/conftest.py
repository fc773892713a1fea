"""A tiny random Llama and a byte-level BPE tokenizer, trained and saved locally for the eval tests."""
from __future__ import annotations

import json

import pytest
import torch

TEXT = [
    "问题：高血压患者首选哪种生活方式干预？ A. 限盐 B. 吸烟 C. 饮酒 D. 熬夜 答案：A",
    "Question: Which vitamin deficiency causes scurvy? A. Vitamin C B. Vitamin D Answer: A",
    "以下是医学考试的单项选择题，请选出正确答案。",
    "The following are multiple choice questions about medicine. Choose the correct answer.",
    "<问>：糖尿病的典型症状是什么？\n<答>：多饮、多食、多尿和体重下降。",
]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out = tmp_path_factory.mktemp("tiny_llama")
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(TEXT * 4, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    fast.save_pretrained(out)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(fast), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      pad_token_id=fast.pad_token_id, bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id)
    model = LlamaForCausalLM(cfg)
    # Larger random weights than the default init so that options get clearly different scores.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.3)
    model.save_pretrained(out)
    return out


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path
