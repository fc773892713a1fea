"""Bring your own base model: tiny random models built with transformers' own classes (LlamaForCausalLM with GQA,
llama3 rope scaling and tied embeddings; MistralForCausalLM; Qwen2ForCausalLM with q/k/v biases), imported
WITHOUT --arch (config.json decides), must give transformers' logits at TP1, TP2 and an uneven PP2, export back
bit-identical and load in transformers; a mismatching --arch is refused naming the fields.
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

NAMES = ["llama", "mistral", "qwen2"]
FIRST_STAGE = {"llama": 3, "mistral": 2, "qwen2": 2}  # 5 layers as 3 + 2; 3 layers as 2 + 1


def cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "checkpoints_tools", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout)


def load_dir(path):
    out = {}
    for f in sorted(path.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


@pytest.fixture(scope="module")
def byom(tmp_path_factory):
    """The three source models saved with save_pretrained, imported without --arch, and their reference logits."""
    root = tmp_path_factory.mktemp("byom")
    g = torch.Generator().manual_seed(3)
    tokens = torch.randint(0, 256, (2, 12), generator=g)
    models, refs = {}, {}
    for i, name in enumerate(NAMES):
        model = H.byom_hf_model(name, seed=i)
        model.save_pretrained(root / name)
        with torch.no_grad():
            refs[name] = model(tokens).logits
        models[name] = model
    jobs = [(str(root / n), str(root / f"{n}.mc")) for n in NAMES]
    (tp1,) = run_distributed(H.byom_import_and_tp1, world_size=1, args=(jobs, tokens), timeout=600)
    return dict(root=root, tokens=tokens, models=models, refs=refs, tp1=dict(zip(NAMES, tp1)))


def test_import_reads_config_json(byom):
    llama = json.loads((byom["root"] / "llama.mc" / "huatuo_checkpoint.json").read_text())["arch_spec"]
    assert (llama["num_layers"], llama["num_query_groups"], llama["tie_embeddings"], llama["rope_scaling_factor"],
            llama["rotary_base"]) == (5, 2, True, 8.0, 500000.0)
    mistral = json.loads((byom["root"] / "mistral.mc" / "huatuo_checkpoint.json").read_text())["arch_spec"]
    assert (mistral["family"], mistral["kv_channels"]) == ("mistral", 24)
    qwen2 = json.loads((byom["root"] / "qwen2.mc" / "huatuo_checkpoint.json").read_text())["arch_spec"]
    assert (qwen2["family"], qwen2["qkv_bias"], qwen2["rotary_base"]) == ("qwen2", True, 1e6)
    for name in NAMES:  # the source config travels with the import (export and training read it back)
        assert (byom["root"] / f"{name}.mc" / "config.json").read_text() == (byom["root"] / name / "config.json"
                                                                           ).read_text()


@pytest.mark.parametrize("name", NAMES)
def test_tp1_logits_equal_transformers(byom, name):
    torch.testing.assert_close(byom["tp1"][name], byom["refs"][name], rtol=5e-5, atol=5e-5)


def test_tp2_and_uneven_pp2_logits_equal_transformers(byom):
    dirs = [str(byom["root"] / f"{n}.mc") for n in NAMES]
    ranks = run_distributed(H.byom_tp2_and_uneven_pp2, world_size=2,
                            args=(dirs, byom["tokens"], [FIRST_STAGE[n] for n in NAMES]), timeout=600)
    for rank, (tp2, pp2) in enumerate(ranks):
        for name, logits in zip(NAMES, tp2):
            torch.testing.assert_close(logits, byom["refs"][name], rtol=5e-5, atol=5e-5, msg=f"TP2 {name}")
        for name, logits in zip(NAMES, pp2):
            if rank == 1:  # last stage: 3 + 2 (llama) or 2 + 1 layers
                torch.testing.assert_close(logits, byom["refs"][name], rtol=5e-5, atol=5e-5, msg=f"PP2 {name}")
            else:
                assert logits is None


def test_export_is_bit_identical_and_loads_in_transformers(byom):
    root = byom["root"]
    run_distributed(H.byom_export, world_size=1, args=([(str(root / f"{n}.mc"), str(root / f"{n}.hf"))
                                                       for n in NAMES],), timeout=600)
    for name in NAMES:
        source = load_dir(root / name)
        back = load_dir(root / f"{name}.hf")
        assert set(back) == set(source), name  # tied llama: no lm_head.weight on either side
        for k, v in source.items():
            assert torch.equal(back[k], v), (name, k)
        config = json.loads((root / f"{name}.hf" / "config.json").read_text())
        assert config["model_type"] == name and "bos_token_id" in config and "eos_token_id" in config
        generation = json.loads((root / f"{name}.hf" / "generation_config.json").read_text())
        assert generation == json.loads((root / name / "generation_config.json").read_text())
        reloaded = transformers.AutoModelForCausalLM.from_pretrained(str(root / f"{name}.hf")).eval()
        with torch.no_grad():
            torch.testing.assert_close(reloaded(byom["tokens"]).logits, byom["refs"][name], rtol=1e-5, atol=1e-5)


def test_mismatching_arch_is_refused_by_field(byom, tmp_path):
    """A 5-layer, 8-head llama imported as the 4-layer tiny-yi preset: refused naming the fields, nothing written."""
    proc = cli("import", "--hf", byom["root"] / "llama", "--arch", "tiny-yi", "--out", tmp_path / "o")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    for field in ("num_layers: 4 vs 5", "tie_embeddings: False vs True", "rotary_base", "rope_scaling_factor"):
        assert field in proc.stderr, proc.stderr
    assert not (tmp_path / "o").exists()

    # a config.json that contradicts the weights: one layer dropped from the config
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "model.safetensors").symlink_to(byom["root"] / "qwen2" / "model.safetensors")
    config = json.loads((byom["root"] / "qwen2" / "config.json").read_text())
    config.update(num_hidden_layers=2, layer_types=["full_attention"] * 2)
    (bad / "config.json").write_text(json.dumps(config))
    proc = cli("import", "--hf", bad, "--out", tmp_path / "o2")
    assert proc.returncode == 2 and "model.layers.2." in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert not (tmp_path / "o2").exists()

    # export: an --arch that contradicts what the import recorded
    proc = cli("export", "--ckpt", byom["root"] / "mistral.mc", "--arch", "tiny-yi", "--out", tmp_path / "o3")
    assert proc.returncode == 2 and "num_layers" in proc.stderr and "head_dim: 8 vs 24" in proc.stderr, proc.stderr
