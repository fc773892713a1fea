"""Multiple-choice medical benchmark evaluation of Hugging Face models (MedQA, MedMCQA, CMExam, CMB, CMMLU shapes).

``python -m megatron_huatuo.eval --help``; the pieces: :mod:`.questions` (reading), :mod:`.prompts`,
:mod:`.scoring` (log-likelihood and generation), :mod:`.extract` (answer letters from text), :mod:`.stats`
(Wilson interval), :mod:`.runner` (predictions and summary).
"""
from megatron_huatuo.eval.questions import MCQuestion, load_questions
from megatron_huatuo.eval.runner import EvalConfig, evaluate_benchmark
from megatron_huatuo.eval.stats import wilson_interval

__all__ = ["MCQuestion", "load_questions", "EvalConfig", "evaluate_benchmark", "wilson_interval"]
