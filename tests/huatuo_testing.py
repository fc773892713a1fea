"""Helpers every test area imports (``from huatuo_testing import shared_file``).

They live here rather than in ``conftest.py`` because several test folders have their own ``conftest.py`` and a
plain ``from conftest import ...`` would pick whichever one Python imported first.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO_PAIRS = REPO_ROOT / "demo" / "rewritten" / "pairs.jsonl"  # the bundled rewritten pairs
DEMO_SFT_EN = REPO_ROOT / "demo" / "sft" / "dialogues.en.sharegpt.jsonl"  # the bundled English SFT dialogues


def shared_data_dir() -> Path:
    """``$HUATUO_SHARED_DATA`` or ``<checkout>/../shared/data``."""
    env = os.environ.get("HUATUO_SHARED_DATA")
    return Path(env) if env else (REPO_ROOT.parent / "shared" / "data")


def shared_file(relative: str) -> Path:
    """Path of one shared data file, or skip the calling test naming the missing file."""
    path = shared_data_dir() / relative
    if not path.exists():
        pytest.skip(f"shared test data file missing: {path}")
    return path


def llama_config(arch):
    """A transformers ``LlamaConfig`` with the sizes of a registry ``ArchSpec`` (the independent HF reference)."""
    import transformers

    return transformers.LlamaConfig(
        vocab_size=arch.vocab_size, hidden_size=arch.hidden_size, intermediate_size=arch.ffn_hidden_size,
        num_hidden_layers=arch.num_layers, num_attention_heads=arch.num_attention_heads,
        num_key_value_heads=arch.num_query_groups, rms_norm_eps=arch.norm_eps,
        max_position_embeddings=arch.max_position_embeddings, tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": arch.rotary_base},
    )
