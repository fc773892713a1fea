"""Split long documents at sentence ends, so each chunk fits the rewrite prompt (``max_chars``)."""
from __future__ import annotations

import re

from preprocessing.prepare.text import is_cjk

_SENTENCE_END = re.compile(r"(?<=[。！？!?.;；])\s*")


def chunk(text: str, max_chars: int) -> list[str]:
    """Pieces of at most ``max_chars`` characters, cut after sentence ends (a longer sentence is cut hard).

    Pieces of Latin text are re-joined with one space; CJK sentences need none.
    """
    if len(text) <= max_chars:
        return [text]
    out, cur = [], ""
    for s in _SENTENCE_END.split(text):
        if len(s) > max_chars:  # one very long sentence: hard split (by index: re-slicing the rest was quadratic)
            if cur:
                out.append(cur)
                cur = ""
            whole = (len(s) - 1) // max_chars * max_chars  # what is left is 1..max_chars characters
            out.extend(s[i:i + max_chars] for i in range(0, whole, max_chars))
            s = s[whole:]
        if cur and len(cur) + 1 + len(s) > max_chars:  # + 1: the joining space
            out.append(cur)
            cur = ""
        cur = f"{cur} {s}".strip() if cur and not is_cjk(s[:1] or "a") else cur + s
    if cur:
        out.append(cur)
    return out
