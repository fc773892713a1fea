"""Exactly ``sp.encode(text)`` of a SentencePiece BPE model, several times faster on natural text.

Why it is exact. SentencePiece BPE (``bpe_model.cc``) splits the normalised text into characters (user-defined
symbols matched whole), then repeatedly merges the adjacent pair of symbols whose concatenation is a vocabulary
piece of the highest score. A merge across the boundary between characters ``x`` and ``y`` would make a piece that
holds ``xy`` next to each other; a user-defined symbol matched across it would hold ``xy`` too. So where no piece
of the kinds BPE uses (normal, user-defined, unused) holds the pair ``xy``, nothing ever crosses that boundary,
the two sides are encoded independently (the merge order within each side is unchanged) and the ids of the text
are the ids of the parts. We cut text at every such boundary: into words, CJK words, single digits.

The model must normalise character by character for that to hold: no precompiled charsmap, no whitespace
removal, whitespace escaped to ``▁`` (so a space pairs as ``▁``), not as a suffix; and unknown characters must
become byte pieces (byte fallback), not a merged ``<unk>``. The dummy-prefix space is added to each text by us.
Other models are encoded whole, text by text, with the unmodified model.

Why it is fast. Natural text repeats its segments, so each distinct segment is encoded by sentencepiece once and
then looked up. Everything per character or per segment runs in numpy over a batch of texts joined by a separator
character (a private-use character BPE never merges with anything): code points, the cut test (a lookup in a
bit table of the pairs the vocabulary holds), a polynomial hash of each segment, an open-addressing hash table of
known segments, and a comparison of every hit's code points with the stored segment (hashes may collide; the
comparison makes a hit exact). Only distinct missing segments become Python strings, and they are encoded in one
sentencepiece call per ~``_JOIN_CHARS`` characters, joined by the same separator.
"""
from __future__ import annotations

import itertools
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np

_JOIN_CHARS = 1 << 15  # characters per joined sentencepiece call (its merge queue spans the call: keep it short)
_CACHE_ROWS = 2_000_000  # distinct segments kept before the cache is cleared (~150 MB; output unaffected)
_BATCH_MIN = 128  # sentencepiece's list encode starts a thread pool per call: below this, one call per text
_MERGING = (1, 4, 5)  # piece types in BPE's piece table: NORMAL, USER_DEFINED, UNUSED
_NORMAL = 1
_BASE = np.uint64(0x100000001B3)  # odd: invertible modulo 2**64
_BASE_INV = np.uint64(pow(0x100000001B3, -1, 1 << 64))
_FIB = np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing: spreads hashes over the table's slots
_LEN_MIX = np.uint64(0xC2B2AE3D27D4EB4F)


def sp_encode_list(sp, texts: List[str]) -> List[List[int]]:
    """``[sp.encode(t) for t in texts]``: one list call for many texts (it starts a thread pool per call)."""
    if len(texts) >= _BATCH_MIN:
        return sp.encode(texts, num_threads=1)
    return [sp.encode(t) for t in texts]


def flatten(lists: List[List[int]]) -> Tuple[np.ndarray, np.ndarray]:
    """Lists of ids -> (all ids concatenated as int32, each list's length as int64)."""
    lengths = np.fromiter(map(len, lists), dtype=np.int64, count=len(lists))
    ids = np.fromiter(itertools.chain.from_iterable(lists), dtype="<i4", count=int(lengths.sum()))
    return ids, lengths


def gather(store: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """``concatenate([store[s:s + n] for s, n in zip(starts, lengths)])`` without a Python loop."""
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=store.dtype)
    out_start = np.cumsum(lengths) - lengths
    return store[np.repeat(starts - out_start, lengths) + np.arange(total, dtype=np.int64)]


def exact_by_parts(proto) -> bool:
    """Whether the model normalises character by character and byte-falls-back (see the module docstring)."""
    ns, ts = proto.normalizer_spec, proto.trainer_spec
    return (ts.model_type == 2 and not ns.precompiled_charsmap and not ns.remove_extra_whitespaces
            and ns.escape_whitespaces and not ts.treat_whitespace_as_suffix and ts.byte_fallback)


def _code_points(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)


def separator(pieces: List[str], types: List[int]) -> Optional[str]:
    """A private-use character that BPE never merges with a neighbour, whose ids nothing else produces (or None).

    Either a whole normal piece that occurs in no other piece (it encodes to its own id), or a character that
    occurs in no piece at all (byte fallback encodes it to its UTF-8 byte pieces, which only an unknown character
    yields, and UTF-8 is self-synchronising: that byte sequence is this character). Private-use characters are
    (nearly) absent from real text; a text that holds it is encoded on its own.
    """
    chars, counts = np.unique(_code_points("".join(pieces)), return_counts=True)
    once = set(chars[counts == 1].tolist())
    private = [p for p, t in zip(pieces, types) if t == _NORMAL and len(p) == 1 and 0xE000 <= ord(p) <= 0xF8FF
               and ord(p) in once]
    if private:
        return private[-1]
    present = set(chars.tolist())
    return next((chr(c) for c in range(0xE000, 0xF900) if c not in present), None)


class _PairTable:
    """Which adjacent character pairs some merging piece holds: cut text everywhere else.

    Characters that occur in such a pair get a small index (``lut``, over all code points; 0 = in no pair); a
    boolean matrix over those indices answers the pair test with two array lookups per character.
    """

    def __init__(self, merging: List[str]):
        cp = _code_points("".join(merging)).astype(np.int64)
        lens = np.fromiter(map(len, merging), dtype=np.int64, count=len(merging))
        inside = np.ones(max(len(cp) - 1, 0), dtype=bool)  # pair (i, i + 1) lies inside one piece
        inside[(np.cumsum(lens) - 1)[:-1]] = False
        a, b = cp[:-1][inside], cp[1:][inside]
        chars = np.unique(np.concatenate([a, b]))
        self.k = len(chars) + 1
        self.lut = np.zeros(0x110000, dtype=np.uint16 if self.k < 1 << 16 else np.uint32)
        self.lut[chars] = np.arange(1, self.k)
        self.lut[ord(" ")] = self.lut[ord("\u2581")]  # the normaliser turns a space into U+2581
        self.joint = np.zeros(self.k * self.k, dtype=bool)
        self.joint[self.lut[a].astype(np.int64) * self.k + self.lut[b]] = True

    def cuts(self, cp: np.ndarray) -> np.ndarray:
        """Segment start offsets of the code points ``cp`` (0 first): every boundary no merging piece spans."""
        wide = np.int32 if self.k * self.k < 1 << 31 else np.int64  # k is a few thousand characters in practice
        idx = self.lut[cp].astype(wide)
        joint = self.joint[idx[:-1] * wide(self.k) + idx[1:]]
        starts = np.flatnonzero(~joint)
        starts += 1
        return np.concatenate([np.zeros(1, dtype=np.int64), starts])


class _HashTable:
    """Open-addressing table uint64 hash -> row, vectorised over arrays of hashes (0 marks a free slot)."""

    def __init__(self, bits: int = 16):
        self.bits = bits
        self.keys = np.zeros(1 << bits, dtype=np.uint64)
        self.rows = np.zeros(1 << bits, dtype=np.int32)
        self.used = 0

    def _slots(self, h: np.ndarray) -> np.ndarray:
        return ((h * _FIB) >> np.uint64(64 - self.bits)).astype(np.int64)

    def lookup(self, h: np.ndarray) -> np.ndarray:
        """Row of every hash, -1 where absent."""
        out = np.full(len(h), -1, dtype=np.int64)
        pos, pending, mask = self._slots(h), np.arange(len(h)), (1 << self.bits) - 1
        while len(pending):
            p = pos[pending]
            k = self.keys[p]
            hit = k == h[pending]
            out[pending[hit]] = self.rows[p[hit]]
            go_on = ~hit & (k != 0)
            pending = pending[go_on]
            pos[pending] = (p[go_on] + 1) & mask
        return out

    def insert(self, h: np.ndarray, rows: np.ndarray) -> None:
        """Insert distinct hashes that are not in the table yet."""
        if 2 * (self.used + len(h)) > len(self.keys):
            old = self.keys != 0
            keys, vals = self.keys[old], self.rows[old]
            while 2 * (self.used + len(h)) > (1 << self.bits):
                self.bits += 1
            self.keys = np.zeros(1 << self.bits, dtype=np.uint64)
            self.rows = np.zeros(1 << self.bits, dtype=np.int32)
            self.used = 0
            self._place(keys, vals)
        self._place(h, rows)

    def _place(self, h: np.ndarray, rows: np.ndarray) -> None:
        pos, pending, mask = self._slots(h), np.arange(len(h)), (1 << self.bits) - 1
        while len(pending):
            p = pos[pending]
            free = np.flatnonzero(self.keys[p] == 0)
            slots, first = np.unique(p[free], return_index=True)  # one winner per free slot
            winners = pending[free[first]]
            self.keys[slots], self.rows[slots] = h[winners], rows[winners]
            left = np.ones(len(pending), dtype=bool)
            left[free[first]] = False
            pending = pending[left]
            pos[pending] = (p[left] + 1) & mask
        self.used += len(h)


class _Store:
    """Growable int array with amortised appends."""

    def __init__(self, dtype, size: int = 1 << 16):
        self.a = np.zeros(size, dtype=dtype)
        self.n = 0

    def append(self, values: np.ndarray) -> int:
        """Append ``values``; returns where they start."""
        start, end = self.n, self.n + len(values)
        if end > len(self.a):
            grown = np.empty(max(end, 2 * len(self.a)), dtype=self.a.dtype)
            grown[:start] = self.a[:start]
            self.a = grown
        self.a[start:end] = values
        self.n = end
        return start


class SegmentCache:
    """Exact ``sp.encode`` of a SentencePiece BPE model by cached segments (see the module docstring).

    ``sp`` is the model without its dummy prefix (the cache adds it to each text); ``fast`` says whether the model
    qualifies. Without it :meth:`encode_flat` encodes text by text with the unmodified model.
    """

    def __init__(self, model_file: str):
        import sentencepiece as spm
        from sentencepiece import sentencepiece_model_pb2 as pb

        proto = pb.ModelProto()
        proto.ParseFromString(Path(model_file).read_bytes())
        self.dummy_prefix = bool(proto.normalizer_spec.add_dummy_prefix)
        self.sep = None
        if exact_by_parts(proto):
            pieces = [p.piece for p in proto.pieces]
            types = [p.type for p in proto.pieces]
            self.sep = separator(pieces, types)
        self.fast = self.sep is not None
        if self.fast:
            self.pairs = _PairTable([p for p, t in zip(pieces, types) if t in _MERGING])
            proto.normalizer_spec.add_dummy_prefix = False  # added to each text instead
        self.sp = spm.SentencePieceProcessor(model_proto=proto.SerializeToString())
        self.sep_ids = np.array(self.sp.encode(self.sep), dtype=np.int32) if self.fast else np.zeros(0, np.int32)
        self._pow = np.ones(1, dtype=np.uint64)
        self._ipow = np.ones(1, dtype=np.uint64)
        self.reset()

    def reset(self) -> None:
        """Forget every cached segment (row 0: the empty segment, no ids)."""
        self.table = _HashTable()
        self.key_start, self.key_len = _Store(np.int64), _Store(np.int64)
        self.id_start, self.id_len = _Store(np.int64), _Store(np.int64)
        self.keys = _Store(np.uint32)  # code points of every cached segment
        self.ids = _Store(np.int32)
        for s in (self.key_start, self.key_len, self.id_start, self.id_len):
            s.append(np.zeros(1, dtype=np.int64))

    # -- sentencepiece calls -------------------------------------------------------------------------------

    def encode_joined(self, texts: Sequence[str]) -> Tuple[np.ndarray, np.ndarray]:
        """Exact encodings of ``texts`` (as given: no dummy prefix added), concatenated, and their id counts.

        Texts are joined with the separator into calls of about ``_JOIN_CHARS`` characters: one call for many
        short texts instead of one each, the ids cut apart at the separator's ids.
        """
        out_ids: List[np.ndarray] = []
        out_lens: List[np.ndarray] = []
        sep, encode = self.sep, self.sp.encode
        sizes = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts)) + 1
        ends = np.cumsum(sizes)
        i, n = 0, len(texts)
        while i < n:  # chunks of whole texts of about _JOIN_CHARS characters (at least one text)
            j = max(i + 1, int(np.searchsorted(ends, ends[i] - sizes[i] + _JOIN_CHARS, side="right")))
            chunk = texts[i:j]
            joined = sep.join(chunk) if j - i > 1 else None
            if joined is not None and joined.count(sep) == j - i - 1:
                ids, lens = self._split(np.array(encode(joined), dtype=np.int32), j - i)
            else:  # one text, or a text that holds the separator character itself
                ids, lens = flatten([encode(t) for t in chunk])
            out_ids.append(ids)
            out_lens.append(lens)
            i = j
        if not out_ids:
            return np.zeros(0, dtype=np.int32), np.zeros(0, dtype=np.int64)
        return np.concatenate(out_ids), np.concatenate(out_lens).astype(np.int64)

    def _split(self, ids: np.ndarray, n: int) -> Tuple[np.ndarray, np.ndarray]:
        """The ids of ``n`` texts joined by the separator: without the separator's ids, and each text's count."""
        k = len(self.sep_ids)
        hit = ids[:len(ids) - k + 1] == self.sep_ids[0]
        for m in range(1, k):
            hit &= ids[m:len(ids) - k + 1 + m] == self.sep_ids[m]
        at = np.flatnonzero(hit)
        if len(at) != n - 1:
            raise AssertionError(f"separator found {len(at)} times in {n} joined texts")  # see separator()
        keep = np.ones(len(ids), dtype=bool)
        for m in range(k):
            keep[at + m] = False
        starts = np.concatenate([[0], at + k])
        ends = np.concatenate([at, [len(ids)]])
        return ids[keep], (ends - starts).astype(np.int64)

    # -- the cache -------------------------------------------------------------------------------------------

    def _powers(self, n: int) -> Tuple[np.ndarray, np.ndarray]:
        while len(self._pow) < n:  # BASE**j and BASE**-j for j = 0.., doubled: [0, m) -> [m, 2m) = [0, m) * x**m
            step = np.uint64(int(self._pow[-1]) * int(_BASE) % (1 << 64))  # BASE**m (array products wrap silently)
            istep = np.uint64(int(self._ipow[-1]) * int(_BASE_INV) % (1 << 64))
            self._pow = np.concatenate([self._pow, self._pow * step])
            self._ipow = np.concatenate([self._ipow, self._ipow * istep])
        return self._pow, self._ipow

    def _hashes(self, cp: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
        """Polynomial hash (mod 2**64) of every segment ``cp[s:e]``, never 0 (0 marks a free table slot)."""
        pw, ipw = self._powers(len(cp))
        prefix = np.zeros(len(cp) + 1, dtype=np.uint64)
        np.cumsum(cp.astype(np.uint64) * pw[:len(cp)], out=prefix[1:])
        h = (prefix[ends] - prefix[starts]) * ipw[starts] + (ends - starts).astype(np.uint64) * _LEN_MIX
        h[h == 0] = 1
        return h

    def _verified(self, rows: np.ndarray, cp: np.ndarray, starts: np.ndarray, lens: np.ndarray) -> np.ndarray:
        """Whether each looked-up segment (row >= 0) equals the stored one, code point by code point."""
        ok = rows >= 0
        r = np.where(ok, rows, 0)
        ok &= self.key_len.a[r] == lens
        i = np.flatnonzero(ok)
        if len(i):
            lens_i = lens[i]
            stored = gather(self.keys.a, self.key_start.a[r[i]], lens_i)
            text = gather(cp, starts[i], lens_i)
            bad = np.flatnonzero(stored != text)
            if len(bad):
                seg_of = np.searchsorted(np.cumsum(lens_i), bad, side="right")
                ok[i[np.unique(seg_of)]] = False
        return ok

    def _add_rows(self, segments: List[str], cp: np.ndarray, starts: np.ndarray, lens: np.ndarray) -> np.ndarray:
        """Encode ``segments`` (the strings of ``cp[starts:starts + lens]``) and store them; returns their rows."""
        ids, id_lens = self.encode_joined(segments)
        first = self.key_len.n
        self.key_start.append(self.keys.n + np.cumsum(lens) - lens)
        self.key_len.append(lens)
        self.keys.append(gather(cp, starts, lens))
        self.id_start.append(self.ids.n + np.cumsum(id_lens) - id_lens)
        self.id_len.append(id_lens)
        self.ids.append(ids)
        return np.arange(first, first + len(segments), dtype=np.int64)

    def _encode_cached(self, texts: Sequence[str]) -> Tuple[np.ndarray, np.ndarray]:
        """Texts (dummy prefix added, none holding the separator): ids concatenated and each text's count."""
        if self.key_len.n > _CACHE_ROWS:
            self.reset()
        joined = self.sep.join(texts)
        if not joined:
            return np.zeros(0, dtype=np.int32), np.zeros(len(texts), dtype=np.int64)
        cp = _code_points(joined)
        starts = self.pairs.cuts(cp)
        ends = np.append(starts[1:], len(cp))
        lens = ends - starts
        is_sep = (lens == 1) & (cp[starts] == ord(self.sep))  # the separator is always a segment of its own
        h = self._hashes(cp, starts, ends)
        rows = self.table.lookup(h)
        rows[is_sep] = 0
        ok = self._verified(rows, cp, starts, lens) | is_sep
        miss = np.flatnonzero(~ok)
        if len(miss):
            # distinct missing hashes not in the table: encode once and insert; then look up again (which also
            # catches two different missing segments with one hash: the loser fails verification)
            fresh = miss[rows[miss] < 0]
            _, first = np.unique(h[fresh], return_index=True)
            new = fresh[first]
            if len(new):
                new_rows = self._add_rows([joined[s:e] for s, e in zip(starts[new].tolist(), ends[new].tolist())],
                                          cp, starts[new], lens[new])
                self.table.insert(h[new], new_rows)
                rows[miss] = self.table.lookup(h[miss])
                again = self._verified(rows[miss], cp, starts[miss], lens[miss])
                miss = miss[~again]
            if len(miss):  # hash collisions: stored uncached (their rows are not in the table)
                rows[miss] = self._add_rows(
                    [joined[s:e] for s, e in zip(starts[miss].tolist(), ends[miss].tolist())],
                    cp, starts[miss], lens[miss])
        seg_ids = self.id_len.a[rows]
        ids = gather(self.ids.a, self.id_start.a[rows], seg_ids)
        cum = np.cumsum(seg_ids)
        text_ends = np.append(cum[np.flatnonzero(is_sep)], len(ids))
        return ids, np.diff(text_ends, prepend=0).astype(np.int64)

    def encode_flat(self, texts: Sequence[str]) -> Tuple[np.ndarray, np.ndarray]:
        """All texts' ids concatenated (int32) and each text's id count (int64): ``sp.encode`` of each text."""
        if not self.fast:
            return flatten([list(x) for x in sp_encode_list(self.sp, list(texts))])
        prefix = " " if self.dummy_prefix else ""
        texts = [prefix + t if t else t for t in texts]
        odd = [i for i, t in enumerate(texts) if self.sep in t]
        if not odd:
            return self._encode_cached(texts)
        # texts holding the separator character are encoded on their own, the rest through the cache
        odd_set = set(odd)
        rest = [i for i in range(len(texts)) if i not in odd_set]
        o_ids, o_lens = flatten([self.sp.encode(texts[i]) for i in odd])
        r_ids, r_lens = self._encode_cached([texts[i] for i in rest])
        lens = np.zeros(len(texts), dtype=np.int64)
        starts = np.zeros(len(texts), dtype=np.int64)
        lens[odd], starts[odd] = o_lens, np.cumsum(o_lens) - o_lens
        lens[rest], starts[rest] = r_lens, len(o_ids) + np.cumsum(r_lens) - r_lens
        return gather(np.concatenate([o_ids, r_ids]), starts, lens), lens
