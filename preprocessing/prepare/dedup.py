"""Exact and near-duplicate detection: keys computed per document (in the workers), decisions made in global order.

Why split: the per-document work (normalising, shingling, MinHash) is the CPU-heavy part and parallelises; the
decision "is this a duplicate of something kept before it?" depends on every earlier document, so it runs once,
serially, in global document order (``merge``), which makes it independent of sharding and worker count.

Shingles are unit n-grams (``text.units``): character ``shingle_chars``-grams for Chinese documents and word
``shingle_words``-grams for English ones (a word n-gram set is what changes when an English sentence is edited;
character grams of English mostly measure shared vocabulary). Near duplicates: MinHash LSH (datasketch).
"""
from __future__ import annotations

import base64
import functools
import hashlib
import zlib
from typing import Optional

import numpy as np

from preprocessing.prepare.config import InputError, PrepareConfig
from preprocessing.prepare.text import normalised


def exact_key(us: list[str]) -> str:
    """SHA-256 (128 bits, hex) of the normalised text (``text.normalised``) of a document's units."""
    return hashlib.sha256(normalised(us).encode("utf-8")).hexdigest()[:32]


def shingles(us: list[str], lang: str, cfg: PrepareConfig) -> set[str]:
    """Character n-grams (``zh``) or space-joined word n-grams (``en``) of a document's units (``text.units``)."""
    n, sep = (cfg.shingle_chars, "") if lang == "zh" else (cfg.shingle_words, " ")
    if len(us) <= n:
        return {sep.join(us)}
    return {sep.join(gram) for gram in zip(*(us[i:] for i in range(n)))}


@functools.lru_cache(maxsize=4)
def _template(num_perm: int, seed: int):
    """One MinHash per process whose permutations every document reuses (generating them is the slow part)."""
    from datasketch import MinHash

    return MinHash(num_perm=num_perm, seed=seed)


def _scheme(template) -> dict:
    scheme = getattr(template, "scheme", None)  # datasketch >= 2.0 names its permutation scheme
    return {"scheme": scheme} if scheme else {}


def signature(us: list[str], lang: str, cfg: PrepareConfig) -> str:
    """MinHash of the shingles, as base64 of the little-endian hash values (small enough for a JSON line).

    Shingles are hashed with CRC-32 (C speed; datasketch's default SHA-1 wrapper is a Python call per shingle and
    was the largest cost on Chinese text); datasketch mixes every input hash with the MurmurHash3 finalizer before
    its permutations, so a weak input hash is safe there.
    """
    from datasketch import MinHash

    t = _template(cfg.num_perm, cfg.seed)
    mh = MinHash(num_perm=cfg.num_perm, seed=cfg.seed, hashfunc=zlib.crc32, permutations=t.permutations,
                 **_scheme(t))
    mh.update_batch([s.encode("utf-8") for s in shingles(us, lang, cfg)])
    values = mh.hashvalues.astype(mh.hashvalues.dtype.newbyteorder("<"))
    return base64.b64encode(values.tobytes()).decode("ascii")


class Deduplicator:
    """Keeps the first of each exact or near-duplicate group, fed documents in global order.

    Why a verification step: LSH alone is an S-curve around its threshold (datasketch at 0.85 with 128
    permutations flags a pair of true Jaccard 0.925 only 93% of the time). Candidates come from an LSH index at
    ``CANDIDATE_FACTOR`` x the threshold (high recall); a candidate is a near duplicate when the MinHash estimate
    of its Jaccard similarity (share of equal hash values) reaches ``near_dup_threshold``. Costs the kept
    documents' signatures in memory (4 bytes x num_perm each).
    """

    CANDIDATE_FACTOR = 0.8

    def __init__(self, cfg: PrepareConfig):
        from datasketch import MinHashLSH

        self.cfg = cfg
        t = _template(cfg.num_perm, cfg.seed)
        self._dtype = t.hashvalues.dtype.newbyteorder("<")
        self._scheme = _scheme(t)
        self.exact: dict[str, int] = {}
        self.signatures: dict[int, np.ndarray] = {}
        self.lsh = None  # near_dup_threshold >= 1: exact dedup only
        if cfg.near_dup_threshold < 1:
            try:
                self.lsh = MinHashLSH(threshold=self.CANDIDATE_FACTOR * cfg.near_dup_threshold, num_perm=cfg.num_perm)
            except ValueError as exc:
                raise InputError(f"near_dup_threshold {cfg.near_dup_threshold} with num_perm {cfg.num_perm}: "
                                 f"{exc}") from None

    def check(self, ordinal: int, key: str, sig: str) -> Optional[tuple[str, int]]:
        """``(reason, ordinal of the kept document it duplicates)``, or None (then it is kept and indexed)."""
        from datasketch import LeanMinHash

        if key in self.exact:
            return "exact_duplicate", self.exact[key]
        if self.lsh is None:
            self.exact[key] = ordinal
            return None
        values = np.frombuffer(base64.b64decode(sig), dtype=self._dtype)
        if len(values) != self.cfg.num_perm:
            raise ValueError(f"document #{ordinal}: MinHash has {len(values)} values, expected {self.cfg.num_perm}")
        mh = LeanMinHash(seed=self.cfg.seed, hashvalues=values, **self._scheme)
        best = max(((float(np.mean(values == self.signatures[o])), -o) for o in self.lsh.query(mh)), default=None)
        if best is not None and best[0] >= self.cfg.near_dup_threshold:
            return "near_duplicate", -best[1]
        self.lsh.insert(ordinal, mh)
        self.signatures[ordinal] = values
        self.exact[key] = ordinal
        return None
