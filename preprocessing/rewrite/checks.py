"""Output checks: why a generated question or answer is not kept.

Each check returns a short reason string (written into ``rejects.jsonl``) or None. The lists are ours, small on
purpose: a refusal opens with its phrase, so refusal markers are looked for in the opening characters only (a
medical answer may say "抱歉" or "I cannot" later for good reasons); a mention of the hidden reference is looked for
everywhere, as the original did with "参考".

Chat markup is rejected anywhere in an output: a reply that writes ``<答>：`` or ``<|im_start|>user`` smuggles extra
dialogue turns into the trained part of the data once the pair is rendered in a template. Our template's markers
(``<问>``/``<答>``, with any spacing, full-width brackets, ASCII or full-width colons) give ``template_marker``; the
special tokens of other chat templates (``<|im_start|>``, ``<|user|>``, ``[INST]``, ``<<SYS>>``, Baichuan's
``<reserved_106>``, Gemma's ``<start_of_turn>``, ``</s>``) and turn prefixes at a line start (``Human:``,
``Assistant:``, ``User:``, ``### Response:``) give ``role_marker``. Every template in
``megatron_huatuo/data/templates.py`` is covered (tested).
"""
from __future__ import annotations

import re
from typing import Optional

from preprocessing.prepare.text import cjk_count, latin_count

EMPTY = "empty"
TOO_LONG = "question_too_long"
REFUSAL = "refusal"
WRONG_LANGUAGE = "wrong_language"
MENTIONS_REFERENCE = "mentions_reference"
TEMPLATE_MARKER = "template_marker"
ROLE_MARKER = "role_marker"

_TEMPLATE_MARKER = re.compile(r"[<＜〈《]\s*[问答問]\s*[>＞〉》]")
_ROLE_MARKER = re.compile(
    r"<\|[^|<>\n]{1,40}\|>"  # <|im_start|>, <|im_end|>, <|user|>, <|assistant|>, <|eot_id|>, <|endoftext|> ...
    r"|<\s*reserved_\d+\s*>"  # Baichuan's <reserved_106>/<reserved_107> turn tokens
    r"|\[\s*/?\s*INST\s*\]|<<\s*/?\s*SYS\s*>>"  # Llama-2 chat
    r"|<\s*/?\s*(?:start_of_turn|end_of_turn)\s*>|</s>"  # Gemma; the end-of-sequence token of Llama-style chats
    r"|^[ \t>*#]*(?:human|assistant|user|gpt|用户|助手)[ \t]*[:：]"  # a turn prefix at a line start
    r"|^[ \t]*#+[ \t]*(?:instruction|response|input)[ \t]*[:：]",  # Alpaca
    re.IGNORECASE | re.MULTILINE)

REFUSAL_OPENING_CHARS = 80
REFUSAL_MARKERS = (
    "作为一个ai", "作为ai", "作为一个人工智能", "作为人工智能", "作为语言模型", "作为一个语言模型",
    "抱歉", "对不起", "很遗憾，我", "我无法", "我不能回答", "我不能提供",
    "i cannot", "i can't", "i can not", "i'm sorry", "i am sorry", "sorry, ", "as an ai", "as a language model",
    "i am unable", "i'm unable", "i won't",
)
_REFERENCE_ZH = ("参考", "资料中", "资料显示", "根据资料", "根据文本", "文本中", "上述文本", "上文", "原文", "文中提到",
                 "文章中", "根据文章", "所给资料", "提供的资料", "背景资料")
_REFERENCE_EN = re.compile(
    r"\b(the|this|above|given|provided|attached) (text|passage|reference|material|document|article|excerpt)s?\b"
    r"|\baccording to the (text|passage|reference|material|document|article|source)\b"
    r"|\breference text\b",
    re.IGNORECASE)

MIN_LETTERS_FOR_LANGUAGE = 4  # too few letters to judge ("CT?") is not a wrong language


def script_ratio(text: str, lang: str) -> Optional[float]:
    """Share of the target script (CJK for zh, Latin otherwise) among CJK + Latin letters; None if too few."""
    cjk, latin = cjk_count(text), latin_count(text)  # prepare's character classes: one home for "what is CJK"
    if cjk + latin < MIN_LETTERS_FOR_LANGUAGE:
        return None
    return (cjk if lang == "zh" else latin) / (cjk + latin)


def is_refusal(text: str) -> bool:
    opening = text[:REFUSAL_OPENING_CHARS].lower()
    return any(marker in opening for marker in REFUSAL_MARKERS)


def mentions_reference(text: str) -> bool:
    return any(marker in text for marker in _REFERENCE_ZH) or _REFERENCE_EN.search(text) is not None


def chat_markup(text: str) -> Optional[str]:
    """``template_marker`` or ``role_marker`` when ``text`` holds chat markup (module docstring), else None."""
    if _TEMPLATE_MARKER.search(text):
        return TEMPLATE_MARKER
    if _ROLE_MARKER.search(text):
        return ROLE_MARKER
    return None


def check_output(step: str, text: str, lang: str, *, max_question_chars: int, min_script_ratio: float) -> Optional[str]:
    """The reason ``text`` (already stripped) is rejected as the ``step`` output in target language ``lang``."""
    if not text:
        return EMPTY
    markup = chat_markup(text)
    if markup:
        return markup
    if step == "question" and len(text) > max_question_chars:
        return TOO_LONG
    if is_refusal(text):
        return REFUSAL
    ratio = script_ratio(text, lang)
    if ratio is not None and ratio < min_script_ratio:
        return WRONG_LANGUAGE
    if mentions_reference(text):
        return MENTIONS_REFERENCE
    return None
