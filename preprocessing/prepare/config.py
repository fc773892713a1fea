"""The typed inputs of ``prepare``: the per-source description and the filter/dedup settings.

Why two dataclasses: ``Source`` says what a file *is* (its kind and language decide which filters and shingles apply),
``PrepareConfig`` says what the job *does*; only the latter changes the output for the same inputs, and it is
recorded in every shard report so that ``merge`` can refuse shards produced with different settings.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Optional

import yaml

KINDS = ("web", "literature", "encyclopedia", "book", "sft")
LANGS = ("zh", "en", "auto")  # "auto": each document's language is detected from its script (CJK vs Latin)
FORMATS = ("jsonl", "json", "txt", "parquet", "hf")


class InputError(ValueError):
    """Bad input; the message names the file and line, row or byte offset."""


@dataclass
class Source:
    name: str
    kind: str
    lang: str
    path: str
    text_field: Optional[str] = None  # records: the field holding the text (default "text")
    id_field: Optional[str] = None  # records: the field holding the document id (default "id", see readers)
    format: Optional[str] = None  # default: from the extension; a directory is a `datasets.save_to_disk` folder
    split: Optional[str] = None  # `save_to_disk` of a DatasetDict: the split to read

    @property
    def id_prefix(self) -> str:
        """Prefix of generated ids (``txt`` blocks, rows without an id): the name with ``-`` for ``.``."""
        return self.name.replace(".", "-")

    def resolved_format(self) -> str:
        if self.format:
            return self.format
        path = Path(self.path)
        if path.is_dir():
            return "hf"
        return {".jsonl": "jsonl", ".json": "json", ".txt": "txt", ".parquet": "parquet"}.get(path.suffix.lower(), "")


def _opt(default, help: str):
    """A setting with its ``--flag`` help (the CLI builds its options from these fields)."""
    return field(default=default, metadata={"help": help})


@dataclass
class PrepareConfig:
    """Filters run in this order; the first that fails names the drop reason (``report.json``, ``rejects.jsonl``).

    A ratio or score of 0 (or a maximum of 1) switches that filter off.
    """

    min_chars: int = _opt(100, "too_short below this many non-space characters after cleaning (CJK count double)")
    min_letter_ratio: float = _opt(0.5, "few_letters below this share of letters + CJK among non-space characters")
    max_dup_line_fraction: float = _opt(0.3, "repeated_lines above this share of lines equal to an earlier line")
    max_top_ngram_fraction: float = _opt(0.2, "top_ngram above this share of unit characters covered by the most "
                                              "covering repeated n-gram")
    top_ngram_words: int = _opt(2, "n of that n-gram for English (words)")
    top_ngram_chars: int = _opt(4, "n of that n-gram for Chinese (characters)")
    max_dup_ngram_fraction: float = _opt(0.3, "repeated_ngrams above this share of unit characters covered by n-grams "
                                              "seen more than once (0.3 over 6-grams keeps real abstracts and doctor "
                                              "answers, which restate their terms)")
    dup_ngram_words: int = _opt(6, "n of those n-grams for English (words)")
    dup_ngram_chars: int = _opt(12, "n of those n-grams for Chinese (characters)")
    min_lang_ratio: float = _opt(0.5, "wrong_language below this share of the source language's script: "
                                      "2*CJK / (2*CJK + Latin letters) for zh, one minus that for en")
    min_medical_score: float = _opt(0.0, "not_medical below this many medical term hits per 1000 units "
                                         "(0 = off)")
    near_dup_threshold: float = _opt(0.85, "near_duplicate at this MinHash-estimated Jaccard similarity of the "
                                           "shingle sets (1 = exact dedup only)")
    shingle_words: int = _opt(3, "near-dup shingles of English documents: word n-grams")
    shingle_chars: int = _opt(5, "near-dup shingles of Chinese documents: character n-grams")
    num_perm: int = _opt(128, "MinHash permutations")
    max_chars: int = _opt(2048, "longer documents are chunked at sentence ends (for the rewrite prompt)")
    seed: int = _opt(1, "MinHash seed")

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, (int, float)) and value < 0:
                raise InputError(f"prepare setting {f.name} must not be negative, got {value}")
        for name in ("top_ngram_words", "top_ngram_chars", "dup_ngram_words", "dup_ngram_chars", "shingle_words",
                     "shingle_chars", "num_perm", "max_chars"):
            if getattr(self, name) < 1:
                raise InputError(f"prepare setting {name} must be at least 1")


def load_sources(path: str | Path) -> list[Source]:
    """Read a YAML/JSON list of sources (or a mapping with ``sources``); relative paths are relative to the file."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise InputError(f"{path}: cannot read the sources file: {exc}") from None
    items = raw.get("sources") if isinstance(raw, dict) else raw
    if not isinstance(items, list):
        raise InputError(f"{path}: expected a list of sources (or a mapping with 'sources')")
    out: list[Source] = []
    for i, item in enumerate(items):
        try:
            src = Source(**item)
        except TypeError as exc:
            raise InputError(f"{path}: source #{i}: {exc}") from None
        if not Path(src.path).is_absolute():
            src.path = str(path.parent / src.path)
        out.append(src)
    check_sources(out, where=str(path))
    return out


def check_sources(sources: list[Source], where: str = "sources") -> None:
    names = set()
    for src in sources:
        label = f"{where}: source {src.name!r}"
        if src.name in names:
            raise InputError(f"{label}: the name is used twice")
        names.add(src.name)
        if src.kind not in KINDS:
            raise InputError(f"{label}: kind must be one of {', '.join(KINDS)}, got {src.kind!r}")
        if src.lang not in LANGS:
            raise InputError(f"{label}: lang must be one of {', '.join(LANGS)}, got {src.lang!r}")
        if not Path(src.path).exists():
            raise InputError(f"{label}: file not found: {src.path}")
        fmt = src.resolved_format()
        if fmt not in FORMATS:
            raise InputError(f"{label}: unknown format for {src.path} (use .jsonl, .json, .txt, .parquet, a "
                             f"save_to_disk folder, or set format: one of {', '.join(FORMATS)})")
