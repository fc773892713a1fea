"""Reading the common benchmark shapes, prompt building, answer extraction and the Wilson interval."""
from __future__ import annotations

import math

import pytest

from megatron_huatuo.eval.extract import extract_answer
from megatron_huatuo.eval.prompts import build_prompt, continuation
from megatron_huatuo.eval.questions import MCQuestion, QuestionFormatError, load_questions
from megatron_huatuo.eval.stats import wilson_interval
from tests.eval.conftest import write_jsonl


def test_field_variants(tmp_path):
    rows = [
        {"question": "MedQA q", "options": {"A": "x", "B": "y", "C": "z"}, "answer": "z", "answer_idx": "C"},
        {"question": "MedQA text answer", "options": {"A": "x", "B": "y"}, "answer": "y"},
        {"Question": "CMExam 题", "Options": "A 甲\nB 乙\nC 丙", "Answer": "B"},
        {"question": "CMB 题", "option": {"A": "一", "B": "二", "C": "三", "D": ""}, "answer": "AC",
         "question_type": "多项选择题"},
        {"Question": "CMMLU 题", "A": "a", "B": "b", "C": "c", "D": "d", "Answer": "D"},
        {"question": "MMLU", "choices": ["p", "q", "r"], "answer": 1},
        {"id": "own-1", "question": "ours", "options": ["u", "v"], "answer": "b"},
    ]
    qs = load_questions(write_jsonl(tmp_path / "mix.jsonl", rows))
    assert [q.answer for q in qs] == ["C", "B", "B", "AC", "D", "B", "B"]
    assert qs[2].options == {"A": "甲", "B": "乙", "C": "丙"}
    assert list(qs[3].options) == ["A", "B", "C"]  # the empty option D is dropped
    assert qs[3].is_multi and qs[3].meta["question_type"] == "多项选择题"
    assert qs[0].qid == "mix-1" and qs[6].qid == "own-1"


def test_medmcqa_cop_base_inferred_per_file(tmp_path):
    base = {"question": "q", "opa": "a", "opb": "b", "opc": "c", "opd": "d"}
    one_based = load_questions(write_jsonl(tmp_path / "orig.jsonl", [{**base, "cop": 1}, {**base, "cop": 4}]))
    assert [q.answer for q in one_based] == ["A", "D"]
    zero_based = load_questions(write_jsonl(tmp_path / "hf.jsonl", [{**base, "cop": 0}, {**base, "cop": 3}]))
    assert [q.answer for q in zero_based] == ["A", "D"]


@pytest.mark.parametrize(
    "row, message",
    [
        ({"options": {"A": "x", "B": "y"}, "answer": "A"}, "no question text"),
        ({"question": "q", "options": {"A": "x"}, "answer": "A"}, "fewer than two"),
        ({"question": "q", "options": {"A": "x", "B": "y"}, "answer": "E"}, "no answer letter"),
        ({"question": "q", "options": {"1": "x", "B": "y"}, "answer": "B"}, "option keys must be letters"),
    ],
)
def test_bad_lines_name_file_and_line(tmp_path, row, message):
    good = {"question": "q", "options": {"A": "x", "B": "y"}, "answer": "A"}
    path = write_jsonl(tmp_path / "bad.jsonl", [good, row])
    with pytest.raises(QuestionFormatError, match=rf"bad.jsonl:2: .*{message}"):
        load_questions(path)


def test_invalid_json_line(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text('{"question": "q", "options": ["a", "b"], "answer": "A"}\n{not json\n', encoding="utf-8")
    with pytest.raises(QuestionFormatError, match="broken.jsonl:2: invalid JSON"):
        load_questions(path)


Q_ZH = MCQuestion("z1", "哪项是降糖药？", {"A": "二甲双胍", "B": "阿莫西林"}, "A")
Q_ZH2 = MCQuestion("z2", "哪项是抗生素？", {"A": "胰岛素", "B": "阿莫西林"}, "B")
Q_EN = MCQuestion("e1", "Which drug lowers glucose?", {"A": "Metformin", "B": "Amoxicillin"}, "A")
Q_MULTI = MCQuestion("z3", "哪些是症状？", {"A": "发热", "B": "石头", "C": "咳嗽"}, "AC")


def test_plain_few_shot_prompt_exact():
    prompt = build_prompt(Q_ZH, [Q_ZH2, Q_MULTI], template="plain")
    assert prompt == (
        "以下是医学考试的单项选择题，请选出正确答案。\n\n"
        "问题：哪项是抗生素？\nA. 胰岛素\nB. 阿莫西林\n答案：B\n\n"
        "问题：哪些是症状？\nA. 发热\nB. 石头\nC. 咳嗽\n答案：AC\n\n"
        "问题：哪项是降糖药？\nA. 二甲双胍\nB. 阿莫西林\n答案："
    )
    assert continuation(Q_ZH, "A") == "A"


def test_english_and_text_continuations():
    prompt = build_prompt(Q_EN, [Q_EN], template="plain", continuation_kind="text")
    assert prompt.endswith("Question: Which drug lowers glucose?\nA. Metformin\nB. Amoxicillin\nAnswer:")
    assert "Answer: Metformin\n\n" in prompt
    assert continuation(Q_EN, "B", "text") == " Amoxicillin"
    # Multi-answer shots have no single option text: left out in text mode.
    assert "哪些是症状" not in build_prompt(Q_ZH, [Q_MULTI], continuation_kind="text")


def test_huatuo_template_prompt_exact():
    prompt = build_prompt(Q_ZH, [Q_ZH2], template="huatuo")
    assert prompt == (
        "<问>：问题：哪项是抗生素？\nA. 胰岛素\nB. 阿莫西林\n<答>：B\n"
        "<问>：问题：哪项是降糖药？\nA. 二甲双胍\nB. 阿莫西林\n<答>："
    )
    assert continuation(Q_EN, "A", template="huatuo") == "A"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("答案：B", "B"), ("答案是 C。其他选项A不对", "C"), ("我认为应该选A和C", "AC"), ("(D) 二甲双胍", "D"),
        ("B. 青霉素", "B"), ("首选胰岛素治疗", "C"), ("The answer is (C).", "C"), ("Answer: A, C", "AC"),
        ("A", "A"), ("无法判断", ""), ("根据指南，D 项正确", "D"), ("answer is a guess", ""),
    ],
)
def test_extract_answer(text, expected):
    options = {"A": "阿司匹林", "B": "青霉素", "C": "胰岛素", "D": "二甲双胍"}
    assert extract_answer(text, options) == expected


def test_wilson_interval_known_values():
    # Hand computation from the Wilson formula with z = 1.959964.
    z = 1.959963984540054
    for k, n in [(7, 10), (0, 20), (20, 20), (481, 1000)]:
        p = k / n
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
        low, high = wilson_interval(k, n)
        assert low == pytest.approx(max(0, centre - half), abs=1e-12)
        assert high == pytest.approx(min(1, centre + half), abs=1e-12)
    # Published reference values (Newcombe 1998, table I): 81/263 -> 0.2553 .. 0.3662; 0/10 -> 0 .. 0.2775.
    assert wilson_interval(81, 263) == pytest.approx((0.2553, 0.3662), abs=5e-5)
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=5e-5)
    assert all(math.isnan(x) for x in wilson_interval(0, 0))
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


def test_csv_cmmlu_and_cmexam_shapes(tmp_path):
    cmmlu = tmp_path / "cmmlu_anatomy.csv"
    cmmlu.write_text("\ufeff,Question,A,B,C,D,Answer\n0,心脏有几个腔？,2,3,4,5,C\n1,\"含逗号, 的题\",a,b,c,d,A\n",
                     encoding="utf-8")
    qs = load_questions(cmmlu)
    assert [(q.qid, q.answer) for q in qs] == [("cmmlu_anatomy-1", "C"), ("cmmlu_anatomy-2", "A")]
    assert qs[1].question == "含逗号, 的题"
    cmexam = tmp_path / "cmexam.csv"
    cmexam.write_text('Question,Options,Answer\n哪些是症状,"A 发热\nB 石头\nC 咳嗽",AC\n', encoding="utf-8")
    q = load_questions(cmexam)[0]
    assert q.options == {"A": "发热", "B": "石头", "C": "咳嗽"} and q.answer == "AC"
