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
from typing import List, Sequence, Tuple

from megatron_huatuo.data.tokenizer import Tokenizer  # noqa: F401  (re-exported: the one tokenizer class)

Turn = Tuple[str, str]  # (role "user"|"assistant", text)


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
    return encode_conversations([turns], tokenizer, template)[0]


def encode_conversations(conversations: Sequence[Sequence[Turn]], tokenizer: Tokenizer,
                         template: Template) -> List[Tuple[List[int], List[int]]]:
    """:func:`encode_conversation` of many conversations with one tokenizer call (its per-call cost is paid once)."""
    rendered = [render(turns, template) for turns in conversations]
    encoded = iter(tokenizer.encode_batch([text for pieces in rendered for text, _ in pieces if text]))
    out = []
    for pieces in rendered:
        ids: List[int] = []
        mask: List[int] = []
        for text, trained in pieces:
            piece = [tokenizer.eos_id] if text is None else next(encoded) if text else []
            ids.extend(piece)
            mask.extend([int(trained)] * len(piece))
        out.append((ids, mask))
    return out
