"""Multiple-choice medical questions in one schema, read from the usual JSONL shapes.

Public medical benchmarks ship the same idea (a question, lettered options, the right letter) under different field
names. This module maps each known variant onto :class:`MCQuestion` so scoring never looks at raw fields:

- MedQA (jsonl): ``question``, ``options`` ``{"A": ...}``, ``answer_idx`` letter (``answer`` is the option text).
- MedMCQA: ``question``, ``opa``..``opd``, ``cop`` (1-based in the original release, 0-based in the HF copy; the
  base is inferred per file, see :func:`load_questions`).
- CMExam: ``Question``, ``Options`` as text lines ``"A 选项"``, ``Answer`` letter(s).
- CMB: ``question``, ``option`` ``{"A": ...}``, ``answer`` letter(s), ``question_type``.
- CMMLU / MMLU-style: ``Question``/``question``, columns ``A``..``E``, ``Answer``/``answer`` letter; or ``choices``
  list with an integer ``answer``.
- Ours: ``question``, ``options`` (dict or list), ``answer`` letter, optional ``id``.

A malformed line is an error naming the file, line number and field.
"""
from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

LETTERS = "ABCDEFGHIJ"

_QUESTION_KEYS = ("question", "Question", "query", "stem", "题目", "问题")
_OPTION_DICT_KEYS = ("options", "option", "Options", "choices", "Choices")
_ANSWER_LETTER_KEYS = ("answer_idx", "answer", "Answer", "label", "correct", "gold", "答案")
_ID_KEYS = ("id", "qid", "question_id", "ID")


class QuestionFormatError(ValueError):
    """A benchmark line that cannot be read as a multiple-choice question."""


@dataclass(frozen=True)
class MCQuestion:
    """One multiple-choice question.

    ``answer`` holds one letter for single-answer questions and several sorted letters (``"ACD"``) for
    multiple-answer ones (CMB/CMExam have both).
    """

    qid: str
    question: str
    options: dict[str, str]
    answer: str
    meta: dict = field(default_factory=dict, compare=False)

    @property
    def letters(self) -> list[str]:
        return list(self.options)

    @property
    def is_multi(self) -> bool:
        return len(self.answer) > 1


def _where(path: Path | str, lineno: int) -> str:
    return f"{path}:{lineno}"


def _options_from_text(text: str, where: str) -> dict[str, str]:
    """Parse ``"A 选项一\\nB. 选项二"`` (CMExam) into a letter -> text dict."""
    options: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        m = re.match(r"^([A-J])\s*[\.．、:：\)）]?\s*(.*)$", line)
        if not m:
            raise QuestionFormatError(f"{where}: field 'Options': cannot read an option letter in line {line!r}")
        options[m.group(1)] = m.group(2).strip()
    if len(options) < 2:
        raise QuestionFormatError(f"{where}: field 'Options': fewer than two lettered options in {text!r}")
    return options


def _options(row: dict, where: str) -> tuple[dict[str, str], str | None]:
    """Return (options, the key they came from) for any known variant."""
    for key in _OPTION_DICT_KEYS:
        if key not in row:
            continue
        value = row[key]
        if isinstance(value, dict):
            opts = {str(k).strip().upper(): str(v).strip() for k, v in value.items() if str(v).strip() != ""}
            bad = [k for k in opts if k not in LETTERS]
            if bad:
                raise QuestionFormatError(f"{where}: field {key!r}: option keys must be letters A-J, got {bad}")
            return dict(sorted(opts.items())), key
        if isinstance(value, list):
            if len(value) > len(LETTERS):
                raise QuestionFormatError(f"{where}: field {key!r}: more than {len(LETTERS)} options")
            return {LETTERS[i]: str(v).strip() for i, v in enumerate(value)}, key
        if isinstance(value, str):
            return _options_from_text(value, where), key
        raise QuestionFormatError(f"{where}: field {key!r}: expected a dict, list or text, got {type(value).__name__}")
    if "opa" in row:  # MedMCQA
        opts = {}
        for i, key in enumerate(("opa", "opb", "opc", "opd", "ope")):
            if row.get(key) not in (None, ""):
                opts[LETTERS[i]] = str(row[key]).strip()
        return opts, "opa"
    column_opts = {k: str(row[k]).strip() for k in LETTERS if k in row and str(row[k]).strip() != ""}
    if len(column_opts) >= 2:  # CMMLU / MMLU CSV-style columns
        return column_opts, None
    return {}, None


def _answer(row: dict, options: dict[str, str], options_key: str | None, where: str, cop_base: int) -> str:
    if "cop" in row:  # MedMCQA correct option, an integer
        try:
            idx = int(row["cop"]) - cop_base
        except (TypeError, ValueError):
            raise QuestionFormatError(f"{where}: field 'cop': not an integer: {row['cop']!r}") from None
        if not 0 <= idx < len(options):
            raise QuestionFormatError(f"{where}: field 'cop': {row['cop']!r} out of range for {len(options)} options")
        return LETTERS[idx]
    for key in _ANSWER_LETTER_KEYS:
        if key not in row or row[key] is None:
            continue
        value = row[key]
        if isinstance(value, bool):
            continue
        if isinstance(value, int):  # MMLU-style index into a choices list
            if options_key is not None and isinstance(row.get(options_key), list) and 0 <= value < len(options):
                return LETTERS[value]
            raise QuestionFormatError(f"{where}: field {key!r}: integer answer {value} without a matching list of options")
        text = str(value).strip()
        letters = re.sub(r"[\s,，、;；/]+", "", text).upper()
        if letters and all(ch in options for ch in letters) and len(set(letters)) == len(letters):
            return "".join(sorted(letters))
        # MedQA's "answer" is the option text; accept it when it names exactly one option.
        matches = [letter for letter, opt in options.items() if opt == text]
        if len(matches) == 1:
            return matches[0]
    raise QuestionFormatError(
        f"{where}: no answer letter found (looked at 'cop', {', '.join(repr(k) for k in _ANSWER_LETTER_KEYS)}) "
        f"matching options {list(options)}"
    )


def parse_question(row: dict, where: str, *, cop_base: int = 1, default_id: str = "") -> MCQuestion:
    """Map one raw benchmark record onto :class:`MCQuestion` (``where`` names the file and line in errors)."""
    if not isinstance(row, dict):
        raise QuestionFormatError(f"{where}: expected a JSON object, got {type(row).__name__}")
    question = next((str(row[k]).strip() for k in _QUESTION_KEYS if row.get(k) not in (None, "")), None)
    if question is None:
        raise QuestionFormatError(f"{where}: no question text (looked at {', '.join(repr(k) for k in _QUESTION_KEYS)})")
    options, options_key = _options(row, where)
    if len(options) < 2:
        raise QuestionFormatError(f"{where}: fewer than two options (looked at {list(_OPTION_DICT_KEYS)}, opa.., A..)")
    answer = _answer(row, options, options_key, where, cop_base)
    qid = next((str(row[k]) for k in _ID_KEYS if row.get(k) not in (None, "")), default_id)
    meta = {k: row[k] for k in ("question_type", "exam_type", "exam_subject", "subject_name", "meta_info") if k in row}
    return MCQuestion(qid=qid, question=question, options=options, answer=answer, meta=meta)


def _infer_cop_base(rows: list[tuple[int, dict]]) -> int:
    """MedMCQA's ``cop`` is 1..4 in the original release and 0..3 in the HF copy: a 0 anywhere means 0-based."""
    cops = [r["cop"] for _, r in rows if isinstance(r, dict) and "cop" in r]
    try:
        return 0 if any(int(c) == 0 for c in cops) else 1
    except (TypeError, ValueError):
        return 1


def load_questions(path: str | Path, *, limit: int | None = None) -> list[MCQuestion]:
    """Read a JSONL (one object per line), JSON-array or CSV (header row; CMMLU, CMExam) benchmark file.

    Ids default to ``<file stem>-<line>`` so predictions can always be matched back to their line (for CSV, the
    data row number, 1 = the first row after the header).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"benchmark file not found: {path}")
    text = path.read_text(encoding="utf-8")
    rows: list[tuple[int, dict]] = []
    stripped = text.lstrip("\ufeff").lstrip()
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(io.StringIO(text.lstrip("\ufeff")))
        rows = [(i, {k.strip(): v for k, v in r.items() if k is not None}) for i, r in enumerate(reader, start=1)]
    elif stripped.startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise QuestionFormatError(f"{path}: invalid JSON array: {exc}") from None
        rows = [(i + 1, r) for i, r in enumerate(data)]
    else:
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rows.append((lineno, json.loads(line)))
            except json.JSONDecodeError as exc:
                raise QuestionFormatError(f"{_where(path, lineno)}: invalid JSON: {exc.msg}") from None
    cop_base = _infer_cop_base(rows)
    questions = [
        parse_question(row, _where(path, lineno), cop_base=cop_base, default_id=f"{path.stem}-{lineno}")
        for lineno, row in rows
    ]
    if not questions:
        raise QuestionFormatError(f"{path}: no questions")
    return questions[:limit] if limit else questions
