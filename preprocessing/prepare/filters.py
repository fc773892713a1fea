"""Document quality filters. Each returns the measured value; ``first_failure`` names the first filter it fails.

Why these: length and letter ratio drop stubs and symbol soup; repeated lines and repeated n-grams (the Gopher
rules of Rae et al. 2021, measured in units, see ``text.Units``) drop boilerplate, navigation menus and spam;
the script-ratio language check drops pages in the wrong language for their source (no model download needed);
the medical-term score keeps a web crawl on topic (bundled term lists, ``preprocessing/resources``).
"""
from __future__ import annotations

import functools
import re
from importlib import resources
from typing import Iterator, Optional

import numpy as np

from preprocessing.prepare.config import PrepareConfig
from preprocessing.prepare.text import BLOCK, Units, effective_length, letter_ratio, zh_share

FILTER_REASONS = ("too_short", "few_letters", "wrong_language", "repeated_lines", "top_ngram", "repeated_ngrams",
                  "not_medical")


def dup_line_fraction(text: str) -> float:
    """Lines equal to an earlier line of the text / all lines (0 for one line)."""
    lines = text.split("\n")
    seen: set[str] = set()
    dups = 0
    for line in lines:
        if line in seen:
            dups += 1
        else:
            seen.add(line)
    return dups / len(lines)


def _repeated_ngram_starts(us: Units, n: int) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Per block of n-gram starts ``lo``: (lo, how often each n-gram occurs in the document, whether that is > 1)."""
    grams = us.ngram_ids(n)
    occurrences = np.bincount(grams)
    for lo in range(0, len(grams), BLOCK):
        counts = occurrences[grams[lo:lo + BLOCK]]
        yield lo, counts, counts > 1


def top_ngram_fraction(us: Units, n: int) -> float:
    """max over repeated n-grams of (occurrences x its characters) / characters of all units (capped at 1).

    An n-gram seen once is no repetition, so it scores 0 (a long English term in Chinese text is not spam).
    """
    total = us.chars()
    if len(us) < n or not total:
        return 0.0
    ends = us.char_ends()
    best = 0
    for lo, counts, repeated in _repeated_ngram_starts(us, n):
        gram_chars = ends[lo + n:lo + n + len(counts)] - ends[lo:lo + len(counts)]
        best = max(best, int((counts[repeated] * gram_chars[repeated]).max(initial=0)))
    return min(1.0, best / total)


def dup_ngram_fraction(us: Units, n: int) -> float:
    """Characters of the units covered by an n-gram that occurs more than once / characters of all units."""
    total = us.chars()
    if len(us) < n or not total:
        return 0.0
    covered = np.zeros(len(us), dtype=bool)
    for lo, _, repeated in _repeated_ngram_starts(us, n):
        for k in range(n):  # unit j is covered when a repeated n-gram starts at one of j-n+1 .. j
            covered[lo + k:lo + k + len(repeated)] |= repeated
    chars = sum(int(us.lengths(lo, lo + BLOCK)[covered[lo:lo + BLOCK]].sum()) for lo in range(0, len(us), BLOCK))
    return chars / total


def _load_terms(name: str) -> list[str]:
    text = resources.files("preprocessing.resources").joinpath(name).read_text(encoding="utf-8")
    return [s for s in (line.split("#", 1)[0].strip() for line in text.splitlines()) if s]


@functools.lru_cache(maxsize=None)
def _term_patterns() -> tuple[re.Pattern, re.Pattern]:
    """Longest-first alternations: a regex scan takes the longest term at each position, without overlaps."""
    zh = sorted(_load_terms("medical_terms_zh.txt"), key=lambda t: (-len(t), t))
    en = sorted({t.lower() for t in _load_terms("medical_terms_en.txt")}, key=lambda t: (-len(t), t))
    en_alts = [r"[\s\-]+".join(re.escape(w) for w in re.split(r"[\s\-]+", t)) for t in en]
    return (re.compile("|".join(map(re.escape, zh))),
            re.compile(r"(?<![a-z0-9])(?:" + "|".join(en_alts) + r")s?(?![a-z0-9])", re.IGNORECASE))


def medical_hits(text: str) -> int:
    """Matches of the bundled Chinese and English medical terms (longest match, no overlaps)."""
    zh, en = _term_patterns()
    return len(zh.findall(text)) + len(en.findall(text))


def medical_score(text: str, us: Optional[Units] = None) -> float:
    """Medical term hits per 1000 units (CJK characters and words, ``text.Units``): comparable across zh and en."""
    n = len(Units(text) if us is None else us)
    return 1000.0 * medical_hits(text) / n if n else 0.0


def first_failure(text: str, lang: str, cfg: PrepareConfig, us: Optional[Units] = None
                  ) -> Optional[tuple[str, float]]:
    """``(reason, measured value)`` of the first filter the cleaned ``text`` fails, or None when it passes.

    ``lang`` is the document's language (``zh`` or ``en``): it picks the script the language check expects and
    whether n-grams count characters or words. ``us``: the text's units, when the caller has them.
    """
    length = effective_length(text)
    if length < cfg.min_chars:
        return "too_short", length
    ratio = letter_ratio(text)
    if ratio < cfg.min_letter_ratio:
        return "few_letters", ratio
    if cfg.min_lang_ratio > 0:
        share = zh_share(text) if lang == "zh" else 1.0 - zh_share(text)
        if share < cfg.min_lang_ratio:
            return "wrong_language", share
    if cfg.max_dup_line_fraction < 1:
        frac = dup_line_fraction(text)
        if frac > cfg.max_dup_line_fraction:
            return "repeated_lines", frac
    us = Units(text) if us is None else us
    if cfg.max_top_ngram_fraction < 1:
        frac = top_ngram_fraction(us, cfg.top_ngram_chars if lang == "zh" else cfg.top_ngram_words)
        if frac > cfg.max_top_ngram_fraction:
            return "top_ngram", frac
    if cfg.max_dup_ngram_fraction < 1:
        frac = dup_ngram_fraction(us, cfg.dup_ngram_chars if lang == "zh" else cfg.dup_ngram_words)
        if frac > cfg.max_dup_ngram_fraction:
            return "repeated_ngrams", frac
    if cfg.min_medical_score > 0:
        score = medical_score(text, us)
        if score < cfg.min_medical_score:
            return "not_medical", score
    return None
