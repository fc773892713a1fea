"""megatron-core ``.bin``/``.idx`` files checked before they are read: present, well-formed, not truncated.

Why: megatron-core's ``IndexedDataset`` memory-maps both files without comparing their sizes with what the index
promises. A truncated ``.idx`` ends in a numpy "buffer is smaller than requested size" naming no file; a truncated
``.bin`` opens fine and fails (or serves short rows) only when training reaches its end. :func:`check_prefix` reads
the 34-byte header and two numbers at the end of the index (a few syscalls, whatever the dataset's size) and raises
:class:`TruncatedDataset` naming the file, the size it must have and the size it has. Every place that opens
indexed datasets calls it: the trainer's datasets (``indexed``, ``one_stage``, hence ``inspect``) and the
trainer's compatibility check.

:func:`max_token_id` scans the tokens for the largest id (numpy over the memory-mapped ``.bin``, in chunks, or a
part of it, so that ranks can share the scan); it serves datasets that carry no compatibility manifest.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, Tuple

import numpy as np

INDEX_HEADER = b"MMIDIDX\x00\x00"
INDEX_PREAMBLE = 34  # header 9 + version 8 + dtype code 1 + sequence count 8 + document count 8
# megatron.core.datasets.indexed_dataset.DType codes.
DTYPE_CODES = {np.uint8: 1, np.int8: 2, np.int16: 3, np.int32: 4, np.int64: 5, np.float64: 6, np.float32: 7,
               np.uint16: 8}
CODE_DTYPES = {code: dtype for dtype, code in DTYPE_CODES.items()}
SCAN_CHUNK = 1 << 24  # tokens per numpy max (32 MiB of uint16)


class DatasetError(ValueError):
    """A dataset that cannot be used as it is; the message names the file(s)."""


class MissingDatasetFile(DatasetError, FileNotFoundError):
    """A ``.bin`` or ``.idx`` that is not there."""


class TruncatedDataset(DatasetError):
    """A ``.bin`` or ``.idx`` shorter (or longer) than its index says: a copy or a write that did not finish."""


@dataclass(frozen=True)
class IndexedFiles:
    """What :func:`check_prefix` learnt about one prefix."""

    prefix: str
    dtype: type
    sequences: int
    documents: int
    tokens: int  # = .bin bytes / dtype size

    @property
    def bin_path(self) -> str:
        return self.prefix + ".bin"


def _size_message(path: str, expected: int, actual: int, why: str) -> str:
    state = "truncated" if actual < expected else "longer than its index says"
    return (f"{path}: expected {expected} bytes ({why}), found {actual}: {state} (a copy or write that did not "
            f"finish?); rebuild or copy it again")


def check_prefix(prefix: str | Path, what: str = "dataset") -> IndexedFiles:
    """Check ``prefix.idx`` and ``prefix.bin`` against each other; raises naming the file (``what`` names the
    setting the prefix came from, e.g. ``data.prefixes``)."""
    prefix = str(prefix)
    idx, bin_ = prefix + ".idx", prefix + ".bin"
    for path in (bin_, idx):
        if not os.path.isfile(path):
            raise MissingDatasetFile(f"{what}: {path} does not exist")
    idx_size, bin_size = os.path.getsize(idx), os.path.getsize(bin_)
    with open(idx, "rb") as fh:
        head = fh.read(INDEX_PREAMBLE)
        if len(head) < INDEX_PREAMBLE:
            raise TruncatedDataset(_size_message(idx, INDEX_PREAMBLE, idx_size, "at least the index header"))
        if head[:9] != INDEX_HEADER:
            raise DatasetError(f"{idx}: not a megatron-core index (header {head[:9]!r})")
        version, code, sequences, documents = struct.unpack("<QBQQ", head[9:])
        if version != 1 or code not in CODE_DTYPES:
            raise DatasetError(f"{idx}: unsupported index (version {version}, dtype code {code})")
        expected_idx = INDEX_PREAMBLE + 12 * sequences + 8 * documents
        if idx_size not in (expected_idx, expected_idx + sequences):  # + 1 byte per sequence: multimodal modes
            raise TruncatedDataset(_size_message(
                idx, expected_idx, idx_size, f"{sequences} sequences, {documents} document indices"))
        dtype = CODE_DTYPES[code]
        expected_bin = 0
        if sequences:
            fh.seek(INDEX_PREAMBLE + 4 * (sequences - 1))
            (last_length,) = struct.unpack("<i", fh.read(4))
            fh.seek(INDEX_PREAMBLE + 4 * sequences + 8 * (sequences - 1))
            (last_pointer,) = struct.unpack("<q", fh.read(8))
            expected_bin = last_pointer + last_length * np.dtype(dtype).itemsize
    if bin_size != expected_bin:
        raise TruncatedDataset(_size_message(bin_, expected_bin, bin_size, f"as {idx} says"))
    return IndexedFiles(prefix, dtype, sequences, documents, bin_size // np.dtype(dtype).itemsize)


def max_token_id(files: Sequence[IndexedFiles], part: Tuple[int, int] = (0, 1)) -> int:
    """The largest token id in part ``i`` of ``n`` (equal slices of all the files' tokens together); -1 if none."""
    index, count = part
    total = sum(f.tokens for f in files)
    start, end = total * index // count, total * (index + 1) // count
    best, offset = -1, 0
    for f in files:
        lo, hi = max(start - offset, 0), min(end - offset, f.tokens)
        offset += f.tokens
        if lo >= hi:
            continue
        tokens = np.memmap(f.bin_path, dtype=f.dtype, mode="r", shape=(f.tokens,))
        for a in range(lo, hi, SCAN_CHUNK):
            best = max(best, int(tokens[a:min(a + SCAN_CHUNK, hi)].max()))
        del tokens
    return best
