"""Versioned prompt templates: ``preprocessing/prompts/<version>/<step>.<lang>.txt``.

Why files and not string constants: a prompt is data that changes the output. Its version (the directory name) is
written into every pair and into the request cache key, so a new wording never reuses replies cached for the old
one, and a reviewer sees the exact words sent to the model.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Tuple

from preprocessing.rewrite.config import RewriteError

PROMPTS_DIR = Path(__file__).resolve().parent.parent / "prompts"
STEPS = ("question", "answer")
# The placeholders each step's template must contain.
PLACEHOLDERS = {"question": ("text",), "answer": ("text", "question")}
_FIELD = re.compile(r"\{(text|question)\}")


def render(template: str, **values: str) -> str:
    """Substitute ``{text}``/``{question}`` in one pass: braces inside a document or a question stay literal."""
    return _FIELD.sub(lambda m: values[m.group(1)], template)


@dataclass(frozen=True)
class PromptSet:
    """The templates of one prompt version, by (step, target language)."""

    version: str
    templates: Dict[Tuple[str, str], str] = field(repr=False)

    @property
    def languages(self) -> Tuple[str, ...]:
        return tuple(sorted({lang for step, lang in self.templates if step == "question"}))

    def template(self, step: str, lang: str) -> str:
        try:
            return self.templates[(step, lang)]
        except KeyError:
            raise RewriteError(f"prompt version {self.version!r} has no {step}.{lang}.txt "
                               f"(languages: {', '.join(self.languages)})") from None


def load_prompts(version: str, root: Path = PROMPTS_DIR) -> PromptSet:
    """Read every template of ``version``; each language must have both steps with their placeholders."""
    directory = Path(root) / version
    if not directory.is_dir():
        known = sorted(p.name for p in Path(root).iterdir() if p.is_dir()) if Path(root).is_dir() else []
        raise RewriteError(f"unknown prompt version {version!r}: no directory {directory} (known: {known})")
    templates: Dict[Tuple[str, str], str] = {}
    for path in sorted(directory.glob("*.txt")):
        step, _, lang = path.stem.partition(".")
        if step not in STEPS or not lang:
            raise RewriteError(f"{path}: prompt files are named <question|answer>.<lang>.txt")
        text = path.read_text(encoding="utf-8")
        missing = [name for name in PLACEHOLDERS[step] if "{" + name + "}" not in text]
        if missing:
            raise RewriteError(f"{path}: missing placeholder(s) {', '.join('{' + m + '}' for m in missing)}")
        templates[(step, lang)] = text.strip() + "\n"
    langs = {lang for _, lang in templates}
    for lang in sorted(langs):
        for step in STEPS:
            if (step, lang) not in templates:
                raise RewriteError(f"{directory}: {step}.{lang}.txt is missing (every language needs both steps)")
    if not templates:
        raise RewriteError(f"{directory}: no prompt templates")
    return PromptSet(version, templates)
