"""Evaluate one model on several benchmarks: predictions per question, accuracy with a 95 % interval, a table.

Outputs in ``out_dir``:

- ``<bench>.predictions.jsonl``: one line per question (id, answer, prediction, correct, per-option scores or the
  generated text);
- ``summary.json``: settings and, per benchmark, correct/total/accuracy/ci_low/ci_high/skipped;
- ``summary.md``: the same as a Markdown table (also printed).

Multiple-answer questions (some CMB/CMExam items) cannot be answered by picking the single most likely option:
log-likelihood mode skips and counts them; generation mode scores them by exact letter-set match.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from megatron_huatuo.eval.extract import extract_answer
from megatron_huatuo.eval.prompts import build_prompt, continuation
from megatron_huatuo.eval.questions import MCQuestion, load_questions
from megatron_huatuo.eval.scoring import NORMALISATIONS, Request, continuation_logprobs, generate, normalise
from megatron_huatuo.eval.stats import accuracy

MODES = ("loglik", "generate")
# Metadata fields that split a benchmark into groups, most specific first (CMB: exam_subject; CMMLU-style exports:
# subject_name; else the question type).
GROUP_KEYS = ("exam_subject", "subject_name", "exam_type", "question_type")


@dataclass
class EvalConfig:
    """How questions are asked and scored (one set of settings for every benchmark of a run)."""

    mode: str = "loglik"
    shots: int = 0
    template: str = "plain"
    continuation: str = "letter"
    length_norm: str = "none"
    lang: str = "auto"
    batch_size: int = 8
    max_length: int | None = None
    max_new_tokens: int = 32
    limit: int | None = None
    add_special_tokens: bool = True

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.length_norm not in NORMALISATIONS:
            raise ValueError(f"length_norm must be one of {NORMALISATIONS}, got {self.length_norm!r}")
        if self.shots < 0:
            raise ValueError(f"shots must be >= 0, got {self.shots}")


@dataclass
class BenchResult:
    name: str
    correct: int
    total: int
    accuracy: float
    ci_low: float
    ci_high: float
    skipped: int
    seconds: float
    predictions_file: str
    by_group: dict = field(default_factory=dict)  # accuracy per subject / question type when the file has one


def pick_shots(dev: list[MCQuestion], k: int, exclude_id: str | None = None) -> list[MCQuestion]:
    """The first ``k`` dev questions (a fixed, documented choice so runs are comparable), never the question itself."""
    return [q for q in dev if q.qid != exclude_id][:k]


def _score_loglik(model, tokenizer, questions, shots_for, cfg: EvalConfig) -> list[dict]:
    requests: list[Request] = []
    spans: list[tuple[int, int]] = []
    for q in questions:
        prompt = build_prompt(q, shots_for(q), template=cfg.template, continuation_kind=cfg.continuation, lang=cfg.lang)
        start = len(requests)
        for letter in q.letters:
            requests.append(Request(prompt, continuation(q, letter, cfg.continuation, cfg.lang, cfg.template)))
        spans.append((start, len(requests)))
    scored = continuation_logprobs(
        model, tokenizer, requests, batch_size=cfg.batch_size, max_length=cfg.max_length,
        add_special_tokens=cfg.add_special_tokens,
    )
    rows = []
    for q, (start, end) in zip(questions, spans):
        scores = {}
        for letter, req, (lp, n) in zip(q.letters, requests[start:end], scored[start:end]):
            scores[letter] = {"logprob": lp, "tokens": n, "score": normalise(lp, n, req.continuation, cfg.length_norm)}
        pred = max(q.letters, key=lambda letter: scores[letter]["score"])
        rows.append({"pred": pred, "scores": scores})
    return rows


def _score_generate(model, tokenizer, questions, shots_for, cfg: EvalConfig) -> list[dict]:
    prompts = [
        build_prompt(q, shots_for(q), template=cfg.template, continuation_kind="letter", lang=cfg.lang)
        for q in questions
    ]
    texts = generate(model, tokenizer, prompts, max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size,
                     add_special_tokens=cfg.add_special_tokens)
    return [{"pred": extract_answer(t, q.options), "generated": t} for q, t in zip(questions, texts)]


def evaluate_benchmark(
    model, tokenizer, name: str, path: str | Path, cfg: EvalConfig, out_dir: Path, dev: list[MCQuestion] | None = None
) -> BenchResult:
    """Score one benchmark file and write its predictions."""
    t0 = time.perf_counter()
    questions = load_questions(path, limit=cfg.limit)
    if cfg.shots and not dev:
        raise ValueError(f"--shots {cfg.shots} needs a dev file (--dev) for benchmark {name!r}")
    shots_for = (lambda q: pick_shots(dev, cfg.shots, q.qid)) if cfg.shots else (lambda q: [])
    if cfg.mode == "loglik":
        scored_qs = [q for q in questions if not q.is_multi]
        rows = _score_loglik(model, tokenizer, scored_qs, shots_for, cfg)
    else:
        scored_qs = questions
        rows = _score_generate(model, tokenizer, scored_qs, shots_for, cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    pred_path = out_dir / f"{name}.predictions.jsonl"
    correct = 0
    groups: dict[str, list[int]] = {}
    tmp = pred_path.with_suffix(".jsonl.tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for q, row in zip(scored_qs, rows):
            ok = row["pred"] == q.answer
            correct += ok
            group = next((str(q.meta[k]) for k in GROUP_KEYS if q.meta.get(k)), None)
            if group is not None:
                tally = groups.setdefault(group, [0, 0])
                tally[0] += ok
                tally[1] += 1
            fh.write(json.dumps({"id": q.qid, "answer": q.answer, **row, "correct": ok}, ensure_ascii=False) + "\n")
    tmp.replace(pred_path)
    acc = accuracy(correct, len(scored_qs))
    return BenchResult(
        name=name, correct=correct, total=len(scored_qs), accuracy=acc.value, ci_low=acc.low, ci_high=acc.high,
        skipped=len(questions) - len(scored_qs), seconds=round(time.perf_counter() - t0, 3),
        predictions_file=str(pred_path),
        by_group={g: _group_stats(c, n) for g, (c, n) in sorted(groups.items())},
    )


def _group_stats(correct: int, total: int) -> dict:
    acc = accuracy(correct, total)
    return {"correct": correct, "total": total, "accuracy": acc.value, "ci_low": acc.low, "ci_high": acc.high}


def format_table(results: list[BenchResult]) -> str:
    """Markdown table: benchmark, n, accuracy %, 95 % Wilson interval, skipped multi-answer items."""
    lines = ["| benchmark | n | accuracy | 95% CI (Wilson) | skipped | seconds |", "|---|---:|---:|---|---:|---:|"]
    for r in results:
        lines.append(
            f"| {r.name} | {r.total} | {100 * r.accuracy:.1f} | [{100 * r.ci_low:.1f}, {100 * r.ci_high:.1f}] "
            f"| {r.skipped} | {r.seconds:.1f} |"
        )
    return "\n".join(lines)


def write_summary(results: list[BenchResult], cfg: EvalConfig, model_path: str, out_dir: Path) -> str:
    table = format_table(results)
    summary = {"model": model_path, "config": asdict(cfg), "benchmarks": [asdict(r) for r in results]}
    (out_dir / "summary.json").write_text(json.dumps(summary, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    (out_dir / "summary.md").write_text(table + "\n", encoding="utf-8")
    return table
