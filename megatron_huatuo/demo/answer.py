"""Load an exported Hugging Face model with plain transformers and answer one question in the HuatuoGPT-II template.

This is the last check of the demo: the files written by the exporter are an ordinary transformers model that
anyone can load, prompt with ``<问>：{question}\\n<答>：`` and generate from.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch


def huatuo_prompt(question: str) -> str:
    return f"<问>：{question}\n<答>："


@torch.no_grad()
def answer(model_dir: str | Path, question: str, *, max_new_tokens: int = 48, trust_remote_code: bool = False) -> dict:
    from megatron_huatuo.eval.model import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(model_dir, trust_remote_code=trust_remote_code)
    prompt = huatuo_prompt(question)
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    text = tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    return {"model": str(model_dir), "model_class": type(model).__name__, "question": question, "prompt": prompt,
            "answer": text, "new_tokens": int(out.shape[1] - ids["input_ids"].shape[1])}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m megatron_huatuo.demo.answer", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--question", required=True)
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--trust-remote-code", action="store_true")
    p.add_argument("--out", help="write the result as JSON here too")
    args = p.parse_args(argv)
    result = answer(args.model, args.question, max_new_tokens=args.max_new_tokens,
                    trust_remote_code=args.trust_remote_code)
    print(f"{result['prompt']}{result['answer']}")
    if args.out:
        Path(args.out).write_text(json.dumps(result, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
