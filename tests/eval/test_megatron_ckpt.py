"""``--megatron-ckpt``: a Megatron checkpoint scores the same as its Hugging Face export (transformers), under the
log-likelihood protocol (per-option log-probs) and under huatuo2 (the same sampled texts from the same seed)."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from megatron_huatuo.eval.cli import main
from megatron_huatuo.models.registry import get_arch
from megatron_huatuo.runtime import run_distributed
from huatuo_testing import llama_config
from tests.eval.conftest import write_jsonl
from tests.eval.eval_harness import megatron_side

QUESTIONS = [
    {"question": "高血压首选哪种干预？", "option": "(A) 限盐.\n(B) 吸烟.\n(C) 饮酒.\n(D) 熬夜.", "anwer": "(A)"},
    {"question": "Which vitamin prevents scurvy?", "option": "(A) C.\n(B) D.\n(C) K.", "anwer": "(A)"},
    {"question": "哪些属于症状？", "option": "(A) 发热.\n(B) 石头.\n(C) 咳嗽.", "anwer": "(AC)"},
]


def read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_megatron_checkpoint_scores_like_its_export(tiny_model_dir, tmp_path):
    transformers = pytest.importorskip("transformers")
    arch = get_arch("tiny-yi")  # GQA + RoPE
    hf_dir = tmp_path / "hf"
    shutil.copytree(tiny_model_dir, hf_dir)
    for f in ("model.safetensors", "config.json", "generation_config.json"):
        (hf_dir / f).unlink(missing_ok=True)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(llama_config(arch))
    with torch.no_grad():  # larger weights than the default init: options get clearly different scores
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.3)
    model.save_pretrained(hf_dir)
    bench = write_jsonl(tmp_path / "unified.jsonl", QUESTIONS)
    mc = run_distributed(megatron_side, world_size=1, args=(str(hf_dir), str(tmp_path), str(bench), arch.name),
                         timeout=600)[0]
    assert mc["summary"]["model"]["backend"] == "megatron-core" and mc["summary"]["model"]["arch"] == "tiny-yi"

    common = ["--model", str(tmp_path / "export"), "--bench", f"b={bench}", "--no-special-tokens"]
    assert main(common + ["--out", str(tmp_path / "hf_letter")]) == 0
    ours, theirs = read(tmp_path / "mc_letter" / "b.predictions.jsonl"), read(tmp_path / "hf_letter" / "b.predictions.jsonl")
    assert [r["pred"] for r in ours] == [r["pred"] for r in theirs]
    for a, b in zip(ours, theirs):
        assert a["scores"].keys() == b["scores"].keys()
        for k in a["scores"]:
            assert a["scores"][k]["logprob"] == pytest.approx(b["scores"][k]["logprob"], abs=1e-4)
    assert len({round(s["logprob"], 2) for s in ours[0]["scores"].values()}) > 1  # not trivially equal

    assert main(common + ["--protocol", "huatuo2", "--batch-size", "1", "--max-new-tokens", "10", "--seed", "3",
                          "--out", str(tmp_path / "hf_huatuo2")]) == 0
    ours, theirs = read(tmp_path / "mc_huatuo2" / "b.predictions.jsonl"), read(tmp_path / "hf_huatuo2" / "b.predictions.jsonl")
    assert [r["generated"] for r in ours] == [r["generated"] for r in theirs]
    assert [r["pred"] for r in ours] == [r["pred"] for r in theirs]

    # prompts of different lengths decoded together (no padding: the shorter one reads its prompt while the
    # longer one still does) give what each gives alone
    assert mc["prompt_lengths"][0] != mc["prompt_lengths"][1]
    assert mc["batched"] == mc["alone"] and all(len(x) == 6 for x in mc["alone"])
