"""Multi-process tokenisation: input byte ranges -> one shard per range -> one ordered merge.

Why byte ranges: a worker seeks straight to its part of the input (no parent process reading and pickling every
line to it, which is what bounds Megatron-LM's ``preprocess_data.py``), and writes its tokens straight to its own
shard ``.bin``; only the per-document lengths come back. Ranges are cut at line starts and merged in input order,
so the output is byte-identical for any ``--workers`` (and equals a single-process run).

The ``.bin``/``.idx`` files are megatron-core's ``MMIDIDX`` indexed-dataset format, written here with numpy
(vectorised pointers) rather than ``IndexedDatasetBuilder`` so that a tokenising process need not import
megatron-core (5 s of start-up per process); ``tests/data/test_tokenize.py`` checks the bytes against
``IndexedDatasetBuilder`` and reads them back with ``IndexedDataset``.
"""
from __future__ import annotations

import multiprocessing
import os
import shutil
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Sequence, Tuple

import numpy as np

from megatron_huatuo.data.indexed_files import DTYPE_CODES, INDEX_HEADER as _HEADER, TruncatedDataset

MIN_RANGE_BYTES = 1 << 20
MAX_RANGE_BYTES = 64 << 20


def optimal_dtype(vocab_size: int) -> type:
    """megatron-core's ``DType.optimal_dtype``: uint16 below 65,500 token ids, else int32."""
    return np.uint16 if vocab_size is not None and vocab_size < 65500 else np.int32


@dataclass(frozen=True)
class Range:
    """Bytes ``[start, end)`` of ``path``, starting at a line start; ``ordinal`` orders the merge."""

    path: str
    start: int
    end: int
    ordinal: int


def plan_ranges(paths: Sequence[str], workers: int) -> List[Range]:
    """Cut every input into line-aligned ranges: about 4 per worker, between 1 and 64 MiB each."""
    sizes = [os.path.getsize(p) for p in paths]
    target = min(MAX_RANGE_BYTES, max(MIN_RANGE_BYTES, sum(sizes) // max(1, 4 * workers) + 1))
    out: List[Range] = []
    for path, size in zip(paths, sizes):
        cuts = [0]
        with open(path, "rb") as fh:
            pos = target
            while pos < size:
                fh.seek(pos)
                fh.readline()  # move to the next line start
                nxt = fh.tell()
                if nxt >= size:
                    break
                if nxt > cuts[-1]:
                    cuts.append(nxt)
                pos = nxt + target
        cuts.append(size)
        out.extend(Range(str(path), a, b, 0) for a, b in zip(cuts, cuts[1:]) if b > a)
    return [Range(r.path, r.start, r.end, i) for i, r in enumerate(out)]


def iter_lines(r: Range) -> Iterator[Tuple[int, bytes]]:
    """(byte offset, line) of every line of the range."""
    with open(r.path, "rb") as fh:
        fh.seek(r.start)
        pos = r.start
        while pos < r.end:
            line = fh.readline()
            if not line:
                break
            yield pos, line
            pos += len(line)


def line_number(path: str, offset: int) -> int:
    """1-based line number of the line starting at byte ``offset`` (computed only to name a bad line)."""
    n, left = 1, offset
    with open(path, "rb") as fh:
        while left > 0:
            chunk = fh.read(min(left, 1 << 24))
            if not chunk:
                break
            n += chunk.count(b"\n")
            left -= len(chunk)
    return n


@dataclass
class StreamShard:
    """One output stream's part: its ``.bin`` bytes on disk, sequence lengths, sequences per document."""

    bin_path: str
    sequence_lengths: np.ndarray  # int32
    doc_sequences: np.ndarray  # int64, sequences per document (0 for an empty document)
    max_id: int = -1  # the largest value written (-1: none), for the dataset's compatibility record


class ShardWriter:
    """Appends documents to one ``.bin`` per stream (e.g. ``text`` or ``web`` + ``web_loss_mask``)."""

    def __init__(self, directory: str | Path, ordinal: int, dtype_of: Callable[[str], type],
                 flush_tokens: int = 1 << 20):
        self.dir = Path(directory)
        self.ordinal, self.dtype_of, self.flush_tokens = ordinal, dtype_of, flush_tokens
        self.dtypes: Dict[str, type] = {}
        self._ids: Dict[str, List[np.ndarray]] = {}
        self._pending: Dict[str, int] = {}
        self._lens: Dict[str, List[np.ndarray]] = {}
        self._docs: Dict[str, List[np.ndarray]] = {}
        self._files: Dict[str, object] = {}
        self._max: Dict[str, int] = {}

    def open_stream(self, stream: str) -> None:
        """Start a stream (also done by the first ``add_document``); a started stream appears in ``close()``."""
        if stream not in self._files:
            self.dtypes[stream] = self.dtype_of(stream)
            self._ids[stream], self._lens[stream], self._docs[stream] = [], [], []
            self._pending[stream] = 0
            self._max[stream] = -1
            self._files[stream] = open(self.bin_path(stream), "wb")

    def bin_path(self, stream: str) -> str:
        return str(self.dir / f"{stream}.{self.ordinal:06d}.bin")

    def add_document(self, stream: str, ids: Sequence[int], sequence_lengths: Sequence[int]) -> None:
        """One document made of ``len(sequence_lengths)`` sequences whose tokens are ``ids`` (concatenated)."""
        self.add_documents(stream, np.asarray(ids), np.asarray(sequence_lengths, dtype=np.int32),
                           np.asarray([len(sequence_lengths)], dtype=np.int64))

    def add_documents(self, stream: str, ids: np.ndarray, sequence_lengths: np.ndarray,
                      doc_sequences: np.ndarray) -> None:
        """Many documents: their tokens concatenated, every sequence's length, every document's sequence count."""
        if stream not in self._files:
            self.open_stream(stream)
        dtype = self.dtypes[stream]
        if len(ids):
            low, high = int(ids.min()), int(ids.max())
            if low < np.iinfo(dtype).min or high > np.iinfo(dtype).max:
                raise ValueError(f"token id out of range for {np.dtype(dtype).name} in stream {stream!r}")
            self._max[stream] = max(self._max[stream], high)
        self._ids[stream].append(ids.astype(dtype, copy=False))
        self._lens[stream].append(np.asarray(sequence_lengths, dtype=np.int32))
        self._docs[stream].append(np.asarray(doc_sequences, dtype=np.int64))
        self._pending[stream] += len(ids)
        if self._pending[stream] >= self.flush_tokens:
            self._flush(stream)

    def _flush(self, stream: str) -> None:
        chunks = self._ids[stream]
        if chunks:
            np.concatenate(chunks).tofile(self._files[stream])
            chunks.clear()
            self._pending[stream] = 0

    def close(self) -> Dict[str, StreamShard]:
        out = {}
        for k, fh in self._files.items():
            self._flush(k)
            fh.close()
            lens, docs = self._lens[k], self._docs[k]
            out[k] = StreamShard(self.bin_path(k), np.concatenate(lens) if lens else np.zeros(0, np.int32),
                                 np.concatenate(docs) if docs else np.zeros(0, np.int64), self._max[k])
        return out


def write_index(idx_path: str | Path, dtype: type, sequence_lengths: np.ndarray, document_indices: np.ndarray) -> None:
    """megatron-core's ``.idx`` (``_IndexWriter``): header, counts, lengths, byte pointers, document indices."""
    lengths = np.asarray(sequence_lengths, dtype=np.int32)
    pointers = np.zeros(len(lengths), dtype=np.int64)
    if len(lengths) > 1:
        np.cumsum(lengths[:-1].astype(np.int64) * np.dtype(dtype).itemsize, out=pointers[1:])
    docs = np.asarray(document_indices, dtype=np.int64)
    with open(idx_path, "wb") as fh:
        fh.write(_HEADER)
        fh.write(struct.pack("<Q", 1))
        fh.write(struct.pack("<B", DTYPE_CODES[dtype]))
        fh.write(struct.pack("<Q", len(lengths)))
        fh.write(struct.pack("<Q", len(docs)))
        fh.write(lengths.tobytes(order="C"))
        fh.write(pointers.tobytes(order="C"))
        fh.write(docs.tobytes(order="C"))


def merge_stream(parts: Sequence[StreamShard], prefix: str | Path, dtype: type) -> Tuple[int, int]:
    """Concatenate the parts (in order) into ``prefix.bin/.idx``; returns (documents, tokens).

    Each part's size is checked against its lengths first: a part left short on disk (a shard's files copied or
    written incompletely) is refused naming it, instead of shifting every later document.
    """
    prefix = str(prefix)
    itemsize = np.dtype(dtype).itemsize
    for p in parts:
        expected, actual = int(p.sequence_lengths.astype(np.int64).sum()) * itemsize, os.path.getsize(p.bin_path)
        if actual != expected:
            raise TruncatedDataset(f"{p.bin_path}: expected {expected} bytes ({len(p.sequence_lengths)} sequences "
                                   f"of {np.dtype(dtype).name}), found {actual}: rerun the step that wrote it")
    with open(prefix + ".bin", "wb") as out:
        for p in parts:
            with open(p.bin_path, "rb") as fh:
                shutil.copyfileobj(fh, out, 16 << 20)
    lengths = np.concatenate([p.sequence_lengths for p in parts]) if parts else np.zeros(0, np.int32)
    per_doc = np.concatenate([p.doc_sequences for p in parts]) if parts else np.zeros(0, np.int64)
    doc_idx = np.concatenate([[0], np.cumsum(per_doc)]).astype(np.int64)
    write_index(prefix + ".idx", dtype, lengths, doc_idx)
    return len(per_doc), int(lengths.astype(np.int64).sum())


def run_ordered(fn: Callable, tasks: Sequence, workers: int) -> List:
    """``[fn(t) for t in tasks]`` on ``workers`` forked processes, results in task order (one: in-process).

    Forked, so the workers inherit what the caller loaded (the tokenizer) instead of loading it again.
    """
    if workers <= 1 or len(tasks) <= 1:
        return [fn(t) for t in tasks]
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(min(workers, len(tasks))) as pool:
        return list(pool.imap(fn, tasks, chunksize=1))


def empty_inputs(paths: Sequence[str | Path]) -> List[str]:
    """The inputs without a single non-blank line (each read only up to its first non-whitespace byte)."""
    empty = []
    for path in paths:
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 16):
                if chunk.strip():
                    break
            else:
                empty.append(str(path))
    return empty


def refuse_empty_inputs(paths: Sequence[str | Path], allow_empty: bool) -> None:
    """An empty input is almost always a wrong path or a failed earlier step: an error unless ``--allow-empty``.
    All inputs empty is always an error (megatron-core cannot even open an empty dataset)."""
    empty = empty_inputs(paths)
    if paths and len(empty) == len(paths):
        raise ValueError("no rows in any input file")
    if empty and not allow_empty:
        more = f" (and {len(empty) - 1} more)" if len(empty) > 1 else ""
        raise ValueError(f"input {empty[0]}{more} is empty (no rows); pass --allow-empty if that is intended")


@dataclass
class TempDir:
    """A scratch directory beside the output, removed on exit (also after an error)."""

    path: Path
    _made: bool = field(default=False, init=False)

    @classmethod
    def beside(cls, out: str | Path) -> "TempDir":
        """``.<name>.shards-<pid>`` next to ``out``; scratch left by killed runs is removed first (the caller holds
        ``out``'s writer lock, so no live run owns it)."""
        out = Path(out)
        for stale in out.parent.glob(f".{out.name}.shards-*"):
            shutil.rmtree(stale, ignore_errors=True)
        return cls(out.parent / f".{out.name}.shards-{os.getpid()}")

    def __enter__(self) -> Path:
        if self.path.exists():
            shutil.rmtree(self.path)
        self.path.mkdir(parents=True)
        self._made = True
        return self.path

    def __exit__(self, *exc) -> None:
        if self._made:
            shutil.rmtree(self.path, ignore_errors=True)
