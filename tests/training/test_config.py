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
