"""Spawned worker for the Megatron-checkpoint eval test: megatron-core runs in its own process (its CPU mapping is
process-wide), the test process compares with transformers."""
from __future__ import annotations


def megatron_side(hf_dir: str, work: str, bench: str, arch_name: str) -> dict:
    """Import ``hf_dir`` into a Megatron checkpoint, export it back to HF, then evaluate the checkpoint directly
    (``--megatron-ckpt``) under two protocols; also greedy batched decoding vs one prompt at a time."""
    import json
    from pathlib import Path

    import torch

    from checkpoints_tools import convert
    from megatron_huatuo.eval.cli import main
    from megatron_huatuo.eval.model import MegatronModel, Sampling, load_tokenizer, resolve_megatron
    from megatron_huatuo.models.inference import tp1_model

    work = Path(work)
    convert.import_hf(hf_dir, arch_name, str(work / "mc"))
    convert.export(str(work / "mc"), arch_name, str(work / "export"), convert.ExportOptions(tokenizer=hf_dir))
    common = ["--megatron-ckpt", str(work / "mc"), "--bench", f"b={bench}", "--no-special-tokens"]
    assert main(common + ["--out", str(work / "mc_letter")]) == 0
    assert main(common + ["--protocol", "huatuo2", "--batch-size", "1", "--max-new-tokens", "10", "--seed", "3",
                          "--out", str(work / "mc_huatuo2")]) == 0

    src = resolve_megatron(str(work / "mc"), None, None)
    tok = load_tokenizer(src.tokenizer_dir)
    prompts = [tok("<问>：发热怎么办？\n<答>：")["input_ids"], tok("<问>：咳嗽\n<答>：")["input_ids"]]
    greedy = Sampling(max_new_tokens=6)
    with tp1_model(src.path, src.arch, torch.float32) as model:
        lm = MegatronModel(model, "mc", src.arch.max_position_embeddings)
        batched = lm.sample(prompts, greedy, tok.pad_token_id, None, seed=0)
        alone = [lm.sample([p], greedy, tok.pad_token_id, None, seed=0)[0] for p in prompts]
    return {"batched": batched, "alone": alone, "prompt_lengths": [len(p) for p in prompts],
            "summary": json.loads((work / "mc_letter" / "summary.json").read_text())}
