"""Reading the answer letter(s) out of generated text.

Generated answers come in many shapes ("答案：B", "The answer is (C).", "B. 阿司匹林", "我认为选A和C",
or just the option's text). The rules, tried in order, each limited to the question's own letters:

1. an explicit statement: ``答案是/为/：X``, ``选X``, ``answer is X``, ``answer: X``, ``option X`` (the *first*
   such statement wins, later text is often the model explaining the other options);
2. the text starts with letters: ``"B"``, ``"(B)"``, ``"B."``, ``"AC"``, ``"A、C"``;
3. exactly one option's text appears in the answer;
4. the first standalone capital letter that is an option letter.

Returns sorted letters (``"AC"``) or ``""`` when nothing can be read.
"""
from __future__ import annotations

import re

_SEP = r"(?:\s*(?:[,，、;；/&和及与]|and)\s*)?"


def _letters(found: str, valid: str) -> str:
    letters = sorted(set(ch for ch in found.upper() if ch in valid))
    return "".join(letters)


def extract_answer(text: str, options: dict[str, str]) -> str:
    valid = "".join(options)
    if not valid:
        return ""
    cls = f"[{valid}]"
    group = f"({cls}(?:{_SEP}{cls})*)(?![A-Za-z])"
    explicit = [
        rf"答案\s*(?:是|为|应为|应该是|选)?\s*[:：]?\s*[（(]?\s*{group}",
        rf"(?:应|应该)?选(?:择)?\s*(?:项)?\s*[（(]?\s*{group}",
        rf"(?i:answer)\s*(?:is|would be|:)?\s*(?:option\s*)?[:：]?\s*[\(\[]?\s*{group}",
        rf"(?i:option)\s*[\(\[]?\s*{group}",
    ]
    best: tuple[int, str] | None = None
    for pattern in explicit:
        m = re.search(pattern, text)
        if m and (best is None or m.start() < best[0]):
            best = (m.start(), _letters(m.group(1), valid))
    if best and best[1]:
        return best[1]
    m = re.match(rf"^\s*[\(\[（]?\s*({cls}(?:{_SEP}{cls})*)\s*(?:[\)\]）\.．、:：]|$|\s)", text)
    if m:
        return _letters(m.group(1), valid)
    hits = [letter for letter, opt in options.items() if opt and opt in text]
    if len(hits) == 1:
        return hits[0]
    m = re.search(rf"(?<![A-Za-z]){cls}(?![A-Za-z])", text)
    return m.group(0) if m else ""
