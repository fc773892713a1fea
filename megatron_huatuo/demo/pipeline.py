"""The demo pipeline: HuatuoGPT-II one-stage adaptation end to end, at toy scale, on CPU.

Each stage calls the project's real command-line tools as subprocesses (the same commands a user runs on a
cluster), so the demo is also a smoke test of their contracts:

    prepare    python -m preprocessing ...        read, clean, filter, dedup the demo corpora
    rewrite    python -m preprocessing rewrite    through an OpenAI-compatible endpoint when one is configured,
                                                   else the bundled demo pairs (and it says so)
    tokenizer  python -m preprocessing train-tokenizer
    dataset    python -m preprocessing dataset ...  loss-masked .bin/.idx, priority order, packing
    train      torchrun -m megatron_huatuo.train  tiny Baichuan2 architecture, TP=2, two CPU processes
    export     python -m checkpoints_tools export  Megatron checkpoint -> Hugging Face directory
    answer     transformers loads the export and answers one question
    eval       python -m megatron_huatuo.eval     the demo question file

Outputs go to ``demo_output/`` (one folder per stage, logs in ``logs/``, done markers in ``.state/``); a second
run reuses every stage whose inputs and settings are unchanged.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from megatron_huatuo.demo.proc import python_module, run_command, torchrun
from megatron_huatuo.demo.stages import MissingComponent, Stage

REPO_ROOT = Path(__file__).resolve().parents[2]
REWRITE_URL_ENV = "HUATUO_REWRITE_BASE_URL"
REWRITE_KEY_ENV = "HUATUO_REWRITE_API_KEY"
REWRITE_MODEL_ENV = "HUATUO_REWRITE_MODEL"


@dataclass
class DemoConfig:
    """Everything that shapes the demo's outputs (all of it is part of the stages' reuse keys)."""

    out: Path = Path("demo_output")
    data: Path = REPO_ROOT / "demo"
    vocab_size: int = 2048  # the tokenizer's and the tiny model's vocabulary (a multiple of 128: no padding)
    arch: str = "tiny-baichuan2-7b"
    tensor_parallel: int = 2
    pipeline_parallel: int = 1
    seq_length: int = 256
    micro_batch_size: int = 4
    global_batch_size: int = 8
    train_steps: int = 80
    lr: float = 3e-3
    save_interval: int = 40
    question: str = "高血压患者应该如何治疗？"
    eval_shots: int = 1
    seed: int = 1234
    echo: bool = True

    def paths(self) -> "DemoPaths":
        return DemoPaths(Path(self.out))


@dataclass
class DemoPaths:
    root: Path

    @property
    def state(self) -> Path:
        return self.root / ".state"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def prep(self) -> Path:
        return self.root / "prep"

    @property
    def rewrite(self) -> Path:
        return self.root / "rewrite"

    @property
    def tokenizer(self) -> Path:
        return self.root / "tokenizer"

    @property
    def dataset(self) -> Path:
        return self.root / "dataset"

    @property
    def train(self) -> Path:
        return self.root / "train"

    @property
    def hf_model(self) -> Path:
        return self.root / "hf_model"

    @property
    def answer(self) -> Path:
        return self.root / "answer.json"

    @property
    def eval(self) -> Path:
        return self.root / "eval"


def has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def require(module: str, stage: str, owner: str) -> None:
    if not has_module(module):
        raise MissingComponent(
            f"stage {stage!r} needs `python -m {module}` ({owner}), which this checkout does not have"
        )


def rewrite_endpoint() -> dict | None:
    """The configured rewrite endpoint (without the key, which never enters logs or reuse keys), or None."""
    url = os.environ.get(REWRITE_URL_ENV)
    if not url:
        return None
    return {"base_url": url, "model": os.environ.get(REWRITE_MODEL_ENV, "gpt-3.5-turbo"),
            "api_key_set": bool(os.environ.get(REWRITE_KEY_ENV))}


def _json_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# The bundled demo sources: (name, kind, language, file, field holding the text, field holding the id).
DEMO_SOURCES = [
    ("web.zh", "web", "zh", "corpora/web.zh.jsonl", "text", "id"),
    ("web.en", "web", "en", "corpora/web.en.jsonl", "text", "id"),
    ("literature.zh", "literature", "zh", "corpora/literature.zh.json", "abstract", "pmid"),
    ("literature.en", "literature", "en", "corpora/literature.en.json", "abstract", "pmid"),
    ("encyclopedia.zh", "encyclopedia", "zh", "corpora/encyclopedia.zh.jsonl", "content", "id"),
    ("encyclopedia.en", "encyclopedia", "en", "corpora/encyclopedia.en.jsonl", "content", "id"),
    ("book.zh", "book", "zh", "corpora/book.zh.txt", None, None),
    ("book.en", "book", "en", "corpora/book.en.txt", None, None),
]
DEMO_SFT = [("sft.zh", "zh", "sft/dialogues.zh.sharegpt.jsonl"), ("sft.en", "en", "sft/dialogues.en.sharegpt.jsonl")]


class DemoPipeline:
    """Builds the list of :class:`Stage` objects for one :class:`DemoConfig`."""

    def __init__(self, cfg: DemoConfig):
        self.cfg = cfg
        self.p = cfg.paths()

    # -- helpers -----------------------------------------------------------------------------------------------
    def sh(self, stage: str, cmd: list[str], env: dict | None = None) -> None:
        run_command(cmd, self.p.logs / f"{stage}.log", env=env, echo=self.cfg.echo)

    def data(self, rel: str) -> Path:
        return Path(self.cfg.data) / rel

    def sft_files(self) -> list[Path]:
        return [self.data(rel) for _, _, rel in DEMO_SFT]

    # -- stages ------------------------------------------------------------------------------------------------
    def stages(self) -> list[Stage]:
        c, p = self.cfg, self.p
        endpoint = rewrite_endpoint()
        return [
            Stage("prepare", "read, clean, filter and deduplicate the demo corpora (PREP)", self.run_prepare,
                  inputs=[self.data("corpora")], params={"sources": DEMO_SOURCES},
                  outputs=[p.prep], clean=[p.prep], check=self.check_prepare),
            Stage("rewrite",
                  "rewrite documents into question/answer pairs " + (
                      f"through {endpoint['base_url']}" if endpoint else "(no endpoint configured: demo pairs)"),
                  self.run_rewrite, inputs=lambda: self.rewrite_inputs(endpoint),
                  params={"endpoint": endpoint}, outputs=[p.rewrite / "pairs.jsonl"], clean=[p.rewrite],
                  needs=["prepare"] if endpoint else [], check=self.check_rewrite if endpoint else None),
            Stage("tokenizer", f"train a SentencePiece tokenizer (vocab {c.vocab_size}) on the pairs and dialogues",
                  self.run_tokenizer, inputs=lambda: [p.rewrite / "pairs.jsonl", *self.sft_files()],
                  params={"vocab_size": c.vocab_size}, outputs=[p.tokenizer / "tokenizer.model"],
                  clean=[p.tokenizer], needs=["rewrite"]),
            Stage("dataset", "tokenize with loss masks, priority order, pack (DATA)", self.run_dataset,
                  inputs=lambda: [p.rewrite / "pairs.jsonl", *self.sft_files(), p.tokenizer / "tokenizer.model"],
                  params={"seq_length": c.seq_length, "seed": c.seed}, outputs=[p.dataset], clean=[p.dataset],
                  needs=["tokenizer"], check=self.check_dataset),
            Stage("train", f"train {c.arch} with TP={c.tensor_parallel} PP={c.pipeline_parallel} on two CPU "
                           f"processes (TRAIN)", self.run_train,
                  inputs=lambda: [p.dataset], params=self.train_params(), outputs=[p.train / "checkpoints"],
                  clean=[p.train], needs=["dataset"], check=self.check_train),
            Stage("export", "export the last checkpoint to a Hugging Face directory (CKPT)", self.run_export,
                  inputs=lambda: [p.train / "checkpoints", p.tokenizer], params={"arch": c.arch},
                  outputs=[p.hf_model / "config.json"], clean=[p.hf_model], needs=["train"],
                  check=self.check_export),
            Stage("answer", "load the export with transformers and answer one question", self.run_answer,
                  inputs=lambda: [p.hf_model], params={"question": c.question}, outputs=[p.answer],
                  clean=[p.answer], needs=["export"]),
            Stage("eval", "score the export on the demo question file", self.run_eval,
                  inputs=lambda: [p.hf_model, self.data("eval")], params={"shots": c.eval_shots},
                  outputs=[p.eval / "summary.json"], clean=[p.eval], needs=["export"]),
        ]

    def train_params(self) -> dict:
        c = self.cfg
        return {k: getattr(c, k) for k in ("arch", "vocab_size", "tensor_parallel", "pipeline_parallel", "seq_length",
                                           "micro_batch_size", "global_batch_size", "train_steps", "lr",
                                           "save_interval", "seed")}

    # prepare ---------------------------------------------------------------------------------------------------
    def check_prepare(self) -> None:
        require("preprocessing.cli", "prepare", "issue 3")

    def run_prepare(self):
        out = self.p.prep
        out.mkdir(parents=True, exist_ok=True)
        sources = [{"name": name, "kind": kind, "lang": lang, "path": str(self.data(rel).resolve()),
                    "text_field": text_field, "id_field": id_field}
                   for name, kind, lang, rel, text_field, id_field in DEMO_SOURCES]
        (out / "sources.json").write_text(json.dumps(sources, ensure_ascii=False, indent=1), encoding="utf-8")
        self.sh("prepare", python_module("preprocessing", "prepare", "--sources", out / "sources.json", "--out", out))
        report = json.loads((out / "report.json").read_text(encoding="utf-8"))
        return {"read": sum(report["read"].values()), "kept": report["kept_documents"],
                "dropped": dict(report["dropped"])}

    # rewrite ---------------------------------------------------------------------------------------------------
    def rewrite_inputs(self, endpoint) -> list[Path]:
        inputs = [self.data("rewritten/pairs.jsonl")]
        if self.p.prep.exists():
            inputs.append(self.p.prep)
        return inputs

    def check_rewrite(self) -> None:
        require("preprocessing.cli", "rewrite", "issue 3")

    def surviving_doc_ids(self) -> set[str] | None:
        """Document ids kept by the prepare stage, or None when it has not run."""
        docs = self.p.prep / "documents.jsonl"
        if not docs.exists():
            return None
        return {row["id"] for row in _json_lines(docs)}

    def run_rewrite(self):
        endpoint = rewrite_endpoint()
        out = self.p.rewrite
        out.mkdir(parents=True, exist_ok=True)
        if endpoint:
            self.sh("rewrite", python_module("preprocessing", "rewrite", "--docs", self.p.prep / "documents.jsonl",
                                             "--out", out, "--base-url", endpoint["base_url"],
                                             "--model", endpoint["model"]))
            counts = {"pairs": len(_json_lines(out / "pairs.jsonl")),
                      "rejects": len(_json_lines(out / "rejects.jsonl")), "source": endpoint["base_url"]}
            return counts
        print(f"    no rewrite endpoint configured ({REWRITE_URL_ENV} is not set): using the bundled demo pairs "
              f"{self.data('rewritten/pairs.jsonl')}", flush=True)
        pairs = _json_lines(self.data("rewritten/pairs.jsonl"))
        keep = self.surviving_doc_ids()
        if keep is not None:
            pairs = [r for r in pairs if r["doc_id"] in keep]
        tmp = out / "pairs.jsonl.tmp"
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in pairs), encoding="utf-8")
        tmp.replace(out / "pairs.jsonl")
        kinds: dict[str, int] = {}
        for r in pairs:
            kinds[r["kind"]] = kinds.get(r["kind"], 0) + 1
        print(f"    {len(pairs)} pairs: {kinds}", flush=True)
        return {"pairs": len(pairs), "by_kind": kinds, "source": "demo pairs"}

    # tokenizer -------------------------------------------------------------------------------------------------
    def run_tokenizer(self):
        self.sh("tokenizer", python_module("preprocessing.train_tokenizer", self.p.rewrite / "pairs.jsonl",
                                           *self.sft_files(), "--out", self.p.tokenizer,
                                           "--vocab-size", self.cfg.vocab_size))
        return {"vocab_size": self.cfg.vocab_size, "dir": str(self.p.tokenizer)}

    # dataset ---------------------------------------------------------------------------------------------------
    def check_dataset(self) -> None:
        require("preprocessing.dataset", "dataset", "issue 4")

    def run_dataset(self):
        args = ["build", "--pairs", self.p.rewrite / "pairs.jsonl"]
        for sft in self.sft_files():
            args += ["--sft", sft]
        args += ["--tokenizer", self.p.tokenizer, "--seq-length", self.cfg.seq_length, "--seed", self.cfg.seed,
                 "--out", self.p.dataset]
        self.sh("dataset", python_module("preprocessing.dataset", *args))
        manifest = self.p.dataset / "manifest.json"
        return json.loads(manifest.read_text(encoding="utf-8")) if manifest.exists() else {"dir": str(self.p.dataset)}

    # train -----------------------------------------------------------------------------------------------------
    def check_train(self) -> None:
        require("megatron_huatuo.train", "train", "issue 2")

    def train_recipe(self) -> Path:
        """The demo's recipe: the tiny CPU recipe with the demo's sizes and the one-stage dataset."""
        import yaml

        c, p = self.cfg, self.p
        recipe = {
            "model": {"arch": c.arch, "vocab_size": c.vocab_size},
            "parallel": {"tp": c.tensor_parallel, "pp": c.pipeline_parallel, "distributed_optimizer": True},
            "optimizer": {"lr": c.lr, "min_lr": c.lr / 10},
            "schedule": {"warmup_fraction": 0.05, "style": "cosine"},
            "train": {"steps": c.train_steps, "global_batch": c.global_batch_size, "micro_batch": c.micro_batch_size,
                      "seq_length": c.seq_length, "seed": c.seed, "precision": "fp32"},
            "data": {"type": "one_stage", "path": str(p.dataset.resolve())},
            "checkpoint": {"dir": str((p.train / "checkpoints").resolve()), "interval": c.save_interval},
            "logging": {"interval": 5, "tensorboard_dir": str((p.train / "tensorboard").resolve())},
        }
        path = p.train / "recipe.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
        return path

    def run_train(self):
        recipe = self.train_recipe()
        nproc = self.cfg.tensor_parallel * self.cfg.pipeline_parallel
        self.sh("train", torchrun(nproc, "megatron_huatuo.train", "--config", recipe))
        ckpt = self.p.train / "checkpoints"
        latest = (ckpt / "latest_checkpointed_iteration.txt").read_text().strip()
        losses = []  # the trainer logs one "train {json}" line per step
        for line in (self.p.logs / "train.log").read_text(encoding="utf-8", errors="replace").splitlines():
            head, _, body = line.strip().partition("train {")
            if _ and not head.strip():
                try:
                    losses.append(json.loads("{" + body)["loss"])
                except (ValueError, KeyError):
                    pass
        return {"recipe": str(recipe), "checkpoint_iteration": int(latest),
                "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None}

    # export ----------------------------------------------------------------------------------------------------
    def check_export(self) -> None:
        require("checkpoints_tools.cli", "export", "issue 5")

    def run_export(self):
        c = self.cfg
        self.sh("export", python_module("checkpoints_tools", "export", "--ckpt", self.p.train / "checkpoints",
                                        "--arch", c.arch, "--vocab-size", c.vocab_size, "--out", self.p.hf_model,
                                        "--tokenizer", self.p.tokenizer, "--format", "llama"))
        config = json.loads((self.p.hf_model / "config.json").read_text(encoding="utf-8"))
        return {"dir": str(self.p.hf_model), "architectures": config.get("architectures"),
                "vocab_size": config.get("vocab_size")}

    # answer / eval ---------------------------------------------------------------------------------------------
    def run_answer(self):
        self.sh("answer", python_module("megatron_huatuo.demo.answer", "--model", self.p.hf_model,
                                        "--question", self.cfg.question, "--out", self.p.answer))
        return json.loads(self.p.answer.read_text(encoding="utf-8"))

    def run_eval(self):
        self.sh("eval", python_module("megatron_huatuo.eval", "--model", self.p.hf_model,
                                      "--bench", f"demo={self.data('eval/questions.jsonl')}",
                                      "--dev", self.data("eval/dev.jsonl"), "--shots", self.cfg.eval_shots,
                                      "--template", "huatuo", "--no-special-tokens", "--out", self.p.eval))
        summary = json.loads((self.p.eval / "summary.json").read_text(encoding="utf-8"))
        return summary["benchmarks"]
