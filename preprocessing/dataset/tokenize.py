"""``tokenize``: plain pre-training documents (JSONL) -> megatron-core ``.bin/.idx``, no loss mask.

The output is byte-identical to Megatron-LM's ``tools/preprocess_data.py --append-eod`` with its defaults
(``--json-keys text``, no ``--split-sentences``) for the same input and tokenizer: one document per line and key,
``{output_prefix}_{key}_document.bin/.idx``; a string value is one sequence, a list value is one sequence per
non-empty element (Megatron-LM's pre-split sentences); the EOD (the tokenizer's EOS) is appended to the last
sequence of every document that has tokens; a document without tokens is kept as an empty document; token dtype
uint16 below 65,500 ids, else int32 (see :mod:`megatron_huatuo.data.tokenizer` for the tokenizer semantics).

Beside each output it writes ``{prefix}.manifest.json``, the compatibility record the trainer checks the model
against (:mod:`megatron_huatuo.data.compatibility`); Megatron-LM tools ignore it.

Differences that do not change the output for input Megatron-LM accepts: blank lines are skipped (Megatron-LM
stops with a JSON error), and a bad line stops the run with ``file:line: reason``.
"""
from __future__ import annotations

import json
import os
import time

import numpy as np
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

from megatron_huatuo.atomic import single_writer
from megatron_huatuo.data import compatibility
from preprocessing.dataset.formats import FormatError
from preprocessing.dataset.shards import (Range, ShardWriter, StreamShard, TempDir, iter_lines, line_number,
                                          merge_stream, optimal_dtype, plan_ranges, refuse_empty_inputs, run_ordered)


@dataclass
class TokenizeConfig:
    inputs: List[str]
    tokenizer: str
    output_prefix: str
    json_keys: List[str] = field(default_factory=lambda: ["text"])
    append_eod: bool = True
    workers: int = 1
    batch_lines: int = 256
    allow_empty: bool = False  # an input without rows is skipped instead of refused


def output_prefix(cfg: TokenizeConfig, key: str) -> str:
    """Megatron-LM's naming: ``{output_prefix}_{key}_document``."""
    return f"{cfg.output_prefix}_{key}_document"


class _Worker:
    """Worker state: loaded once by the parent before forking; workers inherit it (and grow their own cache)."""

    cfg: Optional[TokenizeConfig] = None
    tokenizer = None
    scratch: Optional[str] = None
    dtype: type = None


def _init(cfg: TokenizeConfig, scratch: str) -> None:
    from megatron_huatuo.data.tokenizer import Tokenizer

    _Worker.cfg, _Worker.scratch = cfg, scratch
    _Worker.tokenizer = Tokenizer(cfg.tokenizer)
    _Worker.dtype = optimal_dtype(_Worker.tokenizer.vocab_size)


def _sentences(r: Range, offset: int, line: bytes, keys: List[str]) -> List[List[str]]:
    try:
        row = json.loads(line)
        if not isinstance(row, dict):
            raise ValueError(f"expected a JSON object, got {type(row).__name__}")
        out = []
        for key in keys:
            if key not in row:
                raise ValueError(f"no key {key!r} (--json-keys)")
            value = row[key]
            sents = value if isinstance(value, list) else [value]
            if not all(isinstance(s, str) for s in sents):
                raise ValueError(f"{key!r} must be a string or a list of strings")
            out.append(sents)
        return out
    except (ValueError, TypeError) as exc:
        raise FormatError(f"{r.path}:{line_number(r.path, offset)}: {exc}") from None


def _encode_range(r: Range) -> tuple:
    cfg, tok = _Worker.cfg, _Worker.tokenizer
    writer = ShardWriter(_Worker.scratch, r.ordinal, lambda _key: _Worker.dtype)
    for key in cfg.json_keys:
        writer.open_stream(key)
    eod = tok.eos_id
    nbytes = 0

    def flush(batch: List[List[List[str]]]) -> None:
        """Tokenise a batch of documents at once and hand each key's documents to the writer in bulk."""
        if not batch:
            return
        # Every sentence of every (document, key), in order; then per key the same arithmetic as Megatron-LM's
        # Encoder.encode: drop empty sentences, append the EOD to the last sentence of a non-empty document.
        flat = [s for doc in batch for sents in doc for s in sents]
        key_of = np.array([k for doc in batch for k, sents in enumerate(doc) for _ in sents], dtype=np.int64)
        doc_of = np.array([d for d, doc in enumerate(batch) for sents in doc for _ in sents], dtype=np.int64)
        ids, lens = tok.encode_flat(flat)
        for k, key in enumerate(cfg.json_keys):
            sel = key_of == k
            k_ids = ids[np.repeat(sel, lens)] if len(cfg.json_keys) > 1 else ids
            k_lens, k_doc = lens[sel], doc_of[sel]
            nonzero = k_lens > 0
            doc_tokens = np.bincount(k_doc, weights=k_lens, minlength=len(batch)).astype(np.int64)
            doc_seqs = np.bincount(k_doc[nonzero], minlength=len(batch)).astype(np.int64)
            seq_lens = k_lens[nonzero].astype(np.int32)
            if cfg.append_eod:
                has = doc_tokens > 0
                ends = np.cumsum(doc_tokens)[has]  # where each non-empty document's tokens end
                k_ids = np.insert(k_ids, ends, eod)
                seq_lens[np.cumsum(doc_seqs)[has] - 1] += 1
            writer.add_documents(key, k_ids, seq_lens, doc_seqs)

    batch: List[List[List[str]]] = []
    for offset, line in iter_lines(r):
        nbytes += len(line)
        if not line.strip():
            continue
        batch.append(_sentences(r, offset, line, cfg.json_keys))
        if len(batch) >= cfg.batch_lines:
            flush(batch)
            batch = []
    flush(batch)
    return writer.close(), nbytes


@single_writer(lambda a: a["cfg"].output_prefix)
def tokenize(cfg: TokenizeConfig) -> dict:
    """Tokenise every input (in order) into one indexed dataset per JSON key; returns counts and timing.

    Every key's ``.bin``/``.idx`` is first merged in a scratch directory beside the output, then renamed into place,
    and its ``<prefix>.manifest.json`` (compatibility record, :mod:`megatron_huatuo.data.compatibility`) is written last,
    so a killed run leaves either the previous files or complete new ones, and never a record of other files.
    """
    if cfg.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {cfg.workers}")
    for p in cfg.inputs:
        if not Path(p).is_file():
            raise FileNotFoundError(f"--input {p}: no such file")
    refuse_empty_inputs(cfg.inputs, cfg.allow_empty)
    t0 = time.perf_counter()
    out = Path(cfg.output_prefix)
    out.parent.mkdir(parents=True, exist_ok=True)
    ranges = plan_ranges(cfg.inputs, cfg.workers)
    with TempDir.beside(out) as scratch:
        _init(cfg, str(scratch))  # before the pool forks: workers inherit the loaded tokenizer
        results = run_ordered(_encode_range, ranges, cfg.workers)
        dtype, tok = _Worker.dtype, _Worker.tokenizer
        report: Dict[str, dict] = {}
        for i, key in enumerate(cfg.json_keys):
            parts: List[StreamShard] = [res[0][key] for res in results]
            staged = scratch / f"merged-{i}"
            docs, tokens = merge_stream(parts, staged, dtype)
            report[key] = {"prefix": output_prefix(cfg, key), "documents": docs, "tokens": tokens,
                           "staged": staged, "max_id": max((p.max_id for p in parts), default=-1)}
        for key, r in report.items():  # every key merged: only renames and small records from here on
            final, staged = r["prefix"], r.pop("staged")
            compatibility.prefix_manifest_path(final).unlink(missing_ok=True)  # a record never outlives its files
            os.replace(f"{staged}.bin", f"{final}.bin")
            os.replace(f"{staged}.idx", f"{final}.idx")
            fits = compatibility.record(cfg.tokenizer, tok.vocab_size, tok.eos_id, r.pop("max_id"))
            compatibility.write_prefix_manifest(final, fits, os.path.getsize(f"{final}.bin"), r["documents"])
    seconds = time.perf_counter() - t0
    nbytes = sum(res[1] for res in results)
    return {"outputs": report, "bytes": nbytes, "seconds": seconds, "workers": cfg.workers,
            "dtype": dtype.__name__, "lines": sum(v["documents"] for v in report.values()) // max(1, len(report))}
