"""Evaluate one model on several benchmarks under one protocol: predictions, accuracy with a 95 % interval, speed.

Protocols (``EvalConfig.protocol``):

- ``loglik-letter``: the prompt ends at the answer label and each option's *letter* is scored; one forward per
  question when every letter is one token (:mod:`.scoring`), else per option with a warning.
- ``loglik-text``: each option's *text* is scored (``length_norm`` chooses sum / per token / per character).
- ``huatuo2``: HuatuoGPT-II's own sampled generation + answer extraction (:mod:`.huatuo2`).

Multiple-answer questions (CMExam, CMB 多项选择题) are scored as sets: under the log-likelihood protocols every set of
two or more letters is a candidate continuation (written as the letters in order, ``"AC"``) and the best one must
equal the answer; under ``huatuo2`` the extracted letters must.

Outputs in ``out_dir``: ``<bench>.predictions.jsonl`` (one line per question), ``summary.json`` and
``summary.md`` (per benchmark: accuracy, Wilson 95 % interval, questions/s, truncated questions; see
:func:`write_summary`).
"""
from __future__ import annotations

import itertools
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from megatron_huatuo.atomic import AtomicFiles
from megatron_huatuo.eval import huatuo2
from megatron_huatuo.eval.model import Sampling, with_overrides
from megatron_huatuo.eval.prompts import TEMPLATES, build_prompt, continuation
from megatron_huatuo.eval.questions import MCQuestion, file_format, load_questions
from megatron_huatuo.eval.scoring import (
    NORMALISATIONS,
    encode_request,
    generate_ids,
    normalise,
    pad_id,
    plan_letter_scoring,
    Request,
    score_encoded,
    score_one_pass,
    truncate_left,
)
from megatron_huatuo.eval.stats import accuracy

PROTOCOLS = ("loglik-letter", "loglik-text", "huatuo2")
# Metadata fields that split a benchmark into groups, most specific first.
GROUP_KEYS = ("exam_subject", "subject_name", "subject", "exam_type", "question_type", "meta_info", "source")


@dataclass
class EvalConfig:
    """How questions are asked and scored (one set of settings for every benchmark of a run)."""

    protocol: str = "loglik-letter"
    shots: int = 0
    template: str = "plain"
    length_norm: str = "none"
    lang: str = "auto"
    batch_size: int = 8
    max_length: Optional[int] = None  # None: the model's context window
    limit: Optional[int] = None
    add_special_tokens: bool = True
    seed: int = 42  # huatuo2 sampling (the original's seed)
    max_new_tokens: Optional[int] = None  # huatuo2: None keeps the original's 768

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {self.protocol!r}")
        if self.template not in TEMPLATES:
            raise ValueError(f"template must be one of {TEMPLATES}, got {self.template!r}")
        if self.length_norm not in NORMALISATIONS:
            raise ValueError(f"length_norm must be one of {NORMALISATIONS}, got {self.length_norm!r}")
        if self.shots < 0:
            raise ValueError(f"shots must be >= 0, got {self.shots}")
        if self.protocol == "huatuo2" and self.shots:
            raise ValueError("the huatuo2 protocol is zero-shot (as HuatuoGPT-II's eval_qa.py); drop --shots")

    @property
    def sampling(self) -> Sampling:
        return with_overrides(huatuo2.SAMPLING, max_new_tokens=self.max_new_tokens)


@dataclass
class BenchResult:
    name: str
    file: str
    format: str
    protocol: str
    correct: int
    total: int
    accuracy: float
    ci_low: float
    ci_high: float
    multi_answer: int  # questions with several right letters (scored as sets)
    truncated: int  # questions whose prompt was cut to fit the context
    one_pass: int  # loglik-letter: questions scored in one forward
    fallback: int  # huatuo2: no answer extracted, scored as the original's 'B'
    seconds: float
    questions_per_s: float
    predictions_file: str
    by_group: dict = field(default_factory=dict)  # accuracy per subject / question type when the file has one


def pick_shots(dev: Sequence[MCQuestion], k: int, exclude_id: str | None = None) -> list[MCQuestion]:
    """The first ``k`` dev questions (a fixed, documented choice so runs are comparable), never the question itself."""
    return [q for q in dev if q.qid != exclude_id][:k]


def answer_sets(letters: Sequence[str]) -> list[str]:
    """Every set of two or more option letters, as sorted strings: the candidates of a multi-answer question."""
    return ["".join(c) for n in range(2, len(letters) + 1) for c in itertools.combinations(letters, n)]


def _warn(message: str) -> None:
    print(f"[eval] warning: {message}", file=sys.stderr, flush=True)


def _score_loglik(lm, tokenizer, questions, shots_for, cfg: EvalConfig, max_length: Optional[int], name: str):
    kind = "letter" if cfg.protocol == "loglik-letter" else "text"
    pad = pad_id(tokenizer)
    rows: list[Optional[dict]] = [None] * len(questions)
    one_pass_plans, one_pass_at = [], []
    per_option: list = []  # (question index, candidate, continuation text, Encoded)
    uneven: Optional[str] = None
    for i, q in enumerate(questions):
        shots = shots_for(q)
        if q.is_multi:  # sets of letters, whatever the protocol's continuation
            prompt = build_prompt(q, shots, template=cfg.template, continuation_kind="letter", lang=cfg.lang)
            for cand in answer_sets(q.letters):
                text = continuation(q, cand, "letter", cfg.lang, cfg.template)
                per_option.append((i, cand, text, encode_request(tokenizer, Request(prompt, text),
                                                                 cfg.add_special_tokens)))
            continue
        prompt = build_prompt(q, shots, template=cfg.template, continuation_kind=kind, lang=cfg.lang)
        conts = {k: continuation(q, k, kind, cfg.lang, cfg.template) for k in q.letters}
        if kind == "letter":
            plan = plan_letter_scoring(tokenizer, prompt, conts, add_special_tokens=cfg.add_special_tokens)
            if plan.one_pass:
                one_pass_plans.append(plan)
                one_pass_at.append(i)
                continue
            uneven = uneven or plan.reason
            per_option += [(i, k, conts[k], plan.encoded[k]) for k in q.letters]
        else:
            per_option += [(i, k, c, encode_request(tokenizer, Request(prompt, c), cfg.add_special_tokens))
                           for k, c in conts.items()]
    if uneven:
        _warn(f"{name}: {uneven}; those questions are scored with one forward per option")
    scores: dict[int, dict] = {i: {} for i in range(len(questions))}
    truncated = [False] * len(questions)
    for i, (scored, cut) in zip(one_pass_at, score_one_pass(lm, one_pass_plans, pad=pad, batch_size=cfg.batch_size,
                                                            max_length=max_length)):
        truncated[i] = cut
        for k, s in scored.items():
            scores[i][k] = {"logprob": s.logprob, "tokens": s.tokens, "score": s.logprob}
    encoded = [truncate_left(e, max_length) for _, _, _, e in per_option]
    for (i, cand, text, _), s in zip(per_option, score_encoded(lm, encoded, pad=pad, batch_size=cfg.batch_size)):
        truncated[i] |= s.truncated
        how = "none" if questions[i].is_multi else cfg.length_norm
        scores[i][cand] = {"logprob": s.logprob, "tokens": s.tokens, "score": normalise(s.logprob, s.tokens, text, how)}
    one_pass = set(one_pass_at)
    for i, q in enumerate(questions):
        pred = max(scores[i], key=lambda c: scores[i][c]["score"])  # ties: the first candidate
        rows[i] = {"pred": pred, "one_pass": i in one_pass, "truncated": truncated[i], "scores": scores[i]}
    return rows


def _score_huatuo2(lm, tokenizer, questions, cfg: EvalConfig, max_length: Optional[int]):
    limit = min(huatuo2.MAX_INPUT_TOKENS, max_length) if max_length else huatuo2.MAX_INPUT_TOKENS
    texts = generate_ids(lm, tokenizer, [huatuo2.prompt(q) for q in questions], cfg.sampling,
                         batch_size=cfg.batch_size, max_input=limit, add_special_tokens=cfg.add_special_tokens,
                         seed=cfg.seed)
    rows = []
    for q, (text, cut) in zip(questions, texts):
        letters, branch = huatuo2.extract(text, q.options)
        rows.append({"pred": huatuo2.prediction(letters, q.answer), "extracted": letters, "branch": branch,
                     "truncated": cut, "generated": text})
    return rows


def evaluate_benchmark(lm, tokenizer, name: str, path: str | Path, cfg: EvalConfig, out_dir: Path,
                       dev: Sequence[MCQuestion] | None = None) -> BenchResult:
    """Score one benchmark file and write its predictions (``dev``: this benchmark's few-shot source)."""
    questions = load_questions(path, limit=cfg.limit)
    if cfg.shots and not dev:
        raise ValueError(f"--shots {cfg.shots} needs a dev file (--dev {name}=PATH) for benchmark {name!r}")
    shots_for = (lambda q: pick_shots(dev, cfg.shots, q.qid)) if cfg.shots else (lambda q: [])
    max_length = cfg.max_length or lm.max_length
    t0 = time.perf_counter()
    if cfg.protocol == "huatuo2":
        rows = _score_huatuo2(lm, tokenizer, questions, cfg, max_length)
    else:
        rows = _score_loglik(lm, tokenizer, questions, shots_for, cfg, max_length, name)
    seconds = time.perf_counter() - t0
    pred_path = out_dir / f"{name}.predictions.jsonl"
    correct = 0
    groups: dict[str, list[int]] = {}
    with AtomicFiles(pred_path) as (fh,):
        for q, row in zip(questions, rows):
            ok = row["pred"] == q.answer
            correct += ok
            group = next((str(q.meta[k]) for k in GROUP_KEYS if q.meta.get(k)), None)
            if group is not None:
                tally = groups.setdefault(group, [0, 0])
                tally[0] += ok
                tally[1] += 1
            fh.write(json.dumps({"id": q.qid, "answer": q.answer, **row, "correct": ok}, ensure_ascii=False) + "\n")
    truncated = sum(r["truncated"] for r in rows)
    if truncated:
        _warn(f"{name}: {truncated} of {len(questions)} prompts were cut from the left to fit {max_length} tokens")
    acc = accuracy(correct, len(questions))
    return BenchResult(
        name=name, file=str(path), format=file_format(path), protocol=cfg.protocol, correct=correct,
        total=len(questions), accuracy=acc.value, ci_low=acc.low, ci_high=acc.high,
        multi_answer=sum(q.is_multi for q in questions), truncated=truncated,
        one_pass=sum(bool(r.get("one_pass")) for r in rows),
        fallback=sum(r.get("branch") == "none" for r in rows),
        seconds=round(seconds, 3), questions_per_s=round(len(questions) / seconds, 3) if seconds > 0 else 0.0,
        predictions_file=str(pred_path),
        by_group={g: _group_stats(c, n) for g, (c, n) in sorted(groups.items())},
    )


def _group_stats(correct: int, total: int) -> dict:
    acc = accuracy(correct, total)
    return {"correct": correct, "total": total, "accuracy": acc.value, "ci_low": acc.low, "ci_high": acc.high}


def format_table(results: list[BenchResult]) -> str:
    """Markdown table: benchmark, n, accuracy %, 95 % Wilson interval, questions/s, truncated, multi-answer."""
    lines = ["| benchmark | protocol | n | accuracy | 95% CI (Wilson) | questions/s | truncated | multi-answer |",
             "|---|---|---:|---:|---|---:|---:|---:|"]
    for r in results:
        lines.append(
            f"| {r.name} | {r.protocol} | {r.total} | {100 * r.accuracy:.1f} "
            f"| [{100 * r.ci_low:.1f}, {100 * r.ci_high:.1f}] | {r.questions_per_s:.2f} | {r.truncated} "
            f"| {r.multi_answer} |"
        )
    return "\n".join(lines)


def write_summary(results: list[BenchResult], cfg: EvalConfig, model: dict, out_dir: Path) -> str:
    """``summary.json`` (model, settings, per-benchmark results) and ``summary.md`` (the table, also returned)."""
    table = format_table(results)
    settings = asdict(cfg)
    if cfg.protocol == "huatuo2":
        settings["sampling"] = asdict(cfg.sampling)
        settings["max_input_tokens"] = huatuo2.MAX_INPUT_TOKENS
    summary = {"model": model, "config": settings, "benchmarks": [asdict(r) for r in results]}
    with AtomicFiles(out_dir / "summary.json", out_dir / "summary.md") as (js, md):
        js.write(json.dumps(summary, ensure_ascii=False, indent=2) + "\n")
        md.write(table + "\n")
    return table
