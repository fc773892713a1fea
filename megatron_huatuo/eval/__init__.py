"""Multiple-choice medical benchmark evaluation, as the papers do it (MedQA, MedMCQA, PubMedQA, MMLU/CMMLU, CMB,
CMExam, and the unified files of HuatuoGPT-II's successors).

``python -m megatron_huatuo.eval --help``; the pieces: :mod:`.questions` (reading every published format),
:mod:`.prompts`, :mod:`.scoring` (log-likelihoods, one pass per question), :mod:`.huatuo2` (HuatuoGPT-II's own
protocol), :mod:`.model` (Hugging Face, our Megatron checkpoint, vLLM), :mod:`.stats` (Wilson interval),
:mod:`.runner` (predictions and summary).
"""
from megatron_huatuo.eval.questions import MCQuestion, load_questions
from megatron_huatuo.eval.runner import EvalConfig, evaluate_benchmark
from megatron_huatuo.eval.stats import wilson_interval

__all__ = ["MCQuestion", "load_questions", "EvalConfig", "evaluate_benchmark", "wilson_interval"]
