"""A tiny stage runner: named steps, each reused when its inputs and settings have not changed.

Why not make: the stages' inputs are directories produced by other stages, and "changed" must mean *content*
changed (a re-run that rewrites identical files must not invalidate everything after it). So each stage has a
key, the SHA-256 of

- its name and its settings (a JSON-able dict, e.g. vocab size, TP/PP, number of steps), and
- the content of every input file (directories are walked in sorted order; names and bytes are hashed),

and a finished stage leaves ``<state>/<name>.done.json`` holding that key and the SHA-256 of its outputs' content.
A later run skips the stage when the marker's key equals the new key and every declared output still exists with
the content it had when the stage finished: an output truncated or edited since (a ``.bin`` cut short by a full
disk) makes the stage run again, instead of handing the damage to the next stage as "inputs unchanged".

Interrupted stages: when a stage starts it writes ``<name>.pending.json`` with its key. If the run dies, the next
run with the same key keeps the stage's outputs in place (so a trainer can resume from its last checkpoint); with a
different key the outputs are deleted first, so nothing stale is ever mixed in.

Complete outputs are never deleted before their replacement is complete: when a stage that had finished runs
again (new key, changed outputs, ``--force``), its outputs are moved aside to ``.<name>.previous`` beside them and
deleted only once the new run has finished. If the new run fails or is killed, the previous outputs stay there
(the log says where) until a run of that stage completes.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

_CHUNK = 1 << 20


def hash_paths(paths: Iterable[Path], digest=None):
    """Update ``digest`` with the names and bytes of ``paths`` (files, or directories walked in sorted order)."""
    digest = digest or hashlib.sha256()
    for path in paths:
        path = Path(path)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file())
            digest.update(f"dir:{path.name}:{len(files)}\n".encode())
            for f in files:
                digest.update(f"file:{f.relative_to(path).as_posix()}\n".encode())
                _hash_file(f, digest)
        elif path.is_file():
            digest.update(f"file:{path.name}\n".encode())
            _hash_file(path, digest)
        else:
            raise FileNotFoundError(f"stage input missing: {path}")
    return digest


def _hash_file(path: Path, digest) -> None:
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)


@dataclass
class Stage:
    """One step of a pipeline.

    ``inputs`` are hashed into the key (callables are evaluated when the stage is reached, so an input may be an
    output of an earlier stage). ``outputs`` must all exist after ``run``; ``clean`` paths are deleted before a
    fresh (not resumed) run.
    """

    name: str
    description: str
    run: Callable[[], object]
    inputs: Callable[[], list[Path]] | list[Path] = field(default_factory=list)
    params: dict = field(default_factory=dict)
    outputs: list[Path] = field(default_factory=list)
    clean: list[Path] = field(default_factory=list)
    needs: list[str] = field(default_factory=list)
    check: Callable[[], None] | None = None  # raises MissingComponent when a tool the stage calls is absent

    def input_paths(self) -> list[Path]:
        return list(self.inputs() if callable(self.inputs) else self.inputs)

    def key(self) -> str:
        digest = hashlib.sha256()
        digest.update(json.dumps({"stage": self.name, "params": self.params}, sort_keys=True, default=str).encode())
        hash_paths(self.input_paths(), digest)
        return digest.hexdigest()


class MissingComponent(RuntimeError):
    """A stage cannot run because a tool it calls is not in this checkout; the message says which."""


@dataclass
class StageResult:
    name: str
    status: str  # "reused" | "ran" | "missing" (a tool is absent) | "skipped" (a stage it needs did not finish)
    seconds: float
    result: object = None


def outputs_digest(stage: "Stage") -> str:
    """SHA-256 of the content of a stage's declared outputs (what the done marker vouches for)."""
    return hash_paths(stage.outputs).hexdigest()


def previous(path: Path) -> Path:
    """Where a finished run's output waits while the stage runs again."""
    return path.parent / f".{path.name}.previous"


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


class Runner:
    """Runs stages in order, printing progress, reusing finished ones."""

    def __init__(self, state_dir: Path, *, force: Iterable[str] = (), log: Callable[[str], None] = print):
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.force = set(force)
        self.log = log

    def done_marker(self, stage: Stage) -> Path:
        return self.state_dir / f"{stage.name}.done.json"

    def pending_marker(self, stage: Stage) -> Path:
        return self.state_dir / f"{stage.name}.pending.json"

    def is_done(self, stage: Stage, key: str) -> bool:
        marker = self.done_marker(stage)
        if stage.name in self.force or not marker.is_file():
            return False
        try:
            recorded = json.loads(marker.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            return False
        if recorded.get("key") != key or not all(Path(p).exists() for p in stage.outputs):
            return False
        if recorded.get("outputs_sha256") != outputs_digest(stage):
            why = ("its outputs changed since it finished (truncated or edited?)" if "outputs_sha256" in recorded
                   else "its marker predates output checksums")
            self.log(f"    {stage.name}: {why}: running it again")
            return False
        return True

    def run_stage(self, stage: Stage, index: int, total: int) -> StageResult:
        head = f"[{index}/{total}] {stage.name}: {stage.description}"
        key = stage.key()
        if self.is_done(stage, key):
            self.log(f"{head} ... reused (inputs unchanged, key {key[:12]})")
            recorded = json.loads(self.done_marker(stage).read_text(encoding="utf-8"))
            return StageResult(stage.name, "reused", 0.0, recorded.get("result"))
        self.log(f"{head} ...")
        completed = self.done_marker(stage).is_file()  # the outputs in place are a finished run's
        pending = self.pending_marker(stage)
        resumable = pending.is_file() and json.loads(pending.read_text(encoding="utf-8")).get("key") == key
        if resumable and stage.name not in self.force and not completed:
            self.log(f"    resuming an interrupted run with the same inputs (outputs kept)")
        else:
            for path in map(Path, stage.clean):
                if completed and path.exists():
                    _remove(previous(path))
                    os.replace(path, previous(path))  # kept until the new run has finished
                    self.log(f"    previous {path.name} kept as {previous(path)} until this run finishes")
                else:
                    _remove(path)  # what an interrupted run with other inputs left: never a finished output
        self.done_marker(stage).unlink(missing_ok=True)
        _write_json(pending, {"key": key, "started": time.time()})
        t0 = time.perf_counter()
        result = stage.run()
        seconds = time.perf_counter() - t0
        missing = [str(p) for p in stage.outputs if not Path(p).exists()]
        if missing:
            raise RuntimeError(f"stage {stage.name!r} finished but did not produce {missing}")
        _write_json(self.done_marker(stage), {"key": key, "seconds": round(seconds, 2), "result": result,
                                              "outputs": [str(p) for p in stage.outputs],
                                              "outputs_sha256": outputs_digest(stage)})
        pending.unlink(missing_ok=True)
        for path in map(Path, stage.clean):
            _remove(previous(path))  # the replacement is complete
        self.log(f"    {stage.name} done in {seconds:.1f}s")
        return StageResult(stage.name, "ran", seconds, result)

    def run(self, stages: list[Stage]) -> list[StageResult]:
        """Run all stages in order. A stage whose tool is missing is reported and the stages needing it are
        skipped; every other stage still runs, so one absent component does not hide the state of the rest."""
        names = [s.name for s in stages]
        unknown = self.force - set(names)
        if unknown:
            raise ValueError(f"unknown stage(s) {sorted(unknown)}; stages are {names}")
        results: list[StageResult] = []
        finished: set[str] = set()
        for i, stage in enumerate(stages, start=1):
            blocked = [n for n in stage.needs if n not in finished]
            if blocked:
                self.log(f"[{i}/{len(stages)}] {stage.name}: skipped (needs {', '.join(blocked)})")
                results.append(StageResult(stage.name, "skipped", 0.0, {"needs": blocked}))
                continue
            try:
                if stage.check is not None:
                    stage.check()
            except MissingComponent as exc:
                self.log(f"[{i}/{len(stages)}] {stage.name}: NOT RUN: {exc}")
                results.append(StageResult(stage.name, "missing", 0.0, {"reason": str(exc)}))
                continue
            results.append(self.run_stage(stage, i, len(stages)))
            finished.add(stage.name)
        return results
