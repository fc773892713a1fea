"""Text -> token ids, the way Megatron-LM's tokenizer wrappers do it, but faster.

Semantics (what ``tools/preprocess_data.py`` of Megatron-LM / megatron-core 0.16 produces):

- SentencePiece ``.model`` (``--tokenizer-type GPTSentencePieceTokenizer``, ``SentencePieceTokenizer`` or
  ``Llama2Tokenizer``): ``sp.encode(text)``, no BOS/EOS; ``eod`` = the model's EOS id; vocab size = piece count.
- HF tokenizer directory (``--tokenizer-type HuggingFaceTokenizer``): the fast tokenizer's ids without special
  tokens (Megatron-LM's ``text_to_ids``: ``tokenize`` then ``convert_tokens_to_ids``); ``eod`` = the EOS token's
  id; vocab size = ``len(tokenizer)``.

Why faster: SentencePiece BPE never merges across a point where no vocabulary piece spans the two characters
around it. :class:`_SegmentCache` proves such split points from the model itself (characters that only ever
start or end pieces, e.g. spaces, newlines, CJK full stops), encodes each segment once and reuses it for every
repeat. Natural text repeats most words, so most segments are dictionary hits. Without byte fallback or with a
normalisation rule (charsmap, whitespace removal) that could act across a split, it falls back to encoding the
whole text, so the ids are always exactly ``sp.encode(text)`` (fuzz-tested against it).
"""
from __future__ import annotations

import itertools
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

# Characters tried as split points; only those the model proves safe are used.
_CANDIDATES = " \n\t。，、；：？！（）.,;:?!"
_CACHE_LIMIT = 2_000_000  # segments kept before the cache is cleared (bounds memory, output unaffected)
_BATCH_MIN = 128  # SentencePiece's list encode starts a thread pool per call: below this, one call per text
_JOIN_CHARS = 1 << 15  # characters per joined SentencePiece call (its merge queue spans the call: keep it short)
# Texts with more UTF-8 bytes per character than this (CJK-dense) are encoded whole: their segments are clauses
# that rarely repeat, and sentencepiece encodes CJK about 3x faster per byte than Latin text or code.
_WHOLE_BYTES_PER_CHAR = 1.8
_NORMAL = 1  # sentencepiece_model_pb2.ModelProto.SentencePiece.Type.NORMAL


def _sp_encode(sp, texts: List[str]) -> List[List[int]]:
    if len(texts) >= _BATCH_MIN:
        return sp.encode(texts, num_threads=1)
    return [sp.encode(t) for t in texts]


def _raw(c: str) -> str:
    """The raw characters that normalise to ``c``'s form (a space and a literal U+2581 alike)."""
    return " \u2581" if c == " " else c


def _segment_pattern(before: set, after: set, sep: str) -> str:
    """A regex whose ``findall`` cuts text before every run of ``before`` characters and after every run of
    ``after`` characters (a mixed run counts as one run: fewer cuts, always safe).

    With P = before-only, R = both, Q = after-only, N = neither, a pair x|y is a cut when x not in B and y in B, or
    x in A and y not in A. The pairs that are not cuts are P->any, R->R|Q, N->N|Q, Q->Q, so a maximal segment is
    ``P* (R+ | N+)? Q*`` and greedy ``findall`` returns exactly the segments, in order, covering the text.

    ``sep`` (in no class) is a segment of its own: texts joined by it are cut as each text alone. The classes are
    disjoint and every part is optional, so the match never backtracks: possessive quantifiers (Python 3.11+)
    give the same match with less bookkeeping.
    """
    cls = lambda chars: "".join(re.escape(ch) for ch in sorted(chars))  # noqa: E731
    many, opt = ("++", "?+") if sys.version_info >= (3, 11) else ("+", "?")
    star = "*+" if sys.version_info >= (3, 11) else "*"
    p, r, q = before - after, before & after, after - before
    middle = ([f"[{cls(r)}]{many}"] if r else []) + [f"[^{cls(before | after | {sep})}]{many}"]
    return (re.escape(sep) + "|" + (f"[{cls(p)}]{star}" if p else "") + f"(?:{'|'.join(middle)}){opt}"
            + (f"[{cls(q)}]{star}" if q else ""))


def _joined_pieces(pieces: List[str]) -> Tuple[str, str]:
    """All pieces in one string, joined by a character that occurs in none of them (and that character)."""
    for code in range(1, 0x110000):
        j = chr(code)
        joined = j.join(pieces)
        if joined.count(j) == len(pieces) - 1:
            return joined, j
    raise ValueError("no free joiner character")  # unreachable: a vocabulary cannot hold every character


def _unsafe(joined: str, j: str, chars) -> Tuple[set, set]:
    """Of ``chars``, those that some piece holds after / before a different character (cuts there are unsafe)."""
    before, after = set(), set()
    for c in chars:
        cls = re.escape(c) + re.escape(j)
        if re.search(f"[^{cls}]{re.escape(c)}", joined):
            before.add(c)
        if re.search(f"{re.escape(c)}[^{cls}]", joined):
            after.add(c)
    return before, after


def _separator(pieces: List[str], types: List[int], joined: str) -> Optional[str]:
    """A private-use character that BPE never merges with a neighbour, whose ids nothing else produces (or None).

    Either a whole vocabulary piece that occurs in no other piece (it encodes to its own id), or a character that
    occurs in no piece at all (byte fallback encodes it to its UTF-8 byte pieces, which only an unknown character
    yields, and UTF-8 is self-synchronising: that byte sequence is this character). No piece holds it next to
    another character, so BPE never merges across it: strings joined with it encode, in one call, to their own
    ids separated by its ids. Private-use characters are (nearly) absent from real text; a text that holds it is
    encoded on its own.
    """
    counts = Counter(joined)
    private = lambda c: "\ue000" <= c <= "\uf8ff"  # noqa: E731
    isolated = [p for p, t in zip(pieces, types) if t == _NORMAL and len(p) == 1 and private(p) and counts[p] == 1]
    if isolated:
        return isolated[-1]
    return next((chr(c) for c in range(0xE000, 0xF900) if chr(c) not in counts), None)


def _gather(store: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """``concatenate([store[s:s + n] for s, n in zip(starts, lengths)])`` without a Python loop."""
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=store.dtype)
    out_start = np.cumsum(lengths) - lengths
    return store[np.repeat(starts - out_start, lengths) + np.arange(total, dtype=np.int64)]


class _SegmentCache:
    """Exact ``sp.encode`` by memoised segments (see the module docstring for why it is exact)."""

    def __init__(self, model_file: str):
        import sentencepiece as spm
        from sentencepiece import sentencepiece_model_pb2 as pb

        proto = pb.ModelProto()
        proto.ParseFromString(Path(model_file).read_bytes())
        ns = proto.normalizer_spec
        self.dummy_prefix = bool(ns.add_dummy_prefix)
        self.segment: Optional[re.Pattern] = None
        self.before: set = set()  # characters the model proves safe to cut before / after
        self.after: set = set()
        self.sep: Optional[str] = None
        self.sep_ids = np.zeros(0, dtype=np.int32)  # the separator's ids
        exact_local = (not ns.precompiled_charsmap and not ns.remove_extra_whitespaces and ns.escape_whitespaces
                       and not proto.trainer_spec.treat_whitespace_as_suffix and proto.trainer_spec.byte_fallback)
        if exact_local:
            norm = {("\u2581" if c == " " else c): c for c in _CANDIDATES}
            pieces = [x.piece for x in proto.pieces]
            joined, joiner = _joined_pieces(pieces)
            unsafe_before, unsafe_after = _unsafe(joined, joiner, norm)
            before = {r for n, c in norm.items() if n not in unsafe_before for r in _raw(c)}
            after = {r for n, c in norm.items() if n not in unsafe_after for r in _raw(c)}
            self.before, self.after = before, after
            self.sep = _separator(pieces, [x.type for x in proto.pieces], joined)
            if (before or after) and self.sep is not None:
                self.segment = re.compile(_segment_pattern(before, after, self.sep))
            # Segments and joined strings are encoded without the dummy prefix; it is added to each text instead.
            ns.add_dummy_prefix = False
        self.sp = spm.SentencePieceProcessor(model_proto=proto.SerializeToString())
        if self.sep is not None:
            self.sep_ids = np.array(self.sp.encode(self.sep), dtype=np.int32)
        self._reset()

    def _reset(self) -> None:
        # segment -> its row: ids store[starts[k]:starts[k] + lengths[k]]; "" (findall's empty match at the end)
        # and the separator have none
        self.index: Dict[str, int] = {"": 0, self.sep: 1} if self.sep is not None else {"": 0}
        self.store = np.zeros(1 << 16, dtype=np.int32)
        self.starts = np.zeros(1 << 12, dtype=np.int64)
        self.lengths = np.zeros(1 << 12, dtype=np.int64)
        self.used = 0  # ids in store

    def segments(self, text: str) -> List[str]:
        """The cut text (with the dummy-prefix space when the model adds one); joins back to it."""
        return self.segment.findall((" " + text) if self.dummy_prefix and text else text)

    def encode_joined(self, texts: Sequence[str]) -> Tuple[np.ndarray, np.ndarray]:
        """Exact encodings of ``texts`` (as given: no dummy prefix added), concatenated, and their id counts.

        Texts are joined with the separator (see :func:`_separator`) into calls of about ``_JOIN_CHARS``
        characters: one call per many short texts instead of one each, the ids cut apart at the separator ids.
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
            joined = sep.join(chunk) if sep is not None and j - i > 1 else None
            if joined is not None and joined.count(sep) == j - i - 1:
                ids, lens = self._split(np.array(encode(joined), dtype=np.int32), j - i)
                out_ids.append(ids)
                out_lens.append(lens)
            else:  # one text, no separator, or a text that holds the separator character itself
                ids_list = [encode(t) for t in chunk]
                out_lens.append(np.fromiter(map(len, ids_list), dtype=np.int64, count=len(chunk)))
                out_ids.append(np.fromiter(itertools.chain.from_iterable(ids_list), dtype=np.int32,
                                           count=int(out_lens[-1].sum())))
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
            raise AssertionError(f"separator found {len(at)} times in {n} joined texts")  # cannot happen: see _separator
        keep = np.ones(len(ids), dtype=bool)
        for m in range(k):
            keep[at + m] = False
        bounds = np.concatenate([[0], at + k])  # where each text's ids start in ``ids``
        ends = np.concatenate([at, [len(ids)]])
        return ids[keep], (ends - bounds).astype(np.int64)

    def _add(self, missing: List[str]) -> None:
        """Encode ``missing`` segments and append them to the store."""
        ids, lens = self.encode_joined(missing)
        k0, k1 = len(self.index), len(self.index) + len(missing)
        if k1 > len(self.starts):
            grow = max(k1, 2 * len(self.starts))
            self.starts = np.resize(self.starts, grow)
            self.lengths = np.resize(self.lengths, grow)
        if self.used + len(ids) > len(self.store):
            self.store = np.resize(self.store, max(self.used + len(ids), 2 * len(self.store)))
        self.store[self.used:self.used + len(ids)] = ids
        self.starts[k0:k1] = self.used + np.cumsum(lens) - lens
        self.lengths[k0:k1] = lens
        self.used += len(ids)
        self.index.update(zip(missing, range(k0, k1)))

    def _encode_segmented(self, texts: Sequence[str]) -> Tuple[np.ndarray, np.ndarray]:
        """Texts (dummy prefix already added, none holding the separator) cut into segments, each encoded once.

        One ``findall`` over the texts joined by the separator, which the pattern returns as a segment of its own
        (row 1, no ids): the segments of each text are exactly those of the text alone.
        """
        if len(self.index) > _CACHE_LIMIT:
            self._reset()
        index = self.index
        every = self.segment.findall(self.sep.join(texts))
        rows = np.fromiter(map(index.get, every, itertools.repeat(-1)), dtype=np.int64, count=len(every))
        miss = np.flatnonzero(rows < 0).tolist()
        if miss:
            missing = [every[i] for i in miss]
            self._add(list(dict.fromkeys(missing)))
            rows[miss] = np.fromiter(map(index.__getitem__, missing), dtype=np.int64, count=len(missing))
        seg_lens = self.lengths[rows]
        ids = _gather(self.store, self.starts[rows], seg_lens)
        cum = np.cumsum(seg_lens)
        ends = cum[np.flatnonzero(rows == 1)].tolist() + [len(ids)]  # ids up to each separator, then the end
        return ids, np.diff(np.asarray([0] + ends, dtype=np.int64))

    def encode_flat(self, texts: Sequence[str]) -> Tuple[np.ndarray, np.ndarray]:
        """All texts' ids concatenated (int32) and each text's id count (int64)."""
        if self.segment is None and self.sep is None:
            return _flatten([list(x) for x in _sp_encode(self.sp, list(texts))])
        prefix = " " if self.dummy_prefix else ""
        if self.segment is None:
            return self.encode_joined([prefix + t if t else t for t in texts])
        whole, cut, sep = [], [], self.sep  # text positions encoded whole / by segments
        for i, t in enumerate(texts):
            n = len(t)
            if n and (len(t.encode("utf-8", "surrogatepass")) > _WHOLE_BYTES_PER_CHAR * n or sep in t):
                whole.append(i)
            else:
                cut.append(i)
        if not whole:
            return self._encode_segmented([prefix + t if t else t for t in texts])
        if not cut:
            return self.encode_joined([prefix + t for t in texts])
        w_ids, w_lens = self.encode_joined([prefix + texts[i] for i in whole])
        c_ids, c_lens = self._encode_segmented([prefix + texts[i] if texts[i] else "" for i in cut])
        lens = np.zeros(len(texts), dtype=np.int64)
        starts = np.zeros(len(texts), dtype=np.int64)
        lens[whole], starts[whole] = w_lens, np.cumsum(w_lens) - w_lens
        lens[cut], starts[cut] = c_lens, len(w_ids) + np.cumsum(c_lens) - c_lens
        return _gather(np.concatenate([w_ids, c_ids]), starts, lens), lens

    def encode_batch(self, texts: Sequence[str]) -> List[List[int]]:
        return _unflatten(*self.encode_flat(texts))


def _flatten(lists: List[List[int]]) -> Tuple[np.ndarray, np.ndarray]:
    lengths = np.fromiter(map(len, lists), dtype=np.int64, count=len(lists))
    ids = np.fromiter(itertools.chain.from_iterable(lists), dtype="<i4", count=int(lengths.sum()))
    return ids, lengths


def _unflatten(ids: np.ndarray, lengths: np.ndarray) -> List[List[int]]:
    flat = ids.tolist()
    ends = np.cumsum(lengths).tolist()
    return [flat[a:b] for a, b in zip([0] + ends[:-1], ends)]


class Tokenizer:
    """Text -> ids without special tokens, plus the EOS id; from a SentencePiece ``.model`` or an HF directory.

    A path that is a file, or a directory with ``tokenizer.model`` and no ``tokenizer.json``, is SentencePiece;
    any other directory is loaded with ``transformers.AutoTokenizer``.
    """

    def __init__(self, path: str | Path):
        path = Path(path)
        self.path = str(path)
        model_file = path if path.is_file() else path / "tokenizer.model"
        if path.is_file() or (model_file.exists() and not (path / "tokenizer.json").exists()):
            import sentencepiece as spm

            if not model_file.exists():
                raise FileNotFoundError(f"tokenizer: no SentencePiece model at {model_file}")
            self.kind = "sentencepiece"
            self.model_file = str(model_file)
            seg = _SegmentCache(str(model_file))
            self.segment_cache: Optional[_SegmentCache] = seg
            self._batch: Callable[[Sequence[str]], List[List[int]]] = seg.encode_batch
            self._flat: Callable[[Sequence[str]], Tuple[np.ndarray, np.ndarray]] = seg.encode_flat
            self.eos_id = int(seg.sp.eos_id())  # ids and vocabulary do not depend on the dummy-prefix setting
            self.vocab_size = int(seg.sp.get_piece_size())
            self._sp = None

            def processor() -> spm.SentencePieceProcessor:  # the unmodified model, loaded only to decode
                if self._sp is None:
                    self._sp = spm.SentencePieceProcessor(model_file=str(model_file))
                return self._sp

            self._decode = lambda ids: processor().decode(ids)
            self._piece = lambda i: processor().id_to_piece(i)
            self._is_special = lambda i: processor().is_control(i) or processor().is_unknown(i)
        elif path.is_dir():
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
            self.kind = "huggingface"
            self.segment_cache = None
            self.model_file = str(path)
            if tok.eos_token_id is None:
                raise ValueError(f"tokenizer {path}: has no EOS token")

            def batch(texts: Sequence[str]) -> List[List[int]]:
                if not texts:
                    return []
                return [list(x) for x in tok(list(texts), add_special_tokens=False)["input_ids"]]

            self._batch = batch
            self._flat = lambda texts: _flatten(batch(texts))
            self.eos_id = int(tok.eos_token_id)
            self.vocab_size = len(tok)
            self._decode = lambda ids: tok.decode(ids)
            self._piece = tok.convert_ids_to_tokens
            special = set(tok.all_special_ids)
            self._is_special = lambda i: i in special
        else:
            raise FileNotFoundError(f"tokenizer: {path} is neither a .model file nor a directory")
        if self.eos_id < 0:
            raise ValueError(f"tokenizer {path}: has no EOS token")

    def encode(self, text: str) -> List[int]:
        return self._batch([text])[0] if text else []

    def encode_batch(self, texts: Sequence[str]) -> List[List[int]]:
        """``[encode(t) for t in texts]``, in one call (one pass over the segment cache)."""
        return self._batch(texts)

    def encode_flat(self, texts: Sequence[str]) -> Tuple[np.ndarray, np.ndarray]:
        """All texts' ids concatenated (int32 array) and each text's id count: no per-text Python lists."""
        return self._flat(texts)

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``; special tokens (EOS, BOS, unk) are shown as their piece, e.g. ``</s>``."""
        out, run = [], []
        for i in ids:
            i = int(i)
            if self._is_special(i):
                if run:
                    out.append(self._decode(run))
                    run = []
                out.append(self._piece(i))
            else:
                run.append(i)
        if run:
            out.append(self._decode(run))
        return "".join(out)
