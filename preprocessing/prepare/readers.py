"""Streaming readers: one source file -> its records in file order, parsed only when the caller wants them.

Why ``want``: a ``--shard i/n`` run must count every record of every source (global ordinals decide ownership) but
should only pay for parsing its own; ``read_source`` yields ``None`` for a record the caller does not want.

Formats (``Source.format``, default from the extension): ``jsonl`` (one object, or string, per line), ``json`` (an
array of objects or strings, streamed item by item), ``txt`` (one document per blank-line
block), ``parquet`` (``pyarrow``, read in batches of the two needed columns), ``hf`` (a ``datasets``
``save_to_disk`` folder, read in batches; ``split`` picks a DatasetDict's split).

Records take their text from ``text_field`` (default ``text``) and their id from ``id_field``; without an
``id_field`` the ``id`` field is used when the record has one, else ``<name with - for .>-<index:03d>`` (as
``txt`` blocks always are). Text files are UTF-8, or GB18030 (covers GBK/GB2312) when they are not valid UTF-8;
the encoding is settled by a fast decoding pass before any record is read, so a file that is neither is an error
naming its first bad byte offset, not a failure halfway through a job.
"""
from __future__ import annotations

import codecs
import json
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional

from preprocessing.prepare.config import InputError, Source

Record = Optional[tuple[str, str]]  # (id, text), or None for a record the caller skipped
_BLOCK = 1 << 20


def _first_bad_offset(path: Path, encoding: str) -> Optional[int]:
    """Byte offset of the first byte ``encoding`` cannot decode, or None when the whole file decodes."""
    decoder = codecs.getincrementaldecoder(encoding)()
    offset = 0
    with open(path, "rb") as fh:
        while True:
            block = fh.read(_BLOCK)
            pending = len(decoder.getstate()[0])
            try:
                decoder.decode(block, final=not block)
            except UnicodeDecodeError as exc:
                return offset - pending + exc.start
            if not block:
                return None
            offset += len(block)


def detect_encoding(path: str | Path) -> str:
    """``utf-8-sig`` (UTF-8, BOM dropped) or ``gb18030``; else an InputError with both first bad offsets."""
    path = Path(path)
    utf8_bad = _first_bad_offset(path, "utf-8-sig")
    if utf8_bad is None:
        return "utf-8-sig"
    gb_bad = _first_bad_offset(path, "gb18030")
    if gb_bad is None:
        return "gb18030"
    raise InputError(f"{path}: neither UTF-8 (bad byte at offset {utf8_bad}) nor GB18030 (bad byte at offset "
                     f"{gb_bad})")


def _record(src: Source, where: str, row: object, index: int) -> tuple[str, str]:
    """One parsed row -> (id, text), with errors naming ``where`` (file and line, item or row)."""
    if isinstance(row, str) and src.text_field is None:
        return f"{src.id_prefix}-{index:03d}", row
    if not isinstance(row, dict):
        raise InputError(f"{where}: expected an object (or a string), got {type(row).__name__}")
    text_field = src.text_field or "text"
    if text_field not in row:
        raise InputError(f"{where}: missing field {text_field!r}")
    text = row[text_field]
    if not isinstance(text, str):
        raise InputError(f"{where}: field {text_field!r} is {type(text).__name__}, not text")
    if src.id_field is not None:
        if src.id_field not in row or row[src.id_field] is None:
            raise InputError(f"{where}: missing field {src.id_field!r}")
        return str(row[src.id_field]), text
    if row.get("id") is not None:
        return str(row["id"]), text
    return f"{src.id_prefix}-{index:03d}", text


def _jsonl(src: Source, path: Path, want: Callable[[int], bool]) -> Iterator[Record]:
    index = 0
    with open(path, encoding=detect_encoding(path)) as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            if want(index):
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise InputError(f"{path}:{lineno}: not valid JSON: {exc.msg}") from None
                yield _record(src, f"{path}: line {lineno}", row, index)
            else:
                yield None
            index += 1


def _json_items(path: Path, encoding: str) -> Iterator[tuple[int, object]]:
    """Stream the items of a top-level JSON array: ``(line number, item)``, one item in memory at a time.

    ``raw_decode`` parses one item from a text buffer refilled in blocks; an item cut by the end of the buffer
    fails to parse and is retried with more text, so only a failure at the end of the file is a real error.
    """
    decoder = json.JSONDecoder()
    with open(path, encoding=encoding) as fh:
        buf, pos, line, eof = "", 0, 1, False

        def fill() -> bool:
            nonlocal buf, pos, eof
            more = fh.read(_BLOCK)
            eof = not more
            buf, pos = buf[pos:] + more, 0
            return bool(more)

        def skip_space() -> str:
            nonlocal pos, line
            while True:
                while pos < len(buf) and buf[pos] in " \t\r\n":
                    line += buf[pos] == "\n"
                    pos += 1
                if pos < len(buf) or not fill():
                    return buf[pos] if pos < len(buf) else ""

        def error(msg: str) -> InputError:
            return InputError(f"{path}:{line}: not valid JSON: {msg}")

        if skip_space() != "[":
            raise InputError(f"{path}: expected a JSON array of objects or strings")
        pos += 1
        first = True
        while True:
            ch = skip_space()
            if ch == "]":
                break
            if not first:
                if ch != ",":
                    raise error("expected ',' or ']' between items")
                pos += 1
                skip_space()
            while True:
                try:
                    item, end = decoder.raw_decode(buf, pos)
                except json.JSONDecodeError as exc:
                    if eof or not fill():
                        raise error(exc.msg) from None
                    continue
                if end == len(buf) and not eof and fill():  # a number may continue in the next block
                    continue
                break
            yield line, item
            line += buf.count("\n", pos, end)
            pos, first = end, False


def _json(src: Source, path: Path, want: Callable[[int], bool]) -> Iterator[Record]:
    for i, (line, row) in enumerate(_json_items(path, detect_encoding(path))):
        yield _record(src, f"{path}: item {i} (line {line})", row, i) if want(i) else None


def _txt(src: Source, path: Path, want: Callable[[int], bool]) -> Iterator[Record]:
    index = 0
    block: list[str] = []
    with open(path, encoding=detect_encoding(path)) as fh:
        for line in _with_end(fh):
            if line is not None and line.strip():
                block.append(line)
                continue
            if block:
                text = "".join(block).strip()
                block = []
                yield (f"{src.id_prefix}-{index:03d}", text) if want(index) else None
                index += 1


def _with_end(lines: Iterable[str]) -> Iterator[Optional[str]]:
    yield from lines
    yield None


def _columns(src: Source, path: Path, names: list[str]) -> tuple[str, Optional[str]]:
    text_field = src.text_field or "text"
    if text_field not in names:
        raise InputError(f"{path}: no column {text_field!r} (columns: {', '.join(names)})")
    id_field = src.id_field
    if id_field is not None and id_field not in names:
        raise InputError(f"{path}: no column {id_field!r} (columns: {', '.join(names)})")
    if id_field is None and "id" in names:
        id_field = "id"
    return text_field, id_field


def _batched_rows(src: Source, path: Path, batches: Iterable[tuple[list, Optional[list]]],
                  want: Callable[[int], bool]) -> Iterator[Record]:
    index = 0
    for texts, ids in batches:
        for j, text in enumerate(texts):
            if want(index):
                where = f"{path}: row {index}"
                if not isinstance(text, str):
                    raise InputError(f"{where}: text is {type(text).__name__}, not text")
                if ids is None:
                    doc_id = f"{src.id_prefix}-{index:03d}"
                elif ids[j] is None:
                    raise InputError(f"{where}: the id is missing")
                else:
                    doc_id = str(ids[j])
                yield doc_id, text
            else:
                yield None
            index += 1


def _parquet(src: Source, path: Path, want: Callable[[int], bool]) -> Iterator[Record]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise InputError(f"{path}: not a readable Parquet file: {exc}") from None
    text_field, id_field = _columns(src, path, pf.schema_arrow.names)
    cols = [text_field] + ([id_field] if id_field else [])

    def batches():
        for batch in pf.iter_batches(batch_size=1024, columns=cols):
            yield batch.column(0).to_pylist(), batch.column(1).to_pylist() if id_field else None

    yield from _batched_rows(src, path, batches(), want)


def _hf(src: Source, path: Path, want: Callable[[int], bool]) -> Iterator[Record]:
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError, OSError) as exc:
        raise InputError(f"{path}: not a datasets save_to_disk folder: {exc}") from None
    if isinstance(ds, datasets.DatasetDict):
        if src.split not in ds:
            raise InputError(f"{path}: a DatasetDict; set split to one of {', '.join(ds)} (got {src.split!r})")
        ds = ds[src.split]
    text_field, id_field = _columns(src, path, list(ds.column_names))
    cols = [text_field] + ([id_field] if id_field else [])

    def batches():
        for batch in ds.select_columns(cols).iter(batch_size=1024):
            yield batch[text_field], batch[id_field] if id_field else None

    yield from _batched_rows(src, path, batches(), want)


_READERS = {"jsonl": _jsonl, "json": _json, "txt": _txt, "parquet": _parquet, "hf": _hf}


def read_source(src: Source, want: Optional[Callable[[int], bool]] = None) -> Iterator[Record]:
    """Yield one item per record of ``src`` in file order: ``(id, text)`` when ``want(index)``, else None."""
    path = Path(src.path)
    if not path.exists():
        raise InputError(f"source {src.name!r}: file not found: {path}")
    fmt = src.resolved_format()
    if fmt not in _READERS:
        raise InputError(f"{path}: unknown format {fmt or path.suffix!r} (use jsonl, json, txt, parquet or hf)")
    yield from _READERS[fmt](src, path, want or (lambda i: True))
