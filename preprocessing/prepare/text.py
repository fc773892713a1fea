"""Text cleaning and the character statistics every filter and the dedup share (one home for "what is CJK").

Why units: Chinese has no spaces, so repetition and near-duplicate measures work on *units*: each CJK character is
one unit, each run of other letters/digits is one unit (an English word). A unit n-gram is then a character n-gram
in Chinese and a word n-gram in English, and mixed text needs no language switch.
"""
from __future__ import annotations

import html
import re
import unicodedata

_CJK_RANGES = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"  # ext. A, unified, compatibility ideographs
_CJK = re.compile(f"[{_CJK_RANGES}]")
_LATIN = re.compile(r"[A-Za-z\u00c0-\u024f]")
_LETTER = re.compile(r"[^\W\d_]")  # Unicode letters, CJK ideographs included
_SPACE = re.compile(r"\s")
_UNIT = re.compile(f"[{_CJK_RANGES}]|[^\\W{_CJK_RANGES}]+")
_TAG = re.compile(r"<[^>]{0,200}>")
_BLANKS = re.compile(r"[^\S\n]+")  # every whitespace but the newline: tabs, full-width and no-break spaces, \r


def clean(text: str) -> str:
    """HTML tags and entities out, control/format characters out, blank runs to one space, empty lines out."""
    text = _BLANKS.sub(" ", html.unescape(_TAG.sub(" ", text)))
    if not text.replace("\n", "").isprintable():  # rare: only then pay for the per-character check
        text = "".join(ch for ch in text if ch == "\n" or ch == " " or unicodedata.category(ch)[0] != "C")
    return "\n".join(s for s in (line.strip() for line in text.split("\n")) if s)


def is_cjk(ch: str) -> bool:
    return bool(_CJK.match(ch))


def _count(pattern: re.Pattern, text: str) -> int:
    """Characters matching a one-character pattern (one C-level pass, no list of matches)."""
    return len(text) - len(pattern.sub("", text))


def cjk_count(text: str) -> int:
    return _count(_CJK, text)


def latin_count(text: str) -> int:
    return _count(_LATIN, text)


def effective_length(text: str) -> int:
    """Non-space characters, CJK counted double (a CJK character carries about a Latin word's half)."""
    return len(text) - _count(_SPACE, text) + cjk_count(text)


def letter_ratio(text: str) -> float:
    """Letters and CJK characters among non-space characters (0 for an empty text)."""
    non_space = len(text) - _count(_SPACE, text)
    return _count(_LETTER, text) / non_space if non_space else 0.0


def zh_share(text: str) -> float:
    """2*CJK / (2*CJK + Latin letters): the weight of Chinese script, CJK double as in ``effective_length``."""
    cjk2 = 2 * cjk_count(text)
    total = cjk2 + latin_count(text)
    return cjk2 / total if total else 0.0


def detect_lang(text: str) -> str:
    """``zh`` when Chinese script weighs at least half (``zh_share``), else ``en``."""
    return "zh" if zh_share(text) >= 0.5 else "en"


def units(text: str) -> list[str]:
    """NFKC, lower-cased units: CJK characters one by one, other letter/digit runs whole (words)."""
    return _UNIT.findall(unicodedata.normalize("NFKC", text).lower())


def normalised(us: list[str]) -> str:
    """Exact-dedup key text from the units: NFKC, lower case, no punctuation or spaces (units cover every word
    character once, in order)."""
    return "".join(us)
