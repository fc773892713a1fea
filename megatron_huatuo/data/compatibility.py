"""Dataset/model compatibility: what a tokenised dataset records about how it was made, and the trainer's check.

Why: a dataset tokenised with another tokenizer than the model's trains silently wrong. Token ids at or above the
model's vocabulary index past the embedding: at TP=1 that is a raw ``IndexError`` deep in the forward pass, at TP>1
megatron-core's vocabulary-parallel embedding masks them to zero vectors and the loss even looks *lower*. So:

- ``python -m preprocessing.dataset build`` and ``tokenize`` record a compatibility record (:func:`record`):
  tokenizer path and SHA-256 (:func:`tokenizer_sha256`), the tokenizer's vocabulary size and EOS id, the largest
  token id actually written, the template and the sequence length (``None`` where the command has none). ``build``
  keeps it in the dataset's ``manifest.json``; ``tokenize`` writes ``<prefix>.manifest.json`` beside each
  ``.bin``/``.idx`` (:func:`write_prefix_manifest`, format ``megatron-huatuo indexed``, version 1).
- Before the model is built, the trainer calls :func:`check_dataset_fits` on every rank, at any TP/PP: every file is
  checked for truncation (:mod:`megatron_huatuo.data.indexed_files`) and a dataset whose largest token id is
  >= the model's vocabulary is refused, naming both numbers and the files. Without a record (datasets from other
  tools, or older builds) the ids are scanned once, each rank reading an equal slice of the tokens, and the log
  says so.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from megatron_huatuo.data.indexed_files import DatasetError, IndexedFiles, check_prefix, max_token_id

PREFIX_FORMAT = "megatron-huatuo indexed"
PREFIX_FORMAT_VERSION = 1
PREFIX_MANIFEST_SUFFIX = ".manifest.json"
# Files that define an HF tokenizer (the weights of a model directory are not hashed).
_TOKENIZER_NAMES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                    "merges.txt", "vocab.json", "vocab.txt")
_TOKENIZER_SUFFIXES = (".model", ".tiktoken")
_CHUNK = 1 << 20


class VocabularyMismatch(DatasetError):
    """The dataset holds token ids the model has no embedding row for."""


def tokenizer_sha256(path: str | Path) -> str:
    """SHA-256 of a SentencePiece model file, or of the tokenizer files (names and bytes) of an HF directory."""
    path = Path(path)
    files = [path] if path.is_file() else sorted(
        p for p in path.iterdir() if p.is_file() and (p.name in _TOKENIZER_NAMES or p.suffix in _TOKENIZER_SUFFIXES))
    digest = hashlib.sha256()
    for f in files:
        digest.update(f"{f.name}\n".encode())
        with open(f, "rb") as fh:
            while chunk := fh.read(_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()


def record(tokenizer_path: str | Path, vocab_size: int, eos_id: int, max_id: int, template: Optional[str] = None,
           seq_length: Optional[int] = None) -> dict:
    """The compatibility fields a dataset records (see the module docstring)."""
    return {"tokenizer": str(tokenizer_path), "tokenizer_sha256": tokenizer_sha256(tokenizer_path),
            "vocab_size": int(vocab_size), "eos_id": int(eos_id), "max_token_id": int(max_id),
            "template": template, "seq_length": seq_length}


def prefix_manifest_path(prefix: str | Path) -> Path:
    return Path(str(prefix) + PREFIX_MANIFEST_SUFFIX)


def write_prefix_manifest(prefix: str | Path, fields: dict, bin_bytes: int, documents: int) -> Path:
    """Write ``<prefix>.manifest.json`` (after the ``.bin``/``.idx`` are in place: its presence vouches for them)."""
    path = prefix_manifest_path(prefix)
    data = {"format": PREFIX_FORMAT, "format_version": PREFIX_FORMAT_VERSION, **fields, "bin_bytes": int(bin_bytes),
            "documents": int(documents)}
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def read_prefix_manifest(files: IndexedFiles) -> Optional[dict]:
    """The record beside ``files.prefix``, or None when there is none or it describes other files (stale)."""
    path = prefix_manifest_path(files.prefix)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{path}: unreadable compatibility manifest ({exc})") from None
    if data.get("format") != PREFIX_FORMAT or data.get("format_version") != PREFIX_FORMAT_VERSION:
        raise DatasetError(f"{path}: format {data.get('format')!r} version {data.get('format_version')!r}, expected "
                           f"{PREFIX_FORMAT!r} version {PREFIX_FORMAT_VERSION}")
    if data.get("bin_bytes") != os.path.getsize(files.bin_path) or data.get("documents") != files.documents:
        return None  # the files were replaced after the record was written: scan instead of trusting it
    return data


def _token_files(data, what: str) -> List[Tuple[IndexedFiles, Optional[int], str]]:
    """[(token files, recorded largest id or None, where it is recorded)]; every file (masks too) is checked for
    truncation on the way."""
    if data.type == "indexed":
        out = []
        for prefix in data.prefixes:
            files = check_prefix(prefix, what)
            rec = read_prefix_manifest(files)
            out.append((files, None if rec is None else rec.get("max_token_id"), str(prefix_manifest_path(prefix))))
        return out
    if data.type == "one_stage":
        from megatron_huatuo.data.one_stage_format import MANIFEST, MASK_SUFFIX, read_manifest

        try:
            manifest = read_manifest(data.path)
        except (OSError, ValueError) as exc:  # no manifest.json, unknown version, missing fields: one line
            raise DatasetError(f"data.path: {exc}") from None
        recorded = manifest.get("max_token_id")
        where = str(Path(data.path) / MANIFEST)
        tokens = []
        for src in manifest["sources"]:
            prefix = str(Path(data.path) / src["prefix"])
            check_prefix(prefix + MASK_SUFFIX, what)
            tokens.append((check_prefix(prefix, what), recorded, where))
        return tokens
    return []


def _all_reduce_max(value: int) -> int:
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return value
    from megatron_huatuo.runtime import device

    t = torch.tensor([value], dtype=torch.int64, device=device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def _rank_world() -> Tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def check_dataset_fits(data, vocab_size: int, vocab_from: str, log: Optional[Callable[[str], None]] = None,
                       reduce_max: Callable[[int], int] = _all_reduce_max,
                       part: Optional[Tuple[int, int]] = None, what: Optional[str] = None) -> Dict[str, object]:
    """Refuse (:class:`VocabularyMismatch`) a dataset whose largest token id is >= ``vocab_size``.

    ``data`` is the recipe's ``DataConfig``; ``vocab_from`` says where the vocabulary came from (``model.vocab_size``
    or the arch), for the message; ``what`` names the recipe field in messages (default: ``data.path`` or
    ``data.prefixes`` by type). Call it on every rank (the scan of datasets without a record is split over the
    ranks, ``part`` = (rank, world), and combined by ``reduce_max``). Returns what was found (for the log and tests).
    """
    what = what or ("data.path" if data.type == "one_stage" else "data.prefixes")
    token_files = _token_files(data, what)
    if not token_files:
        return {}
    known = [(rec, where, f) for f, rec, where in token_files if rec is not None]
    unknown = [f for f, rec, _ in token_files if rec is None]
    found = max((rec for rec, _, _ in known), default=-1)
    how = "recorded in " + ", ".join(sorted({where for _, where, _ in known})) if known else ""
    if unknown:
        part = part or _rank_world()
        start = time.perf_counter()
        scanned = reduce_max(max_token_id(unknown, part))
        seconds = time.perf_counter() - start
        tokens = sum(f.tokens for f in unknown)
        note = (f"no compatibility manifest for {', '.join(f.prefix for f in unknown)}: scanned {tokens} tokens for "
                f"the largest id ({seconds:.1f} s over {part[1]} rank(s))")
        if log:
            log(note)
        found = max(found, scanned)
        how = "; ".join(x for x in (how, note) if x)
    if found >= vocab_size:
        files = ", ".join(sorted({f.bin_path for f, _, _ in token_files}))
        raise VocabularyMismatch(
            f"{what}: the dataset holds token id {found} but the model's vocabulary has {vocab_size} entries "
            f"({vocab_from}); ids >= {vocab_size} have no embedding row (at TP>1 they would train silently as zero "
            f"vectors). Files: {files} ({how}). Tokenize with the model's tokenizer, or set model.vocab_size to "
            f"the tokenizer's vocabulary")
    if log:
        log(f"data check: largest token id {found} < model vocabulary {vocab_size} ({vocab_from})")
    return {"max_token_id": found, "vocab_size": vocab_size, "how": how}
