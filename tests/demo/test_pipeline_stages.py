"""The demo's own stages (rewrite fallback, tokenizer) through the real runner, without the heavy stages."""
from __future__ import annotations

import json

from megatron_huatuo.demo.pipeline import REWRITE_KEY_ENV, REWRITE_URL_ENV, DemoConfig, DemoPipeline
from megatron_huatuo.demo.stages import Runner


def test_rewrite_fallback_and_tokenizer_then_reuse(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(REWRITE_URL_ENV, raising=False)
    cfg = DemoConfig(out=tmp_path / "out", echo=False)
    by_name = {s.name: s for s in DemoPipeline(cfg).stages()}
    stages = [by_name["rewrite"], by_name["tokenizer"]]
    results = Runner(cfg.paths().state, log=print).run(stages)
    assert [r.status for r in results] == ["ran", "ran"]
    assert "no rewrite endpoint configured" in capsys.readouterr().out
    pairs = [json.loads(line) for line in (cfg.paths().rewrite / "pairs.jsonl").read_text().splitlines()]
    demo_pairs = (cfg.data / "rewritten" / "pairs.jsonl").read_text().splitlines()
    assert len(pairs) == len(demo_pairs) and {p["kind"] for p in pairs} == {"web", "literature", "encyclopedia", "book"}

    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(cfg.paths().tokenizer / "tokenizer.model"))
    assert sp.get_piece_size() == cfg.vocab_size
    results = Runner(cfg.paths().state, log=print).run(DemoPipeline(cfg).stages()[1:3])
    assert [r.status for r in results] == ["reused", "reused"]


def test_endpoint_changes_the_rewrite_key_but_the_api_key_never_does(tmp_path, monkeypatch):
    monkeypatch.delenv(REWRITE_URL_ENV, raising=False)
    cfg = DemoConfig(out=tmp_path / "out", echo=False)

    def rewrite_params():
        return next(s for s in DemoPipeline(cfg).stages() if s.name == "rewrite").params

    without = rewrite_params()
    monkeypatch.setenv(REWRITE_URL_ENV, "http://127.0.0.1:9/v1")
    monkeypatch.setenv(REWRITE_KEY_ENV, "sk-secret-value")
    with_endpoint = rewrite_params()
    assert without != with_endpoint
    assert "sk-secret-value" not in json.dumps(with_endpoint)
