"""HF <-> megatron conversion, checked against Hugging Face transformers itself.

import: the megatron model (TP=2, two gloo processes, resharded by megatron-core from the TP1 import) must give
HF's logits. export: the written safetensors must equal the original HF tensors bit for bit, and the exported
Llama directory must load with plain ``transformers`` and give the same logits.
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

import ckpt_harness as H
from megatron_huatuo.runtime import run_distributed

transformers = pytest.importorskip("transformers")


def cli(*args):
    proc = subprocess.run([sys.executable, "-m", "checkpoints_tools", *args], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]


def load_dir(path):
    out = {}
    for f in sorted(path.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def tokens_for(vocab):
    g = torch.Generator().manual_seed(7)
    return torch.randint(0, vocab, (2, 16), generator=g)


@pytest.mark.parametrize("arch_name", ["tiny-yi"])
def test_llama_import_logits_and_export_round_trip(tmp_path, arch_name):
    norm_head = arch_name.startswith("tiny-baichuan")
    hf = H.tiny_hf_llama(arch_name, normalise_head=norm_head)
    hf.save_pretrained(tmp_path / "hf")
    cli("import", "--hf", str(tmp_path / "hf"), "--arch", arch_name, "--out", str(tmp_path / "mc"))
    info = json.loads((tmp_path / "mc" / "huatuo_checkpoint.json").read_text())
    assert info["arch"] == arch_name and info["vocab_size"] == hf.config.vocab_size

    tokens = tokens_for(hf.config.vocab_size)
    logits = run_distributed(H.megatron_logits, world_size=2, args=(str(tmp_path / "mc"), arch_name, 2, tokens))
    with torch.no_grad():
        ref = hf(tokens).logits
    for rank_logits in logits:
        torch.testing.assert_close(rank_logits, ref, rtol=1e-4, atol=1e-4)

    cli("export", "--ckpt", str(tmp_path / "mc"), "--arch", arch_name, "--out", str(tmp_path / "back"))
    back = load_dir(tmp_path / "back")
    orig = {k: v for k, v in hf.state_dict().items() if "rotary" not in k}
    assert set(back) == set(orig)
    for k, v in orig.items():
        if k == "lm_head.weight" and norm_head:  # re-normalised at export: equal up to rounding
            torch.testing.assert_close(back[k], v, rtol=0, atol=1e-6)
        else:
            assert torch.equal(back[k], v), k
    reloaded = transformers.LlamaForCausalLM.from_pretrained(str(tmp_path / "back")).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(tokens).logits, ref, rtol=1e-4, atol=1e-4)


def test_baichuan_w_pack_round_trip(tmp_path):
    arch_name = "tiny-baichuan2-7b"
    hf = H.tiny_hf_llama(arch_name, seed=3, normalise_head=True)
    saved = H.save_as_baichuan(hf, tmp_path / "hf")
    cli("import", "--hf", str(tmp_path / "hf"), "--arch", arch_name, "--out", str(tmp_path / "mc"))
    cli("export", "--ckpt", str(tmp_path / "mc"), "--arch", arch_name, "--format", "baichuan",
        "--out", str(tmp_path / "back"))
    back = load_dir(tmp_path / "back")
    assert set(back) == set(saved)
    for k, v in saved.items():
        assert torch.equal(back[k], v), k
    config = json.loads((tmp_path / "back" / "config.json").read_text())
    assert config["architectures"] == ["BaichuanForCausalLM"] and "AutoModelForCausalLM" in config["auto_map"]

    # the same checkpoint as plain Llama: NormHead folded, the rest bit-identical to the HF Llama it came from
    cli("export", "--ckpt", str(tmp_path / "mc"), "--arch", arch_name, "--out", str(tmp_path / "llama"))
    as_llama = load_dir(tmp_path / "llama")
    for k, v in hf.state_dict().items():
        if "rotary" in k:
            continue
        if k == "lm_head.weight":
            torch.testing.assert_close(as_llama[k], v, rtol=0, atol=1e-6)
        else:
            assert torch.equal(as_llama[k], v), k
    reloaded = transformers.LlamaForCausalLM.from_pretrained(str(tmp_path / "llama")).eval()
    tokens = tokens_for(hf.config.vocab_size)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(tokens).logits, hf(tokens).logits, rtol=1e-4, atol=1e-4)


def test_alibi_training_checkpoint_tp2_export_reimport(tmp_path):
    """Baichuan2-13B (ALiBi, 6 heads): a TP=2 checkpoint.dir -> export (baichuan format, latest iteration) ->
    import -> TP=1 logits equal the TP=2 model's."""
    arch_name = "tiny-baichuan2-13b"
    tokens = tokens_for(512)
    ref = run_distributed(H.save_training_style, world_size=2, args=(str(tmp_path / "run"), arch_name, 3, tokens))[0]
    cli("export", "--ckpt", str(tmp_path / "run"), "--arch", arch_name, "--out", str(tmp_path / "hf"))
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["architectures"] == ["BaichuanForCausalLM"]
    assert "model.layers.0.self_attn.W_pack.weight" in load_dir(tmp_path / "hf")
    cli("import", "--hf", str(tmp_path / "hf"), "--arch", arch_name, "--out", str(tmp_path / "mc"))
    (logits,) = run_distributed(H.megatron_logits, world_size=1, args=(str(tmp_path / "mc"), arch_name, 1, tokens))
    torch.testing.assert_close(logits, ref, rtol=1e-4, atol=1e-4)


def test_bad_inputs_name_the_problem(tmp_path):
    from checkpoints_tools import convert

    with pytest.raises(FileNotFoundError, match="not found"):
        convert.resolve_checkpoint(str(tmp_path / "nope"))
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / convert.MARKER).write_text("abc")
    with pytest.raises(ValueError, match="latest_checkpointed_iteration.txt"):
        convert.resolve_checkpoint(str(tmp_path / "run"))


@pytest.mark.slow
def test_export_of_a_real_trainer_checkpoint(tmp_path, repo_root):
    """The trainer's own checkpoint.dir (TP=2, optimizer state inside) exports to a Llama that transformers loads
    and that gives the logits of the megatron model loaded from that checkpoint."""
    from megatron_huatuo.runtime.distributed import free_port

    arch_name = "tiny-baichuan2-7b"
    train = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(free_port()),
         "-m", "megatron_huatuo.train", "--config", str(repo_root / "megatron_huatuo/recipes/tiny-baichuan2-7b-tp2.yaml"),
         f"checkpoint.dir={tmp_path / 'ck'}", "checkpoint.interval=2", "train.steps=2"],
        capture_output=True, text=True, timeout=300)
    assert train.returncode == 0, train.stderr[-4000:]
    cli("export", "--ckpt", str(tmp_path / "ck"), "--arch", arch_name, "--out", str(tmp_path / "hf"))
    tokens = tokens_for(512)
    (ref,) = run_distributed(H.megatron_logits, world_size=1,
                             args=(str(tmp_path / "ck" / "iter_0000002"), arch_name, 1, tokens))
    reloaded = transformers.LlamaForCausalLM.from_pretrained(str(tmp_path / "hf")).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(tokens).logits, ref, rtol=1e-4, atol=1e-4)


def test_cli_reports_bad_input_in_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "checkpoints_tools", "export", "--ckpt", str(tmp_path / "none"),
                           "--arch", "tiny-yi", "--out", str(tmp_path / "o")], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert "checkpoint directory not found" in proc.stderr and "Traceback" not in proc.stderr


def _ckpt_cli(*args):
    return subprocess.run([sys.executable, "-m", "checkpoints_tools", *map(str, args)], capture_output=True,
                          text=True, timeout=300)


def test_bad_hf_directories_are_named_and_leave_no_output(tmp_path):
    """A missing shard, a tensor whose shape contradicts the config (found half-way through the streaming save),
    an unknown architecture: exit 2, one line naming the file/tensor/arch, and no output directory at all."""
    from safetensors.torch import save_file

    hf = H.tiny_hf_llama("tiny-yi")
    hf.save_pretrained(tmp_path / "sharded", max_shard_size="40KB")
    shards = sorted((tmp_path / "sharded").glob("model-*.safetensors"))
    assert len(shards) > 2
    shards[1].unlink()
    proc = _ckpt_cli("import", "--hf", tmp_path / "sharded", "--arch", "tiny-yi", "--out", tmp_path / "out1")
    assert proc.returncode == 2 and shards[1].name in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert not (tmp_path / "out1").exists()

    hf.save_pretrained(tmp_path / "bad_shape")
    state = load_file(str(tmp_path / "bad_shape" / "model.safetensors"))
    last = f"model.layers.{hf.config.num_hidden_layers - 1}.mlp.down_proj.weight"
    state[last] = state[last][:, :-1].contiguous()
    save_file(state, str(tmp_path / "bad_shape" / "model.safetensors"), metadata={"format": "pt"})
    proc = _ckpt_cli("import", "--hf", tmp_path / "bad_shape", "--arch", "tiny-yi", "--out", tmp_path / "out2")
    assert proc.returncode == 2 and last in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert not (tmp_path / "out2").exists() and not list(tmp_path.glob(".out2*"))

    proc = _ckpt_cli("import", "--hf", tmp_path / "bad_shape", "--arch", "no-such-arch", "--out", tmp_path / "out3")
    assert proc.returncode == 2 and "no-such-arch" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert not (tmp_path / "out3").exists()


# Yi at PP=2 is the same mapping as Baichuan2-13B at PP=2 minus W_pack (its GQA import is checked against
# transformers' logits in test_llama_import_logits_and_export_round_trip): kept for `make test-all`, out of the
# timed suite.
@pytest.mark.parametrize("arch_name,tp,pp", [pytest.param("tiny-yi", 1, 2, marks=pytest.mark.slow),
                                             ("tiny-baichuan2-7b", 2, 1),
                                             ("tiny-baichuan2-13b", 1, 2)])
def test_round_trip_through_a_tp2_or_pp2_checkpoint_is_bit_identical(tmp_path, arch_name, tp, pp):
    """HF -> import -> loaded and saved again by 2 ranks at TP=2 or PP=2 -> export: every HF tensor bit-identical
    (Baichuan families in their own W_pack layout, raw NormHead; Yi as Llama)."""
    baichuan = arch_name.startswith("tiny-baichuan")
    hf = H.tiny_hf_llama(arch_name, seed=5, normalise_head=False)
    if baichuan:
        saved = H.save_as_baichuan(hf, tmp_path / "hf")
    else:
        hf.save_pretrained(tmp_path / "hf")
        saved = {k: v for k, v in hf.state_dict().items() if "rotary" not in k}
    cli("import", "--hf", str(tmp_path / "hf"), "--arch", arch_name, "--out", str(tmp_path / "mc"))
    run_distributed(H.reshard_through, world_size=tp * pp, args=(str(tmp_path / "mc"), str(tmp_path / "run"),
                                                                 arch_name, tp, pp))
    cli("export", "--ckpt", str(tmp_path / "run"), "--arch", arch_name, "--out", str(tmp_path / "back"),
        *(["--format", "baichuan"] if baichuan else []))
    back = load_dir(tmp_path / "back")
    assert set(back) == set(saved)
    for k, v in saved.items():
        assert torch.equal(back[k], v), k
