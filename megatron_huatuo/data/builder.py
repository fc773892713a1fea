"""The trainer's one entry point to data: a Dataset by recipe ``data.type`` and a DP-aware resumable sampler."""
from __future__ import annotations

from typing import Iterator

from torch.utils.data import Dataset, Sampler


def build_dataset(data, seq_length: int, vocab_size: int, seed: int, num_samples: int) -> Dataset:
    """``data`` is the recipe's :class:`~megatron_huatuo.config.recipe.DataConfig`."""
    if data.type == "synthetic":
        from megatron_huatuo.data.synthetic import SyntheticDataset

        return SyntheticDataset(vocab_size, seq_length, num_samples, seed=seed, repeat=data.repeat)
    if data.type == "indexed":
        from megatron_huatuo.data.indexed import IndexedDocumentsDataset

        return IndexedDocumentsDataset(data.prefixes, seq_length)
    if data.type == "one_stage":
        try:
            from megatron_huatuo.data.one_stage import build_one_stage_dataset  # DATA's API, imported lazily
        except ImportError as exc:
            raise ImportError(f"data.type one_stage needs megatron_huatuo.data.one_stage ({exc})") from exc

        return build_one_stage_dataset(data.path, seq_length, seed, num_samples=num_samples, isolate=data.isolate)
    raise ValueError(f"data.type: unknown type {data.type!r}")


class ResumableDistributedSampler(Sampler[int]):
    """Global sample order 0, 1, 2, ... (wrapping around the dataset), starting at ``consumed_samples``.

    Each global batch of ``micro_batch * dp`` consecutive indices per micro-step is split so that DP rank r
    takes the r-th slice of ``micro_batch``: the global batch is the same for any DP size, so resuming with
    the consumed-sample count reproduces the uninterrupted order exactly.
    """

    def __init__(self, dataset_len: int, consumed_samples: int, micro_batch: int, dp_rank: int, dp_size: int):
        if dataset_len < 1:
            raise ValueError("dataset is empty")
        self.n, self.consumed, self.mb, self.rank, self.dp = dataset_len, consumed_samples, micro_batch, dp_rank, dp_size

    def __iter__(self) -> Iterator[int]:
        step = self.mb * self.dp
        start = self.consumed
        while True:
            base = start + self.rank * self.mb
            for i in range(self.mb):
                yield (base + i) % self.n
            start += step
