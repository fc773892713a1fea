"""A tiny SentencePiece tokenizer trained on the bundled demo data, and the one-stage dataset built from the demo's
pairs + English SFT with it (once per session)."""
from __future__ import annotations

import pytest

from huatuo_testing import DEMO_PAIRS, DEMO_SFT_EN, REPO_ROOT


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory):
    from preprocessing.train_tokenizer import TokenizerConfig, train_tokenizer

    out = tmp_path_factory.mktemp("tok") / "tok"
    train_tokenizer([REPO_ROOT / "demo" / "corpora", REPO_ROOT / "demo" / "sft"], out, TokenizerConfig(vocab_size=1200))
    return out


@pytest.fixture(scope="session")
def dataset_dir(tmp_path_factory, tiny_tokenizer):
    """``build`` of the demo pairs + SFT at seq 512, seed 7 (read-only for the tests)."""
    from preprocessing.dataset.build import BuildConfig, build

    out = tmp_path_factory.mktemp("ds") / "ds"
    build(BuildConfig([str(DEMO_PAIRS)], [str(DEMO_SFT_EN)], str(tiny_tokenizer), 512, 7, str(out)))
    return out
