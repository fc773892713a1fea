"""A tiny SentencePiece tokenizer trained on the bundled demo data (once per session)."""
from __future__ import annotations

import pytest

from huatuo_testing import REPO_ROOT


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory):
    from preprocessing.train_tokenizer import TokenizerConfig, train_tokenizer

    out = tmp_path_factory.mktemp("tok") / "tok"
    train_tokenizer([REPO_ROOT / "demo" / "corpora", REPO_ROOT / "demo" / "sft"], out, TokenizerConfig(vocab_size=1200))
    return out
