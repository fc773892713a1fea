"""Prompt building (exact strings) and the Wilson interval."""
from __future__ import annotations

import math

import pytest

from megatron_huatuo.eval.prompts import build_prompt, continuation
from megatron_huatuo.eval.questions import MCQuestion
from megatron_huatuo.eval.stats import wilson_interval


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


def test_context_is_shown_before_the_question():
    q = MCQuestion("p1", "Does walking lower heart rate?", {"A": "yes", "B": "no", "C": "maybe"}, "A",
                   context="We followed 40 adults.")
    assert build_prompt(q) == (
        "The following are multiple choice questions about medicine. Choose the correct answer.\n\n"
        "Context: We followed 40 adults.\nQuestion: Does walking lower heart rate?\nA. yes\nB. no\nC. maybe\n"
        "Answer:"
    )
    zh = MCQuestion("p2", "是否有效？", {"A": "是", "B": "否"}, "A", context="研究纳入40人。")
    assert build_prompt(zh, template="huatuo") == "<问>：背景：研究纳入40人。\n问题：是否有效？\nA. 是\nB. 否\n<答>："
