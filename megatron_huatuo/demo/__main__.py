"""``python -m megatron_huatuo.demo`` (``make demo``): the whole one-stage pipeline at toy scale on CPU."""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

from megatron_huatuo.demo.pipeline import DemoConfig, DemoPipeline
from megatron_huatuo.demo.stages import Runner, StageResult

STAGE_OUTPUT = {
    "prepare": "prep", "rewrite": "rewrite/pairs.jsonl", "tokenizer": "tokenizer", "dataset": "dataset",
    "train": "train/checkpoints", "export": "hf_model", "answer": "answer.json", "eval": "eval/summary.md",
}


def summarise(results: list[StageResult], cfg: DemoConfig, seconds: float) -> str:
    out = Path(cfg.out)
    lines = ["# megatron-huatuo demo: what was produced and where", "",
             f"Output directory: `{out.resolve()}`; total {seconds:.0f}s.", "",
             "| stage | status | seconds | output |", "|---|---|---:|---|"]
    for r in results:
        where = out / STAGE_OUTPUT.get(r.name, r.name)
        lines.append(f"| {r.name} | {r.status} | {r.seconds:.1f} | `{where}` |")
    by_name = {r.name: r for r in results}
    for r in results:
        if r.status == "missing":
            lines += ["", f"**{r.name} not run:** {r.result['reason']}"]
    answer = by_name.get("answer")
    if answer and answer.status in ("ran", "reused") and answer.result:
        lines += ["", "## The exported model answers", "", "```", answer.result["prompt"] + answer.result["answer"],
                  "```", f"({answer.result['model_class']} loaded with transformers from `{answer.result['model']}`; "
                  "a toy model trained for a few steps on toy data: expect fluent-looking nonsense)"]
    ev = by_name.get("eval")
    if ev and ev.status in ("ran", "reused") and ev.result:
        lines += ["", "## Demo benchmark", ""]
        for b in ev.result:
            lines.append(f"- {b['name']}: {b['correct']}/{b['total']} = {100 * b['accuracy']:.1f} % "
                         f"(95 % CI {100 * b['ci_low']:.1f}-{100 * b['ci_high']:.1f}; chance is 25 %); "
                         f"predictions in `{b['predictions_file']}`")
    lines += ["", "Logs of every stage: `" + str(out / "logs") + "`. Run `make demo` again to reuse finished stages; "
              "`python -m megatron_huatuo.demo --force STAGE` re-runs one."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    defaults = DemoConfig()
    p = argparse.ArgumentParser(prog="python -m megatron_huatuo.demo", description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(defaults.out), help="output directory (default demo_output)")
    p.add_argument("--force", action="append", default=[], metavar="STAGE", help="re-run this stage even if done")
    p.add_argument("--steps", type=int, default=defaults.train_steps, help="training steps")
    p.add_argument("--pp", action="store_true", help="pipeline parallel PP=2 instead of TP=2")
    p.add_argument("--question", default=defaults.question)
    p.add_argument("--quiet", action="store_true", help="do not echo the tools' output (it is still logged)")
    p.add_argument("--list", action="store_true", help="list the stages and exit")
    args = p.parse_args(argv)
    cfg = DemoConfig(out=Path(args.out), train_steps=args.steps, question=args.question, echo=not args.quiet,
                     tensor_parallel=1 if args.pp else 2, pipeline_parallel=2 if args.pp else 1)
    stages = DemoPipeline(cfg).stages()
    if args.list:
        for s in stages:
            print(f"{s.name:10s} {s.description}")
        return 0
    print(f"megatron-huatuo demo -> {Path(cfg.out).resolve()}", flush=True)
    t0 = time.perf_counter()
    runner = Runner(cfg.paths().state, force=args.force, log=lambda m: print(m, flush=True))
    results = runner.run(stages)
    text = summarise(results, cfg, time.perf_counter() - t0)
    (Path(cfg.out) / "SUMMARY.md").write_text(text, encoding="utf-8")
    (Path(cfg.out) / "summary.json").write_text(json.dumps(
        {"config": {k: str(v) for k, v in asdict(cfg).items()},
         "stages": [{"name": r.name, "status": r.status, "seconds": r.seconds, "result": r.result} for r in results]},
        ensure_ascii=False, indent=2, default=str) + "\n", encoding="utf-8")
    print("\n" + text, flush=True)
    incomplete = [r.name for r in results if r.status not in ("ran", "reused")]
    if incomplete:
        print(f"demo incomplete: {', '.join(incomplete)} did not run (see above)", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
