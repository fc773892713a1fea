"""Submitting training to Slurm: the layout from the recipe, the command for ``slurm/train.sbatch``."""
