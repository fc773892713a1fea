"""Text cleaning and the character statistics every filter and the dedup share (one home for "what is CJK").

Why units: Chinese has no spaces, so repetition and near-duplicate measures work on *units*: each CJK character is
one unit, each run of other letters/digits is one unit (an English word). A unit n-gram is then a character n-gram
in Chinese and a word n-gram in English, and mixed text needs no language switch.

Why ``Units`` is not a list of strings: one Python string per unit costs 60-80 bytes (a CJK character is not one of
CPython's cached one-character strings), and the n-gram measures built tuples and Counters on top, so one 50 MB
document cost gigabytes (5 MB of Chinese: 1.9 GB). ``Units`` keeps one int32 id per unit, and the n-gram measures
work on exact integer n-gram ids (``Units.ngram_ids``), so memory stays a small multiple of the text (measured in
bench/RESULTS.md, tested in tests/preprocessing/test_prepare_memory.py).
"""
from __future__ import annotations

import collections
import html
import itertools
import re
import unicodedata
from typing import Iterator, Optional

import numpy as np

_CJK_RANGES = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"  # ext. A, unified, compatibility ideographs
_CJK = re.compile(f"[{_CJK_RANGES}]")
_LATIN = re.compile(r"[A-Za-z\u00c0-\u024f]")
_LETTER = re.compile(r"[^\W\d_]")  # Unicode letters, CJK ideographs included
_SPACE = re.compile(r"\s")
_UNIT = re.compile(f"[{_CJK_RANGES}]|[^\\W{_CJK_RANGES}]+")
_UNIT_BREAK = re.compile(f"[\\W{_CJK_RANGES}]")  # a unit never continues across the start of one of these
PIECE_CHARS = 1 << 16  # text scanned for units per step: bounds the temporary list of unit strings
BLOCK = 1 << 20  # array elements per step where a whole-array temporary would cost more than the result
_TAG = re.compile(r"<[^>]{0,200}>")
_BLANKS = re.compile(r"[^\S\n]{2,}|[^\S\n ]")  # runs of whitespace but the newline (tabs, full-width and
# no-break spaces, \r) except a lone space, which is already what a run becomes (matching it cost a string per word)


def clean(text: str) -> str:
    """HTML tags and entities out, control/format characters out, blank runs to one space, empty lines out."""
    text = _BLANKS.sub(" ", html.unescape(_TAG.sub(" ", text)))
    if not text.replace("\n", "").isprintable():  # rare: only then pay for the per-character check
        # over the distinct characters only (a join over every character would hold one object per character)
        drop = {ord(ch): None for ch in set(text) if ch != "\n" and unicodedata.category(ch)[0] == "C"}
        text = text.translate(drop)
    return "\n".join(s for s in (line.strip() for line in text.split("\n")) if s)


def is_cjk(ch: str) -> bool:
    return bool(_CJK.match(ch))


def _count(pattern: re.Pattern, text: str) -> int:
    """Characters matching a one-character pattern: C-level passes over pieces of the text (``sub`` holds a list
    entry per match, so one pass over a whole large text would cost several times the text)."""
    return len(text) - sum(len(pattern.sub("", text[i:i + PIECE_CHARS])) for i in range(0, len(text), PIECE_CHARS))


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


def _pieces(text: str) -> Iterator[str]:
    """``text`` in consecutive pieces of about ``PIECE_CHARS`` characters, each cut where no unit continues."""
    start = 0
    while start < len(text):
        cut = _UNIT_BREAK.search(text, start + PIECE_CHARS) if start + PIECE_CHARS < len(text) else None
        end = cut.start() if cut else len(text)
        yield text[start:end]
        start = end


class Units:
    """The units of a text (NFKC, lower case): CJK characters one by one, other letter/digit runs whole (words).

    Kept as one int32 id per unit, not one string object per unit: ``ids[i]`` numbers unit ``i``'s string in order
    of first appearance, ``vocab[id]`` is that string. ``strings`` gives the unit strings of a range back.
    """

    def __init__(self, text: str):
        self.text = unicodedata.normalize("NFKC", text).lower()
        dtype = np.int32 if len(self.text) < 2 ** 31 else np.int64
        number = collections.defaultdict(itertools.count().__next__)  # unit -> its id, a new one numbered next
        parts, us = [np.empty(0, dtype)], []
        for piece in _pieces(self.text):
            us = _UNIT.findall(piece)
            parts.append(np.fromiter(map(number.__getitem__, us), dtype, len(us)))
        self.ids = parts[-1] if len(parts) <= 2 else np.concatenate(parts)
        self.vocab = list(number)  # insertion order = id order
        self.vocab_lengths = np.fromiter(map(len, self.vocab), np.int64, len(self.vocab))
        # at most one piece (nearly every document): keep its strings, cheaper than rebuilding them for the shingles
        self._list = us if len(parts) <= 2 else None
        self._powers = {1: self.ids}  # 2**k -> ids of the 2**k-grams (``ngram_ids``)

    def __len__(self) -> int:
        return len(self.ids)

    def strings(self, start: int = 0, stop: Optional[int] = None) -> list[str]:
        """The unit strings ``start:stop``."""
        if self._list is not None:
            return self._list[start:stop]
        return list(map(self.vocab.__getitem__, self.ids[start:stop].tolist()))

    def joined(self) -> Iterator[str]:
        """All units concatenated, in consecutive parts: the text without the characters no unit covers."""
        if self._list is not None:
            yield "".join(self._list)
        else:
            for piece in _pieces(self.text):
                yield "".join(_UNIT.findall(piece))

    def lengths(self, start: int = 0, stop: Optional[int] = None) -> np.ndarray:
        """Characters of the units ``start:stop``."""
        return self.vocab_lengths[self.ids[start:stop]]

    def chars(self) -> int:
        """Characters of all units."""
        return int(np.bincount(self.ids, minlength=len(self.vocab)) @ self.vocab_lengths)

    def char_ends(self) -> np.ndarray:
        """``ends[i]``: characters of units ``0:i`` (``len + 1`` values, from 0)."""
        ends = np.zeros(len(self) + 1, dtype=np.int64 if len(self.text) >= 2 ** 31 else np.int32)
        for lo in range(0, len(self), BLOCK):
            hi = min(lo + BLOCK, len(self))
            np.cumsum(self.lengths(lo, hi), out=ends[lo + 1:hi + 1])
            ends[lo + 1:hi + 1] += ends[lo]
        return ends

    def ngram_ids(self, n: int) -> np.ndarray:
        """For each start ``i`` in ``0..len-n``, an id of the n-gram ``i:i+n``: equal ids <=> equal n-grams (exact).

        Built by doubling: ids of 2-grams from pairs of unit ids, 4-grams from pairs of 2-gram ids, ..., and ``n``
        from its binary decomposition, each pairing a sort of 64-bit keys (``_pair``). The 2**k-gram ids are kept:
        the two n-gram filters share them.
        """
        if n < 1 or n > len(self):
            return np.empty(0, self.ids.dtype)
        powers = self._powers
        while 2 * max(powers) <= n:
            k = max(powers)
            powers[2 * k] = _pair(powers[k][:-k], powers[k][k:])
        out, span = None, 0
        for k in sorted(powers, reverse=True):
            if span + k <= n:
                out = powers[k] if out is None else _pair(out[:len(out) - k], powers[k][span:])
                span += k
        return out


def _pair(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Dense ids of the pairs ``(left[i], right[i])`` (both non-negative, < 2**32): equal ids <=> equal pairs.

    Peak ~17 bytes per pair: the 64-bit keys, their sort order, and the "differs from the previous key in sort
    order" flags, gathered in blocks rather than through a sorted copy of the keys.
    """
    key = left.astype(np.uint64) << np.uint64(32)
    key |= right.astype(np.uint64)
    order = np.argsort(key)
    new = np.empty(len(key), dtype=bool)
    new[:1] = True
    for lo in range(1, len(key), BLOCK):
        ranked = key[order[lo - 1:lo + BLOCK]]
        np.not_equal(ranked[1:], ranked[:-1], out=new[lo:lo + BLOCK])
    del key
    ranks = np.cumsum(new, dtype=left.dtype)
    del new
    ranks -= 1
    out = np.empty_like(ranks)
    out[order] = ranks
    return out
