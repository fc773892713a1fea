"""Recipe errors name the file and the field, before any process-group work."""
from __future__ import annotations

from pathlib import Path

import pytest

from megatron_huatuo.config import RecipeError, load_recipe

RECIPES = Path(__file__).resolve().parents[2] / "megatron_huatuo" / "recipes"


def _write(tmp_path, text):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return path


def test_unknown_key_names_key_and_file(tmp_path):
    path = _write(tmp_path, "optimizer: {lerning_rate: 1.0e-4}\n")
    with pytest.raises(RecipeError, match=r"r\.yaml.*optimizer\.lerning_rate"):
        load_recipe(path)


def test_override_types_and_unknown(tmp_path):
    path = _write(tmp_path, "train: {steps: 3}\n")
    recipe = load_recipe(path, ["train.steps=7", "parallel.sp=false", "optimizer.lr=3e-4"])
    assert recipe.train.steps == 7 and recipe.optimizer.lr == pytest.approx(3e-4)
    with pytest.raises(RecipeError, match="train.stepz"):
        load_recipe(path, ["train.stepz=1"])
    with pytest.raises(RecipeError, match="train.steps: expected int"):
        load_recipe(path, ["train.steps=abc"])


@pytest.mark.parametrize("overrides, field", [
    (["model.arch=tiny-yi", "parallel.tp=4"], "parallel.tp"),  # 2 KV groups
    (["parallel.pp=3"], "parallel.pp"),  # 4 layers
    (["train.global_batch=6", "train.micro_batch=4"], "train.global_batch"),
    (["parallel.sp=true"], "parallel.sp"),
    (["train.precision=fp16"], "train.precision"),
    (["data.type=one_stage"], "data.path"),
    (["model.arch=no-such-model"], "model.arch"),
    (["data.isolate=false"], "data.isolate"),  # synthetic rows have nothing to isolate
    (["model.dropout=1.5"], "model.dropout"),
    (["data.valid_path=v"], "train.eval_interval: data.valid_path is set"),  # validation needs an interval
    (["train.eval_interval=5"], "data.valid_path: train.eval_interval=5 needs"),
    (["data.valid_path=v", "train.eval_interval=5", "train.eval_iters=-1"], "train.eval_iters"),
])
def test_impossible_layouts_name_the_field(overrides, field):
    with pytest.raises(RecipeError, match=field.replace(".", r"\.")):
        load_recipe(None, overrides)


def test_global_batch_checked_against_data_parallel():
    # world 4, tp 2 -> dp 2: 6 rows is not micro_batch(2) x dp(2) divisible
    with pytest.raises(RecipeError, match=r"train\.global_batch.*micro_batch\*dp=2\*2"):
        load_recipe(None, ["parallel.tp=2", "train.global_batch=6", "train.micro_batch=2"], world_size=4)


@pytest.mark.parametrize("name, world", [("tiny-baichuan2-7b-tp2", 2), ("tiny-yi-pp2", 2), ("baichuan2-7b", 8),
                                         ("baichuan2-13b", 8), ("yi-34b", 16)])
def test_bundled_recipes_validate(name, world):
    load_recipe(RECIPES / f"{name}.yaml", world_size=world)


def test_attention_path_follows_the_data():
    """Isolated packed samples need the segment mask; shared attention and synthetic rows take the causal path."""
    from megatron_huatuo.training.loop import uses_segment_mask

    assert not uses_segment_mask(load_recipe(None, []))
    one_stage = ["data.type=one_stage", "data.path=/data/ds"]
    assert uses_segment_mask(load_recipe(None, one_stage))
    assert not uses_segment_mask(load_recipe(None, one_stage + ["data.isolate=false"]))
    assert uses_segment_mask(load_recipe(None, ["data.type=indexed", "data.prefixes=/data/a"]))


@pytest.mark.parametrize("overrides, field, why", [
    (["model.attention_backend=fast"], "model.attention_backend", "expected one of auto|te|sdpa|flex|local"),
    (["model.attention_backend=flex", "model.dropout=0.1"], "model.attention_backend", "no attention dropout"),
    (["train.fp8_recipe=mxfp8"], "train.fp8_recipe", "expected delayed|tensorwise"),
    (["parallel.overlap_param_gather=true"], "parallel.overlap_param_gather", "distributed_optimizer: true"),
    (["parallel.bucket_size=0"], "parallel.bucket_size", "must be >= 1"),
])
def test_gpu_settings_name_the_key(overrides, field, why):
    with pytest.raises(RecipeError, match=rf"{field.replace('.', chr(92) + '.')}: .*{why}"):
        load_recipe(None, overrides)


def test_backends_missing_from_this_install_fail_fast_naming_the_key(monkeypatch):
    """te without Transformer Engine, flex on a torch without FlexAttention, fp8 without TE: one line, at load."""
    from megatron_huatuo.models.attention import resolve

    monkeypatch.setattr(resolve, "te_installed", lambda: False)
    with pytest.raises(RecipeError, match=r"model\.attention_backend: te needs Transformer Engine"):
        load_recipe(None, ["model.attention_backend=te"])
    with pytest.raises(RecipeError, match=r"train\.precision: fp8 needs Transformer Engine"):
        load_recipe(None, ["train.precision=fp8"])
    monkeypatch.setattr(resolve, "have_flex_attention", lambda: False)
    with pytest.raises(RecipeError, match=r"model\.attention_backend: flex needs torch\.nn\.attention\.flex_attention"):
        load_recipe(None, ["model.attention_backend=flex"])
    assert load_recipe(None, ["model.attention_backend=sdpa"]).model.attention_backend == "sdpa"


@pytest.mark.parametrize("arch, isolated, cuda, te, expected", [
    ("tiny-baichuan2-7b", False, False, False, "local"),  # CPU: the reference path
    ("tiny-baichuan2-13b", True, False, True, "local"),
    ("tiny-baichuan2-7b", False, True, False, "sdpa"),  # CUDA, causal RoPE rows: flash through SDPA
    ("tiny-yi", True, True, False, "flex"),  # isolated packing: document BlockMask
    ("tiny-baichuan2-13b", False, True, False, "flex"),  # ALiBi: score_mod
    ("tiny-baichuan2-13b", True, True, True, "te"),  # Transformer Engine installed on CUDA
])
def test_auto_backend_rule(monkeypatch, arch, isolated, cuda, te, expected):
    from megatron_huatuo.models.attention import resolve
    from megatron_huatuo.models.registry import get_arch

    monkeypatch.setattr(resolve, "te_installed", lambda: te)
    got = resolve.build_kwargs("auto", get_arch(arch), isolated=isolated, training=True, cuda=cuda)
    assert got == dict(attention_backend=expected, masked_segments=isolated,
                       transformer_impl="transformer_engine" if expected == "te" else "local")
    with pytest.raises(resolve.AttentionBackendError, match="flex cannot train on CPU"):
        resolve.resolve_backend("flex", get_arch(arch), training=True, cuda=False)
    assert resolve.resolve_backend("flex", get_arch(arch), training=False, cuda=False) == "flex"  # scoring: fine
