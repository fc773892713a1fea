"""``prepare``: heterogeneous medical corpora -> one clean, filtered, deduplicated, chunked JSONL.

Sources (a YAML/JSON list, see ``docs/preprocessing.md``) name a file, its kind (web, literature, encyclopedia,
book, ...), language and, for JSON/JSONL, the fields holding the text and the id. Readers by extension:
``.jsonl`` (one object per line), ``.json`` (an array of objects), ``.txt`` (one document per blank-line block;
ids ``<source name with '-' for '.'>-<index:03d>``). Text files are UTF-8, or GB18030 (which covers GBK/GB2312)
when they are not valid UTF-8; a file that is neither is an error naming the byte offset.

Steps, in order, each counted in ``report.json`` with the ids it dropped:
clean (HTML tags and entities, control characters, whitespace) -> filter (too short; too few letters/CJK
characters) -> exact dedup (normalised text hash) -> near dedup (MinHash LSH over character 5-grams, datasketch)
-> chunk (documents longer than ``max_chars`` split at sentence ends, for the rewrite prompt).

Deterministic: documents keep source order; the first of a duplicate group is kept. Outputs are written to
temporary files and renamed, so a killed run leaves no partial output and a rerun writes the same bytes.
"""
from __future__ import annotations

import hashlib
import html
import json
import re
import unicodedata
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator, Optional

import yaml


class InputError(ValueError):
    """Bad input; the message names the file and line (or byte offset)."""


@dataclass
class Source:
    name: str
    kind: str
    lang: str
    path: str
    text_field: Optional[str] = None  # JSON/JSONL: the field holding the text
    id_field: Optional[str] = None  # JSON/JSONL: the field holding the document id


@dataclass
class Document:
    id: str
    source: str
    kind: str
    lang: str
    text: str
    chunk_id: int = 0


@dataclass
class PrepareConfig:
    min_chars: int = 100  # after cleaning; Chinese text counts CJK characters double (denser than Latin letters)
    min_letter_ratio: float = 0.5  # letters + CJK characters / all non-space characters
    near_dup_threshold: float = 0.85  # estimated Jaccard similarity of character 5-gram sets
    num_perm: int = 128
    max_chars: int = 2048  # longer documents are chunked for the rewrite prompt
    seed: int = 1


@dataclass
class Report:
    read: dict = field(default_factory=dict)
    dropped: dict = field(default_factory=lambda: {"too_short": [], "few_letters": [], "exact_duplicate": [],
                                                   "near_duplicate": []})
    kept_documents: int = 0
    chunks: int = 0


def load_sources(path: str | Path) -> list[Source]:
    path = Path(path)
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    items = raw.get("sources") if isinstance(raw, dict) else raw
    if not isinstance(items, list):
        raise InputError(f"{path}: expected a list of sources (or a mapping with 'sources')")
    base = path.parent
    out = []
    for i, item in enumerate(items):
        try:
            src = Source(**item)
        except TypeError as exc:
            raise InputError(f"{path}: source #{i}: {exc}") from None
        if not Path(src.path).is_absolute():
            src.path = str(base / src.path)
        out.append(src)
    return out


def decode(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as utf8_error:
        try:
            return data.decode("gb18030")
        except UnicodeDecodeError as exc:
            raise InputError(f"{path}: neither UTF-8 (bad byte at offset {utf8_error.start}) nor GB18030 "
                             f"(bad byte at offset {exc.start})") from None


def read_source(src: Source) -> Iterator[Document]:
    path = Path(src.path)
    if not path.is_file():
        raise InputError(f"source {src.name!r}: file not found: {path}")
    text = decode(path)
    suffix = path.suffix.lower()
    if suffix == ".txt":
        blocks = [b.strip() for b in re.split(r"\n\s*\n", text) if b.strip()]
        prefix = src.name.replace(".", "-")
        for i, block in enumerate(blocks):
            yield Document(f"{prefix}-{i:03d}", src.name, src.kind, src.lang, block)
        return
    if suffix == ".jsonl":
        rows = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append((f"line {lineno}", json.loads(line)))
            except json.JSONDecodeError as exc:
                raise InputError(f"{path}:{lineno}: not valid JSON: {exc.msg}") from None
    elif suffix == ".json":
        try:
            array = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}:{exc.lineno}: not valid JSON: {exc.msg}") from None
        if not isinstance(array, list):
            raise InputError(f"{path}: expected a JSON array of objects")
        rows = [(f"item {i}", row) for i, row in enumerate(array)]
    else:
        raise InputError(f"{path}: unknown format {suffix!r} (use .jsonl, .json or .txt)")
    text_field, id_field = src.text_field or "text", src.id_field or "id"
    for where, row in rows:
        if not isinstance(row, dict) or text_field not in row:
            raise InputError(f"{path}: {where}: missing field {text_field!r}")
        if id_field not in row:
            raise InputError(f"{path}: {where}: missing field {id_field!r}")
        yield Document(str(row[id_field]), src.name, src.kind, src.lang, str(row[text_field]))


_TAG = re.compile(r"<[^>]{0,200}>")
_SPACES = re.compile(r"[ \t\u3000\xa0]+")


def clean(text: str) -> str:
    text = html.unescape(_TAG.sub(" ", text))
    text = "".join(ch for ch in text if ch in "\n\t" or unicodedata.category(ch)[0] != "C")
    lines = [_SPACES.sub(" ", line).strip() for line in text.splitlines()]
    return "\n".join(line for line in lines if line)


def _is_cjk(ch: str) -> bool:
    return "\u4e00" <= ch <= "\u9fff" or "\u3400" <= ch <= "\u4dbf"


def effective_length(text: str) -> int:
    return sum(2 if _is_cjk(ch) else 1 for ch in text if not ch.isspace())


def letter_ratio(text: str) -> float:
    chars = [ch for ch in text if not ch.isspace()]
    if not chars:
        return 0.0
    return sum(1 for ch in chars if ch.isalpha() or _is_cjk(ch)) / len(chars)


def normalised(text: str) -> str:
    return re.sub(r"\W+", "", unicodedata.normalize("NFKC", text).lower())


def shingles(text: str, n: int = 5) -> set[str]:
    norm = normalised(text)
    return {norm[i:i + n] for i in range(max(1, len(norm) - n + 1))}


def chunk(text: str, max_chars: int) -> list[str]:
    if len(text) <= max_chars:
        return [text]
    sentences = re.split(r"(?<=[。！？!?.;；])\s*", text)
    out, cur = [], ""
    for s in sentences:
        while len(s) > max_chars:  # one very long sentence: hard split
            if cur:
                out.append(cur)
                cur = ""
            out.append(s[:max_chars])
            s = s[max_chars:]
        if len(cur) + len(s) > max_chars and cur:
            out.append(cur)
            cur = ""
        cur = f"{cur} {s}".strip() if cur and not _is_cjk(s[:1] or "a") else cur + s
    if cur:
        out.append(cur)
    return out


def prepare(sources: list[Source], cfg: PrepareConfig) -> tuple[list[Document], Report]:
    from datasketch import MinHash, MinHashLSH

    report = Report()
    kept: list[Document] = []
    seen_hash: dict[str, str] = {}
    lsh = MinHashLSH(threshold=cfg.near_dup_threshold, num_perm=cfg.num_perm)
    for src in sources:
        count = 0
        for doc in read_source(src):
            count += 1
            doc.text = clean(doc.text)
            if effective_length(doc.text) < cfg.min_chars:
                report.dropped["too_short"].append(doc.id)
                continue
            if letter_ratio(doc.text) < cfg.min_letter_ratio:
                report.dropped["few_letters"].append(doc.id)
                continue
            digest = hashlib.sha256(normalised(doc.text).encode()).hexdigest()
            if digest in seen_hash:
                report.dropped["exact_duplicate"].append(doc.id)
                continue
            mh = MinHash(num_perm=cfg.num_perm, seed=cfg.seed)
            for s in sorted(shingles(doc.text)):
                mh.update(s.encode())
            if lsh.query(mh):
                report.dropped["near_duplicate"].append(doc.id)
                continue
            key = f"{doc.source}\x00{doc.id}"
            if key in lsh.keys:
                raise InputError(f"source {src.name!r}: duplicate document id {doc.id!r}")
            lsh.insert(key, mh)
            seen_hash[digest] = doc.id
            kept.append(doc)
        report.read[src.name] = count
    out: list[Document] = []
    for doc in kept:
        for i, piece in enumerate(chunk(doc.text, cfg.max_chars)):
            out.append(Document(doc.id, doc.source, doc.kind, doc.lang, piece, i))
    report.kept_documents, report.chunks = len(kept), len(out)
    return out, report


def write_outputs(out_dir: str | Path, docs: list[Document], report: Report) -> None:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    targets = {
        "documents.jsonl": "".join(json.dumps(asdict(d), ensure_ascii=False) + "\n" for d in docs),
        "report.json": json.dumps(asdict(report), ensure_ascii=False, indent=1, sort_keys=True) + "\n",
    }
    for name, content in targets.items():
        tmp = out_dir / (name + ".tmp")
        tmp.write_text(content, encoding="utf-8")
        tmp.replace(out_dir / name)


def run(sources_file: str, out_dir: str, cfg: PrepareConfig) -> Report:
    docs, report = prepare(load_sources(sources_file), cfg)
    write_outputs(out_dir, docs, report)
    return report
