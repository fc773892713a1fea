"""Multiple-choice medical questions in one schema, read from the files the benchmarks actually publish.

Every public medical benchmark ships the same idea (a question, lettered options, the right letter or letters)
in its own shape. :func:`load_questions` reads a file, detects its format from its first record (the format then
holds for the whole file, so an error names that format's own field) and maps every record onto
:class:`MCQuestion`, so that prompting and scoring never look at raw fields:

========== ================================================================= ==========================================
format     as published                                                      fields read
========== ================================================================= ==========================================
unified    HuatuoGPT-II's successors (FreedomIntelligence Apollo ``metadata`` ``question``, ``option`` text of
           test/dev JSONL: MedQA-USMLE/MCMLE, MedMCQA, MMLU/CMMLU-medical,    ``(A) ...`` lines, ``anwer`` (sic) or
           PubMedQA, CMB-single, CMExam)                                     ``answer`` as ``(A)``/``(ABC)``, optional
                                                                             ``context``, ``source``
medqa      MedQA original JSONL (``questions/US``, ``questions/Mainland``)    ``question``, ``options`` dict,
                                                                             ``answer_idx`` (``answer`` is the text),
                                                                             ``meta_info``
medmcqa    MedMCQA original JSON lines (``cop`` 1..4) or the HF copy (0..3)  ``question``, ``opa``..``opd``, ``cop``,
                                                                             ``subject_name``, ``choice_type``
pubmedqa   PubMedQA ``ori_pqal.json``/``test_set.json`` (object keyed by     ``QUESTION``, ``CONTEXTS``,
           PMID), its bigbio JSONL, or the HF ``pubmed_qa`` rows              ``final_decision``; or ``question``,
                                                                             ``context.contexts``, ``final_decision``
cmb        CMB-Exam JSON array (``CMB-val-merge.json``), or HuatuoGPT-II's    ``question``, ``option`` dict (empty
           eval_qa file (``{source: [items]}``)                               options dropped), ``answer`` letters,
                                                                             ``question_type``, ``exam_*``
cmexam     CMExam CSV (``Question``, ``Options`` one ``A 选项`` per line)      ``Question``, ``Options``, ``Answer``
cmmlu      CMMLU CSV with its header row (``,Question,A,B,C,D,Answer``)      ``Question``, ``A``..``D``, ``Answer``
mmlu       MMLU CSV without a header (question, A, B, C, D, answer), or the   columns by position; or ``question``,
           HF rows (``choices`` list, integer ``answer``)                     ``choices``, ``answer`` index
generic    our own JSONL                                                     ``question``, ``options`` dict or list,
                                                                             ``answer`` letter(s), optional
                                                                             ``context``
========== ================================================================= ==========================================

A question may carry a ``context`` (PubMedQA's abstract): prompts show it, it is never dropped. Questions with
several right letters (CMExam, CMB 多项选择题) keep them as a sorted set (``"ACD"``) and are scored as a set.
Every failure is one line naming the file, the line (the record's key for files keyed by id) and the field.
"""
from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

LETTERS = "ABCDEFGHIJ"
PUBMEDQA_OPTIONS = {"A": "yes", "B": "no", "C": "maybe"}
# Metadata kept from the raw records (grouping in the summary, the huatuo2 prompt's question type).
META_KEYS = ("question_type", "exam_type", "exam_class", "exam_subject", "subject_name", "topic_name", "choice_type",
             "meta_info", "source", "subject", "Disease Group", "Clinical Department", "Medical Discipline")


class QuestionFormatError(ValueError):
    """A benchmark record that cannot be read as a multiple-choice question (the message names file, line, field)."""


@dataclass(frozen=True)
class MCQuestion:
    """One multiple-choice question.

    ``answer`` holds one letter for single-answer questions and the sorted set of letters (``"ACD"``) for
    multiple-answer ones. ``context`` is a passage the question refers to (PubMedQA's abstract), else empty.
    """

    qid: str
    question: str
    options: dict[str, str]
    answer: str
    meta: dict = field(default_factory=dict, compare=False)
    context: str = ""

    @property
    def letters(self) -> list[str]:
        return list(self.options)

    @property
    def is_multi(self) -> bool:
        return len(self.answer) > 1


@dataclass(frozen=True)
class Record:
    """One raw record and where it came from (``where`` is ``file:line`` or ``file:key``)."""

    where: str
    data: dict
    default_id: str


def _fail(where: str, key: str | None, why: str) -> QuestionFormatError:
    return QuestionFormatError(f"{where}: field {key!r}: {why}" if key else f"{where}: {why}")


def _first_key(row: dict, keys: Iterable[str]) -> str | None:
    return next((k for k in keys if k in row), None)


def _text(row: dict, keys: tuple[str, ...], where: str, what: str = "text") -> str:
    key = _first_key(row, keys)
    if key is None:
        raise _fail(where, keys[0], f"missing (looked for {', '.join(repr(k) for k in keys)})")
    value = row[key]
    if value is None or (isinstance(value, str) and not value.strip()):
        raise _fail(where, key, f"empty {what}")
    if not isinstance(value, (str, int, float)):
        raise _fail(where, key, f"expected {what}, got {type(value).__name__}")
    return str(value).strip()


def _letter_set(value: str, options: dict[str, str], where: str, key: str) -> str:
    """``"AC"``, ``"A, C"``, ``"(AC)"``, ``"c"`` -> ``"AC"``, checked against the option letters."""
    letters = re.sub(r"[\s,，、;；/()（）]+", "", str(value)).upper()
    if not letters:
        raise _fail(where, key, "empty answer")
    bad = [ch for ch in letters if ch not in options]
    if bad or len(set(letters)) != len(letters):
        raise _fail(where, key, f"answer {value!r} is not a set of the option letters {''.join(options)}")
    return "".join(sorted(letters))


def _option_dict(value, where: str, key: str) -> dict[str, str]:
    """A ``{"A": text}`` dict (empty options dropped, as CMB and HuatuoGPT-II's eval do) or a list of texts."""
    if isinstance(value, dict):
        opts = {str(k).strip().upper(): "" if v is None else str(v).strip() for k, v in value.items()}
        bad = [k for k in opts if len(k) != 1 or k not in LETTERS]
        if bad:
            raise _fail(where, key, f"option keys must be letters A-J, got {bad}")
        opts = {k: v for k, v in sorted(opts.items()) if v}
    elif isinstance(value, list):
        if len(value) > len(LETTERS):
            raise _fail(where, key, f"more than {len(LETTERS)} options")
        opts = {LETTERS[i]: str(v).strip() for i, v in enumerate(value)}
    else:
        raise _fail(where, key, f"expected a dict or list of options, got {type(value).__name__}")
    if len(opts) < 2:
        raise _fail(where, key, f"fewer than two non-empty options in {value!r}")
    return opts


def _option_lines(text, where: str, key: str, pattern: str, continued: bool = False) -> dict[str, str]:
    """Options written one per line, the letter matched by ``pattern`` (group 1 letter, group 2 text).

    ``continued``: a line without a letter continues the option before it (the unified files keep MedQA option
    texts that contain a newline that way: ``(D) ... intoxication\n".``)."""
    if not isinstance(text, str):
        raise _fail(where, key, f"expected option lines as text, got {type(text).__name__}")
    opts: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        m = re.match(pattern, line)
        if not m and continued and opts:
            last = next(reversed(opts))
            opts[last] = f"{opts[last]}\n{line}"
            continue
        if not m:
            raise _fail(where, key, f"cannot read an option letter in line {line!r}")
        letter = m.group(1).upper()
        if letter in opts:
            raise _fail(where, key, f"option {letter} appears twice")
        opts[letter] = m.group(2).strip()
    if len(opts) < 2:
        raise _fail(where, key, f"fewer than two lettered options in {text!r}")
    return opts


def _meta(row: dict) -> dict:
    return {k: row[k] for k in META_KEYS if row.get(k) not in (None, "")}


def _qid(rec: Record, keys: tuple[str, ...] = ("id", "qid", "question_id", "ID", "pubid")) -> str:
    return next((str(rec.data[k]) for k in keys if rec.data.get(k) not in (None, "")), rec.default_id)


# --- one parser per format --------------------------------------------------------------------------------------

_UNIFIED_OPTION = r"^[\(（]\s*([A-Ja-j])\s*[\)）]\s*(.*)$"


def _parse_unified(rec: Record, _ctx: dict) -> MCQuestion:
    row, where = rec.data, rec.where
    okey = _first_key(row, ("option", "options")) or "option"
    if okey not in row:
        raise _fail(where, "option", "missing (looked for 'option', 'options')")
    options = _option_lines(row[okey], where, okey, _UNIFIED_OPTION, continued=True)
    akey = _first_key(row, ("anwer", "answer"))  # 'anwer' is how the published files spell it
    if akey is None:
        raise _fail(where, "anwer", "missing (looked for 'anwer', 'answer')")
    answer = _letter_set(row[akey], options, where, akey)
    context = str(row.get("context") or "").strip()
    return MCQuestion(_qid(rec), _text(row, ("question",), where), options, answer, _meta(row), context)


def _parse_medqa(rec: Record, _ctx: dict) -> MCQuestion:
    row, where = rec.data, rec.where
    options = _option_dict(row.get("options"), where, "options")
    if row.get("answer_idx") not in (None, ""):
        answer = _letter_set(row["answer_idx"], options, where, "answer_idx")
    else:  # some copies keep only the answer text
        text = _text(row, ("answer",), where, "answer")
        hits = [k for k, v in options.items() if v == text]
        if len(hits) != 1:
            raise _fail(where, "answer", f"{text!r} names {len(hits)} options (no 'answer_idx' letter either)")
        answer = hits[0]
    return MCQuestion(_qid(rec), _text(row, ("question",), where), options, answer, _meta(row))


def _parse_medmcqa(rec: Record, ctx: dict) -> MCQuestion:
    row, where = rec.data, rec.where
    options = {}
    for i, key in enumerate(("opa", "opb", "opc", "opd", "ope")):
        if key in row and row[key] not in (None, ""):
            options[LETTERS[i]] = str(row[key]).strip()
        elif i < 4:
            raise _fail(where, key, "missing or empty option")
    raw = row.get("cop")
    if raw in (None, ""):
        raise _fail(where, "cop", "missing (the MedMCQA test split ships without answers: use the dev split)")
    try:
        idx = int(raw) - ctx["cop_base"]
    except (TypeError, ValueError):
        raise _fail(where, "cop", f"not an integer: {raw!r}") from None
    if not 0 <= idx < len(options):
        raise _fail(where, "cop", f"{raw!r} out of range for {len(options)} options "
                                  f"({'0' if ctx['cop_base'] == 0 else '1'}-based in this file)")
    return MCQuestion(_qid(rec), _text(row, ("question",), where), options, LETTERS[idx], _meta(row))


def _parse_pubmedqa(rec: Record, _ctx: dict) -> MCQuestion:
    row, where = rec.data, rec.where
    if "QUESTION" in row:  # ori_pqal.json / test_set.json / bigbio source rows
        question = _text(row, ("QUESTION",), where)
        contexts, ckey = row.get("CONTEXTS"), "CONTEXTS"
    else:  # HF pubmed_qa rows
        question = _text(row, ("question",), where)
        ctx_field = row.get("context")
        contexts, ckey = (ctx_field.get("contexts") if isinstance(ctx_field, dict) else ctx_field), "context"
    if isinstance(contexts, str):
        contexts = [contexts]
    if not isinstance(contexts, list) or not contexts or not all(isinstance(c, str) for c in contexts):
        raise _fail(where, ckey, "expected the abstract's passages (a non-empty list of strings)")
    decision = _text(row, ("final_decision",), where, "decision").lower()
    answer = next((k for k, v in PUBMEDQA_OPTIONS.items() if v == decision), None)
    if answer is None:
        raise _fail(where, "final_decision", f"expected yes, no or maybe, got {decision!r}")
    return MCQuestion(_qid(rec), question, dict(PUBMEDQA_OPTIONS), answer, _meta(row), "\n".join(contexts))


def _parse_cmb(rec: Record, _ctx: dict) -> MCQuestion:
    row, where = rec.data, rec.where
    options = _option_dict(row.get("option"), where, "option")
    if row.get("answer") in (None, ""):
        raise _fail(where, "answer", "empty (CMB's test questions ship without answers: they are in "
                                     "CMB-test-choice-answer.json; evaluate CMB-val, or join the answers by 'id')")
    answer = _letter_set(row["answer"], options, where, "answer")
    return MCQuestion(_qid(rec), _text(row, ("question",), where), options, answer, _meta(row))


_CMEXAM_OPTION = r"^([A-Ja-j])\s*[\.．、:：\)）]?\s*(.*)$"


def _parse_cmexam(rec: Record, _ctx: dict) -> MCQuestion:
    row, where = rec.data, rec.where
    options = _option_lines(row.get("Options"), where, "Options", _CMEXAM_OPTION)
    answer = _letter_set(_text(row, ("Answer",), where, "answer"), options, where, "Answer")
    return MCQuestion(_qid(rec), _text(row, ("Question",), where), options, answer, _meta(row))


def _parse_cmmlu(rec: Record, _ctx: dict) -> MCQuestion:
    row, where = rec.data, rec.where
    options = {k: str(row[k]).strip() for k in LETTERS if row.get(k) not in (None, "")}
    for k in "ABCD":
        if k not in options:
            raise _fail(where, k, "missing or empty option")
    akey = _first_key(row, ("Answer", "answer")) or "Answer"
    answer = _letter_set(_text(row, (akey,), where, "answer"), options, where, akey)
    qkey = _first_key(row, ("Question", "question")) or "Question"
    return MCQuestion(_qid(rec), _text(row, (qkey,), where), options, answer, _meta(row))


def _parse_mmlu(rec: Record, _ctx: dict) -> MCQuestion:
    row, where = rec.data, rec.where
    if "choices" in row:  # HF cais/mmlu rows
        options = _option_dict(row["choices"], where, "choices")
        value = row.get("answer")
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < len(options):
            raise _fail(where, "answer", f"expected an index into 'choices' (0..{len(options) - 1}), got {value!r}")
        return MCQuestion(_qid(rec), _text(row, ("question",), where), options, LETTERS[value], _meta(row))
    return _parse_cmmlu(rec, _ctx)  # header-less CSV rows were given the CMMLU column names


def _parse_generic(rec: Record, _ctx: dict) -> MCQuestion:
    row, where = rec.data, rec.where
    options = _option_dict(row.get("options"), where, "options")
    value = row.get("answer")
    if isinstance(value, int) and not isinstance(value, bool) and isinstance(row["options"], list):
        if not 0 <= value < len(options):
            raise _fail(where, "answer", f"index {value} out of range for {len(options)} options")
        answer = LETTERS[value]
    elif value in (None, ""):
        raise _fail(where, "answer", "missing")
    else:
        answer = _letter_set(value, options, where, "answer")
    context = str(row.get("context") or "").strip()
    return MCQuestion(_qid(rec), _text(row, ("question",), where), options, answer, _meta(row), context)


Parser = Callable[[Record, dict], MCQuestion]


def _is_unified(row: dict) -> bool:
    value = row.get("option", row.get("options"))
    return isinstance(value, str) and re.match(r"[\(（]\s*[A-Ja-j]\s*[\)）]", value.strip()) is not None


# Detection order matters: the first predicate that accepts the first record names the file's format.
FORMATS: tuple[tuple[str, Callable[[dict], bool], Parser], ...] = (
    ("pubmedqa", lambda r: "final_decision" in r or "QUESTION" in r, _parse_pubmedqa),
    ("unified", _is_unified, _parse_unified),
    ("medmcqa", lambda r: "opa" in r or "cop" in r, _parse_medmcqa),
    ("medqa", lambda r: isinstance(r.get("options"), dict) and ("answer_idx" in r or "meta_info" in r), _parse_medqa),
    ("cmexam", lambda r: "Options" in r, _parse_cmexam),
    ("cmb", lambda r: isinstance(r.get("option"), dict), _parse_cmb),
    ("mmlu", lambda r: ("choices" in r and isinstance(r.get("answer"), int))
     or ("question" in r and "answer" in r and all(k in r for k in "ABCD")), _parse_mmlu),
    ("cmmlu", lambda r: "Question" in r and all(k in r for k in "ABCD"), _parse_cmmlu),
    ("generic", lambda r: "options" in r, _parse_generic),
)
FORMAT_NAMES = tuple(name for name, _, _ in FORMATS)


def detect_format(row: dict, where: str) -> str:
    if not isinstance(row, dict):
        raise QuestionFormatError(f"{where}: expected a JSON object, got {type(row).__name__}")
    for name, accepts, _ in FORMATS:
        if accepts(row):
            return name
    raise QuestionFormatError(
        f"{where}: unknown benchmark format (keys {sorted(row)[:12]}); known: {', '.join(FORMAT_NAMES)} "
        "(see docs/eval.md)")


# --- files ------------------------------------------------------------------------------------------------------

_CSV_HEADER_WORDS = {"question", "answer", "options", "a", "b"}


def _csv_records(path: Path, text: str) -> list[Record]:
    rows = list(csv.reader(io.StringIO(text)))
    rows = [r for r in rows if any(c.strip() for c in r)]
    if not rows:
        return []
    header = [c.strip() for c in rows[0]]
    if {h.lower() for h in header} & _CSV_HEADER_WORDS and not re.fullmatch(r"[A-J]", header[-1]):
        out = []
        for n, r in enumerate(rows[1:], start=1):
            if len(r) != len(header):
                raise QuestionFormatError(f"{path}:{n}: {len(r)} columns, the header has {len(header)}")
            out.append(Record(f"{path}:{n}", {h: v for h, v in zip(header, r) if h}, f"{path.stem}-{n}"))
        return out
    # MMLU's own CSVs have no header: question, options..., answer letter (row n of the file is line n)
    out = []
    for n, r in enumerate(rows, start=1):
        if len(r) < 4:
            raise QuestionFormatError(f"{path}:{n}: {len(r)} columns; a header-less (MMLU) CSV row is question, "
                                      "options..., answer")
        data = {"question": r[0], "answer": r[-1], "subject": path.stem.removesuffix("_test").removesuffix("_dev")
                .removesuffix("_val")}
        data.update({LETTERS[i]: v for i, v in enumerate(r[1:-1])})
        out.append(Record(f"{path}:{n}", data, f"{path.stem}-{n}"))
    return out


def _json_records(path: Path, text: str) -> list[Record]:
    stripped = text.lstrip()
    whole = None
    if stripped.startswith("["):
        try:
            whole = json.loads(text)
        except json.JSONDecodeError as exc:
            raise QuestionFormatError(f"{path}: invalid JSON array: {exc}") from None
    elif stripped.startswith("{"):
        try:
            whole = json.loads(text)
        except json.JSONDecodeError:
            whole = None  # JSON lines
    if isinstance(whole, list):
        return [Record(f"{path}:{i + 1}", r, f"{path.stem}-{i + 1}") for i, r in enumerate(whole)]
    if isinstance(whole, dict):
        values = list(whole.values())
        if values and all(isinstance(v, dict) for v in values) and "question" not in whole:
            # keyed by id (PubMedQA's ori_pqal.json / test_set.json): the key is the id and names the record
            return [Record(f"{path}:{k}", v, str(k)) for k, v in whole.items()]
        if values and all(isinstance(v, list) for v in values):
            # HuatuoGPT-II's eval_qa file: {source: [items]}; the source becomes the group
            out = []
            for src, items in whole.items():
                for i, r in enumerate(items):
                    row = dict(r, source=r.get("source", src)) if isinstance(r, dict) else r
                    out.append(Record(f"{path}:{src}[{i}]", row, f"{src}-{i + 1}"))
            return out
        return [Record(f"{path}:1", whole, f"{path.stem}-1")]
    out = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            out.append(Record(f"{path}:{lineno}", json.loads(line), f"{path.stem}-{lineno}"))
        except json.JSONDecodeError as exc:
            raise QuestionFormatError(f"{path}:{lineno}: invalid JSON: {exc.msg}") from None
    return out


def _infer_cop_base(records: list[Record]) -> int:
    """MedMCQA's ``cop`` is 1..4 in the original release and 0..3 in the HF copy: a 0 anywhere means 0-based."""
    for rec in records:
        value = rec.data.get("cop") if isinstance(rec.data, dict) else None
        try:
            if value is not None and int(value) == 0:
                return 0
        except (TypeError, ValueError):
            continue
    return 1


def read_records(path: str | Path) -> list[Record]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"benchmark file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise QuestionFormatError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    return _csv_records(path, text) if path.suffix.lower() == ".csv" else _json_records(path, text)


def load_questions(path: str | Path, *, limit: int | None = None, fmt: str | None = None) -> list[MCQuestion]:
    """Read one benchmark file (JSONL, JSON array, JSON keyed by id, grouped JSON, CSV with or without header).

    The format is detected from the first record unless ``fmt`` names one of :data:`FORMAT_NAMES`. Ids default
    to ``<file stem>-<line>`` (CSV: the data row, 1 = the first row after a header) so predictions can always be
    matched back to their line.
    """
    records = read_records(path)
    if not records:
        raise QuestionFormatError(f"{path}: no questions")
    name = fmt or detect_format(records[0].data, records[0].where)
    parser = next((p for n, _, p in FORMATS if n == name), None)
    if parser is None:
        raise ValueError(f"unknown benchmark format {name!r} (known: {', '.join(FORMAT_NAMES)})")
    ctx = {"cop_base": _infer_cop_base(records)}
    questions = []
    for rec in records[:limit] if limit else records:
        if not isinstance(rec.data, dict):
            raise QuestionFormatError(f"{rec.where}: expected a JSON object, got {type(rec.data).__name__}")
        questions.append(parser(rec, ctx))
    return questions


def file_format(path: str | Path) -> str:
    """The detected format name of a benchmark file (for the summary)."""
    records = read_records(path)
    if not records:
        raise QuestionFormatError(f"{path}: no questions")
    return detect_format(records[0].data, records[0].where)
