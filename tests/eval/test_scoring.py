"""Log-likelihood scoring on a tiny random Llama: against a one-token-at-a-time computation written here, one pass
per question equal to per option, uneven letters, left truncation, multi-answer sets, and the CLI end to end."""
from __future__ import annotations

import json

import pytest
import torch

from megatron_huatuo.eval.cli import main
from megatron_huatuo.eval.model import HFModel, load_hf, load_model_and_tokenizer
from megatron_huatuo.eval.prompts import build_prompt, continuation
from megatron_huatuo.eval.questions import load_questions
from megatron_huatuo.eval.runner import EvalConfig, evaluate_benchmark
from megatron_huatuo.eval.scoring import (
    Request,
    continuation_logprobs,
    encode_request,
    pad_id,
    plan_letter_scoring,
    score_encoded,
    score_one_pass,
)
from tests.eval.conftest import write_jsonl

QUESTIONS = [
    {"id": "q1", "question": "高血压患者首选哪种生活方式干预？", "options": {"A": "限盐", "B": "吸烟", "C": "饮酒", "D": "熬夜"},
     "answer": "A"},
    {"id": "q2", "question": "Which vitamin deficiency causes scurvy?",
     "options": ["Vitamin C", "Vitamin D", "Vitamin K"], "answer": "A"},
    {"id": "q3", "question": "糖尿病的典型症状是什么？", "options": {"A": "多饮多尿", "B": "脱发", "C": "耳鸣"}, "answer": "A"},
    {"id": "q4", "question": "哪些属于症状？", "options": {"A": "发热", "B": "石头", "C": "咳嗽"}, "answer": "AC"},
]
# ' E' is two tokens for this tokenizer while ' A'..' D' are one: the uneven case.
FIVE_EN = {"id": "q5", "question": "Which organ makes insulin?",
           "options": ["Liver", "Pancreas", "Kidney", "Heart", "Lung"], "answer": "B"}
DEV = [
    {"id": "d1", "question": "以下哪项是抗生素？", "options": {"A": "胰岛素", "B": "阿莫西林"}, "answer": "B"},
    {"id": "d2", "question": "Which organ makes insulin?", "options": {"A": "Liver", "B": "Pancreas"}, "answer": "B"},
]


@pytest.fixture(scope="module")
def lm_tok(tiny_model_dir):
    return load_hf(tiny_model_dir)


def hand_logprob(model, ids: list[int], n_cont: int) -> float:
    """One token at a time: feed the prefix, log-softmax of the last position, add the next token's value.
    Independent of batching, padding and the scorer's shift-by-one slicing."""
    total = 0.0
    with torch.no_grad():
        for t in range(len(ids) - n_cont, len(ids)):
            logits = model(input_ids=torch.tensor([ids[:t]])).logits[0, -1].double()
            total += float(torch.log_softmax(logits, -1)[ids[t]])
    return total


def hand_request(model, tokenizer, context: str, cont: str, max_length=None) -> float:
    ctx, whole = tokenizer(context)["input_ids"], tokenizer(context + cont)["input_ids"]
    assert whole[: len(ctx)] == ctx, "test prompts are chosen so that no merge crosses the boundary"
    return hand_logprob(model, whole[-max_length:] if max_length else whole, len(whole) - len(ctx))


def test_loglik_matches_hand_computation(lm_tok, tmp_path):
    lm, tok = lm_tok
    qs = load_questions(write_jsonl(tmp_path / "b.jsonl", QUESTIONS[:1])) + \
        load_questions(write_jsonl(tmp_path / "c.jsonl", QUESTIONS[1:3]))
    dev = load_questions(write_jsonl(tmp_path / "dev.jsonl", DEV))
    requests = []
    for q in qs:
        for kind in ("letter", "text"):
            prompt = build_prompt(q, dev, continuation_kind=kind)
            requests += [Request(prompt, continuation(q, letter, kind)) for letter in q.letters]
    got = continuation_logprobs(lm, tok, requests, batch_size=5)  # odd batch size: mixed lengths per batch
    for req, s in zip(requests, got):
        assert s.tokens >= 1 and not s.truncated
        assert s.logprob == pytest.approx(hand_request(lm.model, tok, req.context, req.continuation), abs=1e-4)
    # The options really get different scores, so the comparison above is not trivially satisfied.
    assert len({round(s.logprob, 3) for s in got}) > len(got) // 2


def test_one_pass_equals_per_option_and_uneven_letters_fall_back(lm_tok, tmp_path):
    lm, tok = lm_tok
    qs = load_questions(write_jsonl(tmp_path / "b.jsonl", [QUESTIONS[0], FIVE_EN]))
    dev = load_questions(write_jsonl(tmp_path / "dev.jsonl", DEV))
    plans = []
    for q in qs:
        prompt = build_prompt(q, dev)
        plans.append(plan_letter_scoring(tok, prompt, {k: continuation(q, k) for k in q.letters}))
    assert plans[0].one_pass and not plans[1].one_pass
    assert plans[1].reason == "letters tokenise unevenly (' E' -> 2 tokens)"
    (one, cut), = score_one_pass(lm, plans[:1], pad=pad_id(tok))
    assert not cut
    prompt = build_prompt(qs[0], dev)
    # the same question through the per-option path: equal to the one pass, and to the hand computation
    slow = score_encoded(lm, [encode_request(tok, Request(prompt, k)) for k in qs[0].letters], pad=pad_id(tok))
    for k, s in zip(qs[0].letters, slow):
        assert one[k].logprob == pytest.approx(s.logprob, abs=1e-5)
        assert one[k].logprob == pytest.approx(hand_request(lm.model, tok, prompt, k), abs=1e-4)
    assert plans[1].encoded["E"].n_continuation == 2

    res = evaluate_benchmark(lm, tok, "mix", tmp_path / "b.jsonl", EvalConfig(shots=2), tmp_path / "out", dev)
    rows = [json.loads(line) for line in (tmp_path / "out" / "mix.predictions.jsonl").read_text().splitlines()]
    assert [r["one_pass"] for r in rows] == [True, False] and res.one_pass == 1
    for r in rows:
        assert r["pred"] == max(r["scores"], key=lambda k: r["scores"][k]["logprob"])


def test_uneven_letters_warn(lm_tok, tmp_path, capsys):
    lm, tok = lm_tok
    evaluate_benchmark(lm, tok, "five", write_jsonl(tmp_path / "f.jsonl", [FIVE_EN]), EvalConfig(), tmp_path, None)
    assert "five: letters tokenise unevenly (' E' -> 2 tokens)" in capsys.readouterr().err


def test_left_truncation_to_the_context_is_counted(lm_tok, tmp_path, capsys):
    lm, tok = lm_tok
    bench = write_jsonl(tmp_path / "b.jsonl", QUESTIONS[:1] + QUESTIONS[2:3])
    qs = load_questions(bench)
    lengths = [len(tok(build_prompt(q))["input_ids"]) + 1 for q in qs]
    limit = (min(lengths) + max(lengths)) // 2
    assert min(lengths) <= limit < max(lengths)
    cfg = EvalConfig(max_length=limit)
    res = evaluate_benchmark(lm, tok, "cut", bench, cfg, tmp_path, None)
    rows = [json.loads(line) for line in (tmp_path / "cut.predictions.jsonl").read_text().splitlines()]
    assert res.truncated == 1 and [r["truncated"] for r in rows] == [n > limit for n in lengths]
    assert "1 of 2 prompts were cut from the left to fit" in capsys.readouterr().err
    long = lengths.index(max(lengths))
    for k, s in rows[long]["scores"].items():  # the model saw exactly the last `limit` tokens
        assert s["logprob"] == pytest.approx(hand_request(lm.model, tok, build_prompt(qs[long]), k, limit), abs=1e-4)
    # by default the window is the model's own (max_position_embeddings = 512 here): nothing cut
    assert lm.max_length == 512
    assert evaluate_benchmark(lm, tok, "cut", bench, EvalConfig(), tmp_path, None).truncated == 0


def test_multi_answer_scored_as_a_set(lm_tok, tmp_path):
    lm, tok = lm_tok
    res = evaluate_benchmark(lm, tok, "multi", write_jsonl(tmp_path / "m.jsonl", QUESTIONS[3:]),
                             EvalConfig(protocol="loglik-text"), tmp_path, None)
    row = json.loads((tmp_path / "multi.predictions.jsonl").read_text())
    assert set(row["scores"]) == {"AB", "AC", "BC", "ABC"} and res.multi_answer == 1
    q = load_questions(tmp_path / "m.jsonl")[0]
    prompt = build_prompt(q)
    for cand, s in row["scores"].items():
        assert s["logprob"] == pytest.approx(hand_request(lm.model, tok, prompt, cand), abs=1e-4)
    assert row["pred"] == max(row["scores"], key=lambda c: row["scores"][c]["logprob"])
    assert row["correct"] == (row["pred"] == "AC") and res.correct == row["correct"]


def test_accuracy_by_subject(lm_tok, tmp_path):
    lm, tok = lm_tok
    rows = [dict(q, exam_subject=s) for q, s in zip([QUESTIONS[0], QUESTIONS[2], QUESTIONS[0]], ["内科", "外科", "内科"])]
    res = evaluate_benchmark(lm, tok, "cmb", write_jsonl(tmp_path / "cmb.jsonl", rows), EvalConfig(), tmp_path, None)
    preds = [json.loads(line) for line in (tmp_path / "cmb.predictions.jsonl").read_text().splitlines()]
    assert set(res.by_group) == {"内科", "外科"}
    assert res.by_group["内科"]["total"] == 2
    assert res.by_group["内科"]["correct"] == preds[0]["correct"] + preds[2]["correct"]


def test_cli_per_benchmark_dev_and_summary(tiny_model_dir, tmp_path, capsys):
    zh = write_jsonl(tmp_path / "zh.jsonl", [QUESTIONS[0], QUESTIONS[2], QUESTIONS[3]])
    en = write_jsonl(tmp_path / "en.jsonl", [QUESTIONS[1]])
    dev_zh = write_jsonl(tmp_path / "dev_zh.jsonl", DEV[:1])
    dev_en = write_jsonl(tmp_path / "dev_en.jsonl", DEV[1:])
    out = tmp_path / "preds"
    assert main(["--model", str(tiny_model_dir), "--bench", f"zh={zh}", "--bench", f"en={en}", "--dev",
                 f"zh={dev_zh}", "--dev", f"en={dev_en}", "--shots", "1", "--template", "huatuo",
                 "--protocol", "loglik-text", "--length-norm", "chars", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| zh | loglik-text | 3 |" in printed and "| en | loglik-text | 1 |" in printed
    summary = json.loads((out / "summary.json").read_text())
    zh_res = summary["benchmarks"][0]
    assert (zh_res["total"], zh_res["multi_answer"], zh_res["format"]) == (3, 1, "generic")
    assert zh_res["questions_per_s"] > 0 and 0 <= zh_res["ci_low"] <= zh_res["accuracy"] <= zh_res["ci_high"] <= 1
    assert summary["model"]["backend"] == "transformers" and summary["model"]["load_seconds"] > 0
    assert (out / "summary.md").read_text().startswith("| benchmark | protocol |")
    rows = [json.loads(line) for line in (out / "zh.predictions.jsonl").read_text().splitlines()]
    q1 = load_questions(zh)[0]
    best = max(q1.letters, key=lambda k: rows[0]["scores"][k]["logprob"] / len(q1.options[k]))
    assert rows[0]["pred"] == best  # per-character mean, recomputed from the stored sums


def test_cli_bad_input_is_one_line(tiny_model_dir, tmp_path, capsys):
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"question": "q", "option": "(A) x\n(B) y", "anwer": "(C)"}])
    assert main(["--model", str(tiny_model_dir), "--bench", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("megatron_huatuo.eval: error: ") and "bad.jsonl:1: field 'anwer'" in err
    assert "\n" not in err
    assert main(["--model", str(tiny_model_dir), "--bench", str(bad), "--dev", f"nope={bad}", "--out",
                 str(tmp_path / "o")]) == 2
    assert "--dev names ['nope'] match no --bench" in capsys.readouterr().err
    with pytest.raises(ValueError, match="needs a dev file"):
        lm, tok = load_hf(tiny_model_dir)
        evaluate_benchmark(lm, tok, "x", write_jsonl(tmp_path / "b.jsonl", QUESTIONS[:1]), EvalConfig(shots=1),
                           tmp_path, None)


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
    assert isinstance(load_hf(tiny_model_dir)[0], HFModel)
