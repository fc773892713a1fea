"""CLI: ``python -m megatron_huatuo.train --config RECIPE.yaml [dotted.key=value ...]`` under torchrun or srun.

Exits 0 when the recipe's steps are done, 75 after a SIGTERM/SIGUSR1 (checkpoint saved; rerun to resume),
2 on a bad recipe (message names the file and field, before any process-group work), a dataset the model cannot
train on (truncated files, token ids past the model's vocabulary; checked before the model is built) or a refused
checkpoint directory (held by another trainer, files not matching their manifest, unsafe pickle content), 3 when the
loss or gradients stay NaN/Inf for ``train.max_nonfinite_steps`` steps or the model to save is not finite (nothing
saved).
"""
from __future__ import annotations

import argparse
import sys

from megatron_huatuo.config.recipe import RecipeError, load_recipe


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m megatron_huatuo.train", description=__doc__)
    parser.add_argument("--config", required=True, help="recipe YAML")
    parser.add_argument("overrides", nargs="*", help="dotted.key=value overrides, e.g. train.steps=10")
    args = parser.parse_args(argv)
    try:
        recipe = load_recipe(args.config, args.overrides)
    except RecipeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from megatron_huatuo.data.indexed_files import DatasetError
    from megatron_huatuo.training.dcp_io import UnsafeCheckpointError
    from megatron_huatuo.training.loop import CheckpointDirBusy, train
    from megatron_huatuo.training.manifest import CheckpointIntegrityError
    from megatron_huatuo.training.nonfinite import NonFiniteError

    try:
        return train(recipe, log=lambda msg: print(msg, flush=True)).exit_code
    except RecipeError as exc:  # settings this machine cannot run (e.g. model.attention_backend=flex on CPU)
        print(f"error: {args.config}: {exc}", file=sys.stderr)
        return 2
    except (DatasetError, CheckpointDirBusy, CheckpointIntegrityError, UnsafeCheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)  # one line naming the file, field or holder
        return 2
    except NonFiniteError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
