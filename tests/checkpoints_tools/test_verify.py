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
import torch
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


def test_verify_tiny_yi_passes_and_a_tampered_head_fails(tmp_path):
    hf = H.tiny_hf_llama("tiny-yi", seed=4)
    hf.save_pretrained(tmp_path / "hf")
    assert cli("import", "--hf", str(tmp_path / "hf"), "--arch", "tiny-yi", "--out", str(tmp_path / "mc")).returncode == 0
    ok = cli("verify", "--ckpt", str(tmp_path / "mc"), "--hf", str(tmp_path / "hf"), "--arch", "tiny-yi",
             "--tokens", *map(str, range(3, 40, 3)))
    assert ok.returncode == 0, ok.stderr[-3000:]
    diff, agree, positions = figures(ok.stdout)
    assert diff < 1e-4 and agree == 1.0 and positions == 13

    # a copy whose lm_head rows are permuted: same weights, wrong logits
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text((tmp_path / "hf" / "config.json").read_text())
    tensors = load_file(str(tmp_path / "hf" / "model.safetensors"))
    tensors["lm_head.weight"] = tensors["lm_head.weight"].roll(1, dims=0).contiguous()
    save_file(tensors, str(bad / "model.safetensors"))
    fail = cli("verify", "--ckpt", str(tmp_path / "mc"), "--hf", str(bad), "--arch", "tiny-yi")
    assert fail.returncode == 1, fail.stderr[-3000:]
    diff, agree, positions = figures(fail.stdout)
    assert diff > 1e-3 and agree < 0.5 and positions == 64 and "FAILED" in fail.stdout


def test_verify_tiny_baichuan2_7b(tmp_path):
    """W_pack checkpoint imported; verified against the same weights as a transformers Llama (NormHead folded)."""
    hf = H.tiny_hf_llama("tiny-baichuan2-7b", seed=5, normalise_head=True)
    H.save_as_baichuan(hf, tmp_path / "baichuan")
    hf.save_pretrained(tmp_path / "llama")
    imp = cli("import", "--hf", str(tmp_path / "baichuan"), "--arch", "tiny-baichuan2-7b", "--out", str(tmp_path / "mc"))
    assert imp.returncode == 0, imp.stderr[-3000:]
    ok = cli("verify", "--ckpt", str(tmp_path / "mc"), "--hf", str(tmp_path / "llama"), "--arch", "tiny-baichuan2-7b",
             "--tol", "1e-4")
    assert ok.returncode == 0, ok.stderr[-3000:]
    diff, agree, _ = figures(ok.stdout)
    assert diff < 1e-4 and agree == 1.0

    # the Baichuan-format directory has no remote code here: refused before any model is built
    (tmp_path / "baichuan" / "config.json").write_text(json.dumps({"architectures": ["BaichuanForCausalLM"],
                                                                    "model_type": "baichuan"}))
    refused = cli("verify", "--ckpt", str(tmp_path / "mc"), "--hf", str(tmp_path / "baichuan"),
                  "--arch", "tiny-baichuan2-7b")
    assert refused.returncode == 2 and "modeling_baichuan.py" in refused.stderr and "Traceback" not in refused.stderr
