"""Exact and near-duplicate detection: keys computed per document (in the workers), decisions made in global order.

Why split: the per-document work (normalising, shingling, MinHash) is the CPU-heavy part and parallelises; the
decision "is this a duplicate of something kept before it?" depends on every earlier document, so it runs once,
serially, in global document order (``merge``), which makes it independent of sharding and worker count.

Shingles are unit n-grams (``text.Units``): character ``shingle_chars``-grams for Chinese documents and word
``shingle_words``-grams for English ones (a word n-gram set is what changes when an English sentence is edited;
character grams of English mostly measure shared vocabulary). Near duplicates: MinHash and MinHashLSH (datasketch)
with explicit bands, then a similarity check (``Deduplicator``).
"""
from __future__ import annotations

import base64
import functools
import hashlib
import zlib
from typing import Iterator, Optional

import numpy as np

from preprocessing.prepare.config import PrepareConfig
from preprocessing.prepare.text import Units


SHINGLE_BATCH = 4096  # shingles hashed at once: datasketch holds num_perm x batch 64-bit values while it does


def exact_key(us: Units) -> str:
    """SHA-256 (128 bits, hex) of the document's units joined: NFKC, lower case, no punctuation or spaces."""
    digest = hashlib.sha256()
    for part in us.joined():
        digest.update(part.encode("utf-8"))
    return digest.hexdigest()[:32]


def shingle_batches(us: Units, lang: str, cfg: PrepareConfig) -> Iterator[list[str]]:
    """Character n-grams (``zh``) or space-joined word n-grams (``en``) of the units, ``SHINGLE_BATCH`` at a time.

    Streamed so that a very large document never holds all its shingles at once.
    """
    n, sep = (cfg.shingle_chars, "") if lang == "zh" else (cfg.shingle_words, " ")
    if len(us) <= n:
        yield [sep.join(us.strings())]
        return
    starts = len(us) - n + 1
    for lo in range(0, starts, SHINGLE_BATCH):
        hi = min(lo + SHINGLE_BATCH, starts)
        words = us.strings(lo, hi + n - 1)
        yield [sep.join(gram) for gram in zip(*(words[i:] for i in range(n)))]


def shingles(us: Units, lang: str, cfg: PrepareConfig) -> set[str]:
    """The document's set of shingles (``shingle_batches``)."""
    return {s for batch in shingle_batches(us, lang, cfg) for s in batch}


@functools.lru_cache(maxsize=4)
def _template(num_perm: int, seed: int):
    """One MinHash per process whose permutations every document reuses (generating them is the slow part)."""
    from datasketch import MinHash

    return MinHash(num_perm=num_perm, seed=seed)


def _scheme(template) -> dict:
    scheme = getattr(template, "scheme", None)  # datasketch >= 2.0 names its permutation scheme
    return {"scheme": scheme} if scheme else {}


def signature(us: Units, lang: str, cfg: PrepareConfig) -> str:
    """MinHash of the shingles, as base64 of the little-endian hash values (small enough for a JSON line).

    Shingles are hashed with CRC-32 (C speed; datasketch's default SHA-1 wrapper is a Python call per shingle and
    was the largest cost on Chinese text); datasketch mixes every input hash with the MurmurHash3 finalizer before
    its permutations, so a weak input hash is safe there. Fed in batches: ``update_batch`` builds a num_perm x
    shingles matrix (1 KB per shingle at 128 permutations, gigabytes for one whole large document); a MinHash is a
    minimum, so batches (and repeats across them) give the same values.
    """
    from datasketch import MinHash

    t = _template(cfg.num_perm, cfg.seed)
    mh = MinHash(num_perm=cfg.num_perm, seed=cfg.seed, hashfunc=zlib.crc32, permutations=t.permutations,
                 **_scheme(t))
    for batch in shingle_batches(us, lang, cfg):
        mh.update_batch([s.encode("utf-8") for s in set(batch)])
    values = mh.hashvalues.astype(mh.hashvalues.dtype.newbyteorder("<"))
    return base64.b64encode(values.tobytes()).decode("ascii")


def signature_dtype(cfg: PrepareConfig) -> np.dtype:
    """Little-endian dtype of the MinHash values (datasketch's scheme decides their width)."""
    return _template(cfg.num_perm, cfg.seed).hashvalues.dtype.newbyteorder("<")


def decode_signature(sig: str, cfg: PrepareConfig, where: str) -> np.ndarray:
    """The hash values of a ``signature`` string; a wrong length names ``where`` (a document or a file line)."""
    values = np.frombuffer(base64.b64decode(sig), dtype=signature_dtype(cfg))
    if len(values) != cfg.num_perm:
        raise ValueError(f"{where}: MinHash has {len(values)} values, expected {cfg.num_perm}")
    return values


def similar(count, num_perm: int, threshold: float):
    """Whether ``count`` equal hash values out of ``num_perm`` reach ``threshold``: the float comparison
    ``Deduplicator`` makes (numpy's mean of booleans is count / num_perm, correctly rounded like this division)."""
    return count / num_perm >= threshold


def band_shape(threshold: float, num_perm: int, recall: float = 0.99) -> tuple[int, int]:
    """(bands, rows per band): the most rows per band (fewest false candidates) such that a pair of Jaccard
    similarity ``threshold`` still shares a band with probability >= ``recall``: 1 - (1 - t^r)^b."""
    best = (num_perm, 1)
    for r in range(1, num_perm + 1):
        b = num_perm // r
        if 1 - (1 - threshold ** r) ** b >= recall:
            best = (b, r)
    return best


class Deduplicator:
    """Keeps the first of each exact or near-duplicate group, fed documents in global order.

    Near duplicates: datasketch's ``MinHashLSH`` finds candidates among the kept documents, with its bands set
    explicitly by ``band_shape`` (99% recall at the threshold), and a candidate is a duplicate when the MinHash
    estimate of the Jaccard similarity (share of equal hash values) reaches ``near_dup_threshold``. Why not
    ``MinHashLSH(threshold=...)`` alone: its default bands are an S-curve centred on the threshold (at 0.85 with
    128 permutations it flags a pair of true Jaccard 0.925 only 93% of the time), and its answers are candidates,
    not verified duplicates. Memory: the LSH tables (datasketch's in-memory storage) plus the signatures here, about
    7 KB per kept document; for corpora beyond that, ``preprocessing.prepare.staged`` makes the same decisions as
    Slurm array stages with bounded memory per task.
    """

    def __init__(self, cfg: PrepareConfig):
        from datasketch import MinHashLSH

        self.cfg = cfg
        t = _template(cfg.num_perm, cfg.seed)
        self._dtype = signature_dtype(cfg)
        self._scheme = _scheme(t)
        self.exact: dict[str, int] = {}
        self.near = cfg.near_dup_threshold < 1  # else exact dedup only
        self.lsh = None
        if self.near:
            self.lsh = MinHashLSH(threshold=cfg.near_dup_threshold, num_perm=cfg.num_perm,
                                  params=band_shape(cfg.near_dup_threshold, cfg.num_perm))
        self.signatures = np.empty((1024, cfg.num_perm), dtype=self._dtype)
        self.ordinals: list[int] = []  # row -> ordinal of the kept document

    def check(self, ordinal: int, key: str, sig: str) -> Optional[tuple[str, int]]:
        """``(reason, ordinal of the kept document it duplicates)``, or None (then it is kept and indexed)."""
        from datasketch import LeanMinHash

        if key in self.exact:
            return "exact_duplicate", self.exact[key]
        if not self.near:
            self.exact[key] = ordinal
            return None
        values = decode_signature(sig, self.cfg, f"document #{ordinal}")
        minhash = LeanMinHash(seed=self.cfg.seed, hashvalues=values, **self._scheme)
        candidates = self.lsh.query(minhash)
        if candidates:
            rows = np.fromiter(sorted(candidates), dtype=np.int64)
            similarity = (self.signatures[rows] == values).mean(axis=1)
            best = int(np.argmax(similarity))  # the first (earliest kept) of the most similar
            if similarity[best] >= self.cfg.near_dup_threshold:
                return "near_duplicate", self.ordinals[rows[best]]
        row = len(self.ordinals)
        if row == len(self.signatures):
            self.signatures = np.concatenate([self.signatures, np.empty_like(self.signatures)])
        self.signatures[row] = values
        self.ordinals.append(ordinal)
        self.lsh.insert(row, minhash, check_duplication=False)
        self.exact[key] = ordinal
        return None
