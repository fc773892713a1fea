"""Scoring options with a causal language model: log-likelihood of continuations, in one pass or per option.

Log-likelihood: for each option the model reads ``prompt + continuation`` and we sum the log-probabilities of the
continuation's tokens (each predicted from everything before it). The prediction is the option with the highest
sum, or with the highest mean per token / per character when length normalisation is asked for (option texts of
different lengths otherwise favour the short ones).

**One pass per question.** When every option's continuation is a single token that follows the prompt's own
tokens (the usual case for letters: ``"A"`` after ``答案：``, ``" A"`` after ``Answer:``), all options are read from
the log-softmax at the prompt's last position: one forward per question instead of one per option, and exactly
the numbers the per-option path gives. Otherwise (a letter that tokenises into two pieces, or a merge across the
prompt boundary) the question is scored per option, and :func:`plan_letter_scoring` says why so the caller can
warn.

Tokenization boundary: the continuation's tokens are taken from the tokenization of the whole string when it
starts with the prompt's own tokens (so merges across the boundary are what the model would really see); when a
merge crosses the boundary, the prompt and continuation are encoded separately and concatenated, so the scored
tokens are always exactly the continuation.

**Context length.** Sequences longer than the model's window lose tokens from the left of the prompt (the
continuation is kept whole), and every scored sequence reports whether it was cut, so summaries can count the
truncated questions instead of silently scoring positions the model was never trained on.

Sequences are scored in right-padded batches, longest first; padding never changes a causal model's logits at the
real positions.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

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
    truncated: bool = False


@dataclass(frozen=True)
class Scored:
    logprob: float  # sum over the continuation's tokens
    tokens: int
    truncated: bool


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


def truncate_left(e: Encoded, max_length: Optional[int]) -> Encoded:
    """Keep the last ``max_length`` ids (the continuation whole, at least one context token before it)."""
    if not max_length or len(e.ids) <= max_length:
        return e
    if e.n_continuation >= max_length:
        raise ValueError(f"a continuation of {e.n_continuation} tokens does not fit a context of {max_length}")
    return Encoded(ids=e.ids[-max_length:], n_continuation=e.n_continuation, truncated=True)


def pad_id(tokenizer) -> int:
    for attr in ("pad_token_id", "eos_token_id", "unk_token_id"):
        value = getattr(tokenizer, attr, None)
        if value is not None:
            return int(value)
    return 0


def _batches(lengths: Sequence[int], batch_size: int):
    """Index batches, longest sequences first (little padding per batch)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    for start in range(0, len(order), batch_size):
        yield order[start:start + batch_size]


def _forward(lm, seqs: Sequence[Sequence[int]], pad: int) -> torch.Tensor:
    width = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    for row, ids in enumerate(seqs):
        input_ids[row, : len(ids)] = torch.tensor(list(ids), dtype=torch.long)
    return torch.log_softmax(lm.logits(input_ids, [len(s) for s in seqs]), dim=-1)


@torch.no_grad()
def score_encoded(lm, encoded: Sequence[Encoded], *, pad: int, batch_size: int = 8) -> list[Scored]:
    """Summed log-probability of each encoded continuation (per-option path)."""
    results: list[Optional[Scored]] = [None] * len(encoded)
    for idx in _batches([len(e.ids) for e in encoded], batch_size):
        logprobs = _forward(lm, [encoded[i].ids for i in idx], pad)
        for row, i in enumerate(idx):
            e = encoded[i]
            n = len(e.ids)
            targets = torch.tensor(e.ids[n - e.n_continuation:], dtype=torch.long, device=logprobs.device)
            # The token at position t is predicted by the logits at position t-1.
            preds = logprobs[row, n - e.n_continuation - 1: n - 1]
            results[i] = Scored(float(preds.gather(-1, targets[:, None]).sum()), e.n_continuation, e.truncated)
    return [r for r in results if r is not None]


def continuation_logprobs(lm, tokenizer, requests: Sequence[Request], *, batch_size: int = 8,
                          max_length: Optional[int] = None, add_special_tokens: bool = True) -> list[Scored]:
    """:func:`score_encoded` of ``requests``, each left-truncated to ``max_length`` tokens."""
    encoded = [truncate_left(encode_request(tokenizer, r, add_special_tokens), max_length) for r in requests]
    return score_encoded(lm, encoded, pad=pad_id(tokenizer), batch_size=batch_size)


@dataclass(frozen=True)
class LetterPlan:
    """How one question's options are scored: ``prompt_ids`` + one token per option (one pass), or per option."""

    one_pass: bool
    prompt_ids: list[int]
    option_tokens: dict[str, int]  # one pass only
    encoded: dict[str, Encoded]  # per option only
    reason: str = ""  # why not one pass


def plan_letter_scoring(tokenizer, prompt: str, continuations: dict[str, str], *,
                        add_special_tokens: bool = True) -> LetterPlan:
    """One pass when each continuation is exactly one token appended to the prompt's own tokens."""
    encoded = {k: encode_request(tokenizer, Request(prompt, c), add_special_tokens) for k, c in continuations.items()}
    bad = {k: e for k, e in encoded.items() if e.n_continuation != 1}
    first = next(iter(encoded.values()))
    prompt_ids = first.ids[:-first.n_continuation]
    if not bad and all(e.ids[:-1] == prompt_ids for e in encoded.values()):
        return LetterPlan(True, prompt_ids, {k: e.ids[-1] for k, e in encoded.items()}, {})
    if bad:
        pieces = ", ".join(f"{continuations[k]!r} -> {e.n_continuation} tokens" for k, e in bad.items())
        reason = f"letters tokenise unevenly ({pieces})"
    else:
        reason = "a letter merges with the end of the prompt"
    return LetterPlan(False, prompt_ids, {}, encoded, reason)


@torch.no_grad()
def score_one_pass(lm, plans: Sequence[LetterPlan], *, pad: int, batch_size: int = 8,
                   max_length: Optional[int] = None) -> list[tuple[dict[str, Scored], bool]]:
    """Per plan: every option's log-probability read at the prompt's last position, and whether it was truncated.

    The prompt keeps its last ``max_length - 1`` tokens: the same window the per-option path gives the model
    before the option's token.
    """
    prompts = []
    for p in plans:
        keep = (max_length - 1) if max_length else None
        ids = p.prompt_ids[-keep:] if keep and len(p.prompt_ids) > keep else p.prompt_ids
        prompts.append((ids, len(ids) < len(p.prompt_ids)))
    results: list = [None] * len(plans)
    for idx in _batches([len(ids) for ids, _ in prompts], batch_size):
        logprobs = _forward(lm, [prompts[i][0] for i in idx], pad)
        for row, i in enumerate(idx):
            last = logprobs[row, len(prompts[i][0]) - 1]
            cut = prompts[i][1]
            results[i] = ({k: Scored(float(last[t]), 1, cut) for k, t in plans[i].option_tokens.items()}, cut)
    return results


def normalise(logprob: float, n_tokens: int, text: str, how: str) -> float:
    """The score compared between options: the raw sum, or its mean per token / per character."""
    if how == "none":
        return logprob
    if how == "tokens":
        return logprob / max(n_tokens, 1)
    if how == "chars":
        return logprob / max(len(text.strip()), 1)
    raise ValueError(f"unknown length normalisation {how!r} ({', '.join(NORMALISATIONS)})")


def generate_ids(lm, tokenizer, prompts: Sequence[str], settings, *, batch_size: int, max_input: Optional[int],
                 add_special_tokens: bool, seed: int) -> list[tuple[str, bool]]:
    """(decoded new text, whether the prompt was left-truncated to ``max_input`` tokens) per prompt.

    Each batch is seeded with ``seed + index of its first prompt``: a rerun with the same batch size samples the
    same texts, and ``--limit`` never changes the earlier batches.
    """
    eos = getattr(tokenizer, "eos_token_id", None)
    pad = pad_id(tokenizer)
    out: list[tuple[str, bool]] = []
    for start in range(0, len(prompts), batch_size):
        chunk = []
        for p in prompts[start:start + batch_size]:
            ids = tokenizer(p, add_special_tokens=add_special_tokens)["input_ids"]
            cut = bool(max_input) and len(ids) > max_input
            chunk.append((ids[-max_input:] if cut else ids, cut))
        new = lm.sample([ids for ids, _ in chunk], settings, pad, eos, seed + start)
        out += [(tokenizer.decode(ids, skip_special_tokens=True), cut) for ids, (_, cut) in zip(new, chunk)]
    return out
