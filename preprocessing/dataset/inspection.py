"""What ``inspect`` shows of a one-stage dataset: the source mixture over training (table and PNG), the loss-mask
coverage per source, and a packed row decoded with its masked and trained spans marked.

Marks: ``[masked]...[/masked]`` around tokens that are not training targets (prompts, templates) and
``[trained]...[/trained]`` around tokens that are (answers, their EOS); each span is decoded on its own, so the
marks sit exactly on the loss-mask boundaries. Special tokens show as their piece (``</s>``).
"""
from __future__ import annotations

from typing import Callable, Dict, List, Sequence

import numpy as np

MASKED = ("[masked]", "[/masked]")
TRAINED = ("[trained]", "[/trained]")


def coverage(manifest: dict) -> Dict[str, float]:
    """Share of each source's tokens that are training targets (``trained_tokens / tokens``)."""
    return {s["name"]: round(s.get("trained_tokens", 0) / s["tokens"], 4) if s.get("tokens") else 0.0
            for s in manifest["sources"]}


def mark_spans(ids: Sequence[int], trained: Sequence[int], decode: Callable[[List[int]], str]) -> str:
    """``ids`` decoded span by span, each maximal run of equal ``trained`` flags wrapped in its marks."""
    if len(ids) != len(trained):
        raise ValueError(f"{len(ids)} ids but {len(trained)} mask values")
    out: List[str] = []
    start = 0
    for i in range(1, len(ids) + 1):
        if i == len(ids) or bool(trained[i]) != bool(trained[start]):
            open_, close = TRAINED if trained[start] else MASKED
            out.append(open_ + decode([int(t) for t in ids[start:i]]) + close)
            start = i
    return "".join(out)


def decode_row(ds, tokenizer, row: int) -> str:
    """Every sample packed into ``row`` of a :class:`~megatron_huatuo.data.one_stage.OneStageDataset`, marked."""
    blocks = []
    for j, gid in enumerate(ds.row_documents(row)):
        ids, mask = ds.document(gid)
        n = min(len(ids), ds.seq_length)
        cut = f", truncated from {len(ids)}" if n < len(ids) else ""
        blocks.append(f"--- row {row} sample {j}: source {ds.source_of(gid)}, document {gid}, {n} tokens{cut} ---\n"
                      + mark_spans(ids[:n], mask[:n], tokenizer.decode))
    return "\n".join(blocks)


def plot_mixture(ds, path: str, buckets: int = 100) -> None:
    """PNG of each source's share of the samples in every 1/``buckets`` of training (stacked areas)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = ds.mixture(buckets)
    names = [s["name"] for s in ds.sources]
    x = (np.arange(buckets) + 0.5) * 100.0 / buckets
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    ax.stackplot(x, *[[row[n] for row in table] for n in names], labels=names)
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 1)
    ax.set_xlabel("training progress (% of samples)")
    ax.set_ylabel("share of samples")
    ax.set_title(f"source mixture, seed {ds.seed} ({len(ds.order)} samples)")
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
