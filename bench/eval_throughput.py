"""Questions/s of ``python -m megatron_huatuo.eval --protocol loglik-letter`` beside lm-eval on the same questions.

Both tools score the same (context, continuation) pairs: the questions of ``--questions`` (any format our reader
detects, e.g. a real benchmark file you downloaded; multi-answer questions left out) are prompted with our
``plain`` template and written as an lm-eval task (``dataset_path: json``, ``doc_to_text: {{prompt}}``,
``doc_to_choice: {{choices}}`` = our exact continuations, ``target_delimiter: ""``), so both compute the
log-likelihood of each option letter after the same prompt. The model is a random-weight Llama of ``--size``
with a real tokenizer (Llama-2's SentencePiece model from the shared data by default), saved once; both tools
load it from disk in their own process, on CPU, fp32, with the same batch size.

Reported per tool: questions/s of the scoring alone (ours: the summary's ``questions_per_s``; lm-eval: its
``total_evaluation_time_seconds`` minus nothing: it starts after the model is loaded), process wall time and CPU
seconds of the process tree (the box may be shared: CPU seconds are the steadier figure), and the agreement of the
predictions with the largest difference of per-option log-probabilities.

lm-eval is NOT a project dependency: install it in a separate virtual environment and pass its python, e.g.
``python -m venv ~/lmeval && ~/lmeval/bin/pip install lm-eval`` (it needs torch and transformers there; a
``.pth`` file pointing at this project's site-packages reuses them).

Usage: python bench/eval_throughput.py --questions medqa-usmle.test.jsonl --lm-eval-python ~/lmeval/bin/python
       [--limit 300] [--size small] [--batch-size 8] [--workdir DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("HUATUO_SHARED_DATA", ROOT.parent / "shared" / "data"))
SIZES = {  # random-weight Llama shapes: compute, not start-up, should dominate
    "tiny": dict(hidden_size=128, intermediate_size=352, num_hidden_layers=2, num_attention_heads=4),
    "small": dict(hidden_size=512, intermediate_size=1376, num_hidden_layers=8, num_attention_heads=8),
}


def build_model(out: Path, size: str, tokenizer_model: Path) -> None:
    """A random Llama of ``size`` beside the SentencePiece model (transformers builds its tokenizer from it)."""
    import shutil

    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out.mkdir(parents=True, exist_ok=True)
    shutil.copy2(tokenizer_model, out / "tokenizer.model")
    (out / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
         "add_bos_token": True, "add_eos_token": False, "legacy": False}))
    tok = AutoTokenizer.from_pretrained(str(out))
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), max_position_embeddings=4096, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, **SIZES[size])
    LlamaForCausalLM(cfg).save_pretrained(out)


def write_task(questions, task_dir: Path) -> Path:
    from megatron_huatuo.eval.prompts import build_prompt, continuation

    rows = []
    for q in questions:
        rows.append({"id": q.qid, "prompt": build_prompt(q), "choices": [continuation(q, k) for k in q.letters],
                     "gold": q.letters.index(q.answer)})
    data = task_dir / "questions.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    (task_dir / "huatuo_bench.yaml").write_text(
        "task: huatuo_bench\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        "doc_to_text: \"{{prompt}}\"\n"
        "doc_to_choice: \"{{choices}}\"\n"
        "doc_to_target: gold\n"
        "target_delimiter: \"\"\n"
        "metric_list:\n  - metric: acc\n")
    return data


def _cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def timed(cmd, env=None) -> tuple:
    c0, t0 = _cpu(), time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall, cpu = time.perf_counter() - t0, _cpu() - c0
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[:3]} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return wall, cpu


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--questions", required=True, help="a benchmark file (any format docs/eval.md lists)")
    p.add_argument("--lm-eval-python", help="python of a venv with lm-eval installed (omit: ours only)")
    p.add_argument("--limit", type=int, default=300)
    p.add_argument("--size", choices=sorted(SIZES), default="small")
    p.add_argument("--tokenizer-model", default=str(SHARED / "tokenizers" / "llama2" / "tokenizer.model"))
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--workdir", default=None)
    args = p.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from megatron_huatuo.eval.questions import load_questions

    work = Path(args.workdir or tempfile.mkdtemp(prefix="eval-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    questions = [q for q in load_questions(args.questions) if not q.is_multi][: args.limit]
    model = work / f"model-{args.size}"
    if not (model / "config.json").exists():
        build_model(model, args.size, Path(args.tokenizer_model))
    bench = work / "bench.jsonl"
    bench.write_text("".join(json.dumps({"id": q.qid, "question": q.question, "options": q.options,
                                         "answer": q.answer, "context": q.context}, ensure_ascii=False) + "\n"
                             for q in questions), encoding="utf-8")
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"), PYTHONUNBUFFERED="1")
    out = work / "ours"
    wall, cpu = timed([sys.executable, "-m", "megatron_huatuo.eval", "--model", str(model), "--bench",
                       f"b={bench}", "--batch-size", str(args.batch_size), "--out", str(out)], env)
    summary = json.loads((out / "summary.json").read_text())
    res = summary["benchmarks"][0]
    ours = {"n": res["total"], "qps": res["questions_per_s"], "scoring_s": res["seconds"], "wall": wall, "cpu": cpu,
            "load_s": summary["model"]["load_seconds"], "one_pass": res["one_pass"], "accuracy": res["accuracy"]}
    print(f"ours: {ours}")
    if not args.lm_eval_python:
        print("lm-eval: skipped (no --lm-eval-python)")
        return 0
    task_dir = work / "task"
    task_dir.mkdir(exist_ok=True)
    write_task(questions, task_dir)
    lm_out = work / "lm_eval"
    wall, cpu = timed([args.lm_eval_python, "-m", "lm_eval", "--model", "hf", "--model_args",
                       f"pretrained={model},dtype=float32", "--tasks", "huatuo_bench", "--include_path",
                       str(task_dir), "--batch_size", str(args.batch_size), "--device", "cpu", "--log_samples",
                       "--output_path", str(lm_out)], env)
    result_file = max(lm_out.rglob("results_*.json"), key=lambda f: f.stat().st_mtime)
    results = json.loads(result_file.read_text())
    eval_s = float(results["total_evaluation_time_seconds"])
    samples_file = max(lm_out.rglob("samples_huatuo_bench_*.jsonl"), key=lambda f: f.stat().st_mtime)
    samples = [json.loads(line) for line in samples_file.read_text().splitlines()]
    theirs = {"n": len(samples), "qps": round(len(samples) / eval_s, 3), "scoring_s": eval_s, "wall": wall,
              "cpu": cpu, "accuracy": results["results"]["huatuo_bench"]["acc,none"]}
    print(f"lm-eval: {theirs}")
    preds = [json.loads(line) for line in (out / "b.predictions.jsonl").read_text().splitlines()]
    by_id = {r["id"]: r for r in preds}
    agree, max_diff = 0, 0.0
    for s in samples:
        q = questions[s["doc_id"]]
        lls = [float(x[0]) for x in s["filtered_resps"]]
        ours_lp = [by_id[q.qid]["scores"][k]["logprob"] for k in q.letters]
        max_diff = max(max_diff, max(abs(a - b) for a, b in zip(lls, ours_lp)))
        agree += q.letters[max(range(len(lls)), key=lls.__getitem__)] == by_id[q.qid]["pred"]
    print(f"agreement {agree}/{len(samples)}, max |logprob diff| {max_diff:.2e}")
    print(f"questions/s ratio ours/lm-eval (scoring): {ours['qps'] / theirs['qps']:.2f}; "
          f"process CPU ratio lm-eval/ours: {theirs['cpu'] / ours['cpu']:.2f}; "
          f"wall ratio lm-eval/ours: {theirs['wall'] / ours['wall']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
