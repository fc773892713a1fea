"""Work run in a spawned process (module level, so the spawn harness can import it)."""
from __future__ import annotations


def reference_loss(ckpt_dir: str, prefix: str, seq: int, rows: int, seed: int = 5) -> float:
    """Save a fresh tiny model as a weights-only dist_checkpointing directory and return the token-weighted mean
    loss of the trainer's first global batch (rows 0..rows-1), computed in one plain forward at TP1."""
    import torch
    from megatron.core import dist_checkpointing

    from megatron_huatuo.data.indexed import IndexedDocumentsDataset
    from megatron_huatuo.data.sample import attention_mask_from_segments
    from megatron_huatuo.models.provider import build_model, transformer_config
    from megatron_huatuo.runtime import initialize

    initialize(seed=seed)
    model = build_model("tiny-baichuan2-7b", transformer_config("tiny-baichuan2-7b"), masked_segments=True)
    dist_checkpointing.save({"model": model.sharded_state_dict()}, ckpt_dir)
    ds = IndexedDocumentsDataset([prefix], seq)
    batch = {k: torch.stack([ds[i][k] for i in range(rows)]) for k in ds[0]}
    with torch.no_grad():
        per_token = model(batch["tokens"], batch["position_ids"], attention_mask_from_segments(batch["segment_ids"]),
                          labels=batch["labels"]).float()
    return ((per_token * batch["loss_mask"]).sum() / batch["loss_mask"].sum()).item()
