"""``build``: pairs + SFT dialogues -> a one-stage dataset directory (see ``megatron_huatuo.data.one_stage_format``).

Rows are grouped into sources by kind (pairs rows' ``kind``; every SFT row is kind ``sft``), kept in input
order, formatted with the chat template and written with megatron-core's ``IndexedDatasetBuilder``. Output is
written into a temporary sibling directory and renamed into place, so a killed run leaves no partial dataset
and a rerun produces byte-identical files.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from megatron.core.datasets.indexed_dataset import DType, IndexedDatasetBuilder

from megatron_huatuo.data.one_stage_format import FORMAT_VERSION, MANIFEST, MASK_SUFFIX
from megatron_huatuo.data.priority import PrioritySettings
from megatron_huatuo.data.templates import Tokenizer, encode_conversation, get_template
from preprocessing.dataset.formats import FormatError, read_rows


@dataclass
class BuildConfig:
    pairs: List[str]
    sft: List[str]
    tokenizer: str
    seq_length: int
    seed: int
    out: str
    template: str = "huatuo"
    priority: PrioritySettings = field(default_factory=PrioritySettings)


def build(cfg: BuildConfig) -> dict:
    """Write the directory; returns the manifest."""
    if cfg.seq_length < 2:
        raise ValueError(f"--seq-length must be >= 2, got {cfg.seq_length}")
    tok = Tokenizer(cfg.tokenizer)
    template = get_template(cfg.template)
    docs: Dict[str, List[tuple]] = {}
    inputs = []
    for kind_of_file, files in (("pairs", cfg.pairs), ("sft", cfg.sft)):
        for path in files:
            rows = 0
            for lineno, row, turns in read_rows(path):
                kind = "sft" if kind_of_file == "sft" else row.get("kind") if isinstance(row, dict) else None
                if not isinstance(kind, str) or not kind:
                    raise FormatError(f"{path}:{lineno}: pairs rows need a non-empty 'kind'")
                docs.setdefault(kind, []).append(encode_conversation(turns, tok, template))
                rows += 1
            inputs.append({"path": str(path), "role": kind_of_file, "rows": rows})
    if not docs:
        raise ValueError("no rows in any input file")

    out = Path(cfg.out)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    dtype = DType.optimal_dtype(tok.vocab_size)
    sources = []
    for kind in sorted(docs):  # sorted: independent of input-file order of kinds
        prefix = kind
        tb = IndexedDatasetBuilder(str(tmp / f"{prefix}.bin"), dtype=dtype)
        mb = IndexedDatasetBuilder(str(tmp / f"{prefix}{MASK_SUFFIX}.bin"), dtype=np.uint8)
        tokens = trained = 0
        for ids, mask in docs[kind]:
            tb.add_item(torch.tensor(ids, dtype=torch.int64))
            tb.end_document()
            mb.add_item(torch.tensor(mask, dtype=torch.uint8))
            mb.end_document()
            tokens += len(ids)
            trained += int(sum(mask))
        tb.finalize(str(tmp / f"{prefix}.idx"))
        mb.finalize(str(tmp / f"{prefix}{MASK_SUFFIX}.idx"))
        sources.append({"name": kind, "kind": kind, "prefix": prefix, "documents": len(docs[kind]),
                        "tokens": tokens, "trained_tokens": trained,
                        "priority": cfg.priority.priority(kind), "epochs": cfg.priority.epoch_count(kind)})
    manifest = {"format_version": FORMAT_VERSION, "tokenizer": str(cfg.tokenizer), "template": template.name,
                "seq_length": cfg.seq_length, "seed": cfg.seed, "eos_id": tok.eos_id, "vocab_size": tok.vocab_size,
                "inputs": inputs, "sources": sources,
                "priority": {"method": "weighted permutation without replacement (exponential keys)",
                             "priorities": cfg.priority.priorities, "epochs": cfg.priority.epochs}}
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False, sort_keys=True) + "\n",
                                encoding="utf-8")
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return manifest
