"""CLI: ``python -m megatron_huatuo.train --config RECIPE.yaml [dotted.key=value ...]`` under torchrun or srun.

Exits 0 when the recipe's steps are done, 75 after a SIGTERM/SIGUSR1 (checkpoint saved; rerun to resume),
2 on a bad recipe (message names the file and field, before any process-group work).
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
    from megatron_huatuo.training.loop import train

    try:
        return train(recipe, log=lambda msg: print(msg, flush=True)).exit_code
    except RecipeError as exc:  # settings this machine cannot run (e.g. model.attention_backend=flex on CPU)
        print(f"error: {args.config}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
