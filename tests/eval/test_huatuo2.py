"""``--protocol huatuo2``: HuatuoGPT-II's prompt, its extraction chain on hand-made outputs (every branch), its
scoring rule, and its seeded sampling against a direct ``transformers`` ``generate`` call with the same settings."""
from __future__ import annotations

import json

import pytest
import torch

from megatron_huatuo.eval import huatuo2
from megatron_huatuo.eval.cli import main
from megatron_huatuo.eval.questions import MCQuestion
from tests.eval.conftest import write_jsonl

OPTIONS = {"A": "阿司匹林", "B": "青霉素", "C": "胰岛素", "D": "二甲双胍", "E": "肝素"}


@pytest.mark.parametrize(
    "text, letters, branch",
    [
        # (a) 答案是/为 up to 。: letters kept in increasing order, repeats and backward letters dropped
        ("分析如下。答案是C。A项错误", "C", "answer_is"),
        ("答案为：A、C和E", "ACE", "answer_is"),
        ("答案是C，不是A。", "C", "answer_is"),  # A goes backwards: dropped
        ("答案为B和B", "B", "answer_is"),
        ("答案是二甲双胍（D）", "D", "answer_is"),
        # (b) no letters after 答案是: the option texts found, in order of appearance, when alphabetical
        ("答案是：胰岛素。", "C", "option_text"),
        ("首选胰岛素治疗", "C", "option_text"),
        ("阿司匹林和胰岛素都可以", "AC", "option_text"),
        # (c) the texts are out of order (or absent): the first distinct, sorted run of A-E letters
        ("胰岛素优于阿司匹林，选BD", "BD", "letters"),
        ("I think D is right", "D", "letters"),
        ("Options: CA then AB", "AB", "letters"),  # 'CA' is not sorted, 'AB' is
        # (d) texts out of order and no usable run: the texts' order as it is; else nothing (-> fallback B)
        ("胰岛素优于阿司匹林", "CA", "option_text_unsorted"),
        ("无法判断", "", "none"),
        ("The answer is unclear", "", "none"),  # 'T', 'a' touch other letters: no run
    ],
)
def test_extraction_chain(text, letters, branch):
    assert huatuo2.extract(text, OPTIONS) == (letters, branch)


def test_scoring_rule():
    assert huatuo2.prediction("", "C") == "B"  # nothing extracted: the original's fallback
    assert huatuo2.prediction("", "AC") == "B"
    assert huatuo2.prediction("CA", "C") == "C"  # single answer: the first letter only
    assert huatuo2.prediction("ACE", "A") == "A"
    assert huatuo2.prediction("CA", "AC") == "CA"  # multi answer: the string as extracted (wrong here)
    assert huatuo2.prediction("AC", "AC") == "AC"


def test_prompt_exact():
    q = MCQuestion("1", "龋病的主要致病菌是", {"A": "大肠杆菌", "B": "变形链球菌"}, "B",
                   meta={"question_type": "单项选择题"})
    assert huatuo2.prompt(q) == "<问>：请回答下面选择题。\n[单项选择题]龋病的主要致病菌是\nA. 大肠杆菌\nB. 变形链球菌\n<答>："
    plain = MCQuestion("2", "Is it safe?", {"A": "yes", "B": "no", "C": "maybe"}, "A", context="An abstract.")
    assert huatuo2.prompt(plain) == "<问>：请回答下面选择题。\nAn abstract.\nIs it safe?\nA. yes\nB. no\nC. maybe\n<答>："
    assert huatuo2.SAMPLING.temperature == 0.5 and huatuo2.SAMPLING.top_p == 0.7
    assert huatuo2.SAMPLING.repetition_penalty == 1.1 and huatuo2.SAMPLING.max_new_tokens == 768
    assert huatuo2.MAX_INPUT_TOKENS == 1024


QUESTIONS = [
    {"question": "高血压患者首选哪种生活方式干预？", "option": "(A) 限盐.\n(B) 吸烟.\n(C) 饮酒.", "anwer": "(A)"},
    {"question": "下列哪些属于症状？", "option": "(A) 发热.\n(B) 石头.\n(C) 咳嗽.", "anwer": "(AC)"},
    {"question": "糖尿病的典型症状是什么？", "option": "(A) 多饮多尿.\n(B) 脱发.", "anwer": "(A)"},
]


def test_sampling_is_transformers_generate_with_the_original_settings(tiny_model_dir, tmp_path):
    """The CLI's texts equal model.generate(do_sample, temperature 0.5, top_p 0.7, repetition_penalty 1.1, top_k 50)
    seeded with seed + the question's index (batch size 1), and a rerun gives the same texts."""
    from megatron_huatuo.eval.model import load_model_and_tokenizer
    from megatron_huatuo.eval.questions import load_questions

    bench = write_jsonl(tmp_path / "unified.jsonl", QUESTIONS)
    args = ["--model", str(tiny_model_dir), "--bench", f"u={bench}", "--protocol", "huatuo2", "--batch-size", "1",
            "--max-new-tokens", "12", "--seed", "7", "--no-special-tokens"]
    assert main(args + ["--out", str(tmp_path / "o1")]) == 0
    rows = [json.loads(line) for line in (tmp_path / "o1" / "u.predictions.jsonl").read_text().splitlines()]
    model, tok = load_model_and_tokenizer(tiny_model_dir)
    for i, (q, row) in enumerate(zip(load_questions(bench), rows)):
        ids = tok(huatuo2.prompt(q), add_special_tokens=False, return_tensors="pt")["input_ids"]
        torch.manual_seed(7 + i)
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=0.5, top_p=0.7,
                             top_k=50, repetition_penalty=1.1, max_new_tokens=12, pad_token_id=tok.pad_token_id,
                             eos_token_id=tok.eos_token_id)
        new = out[0, ids.shape[1]:].tolist()
        if tok.eos_token_id in new:
            new = new[:new.index(tok.eos_token_id)]
        assert row["generated"] == tok.decode(new, skip_special_tokens=True)
        letters, branch = huatuo2.extract(row["generated"], q.options)
        assert (row["extracted"], row["branch"]) == (letters, branch)
        assert row["pred"] == huatuo2.prediction(letters, q.answer) and row["correct"] == (row["pred"] == q.answer)
    assert len({r["generated"] for r in rows}) > 1  # the random model really generates varied text
    assert main(args + ["--out", str(tmp_path / "o2")]) == 0
    again = [json.loads(line) for line in (tmp_path / "o2" / "u.predictions.jsonl").read_text().splitlines()]
    assert [r["generated"] for r in again] == [r["generated"] for r in rows]
    summary = json.loads((tmp_path / "o1" / "summary.json").read_text())
    assert summary["config"]["sampling"] == {"max_new_tokens": 12, "do_sample": True, "temperature": 0.5,
                                             "top_p": 0.7, "top_k": None, "repetition_penalty": 1.1}
    bench_res = summary["benchmarks"][0]
    assert bench_res["fallback"] == sum(r["branch"] == "none" for r in rows) and bench_res["multi_answer"] == 1


def test_huatuo2_is_zero_shot(tiny_model_dir, tmp_path, capsys):
    bench = write_jsonl(tmp_path / "u.jsonl", QUESTIONS)
    assert main(["--model", str(tiny_model_dir), "--bench", str(bench), "--dev", str(bench), "--shots", "1",
                 "--protocol", "huatuo2", "--out", str(tmp_path / "o")]) == 2
    assert "zero-shot" in capsys.readouterr().err
    try:
        import vllm  # noqa: F401
    except ImportError:  # the optional backend explains itself when vllm is absent
        assert main(["--model", str(tiny_model_dir), "--bench", str(bench), "--protocol", "huatuo2", "--backend",
                     "vllm", "--out", str(tmp_path / "o")]) == 2
        assert "--backend vllm needs the vllm package" in capsys.readouterr().err
