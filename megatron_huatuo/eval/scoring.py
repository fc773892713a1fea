"""Scoring options with a causal language model: log-likelihood of each continuation, or generation.

Log-likelihood: for each option the model reads ``prompt + continuation`` and we sum the log-probabilities of the
continuation's tokens (each predicted from everything before it). The prediction is the option with the highest
sum, or with the highest mean per token / per character when length normalisation is asked for (option texts of
different lengths otherwise favour the short ones).

Tokenization boundary: the continuation's tokens are taken from the tokenization of the whole string when it
starts with the prompt's own tokens (so merges across the boundary are what the model would really see); when a
merge crosses the boundary, the prompt and continuation are encoded separately and concatenated, so the scored
tokens are always exactly the continuation.

Sequences of many options/questions are scored together in right-padded batches; padding never changes a
causal model's logits at the real positions.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

NORMALISATIONS = ("none", "tokens", "chars")


@dataclass(frozen=True)
class Request:
    """One (context, continuation) pair to score."""

    context: str
    continuation: str


@dataclass(frozen=True)
class Encoded:
    ids: list[int]
    n_continuation: int  # the last n ids are the continuation


def encode_request(tokenizer, request: Request, add_special_tokens: bool = True) -> Encoded:
    ctx = tokenizer(request.context, add_special_tokens=add_special_tokens)["input_ids"]
    whole = tokenizer(request.context + request.continuation, add_special_tokens=add_special_tokens)["input_ids"]
    # Some tokenizers append an EOS with add_special_tokens; a trailing special token is not part of the answer.
    eos = getattr(tokenizer, "eos_token_id", None)
    if add_special_tokens and eos is not None and whole and whole[-1] == eos and ctx and ctx[-1] == eos:
        ctx, whole = ctx[:-1], whole[:-1]
    if len(whole) > len(ctx) and whole[: len(ctx)] == ctx:
        return Encoded(ids=list(whole), n_continuation=len(whole) - len(ctx))
    cont = tokenizer(request.continuation, add_special_tokens=False)["input_ids"]
    if not cont:
        raise ValueError(f"continuation {request.continuation!r} encodes to no tokens")
    return Encoded(ids=list(ctx) + list(cont), n_continuation=len(cont))


def _pad_id(tokenizer) -> int:
    for attr in ("pad_token_id", "eos_token_id", "unk_token_id"):
        value = getattr(tokenizer, attr, None)
        if value is not None:
            return int(value)
    return 0


@torch.no_grad()
def continuation_logprobs(
    model,
    tokenizer,
    requests: list[Request],
    *,
    batch_size: int = 8,
    max_length: int | None = None,
    add_special_tokens: bool = True,
) -> list[tuple[float, int]]:
    """(sum of continuation log-probs, number of continuation tokens) for each request, in order.

    Sequences longer than ``max_length`` lose tokens from the left of the context (the continuation is kept whole).
    Requests are sorted by length inside the call so that batches waste little padding.
    """
    encoded = [encode_request(tokenizer, r, add_special_tokens) for r in requests]
    if max_length:
        encoded = [
            Encoded(ids=e.ids[-max_length:], n_continuation=min(e.n_continuation, max_length - 1)) for e in encoded
        ]
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i].ids))
    results: list[tuple[float, int] | None] = [None] * len(encoded)
    pad = _pad_id(tokenizer)
    device = next(model.parameters()).device
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        width = max(len(encoded[i].ids) for i in idx)
        input_ids = torch.full((len(idx), width), pad, dtype=torch.long)
        attention = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            ids = encoded[i].ids
            input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            attention[row, : len(ids)] = 1
        logits = model(input_ids=input_ids.to(device), attention_mask=attention.to(device)).logits.float()
        logprobs = torch.log_softmax(logits, dim=-1)
        for row, i in enumerate(idx):
            e = encoded[i]
            n = len(e.ids)
            targets = torch.tensor(e.ids[n - e.n_continuation :], dtype=torch.long, device=logprobs.device)
            # The token at position t is predicted by the logits at position t-1.
            preds = logprobs[row, n - e.n_continuation - 1 : n - 1]
            results[i] = (float(preds.gather(-1, targets[:, None]).sum()), e.n_continuation)
    return [r for r in results if r is not None]


def normalise(logprob: float, n_tokens: int, text: str, how: str) -> float:
    """The score compared between options: the raw sum, or its mean per token / per character."""
    if how == "none":
        return logprob
    if how == "tokens":
        return logprob / max(n_tokens, 1)
    if how == "chars":
        return logprob / max(len(text.strip()), 1)
    raise ValueError(f"unknown length normalisation {how!r} ({', '.join(NORMALISATIONS)})")


@torch.no_grad()
def generate(
    model,
    tokenizer,
    prompts: list[str],
    *,
    max_new_tokens: int = 32,
    batch_size: int = 8,
    add_special_tokens: bool = True,
) -> list[str]:
    """Greedy continuations of ``prompts`` (left-padded batches), decoded without special tokens."""
    outputs: list[str] = []
    pad = _pad_id(tokenizer)
    device = next(model.parameters()).device
    eos = getattr(tokenizer, "eos_token_id", None)
    for start in range(0, len(prompts), batch_size):
        chunk = [tokenizer(p, add_special_tokens=add_special_tokens)["input_ids"] for p in prompts[start : start + batch_size]]
        width = max(len(c) for c in chunk)
        input_ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        attention = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, ids in enumerate(chunk):
            input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
            attention[row, width - len(ids) :] = 1
        out = model.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention.to(device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=pad,
            eos_token_id=eos,
        )
        for row in range(len(chunk)):
            outputs.append(tokenizer.decode(out[row, width:].tolist(), skip_special_tokens=True))
    return outputs
