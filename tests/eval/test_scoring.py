"""Log-likelihood scoring against a hand computation, generation, and the CLI end to end on a tiny random Llama."""
from __future__ import annotations

import json

import pytest
import torch

from megatron_huatuo.eval.cli import main
from megatron_huatuo.eval.model import load_model_and_tokenizer
from megatron_huatuo.eval.prompts import build_prompt, continuation
from megatron_huatuo.eval.questions import load_questions
from megatron_huatuo.eval.runner import EvalConfig, evaluate_benchmark
from megatron_huatuo.eval.scoring import Request, continuation_logprobs
from tests.eval.conftest import write_jsonl

QUESTIONS = [
    {"id": "q1", "question": "高血压患者首选哪种生活方式干预？", "options": {"A": "限盐", "B": "吸烟", "C": "饮酒", "D": "熬夜"},
     "answer": "A"},
    {"id": "q2", "question": "Which vitamin deficiency causes scurvy?",
     "options": ["Vitamin C", "Vitamin D", "Vitamin K"], "answer": "A"},
    {"id": "q3", "question": "糖尿病的典型症状是什么？", "option": {"A": "多饮多尿", "B": "脱发", "C": "耳鸣"}, "answer": "A"},
    {"id": "q4", "question": "哪些属于症状？", "option": {"A": "发热", "B": "石头", "C": "咳嗽"}, "answer": "AC"},
]
DEV = [
    {"id": "d1", "question": "以下哪项是抗生素？", "options": {"A": "胰岛素", "B": "阿莫西林"}, "answer": "B"},
    {"id": "d2", "question": "Which organ makes insulin?", "options": {"A": "Liver", "B": "Pancreas"}, "answer": "B"},
]


@pytest.fixture(scope="module")
def model_tok(tiny_model_dir):
    return load_model_and_tokenizer(tiny_model_dir)


def hand_logprob(model, tokenizer, context: str, cont: str) -> float:
    """One token at a time: feed the prefix, take log-softmax of the last position, add the next token's value.

    Independent of batching, padding and the shift-by-one slicing of the scorer.
    """
    ctx = tokenizer(context)["input_ids"]
    whole = tokenizer(context + cont)["input_ids"]
    assert whole[: len(ctx)] == ctx, "test prompts are chosen so that no merge crosses the boundary"
    total = 0.0
    with torch.no_grad():
        for t in range(len(ctx), len(whole)):
            logits = model(input_ids=torch.tensor([whole[:t]])).logits[0, -1].double()
            total += float(torch.log_softmax(logits, -1)[whole[t]])
    return total


def test_loglik_matches_hand_computation(model_tok, tmp_path):
    model, tok = model_tok
    qs = load_questions(write_jsonl(tmp_path / "b.jsonl", QUESTIONS))
    dev = load_questions(write_jsonl(tmp_path / "dev.jsonl", DEV))
    requests = []
    for q in qs[:3]:
        for kind in ("letter", "text"):
            prompt = build_prompt(q, dev, continuation_kind=kind)
            requests += [Request(prompt, continuation(q, letter, kind)) for letter in q.letters]
    got = continuation_logprobs(model, tok, requests, batch_size=5)  # odd batch size: mixed lengths per batch
    for req, (lp, n) in zip(requests, got):
        assert n >= 1
        assert lp == pytest.approx(hand_logprob(model, tok, req.context, req.continuation), abs=1e-4)
    # The options really get different scores, so the comparison above is not trivially satisfied.
    assert len({round(lp, 3) for lp, _ in got}) > len(got) // 2


def test_evaluate_benchmark_predictions(model_tok, tmp_path):
    model, tok = model_tok
    bench = write_jsonl(tmp_path / "b.jsonl", QUESTIONS)
    dev = load_questions(write_jsonl(tmp_path / "dev.jsonl", DEV))
    cfg = EvalConfig(shots=1, continuation="text", length_norm="chars")
    res = evaluate_benchmark(model, tok, "demo", bench, cfg, tmp_path / "out", dev)
    rows = [json.loads(line) for line in (tmp_path / "out" / "demo.predictions.jsonl").read_text().splitlines()]
    assert res.total == 3 and res.skipped == 1  # the multi-answer question is skipped in loglik mode
    assert [r["id"] for r in rows] == ["q1", "q2", "q3"]
    for r, q in zip(rows, load_questions(bench)[:3]):
        # The prediction is the option with the best per-character mean, recomputed here from the stored sums.
        best = max(q.letters, key=lambda k: r["scores"][k]["logprob"] / len(q.options[k]))
        assert r["pred"] == best
        assert r["correct"] == (best == q.answer)
    assert res.correct == sum(r["correct"] for r in rows)
    assert res.by_group == {}  # no subject fields in this file


def test_accuracy_by_subject(model_tok, tmp_path):
    model, tok = model_tok
    rows = [dict(q, exam_subject=s) for q, s in zip(QUESTIONS[:3], ["内科", "外科", "内科"])]
    res = evaluate_benchmark(model, tok, "cmb", write_jsonl(tmp_path / "cmb.jsonl", rows), EvalConfig(), tmp_path, None)
    preds = [json.loads(line) for line in (tmp_path / "cmb.predictions.jsonl").read_text().splitlines()]
    assert set(res.by_group) == {"内科", "外科"}
    assert res.by_group["内科"]["total"] == 2
    assert res.by_group["内科"]["correct"] == preds[0]["correct"] + preds[2]["correct"]


def test_cli_both_modes(tiny_model_dir, tmp_path, capsys):
    bench = write_jsonl(tmp_path / "b.jsonl", QUESTIONS)
    dev = write_jsonl(tmp_path / "dev.jsonl", DEV)
    out = tmp_path / "preds"
    assert main(["--model", str(tiny_model_dir), "--bench", f"zhmix={bench}", "--dev", str(dev), "--shots", "2",
                 "--template", "huatuo", "--out", str(out)]) == 0
    assert "| zhmix | 3 |" in capsys.readouterr().out
    assert main(["--model", str(tiny_model_dir), "--bench", f"gen={bench}", "--mode", "generate",
                 "--max-new-tokens", "4", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    gen = summary["benchmarks"][0]
    assert gen["name"] == "gen" and gen["total"] == 4 and gen["skipped"] == 0
    assert 0.0 <= gen["ci_low"] <= gen["accuracy"] <= gen["ci_high"] <= 1.0
    rows = [json.loads(line) for line in (out / "gen.predictions.jsonl").read_text().splitlines()]
    assert all("generated" in r for r in rows)


def test_shots_without_dev_is_an_error(model_tok, tmp_path):
    model, tok = model_tok
    bench = write_jsonl(tmp_path / "b.jsonl", QUESTIONS)
    with pytest.raises(ValueError, match="needs a dev file"):
        evaluate_benchmark(model, tok, "x", bench, EvalConfig(shots=1), tmp_path, None)


def test_remote_code_export_is_explained(tiny_model_dir, tmp_path):
    import shutil

    export = tmp_path / "baichuan_like"
    shutil.copytree(tiny_model_dir, export)
    cfg = json.loads((export / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForCausalLM": "modeling_baichuan.BaichuanForCausalLM"}
    (export / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(FileNotFoundError, match=r"modeling_baichuan.py is not in the directory"):
        load_model_and_tokenizer(export, trust_remote_code=True)
    (export / "modeling_baichuan.py").write_text("# placeholder\n")
    with pytest.raises(ValueError, match="--trust-remote-code"):
        load_model_and_tokenizer(export)
