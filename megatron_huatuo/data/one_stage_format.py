"""On-disk layout of a one-stage dataset directory (written by ``python -m preprocessing.dataset build``).

- ``manifest.json``: ``format_version``, ``tokenizer``, ``template``, ``seq_length``, ``seed``, ``eos_id``,
  ``vocab_size``, ``inputs`` (files and row counts), ``sources`` (one per kind: ``name``, ``kind``, ``prefix``,
  ``documents``, ``tokens``, ``trained_tokens``, ``priority``, ``epochs``), ``truncated_at_build`` = 0.
  Version 2 adds the compatibility record (:mod:`megatron_huatuo.data.compatibility`): ``tokenizer_sha256`` and
  ``max_token_id`` (also per source); version 1 directories still load (the trainer then scans the ids).
- per source ``<prefix>.bin/.idx``: megatron-core indexed dataset, one document (one sequence) per formatted
  conversation; ``<prefix>_loss_mask.bin/.idx``: a uint8 indexed dataset with exactly the same sequence lengths
  and document structure, 1 where the token is a trained target.
"""
from __future__ import annotations

import json
from pathlib import Path

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
MANIFEST = "manifest.json"
MASK_SUFFIX = "_loss_mask"


def read_manifest(path: str | Path) -> dict:
    path = Path(path)
    mf = path / MANIFEST
    if not mf.exists():
        raise FileNotFoundError(f"{mf}: not a one-stage dataset directory (no manifest.json)")
    manifest = json.loads(mf.read_text(encoding="utf-8"))
    if manifest.get("format_version") not in READABLE_VERSIONS:
        raise ValueError(f"{mf}: format_version {manifest.get('format_version')!r}, expected one of "
                         f"{list(READABLE_VERSIONS)}")
    for i, src in enumerate(manifest.get("sources", [])):
        for key in ("name", "prefix", "documents", "priority", "epochs"):
            if key not in src:
                raise ValueError(f"{mf}: sources[{i}] lacks field {key!r}")
    return manifest
