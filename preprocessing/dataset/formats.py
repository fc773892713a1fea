"""Input rows -> one conversation schema: a list of (role, text) turns, user first, alternating.

Accepted rows (one JSON object per line): unified pairs ``{"question", "answer", ...}``; ShareGPT
``{"conversations": [{"from": "human"|"gpt", "value": ...}]}``; Alpaca ``{"instruction", "input", "output"}``;
the original's plain list ``[q, a, q, a, ...]``; and ``{"instruction": [..], "output": [..]}``.
Bad rows raise :class:`FormatError` naming the file and line.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator, List, Tuple

Turn = Tuple[str, str]
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "chatgpt": "assistant"}


class FormatError(ValueError):
    pass


def _check(turns: List[Turn]) -> List[Turn]:
    if not turns or len(turns) % 2:
        raise ValueError("a conversation needs user/assistant turn pairs")
    for i, (role, text) in enumerate(turns):
        if role != ("user" if i % 2 == 0 else "assistant"):
            raise ValueError(f"turn {i} has role {role!r}; turns must alternate user, assistant")
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"turn {i} is empty or not a string")
    return turns


def to_turns(row: Any) -> List[Turn]:
    """One parsed JSON row -> turns (raises ValueError saying what is wrong)."""
    if isinstance(row, list):
        return _check([("user" if i % 2 == 0 else "assistant", t) for i, t in enumerate(row)])
    if not isinstance(row, dict):
        raise ValueError(f"expected an object or a list, got {type(row).__name__}")
    if "conversations" in row:
        turns = []
        for j, msg in enumerate(row["conversations"]):
            if not isinstance(msg, dict) or msg.get("from") not in ROLES:
                raise ValueError(f"conversations[{j}]: 'from' must be one of {sorted(ROLES)}")
            turns.append((ROLES[msg["from"]], msg.get("value")))
        return _check(turns)
    if "question" in row or "answer" in row:
        return _check([("user", row.get("question")), ("assistant", row.get("answer"))])
    if "instruction" in row and "output" in row:
        ins, out = row["instruction"], row["output"]
        if isinstance(ins, list) and isinstance(out, list):
            if len(ins) != len(out):
                raise ValueError("instruction and output lists differ in length")
            return _check([t for q, a in zip(ins, out) for t in (("user", q), ("assistant", a))])
        q = ins if not row.get("input") else f"{ins}\n{row['input']}"
        return _check([("user", q), ("assistant", out)])
    raise ValueError("unrecognised row: expected question/answer, conversations, instruction/output or a list")


def parse_line(line: str | bytes) -> Tuple[dict | list, List[Turn]]:
    """(raw row, turns) of one JSON line; raises ValueError/TypeError saying what is wrong."""
    row = json.loads(line)
    return row, to_turns(row)


def read_rows(path: str | Path) -> Iterator[Tuple[int, dict | list, List[Turn]]]:
    """(line number, raw row, turns) per non-empty line; errors name ``file:line``."""
    path = Path(path)
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield (lineno, *parse_line(line))
            except (ValueError, TypeError) as exc:
                raise FormatError(f"{path}:{lineno}: {exc}") from exc
