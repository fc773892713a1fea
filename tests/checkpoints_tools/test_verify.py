"""``verify``: megatron-core's forward from a checkpoint vs transformers' forward of an HF directory.

The HF side is an independent model (transformers' own Llama, built and saved by the test), so a passing
verify means the two implementations agree; a tampered HF copy must fail with exit code 1, and a Baichuan-format
directory without Baichuan's remote code must be refused with a clear message (exit code 2).
"""
from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from safetensors.torch import load_file, save_file

import ckpt_harness as H

transformers = pytest.importorskip("transformers")


def cli(*args):
    return subprocess.run([sys.executable, "-m", "checkpoints_tools", *args], capture_output=True, text=True,
                          timeout=300)


def figures(stdout):
    m = re.search(r"max abs logit diff (\S+), top-1 agreement (\S+) over (\d+) positions", stdout)
    assert m, stdout
    return float(m.group(1)), float(m.group(2)), int(m.group(3))


def tiny_tokenizer(out):
    """A word-level tokenizer (ids < 512, the tiny vocabulary), saved as an HF tokenizer directory."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = "the patient has a fever and cough since two days what should i do drink water rest".split()
    vocab = {"[PAD]": 0, "[UNK]": 1, **{w: i + 2 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]")
    fast.save_pretrained(out)


def tampered_copy(src, dst):
    """``src`` with its lm_head rows permuted: same weights, wrong logits."""
    dst.mkdir()
    (dst / "config.json").write_text((src / "config.json").read_text())
    tensors = load_file(str(src / "model.safetensors"))
    tensors["lm_head.weight"] = tensors["lm_head.weight"].roll(1, dims=0).contiguous()
    save_file(tensors, str(dst / "model.safetensors"))


def test_verify_tiny_baichuan2_7b(tmp_path):
    """W_pack checkpoint imported; verified on prompts against the same weights as a transformers Llama (NormHead
    folded); a tampered copy fails (exit 1); Baichuan's format without its remote code is refused (exit 2)."""
    hf = H.tiny_hf_llama("tiny-baichuan2-7b", seed=5, normalise_head=True)
    H.save_as_baichuan(hf, tmp_path / "baichuan")
    hf.save_pretrained(tmp_path / "llama")
    tiny_tokenizer(tmp_path / "tok")
    (tmp_path / "prompts.txt").write_text("the patient has a fever\nwhat should i do since two days cough\n\n")
    imp = cli("import", "--hf", str(tmp_path / "baichuan"), "--arch", "tiny-baichuan2-7b",
              "--out", str(tmp_path / "mc"))
    assert imp.returncode == 0, imp.stderr[-3000:]
    args = ["--ckpt", str(tmp_path / "mc"), "--arch", "tiny-baichuan2-7b", "--prompts", str(tmp_path / "prompts.txt"),
            "--tokenizer", str(tmp_path / "tok")]
    ok = cli("verify", "--hf", str(tmp_path / "llama"), "--tol", "1e-4", *args)
    assert ok.returncode == 0, ok.stderr[-3000:]
    diff, agree, positions = figures(ok.stdout)
    assert diff < 1e-4 and agree == 1.0 and positions == 5 + 8  # two prompts, padding not compared

    tampered_copy(tmp_path / "llama", tmp_path / "bad")
    fail = cli("verify", "--hf", str(tmp_path / "bad"), *args)
    assert fail.returncode == 1, fail.stderr[-3000:]
    diff, agree, _ = figures(fail.stdout)
    assert diff > 1e-3 and agree < 0.5 and "FAILED" in fail.stdout

    # the Baichuan-format directory has no remote code here: refused before any model is built
    (tmp_path / "baichuan" / "config.json").write_text(json.dumps({"architectures": ["BaichuanForCausalLM"],
                                                                    "model_type": "baichuan"}))
    refused = cli("verify", "--ckpt", str(tmp_path / "mc"), "--hf", str(tmp_path / "baichuan"),
                  "--arch", "tiny-baichuan2-7b")
    assert refused.returncode == 2 and "modeling_baichuan.py" in refused.stderr and "Traceback" not in refused.stderr


@pytest.mark.slow
def test_verify_tiny_yi(tmp_path):
    """GQA (8 heads, 2 groups), ids given with --tokens, against the transformers Llama it came from."""
    hf = H.tiny_hf_llama("tiny-yi", seed=4)
    hf.save_pretrained(tmp_path / "hf")
    imp = cli("import", "--hf", str(tmp_path / "hf"), "--arch", "tiny-yi", "--out", str(tmp_path / "mc"))
    assert imp.returncode == 0, imp.stderr[-3000:]
    ok = cli("verify", "--ckpt", str(tmp_path / "mc"), "--hf", str(tmp_path / "hf"), "--arch", "tiny-yi",
             "--tokens", *map(str, range(3, 40, 3)))
    assert ok.returncode == 0, ok.stderr[-3000:]
    diff, agree, positions = figures(ok.stdout)
    assert diff < 1e-4 and agree == 1.0 and positions == 13
