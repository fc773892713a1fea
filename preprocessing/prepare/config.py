"""The typed inputs of ``prepare``: the per-source description and the filter/dedup settings.

Why two dataclasses: ``Source`` says what a file *is* (its kind and language decide which filters and shingles apply),
``PrepareConfig`` says what the job *does*; only the latter changes the output for the same inputs, and it is
recorded in every shard report so that ``merge`` can refuse shards produced with different settings.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
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


@dataclass
class PrepareConfig:
    """Filters run in this order; the first that fails names the drop reason (``report.json``, ``rejects.jsonl``).

    A ratio or score of 0 (or a maximum of 1) switches that filter off.
    """

    min_chars: int = 100  # after cleaning; CJK characters count double (denser than Latin letters)
    min_letter_ratio: float = 0.5  # letters + CJK characters / all non-space characters
    max_dup_line_fraction: float = 0.3  # lines equal to an earlier line of the document / all lines (Gopher)
    max_top_ngram_fraction: float = 0.2  # characters covered by the most frequent n-gram / all unit characters
    top_ngram_words: int = 2  # n of that n-gram in English words ...
    top_ngram_chars: int = 4  # ... and in Chinese characters (an n-gram seen once scores 0)
    max_dup_ngram_fraction: float = 0.3  # characters covered by n-grams occurring more than once / all (Gopher
    dup_ngram_words: int = 6  # rule; 0.3 over 6-grams keeps real abstracts and doctor answers, which restate terms)
    dup_ngram_chars: int = 12
    min_lang_ratio: float = 0.5  # share of the source's script: 2*CJK / (2*CJK + Latin letters) for zh, rest for en
    min_medical_score: float = 0.0  # medical term hits per 1000 units (CJK characters, words); 0 = off
    near_dup_threshold: float = 0.85  # estimated Jaccard similarity of the shingle sets (MinHash LSH); 1 = off
    shingle_words: int = 3  # English documents: word n-gram shingles
    shingle_chars: int = 5  # Chinese documents: character n-gram shingles
    num_perm: int = 128
    max_chars: int = 2048  # longer documents are chunked for the rewrite prompt
    seed: int = 1

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
