"""``--shard i/n`` for the offline jobs, and the deterministic merge of shard outputs.

Why round-robin: a shard must be able to decide from a record's ordinal alone, while streaming, whether the record
is its own (no counting pass over a corpus larger than memory). Every record a shard writes carries its global
ordinal(s), so ``merge_jsonl`` can interleave the shard files back into exactly the order an unsharded run writes.
Slurm job arrays map ``SLURM_ARRAY_TASK_ID``/``SLURM_ARRAY_TASK_COUNT`` to ``i/n`` (``slurm/preprocess.sbatch``).
"""
from __future__ import annotations

import heapq
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence, Tuple

from megatron_huatuo.atomic import AtomicFiles

_SHARD = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


class ShardError(ValueError):
    """A bad ``--shard`` value or a missing/corrupt shard output."""


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` (0-based) of ``count``; ``Shard(0, 1)`` is the whole input."""

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ShardError(f"--shard must be i/n with 0 <= i < n, got {self.index}/{self.count}")

    @classmethod
    def parse(cls, text: Optional[str]) -> "Shard":
        """``"3/8"`` -> ``Shard(3, 8)``; ``None`` or ``""`` -> the whole input."""
        if not text:
            return cls()
        m = _SHARD.match(text)
        if not m:
            raise ShardError(f"--shard must look like i/n (e.g. 0/4), got {text!r}")
        return cls(int(m.group(1)), int(m.group(2)))

    @property
    def whole(self) -> bool:
        return self.count == 1

    def owns(self, ordinal: int) -> bool:
        """Whether the record with this global 0-based ordinal belongs to this shard."""
        return ordinal % self.count == self.index

    @property
    def name(self) -> str:
        """File-name part, sortable: ``shard-00003-of-00008``."""
        return f"shard-{self.index:05d}-of-{self.count:05d}"

    def all(self) -> Tuple["Shard", ...]:
        return tuple(Shard(i, self.count) for i in range(self.count))


def shard_path(base: str | Path, shard: Shard) -> Path:
    """``out/pairs.jsonl`` -> ``out/shards/pairs.shard-00003-of-00008.jsonl`` (the base itself when whole)."""
    base = Path(base)
    if shard.whole:
        return base
    return base.parent / "shards" / f"{base.stem}.{shard.name}{base.suffix}"


def writer_target(out: str | Path, shard: Shard) -> Path:
    """What a job writing ``shard`` into ``out`` locks (one writer each): ``out`` itself when whole, else
    ``out/shards/<shard name>``, so the shards of one array run side by side but never twice."""
    return Path(out) if shard.whole else Path(out) / "shards" / shard.name


def merge_targets(out: str | Path, count: int) -> list:
    """What a merge of ``count`` shards locks: ``out`` and every shard's target (no merge while a shard still
    writes; no shard rerun while its output is being merged)."""
    return [Path(out)] + ([writer_target(out, s) for s in Shard(0, count).all()] if count > 1 else [])


def read_records(path: Path) -> Iterator[dict]:
    """The JSON records of a JSONL file, in order (blank lines skipped); a bad line names the file and line."""
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError as exc:
                raise ShardError(f"{path}:{lineno}: not valid JSON ({exc.msg}); rerun that shard") from None


def merge_jsonl(base: str | Path, count: int, key: Callable[[dict], tuple]) -> int:
    """Join the ``count`` shard files of ``base`` into ``base``, ordered by ``key``; returns the record count.

    Each shard file must already be sorted by ``key`` (a shard writes in input order). The result is written to a
    temporary file and renamed, so a killed merge leaves either nothing or the complete file.
    """
    base = Path(base)
    parts = [shard_path(base, s) for s in Shard(0, count).all()]
    missing = [str(p) for p in parts if not p.exists()]
    if missing:
        raise ShardError(f"cannot merge {base.name}: missing shard output(s): {', '.join(missing)}")
    n = 0
    with AtomicFiles(base) as (out,):
        for rec in heapq.merge(*(read_records(p) for p in parts), key=key):
            out.write(json.dumps(rec, ensure_ascii=False) + "\n")
            n += 1
    return n


def merge_counts(reports: Sequence[dict]) -> dict:
    """Sum nested count dictionaries (numbers add, dicts recurse, other values must agree)."""
    total: dict = {}
    for rep in reports:
        for k, v in rep.items():
            if isinstance(v, bool) or not isinstance(v, (int, float, dict)):
                if k in total and total[k] != v:
                    raise ShardError(f"shard reports disagree on {k!r}: {total[k]!r} vs {v!r}")
                total[k] = v
            elif isinstance(v, dict):
                total[k] = merge_counts([total.get(k, {}), v])
            else:
                total[k] = total.get(k, 0) + v
    return total
