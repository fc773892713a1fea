"""ArchSpec from a Hugging Face config.json: what is read, what is refused (by name), and the comparison with a
named arch. Pure Python (no megatron-core, no model): the configs are transformers' own or released ones."""
from __future__ import annotations

import json

import pytest

from huatuo_testing import shared_file
from megatron_huatuo.config import RecipeError, load_recipe
from megatron_huatuo.models import hf_config as hfc
from megatron_huatuo.models.layout import stage_layers
from megatron_huatuo.models.registry import get_arch

transformers = pytest.importorskip("transformers")

# Yi-34B's released config.json (transformers 4.x spelling: rope_theta, rope_scaling)
YI_34B = {"architectures": ["LlamaForCausalLM"], "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu",
          "hidden_size": 7168, "initializer_range": 0.02, "intermediate_size": 20480,
          "max_position_embeddings": 4096, "model_type": "llama", "num_attention_heads": 56,
          "num_hidden_layers": 60, "num_key_value_heads": 8, "pad_token_id": 0, "pretraining_tp": 1,
          "rms_norm_eps": 1e-05, "rope_scaling": None, "rope_theta": 5000000.0, "tie_word_embeddings": False,
          "torch_dtype": "bfloat16", "transformers_version": "4.34.0", "use_cache": True, "vocab_size": 64000}


def write(tmp_path, config, name="m"):
    d = tmp_path / name
    d.mkdir(exist_ok=True)
    (d / "config.json").write_text(json.dumps(config))
    return d


def saved(tmp_path, config, name="m"):
    """A transformers config object saved with save_pretrained (transformers 5.x spelling)."""
    config.save_pretrained(tmp_path / name)
    return tmp_path / name


def test_released_configs_equal_the_presets(tmp_path):
    yi = hfc.arch_from_config(write(tmp_path, YI_34B))
    assert hfc.mismatches(get_arch("yi-34b"), yi) == [] and yi.family == "llama"
    b7 = hfc.arch_from_config(shared_file("model_configs/baichuan2-7b.config.json"))
    assert hfc.mismatches(get_arch("baichuan2-7b"), b7) == []
    assert (b7.family, b7.norm_head, b7.position_embedding, b7.vocab_size) == ("baichuan2", True, "rope", 125696)
    # named and read agree: the preset comes back with the config's vocabulary
    assert hfc.arch_from_config(write(tmp_path, YI_34B), get_arch("yi-34b")).name == "yi-34b"


def test_transformers_5_configs(tmp_path):
    llama = hfc.arch_from_config(saved(tmp_path, transformers.LlamaConfig(
        vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=5, num_attention_heads=8,
        num_key_value_heads=2, max_position_embeddings=16384, tie_word_embeddings=True,
        rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})))
    assert (llama.num_layers, llama.num_query_groups, llama.tie_embeddings, llama.rope_scaling_factor,
            llama.rotary_base, llama.vocab_size) == (5, 2, True, 32.0, 500000.0, 300)
    qwen = hfc.arch_from_config(saved(tmp_path, transformers.Qwen2Config(
        vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2), "q"))
    assert qwen.qkv_bias and qwen.family == "qwen2" and qwen.hf_architecture == "Qwen2ForCausalLM"
    mistral = hfc.arch_from_config(saved(tmp_path, transformers.MistralConfig(
        vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=32, sliding_window=None), "s"))
    assert mistral.head_dim == 32 and mistral.kv_channels == 32


def test_transformers_4_rope_spelling(tmp_path):
    config = dict(YI_34B, rope_theta=500000.0, max_position_embeddings=131072,
                  rope_scaling={"type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                "original_max_position_embeddings": 8192})
    assert hfc.arch_from_config(write(tmp_path, config)).rope_scaling_factor == 8.0


@pytest.mark.parametrize("change, message", [
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "rope scaling type 'yarn'"),
    ({"rope_scaling": {"rope_type": "linear", "factor": 2.0}}, "rope scaling type 'linear'"),
    ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "original_max_position_embeddings": 4096}},
     "original_max_position_embeddings=4096"),
    ({"num_local_experts": 8}, "num_local_experts=8: mixture of experts"),
    ({"quantization_config": {"quant_method": "gptq"}}, "quantization_config"),
    ({"hidden_act": "gelu"}, "hidden_act 'gelu'"),
    ({"attention_bias": True}, "attention_bias=true"),
    ({"mlp_bias": True}, "mlp_bias=true"),
    ({"some_new_switch": 1}, "unsupported key(s) some_new_switch"),
    ({"architectures": ["LlamaForSequenceClassification"]}, "LlamaForSequenceClassification"),
    ({"model_type": "gemma"}, "model_type 'gemma'"),
    ({"num_hidden_layers": None}, "num_hidden_layers is missing"),
])
def test_unsupported_llama_features_are_refused_by_name(tmp_path, change, message):
    with pytest.raises(hfc.HFConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        hfc.arch_from_config(write(tmp_path, dict(YI_34B, **change)))


def test_sliding_windows_are_refused(tmp_path):
    mistral = transformers.MistralConfig(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, sliding_window=4096)
    with pytest.raises(hfc.HFConfigError, match="sliding_window=4096"):
        hfc.arch_from_config(saved(tmp_path, mistral))
    qwen = transformers.Qwen2Config(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                    num_attention_heads=4, num_key_value_heads=2, use_sliding_window=True,
                                    sliding_window=64, max_window_layers=1)
    with pytest.raises(hfc.HFConfigError, match="use_sliding_window=true|sliding_attention"):
        hfc.arch_from_config(saved(tmp_path, qwen, "q"))


def test_named_arch_is_compared_field_by_field(tmp_path):
    d = write(tmp_path, dict(YI_34B, num_hidden_layers=59, num_key_value_heads=56, rms_norm_eps=1e-6))
    with pytest.raises(hfc.HFConfigError) as err:
        hfc.arch_from_config(d, get_arch("yi-34b"))
    for part in ("num_layers: 60 vs 59", "num_query_groups: 8 vs 56", "norm_eps: 1e-05 vs 1e-06"):
        assert part in str(err.value)
    with pytest.raises(hfc.HFConfigError, match="tie_embeddings: False vs True"):
        hfc.arch_from_config(write(tmp_path, dict(YI_34B, tie_word_embeddings=True), "t"), get_arch("yi-34b"))


BAICHUAN_13B = {"architectures": ["BaichuanForCausalLM"], "model_type": "baichuan", "hidden_size": 5120,
                "intermediate_size": 13696, "model_max_length": 4096, "num_attention_heads": 40,
                "num_hidden_layers": 40, "rms_norm_eps": 1e-6, "vocab_size": 125696, "hidden_act": "silu",
                "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0,
                "auto_map": {"AutoConfig": "configuration_baichuan.BaichuanConfig"}}


def test_baichuan_position_and_head_from_config_and_modeling_file(tmp_path):
    b13 = hfc.arch_from_config(write(tmp_path, BAICHUAN_13B))
    assert hfc.mismatches(get_arch("baichuan2-13b"), b13) == [] and b13.position_embedding == "alibi"

    tiny = dict(BAICHUAN_13B, hidden_size=96, intermediate_size=160, num_attention_heads=6, num_hidden_layers=4,
                vocab_size=512, model_max_length=256)
    d = write(tmp_path, tiny, "tiny")
    with pytest.raises(hfc.HFConfigError, match="norm_head: cannot tell Baichuan2"):
        hfc.arch_from_config(d)  # not the Baichuan2 vocabulary and no modeling file
    assert hfc.arch_from_config(d, get_arch("tiny-baichuan2-13b")).name == "tiny-baichuan2-13b"
    (d / "modeling_baichuan.py").write_text("def _get_interleave(n): ...\ndef _gen_alibi_mask(): ...\n"
                                            "class NormHead: ...\n")
    arch = hfc.arch_from_config(d)
    assert (arch.position_embedding, arch.norm_head) == ("alibi", True)
    (d / "modeling_baichuan.py").write_text("class RotaryEmbedding: ...\nclass NormHead: ...\n")
    with pytest.raises(hfc.HFConfigError, match="the config says alibi .* implements rope"):
        hfc.arch_from_config(d)
    neither = {k: v for k, v in tiny.items() if k != "model_max_length"}
    (d / "modeling_baichuan.py").unlink()
    with pytest.raises(hfc.HFConfigError, match="cannot tell RoPE"):
        hfc.arch_from_config(write(tmp_path, neither, "neither"))
    with pytest.raises(hfc.HFConfigError, match="z_loss_weight"):
        hfc.arch_from_config(write(tmp_path, dict(BAICHUAN_13B, z_loss_weight=1e-4), "z"))


@pytest.mark.parametrize("args, expected", [((5, 2, None, 3), [3, 2]), ((5, 2, None, None, 2), [3, 2]),
                                            ((6, 4, None, 1, 1), [1, 2, 2, 1]), ((8, 2, 2, 6, 2), [6, 2]),
                                            ((4, 2), [2, 2])])
def test_pipeline_stage_layers(args, expected):
    assert stage_layers(*args) == expected


@pytest.mark.parametrize("args, message", [((5, 2), "set parallel.first_stage_layers"),
                                           ((5, 2, 2, 3), "first_stage_layers=3 is not divisible by parallel.vpp=2"),
                                           ((5, 2, None, 4, 2), "leave -1 layers"),
                                           ((7, 4, None, 1, 1), "do not split evenly"),
                                           ((4, 1, None, 2), "need parallel.pp >= 2")])
def test_pipeline_stage_layers_refused(args, message):
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        stage_layers(*args)


def test_recipe_hf_config_and_uneven_pipeline(tmp_path):
    d = saved(tmp_path, transformers.LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=96,
                                                 num_hidden_layers=5, num_attention_heads=8, num_key_value_heads=2,
                                                 max_position_embeddings=512, tie_word_embeddings=True))
    with pytest.raises(RecipeError, match=r"parallel\.pp: .*5 layers"):
        load_recipe(None, [f"model.hf_config={d}", "parallel.pp=2"])
    recipe = load_recipe(None, [f"model.hf_config={d / 'config.json'}", "parallel.pp=2",
                                "parallel.first_stage_layers=3"], world_size=2)
    assert recipe.parallel.first_stage_layers == 3
    with pytest.raises(RecipeError, match="model.arch or by model.hf_config, not both"):
        load_recipe(None, ["model.arch=tiny-yi", f"model.hf_config={d}"])
    with pytest.raises(RecipeError, match=r"model\.hf_config: .*not found"):
        load_recipe(None, [f"model.hf_config={tmp_path / 'none'}"])
    # an import that recorded another architecture is refused before any process starts
    imported = tmp_path / "imported"
    hfc.record(imported.mkdir() or imported, get_arch("tiny-yi"), {"arch": "tiny-yi"})
    with pytest.raises(RecipeError, match=r"checkpoint\.pretrained: .*num_layers: 5 vs 4"):
        load_recipe(None, [f"model.hf_config={d}", f"checkpoint.pretrained={imported}"])
    assert load_recipe(None, [f"model.hf_config={imported}"]).model.hf_config == str(imported)


def test_export_helpers(tmp_path):
    from checkpoints_tools import convert

    src = tmp_path / "released"
    src.mkdir()
    for name in ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "tokenization_baichuan.py",
                 "pytorch_model-00001-of-00002.bin", "model.safetensors", "config.json", "modeling_baichuan.py"):
        (src / name).write_text("x")
    assert sorted(f.name for f in convert.tokenizer_files(src)) == [
        "special_tokens_map.json", "tokenization_baichuan.py", "tokenizer.model", "tokenizer_config.json"]
    b7 = get_arch("baichuan2-7b")
    generation = convert.generation_config(b7, {}, {})
    assert (generation["user_token_id"], generation["assistant_token_id"], generation["eos_token_id"]) == (195, 196, 2)
    config = convert.export_config(b7, "llama", "bfloat16", {})
    assert (config["bos_token_id"], config["eos_token_id"], config["model_type"]) == (1, 2, "llama")
    assert [convert.default_format(get_arch(n)) for n in ("baichuan2-7b", "baichuan2-13b", "yi-34b")] == [
        "llama", "baichuan", "llama"]
