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
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

# Characters tried as split points; only those the model proves safe are used.
_CANDIDATES = " \n\t。，、；：？！（）.,;:?!"
_CACHE_LIMIT = 2_000_000  # segments kept before the cache is cleared (bounds memory, output unaffected)
_BATCH_MIN = 128  # SentencePiece's list encode starts a thread pool per call: below this, one call per text


def _sp_encode(sp, texts: List[str]) -> List[List[int]]:
    if len(texts) >= _BATCH_MIN:
        return sp.encode(texts, num_threads=1)
    return [sp.encode(t) for t in texts]


def _raw(c: str) -> str:
    """The raw characters that normalise to ``c``'s form (a space and a literal U+2581 alike)."""
    return " \u2581" if c == " " else c


def _segment_pattern(before: set, after: set) -> str:
    """A regex whose ``findall`` cuts text before every run of ``before`` characters and after every run of
    ``after`` characters (a mixed run counts as one run: fewer cuts, always safe).

    With P = before-only, R = both, Q = after-only, N = neither, a pair x|y is a cut when x not in B and y in B, or
    x in A and y not in A. The pairs that are not cuts are P->any, R->R|Q, N->N|Q, Q->Q, so a maximal segment is
    ``P* (R+ | N+)? Q*`` and greedy ``findall`` returns exactly the segments, in order, covering the text.
    """
    cls = lambda chars: "".join(re.escape(ch) for ch in sorted(chars))  # noqa: E731
    p, r, q = before - after, before & after, after - before
    middle = ([f"[{cls(r)}]+"] if r else []) + [f"[^{cls(before | after)}]+"]
    return (f"[{cls(p)}]*" if p else "") + f"(?:{'|'.join(middle)})?" + (f"[{cls(q)}]*" if q else "")


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
        exact_local = (not ns.precompiled_charsmap and not ns.remove_extra_whitespaces and ns.escape_whitespaces
                       and not proto.trainer_spec.treat_whitespace_as_suffix and proto.trainer_spec.byte_fallback)
        if exact_local:
            norm = {("\u2581" if c == " " else c): c for c in _CANDIDATES}
            unsafe_before, unsafe_after = set(), set()
            for p in (x.piece for x in proto.pieces):
                for a, b in zip(p, p[1:]):  # adjacent characters inside one piece
                    if a != b:
                        if b in norm:
                            unsafe_before.add(b)  # a piece holds b after another character
                        if a in norm:
                            unsafe_after.add(a)  # a piece holds a before another character
            before = {r for n, c in norm.items() if n not in unsafe_before for r in _raw(c)}
            after = {r for n, c in norm.items() if n not in unsafe_after for r in _raw(c)}
            self.before, self.after = before, after
            if before or after:
                self.segment = re.compile(_segment_pattern(before, after))
                ns.add_dummy_prefix = False  # segments are encoded without it; it is added to the text instead
        self.sp = spm.SentencePieceProcessor(model_proto=proto.SerializeToString())
        self.cache: Dict[str, bytes] = {}  # segment -> its ids as little-endian int32 bytes

    def segments(self, text: str) -> List[str]:
        """The cut text (with the dummy-prefix space when the model adds one); joins back to it."""
        return self.segment.findall((" " + text) if self.dummy_prefix and text else text)

    def encode_flat(self, texts: Sequence[str]) -> Tuple[np.ndarray, np.ndarray]:
        """All texts' ids concatenated (int32) and each text's id count (int64)."""
        if self.segment is None:
            return _flatten([list(x) for x in _sp_encode(self.sp, list(texts))])
        cache = self.cache
        if len(cache) > _CACHE_LIMIT:
            cache.clear()
        cache[""] = b""  # findall's empty match at the end of a text
        prefix = " " if self.dummy_prefix else ""
        find = self.segment.findall
        segs = [find(prefix + t) if t else [] for t in texts]
        every = list(itertools.chain.from_iterable(segs))
        missing = list(set(every).difference(cache))
        if missing:
            for s, ids in zip(missing, _sp_encode(self.sp, missing)):
                cache[s] = np.asarray(ids, dtype="<i4").tobytes()
        blobs = list(map(cache.__getitem__, every))
        ids = np.frombuffer(b"".join(blobs), dtype="<i4")
        seg_lens = np.fromiter(map(len, blobs), dtype=np.int64, count=len(blobs)) // 4
        counts = np.fromiter(map(len, segs), dtype=np.int64, count=len(segs))
        cum = np.concatenate([[0], np.cumsum(seg_lens)])
        ends = np.cumsum(counts)
        return ids, cum[ends] - cum[ends - counts]

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
