"""Train a SentencePiece tokenizer on text files (the demo uses it on the demo corpora and dialogues).

Real runs use the base model's own tokenizer (Baichuan2, Yi); this exists so that the tiny demo model has a
vocabulary that fits its data and so that anyone can build a tokenizer for a new corpus. Choices, and why:

- BPE with byte fallback (like Baichuan2 and Yi): no input is ever unknown, Chinese and English alike.
- ``normalization_rule_name=identity``: NFKC would turn the full-width colon of the HuatuoGPT-II template
  (``<问>：``) into ``:`` and change the text the loss masks are computed on.
- no dummy prefix (as Baichuan2), digits split one by one.
- the chat-template markers are user-defined symbols, so each is always exactly one token and mask boundaries
  fall on token boundaries: ``<问>``/``<答>`` (HuatuoGPT-II), ``<|im_start|>``/``<|im_end|>`` (Yi),
  ``<reserved_106>``/``<reserved_107>`` (Baichuan2's user/assistant markers).

Input: ``.txt`` (every non-empty line), ``.jsonl`` / ``.json`` (every string value except identifier-like fields,
so documents, unified pairs and ShareGPT dialogues all work), given as files or directories.

Output directory: ``tokenizer.model`` + ``tokenizer.vocab`` (SentencePiece) and ``tokenizer_config.json`` /
``special_tokens_map.json`` so that ``transformers.AutoTokenizer`` loads it (as a ``LlamaTokenizer``), plus
``train_tokenizer.json`` with the settings and input hashes.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

DEFAULT_SYMBOLS = ("<问>", "<答>", "<|im_start|>", "<|im_end|>", "<reserved_106>", "<reserved_107>")
SKIP_KEYS = frozenset({"id", "url", "pmid", "source", "kind", "lang", "doc_id", "chunk_id", "prompt_version", "model",
                       "from", "role", "answer_idx", "synthetic"})


@dataclass
class TokenizerConfig:
    """Settings of one tokenizer training run (all recorded in ``train_tokenizer.json``)."""

    vocab_size: int = 2000
    model_type: str = "bpe"
    character_coverage: float = 0.9995
    user_defined_symbols: list[str] = field(default_factory=lambda: list(DEFAULT_SYMBOLS))
    max_sentence_length: int = 16384
    seed: int = 0
    num_threads: int = 1


def iter_texts(path: Path):
    """Yield the text strings of one input file (see the module docstring for what is read)."""
    suffix = path.suffix.lower()
    if suffix == ".txt":
        with path.open(encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    yield line.rstrip("\n")
        return
    if suffix not in (".jsonl", ".json"):
        raise ValueError(f"{path}: unsupported input type {suffix!r} (use .txt, .jsonl or .json)")

    def strings(value, key=None):
        if key in SKIP_KEYS:
            return
        if isinstance(value, str):
            if value.strip():
                yield value
        elif isinstance(value, dict):
            for k, v in value.items():
                yield from strings(v, k)
        elif isinstance(value, list):
            for v in value:
                yield from strings(v, key)

    text = path.read_text(encoding="utf-8")
    if suffix == ".json" or text.lstrip().startswith("["):
        try:
            yield from strings(json.loads(text))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: invalid JSON at line {exc.lineno}: {exc.msg}") from None
        return
    for lineno, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                yield from strings(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: invalid JSON: {exc.msg}") from None


def expand_inputs(inputs: list[str | Path]) -> list[Path]:
    files: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            files += sorted(q for q in p.rglob("*") if q.suffix.lower() in (".txt", ".jsonl", ".json") and q.is_file())
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"tokenizer input not found: {p}")
    if not files:
        raise ValueError(f"no .txt/.jsonl/.json input files in {[str(i) for i in inputs]}")
    return files


def write_hf_files(out_dir: Path) -> None:
    """Config files that let ``transformers.AutoTokenizer`` load ``tokenizer.model`` without the hub."""
    special = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}
    config = {
        "tokenizer_class": "LlamaTokenizer",
        **special,
        "add_bos_token": False,  # the HuatuoGPT-II template has no BOS
        "add_eos_token": False,
        "add_prefix_space": False,
        "legacy": False,
        "model_max_length": 4096,
        "clean_up_tokenization_spaces": False,
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    (out_dir / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")


def train_tokenizer(inputs: list[str | Path], out_dir: str | Path, cfg: TokenizerConfig | None = None) -> Path:
    """Train and write the tokenizer; returns the path of ``tokenizer.model``.

    The result depends only on the inputs (in the given order) and ``cfg``: one thread and a fixed seed make the
    model file identical between runs.
    """
    import sentencepiece as spm

    cfg = cfg or TokenizerConfig()
    files = expand_inputs(inputs)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.txt"
        n_lines = 0
        with corpus.open("w", encoding="utf-8") as fh:
            for path in files:
                digest.update(path.read_bytes())
                for text in iter_texts(path):
                    for line in text.splitlines():
                        if line.strip():
                            fh.write(line + "\n")
                            n_lines += 1
        if n_lines == 0:
            raise ValueError(f"no text found in {[str(f) for f in files]}")
        prefix = Path(tmp) / "tokenizer"
        try:
            _train_spm(spm, corpus, prefix, cfg)
        except RuntimeError as exc:
            if "Vocabulary size" in str(exc):
                raise ValueError(
                    f"--vocab-size {cfg.vocab_size} is too small or too large for this text ({n_lines} lines from "
                    f"{len(files)} files): {str(exc).split(')', 1)[-1].strip()}"
                ) from None
            raise
        # Write to temporary names then rename, so an interrupted run never leaves a half-written model.
        # The temporary paths recorded in the model's trainer spec are blanked, so the same inputs give the same bytes.
        for ext in ("model", "vocab"):
            target = out_dir / f"tokenizer.{ext}"
            tmp_target = out_dir / f".tokenizer.{ext}.tmp"
            data = (Path(tmp) / f"tokenizer.{ext}").read_bytes()
            tmp_target.write_bytes(_strip_paths(data) if ext == "model" else data)
            tmp_target.replace(target)
    write_hf_files(out_dir)
    meta = {"config": asdict(cfg), "inputs": [str(f) for f in files], "inputs_sha256": digest.hexdigest(),
            "lines": n_lines}
    (out_dir / "train_tokenizer.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
    return out_dir / "tokenizer.model"


def _strip_paths(model_bytes: bytes) -> bytes:
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(model_bytes)
    del proto.trainer_spec.input[:]
    proto.trainer_spec.model_prefix = ""
    return proto.SerializeToString()


def _train_spm(spm, corpus: Path, prefix: Path, cfg: TokenizerConfig) -> None:
    spm.SentencePieceTrainer.train(
        input=str(corpus),
        model_prefix=str(prefix),
        vocab_size=cfg.vocab_size,
        model_type=cfg.model_type,
        character_coverage=cfg.character_coverage,
        byte_fallback=True,
        split_digits=True,
        add_dummy_prefix=False,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True,
        user_defined_symbols=list(cfg.user_defined_symbols),
        unk_id=0, bos_id=1, eos_id=2, pad_id=3,
        unk_piece="<unk>", bos_piece="<s>", eos_piece="</s>", pad_piece="<pad>",
        max_sentence_length=cfg.max_sentence_length,
        hard_vocab_limit=True,
        num_threads=cfg.num_threads,
        seed_sentencepiece_size=1000000,
        minloglevel=2,
    )


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", help=".txt/.jsonl/.json files or directories holding them")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--vocab-size", type=int, default=TokenizerConfig.vocab_size)
    p.add_argument("--model-type", choices=("bpe", "unigram"), default=TokenizerConfig.model_type)
    p.add_argument("--character-coverage", type=float, default=TokenizerConfig.character_coverage)
    p.add_argument("--symbols", nargs="*", default=list(DEFAULT_SYMBOLS),
                   help="user-defined symbols, each always one token (default: the chat-template markers)")


def run(args: argparse.Namespace) -> int:
    cfg = TokenizerConfig(vocab_size=args.vocab_size, model_type=args.model_type,
                          character_coverage=args.character_coverage, user_defined_symbols=list(args.symbols))
    model = train_tokenizer(args.inputs, args.out, cfg)
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(model))
    print(f"[train-tokenizer] wrote {model} (vocab {sp.get_piece_size()})")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m preprocessing train-tokenizer", description=__doc__.splitlines()[0])
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
