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
from typing import Optional

import numpy as np

from preprocessing.prepare.config import InputError, PrepareConfig
from preprocessing.prepare.text import normalised, units


def exact_key(text: str) -> str:
    """SHA-256 (128 bits, hex) of the normalised text: NFKC, lower case, no punctuation or spaces."""
    return hashlib.sha256(normalised(text).encode("utf-8")).hexdigest()[:32]


def shingles(text: str, lang: str, cfg: PrepareConfig) -> set[str]:
    """Character n-grams (``zh``) or space-joined word n-grams (``en``) of the text's units."""
    us = units(text)
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


def signature(text: str, lang: str, cfg: PrepareConfig) -> str:
    """MinHash of the shingles, as base64 of the little-endian hash values (small enough for a JSON line)."""
    from datasketch import MinHash

    t = _template(cfg.num_perm, cfg.seed)
    mh = MinHash(num_perm=cfg.num_perm, seed=cfg.seed, permutations=t.permutations, **_scheme(t))
    mh.update_batch([s.encode("utf-8") for s in shingles(text, lang, cfg)])
    values = mh.hashvalues.astype(mh.hashvalues.dtype.newbyteorder("<"))
    return base64.b64encode(values.tobytes()).decode("ascii")


class Deduplicator:
    """Keeps the first of each exact or near-duplicate group, fed documents in global order."""

    def __init__(self, cfg: PrepareConfig):
        from datasketch import MinHashLSH

        self.cfg = cfg
        t = _template(cfg.num_perm, cfg.seed)
        self._dtype = t.hashvalues.dtype.newbyteorder("<")
        self._scheme = _scheme(t)
        self.lsh = None  # near_dup_threshold >= 1: exact dedup only
        if cfg.near_dup_threshold < 1:
            try:
                self.lsh = MinHashLSH(threshold=cfg.near_dup_threshold, num_perm=cfg.num_perm)
            except ValueError as exc:  # e.g. too few bands for a threshold this close to 1
                raise InputError(f"near_dup_threshold {cfg.near_dup_threshold} with num_perm {cfg.num_perm}: "
                                 f"{exc}") from None
        self.exact: dict[str, int] = {}

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
        found = self.lsh.query(mh)
        if found:
            return "near_duplicate", min(found)
        self.lsh.insert(ordinal, mh)
        self.exact[key] = ordinal
        return None
