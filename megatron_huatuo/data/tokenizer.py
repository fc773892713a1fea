"""Text -> token ids, the way Megatron-LM's tokenizer wrappers do it, but faster.

Semantics (what ``tools/preprocess_data.py`` of Megatron-LM / megatron-core 0.16 produces):

- SentencePiece ``.model`` (``--tokenizer-type GPTSentencePieceTokenizer``, ``SentencePieceTokenizer`` or
  ``Llama2Tokenizer``): ``sp.encode(text)``, no BOS/EOS; ``eod`` = the model's EOS id; vocab size = piece count.
- HF tokenizer directory (``--tokenizer-type HuggingFaceTokenizer``): the fast tokenizer's ids without special
  tokens (Megatron-LM's ``text_to_ids``: ``tokenize`` then ``convert_tokens_to_ids``); ``eod`` = the EOS token's
  id; vocab size = ``len(tokenizer)``.

Why faster: :class:`~megatron_huatuo.data.segment_cache.SegmentCache` cuts text where the model's vocabulary
proves BPE never merges across (no piece holds the two characters there next to each other), encodes each
distinct segment once and looks up every repeat, in numpy over whole batches; models it cannot prove that for are
encoded text by text. The ids are always exactly ``sp.encode(text)`` (fuzz-tested against it).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

from megatron_huatuo.data.segment_cache import SegmentCache, flatten


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
            seg = SegmentCache(str(model_file))
            self.segment_cache: Optional[SegmentCache] = seg
            self._flat: Callable[[Sequence[str]], Tuple[np.ndarray, np.ndarray]] = seg.encode_flat
            self._batch: Callable[[Sequence[str]], List[List[int]]] = lambda texts: _unflatten(*seg.encode_flat(texts))
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
            self._flat = lambda texts: flatten(batch(texts))
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
