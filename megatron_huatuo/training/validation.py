"""Validation loss during training, per source of a held-out one-stage dataset (``data.valid_path``).

Why per source: the one-stage mixture moves from rewritten knowledge to dialogues over the run (the priority
schedule), and a single validation number hides which kind of data the model is getting better or worse at.

What is measured, every ``train.eval_interval`` steps and after the last step:

- each source of the validation directory (``manifest.json`` sources, e.g. ``pairs`` and ``sft``) on its own: its
  documents in stored order, packed greedily into ``seq_length`` rows with the training rows' attention semantics
  (isolated segments when the model is built with segment masks, one causal row otherwise), the same rows at
  every evaluation so the numbers are comparable over time;
- at most ``train.eval_iters`` global batches per source (0: all its rows); a last, partial global batch is
  filled with fully masked rows, so every real row counts exactly once;
- the loss is the token-weighted mean over the trained tokens (``loss_mask``), summed over micro-batches and
  data-parallel ranks exactly like the training loss, with megatron-core's ``forward_backward_func`` in
  ``forward_only`` mode and the model in eval mode (no dropout).

Nothing here draws from a random generator and the rows are a pure function of the files, so a resumed run logs
the same validation losses as an uninterrupted one.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

from megatron_huatuo.data.one_stage import open_source
from megatron_huatuo.data.one_stage_format import read_manifest
from megatron_huatuo.data.packing import PackPlan, pack_row, plan_packing


@dataclass
class ValidationSource:
    name: str
    tokens: object  # megatron-core IndexedDataset
    masks: object
    plan: PackPlan  # rows over the documents in stored order

    def row(self, r: int, seq_length: int, pad_id: int, isolate: bool) -> dict:
        docs = [(self.tokens[int(i)].astype(np.int64), self.masks[int(i)]) for i in self.plan.positions(r)]
        return pack_row(docs, seq_length, pad_id, isolate)


@dataclass
class ValidationSet:
    path: Path
    sources: List[ValidationSource]
    seq_length: int
    pad_id: int
    isolate: bool

    def masked_row(self) -> dict:
        """A row that counts for nothing (fills the last global batch of a source)."""
        row = pack_row([], self.seq_length, self.pad_id, self.isolate)
        row["loss_mask"].zero_()
        return row


def load_validation_set(path: str, seq_length: int, isolate: bool) -> ValidationSet:
    directory = Path(path)
    manifest = read_manifest(directory)
    sources = []
    for src in manifest["sources"]:
        tok, mask = open_source(directory, src)
        order = np.arange(len(tok), dtype=np.int64)
        sources.append(ValidationSource(src["name"], tok, mask, plan_packing(tok.sequence_lengths, order, seq_length)))
    if not sources or all(s.plan.num_rows == 0 for s in sources):
        raise ValueError(f"data.valid_path: {directory} has no documents to validate on")
    return ValidationSet(directory, sources, seq_length, int(manifest["eos_id"]), isolate)


def _micro_batches(vset: ValidationSet, src: ValidationSource, batch: int, num_micro: int, micro_batch: int,
                   dp_rank: int, dp: int) -> List[dict]:
    """This DP rank's micro-batches of global batch ``batch`` (the training sampler's row layout)."""
    out = []
    for m in range(num_micro):
        start = batch * num_micro * micro_batch * dp + m * micro_batch * dp + dp_rank * micro_batch
        rows = [src.row(r, vset.seq_length, vset.pad_id, vset.isolate) if r < src.plan.num_rows
                else vset.masked_row() for r in range(start, start + micro_batch)]
        out.append({k: torch.stack([row[k] for row in rows]) for k in rows[0]})
    return out


def evaluate(vset: ValidationSet, models: list, forward_step: Callable, *, eval_iters: int, num_micro: int,
             micro_batch: int, device, schedule_shape: Optional[Tuple[int, int]] = None) -> Dict[str, tuple]:
    """Per source ``(loss, trained tokens)``, on the last pipeline stage (``(nan, 0)`` elsewhere).

    ``schedule_shape``: the (seq_length, micro_batch_size) the pipeline schedule sends, when the attention backend
    changes it (``models/attention/segments.schedule_shape``: THD rows); default the rows' own shape.

    Every rank must call this at the same step: it runs collective pipeline and data-parallel communication.
    """
    from megatron.core import parallel_state as ps

    from megatron_huatuo.training.schedule import run_micro_batches

    dp, dp_rank = ps.get_data_parallel_world_size(), ps.get_data_parallel_rank()
    sched_seq, sched_micro = schedule_shape or (vset.seq_length, micro_batch)
    rows_per_batch = num_micro * micro_batch * dp
    results: Dict[str, tuple] = {}
    for model in models:
        model.eval()
    try:
        for src in vset.sources:
            batches = -(-src.plan.num_rows // rows_per_batch)
            if eval_iters:
                batches = min(batches, eval_iters)
            totals = torch.zeros(2, dtype=torch.float64, device=device)
            for b in range(batches):
                micro = _micro_batches(vset, src, b, num_micro, micro_batch, dp_rank, dp)
                with torch.no_grad():
                    reduced = run_micro_batches(forward_step, micro, models, (sched_seq, sched_micro),
                                                forward_only=True)
                if ps.is_pipeline_last_stage(ignore_virtual=True):
                    totals += torch.stack([r["lm loss"] for r in reduced]).sum(0).to(device, torch.float64)
            if ps.is_pipeline_last_stage(ignore_virtual=True):
                torch.distributed.all_reduce(totals, group=ps.get_data_parallel_group())
                results[src.name] = ((totals[0] / totals[1].clamp(min=1)).item(), int(totals[1].item()))
            else:
                results[src.name] = (float("nan"), 0)
    finally:
        for model in models:
            model.train()
    return results


def overall(results: Dict[str, tuple]) -> float:
    """The token-weighted mean over all sources."""
    tokens = sum(n for _, n in results.values())
    return sum(loss * n for loss, n in results.values()) / tokens if tokens else float("nan")
