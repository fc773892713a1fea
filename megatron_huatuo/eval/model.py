"""Loading the model under evaluation: a local Hugging Face directory, exported by ``checkpoints_tools`` or not.

Baichuan-style exports name their own modeling code in ``config.json``'s ``auto_map``; loading them needs
``trust_remote_code`` (off by default: it runs Python from the model directory). The tokenizer comes from the
model directory unless another one is named.
"""
from __future__ import annotations

from pathlib import Path

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_model_and_tokenizer(model_dir: str | Path, *, tokenizer_dir: str | Path | None = None,
                             trust_remote_code: bool = False, dtype: str = "float32", device: str = "cpu"):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir}: not a Hugging Face model directory (no config.json)")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {list(DTYPES)}, got {dtype!r}")
    tok_dir = Path(tokenizer_dir) if tokenizer_dir else model_dir
    tokenizer = AutoTokenizer.from_pretrained(str(tok_dir), trust_remote_code=trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), trust_remote_code=trust_remote_code,
                                                 dtype=DTYPES[dtype])
    model.to(device).eval()
    return model, tokenizer
