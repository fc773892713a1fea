"""Chat templates: a conversation -> token ids + per-token loss mask.

Each template renders a conversation as a list of (text, trained) pieces; every piece is tokenised on its own
and the ids concatenated, so loss-mask boundaries fall exactly on token boundaries whatever the tokenizer does
to the joined string. ``mask[i] == 1`` means token ``i`` is a training *target* (it is predicted from the
tokens before it); the packer shifts it onto the labels.

HuatuoGPT-II (the default, from the original ``data_process.py``): ``<问>：{q}\\n<答>：{a}`` turns joined by
``\\n``, no BOS, loss on answers only, EOS at the end. The original labels the first token of each later user
turn as EOS; we instead insert a real EOS after every answer (trained), which keeps ``labels`` a plain shift of
``tokens`` as the sample contract requires and teaches the same stop decision.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Sequence, Tuple

Turn = Tuple[str, str]  # (role "user"|"assistant", text)


class Tokenizer:
    """Text -> ids without special tokens, plus the EOS id; from a SentencePiece ``.model`` or an HF directory."""

    def __init__(self, path: str | Path):
        path = Path(path)
        self.path = str(path)
        model_file = path if path.is_file() else path / "tokenizer.model"
        if path.is_file() or (model_file.exists() and not (path / "tokenizer.json").exists()):
            import sentencepiece as spm

            if not model_file.exists():
                raise FileNotFoundError(f"tokenizer: no SentencePiece model at {model_file}")
            sp = spm.SentencePieceProcessor(model_file=str(model_file))
            self._encode: Callable[[str], List[int]] = lambda text: sp.encode(text)
            self.eos_id = int(sp.eos_id())
            self.vocab_size = int(sp.get_piece_size())
        elif path.is_dir():
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
            self._encode = lambda text: tok.encode(text, add_special_tokens=False)
            if tok.eos_token_id is None:
                raise ValueError(f"tokenizer {path}: has no EOS token")
            self.eos_id = int(tok.eos_token_id)
            self.vocab_size = len(tok)
        else:
            raise FileNotFoundError(f"tokenizer: {path} is neither a .model file nor a directory")
        if self.eos_id < 0:
            raise ValueError(f"tokenizer {path}: has no EOS token")

    def encode(self, text: str) -> List[int]:
        return list(self._encode(text)) if text else []


@dataclass(frozen=True)
class Template:
    """How one user/assistant turn is rendered; ``eos_after_answer`` adds a trained EOS after every answer."""

    name: str
    user_prefix: str
    user_suffix: str
    assistant_prefix: str
    assistant_suffix: str
    turn_separator: str
    eos_after_answer: bool = True


TEMPLATES = {
    "huatuo": Template("huatuo", "<问>：", "\n", "<答>：", "", "\n"),
    "baichuan2": Template("baichuan2", "<reserved_106>", "", "<reserved_107>", "", ""),
    # Yi-Chat ends an answer with <|im_end|> (trained), its own stop token, so no extra EOS.
    "yi": Template("yi", "<|im_start|>user\n", "<|im_end|>\n", "<|im_start|>assistant\n", "<|im_end|>", "\n",
                   eos_after_answer=False),
}


def get_template(name: str) -> Template:
    if name not in TEMPLATES:
        raise ValueError(f"unknown template {name!r}; choose from {sorted(TEMPLATES)}")
    return TEMPLATES[name]


def render(turns: Sequence[Turn], template: Template) -> List[Tuple[str, bool]]:
    """(text, trained) pieces; ``None`` text stands for the EOS token (rendered by :func:`encode_conversation`)."""
    pieces: List[Tuple[str, bool]] = []
    for i, (role, text) in enumerate(turns):
        if role == "user":
            if i > 0:
                pieces.append((template.turn_separator, False))
            pieces.append((template.user_prefix + text + template.user_suffix, False))
        elif role == "assistant":
            pieces.append((template.assistant_prefix, False))
            pieces.append((text + template.assistant_suffix, True))
            if template.eos_after_answer:
                pieces.append((None, True))  # type: ignore[arg-type]
        else:
            raise ValueError(f"unknown role {role!r}")
    return pieces


def encode_conversation(turns: Sequence[Turn], tokenizer: Tokenizer, template: Template) -> Tuple[List[int], List[int]]:
    """Token ids and per-token loss mask (1 = trained target) of one conversation."""
    ids: List[int] = []
    mask: List[int] = []
    for text, trained in render(turns, template):
        piece = [tokenizer.eos_id] if text is None else tokenizer.encode(text)
        ids.extend(piece)
        mask.extend([int(trained)] * len(piece))
    return ids, mask
