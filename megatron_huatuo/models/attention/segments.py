"""How isolated packed documents reach each backend's core attention, without forking megatron-core.

``GPTModel.forward`` hands ``attention_mask`` and ``packed_seq_params`` unchanged down to every layer's core
attention. The mask is the wrong carrier for anything but a tensor: selective and full recomputation pass it
through ``tensor_parallel.checkpoint``, which saves its arguments with ``save_for_backward`` (tensors only). The
``packed_seq_params`` object is captured by the recomputation closures instead, so it is the carrier here:

- ``local``: the dense boolean [B, 1, S, S] mask (True = masked), as before.
- ``sdpa`` and ``flex``: :class:`SegmentParams`, a ``PackedSeqParams`` in the ordinary ``sbhd`` layout that also
  carries ``segment_ids`` [B, S]. Each backend derives what it needs once per forward and every layer reuses it:
  ``allowed()`` (SDPA's boolean mask, True = may attend) or ``block_mask()`` (FlexAttention's ``BlockMask``: which
  128 x 128 tiles to compute; no [S, S] tensor on CUDA). megatron-core ignores it (not ``thd``) except for the
  RoPE length, ``max(max_seqlen_q, max_seqlen_kv)``, which is the row length.
- ``te``: TE's THD format: the micro-batch's rows are laid end to end as one sequence [1, B*S] with cumulative
  document boundaries ``cu_seqlens`` (RoPE restarts per document); the per-token loss comes back [1, B*S] and is
  reshaped to [B, S]; pipeline messages are [B*S, 1, H] (:func:`schedule_shape`).

Segment semantics everywhere: token i attends to j when j <= i and both have the same segment id (padding, id -1,
forms its own trailing segment; its loss is masked).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Tuple

import torch
from megatron.core.packed_seq_params import PackedSeqParams

from megatron_huatuo.data.sample import attention_mask_from_segments


@dataclass
class SegmentParams(PackedSeqParams):
    """``PackedSeqParams`` (``sbhd``) carrying the rows' segment ids to the sdpa and flex core attentions."""

    segment_ids: Optional[torch.Tensor] = None  # [b, s] int
    _derived: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_segments(cls, segment_ids: torch.Tensor) -> "SegmentParams":
        seq = segment_ids.shape[-1]
        return cls(qkv_format="sbhd", max_seqlen_q=seq, max_seqlen_kv=seq, segment_ids=segment_ids)

    def _memo(self, key, build):
        if key not in self._derived:
            self._derived[key] = build()
        return self._derived[key]

    def masked(self) -> torch.Tensor:
        """[b, 1, s, s] bool, True = masked (megatron-core's convention; the ALiBi bias folds it in)."""
        return self._memo("masked", lambda: attention_mask_from_segments(self.segment_ids))

    def allowed(self) -> torch.Tensor:
        """[b, 1, s, s] bool, True = may attend (SDPA's convention)."""
        return self._memo("allowed", lambda: ~self.masked())

    def block_mask(self):
        """FlexAttention ``BlockMask`` of the rows (causal within each segment), built once per forward."""
        from megatron_huatuo.models.attention.flex import document_block_mask

        return self._memo("block_mask", lambda: document_block_mask(self.segment_ids))


@dataclass
class ModelInputs:
    """What one forward of a GPTModel (chunk) takes for a micro-batch, for a given backend."""

    tokens: torch.Tensor
    position_ids: torch.Tensor
    attention_mask: Optional[torch.Tensor]
    packed_seq_params: Optional[PackedSeqParams]
    labels: Optional[torch.Tensor]

    def __call__(self, model):
        """Run ``model`` on these inputs (logits, or the per-token loss when labels are set)."""
        return model(self.tokens, self.position_ids, self.attention_mask, labels=self.labels,
                     packed_seq_params=self.packed_seq_params)


def thd_params(segment_ids: torch.Tensor) -> PackedSeqParams:
    """TE's THD parameters for rows laid end to end: a document ends where the segment id or the row changes."""
    b, s = segment_ids.shape
    flat = segment_ids.reshape(-1)
    starts = torch.ones_like(flat, dtype=torch.bool)
    starts[1:] = flat[1:] != flat[:-1]
    starts[::s] = True  # every row starts a document
    bounds = torch.nonzero(starts).flatten()
    cu = torch.cat([bounds, bounds.new_tensor([b * s])]).to(torch.int32)
    longest = int((cu[1:] - cu[:-1]).max())
    return PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu, max_seqlen_q=longest,
                           max_seqlen_kv=longest)


def model_inputs(backend: str, tokens: torch.Tensor, position_ids: torch.Tensor,
                 segment_ids: Optional[torch.Tensor], labels: Optional[torch.Tensor] = None, *,
                 isolated: bool) -> ModelInputs:
    """The inputs of ``backend`` for one micro-batch ([B, S] tensors); ``isolated``: documents do not see each
    other (``segment_ids`` required), else each row is one causal sequence."""
    if not isolated:
        return ModelInputs(tokens, position_ids, None, None, labels)
    if segment_ids is None:
        raise ValueError("isolated packing needs segment_ids")
    if backend == "local":
        return ModelInputs(tokens, position_ids, attention_mask_from_segments(segment_ids), None, labels)
    if backend in ("sdpa", "flex"):
        return ModelInputs(tokens, position_ids, None, SegmentParams.from_segments(segment_ids), labels)
    if backend == "te":
        flat = lambda t: None if t is None else t.reshape(1, -1)  # noqa: E731
        return ModelInputs(flat(tokens), flat(position_ids), None, thd_params(segment_ids), flat(labels))
    raise ValueError(f"unknown attention backend {backend!r}")


def schedule_shape(backend: str, isolated: bool, seq_length: int, micro_batch: int) -> Tuple[int, int]:
    """(seq_length, micro_batch_size) for megatron-core's pipeline schedule: THD sends [B*S, 1, H] messages."""
    if backend == "te" and isolated:
        return seq_length * micro_batch, 1
    return seq_length, micro_batch
