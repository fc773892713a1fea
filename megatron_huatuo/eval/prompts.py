"""Prompts for multiple-choice questions: zero/few-shot, plain or in the HuatuoGPT-II dialogue template.

The model reads the question and its lettered options and is asked for the answer; what follows the prompt
(the *continuation*) is what gets scored: the option letter (``"A"``) or the option text. Few-shot examples are
full question/answer blocks from a dev file, answered with the same kind of continuation so that the prompt
shows the model the exact form it is scored on.

Two templates:

- ``plain``: ``问题：... A. ... 答案：`` blocks separated by blank lines (English labels for English questions);
  the usual shape for base models.
- ``huatuo``: each block is one dialogue turn ``<问>：{block}\\n<答>：{answer}`` joined by ``\\n``, the template our
  one-stage training uses (full-width colons), so an adapted model is asked the way it was trained.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from megatron_huatuo.eval.questions import MCQuestion

_CJK = re.compile(r"[\u4e00-\u9fff]")

TEMPLATES = ("plain", "huatuo")
CONTINUATIONS = ("letter", "text")


@dataclass(frozen=True)
class Labels:
    header: str
    question: str
    answer: str
    context: str


ZH = Labels(header="以下是医学考试的单项选择题，请选出正确答案。", question="问题：", answer="答案：", context="背景：")
EN = Labels(header="The following are multiple choice questions about medicine. Choose the correct answer.",
            question="Question: ", answer="Answer:", context="Context: ")


def detect_language(text: str) -> str:
    """``zh`` when the text contains any CJK ideograph, else ``en``."""
    return "zh" if _CJK.search(text) else "en"


def labels_for(question: MCQuestion, lang: str = "auto") -> Labels:
    if lang == "auto":
        lang = detect_language(question.question + "".join(question.options.values()))
    if lang not in ("zh", "en"):
        raise ValueError(f"unknown prompt language {lang!r} (auto, zh, en)")
    return ZH if lang == "zh" else EN


def continuation(question: MCQuestion, letter: str, kind: str = "letter", lang: str = "auto",
                 template: str = "plain") -> str:
    """The text scored for option ``letter`` (or letters, for a multi-answer shot): the letter itself or the option
    text. In the plain template English answers take a leading space after ``Answer:``; Chinese ones follow the
    full-width colon directly, as does every answer after ``<答>：`` in the dialogue template."""
    if kind not in CONTINUATIONS:
        raise ValueError(f"unknown continuation kind {kind!r} ({', '.join(CONTINUATIONS)})")
    body = letter if kind == "letter" else question.options[letter]
    space = template == "plain" and labels_for(question, lang) is EN
    return (" " if space else "") + body


def question_block(question: MCQuestion, lang: str = "auto", with_answer_label: bool = True) -> str:
    """The context (when the question has one, e.g. PubMedQA's abstract), the question, lettered options one per
    line, and the answer label."""
    lab = labels_for(question, lang)
    lines = [lab.context + question.context] if question.context else []
    lines.append(lab.question + question.question)
    lines += [f"{letter}. {text}" for letter, text in question.options.items()]
    if with_answer_label:
        lines.append(lab.answer)
    return "\n".join(lines)


def build_prompt(
    question: MCQuestion,
    shots: list[MCQuestion] | tuple[MCQuestion, ...] = (),
    *,
    template: str = "plain",
    continuation_kind: str = "letter",
    lang: str = "auto",
) -> str:
    """The full prompt for ``question`` with ``shots`` answered in front of it.

    Shots with several correct letters are answered with all of them (``"AC"``) in letter mode and skipped in text
    mode (no single option text is the answer).
    """
    if template not in TEMPLATES:
        raise ValueError(f"unknown prompt template {template!r} ({', '.join(TEMPLATES)})")

    # A multi-answer shot is answered with all its letters in letter mode; in text mode no single option text is
    # its answer, so it is left out.
    answered = [
        (s, continuation(s, s.answer, continuation_kind, lang, template))
        for s in shots
        if continuation_kind == "letter" or not s.is_multi
    ]
    if template == "plain":
        blocks = [labels_for(question, lang).header]
        blocks += [question_block(s, lang) + a for s, a in answered]
        blocks.append(question_block(question, lang))
        return "\n\n".join(blocks)
    turns = [f"<问>：{question_block(s, lang, False)}\n<答>：{a}" for s, a in answered]
    turns.append(f"<问>：{question_block(question, lang, False)}\n<答>：")
    return "\n".join(turns)
