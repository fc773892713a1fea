"""``--protocol huatuo2``: HuatuoGPT-II's own multiple-choice evaluation, so our numbers sit beside the paper's.

What FreedomIntelligence/HuatuoGPT-II ``evaluation/eval_qa.py`` + ``scorer.py`` (``score_mix2`` ->
``match_choice3``) do for a HuatuoGPT-II model, reproduced here:

1. **Prompt** ``<问>：请回答下面选择题。\\n[{question_type}]{question}\\n{A. text\\nB. text...}\\n<答>：``; the
   ``[{question_type}]`` part only when the record has one (CMB), options with empty text left out. A question
   with a context (PubMedQA's abstract; the original data had none) gets it on the line before the question.
2. **Input** left-truncated to its last 1024 tokens (the original cuts each padded batch to 1024 from the left).
3. **Sampling** with ``temperature 0.5, top_p 0.7, repetition_penalty 1.1``, up to 768 new tokens, one sample per
   question, seeded (the original seeds once with 42; our batches are seeded ``seed + first index``). ``top_k`` is
   whatever ``transformers`` takes when the caller does not set it (the model's ``generation_config.json``, else
   50), as in the original.
4. **Extraction**, in order (:func:`extract`):
   (a) ``答案是`` / ``答案为`` and what follows up to the next ``。`` (or the end): its A-E letters, kept in
       increasing order, repeats and letters that go backwards dropped;
   (b) else the option texts found in the output, ordered by where they first appear; used when that order is
       alphabetical;
   (c) else the first run of ``[A-E]+`` not touching other Latin letters whose letters are distinct and sorted;
   (d) else what (b) found even if out of order; else nothing.
5. **Scoring** (:func:`prediction`): nothing extracted counts as the answer ``B``; for a single-answer question
   only the first extracted letter counts; the prediction is right when it equals the answer (multi-answer
   questions: the exact set, as a sorted string).

Per question the predictions file records the generated text, the extraction branch and the letters.
"""
from __future__ import annotations

import re

from megatron_huatuo.eval.model import Sampling
from megatron_huatuo.eval.questions import MCQuestion

SAMPLING = Sampling(max_new_tokens=768, do_sample=True, temperature=0.5, top_p=0.7, repetition_penalty=1.1)
MAX_INPUT_TOKENS = 1024
FALLBACK = "B"
_OPTION_LETTERS = "ABCDE"  # the original only ever reads A-E


def prompt(q: MCQuestion) -> str:
    options = "\n".join(f"{k}. {v}" for k, v in q.options.items() if len(v) > 0)
    kind = q.meta.get("question_type")
    body = f"[{kind}]{q.question}" if kind else q.question
    if q.context:
        body = f"{q.context}\n{body}"
    return f"<问>：请回答下面选择题。\n{body}\n{options}\n<答>："


def extract(text: str, options: dict[str, str]) -> tuple[str, str]:
    """(letters, branch) with branch one of ``answer_is``, ``option_text``, ``letters``, ``option_text_unsorted``,
    ``none`` (see the module docstring; an empty result becomes the fallback in :func:`prediction`)."""
    m = re.search(r"答案(?:是|为)(.*?)(。|$)", text, re.S)
    if m:
        kept, last = "", -1
        for ch in m.group(1):
            if ch not in _OPTION_LETTERS or ch in kept or _OPTION_LETTERS.index(ch) < last:
                continue
            last = _OPTION_LETTERS.index(ch)
            kept += ch
        if kept:
            return kept, "answer_is"
    found = sorted(((k, text.find(v)) for k, v in options.items() if len(v) > 0 and v in text), key=lambda x: x[1])
    by_text = "".join(k for k, _ in found)
    if by_text and by_text == "".join(sorted(by_text)):
        return by_text, "option_text"
    for run in re.findall(r"(?<![A-Za-z])[A-E]+(?![A-Za-z])", text):
        if len(run) == len(set(run)) and run == "".join(sorted(run)):
            return run, "letters"
    return (by_text, "option_text_unsorted") if by_text else ("", "none")


def prediction(extracted: str, answer: str) -> str:
    """The original's scoring rule: fallback ``B`` when nothing was extracted, first letter for single answers."""
    pred = extracted or FALLBACK
    return pred[0] if len(answer) == 1 else pred
