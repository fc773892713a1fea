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


SEQ, GLOBAL_BATCH = 16, 4
# trained 3 steps from each import, each at another layout (world 2): tied llama at an uneven PP=2 (megatron-core's
# shared embedding across stages), mistral at TP=2, qwen2 at DP=2 with the distributed optimizer
LAYOUTS = {"llama": ["parallel.pp=2", "parallel.first_stage_layers=3"], "mistral": ["parallel.tp=2"],
           "qwen2": ["parallel.distributed_optimizer=true"]}


@pytest.fixture(scope="module")
def byom(tmp_path_factory):
    """The three source models saved with save_pretrained, imported without --arch and exported back (one spawned
    process), then loaded at TP2 / uneven PP2 and trained (two spawned processes)."""
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
    jobs = [(str(root / n), str(root / f"{n}.mc"), str(root / f"{n}.hf")) for n in NAMES]
    (tp1,) = run_distributed(H.byom_import_tp1_export, world_size=1, args=(jobs, tokens), timeout=600)
    common = [f"train.steps=3", f"train.global_batch={GLOBAL_BATCH}", "train.micro_batch=1",
              f"train.seq_length={SEQ}", "data.type=synthetic", "data.repeat=2", "optimizer.lr=1e-3",
              "schedule.warmup_fraction=0"]
    trainings = [common + LAYOUTS[n] + [f"model.hf_config={root / f'{n}.mc'}",
                                        f"checkpoint.pretrained={root / f'{n}.mc'}",
                                        f"checkpoint.dir={root / f'{n}.run'}"] for n in NAMES]
    ranks = run_distributed(H.byom_parallel_and_train, world_size=2,
                            args=([j[1] for j in jobs], tokens, [FIRST_STAGE[n] for n in NAMES], trainings),
                            timeout=900)
    return dict(root=root, tokens=tokens, models=models, refs=refs, tp1=dict(zip(NAMES, tp1)), ranks=ranks)


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
    for rank, (tp2, pp2, _) in enumerate(byom["ranks"]):
        for name, logits in zip(NAMES, tp2):
            torch.testing.assert_close(logits, byom["refs"][name], rtol=5e-5, atol=5e-5, msg=f"TP2 {name}")
        for name, logits in zip(NAMES, pp2):
            if rank == 1:  # last stage: 3 + 2 (llama) or 2 + 1 layers
                torch.testing.assert_close(logits, byom["refs"][name], rtol=5e-5, atol=5e-5, msg=f"PP2 {name}")
            else:
                assert logits is None


def test_export_is_bit_identical_and_loads_in_transformers(byom):
    root = byom["root"]
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


@pytest.mark.parametrize("name", NAMES)
def test_three_training_steps_from_each_import(byom, name):
    """The first step's loss is the transformers model's loss on the same first global batch (the trainer loaded
    the import at its layout), and training moves it; the run records the arch for export."""
    from megatron_huatuo.data.synthetic import SyntheticDataset

    from megatron_huatuo.config.recipe import TrainSection

    data = SyntheticDataset(256, SEQ, 3 * GLOBAL_BATCH, seed=TrainSection().seed, repeat=2)
    rows = [data[i] for i in range(GLOBAL_BATCH)]
    tokens, labels = torch.stack([r["tokens"] for r in rows]), torch.stack([r["labels"] for r in rows])
    with torch.no_grad():
        logits = byom["models"][name](tokens).logits
    expected = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1)).item()
    losses = byom["ranks"][1][2][NAMES.index(name)]  # rank 1: the last pipeline stage
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    assert losses[0] == pytest.approx(expected, rel=1e-5)
    assert losses[2] < losses[0]
    recorded = json.loads((byom["root"] / f"{name}.run" / "huatuo_checkpoint.json").read_text())["arch_spec"]
    imported = json.loads((byom["root"] / f"{name}.mc" / "huatuo_checkpoint.json").read_text())["arch_spec"]
    assert recorded == imported


def test_mismatching_arch_is_refused_by_field(byom, tmp_path):
    """A 5-layer, 8-head, tied llama imported as the 4-layer tiny-yi preset: refused naming the fields, exit 2,
    nothing written; a config.json that contradicts the weights; an export --arch against the recorded arch."""
    from checkpoints_tools import convert

    proc = cli("import", "--hf", byom["root"] / "llama", "--arch", "tiny-yi", "--out", tmp_path / "o")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    for field in ("num_layers: 4 vs 5", "tie_embeddings: False vs True", "rotary_base", "rope_scaling_factor"):
        assert field in proc.stderr, proc.stderr
    assert not (tmp_path / "o").exists()

    bad = tmp_path / "bad"  # one layer dropped from the config: the weights of layer 2 have no place
    bad.mkdir()
    (bad / "model.safetensors").symlink_to(byom["root"] / "qwen2" / "model.safetensors")
    config = json.loads((byom["root"] / "qwen2" / "config.json").read_text())
    config.update(num_hidden_layers=2, layer_types=["full_attention"] * 2)
    (bad / "config.json").write_text(json.dumps(config))
    proc = cli("import", "--hf", bad, "--out", tmp_path / "o2")
    assert proc.returncode == 2 and "model.layers.2." in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert not (tmp_path / "o2").exists()

    with pytest.raises(ValueError, match=r"num_layers: 4 vs 3.*head_dim: 8 vs 24"):
        convert.export(str(byom["root"] / "mistral.mc"), "tiny-yi", str(tmp_path / "o3"))
    assert not (tmp_path / "o3").exists()


REMOTE_CONFIG = """from transformers import PretrainedConfig


class BaichuanConfig(PretrainedConfig):
    model_type = "baichuan"
"""
REMOTE_MODEL = """import torch
from transformers import PreTrainedModel

from .configuration_baichuan import BaichuanConfig


class BaichuanForCausalLM(PreTrainedModel):
    config_class = BaichuanConfig

    def __init__(self, config):
        super().__init__(config)
        self.unused = torch.nn.Linear(1, 1)
        self.post_init()

    def forward(self, input_ids, **kwargs):  # what Baichuan2-7B's code does on transformers 5.x: no rotary cache
        raise TypeError("'NoneType' object is not subscriptable")
"""


def test_verify_reports_a_crashing_reference_model_in_one_line(byom, tmp_path):
    """Remote code that crashes in its forward pass: exit 2 and one error line (exit 1 means a tolerance failure);
    without the four remote-code files the directory is refused naming the missing ones."""
    hf = tmp_path / "baichuan"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({
        "architectures": ["BaichuanForCausalLM"], "model_type": "baichuan",
        "auto_map": {"AutoConfig": "configuration_baichuan.BaichuanConfig",
                     "AutoModelForCausalLM": "modeling_baichuan.BaichuanForCausalLM"}}))
    (hf / "configuration_baichuan.py").write_text(REMOTE_CONFIG)
    from checkpoints_tools.verify import _hf_kind

    with pytest.raises(ValueError, match="lacks modeling_baichuan.py, generation_utils.py, quantizer.py"):
        _hf_kind(hf)
    (hf / "modeling_baichuan.py").write_text(REMOTE_MODEL)
    for name in ("generation_utils.py", "quantizer.py"):
        (hf / name).write_text("")
    H.save_file({"unused.weight": torch.zeros(1, 1), "unused.bias": torch.zeros(1)}, str(hf / "model.safetensors"))
    proc = cli("verify", "--ckpt", byom["root"] / "llama.mc", "--hf", hf, "--tokens", 1, 2, 3, "--trust-remote-code")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert "Traceback" not in proc.stderr and "failed to load or run: TypeError" in lines[-1], proc.stderr
    assert "transformers 4.x" in lines[-1]


@pytest.mark.slow
def test_trained_run_exports_and_verifies_without_arch(byom, tmp_path):
    """The tied llama trained at an uneven PP=2: export and verify read the architecture the trainer recorded."""
    run = byom["root"] / "llama.run"
    proc = cli("export", "--ckpt", run, "--out", tmp_path / "hf")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "lm_head.weight" not in load_dir(tmp_path / "hf")
    ok = cli("verify", "--ckpt", run, "--hf", tmp_path / "hf", "--tol", "1e-4")
    assert ok.returncode == 0 and "OK" in ok.stdout, ok.stdout + ok.stderr[-3000:]
