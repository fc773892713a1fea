"""Loading the model under evaluation: a local Hugging Face directory, exported by ``checkpoints_tools`` or not.

Baichuan-style exports name their own modeling code in ``config.json``'s ``auto_map``; loading them needs
``trust_remote_code`` (off by default: it runs Python from the model directory). The tokenizer comes from the
model directory unless another one is named.
"""
from __future__ import annotations

import json
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
    check_remote_code(model_dir, trust_remote_code)
    tok_dir = Path(tokenizer_dir) if tokenizer_dir else model_dir
    tokenizer = AutoTokenizer.from_pretrained(str(tok_dir), trust_remote_code=trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), trust_remote_code=trust_remote_code,
                                                 dtype=DTYPES[dtype])
    model.to(device).eval()
    return model, tokenizer


def check_remote_code(model_dir: Path, trust_remote_code: bool) -> None:
    """Explain up front what a Baichuan-style export needs, instead of transformers' generic error.

    Such a config names its classes in ``auto_map`` (``modeling_baichuan.BaichuanForCausalLM``); transformers has no
    Baichuan class of its own, so the Python files named there must sit in the model directory (copy them from the
    base model's repository) and loading must be allowed with ``trust_remote_code``.
    """
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    auto_map = config.get("auto_map") or {}
    if not auto_map:
        return
    modules = sorted({str(v).split(".")[0] for v in auto_map.values() if isinstance(v, str) and "--" not in str(v)})
    missing = [m for m in modules if not (model_dir / f"{m}.py").is_file()]
    if missing:
        raise FileNotFoundError(
            f"{model_dir}: config.json maps {config.get('architectures')} to remote code in {missing} "
            f"(auto_map), but {', '.join(m + '.py' for m in missing)} is not in the directory; copy the modeling "
            f"files from the base model's repository next to the weights"
        )
    if not trust_remote_code:
        raise ValueError(
            f"{model_dir}: config.json uses remote code ({', '.join(modules)}); pass --trust-remote-code to load it "
            f"(only for directories you trust: it runs their Python code)"
        )
