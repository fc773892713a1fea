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


def test_verify_tiny_baichuan2_13b_with_flex_attention(tmp_path):
    """ALiBi (6 heads: interleaved slopes) in Baichuan's format: imported, then our forward with
    ``--attention-backend flex`` (FlexAttention's ALiBi score_mod, forward-only on CPU) against an independent
    forward of Baichuan's architecture (test stand-in for its remote code, slope * key-position form)."""
    import shutil
    from pathlib import Path

    import torch

    from checkpoints_tools.mapping.baichuan2 import hf_config
    from megatron_huatuo.models.registry import get_arch

    arch = get_arch("tiny-baichuan2-13b")
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps(hf_config(arch)))
    for name in ("configuration_baichuan.py", "modeling_baichuan.py"):
        shutil.copy(Path(__file__).parent / "baichuan_alibi_remote" / name, hf / name)
    g = torch.Generator().manual_seed(3)
    h, f, v = arch.hidden_size, arch.ffn_hidden_size, arch.vocab_size
    tensors = {"model.embed_tokens.weight": torch.randn(v, h, generator=g),
               "model.norm.weight": 1 + 0.1 * torch.randn(h, generator=g), "lm_head.weight": torch.randn(v, h, generator=g)}
    for i in range(arch.num_layers):
        p = f"model.layers.{i}."
        for name, shape in (("self_attn.W_pack", (3 * h, h)), ("self_attn.o_proj", (h, h)), ("mlp.gate_proj", (f, h)),
                            ("mlp.up_proj", (f, h)), ("mlp.down_proj", (h, f))):
            tensors[p + name + ".weight"] = 0.1 * torch.randn(*shape, generator=g)
        for name in ("input_layernorm", "post_attention_layernorm"):
            tensors[p + name + ".weight"] = 1 + 0.1 * torch.randn(h, generator=g)
    save_file(tensors, str(hf / "model.safetensors"))
    imp = cli("import", "--hf", str(hf), "--arch", arch.name, "--out", str(tmp_path / "mc"))
    assert imp.returncode == 0, imp.stderr[-3000:]
    ok = cli("verify", "--ckpt", str(tmp_path / "mc"), "--hf", str(hf), "--arch", arch.name, "--tol", "1e-4",
             "--attention-backend", "flex", "--trust-remote-code", "--tokens", *map(str, range(5, 500, 23)))
    assert ok.returncode == 0, ok.stderr[-3000:] + ok.stdout[-2000:]
    diff, agree, positions = figures(ok.stdout)
    assert diff < 1e-4 and agree == 1.0 and positions == 22


def test_baichuan_remote_code_needs_what_its_modeling_file_imports(tmp_path):
    """transformers refuses a remote-code directory that lacks a module its modeling file imports relatively (also
    inside a function, as Baichuan2's ``quantize`` does); without a modeling file the released set is named."""
    from checkpoints_tools.verify import _hf_kind

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "baichuan"}))
    with pytest.raises(ValueError, match="lacks configuration_baichuan.py, modeling_baichuan.py, generation_utils.py"):
        _hf_kind(tmp_path)
    (tmp_path / "configuration_baichuan.py").write_text("from transformers import PretrainedConfig\n")
    (tmp_path / "modeling_baichuan.py").write_text(
        "from .configuration_baichuan import BaichuanConfig\n\ndef quantize(self):\n"
        "    from .quantizer_int4 import quantize_offline\n")
    with pytest.raises(ValueError, match=r"lacks quantizer_int4\.py \("):
        _hf_kind(tmp_path)
    (tmp_path / "quantizer_int4.py").write_text("")
    with pytest.raises(ValueError, match="--trust-remote-code"):
        _hf_kind(tmp_path)
    assert _hf_kind(tmp_path, trust_remote_code=True) == "baichuan"
